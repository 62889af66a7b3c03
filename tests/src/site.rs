//! A managed site in namespaces: a management namespace holding the
//! control-plane replicas (and etcd members) on a management bridge
//! (192.0.2.0/24), certificates issued with `wardctl pki`, and a management
//! link into each agent's namespace. Everything it started is ended by PID
//! and removed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::link::{addr, link_up, veth};

/// A code of `secret` not used yet by a login made before this call:
/// waits for the next 30-second step (a code is good once), then gives
/// the code of the step after it.
pub fn fresh_code(secret: &str) -> String {
    let step = wardline_mfa::STEP;
    let now = unix_now();
    std::thread::sleep(std::time::Duration::from_secs(step - now % step));
    wardline_mfa::code_at(secret, unix_now() + step).expect("a base32 secret")
}

/// Seconds since 1970, as TOTP counts them.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
use crate::netns::Netns;
use crate::probe::probe_bin;
use wardline_proto::v1;
use wardline_store::testing::EtcdPki;

fn bin(name: &str) -> PathBuf {
    let b = probe_bin().with_file_name(name);
    assert!(
        b.exists(),
        "{} is missing: run `cargo build --workspace --bins`",
        b.display()
    );
    b
}

/// Replica addresses on the management bridge.
pub const REPLICAS: [&str; 2] = ["192.0.2.1", "192.0.2.2"];
pub const PORT: u16 = 7443;

pub struct Process {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGHUP to the process (one this harness started, by its PID).
    pub fn hup(&self) {
        let pid = self.child.as_ref().expect("the process runs").id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a PID")),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Site {
    pub ns: Netns,
    pub dir: PathBuf,
    links: u8,
    pub replicas: Vec<Process>,
    pub etcd: Vec<Process>,
    /// The `--etcd-*` flags of the etcd members started, for the replicas.
    etcd_flags: Vec<String>,
    /// More flags for every replica started from now on.
    pub replica_flags: Vec<String>,
}

impl Site {
    pub fn new() -> Site {
        let ns = Netns::new("mgmt");
        let dir = std::env::temp_dir().join(format!(
            "wardline-site-{}-{}",
            std::process::id(),
            ns.name()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        ns.ip(["link", "add", "mg", "type", "bridge"]);
        ns.ip(["link", "set", "mg", "up"]);
        for a in REPLICAS {
            ns.ip(["addr", "add", &format!("{a}/24"), "dev", "mg"]);
        }
        let site = Site {
            ns,
            dir,
            links: 10,
            replicas: Vec::new(),
            etcd: Vec::new(),
            etcd_flags: Vec::new(),
            replica_flags: Vec::new(),
        };
        let ca = site.dir.join("ca");
        site.wardctl_local(&[
            "pki",
            "init",
            "--dir",
            ca.to_str().unwrap(),
            "--site",
            "test-hospital",
        ]);
        site.issue_replica_certificate(&site.dir);
        site.issue("operator", "ops");
        site
    }

    fn wardctl_local(&self, args: &[&str]) -> Output {
        let out = Command::new(bin("wardctl"))
            .args(args)
            .output()
            .expect("wardctl runs");
        assert!(
            out.status.success(),
            "wardctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Issues the replicas' certificate into `out` (its files `cp.pem`,
    /// `cp-key.pem`): at set-up, and again as a renewal before the old
    /// one expires.
    pub fn issue_replica_certificate(&self, out: &std::path::Path) {
        let ca = self.dir.join("ca");
        let mut args = vec![
            "pki",
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--role",
            "control-plane",
            "--name",
            "cp",
            "--out",
            out.to_str().unwrap(),
        ];
        for a in REPLICAS {
            args.extend(["--san", a]);
        }
        // For a browser on this machine reaching a replica's dashboard
        // through a forwarded loopback port (the lab, held).
        args.extend(["--san", "127.0.0.1"]);
        self.wardctl_local(&args);
    }

    /// Replicas started from now on renew agent certificates with the
    /// site CA's key, for `lifetime` (`10m`).
    pub fn renew_agents(&mut self, lifetime: &str) {
        self.replica_flags.extend([
            "--ca-key".to_owned(),
            self.dir.join("ca/ca-key.pem").display().to_string(),
            "--agent-certificate-lifetime".to_owned(),
            lifetime.to_owned(),
        ]);
    }

    /// Issues a certificate; returns (cert, key).
    pub fn issue(&self, role: &str, name: &str) -> (PathBuf, PathBuf) {
        let ca = self.dir.join("ca");
        self.wardctl_local(&[
            "pki",
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--role",
            role,
            "--name",
            name,
            "--out",
            self.dir.to_str().unwrap(),
        ]);
        (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        )
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca/ca.pem")
    }

    /// A management link into `other` (its interface `mg0`, 192.0.2.N).
    pub fn connect(&mut self, other: &Netns) -> String {
        self.links += 1;
        let port = format!("mg{}", self.links);
        veth(&self.ns, &port, other, "mg0");
        self.ns.ip(["link", "set", &port, "master", "mg"]);
        link_up(&self.ns, &port);
        let a = format!("192.0.2.{}", self.links);
        addr(other, "mg0", &format!("{a}/24"));
        a
    }

    pub fn endpoint(i: usize) -> String {
        format!("https://{}:{PORT}", REPLICAS[i])
    }

    /// Starts replica `i` with `store` (e.g. `embedded:/path`, or what
    /// [`Site::start_etcd`] returned), waiting until it listens.
    pub fn start_replica(&mut self, i: usize, store: &str) {
        let log = self.dir.join(format!("replica-{i}.log"));
        let etcd_flags: &[String] = if store.starts_with("etcd:") {
            &self.etcd_flags
        } else {
            &[]
        };
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(bin("wardline-control-plane"))
            .args([
                "--listen",
                &format!("{}:{PORT}", REPLICAS[i]),
                "--store",
                store,
            ])
            .arg("--ca")
            .arg(self.ca())
            .arg("--cert")
            .arg(self.dir.join("cp.pem"))
            .arg("--key")
            .arg(self.dir.join("cp-key.pem"))
            .arg("--store-key")
            .arg(self.store_key())
            .args(etcd_flags)
            // Each replica its own flow store, in the site's directory,
            // unless the flags name a shared one.
            .args(
                (!self.replica_flags.iter().any(|f| f == "--flow-postgres"))
                    .then(|| {
                        [
                            "--flow-store".into(),
                            self.dir.join(format!("flows-{i}.redb")),
                        ]
                    })
                    .into_iter()
                    .flatten()
                    .collect::<Vec<PathBuf>>(),
            )
            .args(&self.replica_flags)
            .args(["--replica", &format!("replica-{i}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("control plane starts");
        let p = Process {
            name: format!("replica-{i}"),
            child: Some(child),
            log,
        };
        let addr: SocketAddr = format!("{}:{PORT}", REPLICAS[i]).parse().unwrap();
        let start = Instant::now();
        while !self.ns.run_in(move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        }) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "replica {i} does not listen:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if self.replicas.len() > i {
            self.replicas[i] = p;
        } else {
            self.replicas.push(p);
        }
    }

    /// The site's store key file, shared by its replicas; made on first use.
    pub fn store_key(&self) -> PathBuf {
        let path = self.dir.join("store.key");
        if !path.exists() {
            wardline_store::encrypted::StoreKey::generate(&path).expect("a store key");
        }
        path
    }

    pub fn embedded_store(&self) -> String {
        format!("embedded:{}", self.dir.join("control-plane.redb").display())
    }

    /// Starts `n` etcd members on the management namespace's loopback,
    /// serving clients and peers only over TLS with certificates from a
    /// CA of their own and requiring client certificates from it; returns
    /// the store spec naming them all. Replicas started on it afterwards
    /// reach it with the client certificate of that CA.
    pub fn start_etcd(&mut self, n: usize) -> String {
        let pki = EtcdPki::generate(&self.dir.join("etcd-pki")).expect("etcd certificates");
        let cluster: Vec<String> = (0..n)
            .map(|i| format!("m{i}=https://127.0.0.1:{}", 23800 + i))
            .collect();
        for i in 0..n {
            let data = self.dir.join(format!("etcd-{i}"));
            let log = self.dir.join(format!("etcd-{i}.log"));
            let client = format!("https://127.0.0.1:{}", 23790 + i);
            let peer = format!("https://127.0.0.1:{}", 23800 + i);
            let child = Command::new("ip")
                .args(["netns", "exec", self.ns.name(), "etcd"])
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &cluster.join(",")])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "wardline-test",
                ])
                .args(pki.member_args())
                .args(["--max-request-bytes", "33554432"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("etcd starts");
            self.etcd.push(Process {
                name: format!("etcd-{i}"),
                child: Some(child),
                log,
            });
        }
        let endpoints: Vec<String> = (0..n)
            .map(|i| format!("https://127.0.0.1:{}", 23790 + i))
            .collect();
        let tls = &pki.client;
        let (ca, cert, key) = (
            tls.ca.display().to_string(),
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
        );
        // Healthy when a quorum answers.
        let start = Instant::now();
        loop {
            let out = self.ns.try_exec([
                "etcdctl",
                "--endpoints",
                &endpoints.join(","),
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
                "endpoint",
                "health",
            ]);
            if out.is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd not healthy:\n{}",
                self.etcd[0].log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.etcd_flags = vec![
            "--etcd-ca".to_owned(),
            ca,
            "--etcd-cert".to_owned(),
            cert,
            "--etcd-key".to_owned(),
            key,
        ];
        format!("etcd:{}", endpoints.join(","))
    }

    /// `wardctl ARGS` as the operator, against replica `replica`.
    pub fn wardctl(&self, replica: usize, args: &[&str]) -> Output {
        self.wardctl_command(replica, args)
            .output()
            .expect("wardctl runs")
    }

    /// [`Site::wardctl`]'s command, to spawn (a follow that runs on).
    pub fn wardctl_command(&self, replica: usize, args: &[&str]) -> Command {
        self.wardctl_command_as("ops", replica, args)
    }

    /// `wardctl` as the operator `name` (its certificate from
    /// [`Site::issue`]).
    pub fn wardctl_as(&self, name: &str, replica: usize, args: &[&str]) -> Output {
        self.wardctl_command_as(name, replica, args)
            .output()
            .expect("wardctl runs")
    }

    fn wardctl_command_as(&self, name: &str, replica: usize, args: &[&str]) -> Command {
        let (cert, key) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(bin("wardctl"))
            .args(["--endpoint", &Self::endpoint(replica)])
            .arg("--ca")
            .arg(self.ca())
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg("--session")
            .arg(self.dir.join(format!("{name}.session")))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Enrols the operator `name` in a second factor with `wardctl mfa
    /// enroll` (reading the secret it shows, answering with the code an
    /// authenticator app would show), then opens a session with `wardctl
    /// login`. Returns the secret.
    pub fn mfa_login(&self, name: &str, replica: usize) -> String {
        let (secret, now) = self.enroll(name, replica);
        // The next step's code: the enrolment's own is used up.
        let code = wardline_mfa::code_at(&secret, now + wardline_mfa::STEP).expect("a code");
        let out = self.wardctl_as(name, replica, &["login", "--code", &code]);
        assert!(
            out.status.success(),
            "wardctl login: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        secret
    }

    /// [`Site::mfa_login`]'s enrolment alone: the secret.
    pub fn mfa_enroll(&self, name: &str, replica: usize) -> String {
        self.enroll(name, replica).0
    }

    /// Enrols `name`: the secret, and the time of the code that confirmed it.
    fn enroll(&self, name: &str, replica: usize) -> (String, u64) {
        use std::io::{BufRead as _, BufReader, Write as _};
        let mut child = self
            .wardctl_command_as(name, replica, &["mfa", "enroll"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("wardctl runs");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut shown = String::new();
        let secret = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).expect("reads") == 0 {
                let out = child.wait_with_output().expect("waits");
                panic!(
                    "wardctl mfa enroll showed no secret: {shown}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            shown.push_str(&line);
            if let Some(s) = line.trim().strip_prefix("or enter the secret by hand: ") {
                break s.to_owned();
            }
        };
        let now = unix_now();
        let code = wardline_mfa::code_at(&secret, now).expect("a base32 secret");
        writeln!(child.stdin.take().expect("piped"), "{code}").expect("writes");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut rest);
        let out = child.wait_with_output().expect("waits");
        assert!(
            out.status.success(),
            "wardctl mfa enroll: {shown}{rest}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            shown.contains('▀') || shown.contains('█'),
            "a QR code: {shown}"
        );
        (secret, now)
    }

    /// Applies `policy` as the whole policy (`--prune`); returns the revision.
    pub fn apply(&self, replica: usize, policy: &str) -> u64 {
        let file = self.dir.join("apply.yaml");
        std::fs::write(&file, policy).unwrap();
        let out = self.wardctl(
            replica,
            &[
                "apply",
                "--prune",
                "-f",
                file.to_str().unwrap(),
                "-o",
                "json",
            ],
        );
        assert!(
            out.status.success(),
            "wardctl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["revision"].as_u64().expect("revision")
    }

    pub fn status(&self, replica: usize) -> serde_json::Value {
        let out = self.wardctl(replica, &["status", "-o", "json"]);
        assert!(
            out.status.success(),
            "wardctl status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// Waits until every node in `nodes` acknowledges `revision`; returns how long it took.
    pub fn wait_acked(
        &self,
        replica: usize,
        nodes: &[&str],
        revision: u64,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let s = self.status(replica);
            let acked = nodes.iter().all(|n| {
                s["agents"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["node"] == *n && a["ackedRevision"].as_u64() >= Some(revision))
            });
            if acked {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "not every agent acknowledged revision {revision}: {s}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Default for Site {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.replicas.clear();
        self.etcd.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A flow record a simulated gateway agent reports: ws 198.18.20.10 to
/// ehr 198.18.41.10 on `dport`, `allowed` (by ws-ehr-web) or `dropped`
/// (default deny), the `seq`-th of its buffer, timed now.
pub fn ws_ehr_record(seq: u64, dport: u32, verdict: &str) -> v1::Flow {
    let dropped = verdict == "dropped";
    v1::Flow {
        time: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        kind: if dropped { "drop" } else { "new" }.into(),
        interface: "eth1".into(),
        direction: "ingress".into(),
        src: vec![198, 18, 20, 10],
        dst: vec![198, 18, 41, 10],
        sport: 40_000 + seq as u32,
        dport,
        protocol: 6,
        src_segment: "ws".into(),
        dst_segment: "ehr".into(),
        verdict: verdict.into(),
        reason: if dropped {
            "default-deny"
        } else {
            "policy-allow"
        }
        .into(),
        policy: if dropped { "" } else { "ws-ehr-web" }.into(),
        generation: 1,
        revision: 1,
        packets: 1,
        bytes: 60,
        sequence: seq,
        src_mac: vec![2, 0, 0, 0, 0x14, 0x0a],
        ..Default::default()
    }
}
