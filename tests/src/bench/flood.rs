//! Part 6: allowed traffic under a flood of denied SYNs. A gateway enforced
//! by Wardline forwards an allowed TCP stream (iperf3) while the client's
//! side floods it, as fast as this machine can send, with TCP SYNs from
//! spoofed addresses and ports of the test ranges to ports no policy allows.
//! Does the stream keep its throughput, and does every tracked connection
//! survive?
//!
//! ```text
//!  client ns                 gateway ns                       server ns
//!  eth0 198.18.1.2 ------- c0 | s0 ------------------------- eth0 198.18.2.2
//!  iperf3 -c, echo clients  ^ wardline-agent                  iperf3 -s, echo server
//!  AF_PACKET flood sender --' (denied SYNs, dropped at c0's ingress)
//! ```
//!
//! The topology is the throughput part's. The agent's policy allows the
//! client to the server on TCP 5201 (iperf3) and the echo port; nothing
//! else. Before the runs, long-lived echo connections are opened; each
//! flooded run is a stream started unflooded, then flooded from half a
//! second on until it ends; unflooded and flooded runs alternate. After
//! each flood, the echo connections must still echo and still be in the
//! agent's tracking table (read through its pin). The flood is bounded in
//! packets and seconds.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use nix::libc;
use serde::Serialize;
use serde_json::Value;
use wardline_agent::enforcer;
use wardline_ebpf_abi as abi;

use crate::agent::{Agent, BPFFS};
use crate::bench::memory::{conntrack, mapped, pinned_maps};
use crate::bench::packet::tcp_frame;
use crate::bench::throughput::{
    self, Bench, CLIENT, CLOSED_PORT, GW_IN, PORT, SERVER, Traffic, exec_ok,
};
use crate::bench::{
    Budget, Results, Section, Target, cpus_online, pin_to_cpu, procfs, stats, thousands,
};
use crate::netns::Netns;

/// The echo server's port.
const ECHO_PORT: u16 = 5202;
/// The flood's destination ports: no policy names them.
const FLOOD_PORTS: std::ops::Range<u16> = 20_000..60_000;
/// Frames per `sendmmsg` call.
const SEND_BATCH: usize = 64;
/// The CPU the flood sender runs on (the iperf3 client has CPU 0).
const FLOOD_CPU: usize = 1;
/// The flood starts this long after the stream.
const FLOOD_DELAY: Duration = Duration::from_millis(500);
/// The share of its unflooded throughput the stream must keep.
const KEEP: f64 = 0.9;
/// The agent writes its flow log here; it is emptied this often during a
/// flood, so that a flood's records never fill the disk.
const LOG_TRUNCATE_EVERY: Duration = Duration::from_millis(200);

/// The agent's policy: the client may reach the server on iperf3's port and
/// the echo port; everything else is denied.
fn policy() -> String {
    format!(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: client}}\nspec: {{cidrs: [\"{CLIENT}/32\"]}}\n\
---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: server}}\nspec: {{cidrs: [\"{SERVER}/32\"]}}\n\
---\napiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: client-to-server}}\n\
spec: {{action: allow, from: [client], to: [server], ports: [{{protocol: tcp, port: {PORT}}}, {{protocol: tcp, port: {ECHO_PORT}}}]}}\n"
    )
}

// ---------------------------------------------------------------------------
// The flood.

/// The one's-complement sum of `bytes` (big-endian 16-bit words), folded.
fn fold(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Writes the IPv4 header's and the TCP checksum of a frame from
/// [`tcp_frame`] (Ethernet, 20-byte IPv4 header, 20-byte TCP header).
fn checksum(f: &mut [u8]) {
    f[24..26].fill(0);
    let ip = !(fold(0, &f[14..34]) as u16);
    f[24..26].copy_from_slice(&ip.to_be_bytes());
    f[50..52].fill(0);
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&f[26..34]);
    pseudo[9] = abi::PROTO_TCP;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp = !(fold(fold(0, &pseudo), &f[34..54]) as u16);
    f[50..52].copy_from_slice(&tcp.to_be_bytes());
}

/// A small, fast generator (xorshift64*): the flood's addresses and ports.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The flood's frames: SYNs from random addresses of 198.18.0.0/15 and
/// random source ports to the server on random denied ports, addressed to
/// the gateway's MAC.
struct Frames {
    frames: Vec<Vec<u8>>,
    rng: Rng,
}

impl Frames {
    fn new(src_mac: [u8; 6], dst_mac: [u8; 6], seed: u64) -> Frames {
        let frames = (0..SEND_BATCH)
            .map(|_| {
                let mut f = tcp_frame(CLIENT, SERVER, 1024, FLOOD_PORTS.start, 0x02);
                f[..6].copy_from_slice(&dst_mac);
                f[6..12].copy_from_slice(&src_mac);
                f
            })
            .collect();
        Frames {
            frames,
            rng: Rng(seed | 1),
        }
    }

    /// New tuples for every frame of the batch.
    fn refresh(&mut self) {
        for f in &mut self.frames {
            let r = self.rng.next();
            let host = (r & 0x1_ffff) as u32;
            let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + host);
            let sport = 1024 + ((r >> 17) % (65_536 - 1024)) as u16;
            let span = u64::from(FLOOD_PORTS.end - FLOOD_PORTS.start);
            let dport = FLOOD_PORTS.start + ((r >> 33) % span) as u16;
            f[26..30].copy_from_slice(&src.octets());
            f[34..36].copy_from_slice(&sport.to_be_bytes());
            f[36..38].copy_from_slice(&dport.to_be_bytes());
            // The IP identification, so that no two frames are the same.
            f[18..20].copy_from_slice(&((r >> 48) as u16).to_be_bytes());
            checksum(f);
        }
    }
}

/// An `AF_PACKET` socket that sends on one interface of a namespace,
/// bypassing the qdisc, and receives nothing.
fn packet_socket(ns: &Netns, ifname: &str) -> anyhow::Result<OwnedFd> {
    let ifname = ifname.to_owned();
    ns.run_in(move || -> anyhow::Result<OwnedFd> {
        let ifindex = nix::net::if_::if_nametoindex(ifname.as_str())
            .with_context(|| format!("no interface {ifname}"))?;
        // SAFETY: a plain socket(2) call; protocol 0: the socket receives nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("socket(AF_PACKET): {}", std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the size passed; `fd` is open.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound < 0 {
            bail!("binding to {ifname}: {}", std::io::Error::last_os_error());
        }
        let one: libc::c_int = 1;
        // SAFETY: an int option of the size passed; `fd` is open.
        let set = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        if set < 0 {
            bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    })
}

/// Sends the batch with one `sendmmsg`; how many frames went.
fn send_batch(fd: &OwnedFd, frames: &[Vec<u8>]) -> std::io::Result<usize> {
    let mut iov: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: mmsghdr is plain data; all zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    // SAFETY: every header points at one iovec of `iov`, each at a frame of
    // `frames`; all of them outlive the call; `fd` is open.
    let sent = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// How a flood went.
#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct FloodFigures {
    /// Frames the socket took.
    sent: u64,
    seconds: f64,
    packets_per_second: f64,
    /// Sends the kernel refused (a full queue: tried again).
    send_errors: u64,
    /// Whether it stopped at its packet budget rather than when told.
    hit_packet_budget: bool,
}

/// Floods from `fd` until `stop`, `max_packets` or `max_time`.
fn flood(
    fd: &OwnedFd,
    mut frames: Frames,
    stop: &AtomicBool,
    max_packets: u64,
    max_time: Duration,
) -> FloodFigures {
    let started = Instant::now();
    let mut f = FloodFigures::default();
    while !stop.load(Ordering::Relaxed) && f.sent < max_packets && started.elapsed() < max_time {
        frames.refresh();
        match send_batch(fd, &frames.frames) {
            Ok(n) => f.sent += n as u64,
            Err(_) => {
                f.send_errors += 1;
                std::thread::yield_now();
            }
        }
    }
    f.hit_packet_budget = f.sent >= max_packets;
    f.seconds = started.elapsed().as_secs_f64();
    f.packets_per_second = f.sent as f64 / f.seconds.max(1e-9);
    f
}

// ---------------------------------------------------------------------------
// Echo connections.

/// An echo server on the server's side: every connection it accepts gets
/// its bytes back, until it closes. Stops accepting on drop.
struct EchoServer {
    stop: Arc<AtomicBool>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    fn start(ns: &Netns) -> anyhow::Result<EchoServer> {
        let listener = ns
            .run_in(|| TcpListener::bind(SocketAddr::from((SERVER, ECHO_PORT))))
            .with_context(|| format!("listening on {SERVER}:{ECHO_PORT}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let accepting = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 256];
                            while let Ok(n) = s.read(&mut buf) {
                                if n == 0 || s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(EchoServer {
            stop,
            accepting: Some(accepting),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accepting.take() {
            let _ = t.join();
        }
    }
}

/// A connection from the client's side to the echo server.
fn echo_connect(ns: &Netns, within: Duration) -> std::io::Result<TcpStream> {
    let target = SocketAddr::from((SERVER, ECHO_PORT));
    let s = ns.run_in(move || TcpStream::connect_timeout(&target, within))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Whether `s` echoes a message of its own.
fn echoes(mut s: &TcpStream, k: usize) -> bool {
    let message = format!("wardline-echo-{k:06}");
    let mut back = vec![0u8; message.len()];
    s.write_all(message.as_bytes()).is_ok()
        && s.read_exact(&mut back).is_ok()
        && back == message.as_bytes()
}

/// Tracked, allowed connections from the client's `ports` to the echo
/// server, by the agent's tracking table (whichever end its key puts
/// first).
fn tracked(pin: &Path, ports: &[u16]) -> anyhow::Result<usize> {
    let table = conntrack(pin)?;
    let (client, server) = (mapped(CLIENT), mapped(SERVER));
    let mut n = 0;
    for entry in table.iter() {
        let (k, s) = entry.context("reading the tracking table")?;
        let ends = [(k.src, k.sport), (k.dst, k.dport)];
        let echo = ends.contains(&(server, ECHO_PORT))
            && ends
                .iter()
                .any(|(a, port)| *a == client && ports.contains(port));
        if echo && k.proto == abi::PROTO_TCP && s.status == abi::FLOW_ALLOWED {
            n += 1;
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------
// The runs.

/// The agent's counters, from `/status`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct AgentCounters {
    dropped: u64,
    allowed: u64,
    lost_events: u64,
    /// Passed connections the tracking table had no room for
    /// (`trackingInsertFailures`), where the agent reports it.
    tracking_insert_failures: Option<u64>,
}

fn agent_counters(agent: &Agent, ns: &Netns) -> AgentCounters {
    // Right after a flood the agent may still be writing the flood's flow
    // events, and its endpoint slow to answer on a busy machine: the
    // counters are the kernel's, as true a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let v: Value = loop {
        match agent.get(ns, "/status") {
            Some((200, body)) => {
                break serde_json::from_str(body.trim())
                    .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
            }
            _ if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            other => panic!("the status endpoint does not answer after a flood: {other:?}"),
        }
    };
    let c = &v["counters"];
    AgentCounters {
        dropped: c["dropped"].as_u64().unwrap_or(0),
        allowed: c["allowed"].as_u64().unwrap_or(0),
        lost_events: c["lostEvents"].as_u64().unwrap_or(0),
        tracking_insert_failures: c["trackingInsertFailures"].as_u64(),
    }
}

fn delta(a: AgentCounters, b: AgentCounters) -> AgentCounters {
    AgentCounters {
        dropped: b.dropped.saturating_sub(a.dropped),
        allowed: b.allowed.saturating_sub(a.allowed),
        lost_events: b.lost_events.saturating_sub(a.lost_events),
        tracking_insert_failures: b
            .tracking_insert_failures
            .zip(a.tracking_insert_failures)
            .map(|(b, a)| b.saturating_sub(a)),
    }
}

/// One run of the stream.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RunFigures {
    repetition: usize,
    flooded: bool,
    /// What iperf3's server received, bits per second.
    bits_per_second: f64,
    tcp_retransmits: Option<u64>,
    /// The flood's figures (flooded runs).
    flood: Option<FloodFigures>,
    /// The agent's counters over the run.
    agent: AgentCounters,
    /// Packets the gateway's client-side interface took in during the run.
    gateway_rx_packets: u64,
    /// Tracked echo connections before and after the run, and how many
    /// still echoed after it.
    tracked_before: usize,
    tracked_after: usize,
    echoing_after: usize,
    /// New echo connections tried in the middle of the flood, and how many
    /// connected and echoed.
    new_connections_tried: usize,
    new_connections_ok: usize,
    /// The slowest of them to connect and echo, milliseconds.
    new_connection_max_ms: Option<f64>,
    /// Flow-log bytes the agent wrote during the run.
    flow_log_bytes: u64,
    /// CPU time the agent process used over the run's wall time (1.0: one
    /// whole CPU).
    agent_cpus_busy: Option<f64>,
}

/// Empties the agent's flow log every [`LOG_TRUNCATE_EVERY`] until `stop`;
/// returns the bytes it held in all.
fn keep_log_short(path: &Path, stop: &AtomicBool) -> u64 {
    let written = AtomicU64::new(0);
    let take = || {
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
            let len = file.metadata().map_or(0, |m| m.len());
            if file.set_len(0).is_ok() {
                written.fetch_add(len, Ordering::Relaxed);
            }
        }
    };
    take();
    written.store(0, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(LOG_TRUNCATE_EVERY);
        take();
    }
    take();
    written.load(Ordering::Relaxed)
}

struct Setup<'a> {
    bench: &'a Bench,
    agent: &'a Agent,
    conntrack_pin: &'a Path,
    echo: &'a [TcpStream],
    ports: &'a [u16],
    macs: ([u8; 6], [u8; 6]),
    seconds: u32,
    omit: u32,
    max_packets: u64,
    new_connections: usize,
}

fn rx_packets(bench: &Bench) -> u64 {
    bench.packet_counters().map_or(0, |(gw_rx, _)| gw_rx)
}

fn one_run(cx: &mut Setup<'_>, repetition: usize, flooded: bool) -> anyhow::Result<RunFigures> {
    let tracked_before = tracked(cx.conntrack_pin, cx.ports)?;
    let counters_before = agent_counters(cx.agent, &cx.bench.gw);
    let agent_pid = cx.agent.pid().context("the agent has no process")?;
    let cpu_before = (procfs::cpu_time(agent_pid), Instant::now());
    let rx_before = rx_packets(cx.bench);
    let stop = AtomicBool::new(false);
    let log_stop = AtomicBool::new(false);
    let run_for = Duration::from_secs(u64::from(cx.seconds + cx.omit));
    let flows = cx.agent.dir.join("flows.jsonl");
    let fd = if flooded {
        Some(packet_socket(&cx.bench.client, "eth0")?)
    } else {
        None
    };
    let (run, flood_figures, fresh, log_bytes) = std::thread::scope(|s| {
        let logs = s.spawn(|| keep_log_short(&flows, &log_stop));
        let flooding = fd.as_ref().map(|fd| {
            let frames = Frames::new(cx.macs.0, cx.macs.1, 0x5eed ^ repetition as u64);
            let (stop, max_packets) = (&stop, cx.max_packets);
            s.spawn(move || {
                if cpus_online() > FLOOD_CPU {
                    pin_to_cpu(FLOOD_CPU);
                }
                std::thread::sleep(FLOOD_DELAY);
                flood(fd, frames, stop, max_packets, run_for)
            })
        });
        // New connections in the middle of the measured seconds.
        let client = &cx.bench.client;
        let tries = if flooded { cx.new_connections } else { 0 };
        let mid = Duration::from_secs(u64::from(cx.omit))
            + Duration::from_secs(u64::from(cx.seconds)) / 2;
        let fresh = s.spawn(move || {
            std::thread::sleep(mid);
            (0..tries)
                .map(|k| {
                    let t = Instant::now();
                    let ok = echo_connect(client, Duration::from_secs(2))
                        .map(|c| echoes(&c, 900_000 + k))
                        .unwrap_or(false);
                    (ok, t.elapsed())
                })
                .collect::<Vec<_>>()
        });
        let run = cx.bench.iperf(Traffic::Tcp, cx.seconds, cx.omit);
        stop.store(true, Ordering::Relaxed);
        let flood_figures = flooding.and_then(|h| h.join().ok());
        let fresh = fresh.join().unwrap_or_default();
        log_stop.store(true, Ordering::Relaxed);
        let log_bytes = logs.join().unwrap_or(0);
        (run, flood_figures, fresh, log_bytes)
    });
    let agent_cpus_busy = cpu_before
        .0
        .zip(procfs::cpu_time(agent_pid))
        .map(|(a, b)| b.saturating_sub(a).as_secs_f64() / cpu_before.1.elapsed().as_secs_f64());
    let run = run.with_context(|| {
        format!(
            "the allowed stream, {}",
            if flooded { "flooded" } else { "unflooded" }
        )
    })?;
    let bits_per_second = throughput::figure(Traffic::Tcp, &run)?;
    // Let the last flood packets drain before counting.
    std::thread::sleep(Duration::from_millis(200));
    let counters_after = agent_counters(cx.agent, &cx.bench.gw);
    let rx_after = rx_packets(cx.bench);
    let tracked_after = tracked(cx.conntrack_pin, cx.ports)?;
    let echoing_after = cx
        .echo
        .iter()
        .enumerate()
        .filter(|(k, s)| echoes(s, repetition * 1000 + k))
        .count();
    Ok(RunFigures {
        repetition,
        flooded,
        bits_per_second,
        tcp_retransmits: run.report["end"]["sum_sent"]["retransmits"].as_u64(),
        flood: flood_figures,
        agent: delta(counters_before, counters_after),
        gateway_rx_packets: rx_after.saturating_sub(rx_before),
        tracked_before,
        tracked_after,
        echoing_after,
        new_connections_tried: fresh.len(),
        new_connections_ok: fresh.iter().filter(|(ok, _)| *ok).count(),
        new_connection_max_ms: stats::max(
            &fresh
                .iter()
                .map(|(_, d)| d.as_secs_f64() * 1e3)
                .collect::<Vec<_>>(),
        ),
        flow_log_bytes: log_bytes,
        agent_cpus_busy,
    })
}

/// A MAC address from `ip -j link show`.
fn mac(ns: &Netns, ifname: &str) -> anyhow::Result<[u8; 6]> {
    let out = exec_ok(ns, &["ip", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(out.trim())?;
    let text = v[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC address for {ifname}"))?;
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC address {text:?}"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("MAC address {text:?} is not 6 bytes"))
}

/// What part 6 measured.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FloodResults {
    quick: bool,
    repetitions: usize,
    seconds_per_run: u32,
    omitted_seconds: u32,
    flood_delay_seconds: f64,
    flood_cpu: usize,
    /// The most packets one flood may send.
    max_flood_packets: u64,
    echo_connections: usize,
    runs: Vec<RunFigures>,
    unflooded_bits_per_second: f64,
    flooded_bits_per_second: f64,
    /// Flooded over unflooded, medians.
    kept: f64,
    /// The median flood rate.
    flood_packets_per_second: f64,
    seconds: f64,
}

/// Part 6 of the benchmarks.
pub fn run(budget: Budget) -> anyhow::Result<Section> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the flood benchmark needs root (namespaces, BPF, raw sockets)"
    );
    let started = Instant::now();
    let (reps, seconds, omit, echo_n, max_packets, new_connections) = if budget.quick {
        (1, 2, 1, 8, 5_000_000, 4)
    } else {
        (3, 5, 1, 64, 50_000_000, 8)
    };
    let bench = Bench::new();
    ensure!(
        !bench.closed_port_dropped()?,
        "with no filter, {SERVER}:{CLOSED_PORT} should refuse the connection"
    );
    let agent = Agent::start(&bench.gw, &[GW_IN], &policy());
    ensure!(
        bench.closed_port_dropped()?,
        "with the agent enforcing {GW_IN}, a connection to port {CLOSED_PORT} was let through"
    );
    let node_dir = enforcer::node_dir(Path::new(BPFFS), &agent.node);
    let conntrack_pin = pinned_maps(&node_dir)
        .into_iter()
        .find(|(name, _, _)| name == abi::MAP_CONNTRACK)
        .map(|(_, pin, _)| pin)
        .with_context(|| format!("no tracking table pinned under {}", node_dir.display()))?;
    let macs = (mac(&bench.client, "eth0")?, mac(&bench.gw, GW_IN)?);
    let server = EchoServer::start(&bench.server)?;
    let echo = (0..echo_n)
        .map(|_| echo_connect(&bench.client, Duration::from_secs(2)))
        .collect::<Result<Vec<_>, _>>()
        .context("opening the long-lived echo connections")?;
    let ports = echo
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?;
    let echoing = echo
        .iter()
        .enumerate()
        .filter(|(k, s)| echoes(s, *k))
        .count();
    ensure!(
        echoing == echo_n,
        "{echoing} of {echo_n} echo connections echo before any flood"
    );
    let tracked_at_start = tracked(&conntrack_pin, &ports)?;
    ensure!(
        tracked_at_start == echo_n,
        "{tracked_at_start} of {echo_n} echo connections are in the tracking table"
    );
    let mut cx = Setup {
        bench: &bench,
        agent: &agent,
        conntrack_pin: &conntrack_pin,
        echo: &echo,
        ports: &ports,
        macs,
        seconds,
        omit,
        max_packets,
        new_connections,
    };
    let mut runs = Vec::new();
    for rep in 0..reps {
        for flooded in [false, true] {
            eprintln!(
                "flood: repetition {}, {}...",
                rep + 1,
                if flooded { "flooded" } else { "unflooded" }
            );
            let r = one_run(&mut cx, rep, flooded)?;
            if let Some(f) = &r.flood {
                eprintln!(
                    "flood: {} SYNs in {:.1} s ({} per second); stream {:.2} Gbit/s; {} of {} tracked after",
                    thousands(f.sent),
                    f.seconds,
                    thousands(f.packets_per_second as u64),
                    r.bits_per_second / 1e9,
                    r.tracked_after,
                    echo_n
                );
            }
            runs.push(r);
        }
    }
    drop(echo);
    drop(server);
    drop(agent);
    drop(bench);
    let median_of = |flooded: bool| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.flooded == flooded)
            .map(|r| r.bits_per_second)
            .collect();
        stats::median(&v).unwrap_or(f64::NAN)
    };
    let (unflooded, flooded) = (median_of(false), median_of(true));
    let pps: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.flood.map(|f| f.packets_per_second))
        .collect();
    Section::of(&FloodResults {
        quick: budget.quick,
        repetitions: reps,
        seconds_per_run: seconds,
        omitted_seconds: omit,
        flood_delay_seconds: FLOOD_DELAY.as_secs_f64(),
        flood_cpu: FLOOD_CPU,
        max_flood_packets: max_packets,
        echo_connections: echo_n,
        runs,
        unflooded_bits_per_second: unflooded,
        flooded_bits_per_second: flooded,
        kept: if unflooded > 0.0 {
            flooded / unflooded
        } else {
            f64::NAN
        },
        flood_packets_per_second: stats::median(&pps).unwrap_or(0.0),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn gbit(bps: f64) -> String {
    format!("{:.2} Gbit/s", bps / 1e9)
}

impl FloodResults {
    fn flooded_runs(&self) -> impl Iterator<Item = &RunFigures> {
        self.runs.iter().filter(|r| r.flooded)
    }

    fn nothing_lost(&self) -> bool {
        self.runs.iter().all(|r| {
            r.tracked_after == self.echo_connections && r.echoing_after == self.echo_connections
        })
    }
}

impl Results for FloodResults {
    fn tables(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| run | allowed stream | flood: SYNs sent | per second | dropped by Wardline | passed but untracked (table full) | lost flow events | flow log written | agent CPU | tracked echo connections, before → after | echoing after | new connections mid-flood |"
        );
        let _ = writeln!(
            t,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.runs {
            let (sent, pps) = r.flood.map_or(("".to_owned(), "".to_owned()), |f| {
                (thousands(f.sent), thousands(f.packets_per_second as u64))
            });
            let _ = writeln!(
                t,
                "| {} {} | {} | {} | {} | {} | {} | {} | {:.1} MiB | {} | {} → {} | {} | {} |",
                r.repetition + 1,
                if r.flooded { "flooded" } else { "unflooded" },
                gbit(r.bits_per_second),
                sent,
                pps,
                thousands(r.agent.dropped),
                r.agent
                    .tracking_insert_failures
                    .map_or("unknown".to_owned(), thousands),
                thousands(r.agent.lost_events),
                r.flow_log_bytes as f64 / (1024.0 * 1024.0),
                r.agent_cpus_busy
                    .map_or("unknown".to_owned(), |c| format!("{c:.2}")),
                r.tracked_before,
                r.tracked_after,
                r.echoing_after,
                if r.flooded {
                    format!(
                        "{} of {} ({})",
                        r.new_connections_ok,
                        r.new_connections_tried,
                        r.new_connection_max_ms
                            .map_or("".to_owned(), |ms| format!("slowest {ms:.0} ms"))
                    )
                } else {
                    String::new()
                },
            );
        }
        let _ = writeln!(
            t,
            "\n| | median |\n|---|---:|\n| unflooded | {} |\n| flooded | {} |\n| **kept** | **{:.3}** |\n| flood | {} SYNs/s |",
            gbit(self.unflooded_bits_per_second),
            gbit(self.flooded_bits_per_second),
            self.kept,
            thousands(self.flood_packets_per_second as u64)
        );
        t
    }

    fn targets(&self) -> Vec<Target> {
        let worst_tracked = self
            .flooded_runs()
            .map(|r| r.tracked_after.min(r.echoing_after))
            .min()
            .unwrap_or(0);
        vec![
            Target::new(
                format!(
                    "an allowed TCP stream keeps at least {KEEP} of its unflooded throughput under a flood of denied SYNs: {:.3} ({} of {}, flood {} SYNs/s)",
                    self.kept,
                    gbit(self.flooded_bits_per_second),
                    gbit(self.unflooded_bits_per_second),
                    thousands(self.flood_packets_per_second as u64)
                ),
                self.kept >= KEEP,
            ),
            Target::new(
                format!(
                    "no tracked connection is lost to the flood: at least {worst_tracked} of {} long-lived connections tracked and echoing after every flood",
                    self.echo_connections
                ),
                self.nothing_lost(),
            ),
        ]
    }

    fn how_to_read(&self) -> String {
        let mut how = format!(
            "The throughput part's three namespaces (client, gateway, server) with a standalone \
             `wardline-agent` enforcing the gateway's interface towards the client (`{GW_IN}`), \
             flow events on. Its policy allows the client to the server on TCP {PORT} (iperf3) \
             and {ECHO_PORT} (an echo server); everything else is denied.\n\n\
             - **Allowed stream**: one iperf3 TCP stream, client pinned to CPU 0, server to CPU \
             1, {secs} s measured after {omit} s omitted; the rate the server received. \
             Unflooded and flooded runs alternate, {reps} of each; a figure is the median.\n\
             - **Flood**: from the client's namespace, an `AF_PACKET` socket (qdisc bypassed) \
             on a thread pinned to CPU {cpu} sends TCP SYNs as fast as it can, {batch} per \
             `sendmmsg`, each from a random address of 198.18.0.0/15 and a random port to the \
             server on a random port of {lo}–{hi} (no policy names them), starting {delay:.1} s \
             after the stream (once its connections are established) and stopping when the \
             stream ends or after {max} frames. Every SYN is a new, denied connection, dropped \
             at `{GW_IN}`'s ingress with a flow record. On veth, a frame's whole path through \
             the gateway runs in the sender's softirq, so the flood's cost lands on CPU \
             {cpu}, shared with the iperf3 server. The agent's flow log (a file) is emptied every \
             {trunc} ms so that the flood's records never fill the disk; *flow log written* \
             is what it held; *agent CPU* is the CPU time the agent process used over the run \
             (1.00: one whole CPU): reading, naming and writing the flood's flow records; \
             *passed but untracked* is the agent's count of connections that passed while \
             the tracking table had no room (`trackingInsertFailures` in `/status`).\n\
             - **Tracked connections**: {echo} long-lived echo connections opened before the \
             first run. After every run each must still echo, and still be an allowed entry \
             of the agent's tracking table (`{map}`, read through its pin). *New \
             connections mid-flood*: fresh echo connections opened in the middle of a flood, \
             each to connect and echo within 2 s (a figure, not a target).\n\n\
             This part took {took:.0} s.",
            secs = self.seconds_per_run,
            omit = self.omitted_seconds,
            reps = self.repetitions,
            cpu = self.flood_cpu,
            batch = SEND_BATCH,
            lo = FLOOD_PORTS.start,
            hi = FLOOD_PORTS.end - 1,
            delay = self.flood_delay_seconds,
            max = thousands(self.max_flood_packets),
            trunc = LOG_TRUNCATE_EVERY.as_millis(),
            echo = self.echo_connections,
            map = abi::MAP_CONNTRACK,
            took = self.seconds,
        );
        if self.quick {
            how.push_str(
                "\n\n**Quick run**: one short run of each and a few echo connections: a smoke \
                 of the harness, not figures to quote.",
            );
        }
        how
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_parses() {
        let set = wardline_policy::parse(&policy()).expect("the flood policy parses");
        assert_eq!(set.policies.len(), 1);
        assert_eq!(set.segments.len(), 2);
    }

    #[test]
    fn flood_frames_carry_valid_checksums_and_denied_ports() {
        let mut frames = Frames::new([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 7);
        frames.refresh();
        for f in &frames.frames {
            assert_eq!(f.len(), 54);
            // A header with its checksum in sums to 0xffff.
            assert_eq!(fold(0, &f[14..34]), 0xffff, "IPv4 header checksum");
            let mut pseudo = [0u8; 12];
            pseudo[..8].copy_from_slice(&f[26..34]);
            pseudo[9] = abi::PROTO_TCP;
            pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
            assert_eq!(fold(fold(0, &pseudo), &f[34..54]), 0xffff, "TCP checksum");
            let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
            let test_range = u32::from(Ipv4Addr::new(198, 18, 0, 0));
            assert_eq!(
                u32::from(src) & 0xfffe_0000,
                test_range,
                "{src} in 198.18.0.0/15"
            );
            let dport = u16::from_be_bytes([f[36], f[37]]);
            assert!(FLOOD_PORTS.contains(&dport));
            assert_ne!(dport, PORT);
            assert_ne!(dport, ECHO_PORT);
            assert_eq!(f[47], 0x02, "a SYN");
        }
        let distinct: std::collections::HashSet<_> = frames.frames.iter().collect();
        assert_eq!(distinct.len(), SEND_BATCH);
    }
}
