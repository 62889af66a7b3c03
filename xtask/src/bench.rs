//! `cargo xtask bench`: sets the machine up, builds every binary with
//! `--release` (the figures are of optimised code; the agent's build.rs
//! builds the kernel programs either way), and runs `wardline-bench`, which
//! measures each part and writes `docs/benchmarks.md` and
//! `docs/benchmarks.json`. With `--quick` it is a smoke test of the harness
//! (what CI runs), written under `target/bench/` so that it never replaces
//! the full run's figures.

use std::process::{Command, ExitCode};

use anyhow::{Result, bail};

use crate::cmd::{cargo, run, status};
use crate::{is_root, setup, workspace_root};

/// The variable that tells the benchmarks where the binaries they start
/// (the agent, the probe, the control plane) are.
const BIN_DIR_ENV: &str = "WARDLINE_BIN_DIR";

/// Sets up, builds with `--release`, runs the benchmarks (only `parts` when
/// some are named), and returns their exit status: non-zero when a part
/// failed to measure; targets not met are results, not failures.
pub fn bench(quick: bool, parts: &[String]) -> Result<ExitCode> {
    if !is_root() {
        bail!("the benchmarks load BPF programs and create network namespaces: run them as root");
    }
    setup::setup()?;
    let root = workspace_root();
    run(cargo()
        .current_dir(&root)
        .args(["build", "--release", "--workspace", "--bins"]))?;
    let bin_dir = root.join("target/release");
    let mut args = Vec::new();
    if quick {
        args.push("--quick".to_owned());
    }
    for part in parts {
        args.push("--part".to_owned());
        args.push(part.clone());
    }
    let mut command = vec!["cargo xtask bench".to_owned()];
    command.extend(args.iter().cloned());
    let mut bench = Command::new(bin_dir.join("wardline-bench"));
    bench
        .current_dir(&root)
        .env(BIN_DIR_ENV, &bin_dir)
        .args(&args)
        .arg("--command")
        .arg(command.join(" "));
    let status = status(&mut bench)?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
