//! Compilation of a validated [`PolicySet`] into the tables the kernel reads.
//!
//! The result, [`Dataplane`], is the one compiled form: the standalone agent
//! and the control plane produce it the same way, and the agent only programs
//! it into maps. Rule lookups cost the same at 10 rules or 100,000: the kernel
//! looks up at most eight (protocol, source segment or `any`, destination
//! segment or `any`) triples per new connection, each by a few hash probes
//! of the port's prefixes.
//! Port ranges are split into prefixes of the port's bits; where policies
//! overlap on a port, the compiler merges them into one entry that carries
//! both the lowest deny id and the lowest allow id, so that "deny wins" needs
//! no ordering in the kernel.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use time::OffsetDateTime;
use wardline_ebpf_abi::{
    MARK_MONITOR, MARK_QUARANTINE, PROTO_ANY, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, RuleValue, SEGMENT_ANY, SEGMENT_WORLD, SegmentMarks, config_flags,
};

use crate::model::{Action, Mode, Peer, PolicySet, Protocol};

/// A node as it registered with the control plane, for segments with a
/// `nodeSelector`: only a claim, judged by [`crate::nodes::admit`].
pub type NodeInfo = crate::nodes::Registration;

/// A node left out of segment membership because its addresses collide
/// with a segment's or another node's: reported, never an error, so that
/// one node can never block an apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConflict {
    pub node: String,
    pub address: IpAddr,
    /// The segment the node's labels put the address in.
    pub segment: String,
    /// The segment that already holds it.
    pub other: String,
}

impl std::fmt::Display for NodeConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} left out: its address {} would join segment {}, but segment {} already holds it",
            self.node, self.address, self.segment, self.other
        )
    }
}

#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Policies are compiled as in force at this instant.
    pub now: OffsetDateTime,
    /// Registered nodes, whose addresses join segments that select them.
    pub nodes: Vec<NodeInfo>,
}

impl CompileOptions {
    pub fn at(now: OffsetDateTime) -> Self {
        CompileOptions {
            now,
            nodes: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// More prefixes than the dataplane holds.
    #[error("the policy needs {needed} prefixes; the dataplane holds {limit}")]
    TooManyPrefixes { needed: usize, limit: usize },
    /// More rule entries than the dataplane holds.
    #[error(
        "the policy compiles to {needed} rule entries (port ranges split into prefixes); the dataplane holds {limit}"
    )]
    TooManyRules { needed: usize, limit: usize },
    /// More (protocol, source, destination) triples with port ranges than
    /// the dataplane holds.
    #[error(
        "the policy has port ranges for {needed} (protocol, source segment, destination segment) combinations; the dataplane holds {limit}"
    )]
    TooManyRangeTriples { needed: usize, limit: usize },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledSegment {
    /// 1-based; 0 is `world`.
    pub id: u32,
    pub name: String,
    pub mode: Mode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// 1-based; 0 means "no policy".
    pub id: u32,
    pub name: String,
    pub action: Action,
    /// Whether its window includes the compile instant.
    pub in_force: bool,
}

/// One entry of the rule table: a port prefix for a (protocol, source,
/// destination) triple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleEntry {
    pub proto: u8,
    /// Segment id or [`SEGMENT_ANY`].
    pub src: u32,
    pub dst: u32,
    pub port: u16,
    /// Bits of `port` that must match (0..=16).
    pub port_bits: u8,
    pub value: RuleValue,
}

/// The compiled form of a policy set: everything the kernel needs, nothing
/// it does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataplane {
    pub segments: Vec<CompiledSegment>,
    pub policies: Vec<CompiledPolicy>,
    /// Normalised prefixes and the segment each belongs to.
    pub prefixes: Vec<(IpNet, u32)>,
    /// VLAN id to segment id.
    pub vlans: Vec<(u16, u32)>,
    /// Segments in monitor mode or quarantine, and their marks.
    pub marks: Vec<(u32, SegmentMarks)>,
    pub rules: Vec<RuleEntry>,
    /// Nodes left out of segment membership, and why.
    pub node_conflicts: Vec<NodeConflict>,
    /// [`config_flags`] that describe the rule table.
    pub flags: u32,
    /// The next instant a policy window opens or closes, when the tables must
    /// be compiled again.
    pub next_change: Option<OffsetDateTime>,
}

/// The tables in force now and at each of the next policy window
/// boundaries: what an agent needs to open and close windows on time
/// without the policy source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub now: Dataplane,
    /// In time order, each strictly after the one before.
    pub ahead: Vec<(OffsetDateTime, Dataplane)>,
}

impl Schedule {
    /// Compiles `set` as in force at `options.now` and at each of the next
    /// `max_ahead` window boundaries after it.
    pub fn compile(
        set: &PolicySet,
        options: &CompileOptions,
        max_ahead: usize,
    ) -> Result<Schedule, CompileError> {
        let now = Dataplane::compile(set, options)?;
        let mut ahead = Vec::new();
        let mut next = now.next_change.filter(|t| *t > options.now);
        while let Some(at) = next {
            if ahead.len() >= max_ahead {
                break;
            }
            let dp = Dataplane::compile(
                set,
                &CompileOptions {
                    now: at,
                    nodes: options.nodes.clone(),
                },
            )?;
            next = dp.next_change.filter(|t| *t > at);
            ahead.push((at, dp));
        }
        Ok(Schedule { now, ahead })
    }

    /// The schedule as it stands at `at`: the last boundary passed becomes
    /// the tables now, the ones still ahead stay. `None` when nothing
    /// passed.
    pub fn advance(&self, at: OffsetDateTime) -> Option<Schedule> {
        let passed = self.ahead.iter().take_while(|(t, _)| *t <= at).count();
        if passed == 0 {
            return None;
        }
        Some(Schedule {
            now: self.ahead[passed - 1].1.clone(),
            ahead: self.ahead[passed..].to_vec(),
        })
    }

    /// When the tables next change: the first boundary ahead.
    pub fn next_change(&self) -> Option<OffsetDateTime> {
        self.ahead.first().map(|(t, _)| *t)
    }
}

/// Per-generation capacity of the kernel's tables.
pub const PREFIX_LIMIT: usize = wardline_ebpf_abi::PREFIXES_PER_GENERATION as usize;
pub const RULE_LIMIT: usize = wardline_ebpf_abi::RULES_PER_GENERATION as usize;
pub const RANGE_TRIPLE_LIMIT: usize = wardline_ebpf_abi::RANGED_TRIPLES_PER_GENERATION as usize;

impl Dataplane {
    pub fn compile(set: &PolicySet, options: &CompileOptions) -> Result<Dataplane, CompileError> {
        let ids = Ids::new(set);
        let segments = ids.segments(set);
        let (prefixes, node_conflicts) = prefixes(set, &ids, &options.nodes);
        if prefixes.len() > PREFIX_LIMIT {
            return Err(CompileError::TooManyPrefixes {
                needed: prefixes.len(),
                limit: PREFIX_LIMIT,
            });
        }
        let mut vlans: Vec<(u16, u32)> = set
            .segments
            .iter()
            .flat_map(|s| s.vlans.iter().map(|v| (*v, ids.segment(&s.name))))
            .collect();
        vlans.sort_unstable();
        let marks: Vec<(u32, SegmentMarks)> = set
            .segments
            .iter()
            .filter_map(|s| {
                let mut flags = 0;
                if s.mode == Mode::Monitor {
                    flags |= MARK_MONITOR;
                }
                if s.quarantine.is_some() {
                    flags |= MARK_QUARANTINE;
                }
                let origin = s
                    .quarantine
                    .as_ref()
                    .and_then(|q| q.origin.as_deref())
                    .map_or(SEGMENT_WORLD, |o| ids.segment(o));
                (flags != 0).then_some((ids.segment(&s.name), SegmentMarks { flags, origin }))
            })
            .collect();

        let policies: Vec<CompiledPolicy> = set
            .policies
            .iter()
            .map(|p| CompiledPolicy {
                id: ids.policy(&p.name),
                name: p.name.clone(),
                action: p.action,
                in_force: p.in_force(options.now),
            })
            .collect();

        let (rules, mut flags) = rules(set, &ids, options.now);
        for (_, m) in &marks {
            if m.flags & MARK_MONITOR != 0 {
                flags |= config_flags::HAS_MONITOR;
            }
            if m.flags & MARK_QUARANTINE != 0 {
                flags |= config_flags::HAS_QUARANTINE;
            }
        }
        if rules.len() > RULE_LIMIT {
            return Err(CompileError::TooManyRules {
                needed: rules.len(),
                limit: RULE_LIMIT,
            });
        }
        let ranged: std::collections::BTreeSet<(u8, u32, u32)> = rules
            .iter()
            .filter(|r| r.port_bits < 16)
            .map(|r| (r.proto, r.src, r.dst))
            .collect();
        if ranged.len() > RANGE_TRIPLE_LIMIT {
            return Err(CompileError::TooManyRangeTriples {
                needed: ranged.len(),
                limit: RANGE_TRIPLE_LIMIT,
            });
        }

        let next_change = set
            .policies
            .iter()
            .flat_map(|p| [p.valid_from, p.valid_until])
            .flatten()
            .filter(|t| *t > options.now)
            .min();

        let mut policies = policies;
        policies.sort_by_key(|p| p.id);
        Ok(Dataplane {
            segments,
            policies,
            prefixes,
            vlans,
            marks,
            rules,
            node_conflicts,
            flags,
            next_change,
        })
    }

    pub fn segment_name(&self, id: u32) -> &str {
        match id {
            SEGMENT_WORLD => "world",
            SEGMENT_ANY => "any",
            id => self
                .segments
                .get(id as usize - 1)
                .map_or("unknown", |s| s.name.as_str()),
        }
    }

    /// The kernel's lookup algorithm run over the compiled tables: up to
    /// eight exact-key, longest-port-prefix lookups, deny before allow, then
    /// monitor mode, then default deny. Used to test the compiler against
    /// the reference and to explain a verdict.
    pub fn decide(
        &self,
        src: u32,
        dst: u32,
        proto: u8,
        port: u16,
    ) -> (wardline_ebpf_abi::Reason, u32) {
        use wardline_ebpf_abi::Reason;
        let mut deny = 0;
        let mut allow = 0;
        let marks = |id: u32| {
            self.marks
                .iter()
                .find(|(s, _)| *s == id)
                .map_or(0, |(_, m)| m.flags)
        };
        let (src_marks, dst_marks) = (marks(src), marks(dst));
        let srcs: &[u32] = if src_marks & MARK_QUARANTINE != 0 {
            &[src]
        } else {
            &[src, SEGMENT_ANY]
        };
        let dsts: &[u32] = if dst_marks & MARK_QUARANTINE != 0 {
            &[dst]
        } else {
            &[dst, SEGMENT_ANY]
        };
        for &s in srcs {
            for &d in dsts {
                for (p, n) in [(proto, port), (PROTO_ANY, 0)] {
                    let hit = self.rules.iter().find(|r| {
                        r.proto == p
                            && r.src == s
                            && r.dst == d
                            && (r.port_bits == 0
                                || r.port >> (16 - r.port_bits) == n >> (16 - r.port_bits))
                    });
                    if let Some(r) = hit {
                        for (slot, id) in [(&mut deny, r.value.deny), (&mut allow, r.value.allow)] {
                            if id != 0 && (*slot == 0 || id < *slot) {
                                *slot = id;
                            }
                        }
                    }
                }
            }
        }
        if deny != 0 {
            (Reason::PolicyDeny, deny)
        } else if allow != 0 {
            (Reason::PolicyAllow, allow)
        } else if (src_marks | dst_marks) & MARK_MONITOR != 0
            && (src_marks | dst_marks) & MARK_QUARANTINE == 0
        {
            (Reason::Monitor, 0)
        } else {
            (Reason::DefaultDeny, 0)
        }
    }

    pub fn policy_name(&self, id: u32) -> Option<&str> {
        if id == 0 {
            return None;
        }
        self.policies.get(id as usize - 1).map(|p| p.name.as_str())
    }
}

/// Segment and policy ids: positions in name order, so that the same set of
/// documents compiles to the same tables whatever their order in the file.
struct Ids {
    segments: HashMap<String, u32>,
    policies: HashMap<String, u32>,
}

impl Ids {
    fn new(set: &PolicySet) -> Ids {
        fn number<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<String, u32> {
            let mut names: Vec<&String> = names.collect();
            names.sort();
            names
                .into_iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i as u32 + 1))
                .collect()
        }
        Ids {
            segments: number(set.segments.iter().map(|s| &s.name)),
            policies: number(set.policies.iter().map(|p| &p.name)),
        }
    }

    fn segment(&self, name: &str) -> u32 {
        self.segments[name]
    }

    fn policy(&self, name: &str) -> u32 {
        self.policies[name]
    }

    fn peer(&self, peer: &Peer) -> u32 {
        match peer {
            Peer::Any => SEGMENT_ANY,
            Peer::World => SEGMENT_WORLD,
            Peer::Segment(name) => self.segment(name),
        }
    }

    fn segments(&self, set: &PolicySet) -> Vec<CompiledSegment> {
        let mut out: Vec<CompiledSegment> = set
            .segments
            .iter()
            .map(|s| CompiledSegment {
                id: self.segment(&s.name),
                name: s.name.clone(),
                mode: s.mode,
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }
}

fn prefixes(
    set: &PolicySet,
    ids: &Ids,
    nodes: &[NodeInfo],
) -> (Vec<(IpNet, u32)>, Vec<NodeConflict>) {
    let mut out: BTreeMap<IpNet, (u32, &str)> = BTreeMap::new();
    for s in &set.segments {
        for c in &s.cidrs {
            out.insert(*c, (ids.segment(&s.name), s.name.as_str()));
        }
    }
    // Only admitted nodes, with the operators' labels and the addresses
    // within their ranges; in name order, so that which of two colliding
    // nodes is left out never depends on registration order.
    let mut admitted: Vec<_> = crate::nodes::admit(set, nodes)
        .into_iter()
        .filter(|n| n.is_admitted())
        .collect();
    admitted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut conflicts = Vec::new();
    for node in &admitted {
        // All of a node's addresses join, or none.
        let mut joins: Vec<(IpNet, u32, &str)> = Vec::new();
        let mut conflict = None;
        for s in &set.segments {
            let Some(selector) = &s.node_selector else {
                continue;
            };
            if !selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
                continue;
            }
            let id = ids.segment(&s.name);
            for addr in &node.addresses {
                let net = IpNet::from(*addr);
                let held = out
                    .get(&net)
                    .map(|(other, name)| (*other, *name))
                    .or_else(|| {
                        joins
                            .iter()
                            .find(|(n, _, _)| *n == net)
                            .map(|(_, o, name)| (*o, *name))
                    });
                match held {
                    Some((other, _)) if other == id => {}
                    Some((_, other)) => {
                        conflict.get_or_insert(NodeConflict {
                            node: node.name.clone(),
                            address: *addr,
                            segment: s.name.clone(),
                            other: other.to_owned(),
                        });
                    }
                    None => joins.push((net, id, s.name.as_str())),
                }
            }
        }
        match conflict {
            Some(c) => conflicts.push(c),
            None => {
                for (net, id, name) in joins {
                    out.insert(net, (id, name));
                }
            }
        }
    }
    (
        out.into_iter().map(|(net, (id, _))| (net, id)).collect(),
        conflicts,
    )
}

/// The protocol bytes and port range one `ports` entry covers.
pub(crate) fn port_keys(rule: &crate::model::PortRule) -> Vec<(u8, u16, u16)> {
    let (lo, hi) = rule.range();
    match rule.protocol {
        Protocol::Tcp => vec![(PROTO_TCP, lo, hi)],
        Protocol::Udp => vec![(PROTO_UDP, lo, hi)],
        Protocol::Sctp => vec![(PROTO_SCTP, lo, hi)],
        Protocol::Icmp => vec![(PROTO_ICMP, 0, u16::MAX)],
        Protocol::Icmpv6 => vec![(PROTO_ICMPV6, 0, u16::MAX)],
        Protocol::Any if rule.port.is_none() => vec![(PROTO_ANY, 0, u16::MAX)],
        Protocol::Any => vec![
            (PROTO_TCP, lo, hi),
            (PROTO_UDP, lo, hi),
            (PROTO_SCTP, lo, hi),
        ],
    }
}

/// A policy's claim on a port interval of one (protocol, source, destination).
#[derive(Clone, Copy)]
struct Claim {
    lo: u16,
    hi: u16,
    action: Action,
    id: u32,
}

fn rules(set: &PolicySet, ids: &Ids, now: OffsetDateTime) -> (Vec<RuleEntry>, u32) {
    let mut groups: HashMap<(u8, u32, u32), Vec<Claim>> = HashMap::new();
    let mut flags = 0;
    for p in set.policies.iter().filter(|p| p.in_force(now)) {
        let id = ids.policy(&p.name);
        let keys: Vec<(u8, u16, u16)> = if p.ports.is_empty() {
            vec![(PROTO_ANY, 0, u16::MAX)]
        } else {
            p.ports.iter().flat_map(port_keys).collect()
        };
        for from in &p.from {
            let src = ids.peer(from);
            for to in &p.to {
                let dst = ids.peer(to);
                for &(proto, lo, hi) in &keys {
                    if src == SEGMENT_ANY {
                        flags |= config_flags::HAS_SRC_ANY;
                    }
                    if dst == SEGMENT_ANY {
                        flags |= config_flags::HAS_DST_ANY;
                    }
                    if proto == PROTO_ANY {
                        flags |= config_flags::HAS_PROTO_ANY;
                    }
                    groups.entry((proto, src, dst)).or_default().push(Claim {
                        lo,
                        hi,
                        action: p.action,
                        id,
                    });
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut keys: Vec<_> = groups.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let (proto, src, dst) = key;
        for (lo, hi, value) in merge(&groups[&key]) {
            for (port, port_bits) in split_range(lo, hi) {
                out.push(RuleEntry {
                    proto,
                    src,
                    dst,
                    port,
                    port_bits,
                    value,
                });
            }
        }
    }
    (out, flags)
}

/// Disjoint port intervals with the lowest deny and allow id that covers each;
/// adjacent intervals with equal values are joined.
fn merge(claims: &[Claim]) -> Vec<(u16, u16, RuleValue)> {
    // Sweep over interval boundaries (as u32 so that 65535 + 1 fits).
    let mut bounds: Vec<u32> = claims
        .iter()
        .flat_map(|c| [c.lo as u32, c.hi as u32 + 1])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut out: Vec<(u16, u16, RuleValue)> = Vec::new();
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let mut value = RuleValue::default();
        for c in claims {
            if (c.lo as u32) <= lo && hi <= c.hi as u32 {
                let slot = match c.action {
                    Action::Deny => &mut value.deny,
                    Action::Allow => &mut value.allow,
                };
                if *slot == 0 || c.id < *slot {
                    *slot = c.id;
                }
            }
        }
        if value == RuleValue::default() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.2 == value && last.1 as u32 + 1 == lo => last.1 = hi as u16,
            _ => out.push((lo as u16, hi as u16, value)),
        }
    }
    out
}

/// The fewest aligned prefixes of the 16-bit port space that cover exactly
/// `lo..=hi`: (port, number of leading bits that must match).
pub fn split_range(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (lo as u32, hi as u32);
    while lo <= hi {
        // The largest block that starts at lo (aligned) and ends by hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (16 - size.trailing_zeros()) as u8));
        lo += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_range_covers_exactly() {
        assert_eq!(split_range(0, u16::MAX), vec![(0, 0)]);
        assert_eq!(split_range(443, 443), vec![(443, 16)]);
        assert_eq!(
            split_range(5000, 5010),
            vec![(5000, 13), (5008, 15), (5010, 16)]
        );
        for (lo, hi) in [
            (1, 1023),
            (5000, 5010),
            (0, 0),
            (65535, 65535),
            (1024, 65535),
        ] {
            let blocks = split_range(lo, hi);
            let mut covered = Vec::new();
            for (port, bits) in blocks {
                let size = 1u32 << (16 - bits);
                assert_eq!(port as u32 % size, 0, "block {port}/{bits} not aligned");
                covered.extend(port as u32..port as u32 + size);
            }
            assert_eq!(covered, (lo as u32..=hi as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn merge_deny_wins_and_lowest_ids() {
        let claims = [
            Claim {
                lo: 0,
                hi: 65535,
                action: Action::Allow,
                id: 5,
            },
            Claim {
                lo: 443,
                hi: 443,
                action: Action::Deny,
                id: 7,
            },
            Claim {
                lo: 400,
                hi: 500,
                action: Action::Allow,
                id: 2,
            },
        ];
        let merged = merge(&claims);
        let at = |port: u16| {
            merged
                .iter()
                .find(|(lo, hi, _)| *lo <= port && port <= *hi)
                .map(|m| m.2)
        };
        assert_eq!(at(80), Some(RuleValue { deny: 0, allow: 5 }));
        assert_eq!(at(450), Some(RuleValue { deny: 0, allow: 2 }));
        assert_eq!(at(443), Some(RuleValue { deny: 7, allow: 2 }));
        assert_eq!(at(65535), Some(RuleValue { deny: 0, allow: 5 }));
        // Intervals are disjoint and sorted.
        for w in merged.windows(2) {
            assert!(w[0].1 < w[1].0);
        }
    }
}
