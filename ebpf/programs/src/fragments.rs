//! IP fragments: a first fragment that passes records its datagram, and
//! only the later fragments of a recorded datagram pass. A dropped first
//! fragment records nothing; a later fragment of an unrecorded datagram is
//! `orphan-fragment`.

use aya_ebpf::{macros::map, maps::HashMap};
use wardline_ebpf_abi::{
    COUNTER_FRAGMENTS_FULL, FragmentKey, FragmentState, MAX_FRAGMENTS, Reason, TIMEOUT_FRAGMENT,
};

use crate::events::{count_slot, drop_event};
use crate::parse::Packet;
use crate::verdict::Env;

/// Datagrams whose first fragment passed; the agent sweeps old ones.
#[map]
static WL_FRAGMENTS: HashMap<FragmentKey, FragmentState> =
    HashMap::with_max_entries(MAX_FRAGMENTS, 0);

#[inline(always)]
fn key_of(p: &Packet) -> FragmentKey {
    FragmentKey {
        src: p.src,
        dst: p.dst,
        id: p.frag_id,
        proto: p.frag_proto,
        _pad: [0; 3],
    }
}

/// Records the datagram of a first fragment that passed.
#[inline(never)]
pub fn first_passed(env: &Env<'_>, p: &Packet) {
    let state = FragmentState { seen_ns: env.now };
    if WL_FRAGMENTS.insert(key_of(p), state, 0).is_err() {
        count_slot(COUNTER_FRAGMENTS_FULL);
    }
}

/// The verdict of a later fragment.
#[inline(never)]
pub fn later(env: &Env<'_>, p: &Packet) -> Reason {
    // SAFETY: the value is copied out at once.
    match unsafe { WL_FRAGMENTS.get(key_of(p)) }.copied() {
        Some(s) if env.now.saturating_sub(s.seen_ns) < TIMEOUT_FRAGMENT => Reason::Fragment,
        _ => {
            drop_event(env, p, Reason::OrphanFragment);
            Reason::OrphanFragment
        }
    }
}
