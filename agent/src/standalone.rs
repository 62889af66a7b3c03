//! Standalone mode: the policy comes from a file, reloaded when it changes,
//! on SIGHUP, and whenever a policy window opens or closes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};
use wardline_policy::{CompileOptions, Dataplane};

use crate::config::AgentConfig;
use crate::runtime::{Enforced, Runtime, Source};

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

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_policy(path: &Path) -> Result<(Vec<u8>, String), PolicyLoadError> {
    let bytes = std::fs::read(path).map_err(|source| PolicyLoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    let sha = sha256_hex(&bytes);
    Ok((bytes, sha))
}

fn validate(path: &Path, bytes: &[u8], sha256: String) -> Result<Enforced, PolicyLoadError> {
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
    Ok(Enforced {
        sha256,
        source: Source::Policy(set),
        revision: None,
        tables_sha256: None,
    })
}

struct Standalone {
    rt: Runtime,
    policy_file: PathBuf,
    /// The hash of the last source tried, good or bad: a file is tried once
    /// per change, not once per tick.
    last_tried: Option<String>,
}

impl Standalone {
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
                let previous = self.rt.enforced.replace(loaded);
                match self.rt.program() {
                    Ok(_) => {
                        let mut state = self.rt.state();
                        state.reloads_ok += 1;
                        state.last_error = None;
                    }
                    Err(e) => {
                        tracing::error!(
                            "programming the dataplane failed, the previous policy stays in force: {e:#}"
                        );
                        self.rt.enforced = previous;
                        let mut state = self.rt.state();
                        state.reloads_failed += 1;
                        state.last_error = Some(format!("{e:#}"));
                    }
                }
            }
            Err(e) => {
                let message = e.to_string();
                let mut state = self.rt.state();
                if force || state.last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!("{e}\nThe policy already enforced stays in force.");
                    state.reloads_failed += 1;
                }
                state.last_error = Some(message);
            }
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT. Enforcement outlives the process.
pub async fn run(config: AgentConfig, policy_file: PathBuf) -> anyhow::Result<()> {
    let rt = Runtime::open(config, "standalone")?;
    let mut agent = Standalone {
        rt,
        policy_file,
        last_tried: None,
    };
    agent.reload(true);
    if agent.rt.enforced.is_none() {
        let why = agent.rt.state().last_error.clone().unwrap_or_default();
        if agent.rt.adopted_generation == 0 {
            anyhow::bail!("no valid policy to enforce: {why}");
        }
        tracing::warn!(
            generation = agent.rt.adopted_generation,
            "the pinned policy stays in force until the policy file is fixed"
        );
    }
    let mut server = agent.rt.serve()?;
    let address = agent.rt.config.status_address;

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the policy file");
                agent.reload(true);
            }
            _ = tick.tick() => {
                agent.reload(false);
                agent.rt.check_windows();
                agent.rt.check_interfaces();
                agent.rt.check_addresses();
            }
            _ = sweep.tick() => agent.rt.expire_connections(),
            _ = term.recv() => break,
            _ = int.recv() => break,
            r = &mut server => anyhow::bail!("status endpoint {address}: {}", crate::describe_end(r)),
        }
    }
    tracing::info!("stopping; the pinned dataplane keeps enforcing (remove it with --uninstall)");
    Ok(())
}
