//! `cargo xtask lab`: the main job. Sets the machine up, builds everything,
//! and runs the hospital lab (`wardline-lab`): a small hospital in network
//! namespaces enforced by a real agent running `examples/hospital.yaml`.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cmd::{cargo, run, status};
use crate::{is_root, setup, workspace_root};

pub fn lab(hold: bool) -> Result<ExitCode> {
    if !is_root() {
        bail!("the lab creates network namespaces and loads BPF programs: run it as root");
    }
    setup::setup()?;
    let root = workspace_root();
    run(cargo()
        .current_dir(&root)
        .args(["build", "--workspace", "--bins"]))?;
    let mut lab = std::process::Command::new(root.join("target/debug/wardline-lab"));
    if hold {
        lab.arg("--hold");
    }
    let status = status(&mut lab)?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
