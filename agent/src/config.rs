//! The agent's configuration (`docs/agent.md`): one `AgentConfig` document.
//!
//! Read within [`CONFIG_LIMITS`]: a configuration is a few dozen lines, so
//! a file much larger or deeper than that is refused before it is read
//! (`wardline_policy::yaml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use wardline_policy::reference::{FailsafeDirection, FailsafeFlow};
use wardline_policy::yaml::{self, Limits};
use wardline_policy::{NameError, NodeName};

/// Environment variables the agent reads, in one place.
pub mod env {
    /// Log filter, `tracing_subscriber::EnvFilter` syntax (default `info`).
    pub const LOG: &str = "WARDLINE_LOG";
}

pub const DEFAULT_STATUS_ADDRESS: &str = "127.0.0.1:9464";
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/wardline";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/wardline/agent";
/// Flow records waiting for the control plane may take this much disk by
/// default (`spec.flowBufferMiB`), and at most the larger figure.
const DEFAULT_FLOW_BUFFER_MIB: u32 = 64;
const MAX_FLOW_BUFFER_MIB: u32 = 4096;
/// A long connection's counts are reported this often by default
/// (`spec.flowUpdateSeconds`), and within these bounds (the agent sweeps
/// its tracking tables every 5 s).
const DEFAULT_FLOW_UPDATE_SECONDS: u32 = 60;
const FLOW_UPDATE_SECONDS: std::ops::RangeInclusive<u32> = 5..=3600;

/// What an agent configuration may ask of the YAML reader. The file
/// nests five levels (`spec.failsafe[0].cidrs`) and holds some hundred
/// values; these leave room for long interface and failsafe lists.
pub const CONFIG_LIMITS: Limits = Limits {
    what: "an agent configuration",
    max_bytes: 64 << 10,
    max_depth: 16,
    max_values: 10_000,
    max_alias_replays: 1_000,
};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML that cannot be read, is past a limit of [`CONFIG_LIMITS`], or
    /// does not fit the schema; the message leads with its line and column.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// A value the schema allows but the agent cannot use.
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    interfaces: Vec<String>,
    policy_file: Option<PathBuf>,
    control_plane: Option<ControlPlane>,
    status_address: Option<String>,
    bpffs: Option<PathBuf>,
    #[serde(default)]
    failsafe: Vec<FailsafeEntry>,
    #[serde(default)]
    pass_ethertypes: Vec<Ethertype>,
    flow_log: Option<String>,
    state_dir: Option<PathBuf>,
    #[serde(rename = "flowBufferMiB")]
    flow_buffer_mib: Option<u32>,
    flow_update_seconds: Option<u32>,
}

/// Managed mode's connection to the control plane.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlPlane {
    pub endpoint: String,
    /// More replicas, tried in turn after `endpoint` when it fails.
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailsafeEntry {
    direction: FailsafeDirection,
    protocol: String,
    port: u16,
    cidrs: Vec<String>,
}

/// An ethertype as a number (`0x88cc`, `35020`) in YAML, or `802.3` for
/// IEEE 802.3 frames whose ethertype field is a length (unquoted, YAML
/// reads that as the float 802.3, and any spelling of that float is taken).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum Ethertype {
    Number(u32),
    Float(f64),
    Text(String),
}

/// Where flow events go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowLog {
    Stdout,
    File(PathBuf),
    Off,
}

impl ControlPlane {
    /// `endpoint` first, then the other replicas.
    pub fn all_endpoints(&self) -> Vec<String> {
        let mut all = vec![self.endpoint.clone()];
        all.extend(
            self.endpoints
                .iter()
                .filter(|e| **e != self.endpoint)
                .cloned(),
        );
        all
    }
}

#[derive(Clone, Debug)]
pub enum Mode {
    Standalone { policy_file: PathBuf },
    Managed(ControlPlane),
}

/// A validated agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub interfaces: Vec<String>,
    pub mode: Mode,
    pub status_address: SocketAddr,
    pub bpffs: PathBuf,
    pub failsafe: Vec<FailsafeFlow>,
    pub pass_ethertypes: Vec<u16>,
    pub flow_log: FlowLog,
    /// Managed mode keeps the last snapshot here (`<stateDir>/<node>/`).
    pub state_dir: PathBuf,
    /// Managed mode: the most flow records waiting for the control plane
    /// may take on disk, in bytes.
    pub flow_buffer_bytes: u64,
    /// How often a long connection's byte and packet counts are reported.
    pub flow_update: std::time::Duration,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        let invalid = |field: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            message,
        };
        let doc: Document =
            yaml::from_str(text, &CONFIG_LIMITS).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        if doc.api_version != "wardline/v1" {
            return Err(invalid(
                "apiVersion",
                format!(
                    "{:?} is not supported; expected \"wardline/v1\"",
                    doc.api_version
                ),
            ));
        }
        if doc.kind != "AgentConfig" {
            return Err(invalid(
                "kind",
                format!("{:?}: expected \"AgentConfig\"", doc.kind),
            ));
        }
        let name: NodeName = doc
            .metadata
            .name
            .parse()
            .map_err(|err: NameError| invalid("metadata.name", err.to_string()))?;
        let spec = doc.spec;
        if spec.interfaces.is_empty() {
            return Err(invalid(
                "spec.interfaces",
                "at least one interface is required".into(),
            ));
        }
        for (i, ifname) in spec.interfaces.iter().enumerate() {
            if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['/', ' ']) {
                return Err(invalid(
                    &format!("spec.interfaces[{i}]"),
                    format!("{ifname:?} is not an interface name"),
                ));
            }
            if spec.interfaces[..i].contains(ifname) {
                return Err(invalid(
                    &format!("spec.interfaces[{i}]"),
                    format!("{ifname:?} is listed twice"),
                ));
            }
        }
        let mode = match (spec.policy_file, spec.control_plane) {
            (Some(policy_file), None) => Mode::Standalone { policy_file },
            (None, Some(cp)) => Mode::Managed(cp),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "spec",
                    "policyFile (standalone) and controlPlane (managed) exclude each other".into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "spec",
                    "either policyFile (standalone) or controlPlane (managed) is required".into(),
                ));
            }
        };
        let status = spec
            .status_address
            .unwrap_or_else(|| DEFAULT_STATUS_ADDRESS.to_owned());
        let status_address = status.parse().map_err(|_| {
            invalid(
                "spec.statusAddress",
                format!("{status:?} is not an address:port"),
            )
        })?;
        let mut failsafe = Vec::new();
        for (i, f) in spec.failsafe.into_iter().enumerate() {
            let field = format!("spec.failsafe[{i}]");
            let protocol = match f.protocol.as_str() {
                "tcp" => wardline_ebpf_abi::PROTO_TCP,
                "udp" => wardline_ebpf_abi::PROTO_UDP,
                "sctp" => wardline_ebpf_abi::PROTO_SCTP,
                other => {
                    return Err(invalid(
                        &format!("{field}.protocol"),
                        format!("{other:?}: a failsafe flow is tcp, udp or sctp"),
                    ));
                }
            };
            if f.port == 0 {
                return Err(invalid(&format!("{field}.port"), "0 is not a port".into()));
            }
            if f.cidrs.is_empty() {
                return Err(invalid(
                    &format!("{field}.cidrs"),
                    "at least one CIDR is required".into(),
                ));
            }
            let mut cidrs = Vec::new();
            for (j, c) in f.cidrs.iter().enumerate() {
                let net: IpNet = c.parse().map_err(|e| {
                    invalid(
                        &format!("{field}.cidrs[{j}]"),
                        format!("{c:?} is not a CIDR: {e}"),
                    )
                })?;
                cidrs.push(net.trunc());
            }
            failsafe.push(FailsafeFlow {
                direction: f.direction,
                protocol,
                port: f.port,
                cidrs,
            });
        }
        let mut pass_ethertypes = Vec::new();
        for (i, e) in spec.pass_ethertypes.into_iter().enumerate() {
            let field = format!("spec.passEthertypes[{i}]");
            let shown = match &e {
                Ethertype::Number(n) => format!("{n:#06x}"),
                Ethertype::Float(f) => f.to_string(),
                Ethertype::Text(t) => format!("{t:?}"),
            };
            let value = match &e {
                Ethertype::Float(_) if shown == "802.3" => {
                    pass_ethertypes.push(wardline_ebpf_abi::ETHERTYPE_802_3);
                    continue;
                }
                Ethertype::Text(t) if t == "802.3" => {
                    pass_ethertypes.push(wardline_ebpf_abi::ETHERTYPE_802_3);
                    continue;
                }
                Ethertype::Number(n) => Some(*n),
                Ethertype::Float(_) => None,
                Ethertype::Text(t) => t
                    .strip_prefix("0x")
                    .and_then(|h| u32::from_str_radix(h, 16).ok()),
            };
            match value {
                Some(v) if v < u32::from(wardline_ebpf_abi::ETH_P_802_3_MIN) => {
                    return Err(invalid(
                        &field,
                        format!(
                            "{shown} is below 0x0600, where the field is an IEEE 802.3 length, not an ethertype; write \"802.3\" to pass length-field frames"
                        ),
                    ));
                }
                Some(v) if v <= 0xffff => pass_ethertypes.push(v as u16),
                _ => {
                    return Err(invalid(
                        &field,
                        format!(
                            "{shown} is not an ethertype (0x0600..0xffff, or \"802.3\" for length-field frames)"
                        ),
                    ));
                }
            }
        }
        let flow_buffer_mib = spec.flow_buffer_mib.unwrap_or(DEFAULT_FLOW_BUFFER_MIB);
        if !(1..=MAX_FLOW_BUFFER_MIB).contains(&flow_buffer_mib) {
            return Err(invalid(
                "spec.flowBufferMiB",
                format!("{flow_buffer_mib} is not between 1 and {MAX_FLOW_BUFFER_MIB} MiB"),
            ));
        }
        let flow_update_seconds = spec
            .flow_update_seconds
            .unwrap_or(DEFAULT_FLOW_UPDATE_SECONDS);
        if !FLOW_UPDATE_SECONDS.contains(&flow_update_seconds) {
            return Err(invalid(
                "spec.flowUpdateSeconds",
                format!(
                    "{flow_update_seconds} is not between {} and {} seconds",
                    FLOW_UPDATE_SECONDS.start(),
                    FLOW_UPDATE_SECONDS.end()
                ),
            ));
        }
        let flow_log = match spec.flow_log.as_deref() {
            None | Some("stdout") => FlowLog::Stdout,
            Some("off") => FlowLog::Off,
            Some(p) => FlowLog::File(PathBuf::from(p)),
        };
        Ok(AgentConfig {
            node: name.into(),
            labels: doc.metadata.labels,
            interfaces: spec.interfaces,
            mode,
            status_address,
            bpffs: spec.bpffs.unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS)),
            failsafe,
            pass_ethertypes,
            flow_log,
            state_dir: spec
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            flow_buffer_bytes: u64::from(flow_buffer_mib) << 20,
            flow_update: std::time::Duration::from_secs(u64::from(flow_update_seconds)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("agent.yaml"), text)
    }

    const GOOD: &str = r#"
apiVersion: wardline/v1
kind: AgentConfig
metadata:
  name: gw-icu
  labels: {role: gateway}
spec:
  interfaces: [eth0, eth1]
  policyFile: /etc/wardline/policy.yaml
  statusAddress: 127.0.0.1:9464
  failsafe:
    - {direction: ingress, protocol: tcp, port: 22, cidrs: ["198.18.250.0/24"]}
  passEthertypes: [0x88cc, "0x88e5"]
"#;

    #[test]
    fn the_spec_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node, "gw-icu");
        assert_eq!(c.interfaces, ["eth0", "eth1"]);
        assert!(matches!(c.mode, Mode::Standalone { .. }));
        assert_eq!(c.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert_eq!(c.failsafe.len(), 1);
        assert_eq!(c.pass_ethertypes, [0x88cc, 0x88e5]);
        assert_eq!(c.flow_log, FlowLog::Stdout);
        assert_eq!(c.flow_update, std::time::Duration::from_secs(60));
    }

    #[test]
    fn flow_update_seconds_is_bounded() {
        let with = |n: &str| {
            parse(&GOOD.replace(
                "  passEthertypes",
                &format!("  flowUpdateSeconds: {n}\n  passEthertypes"),
            ))
        };
        assert_eq!(
            with("5").unwrap().flow_update,
            std::time::Duration::from_secs(5)
        );
        for bad in ["4", "3601", "0"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(
                err.contains("spec.flowUpdateSeconds") && err.contains("between 5 and 3600"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn pass_ethertypes_accepts_802_3() {
        let c = parse(&GOOD.replace(
            "passEthertypes: [0x88cc, \"0x88e5\"]",
            "passEthertypes: [\"802.3\", 0x88cc, 1536, \"0xffff\", 802.3]",
        ))
        .expect("802.3, quoted or not, and ethertypes parse");
        assert_eq!(
            c.pass_ethertypes,
            [
                wardline_ebpf_abi::ETHERTYPE_802_3,
                0x88cc,
                0x0600,
                0xffff,
                wardline_ebpf_abi::ETHERTYPE_802_3
            ]
        );
    }

    #[test]
    fn pass_ethertypes_below_0x0600_say_to_write_802_3() {
        for value in ["0x0100", "0x05ff", "0", "1500", "\"0x05dc\""] {
            let text = GOOD.replace(
                "passEthertypes: [0x88cc, \"0x88e5\"]",
                &format!("passEthertypes: [0x88cc, {value}]"),
            );
            let Err(err) = parse(&text) else {
                panic!("{value} is accepted as an ethertype");
            };
            let err = err.to_string();
            assert!(
                err.contains("spec.passEthertypes[1]") && err.contains("write \"802.3\""),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn pass_ethertypes_rejects_what_is_no_ethertype() {
        for value in [
            "0x10000",
            "70000",
            "802.2",
            "1536.5",
            "\"802.2\"",
            "\"lldp\"",
            "\"802.3 \"",
        ] {
            let text = GOOD.replace(
                "passEthertypes: [0x88cc, \"0x88e5\"]",
                &format!("passEthertypes: [{value}]"),
            );
            let Err(err) = parse(&text) else {
                panic!("{value} is accepted as an ethertype");
            };
            let err = err.to_string();
            assert!(
                err.contains("spec.passEthertypes[0]") && err.contains("is not an ethertype"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: [(&str, &str, &str); 8] = [
            (
                "interfaces: [eth0, eth1]",
                "interfaces: []",
                "spec.interfaces: at least one",
            ),
            (
                "name: gw-icu",
                "name: GW",
                "metadata.name: \"GW\" is not a DNS label",
            ),
            ("port: 22", "port: 0", "spec.failsafe[0].port"),
            (
                "protocol: tcp",
                "protocol: icmp",
                "spec.failsafe[0].protocol",
            ),
            (
                "198.18.250.0/24",
                "198.18.250.0/40",
                "spec.failsafe[0].cidrs[0]",
            ),
            ("127.0.0.1:9464", "localhost", "spec.statusAddress"),
            ("0x88cc,", "0x0100,", "spec.passEthertypes[0]"),
            ("kind: AgentConfig", "kind: Agent", "kind: \"Agent\""),
        ];
        for (from, to, expected) in cases {
            let text = GOOD.replace(from, to);
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{to}: got {err:?}, expected {expected:?}"
            );
        }
        let err = parse(&GOOD.replace("  statusAddress", "  statusAdress")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `statusAdress`"),
            "{err}"
        );
        let err =
            parse(&GOOD.replace("  policyFile: /etc/wardline/policy.yaml\n", "")).unwrap_err();
        assert!(err.to_string().contains("either policyFile"), "{err}");
    }

    /// `GOOD` with its ethertypes replaced by `list`, a YAML flow or block
    /// sequence: each entry is read whole, whatever it holds.
    fn with_ethertypes(list: &str) -> String {
        GOOD.replace(
            "passEthertypes: [0x88cc, \"0x88e5\"]",
            &format!("passEthertypes: {list}"),
        )
    }

    #[test]
    fn an_alias_bomb_is_refused_naming_the_limit() {
        // Nine anchors, each nine aliases of the one before: 9^9 values, in
        // one ethertype entry, which is read whole before it is checked.
        let mut bomb = String::from("\n    - [&a [lol, lol, lol, lol, lol, lol, lol, lol, lol]");
        for (anchor, alias) in "bcdefghi".chars().zip("abcdefgh".chars()) {
            let aliases = vec![format!("*{alias}"); 9].join(", ");
            bomb.push_str(&format!(",\n       &{anchor} [{aliases}]"));
        }
        bomb.push(']');
        let text = with_ethertypes(&bomb);
        assert!(text.len() < 1000, "{}", text.len());
        let err = parse(&text).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(
            err.to_string().ends_with(&format!(
                "aliases expand to more than {} values, the limit for an agent configuration",
                CONFIG_LIMITS.max_alias_replays
            )),
            "{err}"
        );
    }

    #[test]
    fn a_hundred_levels_of_nesting_are_refused_naming_the_limit() {
        let expected = format!(
            "nested more than {} levels deep, the limit for an agent configuration",
            CONFIG_LIMITS.max_depth
        );
        let lists = with_ethertypes(&format!("[{}{}]", "[".repeat(100), "]".repeat(100)));
        let mappings = with_ethertypes(&format!("[{}x{}]", "{a: ".repeat(100), "}".repeat(100)));
        for text in [lists, mappings] {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.starts_with("agent.yaml: line "), "{err}");
            assert!(err.ends_with(&expected), "{err}");
        }
    }

    #[test]
    fn a_config_over_the_size_limit_is_refused() {
        let mut text = GOOD.to_owned();
        text.push_str(&"# padding\n".repeat(CONFIG_LIMITS.max_bytes / 10));
        assert!(text.len() > CONFIG_LIMITS.max_bytes);
        let err = parse(&text).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "agent.yaml: {} bytes is too large for an agent configuration (at most 65536 bytes)",
                text.len()
            )
        );
    }
}
