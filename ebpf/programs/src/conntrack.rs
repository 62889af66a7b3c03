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
    MAX_CONNECTIONS, MAX_DENIED, PROTO_TCP, Reason, TCP_CLOSE_REPORTED, TCP_FIN_ORIG,
    TCP_FIN_REPLY, TCP_RST, TCP_SEEN_REPLY, TIMEOUT_DENIED, flow_timeout, slot_of,
};

use crate::events::{EventFlow, count_slot, flow_event};
use crate::parse::Packet;
use crate::policy::{Judged, decide, policy_port};
use crate::segments::{segment_of, vlan_segment};
use crate::verdict::Env;

/// Connections that passed, keyed by the initiator's tuple and looked up in
/// both orientations. A plain hash map, preallocated, not an LRU one: an
/// LRU map evicts live entries long before it is full when CPUs contend,
/// which cut established connections. The agent sweeps idle entries; when
/// the map is full a new connection still gets its verdict, untracked, and
/// the failed insert is counted.
#[map]
static WL_CONNTRACK: HashMap<FlowKey, FlowState> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);
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

const TCP_FIN: u8 = 0x01;
const TCP_RST_FLAG: u8 = 0x04;
const EEXIST: i32 = 17;

/// The tracked connection `p` belongs to, in the orientations `which`
/// allows, and its verdict; 0 when it belongs to none (a new connection).
#[inline(never)]
pub fn tracked(env: &Env<'_>, p: &mut Packet, key: &FlowKey, which: u8) -> u8 {
    if which & AS_INITIATOR != 0
        && let Some(s) = belonging(env, p, key, false)
    {
        // SAFETY: a value pointer of `WL_CONNTRACK` for this program run
        // (see `established` on what is written through it).
        let s = unsafe { &mut *s };
        return match established(env, p, key, s, false) {
            REJUDGE => rejudge(env, p, key, s, false) as u8,
            r => r,
        };
    }
    if which & AS_REPLY != 0 {
        let initiator = key.reversed();
        if let Some(s) = belonging(env, p, &initiator, true) {
            // SAFETY: as above.
            let s = unsafe { &mut *s };
            return match established(env, p, &initiator, s, true) {
                REJUDGE => rejudge(env, p, &initiator, s, true) as u8,
                r => r,
            };
        }
    }
    0
}

/// What [`established`] returns when the connection must be judged again.
const REJUDGE: u8 = u8::MAX;

/// The live entry of `initiator` if `p` belongs to it where it arrives.
/// An expired entry is removed. Learning where the connection lives
/// replaces the entry, so its pointer is looked up again afterwards.
#[inline(never)]
fn belonging(
    env: &Env<'_>,
    p: &Packet,
    initiator: &FlowKey,
    reply: bool,
) -> Option<*mut FlowState> {
    let s = WL_CONNTRACK.get_ptr_mut(initiator)?;
    // SAFETY: a value pointer of `WL_CONNTRACK`, read for this program run.
    let st = unsafe { &*s };
    // Another CPU may have stamped the entry after this packet read the
    // clock: a stamp in the future is idle time zero, never a wrap-around.
    if env.now.saturating_sub(st.last_seen_ns) >= flow_timeout(initiator.proto, st.status, st.tcp) {
        let _ = WL_CONNTRACK.remove(initiator);
        return None;
    }
    let (reply_ifindex, binding) = (st.reply_ifindex, st.binding);
    if env.direction == DIR_EGRESS {
        // Where the initiator's packets leave is where replies come from.
        if reply || reply_ifindex != 0 {
            return Some(s);
        }
    } else if !reply {
        let here =
            binding & BOUND_ORIG != 0 && st.orig_ifindex == env.ifindex && st.orig_vlan == p.vlan;
        return if here { Some(s) } else { None };
    } else {
        if reply_ifindex == 0 || reply_ifindex != env.ifindex {
            return None;
        }
        if binding & BOUND_REPLY_VLAN != 0 {
            return if st.reply_vlan == p.vlan {
                Some(s)
            } else {
                None
            };
        }
    }
    // Learn: the interface replies come from (egress), or their VLAN (the
    // first reply). Written by replacing the entry, then looked up again.
    let learned = work()?;
    *learned = *st;
    if env.direction == DIR_EGRESS {
        learned.reply_ifindex = env.ifindex;
    } else {
        learned.reply_vlan = p.vlan;
        learned.binding = binding | BOUND_REPLY_VLAN;
    }
    let _ = WL_CONNTRACK.insert(initiator, learned, BPF_EXIST as u64);
    WL_CONNTRACK.get_ptr_mut(initiator)
}

/// A packet of a tracked connection: passes or drops by its stamp; returns
/// [`REJUDGE`] when the generation changed since.
///
/// Written through the pointer are only the packet and byte counts, the
/// last-seen time and the TCP bits: the element of a preallocated map can
/// be freed and reused for another connection while this program holds it
/// (the agent's sweep on another CPU), and those fields can at worst keep
/// that other connection alive longer. Everything that decides a verdict
/// is written by replacing the entry.
#[inline(never)]
fn established(
    env: &Env<'_>,
    p: &mut Packet,
    initiator: &FlowKey,
    s: &mut FlowState,
    reply: bool,
) -> u8 {
    let status = s.status;
    if status != FLOW_DENIED {
        s.last_seen_ns = env.now;
        s.packets += 1;
        s.bytes += env.ctx.len() as u64;
        if initiator.proto == PROTO_TCP {
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
        return REJUDGE;
    }
    if status == FLOW_DENIED {
        return Reason::DroppedFlow as u8;
    }
    let tcp = s.tcp;
    if initiator.proto == PROTO_TCP
        && tcp & TCP_CLOSE_REPORTED == 0
        && (tcp & TCP_RST != 0 || (tcp & TCP_FIN_ORIG != 0 && tcp & TCP_FIN_REPLY != 0))
    {
        s.tcp = tcp | TCP_CLOSE_REPORTED;
        close_event(env, p, s, reply);
    }
    passing_reason(status) as u8
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
    }
}

/// Zero trust over time: the connection is judged again as its initiator
/// opened it, with the live generation's tables, whichever direction this
/// packet goes; cut (and reported `revoked`) if no longer allowed.
#[inline(never)]
fn rejudge(
    env: &Env<'_>,
    p: &mut Packet,
    initiator: &FlowKey,
    s: &FlowState,
    reply: bool,
) -> Reason {
    let Some(st) = work() else {
        return Reason::Internal;
    };
    *st = *s;
    let slot = slot_of(env.generation);
    let family = p.family;
    let by_vlan = if st.binding & BOUND_ORIG != 0 && st.orig_vlan != 0 {
        vlan_segment(slot, st.orig_vlan)
    } else {
        None
    };
    let src = match by_vlan {
        Some(seg) => seg,
        None => segment_of(slot, family, &initiator.src),
    };
    let dst = segment_of(slot, family, &initiator.dst);
    let j = decide(
        env,
        src,
        dst,
        initiator.proto,
        policy_port(initiator.proto, initiator.dport),
    );
    let was_passing = st.status != FLOW_DENIED;
    st.generation = env.generation;
    st.policy = j.policy;
    st.src_segment = j.src_segment;
    st.dst_segment = j.dst_segment;
    st.reason = j.reason as u8;
    st.status = status_of(j.reason);
    // Passed as a reference to the per-CPU value: a copy would take 64
    // bytes of the stack.
    let value: &FlowState = st;
    let _ = WL_CONNTRACK.insert(initiator, value, BPF_EXIST as u64);
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
    flow_event(env, p, kind, reason, f);
    if reply {
        core::mem::swap(&mut p.src, &mut p.dst);
        core::mem::swap(&mut p.sport, &mut p.dport);
    }
}

/// Tracks a new connection that passed, bound to where its first packet
/// arrived (ingress) or left (egress).
#[inline(never)]
pub fn track(env: &Env<'_>, p: &Packet, key: &FlowKey, j: &Judged) {
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
        binding: if ingress { BOUND_ORIG } else { 0 },
    };
    let value: &FlowState = st;
    match WL_CONNTRACK.insert(key, value, BPF_NOEXIST as u64) {
        Ok(()) => {}
        // The tuple is tracked for a connection that lives elsewhere: this
        // packet got its own verdict; the other connection stays as it is.
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
    // SAFETY: values copied out at once.
    let (s, quoted_reply) = match unsafe { WL_CONNTRACK.get(p.inner) }.copied() {
        Some(s) => (s, false),
        // SAFETY: as above.
        None => match unsafe { WL_CONNTRACK.get(p.inner.reversed()) }.copied() {
            Some(s) => (s, true),
            None => return false,
        },
    };
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
