//! The Wardline control plane: both gRPC APIs on one mutual-TLS listener.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wardline_control_plane::registry::Registry;
use wardline_control_plane::renewal::Renewal;
use wardline_control_plane::server::{self, ControlPlane};
use wardline_pki::renew::AgentRenewer;
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
    /// The site CA's private key (0600): with it, this replica renews agent
    /// certificates over the channel (each for the agent's own name, for
    /// --agent-certificate-lifetime). Without it agents keep the
    /// certificates operators issued them.
    #[arg(long, env = "WARDLINE_CA_KEY")]
    ca_key: Option<PathBuf>,
    /// Lifetime of a renewed agent certificate (e.g. 24h, 90m). Agents renew
    /// halfway through it.
    #[arg(long, env = "WARDLINE_AGENT_CERTIFICATE_LIFETIME", default_value = "24h",
          value_parser = humantime::parse_duration)]
    agent_certificate_lifetime: std::time::Duration,
    /// Serve Prometheus metrics over plain HTTP at /metrics on this address
    /// (a loopback or management address, e.g. 127.0.0.1:9465). Counts
    /// only: no policy, names or addresses.
    #[arg(long, env = "WARDLINE_METRICS_ADDRESS")]
    metrics_address: Option<std::net::SocketAddr>,
    /// Serve the web dashboard over HTTPS on this address, with this
    /// replica's certificate (e.g. 192.0.2.1:8443). Operators sign in with
    /// `wardctl dashboard login`.
    #[arg(long, env = "WARDLINE_DASHBOARD_ADDRESS")]
    dashboard_address: Option<std::net::SocketAddr>,
    /// The dashboard's address as browsers reach it, for sign-in links
    /// (e.g. https://cp1.example.org:8443). Default: https:// and
    /// --dashboard-address, which must then name one address.
    #[arg(long, env = "WARDLINE_DASHBOARD_URL")]
    dashboard_url: Option<String>,
    /// How long a dashboard session lasts from sign-in, however busy.
    #[arg(long, env = "WARDLINE_DASHBOARD_SESSION", default_value = "8h",
          value_parser = humantime::parse_duration)]
    dashboard_session: std::time::Duration,
    /// A dashboard session without a request for this long ends.
    #[arg(long, env = "WARDLINE_DASHBOARD_IDLE", default_value = "30m",
          value_parser = humantime::parse_duration)]
    dashboard_idle: std::time::Duration,
    /// This replica's flow store file (records sealed with the store key).
    /// Default: flows.redb beside an embedded policy store, or
    /// /var/lib/wardline/control-plane/flows.redb.
    #[arg(long, env = "WARDLINE_FLOW_STORE")]
    flow_store: Option<PathBuf>,
    /// Keep flow records in this PostgreSQL database instead, shared by
    /// the site's replicas (e.g. postgresql://wardline@db.example:5432/wardline).
    /// Over TCP only over TLS, with --flow-postgres-ca; a Unix socket
    /// (host=/run/postgresql) needs none. Not with --flow-store.
    #[arg(long, env = "WARDLINE_FLOW_POSTGRES", value_name = "URL")]
    flow_postgres: Option<String>,
    /// The CA that issued the flow database's certificate (the database is
    /// verified against it by the host in the URL).
    #[arg(long, env = "WARDLINE_FLOW_POSTGRES_CA", requires = "flow_postgres")]
    flow_postgres_ca: Option<PathBuf>,
    /// A client certificate for the flow database's `cert` authentication
    /// (its common name the database user), issued by that CA.
    #[arg(long, env = "WARDLINE_FLOW_POSTGRES_CERT",
          requires_all = ["flow_postgres_ca", "flow_postgres_key"])]
    flow_postgres_cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(
        long,
        env = "WARDLINE_FLOW_POSTGRES_KEY",
        requires = "flow_postgres_cert"
    )]
    flow_postgres_key: Option<PathBuf>,
    /// How long flow records are kept (e.g. 30d, 12h).
    #[arg(long, env = "WARDLINE_FLOW_RETENTION", default_value = "30d",
          value_parser = humantime::parse_duration)]
    flow_retention: std::time::Duration,
    /// The most flow records kept: the oldest minutes go first.
    #[arg(long, env = "WARDLINE_FLOW_MAX_RECORDS", default_value_t = 50_000_000)]
    flow_max_records: u64,
    /// The most flow records one node may add in a minute; past it they
    /// are counted, not stored (one stolen agent key cannot fill the store).
    #[arg(
        long,
        env = "WARDLINE_FLOW_MAX_PER_NODE_MINUTE",
        default_value_t = 120_000
    )]
    flow_max_per_node_minute: u64,
    /// The most devices the inventory holds; past it new addresses are
    /// counted, not added (a flood of forged sources cannot push known
    /// devices out).
    #[arg(long, env = "WARDLINE_FLOW_MAX_DEVICES", default_value_t = 100_000)]
    flow_max_devices: u64,
    /// Send every stored flow record and every policy revision to this
    /// syslog collector, HOST:PORT, as RFC 5424 over TLS (RFC 5425).
    #[arg(long, env = "WARDLINE_SIEM_SYSLOG")]
    siem_syslog: Option<String>,
    /// The CA the collector's certificate is checked against (its name
    /// must be HOST); default: the site CA.
    #[arg(long, env = "WARDLINE_SIEM_CA")]
    siem_ca: Option<PathBuf>,
    /// Append every stored flow record (OCSF Network Activity) and every
    /// policy revision to this file, one JSON object per line.
    #[arg(long, env = "WARDLINE_SIEM_OCSF")]
    siem_ocsf: Option<PathBuf>,
}

/// The shortest renewed certificate: agents renew halfway through it, and
/// each node may renew about once a minute.
const MIN_AGENT_CERTIFICATE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// How often the replica looks at its certificate and key files for a
/// new certificate (SIGHUP: at once).
const CERTIFICATE_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves and signs with a new certificate when its files change (a
/// renewal put in place) or on SIGHUP, without a restart. New files that
/// fail a check change nothing: the certificate in force stays, and the
/// error is logged with the file at fault.
async fn reload_certificate(
    serving: std::sync::Arc<tls::ServingCert>,
    signer: wardline_signing::Signer,
) {
    let (cert, key) = (serving.paths().0.to_owned(), serving.paths().1.to_owned());
    let stamp = || [&cert, &key].map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let mut seen = stamp();
    // Without a SIGHUP handler, file changes still reload it.
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(
                "SIGHUP handler: {e}; the certificate is reloaded when its files change"
            );
            None
        }
    };
    let mut every = tokio::time::interval(CERTIFICATE_CHECK_EVERY);
    loop {
        let hangup = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = hangup => {}
            _ = every.tick() => {
                if stamp() == seen {
                    continue;
                }
            }
        }
        seen = stamp();
        // Both or neither: the signer only once the files pass the TLS checks.
        let fresh = match wardline_signing::Signer::from_pem_files(&cert, &key) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reloading the replica certificate: {e}; the one in force stays");
                continue;
            }
        };
        match serving.reload() {
            Ok(changed) => {
                signer.replace(&fresh);
                let facts = serving.facts();
                tracing::info!(
                    changed,
                    serial = %tls::revocation::serial_hex(&facts.serial),
                    not_after = %tls::expiry::rfc3339(facts.not_after),
                    "replica certificate reloaded"
                );
            }
            Err(e) => {
                tracing::error!("reloading the replica certificate: {e}; the one in force stays")
            }
        }
    }
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
    let flow_path = match (&args.flow_store, &spec) {
        (Some(path), _) => path.clone(),
        (None, StoreSpec::Embedded(path)) => path.with_file_name("flows.redb"),
        (None, _) => PathBuf::from("/var/lib/wardline/control-plane/flows.redb"),
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
    let retention = wardline_flows::Retention {
        max_age: args.flow_retention,
        max_records: args.flow_max_records,
        max_per_node_minute: args.flow_max_per_node_minute,
        max_devices: args.flow_max_devices,
    };
    let opened: Result<std::sync::Arc<dyn wardline_flows::FlowBackend>, _> =
        match (&args.flow_postgres, &args.flow_store) {
            (Some(_), Some(_)) => {
                eprintln!(
                    "wardline-control-plane: --flow-postgres and --flow-store name two flow \
                     stores: give one"
                );
                return ExitCode::from(EX_USAGE);
            }
            (Some(url), None) => {
                let tls = args
                    .flow_postgres_ca
                    .clone()
                    .map(|ca| wardline_flows_postgres::PgTls {
                        ca,
                        client: args
                            .flow_postgres_cert
                            .clone()
                            .zip(args.flow_postgres_key.clone()),
                    });
                wardline_flows_postgres::PgFlowStore::open(
                    url,
                    tls.as_ref(),
                    store_key.clone(),
                    retention,
                )
                .map(|s| std::sync::Arc::new(s) as _)
            }
            (None, _) => wardline_flows::FlowStore::open(&flow_path, store_key.clone(), retention)
                .map(|s| std::sync::Arc::new(s) as _),
        };
    let flows = match opened {
        Ok(f) => f,
        Err(e) => {
            let flag = if args.flow_postgres.is_some() {
                "--flow-postgres"
            } else {
                "--flow-store"
            };
            eprintln!("wardline-control-plane: {flag}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dashboard_url = match (&args.dashboard_address, &args.dashboard_url) {
        (None, None) => None,
        (None, Some(_)) => {
            eprintln!("wardline-control-plane: --dashboard-url needs --dashboard-address");
            return ExitCode::from(EX_USAGE);
        }
        (Some(a), None) if a.ip().is_unspecified() => {
            eprintln!(
                "wardline-control-plane: --dashboard-address {a} names every address; \
                 give --dashboard-url, the address browsers reach"
            );
            return ExitCode::from(EX_USAGE);
        }
        (Some(a), None) => Some(format!("https://{a}")),
        (Some(_), Some(url)) => match url.parse::<tls::ServerAddress>() {
            Ok(_) => Some(url.clone()),
            Err(e) => {
                eprintln!("wardline-control-plane: --dashboard-url: {e}");
                return ExitCode::from(EX_USAGE);
            }
        },
    };
    // Checked before anything starts, so that a bad file is named at once.
    let serving = match tls::ServingCert::load(&ca, &cert, &key) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            eprintln!("wardline-control-plane: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let renewal = match &args.ca_key {
        None => None,
        Some(_) if args.agent_certificate_lifetime < MIN_AGENT_CERTIFICATE_LIFETIME => {
            eprintln!(
                "wardline-control-plane: --agent-certificate-lifetime {}: at least {} (agents renew halfway through it)",
                humantime::format_duration(args.agent_certificate_lifetime),
                humantime::format_duration(MIN_AGENT_CERTIFICATE_LIFETIME)
            );
            return ExitCode::from(EX_USAGE);
        }
        Some(ca_key) => match AgentRenewer::load(&ca, ca_key) {
            Ok(renewer) => Some(Renewal {
                renewer,
                lifetime: args.agent_certificate_lifetime,
            }),
            Err(e) => {
                eprintln!("wardline-control-plane: --ca-key: {e}");
                return ExitCode::from(EX_USAGE);
            }
        },
    };
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
    let siem_syslog = match &args.siem_syslog {
        Some(text) => match wardline_siem::SyslogTarget::parse(
            text,
            args.siem_ca.clone().unwrap_or_else(|| ca.clone()),
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("wardline-control-plane: {e}");
                return ExitCode::from(EX_USAGE);
            }
        },
        None => None,
    };
    let siem_name = replica.clone();
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
        let mut cp = ControlPlane::start(
            Registry::new(store, signer.clone(), verifier),
            replica,
            signer.clone(),
        )
        .await?
        .with_serving(serving.clone())
        .with_flows(flows.clone());
        tokio::spawn(wardline_control_plane::flows::prune(flows));
        if siem_syslog.is_some() || args.siem_ocsf.is_some() {
            let exporter =
                wardline_siem::Exporter::start(&siem_name, siem_syslog, args.siem_ocsf.clone())
                    .await?;
            cp = cp.with_siem(std::sync::Arc::new(exporter));
        }
        if let Some(url) = &dashboard_url {
            cp = cp.with_dashboard(
                url.clone(),
                wardline_dashboard::Settings {
                    session: args.dashboard_session,
                    idle: args.dashboard_idle,
                    ..Default::default()
                },
            );
        }
        if let Some(renewal) = renewal {
            tracing::info!(lifetime = %humantime::format_duration(renewal.lifetime), "renewing agent certificates");
            cp = cp.with_renewal(renewal);
        }
        tokio::spawn(reload_certificate(serving.clone(), signer));
        if let Some(address) = args.metrics_address {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!("--metrics-address {address}: {e}"))?;
            let cp = cp.clone();
            tokio::spawn(async move {
                if let Err(e) = wardline_control_plane::metrics::serve(cp, listener).await {
                    tracing::error!("serving /metrics: {e}");
                }
            });
        }
        if let (Some(address), Some(router)) = (args.dashboard_address, cp.dashboard_router()) {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| anyhow::anyhow!("--dashboard-address {address}: {e}"))?;
            let config = tls::browser_config(serving.clone())?;
            tokio::spawn(async move {
                if let Err(e) = wardline_dashboard::serve(listener, config, router).await {
                    tracing::error!("serving the dashboard: {e}");
                }
            });
        }
        let tls = tls::server_config(&ca, serving, cp.revocations())?;
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
