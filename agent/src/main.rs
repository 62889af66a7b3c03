use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wardline_agent::config::{self, AgentConfig, Mode};
use wardline_agent::{enforcer, managed, standalone};

/// Exit status for a bad configuration (sysexits' EX_USAGE).
const EX_USAGE: u8 = 64;

/// Wardline agent: enforces segmentation policy in the kernel on this host.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The agent's configuration (an AgentConfig document).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Remove this node's pinned programs, links and maps, ending enforcement.
    #[arg(long)]
    uninstall: bool,
    /// Validate the configuration and the policy file, then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env(config::env::LOG).unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wardline-agent: bad configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.uninstall {
        return match enforcer::uninstall(&config.bpffs, &config.node) {
            Ok(true) => {
                eprintln!(
                    "wardline-agent: removed the pinned dataplane of node {}",
                    config.node
                );
                ExitCode::SUCCESS
            }
            Ok(false) => {
                eprintln!("wardline-agent: nothing pinned for node {}", config.node);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wardline-agent: uninstall failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let (true, Mode::Managed(_)) = (args.check, &config.mode) {
        println!("{}: valid (managed mode)", args.config.display());
        return ExitCode::SUCCESS;
    }
    let policy_file = match &config.mode {
        Mode::Standalone { policy_file } => Some(policy_file.clone()),
        Mode::Managed(_) => None,
    };
    if let (true, Some(policy_file)) = (args.check, &policy_file) {
        return match std::fs::read_to_string(policy_file)
            .map_err(|e| e.to_string())
            .and_then(|t| wardline_policy::parse(&t).map_err(|e| e.to_string()))
        {
            Ok(set) => {
                println!(
                    "{}: {} segments, {} policies: valid",
                    policy_file.display(),
                    set.segments.len(),
                    set.policies.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wardline-agent: {}: {e}", policy_file.display());
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wardline-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async move {
        match (policy_file, config.mode.clone()) {
            (Some(file), _) => standalone::run(config, file).await,
            (None, Mode::Managed(cp)) => managed::run(config, cp).await,
            (None, Mode::Standalone { .. }) => unreachable!("standalone mode has a policy file"),
        }
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wardline-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
