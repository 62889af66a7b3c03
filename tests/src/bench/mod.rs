//! `cargo xtask bench`: Wardline and its peers measured side by side in one
//! run on this machine. Each part measures into one `Serialize` struct of
//! its own ([`Results`], keys in camelCase) and returns it rendered as a
//! [`Section`]; the runner writes `docs/benchmarks.md` (machine, kernel,
//! command, tables, how to read them) and the raw results
//! (`docs/benchmarks.json`), both from the same structs. Every median and
//! percentile comes from [`stats`].
//!
//! The parts run in turn ([`PARTS`]): the per-packet cost of the kernel
//! programs ([`packet`]), throughput through a gateway ([`throughput`]),
//! policy propagation ([`propagation`]), flow events ([`events`]), the
//! flow store's ingest and queries through a replica ([`flows`]), kernel
//! and agent memory at scale ([`memory`]) and allowed traffic under a flood
//! of denied SYNs ([`flood`]). A part that fails or panics does not stop
//! the others: its section says why, and the run reports the failure at the
//! end. Every part is bounded in time and packets, and removes the
//! namespaces and pins it created.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

pub mod events;
pub mod flood;
pub mod flows;
pub mod memory;
pub mod packet;
mod procfs;
pub mod propagation;
pub mod report;
pub mod stats;
pub mod throughput;

/// One target and whether this run met it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// What was aimed at, with this run's figure.
    pub target: String,
    pub met: bool,
}

impl Target {
    pub fn new(target: impl Into<String>, met: bool) -> Target {
        Target {
            target: target.into(),
            met,
        }
    }
}

/// What a part measured, as one `Serialize` struct (keys in camelCase):
/// the raw results are this struct as JSON, and the section's Markdown is
/// rendered from it, so that the two never disagree.
pub trait Results: Serialize {
    /// What the numbers mean and how to read them (Markdown).
    fn how_to_read(&self) -> String;
    /// The Markdown table(s).
    fn tables(&self) -> String;
    /// Targets and whether this run met them.
    fn targets(&self) -> Vec<Target>;
}

/// One part of the report, rendered from its [`Results`].
#[derive(Debug)]
pub struct Section {
    pub how_to_read: String,
    pub tables: String,
    pub targets: Vec<Target>,
    /// The results as JSON.
    pub raw: Value,
}

impl Section {
    /// Renders `results`.
    pub fn of<R: Results>(results: &R) -> anyhow::Result<Section> {
        Ok(Section {
            how_to_read: results.how_to_read(),
            tables: results.tables(),
            targets: results.targets(),
            raw: serde_json::to_value(results)?,
        })
    }
}

/// How long and how much each part may run.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// A short smoke of the harness (CI), not figures to quote: one small
    /// scale of every part.
    pub quick: bool,
}

/// One part of the benchmarks.
pub struct Part {
    /// Short name, for `--part`, logs and the raw results.
    pub name: &'static str,
    /// The section's title (its heading in the report).
    pub title: &'static str,
    pub run: fn(Budget) -> anyhow::Result<Section>,
}

/// The parts, in the order they run.
pub const PARTS: [Part; 7] = [
    Part {
        name: "packet",
        title: "Per-packet cost in the kernel",
        run: packet::run,
    },
    Part {
        name: "throughput",
        title: "Throughput through a filtering gateway",
        run: throughput::run,
    },
    Part {
        name: "propagation",
        title: "Policy propagation and scale",
        run: propagation::run,
    },
    Part {
        name: "events",
        title: "Flow events",
        run: events::run,
    },
    Part {
        name: "flows",
        title: "Flow records: ingest and queries",
        run: flows::run,
    },
    Part {
        name: "memory",
        title: "Memory: kernel maps and the agent",
        run: memory::run,
    },
    Part {
        name: "flood",
        title: "Allowed traffic under a flood of denied SYNs",
        run: flood::run,
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

    fn fine(_: Budget) -> anyhow::Result<Section> {
        Ok(Section {
            how_to_read: String::new(),
            tables: String::new(),
            targets: vec![Target::new("a target not met is a result", false)],
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
                    .map(|s| s.targets[0].target.as_str())
                    .map_err(String::as_str)
            })
            .collect();
        assert_eq!(
            results,
            [
                Err("starting the server: no iperf3"),
                Err("panicked: a bug in a part"),
                Ok("a target not met is a result"),
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
