//! Managed mode: the policy comes from the control plane over gRPC with
//! mutual TLS. The agent registers, receives its node's snapshots, applies
//! each atomically, persists it, and acknowledges the revision it enforces.
//! With the control plane away it keeps enforcing the last snapshot (also
//! after a restart, from the persisted copy) and closes policy windows on
//! its own; it reconnects with backoff and resynchronises without a gap.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use ipnet::IpNet;
use prost::Message as _;
use rustls::pki_types::UnixTime;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use wardline_backoff::Backoff;
use wardline_policy::Schedule;
use wardline_policy::reference::{FailsafeDirection, FailsafeFlow};
use wardline_proto::v1::{self, agent_api_client::AgentApiClient};
use wardline_signing::{Seal, Verifier};
use wardline_tls::{MAX_MESSAGE_BYTES, ServerAddress};

use crate::config::{AgentConfig, ControlPlane};
use crate::runtime::{Enforced, Runtime, Source};
use crate::spool::Spool;
use crate::standalone::sha256_hex;
use crate::status::{FlowState, Shared};

const SNAPSHOT_FILE: &str = "snapshot.pb";
/// The revision and tables hash of the snapshot last enforced.
const ENFORCED_FILE: &str = "enforced";
const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// How long a heartbeat may take before it is given up (not the stream).
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the agent attests what it enforces when nothing changes.
const ATTEST_EVERY: Duration = Duration::from_secs(3600);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A snapshot handed from the connection task to the enforcing loop, and
/// where the outcome (the generation, or why not) goes back.
struct Incoming {
    snapshot: v1::SignedSnapshot,
    reply: oneshot::Sender<Result<u32, Refusal>>,
}

/// Why a snapshot was not enforced.
#[derive(Debug)]
struct Refusal {
    message: String,
    /// A change to tables this agent does not hold (or that does not make
    /// the tables it was signed for): a new Watch gets whole tables.
    resync: bool,
}

impl Refusal {
    fn resync(message: String) -> Self {
        Self {
            message,
            resync: true,
        }
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Self {
            message,
            resync: false,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The last tables received whole or made from a change, checked against
/// their signed hash: what the next change from the stream applies to.
struct Held {
    sha256: String,
    schedule: Schedule,
}

/// Where the whole tables of a snapshot sent as a change come from.
enum Base<'a> {
    /// The tables last received on the channel.
    Held(Option<&'a Held>),
    /// The tables persisted beside the snapshot, named by their hash.
    Disk(&'a Path),
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

/// A signed snapshot, checked: the seal verified, the tables decoded.
struct Opened {
    snapshot: v1::PolicySnapshot,
    schedule: Schedule,
    /// The encoded tables whose SHA-256 the snapshot names.
    tables: Vec<u8>,
    /// The replica that signed it.
    signer: String,
}

/// Checks `signed`: it is sealed by a control-plane replica of the site
/// CA over exactly these bytes, its tables match their hash and decode.
/// The signer's certificate must be valid now (`from_disk`: at the time
/// the snapshot was compiled, so that a replica certificate that expired
/// since does not make the agent drop what it enforced). A snapshot sent as
/// a change takes its base tables from `base`.
fn open_snapshot(
    signed: &v1::SignedSnapshot,
    verifier: &Verifier,
    base: Base<'_>,
) -> Result<Opened, Refusal> {
    let snapshot = v1::PolicySnapshot::decode(signed.snapshot.as_ref())
        .map_err(|e| format!("the snapshot cannot be decoded: {e}"))?;
    let revision = snapshot.revision;
    let at = if matches!(base, Base::Disk(_)) {
        let compiled = OffsetDateTime::parse(&snapshot.compiled_at, &Rfc3339).map_err(|e| {
            format!(
                "revision {revision}: compiled_at {:?} is not RFC 3339: {e}",
                snapshot.compiled_at
            )
        })?;
        UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(compiled.unix_timestamp()).unwrap_or(0),
        ))
    } else {
        UnixTime::now()
    };
    let seal = Seal {
        scheme: u16::try_from(signed.scheme)
            .map_err(|_| format!("signature scheme {} is out of range", signed.scheme))?,
        signature: signed.signature.to_vec(),
        signer: signed.signer.to_vec(),
    };
    let signer = verifier
        .verify(&signed.snapshot, &seal, at)
        .map_err(|e| format!("revision {revision}: the signature is refused: {e}"))?;
    let tables = match &snapshot.delta {
        None => snapshot.tables.clone(),
        Some(delta) => changed_tables(revision, delta, &snapshot.tables_sha256, base)?,
    };
    if sha256_hex(&tables) != snapshot.tables_sha256 {
        let message = format!("revision {revision}: the tables do not match their tables_sha256");
        return Err(if snapshot.delta.is_some() {
            Refusal::resync(format!("{message} (made from a change)"))
        } else {
            message.into()
        });
    }
    let decoded = v1::Tables::decode(tables.as_slice())
        .map_err(|e| format!("revision {revision}: the tables cannot be decoded: {e}"))?;
    let schedule = Schedule::try_from(&decoded).map_err(|e| format!("revision {revision}: {e}"))?;
    Ok(Opened {
        snapshot,
        schedule,
        tables,
        signer: signer.name,
    })
}

/// The whole tables a change makes: from the tables held, when they are
/// the change's base; from the file persisted with the snapshot on disk.
fn changed_tables(
    revision: u64,
    delta: &v1::TablesDelta,
    tables_sha256: &str,
    base: Base<'_>,
) -> Result<Vec<u8>, Refusal> {
    match base {
        Base::Held(held) => {
            let Some(held) = held.filter(|h| h.sha256 == delta.base_tables_sha256) else {
                return Err(Refusal::resync(format!(
                    "revision {revision}: a change to tables {} this agent does not hold",
                    delta.base_tables_sha256
                )));
            };
            let made =
                wardline_proto::delta::apply(&held.schedule, &delta.dataplanes).map_err(|e| {
                    Refusal::resync(format!(
                        "revision {revision}: the change does not fit the tables it names: {e}"
                    ))
                })?;
            Ok(v1::Tables::from(&made).encode_to_vec())
        }
        Base::Disk(dir) => {
            let path = dir.join(tables_file(tables_sha256));
            std::fs::read(&path).map_err(|e| {
                format!(
                    "revision {revision}: the tables it changes to ({}) cannot be read: {e}",
                    path.display()
                )
                .into()
            })
        }
    }
}

/// The file that keeps the whole tables of a snapshot received as a
/// change, named by their SHA-256 (hex, as the snapshot names it).
fn tables_file(sha256: &str) -> String {
    let safe: String = sha256
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(64)
        .collect();
    format!("tables-{safe}.pb")
}

/// The persisted snapshot (the signed bytes as received) and the record of
/// which one this agent last enforced, in the node's state directory. Both
/// files are the agent's alone (0600), written whole (fsync, then rename
/// over the old, then fsync of the directory), so a crash leaves the old
/// file or the new, never half of one.
struct Persisted {
    dir: PathBuf,
}

/// Writes `dir/name` whole or not at all: mode 0600, through a temporary
/// file, synced, renamed over the old one, and the directory synced.
pub(crate) fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // An existing file keeps its mode: make sure.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Which snapshot the agent last enforced: a persisted file that is not
/// this one (rolled back to an older revision, or swapped) is refused.
#[derive(Debug, PartialEq, Eq)]
struct LastEnforced {
    revision: u64,
    tables_sha256: String,
}

impl Persisted {
    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join(ENFORCED_FILE)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        write_private(&self.dir, name, bytes)
    }

    /// Keeps `signed` as the snapshot in force. A snapshot received as a
    /// change is kept with the whole tables it made, in a file of their
    /// own written first: whichever snapshot a crash leaves finds its
    /// tables.
    fn store(&self, signed: &v1::SignedSnapshot, opened: &Opened) -> std::io::Result<()> {
        let keep = opened
            .snapshot
            .delta
            .is_some()
            .then(|| tables_file(&opened.snapshot.tables_sha256));
        if let Some(name) = &keep {
            self.write(name, &opened.tables)?;
        }
        self.write(SNAPSHOT_FILE, &signed.encode_to_vec())?;
        let record = format!(
            "{} {}\n",
            opened.snapshot.revision, opened.snapshot.tables_sha256
        );
        self.write(ENFORCED_FILE, record.as_bytes())?;
        // Tables of snapshots no longer in force.
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("tables-") && name.ends_with(".pb") && Some(&name) != keep.as_ref()
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn last_enforced(&self) -> Result<Option<LastEnforced>, String> {
        let path = self.record_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let mut words = text.split_whitespace();
        match (words.next().map(str::parse), words.next(), words.next()) {
            (Some(Ok(revision)), Some(sha), None) => Ok(Some(LastEnforced {
                revision,
                tables_sha256: sha.to_owned(),
            })),
            _ => Err(format!(
                "{} is not a record of an enforced snapshot",
                path.display()
            )),
        }
    }

    /// The persisted snapshot, checked: signed by a replica, and the one
    /// this agent last enforced. `Ok(None)`: there is none.
    fn load(&self, verifier: &Verifier) -> Result<Option<(v1::SignedSnapshot, Opened)>, String> {
        let path = self.snapshot_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let refused = |why: String| {
            format!(
                "the persisted snapshot {} is refused: {why}",
                path.display()
            )
        };
        let signed = v1::SignedSnapshot::decode(bytes.as_slice())
            .map_err(|e| refused(format!("it cannot be decoded: {e}")))?;
        let opened = open_snapshot(&signed, verifier, Base::Disk(&self.dir))
            .map_err(|e| refused(e.message))?;
        let revision = opened.snapshot.revision;
        match self.last_enforced().map_err(refused)? {
            Some(last) if revision < last.revision => {
                return Err(refused(format!(
                    "it is revision {revision}, older than revision {} this agent last enforced (rolled back?)",
                    last.revision
                )));
            }
            Some(last) if last.tables_sha256 != opened.snapshot.tables_sha256 => {
                return Err(refused(format!(
                    "its tables (sha256 {}) are not the ones this agent last enforced (sha256 {}, revision {})",
                    opened.snapshot.tables_sha256, last.tables_sha256, last.revision
                )));
            }
            Some(_) => {}
            None => tracing::warn!(
                path = %self.record_path().display(),
                "no record of the snapshot last enforced; the persisted one is taken on its signature alone"
            ),
        }
        Ok(Some((signed, opened)))
    }
}

/// Enforces a checked snapshot; the previous policy stays in force when
/// it cannot be. Keeps it on disk once it is enforced.
fn apply_snapshot(
    rt: &mut Runtime,
    signed: &v1::SignedSnapshot,
    opened: Opened,
    persisted: &Persisted,
) -> Result<u32, String> {
    let revision = opened.snapshot.revision;
    let next = Enforced {
        sha256: opened.snapshot.policy_sha256.clone(),
        source: Source::Compiled(opened.schedule.clone()),
        revision: Some(revision),
        tables_sha256: Some(opened.snapshot.tables_sha256.clone()),
    };
    let previous = rt.enforced.replace(next);
    match rt.program() {
        Ok(generation) => {
            if let Err(e) = persisted.store(signed, &opened) {
                tracing::warn!(
                    "persisting the snapshot in {}: {e}",
                    persisted.dir.display()
                );
            }
            tracing::debug!(revision, signer = %opened.signer, "snapshot signature verified");
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
            Err(format!("revision {revision}: {e:#}"))
        }
    }
}

/// Checks a snapshot from the channel, then enforces it. `held`: the
/// tables a change applies to, replaced by these once they check out
/// (enforced or not: they are what the stream sent).
fn receive(
    rt: &mut Runtime,
    signed: &v1::SignedSnapshot,
    verifier: &Verifier,
    persisted: &Persisted,
    held: &mut Option<Held>,
) -> Result<u32, Refusal> {
    match open_snapshot(signed, verifier, Base::Held(held.as_ref())) {
        Ok(opened) => {
            *held = Some(Held {
                sha256: opened.snapshot.tables_sha256.clone(),
                schedule: opened.schedule.clone(),
            });
            apply_snapshot(rt, signed, opened, persisted).map_err(Refusal::from)
        }
        Err(e) => {
            let mut state = rt.state();
            state.reloads_failed += 1;
            state.last_error = Some(e.message.clone());
            Err(e)
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
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("making {} the agent's alone", dir.display()))?;
    let persisted = Persisted { dir };
    let verifier = Verifier::from_ca_file(&cp.ca_file).context("spec.controlPlane.caFile")?;
    let mut rt = Runtime::open(config.clone(), "managed")?;
    let mut held = None;
    match persisted.load(&verifier) {
        Ok(Some((signed, opened))) => {
            let revision = opened.snapshot.revision;
            held = Some(Held {
                sha256: opened.snapshot.tables_sha256.clone(),
                schedule: opened.schedule.clone(),
            });
            match apply_snapshot(&mut rt, &signed, opened, &persisted) {
                Ok(_) => tracing::info!(
                    revision,
                    "enforcing the persisted snapshot until the control plane answers"
                ),
                Err(e) => tracing::error!("the persisted snapshot cannot be enforced: {e}"),
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::error!(
                generation = rt.adopted_generation,
                "{e}; the dataplane pinned in the kernel (if any) stays in force until the control plane answers"
            );
            let mut state = rt.state();
            state.reloads_failed += 1;
            state.last_error = Some(e);
        }
    }
    let spool = crate::spool::Spool::open(&persisted.dir.join("flows"), config.flow_buffer_bytes)
        .with_context(|| {
        format!(
            "the flow buffer in {}",
            persisted.dir.join("flows").display()
        )
    })?;
    let spool = Arc::new(Mutex::new(spool));
    rt.send_flows_to(spool.clone());
    let mut server = rt.serve()?;
    let (tx, mut rx) = mpsc::channel::<Incoming>(4);
    let session = Session {
        config: config.clone(),
        cp: cp.clone(),
        endpoints,
        shared: rt.shared.clone(),
        tx,
        dir: persisted.dir.clone(),
        next_renewal: std::sync::Mutex::new(None),
        spool: spool.clone(),
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
                let outcome = receive(&mut rt, &incoming.snapshot, &verifier, &persisted, &mut held);
                if let Err(e) = &outcome {
                    tracing::error!("{e}; the previous policy stays in force");
                }
                let _ = incoming.reply.send(outcome);
            }
            _ = tick.tick() => {
                // What waits for the control plane, also while it is away.
                update_flow_state(&rt.shared, &spool, |_| {});
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
    /// The node's state directory (renewed certificate, snapshot).
    dir: PathBuf,
    /// No renewal before this, after one failed.
    next_renewal: std::sync::Mutex<Option<std::time::Instant>>,
    /// Flow records waiting for the control plane.
    spool: Arc<Mutex<Spool>>,
}

/// Aborts a task when dropped: the flow sender ends with its connection.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long the flow sender waits when nothing is waiting, and after a
/// failed send.
const FLOWS_IDLE: Duration = Duration::from_millis(250);
const FLOWS_RETRY: Duration = Duration::from_secs(2);

/// Sends the spool's records, oldest first, one segment per batch, each
/// removed once the control plane stored it; runs for one connection.
async fn send_flows(
    mut client: AgentApiClient<tonic::transport::Channel>,
    node: String,
    spool: Arc<Mutex<Spool>>,
    shared: Shared,
) {
    let lock = |spool: &Arc<Mutex<Spool>>| {
        spool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_segment()
    };
    loop {
        let segment = match lock(&spool) {
            Ok(Some(s)) => s,
            Ok(None) => {
                update_flow_state(&shared, &spool, |_| {});
                tokio::time::sleep(FLOWS_IDLE).await;
                continue;
            }
            Err(e) => {
                tracing::warn!("reading the flow buffer: {e}");
                tokio::time::sleep(FLOWS_RETRY).await;
                continue;
            }
        };
        let (dropped, buffer) = {
            let s = spool
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (s.dropped(), s.buffer)
        };
        let batch = v1::FlowBatch {
            node: node.clone(),
            flows: segment.flows.clone(),
            dropped,
            buffer,
        };
        match client.report_flows(batch).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                if answer.refused > 0 {
                    tracing::warn!(refused = answer.refused, first = %answer.first_refusal, "the control plane refused flow records");
                }
                if answer.over_quota > 0 {
                    tracing::warn!(
                        over_quota = answer.over_quota,
                        "the control plane stored no more of this node's flow records this minute"
                    );
                }
                if let Err(e) = spool
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .sent(&segment)
                {
                    tracing::warn!("removing sent flow records: {e}");
                }
                update_flow_state(&shared, &spool, |f| {
                    f.sent += u64::from(answer.accepted);
                    f.refused += u64::from(answer.refused);
                    f.over_quota += u64::from(answer.over_quota);
                    f.error = None;
                });
            }
            Err(status) => {
                tracing::warn!("sending flow records: {}", status.message());
                update_flow_state(&shared, &spool, |f| {
                    f.error = Some(status.message().to_owned());
                });
                tokio::time::sleep(FLOWS_RETRY).await;
            }
        }
    }
}

/// The flow buffer's figures in `/status`, and `change`.
fn update_flow_state(
    shared: &Shared,
    spool: &Arc<Mutex<Spool>>,
    change: impl FnOnce(&mut FlowState),
) {
    let (waiting, dropped, bound) = {
        let s = spool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (s.bytes(), s.dropped(), s.limit())
    };
    let mut state = shared
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let flows = state.flows.get_or_insert_with(FlowState::default);
    flows.waiting_bytes = waiting;
    flows.buffer_bytes = bound;
    flows.dropped = dropped;
    change(flows);
}

/// How a connection to the control plane ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The control plane closed the stream.
    Closed,
    /// The certificate was renewed: reconnect at once with the new one.
    Renewed,
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
                Ok(Ended::Renewed) => {
                    // The same replica, at once, with the new certificate.
                    turn -= 1;
                    continue;
                }
                Ok(Ended::Closed) => {
                    tracing::warn!("control plane {url} closed the stream; reconnecting")
                }
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

    /// Signs and sends what the kernel enforces now (`why`: applied or
    /// periodic). A failure is logged: enforcement never waits on it.
    async fn attest(
        &self,
        client: &mut AgentApiClient<tonic::transport::Channel>,
        signer: &wardline_signing::Signer,
        why: &str,
    ) {
        let statement = {
            let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(revision) = state.revision else {
                return;
            };
            v1::AttestationStatement {
                node: self.config.node.clone(),
                revision,
                generation: state.generation,
                tables_sha256: state.tables_sha256.clone().unwrap_or_default(),
                policy_sha256: state.policy_sha256.clone().unwrap_or_default(),
                time: OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
                why: why.to_owned(),
            }
        };
        let bytes = statement.encode_to_vec();
        let seal = match signer.sign(&bytes) {
            Ok(seal) => seal,
            Err(e) => {
                tracing::warn!("signing an attestation: {e}");
                return;
            }
        };
        let sent = client
            .attest(v1::Attestation {
                statement: bytes,
                scheme: u32::from(seal.scheme),
                signature: seal.signature,
                signer: seal.signer,
            })
            .await;
        match sent {
            Ok(_) => tracing::debug!(revision = statement.revision, why, "attested"),
            Err(e) => tracing::warn!("attesting revision {}: {}", statement.revision, e.message()),
        }
    }

    fn enforced(&self) -> (u64, u32) {
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.revision.unwrap_or(0), state.generation)
    }

    fn certificate_state(&self, change: impl FnOnce(&mut crate::status::CertificateState)) {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cert) = state.certificate.as_mut() {
            change(cert);
        }
    }

    /// Renews the certificate over `client`'s connection and keeps it.
    async fn renew(
        &self,
        client: &mut AgentApiClient<tonic::transport::Channel>,
    ) -> anyhow::Result<crate::renewal::Presented> {
        let node = &self.config.node;
        let (key, csr) = crate::renewal::request(node)?;
        let renewed = client
            .renew(v1::RenewRequest {
                node: node.clone(),
                csr,
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))
            .context("renewing the certificate")?
            .into_inner();
        crate::renewal::keep(
            &self.cp.ca_file,
            &self.dir,
            node,
            &renewed.certificate_pem,
            &key,
        )
    }

    /// Renews the certificate when it is due and no failure holds it back.
    /// `true`: renewed, reconnect with it.
    async fn renew_if_due(
        &self,
        client: &mut AgentApiClient<tonic::transport::Channel>,
        presented: &crate::renewal::Presented,
        site_lifetime: u64,
    ) -> bool {
        if !presented.due(site_lifetime, wardline_tls::expiry::now()) {
            return false;
        }
        let now = std::time::Instant::now();
        {
            let next = self.next_renewal.lock().unwrap_or_else(|p| p.into_inner());
            if next.is_some_and(|at| now < at) {
                return false;
            }
        }
        match self.renew(client).await {
            Ok(new) => {
                tracing::info!(
                    serial = %wardline_tls::revocation::serial_hex(&new.facts.serial),
                    not_after = %wardline_tls::expiry::rfc3339(new.facts.not_after),
                    "certificate renewed; reconnecting with it"
                );
                self.certificate_state(|c| {
                    c.renewals += 1;
                    c.renewal_error = None;
                });
                *self.next_renewal.lock().unwrap_or_else(|p| p.into_inner()) = None;
                true
            }
            Err(e) => {
                tracing::warn!(
                    "{e:#}; the certificate in force stays, retrying in {:?}",
                    crate::renewal::RETRY_AFTER
                );
                self.certificate_state(|c| {
                    c.renewal_failures += 1;
                    c.renewal_error = Some(format!("{e:#}"));
                });
                *self.next_renewal.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(now + crate::renewal::RETRY_AFTER);
                false
            }
        }
    }

    async fn once(&self, url: &ServerAddress) -> anyhow::Result<Ended> {
        let cp = &self.cp;
        let presented = crate::renewal::choose(cp, &self.dir, &self.config.node)?;
        {
            let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            let cert = presented.state(state.certificate.as_ref());
            if let Some(warning) = cert.warning_now() {
                tracing::warn!(serial = %cert.serial, "the agent's certificate {warning}");
            }
            state.certificate = Some(cert);
        }
        let channel =
            wardline_tls::client_endpoint(url, &cp.ca_file, &presented.cert, &presented.key)?
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
        let _flows = AbortOnDrop(tokio::spawn(send_flows(
            client.clone(),
            node.clone(),
            self.spool.clone(),
            self.shared.clone(),
        )));
        let mut heartbeat = tokio::time::interval(Duration::from_secs(u64::from(
            registered.heartbeat_seconds.max(1),
        )));
        // Attestations are signed with the key this connection presents.
        let attester = wardline_signing::Signer::from_pem_files(&presented.cert, &presented.key)
            .context("loading the key attestations are signed with")?;
        let mut attested = tokio::time::Instant::now();
        self.attest(&mut client, &attester, "periodic").await;
        loop {
            tokio::select! {
                message = stream.message() => {
                    let Some(snapshot) = message.context("receiving a snapshot")? else {
                        return Ok(Ended::Closed);
                    };
                    // What the ack names; the enforcing loop checks the seal.
                    let inner = v1::PolicySnapshot::decode(snapshot.snapshot.as_ref()).unwrap_or_default();
                    let (revision, sha, tables) = (inner.revision, inner.policy_sha256, inner.tables_sha256);
                    let (reply, outcome) = oneshot::channel();
                    if self.tx.send(Incoming { snapshot, reply }).await.is_err() {
                        return Ok(Ended::Closed);
                    }
                    let outcome = outcome.await.unwrap_or_else(|_| Err("the agent is stopping".to_owned().into()));
                    let (generation, error, resync) = match outcome {
                        Ok(g) => (g, String::new(), false),
                        Err(e) => (0, e.message, e.resync),
                    };
                    let applied = error.is_empty();
                    client
                        .ack(v1::AckRequest { node: node.clone(), revision, policy_sha256: sha, generation, error, tables_sha256: tables })
                        .await
                        .context("acknowledging")?;
                    if applied {
                        self.attest(&mut client, &attester, "applied").await;
                        attested = tokio::time::Instant::now();
                    }
                    if resync {
                        // A change to tables this agent does not hold: a
                        // new stream starts with whole tables.
                        tracing::warn!(node = %node, "asking for whole tables");
                        stream = client
                            .watch(v1::WatchRequest { node: node.clone(), known_revision: 0 })
                            .await
                            .context("watching again")?
                            .into_inner();
                    }
                }
                _ = heartbeat.tick() => {
                    if self.renew_if_due(&mut client, &presented, registered.certificate_lifetime_seconds).await {
                        return Ok(Ended::Renewed);
                    }
                    if attested.elapsed() >= ATTEST_EVERY {
                        self.attest(&mut client, &attester, "periodic").await;
                        attested = tokio::time::Instant::now();
                    }
                    // A heartbeat that fails or hangs is reported, never a
                    // reason to drop the snapshot stream: policy delivery
                    // goes on over it.
                    let (revision, generation) = self.enforced();
                    let beat = client.heartbeat(v1::HeartbeatRequest { node: node.clone(), revision, generation });
                    match tokio::time::timeout(HEARTBEAT_TIMEOUT, beat).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(status)) if status.code() == tonic::Code::Unauthenticated
                            || status.code() == tonic::Code::PermissionDenied => {
                            // Revoked or removed: the stream ends too.
                            anyhow::bail!("heartbeat refused: {}", status.message());
                        }
                        Ok(Err(status)) => tracing::warn!("heartbeat failed: {}", status.message()),
                        Err(_) => tracing::warn!("heartbeat timed out after {HEARTBEAT_TIMEOUT:?}"),
                    }
                }
            }
        }
    }
}

/// Where persisted snapshots live, for tests and `--uninstall`.
pub fn snapshot_path(config: &AgentConfig) -> PathBuf {
    config.state_dir.join(&config.node).join(SNAPSHOT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    use wardline_policy::CompileOptions;
    use wardline_policy::compile::NodeInfo;

    const POLICY: &str = "\
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr-db}
spec: {nodeSelector: {matchLabels: {role: ehr-db}}}
---
apiVersion: wardline/v1
kind: Node
metadata: {name: db-1, labels: {role: ehr-db}}
spec: {addresses: [\"198.18.41.0/24\"]}
";

    fn schedule(addresses: &[&str]) -> Schedule {
        let set = wardline_policy::parse(POLICY).unwrap();
        let nodes = vec![NodeInfo {
            name: "db-1".into(),
            labels: Default::default(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }];
        let options = CompileOptions {
            nodes,
            ..CompileOptions::at(OffsetDateTime::now_utc())
        };
        Schedule::compile(&set, &options, 3).unwrap()
    }

    fn delta(base: &Schedule, next: &Schedule) -> v1::TablesDelta {
        v1::TablesDelta {
            base_tables_sha256: sha256_hex(&v1::Tables::from(base).encode_to_vec()),
            dataplanes: wardline_proto::delta::diff(base, next).unwrap(),
        }
    }

    #[test]
    fn a_change_is_made_only_from_the_tables_it_names() {
        let base = schedule(&["198.18.41.10"]);
        let next = schedule(&["198.18.41.11"]);
        let change = delta(&base, &next);
        let want = v1::Tables::from(&next).encode_to_vec();
        let held = Held {
            sha256: change.base_tables_sha256.clone(),
            schedule: base.clone(),
        };
        let made = changed_tables(7, &change, "", Base::Held(Some(&held))).unwrap();
        assert_eq!(made, want);

        // No tables held (a restart), or other ones: a new stream is asked
        // for, and the message names the tables the change is to.
        for held in [
            None,
            Some(Held {
                sha256: sha256_hex(&want),
                schedule: next.clone(),
            }),
        ] {
            let refused = changed_tables(7, &change, "", Base::Held(held.as_ref())).unwrap_err();
            assert!(refused.resync, "{refused}");
            assert!(
                refused.message.contains(&change.base_tables_sha256),
                "{refused}"
            );
        }

        // Tables held under the right name that are not those tables (the
        // change removes a prefix they lack): refused, and resynced.
        let liar = Held {
            sha256: change.base_tables_sha256.clone(),
            schedule: schedule(&["198.18.41.99"]),
        };
        let refused = changed_tables(7, &change, "", Base::Held(Some(&liar))).unwrap_err();
        assert!(refused.resync, "{refused}");
        assert!(refused.message.contains("does not fit"), "{refused}");
    }

    #[test]
    fn a_persisted_change_without_its_tables_file_is_refused_by_path() {
        let dir =
            std::env::temp_dir().join(format!("wardline-agent-tables-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let change = delta(&schedule(&["198.18.41.10"]), &schedule(&[]));
        let sha = "ab".repeat(32);
        let refused = changed_tables(3, &change, &sha, Base::Disk(&dir)).unwrap_err();
        assert!(!refused.resync);
        assert!(refused.message.contains(&tables_file(&sha)), "{refused}");
        // A name that is not a hash cannot reach outside the directory.
        assert_eq!(tables_file("../../etc/passwd"), "tables-ecad.pb");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
