//! The command line: connection flags, and the commands in two enums,
//! those that run on this machine and those that ask the control plane.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wardline_tls::Role;

/// Environment variables wardctl reads, in one place.
pub mod env {
    pub const CONFIG: &str = "WARDCTL_CONFIG";
    pub const ENDPOINT: &str = "WARDCTL_ENDPOINT";
    pub const CA: &str = "WARDCTL_CA";
    pub const CERT: &str = "WARDCTL_CERT";
    pub const KEY: &str = "WARDCTL_KEY";
    pub const SESSION: &str = "WARDCTL_SESSION";
}

/// Operate the Wardline control plane.
#[derive(Parser)]
#[command(name = "wardctl", version)]
pub struct Cli {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the control plane is and who this operator is; each falls back
/// on its environment variable, then on the config file.
#[derive(Args)]
pub struct ConnectionArgs {
    /// Control plane, https://host:port (else the config file).
    // Parsed only by the commands that dial it, so that a bad value in the
    // environment does not stop `validate` or `pki`.
    #[arg(long, global = true, env = env::ENDPOINT)]
    pub endpoint: Option<String>,
    /// Site CA certificate (else the config file).
    #[arg(long, global = true, env = env::CA)]
    pub ca: Option<PathBuf>,
    /// Operator certificate (else the config file).
    #[arg(long, global = true, env = env::CERT)]
    pub cert: Option<PathBuf>,
    /// Operator key (else the config file).
    #[arg(long, global = true, env = env::KEY)]
    pub key: Option<PathBuf>,
    /// Config file (else ~/.config/wardline/wardctl.yaml).
    #[arg(long, global = true, env = env::CONFIG)]
    pub config: Option<PathBuf>,
    /// Where `login` keeps the session token (else one file per
    /// certificate under ~/.cache/wardline).
    #[arg(long, global = true, env = env::SESSION)]
    pub session: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    #[command(flatten)]
    Local(LocalCommand),
    #[command(flatten)]
    Remote(RemoteCommand),
    #[command(flatten)]
    Governance(GovernanceCommand),
    #[command(flatten)]
    Clinical(ClinicalCommand),
    /// The site's certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
}

/// `wardctl pki`: issuing runs here, on the machine holding the CA key;
/// revoking asks the control plane.
#[derive(Subcommand)]
pub enum PkiCommand {
    #[command(flatten)]
    Local(LocalPki),
    #[command(flatten)]
    Remote(RemotePki),
}

/// Which flow records a command takes (`observe`, `matrix`, `top`).
#[derive(Args, Clone, Debug, Default)]
pub struct FlowFilter {
    /// allowed, audited or dropped.
    #[arg(long)]
    pub verdict: Option<String>,
    /// The source: a segment, an address or a CIDR.
    #[arg(long)]
    pub from: Option<String>,
    /// The destination: a segment, an address or a CIDR.
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    /// The destination port.
    #[arg(long)]
    pub port: Option<u16>,
    /// tcp, udp, sctp, icmp, icmpv6 or a protocol number.
    #[arg(long)]
    pub protocol: Option<String>,
    /// The deciding policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// The reason, e.g. default-deny.
    #[arg(long)]
    pub reason: Option<String>,
    /// RFC 3339, or a duration back from now (10m, 2h).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
}

/// What `wardctl top` ranks.
#[derive(Clone, Copy, ValueEnum)]
pub enum TopBy {
    Sources,
    Talkers,
}

/// How `observe` prints records: streaming, so no table alignment.
#[derive(Clone, Copy, ValueEnum)]
pub enum FlowOutput {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

/// Commands that need no control plane.
#[derive(Subcommand)]
pub enum LocalCommand {
    /// Validate a file offline, with the control plane's own rules.
    Validate {
        #[arg(short, long)]
        file: PathBuf,
    },
}

/// Commands answered by the control plane.
#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Apply every document of a file, all or nothing, as a new revision.
    Apply {
        #[arg(short, long)]
        file: PathBuf,
        /// Delete stored documents the file does not have.
        #[arg(long)]
        prune: bool,
        /// Refuse unless the current revision is this one.
        #[arg(long)]
        expected_revision: Option<u64>,
        /// Why (kept in the history).
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// What applying a file would change; with --against-flows, which
    /// observed connections would change verdict.
    Diff {
        #[arg(short, long)]
        file: PathBuf,
        #[arg(long)]
        prune: bool,
        /// Judge the flows observed since then (RFC 3339, or a duration
        /// back from now: 7d) with the file applied.
        #[arg(long)]
        against_flows: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show documents: wardctl get [segment|policy] [NAME].
    Get {
        kind: Option<String>,
        name: Option<String>,
        #[arg(long, default_value_t = 0)]
        revision: u64,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a document (segment or policy), or remove a node: its
    /// registration is forgotten and its name blocked until `unblock`.
    Delete {
        kind: String,
        name: String,
        #[arg(long)]
        expected_revision: Option<u64>,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Let a node removed by `delete node` register again.
    Unblock { node: String },
    /// Every revision: who changed what, when, why.
    History {
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Check the whole revision chain instead (exit 9 if it fails).
        #[arg(long)]
        verify: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Make an earlier revision current again (as a new revision).
    Rollback {
        revision: u64,
        #[arg(long)]
        expected_revision: Option<u64>,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Flow records: who talked to whom, what was dropped and which policy
    /// decided. Stored ones first (oldest first), then with -f each new one.
    Observe {
        #[command(flatten)]
        filter: FlowFilter,
        /// Only the newest N stored records.
        #[arg(long)]
        last: Option<u32>,
        /// Keep following: each new record as it is stored.
        #[arg(short, long)]
        follow: bool,
        /// table: one line per record; json: one JSON object per line.
        #[arg(short, long, value_enum, default_value = "table")]
        output: FlowOutput,
    },
    /// Connections between segments, by verdict.
    Matrix {
        #[command(flatten)]
        filter: FlowFilter,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The top sources of the connections the filter wants (with
    /// --verdict dropped: who tries to move sideways), or the top talkers
    /// (address pairs by bytes).
    Top {
        /// sources (by connections) or talkers (by bytes).
        #[arg(long, value_enum, default_value = "sources")]
        by: TopBy,
        /// How many, 1 to 1000.
        #[arg(short = 'n', long, default_value_t = 10)]
        limit: u32,
        #[command(flatten)]
        filter: FlowFilter,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Every endpoint the agents have seen: address, Ethernet address and
    /// VLAN where seen, segment, first and last seen, peers and ports; new
    /// devices (in no segment, or a new Ethernet address on a VLAN) marked.
    Inventory {
        /// An address or CIDR.
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        segment: Option<String>,
        /// Only devices reported as new.
        #[arg(long)]
        new: bool,
        /// Seen since: RFC 3339, or a duration back from now (1h).
        #[arg(long)]
        since: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// The web dashboard of the replica this connects to.
    #[command(subcommand)]
    Dashboard(DashboardCommand),
    /// The current revision and every agent's state.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Exit 8 when an agent is disconnected or behind.
        #[arg(long)]
        check: bool,
    },
    /// The audit trail: every action on the control plane, who, from where
    /// and how it ended (auditor or admin).
    Audit {
        /// The newest this many records (0: every one).
        #[arg(long, default_value_t = 50)]
        last: u32,
        /// Check the whole trail here against the site CA: every record
        /// sealed by a replica, none edited, removed or reordered (exit 9
        /// if not).
        #[arg(long)]
        verify: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

/// A second factor, two-person changes and emergency access
/// (docs/governance.md).
#[derive(Subcommand)]
pub enum GovernanceCommand {
    /// Your second factor (TOTP, as authenticator apps make it).
    #[command(subcommand)]
    Mfa(MfaCommand),
    /// Exchange a code from your authenticator app for a session: changes
    /// need one once the site has role bindings. It lasts 30 minutes
    /// (unless the control plane says otherwise) and works only with this
    /// certificate.
    Login {
        /// The six digits (else asked for on the terminal).
        #[arg(long)]
        code: Option<String>,
    },
    /// End the session.
    Logout,
    /// File a change for another person's approval: a policy file (as
    /// `apply` takes it) or one document to delete.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["file", "delete"])))]
    Propose {
        #[arg(short, long)]
        file: Option<PathBuf>,
        #[arg(long, requires = "file")]
        prune: bool,
        /// KIND/NAME, e.g. policy/ws-to-ehr.
        #[arg(long)]
        delete: Option<String>,
        /// Why (shown to the approver, kept in the history).
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Change requests; with an id, one with its diff.
    Changes {
        id: Option<String>,
        /// open, approved, rejected or stale.
        #[arg(long)]
        state: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Approve another person's change request (approver): it is applied
    /// as shown, on the revision it was proposed against.
    Approve {
        id: String,
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Reject a change request (approver), or withdraw your own.
    Reject {
        id: String,
        #[arg(long)]
        note: String,
    },
    /// Open emergency access at once (break-glass role): an allow that the
    /// kernel closes on time, alerted to the SIEM, to be reviewed by
    /// another person afterwards.
    BreakGlass {
        /// Segments (or world), comma-separated or repeated.
        #[arg(long, required = true, value_delimiter = ',')]
        from: Vec<String>,
        #[arg(long, required = true, value_delimiter = ',')]
        to: Vec<String>,
        /// tcp/443, udp/5000-5010, icmp; none: every port.
        #[arg(long, value_delimiter = ',')]
        ports: Vec<String>,
        /// How long: 30m, 2h (1 minute to 12 hours).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// The clinical emergency.
        #[arg(long)]
        reason: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// What NODE enforced at a time: the attestation its agent signed
    /// then, checked here against the site CA (exit 9 if it fails).
    Attest {
        node: String,
        /// RFC 3339, or a duration back from now (2h); default now.
        #[arg(long, default_value = "")]
        at: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Evidence for auditors: the policy in force, what each node attested,
    /// changes with their authors and approvals, break-glass grants, role
    /// bindings, flows and the inventory, as one HTML page (and PDF).
    Report {
        /// RFC 3339, or a duration back from now.
        #[arg(long, default_value = "30d")]
        since: String,
        #[arg(long, default_value = "")]
        until: String,
        /// The HTML file to write.
        #[arg(long, default_value = "wardline-report.html")]
        out: PathBuf,
        /// Also print it to this PDF (headless Chromium).
        #[arg(long)]
        pdf: Option<PathBuf>,
        #[arg(long, env = "WARDCTL_CHROMIUM", default_value = "/usr/bin/chromium")]
        chromium: PathBuf,
    },
    /// Sign off the review of a break-glass grant someone else opened
    /// (approver).
    Review {
        id: String,
        #[arg(long)]
        note: String,
    },
}

/// Clinical operations (docs/clinical-operations.md): quarantine, vendor
/// windows, promotion to enforce, recommendation.
#[derive(Subcommand)]
pub enum ClinicalCommand {
    /// Isolate a device at once, fleet-wide: its connections are cut and
    /// everything but the flows of its keep-profile dropped.
    Quarantine {
        /// An IP address, or an Ethernet address the inventory has seen.
        target: String,
        /// What the device did (kept in the incident record).
        #[arg(long)]
        reason: String,
        /// A KeepProfile: the flows the device keeps (telemetry, alarms).
        #[arg(long, default_value = "")]
        keep: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// End a quarantine (by its id, or the target it was given).
    Release {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Quarantines, in force and released.
    Quarantines {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Vendor access windows.
    #[command(subcommand)]
    Vendor(VendorCommand),
    /// Switch a segment from monitor to enforce, only if no critical flow
    /// of the last days would have been dropped (else they are listed).
    Promote {
        segment: String,
        /// Days of observed flows to judge.
        #[arg(long, default_value_t = 7)]
        days: u32,
        /// Critical flows in the way: file the promotion for an approver.
        #[arg(long = "override", requires = "reason")]
        override_: bool,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Draft Policy YAML allowing exactly what a segment in monitor mode
    /// was seen doing.
    Recommend {
        #[arg(long)]
        segment: String,
        /// RFC 3339, or a duration back from now.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Write the draft here (else to standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `wardctl vendor`.
#[derive(Subcommand)]
pub enum VendorCommand {
    /// Give a vendor time-bounded access to a segment: the kernel opens
    /// and closes it on time; refused past the vendor's BAA.
    Grant {
        vendor: String,
        #[arg(long)]
        to: String,
        /// tcp/22, tcp/443, udp/5000-5010.
        #[arg(long, required = true, value_delimiter = ',')]
        ports: Vec<String>,
        /// RFC 3339, or a duration from now; default now.
        #[arg(long, default_value = "")]
        from: String,
        /// RFC 3339, or a duration from now (2h).
        #[arg(long)]
        until: String,
        /// The change ticket that authorises it.
        #[arg(long)]
        ticket: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Vendor grants; with an id, one.
    Grants {
        id: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Every flow of a grant's window that its policy decided.
    Flows {
        grant: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: FlowOutput,
    },
}

/// `wardctl mfa`.
#[derive(Subcommand)]
pub enum MfaCommand {
    /// Enrol (or replace, within a session) your second factor: shows a
    /// QR code for an authenticator app, then asks for a code from it.
    Enroll,
    /// Forget an operator's second factor (admin): they enrol again, and
    /// their sessions end.
    Reset {
        operator: String,
        #[arg(long)]
        reason: String,
    },
}

/// `wardctl dashboard`.
#[derive(Subcommand)]
pub enum DashboardCommand {
    /// Print a sign-in link to the dashboard in this operator's name: it
    /// works once, within a minute, in any browser (no client certificate
    /// needed there). Keep it to yourself: whoever opens it first is signed
    /// in as you.
    Login,
}

/// Revocation, answered by the control plane.
#[derive(Subcommand)]
pub enum RemotePki {
    /// Revoke a certificate: refused at the next handshake by every
    /// replica, its open streams closed. By --serial, by --certificate FILE,
    /// or every certificate of --role and --name issued until now.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["serial", "certificate", "name"])))]
    Revoke {
        /// The certificate's serial number, hex (as `pki issue` and openssl print it).
        #[arg(long)]
        serial: Option<String>,
        /// A certificate file (PEM): its serial is revoked.
        #[arg(long)]
        certificate: Option<PathBuf>,
        /// Every certificate of this name (with --role) issued until now.
        #[arg(long, requires = "role")]
        name: Option<String>,
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// Why (kept with the revocation).
        #[arg(long)]
        reason: String,
    },
}

/// The site CA's files, on this machine.
#[derive(Subcommand)]
pub enum LocalPki {
    /// Create the site CA in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        site: String,
    },
    /// Issue a certificate signed by the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Node name (agent), operator name, or control-plane host name.
        #[arg(long)]
        name: String,
        /// Extra DNS names or IP addresses (control plane).
        #[arg(long)]
        san: Vec<String>,
        /// Where to write NAME.pem and NAME-key.pem (default: DIR).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

/// A certificate's role, as `--role` takes it.
#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Agent,
    Operator,
    ControlPlane,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Agent => Role::Agent,
            RoleArg::Operator => Role::Operator,
            RoleArg::ControlPlane => Role::ControlPlane,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn role_names_are_the_certificates() {
        for role in RoleArg::value_variants() {
            let name = role
                .to_possible_value()
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default();
            assert_eq!(name, Role::from(*role).as_str());
        }
    }
}
