//! The benchmark runner behind `cargo xtask bench`: runs every part, writes
//! the report, and exits non-zero if a part failed (targets not met are
//! results, not failures).

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use time::OffsetDateTime;
use wardline_tests::bench::{self, Budget, report};

/// Measure Wardline and its peers side by side; write docs/benchmarks.md.
#[derive(Parser)]
struct Args {
    /// A short smoke run that checks the harness works.
    #[arg(long)]
    quick: bool,
    /// Where to write the report (default: docs/benchmarks.md of the
    /// workspace; target/bench/benchmarks-quick.md with --quick). The raw
    /// results go beside it, as .json.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// The command line the report names (default: this program's own).
    #[arg(long)]
    command: Option<String>,
    /// Run only this part (packet, throughput, propagation, events, memory,
    /// flood); may be given more than once. Default: every part.
    #[arg(long = "part", value_name = "NAME", value_parser = part_name)]
    parts: Vec<String>,
}

fn part_name(name: &str) -> Result<String, String> {
    if bench::PARTS.iter().any(|p| p.name == name) {
        Ok(name.to_owned())
    } else {
        let names: Vec<&str> = bench::PARTS.iter().map(|p| p.name).collect();
        Err(format!(
            "no part {name:?}: the parts are {}",
            names.join(", ")
        ))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!(
            "wardline-bench: the benchmarks load BPF programs and create network namespaces: \
             run them as root, via `cargo xtask bench`"
        );
        return ExitCode::from(2);
    }
    let budget = Budget { quick: args.quick };
    let command = args
        .command
        .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "));
    let out = args.out.unwrap_or_else(|| report::default_path(budget));
    let started = OffsetDateTime::now_utc();
    let clock = Instant::now();
    let machine = report::Machine::probe();
    let parts = bench::run_parts(budget, &args.parts);
    let run = report::Run {
        budget,
        command,
        started,
        seconds: clock.elapsed().as_secs_f64(),
        machine,
        commit: report::commit(),
        parts,
    };
    match report::write(&run, &out) {
        Ok(json) => eprintln!(
            "wardline-bench: wrote {} and {}",
            out.display(),
            json.display()
        ),
        Err(e) => {
            eprintln!("wardline-bench: writing {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    }
    for p in &run.parts {
        match &p.result {
            Ok(s) => {
                let met = s.targets.iter().filter(|t| t.met).count();
                eprintln!(
                    "  {:<12} ok in {:>5.1} s, targets met {met}/{}",
                    p.name,
                    p.seconds,
                    s.targets.len()
                );
            }
            Err(e) => eprintln!("  {:<12} FAILED in {:>5.1} s: {e}", p.name, p.seconds),
        }
    }
    eprintln!("wardline-bench: {:.1} s in all", run.seconds);
    if run.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
