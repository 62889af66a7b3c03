//! The verdict of a new connection from the compiled rule table
//! (`docs/verdicts.md`, "The verdict of a new connection"): deny wins, then
//! allow, then monitor mode, then default deny; a quarantine is never part
//! of `any` and never audited.

use aya_ebpf::{bindings::BPF_F_NO_PREALLOC, macros::map, maps::HashMap};
use wardline_ebpf_abi::{
    MARK_MONITOR, MARK_QUARANTINE, MAX_RANGED_TRIPLES, MAX_RULE_ENTRIES, PROTO_ANY, PROTO_SCTP,
    PROTO_TCP, PROTO_UDP, Reason, RuleKey, RulePortsKey, RuleValue, SEGMENT_ANY, config_flags,
    mask_port, slot_of,
};

use crate::segments::marks;
use crate::verdict::Env;

/// `(slot, protocol, port prefix, source, destination)` to the lowest deny
/// and allow policy ids of that port interval. Allocated per entry.
#[map]
static WL_RULES: HashMap<RuleKey, RuleValue> =
    HashMap::with_max_entries(MAX_RULE_ENTRIES, BPF_F_NO_PREALLOC);
/// `(slot, protocol, source, destination)` to the port prefix lengths
/// below 16 its rule keys use (bit `b` for `b` bits), for triples that
/// have any.
#[map]
static WL_RULE_PORTS: HashMap<RulePortsKey, u32> =
    HashMap::with_max_entries(MAX_RANGED_TRIPLES, BPF_F_NO_PREALLOC);

/// A new connection's verdict and what decided it.
pub struct Judged {
    pub reason: Reason,
    pub policy: u32,
    pub src_segment: u32,
    pub dst_segment: u32,
}

/// The responder's port that policies speak of.
#[inline(always)]
pub fn policy_port(proto: u8, dport: u16) -> u16 {
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => dport,
        _ => 0,
    }
}

/// The verdict of a new connection from segment `src` to `dst`.
#[inline(always)]
pub fn decide(env: &Env<'_>, src: u32, dst: u32, proto: u8, port: u16) -> Judged {
    let packed = decide_packed(env, src, dst, proto, port);
    Judged {
        reason: match (packed >> 32) as u8 {
            1 => Reason::PolicyAllow,
            2 => Reason::PolicyDeny,
            4 => Reason::Monitor,
            _ => Reason::DefaultDeny,
        },
        policy: packed as u32,
        src_segment: src,
        dst_segment: dst,
    }
}

/// Looks up the rule of one (protocol, source, destination) for `port`
/// and folds its ids into `deny` / `allow`. The exact port is probed
/// first; on a miss, each shorter port prefix the triple uses. A triple's
/// prefixes are disjoint, so the first hit is the only one.
#[inline(never)]
fn fold(acc: &mut Ids, proto: u8, src: u32, dst: u32, port: u16) {
    let slot = acc.slot;
    let ported = matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP);
    let mut key = RuleKey {
        slot,
        proto,
        port_bits: if ported { 16 } else { 0 },
        _pad: 0,
        src,
        dst,
        port: if ported { port } else { 0 },
        _pad2: 0,
    };
    // SAFETY: lookups whose 8-byte values are copied out at once.
    let mut hit = unsafe { WL_RULES.get(key_ref(&key)) }.copied();
    if hit.is_none() && ported {
        let triple = RulePortsKey {
            slot,
            proto,
            _pad: [0; 2],
            src,
            dst,
        };
        let triple: &RulePortsKey = &triple;
        // SAFETY: as above.
        let lens = unsafe { WL_RULE_PORTS.get(triple) }.copied().unwrap_or(0);
        let mut bits = 16u8;
        while bits > 0 && hit.is_none() {
            bits -= 1;
            if lens & (1 << bits) != 0 {
                key.port_bits = bits;
                key.port = mask_port(port, bits);
                // SAFETY: as above.
                hit = unsafe { WL_RULES.get(key_ref(&key)) }.copied();
            }
        }
    }
    if let Some(v) = hit {
        if v.deny != 0 && (acc.deny == 0 || v.deny < acc.deny) {
            acc.deny = v.deny;
        }
        if v.allow != 0 && (acc.allow == 0 || v.allow < acc.allow) {
            acc.allow = v.allow;
        }
    }
}

/// A key by reference: map calls take one, and a copy would weigh on the
/// stack.
#[inline(always)]
fn key_ref(key: &RuleKey) -> &RuleKey {
    key
}

/// The lowest deny and allow ids found so far in a slot's rules.
struct Ids {
    slot: u8,
    deny: u32,
    allow: u32,
}

/// The lookups, in a function of their own so that their keys do not weigh
/// on every caller's stack. Returns `reason << 32 | policy`.
#[inline(never)]
fn decide_packed(env: &Env<'_>, src: u32, dst: u32, proto: u8, port: u16) -> u64 {
    let flags = env.flags;
    let slot = slot_of(env.generation);
    let mut ids = Ids {
        slot,
        deny: 0,
        allow: 0,
    };
    let any_proto = flags & config_flags::HAS_PROTO_ANY != 0;
    // A quarantine is never part of `any`, and monitor mode at either end
    // never lets its connections through.
    let (src_marks, dst_marks) =
        if flags & (config_flags::HAS_MONITOR | config_flags::HAS_QUARANTINE) != 0 {
            (marks(slot, src).flags, marks(slot, dst).flags)
        } else {
            (0, 0)
        };
    let srcs = [src, SEGMENT_ANY];
    let dsts = [dst, SEGMENT_ANY];
    let nsrc = if flags & config_flags::HAS_SRC_ANY != 0 && src_marks & MARK_QUARANTINE == 0 {
        2
    } else {
        1
    };
    let ndst = if flags & config_flags::HAS_DST_ANY != 0 && dst_marks & MARK_QUARANTINE == 0 {
        2
    } else {
        1
    };
    for s in srcs.iter().take(nsrc) {
        for d in dsts.iter().take(ndst) {
            fold(&mut ids, proto, *s, *d, port);
            if any_proto {
                fold(&mut ids, PROTO_ANY, *s, *d, 0);
            }
        }
    }
    let (reason, policy) = if ids.deny != 0 {
        (Reason::PolicyDeny, ids.deny)
    } else if ids.allow != 0 {
        (Reason::PolicyAllow, ids.allow)
    } else if (src_marks | dst_marks) & MARK_MONITOR != 0
        && (src_marks | dst_marks) & MARK_QUARANTINE == 0
    {
        (Reason::Monitor, 0)
    } else {
        (Reason::DefaultDeny, 0)
    };
    ((reason as u64) << 32) | policy as u64
}
