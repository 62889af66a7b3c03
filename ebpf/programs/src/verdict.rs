//! The verdict of every packet (`docs/verdicts.md`): parse it, pass what is
//! always passed, check the source a VLAN tag names, then either a tracked
//! connection's packet, an ICMP error about one, or a new connection judged
//! by failsafe flows and policy. Each concern lives in its own module, with
//! its maps beside it.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_boot_ns},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};
use wardline_ebpf_abi::{
    DIR_INGRESS, EVENT_DROP, EVENT_NEW, FLOW_DENIED, FlowKey, MARK_QUARANTINE, Reason,
    SEGMENT_WORLD, SegmentMarks, Verdict, config_flags, slot_of,
};

use crate::conntrack::{
    AS_INITIATOR, AS_REPLY, is_denied, related, remember_denied, status_of, track, tracked,
};
use crate::events::{EventFlow, count, drop_event, drop_event_segments, flow_event};
use crate::failsafe::is_failsafe;
use crate::fragments;
use crate::generation::in_force;
use crate::l2::ethertype_listed;
use crate::parse::{
    FRAG_FIRST, FRAG_LATER, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP_ERROR, ICMP_OTHER, Packet,
    Parsed, parse,
};
use crate::policy::{Judged, decide, policy_port};
use crate::segments::{marks, segment_of, vlan_segment};

/// Per-CPU scratch for the packet being judged: the BPF stack is 512 bytes
/// for the whole call chain. Not pinned: it holds nothing between packets.
#[map]
static WL_SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// What every step needs besides the packet: passed by reference because a
/// BPF function takes at most five arguments.
pub struct Env<'a> {
    pub ctx: &'a TcContext,
    /// `CLOCK_BOOTTIME` ns, coarse ([`coarse_ns`]), read once the packet
    /// is known to be IP.
    pub now: u64,
    /// The generation that judges this packet.
    pub generation: u32,
    pub flags: u32,
    /// At ingress, the source segment a claimed VLAN tag gives, else `world`.
    pub vlan_segment: u32,
    pub ifindex: u32,
    pub direction: u8,
}

/// Per-CPU coarse clock: the jiffy it was read in and the
/// `CLOCK_BOOTTIME` ns read then. Not pinned: a fresh program reads the
/// clock again.
#[map]
static WL_CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// `CLOCK_BOOTTIME` ns, exact: what events are stamped with.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// `CLOCK_BOOTTIME` ns as of the first packet of the current jiffy on this
/// CPU (at most one tick, 4 ms at 250 Hz, behind): what tracking's
/// idle times and timeouts, which count in seconds, are kept in. The
/// jiffies counter is one load (the verifier inlines the helper); the
/// clock itself is read only when the jiffy moves.
#[inline(always)]
fn coarse_ns() -> u64 {
    // SAFETY: a helper without arguments.
    let jiffy = unsafe { bpf_jiffies64() };
    let Some(c) = WL_CLOCK.get_ptr_mut(0) else {
        return now_ns();
    };
    // SAFETY: this CPU's slot of a per-CPU array; a program run is not
    // interrupted by another on this CPU.
    let c = unsafe { &mut *c };
    if c[0] != jiffy || c[1] == 0 {
        *c = [jiffy, now_ns()];
    }
    c[1]
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel handed to the program.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Returns whether the packet passes.
#[inline(never)]
pub fn try_judge(ctx: &TcContext, direction: u8) -> bool {
    let config = in_force();
    let Some(p) = WL_SCRATCH.get_ptr_mut(0) else {
        count(direction, Reason::Internal);
        return false;
    };
    // SAFETY: this CPU's scratch slot, used by this program run only.
    let p = unsafe { &mut *p };
    p.reset();
    let mut env = Env {
        ctx,
        now: 0,
        generation: config.generation,
        flags: config.flags,
        vlan_segment: SEGMENT_WORLD,
        ifindex: ifindex(ctx),
        direction,
    };
    let reason = match parse(ctx, p) {
        Err(reason) => {
            drop_event(&env, p, reason);
            reason
        }
        Ok(Parsed::L2Pass) => Reason::L2Pass,
        Ok(Parsed::Ethertype(t)) => {
            if ethertype_listed(t) {
                Reason::L2Pass
            } else {
                drop_event(&env, p, Reason::Ethertype);
                Reason::Ethertype
            }
        }
        Ok(Parsed::Ip) => judge_ip(&mut env, p),
    };
    count(direction, reason);
    reason.verdict() != Verdict::Dropped
}

#[inline(never)]
fn judge_ip(env: &mut Env<'_>, p: &mut Packet) -> Reason {
    env.now = coarse_ns();
    let slot = slot_of(env.generation);

    // VLAN identity, at ingress: the tag names the source segment, and an
    // address of another segment on that VLAN is spoofed. At egress a tag
    // says where a frame goes, not where it came from.
    if env.direction == DIR_INGRESS
        && p.vlan != 0
        && let Some(seg) = vlan_segment(slot, p.vlan)
    {
        let by_address = segment_of(slot, p.family, &p.src);
        if by_address != SEGMENT_WORLD && by_address != seg {
            // A quarantined device keeps its VLAN: its frames are its
            // quarantine's when the VLAN is the one its address belongs
            // to without the quarantine; from any other VLAN, spoofed.
            let quarantine = if env.flags & config_flags::HAS_QUARANTINE != 0 {
                marks(slot, by_address)
            } else {
                SegmentMarks::default()
            };
            if quarantine.flags & MARK_QUARANTINE == 0 || quarantine.origin != seg {
                let dst = segment_of(slot, p.family, &p.dst);
                drop_event_segments(env, p, Reason::SpoofedSource, seg, dst);
                return Reason::SpoofedSource;
            }
            env.vlan_segment = by_address;
        } else {
            env.vlan_segment = seg;
        }
    }

    if p.fragment == FRAG_LATER {
        return fragments::later(env, p);
    }

    let key = FlowKey {
        src: p.src,
        dst: p.dst,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        _pad: [0; 3],
    };
    // Echo requests are only ever initiators, echo replies only replies;
    // ICMP errors and other ICMP messages are never tracked themselves.
    // `which`: the orientations a packet may belong to a connection in;
    // `creates`: those a new connection of it is tracked in (none: never).
    // What is sent to a group (multicast, broadcast) is tracked in its
    // initiator's orientation only: nothing answers a group as a reply.
    let (which, creates) = match p.icmp {
        ICMP_ERROR | ICMP_OTHER => (0, 0),
        _ if p.to_group() => (AS_INITIATOR, AS_INITIATOR),
        ICMP_ECHO_REQUEST => (AS_INITIATOR, AS_INITIATOR),
        ICMP_ECHO_REPLY => (AS_REPLY, 0),
        _ => (AS_INITIATOR | AS_REPLY, AS_INITIATOR | AS_REPLY),
    };
    let mut reason = Reason::from_u8(if which != 0 {
        tracked(env, p, &key, which)
    } else {
        0
    });
    if reason.is_none() && p.icmp == ICMP_ERROR && related(env, p) {
        reason = Some(Reason::Related);
    }
    let reason = match reason {
        Some(r) => r,
        None => new_connection(env, p, &key, creates),
    };
    if p.fragment == FRAG_FIRST && reason.verdict() != Verdict::Dropped {
        fragments::first_passed(env, p);
    }
    reason
}

/// The first packet of a connection (or an untracked ICMP message): a
/// retry of a remembered drop, a failsafe flow, or policy's verdict.
#[inline(never)]
fn new_connection(env: &Env<'_>, p: &Packet, key: &FlowKey, which: u8) -> Reason {
    let trackable = which != 0;
    if trackable {
        if env.flags & config_flags::HAS_FAILSAFE != 0 && is_failsafe(p) {
            let j = Judged {
                reason: Reason::Failsafe,
                policy: 0,
                src_segment: SEGMENT_WORLD,
                dst_segment: SEGMENT_WORLD,
            };
            track(env, p, key, AS_INITIATOR | AS_REPLY, &j);
            return Reason::Failsafe;
        }
        if is_denied(env, p, key) {
            return Reason::DroppedFlow;
        }
    }
    let slot = slot_of(env.generation);
    let src = if env.vlan_segment != SEGMENT_WORLD {
        env.vlan_segment
    } else {
        segment_of(slot, p.family, &p.src)
    };
    let dst = segment_of(slot, p.family, &p.dst);
    let j = decide(env, src, dst, p.proto, policy_port(p.proto, p.dport));
    let denied = status_of(j.reason) == FLOW_DENIED;
    if trackable {
        if denied {
            remember_denied(env, p, key, &j);
        } else {
            track(env, p, key, which, &j);
        }
    }
    let f = EventFlow {
        packets: 1,
        bytes: env.ctx.len() as u64,
        policy: j.policy,
        src_segment: j.src_segment,
        dst_segment: j.dst_segment,
        reply: false,
    };
    flow_event(
        env,
        p,
        if denied { EVENT_DROP } else { EVENT_NEW },
        j.reason,
        &f,
    );
    j.reason
}
