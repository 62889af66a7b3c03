//! Which policy generation judges a packet: the live one of `WL_CONFIG`,
//! or a scheduled one whose instant has come (`WL_SCHEDULE`), so that a
//! policy window opens and closes on time in the kernel even while the
//! agent is not running (`docs/verdicts.md`, "Zero trust over time").

use aya_ebpf::{helpers::bpf_ktime_get_tai_ns, macros::map, maps::Array};
use wardline_ebpf_abi::{Config, MAX_SCHEDULED, ScheduleEntry, config_flags};

/// One element: the live generation and its flags.
#[map]
static WL_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Generations that take over at set `CLOCK_TAI` instants.
#[map]
static WL_SCHEDULE: Array<ScheduleEntry> = Array::with_max_entries(MAX_SCHEDULED, 0);

/// The generation that judges this packet, with its flags.
#[inline(always)]
pub fn in_force() -> Config {
    let Some(c) = WL_CONFIG.get_ptr(0) else {
        return Config::default();
    };
    // SAFETY: the array's one element, 8 bytes and 8-byte aligned (`Config`
    // is `align(8)`): one load, so generation and flags are one snapshot.
    let live = Config::from_word(unsafe { core::ptr::read_volatile(c as *const u64) });
    if live.flags & config_flags::HAS_SCHEDULE == 0 {
        return live;
    }
    Config::from_word(scheduled(live.to_word()))
}

/// The highest scheduled generation above the live one whose instant has
/// come, else the live one (as a [`Config`] word: a BPF function returns one
/// register).
#[inline(never)]
fn scheduled(live_word: u64) -> u64 {
    let live = Config::from_word(live_word);
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_tai_ns() };
    let mut best = live;
    for i in 0..MAX_SCHEDULED {
        let Some(e) = WL_SCHEDULE.get(i) else {
            continue;
        };
        let e = *e;
        // Generations only grow: "ahead" is a positive wrapping distance.
        let ahead = e.generation.wrapping_sub(best.generation) as i32 > 0;
        if e.is_valid() && now >= e.at_tai_ns && ahead {
            best = Config {
                generation: e.generation,
                flags: (live.flags & !config_flags::POLICY_FLAGS)
                    | (e.flags & config_flags::POLICY_FLAGS),
            };
        }
    }
    best.to_word()
}
