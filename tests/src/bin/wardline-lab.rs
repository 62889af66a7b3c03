//! The hospital lab (`cargo xtask lab`): see `wardline_tests::lab`.

use std::process::ExitCode;

use clap::Parser;

/// A small hospital in network namespaces, enforced by wardline-agent.
#[derive(Parser)]
struct Args {
    /// Keep the lab up after the example traffic, until Ctrl-C.
    #[arg(long)]
    hold: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match wardline_tests::lab::run(args.hold) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wardline-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
