//! Non-IP frames: ARP and the IPv6 neighbour-discovery family pass by the
//! parser's word; any other ethertype (802.3 length-field frames under
//! `ETHERTYPE_802_3`) passes only where the agent's configuration lists it.

use aya_ebpf::{macros::map, maps::HashMap};
use wardline_ebpf_abi::MAX_ETHERTYPES;

/// Listed ethertypes; the value is not used.
#[map]
static WL_ETHERTYPES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_ETHERTYPES, 0);

#[inline(always)]
pub fn ethertype_listed(ethertype: u16) -> bool {
    // SAFETY: a lookup whose value is not read.
    unsafe { WL_ETHERTYPES.get(ethertype as u32) }.is_some()
}
