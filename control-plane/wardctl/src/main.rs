//! `wardctl`: the operators' command line for the Wardline control plane.
//!
//! Exit codes, for scripts:
//! 0 done; 1 any other failure; 2 bad command line; 3 policy invalid;
//! 4 stale revision (someone changed the policy first); 5 not found;
//! 6 control plane unreachable; 7 refused (certificate not accepted or not
//! allowed); 8 `status --check`: an agent is disconnected or behind.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};
use wardline_pki as pki;
use wardline_proto::v1::{self, management_client::ManagementClient};
use wardline_tls::{MAX_MESSAGE_BYTES, Role, ServerAddress};

const EXIT_FAILURE: u8 = 1;
const EXIT_INVALID: u8 = 3;
const EXIT_CONFLICT: u8 = 4;
const EXIT_NOT_FOUND: u8 = 5;
const EXIT_UNAVAILABLE: u8 = 6;
const EXIT_REFUSED: u8 = 7;
const EXIT_UNHEALTHY: u8 = 8;

/// Environment variables wardctl reads, in one place.
mod env {
    pub const CONFIG: &str = "WARDCTL_CONFIG";
    pub const ENDPOINT: &str = "WARDCTL_ENDPOINT";
    pub const CA: &str = "WARDCTL_CA";
    pub const CERT: &str = "WARDCTL_CERT";
    pub const KEY: &str = "WARDCTL_KEY";
}

/// Operate the Wardline control plane.
#[derive(Parser)]
#[command(name = "wardctl", version)]
struct Cli {
    /// Control plane, https://host:port (else $WARDCTL_ENDPOINT, else the config file).
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// Site CA certificate (else $WARDCTL_CA, else the config file).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Operator certificate (else $WARDCTL_CERT, else the config file).
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// Operator key (else $WARDCTL_KEY, else the config file).
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Config file (else $WARDCTL_CONFIG, else ~/.config/wardline/wardctl.yaml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Subcommand)]
enum Command {
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
    /// Validate a file offline, with the control plane's own rules.
    Validate {
        #[arg(short, long)]
        file: PathBuf,
    },
    /// What applying a file would change.
    Diff {
        #[arg(short, long)]
        file: PathBuf,
        #[arg(long)]
        prune: bool,
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
    /// Delete a document (segment or policy) or forget a node.
    Delete {
        kind: String,
        name: String,
        #[arg(long)]
        expected_revision: Option<u64>,
        #[arg(short, long, default_value = "")]
        message: String,
    },
    /// Every revision: who changed what, when, why.
    History {
        #[arg(long, default_value_t = 0)]
        limit: u32,
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
    /// The current revision and every agent's state.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
        /// Exit 8 when an agent is disconnected or behind.
        #[arg(long)]
        check: bool,
    },
    /// The site's certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Subcommand)]
enum PkiCommand {
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
        #[arg(long, value_parser = ["agent", "operator", "control-plane"])]
        role: String,
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

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ConfigFile {
    endpoint: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

struct Failure {
    code: u8,
    message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn from_status(s: tonic::Status) -> Failure {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument => EXIT_INVALID,
        Code::FailedPrecondition | Code::Aborted => EXIT_CONFLICT,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::Unavailable | Code::DeadlineExceeded => EXIT_UNAVAILABLE,
        Code::Unauthenticated | Code::PermissionDenied => EXIT_REFUSED,
        _ => EXIT_FAILURE,
    };
    fail(code, s.message().to_owned())
}

struct Connection {
    endpoint: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn connection(cli: &Cli) -> Result<Connection, Failure> {
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os(env::CONFIG).map(PathBuf::from))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/wardline/wardctl.yaml"))
        });
    let file: ConfigFile = match &path {
        Some(p) if p.exists() => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", p.display())))?;
            serde_yaml::from_str(&text)
                .map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", p.display())))?
        }
        _ => ConfigFile::default(),
    };
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let need = |v: Option<PathBuf>, what: &str| {
        v.ok_or_else(|| {
            fail(
                EXIT_FAILURE,
                format!(
                    "no {what}: give --{what}, set the environment variable, or the config file"
                ),
            )
        })
    };
    Ok(Connection {
        endpoint: cli
            .endpoint
            .clone()
            .or_else(|| std::env::var(env::ENDPOINT).ok())
            .or(file.endpoint)
            .ok_or_else(|| {
                fail(
                    EXIT_FAILURE,
                    "no endpoint: give --endpoint, WARDCTL_ENDPOINT or the config file",
                )
            })?,
        ca: need(
            cli.ca.clone().or_else(|| var(env::CA)).or(file.ca_file),
            "ca",
        )?,
        cert: need(
            cli.cert
                .clone()
                .or_else(|| var(env::CERT))
                .or(file.cert_file),
            "cert",
        )?,
        key: need(
            cli.key.clone().or_else(|| var(env::KEY)).or(file.key_file),
            "key",
        )?,
    })
}

async fn client(c: &Connection) -> Result<ManagementClient<tonic::transport::Channel>, Failure> {
    let address: ServerAddress = c
        .endpoint
        .parse()
        .map_err(|e: wardline_tls::AddressError| fail(EXIT_FAILURE, e.to_string()))?;
    let channel = wardline_tls::client_endpoint(&address, &c.ca, &c.cert, &c.key)
        .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?
        .timeout(Duration::from_secs(60))
        .connect()
        .await
        .map_err(|e| {
            let mut msg = format!("{}: {e}", c.endpoint);
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            fail(EXIT_UNAVAILABLE, msg)
        })?;
    Ok(ManagementClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

fn read_file(path: &PathBuf) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", path.display())))
}

fn print_value(output: Output, value: &Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Yaml => print!("{}", serde_yaml::to_string(value).unwrap_or_default()),
        Output::Table => print!("{}", table()),
    }
}

/// Left-aligned columns.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

fn changes_json(c: &[v1::Change]) -> Value {
    Value::Array(
        c.iter()
            .map(|c| json!({"kind": c.kind, "name": c.name, "action": c.action}))
            .collect(),
    )
}

fn changes_text(c: &[v1::Change]) -> String {
    if c.len() <= 3 {
        return c
            .iter()
            .map(|c| format!("{} {} {}", c.action, c.kind.to_lowercase(), c.name))
            .collect::<Vec<_>>()
            .join(", ");
    }
    // Many changes: counted by action and kind (-o json lists them all).
    let mut counts: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for c in c {
        *counts
            .entry((c.action.as_str(), c.kind.as_str()))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|((action, kind), n)| format!("{action} {n} {}", kind.to_lowercase()))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Validate { file } => {
            let source = read_file(file)?;
            match wardline_policy::parse(&source) {
                Ok(set) => {
                    println!(
                        "{}: valid ({} segments, {} policies)",
                        file.display(),
                        set.segments.len(),
                        set.policies.len()
                    );
                    Ok(())
                }
                Err(errors) => Err(fail(
                    EXIT_INVALID,
                    format!("{}: invalid:\n{errors}", file.display()),
                )),
            }
        }
        Command::Pki(PkiCommand::Init { dir, site }) => {
            let paths = pki::init_ca(dir, site).map_err(|e| fail(EXIT_FAILURE, e.to_string()))?;
            println!("site CA for {site:?} written: {paths:?}");
            Ok(())
        }
        Command::Pki(PkiCommand::Issue {
            dir,
            role,
            name,
            san,
            out,
            days,
        }) => {
            let role = match role.as_str() {
                "agent" => Role::Agent,
                "operator" => Role::Operator,
                _ => Role::ControlPlane,
            };
            let paths = pki::issue(dir, role, name, san, out.as_deref().unwrap_or(dir), *days)
                .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?;
            println!("certificate for {name:?} written: {paths:?}");
            Ok(())
        }
        _ => {
            let conn = connection(&cli)?;
            let mut c = client(&conn).await?;
            remote(&cli.command, &mut c).await
        }
    }
}

async fn remote(
    command: &Command,
    c: &mut ManagementClient<tonic::transport::Channel>,
) -> Result<(), Failure> {
    match command {
        Command::Apply {
            file,
            prune,
            expected_revision,
            message,
            output,
        } => {
            let source = read_file(file)?;
            let r = c
                .apply(v1::ApplyRequest {
                    source,
                    expected_revision: *expected_revision,
                    message: message.clone(),
                    prune: *prune,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = json!({"revision": r.revision, "unchanged": r.unchanged, "changes": changes_json(&r.changes)});
            print_value(*output, &value, || {
                if r.unchanged {
                    format!(
                        "unchanged: revision {} already has these documents\n",
                        r.revision
                    )
                } else {
                    format!(
                        "applied as revision {}: {}\n",
                        r.revision,
                        changes_text(&r.changes)
                    )
                }
            });
        }
        Command::Diff { file, prune } => {
            let source = read_file(file)?;
            let r = c
                .diff(v1::DiffRequest {
                    source,
                    prune: *prune,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            if r.changes.is_empty() {
                println!("no changes against revision {}", r.revision);
            } else {
                println!(
                    "against revision {}: {}",
                    r.revision,
                    changes_text(&r.changes)
                );
                print!("{}", r.diff);
            }
        }
        Command::Get {
            kind,
            name,
            revision,
            output,
        } => {
            let r = c
                .get(v1::GetRequest {
                    kind: kind.clone().unwrap_or_default(),
                    name: name.clone().unwrap_or_default(),
                    revision: *revision,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            match output {
                Output::Yaml => {
                    for d in &r.documents {
                        print!("---\n{}", d.yaml);
                    }
                }
                Output::Json => {
                    let docs: Vec<Value> = r
                        .documents
                        .iter()
                        .map(|d| {
                            let doc: Value = serde_yaml::from_str(&d.yaml).unwrap_or(Value::Null);
                            json!({"kind": d.kind, "name": d.name, "document": doc})
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"revision": r.revision, "documents": docs})
                        )
                        .unwrap_or_default()
                    );
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = r
                        .documents
                        .iter()
                        .map(|d| vec![d.kind.clone(), d.name.clone()])
                        .collect();
                    print!("{}", table(&["KIND", "NAME"], &rows));
                    println!("(revision {})", r.revision);
                }
            }
        }
        Command::Delete {
            kind,
            name,
            expected_revision,
            message,
        } => {
            let r = c
                .delete(v1::DeleteRequest {
                    kind: kind.clone(),
                    name: name.clone(),
                    expected_revision: *expected_revision,
                    message: message.clone(),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            println!("deleted {kind} {name}; revision {}", r.revision);
        }
        Command::History { limit, output } => {
            let r = c
                .history(v1::HistoryRequest { limit: *limit })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = Value::Array(
                r.revisions
                    .iter()
                    .map(|h| {
                        json!({"revision": h.revision, "time": h.time, "author": h.author,
                               "action": h.action, "message": h.message,
                               "changes": changes_json(&h.changes), "policySha256": h.policy_sha256,
                               "segments": h.segments, "policies": h.policies})
                    })
                    .collect(),
            );
            print_value(*output, &value, || {
                let rows: Vec<Vec<String>> = r
                    .revisions
                    .iter()
                    .map(|h| {
                        vec![
                            h.revision.to_string(),
                            h.time.clone(),
                            h.author.clone(),
                            h.action.clone(),
                            changes_text(&h.changes),
                            h.message.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["REVISION", "TIME", "AUTHOR", "ACTION", "CHANGES", "MESSAGE"],
                    &rows,
                )
            });
        }
        Command::Rollback {
            revision,
            expected_revision,
            message,
        } => {
            let r = c
                .rollback(v1::RollbackRequest {
                    to_revision: *revision,
                    expected_revision: *expected_revision,
                    message: message.clone(),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            println!(
                "rolled back to revision {revision} as revision {}: {}",
                r.revision,
                changes_text(&r.changes)
            );
        }
        Command::Status { output, check } => {
            let r = c
                .status(v1::StatusRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            let value = json!({
                "revision": r.revision, "policySha256": r.policy_sha256, "replica": r.replica,
                "agents": r.agents.iter().map(|a| json!({
                    "node": a.node, "connected": a.connected, "ackedRevision": a.acked_revision,
                    "behind": a.behind, "lastHeartbeat": a.last_heartbeat, "generation": a.generation,
                    "addresses": a.addresses, "labels": a.labels, "replica": a.replica, "error": a.error,
                })).collect::<Vec<_>>(),
            });
            print_value(*output, &value, || {
                let rows: Vec<Vec<String>> = r
                    .agents
                    .iter()
                    .map(|a| {
                        vec![
                            a.node.clone(),
                            if a.connected { "yes" } else { "NO" }.to_owned(),
                            a.acked_revision.to_string(),
                            if a.behind { "BEHIND" } else { "" }.to_owned(),
                            a.last_heartbeat.clone(),
                            a.replica.clone(),
                            a.error.clone(),
                        ]
                    })
                    .collect();
                format!(
                    "revision {} (policy sha256 {}), answered by {}\n{}",
                    r.revision,
                    r.policy_sha256,
                    r.replica,
                    table(
                        &[
                            "NODE",
                            "CONNECTED",
                            "ACKED",
                            "STATE",
                            "LAST HEARTBEAT",
                            "REPLICA",
                            "ERROR"
                        ],
                        &rows
                    )
                )
            });
            if *check && r.agents.iter().any(|a| !a.connected || a.behind) {
                return Err(fail(EXIT_UNHEALTHY, "an agent is disconnected or behind"));
            }
        }
        Command::Validate { .. } | Command::Pki(_) => unreachable!("handled locally"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wardctl: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("wardctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
