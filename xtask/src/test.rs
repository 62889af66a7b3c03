//! `cargo xtask test`: the one command that runs every test, privileged
//! ones included when it runs as root.

use std::process::ExitCode;

use anyhow::Result;

use crate::cmd::{cargo, run, status};
use crate::{fuzz, is_root, setup, workspace_root};

/// Sets the machine up, builds every binary (the tests run them: the probe,
/// the agent), checks the systemd units against those binaries
/// ([`crate::units`]), runs each fuzz target for a few seconds, then runs
/// the whole workspace's tests with nextest, extra arguments passed on to
/// it, last, so that its summary ends the output. Returns nextest's exit
/// code, or failure if a fuzz target crashed (nextest runs all the same,
/// and its summary stays the last line).
pub fn test(nextest_args: &[String]) -> Result<ExitCode> {
    setup::setup()?;
    crate::lint::lint()?;
    let root = workspace_root();
    run(cargo()
        .current_dir(&root)
        .args(["build", "--workspace", "--bins", "--tests"]))?;
    crate::units::check(&root, &root.join("target/debug"))?;
    // Packages take a release build, longer than the rest of the run
    // before the tests: `cargo xtask package` builds them, and here the
    // ones already built are checked.
    crate::package::inspect(&root)?;
    let fuzzed = fuzz::fuzz(fuzz::TEST_SECONDS, &[])?;
    let mut nextest = cargo();
    nextest
        .current_dir(&root)
        .args(["nextest", "run", "--workspace"]);
    if is_root() {
        nextest.args(["--run-ignored", "all"]);
    } else {
        println!(
            "test: not root: the privileged tests (#[ignore = \"needs root...\"]) are skipped; \
             run as root to include them"
        );
    }
    nextest.arg("--no-fail-fast").args(nextest_args);
    let status = status(&mut nextest)?;
    Ok(match status.code() {
        Some(0) if fuzzed != ExitCode::SUCCESS => fuzzed,
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => {
            println!("test: nextest was killed ({status})");
            ExitCode::FAILURE
        }
    })
}
