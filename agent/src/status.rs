//! The status endpoint (`docs/agent.md`): `/healthz`, `/readyz`, `/status`, `/metrics`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use wardline_ebpf_abi as abi;
use wardline_metrics::Exposition;

use crate::enforcer::{Counters, Enforcer};
use crate::events::EventStats;

/// What the agent knows of itself, shared with the endpoint.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub node: String,
    pub mode: &'static str,
    /// SHA-256 of the policy source now enforced; `None` before any.
    pub policy_sha256: Option<String>,
    /// Managed mode: SHA-256 of the compiled tables the control plane sent.
    pub tables_sha256: Option<String>,
    pub generation: u32,
    /// Managed mode: the control plane's revision now enforced.
    pub revision: Option<u64>,
    /// Managed mode: whether the control plane is connected, and its last error.
    pub control_plane_connected: Option<bool>,
    pub control_plane_error: Option<String>,
    pub interfaces: Vec<InterfaceState>,
    /// When the enforced policy was applied (RFC 3339).
    pub policy_applied_at: Option<String>,
    /// The last policy source refused, and why; cleared by the next success.
    pub last_error: Option<String>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Managed mode: the certificate the agent presents to the control plane.
    pub certificate: Option<CertificateState>,
    /// Managed mode: flow records on their way to the control plane.
    pub flows: Option<FlowState>,
    /// Each tracking table's entries and capacity, as the last sweep
    /// counted them.
    pub tables: Vec<(&'static str, usize, u32)>,
}

/// Flow records kept for the control plane, and how their sending goes.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowState {
    /// Bytes waiting on disk, and the bound.
    pub waiting_bytes: u64,
    pub buffer_bytes: u64,
    /// Records dropped because the buffer was full, since it was made.
    pub dropped: u64,
    /// Records the control plane stored, refused as invalid, and did not
    /// store past this node's quota a minute.
    pub sent: u64,
    pub refused: u64,
    pub over_quota: u64,
    /// The last send that failed, and why; cleared by the next success.
    pub error: Option<String>,
}

/// The agent's certificate, and its renewals.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateState {
    /// Hex.
    pub serial: String,
    /// Seconds since the epoch.
    #[serde(skip)]
    pub not_before_seconds: u64,
    #[serde(skip)]
    pub not_after_seconds: u64,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    /// "configured" (the files the configuration names) or "renewed" (a
    /// renewal from the control plane, in the state directory).
    pub source: &'static str,
    /// Set when it nears its expiry or has expired: filled in from
    /// [`CertificateState::warning_now`] each time `/status` answers.
    pub warning: Option<String>,
    pub renewals: u64,
    pub renewal_failures: u64,
    /// The last renewal that failed, and why; cleared by the next success.
    pub renewal_error: Option<String>,
}

impl CertificateState {
    /// The warning due now, if any (`wardline_tls::expiry`).
    pub fn warning_now(&self) -> Option<String> {
        wardline_tls::expiry::warning(
            self.not_before_seconds,
            self.not_after_seconds,
            wardline_tls::expiry::now(),
        )
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceState {
    pub name: String,
    pub enforced: bool,
}

impl AgentState {
    pub fn ready(&self) -> bool {
        self.policy_sha256.is_some()
            && !self.interfaces.is_empty()
            && self.interfaces.iter().all(|i| i.enforced)
    }
}

#[derive(Clone)]
pub struct Shared {
    pub state: Arc<Mutex<AgentState>>,
    pub enforcer: Arc<Mutex<Enforcer>>,
    pub events: Arc<Mutex<EventStats>>,
}

impl Shared {
    fn state(&self) -> AgentState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn counters(&self) -> Counters {
        self.enforcer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .counters()
            .unwrap_or_default()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusBody {
    #[serde(flatten)]
    state: AgentState,
    ready: bool,
    counters: CounterBody,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CounterBody {
    allowed: u64,
    audited: u64,
    dropped: u64,
    lost_events: u64,
    /// Connections that passed but found the tracking table full.
    tracking_insert_failures: u64,
    /// First fragments that passed but found the fragment table full.
    fragment_insert_failures: u64,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Shared>) -> Response {
    let state = s.state();
    if state.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let missing: Vec<&str> = state
            .interfaces
            .iter()
            .filter(|i| !i.enforced)
            .map(|i| i.name.as_str())
            .collect();
        let why = if state.policy_sha256.is_none() {
            "no policy enforced yet".to_owned()
        } else {
            format!("not enforced on: {}", missing.join(", "))
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    }
}

async fn status(State(s): State<Shared>) -> Response {
    let mut state = s.state();
    if let Some(cert) = state.certificate.as_mut() {
        cert.warning = cert.warning_now();
    }
    let c = s.counters();
    let body = StatusBody {
        ready: state.ready(),
        counters: CounterBody {
            allowed: c.by_verdict(abi::Verdict::Allowed),
            audited: c.by_verdict(abi::Verdict::Audited),
            dropped: c.by_verdict(abi::Verdict::Dropped),
            lost_events: c.lost_events,
            tracking_insert_failures: c.tracking_full,
            fragment_insert_failures: c.fragments_full,
        },
        state,
    };
    axum::Json(body).into_response()
}

/// Prometheus text format (`docs/agent.md`), read at scrape time from the
/// kernel counters and the agent's state. No series repeats the node: the
/// scrape target names it.
pub fn render_metrics(state: &AgentState, c: &Counters, events: &EventStats) -> String {
    let mut e = Exposition::new();
    let mut packets = e.counter(
        "wardline_packets_total",
        "Packets judged, by direction, verdict and reason.",
    );
    for (d, direction) in ["ingress", "egress"].iter().enumerate() {
        for r in abi::Reason::ALL {
            let verdict = crate::events::verdict_name(r.verdict() as u8);
            packets.sample(
                &[
                    ("direction", direction),
                    ("verdict", verdict),
                    ("reason", r.name()),
                ],
                c.packets[d][r as usize] as f64,
            );
        }
    }
    e.counter(
        "wardline_events_lost_total",
        "Flow events lost: the kernel's ring buffer had no room for them (source=kernel), or the agent's event reader lagged behind its own sweep (source=sweep).",
    )
    .sample(&[("source", "kernel")], c.lost_events as f64)
    .sample(&[("source", "sweep")], events.sweep_records_lost as f64);
    let mut entries = e.gauge(
        "wardline_tracking_entries",
        "Entries in each tracking table (table=connections, unconfirmed, denied, fragments), as the agent's last sweep (every 5 s) counted them.",
    );
    for (table, n, _) in &state.tables {
        entries.sample(&[("table", table)], *n as f64);
    }
    let mut capacity = e.gauge(
        "wardline_tracking_capacity_entries",
        "How many entries each tracking table holds at most.",
    );
    for (table, _, max) in &state.tables {
        capacity.sample(&[("table", table)], f64::from(*max));
    }
    e.gauge(
        "wardline_long_connections",
        "Long connections whose reported counts the agent remembers, to report the rest at their end.",
    )
    .sample(&[], events.long_connections as f64);
    e.counter(
        "wardline_tracking_insert_failures_total",
        "Passed connections (table=connections) and first fragments (table=fragments) their table had no room for.",
    )
    .sample(&[("table", "connections")], c.tracking_full as f64)
    .sample(&[("table", "fragments")], c.fragments_full as f64);
    let mut flows = e.counter(
        "wardline_flow_events_total",
        "Flow events read, by kind and verdict.",
    );
    for ((kind, verdict), n) in &events.by_kind_verdict {
        flows.sample(&[("kind", kind), ("verdict", verdict)], *n as f64);
    }
    e.gauge(
        "wardline_policy_generation",
        "The policy generation in force.",
    )
    .sample(&[], f64::from(state.generation));
    if let Some(revision) = state.revision {
        e.gauge(
            "wardline_policy_revision",
            "Managed mode: the control plane's policy revision enforced.",
        )
        .sample(&[], revision as f64);
    }
    e.counter("wardline_policy_reloads_total", "Policy loads, by result.")
        .sample(&[("result", "ok")], state.reloads_ok as f64)
        .sample(&[("result", "error")], state.reloads_failed as f64);
    let mut interfaces = e.gauge(
        "wardline_interface_enforced",
        "Whether the policy is enforced on an interface.",
    );
    for i in &state.interfaces {
        interfaces.sample(&[("interface", &i.name)], f64::from(u8::from(i.enforced)));
    }
    if let Some(connected) = state.control_plane_connected {
        e.gauge(
            "wardline_control_plane_connected",
            "Managed mode: whether the control plane is connected.",
        )
        .sample(&[], f64::from(u8::from(connected)));
    }
    if let Some(cert) = &state.certificate {
        e.gauge(
            "wardline_certificate_expiry_timestamp_seconds",
            "When the certificate the agent presents to the control plane expires.",
        )
        .sample(
            &[("serial", &cert.serial), ("source", cert.source)],
            cert.not_after_seconds as f64,
        );
        e.gauge(
            "wardline_certificate_expiring",
            "Whether that certificate is in its warning period (its last quarter of lifetime, at most 30 days) or expired.",
        )
        .sample(&[], f64::from(u8::from(cert.warning_now().is_some())));
        e.counter(
            "wardline_certificate_renewals_total",
            "Certificate renewals, by result.",
        )
        .sample(&[("result", "ok")], cert.renewals as f64)
        .sample(&[("result", "error")], cert.renewal_failures as f64);
    }
    if let Some(flows) = &state.flows {
        e.counter(
            "wardline_flow_records_total",
            "Flow records for the control plane: sent (stored there), refused there as invalid, not stored there past this node's quota a minute, or dropped here with the buffer full.",
        )
        .sample(&[("result", "sent")], flows.sent as f64)
        .sample(&[("result", "refused")], flows.refused as f64)
        .sample(&[("result", "over-quota")], flows.over_quota as f64)
        .sample(&[("result", "dropped")], flows.dropped as f64);
        e.gauge(
            "wardline_flow_buffer_bytes",
            "Bytes of flow records waiting on disk for the control plane.",
        )
        .sample(&[], flows.waiting_bytes as f64);
    }
    e.gauge(
        "wardline_ready",
        "Whether the agent is ready (policy enforced everywhere).",
    )
    .sample(&[], f64::from(u8::from(state.ready())));
    e.encode()
}

async fn metrics(State(s): State<Shared>) -> Response {
    let state = s.state();
    let c = s.counters();
    let events = s.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (
        [(header::CONTENT_TYPE, wardline_metrics::CONTENT_TYPE)],
        render_metrics(&state, &c, &events),
    )
        .into_response()
}

pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

pub async fn serve(address: SocketAddr, shared: Shared) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    tracing::info!(%address, "status endpoint listening");
    serve_router(listener, router(shared)).await
}

/// How long a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a connection stays open, whatever it does.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 32;

/// Serves `router` on `listener`, one request per connection, each held to
/// [`HEADER_TIMEOUT`] for its headers and [`CONNECTION_TIMEOUT`] in all, at
/// most [`MAX_CONNECTIONS`] at once: a local process that opens
/// connections and sends nothing (or a byte a minute) cannot tie the
/// endpoint up, and monitoring keeps its answer.
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Router,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("status endpoint: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            if tokio::time::timeout(CONNECTION_TIMEOUT, connection)
                .await
                .is_err()
            {
                tracing::debug!(
                    "status endpoint: a connection outlived {CONNECTION_TIMEOUT:?}, closed"
                );
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    async fn endpoint() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/healthz", get(|| async { "ok" }));
        tokio::spawn(serve_router(listener, router));
        address
    }

    fn get_healthz(address: SocketAddr) -> String {
        let mut c = std::net::TcpStream::connect(address).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        out
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_silent_client_is_cut_off_and_cannot_starve_the_endpoint() {
        let address = endpoint().await;
        // More idle connections than the endpoint serves at once, each
        // sending half a request line and then nothing.
        let idle: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS + 8)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(address).unwrap();
                c.write_all(b"GET /heal").unwrap();
                c
            })
            .collect();
        // Within the header timeout (and a margin) they are closed...
        let started = std::time::Instant::now();
        let mut first = idle.into_iter().next().unwrap();
        first
            .set_read_timeout(Some(HEADER_TIMEOUT + Duration::from_secs(5)))
            .unwrap();
        let mut buf = Vec::new();
        let read = tokio::task::spawn_blocking(move || first.read_to_end(&mut buf).map(|_| buf))
            .await
            .unwrap();
        assert!(
            read.is_ok(),
            "the idle connection was closed, not left open: {read:?}"
        );
        assert!(started.elapsed() < HEADER_TIMEOUT + Duration::from_secs(4));
        // ...and the endpoint answers again.
        let answer = tokio::task::spawn_blocking(move || get_healthz(address))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
