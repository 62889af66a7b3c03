//! `cargo xtask`: see the `xtask` library for the tasks.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Wardline's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks (Debian packages, nightly with
    /// rust-src, bpf-linker, cargo-nextest, cargo-deb, cargo-fuzz) and mount
    /// bpffs; idempotent.
    Setup,
    /// cargo fmt --check and clippy -D warnings, user-space and kernel
    /// crates alike.
    Lint,
    /// Set up, lint, build every binary, run each fuzz target a few
    /// seconds, and run every test with nextest (privileged tests too when
    /// run as root).
    Test {
        /// Passed on to `cargo nextest run` (after `--`).
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
    /// The main job: set up, build, and run the hospital lab, a small
    /// hospital in network namespaces enforced by wardline-agent, with
    /// example traffic including a blocked lateral-movement attempt.
    Lab {
        /// Keep the lab up after the example traffic, until Ctrl-C.
        #[arg(long)]
        hold: bool,
    },
    /// Set up, build with --release, and write the Debian packages
    /// (wardline-agent, wardline-control-plane, wardctl) to target/debian/
    /// with cargo-deb, then check what they hold.
    Package,
    /// Build the fuzz targets (cargo-fuzz, nightly) and run each for a
    /// bounded time; fails if one crashes, naming the input it saved.
    Fuzz {
        /// Seconds each target runs.
        #[arg(long, default_value_t = xtask::fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// Run only this target (policy, agent_config, wire); may be given
        /// more than once.
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
    },
    /// Set up, then replay conversations through the real kernel programs
    /// against the stateful reference verdict (a million packets by
    /// default) and report how many verdicts disagree (must be 0).
    Soak {
        /// Packets to replay.
        #[arg(long, default_value_t = 1_000_000)]
        packets: u64,
    },
    /// Set up, build with --release, and run the benchmarks: the kernel
    /// programs' cost per packet, throughput against nftables and iptables,
    /// policy propagation and flow events. Writes docs/benchmarks.md and
    /// docs/benchmarks.json.
    Bench {
        /// A smoke test of the harness in seconds (CI), written under
        /// target/bench/ instead of docs/.
        #[arg(long)]
        quick: bool,
        /// Run only this part (packet, throughput, propagation, events);
        /// may be given more than once.
        #[arg(long = "part", value_name = "NAME")]
        parts: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.task {
        Task::Setup => xtask::setup::setup().map(|()| ExitCode::SUCCESS),
        Task::Test { nextest_args } => xtask::test::test(&nextest_args),
        Task::Lab { hold } => xtask::lab::lab(hold),
        Task::Lint => xtask::lint::lint().map(|()| ExitCode::SUCCESS),
        Task::Bench { quick, parts } => xtask::bench::bench(quick, &parts),
        Task::Soak { packets } => xtask::soak::soak(packets),
        Task::Package => xtask::package::package().map(|_| ExitCode::SUCCESS),
        Task::Fuzz { seconds, targets } => xtask::fuzz::fuzz(seconds, &targets),
    };
    outcome.unwrap_or_else(|err| {
        eprintln!("xtask: {err:#}");
        ExitCode::FAILURE
    })
}
