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
    #[arg(
        long,
        env = "WARDLINE_CA",
        required_unless_present = "generate_store_key"
    )]
    ca: Option<PathBuf>,
    /// This replica's certificate (role control-plane).
    #[arg(
        long,
        env = "WARDLINE_CERT",
        required_unless_present = "generate_store_key"
    )]
    cert: Option<PathBuf>,
    #[arg(
        long,
        env = "WARDLINE_KEY",
        required_unless_present = "generate_store_key"
    )]
    key: Option<PathBuf>,
    /// The site's store key file (0600): every stored value is encrypted
    /// with it (AES-256-GCM). Every replica of a site holds the same file.
    #[arg(
        long,
        env = "WARDLINE_STORE_KEY",
        default_value = "/etc/wardline/store.key"
    )]
    store_key: PathBuf,
    /// Write a new store key file (0600), or append a new current key to an
    /// existing one (rotation), then exit.
    #[arg(long, exclusive = true, value_name = "FILE")]
    generate_store_key: Option<PathBuf>,
    /// Seal every stored value again with the current store key (after a
    /// rotation, or to encrypt a store written before), then exit.
    #[arg(long)]
    rekey: bool,
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
    if let Some(path) = &args.generate_store_key {
        return match store::encrypted::StoreKey::generate(path) {
            Ok(id) => {
                println!(
                    "store key {id} written to {}; it seals new values from the next start",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wardline-control-plane: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let (Some(ca), Some(cert), Some(key)) = (args.ca.clone(), args.cert.clone(), args.key.clone())
    else {
        eprintln!("wardline-control-plane: --ca, --cert and --key are required");
        return ExitCode::from(EX_USAGE);
    };
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
    let store_key = match store::encrypted::StoreKey::load(&args.store_key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!(
                "wardline-control-plane: {e} (create one with `wardline-control-plane --generate-store-key {}`)",
                args.store_key.display()
            );
            return ExitCode::from(EX_USAGE);
        }
    };
    // Checked before anything starts, so that a bad file is named at once.
    if let Err(e) = tls::server_tls(&ca, &cert, &key) {
        eprintln!("wardline-control-plane: {e}");
        return ExitCode::from(EX_USAGE);
    }
    // The key the replica serves with also signs what it sends agents.
    let signer = match wardline_signing::Signer::from_pem_files(&cert, &key) {
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
        let store = std::sync::Arc::new(store::encrypted::EncryptedStore::new(
            store::open(&spec).await?,
            store_key,
        ));
        if args.rekey {
            let n = store.rekey("/wardline/").await?;
            println!("{n} stored values sealed again with the current store key");
            return Ok(());
        }
        let verifier = wardline_signing::Verifier::from_ca_file(&ca)?;
        let cp = ControlPlane::start(
            Registry::new(store, signer.clone(), verifier),
            replica,
            signer,
        )
        .await?;
        let tls = tls::server_config(&ca, &cert, &key, cp.revocations())?;
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
