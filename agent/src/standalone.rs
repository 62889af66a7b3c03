//! Standalone mode: the policy comes from a file, reloaded when it changes,
//! on SIGHUP, and whenever a policy window opens or closes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::signal::unix::{SignalKind, signal};
use wardline_policy::{CompileOptions, Dataplane, PolicySet};

use crate::config::{AgentConfig, FlowLog};
use crate::enforcer::{self, Enforcer};
use crate::events::{self, EventStats, Generations, Namer};
use crate::status::{self, AgentState, InterfaceState, Shared};

/// A policy source that parsed, validated and compiled.
struct Loaded {
    sha256: String,
    set: PolicySet,
}

/// Why a policy source was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyLoadError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: policy refused:\n{errors}")]
    Invalid {
        path: PathBuf,
        errors: wardline_policy::PolicyErrors,
    },
    #[error("{path}: policy refused: {source}")]
    Compile {
        path: PathBuf,
        source: wardline_policy::compile::CompileError,
    },
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn read_policy(path: &Path) -> Result<(Vec<u8>, String), PolicyLoadError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyLoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let sha = sha256_hex(&bytes);
    Ok((bytes, sha))
}

fn validate(path: &Path, bytes: &[u8], sha256: String) -> Result<Loaded, PolicyLoadError> {
    let text = String::from_utf8_lossy(bytes);
    let set = wardline_policy::parse(&text).map_err(|errors| PolicyLoadError::Invalid {
        path: path.to_owned(),
        errors,
    })?;
    // Compile once now so that a policy that does not fit is refused here.
    Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc())).map_err(|source| {
        PolicyLoadError::Compile {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(Loaded { sha256, set })
}

struct Agent {
    config: AgentConfig,
    policy_file: PathBuf,
    shared: Shared,
    generations: Arc<Mutex<Generations>>,
    /// The source now enforced.
    enforced: Option<Loaded>,
    /// The hash of the last source tried, good or bad: a file is tried once
    /// per change, not once per second.
    last_tried: Option<String>,
    next_change: Option<OffsetDateTime>,
}

impl Agent {
    fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enforcer(&self) -> std::sync::MutexGuard<'_, Enforcer> {
        self.shared
            .enforcer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Compiles the enforced set for now and programs it as a new generation.
    fn program(&mut self) -> anyhow::Result<()> {
        let Some(loaded) = &self.enforced else {
            return Ok(());
        };
        let now = OffsetDateTime::now_utc();
        let dp = Arc::new(Dataplane::compile(&loaded.set, &CompileOptions::at(now))?);
        let generation = self.enforcer().apply(&dp)?;
        self.generations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(generation, dp.clone());
        self.next_change = dp.next_change;
        let sha = loaded.sha256.clone();
        let mut state = self.state();
        state.generation = generation;
        state.policy_sha256 = Some(sha.clone());
        state.policy_applied_at = now.format(&Rfc3339).ok();
        drop(state);
        tracing::info!(
            generation,
            policy_sha256 = %sha,
            segments = dp.segments.len(),
            policies = dp.policies.len(),
            rules = dp.rules.len(),
            next_change = ?dp.next_change,
            "policy enforced"
        );
        Ok(())
    }

    /// Loads the file if it changed since last tried (or `force`).
    fn reload(&mut self, force: bool) {
        let result = read_policy(&self.policy_file).and_then(|(bytes, sha)| {
            if !force && self.last_tried.as_deref() == Some(sha.as_str()) {
                return Ok(None);
            }
            self.last_tried = Some(sha.clone());
            validate(&self.policy_file, &bytes, sha).map(Some)
        });
        match result {
            Ok(None) => {}
            Ok(Some(loaded)) => {
                let previous = self.enforced.replace(loaded);
                match self.program() {
                    Ok(()) => {
                        let mut state = self.state();
                        state.reloads_ok += 1;
                        state.last_error = None;
                    }
                    Err(e) => {
                        tracing::error!(
                            "programming the dataplane failed, the previous policy stays in force: {e:#}"
                        );
                        self.enforced = previous;
                        let mut state = self.state();
                        state.reloads_failed += 1;
                        state.last_error = Some(format!("{e:#}"));
                    }
                }
            }
            Err(e) => {
                if force
                    || !matches!(e, PolicyLoadError::Read { .. })
                    || self.state().last_error.is_none()
                {
                    tracing::error!("{e}\nThe policy already enforced stays in force.");
                }
                let mut state = self.state();
                let message = e.to_string();
                if state.last_error.as_deref() != Some(message.as_str()) {
                    state.reloads_failed += 1;
                }
                state.last_error = Some(message);
            }
        }
    }

    /// Attaches to interfaces that appeared and notes those that vanished.
    fn check_interfaces(&mut self) {
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

fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
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

/// Runs the agent until SIGTERM or SIGINT. Enforcement outlives the process.
pub async fn run(config: AgentConfig, policy_file: PathBuf) -> anyhow::Result<()> {
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
    let sink = flow_sink(&config.flow_log)?;
    enforcer.set_events(sink.is_some())?;
    let ring = enforcer.take_events();

    let shared = Shared {
        state: Arc::new(Mutex::new(AgentState {
            node: config.node.clone(),
            mode: "standalone",
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
    let generations = Arc::new(Mutex::new(Generations::default()));

    let mut agent = Agent {
        config: config.clone(),
        policy_file,
        shared: shared.clone(),
        generations: generations.clone(),
        enforced: None,
        last_tried: None,
        next_change: None,
    };
    agent.reload(true);
    if agent.enforced.is_none() {
        let why = agent.state().last_error.clone().unwrap_or_default();
        if adopted_generation == 0 {
            anyhow::bail!("no valid policy to enforce: {why}");
        }
        tracing::warn!(
            generation = adopted_generation,
            "the pinned policy stays in force until the policy file is fixed"
        );
    }
    agent.check_interfaces();
    enforcer::remove_other_abi_versions(&config.bpffs, &config.node)?;

    if let (Some(ring), Some(sink)) = (ring, sink) {
        let namer = Namer::new(config.node.clone());
        let stats = shared.events.clone();
        tokio::spawn(async move {
            if let Err(e) = events::run(ring, namer, generations, stats, sink).await {
                tracing::error!("flow events stopped: {e}");
            }
        });
    }
    let mut server = tokio::spawn(status::serve(config.status_address, shared.clone()));

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the policy file");
                agent.reload(true);
            }
            _ = tick.tick() => {
                agent.reload(false);
                if agent.next_change.is_some_and(|t| OffsetDateTime::now_utc() >= t) {
                    tracing::info!("a policy window opened or closed");
                    if let Err(e) = agent.program() {
                        tracing::error!("reprogramming at a window boundary failed: {e:#}");
                    }
                }
                agent.check_interfaces();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = &mut server => {
                let why = match r {
                    Ok(Ok(())) => "stopped".to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                anyhow::bail!("status endpoint {}: {why}", config.status_address);
            }
        }
    }
    tracing::info!("stopping; the pinned dataplane keeps enforcing (remove it with --uninstall)");
    Ok(())
}
