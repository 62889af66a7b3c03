//! `cargo xtask lint`: formatting and clippy, user-space and kernel crates
//! alike, warnings denied.

use anyhow::Result;

use crate::cmd::{cargo, run};
use crate::workspace_root;

pub fn lint() -> Result<()> {
    let root = workspace_root();
    run(cargo()
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel crate, for the BPF target it is built for.
    let target_dir = root.join("target/bpf-clippy");
    run(std::process::Command::new("rustup")
        .current_dir(&root)
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "wardline-ebpf",
            "--bins",
            "--release",
        ])
        .args([
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(&target_dir)
        .args(["--", "-D", "warnings"]))?;
    Ok(())
}
