//! Real etcd servers for tests: one member or a cluster of several, on
//! loopback ports, each with a data folder that is removed when the
//! cluster is dropped.
//!
//! Available to this crate's tests and, with the `test-support` feature, to
//! other crates' tests (a control-plane high-availability test, for one).
//! Nothing here is mocked: it runs the `etcd` binary (Debian's
//! `etcd-server`), or the one named by [`ETCD_BIN_ENV`].
//!
//! ```no_run
//! # async fn demo() {
//! use wardline_store::testing::EtcdCluster;
//! let cluster = EtcdCluster::start(3).await.expect("etcd cluster starts");
//! let endpoints = cluster.endpoints();
//! # }
//! ```

use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Environment variable naming the etcd binary to run (default: `etcd` on
/// the `PATH`).
pub const ETCD_BIN_ENV: &str = "WARDLINE_ETCD_BIN";

/// How long a cluster may take to elect a leader and report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a start is tried again when a member dies at once (most
/// likely a loopback port taken between choosing and binding it).
const START_ATTEMPTS: usize = 3;

/// Distinguishes the clusters one test process starts.
static CLUSTER_SEQ: AtomicU32 = AtomicU32::new(0);

/// A failure to start or reach test etcd servers.
#[derive(Debug, thiserror::Error)]
pub enum EtcdTestError {
    /// A file-system or process operation failed.
    #[error("{operation}: {source}")]
    Io {
        /// What was being done.
        operation: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A member exited or never became healthy.
    #[error("etcd member {member} {problem}; its log ends with:\n{log_tail}")]
    Member {
        /// The member's name.
        member: String,
        /// What went wrong.
        problem: String,
        /// The last lines etcd printed.
        log_tail: String,
    },
}

/// One etcd process of an [`EtcdCluster`].
#[derive(Debug)]
pub struct EtcdMember {
    name: String,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl EtcdMember {
    /// The member's name (`--name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's client URL (`http://127.0.0.1:PORT`).
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last lines of the member's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// Kills the process (SIGKILL to its PID) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            if let Err(e) = child.kill() {
                tracing::warn!(member = %self.name, pid, error = %e, "kill etcd");
            }
            if let Err(e) = child.wait() {
                tracing::warn!(member = %self.name, pid, error = %e, "wait for etcd");
            }
            tracing::info!(member = %self.name, pid, "etcd member killed");
        }
    }

    fn spawn(&mut self, initial_cluster: &str, token: &str) -> Result<(), EtcdTestError> {
        let log = File::create(&self.log_path).map_err(|source| EtcdTestError::Io {
            operation: format!("create etcd log {}", self.log_path.display()),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| EtcdTestError::Io {
            operation: format!("duplicate etcd log handle {}", self.log_path.display()),
            source,
        })?;
        let binary = std::env::var(ETCD_BIN_ENV).unwrap_or_else(|_| "etcd".to_owned());
        let child = Command::new(&binary)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&self.client_url)
            .arg("--advertise-client-urls")
            .arg(&self.client_url)
            .arg("--listen-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-cluster")
            .arg(initial_cluster)
            .arg("--initial-cluster-token")
            .arg(token)
            .arg("--initial-cluster-state")
            .arg("new")
            // Fast elections, so that losing a member costs a test little.
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            .arg("--logger")
            .arg("zap")
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| EtcdTestError::Io {
                operation: format!(
                    "run {binary:?} (install Debian's etcd-server, or set {ETCD_BIN_ENV})"
                ),
                source,
            })?;
        tracing::info!(member = %self.name, pid = child.id(), client = %self.client_url, "etcd member started");
        self.child = Some(child);
        Ok(())
    }

    fn failure(&self, problem: impl Into<String>) -> EtcdTestError {
        EtcdTestError::Member {
            member: self.name.clone(),
            problem: problem.into(),
            log_tail: self.log_tail(),
        }
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running etcd cluster on loopback ports. Dropping it kills every
/// member and removes their data.
#[derive(Debug)]
pub struct EtcdCluster {
    // Members before the folder: they are killed before their data goes.
    members: Vec<EtcdMember>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts a cluster of `size` members and waits until every member
    /// reports healthy (a leader is elected).
    pub async fn start(size: usize) -> Result<Self, EtcdTestError> {
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_once(size).await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "etcd cluster did not start");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| EtcdTestError::Member {
            member: String::new(),
            problem: "was never started".to_owned(),
            log_tail: String::new(),
        }))
    }

    /// Starts a single-member cluster.
    pub async fn single() -> Result<Self, EtcdTestError> {
        Self::start(1).await
    }

    async fn start_once(size: usize) -> Result<Self, EtcdTestError> {
        let seq = CLUSTER_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix("wardline-etcd-")
            .tempdir()
            .map_err(|source| EtcdTestError::Io {
                operation: "create a temporary folder for etcd".to_owned(),
                source,
            })?;
        let ports = free_ports(size * 2)?;
        let mut members: Vec<EtcdMember> = (0..size)
            .map(|i| {
                let name = format!("wl{}-{seq}-m{i}", std::process::id());
                EtcdMember {
                    client_url: format!("http://127.0.0.1:{}", ports[2 * i]),
                    peer_url: format!("http://127.0.0.1:{}", ports[2 * i + 1]),
                    data_dir: dir.path().join(format!("{name}.etcd")),
                    log_path: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("wardline-test-{}-{seq}", std::process::id());
        for member in &mut members {
            member.spawn(&initial_cluster, &token)?;
        }
        let mut cluster = Self { members, dir };
        cluster.wait_healthy(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Waits until every running member reports healthy.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), EtcdTestError> {
        let deadline = Instant::now() + timeout;
        for member in &mut self.members {
            if member.child.is_none() {
                continue;
            }
            loop {
                if health(&member.client_url).await {
                    break;
                }
                if !member.is_running() {
                    return Err(member.failure("exited while starting"));
                }
                if Instant::now() >= deadline {
                    return Err(member.failure(format!("was not healthy within {timeout:?}")));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The client URLs of all members, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The members, in the order of [`Self::endpoints`].
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// The member at `index`, to kill or inspect.
    ///
    /// # Panics
    /// If `index` is out of range.
    pub fn member_mut(&mut self, index: usize) -> &mut EtcdMember {
        &mut self.members[index]
    }

    /// The folder holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every member's log tail, for a failing test's message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("--- {} ---\n{}", m.name, m.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `count` distinct loopback ports that were free a moment ago.
fn free_ports(count: usize) -> Result<Vec<u16>, EtcdTestError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| EtcdTestError::Io {
            operation: "choose a free loopback port".to_owned(),
            source,
        })?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| EtcdTestError::Io {
            operation: "read a chosen loopback port".to_owned(),
            source,
        })
}

/// Whether `GET /health` on the client URL answers healthy within a second.
async fn health(client_url: &str) -> bool {
    let Some(authority) = client_url.strip_prefix("http://") else {
        return false;
    };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await.ok()?;
        let request =
            format!("GET /health HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        Some(text.starts_with("HTTP/1.1 200") && text.contains("\"health\":\"true\""))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(true))
    )
}

/// The last 40 lines of a log file.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        // A log that is not text is still worth showing in part.
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_ok() {
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
