//! `wardline-bench --quick`: the benchmark harness works end to end (every
//! part measures and the report is written). Figures from a quick run are
//! not quoted; `cargo xtask bench` produces docs/benchmarks.md.

use std::process::Command;

use wardline_tests::{probe_bin, require_root};

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
    for section in [
        "## Per-packet cost",
        "## Throughput",
        "## Policy propagation",
        "## Flow events",
    ] {
        assert!(
            report.contains(section),
            "the report lacks {section:?}:\n{report}"
        );
    }
    let raw: serde_json::Value = serde_json::from_str(&raw).expect("raw results are JSON");
    assert!(raw.is_object(), "{raw}");
}
