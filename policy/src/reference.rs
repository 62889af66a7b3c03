//! The reference verdict: the spec's rules applied to a packet directly from
//! the documents, without the compiled tables.
//!
//! The kernel (through `BPF_PROG_TEST_RUN`) and the compiler are both tested
//! against it. It judges a packet as the first packet of its connection, with
//! no connection or fragment tracked yet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use time::OffsetDateTime;
use wardline_ebpf_abi::{
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason, SEGMENT_WORLD,
};

use crate::model::{Action, Mode, Peer, PolicySet, Protocol};
use crate::packet::{Fragment, Packet, Parsed, SkbVlan, parse};

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
    fn matches(&self, p: &Packet) -> bool {
        if p.proto != self.protocol {
            return false;
        }
        let inside = |a: &[u8; 16]| self.cidrs.iter().any(|c| c.contains(&to_ip(a)));
        match self.direction {
            FailsafeDirection::Ingress => {
                (p.dport == self.port && inside(&p.src)) || (p.sport == self.port && inside(&p.dst))
            }
            FailsafeDirection::Egress => {
                (p.dport == self.port && inside(&p.dst)) || (p.sport == self.port && inside(&p.src))
            }
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
            segment_ids: ids(set.segments.iter().map(|s| s.name.clone()).collect()),
            policy_ids: ids(set.policies.iter().map(|p| p.name.clone()).collect()),
        }
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

    /// The segment whose CIDR is the longest prefix containing `addr`.
    pub fn segment_of(&self, addr: IpAddr) -> u32 {
        self.set
            .segments
            .iter()
            .flat_map(|s| s.cidrs.iter().map(move |c| (c, s)))
            .filter(|(c, _)| c.contains(&addr))
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

    fn peer_matches(&self, peers: &[Peer], seg: u32) -> bool {
        peers.iter().any(|p| match p {
            Peer::Any => true,
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
        } else if self.monitored(src) || self.monitored(dst) {
            (Reason::Monitor, 0)
        } else {
            (Reason::DefaultDeny, 0)
        }
    }

    /// The verdict of a frame that starts at its Ethernet header, judged as
    /// the first packet of its connection.
    pub fn judge_frame(&self, frame: &[u8], skb_vlan: SkbVlan) -> Outcome {
        match parse(frame, skb_vlan) {
            Err(reason) => Outcome::bare(reason),
            Ok(Parsed::L2Pass) => Outcome::bare(Reason::L2Pass),
            Ok(Parsed::Ethertype(t)) if self.pass_ethertypes.contains(&t) => {
                Outcome::bare(Reason::L2Pass)
            }
            Ok(Parsed::Ethertype(_)) => Outcome::bare(Reason::Ethertype),
            Ok(Parsed::Ip(p)) => self.judge_packet(&p),
        }
    }

    pub fn judge_packet(&self, p: &Packet) -> Outcome {
        let addr_src = self.segment_of(to_ip(&p.src));
        let mut src = addr_src;
        if p.vlan != 0
            && let Some(vseg) = self.segment_of_vlan(p.vlan)
        {
            if addr_src != SEGMENT_WORLD && addr_src != vseg {
                return Outcome::bare(Reason::SpoofedSource);
            }
            src = vseg;
        }
        if let Fragment::Later(_) = p.fragment {
            return Outcome::bare(Reason::OrphanFragment);
        }
        if self.failsafe.iter().any(|f| f.matches(p)) {
            return Outcome::bare(Reason::Failsafe);
        }
        let dst = self.segment_of(to_ip(&p.dst));
        let (reason, policy) = self.decide(src, dst, p.proto, p.policy_port());
        Outcome {
            reason,
            policy,
            src_segment: src,
            dst_segment: dst,
        }
    }
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
