//! `cargo xtask lab`: the main job. Sets the machine up, builds everything,
//! and runs the hospital lab (`wardline-lab`): a small hospital in network
//! namespaces enforced by a real agent running `examples/hospital.yaml`.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{cargo, display};
use crate::{is_root, setup, workspace_root};

pub fn lab(hold: bool) -> Result<ExitCode> {
    if !is_root() {
        bail!("the lab creates network namespaces and loads BPF programs: run it as root");
    }
    setup::setup()?;
    let root = workspace_root();
    // The lab's output is its story: the build (with the kernel programs'
    // nested build) speaks only when it fails.
    println!("Building Wardline (the first build takes several minutes)...");
    let mut build = cargo();
    build
        .current_dir(&root)
        .args(["build", "--workspace", "--bins"])
        .stdin(std::process::Stdio::null());
    let built = build
        .output()
        .with_context(|| format!("`{}` could not be started", display(&build)))?;
    if !built.status.success() {
        eprint!("{}", String::from_utf8_lossy(&built.stderr));
        bail!("`{}` failed ({})", display(&build), built.status);
    }
    let mut lab = std::process::Command::new(root.join("target/debug/wardline-lab"));
    if hold {
        lab.arg("--hold");
    }
    let status = lab
        .status()
        .with_context(|| format!("`{}` could not be started", display(&lab)))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
