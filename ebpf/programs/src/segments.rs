//! Segment membership: the longest prefix that holds an address (IPv4 and
//! IPv6 kept apart by a family byte), the segment a VLAN tag names, and the
//! segments in monitor mode; every key starts with its generation's slot.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, lpm_trie::Key},
};
use wardline_ebpf_abi::{
    MAX_MONITOR_ENTRIES, MAX_PREFIXES, MAX_VLAN_ENTRIES, MonitorKey, PREFIX_KEY_FIXED_BITS,
    PrefixData, SEGMENT_WORLD, vlan_key,
};

/// Address prefixes to segment ids, per slot.
#[map]
static WL_PREFIXES: LpmTrie<PrefixData, u32> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
/// `vlan_key(slot, vid)` to segment id. Allocated per entry: a slot holds
/// only the VLANs its policy names.
#[map]
static WL_VLANS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VLAN_ENTRIES, BPF_F_NO_PREALLOC);
/// Segments in monitor mode, per slot; the value is not used.
#[map]
static WL_MONITOR: HashMap<MonitorKey, u32> =
    HashMap::with_max_entries(MAX_MONITOR_ENTRIES, BPF_F_NO_PREALLOC);

/// The segment of an address (16-byte form, IPv4-mapped for IPv4).
#[inline(always)]
pub fn segment_of(slot: u8, family: u8, addr: &[u8; 16]) -> u32 {
    let key = Key::new(
        PREFIX_KEY_FIXED_BITS + 128,
        PrefixData {
            slot,
            family,
            _pad: [0; 2],
            addr: *addr,
        },
    );
    WL_PREFIXES.get(&key).copied().unwrap_or(SEGMENT_WORLD)
}

/// The segment that claims VLAN `vid`, if any.
#[inline(always)]
pub fn vlan_segment(slot: u8, vid: u16) -> Option<u32> {
    // SAFETY: a lookup whose u32 value is copied out at once.
    unsafe { WL_VLANS.get(vlan_key(slot, vid)) }.copied()
}

#[inline(always)]
pub fn monitored(slot: u8, segment: u32) -> bool {
    let key = MonitorKey {
        slot: slot as u32,
        segment,
    };
    // SAFETY: a lookup whose value is not read.
    unsafe { WL_MONITOR.get(key) }.is_some()
}
