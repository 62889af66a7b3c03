//! Policy propagation: from `wardctl apply` to every agent's
//! acknowledgement, with one real managed agent and a fleet of simulated
//! ones on real gRPC streams; the control plane's memory per agent; and the
//! time to program 100,000 rules into the kernel.
//!
//! The simulated agents are tonic clients in this process, each with its
//! own agent certificate of the site CA, connected over mutual TLS to the
//! replica on the management network (their runtime's threads live in the
//! management namespace). Each does what the agent's session does, minus
//! the kernel: Register, Watch, Ack every snapshot at once, and Heartbeat at
//! the interval the control plane asks for.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde::Serialize;
use serde_json::Value;
use tonic::transport::{ClientTlsConfig, Endpoint};
use wardline_pki as pki;
use wardline_proto::v1::{self, agent_api_client::AgentApiClient};
use wardline_tls::Role;
use wardline_tls::{MAX_MESSAGE_BYTES, client_tls};

use crate::agent::{Agent, BPFFS};
use crate::bench::stats::Summary;
use crate::bench::{Budget, Results, Section, Target, packet, procfs};
use crate::netns::Netns;
use crate::site::{PORT, REPLICAS, Site};
use crate::{addr, link_up};

/// The most open files the bench process (and the replica it starts) may
/// hold: far above two per simulated agent.
const NOFILE: u64 = 65_536;
/// Simulated agents connecting at the same time.
const CONNECT_CONCURRENCY: usize = 32;
/// How long a whole fleet may take to connect and take its first snapshot.
const CONNECT_WITHIN: Duration = Duration::from_secs(180);
/// How long every agent may take to acknowledge one revision.
const ACK_WITHIN: Duration = Duration::from_secs(60);

/// The policy of round `k`: the hospital example with workstation
/// 198.18.20.`k` quarantined (a /32 in a segment no policy names), as the
/// lab does it; every round changes what each node enforces.
/// The node whose address the node-change rounds move: a pump server the
/// policy declares ([`policy`]), registered by the bench.
const MOVER: &str = "sim-mover";

fn policy(k: usize) -> String {
    format!(
        "{}\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: quarantine}}\nspec: {{cidrs: [\"198.18.20.{}/32\"]}}\n\
         ---\napiVersion: wardline/v1\nkind: Node\nmetadata: {{name: {MOVER}, labels: {{role: pump-server}}}}\nspec: {{addresses: [\"198.18.42.0/24\"]}}\n",
        crate::lab::POLICY,
        100 + k % 150
    )
}

/// One acknowledgement seen by a simulated agent.
#[derive(Clone, Copy)]
struct Acked {
    received: Instant,
    acked: Instant,
    /// The snapshot's encoded size.
    bytes: usize,
}

/// What the simulated agents report back.
#[derive(Default)]
struct Fleet {
    /// Revision -> every simulated agent's acknowledgement of it.
    acks: Mutex<BTreeMap<u64, Vec<Acked>>>,
    /// Tables (SHA-256) -> every simulated agent's acknowledgement of
    /// them: a node change moves the tables, not the revision.
    by_tables: Mutex<BTreeMap<String, Vec<Acked>>>,
    /// Each simulated agent's last acknowledged revision.
    latest: Mutex<Vec<u64>>,
    watching: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

impl Fleet {
    fn record(&self, id: usize, revision: u64, tables: &str, a: Acked) {
        self.by_tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tables.to_owned())
            .or_default()
            .push(a);
        self.acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(revision)
            .or_default()
            .push(a);
        let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        if latest.len() <= id {
            latest.resize(id + 1, 0);
        }
        latest[id] = latest[id].max(revision);
    }

    fn acks_of_tables(&self, tables: &str) -> Vec<Acked> {
        self.by_tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tables)
            .cloned()
            .unwrap_or_default()
    }

    fn acks_of(&self, revision: u64) -> Vec<Acked> {
        self.acks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&revision)
            .cloned()
            .unwrap_or_default()
    }

    /// How many of the first `n` agents have acknowledged `revision` or later.
    fn caught_up(&self, n: usize, revision: u64) -> usize {
        let latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
        latest.iter().take(n).filter(|r| **r >= revision).count()
    }

    fn check(&self) -> anyhow::Result<()> {
        let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(first) = errors.first() {
            bail!("{} simulated agent(s) failed; first: {first}", errors.len());
        }
        Ok(())
    }
}

/// A simulated agent's identity and TLS settings.
struct SimAgent {
    id: usize,
    node: String,
    address: String,
    tls: ClientTlsConfig,
}

async fn sim_agent(me: SimAgent, fleet: Arc<Fleet>, gate: Arc<tokio::sync::Semaphore>) {
    let node = me.node.clone();
    if let Err(e) = sim_agent_session(me, &fleet, gate).await {
        fleet
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("{node}: {e:#}"));
    }
}

async fn sim_agent_session(
    me: SimAgent,
    fleet: &Fleet,
    gate: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    let permit = gate.acquire_owned().await?;
    let channel = Endpoint::from_shared(format!("https://{}:{PORT}", REPLICAS[0]))?
        .tls_config(me.tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connecting")?;
    let mut client = AgentApiClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let registered = client
        .register(v1::RegisterRequest {
            node: me.node.clone(),
            labels: [
                ("role".to_owned(), "ward-host".to_owned()),
                ("bench".to_owned(), "propagation".to_owned()),
            ]
            .into(),
            addresses: vec![me.address.clone()],
        })
        .await
        .context("registering")?
        .into_inner();
    let mut stream = client
        .watch(v1::WatchRequest {
            node: me.node.clone(),
            known_revision: 0,
        })
        .await
        .context("watching")?
        .into_inner();
    drop(permit);
    fleet.watching.fetch_add(1, Ordering::Relaxed);
    // Heartbeats spread over the interval, as a fleet started at different
    // times would send them.
    let every = Duration::from_secs(u64::from(registered.heartbeat_seconds.max(1)));
    let phase = every.mul_f64((me.id % 1000) as f64 / 1000.0);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + phase, every);
    let mut enforced = 0;
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(signed) = message.context("receiving a snapshot")? else {
                    return Ok(());
                };
                let received = Instant::now();
                let bytes = prost::Message::encoded_len(&signed);
                // A simulated agent reads the snapshot but does not check
                // its seal or program tables: the bench measures the
                // control plane's side.
                let snapshot: v1::PolicySnapshot = prost::Message::decode(signed.snapshot.as_ref())
                    .context("decoding a snapshot")?;
                client
                    .ack(v1::AckRequest {
                        node: me.node.clone(),
                        revision: snapshot.revision,
                        policy_sha256: snapshot.policy_sha256.clone(),
                        generation: 1,
                        error: String::new(),
                        tables_sha256: snapshot.tables_sha256.clone(),
                    })
                    .await
                    .context("acknowledging")?;
                let acked = Instant::now();
                enforced = snapshot.revision;
                fleet.record(me.id, snapshot.revision, &snapshot.tables_sha256, Acked { received, acked, bytes });
            }
            _ = heartbeat.tick() => {
                client
                    .heartbeat(v1::HeartbeatRequest { node: me.node.clone(), revision: enforced, generation: 1 })
                    .await
                    .context("heartbeat")?;
            }
        }
    }
}

/// How a fleet comes back after its replica restarts.
#[derive(Default)]
struct Comeback {
    /// Per agent: when its latest Watch delivered a snapshot.
    watching_since: Mutex<Vec<Option<Instant>>>,
    attempts: AtomicUsize,
    failures: AtomicUsize,
}

/// A simulated agent that, like the real one, reconnects with the agent's
/// backoff (full jitter, 200 ms doubling to 10 s) whenever its stream ends.
async fn returning_agent(me: SimAgent, index: usize, back: Arc<Comeback>) {
    let mut backoff =
        wardline_backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        back.attempts.fetch_add(1, Ordering::Relaxed);
        match returning_session(&me, index, &back).await {
            Ok(true) => backoff.reset(),
            Ok(false) | Err(_) => {
                back.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// One connection: register, watch, note the first snapshot, and follow
/// the stream until it ends. `Ok(true)` once a snapshot came.
async fn returning_session(me: &SimAgent, index: usize, back: &Comeback) -> anyhow::Result<bool> {
    let channel = Endpoint::from_shared(format!("https://{}:{PORT}", REPLICAS[0]))?
        .tls_config(me.tls.clone())?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await?;
    let mut client = AgentApiClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    client
        .register(v1::RegisterRequest {
            node: me.node.clone(),
            labels: Default::default(),
            addresses: vec![me.address.clone()],
        })
        .await?;
    let mut stream = client
        .watch(v1::WatchRequest {
            node: me.node.clone(),
            known_revision: 0,
        })
        .await?
        .into_inner();
    let mut got = false;
    while let Some(_snapshot) = stream.message().await? {
        if !got {
            got = true;
            back.watching_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner)[index] = Some(Instant::now());
        }
    }
    Ok(got)
}

/// What the restart measured.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReconnectFigures {
    agents: usize,
    /// From the kill to the restarted replica listening.
    restart_seconds: f64,
    /// From the replica listening to each agent's first snapshot again.
    back_ms: Summary<f64>,
    /// The most agents that came back within any 100 ms.
    busiest_100ms: usize,
    /// Connection attempts that failed while it was away or busy.
    failed_attempts: usize,
}

/// Starts `n` reconnecting simulated agents, restarts the replica (kill -9,
/// start again on the same store) and measures how they come back.
fn measure_reconnect(site: &mut Site, store: &str, n: usize) -> anyhow::Result<ReconnectFigures> {
    eprintln!("propagation: {n} agents through a replica restart...");
    let agents = issue_certificates(site, 20_000, n)?;
    let back = Arc::new(Comeback {
        watching_since: Mutex::new(vec![None; n]),
        ..Comeback::default()
    });
    let rt = site.ns.run_in(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    })?;
    for (i, me) in agents.into_iter().enumerate() {
        rt.spawn(returning_agent(me, i, back.clone()));
    }
    let all_since = |after: Option<Instant>| {
        let w = back
            .watching_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        w.iter()
            .filter(|t| t.is_some_and(|t| after.is_none_or(|a| t > a)))
            .count()
    };
    let deadline = Instant::now() + CONNECT_WITHIN;
    while all_since(None) < n {
        ensure!(
            Instant::now() < deadline,
            "only {} of {n} agents connected",
            all_since(None)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let failed_before = back.failures.load(Ordering::Relaxed);
    let killed = Instant::now();
    site.replicas[0].kill9();
    site.start_replica(0, store);
    let listening = Instant::now();
    let deadline = listening + Duration::from_secs(120);
    while all_since(Some(killed)) < n {
        if Instant::now() > deadline {
            rt.shutdown_timeout(Duration::from_secs(5));
            bail!(
                "only {} of {n} agents came back within 120 s",
                all_since(Some(killed))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let times: Vec<Instant> = back
        .watching_since
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .flatten()
        .copied()
        .collect();
    rt.shutdown_timeout(Duration::from_secs(5));
    let mut since: Vec<Duration> = times
        .iter()
        .map(|t| t.saturating_duration_since(listening))
        .collect();
    since.sort();
    let busiest = since
        .iter()
        .enumerate()
        .map(|(i, t)| {
            since[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_millis(100))
                .count()
        })
        .max()
        .unwrap_or(0);
    Ok(ReconnectFigures {
        agents: n,
        restart_seconds: listening.duration_since(killed).as_secs_f64(),
        back_ms: summary_ms(&since),
        busiest_100ms: busiest,
        failed_attempts: back.failures.load(Ordering::Relaxed) - failed_before,
    })
}

/// `(soft, hard)` of a limit named as in `/proc/PID/limits`.
fn limit(pid: &str, name: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut fields = line[name.len()..].split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

/// Raises this process's open-file limit as far as it may go, towards
/// [`NOFILE`], so that it and the replica it starts (which inherits it) can
/// hold every agent's connection: the hard limit if the kernel lets us
/// raise it, else the soft limit up to the hard one.
fn raise_nofile() -> anyhow::Result<()> {
    let me = std::process::id().to_string();
    let parse = |v: &str| {
        if v == "unlimited" {
            u64::MAX
        } else {
            v.parse().unwrap_or(0)
        }
    };
    let (soft, hard) = limit(&me, "Max open files").context("reading /proc/self/limits")?;
    let (soft, hard) = (parse(&soft), parse(&hard));
    if soft >= NOFILE {
        return Ok(());
    }
    let prlimit = |value: String| -> anyhow::Result<()> {
        let out = Command::new("prlimit")
            .args(["--pid", &me, &format!("--nofile={value}")])
            .output()
            .context("running prlimit")?;
        ensure!(
            out.status.success(),
            "prlimit --nofile={value}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    if hard < NOFILE && prlimit(format!("{NOFILE}:{NOFILE}")).is_ok() {
        return Ok(());
    }
    if soft < hard {
        prlimit(format!("{}:", hard.min(NOFILE)))?;
    }
    Ok(())
}

/// The PID of the control-plane replica this site started: the child of
/// this process running `wardline-control-plane` on the site's store.
pub(crate) fn control_plane_pid(site: &Site) -> anyhow::Result<u32> {
    let me = std::process::id();
    let store = site.embedded_store();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_cp = args
            .first()
            .is_some_and(|a| a.ends_with("wardline-control-plane"));
        if !is_cp || !args.contains(&store) {
            continue;
        }
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        if ppid == Some(me) {
            return Ok(pid);
        }
    }
    bail!("no wardline-control-plane process of this site ({store}) found")
}

/// An open-file limit: (soft, hard), as `/proc/PID/limits` says them.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Limit {
    soft: String,
    hard: String,
}

fn open_file_limit(pid: &str) -> Option<Limit> {
    limit(pid, "Max open files").map(|(soft, hard)| Limit { soft, hard })
}

fn show_limit(l: &Option<Limit>) -> String {
    l.as_ref().map_or_else(
        || "unknown".to_owned(),
        |l| format!("{}, {}", l.soft, l.hard),
    )
}

fn ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// The figures of one fleet size.
struct Scale {
    agents: usize,
    rounds: usize,
    acked: Vec<Duration>,
    received: Vec<Duration>,
    real: Vec<Duration>,
    /// Until the real agent's `/status` showed the new revision enforced.
    enforced: Vec<Duration>,
    apply_returned: Vec<Duration>,
    missing: usize,
    /// The largest snapshot a simulated agent received, encoded.
    snapshot_bytes: usize,
    /// From a node's registration with a new address to each simulated
    /// agent's Ack of the tables that follow.
    node_acked: Vec<Duration>,
    node_missing: usize,
    /// The largest snapshot a simulated agent received for a node change.
    node_snapshot_bytes: usize,
    /// From `wardctl quarantine` starting to each simulated agent's Ack of
    /// the quarantine's revision, and to the real agent enforcing it.
    quarantine_acked: Vec<Duration>,
    quarantine_real: Vec<Duration>,
    quarantine_missing: usize,
    /// CPUs busy during the applies: (control plane, bench process).
    cpu: Option<(f64, f64)>,
    connect: Duration,
    rss: u64,
    fds: usize,
}

/// Durations in milliseconds.
fn in_ms(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

/// Milliseconds summarised; all zero when there are none.
fn summary_ms(v: &[Duration]) -> Summary<f64> {
    Summary::of(&in_ms(v)).unwrap_or(Summary {
        count: 0,
        min: 0.0,
        p10: 0.0,
        median: 0.0,
        p90: 0.0,
        p99: 0.0,
        max: 0.0,
        mean: 0.0,
    })
}

/// CPUs busy during the applies.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CpusBusy {
    control_plane: f64,
    bench_process: f64,
}

/// One fleet size, as reported.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FleetFigures {
    simulated_agents: usize,
    applies: usize,
    acknowledgements: usize,
    missing_acknowledgements: usize,
    /// From `wardctl apply` starting to each simulated agent's Ack returned.
    ack_ms: Summary<f64>,
    /// To each simulated agent's snapshot arriving.
    received_ms: Summary<f64>,
    /// To the real agent's `/status` showing the revision, per apply.
    real_agent_enforced_ms: Vec<f64>,
    real_agent_enforced: Summary<f64>,
    /// To `wait_acked` seeing the real agent's acknowledgement, per apply.
    real_agent_acked_ms: Vec<f64>,
    real_agent_acked: Summary<f64>,
    apply_returned_ms: Vec<f64>,
    apply_returned: Summary<f64>,
    connect_seconds: f64,
    /// The largest snapshot a simulated agent received, encoded.
    snapshot_bytes: usize,
    node_changes: usize,
    /// From a node registering with a new address to each simulated
    /// agent's Ack of the new tables.
    node_change_ack_ms: Summary<f64>,
    node_change_missing_acknowledgements: usize,
    /// The largest snapshot a simulated agent received for a node change.
    node_change_snapshot_bytes: usize,
    quarantines: usize,
    /// From `wardctl quarantine` starting to each simulated agent's Ack.
    quarantine_ack_ms: Summary<f64>,
    /// To the real agent's `/status` showing it enforced, per quarantine.
    quarantine_real_agent_enforced_ms: Vec<f64>,
    quarantine_missing_acknowledgements: usize,
    cpus_busy_during_applies: Option<CpusBusy>,
    control_plane_rss_bytes: u64,
    control_plane_open_files: usize,
}

impl Scale {
    fn figures(&self) -> FleetFigures {
        FleetFigures {
            simulated_agents: self.agents,
            applies: self.rounds,
            acknowledgements: self.acked.len(),
            missing_acknowledgements: self.missing,
            ack_ms: summary_ms(&self.acked),
            received_ms: summary_ms(&self.received),
            real_agent_enforced_ms: in_ms(&self.enforced),
            real_agent_enforced: summary_ms(&self.enforced),
            real_agent_acked_ms: in_ms(&self.real),
            real_agent_acked: summary_ms(&self.real),
            apply_returned_ms: in_ms(&self.apply_returned),
            apply_returned: summary_ms(&self.apply_returned),
            connect_seconds: self.connect.as_secs_f64(),
            snapshot_bytes: self.snapshot_bytes,
            node_changes: self.rounds,
            node_change_ack_ms: summary_ms(&self.node_acked),
            node_change_missing_acknowledgements: self.node_missing,
            node_change_snapshot_bytes: self.node_snapshot_bytes,
            quarantines: self.rounds,
            quarantine_ack_ms: summary_ms(&self.quarantine_acked),
            quarantine_real_agent_enforced_ms: in_ms(&self.quarantine_real),
            quarantine_missing_acknowledgements: self.quarantine_missing,
            cpus_busy_during_applies: self.cpu.map(|(control_plane, bench_process)| CpusBusy {
                control_plane,
                bench_process,
            }),
            control_plane_rss_bytes: self.rss,
            control_plane_open_files: self.fds,
        }
    }
}

/// Programming 100,000 rules and 100,000 prefixes.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Kernel100k {
    prefixes: usize,
    rules: usize,
    policy_bytes: usize,
    /// The encoded tables a whole snapshot carries.
    tables_bytes: usize,
    /// The encoded change one host prefix joining a segment makes.
    node_change_delta_bytes: usize,
    /// Finding that change (`wardline_proto::delta::diff`), and making the
    /// tables from it as an agent does (`delta::apply`).
    diff_seconds: f64,
    apply_delta_seconds: f64,
    parse_seconds: f64,
    compile_seconds: f64,
    load_seconds: f64,
    program_seconds: f64,
    next_generation_seconds: f64,
}

/// What part 3 measured.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PropagationResults {
    quick: bool,
    store: &'static str,
    heartbeat_seconds: u32,
    connect_concurrency: usize,
    /// The control plane with only the real agent.
    rss_base_bytes: u64,
    open_files_base: usize,
    bench_nofile: Option<Limit>,
    control_plane_nofile: Option<Limit>,
    fleets: Vec<FleetFigures>,
    reconnect: ReconnectFigures,
    kernel100k: Option<Kernel100k>,
    seconds: f64,
}

/// An agent certificate for `node`, and its TLS settings.
fn issue_certificate(site: &Site, node: &str, id: usize) -> anyhow::Result<SimAgent> {
    let paths = pki::issue(
        &site.dir.join("ca"),
        Role::Agent,
        node,
        &[],
        &site.dir.join("simulated"),
        1,
    )
    .with_context(|| format!("issuing the certificate of {node}"))?;
    let tls = client_tls(&site.ca(), &paths.cert, &paths.key, REPLICAS[0])
        .with_context(|| format!("TLS settings of {node}"))?;
    Ok(SimAgent {
        id,
        node: node.to_owned(),
        address: format!("198.19.{}.{}", 100 + id / 250 % 100, 1 + id % 250),
        tls,
    })
}

/// Registers `me` with `address` alone, as its agent would after moving;
/// `Ok(false)` when the replica's rate limit on registrations (a few at
/// once, then one every 2 s per node) asks to come back later.
async fn register(me: &SimAgent, address: &str) -> anyhow::Result<bool> {
    let channel = Endpoint::from_shared(format!("https://{}:{PORT}", REPLICAS[0]))?
        .tls_config(me.tls.clone())?
        .connect()
        .await
        .with_context(|| format!("connecting as {}", me.node))?;
    let registered = AgentApiClient::new(channel)
        .register(v1::RegisterRequest {
            node: me.node.clone(),
            labels: Default::default(),
            addresses: vec![address.to_owned()],
        })
        .await;
    match registered {
        Ok(_) => Ok(true),
        Err(status) if status.code() == tonic::Code::ResourceExhausted => Ok(false),
        Err(status) => {
            Err(anyhow::Error::new(status).context(format!("registering {} at {address}", me.node)))
        }
    }
}

/// The tables the real agent enforces, by `/status`.
fn tables_of(agent: &Agent, ns: &Netns) -> Option<String> {
    agent
        .get(ns, "/status")
        .and_then(|(_, body)| serde_json::from_str::<Value>(body.trim()).ok())
        .and_then(|v| v["tablesSha256"].as_str().map(str::to_owned))
}

/// The tables the real agent enforces once they are no longer `before`
/// (polled every 5 ms); `None` after [`ACK_WITHIN`].
fn wait_tables(agent: &Agent, ns: &Netns, before: &str) -> Option<String> {
    let start = Instant::now();
    while start.elapsed() < ACK_WITHIN {
        if let Some(t) = tables_of(agent, ns).filter(|t| t != before) {
            return Some(t);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Issues `count` agent certificates, `first` on, on two threads.
fn issue_certificates(site: &Site, first: usize, count: usize) -> anyhow::Result<Vec<SimAgent>> {
    let issue = |id: usize| issue_certificate(site, &format!("sim-{id:04}"), id);
    let ids: Vec<usize> = (first..first + count).collect();
    let halves: Vec<anyhow::Result<Vec<SimAgent>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ids
            .chunks(count.div_ceil(2).max(1))
            .map(|chunk| scope.spawn(move || chunk.iter().map(|id| issue(*id)).collect()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut out = Vec::with_capacity(count);
    for half in halves {
        out.extend(half?);
    }
    Ok(out)
}

/// When the real agent's `/status` first shows a revision newer than
/// `before` (polled every 5 ms); `None` after [`ACK_WITHIN`].
fn wait_enforced(agent: &Agent, ns: &Netns, before: u64) -> Option<Instant> {
    let start = Instant::now();
    while start.elapsed() < ACK_WITHIN {
        let revision = agent
            .get(ns, "/status")
            .and_then(|(_, body)| serde_json::from_str::<Value>(body.trim()).ok())
            .and_then(|v| v["revision"].as_u64());
        if revision.is_some_and(|r| r > before) {
            return Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Waits until the first `n` simulated agents are watching and have
/// acknowledged `revision` (or later).
fn wait_caught_up(fleet: &Fleet, n: usize, revision: u64, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        fleet.check()?;
        let watching = fleet.watching.load(Ordering::Relaxed);
        let caught_up = fleet.caught_up(n, revision);
        if watching >= n && caught_up >= n {
            return Ok(());
        }
        ensure!(
            start.elapsed() < within,
            "after {within:?}: {watching} of {n} simulated agents watching, {caught_up} acknowledged revision {revision}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Context<'a> {
    site: &'a Site,
    agent: &'a Agent,
    agent_ns: &'a Netns,
    cp: u32,
    fleet: Arc<Fleet>,
    rounds: usize,
}

/// Connects the fleet up to each size in turn and measures `rounds` applies
/// at each. Runs on a thread in the management namespace.
fn measure_fleet(
    cx: &Context<'_>,
    sizes: &[usize],
    mut revision: u64,
) -> anyhow::Result<Vec<Scale>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the simulated agents' runtime")?;
    let gate = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mover = issue_certificate(cx.site, MOVER, usize::MAX)?;
    let mut scales = Vec::new();
    let mut connected = 0;
    let mut round = 0;
    let result = (|| -> anyhow::Result<()> {
        for &n in sizes {
            eprintln!("propagation: {n} simulated agents...");
            let start = Instant::now();
            for me in issue_certificates(cx.site, connected, n - connected)? {
                rt.spawn(sim_agent(me, cx.fleet.clone(), gate.clone()));
            }
            wait_caught_up(&cx.fleet, n, revision, CONNECT_WITHIN)?;
            let connect = start.elapsed();
            connected = n;
            // Let registrations and first acknowledgements settle.
            std::thread::sleep(Duration::from_secs(2));
            let rss = procfs::vm_rss(cx.cp)?;
            let fds = procfs::open_fds(cx.cp);
            let mut scale = Scale {
                agents: n,
                rounds: cx.rounds,
                acked: Vec::new(),
                received: Vec::new(),
                real: Vec::new(),
                enforced: Vec::new(),
                apply_returned: Vec::new(),
                missing: 0,
                snapshot_bytes: 0,
                node_acked: Vec::new(),
                node_missing: 0,
                node_snapshot_bytes: 0,
                quarantine_acked: Vec::new(),
                quarantine_real: Vec::new(),
                quarantine_missing: 0,
                cpu: None,
                connect,
                rss,
                fds,
            };
            let cpu_before = (
                procfs::cpu_time(cx.cp),
                procfs::cpu_time(std::process::id()),
                Instant::now(),
            );
            for _ in 0..cx.rounds {
                round += 1;
                let text = policy(round);
                let before = revision;
                let t0 = Instant::now();
                let enforced;
                (revision, enforced) = std::thread::scope(|scope| {
                    let poll = scope.spawn(|| wait_enforced(cx.agent, cx.agent_ns, before));
                    let revision = cx.site.apply(0, &text);
                    scale.apply_returned.push(t0.elapsed());
                    (revision, poll.join().ok().flatten())
                });
                match enforced {
                    Some(at) => scale.enforced.push(at.saturating_duration_since(t0)),
                    None => bail!(
                        "the real agent did not enforce revision {revision} within {ACK_WITHIN:?}"
                    ),
                }
                cx.site
                    .wait_acked(0, &[cx.agent.node.as_str()], revision, ACK_WITHIN);
                scale.real.push(t0.elapsed());
                let waited = wait_caught_up(&cx.fleet, n, revision, ACK_WITHIN);
                let acks = cx.fleet.acks_of(revision);
                scale.missing += n.saturating_sub(acks.len());
                for a in &acks {
                    scale.snapshot_bytes = scale.snapshot_bytes.max(a.bytes);
                    scale.acked.push(a.acked.saturating_duration_since(t0));
                    scale
                        .received
                        .push(a.received.saturating_duration_since(t0));
                }
                if let Err(e) = waited {
                    // A simulated agent that failed stops the part; one that
                    // is merely late is counted as missing.
                    cx.fleet.check()?;
                    eprintln!("propagation: {e:#}");
                }
                // A pause between rounds, as between two operators' changes.
                std::thread::sleep(Duration::from_millis(300));
            }
            if let (Some(cp0), Some(me0), Some(cp1), Some(me1)) = (
                cpu_before.0,
                cpu_before.1,
                procfs::cpu_time(cx.cp),
                procfs::cpu_time(std::process::id()),
            ) {
                let wall = cpu_before.2.elapsed().as_secs_f64();
                scale.cpu = Some((
                    (cp1.saturating_sub(cp0)).as_secs_f64() / wall,
                    (me1.saturating_sub(me0)).as_secs_f64() / wall,
                ));
            }
            // Node changes: the pump server registers from a new address
            // each time; only its prefix moves in every node's tables.
            for _ in 0..cx.rounds {
                round += 1;
                let before = tables_of(cx.agent, cx.agent_ns).unwrap_or_default();
                let address = format!("198.18.42.{}", 100 + round % 150);
                let mut t0 = Instant::now();
                while !rt.block_on(register(&mover, &address))? {
                    std::thread::sleep(Duration::from_millis(500));
                    t0 = Instant::now();
                }
                let Some(tables) = wait_tables(cx.agent, cx.agent_ns, &before) else {
                    bail!("the real agent did not take {MOVER} at {address} within {ACK_WITHIN:?}");
                };
                let start = Instant::now();
                while cx.fleet.acks_of_tables(&tables).len() < n && start.elapsed() < ACK_WITHIN {
                    cx.fleet.check()?;
                    std::thread::sleep(Duration::from_millis(20));
                }
                let acks = cx.fleet.acks_of_tables(&tables);
                scale.node_missing += n.saturating_sub(acks.len());
                for a in &acks {
                    scale.node_snapshot_bytes = scale.node_snapshot_bytes.max(a.bytes);
                    scale.node_acked.push(a.acked.saturating_duration_since(t0));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            // Quarantines: a pump isolated with `wardctl quarantine`
            // (keeping its telemetry), then released.
            for _ in 0..cx.rounds {
                round += 1;
                let target = format!("198.18.30.{}", 100 + round % 150);
                let before = revision;
                let t0 = Instant::now();
                let (q, enforced) = std::thread::scope(|scope| {
                    let poll = scope.spawn(|| wait_enforced(cx.agent, cx.agent_ns, before));
                    let out = cx.site.wardctl(
                        0,
                        &[
                            "quarantine",
                            &target,
                            "--reason",
                            "bench",
                            "--keep",
                            "pump-telemetry",
                            "-o",
                            "json",
                        ],
                    );
                    (out, poll.join().ok().flatten())
                });
                ensure!(
                    q.status.success(),
                    "wardctl quarantine: {}",
                    String::from_utf8_lossy(&q.stderr)
                );
                let q: Value = serde_json::from_slice(&q.stdout)?;
                revision = q["revision"]
                    .as_u64()
                    .context("the quarantine's revision")?;
                let Some(at) = enforced else {
                    bail!(
                        "the real agent did not enforce quarantine revision {revision} within {ACK_WITHIN:?}"
                    );
                };
                scale.quarantine_real.push(at.saturating_duration_since(t0));
                let waited = wait_caught_up(&cx.fleet, n, revision, ACK_WITHIN);
                let acks = cx.fleet.acks_of(revision);
                scale.quarantine_missing += n.saturating_sub(acks.len());
                for a in &acks {
                    scale
                        .quarantine_acked
                        .push(a.acked.saturating_duration_since(t0));
                }
                if let Err(e) = waited {
                    cx.fleet.check()?;
                    eprintln!("propagation: {e:#}");
                }
                std::thread::sleep(Duration::from_millis(300));
                let id = q["id"].as_str().unwrap_or_default().to_owned();
                let out = cx
                    .site
                    .wardctl(0, &["release", &id, "--reason", "bench", "-o", "json"]);
                ensure!(
                    out.status.success(),
                    "wardctl release: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let r: Value = serde_json::from_slice(&out.stdout)?;
                revision = r["releasedRevision"].as_u64().unwrap_or(revision);
                wait_caught_up(&cx.fleet, n, revision, ACK_WITHIN).ok();
                std::thread::sleep(Duration::from_millis(300));
            }
            scales.push(scale);
        }
        Ok(())
    })();
    rt.shutdown_timeout(Duration::from_secs(5));
    result.map(|()| scales)
}

/// Removes a node's pins on drop.
struct Pins(PathBuf, String);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = wardline_agent::enforcer::uninstall(&self.0, &self.1) {
            eprintln!("propagation: removing the pins of {}: {e}", self.1);
        }
    }
}

/// Parses, compiles and programs 100,000 rules and 100,000 prefixes into
/// freshly loaded, unattached programs' maps (as in the kernel tests).
fn program_100k() -> anyhow::Result<Kernel100k> {
    use time::OffsetDateTime;
    use wardline_policy::{CompileOptions, Dataplane};

    // 1,000 segments of 100 host prefixes; 100,000 single-port policies.
    let yaml = packet::Scale::new(100_000).yaml();
    let t = Instant::now();
    let set = wardline_policy::parse(&yaml).context("parsing the 100k-rule policy")?;
    let parsed = t.elapsed();
    let t = Instant::now();
    let dp = Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc()))
        .context("compiling the 100k-rule policy")?;
    let compiled = t.elapsed();
    ensure!(
        (dp.prefixes.len(), dp.rules.len()) == (100_000, 100_000),
        "expected 100,000 prefixes and rules, compiled {} and {}",
        dp.prefixes.len(),
        dp.rules.len()
    );
    // A node joining: one host prefix more in a segment, the rest as it was.
    let base = wardline_policy::Schedule {
        now: dp.clone(),
        ahead: Vec::new(),
    };
    let mut joined = base.clone();
    joined
        .now
        .prefixes
        .push(("198.19.250.1/32".parse().context("the joining prefix")?, 1));
    joined.now.prefixes.sort();
    let whole = prost::Message::encode_to_vec(&v1::Tables::from(&base));
    let t = Instant::now();
    let changes = wardline_proto::delta::diff(&base, &joined)
        .context("a node joining is a change of prefixes")?;
    let diffed = t.elapsed();
    let t = Instant::now();
    let made = wardline_proto::delta::apply(&base, &changes).context("applying the change")?;
    let applied = t.elapsed();
    ensure!(made == joined, "the change makes the joined tables");
    let delta = v1::TablesDelta {
        base_tables_sha256: "0".repeat(64),
        dataplanes: changes,
    };
    let bpffs = Path::new(BPFFS).to_path_buf();
    let node = format!("wl-bench-100k-{}", std::process::id());
    let _pins = Pins(bpffs.clone(), node.clone());
    let t = Instant::now();
    let mut enforcer =
        wardline_agent::enforcer::Enforcer::open(&bpffs, &node).context("loading the programs")?;
    let loaded = t.elapsed();
    let t = Instant::now();
    let first = enforcer
        .apply(&dp, &[])
        .context("programming the first generation")?
        .live;
    let programmed = t.elapsed();
    let t = Instant::now();
    let second = enforcer
        .apply(&dp, &[])
        .context("programming the next generation beside the live one")?
        .live;
    let next = t.elapsed();
    ensure!(second == first + 1, "generation {first} then {second}");
    drop(enforcer);
    Ok(Kernel100k {
        prefixes: dp.prefixes.len(),
        rules: dp.rules.len(),
        policy_bytes: yaml.len(),
        tables_bytes: whole.len(),
        node_change_delta_bytes: prost::Message::encoded_len(&delta),
        diff_seconds: diffed.as_secs_f64(),
        apply_delta_seconds: applied.as_secs_f64(),
        parse_seconds: parsed.as_secs_f64(),
        compile_seconds: compiled.as_secs_f64(),
        load_seconds: loaded.as_secs_f64(),
        program_seconds: programmed.as_secs_f64(),
        next_generation_seconds: next.as_secs_f64(),
    })
}

/// Part 3 of the benchmarks: propagation to a fleet, control-plane memory
/// per agent, and programming 100,000 rules.
pub fn run(budget: Budget) -> anyhow::Result<Section> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the propagation benchmark needs root (namespaces, BPF)"
    );
    let started = Instant::now();
    let (sizes, rounds): (&[usize], usize) = if budget.quick {
        (&[10], 2)
    } else {
        (&[100, 1_000, 5_000], 5)
    };
    raise_nofile()?;
    let bench_nofile = open_file_limit("self");

    let mut site = Site::new();
    site.start_replica(0, &site.embedded_store());
    let cp = control_plane_pid(&site)?;
    let cp_nofile = open_file_limit(&cp.to_string());
    let cp_soft: u64 = cp_nofile
        .as_ref()
        .and_then(|l| l.soft.parse().ok())
        .unwrap_or(u64::MAX);
    let most = *sizes.iter().max().unwrap_or(&0) as u64;
    ensure!(
        cp_soft > 2 * most + 256,
        "the control plane may open only {cp_soft} files, too few for {most} agents"
    );

    // The real agent: managed, enforcing one interface of its namespace.
    let agent_ns = Netns::new("bench-agent");
    agent_ns.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    link_up(&agent_ns, "eth0");
    link_up(&agent_ns, "eth1");
    addr(&agent_ns, "eth0", "198.18.60.1/24");
    site.connect(&agent_ns);
    let agent = Agent::start_managed(
        &agent_ns,
        &["eth0"],
        &site,
        "{role: ward-gateway}",
        &[Site::endpoint(0)],
    );
    let revision = site.apply(0, &policy(0));
    site.wait_acked(0, &[agent.node.as_str()], revision, ACK_WITHIN);
    std::thread::sleep(Duration::from_secs(1));
    let rss_base = procfs::vm_rss(cp)?;
    let fds_base = procfs::open_fds(cp);

    let cx = Context {
        site: &site,
        agent: &agent,
        agent_ns: &agent_ns,
        cp,
        fleet: Arc::new(Fleet::default()),
        rounds,
    };
    let scales = site
        .ns
        .run_in(|| measure_fleet(&cx, sizes, revision))
        .map_err(|e| {
            let log = site.replicas.first().map(|p| p.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            e.context(format!(
                "control-plane log, last lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        })?;
    drop(cx);
    let store = site.embedded_store();
    let reconnect = measure_reconnect(&mut site, &store, if budget.quick { 10 } else { 1_000 })?;
    drop(agent);
    drop(agent_ns);
    drop(site);

    let kernel = if budget.quick {
        None
    } else {
        eprintln!("propagation: programming 100,000 rules...");
        Some(program_100k()?)
    };
    Section::of(&PropagationResults {
        quick: budget.quick,
        store: "embedded",
        heartbeat_seconds: wardline_control_plane::server::HEARTBEAT_SECONDS,
        connect_concurrency: CONNECT_CONCURRENCY,
        rss_base_bytes: rss_base,
        open_files_base: fds_base,
        bench_nofile,
        control_plane_nofile: cp_nofile,
        fleets: scales.iter().map(Scale::figures).collect(),
        reconnect,
        kernel100k: kernel,
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl Results for PropagationResults {
    fn tables(&self) -> String {
        let mut table = String::from(
            "| simulated agents | applies | apply → ack p50 | apply → ack p99 | apply → ack max | snapshot received p50 / p99 | real agent enforced (median / max) | real agent acked, `wait_acked` (median / max) | `wardctl apply` returned (median) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for f in &self.fleets {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} |",
                f.simulated_agents,
                f.applies,
                ms(f.ack_ms.median),
                ms(f.ack_ms.p99),
                ms(f.ack_ms.max),
                ms(f.received_ms.median),
                ms(f.received_ms.p99),
                ms(f.real_agent_enforced.median),
                ms(f.real_agent_enforced.max),
                ms(f.real_agent_acked.median),
                ms(f.real_agent_acked.max),
                ms(f.apply_returned.median),
            );
        }
        table.push_str(
            "\n| simulated agents | node changes | node change → ack p50 | p99 | max | missing | snapshot per agent for a node change (a delta) | for an apply (whole tables) |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for f in &self.fleets {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} | {:.2} KiB | {:.1} KiB |",
                f.simulated_agents,
                f.node_changes,
                ms(f.node_change_ack_ms.median),
                ms(f.node_change_ack_ms.p99),
                ms(f.node_change_ack_ms.max),
                f.node_change_missing_acknowledgements,
                f.node_change_snapshot_bytes as f64 / 1024.0,
                f.snapshot_bytes as f64 / 1024.0,
            );
        }
        table.push_str(
            "\n| simulated agents | quarantines | `wardctl quarantine` → every agent's ack p50 | p99 | max | missing | real agent enforced (per quarantine) |\n|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for f in &self.fleets {
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} | {} |",
                f.simulated_agents,
                f.quarantines,
                ms(f.quarantine_ack_ms.median),
                ms(f.quarantine_ack_ms.p99),
                ms(f.quarantine_ack_ms.max),
                f.quarantine_missing_acknowledgements,
                f.quarantine_real_agent_enforced_ms
                    .iter()
                    .map(|v| ms(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        table.push_str(
            "\n| simulated agents | snapshot per agent | fleet connected in | CPUs busy during the applies: control plane / bench process |\n|---:|---:|---:|---:|\n",
        );
        for f in &self.fleets {
            let _ = writeln!(
                table,
                "| {} | {:.1} KiB | {:.1} s | {} |",
                f.simulated_agents,
                f.snapshot_bytes as f64 / 1024.0,
                f.connect_seconds,
                f.cpus_busy_during_applies.map_or_else(
                    || "unknown".to_owned(),
                    |c| format!("{:.2} / {:.2}", c.control_plane, c.bench_process)
                ),
            );
        }
        table.push_str(
            "\n| control-plane memory | VmRSS | per agent | open files |\n|---|---:|---:|---:|\n",
        );
        let _ = writeln!(
            table,
            "| one real agent, before the fleet | {} | | {} |",
            procfs::mib(self.rss_base_bytes as f64),
            self.open_files_base
        );
        for f in &self.fleets {
            let per = (f.control_plane_rss_bytes as f64 - self.rss_base_bytes as f64)
                / f.simulated_agents as f64;
            let _ = writeln!(
                table,
                "| + {} simulated agents | {} | {:.1} KiB | {} |",
                f.simulated_agents,
                procfs::mib(f.control_plane_rss_bytes as f64),
                per / 1024.0,
                f.control_plane_open_files
            );
        }
        let r = &self.reconnect;
        let _ = write!(
            table,
            "\n| replica restart (kill -9, start again), {} agents reconnecting with full-jitter backoff | |\n|---|---:|\n| kill to listening again | {:.2} s |\n| listening to each agent's first snapshot again: p50 / p99 / max | {} / {} / {} |\n| most agents back within any 100 ms | {} |\n| connection attempts that failed meanwhile | {} |\n",
            r.agents,
            r.restart_seconds,
            ms(r.back_ms.median),
            ms(r.back_ms.p99),
            ms(r.back_ms.max),
            r.busiest_100ms,
            r.failed_attempts,
        );
        if let Some(k) = &self.kernel100k {
            let _ = write!(
                table,
                "\n| 100,000 rules and 100,000 prefixes | time |\n|---|---:|\n| parse | {:.2} s |\n| compile | {:.2} s |\n| load the programs | {:.2} s |\n| **program into the kernel (first generation)** | **{:.2} s** |\n| program the next generation beside the live one | {:.2} s |\n\n\
| a node joining at 100,000 rules and prefixes | |\n|---|---:|\n| whole tables, encoded | {:.1} MiB |\n| the change alone (`TablesDelta`) | {} bytes |\n| finding the change (`delta::diff`, the replica) | {:.0} ms |\n| making the tables from it (`delta::apply`, the agent) | {:.0} ms |\n",
                k.parse_seconds,
                k.compile_seconds,
                k.load_seconds,
                k.program_seconds,
                k.next_generation_seconds,
                k.tables_bytes as f64 / (1024.0 * 1024.0),
                k.node_change_delta_bytes,
                k.diff_seconds * 1e3,
                k.apply_delta_seconds * 1e3,
            );
        }
        table
    }

    fn targets(&self) -> Vec<Target> {
        let missing = |f: &FleetFigures| {
            if f.missing_acknowledgements > 0 {
                format!(", {} acknowledgements missing", f.missing_acknowledgements)
            } else {
                String::new()
            }
        };
        let met = |f: &FleetFigures| f.ack_ms.p99 < 1000.0 && f.missing_acknowledgements == 0;
        if let Some(f) = self.fleets.iter().find(|f| f.simulated_agents == 1_000) {
            let mut targets = vec![Target::new(
                format!(
                    "apply → acknowledgement p99 under 1 s at 1,000 simulated agents (p99 {}{})",
                    ms(f.ack_ms.p99),
                    missing(f)
                ),
                met(f),
            )];
            targets.push(Target::new(
                format!(
                    "quarantine in force fleet-wide under 1 s: `wardctl quarantine` → every agent's acknowledgement at 1,000 simulated agents (max {}{})",
                    ms(f.quarantine_ack_ms.max),
                    if f.quarantine_missing_acknowledgements > 0 {
                        format!(", {} acknowledgements missing", f.quarantine_missing_acknowledgements)
                    } else {
                        String::new()
                    }
                ),
                f.quarantines > 0
                    && f.quarantine_ack_ms.max < 1000.0
                    && f.quarantine_missing_acknowledgements == 0,
            ));
            if let Some(f) = self.fleets.iter().find(|f| f.simulated_agents == 5_000) {
                targets.push(Target::new(
                    format!(
                        "apply → acknowledgement p99 under 1 s, reported also at 5,000 simulated agents (p99 {}{})",
                        ms(f.ack_ms.p99),
                        missing(f)
                    ),
                    met(f),
                ));
            }
            targets
        } else if let Some(f) = self.fleets.last() {
            vec![Target::new(
                format!(
                    "apply → acknowledgement p99 under 1 s (quick mode: {} simulated agents, p99 {}{}; the target is set at 1,000)",
                    f.simulated_agents,
                    ms(f.ack_ms.p99),
                    missing(f)
                ),
                met(f),
            )]
        } else {
            Vec::new()
        }
    }

    fn how_to_read(&self) -> String {
        let mut how_to_read = format!(
            "One control-plane replica (embedded store, redb with fsync on every write) in a management \
namespace, serving over mutual TLS. One real `wardline-agent`, managed, in its own namespace, \
and a fleet of simulated agents: tonic clients in the bench process, each with its own agent \
certificate from the site CA and its own connection, that Register, Watch, Ack each snapshot \
as soon as it arrives (no kernel work) and send heartbeats every {} s as real agents do (spread \
over the interval). The fleet connects ({} at a time) and takes the current \
snapshot first; then each apply is `wardctl apply --prune` of the hospital example with one \
workstation quarantined (a different one each time, so every node's tables change), and the \
clock starts when `wardctl` is started.\n\n\
- **apply → ack**: until the simulated agent's Ack call returned (the control plane has \
stored it), taken in the agent; p50 / p99 / max over every simulated agent and every apply \
at that size. **snapshot received**: until the snapshot arrived.\n\
- **real agent enforced**: until the real agent's `/status` showed the new revision (it has \
programmed the kernel and is about to acknowledge), polled every 5 ms. **real agent acked**: until \
`Site::wait_acked` saw its acknowledgement in `wardctl status`, polled every 25 ms by a fresh \
`wardctl` process, so that figure carries the process's start-up and a status listing of every \
agent; the simulated agents' figures do not.\n\
- **snapshot per agent**: the encoded size of the signed snapshot each agent receives: the \
compiled tables (now and at the next window boundaries) and the seal; the addresses of the \
nodes segments select are in the tables, so it grows with the fleet. Each distinct snapshot is \
encoded and signed once and every stream sends the same bytes.\n\
- **node change**: after the applies at each size, as many times as there were applies, the \
pump server `sim-mover` (a `Node` document of the policy) registers from a new address in its \
range; the clock starts before the Register call and stops at each simulated agent's Ack of \
the tables the real agent then shows. Only a prefix moves, so every stream that sent the tables \
before sends the signed change alone (a `TablesDelta`). **CPUs busy**: CPU time the control plane, and the bench process (the simulated \
agents), used during the applies over their wall time (2.00 would be both cores).\n\
- **quarantine**: then, as many times, `wardctl quarantine 198.18.30.x --keep pump-telemetry` \
(a pump of the example isolated keeping its telemetry: a segment and a keep policy in a \
revision of its own, no approval) and its release; the clock starts when `wardctl` is started \
and stops at each simulated agent's Ack of the quarantine's revision, and at the real agent's \
`/status` showing it enforced. The target: in force fleet-wide within 1 s at 1,000 agents, \
every agent (the max, not a percentile).\n\
- **control-plane memory**: VmRSS of the replica from `/proc/PID/status`, after the fleet \
connected and settled, less the figure with only the real agent, divided by the number of \
simulated agents. Open files: `/proc/PID/fd`. Before starting the replica, which inherits it, \
the bench raises its open-file limit as far as it may (soft, hard: bench {}, replica {}).\n\n\
Everything runs on the same 2-core machine: the control plane, the simulated agents' \
runtime (2 threads) and the real agent share the CPUs, so the simulated agents' own \
scheduling delay is part of their figures. This part took {:.0} s.",
            self.heartbeat_seconds,
            self.connect_concurrency,
            show_limit(&self.bench_nofile),
            show_limit(&self.control_plane_nofile),
            self.seconds
        );
        if self.kernel100k.is_some() {
            how_to_read.push_str(
                "\n\n**100,000 rules**: the kernel tests' policy (1,000 segments of 100 host /32s, 100,000 \
single-port policies) parsed and compiled in the bench process, then programmed with \
`Enforcer::apply` into freshly loaded programs' maps pinned under a private node name (removed \
afterwards): the first generation, then the next written beside the live one, as a policy \
change does. **A node joining**: the same compiled tables with one host /32 added to a segment, \
as a node's registration adds its address; the sizes are of the encoded `Tables` and \
`TablesDelta` (the seal, about 0.8 KiB with the signer's certificate, comes on top of \
either), and the times of finding the change and applying it, once each.",
            );
        }
        if self.quick {
            how_to_read.push_str(
                "\n\nQuick mode: 10 simulated agents, 2 applies, no 100,000-rule programming: a smoke of the harness, not figures to quote.",
            );
        }
        how_to_read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_is_a_valid_policy_that_differs() {
        let (a, b) = (policy(1), policy(2));
        assert_ne!(a, b);
        for p in [a, b] {
            let set = wardline_policy::parse(&p).expect("the round's policy parses");
            assert!(set.segments.iter().any(|s| s.name == "quarantine"));
            assert!(set.nodes.iter().any(|n| n.name == MOVER));
        }
    }
}
