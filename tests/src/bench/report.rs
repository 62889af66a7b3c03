//! The report of one run: `docs/benchmarks.md` for people, with the machine,
//! the command, how to read each section and whether each target was met,
//! and `docs/benchmarks.json` with every raw figure. Both are rendered from
//! one [`Report`] (`Serialize`, keys in camelCase, as every part's results).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::bench::{Budget, Outcome, Target};

/// The machine the figures come from.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// CPUs online (`nproc`).
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/loadavg`'s three load averages when the run started: other
    /// work on the machine shows here.
    pub load_average: String,
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
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".to_owned());
        Machine {
            cpus: crate::bench::cpus_online(),
            cpu_model,
            memory,
            kernel,
            load_average,
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

/// One part in the report: its section, or why it failed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartReport<'a> {
    pub part: &'static str,
    pub title: &'static str,
    pub ok: bool,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<&'a [Target]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// Markdown, from the part's results (not in the JSON, which has them
    /// raw).
    #[serde(skip)]
    how_to_read: &'a str,
    #[serde(skip)]
    tables: &'a str,
}

/// The whole report: the JSON as it is written, and what the Markdown is
/// rendered from.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report<'a> {
    pub command: &'a str,
    pub date: String,
    pub quick: bool,
    pub seconds: f64,
    pub commit: Option<&'a str>,
    pub machine: &'a Machine,
    pub parts: Vec<PartReport<'a>>,
}

impl<'a> Report<'a> {
    pub fn of(run: &'a Run) -> Report<'a> {
        Report {
            command: &run.command,
            date: date(run.started),
            quick: run.budget.quick,
            seconds: run.seconds,
            commit: run.commit.as_deref(),
            machine: &run.machine,
            parts: run
                .parts
                .iter()
                .map(|p| match &p.result {
                    Ok(s) => PartReport {
                        part: p.name,
                        title: p.title,
                        ok: true,
                        seconds: p.seconds,
                        targets: Some(&s.targets),
                        raw: Some(&s.raw),
                        error: None,
                        how_to_read: &s.how_to_read,
                        tables: &s.tables,
                    },
                    Err(e) => PartReport {
                        part: p.name,
                        title: p.title,
                        ok: false,
                        seconds: p.seconds,
                        targets: None,
                        raw: None,
                        error: Some(e),
                        how_to_read: "",
                        tables: "",
                    },
                })
                .collect(),
        }
    }
}

fn met(t: &Target) -> &'static str {
    if t.met { "met" } else { "**not met**" }
}

/// The Markdown report; `json_name` is the raw results' file, beside it.
pub fn markdown(report: &Report<'_>, json_name: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Every figure below comes from one run of the command in the table, on the \
         machine it names; run it again to measure your own hardware. Each section \
         says what was measured, how to read it, and whether this run met its \
         targets. The raw figures are in [{json_name}]({json_name}); medians and \
         percentiles are nearest-rank (always a measured value; the median of an \
         even count is the lower middle one).\n"
    );
    if report.quick {
        let _ = writeln!(
            md,
            "> **A quick run**: a smoke test of the harness with tiny budgets, not \
             figures to quote.\n"
        );
    }
    let m = report.machine;
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| command | `{}` |", report.command);
    let _ = writeln!(md, "| date | {} |", report.date);
    if let Some(commit) = report.commit {
        let _ = writeln!(md, "| commit | {commit} |");
    }
    let _ = writeln!(md, "| CPU | {} |", m.cpu_model);
    let _ = writeln!(md, "| CPUs online (`nproc`) | {} |", m.cpus);
    let _ = writeln!(md, "| memory | {} |", m.memory);
    let _ = writeln!(md, "| kernel (`uname -r`) | {} |", m.kernel);
    let _ = writeln!(md, "| load average at the start | {} |", m.load_average);
    let _ = writeln!(md, "| duration | {:.0} s |\n", report.seconds);

    let _ = writeln!(md, "## Targets\n");
    let _ = writeln!(md, "| section | target | this run |\n|---|---|---|");
    for p in &report.parts {
        match p.targets {
            Some([]) => {
                let _ = writeln!(md, "| {} | (none) | |", p.title);
            }
            Some(targets) => {
                for t in targets {
                    let _ = writeln!(md, "| {} | {} | {} |", p.title, cell(&t.target), met(t));
                }
            }
            None => {
                let _ = writeln!(md, "| {} | | **not measured: failed** |", p.title);
            }
        }
    }
    md.push('\n');

    for p in &report.parts {
        let _ = writeln!(md, "## {}\n", p.title);
        match (p.targets, p.error) {
            (Some(targets), _) => {
                let _ = writeln!(md, "{}\n", p.how_to_read.trim_end());
                let _ = writeln!(md, "{}\n", p.tables.trim_end());
                if !targets.is_empty() {
                    let _ = writeln!(md, "Targets:\n");
                    for t in targets {
                        let mark = if t.met { "met:" } else { "**not met:**" };
                        let _ = writeln!(md, "- {mark} {}", t.target);
                    }
                    md.push('\n');
                }
            }
            (None, error) => {
                let _ = writeln!(
                    md,
                    "**This part failed** after {:.0} s, so it has no figures in this \
                     run:\n\n```text\n{}\n```\n",
                    p.seconds,
                    error.unwrap_or("").trim_end()
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

/// The keys of `v`, at any depth, that are not camelCase (a lower-case
/// ASCII letter, then ASCII letters and digits), each with its path: the
/// raw results use one key style, and this finds a stray one.
pub fn non_camel_case_keys(v: &Value) -> Vec<String> {
    fn camel(k: &str) -> bool {
        let mut chars = k.chars();
        chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_alphanumeric())
    }
    fn walk(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    let here = format!("{path}.{k}");
                    if !camel(k) {
                        out.push(here.clone());
                    }
                    walk(x, &here, out);
                }
            }
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    walk(x, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
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
    let report = Report::of(run);
    std::fs::write(md_path, markdown(&report, &json_name))?;
    let mut text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    text.push('\n');
    std::fs::write(&json_path, text)?;
    Ok(json_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Section;
    use serde_json::json;

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
                load_average: "0.10 0.20 0.30".to_owned(),
            },
            commit: Some("abc1234".to_owned()),
            parts: vec![
                Outcome {
                    name: "packet",
                    title: "Per-packet cost in the kernel",
                    seconds: 3.0,
                    result: Ok(Section {
                        how_to_read: "Read it so.".to_owned(),
                        tables: "| a | b |\n|---|---|\n| 1 | 2 |\n".to_owned(),
                        targets: vec![
                            Target::new("fast | enough", true),
                            Target::new("faster", false),
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
        let report = Report::of(&run);
        let md = markdown(&report, "benchmarks.json");
        for want in [
            "| command | `cargo xtask bench` |",
            "| CPUs online (`nproc`) | 2 |",
            "| kernel (`uname -r`) | 6.18.0 |",
            "| Per-packet cost in the kernel | fast \\| enough | met |",
            "| Per-packet cost in the kernel | faster | **not met** |",
            "| Flow events | | **not measured: failed** |",
            "## Per-packet cost in the kernel\n\nRead it so.\n\n| a | b |",
            "## Flow events",
            "no ring buffer",
            "- **not met:** faster",
            "[benchmarks.json](benchmarks.json)",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        assert!(run.failed());
        let raw = serde_json::to_value(&report).unwrap();
        assert_eq!(raw["parts"][0]["raw"]["x"], 1);
        assert_eq!(raw["parts"][0]["targets"][1]["met"], false);
        assert_eq!(raw["parts"][1]["ok"], false);
        assert_eq!(raw["parts"][1]["error"], "no ring buffer");
        assert!(raw["parts"][1].get("raw").is_none());
        assert_eq!(raw["machine"]["kernel"], "6.18.0");
        assert_eq!(raw["machine"]["loadAverage"], "0.10 0.20 0.30");
        assert_eq!(non_camel_case_keys(&raw), Vec::<String>::new());
    }

    #[test]
    fn stray_key_styles_are_found() {
        let v = json!({"medianNs": 1, "a": [{"simulated_agents": 2}], "Bad": {"ok2": 3}});
        let mut found = non_camel_case_keys(&v);
        found.sort();
        assert_eq!(found, [".Bad", ".a[0].simulated_agents"]);
    }
}
