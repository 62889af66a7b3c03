//! The reference verdict: the rules of `docs/verdicts.md` applied to a
//! packet directly from the documents, without the compiled tables.
//!
//! The kernel (through `BPF_PROG_TEST_RUN`) and the compiler are both tested
//! against it. [`Reference::judge_frame`] judges a packet as the first of its
//! connection, with nothing tracked yet; [`Tracker`] follows conversations:
//! connection tracking bound to interfaces and VLANs, remembered drops,
//! fragments, ICMP errors and policy generations, as the kernel keeps them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use time::OffsetDateTime;
use wardline_ebpf_abi::{
    BOUND_ORIG, BOUND_REPLY_VLAN, DIR_EGRESS, DIR_INGRESS, FLOW_ALLOWED, FLOW_AUDITED, FLOW_DENIED,
    FLOW_FAILSAFE, FlowKey, FragmentKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, Reason, SEGMENT_WORLD, TCP_FIN_ORIG, TCP_FIN_REPLY, TCP_RST, TCP_SEEN_REPLY,
    TIMEOUT_DENIED, TIMEOUT_FRAGMENT, TO_GROUP, flow_timeout,
};

use crate::model::{Action, Mode, Peer, PolicySet, Protocol};
use crate::packet::{Fragment, IcmpKind, Packet, Parsed, SkbVlan, TCP_FIN, parse};

/// Who opens the connections of a failsafe flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailsafeDirection {
    /// Hosts in `cidrs` open connections to `port` on this node (management access).
    Ingress,
    /// This node opens connections to `port` on hosts in `cidrs` (its control plane).
    Egress,
}

/// A flow that no policy can block: the agent's configuration, not policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailsafeFlow {
    pub direction: FailsafeDirection,
    /// TCP, UDP or SCTP protocol number.
    pub protocol: u8,
    pub port: u16,
    pub cidrs: Vec<IpNet>,
}

impl FailsafeFlow {
    /// Whether a new connection's first packet is this flow: the node's own,
    /// in this orientation, by the responder's port. A packet's source port
    /// never makes one, and traffic between two other hosts never matches.
    pub fn matches(&self, p: &Packet, local: &[IpAddr]) -> bool {
        if p.proto != self.protocol || p.dport != self.port {
            return false;
        }
        let inside = |a: &[u8; 16]| {
            let ip = packet_ip(p, a);
            self.cidrs
                .iter()
                .any(|c| same_family(c, &ip) && c.contains(&ip))
        };
        let is_local = |a: &[u8; 16]| local.iter().any(|l| from_ip(*l) == *a);
        match self.direction {
            FailsafeDirection::Ingress => inside(&p.src) && is_local(&p.dst),
            FailsafeDirection::Egress => is_local(&p.src) && inside(&p.dst),
        }
    }
}

/// The verdict of one packet and what decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reason: Reason,
    /// The deciding policy's id, 0 for none.
    pub policy: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
}

impl Outcome {
    fn bare(reason: Reason) -> Outcome {
        Outcome {
            reason,
            policy: 0,
            src_segment: SEGMENT_WORLD,
            dst_segment: SEGMENT_WORLD,
        }
    }
}

pub struct Reference<'a> {
    pub set: &'a PolicySet,
    pub now: OffsetDateTime,
    pub failsafe: &'a [FailsafeFlow],
    pub pass_ethertypes: &'a [u16],
    /// The node's own addresses (failsafe flows are the node's own).
    pub local: &'a [IpAddr],
    segment_ids: Vec<(String, u32)>,
    policy_ids: Vec<(String, u32)>,
}

/// Turns the 16-byte form (IPv4-mapped for IPv4) back into an address.
pub fn to_ip(a: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// An address of `p` as the family of its IP header has it: an IPv6 packet's
/// `::ffff:a.b.c.d` stays an IPv6 address.
pub fn packet_ip(p: &Packet, a: &[u8; 16]) -> IpAddr {
    if p.family == 4 {
        to_ip(a)
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

/// The 16-byte form of an address.
pub fn from_ip(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ids(mut names: Vec<String>) -> Vec<(String, u32)> {
    names.sort();
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, i as u32 + 1))
        .collect()
}

impl<'a> Reference<'a> {
    pub fn new(
        set: &'a PolicySet,
        now: OffsetDateTime,
        failsafe: &'a [FailsafeFlow],
        pass_ethertypes: &'a [u16],
    ) -> Self {
        Reference {
            set,
            now,
            failsafe,
            pass_ethertypes,
            local: &[],
            segment_ids: ids(set.segments.iter().map(|s| s.name.clone()).collect()),
            policy_ids: ids(set.policies.iter().map(|p| p.name.clone()).collect()),
        }
    }

    /// The same, with the node's own addresses.
    pub fn with_local(mut self, local: &'a [IpAddr]) -> Self {
        self.local = local;
        self
    }

    /// The id of the segment `name` (world's when there is none).
    pub fn segment_named(&self, name: &str) -> u32 {
        self.segment_id(name)
    }

    fn segment_id(&self, name: &str) -> u32 {
        self.segment_ids
            .iter()
            .find(|(n, _)| n == name)
            .map_or(SEGMENT_WORLD, |(_, id)| *id)
    }

    fn policy_id(&self, name: &str) -> u32 {
        self.policy_ids
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, id)| *id)
    }

    /// The segment whose CIDR is the longest prefix containing `addr`
    /// (families apart: no IPv6 prefix holds an IPv4 address).
    pub fn segment_of(&self, addr: IpAddr) -> u32 {
        self.set
            .segments
            .iter()
            .flat_map(|s| s.cidrs.iter().map(move |c| (c, s)))
            .filter(|(c, _)| same_family(c, &addr) && c.contains(&addr))
            .max_by_key(|(c, _)| c.prefix_len())
            .map_or(SEGMENT_WORLD, |(_, s)| self.segment_id(&s.name))
    }

    fn segment_of_vlan(&self, vid: u16) -> Option<u32> {
        self.set
            .segments
            .iter()
            .find(|s| s.vlans.contains(&vid))
            .map(|s| self.segment_id(&s.name))
    }

    fn monitored(&self, id: u32) -> bool {
        self.set
            .segments
            .iter()
            .any(|s| s.mode == Mode::Monitor && self.segment_id(&s.name) == id)
    }

    /// The quarantine segment `id`, if it is one.
    fn quarantine(&self, id: u32) -> Option<&crate::model::Quarantine> {
        self.set
            .segments
            .iter()
            .find(|s| self.segment_id(&s.name) == id)
            .and_then(|s| s.quarantine.as_ref())
    }

    /// Whether `peers` take in segment `seg`: `any` takes in every
    /// segment but a quarantine.
    fn peer_matches(&self, peers: &[Peer], seg: u32) -> bool {
        peers.iter().any(|p| match p {
            Peer::Any => self.quarantine(seg).is_none(),
            Peer::World => seg == SEGMENT_WORLD,
            Peer::Segment(name) => self.segment_id(name) == seg,
        })
    }

    /// The spec's four steps for a new connection from segment `src` to `dst`.
    pub fn decide(&self, src: u32, dst: u32, proto: u8, port: u16) -> (Reason, u32) {
        let mut deny = 0;
        let mut allow = 0;
        for p in &self.set.policies {
            if !p.in_force(self.now)
                || !self.peer_matches(&p.from, src)
                || !self.peer_matches(&p.to, dst)
                || !(p.ports.is_empty() || p.ports.iter().any(|r| port_matches(r, proto, port)))
            {
                continue;
            }
            let id = self.policy_id(&p.name);
            let slot = match p.action {
                Action::Deny => &mut deny,
                Action::Allow => &mut allow,
            };
            if *slot == 0 || id < *slot {
                *slot = id;
            }
        }
        if deny != 0 {
            (Reason::PolicyDeny, deny)
        } else if allow != 0 {
            (Reason::PolicyAllow, allow)
        } else if (self.monitored(src) || self.monitored(dst))
            && self.quarantine(src).is_none()
            && self.quarantine(dst).is_none()
        {
            (Reason::Monitor, 0)
        } else {
            (Reason::DefaultDeny, 0)
        }
    }

    /// The verdict of a frame that starts at its Ethernet header, arriving
    /// at an ingress hook, judged as the first packet of its connection.
    pub fn judge_frame(&self, frame: &[u8], skb_vlan: SkbVlan) -> Outcome {
        match self.parse_frame(frame, skb_vlan) {
            Err(outcome) => outcome,
            Ok(p) => self.judge_packet(&p),
        }
    }

    /// Parses a frame; what never reaches an IP verdict is the `Err` outcome.
    fn parse_frame(&self, frame: &[u8], skb_vlan: SkbVlan) -> Result<Packet, Outcome> {
        match parse(frame, skb_vlan) {
            Err(reason) => Err(Outcome::bare(reason)),
            Ok(Parsed::L2Pass) => Err(Outcome::bare(Reason::L2Pass)),
            Ok(Parsed::Ethertype(t)) if self.pass_ethertypes.contains(&t) => {
                Err(Outcome::bare(Reason::L2Pass))
            }
            Ok(Parsed::Ethertype(_)) => Err(Outcome::bare(Reason::Ethertype)),
            Ok(Parsed::Ip(p)) => Ok(p),
        }
    }

    /// The source segment a claimed VLAN tag gives at ingress, or the
    /// spoofed-source outcome (which names the VLAN's segment).
    fn vlan_identity(&self, p: &Packet, direction: u8) -> Result<Option<u32>, Outcome> {
        if direction != DIR_INGRESS || p.vlan == 0 {
            return Ok(None);
        }
        let Some(vseg) = self.segment_of_vlan(p.vlan) else {
            return Ok(None);
        };
        let by_address = self.segment_of(packet_ip(p, &p.src));
        if by_address != SEGMENT_WORLD && by_address != vseg {
            // A quarantined device's frames on its own VLAN are the
            // quarantine's.
            let origin = self
                .quarantine(by_address)
                .and_then(|q| q.origin.as_deref())
                .map(|o| self.segment_id(o));
            if origin == Some(vseg) {
                return Ok(Some(by_address));
            }
            return Err(Outcome {
                reason: Reason::SpoofedSource,
                policy: 0,
                src_segment: vseg,
                dst_segment: self.segment_of(packet_ip(p, &p.dst)),
            });
        }
        Ok(Some(vseg))
    }

    /// An IP packet at an ingress hook, as the first of its connection.
    pub fn judge_packet(&self, p: &Packet) -> Outcome {
        let vlan_segment = match self.vlan_identity(p, DIR_INGRESS) {
            Ok(v) => v,
            Err(spoofed) => return spoofed,
        };
        if let Fragment::Later(_) = p.fragment {
            return Outcome::bare(Reason::OrphanFragment);
        }
        let trackable = matches!(p.icmp, IcmpKind::NotIcmp | IcmpKind::EchoRequest);
        if trackable && self.is_failsafe(p) {
            return Outcome::bare(Reason::Failsafe);
        }
        self.judge_new(p, vlan_segment)
    }

    fn is_failsafe(&self, p: &Packet) -> bool {
        self.failsafe.iter().any(|f| f.matches(p, self.local))
    }

    /// Policy's verdict of a new connection (after failsafe flows).
    fn judge_new(&self, p: &Packet, vlan_segment: Option<u32>) -> Outcome {
        let src = vlan_segment.unwrap_or_else(|| self.segment_of(packet_ip(p, &p.src)));
        let dst = self.segment_of(packet_ip(p, &p.dst));
        let (reason, policy) = self.decide(src, dst, p.proto, p.policy_port());
        Outcome {
            reason,
            policy,
            src_segment: src,
            dst_segment: dst,
        }
    }
}

fn same_family(net: &IpNet, addr: &IpAddr) -> bool {
    matches!(
        (net, addr),
        (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
    )
}

fn port_matches(rule: &crate::model::PortRule, proto: u8, port: u16) -> bool {
    let (lo, hi) = rule.range();
    let in_range = lo <= port && port <= hi;
    match rule.protocol {
        Protocol::Tcp => proto == PROTO_TCP && in_range,
        Protocol::Udp => proto == PROTO_UDP && in_range,
        Protocol::Sctp => proto == PROTO_SCTP && in_range,
        Protocol::Icmp => proto == PROTO_ICMP,
        Protocol::Icmpv6 => proto == PROTO_ICMPV6,
        Protocol::Any => {
            rule.port.is_none() || (matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) && in_range)
        }
    }
}

/// Unused-address helper for tests and tools: an IPv4 address in the 16-byte form.
pub fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
    from_ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
}

/// Where a packet is judged: the hook's direction ([`DIR_INGRESS`] or
/// [`DIR_EGRESS`]) and interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub direction: u8,
    pub ifindex: u32,
}

/// A tracked connection that passed, as the kernel keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Flow {
    last_seen_ns: u64,
    generation: u32,
    status: u8,
    tcp: u8,
    binding: u8,
    orig_ifindex: u32,
    orig_vlan: u16,
    reply_ifindex: u32,
    reply_vlan: u16,
}

/// A remembered dropped connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Denied {
    created_ns: u64,
    generation: u32,
    ifindex: u32,
    vlan: u16,
    direction: u8,
}

/// The dataplane's state over time, judged by the rules of
/// `docs/verdicts.md`: connections that passed (bound to where their ends
/// live), drops remembered in their own orientation, fragments. The caller
/// passes the policy in force ([`Reference`]) and its generation with each
/// packet: a connection admitted under another generation is judged again.
///
/// Tables never fill here; the kernel's do, and counts what it could not
/// track (tests keep below its capacities).
#[derive(Debug, Default)]
pub struct Tracker {
    flows: HashMap<FlowKey, Flow>,
    denied: HashMap<FlowKey, Denied>,
    fragments: HashMap<FragmentKey, u64>,
}

/// Which orientations a packet may belong to a tracked connection in.
const AS_INITIATOR: u8 = 1;
const AS_REPLY: u8 = 2;

fn status_of(reason: Reason) -> u8 {
    match reason {
        Reason::PolicyAllow => FLOW_ALLOWED,
        Reason::Monitor => FLOW_AUDITED,
        Reason::Failsafe => FLOW_FAILSAFE,
        _ => FLOW_DENIED,
    }
}

fn passing(status: u8) -> Reason {
    if status == FLOW_AUDITED {
        Reason::MonitorEstablished
    } else {
        Reason::Established
    }
}

impl Tracker {
    pub fn new() -> Self {
        Tracker::default()
    }

    /// Forgets everything, as the agent's `flush_tracking` does.
    pub fn clear(&mut self) {
        *self = Tracker::default();
    }

    /// The verdict of one frame at `hook`, at `now_ns` (`CLOCK_BOOTTIME`),
    /// under generation `generation` of the policy `r`.
    pub fn judge(
        &mut self,
        r: &Reference<'_>,
        generation: u32,
        frame: &[u8],
        skb_vlan: SkbVlan,
        hook: Hook,
        now_ns: u64,
    ) -> Outcome {
        let p = match r.parse_frame(frame, skb_vlan) {
            Ok(p) => p,
            Err(outcome) => return outcome,
        };
        let vlan_segment = match r.vlan_identity(&p, hook.direction) {
            Ok(v) => v,
            Err(spoofed) => return spoofed,
        };
        let cx = Cx {
            r,
            generation,
            hook,
            now: now_ns,
            p: &p,
        };
        if let Fragment::Later(_) = p.fragment {
            let key = p.fragment_key().expect("a fragment has a key");
            return match self.fragments.get(&key) {
                Some(seen) if now_ns.saturating_sub(*seen) < TIMEOUT_FRAGMENT => {
                    Outcome::bare(Reason::Fragment)
                }
                _ => Outcome::bare(Reason::OrphanFragment),
            };
        }
        let key = p.flow_key();
        let (which, trackable) = match p.icmp {
            IcmpKind::Error(_) | IcmpKind::Other => (0, false),
            _ if p.group => (AS_INITIATOR, true),
            IcmpKind::EchoRequest => (AS_INITIATOR, true),
            IcmpKind::EchoReply => (AS_REPLY, false),
            IcmpKind::NotIcmp => (AS_INITIATOR | AS_REPLY, true),
        };
        let mut outcome = self.tracked(&cx, &key, which).map(Outcome::bare);
        if outcome.is_none() && self.related(&cx) {
            outcome = Some(Outcome::bare(Reason::Related));
        }
        let outcome = match outcome {
            Some(o) => o,
            None => self.new_connection(&cx, &key, trackable, vlan_segment),
        };
        if let Fragment::First(_) = p.fragment
            && outcome.reason.verdict() != wardline_ebpf_abi::Verdict::Dropped
        {
            let fkey = p.fragment_key().expect("a fragment has a key");
            self.fragments.insert(fkey, now_ns);
        }
        outcome
    }

    fn tracked(&mut self, cx: &Cx<'_, '_>, key: &FlowKey, which: u8) -> Option<Reason> {
        if which & AS_INITIATOR != 0 && self.belongs(cx, key, false) {
            return Some(self.established(cx, key, false));
        }
        if which & AS_REPLY != 0 {
            let initiator = key.reversed();
            let to_group = self
                .flows
                .get(&initiator)
                .is_some_and(|f| f.binding & TO_GROUP != 0);
            if !to_group && self.belongs(cx, &initiator, true) {
                return Some(self.established(cx, &initiator, true));
            }
        }
        None
    }

    /// Whether the packet belongs to the live connection of `initiator`
    /// where it arrives; learns where replies come from.
    fn belongs(&mut self, cx: &Cx<'_, '_>, initiator: &FlowKey, reply: bool) -> bool {
        let Some(f) = self.flows.get_mut(initiator) else {
            return false;
        };
        if cx.now.saturating_sub(f.last_seen_ns) >= flow_timeout(initiator.proto, f.status, f.tcp) {
            self.flows.remove(initiator);
            return false;
        }
        let vlan = cx.p.vlan;
        if cx.hook.direction == DIR_EGRESS {
            if !reply && f.reply_ifindex == 0 {
                f.reply_ifindex = cx.hook.ifindex;
            }
            return true;
        }
        if !reply {
            return f.binding & BOUND_ORIG != 0
                && f.orig_ifindex == cx.hook.ifindex
                && f.orig_vlan == vlan;
        }
        if f.reply_ifindex == 0 || f.reply_ifindex != cx.hook.ifindex {
            return false;
        }
        if f.binding & BOUND_REPLY_VLAN != 0 {
            return f.reply_vlan == vlan;
        }
        f.reply_vlan = vlan;
        f.binding |= BOUND_REPLY_VLAN;
        true
    }

    fn established(&mut self, cx: &Cx<'_, '_>, initiator: &FlowKey, reply: bool) -> Reason {
        let f = self
            .flows
            .get_mut(initiator)
            .expect("belongs() found the entry");
        if f.status != FLOW_DENIED {
            f.last_seen_ns = cx.now;
            if initiator.proto == PROTO_TCP {
                if reply {
                    f.tcp |= TCP_SEEN_REPLY;
                }
                if cx.p.tcp_flags & crate::packet::TCP_RST != 0 {
                    f.tcp |= TCP_RST;
                }
                if cx.p.tcp_flags & TCP_FIN != 0 {
                    f.tcp |= if reply { TCP_FIN_REPLY } else { TCP_FIN_ORIG };
                }
            }
        }
        if f.status == FLOW_FAILSAFE {
            return Reason::Failsafe;
        }
        if f.generation != cx.generation {
            // Judged again as its initiator opened it, with today's tables.
            let by_vlan = if f.binding & BOUND_ORIG != 0 && f.orig_vlan != 0 {
                cx.r.segment_of_vlan(f.orig_vlan)
            } else {
                None
            };
            let src = by_vlan.unwrap_or_else(|| cx.r.segment_of(packet_ip(cx.p, &initiator.src)));
            let dst = cx.r.segment_of(packet_ip(cx.p, &initiator.dst));
            let port = match initiator.proto {
                PROTO_TCP | PROTO_UDP | PROTO_SCTP => initiator.dport,
                _ => 0,
            };
            let (reason, _) = cx.r.decide(src, dst, initiator.proto, port);
            f.generation = cx.generation;
            f.status = status_of(reason);
            return if f.status == FLOW_DENIED {
                Reason::DroppedFlow
            } else {
                passing(f.status)
            };
        }
        if f.status == FLOW_DENIED {
            return Reason::DroppedFlow;
        }
        passing(f.status)
    }

    /// Whether an ICMP error is about a tracked, still passing connection,
    /// travels towards the source of the packet it quotes, and arrives from
    /// the side that packet went to.
    fn related(&self, cx: &Cx<'_, '_>) -> bool {
        let IcmpKind::Error(Some(inner)) = cx.p.icmp else {
            return false;
        };
        if cx.p.dst != inner.src {
            return false;
        }
        // A quoted echo is a request, only ever an initiator.
        let echo = matches!(inner.proto, PROTO_ICMP | PROTO_ICMPV6);
        let (f, quoted_reply) = match self.flows.get(&inner) {
            Some(f) => (f, false),
            None => match self.flows.get(&inner.reversed()).filter(|_| !echo) {
                Some(f) => (f, true),
                None => return false,
            },
        };
        if cx.now.saturating_sub(f.last_seen_ns) >= flow_timeout(inner.proto, f.status, f.tcp) {
            return false;
        }
        if cx.hook.direction == DIR_INGRESS {
            let here = if quoted_reply {
                f.binding & BOUND_ORIG != 0 && f.orig_ifindex == cx.hook.ifindex
            } else {
                f.reply_ifindex != 0 && f.reply_ifindex == cx.hook.ifindex
            };
            if !here {
                return false;
            }
        }
        f.status == FLOW_FAILSAFE || (f.status != FLOW_DENIED && f.generation == cx.generation)
    }

    fn new_connection(
        &mut self,
        cx: &Cx<'_, '_>,
        key: &FlowKey,
        trackable: bool,
        vlan_segment: Option<u32>,
    ) -> Outcome {
        if trackable {
            if cx.r.is_failsafe(cx.p) {
                self.track(cx, key, Reason::Failsafe);
                return Outcome::bare(Reason::Failsafe);
            }
            if let Some(d) = self.denied.get(key).copied()
                && d.ifindex == cx.hook.ifindex
                && d.vlan == cx.p.vlan
                && d.direction == cx.hook.direction
            {
                if cx.now.saturating_sub(d.created_ns) < TIMEOUT_DENIED
                    && d.generation == cx.generation
                {
                    return Outcome::bare(Reason::DroppedFlow);
                }
                self.denied.remove(key);
            }
        }
        let vlan_segment = vlan_segment.filter(|_| cx.hook.direction == DIR_INGRESS);
        let outcome = cx.r.judge_new(cx.p, vlan_segment);
        if trackable {
            if status_of(outcome.reason) == FLOW_DENIED {
                self.denied.insert(
                    *key,
                    Denied {
                        created_ns: cx.now,
                        generation: cx.generation,
                        ifindex: cx.hook.ifindex,
                        vlan: cx.p.vlan,
                        direction: cx.hook.direction,
                    },
                );
            } else {
                self.track(cx, key, outcome.reason);
            }
        }
        outcome
    }

    fn track(&mut self, cx: &Cx<'_, '_>, key: &FlowKey, reason: Reason) {
        let ingress = cx.hook.direction == DIR_INGRESS;
        let mut tcp = 0;
        if key.proto == PROTO_TCP && cx.p.tcp_flags & crate::packet::TCP_RST != 0 {
            tcp = TCP_RST;
        }
        // A tuple tracked (in either orientation: one connection for both
        // directions, but for echo, whose requester is always first) for a
        // connection that lives elsewhere stays as it is.
        let echo = matches!(cx.p.icmp, IcmpKind::EchoRequest) || cx.p.group;
        if !echo && self.flows.contains_key(&key.reversed()) {
            return;
        }
        self.flows.entry(*key).or_insert(Flow {
            last_seen_ns: cx.now,
            generation: cx.generation,
            status: status_of(reason),
            tcp,
            binding: if ingress { BOUND_ORIG } else { 0 } | if cx.p.group { TO_GROUP } else { 0 },
            orig_ifindex: if ingress { cx.hook.ifindex } else { 0 },
            orig_vlan: if ingress { cx.p.vlan } else { 0 },
            reply_ifindex: if ingress { 0 } else { cx.hook.ifindex },
            reply_vlan: 0,
        });
    }
}

/// One packet's context in [`Tracker::judge`].
struct Cx<'r, 'p> {
    r: &'r Reference<'r>,
    generation: u32,
    hook: Hook,
    now: u64,
    p: &'p Packet,
}
