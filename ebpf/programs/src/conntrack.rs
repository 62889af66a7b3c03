//! Connection tracking (`docs/verdicts.md`, "What counts as a reply"):
//! passed connections in `WL_CONNTRACK`, bound to where their two ends live;
//! dropped ones remembered apart in `WL_DENIED`, in their own orientation
//! only.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_EXIST, BPF_NOEXIST},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use wardline_ebpf_abi::{
    BOUND_ORIG, BOUND_REPLY_VLAN, COUNTER_TRACKING_FULL, DIR_EGRESS, DIR_INGRESS, DeniedState,
    EVENT_CLOSE, EVENT_REVOKED, FLOW_AUDITED, FLOW_DENIED, FLOW_FAILSAFE, FlowKey, FlowState,
    INITIATOR_FIRST, MAX_CONNECTIONS, MAX_DENIED, MAX_UNCONFIRMED, PROTO_ICMP, PROTO_ICMPV6,
    PROTO_TCP, Reason, TCP_CLOSE_REPORTED, TCP_FIN_ORIG, TCP_FIN_REPLY, TCP_RST, TCP_SEEN_REPLY,
    TIMEOUT_DENIED, TO_GROUP, flow_timeout, slot_of,
};

use crate::events::{EventFlow, count_slot, flow_event};
use crate::parse::Packet;
use crate::policy::{Judged, decide, policy_port};
use crate::segments::{segment_of, vlan_segment};
use crate::verdict::Env;

/// Connections that passed, one key for both directions ([`table_key`]). A plain hash map, preallocated, not an LRU one: an
/// LRU map evicts live entries long before it is full when CPUs contend,
/// which cut established connections. The agent sweeps idle entries; when
/// the map is full a new connection still gets its verdict, untracked, and
/// the failed insert is counted.
#[map]
static WL_CONNTRACK: HashMap<FlowKey, FlowState> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);
/// Passed connections no reply has been seen for yet, keyed as
/// `WL_CONNTRACK`. An LRU map: a flood of one-way packets (spoofed SYNs to an
/// allowed port, from an allowed segment) only ever evicts its own kind, and
/// an evicted connection's next packet is judged again. A connection moves
/// to `WL_CONNTRACK` with its first reply.
#[map]
static WL_UNCONFIRMED: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(MAX_UNCONFIRMED, 0);
/// Dropped connections, keyed by their own orientation. An LRU map: a
/// flood of them only ever evicts its own kind.
#[map]
static WL_DENIED: LruHashMap<FlowKey, DeniedState> = LruHashMap::with_max_entries(MAX_DENIED, 0);

/// Per-CPU room to build an entry in: the BPF stack is 512 bytes for the
/// whole call chain. Not pinned: it holds nothing between packets.
#[map]
static WL_WORK: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's room to build an entry in, or `None` (never, for an array
/// of one element).
#[inline(always)]
fn work() -> Option<&'static mut FlowState> {
    let w = WL_WORK.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array, used by this program run
    // only and by one function at a time.
    Some(unsafe { &mut *w })
}

/// Orientations a packet may be looked up in.
pub const AS_INITIATOR: u8 = 1;
pub const AS_REPLY: u8 = 2;

/// Which table an entry is in: `WL_CONNTRACK` (a reply was seen) or
/// `WL_UNCONFIRMED`.
const CONFIRMED: u8 = 0;
const UNCONFIRMED: u8 = 1;

#[inline(always)]
fn entry(table: u8, key: &FlowKey) -> Option<*mut FlowState> {
    if table == CONFIRMED {
        WL_CONNTRACK.get_ptr_mut(key)
    } else {
        WL_UNCONFIRMED.get_ptr_mut(key)
    }
}

#[inline(always)]
fn replace(table: u8, key: &FlowKey, value: &FlowState) {
    let _ = if table == CONFIRMED {
        WL_CONNTRACK.insert(key, value, BPF_EXIST as u64)
    } else {
        WL_UNCONFIRMED.insert(key, value, BPF_EXIST as u64)
    };
}

#[inline(always)]
fn forget(table: u8, key: &FlowKey) {
    let _ = if table == CONFIRMED {
        WL_CONNTRACK.remove(key)
    } else {
        WL_UNCONFIRMED.remove(key)
    };
}

/// `rejudge`'s last argument: the orientation and the table.
const HOW_REPLY: u8 = 1;
const HOW_UNCONFIRMED: u8 = 2;

const TCP_FIN: u8 = 0x01;
const TCP_RST_FLAG: u8 = 0x04;
const EEXIST: i32 = 17;

/// The tracking-table key of a connection, from one of its packets' tuple
/// (`key`, turned in place), and whether that packet's source is the key's
/// first end. A connection has one key whichever direction its packet goes
/// (its lower end first), so that one lookup finds it. ICMP echo keeps the
/// requester first (`which` says the orientation: a request is only ever
/// an initiator, a reply only a reply), so that an echo request and an echo
/// reply never meet in one key.
#[inline(always)]
pub fn table_key(key: &mut FlowKey, which: u8) -> bool {
    let src_first = match which {
        AS_INITIATOR => true,
        AS_REPLY => false,
        _ => lower_first(key),
    };
    if !src_first {
        core::mem::swap(&mut key.src, &mut key.dst);
        core::mem::swap(&mut key.sport, &mut key.dport);
    }
    src_first
}

/// Whether the source end (address, port) orders before the destination.
#[inline(always)]
fn lower_first(key: &FlowKey) -> bool {
    let (s, d) = (&key.src, &key.dst);
    let s_hi = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
    let d_hi = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    if s_hi != d_hi {
        return s_hi < d_hi;
    }
    let s_lo = u64::from_be_bytes([s[8], s[9], s[10], s[11], s[12], s[13], s[14], s[15]]);
    let d_lo = u64::from_be_bytes([d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]]);
    if s_lo != d_lo {
        return s_lo < d_lo;
    }
    key.sport <= key.dport
}

/// The tracked connection `p` belongs to, in the orientations `which`
/// allows, and its verdict; 0 when it belongs to none (a new connection).
///
/// Written through the entry's pointer are only the packet and byte
/// counts, the last-seen time and the TCP bits: the element of a
/// preallocated map can be freed and reused for another connection while
/// this program holds it (the agent's sweep on another CPU), and those
/// fields can at worst keep that other connection alive longer. Everything
/// that decides a verdict is written by replacing the entry.
#[inline(always)]
pub fn tracked(env: &Env<'_>, p: &mut Packet, packet_key: &FlowKey, which: u8) -> u8 {
    let mut canonical = *packet_key;
    let src_first = table_key(&mut canonical, which);
    // Map calls take the key by reference (a copy would be 40 more bytes
    // of stack).
    let key: &FlowKey = &canonical;
    let mut which_table = CONFIRMED;
    let mut s = match WL_CONNTRACK.get_ptr_mut(key) {
        Some(s) => s,
        None => {
            which_table = UNCONFIRMED;
            match WL_UNCONFIRMED.get_ptr_mut(key) {
                Some(s) => s,
                None => return 0,
            }
        }
    };
    // SAFETY: a value pointer of a tracking map, valid for this program run
    // (see above on what is written through it).
    let st = unsafe { &*s };
    // Another CPU may have stamped the entry after this packet read the
    // clock: a stamp in the future is idle time zero, never a wrap-around.
    if env.now.saturating_sub(st.last_seen_ns) >= flow_timeout(key.proto, st.status, st.tcp) {
        forget(which_table, key);
        return 0;
    }
    let reply = src_first != (st.binding & INITIATOR_FIRST != 0);
    let allowed = if reply { AS_REPLY } else { AS_INITIATOR };
    if which & allowed == 0 || (reply && st.binding & TO_GROUP != 0) {
        return 0;
    }
    match bound(env, p, st, reply) {
        Bound::Here => {}
        Bound::Elsewhere => return 0,
        Bound::Learn => match learn(env, p, key, which_table) {
            Some(fresh) => s = fresh,
            None => return 0,
        },
    }
    if reply && which_table == UNCONFIRMED {
        // The first reply confirms the connection.
        if let Some(moved) = confirm(key) {
            s = moved;
            which_table = CONFIRMED;
        }
    }
    // SAFETY: as above.
    let s = unsafe { &mut *s };
    let status = s.status;
    if status != FLOW_DENIED {
        s.last_seen_ns = env.now;
        s.packets += 1;
        s.bytes += env.ctx.len() as u64;
        if key.proto == PROTO_TCP {
            let mut tcp = s.tcp;
            if reply {
                tcp |= TCP_SEEN_REPLY;
            }
            if p.tcp_flags & TCP_RST_FLAG != 0 {
                tcp |= TCP_RST;
            }
            if p.tcp_flags & TCP_FIN != 0 {
                tcp |= if reply { TCP_FIN_REPLY } else { TCP_FIN_ORIG };
            }
            s.tcp = tcp;
        }
    }
    if status == FLOW_FAILSAFE {
        return Reason::Failsafe as u8;
    }
    if s.generation != env.generation {
        let how = if reply { HOW_REPLY } else { 0 }
            | if which_table == UNCONFIRMED {
                HOW_UNCONFIRMED
            } else {
                0
            };
        return rejudge(env, p, key, s, how) as u8;
    }
    if status == FLOW_DENIED {
        return Reason::DroppedFlow as u8;
    }
    let tcp = s.tcp;
    if key.proto == PROTO_TCP
        && tcp & TCP_CLOSE_REPORTED == 0
        && (tcp & TCP_RST != 0 || (tcp & TCP_FIN_ORIG != 0 && tcp & TCP_FIN_REPLY != 0))
    {
        s.tcp = tcp | TCP_CLOSE_REPORTED;
        close_event(env, p, s, reply);
    }
    passing_reason(status) as u8
}

/// Whether a packet of a connection arrives where the connection lives.
enum Bound {
    Here,
    Elsewhere,
    /// Here, and it tells where replies come from (egress) or their VLAN
    /// (the first reply).
    Learn,
}

#[inline(always)]
fn bound(env: &Env<'_>, p: &Packet, st: &FlowState, reply: bool) -> Bound {
    let (reply_ifindex, binding) = (st.reply_ifindex, st.binding);
    if env.direction == DIR_EGRESS {
        // Where the initiator's packets leave is where replies come from.
        return if reply || reply_ifindex != 0 {
            Bound::Here
        } else {
            Bound::Learn
        };
    }
    if !reply {
        let here =
            binding & BOUND_ORIG != 0 && st.orig_ifindex == env.ifindex && st.orig_vlan == p.vlan;
        return if here { Bound::Here } else { Bound::Elsewhere };
    }
    if reply_ifindex == 0 || reply_ifindex != env.ifindex {
        Bound::Elsewhere
    } else if binding & BOUND_REPLY_VLAN == 0 {
        Bound::Learn
    } else if st.reply_vlan == p.vlan {
        Bound::Here
    } else {
        Bound::Elsewhere
    }
}

/// Records where the connection lives by replacing its entry, and returns
/// the new entry's pointer.
#[inline(never)]
fn learn(env: &Env<'_>, p: &Packet, key: &FlowKey, table: u8) -> Option<*mut FlowState> {
    let s = entry(table, key)?;
    let learned = work()?;
    // SAFETY: a value pointer of a tracking map, copied out at once.
    *learned = unsafe { *s };
    if env.direction == DIR_EGRESS {
        learned.reply_ifindex = env.ifindex;
    } else {
        learned.reply_vlan = p.vlan;
        learned.binding |= BOUND_REPLY_VLAN;
    }
    replace(table, key, learned);
    entry(table, key)
}

/// Moves a connection whose first reply came to `WL_CONNTRACK`; `None`
/// when that table is full (counted: the connection stays unconfirmed,
/// where it still works until evicted).
#[inline(never)]
fn confirm(key: &FlowKey) -> Option<*mut FlowState> {
    let s = WL_UNCONFIRMED.get_ptr(key)?;
    let moving = work()?;
    // SAFETY: a value pointer of `WL_UNCONFIRMED`, copied out at once.
    *moving = unsafe { *s };
    let value: &FlowState = moving;
    match WL_CONNTRACK.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => {
            let _ = WL_UNCONFIRMED.remove(key);
            WL_CONNTRACK.get_ptr_mut(key)
        }
        Err(e) => {
            if e != -EEXIST {
                count_slot(COUNTER_TRACKING_FULL);
            }
            None
        }
    }
}

#[inline(never)]
fn close_event(env: &Env<'_>, p: &mut Packet, s: &FlowState, reply: bool) {
    let f = flow_of(s);
    event_as_initiator(env, p, reply, EVENT_CLOSE, Reason::Established, &f);
}

#[inline(always)]
fn passing_reason(status: u8) -> Reason {
    if status == FLOW_AUDITED {
        Reason::MonitorEstablished
    } else {
        Reason::Established
    }
}

#[inline(always)]
fn flow_of(s: &FlowState) -> EventFlow {
    EventFlow {
        packets: s.packets,
        bytes: s.bytes,
        policy: s.policy,
        src_segment: s.src_segment,
        dst_segment: s.dst_segment,
        reply: false,
    }
}

/// Zero trust over time: the connection is judged again as its initiator
/// opened it, with the live generation's tables, whichever direction this
/// packet goes; cut (and reported `revoked`) if no longer allowed.
#[inline(never)]
fn rejudge(env: &Env<'_>, p: &mut Packet, key: &FlowKey, s: &FlowState, how: u8) -> Reason {
    let reply = how & HOW_REPLY != 0;
    let table = if how & HOW_UNCONFIRMED != 0 {
        UNCONFIRMED
    } else {
        CONFIRMED
    };
    let Some(st) = work() else {
        return Reason::Internal;
    };
    *st = *s;
    // The initiator's end is the key's first one, or its second.
    let initiator_first = st.binding & INITIATOR_FIRST != 0;
    let (isrc, idst, idport) = if initiator_first {
        (&key.src, &key.dst, key.dport)
    } else {
        (&key.dst, &key.src, key.sport)
    };
    let slot = slot_of(env.generation);
    let family = p.family;
    let by_vlan = if st.binding & BOUND_ORIG != 0 && st.orig_vlan != 0 {
        vlan_segment(slot, st.orig_vlan)
    } else {
        None
    };
    let src = match by_vlan {
        Some(seg) => seg,
        None => segment_of(slot, family, isrc),
    };
    let dst = segment_of(slot, family, idst);
    let j = decide(env, src, dst, key.proto, policy_port(key.proto, idport));
    let was_passing = st.status != FLOW_DENIED;
    st.generation = env.generation;
    st.policy = j.policy;
    st.src_segment = j.src_segment;
    st.dst_segment = j.dst_segment;
    st.reason = j.reason as u8;
    st.status = status_of(j.reason);
    // Passed as a reference to the per-CPU value: a copy would take 64
    // bytes of the stack.
    replace(table, key, st);
    if st.status == FLOW_DENIED {
        if was_passing {
            let f = flow_of(st);
            event_as_initiator(env, p, reply, EVENT_REVOKED, j.reason, &f);
        }
        return Reason::DroppedFlow;
    }
    passing_reason(st.status)
}

/// The tracking status of a new connection's verdict.
#[inline(always)]
pub fn status_of(reason: Reason) -> u8 {
    match reason {
        Reason::PolicyAllow => wardline_ebpf_abi::FLOW_ALLOWED,
        Reason::Monitor => FLOW_AUDITED,
        Reason::Failsafe => FLOW_FAILSAFE,
        _ => FLOW_DENIED,
    }
}

/// An event that names the connection as its initiator opened it, whatever
/// the direction of the packet that caused it.
#[inline(always)]
fn event_as_initiator(
    env: &Env<'_>,
    p: &mut Packet,
    reply: bool,
    kind: u8,
    reason: Reason,
    f: &EventFlow,
) {
    if reply {
        core::mem::swap(&mut p.src, &mut p.dst);
        core::mem::swap(&mut p.sport, &mut p.dport);
    }
    flow_event(env, p, kind, reason, &EventFlow { reply, ..*f });
    if reply {
        core::mem::swap(&mut p.src, &mut p.dst);
        core::mem::swap(&mut p.sport, &mut p.dport);
    }
}

/// Tracks a new connection that passed, bound to where its first packet
/// arrived (ingress) or left (egress), in `WL_UNCONFIRMED` until its first
/// reply.
#[inline(never)]
pub fn track(env: &Env<'_>, p: &Packet, packet_key: &FlowKey, which: u8, j: &Judged) {
    let mut canonical = *packet_key;
    let initiator_first = table_key(&mut canonical, which);
    let key: &FlowKey = &canonical;
    let ingress = env.direction == DIR_INGRESS;
    let mut tcp = 0;
    if key.proto == PROTO_TCP && p.tcp_flags & TCP_RST_FLAG != 0 {
        tcp = TCP_RST;
    }
    let Some(st) = work() else {
        count_slot(COUNTER_TRACKING_FULL);
        return;
    };
    *st = FlowState {
        created_ns: env.now,
        last_seen_ns: env.now,
        packets: 1,
        bytes: env.ctx.len() as u64,
        generation: env.generation,
        policy: j.policy,
        src_segment: j.src_segment,
        dst_segment: j.dst_segment,
        orig_ifindex: if ingress { env.ifindex } else { 0 },
        reply_ifindex: if ingress { 0 } else { env.ifindex },
        orig_vlan: if ingress { p.vlan } else { 0 },
        reply_vlan: 0,
        status: status_of(j.reason),
        reason: j.reason as u8,
        tcp,
        binding: if ingress { BOUND_ORIG } else { 0 }
            | if initiator_first { INITIATOR_FIRST } else { 0 }
            | if p.to_group() { TO_GROUP } else { 0 },
    };
    // The tuple (in either orientation) tracked for a connection that
    // lives elsewhere stays as it is: this packet got its own verdict.
    // SAFETY: a lookup whose value is not read.
    if unsafe { WL_CONNTRACK.get(key) }.is_some() {
        return;
    }
    let value: &FlowState = st;
    match WL_UNCONFIRMED.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(e) if e == -EEXIST => {}
        Err(_) => count_slot(COUNTER_TRACKING_FULL),
    }
}

/// Remembers a dropped new connection, in its own orientation, where it
/// arrived.
#[inline(never)]
pub fn remember_denied(env: &Env<'_>, p: &Packet, key: &FlowKey, j: &Judged) {
    let d = DeniedState {
        created_ns: env.now,
        generation: env.generation,
        policy: j.policy,
        ifindex: env.ifindex,
        vlan: p.vlan,
        direction: env.direction,
        reason: j.reason as u8,
    };
    let _ = WL_DENIED.insert(key, d, BPF_ANY as u64);
}

/// Whether `p` retries a connection dropped under this generation, from
/// where it was first seen, less than [`TIMEOUT_DENIED`] ago.
#[inline(never)]
pub fn is_denied(env: &Env<'_>, p: &Packet, key: &FlowKey) -> bool {
    // SAFETY: the value is copied out at once; nothing is written through it.
    let Some(d) = (unsafe { WL_DENIED.get(key) }).copied() else {
        return false;
    };
    if d.ifindex != env.ifindex || d.vlan != p.vlan || d.direction != env.direction {
        return false;
    }
    if env.now.saturating_sub(d.created_ns) < TIMEOUT_DENIED && d.generation == env.generation {
        return true;
    }
    let _ = WL_DENIED.remove(key);
    false
}

/// Whether an ICMP error is about a tracked, still passing connection and
/// travels towards the source of the packet it quotes, from the side that
/// packet went to.
#[inline(never)]
pub fn related(env: &Env<'_>, p: &Packet) -> bool {
    if !p.has_inner || p.dst != p.inner.src {
        return false;
    }
    // A quoted echo is a request (the parser reads no other).
    let which = if p.inner.proto == PROTO_ICMP || p.inner.proto == PROTO_ICMPV6 {
        AS_INITIATOR
    } else {
        AS_INITIATOR | AS_REPLY
    };
    let mut key = p.inner;
    let src_first = table_key(&mut key, which);
    // SAFETY: values copied out at once.
    let found = match unsafe { WL_CONNTRACK.get(key) } {
        Some(s) => Some(*s),
        // SAFETY: as above.
        None => unsafe { WL_UNCONFIRMED.get(key) }.copied(),
    };
    let Some(s) = found else {
        return false;
    };
    let quoted_reply = src_first != (s.binding & INITIATOR_FIRST != 0);
    if env.now.saturating_sub(s.last_seen_ns) >= flow_timeout(p.inner.proto, s.status, s.tcp) {
        return false;
    }
    if env.direction == DIR_INGRESS {
        // An error about the initiator's packet comes from the responder's
        // side, and the other way round.
        let here = if quoted_reply {
            s.binding & BOUND_ORIG != 0 && s.orig_ifindex == env.ifindex
        } else {
            s.reply_ifindex != 0 && s.reply_ifindex == env.ifindex
        };
        if !here {
            return false;
        }
    }
    s.status == FLOW_FAILSAFE || (s.status != FLOW_DENIED && s.generation == env.generation)
}
