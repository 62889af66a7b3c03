//! The network namespace guard.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::command::{CommandError, describe, run, try_run};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Every namespace this harness creates starts with this.
const NAME_PREFIX: &str = "wl-";

/// How long [`Netns`]'s drop waits for the processes it killed to go.
const KILL_WAIT: Duration = Duration::from_secs(2);

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// A named network namespace, `wl-{tag}-{pid}-{counter}`, that exists for as
/// long as this guard does.
///
/// [`Netns::new`] creates it, brings `lo` up and turns IPv6 duplicate
/// address detection off for the interfaces that will come. Dropping the guard, on
/// success or during a panic, kills the processes started through
/// [`Netns::spawn`] and [`Netns::spawn_command`] that are still running (by
/// their PID, checked against the process start time so that a reused PID
/// is never hit) and deletes the namespace with `ip netns del`.
#[derive(Debug)]
pub struct Netns {
    name: String,
    spawned: Mutex<Vec<Spawned>>,
}

/// A process the guard started: its PID and the start time the kernel gave
/// it, so that a reused PID is never mistaken for it.
#[derive(Debug)]
struct Spawned {
    pid: u32,
    started: Option<u64>,
}

impl Netns {
    /// Creates a uniquely named namespace and brings its loopback up.
    ///
    /// `tag` says what the namespace plays (`client`, `router`...): ASCII
    /// letters, digits, `_` and `-` only. Panics if the namespace cannot be
    /// created.
    #[track_caller]
    pub fn new(tag: &str) -> Netns {
        assert!(
            !tag.is_empty()
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "namespace tag {tag:?} must be non-empty ASCII letters, digits, `_` or `-`"
        );
        SWEEP.call_once(sweep_stale);
        let name = format!(
            "{NAME_PREFIX}{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        if Path::new(NETNS_DIR).join(&name).exists() {
            // Left by an earlier process that had this PID and crashed.
            let _ = try_run(Command::new("ip").args(["netns", "del", &name]));
        }
        run(Command::new("ip").args(["netns", "add", &name]));
        // The guard exists from here on, so a failure below still cleans up.
        let ns = Netns {
            name,
            spawned: Mutex::new(Vec::new()),
        };
        ns.ip(["link", "set", "dev", "lo", "up"]);
        // No duplicate address detection on any interface created from now
        // on. `nodad` on the test's addresses is not enough: a router
        // solicits neighbours for forwarded packets from its link-local
        // address, and sends nothing while that is still tentative (the
        // first second or two).
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, `/run/netns/NAME` (for `nsenter --net=`
    /// or `setns`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `ip netns exec NAME args...`, not yet run: a command to adjust (pipes,
    /// environment) and then run or pass to [`Netns::spawn_command`].
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `args` inside the namespace and returns its output; panics with
    /// the command line and its standard error unless it exits 0.
    #[track_caller]
    pub fn exec<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&mut self.command(args))
    }

    /// Runs `args` inside the namespace; an error unless it exits 0.
    pub fn try_exec<I, S>(&self, args: I) -> Result<Output, CommandError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        try_run(&mut self.command(args))
    }

    /// Runs `ip -n NAME args...` (no `ip netns exec` needed for `ip` itself);
    /// panics unless it exits 0.
    #[track_caller]
    pub fn ip<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&mut self.ip_command(args))
    }

    /// Runs `ip -n NAME args...`; an error unless it exits 0.
    pub fn try_ip<I, S>(&self, args: I) -> Result<Output, CommandError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        try_run(&mut self.ip_command(args))
    }

    fn ip_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        cmd
    }

    /// Starts `args` inside the namespace in the background, standard input
    /// from `/dev/null`, output inherited. The guard kills it on drop if it
    /// is still running.
    #[track_caller]
    pub fn spawn<I, S>(&self, args: I) -> Child
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null());
        self.spawn_command(&mut cmd)
    }

    /// Starts a prepared command (normally from [`Netns::command`]) and
    /// tracks it like [`Netns::spawn`] does.
    #[track_caller]
    pub fn spawn_command(&self, cmd: &mut Command) -> Child {
        let child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("`{}` could not be started: {err}", describe(cmd)));
        let pid = child.id();
        // The child is not reaped before its owner waits, so its start time
        // is still readable here.
        let started = start_time(pid);
        self.spawned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Spawned { pid, started });
        child
    }

    /// Runs `f` on a thread that has joined this namespace (network
    /// namespace only), for sockets opened from the test process itself.
    /// Panics in `f` propagate.
    #[track_caller]
    pub fn run_in<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(self.path())
            .unwrap_or_else(|err| panic!("cannot open {}: {err}", self.path().display()));
        thread::scope(|scope| {
            let handle = scope.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|err| panic!("setns into {}: {err}", self.name));
                f()
            });
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Writes a sysctl of this namespace: `key` in dotted form
    /// (`net.ipv4.ip_forward`) or as a path under `/proc/sys`
    /// (`net/ipv6/conf/br0/disable_ipv6`, for names with dots in them).
    #[track_caller]
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = if key.contains('/') {
            Path::new("/proc/sys").join(key)
        } else {
            Path::new("/proc/sys").join(key.replace('.', "/"))
        };
        self.run_in(|| std::fs::write(&path, value))
            .unwrap_or_else(|err| {
                panic!(
                    "sysctl {key}={value} in {}: {}: {err}",
                    self.name,
                    path.display()
                )
            });
    }

    /// Reads a sysctl of this namespace (same key forms as [`Netns::sysctl`]).
    #[track_caller]
    pub fn read_sysctl(&self, key: &str) -> String {
        let path = if key.contains('/') {
            Path::new("/proc/sys").join(key)
        } else {
            Path::new("/proc/sys").join(key.replace('.', "/"))
        };
        self.run_in(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|err| panic!("sysctl {key} in {}: {err}", self.name))
            .trim()
            .to_string()
    }

    fn kill_spawned(&self) {
        let spawned =
            std::mem::take(&mut *self.spawned.lock().unwrap_or_else(PoisonError::into_inner));
        let mut killed = Vec::new();
        for process in spawned {
            if process.started.is_some() && start_time(process.pid) == process.started {
                let Ok(pid) = i32::try_from(process.pid) else {
                    continue;
                };
                if !is_zombie(process.pid) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    killed.push(process);
                }
            }
        }
        let deadline = Instant::now() + KILL_WAIT;
        for process in killed {
            while Instant::now() < deadline
                && start_time(process.pid) == process.started
                && !is_zombie(process.pid)
            {
                thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.kill_spawned();
        if let Err(err) = try_run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "wardline-tests: could not delete namespace {}: {err}",
                self.name
            );
        }
    }
}

/// Whether `ip netns` has a namespace of this name.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// `/proc/PID/stat`, split after the command name (which may hold spaces):
/// field 3 (state) comes first.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Field 22, the start time in clock ticks since boot.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state == "Z"))
}

/// Deletes the namespaces that earlier test processes named after
/// themselves and left behind when they died without unwinding (killed, or
/// aborted). Their processes are not touched.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let mut parts = rest.rsplitn(3, '-');
        let (Some(counter), Some(pid), Some(_tag)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(_), Ok(pid)) = (counter.parse::<u32>(), pid.parse::<u32>()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("wardline-tests: deleting stale namespace {name}");
            let _ = try_run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
}
