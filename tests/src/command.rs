//! Running commands whose failure is a test failure.

use std::io;
use std::process::{Command, ExitStatus, Output};

/// A command that could not be started or did not exit 0.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started.
    #[error("`{command}` could not be started: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// The command ran and did not exit 0.
    #[error("`{command}` failed ({status}): {}", stderr.trim_end())]
    Failed {
        command: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion with its output captured; an error unless it
/// exits 0.
pub fn try_run(cmd: &mut Command) -> Result<Output, CommandError> {
    let output = cmd.output().map_err(|source| CommandError::Spawn {
        command: describe(cmd),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(CommandError::Failed {
            command: describe(cmd),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Runs `cmd` like [`try_run`], panicking with the command line and its
/// standard error if it fails.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    try_run(cmd).unwrap_or_else(|err| panic!("{err}"))
}
