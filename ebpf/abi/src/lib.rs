//! The ABI between Wardline's kernel programs and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, has its padding written out as
//! fields and has its size asserted, because the kernel and user space must
//! agree on it byte for byte. Pins whose [`ABI_VERSION`] differs from the
//! agent's are replaced, never adopted.
//!
//! # Generations
//!
//! Every policy table key starts with a *slot* byte: `generation & 1`. The
//! agent writes a new policy into the slot the live generation does not use,
//! then switches by one write of [`Config::generation`]. A packet reads the
//! generation once, first, so it is judged wholly by the old tables or wholly
//! by the new ones.
#![no_std]

/// Bumped whenever a map layout, a map name or a program's meaning changes.
pub const ABI_VERSION: u32 = 2;

// ---------------------------------------------------------------------------
// Names of programs and maps (the ELF symbols and the pin file names).

pub const PROG_INGRESS: &str = "wardline_ingress";
pub const PROG_EGRESS: &str = "wardline_egress";

pub const MAP_CONFIG: &str = "WL_CONFIG";
pub const MAP_PREFIXES: &str = "WL_PREFIXES";
pub const MAP_VLANS: &str = "WL_VLANS";
pub const MAP_MONITOR: &str = "WL_MONITOR";
pub const MAP_RULES: &str = "WL_RULES";
pub const MAP_FAILSAFE: &str = "WL_FAILSAFE";
pub const MAP_ETHERTYPES: &str = "WL_ETHERTYPES";
pub const MAP_CONNTRACK: &str = "WL_CONNTRACK";
pub const MAP_FRAGMENTS: &str = "WL_FRAGMENTS";
pub const MAP_COUNTERS: &str = "WL_COUNTERS";
pub const MAP_EVENTS: &str = "WL_EVENTS";

/// Every map the agent pins, in one place.
pub const ALL_MAPS: [&str; 11] = [
    MAP_CONFIG,
    MAP_PREFIXES,
    MAP_VLANS,
    MAP_MONITOR,
    MAP_RULES,
    MAP_FAILSAFE,
    MAP_ETHERTYPES,
    MAP_CONNTRACK,
    MAP_FRAGMENTS,
    MAP_COUNTERS,
    MAP_EVENTS,
];

// ---------------------------------------------------------------------------
// Capacities.

/// Prefixes per generation (two generations share the trie).
pub const MAX_PREFIXES: u32 = 262_144;
/// Compiled rule entries per generation (port ranges split into prefixes).
pub const MAX_RULE_ENTRIES: u32 = 1_048_576;
pub const MAX_VLAN_ENTRIES: u32 = 2 * 4096;
pub const MAX_MONITOR_ENTRIES: u32 = 2 * 65_536;
pub const MAX_FAILSAFE: u32 = 1024;
pub const MAX_ETHERTYPES: u32 = 64;
pub const MAX_CONNECTIONS: u32 = 262_144;
pub const MAX_FRAGMENTS: u32 = 16_384;
pub const EVENTS_BYTES: u32 = 1 << 22;
/// IPv6 extension headers the parser follows before it gives up.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

// ---------------------------------------------------------------------------
// Well-known identifiers.

/// The segment of every address that no segment claims.
pub const SEGMENT_WORLD: u32 = 0;
/// `any` in a rule key: matches every segment, `world` included.
pub const SEGMENT_ANY: u32 = u32::MAX;
/// Protocol byte of a rule that covers every protocol and port.
pub const PROTO_ANY: u8 = 255;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// Bits of [`Config::flags`].
pub mod config_flags {
    /// At least one failsafe flow is configured.
    pub const HAS_FAILSAFE: u32 = 1 << 0;
    /// Some rule has `from: [any]` in the live generation.
    pub const HAS_SRC_ANY: u32 = 1 << 1;
    /// Some rule has `to: [any]` in the live generation.
    pub const HAS_DST_ANY: u32 = 1 << 2;
    /// Some rule covers every protocol in the live generation.
    pub const HAS_PROTO_ANY: u32 = 1 << 3;
    /// Flow events are switched off (counters still count).
    pub const NO_EVENTS: u32 = 1 << 4;
}

// ---------------------------------------------------------------------------
// Verdicts and reasons.

/// What happened to a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Allowed = 1,
    Audited = 2,
    Dropped = 3,
}

/// Why a packet got its verdict. Each reason belongs to exactly one verdict.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A new connection matched an allow policy.
    PolicyAllow = 1,
    /// A new connection matched a deny policy.
    PolicyDeny = 2,
    /// No policy matched and both ends enforce.
    DefaultDeny = 3,
    /// No policy allowed it, but a monitor-mode segment let it through.
    Monitor = 4,
    /// A packet of a tracked, still-allowed connection, either direction.
    Established = 5,
    /// One of the agent's configured failsafe flows.
    Failsafe = 6,
    /// ARP, IPv6 neighbour/router discovery, or a listed ethertype.
    L2Pass = 7,
    /// A tagged frame whose source address belongs to another segment.
    SpoofedSource = 8,
    /// QinQ or an 802.1ad tag.
    UnsupportedL2 = 9,
    /// A header ends before the frame says it does.
    Truncated = 10,
    /// A header field that no valid packet has (IPv4 IHL below 5, ...).
    MalformedHeader = 11,
    /// More IPv6 extension headers than the parser follows.
    TooManyExtHeaders = 12,
    /// A non-first fragment whose first fragment was not seen.
    OrphanFragment = 13,
    /// A non-IP ethertype that the configuration does not list.
    Ethertype = 14,
    /// An ICMP error about a tracked connection.
    Related = 15,
    /// A non-first fragment of a datagram whose first fragment passed.
    Fragment = 16,
    /// A packet of a connection already dropped (counted, not reported again).
    DroppedFlow = 17,
}

pub const REASON_COUNT: usize = 18;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT - 1] = [
        Reason::PolicyAllow,
        Reason::PolicyDeny,
        Reason::DefaultDeny,
        Reason::Monitor,
        Reason::Established,
        Reason::Failsafe,
        Reason::L2Pass,
        Reason::SpoofedSource,
        Reason::UnsupportedL2,
        Reason::Truncated,
        Reason::MalformedHeader,
        Reason::TooManyExtHeaders,
        Reason::OrphanFragment,
        Reason::Ethertype,
        Reason::Related,
        Reason::Fragment,
        Reason::DroppedFlow,
    ];

    pub const fn verdict(self) -> Verdict {
        match self {
            Reason::Monitor => Verdict::Audited,
            Reason::PolicyAllow
            | Reason::Established
            | Reason::Failsafe
            | Reason::L2Pass
            | Reason::Related
            | Reason::Fragment => Verdict::Allowed,
            Reason::PolicyDeny
            | Reason::DefaultDeny
            | Reason::SpoofedSource
            | Reason::UnsupportedL2
            | Reason::Truncated
            | Reason::MalformedHeader
            | Reason::TooManyExtHeaders
            | Reason::OrphanFragment
            | Reason::Ethertype
            | Reason::DroppedFlow => Verdict::Dropped,
        }
    }

    /// The name operators see in events, metrics and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PolicyAllow => "policy-allow",
            Reason::PolicyDeny => "policy-deny",
            Reason::DefaultDeny => "default-deny",
            Reason::Monitor => "monitor",
            Reason::Established => "established",
            Reason::Failsafe => "failsafe",
            Reason::L2Pass => "l2-pass",
            Reason::SpoofedSource => "spoofed-source",
            Reason::UnsupportedL2 => "unsupported-l2",
            Reason::Truncated => "truncated",
            Reason::MalformedHeader => "malformed-header",
            Reason::TooManyExtHeaders => "too-many-extension-headers",
            Reason::OrphanFragment => "orphan-fragment",
            Reason::Ethertype => "ethertype",
            Reason::Related => "related",
            Reason::Fragment => "fragment",
            Reason::DroppedFlow => "dropped-flow",
        }
    }

    pub fn from_u8(v: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

/// Direction of the hook a packet was seen at.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Index into [`MAP_COUNTERS`] of the packet counter for a direction and reason.
pub const fn counter_index(direction: u8, reason: u8) -> u32 {
    (direction as u32) * (REASON_COUNT as u32) + reason as u32
}
/// Index of the count of events the ring buffer had no room for.
pub const COUNTER_LOST_EVENTS: u32 = 2 * REASON_COUNT as u32;
pub const COUNTER_SLOTS: u32 = COUNTER_LOST_EVENTS + 1;

// ---------------------------------------------------------------------------
// Maps' keys and values.

/// `WL_CONFIG[0]`: read first by every packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The live policy generation; its low bit is the live slot. 0: no policy yet.
    pub generation: u32,
    /// [`config_flags`] of the live generation.
    pub flags: u32,
}

/// Data of an `WL_PREFIXES` LPM key. IPv4 addresses are stored IPv4-mapped
/// (`::ffff:a.b.c.d`); the prefix length counts the 32 bits of `slot` and
/// padding first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixData {
    pub slot: u8,
    pub _pad: [u8; 3],
    pub addr: [u8; 16],
}
pub const PREFIX_KEY_FIXED_BITS: u32 = 32;

/// `WL_VLANS` key: `(slot << 16) | vlan id`; value: segment id.
pub const fn vlan_key(slot: u8, vid: u16) -> u32 {
    ((slot as u32) << 16) | vid as u32
}

/// `WL_MONITOR` key: a segment in monitor mode in a slot; value: 1.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MonitorKey {
    pub slot: u32,
    pub segment: u32,
}

/// Data of a `WL_RULES` LPM key. Segments and port are big-endian so that a
/// port range splits into prefixes of the port's bits. `port` is 0 with a
/// zero-length port prefix for ICMP and for [`PROTO_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleData {
    pub slot: u8,
    pub proto: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub port: [u8; 2],
}
/// Bits of a rule key before the port's bits.
pub const RULE_KEY_FIXED_BITS: u32 = 80;

/// The deciding policies of one port interval: policy ids, 0 for none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// The lowest id among matching deny policies.
    pub deny: u32,
    /// The lowest id among matching allow policies.
    pub allow: u32,
}

/// Data of a `WL_FAILSAFE` LPM key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FailsafeData {
    /// [`FAILSAFE_REMOTE_INITIATES`] or [`FAILSAFE_LOCAL_INITIATES`].
    pub kind: u8,
    pub proto: u8,
    /// The responder's port, big-endian.
    pub port: [u8; 2],
    pub addr: [u8; 16],
}
pub const FAILSAFE_KEY_FIXED_BITS: u32 = 32;
/// `direction: ingress`: the remote (in `cidrs`) opens connections to `port` here.
pub const FAILSAFE_REMOTE_INITIATES: u8 = 0;
/// `direction: egress`: this node opens connections to `port` on the remote.
pub const FAILSAFE_LOCAL_INITIATES: u8 = 1;

/// A connection as its initiator sent it. Addresses IPv4-mapped for IPv4.
/// ICMP echo uses the identifier as both ports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// State of a tracked connection ([`FlowState::status`]).
pub const FLOW_ALLOWED: u8 = 1;
pub const FLOW_AUDITED: u8 = 2;
pub const FLOW_DENIED: u8 = 3;
pub const FLOW_FAILSAFE: u8 = 4;

/// [`FlowState::tcp`] bits.
pub const TCP_SEEN_REPLY: u8 = 1 << 0;
pub const TCP_FIN_ORIG: u8 = 1 << 1;
pub const TCP_FIN_REPLY: u8 = 1 << 2;
pub const TCP_RST: u8 = 1 << 3;
pub const TCP_CLOSE_REPORTED: u8 = 1 << 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The generation whose policy admitted (or dropped) this connection.
    pub generation: u32,
    pub policy: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
    pub ifindex: u32,
    pub vlan: u16,
    pub status: u8,
    /// [`Reason`] of the verdict, as a byte.
    pub reason: u8,
    pub tcp: u8,
    pub _pad: [u8; 7],
}

/// Fragments of a datagram whose first fragment was seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentState {
    pub seen_ns: u64,
    /// 1: the first fragment passed; 0: it was dropped.
    pub passed: u32,
    pub _pad: u32,
}

// ---------------------------------------------------------------------------
// Events.

pub const EVENT_NEW: u8 = 1;
pub const EVENT_DROP: u8 = 2;
pub const EVENT_CLOSE: u8 = 3;
/// A tracked connection lost its allow with a policy change and was cut.
pub const EVENT_REVOKED: u8 = 4;

/// One record on the `WL_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_boot_ns` at the event.
    pub time_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub ifindex: u32,
    pub generation: u32,
    pub policy: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
    pub sport: u16,
    pub dport: u16,
    /// 802.1Q VLAN id, 0 for untagged.
    pub vlan: u16,
    pub kind: u8,
    pub verdict: u8,
    pub reason: u8,
    pub direction: u8,
    pub proto: u8,
    /// 4 or 6; 0 when the packet was dropped before its IP header was read.
    pub family: u8,
}

// ---------------------------------------------------------------------------
// Connection-tracking timeouts, nanoseconds.

pub const SECOND_NS: u64 = 1_000_000_000;
pub const TIMEOUT_TCP_OPENING: u64 = 60 * SECOND_NS;
pub const TIMEOUT_TCP_ESTABLISHED: u64 = 3600 * SECOND_NS;
pub const TIMEOUT_TCP_CLOSING: u64 = 10 * SECOND_NS;
pub const TIMEOUT_UDP: u64 = 60 * SECOND_NS;
pub const TIMEOUT_ICMP: u64 = 30 * SECOND_NS;
pub const TIMEOUT_SCTP: u64 = 3600 * SECOND_NS;
pub const TIMEOUT_OTHER: u64 = 60 * SECOND_NS;
pub const TIMEOUT_DENIED: u64 = 10 * SECOND_NS;
pub const TIMEOUT_FRAGMENT: u64 = 30 * SECOND_NS;

/// How long a tracked connection lives without a packet.
pub const fn flow_timeout(proto: u8, status: u8, tcp: u8) -> u64 {
    if status == FLOW_DENIED {
        return TIMEOUT_DENIED;
    }
    match proto {
        PROTO_TCP => {
            if tcp & TCP_RST != 0 || (tcp & TCP_FIN_ORIG != 0 && tcp & TCP_FIN_REPLY != 0) {
                TIMEOUT_TCP_CLOSING
            } else if tcp & TCP_SEEN_REPLY != 0 {
                TIMEOUT_TCP_ESTABLISHED
            } else {
                TIMEOUT_TCP_OPENING
            }
        }
        PROTO_UDP => TIMEOUT_UDP,
        PROTO_ICMP | PROTO_ICMPV6 => TIMEOUT_ICMP,
        PROTO_SCTP => TIMEOUT_SCTP,
        _ => TIMEOUT_OTHER,
    }
}

// ---------------------------------------------------------------------------
// Layout assertions: both sides compile these.

const _: () = {
    assert!(core::mem::size_of::<Config>() == 8);
    assert!(core::mem::size_of::<PrefixData>() == 20);
    assert!(core::mem::size_of::<MonitorKey>() == 8);
    assert!(core::mem::size_of::<RuleData>() == 12);
    assert!(core::mem::size_of::<RuleValue>() == 8);
    assert!(core::mem::size_of::<FailsafeData>() == 20);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowState>() == 64);
    assert!(core::mem::size_of::<FragmentKey>() == 40);
    assert!(core::mem::size_of::<FragmentState>() == 16);
    assert!(core::mem::size_of::<FlowEvent>() == 88);
};

#[cfg(feature = "user")]
mod user {
    use super::*;

    macro_rules! pod {
        ($($t:ty),*) => {$(
            // SAFETY: repr(C), Copy, every byte a field (padding written out).
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(
        Config,
        PrefixData,
        MonitorKey,
        RuleData,
        RuleValue,
        FailsafeData,
        FlowKey,
        FlowState,
        FragmentKey,
        FragmentState,
        FlowEvent
    );
}

// ---------------------------------------------------------------------------
// The emulated 802.1Q switch port (labs and tests on kernels without 8021q).

pub const PROG_ACCESS_PORT: &str = "wardline_access_port";
pub const MAP_ACCESS_PORTS: &str = "WL_ACCESS_PORTS";

/// A device-facing port: tag what the device sends with `vid`.
pub const PORT_ACCESS: u16 = 1;
/// A trunk-facing port: untag what goes to the device.
pub const PORT_TRUNK: u16 = 2;
/// A host's own port on a trunk: untag in place, no redirect.
pub const PORT_UNTAG: u16 = 3;

/// `WL_ACCESS_PORTS[ingress ifindex]`: where frames arriving there go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessPort {
    pub out_ifindex: u32,
    /// VLAN id pushed on an access port; 0 pushes nothing.
    pub vid: u16,
    pub mode: u16,
}

const _: () = assert!(core::mem::size_of::<AccessPort>() == 8);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, every byte a field.
unsafe impl aya::Pod for AccessPort {}
