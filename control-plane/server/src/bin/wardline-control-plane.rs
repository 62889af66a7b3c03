//! The Wardline control plane: both gRPC APIs on one mutual-TLS listener.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wardline_control_plane::registry::Registry;
use wardline_control_plane::server::{self, ControlPlane};
use wardline_store::{self as store, EtcdTls, StoreSpec};
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
    /// etcd:https://host1:2379,https://host2:2379 (etcd only over TLS, with
    /// --etcd-ca, --etcd-cert and --etcd-key)
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
    /// etcd's CA certificate, which issued the etcd members' certificates
    /// and the etcd client certificate (not the site CA).
    #[arg(long, env = "WARDLINE_ETCD_CA", requires_all = ["etcd_cert", "etcd_key"])]
    etcd_ca: Option<PathBuf>,
    /// This replica's etcd client certificate, issued by the etcd CA.
    #[arg(long, env = "WARDLINE_ETCD_CERT", requires_all = ["etcd_ca", "etcd_key"])]
    etcd_cert: Option<PathBuf>,
    /// The etcd client certificate's private key.
    #[arg(long, env = "WARDLINE_ETCD_KEY", requires_all = ["etcd_ca", "etcd_cert"])]
    etcd_key: Option<PathBuf>,
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
    // clap makes the three etcd files come together or not at all.
    let spec = match (
        spec,
        args.etcd_ca.clone(),
        args.etcd_cert.clone(),
        args.etcd_key.clone(),
    ) {
        (spec @ StoreSpec::Etcd { .. }, Some(ca), Some(cert), Some(key)) => {
            spec.with_etcd_tls(EtcdTls { ca, cert, key })
        }
        (StoreSpec::Etcd { .. }, ..) => {
            eprintln!(
                "wardline-control-plane: --store {:?}: etcd is reached only over TLS with a \
                 client certificate: give --etcd-ca, --etcd-cert and --etcd-key",
                args.store
            );
            return ExitCode::from(EX_USAGE);
        }
        (StoreSpec::Embedded(_), Some(_), ..) => {
            eprintln!(
                "wardline-control-plane: --etcd-ca/--etcd-cert/--etcd-key are for an etcd \
                 store, but --store is {:?}",
                args.store
            );
            return ExitCode::from(EX_USAGE);
        }
        (spec @ StoreSpec::Embedded(_), ..) => spec,
    };
    let tls = match tls::server_tls(&args.ca, &args.cert, &args.key) {
        Ok(t) => t,
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
        let cp = ControlPlane::start(Registry::new(store), replica).await?;
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
