//! `cargo xtask soak`: the kernel-against-reference conversation replay
//! (`agent/tests/kernel_conversations.rs`) at a soak's length. The test
//! prints how many packets it replayed and how many verdicts disagreed,
//! and fails unless none did.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::cmd::{cargo, status};
use crate::{is_root, setup, workspace_root};

pub fn soak(packets: u64) -> Result<ExitCode> {
    if !is_root() {
        bail!("soak loads the kernel programs: run it as root");
    }
    setup::setup()?;
    let mut nextest = cargo();
    nextest
        .current_dir(workspace_root())
        .env("WARDLINE_CONVERSATION_PACKETS", packets.to_string())
        .args([
            "nextest",
            "run",
            "-p",
            "wardline-agent",
            "--run-ignored",
            "all",
            "--no-capture",
            "-E",
            "test(privileged_kernel_agrees_with_reference_over_conversations)",
        ]);
    let status = status(&mut nextest)?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
