//! The verdict of a new connection from the compiled rule table
//! (`docs/verdicts.md`, "The verdict of a new connection"): deny wins, then
//! allow, then monitor mode, then default deny.

use aya_ebpf::{
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use wardline_ebpf_abi::{
    MAX_RULE_ENTRIES, PROTO_ANY, PROTO_SCTP, PROTO_TCP, PROTO_UDP, RULE_KEY_FIXED_BITS, Reason,
    RuleData, RuleValue, SEGMENT_ANY, config_flags, slot_of,
};

use crate::segments::monitored;
use crate::verdict::Env;

/// `(slot, protocol, source, destination, port prefix)` to the lowest deny
/// and allow policy ids of that port interval.
#[map]
static WL_RULES: LpmTrie<RuleData, RuleValue> = LpmTrie::with_max_entries(MAX_RULE_ENTRIES, 0);

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

/// The lookups, in a function of their own so that their keys do not weigh
/// on every caller's stack. Returns `reason << 32 | policy`.
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
