//! The Wardline control plane: both gRPC APIs on one mutual-TLS listener.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wardline_control_plane::registry::Registry;
use wardline_control_plane::server::{self, ControlPlane};
use wardline_store::{self as store, StoreSpec};
use wardline_tls as tls;

/// Exit status for a bad command line or configuration (EX_USAGE).
const EX_USAGE: u8 = 64;

/// Wardline control plane: policy store and distribution to agents.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "WARDLINE_LISTEN", default_value = "0.0.0.0:7443")]
    listen: String,
    /// Store: embedded:/var/lib/wardline/control-plane.redb or
    /// etcd:http://host1:2379,http://host2:2379
    #[arg(
        long,
        env = "WARDLINE_STORE",
        default_value = "embedded:/var/lib/wardline/control-plane.redb"
    )]
    store: String,
    /// Site CA certificate.
    #[arg(long, env = "WARDLINE_CA")]
    ca: PathBuf,
    /// This replica's certificate (role control-plane).
    #[arg(long, env = "WARDLINE_CERT")]
    cert: PathBuf,
    #[arg(long, env = "WARDLINE_KEY")]
    key: PathBuf,
    /// Name of this replica in status reports (default: the listen address).
    #[arg(long, env = "WARDLINE_REPLICA")]
    replica: Option<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WARDLINE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let spec: StoreSpec = match args.store.parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wardline-control-plane: --store {:?}: {e}", args.store);
            return ExitCode::from(EX_USAGE);
        }
    };
    // Checked before anything starts, so that a bad file is named at once.
    if let Err(e) = tls::server_tls(&args.ca, &args.cert, &args.key) {
        eprintln!("wardline-control-plane: {e}");
        return ExitCode::from(EX_USAGE);
    }
    // The key the replica serves with also signs what it sends agents.
    let signer = match wardline_signing::Signer::from_pem_files(&args.cert, &args.key) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wardline-control-plane: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wardline-control-plane: {e}");
            return ExitCode::FAILURE;
        }
    };
    let replica = args.replica.clone().unwrap_or_else(|| args.listen.clone());
    let result: anyhow::Result<()> = runtime.block_on(async move {
        let store = store::open(&spec).await?;
        let verifier = wardline_signing::Verifier::from_ca_file(&args.ca)?;
        let cp = ControlPlane::start(
            Registry::new(store, signer.clone(), verifier),
            replica,
            signer,
        )
        .await?;
        let tls = tls::server_config(&args.ca, &args.cert, &args.key, cp.revocations())?;
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
        };
        server::serve(cp, listener, tls, shutdown).await?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wardline-control-plane: {e:#}");
            ExitCode::FAILURE
        }
    }
}
