//! Part 1: what one packet costs in the real kernel programs, measured by
//! the kernel itself through `BPF_PROG_TEST_RUN`, at 10 to 100,000 prefixes
//! and rules.
//!
//! The programs are the agent's own (`Enforcer::open`), loaded under a bpffs
//! directory of this run's own and removed when the part ends; nothing is
//! attached to an interface. Packets are IPv4 TCP frames with distinct
//! 5-tuples between host prefixes of the generated policy. The kernel times
//! each test run; with `repeat` it runs the program that many times on the
//! same packet and returns the average, which takes the syscall out of the
//! figure.
//!
//! An established packet is measured in both orientations: the
//! initiator's next packet and the responder's reply, each after the
//! connection's first packet went in through the ingress program and out
//! through the egress program, as a forwarded connection's does (the egress
//! hook is where a connection learns the interface its replies come back
//! on), and the responder's first reply came back in, which confirms it.
//!
//! A new connection can only be measured once per tuple: its first run
//! creates the connection-tracking entry, so a repeat would measure an
//! established packet. New connections are therefore run once each
//! (`repeat` 1) over thousands of distinct tuples, and reported as the
//! kernel's duration of that one run, which includes the kernel's own timer
//! reads; the empty program run the same way shows that floor.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, ensure};
use aya::maps::{MapData, RingBuf};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use serde::Serialize;
use time::OffsetDateTime;
use wardline_agent::enforcer::{self, Counters, Enforcer};
use wardline_ebpf_abi as abi;
use wardline_policy::{
    Action, CompileOptions, Dataplane, DocRef, Mode, Peer, Policy, PolicySet, PortRule, Protocol,
    Segment,
};

use crate::bench::stats;
use crate::bench::{Budget, Results, Section, Target, pin_to_cpu, thousands};

/// `TC_ACT_OK`: the packet goes on.
const TC_ACT_OK: u32 = 0;
/// What the Wardline programs return for a packet that passes (`TCX_NEXT`)
/// and for one they drop.
pub(crate) const WARDLINE_PASS: u32 = abi::ACTION_PASS as u32;
pub(crate) const WARDLINE_DROP: u32 = abi::ACTION_DROP as u32;

/// Runs per test-run call for packets that can be repeated.
const REPEAT: u32 = 64;
/// Packets per batch of new connections; the ring buffer is drained after
/// each (1,024 records are 96 KiB of its 4 MiB).
const BATCH: usize = 1024;
/// The destination port of the dropped new connections: no policy names it.
const DENIED_PORT: u16 = 999;
/// The CPU the measuring thread runs on.
const CPU: usize = 0;

/// Where each run pins, followed by its process id.
const BENCH_PINS: &str = "/sys/fs/bpf/wardline-bench-";

/// Removes the pins of earlier runs that could not clean up (killed): the
/// directories of benchmark processes that no longer exist.
fn remove_stale_pins() {
    let Some(dir) = Path::new(BENCH_PINS).parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let pid = path
            .to_str()
            .and_then(|p| p.strip_prefix(BENCH_PINS))
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            eprintln!("bench: removing stale pins {}", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// The real programs under a bpffs directory of this run's own
/// (`/sys/fs/bpf/wardline-bench-<pid>/<part>`), every pin removed on drop.
pub(crate) struct Programs {
    pub(crate) enforcer: Enforcer,
    bpffs: PathBuf,
    node: String,
}

impl Programs {
    pub(crate) fn load(part: &str) -> anyhow::Result<Programs> {
        remove_stale_pins();
        let bpffs = PathBuf::from(format!("{BENCH_PINS}{}", std::process::id()));
        let node = part.to_owned();
        match Enforcer::open(&bpffs, &node) {
            Ok(enforcer) => Ok(Programs {
                enforcer,
                bpffs,
                node,
            }),
            Err(e) => {
                let _ = enforcer::uninstall(&bpffs, &node);
                Err(e).context("loading the kernel programs")
            }
        }
    }

    /// The ingress program (both directions run the same code).
    pub(crate) fn ingress(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        self.enforcer
            .program(abi::PROG_INGRESS)
            .context("the ingress program is missing")
    }

    /// The egress program.
    pub(crate) fn egress(&mut self) -> anyhow::Result<&mut SchedClassifier> {
        self.enforcer
            .program(abi::PROG_EGRESS)
            .context("the egress program is missing")
    }

    /// The directory for this part's own pins, removed with the rest.
    fn dir(&self) -> &Path {
        self.enforcer.pin_dir()
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        if let Err(e) = enforcer::uninstall(&self.bpffs, &self.node) {
            eprintln!(
                "bench: removing the pins under {}: {e}",
                self.bpffs.join(&self.node).display()
            );
        }
    }
}

/// A TC program of two instructions, `r0 = TC_ACT_OK; exit`: the floor any
/// program pays. The kernel crate has no such program, so it is loaded here
/// with `BPF_PROG_LOAD` and opened through a pin of its own in `dir`,
/// removed at once.
fn empty_program(dir: &Path) -> anyhow::Result<SchedClassifier> {
    let fd = crate::tcx::load("wl_empty", TC_ACT_OK as i32).context("loading the empty program")?;
    let pin = dir.join("bench-empty");
    let _ = std::fs::remove_file(&pin);
    crate::tcx::pin(&fd, &pin).context("pinning the empty program")?;
    let program = SchedClassifier::from_pin(&pin)
        .with_context(|| format!("opening the empty program at {}", pin.display()));
    let _ = std::fs::remove_file(&pin);
    program
}

/// The kernel settings that move these figures: (name, value) pairs.
fn kernel_settings() -> Vec<Setting> {
    [
        ("bpf_jit_enable", "/proc/sys/net/core/bpf_jit_enable"),
        ("bpf_jit_harden", "/proc/sys/net/core/bpf_jit_harden"),
        ("bpf_stats_enabled", "/proc/sys/kernel/bpf_stats_enabled"),
        (
            "clocksource",
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        ),
    ]
    .into_iter()
    .map(|(name, path)| {
        let value =
            std::fs::read_to_string(path).map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned());
        Setting { name, value }
    })
    .collect()
}

/// 198.18.0.0/15 host number `i` (0..131,072).
pub(crate) fn host(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// An Ethernet + IPv4 + TCP frame (54 bytes).
pub(crate) fn tcp_frame(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend(abi::ETH_P_IP.to_be_bytes());
    f.extend([0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, abi::PROTO_TCP, 0, 0]);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend(sport.to_be_bytes());
    f.extend(dport.to_be_bytes());
    f.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// LLDP: a non-IP ethertype the agent's `passEthertypes` lists here.
const ETH_P_LLDP: u16 = 0x88cc;

/// An LLDP frame from source MAC number `i` (60 bytes).
fn lldp_frame(i: u32) -> Vec<u8> {
    let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e, 0x02, 0];
    f.extend(i.to_be_bytes());
    f.extend(ETH_P_LLDP.to_be_bytes());
    f.extend([0u8; 46]);
    f
}

/// A generated policy of `n` host prefixes and `n` single-port allow
/// policies: `min(n, 1000)` segments of `n / segments` host /32s from
/// 198.18.0.0/15; policy `i` allows segment `i % S` to segment `(i / S) % S`
/// on TCP port `1000 + i % 5000`, so that every policy is one rule.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scale {
    pub(crate) n: u32,
    segments: u32,
    per_segment: u32,
}

impl Scale {
    pub(crate) fn new(n: u32) -> Scale {
        let segments = n.clamp(1, 1000);
        Scale {
            n,
            segments,
            per_segment: n / segments,
        }
    }

    pub(crate) fn policy_set(&self) -> anyhow::Result<PolicySet> {
        let doc = |index: usize, kind: &str, name: &str| DocRef {
            index,
            kind: kind.to_owned(),
            name: name.to_owned(),
        };
        let mut set = PolicySet::default();
        for s in 0..self.segments {
            let name = format!("s{s:04}");
            let cidrs = (0..self.per_segment)
                .map(|j| format!("{}/32", host(s * self.per_segment + j)).parse())
                .collect::<Result<Vec<_>, _>>()?;
            set.segments.push(Segment {
                doc: doc(set.segments.len() + 1, "Segment", &name),
                name,
                labels: Default::default(),
                cidrs,
                vlans: Vec::new(),
                node_selector: None,
                mode: Mode::Enforce,
                quarantine: None,
            });
        }
        for i in 0..self.n {
            let name = format!("p{i:06}");
            let (src, dst, port) = self.policy(i);
            set.policies.push(Policy {
                doc: doc(set.segments.len() + i as usize + 1, "Policy", &name),
                name,
                labels: Default::default(),
                action: Action::Allow,
                from: vec![Peer::Segment(format!("s{src:04}"))],
                to: vec![Peer::Segment(format!("s{dst:04}"))],
                ports: vec![PortRule {
                    protocol: Protocol::Tcp,
                    port: Some(port),
                    end_port: None,
                }],
                valid_from: None,
                valid_until: None,
            });
        }
        Ok(set)
    }

    /// The same policy as [`Scale::policy_set`], as the YAML documents an
    /// agent reads.
    pub(crate) fn yaml(&self) -> String {
        let mut yaml = String::new();
        for s in 0..self.segments {
            let cidrs: Vec<String> = (0..self.per_segment)
                .map(|j| format!("\"{}/32\"", host(s * self.per_segment + j)))
                .collect();
            let _ = write!(
                yaml,
                "---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: s{s:04}}}\nspec: {{cidrs: [{}]}}\n",
                cidrs.join(", ")
            );
        }
        for i in 0..self.n {
            let (src, dst, port) = self.policy(i);
            let _ = write!(
                yaml,
                "---\napiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: p{i:06}}}\nspec: {{action: allow, from: [s{src:04}], to: [s{dst:04}], ports: [{{protocol: tcp, port: {port}}}]}}\n"
            );
        }
        yaml
    }

    /// Policy `i`: (source segment, destination segment, port).
    fn policy(&self, i: u32) -> (u32, u32, u16) {
        let s = self.segments;
        (i % s, (i / s) % s, 1000 + (i % 5000) as u16)
    }

    /// The `k`th tuple a policy allows: (src, dst, sport, dport). Policies
    /// are visited in a scattered order (7919 is prime to every scale);
    /// source ports make tuples distinct for `k` below 64,000.
    fn allowed(&self, k: u32) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
        let i = (u64::from(k) * 7919 % u64::from(self.n)) as u32;
        let (src, dst, port) = self.policy(i);
        let per = self.per_segment;
        (
            host(src * per + k % per),
            host(dst * per + (k / per) % per),
            1024 + k as u16,
            port,
        )
    }
}

/// The frames of one scale, `packets` of each kind.
struct Frames {
    /// New connections a policy allows.
    syn: Vec<Vec<u8>>,
    /// The next packet of each of them.
    ack: Vec<Vec<u8>>,
    /// The responder's reply to each of them.
    reply: Vec<Vec<u8>>,
    /// New connections no policy allows (default deny).
    denied: Vec<Vec<u8>>,
    /// Frames of a passed non-IP ethertype.
    lldp: Vec<Vec<u8>>,
}

impl Frames {
    fn new(scale: &Scale, packets: u32) -> Frames {
        let mut f = Frames {
            syn: Vec::new(),
            ack: Vec::new(),
            reply: Vec::new(),
            denied: Vec::new(),
            lldp: Vec::new(),
        };
        for k in 0..packets {
            let (src, dst, sport, dport) = scale.allowed(k);
            f.syn.push(tcp_frame(src, dst, sport, dport, TCP_SYN));
            f.ack.push(tcp_frame(src, dst, sport, dport, TCP_ACK));
            f.reply.push(tcp_frame(dst, src, dport, sport, TCP_ACK));
            f.denied
                .push(tcp_frame(src, dst, sport, DENIED_PORT, TCP_SYN));
            f.lldp.push(lldp_frame(k));
        }
        f
    }
}

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// The two-instruction program, `REPEAT` runs per packet.
    Empty,
    /// The same, one run per packet: the floor of the new-connection cases.
    EmptyOnce,
    /// Ethernet parsed, ethertype listed as passed.
    ParseOnly,
    /// The initiator's next packet of a tracked, allowed connection.
    Established,
    /// The responder's reply in a tracked, allowed connection.
    EstablishedReply,
    /// The same, one run per packet: what a new connection is compared with.
    EstablishedOnce,
    /// A new connection, its first packet run once.
    New { allowed: bool, events: bool },
}

const CASES: [Case; 10] = [
    Case::Empty,
    Case::ParseOnly,
    Case::Established,
    Case::EstablishedReply,
    Case::EmptyOnce,
    Case::EstablishedOnce,
    Case::New {
        allowed: true,
        events: true,
    },
    Case::New {
        allowed: true,
        events: false,
    },
    Case::New {
        allowed: false,
        events: true,
    },
    Case::New {
        allowed: false,
        events: false,
    },
];

impl Case {
    fn key(self) -> &'static str {
        match self {
            Case::Empty => "empty",
            Case::EmptyOnce => "emptyOneRun",
            Case::ParseOnly => "parseOnly",
            Case::Established => "established",
            Case::EstablishedReply => "establishedReply",
            Case::EstablishedOnce => "establishedOneRun",
            Case::New {
                allowed: true,
                events: true,
            } => "newAllowedEvents",
            Case::New {
                allowed: true,
                events: false,
            } => "newAllowedNoEvents",
            Case::New {
                allowed: false,
                events: true,
            } => "newDroppedEvents",
            Case::New {
                allowed: false,
                events: false,
            } => "newDroppedNoEvents",
        }
    }
}

/// One case at one scale while it is measured.
#[derive(Debug, Default)]
struct CaseSamples {
    /// Per round, the median over packets.
    round_medians: Vec<u64>,
    /// Every packet's duration, every round.
    samples: Vec<u64>,
}

impl CaseSamples {
    fn figures(&self) -> CaseFigures {
        CaseFigures {
            median_ns: stats::median(&self.round_medians).unwrap_or(0),
            p10_ns: stats::percentile(&self.samples, 10.0).unwrap_or(0),
            p90_ns: stats::percentile(&self.samples, 90.0).unwrap_or(0),
            round_medians_ns: self.round_medians.clone(),
            samples: self.samples.len(),
        }
    }
}

/// One case at one scale.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct CaseFigures {
    /// The median of the rounds' medians.
    median_ns: u64,
    /// Over every packet of every round.
    p10_ns: u64,
    p90_ns: u64,
    round_medians_ns: Vec<u64>,
    samples: usize,
}

impl CaseFigures {
    fn cell(&self) -> String {
        format!("{} ({}–{})", self.median_ns, self.p10_ns, self.p90_ns)
    }
}

/// Every case at one scale (the keys are [`Case::key`]).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Cases {
    empty: CaseFigures,
    parse_only: CaseFigures,
    established: CaseFigures,
    established_reply: CaseFigures,
    empty_one_run: CaseFigures,
    established_one_run: CaseFigures,
    new_allowed_events: CaseFigures,
    new_allowed_no_events: CaseFigures,
    new_dropped_events: CaseFigures,
    new_dropped_no_events: CaseFigures,
}

impl Cases {
    fn get_mut(&mut self, case: Case) -> &mut CaseFigures {
        match case {
            Case::Empty => &mut self.empty,
            Case::ParseOnly => &mut self.parse_only,
            Case::Established => &mut self.established,
            Case::EstablishedReply => &mut self.established_reply,
            Case::EmptyOnce => &mut self.empty_one_run,
            Case::EstablishedOnce => &mut self.established_one_run,
            Case::New {
                allowed: true,
                events: true,
            } => &mut self.new_allowed_events,
            Case::New {
                allowed: true,
                events: false,
            } => &mut self.new_allowed_no_events,
            Case::New {
                allowed: false,
                events: true,
            } => &mut self.new_dropped_events,
            Case::New {
                allowed: false,
                events: false,
            } => &mut self.new_dropped_no_events,
        }
    }

    fn get(&self, case: Case) -> &CaseFigures {
        match case {
            Case::Empty => &self.empty,
            Case::ParseOnly => &self.parse_only,
            Case::Established => &self.established,
            Case::EstablishedReply => &self.established_reply,
            Case::EmptyOnce => &self.empty_one_run,
            Case::EstablishedOnce => &self.established_one_run,
            Case::New {
                allowed: true,
                events: true,
            } => &self.new_allowed_events,
            Case::New {
                allowed: true,
                events: false,
            } => &self.new_allowed_no_events,
            Case::New {
                allowed: false,
                events: true,
            } => &self.new_dropped_events,
            Case::New {
                allowed: false,
                events: false,
            } => &self.new_dropped_no_events,
        }
    }
}

/// One scale: N prefixes and N rules.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ScaleFigures {
    prefixes: u32,
    rules: u32,
    segments: u32,
    compile_ms: f64,
    program_ms: f64,
    cases: Cases,
}

/// A kernel setting that moves these figures.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Setting {
    name: &'static str,
    value: String,
}

/// What part 1 measured.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PacketResults {
    quick: bool,
    method: &'static str,
    repeat: u32,
    packets_per_case: u32,
    rounds: usize,
    /// The CPU the measuring thread was pinned to; `None`: pinning failed.
    cpu_pinned: Option<usize>,
    events_read: u64,
    lost_events: u64,
    kernel_settings: Vec<Setting>,
    seconds: f64,
    scales: Vec<ScaleFigures>,
}

/// Counted ingress packets of `reason`.
fn counted(c: &Counters, reason: abi::Reason) -> u64 {
    c.packets[abi::DIR_INGRESS as usize][reason as usize]
}

/// Reads and drops every record in the ring buffer; returns how many.
pub(crate) fn drain(ring: &mut RingBuf<MapData>) -> u64 {
    let mut n = 0;
    while let Some(item) = ring.next() {
        drop(item);
        n += 1;
    }
    n
}

/// One test run of `frame`: (return value, kernel's ns per run).
pub(crate) fn test_run(
    program: &SchedClassifier,
    frame: &[u8],
    repeat: u32,
) -> anyhow::Result<(u32, u64)> {
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.return_value, r.duration.as_nanos() as u64))
}

/// Every frame once with `repeat`; the kernel's ns per run of each.
fn run_frames(
    program: &SchedClassifier,
    frames: &[Vec<u8>],
    repeat: u32,
    expect: u32,
) -> anyhow::Result<Vec<u64>> {
    frames
        .iter()
        .map(|f| {
            let (ret, ns) = test_run(program, f, repeat)?;
            ensure!(
                ret == expect,
                "the program returned {ret}, not {expect}, for {f:02x?}"
            );
            Ok(ns)
        })
        .collect()
}

struct Bench {
    programs: Programs,
    empty: SchedClassifier,
    ring: RingBuf<MapData>,
    /// Events read while measuring new connections with events on.
    events_read: u64,
}

impl Bench {
    /// One round of `case` over `frames`: each packet's ns per run.
    fn measure(&mut self, case: Case, frames: &Frames) -> anyhow::Result<Vec<u64>> {
        drain(&mut self.ring);
        let n = frames.syn.len() as u64;
        let before = self.programs.enforcer.counters()?;
        let (samples, reason, runs) = match case {
            Case::Empty => return run_frames(&self.empty, &frames.ack, REPEAT, TC_ACT_OK),
            Case::EmptyOnce => return run_frames(&self.empty, &frames.ack, 1, TC_ACT_OK),
            Case::ParseOnly => {
                let program = self.programs.ingress()?;
                let samples = run_frames(program, &frames.lldp, REPEAT, WARDLINE_PASS)?;
                (samples, abi::Reason::L2Pass, n * u64::from(REPEAT))
            }
            Case::Established | Case::EstablishedReply | Case::EstablishedOnce => {
                let repeat = if case == Case::EstablishedOnce {
                    1
                } else {
                    REPEAT
                };
                // The first packet in at ingress and out at egress, as a
                // forwarded connection's: the egress hook is where the
                // connection learns the interface its replies come back on.
                // Then the responder's first reply, which confirms it: an
                // established connection has seen both directions.
                self.programs.enforcer.flush_tracking()?;
                run_frames(self.programs.ingress()?, &frames.syn, 1, WARDLINE_PASS)?;
                run_frames(self.programs.egress()?, &frames.syn, 1, WARDLINE_PASS)?;
                run_frames(self.programs.ingress()?, &frames.reply, 1, WARDLINE_PASS)?;
                drain(&mut self.ring);
                let measured = if case == Case::EstablishedReply {
                    &frames.reply
                } else {
                    &frames.ack
                };
                let before = self.programs.enforcer.counters()?;
                let samples =
                    run_frames(self.programs.ingress()?, measured, repeat, WARDLINE_PASS)?;
                let after = self.programs.enforcer.counters()?;
                let runs = n * u64::from(repeat);
                let seen = counted(&after, abi::Reason::Established)
                    - counted(&before, abi::Reason::Established);
                ensure!(seen == runs, "{seen} of {runs} runs counted established");
                return Ok(samples);
            }
            Case::New { allowed, events } => {
                self.programs.enforcer.flush_tracking()?;
                self.programs.enforcer.set_events(events)?;
                let (list, expect, reason) = if allowed {
                    (&frames.syn, WARDLINE_PASS, abi::Reason::PolicyAllow)
                } else {
                    (&frames.denied, WARDLINE_DROP, abi::Reason::DefaultDeny)
                };
                let mut samples = Vec::with_capacity(list.len());
                let mut read = 0;
                for batch in list.chunks(BATCH) {
                    samples.extend(run_frames(self.programs.ingress()?, batch, 1, expect)?);
                    read += drain(&mut self.ring);
                }
                self.programs.enforcer.set_events(true)?;
                let expected = if events { n } else { 0 };
                ensure!(
                    read == expected,
                    "{read} flow events read for {n} new connections, {expected} expected"
                );
                self.events_read += read;
                (samples, reason, n)
            }
        };
        let after = self.programs.enforcer.counters()?;
        let seen = counted(&after, reason) - counted(&before, reason);
        ensure!(
            seen == runs,
            "{seen} of {runs} runs counted as {}",
            reason.name()
        );
        ensure!(
            after.lost_events == before.lost_events,
            "{} flow events lost while measuring",
            after.lost_events - before.lost_events
        );
        Ok(samples)
    }
}

/// Part 1 of the benchmarks.
pub fn run(budget: Budget) -> anyhow::Result<Section> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the per-packet benchmark loads BPF programs: it needs root"
    );
    // A thread of its own, pinned, so that the runner's thread stays free.
    std::thread::spawn(move || {
        let pinned = pin_to_cpu(CPU);
        measure_all(budget, pinned)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the measuring thread panicked"))?
}

fn measure_all(budget: Budget, pinned: bool) -> anyhow::Result<Section> {
    let (scales, packets, rounds): (&[u32], u32, usize) = if budget.quick {
        (&[10], 512, 2)
    } else {
        (&[10, 100, 1_000, 10_000, 100_000], 8192, 5)
    };
    let started = Instant::now();
    let mut programs = Programs::load("packet")?;
    programs
        .enforcer
        .set_local_rules(&[], &[ETH_P_LLDP])
        .context("listing LLDP as a passed ethertype")?;
    let empty = empty_program(programs.dir())?;
    let ring = programs
        .enforcer
        .take_events()
        .context("the events ring buffer is missing")?;
    let mut bench = Bench {
        programs,
        empty,
        ring,
        events_read: 0,
    };
    let mut scales_measured = Vec::new();
    for &n in scales {
        let scale = Scale::new(n);
        let t = Instant::now();
        let set = scale.policy_set()?;
        let dp = Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc()))
            .with_context(|| format!("compiling {n} prefixes and rules"))?;
        ensure!(
            dp.prefixes.len() == n as usize && dp.rules.len() == n as usize,
            "{n} x {n} compiled to {} prefixes and {} rules",
            dp.prefixes.len(),
            dp.rules.len()
        );
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        bench
            .programs
            .enforcer
            .apply(&dp, &[])
            .with_context(|| format!("programming {n} prefixes and rules"))?;
        let program_ms = t.elapsed().as_secs_f64() * 1e3;
        drop((set, dp));
        eprintln!(
            "packet: {} prefixes and rules (compiled in {compile_ms:.0} ms, programmed in {program_ms:.0} ms)",
            thousands(n.into())
        );
        let frames = Frames::new(&scale, packets);
        let mut samples: Vec<(Case, CaseSamples)> =
            CASES.iter().map(|c| (*c, CaseSamples::default())).collect();
        for _ in 0..rounds {
            for (case, result) in &mut samples {
                let round = bench
                    .measure(*case, &frames)
                    .with_context(|| format!("{} at {n} x {n}", case.key()))?;
                result
                    .round_medians
                    .push(stats::median(&round).unwrap_or(0));
                result.samples.extend(round);
            }
        }
        bench.programs.enforcer.flush_tracking()?;
        let mut cases = Cases::default();
        for (case, result) in &samples {
            *cases.get_mut(*case) = result.figures();
        }
        scales_measured.push(ScaleFigures {
            prefixes: n,
            rules: n,
            segments: scale.segments,
            compile_ms,
            program_ms,
            cases,
        });
    }
    let lost_events = bench.programs.enforcer.counters()?.lost_events;
    ensure!(lost_events == 0, "{lost_events} flow events were lost");
    let events_read = bench.events_read;
    drop(bench);
    Section::of(&PacketResults {
        quick: budget.quick,
        method: "BPF_PROG_TEST_RUN on the ingress program, kernel-timed",
        repeat: REPEAT,
        packets_per_case: packets,
        rounds,
        cpu_pinned: pinned.then_some(CPU),
        events_read,
        lost_events,
        kernel_settings: kernel_settings(),
        seconds: started.elapsed().as_secs_f64(),
        scales: scales_measured,
    })
}

fn scale_name(n: u32) -> String {
    format!("{0} × {0}", thousands(n.into()))
}

/// The cases whose growth from 100 to 100,000 is bounded.
const GROWTH_CASES: [Case; 6] = [
    Case::Established,
    Case::EstablishedReply,
    Case::New {
        allowed: true,
        events: true,
    },
    Case::New {
        allowed: true,
        events: false,
    },
    Case::New {
        allowed: false,
        events: true,
    },
    Case::New {
        allowed: false,
        events: false,
    },
];

impl Results for PacketResults {
    fn tables(&self) -> String {
        let mut table = String::new();
        let _ = writeln!(
            table,
            "Repeated packets: nanoseconds per run, {} runs per packet; median (p10–p90 over packets)\n",
            self.repeat
        );
        let _ = writeln!(
            table,
            "| prefixes × rules | empty program | parse only | established, initiator | established, reply | initiator − empty | reply − empty |"
        );
        let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|");
        for r in &self.scales {
            let c = &r.cases;
            let over = |f: &CaseFigures| f.median_ns as i64 - c.empty.median_ns as i64;
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {:+} | {:+} |",
                scale_name(r.prefixes),
                c.empty.cell(),
                c.parse_only.cell(),
                c.established.cell(),
                c.established_reply.cell(),
                over(&c.established),
                over(&c.established_reply),
            );
        }
        let _ = writeln!(
            table,
            "\nNew connections: nanoseconds of one run per connection, each a distinct tuple; median (p10–p90 over connections)\n"
        );
        let _ = writeln!(
            table,
            "| prefixes × rules | empty program, 1 run | established, 1 run | allowed, events | allowed, no events | dropped, events | dropped, no events |"
        );
        let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|");
        for r in &self.scales {
            let c = &r.cases;
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} | {} |",
                scale_name(r.prefixes),
                c.empty_one_run.cell(),
                c.established_one_run.cell(),
                c.new_allowed_events.cell(),
                c.new_allowed_no_events.cell(),
                c.new_dropped_events.cell(),
                c.new_dropped_no_events.cell(),
            );
        }
        table
    }

    fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        // Established, both orientations, within 50 ns of the empty program
        // at every scale.
        let worst = self
            .scales
            .iter()
            .flat_map(|r| {
                [
                    (Case::Established, "initiator"),
                    (Case::EstablishedReply, "reply"),
                ]
                .map(|(case, side)| {
                    let over = r.cases.get(case).median_ns as i64 - r.cases.empty.median_ns as i64;
                    (over, r.prefixes, side)
                })
            })
            .max_by_key(|(over, _, _)| *over);
        if let Some((worst, at, side)) = worst {
            targets.push(Target::new(
                format!(
                    "an established packet, the initiator's and the reply, costs no more than 50 ns over the empty program, at every scale: at most {worst:+} ns ({side}, at {})",
                    scale_name(at)
                ),
                worst <= 50,
            ));
        }
        if let Some(r) = self.scales.iter().find(|r| r.prefixes == 10_000) {
            let a = r.cases.new_allowed_events.median_ns;
            let d = r.cases.new_dropped_events.median_ns;
            targets.push(Target::new(
                format!(
                    "a new connection costs under 300 ns at 10,000 × 10,000 (flow events on, one run, timer floor included): allowed {a} ns, dropped {d} ns"
                ),
                a < 300 && d < 300,
            ));
        }
        let small = self.scales.iter().find(|r| r.prefixes == 100);
        let large = self.scales.iter().find(|r| r.prefixes == 100_000);
        if let (Some(small), Some(large)) = (small, large) {
            let mut worst = (0.0f64, "");
            for case in GROWTH_CASES {
                let ratio = large.cases.get(case).median_ns as f64
                    / small.cases.get(case).median_ns.max(1) as f64;
                if ratio > worst.0 {
                    worst = (ratio, case.key());
                }
            }
            targets.push(Target::new(
                format!(
                    "no more than 2x growth from 100 to 100,000 prefixes and rules (established both ways and every new-connection case): at most {:.2}x ({})",
                    worst.0, worst.1
                ),
                worst.0 <= 2.0,
            ));
        }
        targets
    }

    fn how_to_read(&self) -> String {
        let mut how = String::new();
        let _ = write!(
            how,
            "The agent's own kernel programs (the ingress program; egress runs the same code), \
             loaded but attached nowhere, run by the kernel through `BPF_PROG_TEST_RUN`. The \
             kernel times each call itself and returns nanoseconds per run, so the figures \
             are the program's cost on this CPU with the JIT, without the syscall, the NIC, the \
             driver or the TC hook's own dispatch. Every packet is an IPv4 TCP frame with a \
             5-tuple of its own ({} packets per case and scale), between host prefixes of a \
             generated policy: N prefixes (min(N, 1,000) segments of /32s) and N single-port \
             allow policies, one rule each. Each case runs over all packets, the cases take \
             turns, and this repeats {} times; a cell is the median of the rounds' \
             medians, with the 10th and 90th percentiles over every packet of every round.\n\n\
             - **empty program**: a two-instruction TC program (`return TC_ACT_OK`) loaded \
             for the benchmark: the floor any program pays.\n\
             - **parse only**: an LLDP frame (ethertype 0x88cc, listed in `passEthertypes`): \
             the config read, Ethernet parsed, one hash lookup, counted, passed.\n\
             - **established**: a connection the policy allowed, its SYN run through the \
             ingress program and then the egress program (in at one interface, out at \
             another, as a forwarded connection's first packet goes; the egress hook is where \
             the connection learns the interface its replies come back on), then the \
             responder's first reply at ingress, which confirms it. *Initiator*: the \
             initiator's next packet (an ACK) at ingress; *reply*: the responder's reply \
             (an ACK from the other end, addresses and ports swapped) at ingress. Each is \
             parse, one connection-tracking lookup (one key serves both directions), the \
             entry's checks and counters, passed.\n\
             - **new connections** run once each: the first run of a tuple creates its \
             tracking entry, so repeating it would measure an established packet. One run \
             per tuple over thousands of distinct tuples is the sound way; the kernel's \
             duration of one run includes its two timer reads, which the *empty program, 1 \
             run* column shows (subtract it for the program's own cost; the targets do not), \
             and a packet met once pays for caches the program's maps and the fresh packet \
             left cold, which *established, 1 run* (the initiator's ACKs as above, one run \
             each) shows: the difference between it and a new connection is what judging a \
             new connection adds. \
             *Allowed* is a SYN a policy allows, *dropped* a SYN to port {DENIED_PORT}, \
             which no policy names (default deny; dropped connections are remembered too). \
             *Events* is the default (a flow record per new connection into the ring \
             buffer, drained every {BATCH} connections so that it never fills: {} records \
             read, {} lost); *no events* is `flowLog: off` (`NO_EVENTS`).\n\n\
             The measuring thread is pinned to CPU {CPU}{}. Kernel settings: {}. This part \
             took {:.0} s.",
            thousands(self.packets_per_case.into()),
            self.rounds,
            thousands(self.events_read),
            thousands(self.lost_events),
            if self.cpu_pinned.is_some() {
                ""
            } else {
                " (pinning failed: unpinned)"
            },
            self.kernel_settings
                .iter()
                .map(|s| format!("`{}` {}", s.name, s.value))
                .collect::<Vec<_>>()
                .join(", "),
            self.seconds,
        );
        if self.quick {
            how.push_str(
                "\n\n**Quick run**: one scale and few packets, to check the harness; the \
                 10,000 and 100 to 100,000 targets need the full run.",
            );
        }
        how
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_policies_compile_to_one_rule_each() {
        for n in [10, 100, 1_000, 10_000] {
            let scale = Scale::new(n);
            let set = scale.policy_set().unwrap();
            let dp =
                Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc())).unwrap();
            assert_eq!(dp.prefixes.len(), n as usize);
            assert_eq!(dp.rules.len(), n as usize);
        }
    }

    #[test]
    fn the_yaml_is_the_same_policy() {
        let scale = Scale::new(1_000);
        let at = CompileOptions::at(OffsetDateTime::now_utc());
        let from_set = Dataplane::compile(&scale.policy_set().unwrap(), &at).unwrap();
        let parsed = wardline_policy::parse(&scale.yaml()).expect("the YAML parses");
        let from_yaml = Dataplane::compile(&parsed, &at).unwrap();
        assert_eq!(from_yaml.prefixes, from_set.prefixes);
        assert_eq!(from_yaml.rules, from_set.rules);
    }

    #[test]
    fn generated_tuples_are_distinct_and_allowed() {
        let scale = Scale::new(1_000);
        let set = scale.policy_set().unwrap();
        let dp = Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc())).unwrap();
        let segment = |a: Ipv4Addr| {
            dp.prefixes
                .iter()
                .find(|(net, _)| net.contains(&std::net::IpAddr::V4(a)))
                .map(|(_, id)| *id)
                .unwrap()
        };
        let mut seen = std::collections::HashSet::new();
        for k in 0..4096 {
            let (src, dst, sport, dport) = scale.allowed(k);
            assert!(seen.insert((src, dst, sport, dport)));
            let (reason, _) = dp.decide(segment(src), segment(dst), abi::PROTO_TCP, dport);
            assert_eq!(reason, abi::Reason::PolicyAllow, "{src} -> {dst}:{dport}");
            let (reason, _) = dp.decide(segment(src), segment(dst), abi::PROTO_TCP, DENIED_PORT);
            assert_eq!(reason, abi::Reason::DefaultDeny);
        }
    }
}
