//! What both modes share: the loaded dataplane, the enforced policy, the
//! status endpoint, flow events, interface watching and policy windows.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::task::JoinHandle;
use wardline_policy::{CompileOptions, PolicySet, Schedule};

use crate::config::{AgentConfig, FlowLog};
use crate::enforcer::{self, Enforcer};
use crate::events::{self, EventStats, Generations, Namer};
use crate::status::{self, AgentState, InterfaceState, Shared};

/// The policy now enforced, and how its window boundaries are followed.
#[derive(Clone, Debug)]
pub struct Enforced {
    /// SHA-256 of the policy source (standalone: the file; managed: the
    /// control plane's revision).
    pub sha256: String,
    pub source: Source,
    /// The control plane's revision (managed mode).
    pub revision: Option<u64>,
    /// SHA-256 of the tables the control plane sent (managed mode).
    pub tables_sha256: Option<String>,
}

/// Where the tables come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Standalone: the policy file's documents, compiled here, again at
    /// each window boundary.
    Policy(PolicySet),
    /// Managed: tables the control plane compiled, now and at the next
    /// window boundaries. The agent never sees the policy source.
    Compiled(Schedule),
}

pub struct Runtime {
    pub config: AgentConfig,
    pub shared: Shared,
    generations: Arc<Mutex<Generations>>,
    pub enforced: Option<Enforced>,
    next_change: Option<OffsetDateTime>,
    /// The generation found pinned at start (0: none).
    pub adopted_generation: u32,
    events: Option<(aya::maps::RingBuf<aya::maps::MapData>, events::Sinks)>,
    /// The agent's own flow events (long connections' counts, idle ones
    /// removed), to the event reader; none while flow events are off.
    swept: Option<SweptEvents>,
    /// When the tracking tables were last swept (`CLOCK_BOOTTIME` ns).
    last_sweep: Option<u64>,
}

/// The two ends of the channel from the sweep to the event reader.
struct SweptEvents {
    tx: tokio::sync::mpsc::Sender<Vec<wardline_ebpf_abi::FlowEvent>>,
    rx: Option<tokio::sync::mpsc::Receiver<Vec<wardline_ebpf_abi::FlowEvent>>>,
}

fn flow_sink(log: &FlowLog) -> anyhow::Result<Option<Box<dyn Write + Send>>> {
    Ok(match log {
        FlowLog::Off => None,
        FlowLog::Stdout => Some(Box::new(std::io::stdout())),
        FlowLog::File(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening flow log {}", path.display()))?,
        )),
    })
}

fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

impl Runtime {
    /// Loads (or adopts) the dataplane and sets the local rules.
    pub fn open(config: AgentConfig, mode: &'static str) -> anyhow::Result<Runtime> {
        let mut enforcer = Enforcer::open(&config.bpffs, &config.node)
            .with_context(|| format!("loading the dataplane under {}", config.bpffs.display()))?;
        let adopted_generation = enforcer.generation()?;
        if enforcer.adopted() {
            tracing::info!(
                generation = adopted_generation,
                pins = %enforcer.pin_dir().display(),
                "adopted pinned dataplane"
            );
        }
        enforcer.set_local_rules(&config.failsafe, &config.pass_ethertypes)?;
        enforcer.set_local_addresses(&local_addresses()?)?;
        let sink = flow_sink(&config.flow_log)?;
        // Managed mode sends every record to the control plane, flow log or not.
        enforcer.set_events(sink.is_some() || mode == "managed")?;
        let ring = enforcer.take_events();
        // A few sweeps' worth: a reader that lags further loses them,
        // counted.
        let swept = ring.as_ref().map(|_| {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            SweptEvents { tx, rx: Some(rx) }
        });
        let shared = Shared {
            state: Arc::new(Mutex::new(AgentState {
                node: config.node.clone(),
                mode,
                generation: adopted_generation,
                interfaces: config
                    .interfaces
                    .iter()
                    .map(|name| InterfaceState {
                        name: name.clone(),
                        enforced: false,
                    })
                    .collect(),
                ..AgentState::default()
            })),
            enforcer: Arc::new(Mutex::new(enforcer)),
            events: Arc::new(Mutex::new(EventStats::default())),
        };
        Ok(Runtime {
            config,
            shared,
            generations: Arc::new(Mutex::new(Generations::default())),
            enforced: None,
            next_change: None,
            adopted_generation,
            events: ring.map(|ring| {
                (
                    ring,
                    events::Sinks {
                        log: sink,
                        spool: None,
                    },
                )
            }),
            swept,
            last_sweep: None,
        })
    }

    /// Managed mode: flow records also go to `spool`, for the control
    /// plane. Before [`Runtime::serve`].
    pub fn send_flows_to(&mut self, spool: Arc<Mutex<crate::spool::Spool>>) {
        if let Some((_, sinks)) = self.events.as_mut() {
            sinks.spool = Some(spool);
        }
    }

    /// After the first policy: attach, drop other ABI versions' pins, start
    /// the flow events and the status endpoint.
    pub fn serve(&mut self) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
        self.check_interfaces();
        enforcer::remove_other_abi_versions(&self.config.bpffs, &self.config.node)?;
        let swept = self.swept.as_mut().and_then(|s| s.rx.take());
        if let (Some((ring, sinks)), Some(swept)) = (self.events.take(), swept) {
            let namer = Namer::new(self.config.node.clone());
            let stats = self.shared.events.clone();
            let generations = self.generations.clone();
            let counts = events::Counts::new(duration_ns(self.config.flow_update));
            tokio::spawn(async move {
                if let Err(e) =
                    events::run(ring, swept, namer, generations, stats, counts, sinks).await
                {
                    tracing::error!("flow events stopped: {e}");
                }
            });
        }
        Ok(tokio::spawn(status::serve(
            self.config.status_address,
            self.shared.clone(),
        )))
    }

    pub fn state(&self) -> MutexGuard<'_, AgentState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enforcer(&self) -> MutexGuard<'_, Enforcer> {
        self.shared
            .enforcer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Programs the enforced policy as in force now, with the window
    /// boundaries ahead scheduled in the kernel. Returns the generation.
    pub fn program(&mut self) -> anyhow::Result<u32> {
        let now = OffsetDateTime::now_utc();
        let Some(enforced) = &mut self.enforced else {
            anyhow::bail!("no policy to program");
        };
        let compiled;
        let schedule = match &mut enforced.source {
            Source::Policy(set) => {
                compiled = Schedule::compile(
                    set,
                    &CompileOptions::at(now),
                    wardline_ebpf_abi::MAX_SCHEDULED as usize,
                )?;
                &compiled
            }
            Source::Compiled(schedule) => {
                // Boundaries the kernel already switched at are behind us.
                if let Some(advanced) = schedule.advance(now) {
                    *schedule = advanced;
                }
                if schedule.ahead.is_empty()
                    && let Some(at) = schedule.now.next_change
                {
                    tracing::warn!(
                        at = %at,
                        "the tables from the control plane end before the window boundary at this time; \
                         they stay in force after it until the control plane sends the next"
                    );
                }
                &*schedule
            }
        };
        let dp = &schedule.now;
        let tai_now = enforcer::tai_ns();
        let steps: Vec<enforcer::Scheduled<'_>> = schedule
            .ahead
            .iter()
            .map(|(at, dp)| enforcer::Scheduled {
                dataplane: dp,
                at_tai_ns: tai_at(tai_now, now, *at),
            })
            .collect();
        let applied = self
            .shared
            .enforcer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(dp, &steps)?;
        let generation = applied.live;
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        let revision = enforced.revision.unwrap_or(0);
        generations.insert(generation, dp, revision);
        for (g, (_, dp)) in applied.scheduled.iter().zip(&schedule.ahead) {
            generations.insert(*g, dp, revision);
        }
        drop(generations);
        self.next_change = schedule.next_change();
        let summary = (dp.segments.len(), dp.policies.len(), dp.rules.len());
        let next_change = dp.next_change;
        let (sha, revision, tables) = (
            enforced.sha256.clone(),
            enforced.revision,
            enforced.tables_sha256.clone(),
        );
        let mut state = self.state();
        state.generation = generation;
        state.policy_sha256 = Some(sha.clone());
        state.tables_sha256 = tables;
        state.revision = revision;
        state.policy_applied_at = now.format(&Rfc3339).ok();
        drop(state);
        release_freed_memory();
        tracing::info!(
            generation,
            revision = ?revision,
            policy_sha256 = %sha,
            segments = summary.0,
            policies = summary.1,
            rules = summary.2,
            next_change = ?next_change,
            "policy enforced"
        );
        Ok(generation)
    }

    /// Frees the tracking entries of connections that went idle, and
    /// hands the event reader a record of each, and of each long
    /// connection whose counts are due (`spec.flowUpdateSeconds`).
    pub fn expire_connections(&mut self) {
        let now = enforcer::boot_ns();
        let interval = duration_ns(self.config.flow_update);
        let sweep = self.enforcer().sweep(now, self.last_sweep, interval);
        self.last_sweep = Some(now);
        self.state().tables = sweep.entries.clone();
        let (connections, fragments) = (sweep.expired.len(), sweep.fragments);
        if connections + fragments > 0 {
            tracing::debug!(connections, fragments, "expired idle tracking entries");
        }
        let Some(swept) = &self.swept else {
            return;
        };
        let records: Vec<_> = sweep
            .expired
            .iter()
            .filter(|(_, s)| s.tcp & wardline_ebpf_abi::TCP_CLOSE_REPORTED == 0)
            .filter_map(|(k, s)| {
                events::connection_event(k, s, wardline_ebpf_abi::EVENT_EXPIRED, now)
            })
            .chain(sweep.due.iter().filter_map(|(k, s)| {
                events::connection_event(k, s, wardline_ebpf_abi::EVENT_UPDATE, now)
            }))
            .collect();
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        if swept.tx.try_send(records).is_err() {
            let mut stats = self.shared.events.lock().unwrap_or_else(|p| p.into_inner());
            stats.sweep_records_lost += n;
        }
    }

    /// Keeps the failsafe flows' local ends the node's addresses as they are
    /// now (an address added, moved or removed).
    pub fn check_addresses(&mut self) {
        let addrs = match local_addresses() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("reading this node's addresses: {e}");
                return;
            }
        };
        match self.enforcer().set_local_addresses(&addrs) {
            Ok(true) => tracing::info!(addresses = ?addrs, "this node's own addresses"),
            Ok(false) => {}
            Err(e) => tracing::error!("programming this node's own addresses: {e}"),
        }
    }

    /// Compiles again when a policy window has opened or closed. The kernel
    /// switched on time by itself (a scheduled generation); this programs
    /// the boundaries after it.
    pub fn check_windows(&mut self) {
        if self
            .next_change
            .is_some_and(|t| OffsetDateTime::now_utc() >= t)
        {
            tracing::info!("a policy window opened or closed");
            if let Err(e) = self.program() {
                tracing::error!("reprogramming at a window boundary failed: {e:#}");
            }
        }
    }

    /// Attaches to interfaces that appeared and notes those that vanished.
    pub fn check_interfaces(&mut self) {
        let mut states = Vec::new();
        for name in self.config.interfaces.clone() {
            let mut enforcer = self.enforcer();
            let mut enforced = enforcer.is_attached(&name);
            if !enforced && interface_exists(&name) {
                match enforcer.attach(&name) {
                    Ok(()) => {
                        enforced = enforcer.is_attached(&name);
                        tracing::info!(interface = %name, "enforcing");
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
            states.push(InterfaceState { name, enforced });
        }
        let mut state = self.state();
        for s in &states {
            let was = state
                .interfaces
                .iter()
                .find(|i| i.name == s.name)
                .is_some_and(|i| i.enforced);
            if was && !s.enforced {
                tracing::warn!(interface = %s.name, "interface missing: not enforced there");
            }
        }
        state.interfaces = states;
    }
}

/// `d` in nanoseconds, the kernel clocks' unit.
fn duration_ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The `CLOCK_TAI` instant of wall-clock instant `at`, given both clocks now.
fn tai_at(tai_now: u64, utc_now: OffsetDateTime, at: OffsetDateTime) -> u64 {
    let ahead = (at - utc_now).whole_nanoseconds().max(0);
    tai_now.saturating_add(u64::try_from(ahead).unwrap_or(u64::MAX))
}

/// Every address of every interface of this node (its network namespace).
pub fn local_addresses() -> nix::Result<Vec<std::net::IpAddr>> {
    let mut out: Vec<std::net::IpAddr> = nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let a = ifa.address?;
            if let Some(v4) = a.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Gives the heap that parsing and compiling a policy freed back to the
/// system: at 100,000 rules the parser's transient allocations left the
/// agent at about 590 MiB resident, where the policy it keeps needs a fifth
/// of that. glibc keeps freed memory for reuse until asked.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // touches no live allocation and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
