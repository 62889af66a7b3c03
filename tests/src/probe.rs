//! Running `wardline-probe` inside namespaces.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crate::BIN_DIR_ENV;
use crate::command::describe;
use crate::netns::Netns;

/// The probe binary's name.
pub const PROBE_BIN_NAME: &str = "wardline-probe";

/// The time [`Netns::tcp_ok`], [`Netns::udp_ok`] and [`Netns::ping_ok`]
/// give a check: long enough for a veth round trip with neighbour
/// resolution, short enough for a full reachability matrix to stay fast.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(700);

/// How long [`Netns::serve`] waits for the server to say "ready".
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The most standard error kept from a server, for messages.
const STDERR_KEPT: usize = 16 * 1024;

/// Where the built `wardline-probe` is: in `$WARDLINE_BIN_DIR` if set, else
/// in `$CARGO_TARGET_DIR/debug` if set, else in the workspace's
/// `target/debug`. Panics, saying how to build it, if it is not there.
#[track_caller]
pub fn probe_bin() -> PathBuf {
    let dir = match (
        std::env::var_os(BIN_DIR_ENV),
        std::env::var_os("CARGO_TARGET_DIR"),
    ) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(target)) => PathBuf::from(target).join("debug"),
        (None, None) => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"),
    };
    let bin = dir.join(PROBE_BIN_NAME);
    assert!(
        bin.is_file(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` \
         (or point {BIN_DIR_ENV} at the directory holding them)",
        bin.display()
    );
    bin
}

/// The result of [`Netns::retry_tcp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryCount {
    pub succeeded: u64,
    pub attempted: u64,
}

/// A `wardline-probe serve` running in a namespace. Dropping it stops the
/// server; so does the end of the test process, since the server exits when
/// its standard input closes.
#[derive(Debug)]
pub struct ServerHandle {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
    netns: String,
}

impl ServerHandle {
    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name of the namespace it serves in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Whether the server is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the server wrote to standard error so far (its listening
    /// sockets and any connection errors).
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the server now (dropping the handle does the same).
    pub fn stop(self) {}
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn append_bounded(log: &Mutex<String>, line: &str) {
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    if log.len() + line.len() < STDERR_KEPT {
        log.push_str(line);
        log.push('\n');
    }
}

/// Whether [`Netns::probe`] echoes each probe's report to stderr.
static ECHO: AtomicBool = AtomicBool::new(true);

/// Stops [`Netns::probe`] echoing probe reports (for the lab, whose output
/// is its story, not a test log).
pub fn quiet_probes() {
    ECHO.store(false, Ordering::Relaxed);
}

impl Netns {
    /// `ip netns exec NAME wardline-probe args...`, not yet run.
    pub fn probe_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        args.insert(0, probe_bin().into_os_string());
        self.command(args)
    }

    /// Runs the probe with `args` and returns its output whatever its exit
    /// status (1 is a failed check, not an error). Panics only if it cannot
    /// be started.
    #[track_caller]
    pub fn probe<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.probe_command(args);
        cmd.stdin(Stdio::null());
        let output = cmd
            .output()
            .unwrap_or_else(|err| panic!("`{}` could not be started: {err}", describe(&cmd)));
        // Shown with the test's own output when it fails.
        if ECHO.load(Ordering::Relaxed) {
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            for line in stdout.lines().chain(stderr.lines()) {
                eprintln!("[{}] {line}", self.name());
            }
        }
        output
    }

    /// Starts the probe with `args` in the background, like
    /// [`Netns::spawn`] (for `stream` or `retry-tcp` running while a test
    /// changes something); stdout is piped so its report can be read after
    /// [`Child::wait_with_output`].
    #[track_caller]
    pub fn spawn_probe<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.probe_command(args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        self.spawn_command(&mut cmd)
    }

    /// Starts an echo server on these TCP and UDP ports (IPv4 and IPv6) and
    /// waits until it listens. Panics, with the server's error, if it
    /// cannot listen.
    #[track_caller]
    pub fn serve(&self, tcp_ports: &[u16], udp_ports: &[u16]) -> ServerHandle {
        self.serve_on(&[], tcp_ports, udp_ports)
    }

    /// [`Netns::serve`] listening on these addresses only (empty: all).
    #[track_caller]
    pub fn serve_on(&self, bind: &[IpAddr], tcp_ports: &[u16], udp_ports: &[u16]) -> ServerHandle {
        let mut args = vec!["serve".to_string(), "--until-stdin-closes".to_string()];
        for port in tcp_ports {
            args.extend(["--tcp".to_string(), port.to_string()]);
        }
        for port in udp_ports {
            args.extend(["--udp".to_string(), port.to_string()]);
        }
        for ip in bind {
            args.extend(["--bind".to_string(), ip.to_string()]);
        }
        let mut cmd = self.probe_command(&args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.spawn_command(&mut cmd);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();

        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(pipe) = stderr_pipe {
            let log = Arc::clone(&stderr);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    append_bounded(&log, &line);
                }
            });
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        if let Some(pipe) = stdout {
            thread::spawn(move || {
                let mut reader = BufReader::new(pipe);
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let _ = ready_tx.send(first);
                // Keep the pipe drained so the server never blocks on it.
                let _ = std::io::copy(&mut reader.take(u64::MAX), &mut std::io::sink());
            });
        }
        let mut handle = ServerHandle {
            child,
            stdin,
            stderr,
            netns: self.name().to_string(),
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.trim_end() == "ready" => handle,
            outcome => {
                let _ = handle.child.kill();
                let status = handle.child.wait();
                // Give the stderr reader a moment to collect the last words.
                thread::sleep(Duration::from_millis(50));
                panic!(
                    "`{}` did not become ready ({}; {status:?}): {}",
                    describe(&cmd),
                    match outcome {
                        Ok(line) => format!("first line {line:?}"),
                        Err(_) => format!("nothing within {READY_TIMEOUT:?}"),
                    },
                    handle.stderr().trim_end()
                )
            }
        }
    }

    fn check(&self, args: &[String]) -> bool {
        self.probe(args).status.success()
    }

    /// Whether a TCP connection from this namespace to `addr` (IPv4 or
    /// IPv6) `port` gets a line echoed within [`PROBE_TIMEOUT`].
    #[track_caller]
    pub fn tcp_ok(&self, addr: impl Display, port: u16) -> bool {
        self.check(&[
            "tcp".into(),
            addr.to_string(),
            port.to_string(),
            timeout_arg(),
            timeout_ms(),
        ])
    }

    /// Whether a UDP datagram from this namespace to `addr` `port` is echoed
    /// within [`PROBE_TIMEOUT`].
    #[track_caller]
    pub fn udp_ok(&self, addr: impl Display, port: u16) -> bool {
        self.check(&[
            "udp".into(),
            addr.to_string(),
            port.to_string(),
            timeout_arg(),
            timeout_ms(),
        ])
    }

    /// Whether an ICMP (or ICMPv6) echo from this namespace to `addr` is
    /// answered within [`PROBE_TIMEOUT`].
    #[track_caller]
    pub fn ping_ok(&self, addr: impl Display) -> bool {
        self.check(&["ping".into(), addr.to_string(), timeout_arg(), timeout_ms()])
    }

    /// Opens a fresh TCP connection to `addr` `port` every 100 ms for
    /// `seconds` and counts those whose echo came back.
    #[track_caller]
    pub fn retry_tcp(&self, addr: impl Display, port: u16, seconds: u64) -> RetryCount {
        let output = self.probe([
            "retry-tcp".to_string(),
            addr.to_string(),
            port.to_string(),
            "--seconds".to_string(),
            seconds.to_string(),
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        parse_retry(&stdout).unwrap_or_else(|| panic!("retry-tcp gave no summary line: {stdout:?}"))
    }
}

fn timeout_arg() -> String {
    "--timeout-ms".to_string()
}

fn timeout_ms() -> String {
    PROBE_TIMEOUT.as_millis().to_string()
}

/// Reads `succeeded=K attempted=M` from the last line.
fn parse_retry(stdout: &str) -> Option<RetryCount> {
    let last = stdout.lines().last()?;
    let mut succeeded = None;
    let mut attempted = None;
    for field in last.split_whitespace() {
        match field.split_once('=') {
            Some(("succeeded", n)) => succeeded = n.parse().ok(),
            Some(("attempted", n)) => attempted = n.parse().ok(),
            _ => {}
        }
    }
    Some(RetryCount {
        succeeded: succeeded?,
        attempted: attempted?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_summary_parses() {
        let out = "retry-tcp 198.18.0.2:80 at_ms=0 ok\nsucceeded=9 attempted=10\n";
        assert_eq!(
            parse_retry(out),
            Some(RetryCount {
                succeeded: 9,
                attempted: 10
            })
        );
        assert_eq!(parse_retry("retry-tcp 198.18.0.2:80 at_ms=0 ok\n"), None);
    }
}
