//! `cargo xtask bench`: Wardline and its peers measured side by side in one
//! run on this machine. Each part returns a [`Section`]; the runner writes
//! `docs/benchmarks.md` (machine, kernel, command, tables, how to read them)
//! and the raw results (`docs/benchmarks.json`).
//!
//! The parts run in turn ([`PARTS`]): the per-packet cost of the kernel
//! programs ([`packet`]), throughput through a gateway ([`throughput`]),
//! policy propagation ([`propagation`]) and flow events ([`events`]). A part
//! that fails or panics does not stop the others: its section says why, and
//! the run reports the failure at the end. Every part is bounded in time and
//! packets, and removes the namespaces and pins it created.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use serde_json::Value;

pub mod events;
pub mod packet;
pub mod propagation;
pub mod report;
pub mod throughput;

/// One part of the report.
pub struct Section {
    pub title: String,
    /// What the numbers mean and how to read them (Markdown).
    pub how_to_read: String,
    /// Markdown table(s).
    pub table: String,
    /// Targets and whether this run met them, one line each.
    pub targets: Vec<(String, bool)>,
    /// Raw results.
    pub raw: Value,
}

/// How long and how much each part may run.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// A short smoke of the harness (CI), not figures to quote.
    pub quick: bool,
}

/// One part of the benchmarks.
pub struct Part {
    /// Short name, for logs and the raw results.
    pub name: &'static str,
    /// The section's title when the part failed before it could give one.
    pub title: &'static str,
    pub run: fn(Budget) -> anyhow::Result<Section>,
}

/// The parts, in the order they run.
pub const PARTS: [Part; 4] = [
    Part {
        name: "packet",
        title: "Per-packet cost in the kernel",
        run: packet::run,
    },
    Part {
        name: "throughput",
        title: "Throughput through a gateway",
        run: throughput::run,
    },
    Part {
        name: "propagation",
        title: "Policy propagation",
        run: propagation::run,
    },
    Part {
        name: "events",
        title: "Flow events",
        run: events::run,
    },
];

/// How one part ended.
pub struct Outcome {
    pub name: &'static str,
    pub title: &'static str,
    pub seconds: f64,
    /// The section, or why the part failed.
    pub result: Result<Section, String>,
}

/// Runs the parts in turn (those named in `only`, or all when it is
/// empty), each whatever became of the ones before.
pub fn run_parts(budget: Budget, only: &[String]) -> Vec<Outcome> {
    run_these(&PARTS, budget, only)
}

fn run_these(parts: &[Part], budget: Budget, only: &[String]) -> Vec<Outcome> {
    parts
        .iter()
        .filter(|part| only.is_empty() || only.iter().any(|o| o == part.name))
        .map(|part| {
            eprintln!("bench: {} ...", part.name);
            let started = Instant::now();
            let result = match std::panic::catch_unwind(AssertUnwindSafe(|| (part.run)(budget))) {
                Ok(Ok(section)) => Ok(section),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref()))),
            };
            let seconds = started.elapsed().as_secs_f64();
            match &result {
                Ok(_) => eprintln!("bench: {} done in {seconds:.1} s", part.name),
                Err(e) => eprintln!("bench: {} FAILED after {seconds:.1} s: {e}", part.name),
            }
            Outcome {
                name: part.name,
                title: part.title,
                seconds,
                result,
            }
        })
        .collect()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// Pins the calling thread to `cpu`; false if the machine has no such CPU.
pub(crate) fn pin_to_cpu(cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).is_ok()
        && nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).is_ok()
}

/// How many CPUs are online (`/sys/devices/system/cpu/online`), whatever
/// the calling thread's affinity; `nproc` of an unpinned process.
pub(crate) fn cpus_online() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpus(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Counts the CPUs of a kernel CPU list such as `0-3,8,10-11`.
fn count_cpus(list: &str) -> Option<usize> {
    list.split(',').try_fold(0, |n, part| {
        let count = match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?,
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
        Some(n + count)
    })
}

/// The median of `v` (sorted in place); 0 when empty.
pub(crate) fn median(v: &mut [u64]) -> u64 {
    percentile(v, 50)
}

/// The `p`th percentile of `v` (sorted in place), nearest rank; 0 when empty.
pub(crate) fn percentile(v: &mut [u64], p: usize) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = (p * v.len()).div_ceil(100).clamp(1, v.len());
    v[rank - 1]
}

/// `n` with thousands separators: 100000 -> "100,000".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let mut v = vec![5, 1, 4, 2, 3];
        assert_eq!(median(&mut v), 3);
        assert_eq!(percentile(&mut v, 10), 1);
        assert_eq!(percentile(&mut v, 90), 5);
        assert_eq!(percentile(&mut v, 100), 5);
        assert_eq!(median(&mut []), 0);
        let mut even = vec![10, 20, 30, 40];
        assert_eq!(median(&mut even), 20);
    }

    fn fine(_: Budget) -> anyhow::Result<Section> {
        Ok(Section {
            title: "Fine".to_owned(),
            how_to_read: String::new(),
            table: String::new(),
            targets: vec![("a target not met is a result".to_owned(), false)],
            raw: Value::Null,
        })
    }

    fn fails(_: Budget) -> anyhow::Result<Section> {
        Err(anyhow::anyhow!("no iperf3").context("starting the server"))
    }

    fn panics(_: Budget) -> anyhow::Result<Section> {
        panic!("a bug in a part")
    }

    #[test]
    fn a_part_that_fails_or_panics_does_not_stop_the_others() {
        let parts = [
            Part {
                name: "fails",
                title: "Fails",
                run: fails,
            },
            Part {
                name: "panics",
                title: "Panics",
                run: panics,
            },
            Part {
                name: "fine",
                title: "Fine",
                run: fine,
            },
        ];
        let budget = Budget { quick: true };
        let outcomes = run_these(&parts, budget, &[]);
        let results: Vec<Result<&str, &str>> = outcomes
            .iter()
            .map(|o| {
                o.result
                    .as_ref()
                    .map(|s| s.title.as_str())
                    .map_err(String::as_str)
            })
            .collect();
        assert_eq!(
            results,
            [
                Err("starting the server: no iperf3"),
                Err("panicked: a bug in a part"),
                Ok("Fine"),
            ]
        );
        let only = run_these(&parts, budget, &["fine".to_owned()]);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].name, "fine");
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpus("0"), Some(1));
        assert_eq!(count_cpus("0-1"), Some(2));
        assert_eq!(count_cpus("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpus(""), None);
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
