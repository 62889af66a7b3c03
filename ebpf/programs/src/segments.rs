//! Segment membership: the longest prefix that holds an address (IPv4 and
//! IPv6 kept apart by a family byte), the segment a VLAN tag names, and the
//! marks of segments in monitor mode or quarantine; every key starts with
//! its generation's slot.
//!
//! Prefixes are a hash probed once per prefix length in use, longest first:
//! the cost of a lookup follows how many lengths a policy uses (a site of
//! host addresses uses one), never how many prefixes it has. A policy of
//! more lengths than are probed keeps its shortest ones in a trie, looked
//! up when every probe missed.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
};
use wardline_ebpf_abi::{
    MAX_MARK_ENTRIES, MAX_PREFIXES, MAX_VLAN_ENTRIES, MarkKey, PREFIX_KEY_FIXED_BITS,
    PREFIX_LENS_ENTRIES, PREFIX_PROBES, PrefixData, PrefixKey, PrefixLens, SEGMENT_WORLD,
    SegmentMarks, mask_address, prefix_lens_index, vlan_key,
};

/// Address prefixes to segment ids, per slot, one key per prefix.
/// Allocated per entry.
#[map]
static WL_PREFIXES: HashMap<PrefixKey, u32> =
    HashMap::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);
/// The prefix lengths each slot probes, per family, longest first.
#[map]
static WL_PREFIX_LENS: Array<PrefixLens> = Array::with_max_entries(PREFIX_LENS_ENTRIES, 0);
/// Prefixes of lengths shorter than every probed one, per slot.
#[map]
static WL_PREFIX_TRIE: LpmTrie<PrefixData, u32> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);
/// `vlan_key(slot, vid)` to segment id. Allocated per entry: a slot holds
/// only the VLANs its policy names.
#[map]
static WL_VLANS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_VLAN_ENTRIES, BPF_F_NO_PREALLOC);
/// Segments in monitor mode or quarantine, per slot, and their marks.
/// Allocated per entry.
#[map]
static WL_MARKS: HashMap<MarkKey, SegmentMarks> =
    HashMap::with_max_entries(MAX_MARK_ENTRIES, BPF_F_NO_PREALLOC);

/// The segment of an address (16-byte form, IPv4-mapped for IPv4): the
/// first hit over the slot's probed prefix lengths, longest first, then
/// the trie when the slot has one.
#[inline(never)]
pub fn segment_of(slot: u8, family: u8, addr: &[u8; 16]) -> u32 {
    let Some(lens) = WL_PREFIX_LENS.get(prefix_lens_index(slot, family)) else {
        return SEGMENT_WORLD;
    };
    let (count, trie) = (lens.count as usize, lens.trie);
    let mut key = PrefixKey {
        slot,
        family,
        bits: 0,
        _pad: 0,
        addr: [0; 16],
    };
    for i in 0..PREFIX_PROBES {
        if i >= count {
            break;
        }
        let bits = lens.bits[i];
        key.bits = bits;
        key.addr = mask_address(*addr, bits);
        let probe: &PrefixKey = &key;
        // SAFETY: a lookup whose u32 value is copied out at once.
        if let Some(segment) = unsafe { WL_PREFIXES.get(probe) } {
            return *segment;
        }
    }
    if trie == 0 {
        return SEGMENT_WORLD;
    }
    let key = Key::new(
        PREFIX_KEY_FIXED_BITS + 128,
        PrefixData {
            slot,
            family,
            _pad: [0; 2],
            addr: *addr,
        },
    );
    WL_PREFIX_TRIE.get(&key).copied().unwrap_or(SEGMENT_WORLD)
}

/// The segment that claims VLAN `vid`, if any.
#[inline(always)]
pub fn vlan_segment(slot: u8, vid: u16) -> Option<u32> {
    // SAFETY: a lookup whose u32 value is copied out at once.
    unsafe { WL_VLANS.get(vlan_key(slot, vid)) }.copied()
}

/// A segment's marks; none for a segment without any.
#[inline(always)]
pub fn marks(slot: u8, segment: u32) -> SegmentMarks {
    let key = MarkKey {
        slot: slot as u32,
        segment,
    };
    // SAFETY: a lookup whose value is copied out at once.
    unsafe { WL_MARKS.get(key) }.copied().unwrap_or_default()
}
