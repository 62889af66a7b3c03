//! Validated policy documents, as `docs/verdicts.md` defines them (their
//! fields in detail: `docs/policy-guide.md`).

use std::collections::BTreeMap;

use ipnet::IpNet;
use time::OffsetDateTime;

/// Every document of one policy source, validated as a whole: names are
/// unique, every segment a policy names exists, no two segments claim the
/// same prefix or VLAN.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySet {
    pub segments: Vec<Segment>,
    pub policies: Vec<Policy>,
    /// Nodes operators declared, with the labels `nodeSelector`s match.
    pub nodes: Vec<Node>,
    /// Rules that admit nodes without a `Node` document of their own.
    pub approvals: Vec<NodeApproval>,
    /// Who may read and change what (`kind: RoleBinding`).
    pub role_bindings: Vec<RoleBinding>,
    /// Named sets of operators that role bindings name (`kind: Group`).
    pub groups: Vec<Group>,
    /// Which changes need a second person (`kind: ChangeControl`): one at
    /// most.
    pub change_controls: Vec<ChangeControl>,
    /// The flows a quarantined device keeps (`kind: KeepProfile`).
    pub keep_profiles: Vec<KeepProfile>,
    /// Vendors who may be given time-bounded access (`kind: Vendor`).
    pub vendors: Vec<Vendor>,
    /// Flows patient care depends on (`kind: CriticalFlow`): a segment
    /// is promoted to enforce only if none of them would be dropped.
    pub critical_flows: Vec<CriticalFlow>,
}

/// A vendor with a business associate agreement on file (`kind: Vendor`).
#[derive(Clone, Debug, PartialEq)]
pub struct Vendor {
    pub name: String,
    /// Who to call: a name, a mail address, a telephone number.
    pub contact: String,
    /// The business associate agreement on file ends: no access is
    /// granted past it.
    pub baa_expires: OffsetDateTime,
    /// The segment the vendor's connections come from (its VPN pool or
    /// jump host): a grant's initiator.
    pub segment: String,
    pub doc: DocRef,
}

/// A flow patient care depends on (`kind: CriticalFlow`): central-station
/// telemetry, the infusion pumps' drug library, PACS to the modalities.
#[derive(Clone, Debug, PartialEq)]
pub struct CriticalFlow {
    pub name: String,
    pub from: Vec<Peer>,
    pub to: Vec<Peer>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortRule>,
    pub doc: DocRef,
}

impl CriticalFlow {
    /// Whether a connection from segment `src` to `dst` (by name; `world`
    /// for none) on `protocol` (IANA number) and `port` is this flow.
    pub fn covers(&self, src: &str, dst: &str, protocol: u8, port: u16) -> bool {
        let named = |peers: &[Peer], seg: &str| {
            peers.iter().any(|p| match p {
                Peer::Any => true,
                Peer::World => seg == "world",
                Peer::Segment(name) => name == seg,
            })
        };
        named(&self.from, src)
            && named(&self.to, dst)
            && (self.ports.is_empty() || self.ports.iter().any(|r| r.covers(protocol, port)))
    }
}

/// The flows a quarantined device keeps, for patient safety (`kind:
/// KeepProfile`): telemetry to the central station, alarms, NTP, DNS.
/// A quarantine that names the profile allows these and nothing else.
#[derive(Clone, Debug, PartialEq)]
pub struct KeepProfile {
    pub name: String,
    /// At least one.
    pub flows: Vec<KeepFlow>,
    pub doc: DocRef,
}

/// One flow of a keep-profile.
#[derive(Clone, Debug, PartialEq)]
pub struct KeepFlow {
    pub direction: KeepDirection,
    /// The other end: segment names, `world` or `any`.
    pub peers: Vec<Peer>,
    /// At least one: a keep flow names its service.
    pub ports: Vec<PortRule>,
}

/// Who opens a keep flow's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepDirection {
    /// The quarantined device opens them (`to:`).
    Opens,
    /// The peers open them to the device (`from:`).
    Accepts,
}

/// Which changes need a second person's approval, besides those that
/// always do (`kind: ChangeControl`; the control plane's
/// `wardline-approvals` applies it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeControl {
    pub name: String,
    /// The labels of critical segments; `None`: `critical: "true"`.
    pub critical_segments: Option<BTreeMap<String, String>>,
    /// Every change needs approval.
    pub every_change: bool,
    pub doc: DocRef,
}

/// An operator role, as role bindings name it. What each may do is the
/// control plane's (`wardline-roles`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Reads policy, status and flows.
    Viewer,
    /// A viewer who also reads the history and the audit trail.
    Auditor,
    /// Proposes and applies changes to segments and policies.
    Operator,
    /// Approves changes others propose.
    Approver,
    /// Changes role bindings, nodes and the PKI.
    Admin,
    /// Opens emergency access at once, for a clinical emergency, with no
    /// approval beforehand (another person reviews it afterwards).
    BreakGlass,
}

impl Role {
    /// Every role, in this order.
    pub const ALL: [Role; 6] = [
        Role::Viewer,
        Role::Auditor,
        Role::Operator,
        Role::Approver,
        Role::Admin,
        Role::BreakGlass,
    ];

    /// As role bindings write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Admin => "admin",
            Role::BreakGlass => "break-glass",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role given to operators (`kind: RoleBinding`): to those whose
/// certificate names one of `users`, and to the members of `groups`. With
/// `segments`, the role's changes are limited to segments whose labels
/// match it and to policies that name only such segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleBinding {
    pub name: String,
    pub role: Role,
    /// Operator certificate names (their common name).
    pub users: Vec<String>,
    /// Names of `Group` documents.
    pub groups: Vec<String>,
    /// Labels a segment must carry to be within the binding's reach.
    pub segments: Option<BTreeMap<String, String>>,
    pub doc: DocRef,
}

/// A named set of operators (`kind: Group`), by certificate name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
    pub doc: DocRef,
}

/// A node as operators declare it (`kind: Node`): the labels segments'
/// `nodeSelector`s match, and the address ranges it may claim. What a node
/// reports about itself when it registers never decides its labels, and
/// addresses it reports outside these ranges are never used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Normalised; at least one.
    pub addresses: Vec<IpNet>,
    pub doc: DocRef,
}

/// A rule that admits registering nodes without a `Node` document of
/// their own (`kind: NodeApproval`): nodes whose name matches one of
/// `nodes` get `labels` and may claim addresses within `addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeApproval {
    pub name: String,
    /// Node names; a pattern ending in `*` matches every name that starts
    /// with what comes before it.
    pub nodes: Vec<String>,
    pub addresses: Vec<IpNet>,
    /// The labels an admitted node is given.
    pub node_labels: BTreeMap<String, String>,
    pub doc: DocRef,
}

impl NodeApproval {
    /// Whether this rule's `nodes` name `node`.
    pub fn admits(&self, node: &str) -> bool {
        self.nodes
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => node.starts_with(prefix),
                None => node == pattern,
            })
    }
}

/// Where a document stands in its source, for error messages and events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocRef {
    /// 1-based position among the source's documents (`---` separated).
    pub index: usize,
    pub kind: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Normalised (host bits zero).
    pub cidrs: Vec<IpNet>,
    /// 802.1Q VLAN ids, 1..=4094.
    pub vlans: Vec<u16>,
    /// Managed mode: labels a node must carry for its addresses to join.
    pub node_selector: Option<BTreeMap<String, String>>,
    pub mode: Mode,
    /// A quarantine (`quarantine:`): never audited, never part of `any`.
    pub quarantine: Option<Quarantine>,
    pub doc: DocRef,
}

/// What marks a segment as a quarantine (`docs/verdicts.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantine {
    /// The segment the quarantined addresses belong to without it: frames
    /// tagged with its VLANs from these addresses are the quarantine's,
    /// not spoofed. `None`: tagged frames from them are spoofed.
    pub origin: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Allow,
    Deny,
}

/// One entry of a policy's `from` or `to`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// Every segment, `world` included.
    Any,
    /// Addresses that no segment claims.
    World,
    Segment(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
    /// Every protocol; with a port: TCP, UDP and SCTP on that port.
    Any,
}

impl Protocol {
    /// Protocols that carry ports.
    pub fn has_ports(self) -> bool {
        matches!(
            self,
            Protocol::Tcp | Protocol::Udp | Protocol::Sctp | Protocol::Any
        )
    }
}

/// One entry of a policy's `ports`. `port: None` means every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: Option<u16>,
    /// Inclusive end of a range; `None` for a single port.
    pub end_port: Option<u16>,
}

impl PortRule {
    /// Whether the entry covers `port` of IANA protocol `protocol`.
    pub fn covers(&self, protocol: u8, port: u16) -> bool {
        let (lo, hi) = self.range();
        match self.protocol {
            Protocol::Tcp => protocol == 6 && (lo..=hi).contains(&port),
            Protocol::Udp => protocol == 17 && (lo..=hi).contains(&port),
            Protocol::Sctp => protocol == 132 && (lo..=hi).contains(&port),
            Protocol::Icmp => protocol == 1,
            Protocol::Icmpv6 => protocol == 58,
            Protocol::Any if self.port.is_none() => true,
            Protocol::Any => matches!(protocol, 6 | 17 | 132) && (lo..=hi).contains(&port),
        }
    }

    /// The inclusive port range this entry covers.
    pub fn range(&self) -> (u16, u16) {
        match (self.port, self.end_port) {
            (None, _) => (0, u16::MAX),
            (Some(p), None) => (p, p),
            (Some(p), Some(e)) => (p, e),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub action: Action,
    pub from: Vec<Peer>,
    pub to: Vec<Peer>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortRule>,
    pub valid_from: Option<OffsetDateTime>,
    pub valid_until: Option<OffsetDateTime>,
    pub doc: DocRef,
}

impl Policy {
    /// Whether the policy is in force at `now` (its window, if any).
    pub fn in_force(&self, now: OffsetDateTime) -> bool {
        self.valid_from.is_none_or(|from| now >= from)
            && self.valid_until.is_none_or(|until| now < until)
    }
}
