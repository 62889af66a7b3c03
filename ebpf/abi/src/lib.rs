//! The ABI between Wardline's kernel programs and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, has its padding written out as
//! fields and has its size asserted, because the kernel and user space must
//! agree on it byte for byte. Pins whose [`ABI_VERSION`] differs from the
//! agent's are replaced, never adopted.
//!
//! # Generations
//!
//! Every policy table key starts with a *slot* byte: [`slot_of`] the
//! generation, one of [`SLOTS`]. The agent writes a new policy into a slot
//! the live generation does not use, then switches by one write of
//! [`Config`], which a packet reads first, in one load: it is judged wholly
//! by the old tables or wholly by the new ones. The other slots hold the
//! generations of coming policy-window boundaries, each with the instant it
//! takes over ([`ScheduleEntry`]), so that windows open and close on time in
//! the kernel whether or not the agent runs.
#![no_std]

use core::mem::offset_of;

/// Bumped whenever a map layout, a map name or a program's meaning changes.
pub const ABI_VERSION: u32 = 6;

/// Generation slots in the policy tables: the live one and up to
/// [`MAX_SCHEDULED`] scheduled ones.
pub const SLOTS: u32 = 4;
/// Window boundaries programmed ahead, each in a slot of its own.
pub const MAX_SCHEDULED: u32 = SLOTS - 1;

/// The slot byte of a generation's policy-table keys.
pub const fn slot_of(generation: u32) -> u8 {
    (generation % SLOTS) as u8
}

// ---------------------------------------------------------------------------
// Names of programs and maps (the ELF symbols and the pin file names).

pub const PROG_INGRESS: &str = "wardline_ingress";
pub const PROG_EGRESS: &str = "wardline_egress";

pub const MAP_CONFIG: &str = "WL_CONFIG";
pub const MAP_PREFIXES: &str = "WL_PREFIXES";
pub const MAP_PREFIX_LENS: &str = "WL_PREFIX_LENS";
pub const MAP_PREFIX_TRIE: &str = "WL_PREFIX_TRIE";
pub const MAP_VLANS: &str = "WL_VLANS";
pub const MAP_MARKS: &str = "WL_MARKS";
pub const MAP_RULES: &str = "WL_RULES";
pub const MAP_RULE_PORTS: &str = "WL_RULE_PORTS";
pub const MAP_FAILSAFE: &str = "WL_FAILSAFE";
pub const MAP_LOCAL_ADDRS: &str = "WL_LOCAL_ADDRS";
pub const MAP_SCHEDULE: &str = "WL_SCHEDULE";
pub const MAP_DENIED: &str = "WL_DENIED";
pub const MAP_UNCONFIRMED: &str = "WL_UNCONFIRMED";
pub const MAP_ETHERTYPES: &str = "WL_ETHERTYPES";
pub const MAP_CONNTRACK: &str = "WL_CONNTRACK";
pub const MAP_FRAGMENTS: &str = "WL_FRAGMENTS";
pub const MAP_COUNTERS: &str = "WL_COUNTERS";
pub const MAP_EVENTS: &str = "WL_EVENTS";

/// Every map the agent pins, in one place.
pub const ALL_MAPS: [&str; 18] = [
    MAP_CONFIG,
    MAP_SCHEDULE,
    MAP_PREFIXES,
    MAP_PREFIX_LENS,
    MAP_PREFIX_TRIE,
    MAP_VLANS,
    MAP_MARKS,
    MAP_RULES,
    MAP_RULE_PORTS,
    MAP_FAILSAFE,
    MAP_LOCAL_ADDRS,
    MAP_ETHERTYPES,
    MAP_CONNTRACK,
    MAP_UNCONFIRMED,
    MAP_DENIED,
    MAP_FRAGMENTS,
    MAP_COUNTERS,
    MAP_EVENTS,
];

// ---------------------------------------------------------------------------
// Capacities.

/// Prefixes one generation may hold.
pub const PREFIXES_PER_GENERATION: u32 = 131_072;
/// Compiled rule entries one generation may hold (port ranges split into
/// prefixes).
pub const RULES_PER_GENERATION: u32 = 262_144;
/// The prefix and rule tables hold every slot's entries. They are hashes
/// allocated per entry: an unused slot costs only its share of the bucket
/// array (16 bytes a bucket, one bucket per entry of capacity).
pub const MAX_PREFIXES: u32 = SLOTS * PREFIXES_PER_GENERATION;
pub const MAX_RULE_ENTRIES: u32 = SLOTS * RULES_PER_GENERATION;
/// Distinct (protocol, source, destination) triples with port ranges one
/// generation may hold.
pub const RANGED_TRIPLES_PER_GENERATION: u32 = 32_768;
pub const MAX_RANGED_TRIPLES: u32 = SLOTS * RANGED_TRIPLES_PER_GENERATION;
pub const MAX_VLAN_ENTRIES: u32 = SLOTS * 4096;
pub const MAX_MARK_ENTRIES: u32 = SLOTS * 65_536;
pub const MAX_FAILSAFE: u32 = 1024;
/// The node's own addresses (failsafe flows are the node's own).
pub const MAX_LOCAL_ADDRS: u32 = 4096;
pub const MAX_ETHERTYPES: u32 = 64;
/// Tracked connections that passed (allowed, audited, failsafe) and whose
/// first reply was seen.
pub const MAX_CONNECTIONS: u32 = 262_144;
/// Passed connections no reply has been seen for yet: a table of their
/// own, least recently used first out, so that a flood of one-way packets
/// (spoofed SYNs to an allowed port) never fills [`MAX_CONNECTIONS`]. An
/// evicted one is judged again by its next packet.
pub const MAX_UNCONFIRMED: u32 = 131_072;
/// Remembered dropped connections: a table of their own, least recently
/// used first out, so that a flood of them never touches [`MAX_CONNECTIONS`].
pub const MAX_DENIED: u32 = 65_536;
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
/// Ethernet II ethertypes start here; a smaller value in that field is an
/// IEEE 802.3 length.
pub const ETH_P_802_3_MIN: u16 = 0x0600;
/// The key under which `passEthertypes` lists IEEE 802.3 frames with a
/// length field (written `802.3` in the agent's configuration).
pub const ETHERTYPE_802_3: u16 = 0;

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
    /// `WL_SCHEDULE` holds generations that take over at set instants.
    pub const HAS_SCHEDULE: u32 = 1 << 5;
    /// Some segment is in monitor mode in the live generation.
    pub const HAS_MONITOR: u32 = 1 << 6;
    /// Some segment is a quarantine in the live generation.
    pub const HAS_QUARANTINE: u32 = 1 << 7;
    /// The flags a generation's compiled policy sets; the others belong to
    /// the agent's configuration and hold across generations.
    pub const POLICY_FLAGS: u32 =
        HAS_SRC_ANY | HAS_DST_ANY | HAS_PROTO_ANY | HAS_MONITOR | HAS_QUARANTINE;
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
    /// A later packet of an audited connection (monitor mode).
    MonitorEstablished = 18,
    /// The program could not judge the packet (no per-CPU scratch space).
    Internal = 19,
}

pub const REASON_COUNT: usize = 20;

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
        Reason::MonitorEstablished,
        Reason::Internal,
    ];

    pub const fn verdict(self) -> Verdict {
        match self {
            Reason::Monitor | Reason::MonitorEstablished => Verdict::Audited,
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
            | Reason::DroppedFlow
            | Reason::Internal => Verdict::Dropped,
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
            Reason::MonitorEstablished => "monitor-established",
            Reason::Internal => "internal",
        }
    }

    pub fn from_u8(v: u8) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| *r as u8 == v)
    }
}

/// What the programs return for a packet that passes: `TCX_NEXT`, so that
/// programs and tc filters after Wardline's still see it.
pub const ACTION_PASS: i32 = -1;
/// What they return for a dropped packet: `TC_ACT_SHOT`.
pub const ACTION_DROP: i32 = 2;

/// Direction of the hook a packet was seen at.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

/// Index into [`MAP_COUNTERS`] of the packet counter for a direction and reason.
pub const fn counter_index(direction: u8, reason: u8) -> u32 {
    (direction as u32) * (REASON_COUNT as u32) + reason as u32
}
/// Index of the count of events the ring buffer had no room for.
pub const COUNTER_LOST_EVENTS: u32 = 2 * REASON_COUNT as u32;
/// Index of the count of passed connections the tracking table had no room
/// for (they got their verdict, untracked).
pub const COUNTER_TRACKING_FULL: u32 = COUNTER_LOST_EVENTS + 1;
/// Index of the count of passed first fragments the fragment table had no
/// room for (their later fragments are then orphans).
pub const COUNTER_FRAGMENTS_FULL: u32 = COUNTER_TRACKING_FULL + 1;
pub const COUNTER_SLOTS: u32 = COUNTER_FRAGMENTS_FULL + 1;

// ---------------------------------------------------------------------------
// Maps' keys and values.

/// `WL_CONFIG[0]`: read first by every packet, in one 8-byte load.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The live policy generation; [`slot_of`] it is the live slot. 0: no
    /// policy yet.
    pub generation: u32,
    /// [`config_flags`] of the live generation.
    pub flags: u32,
}

impl Config {
    /// The value as the one 8-byte word a packet loads.
    pub const fn to_word(self) -> u64 {
        self.generation as u64 | (self.flags as u64) << 32
    }
    pub const fn from_word(word: u64) -> Config {
        Config {
            generation: word as u32,
            flags: (word >> 32) as u32,
        }
    }
}

/// `WL_SCHEDULE[i]`: a generation that takes over from the live one at a
/// set instant. A packet uses the highest scheduled generation above the
/// live one whose instant has come. `at_tai_ns` 0: the entry is empty.
///
/// The agent writes an entry with one map update, which the kernel copies
/// byte-wise while packets may read it: `check` (written last) lets a packet
/// tell a whole entry from one caught half-written, and ignore the latter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScheduleEntry {
    /// `CLOCK_TAI` nanoseconds (`bpf_ktime_get_tai_ns`).
    pub at_tai_ns: u64,
    pub generation: u32,
    /// The [`config_flags::POLICY_FLAGS`] of that generation.
    pub flags: u32,
    /// [`ScheduleEntry::check_of`] the other fields.
    pub check: u64,
}

impl ScheduleEntry {
    pub const fn new(at_tai_ns: u64, generation: u32, flags: u32) -> ScheduleEntry {
        ScheduleEntry {
            at_tai_ns,
            generation,
            flags,
            check: Self::check_of(at_tai_ns, generation, flags),
        }
    }
    pub const fn check_of(at_tai_ns: u64, generation: u32, flags: u32) -> u64 {
        !(at_tai_ns ^ (generation as u64) ^ ((flags as u64) << 32))
    }
    /// Whole (not caught half-written) and not empty.
    pub const fn is_valid(&self) -> bool {
        self.at_tai_ns != 0
            && self.check == Self::check_of(self.at_tai_ns, self.generation, self.flags)
    }
}

/// Address family bytes in prefix and failsafe keys: IPv4 and IPv6 are kept
/// apart, so that no IPv6 prefix (not even `::/0`) holds an IPv4 address.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// A `WL_PREFIXES` key: one prefix of one length, its address masked to
/// `bits`. The table is a hash, probed once per prefix length in use
/// (`WL_PREFIX_LENS`), longest first, so that a lookup costs the same at
/// 10 prefixes or 100,000. IPv4 addresses are stored IPv4-mapped
/// (`::ffff:a.b.c.d`) with [`address_bits`] counting the mapped prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKey {
    pub slot: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Bits of `addr` that count (0..=128).
    pub bits: u8,
    pub _pad: u8,
    pub addr: [u8; 16],
}

/// Prefix lengths per family and slot that are probed in the hash; the
/// prefixes of any shorter lengths a policy uses besides are in the trie
/// (`WL_PREFIX_TRIE`), looked up after every probe missed. A policy of
/// host addresses and a few subnet sizes never needs the trie.
pub const PREFIX_PROBES: usize = 8;

/// `WL_PREFIX_LENS[prefix_lens_index(slot, family)]`: the prefix lengths
/// (as [`address_bits`]) probed in the hash, longest first, and whether
/// the trie holds prefixes of shorter lengths.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixLens {
    pub count: u8,
    /// 1 when `WL_PREFIX_TRIE` holds this slot's prefixes of this family
    /// that are shorter than every probed length.
    pub trie: u8,
    pub bits: [u8; PREFIX_PROBES],
    pub _pad: [u8; 6],
}

/// Data of a `WL_PREFIX_TRIE` LPM key (prefixes beyond the probed
/// lengths). IPv4 addresses are stored IPv4-mapped; the prefix length
/// counts the bits before `addr` ([`PREFIX_KEY_FIXED_BITS`]) first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixData {
    pub slot: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 2],
    pub addr: [u8; 16],
}
pub const PREFIX_KEY_FIXED_BITS: u32 = (offset_of!(PrefixData, addr) * 8) as u32;

pub const PREFIX_LENS_ENTRIES: u32 = SLOTS * 2;

pub const fn prefix_lens_index(slot: u8, family: u8) -> u32 {
    (slot as u32) * 2 + if family == FAMILY_V6 { 1 } else { 0 }
}

/// `addr` with every bit after the first `bits` cleared (in two 64-bit
/// halves: the BPF target has no 128-bit shifts).
#[inline(always)]
pub const fn mask_address(addr: [u8; 16], bits: u8) -> [u8; 16] {
    let a = addr;
    let hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let (hi, lo) = if bits == 0 {
        (0, 0)
    } else if bits < 64 {
        (hi & !(u64::MAX >> bits), 0)
    } else if bits == 64 {
        (hi, 0)
    } else if bits < 128 {
        (hi, lo & !(u64::MAX >> (bits - 64)))
    } else {
        (hi, lo)
    };
    let (h, l) = (hi.to_be_bytes(), lo.to_be_bytes());
    [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6],
        l[7],
    ]
}

/// The bits of a 16-byte address an address prefix covers: IPv4 prefixes
/// are stored IPv4-mapped, behind the 96 bits of `::ffff:0:0/96`.
pub const fn address_bits(family: u8, prefix_len: u8) -> u32 {
    if family == FAMILY_V4 {
        96 + prefix_len as u32
    } else {
        prefix_len as u32
    }
}

/// `WL_VLANS` key: `(slot << 16) | vlan id`; value: segment id.
pub const fn vlan_key(slot: u8, vid: u16) -> u32 {
    ((slot as u32) << 16) | vid as u32
}

/// `WL_MARKS` key: a segment of a slot that is in monitor mode or is a
/// quarantine.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MarkKey {
    pub slot: u32,
    pub segment: u32,
}

/// `WL_MARKS` value: what sets a segment apart (`docs/verdicts.md`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SegmentMarks {
    /// [`MARK_MONITOR`], [`MARK_QUARANTINE`].
    pub flags: u32,
    /// A quarantine's: the segment its addresses belong to without it, the
    /// one whose VLAN their frames may still carry; [`SEGMENT_WORLD`] when
    /// none does.
    pub origin: u32,
}

/// The segment is in monitor mode.
pub const MARK_MONITOR: u32 = 1 << 0;
/// The segment is a quarantine: never audited, never part of `any`.
pub const MARK_QUARANTINE: u32 = 1 << 1;

/// A `WL_RULES` key: the rules of one (protocol, source segment,
/// destination segment) for one prefix of the responder's port, `port`
/// masked to its first `port_bits` bits. The prefixes of one triple are
/// disjoint (the compiler merges overlapping policies first), so a port
/// matches at most one of them. A hash: a lookup is a constant number of
/// probes (the exact port, then the lengths `WL_RULE_PORTS` names).
/// `port` is 0 with `port_bits` 0 for ICMP and for [`PROTO_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    pub slot: u8,
    pub proto: u8,
    pub port_bits: u8,
    pub _pad: u8,
    pub src: u32,
    pub dst: u32,
    pub port: u16,
    pub _pad2: u16,
}

/// A `WL_RULE_PORTS` key: one (protocol, source, destination) triple;
/// the value has bit `b` set when the triple has a rule key with
/// `port_bits` `b` below 16 (an exact port is always probed first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RulePortsKey {
    pub slot: u8,
    pub proto: u8,
    pub _pad: [u8; 2],
    pub src: u32,
    pub dst: u32,
}

/// `port` with every bit after the first `bits` cleared.
pub const fn mask_port(port: u16, bits: u8) -> u16 {
    if bits == 0 {
        0
    } else if bits >= 16 {
        port
    } else {
        port & !(u16::MAX >> bits)
    }
}

/// The deciding policies of one port interval: policy ids, 0 for none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RuleValue {
    /// The lowest id among matching deny policies.
    pub deny: u32,
    /// The lowest id among matching allow policies.
    pub allow: u32,
}

/// Data of a `WL_FAILSAFE` LPM key: the remote end of a failsafe flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FailsafeData {
    /// [`FAILSAFE_REMOTE_INITIATES`] or [`FAILSAFE_LOCAL_INITIATES`].
    pub kind: u8,
    pub proto: u8,
    /// The responder's port, big-endian.
    pub port: [u8; 2],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
    /// The remote address (IPv4-mapped for IPv4).
    pub addr: [u8; 16],
}
pub const FAILSAFE_KEY_FIXED_BITS: u32 = (offset_of!(FailsafeData, addr) * 8) as u32;
/// `direction: ingress`: the remote (in `cidrs`) opens connections to
/// `port` on one of the node's own addresses.
pub const FAILSAFE_REMOTE_INITIATES: u8 = 0;
/// `direction: egress`: the node, from one of its own addresses, opens
/// connections to `port` on the remote.
pub const FAILSAFE_LOCAL_INITIATES: u8 = 1;

/// `WL_LOCAL_ADDRS` key: one of the node's own addresses (IPv4-mapped for
/// IPv4); value: 1. Kept current by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalAddr {
    pub addr: [u8; 16],
}

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

/// State of a tracked connection ([`FlowState::status`]). `FLOW_DENIED` is
/// a connection that a policy change cut (its allow was taken away).
pub const FLOW_ALLOWED: u8 = 1;
pub const FLOW_AUDITED: u8 = 2;
pub const FLOW_DENIED: u8 = 3;
pub const FLOW_FAILSAFE: u8 = 4;

/// [`FlowState::binding`] bits.
/// The first packet arrived at an ingress hook: `orig_ifindex` and
/// `orig_vlan` say where the initiator lives. Without it (the node opened
/// the connection), no initiator-orientation packet from outside belongs to
/// the connection.
pub const BOUND_ORIG: u8 = 1 << 0;
/// The first reply fixed `reply_vlan`.
pub const BOUND_REPLY_VLAN: u8 = 1 << 1;
/// The initiator is the first end of the entry's key (connections are
/// keyed with their lower end first, so one lookup serves both directions;
/// ICMP echo with the requester first).
pub const INITIATOR_FIRST: u8 = 1 << 2;
/// Sent to a group (multicast, broadcast): tracked in its initiator's
/// orientation only, so that the node forwarding it knows it on every
/// port it floods to; nothing is ever taken as its reply.
pub const TO_GROUP: u8 = 1 << 3;

/// [`FlowState::tcp`] bits.
pub const TCP_SEEN_REPLY: u8 = 1 << 0;
pub const TCP_FIN_ORIG: u8 = 1 << 1;
pub const TCP_FIN_REPLY: u8 = 1 << 2;
pub const TCP_RST: u8 = 1 << 3;
pub const TCP_CLOSE_REPORTED: u8 = 1 << 4;

/// A tracked connection that passed (`WL_CONNTRACK`, keyed by one
/// [`FlowKey`] for both directions: see [`INITIATOR_FIRST`]), bound to
/// where its two ends live.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub created_ns: u64,
    /// The last packet that passed.
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    /// The generation whose policy admitted (or cut) this connection.
    pub generation: u32,
    pub policy: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
    /// Where the initiator's packets arrive (with [`BOUND_ORIG`]).
    pub orig_ifindex: u32,
    /// Where replies arrive: the interface the initiator's packets left
    /// through; 0 while unknown.
    pub reply_ifindex: u32,
    pub orig_vlan: u16,
    /// With [`BOUND_REPLY_VLAN`].
    pub reply_vlan: u16,
    pub status: u8,
    /// [`Reason`] of the verdict, as a byte.
    pub reason: u8,
    pub tcp: u8,
    /// [`BOUND_ORIG`], [`BOUND_REPLY_VLAN`], [`INITIATOR_FIRST`].
    pub binding: u8,
}

/// A dropped connection, remembered so that its retries are reported once
/// (`WL_DENIED`, keyed by the packet's own [`FlowKey`] orientation). It
/// matches only packets that arrive where its first packet did, and is
/// forgotten [`TIMEOUT_DENIED`] after its first packet, whatever follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeniedState {
    pub created_ns: u64,
    pub generation: u32,
    pub policy: u32,
    pub ifindex: u32,
    pub vlan: u16,
    pub direction: u8,
    pub reason: u8,
}

/// A datagram whose first fragment passed. `proto` is the IPv4 protocol,
/// 0 for IPv6 (whose fragments key the same whatever headers follow the
/// Fragment header).
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
}

// ---------------------------------------------------------------------------
// Events.

pub const EVENT_NEW: u8 = 1;
pub const EVENT_DROP: u8 = 2;
pub const EVENT_CLOSE: u8 = 3;
/// A tracked connection lost its allow with a policy change and was cut.
pub const EVENT_REVOKED: u8 = 4;
/// Written by the agent, never by the kernel: a long connection's counts
/// since its previous record.
pub const EVENT_UPDATE: u8 = 5;
/// Written by the agent, never by the kernel: a tracked connection idle
/// past its timeout, removed.
pub const EVENT_EXPIRED: u8 = 6;

/// [`FlowEvent::flags`]: `eth` was read from a reply (its destination is
/// the initiator's side).
pub const EVENT_ETH_REPLY: u8 = 1 << 0;

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
    /// The packet's Ethernet destination and source addresses, as on the
    /// wire (zero when the frame is shorter than its Ethernet header).
    pub eth: [u8; 12],
    /// [`EVENT_ETH_REPLY`].
    pub flags: u8,
    pub _pad: [u8; 3],
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
    // A cut connection is forgotten TIMEOUT_DENIED after its last packet
    // that passed: the packets it drops do not keep it.
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
    assert!(core::mem::size_of::<ScheduleEntry>() == 24);
    assert!(core::mem::size_of::<PrefixKey>() == 20);
    assert!(core::mem::size_of::<PrefixLens>() == 16);
    assert!(core::mem::size_of::<PrefixData>() == 20);
    assert!(PREFIX_KEY_FIXED_BITS == 32);
    assert!(core::mem::size_of::<MarkKey>() == 8);
    assert!(core::mem::size_of::<SegmentMarks>() == 8);
    assert!(core::mem::size_of::<RuleKey>() == 16);
    assert!(core::mem::size_of::<RulePortsKey>() == 12);
    assert!(core::mem::size_of::<RuleValue>() == 8);
    assert!(core::mem::size_of::<FailsafeData>() == 24);
    assert!(FAILSAFE_KEY_FIXED_BITS == 64);
    assert!(core::mem::size_of::<LocalAddr>() == 16);
    assert!(core::mem::size_of::<FlowKey>() == 40);
    assert!(core::mem::size_of::<FlowState>() == 64);
    assert!(core::mem::size_of::<DeniedState>() == 24);
    assert!(core::mem::size_of::<FragmentKey>() == 40);
    assert!(core::mem::size_of::<FragmentState>() == 8);
    assert!(core::mem::size_of::<FlowEvent>() == 104);
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
        ScheduleEntry,
        PrefixKey,
        PrefixLens,
        PrefixData,
        MarkKey,
        SegmentMarks,
        RuleKey,
        RulePortsKey,
        RuleValue,
        FailsafeData,
        LocalAddr,
        FlowKey,
        FlowState,
        DeniedState,
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
