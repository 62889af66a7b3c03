//! Counters and flow events: every packet is counted by direction and
//! reason; a connection's verdict, a drop that is no connection's, a close
//! and a revocation each put one record on the ring buffer.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use wardline_ebpf_abi::{
    COUNTER_LOST_EVENTS, COUNTER_SLOTS, EVENT_DROP, EVENT_ETH_REPLY, EVENTS_BYTES, FlowEvent,
    Reason, config_flags, counter_index,
};

use crate::parse::{Packet, ethernet_addresses};
use crate::verdict::{Env, now_ns};

/// Per-CPU packet counters, indexed by [`counter_index`], then the counts
/// of lost events and failed inserts (`COUNTER_*`).
#[map]
static WL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
/// Flow events for the agent; a full ring is counted, never waited for.
#[map]
static WL_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Adds one to counter slot `index`.
#[inline(always)]
pub fn count_slot(index: u32) {
    if let Some(c) = WL_COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array; only this CPU writes
        // it, and a program run is not interrupted by another on this CPU.
        unsafe { *c += 1 };
    }
}

/// Counts one packet with its direction and reason.
#[inline(always)]
pub fn count(direction: u8, reason: Reason) {
    count_slot(counter_index(direction, reason as u8));
}

/// What an event says about the connection besides the packet.
#[derive(Clone, Copy)]
pub struct EventFlow {
    pub packets: u64,
    pub bytes: u64,
    pub policy: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
    /// `p` is named as its initiator sent it, but the frame is a reply.
    pub reply: bool,
}

/// Puts one record on the ring buffer (unless events are off).
#[inline(never)]
pub fn flow_event(env: &Env<'_>, p: &Packet, kind: u8, reason: Reason, f: &EventFlow) {
    if env.flags & config_flags::NO_EVENTS != 0 {
        return;
    }
    let Some(mut entry) = WL_EVENTS.reserve::<FlowEvent>(0) else {
        count_slot(COUNTER_LOST_EVENTS);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at the reserved record, ours alone until submit;
    // every field is plain data, so field-wise writes initialise it fully.
    unsafe {
        (*e).time_ns = now_ns();
        (*e).packets = f.packets;
        (*e).bytes = f.bytes;
        (*e).src = p.src;
        (*e).dst = p.dst;
        (*e).ifindex = env.ifindex;
        (*e).generation = env.generation;
        (*e).policy = f.policy;
        (*e).src_segment = f.src_segment;
        (*e).dst_segment = f.dst_segment;
        (*e).sport = p.sport;
        (*e).dport = p.dport;
        (*e).vlan = p.vlan;
        (*e).kind = kind;
        (*e).verdict = reason.verdict() as u8;
        (*e).reason = reason as u8;
        (*e).direction = env.direction;
        (*e).proto = p.proto;
        (*e).family = p.family;
        (*e).eth = ethernet_addresses(env.ctx);
        (*e).flags = if f.reply { EVENT_ETH_REPLY } else { 0 };
        (*e)._pad = [0; 3];
    }
    entry.submit(0);
}

/// A drop that is no connection's verdict (unparseable, orphan, ...).
#[inline(always)]
pub fn drop_event(env: &Env<'_>, p: &Packet, reason: Reason) {
    drop_event_segments(env, p, reason, 0, 0);
}

/// A drop that names segments (a spoofed source: the VLAN's segment).
#[inline(never)]
pub fn drop_event_segments(env: &Env<'_>, p: &Packet, reason: Reason, src: u32, dst: u32) {
    let f = EventFlow {
        packets: 1,
        bytes: env.ctx.len() as u64,
        policy: 0,
        src_segment: src,
        dst_segment: dst,
        reply: false,
    };
    flow_event(env, p, EVENT_DROP, reason, &f);
}
