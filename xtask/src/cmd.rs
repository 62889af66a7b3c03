//! Running external commands from tasks: each is echoed (`$ ...`, with the
//! environment variables the task set) before it runs, so that a log shows
//! exactly what to run by hand.

use std::ffi::OsStr;
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// A command line as a shell would take it, with the environment
/// variables set on `cmd` in front.
pub fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        value.map(|value| format!("{}={}", key.to_string_lossy(), quote(value)))
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The program to run for `cargo`: the one that runs this task when there
/// is one, so the same toolchain builds everything. In CI (`CI` set) builds
/// are not incremental unless the caller chose otherwise: a clean checkout
/// builds once, and incremental state would only take disk.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

/// Echoes `cmd`, runs it with the task's standard streams, and fails unless
/// it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Echoes `cmd`, runs it, and returns its exit status whatever it is.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    println!("$ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("`{}` could not be started", display(cmd)))
}

/// Runs `cmd` quietly (not echoed, output discarded) and says whether it
/// exited 0; a program that is not there is a `false`. For checks.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `cmd` quietly and returns its standard output, or `None` if it
/// cannot start or does not exit 0. For checks.
pub fn output(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_display_as_shell_lines() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22").args([
            "install",
            "bpf-linker@0.13.0",
            "--features",
            "llvm 22",
            "it's",
        ]);
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker@0.13.0 --features 'llvm 22' 'it'\''s'"
        );
    }
}
