//! The report of one run: `docs/benchmarks.md` for people, with the machine,
//! the command, how to read each section and whether each target was met,
//! and `docs/benchmarks.json` with every raw figure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use crate::bench::{Budget, Outcome};

/// The machine the figures come from.
#[derive(Clone, Debug)]
pub struct Machine {
    /// CPUs online (`nproc`).
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/loadavg`'s three load averages when the run started: other
    /// work on the machine shows here.
    pub load: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| {
                let kib: u64 = l
                    .strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()?;
                Some(format!("{:.1} GiB", kib as f64 / (1024.0 * 1024.0)))
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let load = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".to_owned());
        Machine {
            cpus: crate::bench::cpus_online(),
            cpu_model,
            memory,
            kernel,
            load,
        }
    }
}

/// One whole run.
pub struct Run {
    pub budget: Budget,
    /// The command that ran it, as a person would type it.
    pub command: String,
    pub started: OffsetDateTime,
    pub seconds: f64,
    pub machine: Machine,
    /// The workspace's commit, and whether it had local changes.
    pub commit: Option<String>,
    pub parts: Vec<Outcome>,
}

impl Run {
    pub fn failed(&self) -> bool {
        self.parts.iter().any(|p| p.result.is_err())
    }
}

/// The workspace's root (above the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where a run writes its report unless told: `docs/benchmarks.md`; a quick
/// run (a smoke of the harness) writes under `target/bench/` instead, so
/// that it never replaces the full run's figures.
pub fn default_path(budget: Budget) -> PathBuf {
    let root = workspace_root();
    if budget.quick {
        root.join("target/bench/benchmarks-quick.md")
    } else {
        root.join("docs/benchmarks.md")
    }
}

/// `git describe` of the workspace: the short commit, marked when the tree
/// has local changes; `None` outside a git checkout.
pub fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let head = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{head} with local changes")
    } else {
        head
    })
}

fn date(t: OffsetDateTime) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| t.to_string())
}

/// The Markdown report; `json_name` is the raw results' file, beside it.
pub fn markdown(run: &Run, json_name: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Every figure below comes from one run of the command in the table, on the \
         machine it names; run it again to measure your own hardware. Each section \
         says what was measured, how to read it, and whether this run met its \
         targets. The raw figures are in [{json_name}]({json_name}).\n"
    );
    if run.budget.quick {
        let _ = writeln!(
            md,
            "> **A quick run**: a smoke test of the harness with tiny budgets, not \
             figures to quote.\n"
        );
    }
    let m = &run.machine;
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| command | `{}` |", run.command);
    let _ = writeln!(md, "| date | {} |", date(run.started));
    if let Some(commit) = &run.commit {
        let _ = writeln!(md, "| commit | {commit} |");
    }
    let _ = writeln!(md, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(md, "| CPUs online (`nproc`) | {} |", m.cpus);
    let _ = writeln!(md, "| memory | {} |", m.memory);
    let _ = writeln!(md, "| kernel (`uname -r`) | {} |", m.kernel);
    let _ = writeln!(md, "| load average at the start | {} |", m.load);
    let _ = writeln!(md, "| duration | {:.0} s |\n", run.seconds);

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| section | target | this run |\n|---|---|---|");
    for p in &run.parts {
        match &p.result {
            Ok(s) if s.targets.is_empty() => {
                let _ = writeln!(md, "| {} | (none) | |", s.title);
            }
            Ok(s) => {
                for (target, met) in &s.targets {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} |",
                        s.title,
                        cell(target),
                        if *met { "met" } else { "**not met**" }
                    );
                }
            }
            Err(_) => {
                let _ = writeln!(md, "| {} | | **not measured: failed** |", p.title);
            }
        }
    }
    md.push('\n');

    for p in &run.parts {
        match &p.result {
            Ok(s) => {
                let _ = writeln!(md, "## {}\n", s.title);
                let _ = writeln!(md, "{}\n", s.how_to_read.trim_end());
                let _ = writeln!(md, "{}\n", s.table.trim_end());
                if !s.targets.is_empty() {
                    let _ = writeln!(md, "Targets:\n");
                    for (target, met) in &s.targets {
                        let _ = writeln!(
                            md,
                            "- {} {target}",
                            if *met { "met:" } else { "**not met:**" }
                        );
                    }
                    md.push('\n');
                }
            }
            Err(e) => {
                let _ = writeln!(md, "## {}\n", p.title);
                let _ = writeln!(
                    md,
                    "**This part failed** after {:.0} s, so it has no figures in this \
                     run:\n\n```text\n{}\n```\n",
                    p.seconds,
                    e.trim_end()
                );
            }
        }
    }
    md
}

/// A table cell: no pipes or newlines.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The raw results.
pub fn json(run: &Run) -> Value {
    let m = &run.machine;
    json!({
        "command": run.command,
        "date": date(run.started),
        "quick": run.budget.quick,
        "seconds": run.seconds,
        "commit": run.commit,
        "machine": {
            "cpus": m.cpus,
            "cpuModel": m.cpu_model,
            "memory": m.memory,
            "kernel": m.kernel,
            "loadAverage": m.load,
        },
        "parts": run.parts.iter().map(|p| match &p.result {
            Ok(s) => json!({
                "part": p.name,
                "title": s.title,
                "ok": true,
                "seconds": p.seconds,
                "targets": s.targets.iter().map(|(t, met)| json!({"target": t, "met": met})).collect::<Vec<_>>(),
                "raw": s.raw,
            }),
            Err(e) => json!({
                "part": p.name,
                "title": p.title,
                "ok": false,
                "seconds": p.seconds,
                "error": e,
            }),
        }).collect::<Vec<_>>(),
    })
}

/// Writes the Markdown to `md_path` and the JSON beside it (same name,
/// `.json`); returns the JSON's path.
pub fn write(run: &Run, md_path: &Path) -> std::io::Result<PathBuf> {
    if let Some(dir) = md_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json_path = md_path.with_extension("json");
    let json_name = json_path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    std::fs::write(md_path, markdown(run, &json_name))?;
    let mut text = serde_json::to_string_pretty(&json(run)).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(&json_path, text)?;
    Ok(json_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Section;

    fn sample() -> Run {
        Run {
            budget: Budget { quick: false },
            command: "cargo xtask bench".to_owned(),
            started: OffsetDateTime::UNIX_EPOCH,
            seconds: 12.0,
            machine: Machine {
                cpus: 2,
                cpu_model: "Some CPU".to_owned(),
                memory: "4.0 GiB".to_owned(),
                kernel: "6.18.0".to_owned(),
                load: "0.10 0.20 0.30".to_owned(),
            },
            commit: Some("abc1234".to_owned()),
            parts: vec![
                Outcome {
                    name: "packet",
                    title: "Per-packet cost in the kernel",
                    seconds: 3.0,
                    result: Ok(Section {
                        title: "Per-packet cost in the kernel".to_owned(),
                        how_to_read: "Read it so.".to_owned(),
                        table: "| a | b |\n|---|---|\n| 1 | 2 |\n".to_owned(),
                        targets: vec![
                            ("fast | enough".to_owned(), true),
                            ("faster".to_owned(), false),
                        ],
                        raw: json!({"x": 1}),
                    }),
                },
                Outcome {
                    name: "events",
                    title: "Flow events",
                    seconds: 1.0,
                    result: Err("no ring buffer".to_owned()),
                },
            ],
        }
    }

    #[test]
    fn the_report_names_machine_command_targets_and_failures() {
        let run = sample();
        let md = markdown(&run, "benchmarks.json");
        for want in [
            "| command | `cargo xtask bench` |",
            "| CPUs online (`nproc`) | 2 |",
            "| kernel (`uname -r`) | 6.18.0 |",
            "| Per-packet cost in the kernel | fast \\| enough | met |",
            "| Per-packet cost in the kernel | faster | **not met** |",
            "| Flow events | | **not measured: failed** |",
            "## Flow events",
            "no ring buffer",
            "- **not met:** faster",
            "[benchmarks.json](benchmarks.json)",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        assert!(run.failed());
        let raw = json(&run);
        assert_eq!(raw["parts"][0]["raw"]["x"], 1);
        assert_eq!(raw["parts"][1]["ok"], false);
        assert_eq!(raw["machine"]["kernel"], "6.18.0");
    }
}
