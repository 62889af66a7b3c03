//! Real etcd servers for tests: one member or a cluster of several, on
//! loopback ports, each with a data folder that is removed when the
//! cluster is dropped.
//!
//! They run as etcd is deployed: clients and peers speak only TLS, and
//! both must present a certificate from the cluster's CA
//! (`--client-cert-auth`, `--peer-client-cert-auth`). [`EtcdPki`] makes
//! that CA and its certificates for each cluster; [`EtcdCluster::tls`] is
//! what a client connects with.
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
//! let store = wardline_store::etcd::EtcdStore::connect(&endpoints, cluster.tls()).await;
//! # }
//! ```

use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::EtcdTls;

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
    /// Test certificates could not be made.
    #[error("make test etcd certificates: {0}")]
    Certificates(String),
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

/// A CA for one test etcd cluster and the certificates it issued, as PEM
/// files in a folder:
///
/// - `ca.pem`: the CA, the members' `--trusted-ca-file` and
///   `--peer-trusted-ca-file`;
/// - `member.pem`, `member-key.pem`: every member's certificate, for
///   `127.0.0.1` and `localhost`, for both server and client
///   authentication, so that it serves clients and peers and dials peers;
/// - `client.pem`, `client-key.pem`: a client certificate
///   (`CN=wardline-control-plane`), what the control plane connects with.
#[derive(Debug, Clone)]
pub struct EtcdPki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The members' certificate.
    pub member_cert: PathBuf,
    /// The members' private key.
    pub member_key: PathBuf,
    /// The CA, the client certificate and its key: what a client uses.
    pub client: EtcdTls,
}

impl EtcdPki {
    /// Makes a new CA and its certificates in `dir` (created if absent).
    /// Every call makes a different CA, so certificates of two `EtcdPki`s
    /// do not verify against each other.
    pub fn generate(dir: &Path) -> Result<Self, EtcdTestError> {
        let failed =
            |what: &str, e: rcgen::Error| EtcdTestError::Certificates(format!("{what}: {e}"));
        std::fs::create_dir_all(dir).map_err(|source| EtcdTestError::Io {
            operation: format!("create {}", dir.display()),
            source,
        })?;
        let ca_key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Wardline test etcd CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| failed("CA certificate", e))?;
        let issuer = Issuer::new(ca_params, ca_key);

        let issue = |name: &str, sans: &[&str], usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().map_err(|e| failed(name, e))?;
            let mut params =
                CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                    .map_err(|e| failed(name, e))?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = usages;
            params.use_authority_key_identifier_extension = true;
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(|e| failed(name, e))?;
            Ok::<_, EtcdTestError>((cert.pem(), key.serialize_pem()))
        };
        let member = issue(
            "wardline-test-etcd-member",
            &["127.0.0.1", "localhost"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let client = issue(
            "wardline-control-plane",
            &[],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?;

        let pki = Self {
            ca: dir.join("ca.pem"),
            member_cert: dir.join("member.pem"),
            member_key: dir.join("member-key.pem"),
            client: EtcdTls {
                ca: dir.join("ca.pem"),
                cert: dir.join("client.pem"),
                key: dir.join("client-key.pem"),
            },
        };
        for (path, pem) in [
            (&pki.ca, &ca_cert.pem()),
            (&pki.member_cert, &member.0),
            (&pki.member_key, &member.1),
            (&pki.client.cert, &client.0),
            (&pki.client.key, &client.1),
        ] {
            std::fs::write(path, pem).map_err(|source| EtcdTestError::Io {
                operation: format!("write {}", path.display()),
                source,
            })?;
        }
        Ok(pki)
    }

    /// The etcd flags that make a member serve clients and peers only over
    /// TLS with these certificates, and require client certificates from
    /// this CA of both.
    pub fn member_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        for (flag, path) in [
            ("--cert-file", &self.member_cert),
            ("--key-file", &self.member_key),
            ("--trusted-ca-file", &self.ca),
            ("--peer-cert-file", &self.member_cert),
            ("--peer-key-file", &self.member_key),
            ("--peer-trusted-ca-file", &self.ca),
        ] {
            args.push(flag.into());
            args.push(path.into());
        }
        args.push("--client-cert-auth".into());
        args.push("--peer-client-cert-auth".into());
        args
    }
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

    /// The member's client URL (`https://127.0.0.1:PORT`).
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

    fn spawn(
        &mut self,
        initial_cluster: &str,
        token: &str,
        pki: &EtcdPki,
    ) -> Result<(), EtcdTestError> {
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
            .args(pki.member_args())
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
    pki: EtcdPki,
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
        let pki = EtcdPki::generate(&dir.path().join("pki"))?;
        let ports = free_ports(size * 2)?;
        let mut members: Vec<EtcdMember> = (0..size)
            .map(|i| {
                let name = format!("wl{}-{seq}-m{i}", std::process::id());
                EtcdMember {
                    client_url: format!("https://127.0.0.1:{}", ports[2 * i]),
                    peer_url: format!("https://127.0.0.1:{}", ports[2 * i + 1]),
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
            member.spawn(&initial_cluster, &token, &pki)?;
        }
        let mut cluster = Self { members, pki, dir };
        cluster.wait_healthy(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Waits until every running member reports healthy.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), EtcdTestError> {
        let deadline = Instant::now() + timeout;
        let tls = crate::etcd::tls_options(&self.pki.client).map_err(|e| {
            EtcdTestError::Certificates(format!("load the client certificates: {e}"))
        })?;
        for member in &mut self.members {
            if member.child.is_none() {
                continue;
            }
            loop {
                if health(&member.client_url, &tls).await {
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

    /// The etcd CA, client certificate and key to connect with.
    pub fn tls(&self) -> &EtcdTls {
        &self.pki.client
    }

    /// The cluster's CA and certificates.
    pub fn pki(&self) -> &EtcdPki {
        &self.pki
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

/// Whether the member at `client_url` answers a linearizable read within a
/// second (what `etcdctl endpoint health` asks): it is up and has a leader.
async fn health(client_url: &str, tls: &etcd_client::TlsOptions) -> bool {
    let probe = async {
        let options = ConnectOptions::new()
            .with_tls(tls.clone())
            .with_connect_timeout(Duration::from_secs(1))
            .with_require_leader(true);
        let mut client = Client::connect([client_url], Some(options)).await.ok()?;
        client
            .get("health", Some(GetOptions::new().with_count_only()))
            .await
            .ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), probe).await,
        Ok(Some(_))
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
