//! The verdict of every packet: policy.md's four steps, connection tracking
//! stamped with the policy generation, failsafe flows, counters and events.

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use wardline_ebpf_abi::{
    COUNTER_LOST_EVENTS, COUNTER_SLOTS, Config, EVENT_CLOSE, EVENT_DROP, EVENT_NEW, EVENT_REVOKED,
    EVENTS_BYTES, FAILSAFE_KEY_FIXED_BITS, FAILSAFE_LOCAL_INITIATES, FAILSAFE_REMOTE_INITIATES,
    FLOW_ALLOWED, FLOW_AUDITED, FLOW_DENIED, FLOW_FAILSAFE, FailsafeData, FlowEvent, FlowKey,
    FlowState, FragmentKey, FragmentState, MAX_CONNECTIONS, MAX_ETHERTYPES, MAX_FAILSAFE,
    MAX_FRAGMENTS, MAX_MONITOR_ENTRIES, MAX_PREFIXES, MAX_RULE_ENTRIES, MAX_VLAN_ENTRIES,
    MonitorKey, PREFIX_KEY_FIXED_BITS, PROTO_ANY, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PrefixData,
    RULE_KEY_FIXED_BITS, Reason, RuleData, RuleValue, SEGMENT_ANY, SEGMENT_WORLD,
    TCP_CLOSE_REPORTED, TCP_FIN_ORIG, TCP_FIN_REPLY, TCP_RST, TCP_SEEN_REPLY, TIMEOUT_FRAGMENT,
    Verdict, config_flags, counter_index, flow_timeout, vlan_key,
};

use crate::parse::{FRAG_FIRST, FRAG_LATER, ICMP_ERROR, Packet, Parsed, parse};

#[map]
static WL_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
#[map]
static WL_PREFIXES: LpmTrie<PrefixData, u32> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
#[map]
static WL_VLANS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VLAN_ENTRIES, 0);
#[map]
static WL_MONITOR: HashMap<MonitorKey, u32> = HashMap::with_max_entries(MAX_MONITOR_ENTRIES, 0);
#[map]
static WL_RULES: LpmTrie<RuleData, RuleValue> = LpmTrie::with_max_entries(MAX_RULE_ENTRIES, 0);
#[map]
static WL_FAILSAFE: LpmTrie<FailsafeData, u32> = LpmTrie::with_max_entries(MAX_FAILSAFE, 0);
#[map]
static WL_ETHERTYPES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ETHERTYPES, 0);
/// A plain hash map, not an LRU one: an LRU map evicts live entries long
/// before it is full when CPUs contend, which cut established connections.
/// The agent sweeps idle entries; when the map is full, a new connection
/// still gets its verdict but is not tracked.
#[map]
static WL_CONNTRACK: HashMap<FlowKey, FlowState> = HashMap::with_max_entries(MAX_CONNECTIONS, 0);
#[map]
static WL_FRAGMENTS: HashMap<FragmentKey, FragmentState> =
    HashMap::with_max_entries(MAX_FRAGMENTS, 0);
#[map]
static WL_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);
#[map]
static WL_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
/// Per-CPU scratch for the packet being judged: the BPF stack is 512 bytes
/// for the whole call chain. Not pinned: it holds nothing between packets.
#[map]
static WL_SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

const TCP_FIN: u8 = 0x01;
const TCP_RST_FLAG: u8 = 0x04;

/// What every step needs besides the packet: passed by reference because a
/// BPF function takes at most five arguments.
struct Env<'a> {
    ctx: &'a TcContext,
    now: u64,
    generation: u32,
    flags: u32,
    /// The source segment a claimed VLAN tag gives, else `world`.
    vlan_segment: u32,
    direction: u8,
}

/// A new connection's verdict and what decided it.
struct Judged {
    reason: Reason,
    policy: u32,
    src_segment: u32,
    dst_segment: u32,
}

#[inline(always)]
fn count(direction: u8, reason: Reason) {
    if let Some(c) = WL_COUNTERS.get_ptr_mut(counter_index(direction, reason as u8)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// Returns whether the packet passes.
#[inline(never)]
pub fn try_judge(ctx: &TcContext, direction: u8) -> bool {
    let (generation, flags) = match WL_CONFIG.get(0) {
        Some(c) => (c.generation, c.flags),
        None => (0, 0),
    };
    let Some(p) = WL_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's scratch slot, used by this program run only.
    let p = unsafe { &mut *p };
    p.src = [0; 16];
    p.dst = [0; 16];
    p.inner = FlowKey::default();
    p.frag_id = 0;
    p.sport = 0;
    p.dport = 0;
    p.vlan = 0;
    p.family = 0;
    p.proto = 0;
    p.tcp_flags = 0;
    p.icmp = 0;
    p.fragment = 0;
    p.has_inner = false;
    let mut env = Env {
        ctx,
        now: 0,
        generation,
        flags,
        vlan_segment: SEGMENT_WORLD,
        direction,
    };
    let reason = match parse(ctx, p) {
        Err(reason) => {
            drop_event(&env, p, reason);
            reason
        }
        Ok(Parsed::L2Pass) => Reason::L2Pass,
        Ok(Parsed::Ethertype(t)) => {
            // SAFETY: a hash-map lookup; the value is not used.
            if unsafe { WL_ETHERTYPES.get(t as u32) }.is_some() {
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

#[inline(always)]
fn slot_of(generation: u32) -> u8 {
    (generation & 1) as u8
}

#[inline(always)]
fn segment_of(slot: u8, addr: &[u8; 16]) -> u32 {
    let key = Key::new(
        PREFIX_KEY_FIXED_BITS + 128,
        PrefixData {
            slot,
            _pad: [0; 3],
            addr: *addr,
        },
    );
    WL_PREFIXES.get(&key).copied().unwrap_or(SEGMENT_WORLD)
}

#[inline(never)]
fn judge_ip(env: &mut Env<'_>, p: &mut Packet) -> Reason {
    let slot = slot_of(env.generation);
    env.now = now_ns();

    // VLAN identity: the tag names the source segment; an address of
    // another segment on that VLAN is spoofed.
    if p.vlan != 0 {
        // SAFETY: a hash-map lookup of a u32 value, copied out.
        if let Some(seg) = unsafe { WL_VLANS.get(vlan_key(slot, p.vlan)) }.copied() {
            let by_address = segment_of(slot, &p.src);
            if by_address != SEGMENT_WORLD && by_address != seg {
                drop_event(env, p, Reason::SpoofedSource);
                return Reason::SpoofedSource;
            }
            env.vlan_segment = seg;
        }
    }

    if p.fragment == FRAG_LATER {
        return later_fragment(env, p);
    }

    let key = FlowKey {
        src: p.src,
        dst: p.dst,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
        _pad: [0; 3],
    };
    let mut reply = false;
    let reason = match lookup_flow(&key, env.now, &mut reply) {
        // SAFETY: a pointer into an LRU hash value, valid for this program run.
        Some(s) => established(env, p, &key, unsafe { &mut *s }, reply),
        None if related(env, p) => Reason::Related,
        None => new_connection(env, p, &key),
    };
    if p.fragment == FRAG_FIRST {
        let fkey = FragmentKey {
            src: p.src,
            dst: p.dst,
            id: p.frag_id,
            proto: p.proto,
            _pad: [0; 3],
        };
        let state = FragmentState {
            seen_ns: env.now,
            passed: (reason.verdict() != Verdict::Dropped) as u32,
            _pad: 0,
        };
        let _ = WL_FRAGMENTS.insert(fkey, state, 0);
    }
    reason
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

#[inline(never)]
fn later_fragment(env: &Env<'_>, p: &Packet) -> Reason {
    let fkey = FragmentKey {
        src: p.src,
        dst: p.dst,
        id: p.frag_id,
        proto: p.proto,
        _pad: [0; 3],
    };
    // SAFETY: the value is copied out before any other map call.
    match unsafe { WL_FRAGMENTS.get(fkey) }.copied() {
        Some(s) if env.now.saturating_sub(s.seen_ns) < TIMEOUT_FRAGMENT => {
            if s.passed != 0 {
                Reason::Fragment
            } else {
                Reason::DroppedFlow
            }
        }
        _ => {
            drop_event(env, p, Reason::OrphanFragment);
            Reason::OrphanFragment
        }
    }
}

/// The tracked connection of `key` in either orientation; `reply` says
/// whether the packet goes responder to initiator. An expired entry is
/// removed and not returned.
#[inline(never)]
fn lookup_flow(key: &FlowKey, now: u64, reply: &mut bool) -> Option<*mut FlowState> {
    let reversed = key.reversed();
    let mut found = WL_CONNTRACK.get_ptr_mut(key);
    *reply = false;
    if found.is_none() {
        found = WL_CONNTRACK.get_ptr_mut(reversed);
        *reply = true;
    }
    let s = found?;
    // SAFETY: a pointer into an LRU hash value, valid for this program run.
    let (last, status, tcp) = unsafe { ((*s).last_seen_ns, (*s).status, (*s).tcp) };
    // Another CPU may have stamped the entry after this packet read the
    // clock: a stamp in the future is idle time zero, never a wrap-around.
    if now.saturating_sub(last) >= flow_timeout(key.proto, status, tcp) {
        let _ = WL_CONNTRACK.remove(if *reply { &reversed } else { key });
        return None;
    }
    Some(s)
}

/// Whether an ICMP error quotes a connection tracked and still allowed.
#[inline(never)]
fn related(env: &Env<'_>, p: &Packet) -> bool {
    if p.icmp != ICMP_ERROR || !p.has_inner {
        return false;
    }
    let inner_rev = p.inner.reversed();
    // SAFETY: values copied out immediately.
    let s = unsafe { WL_CONNTRACK.get(p.inner) }
        .copied()
        .or_else(|| unsafe { WL_CONNTRACK.get(inner_rev) }.copied());
    matches!(s, Some(s)
        if (s.status == FLOW_ALLOWED || s.status == FLOW_AUDITED || s.status == FLOW_FAILSAFE)
            && (s.generation == env.generation || s.status == FLOW_FAILSAFE))
}

/// A packet of a tracked connection: pass or drop by its stamp, re-judge it
/// when the policy generation changed since.
#[inline(never)]
fn established(
    env: &Env<'_>,
    p: &mut Packet,
    key: &FlowKey,
    s: &mut FlowState,
    reply: bool,
) -> Reason {
    let generation = env.generation;
    s.last_seen_ns = env.now;
    s.packets += 1;
    s.bytes += env.ctx.len() as u64;
    if key.proto == PROTO_TCP {
        if reply {
            s.tcp |= TCP_SEEN_REPLY;
        }
        if p.tcp_flags & TCP_RST_FLAG != 0 {
            s.tcp |= TCP_RST;
        }
        if p.tcp_flags & TCP_FIN != 0 {
            s.tcp |= if reply { TCP_FIN_REPLY } else { TCP_FIN_ORIG };
        }
    }
    if s.status == FLOW_FAILSAFE {
        return Reason::Failsafe;
    }
    if s.generation != generation {
        // Zero trust over time: judge the connection again as its initiator
        // opened it, whichever direction this packet goes.
        let orig = if reply { key.reversed() } else { *key };
        let src_segment = if !reply && env.vlan_segment != SEGMENT_WORLD {
            env.vlan_segment
        } else {
            let seg = segment_of(slot_of(generation), &orig.src);
            if reply && s.src_segment != SEGMENT_WORLD && seg == SEGMENT_WORLD {
                // The initiator was known by its VLAN: keep that identity.
                s.src_segment
            } else {
                seg
            }
        };
        let dst_segment = segment_of(slot_of(generation), &orig.dst);
        let port = policy_port(orig.proto, orig.dport);
        let j = decide(env, src_segment, dst_segment, orig.proto, port);
        let was_passing = s.status != FLOW_DENIED;
        s.generation = generation;
        s.policy = j.policy;
        s.src_segment = j.src_segment;
        s.dst_segment = j.dst_segment;
        s.reason = j.reason as u8;
        s.status = status_of(j.reason);
        if s.status == FLOW_DENIED {
            if was_passing {
                as_initiator(p, reply);
                flow_event(env, p, EVENT_REVOKED, j.reason, s);
            }
            return Reason::DroppedFlow;
        }
        return Reason::Established;
    }
    if s.status == FLOW_DENIED {
        return Reason::DroppedFlow;
    }
    if key.proto == PROTO_TCP
        && s.tcp & TCP_CLOSE_REPORTED == 0
        && (s.tcp & TCP_RST != 0 || (s.tcp & TCP_FIN_ORIG != 0 && s.tcp & TCP_FIN_REPLY != 0))
    {
        s.tcp |= TCP_CLOSE_REPORTED;
        as_initiator(p, reply);
        flow_event(env, p, EVENT_CLOSE, Reason::Established, s);
    }
    Reason::Established
}

/// Turns a reply's addresses and ports around, so that a connection's
/// events always name it as its initiator opened it. The packet is not
/// looked at again afterwards.
#[inline(always)]
fn as_initiator(p: &mut Packet, reply: bool) {
    if reply {
        core::mem::swap(&mut p.src, &mut p.dst);
        core::mem::swap(&mut p.sport, &mut p.dport);
    }
}

#[inline(always)]
fn policy_port(proto: u8, dport: u16) -> u16 {
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => dport,
        _ => 0,
    }
}

#[inline(always)]
fn status_of(reason: Reason) -> u8 {
    match reason {
        Reason::PolicyAllow => FLOW_ALLOWED,
        Reason::Monitor => FLOW_AUDITED,
        _ => FLOW_DENIED,
    }
}

/// Looks up one rule key and folds its ids into `deny` / `allow`.
#[inline(always)]
fn fold(slot: u8, proto: u8, src: u32, dst: u32, port: u16, deny: &mut u32, allow: &mut u32) {
    let key = Key::new(
        RULE_KEY_FIXED_BITS + 16,
        RuleData {
            slot,
            proto,
            src: src.to_be_bytes(),
            dst: dst.to_be_bytes(),
            port: port.to_be_bytes(),
        },
    );
    if let Some(v) = WL_RULES.get(&key) {
        if v.deny != 0 && (*deny == 0 || v.deny < *deny) {
            *deny = v.deny;
        }
        if v.allow != 0 && (*allow == 0 || v.allow < *allow) {
            *allow = v.allow;
        }
    }
}

/// policy.md's four steps for a new connection.
#[inline(always)]
fn decide(env: &Env<'_>, src: u32, dst: u32, proto: u8, port: u16) -> Judged {
    let packed = decide_packed(env, src, dst, proto, port);
    Judged {
        reason: reason_from(packed >> 32),
        policy: packed as u32,
        src_segment: src,
        dst_segment: dst,
    }
}

#[inline(always)]
fn reason_from(v: u64) -> Reason {
    match v as u8 {
        1 => Reason::PolicyAllow,
        2 => Reason::PolicyDeny,
        4 => Reason::Monitor,
        _ => Reason::DefaultDeny,
    }
}

/// The lookups, in a subprogram of their own so that their keys do not
/// weigh on the stack of every caller. Returns `reason << 32 | policy`.
#[inline(never)]
fn decide_packed(env: &Env<'_>, src: u32, dst: u32, proto: u8, port: u16) -> u64 {
    let flags = env.flags;
    let slot = slot_of(env.generation);
    let mut deny = 0u32;
    let mut allow = 0u32;
    let any_proto = flags & config_flags::HAS_PROTO_ANY != 0;
    let srcs = [src, SEGMENT_ANY];
    let dsts = [dst, SEGMENT_ANY];
    let nsrc = if flags & config_flags::HAS_SRC_ANY != 0 {
        2
    } else {
        1
    };
    let ndst = if flags & config_flags::HAS_DST_ANY != 0 {
        2
    } else {
        1
    };
    for s in srcs.iter().take(nsrc) {
        for d in dsts.iter().take(ndst) {
            fold(slot, proto, *s, *d, port, &mut deny, &mut allow);
            if any_proto {
                fold(slot, PROTO_ANY, *s, *d, 0, &mut deny, &mut allow);
            }
        }
    }
    let (reason, policy) = if deny != 0 {
        (Reason::PolicyDeny, deny)
    } else if allow != 0 {
        (Reason::PolicyAllow, allow)
    } else if monitored(slot, src) || monitored(slot, dst) {
        (Reason::Monitor, 0)
    } else {
        (Reason::DefaultDeny, 0)
    };
    ((reason as u64) << 32) | policy as u64
}

#[inline(always)]
fn monitored(slot: u8, segment: u32) -> bool {
    let key = MonitorKey {
        slot: slot as u32,
        segment,
    };
    // SAFETY: a hash-map lookup; the value is not used.
    unsafe { WL_MONITOR.get(key) }.is_some()
}

#[inline(always)]
fn failsafe_hit(kind: u8, proto: u8, port: u16, addr: &[u8; 16]) -> bool {
    let key = Key::new(
        FAILSAFE_KEY_FIXED_BITS + 128,
        FailsafeData {
            kind,
            proto,
            port: port.to_be_bytes(),
            addr: *addr,
        },
    );
    WL_FAILSAFE.get(&key).is_some()
}

#[inline(never)]
fn is_failsafe(p: &Packet) -> bool {
    failsafe_hit(FAILSAFE_REMOTE_INITIATES, p.proto, p.dport, &p.src)
        || failsafe_hit(FAILSAFE_REMOTE_INITIATES, p.proto, p.sport, &p.dst)
        || failsafe_hit(FAILSAFE_LOCAL_INITIATES, p.proto, p.dport, &p.dst)
        || failsafe_hit(FAILSAFE_LOCAL_INITIATES, p.proto, p.sport, &p.src)
}

#[inline(never)]
fn new_connection(env: &Env<'_>, p: &Packet, key: &FlowKey) -> Reason {
    let (ctx, now, generation) = (env.ctx, env.now, env.generation);
    let slot = slot_of(generation);
    let mut state = FlowState {
        created_ns: now,
        last_seen_ns: now,
        packets: 1,
        bytes: ctx.len() as u64,
        generation,
        policy: 0,
        src_segment: SEGMENT_WORLD,
        dst_segment: SEGMENT_WORLD,
        ifindex: ifindex(ctx),
        vlan: p.vlan,
        status: FLOW_FAILSAFE,
        reason: Reason::Failsafe as u8,
        tcp: 0,
        _pad: [0; 7],
    };
    if env.flags & config_flags::HAS_FAILSAFE != 0 && is_failsafe(p) {
        let _ = WL_CONNTRACK.insert(key, state, 0);
        return Reason::Failsafe;
    }
    let src = if env.vlan_segment != SEGMENT_WORLD {
        env.vlan_segment
    } else {
        segment_of(slot, &p.src)
    };
    let dst = segment_of(slot, &p.dst);
    let j = decide(env, src, dst, p.proto, policy_port(p.proto, p.dport));
    state.policy = j.policy;
    state.src_segment = j.src_segment;
    state.dst_segment = j.dst_segment;
    state.status = status_of(j.reason);
    state.reason = j.reason as u8;
    if key.proto == PROTO_TCP && p.tcp_flags & TCP_RST_FLAG != 0 {
        state.tcp |= TCP_RST;
    }
    let _ = WL_CONNTRACK.insert(key, state, 0);
    let kind = if state.status == FLOW_DENIED {
        EVENT_DROP
    } else {
        EVENT_NEW
    };
    flow_event(env, p, kind, j.reason, &state);
    j.reason
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel handed to the program.
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(never)]
fn flow_event(env: &Env<'_>, p: &Packet, kind: u8, reason: Reason, s: &FlowState) {
    if env.flags & config_flags::NO_EVENTS != 0 {
        return;
    }
    let Some(mut entry) = WL_EVENTS.reserve::<FlowEvent>(0) else {
        count_lost();
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at the reserved, exclusively owned record; every
    // field is plain data, so field-wise writes initialise it fully.
    unsafe {
        (*e).time_ns = now_ns();
        (*e).packets = s.packets;
        (*e).bytes = s.bytes;
        (*e).src = p.src;
        (*e).dst = p.dst;
        (*e).ifindex = ifindex(env.ctx);
        (*e).generation = env.generation;
        (*e).policy = s.policy;
        (*e).src_segment = s.src_segment;
        (*e).dst_segment = s.dst_segment;
        (*e).sport = p.sport;
        (*e).dport = p.dport;
        (*e).vlan = p.vlan;
        (*e).kind = kind;
        (*e).verdict = reason.verdict() as u8;
        (*e).reason = reason as u8;
        (*e).direction = env.direction;
        (*e).proto = p.proto;
        (*e).family = p.family;
    }
    entry.submit(0);
}

#[inline(always)]
fn count_lost() {
    if let Some(c) = WL_COUNTERS.get_ptr_mut(COUNTER_LOST_EVENTS) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// A drop that is not a connection's verdict (unparseable, spoofed, orphan).
#[inline(never)]
fn drop_event(env: &Env<'_>, p: &Packet, reason: Reason) {
    let s = FlowState {
        packets: 1,
        bytes: env.ctx.len() as u64,
        ..FlowState::default()
    };
    flow_event(env, p, EVENT_DROP, reason, &s);
}
