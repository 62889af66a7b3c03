//! `wardline-bench --quick`: the benchmark harness works end to end (every
//! part measures one small scale and the report is written, every section
//! with its heading, the raw results in one key style). Figures from a
//! quick run are not quoted; `cargo xtask bench` produces
//! docs/benchmarks.md.

use std::process::Command;

use serde_json::Value;
use wardline_tests::bench::{PARTS, report};
use wardline_tests::{probe_bin, require_root};

/// Keys each part's raw results must hold (a path of object keys; a number
/// indexes an array), so that a renamed or dropped figure is noticed.
const KEYS: &[(&str, &[&str])] = &[
    (
        "packet",
        &["scales", "0", "cases", "established", "medianNs"],
    ),
    (
        "packet",
        &["scales", "0", "cases", "establishedReply", "medianNs"],
    ),
    ("packet", &["kernelSettings", "0", "name"]),
    (
        "throughput",
        &["traffics", "0", "rows", "0", "median", "nftablesStateful"],
    ),
    (
        "throughput",
        &[
            "traffics",
            "0",
            "rows",
            "0",
            "ratio",
            "wardlineNftablesStateful",
        ],
    ),
    (
        "throughput",
        &["traffics", "1", "rows", "0", "ratio", "wardlineNftables"],
    ),
    ("propagation", &["fleets", "0", "simulatedAgents"]),
    ("propagation", &["fleets", "0", "ackMs", "p99"]),
    ("events", &["together", "0", "lostEvents"]),
    ("flows", &["recordsPerSecond"]),
    ("flows", &["queries", "0", "p95Ms"]),
    ("propagation", &["fleets", "0", "nodeChangeAckMs", "p99"]),
    ("memory", &["pinnedMemlockBytes"]),
    ("memory", &["maps", "0", "memlockBytes"]),
    ("memory", &["fill", "after"]),
    ("memory", &["rssSteadyMaxBytes"]),
    ("flood", &["kept"]),
    ("flood", &["floodPacketsPerSecond"]),
    ("flood", &["runs", "1", "flood", "sent"]),
    ("flood", &["runs", "1", "trackedAfter"]),
];

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(*key),
        })
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_bench_quick_smoke() {
    require_root();
    let dir = std::env::temp_dir().join(format!("wardline-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("benchmarks.md");
    let bench = probe_bin().with_file_name("wardline-bench");
    let result = Command::new(&bench)
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .env("WARDLINE_BIN_DIR", probe_bin().parent().unwrap())
        .output()
        .expect("wardline-bench runs");
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    let report = std::fs::read_to_string(&out).unwrap_or_default();
    let raw = std::fs::read_to_string(out.with_extension("json")).unwrap_or_default();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        result.status.success(),
        "wardline-bench --quick failed:\n{stderr}\n{report}"
    );

    // Every part has its section, the new ones included.
    let names: Vec<&str> = PARTS.iter().map(|p| p.name).collect();
    for name in [
        "packet",
        "throughput",
        "propagation",
        "events",
        "flows",
        "memory",
        "flood",
    ] {
        assert!(names.contains(&name), "no part {name:?} in {names:?}");
    }
    for part in &PARTS {
        let heading = format!("\n## {}\n", part.title);
        assert!(
            report.contains(&heading),
            "the report lacks {heading:?}:\n{report}"
        );
    }
    for heading in [
        "\n## Targets\n",
        "\n## Memory",
        "\n## Allowed traffic under a flood",
    ] {
        assert!(
            report.contains(heading),
            "the report lacks {heading:?}:\n{report}"
        );
    }

    // The raw results: one key style, every part measured, its figures there.
    let raw: Value = serde_json::from_str(&raw).expect("raw results are JSON");
    let stray = report::non_camel_case_keys(&raw);
    assert!(stray.is_empty(), "keys not in camelCase: {stray:?}");
    for key in [
        "command", "date", "quick", "seconds", "commit", "machine", "parts",
    ] {
        assert!(raw.get(key).is_some(), "no {key:?} in the raw results");
    }
    assert_eq!(raw["quick"], true);
    assert!(
        raw["machine"]["loadAverage"].is_string(),
        "{}",
        raw["machine"]
    );
    let parts = raw["parts"].as_array().expect("parts is an array");
    assert_eq!(parts.len(), PARTS.len(), "one entry per part");
    for (p, part) in parts.iter().zip(&PARTS) {
        assert_eq!(p["part"], part.name);
        assert_eq!(p["title"], part.title);
        assert_eq!(p["ok"], true, "{} failed: {}", part.name, p["error"]);
        assert!(p["seconds"].is_number(), "{p}");
        let targets = p["targets"].as_array().expect("targets is an array");
        for t in targets {
            assert!(t["target"].is_string() && t["met"].is_boolean(), "{t}");
        }
        assert!(p["raw"].is_object(), "{} has no raw results", part.name);
    }
    for (name, path) in KEYS {
        let part = parts
            .iter()
            .find(|p| p["part"] == *name)
            .unwrap_or_else(|| panic!("no part {name:?} in the raw results"));
        assert!(
            at(&part["raw"], path).is_some_and(|v| !v.is_null()),
            "{name}: no {} in {}",
            path.join("."),
            part["raw"]
        );
    }
    // The new targets are reported, met or not.
    for (name, wanted) in [
        ("memory", "kernel map memory at most"),
        ("memory", "agent resident memory at most"),
        ("flood", "keeps at least 0.9"),
        ("flood", "no tracked connection is lost"),
    ] {
        let part = parts.iter().find(|p| p["part"] == name).unwrap();
        assert!(
            part["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["target"].as_str().is_some_and(|s| s.contains(wanted))),
            "{name} reports no target {wanted:?}: {}",
            part["targets"]
        );
    }
}
