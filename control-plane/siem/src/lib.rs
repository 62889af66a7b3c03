//! The SIEM export: every flow record a replica stores and every policy
//! revision, as RFC 5424 syslog over TLS (RFC 5425) to a collector, and as
//! JSON lines (flows as OCSF Network Activity, class 4001) for a security
//! lake or a forwarder that tails a file.
//!
//! Each sink has its own bounded queue and task, so that a collector that
//! is away or slow holds up neither the replica nor the other sink: while
//! it is away, messages wait in the queue (65,536); past that they are
//! dropped and counted, and the task reconnects with backoff.
#![forbid(unsafe_code)]

pub mod ocsf;
pub mod syslog;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use wardline_proto::v1;

pub use ocsf::PolicyChange;

/// Messages each sink's queue holds while its collector is away.
const QUEUE: usize = 65_536;
/// How long a connection or a write may take before the collector counts
/// as away.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SiemError {
    #[error("--siem-ca {path}: {message}")]
    Ca { path: String, message: String },
    #[error("--siem-syslog {0:?}: not HOST:PORT")]
    Address(String),
    #[error("--siem-ocsf {path}: {message}")]
    File { path: String, message: String },
}

/// Where a syslog collector listens, and the CA its certificate is checked
/// against (its name must be `host`).
#[derive(Clone, Debug)]
pub struct SyslogTarget {
    pub host: String,
    pub port: u16,
    pub ca: PathBuf,
}

impl SyslogTarget {
    /// `HOST:PORT` (`[v6]:PORT` for an IPv6 address).
    pub fn parse(text: &str, ca: PathBuf) -> Result<SyslogTarget, SiemError> {
        let bad = || SiemError::Address(text.to_owned());
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(SyslogTarget {
            host: host.to_owned(),
            port,
            ca,
        })
    }
}

/// What one sink did.
#[derive(Debug, Default)]
pub struct Counts {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub connected: AtomicBool,
}

/// One message for the sinks.
#[derive(Clone)]
enum Event {
    Flow(Arc<v1::Flow>),
    Change(Arc<PolicyChange>),
    Audit(Arc<AuditEvent>),
}

/// One record of the audit trail, as the control plane hands it on: its
/// time, whether it was a refusal or failure, and the record as JSON.
pub struct AuditEvent {
    pub time: String,
    pub alarming: bool,
    /// Action needed now (emergency access opened): syslog severity
    /// alert, message id `alert`.
    pub alert: bool,
    pub record: serde_json::Value,
}

impl AuditEvent {
    fn to_json(&self, replica: &str) -> serde_json::Value {
        serde_json::json!({
            "event": "audit",
            "product": "Wardline",
            "replica": replica,
            "alert": self.alert,
            "record": self.record,
        })
    }
}

struct Sink {
    tx: mpsc::Sender<Event>,
    counts: Arc<Counts>,
}

impl Sink {
    fn offer(&self, e: Event) {
        if self.tx.try_send(e).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The running export.
pub struct Exporter {
    syslog: Option<Sink>,
    ocsf: Option<Sink>,
}

fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, SiemError> {
    let fail = |message: String| SiemError::Ca {
        path: ca.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| fail(e.to_string()))? {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Exporter {
    /// Starts the sinks configured; `replica` names this replica in every
    /// message. Checks the CA file and opens the JSON lines file first, so
    /// that a bad flag is named at start.
    pub async fn start(
        replica: &str,
        syslog: Option<SyslogTarget>,
        ocsf: Option<PathBuf>,
    ) -> Result<Exporter, SiemError> {
        let replica: Arc<str> = Arc::from(replica);
        let syslog = match syslog {
            Some(target) => {
                let config = client_config(&target.ca)?;
                let server = ServerName::try_from(target.host.clone())
                    .map_err(|_| SiemError::Address(target.host.clone()))?;
                let (tx, rx) = mpsc::channel(QUEUE);
                let counts = Arc::new(Counts::default());
                tokio::spawn(run_syslog(
                    target,
                    server,
                    config,
                    replica.clone(),
                    rx,
                    counts.clone(),
                ));
                Some(Sink { tx, counts })
            }
            None => None,
        };
        let ocsf = match ocsf {
            Some(path) => {
                let file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&path)
                    .await
                    .map_err(|e| SiemError::File {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                let (tx, rx) = mpsc::channel(QUEUE);
                let counts = Arc::new(Counts::default());
                tokio::spawn(run_ocsf(file, path, replica.clone(), rx, counts.clone()));
                Some(Sink { tx, counts })
            }
            None => None,
        };
        Ok(Exporter { syslog, ocsf })
    }

    fn offer(&self, e: Event) {
        for sink in [&self.syslog, &self.ocsf].into_iter().flatten() {
            sink.offer(e.clone());
        }
    }

    /// A stored flow record, to every sink.
    pub fn flow(&self, f: Arc<v1::Flow>) {
        self.offer(Event::Flow(f));
    }

    /// A new policy revision, to every sink.
    pub fn change(&self, c: PolicyChange) {
        self.offer(Event::Change(Arc::new(c)));
    }

    /// A record of the audit trail, as it is appended, to every sink.
    pub fn audit(&self, a: AuditEvent) {
        self.offer(Event::Audit(Arc::new(a)));
    }

    /// Records the replica could not hand to the export at all (its follow
    /// channel lagged): counted as dropped by every sink.
    pub fn lost(&self, n: u64) {
        for sink in [&self.syslog, &self.ocsf].into_iter().flatten() {
            sink.counts.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Per sink (`syslog`, `ocsf`): its counts.
    pub fn counts(&self) -> Vec<(&'static str, Arc<Counts>)> {
        let mut out = Vec::new();
        if let Some(s) = &self.syslog {
            out.push(("syslog", s.counts.clone()));
        }
        if let Some(s) = &self.ocsf {
            out.push(("ocsf", s.counts.clone()));
        }
        out
    }
}

/// The syslog message of an event.
fn syslog_message(e: &Event, replica: &str) -> Vec<u8> {
    let (time, msgid, severity, body) = match e {
        Event::Flow(f) => {
            let time =
                OffsetDateTime::parse(&f.time, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| OffsetDateTime::now_utc());
            let severity = match f.verdict.as_str() {
                "dropped" => syslog::Severity::Warning,
                "audited" => syslog::Severity::Notice,
                _ => syslog::Severity::Informational,
            };
            (
                time,
                "flow",
                severity,
                ocsf::network_activity(f, replica).to_string(),
            )
        }
        Event::Change(c) => (
            OffsetDateTime::parse(&c.time, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
            "policy-change",
            syslog::Severity::Notice,
            c.to_json(replica).to_string(),
        ),
        Event::Audit(a) => (
            OffsetDateTime::parse(&a.time, &time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| OffsetDateTime::now_utc()),
            if a.alert { "alert" } else { "audit" },
            if a.alert {
                syslog::Severity::Alert
            } else if a.alarming {
                syslog::Severity::Warning
            } else {
                syslog::Severity::Notice
            },
            a.to_json(replica).to_string(),
        ),
    };
    syslog::Message {
        time,
        hostname: replica,
        app: "wardline-control-plane",
        procid: std::process::id(),
        msgid,
        severity,
        body: &body,
    }
    .framed()
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(
    target: &SyslogTarget,
    server: &ServerName<'static>,
    config: &Arc<rustls::ClientConfig>,
) -> Result<Tls, String> {
    let tcp = tokio::time::timeout(
        IO_TIMEOUT,
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| "connecting timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    tokio::time::timeout(IO_TIMEOUT, connector.connect(server.clone(), tcp))
        .await
        .map_err(|_| "the TLS handshake timed out".to_owned())?
        .map_err(|e| e.to_string())
}

async fn run_syslog(
    target: SyslogTarget,
    server: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    replica: Arc<str>,
    mut rx: mpsc::Receiver<Event>,
    counts: Arc<Counts>,
) {
    let mut backoff =
        wardline_backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    let mut stream: Option<Tls> = None;
    while let Some(event) = rx.recv().await {
        let message = syslog_message(&event, &replica);
        // Until it is written: a message is lost only when the queue is.
        loop {
            if stream.is_none() {
                match connect(&target, &server, &config).await {
                    Ok(s) => {
                        stream = Some(s);
                        counts.connected.store(true, Ordering::Relaxed);
                        backoff.reset();
                        tracing::info!(host = %target.host, port = target.port, "SIEM syslog connected");
                    }
                    Err(e) => {
                        counts.connected.store(false, Ordering::Relaxed);
                        let wait = backoff.next_delay();
                        tracing::warn!(host = %target.host, port = target.port, "SIEM syslog: {e}; again in {wait:?}");
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { continue };
            let wrote = tokio::time::timeout(IO_TIMEOUT, async {
                s.write_all(&message).await?;
                // Flushed at once when nothing else waits; batched otherwise.
                if rx.is_empty() {
                    s.flush().await?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            match wrote {
                Ok(Ok(())) => {
                    counts.sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Err(e)) => tracing::warn!("SIEM syslog: writing: {e}"),
                Err(_) => tracing::warn!("SIEM syslog: writing timed out"),
            }
            stream = None;
            counts.connected.store(false, Ordering::Relaxed);
        }
    }
}

async fn run_ocsf(
    mut file: tokio::fs::File,
    path: PathBuf,
    replica: Arc<str>,
    mut rx: mpsc::Receiver<Event>,
    counts: Arc<Counts>,
) {
    counts.connected.store(true, Ordering::Relaxed);
    while let Some(event) = rx.recv().await {
        let mut line = match &event {
            Event::Flow(f) => ocsf::network_activity(f, &replica),
            Event::Change(c) => c.to_json(&replica),
            Event::Audit(a) => a.to_json(&replica),
        }
        .to_string();
        line.push('\n');
        match file.write_all(line.as_bytes()).await {
            Ok(()) => {
                counts.sent.fetch_add(1, Ordering::Relaxed);
                if rx.is_empty() {
                    let _ = file.flush().await;
                }
            }
            Err(e) => {
                counts.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("SIEM JSON lines {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_address_is_host_and_port() {
        let t = SyslogTarget::parse("siem.example.net:6514", "ca.pem".into()).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("siem.example.net", 6514));
        let t = SyslogTarget::parse("[2001:db8::5]:6514", "ca.pem".into()).unwrap();
        assert_eq!(t.host, "2001:db8::5");
        for bad in ["siem", "siem:", ":6514", "siem:0", "siem:70000"] {
            assert!(SyslogTarget::parse(bad, "ca.pem".into()).is_err(), "{bad}");
        }
    }
}
