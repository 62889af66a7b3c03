//! A real `wardline-agent` process in a namespace, as tests drive it.
//!
//! The agent runs under `nsenter --net=/run/netns/NAME`, in the namespace's
//! network stack but on the host's bpffs, as a systemd service would: its
//! pins outlive it, which is what lifetime tests need. Dropping the fixture
//! ends the agent by its PID and removes its pins (`--uninstall`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::probe::probe_bin;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `wardline-agent` binary, next to the probe.
pub fn agent_bin() -> PathBuf {
    let bin = probe_bin().with_file_name("wardline-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` (or `cargo xtask test`)",
        bin.display()
    );
    bin
}

pub const BPFFS: &str = "/sys/fs/bpf/wardline-test";

pub struct Agent {
    netns_path: PathBuf,
    pub node: String,
    pub dir: PathBuf,
    pub status: SocketAddr,
    child: Option<Child>,
    interfaces: Vec<String>,
}

/// One HTTP/1.1 GET over a fresh connection: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked bodies: keep the JSON object or text between the chunk sizes.
    let body = if buf
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body.lines()
            .filter(|l| !l.chars().all(|c| c.is_ascii_hexdigit()) || l.is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

/// Replica 0 of `site` on an embedded store (started with the flags the
/// site holds), the routed gateway joined to the management network, and
/// its agent managed by that replica as `{role: gateway}`.
pub fn managed_gateway(site: &mut crate::site::Site) -> (crate::topology::Topology, Agent) {
    use crate::site::Site;
    let store = site.embedded_store();
    site.start_replica(0, &store);
    let routed = crate::topology::routed_gateway();
    site.connect(routed.agent_ns());
    let agent = Agent::start_managed(
        routed.agent_ns(),
        &routed.interfaces(),
        site,
        "{role: gateway}",
        &[Site::endpoint(0)],
    );
    (routed, agent)
}

impl Agent {
    /// Writes the config and policy, starts the agent in `ns` enforcing
    /// `interfaces`, and waits until it is ready.
    pub fn start(ns: &Netns, interfaces: &[&str], policy: &str) -> Agent {
        Self::start_with(ns, interfaces, policy, "")
    }

    /// As [`Agent::start`], with extra `spec` lines (e.g. failsafe flows).
    pub fn start_with(ns: &Netns, interfaces: &[&str], policy: &str, extra_spec: &str) -> Agent {
        let agent = Self::launch(ns, interfaces, policy, extra_spec);
        agent.wait_ready(ns, Duration::from_secs(15));
        agent
    }

    /// Starts the agent and returns once its status endpoint answers,
    /// ready or not.
    pub fn start_unready(ns: &Netns, interfaces: &[&str], policy: &str) -> Agent {
        let agent = Self::launch(ns, interfaces, policy, "");
        agent.wait_answering(ns);
        agent
    }

    fn launch(ns: &Netns, interfaces: &[&str], policy: &str, extra_spec: &str) -> Agent {
        let node = Self::next_node();
        let dir = Self::dir_of(&node);
        std::fs::write(dir.join("policy.yaml"), policy).expect("policy file");
        let mode = format!("  policyFile: {}\n", dir.join("policy.yaml").display());
        Self::launch_mode(ns, interfaces, node, &mode, "{}", extra_spec)
    }

    fn next_node() -> String {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("wl-{}-{n}", std::process::id())
    }

    fn dir_of(node: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wardline-agent-{node}"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        dir
    }

    /// A managed agent of `site`, with its own agent certificate, labels
    /// and the control-plane replicas `endpoints`. Returns once its status
    /// endpoint answers (ready or not).
    pub fn start_managed(
        ns: &Netns,
        interfaces: &[&str],
        site: &crate::site::Site,
        labels: &str,
        endpoints: &[String],
    ) -> Agent {
        let node = Self::next_node();
        let dir = Self::dir_of(&node);
        let (cert, key) = site.issue("agent", &node);
        let mode = format!(
            "  controlPlane:\n    endpoint: {}\n    endpoints: [{}]\n    caFile: {}\n    certFile: {}\n    keyFile: {}\n  stateDir: {}\n",
            endpoints[0],
            endpoints.join(", "),
            site.ca().display(),
            cert.display(),
            key.display(),
            dir.join("state").display(),
        );
        let agent = Self::launch_mode(ns, interfaces, node, &mode, labels, "");
        agent.wait_answering(ns);
        agent
    }

    fn launch_mode(
        ns: &Netns,
        interfaces: &[&str],
        node: String,
        mode: &str,
        labels: &str,
        extra_spec: &str,
    ) -> Agent {
        let dir = Self::dir_of(&node);
        let status: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let config = format!(
            "apiVersion: wardline/v1\nkind: AgentConfig\nmetadata: {{name: {node}, labels: {labels}}}\nspec:\n  interfaces: [{}]\n{mode}  statusAddress: {status}\n  bpffs: {BPFFS}\n  flowLog: {}\n{extra_spec}",
            interfaces.join(", "),
            dir.join("flows.jsonl").display(),
        );
        std::fs::write(dir.join("agent.yaml"), config).expect("agent config");
        let mut agent = Agent {
            netns_path: ns.path(),
            node,
            dir,
            status,
            child: None,
            interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
        };
        agent.spawn();
        agent
    }

    /// A file in a managed agent's state directory for its node.
    pub fn state_file(&self, name: &str) -> PathBuf {
        self.dir.join("state").join(&self.node).join(name)
    }

    /// Starts the process (again).
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path.display()))
            .arg(agent_bin())
            .arg("--config")
            .arg(self.dir.join("agent.yaml"))
            .env("WARDLINE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn wardline-agent");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9` of the agent process (only ours, by PID).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn get(&self, ns: &Netns, path: &str) -> Option<(u16, String)> {
        let addr = self.status;
        let path = path.to_owned();
        ns.run_in(move || http_get(addr, &path).ok())
    }

    pub fn status_json(&self, ns: &Netns) -> serde_json::Value {
        let (code, body) = self.get(ns, "/status").expect("status endpoint answers");
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(body.trim())
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    pub fn generation(&self, ns: &Netns) -> u64 {
        self.status_json(ns)["generation"].as_u64().unwrap_or(0)
    }

    /// Waits until the status endpoint answers, ready or not.
    fn wait_answering(&self, ns: &Netns) {
        let start = Instant::now();
        while self.get(ns, "/healthz").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "agent {} does not answer; log:\n{}",
                self.node,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for /readyz to say 200; panics with the agent's log if it does not.
    pub fn wait_ready(&self, ns: &Netns, within: Duration) {
        let start = Instant::now();
        loop {
            if let Some((200, _)) = self.get(ns, "/readyz") {
                return;
            }
            if start.elapsed() > within {
                panic!(
                    "agent {} not ready within {within:?}; log:\n{}",
                    self.node,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Replaces the policy file and sends SIGHUP; returns once the new
    /// generation is enforced (or panics with the log).
    pub fn set_policy(&self, ns: &Netns, policy: &str) -> Instant {
        let before = self.generation(ns);
        std::fs::write(self.dir.join("policy.yaml"), policy).expect("policy file");
        self.hup();
        let start = Instant::now();
        while self.generation(ns) <= before {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "policy not applied; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Instant::now()
    }

    pub fn hup(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.join("policy.yaml")
    }

    /// Flow events written so far.
    pub fn flows(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("flows.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Whether this node's pins exist on the host bpffs.
    pub fn pinned(&self) -> bool {
        Path::new(BPFFS).join(&self.node).exists()
    }

    pub fn interfaces(&self) -> &[String] {
        &self.interfaces
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = Command::new(agent_bin())
            .arg("--config")
            .arg(self.dir.join("agent.yaml"))
            .arg("--uninstall")
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
