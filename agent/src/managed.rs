//! Managed mode: the policy comes from the control plane over gRPC with
//! mutual TLS. The agent registers, receives its node's snapshots, applies
//! each atomically, persists it, and acknowledges the revision it enforces.
//! With the control plane away it keeps enforcing the last snapshot (also
//! after a restart, from the persisted copy) and closes policy windows on
//! its own; it reconnects with backoff and resynchronises without a gap.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;
use prost::Message as _;
use sha2::{Digest, Sha256};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use wardline_backoff::Backoff;
use wardline_policy::Dataplane;
use wardline_policy::compile::NodeInfo;
use wardline_policy::reference::{FailsafeDirection, FailsafeFlow};
use wardline_proto::v1::{self, agent_api_client::AgentApiClient};
use wardline_tls::{MAX_MESSAGE_BYTES, ServerAddress};

use crate::config::{AgentConfig, ControlPlane};
use crate::runtime::{Enforced, Runtime};
use crate::status::Shared;

const SNAPSHOT_FILE: &str = "snapshot.pb";
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A snapshot handed from the connection task to the enforcing loop, and
/// where the outcome (the generation, or why not) goes back.
struct Incoming {
    snapshot: v1::PolicySnapshot,
    reply: oneshot::Sender<Result<u32, String>>,
}

/// The addresses of the enforced interfaces (for `nodeSelector`).
fn node_addresses(interfaces: &[String]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            if !interfaces.contains(&ifa.interface_name) {
                continue;
            }
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                let ip = v6.ip();
                if ip.segments()[0] & 0xffc0 == 0xfe80 {
                    continue;
                }
                IpAddr::V6(ip)
            } else {
                continue;
            };
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load_snapshot(dir: &Path) -> Option<v1::PolicySnapshot> {
    let bytes = std::fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
    match v1::PolicySnapshot::decode(bytes.as_slice()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("the persisted snapshot is unreadable, ignored: {e}");
            None
        }
    }
}

fn persist_snapshot(dir: &Path, snapshot: &v1::PolicySnapshot) -> std::io::Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    std::fs::write(&tmp, snapshot.encode_to_vec())?;
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))
}

/// Checks a snapshot and enforces it; the previous policy stays in force
/// when it cannot be.
fn apply_snapshot(rt: &mut Runtime, s: &v1::PolicySnapshot, dir: &Path) -> Result<u32, String> {
    if sha256_hex(s.source.as_bytes()) != s.policy_sha256 {
        return Err(format!(
            "revision {}: the source does not match its policy_sha256",
            s.revision
        ));
    }
    let wire = s
        .dataplane
        .as_ref()
        .ok_or_else(|| format!("revision {}: the snapshot has no dataplane", s.revision))?;
    let dp = Dataplane::try_from(wire).map_err(|e| format!("revision {}: {e}", s.revision))?;
    let set = wardline_policy::parse(&s.source)
        .map_err(|e| format!("revision {}: the source does not validate: {e}", s.revision))?;
    let nodes = s
        .nodes
        .iter()
        .map(NodeInfo::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("revision {}: {e}", s.revision))?;
    let next = Enforced {
        sha256: s.policy_sha256.clone(),
        set,
        nodes,
        revision: Some(s.revision),
    };
    let previous = rt.enforced.replace(next);
    match rt.program(Some(dp)) {
        Ok(generation) => {
            if let Err(e) = persist_snapshot(dir, s) {
                tracing::warn!("persisting the snapshot in {}: {e}", dir.display());
            }
            let mut state = rt.state();
            state.reloads_ok += 1;
            state.last_error = None;
            Ok(generation)
        }
        Err(e) => {
            rt.enforced = previous;
            let mut state = rt.state();
            state.reloads_failed += 1;
            state.last_error = Some(format!("{e:#}"));
            Err(format!("revision {}: {e:#}", s.revision))
        }
    }
}

/// Runs the agent in managed mode until SIGTERM or SIGINT.
pub async fn run(mut config: AgentConfig, cp: ControlPlane) -> anyhow::Result<()> {
    let mut endpoints = Vec::new();
    for endpoint in cp.all_endpoints() {
        let address: ServerAddress = endpoint.parse().context("spec.controlPlane.endpoint")?;
        let (host, port) = (address.host(), address.port());
        // The agent's own control-plane connection can never be cut by policy.
        match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => {
                let cidrs: Vec<IpNet> = addrs.map(|a| IpNet::from(a.ip())).collect();
                config.failsafe.push(FailsafeFlow {
                    direction: FailsafeDirection::Egress,
                    protocol: wardline_ebpf_abi::PROTO_TCP,
                    port,
                    cidrs,
                });
            }
            Err(e) => tracing::warn!("resolving {host}: {e}; no failsafe flow for {endpoint}"),
        }
        endpoints.push(address);
    }
    let dir = config.state_dir.join(&config.node);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rt = Runtime::open(config.clone(), "managed")?;
    if let Some(snapshot) = load_snapshot(&dir) {
        match apply_snapshot(&mut rt, &snapshot, &dir) {
            Ok(_) => tracing::info!(
                revision = snapshot.revision,
                "enforcing the persisted snapshot until the control plane answers"
            ),
            Err(e) => tracing::error!("the persisted snapshot cannot be enforced: {e}"),
        }
    }
    let mut server = rt.serve()?;
    let (tx, mut rx) = mpsc::channel::<Incoming>(4);
    let session = Session {
        config: config.clone(),
        cp: cp.clone(),
        endpoints,
        shared: rt.shared.clone(),
        tx,
    };
    tokio::spawn(session.run());

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    let address = config.status_address;
    loop {
        tokio::select! {
            Some(incoming) = rx.recv() => {
                let outcome = apply_snapshot(&mut rt, &incoming.snapshot, &dir);
                if let Err(e) = &outcome {
                    tracing::error!("{e}; the previous policy stays in force");
                }
                let _ = incoming.reply.send(outcome);
            }
            _ = tick.tick() => {
                rt.check_windows();
                rt.check_interfaces();
                rt.check_addresses();
            }
            _ = sweep.tick() => rt.expire_connections(),
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = &mut server => anyhow::bail!("status endpoint {address}: {}", crate::describe_end(r)),
        }
    }
    tracing::info!("stopping; the pinned dataplane keeps enforcing (remove it with --uninstall)");
    Ok(())
}

/// The connection to the control plane, kept up with backoff.
struct Session {
    config: AgentConfig,
    cp: ControlPlane,
    /// The control-plane replicas, tried in turn.
    endpoints: Vec<ServerAddress>,
    shared: Shared,
    tx: mpsc::Sender<Incoming>,
}

impl Session {
    async fn run(self) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut turn = 0usize;
        loop {
            let started = std::time::Instant::now();
            let url = &self.endpoints[turn % self.endpoints.len()];
            turn += 1;
            let result = self.once(url).await;
            self.set_connected(
                false,
                result.as_ref().err().map(|e| format!("{url}: {e:#}")),
            );
            match result {
                Ok(()) => tracing::warn!("control plane {url} closed the stream; reconnecting"),
                Err(e) => tracing::warn!("control plane {url}: {e:#}"),
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            // The next replica at once; a pause only after a whole round.
            if !turn.is_multiple_of(self.endpoints.len()) {
                continue;
            }
            // Its jitter spreads a fleet's reconnects after an outage.
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.control_plane_connected = Some(connected);
        if let Some(e) = error {
            state.control_plane_error = Some(e);
        } else if connected {
            state.control_plane_error = None;
        }
    }

    fn enforced(&self) -> (u64, u32) {
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.revision.unwrap_or(0), state.generation)
    }

    async fn once(&self, url: &ServerAddress) -> anyhow::Result<()> {
        let cp = &self.cp;
        let channel = wardline_tls::client_endpoint(url, &cp.ca_file, &cp.cert_file, &cp.key_file)?
            .tcp_keepalive(Some(Duration::from_secs(10)))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await
            .context("connecting")?;
        let mut client = AgentApiClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let node = self.config.node.clone();
        let registered = client
            .register(v1::RegisterRequest {
                node: node.clone(),
                labels: self.config.labels.clone().into_iter().collect(),
                addresses: node_addresses(&self.config.interfaces)
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            })
            .await
            .context("registering")?
            .into_inner();
        self.set_connected(true, None);
        let (known, _) = self.enforced();
        tracing::info!(node = %node, endpoint = %url, enforced = known, current = registered.revision, "connected to the control plane");
        let mut stream = client
            .watch(v1::WatchRequest {
                node: node.clone(),
                known_revision: known,
            })
            .await
            .context("watching")?
            .into_inner();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(
            registered.heartbeat_seconds.max(1),
        )));
        loop {
            tokio::select! {
                message = stream.message() => {
                    let Some(snapshot) = message.context("receiving a snapshot")? else {
                        return Ok(());
                    };
                    let (revision, sha) = (snapshot.revision, snapshot.policy_sha256.clone());
                    let (reply, outcome) = oneshot::channel();
                    if self.tx.send(Incoming { snapshot, reply }).await.is_err() {
                        return Ok(());
                    }
                    let outcome = outcome.await.unwrap_or_else(|_| Err("the agent is stopping".into()));
                    let (generation, error) = match outcome {
                        Ok(g) => (g, String::new()),
                        Err(e) => (0, e),
                    };
                    client
                        .ack(v1::AckRequest { node: node.clone(), revision, policy_sha256: sha, generation, error })
                        .await
                        .context("acknowledging")?;
                }
                _ = heartbeat.tick() => {
                    let (revision, generation) = self.enforced();
                    client
                        .heartbeat(v1::HeartbeatRequest { node: node.clone(), revision, generation })
                        .await
                        .context("heartbeat")?;
                }
            }
        }
    }
}

/// Where persisted snapshots live, for tests and `--uninstall`.
pub fn snapshot_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join(&config.node).join(SNAPSHOT_FILE)
}
