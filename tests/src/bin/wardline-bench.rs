//! The benchmark runner behind `cargo xtask bench`.

use std::process::ExitCode;

use clap::Parser;
use wardline_tests::bench::Budget;

/// Measure Wardline and its peers side by side; write docs/benchmarks.md.
#[derive(Parser)]
struct Args {
    /// A short smoke run that checks the harness works.
    #[arg(long)]
    quick: bool,
    /// Where to write the report (default: docs/benchmarks.md of the workspace).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let budget = Budget { quick: args.quick };
    let _ = (budget, args.out);
    eprintln!("wardline-bench: no parts yet");
    ExitCode::FAILURE
}
