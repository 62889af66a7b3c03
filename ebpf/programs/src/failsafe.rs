//! Failsafe flows: the node's own management and control-plane
//! connections, which no policy can block (`docs/verdicts.md`, "Failsafe
//! flows"). They are the node's own: an entry matches only a new
//! connection with one end on one of the node's own addresses, in the
//! entry's orientation, by the responder's port; a packet's source port
//! never makes one, and traffic the node forwards never matches.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};
use wardline_ebpf_abi::{
    FAILSAFE_KEY_FIXED_BITS, FAILSAFE_LOCAL_INITIATES, FAILSAFE_REMOTE_INITIATES, FailsafeData,
    LocalAddr, MAX_FAILSAFE, MAX_LOCAL_ADDRS,
};

use crate::parse::Packet;

/// `(orientation, protocol, responder's port, family, remote prefix)`.
#[map]
static WL_FAILSAFE: LpmTrie<FailsafeData, u32> = LpmTrie::with_max_entries(MAX_FAILSAFE, 0);
/// The node's own addresses, kept current by the agent.
#[map]
static WL_LOCAL_ADDRS: HashMap<LocalAddr, u32> =
    HashMap::with_max_entries(MAX_LOCAL_ADDRS, BPF_F_NO_PREALLOC);

#[inline(always)]
fn is_local(addr: &[u8; 16]) -> bool {
    // SAFETY: a lookup whose value is not read.
    unsafe { WL_LOCAL_ADDRS.get(LocalAddr { addr: *addr }) }.is_some()
}

#[inline(always)]
fn listed(kind: u8, p: &Packet, remote: &[u8; 16]) -> bool {
    let key = Key::new(
        FAILSAFE_KEY_FIXED_BITS + 128,
        FailsafeData {
            kind,
            proto: p.proto,
            port: p.dport.to_be_bytes(),
            family: p.family,
            _pad: [0; 3],
            addr: *remote,
        },
    );
    WL_FAILSAFE.get(&key).is_some()
}

/// Whether a new connection's first packet is one of the node's failsafe
/// flows: a listed remote opening one to the node's port (`ingress`), or the
/// node opening one to a listed remote's port (`egress`).
#[inline(never)]
pub fn is_failsafe(p: &Packet) -> bool {
    (listed(FAILSAFE_REMOTE_INITIATES, p, &p.src) && is_local(&p.dst))
        || (listed(FAILSAFE_LOCAL_INITIATES, p, &p.dst) && is_local(&p.src))
}
