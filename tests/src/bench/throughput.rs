//! Throughput through a filtering gateway: no filter, Wardline, nftables at
//! its best (a stateless set), nftables as a site replacing it would run it
//! (stateful: established connections first, then the same set) and a
//! linear iptables chain, measured with the same traffic in the same run.
//!
//! ```text
//!  client ns              gateway ns (routes; the filter)            server ns
//!  eth0 198.18.1.2 ---- c0 198.18.1.1 | s0 198.18.2.1 ---- eth0 198.18.2.2
//!  iperf3 -c               ^ every filter sits on c0                   iperf3 -s
//! ```
//!
//! Each case holds the same N rules, host to host on one port, the allowed
//! flows (client to server, TCP and UDP 5201) last. Cases run in turn,
//! rotated every repetition, and only one filter is ever installed: before
//! and after each case the gateway is checked to hold no nftables or
//! iptables rules and no tc or TCX program on `c0`, and a connection to a
//! port no rule allows must be dropped while the filter is in place and
//! refused by the server once it is gone.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use aya::programs::tc::{SchedClassifier, TcAttachType};
use serde::Serialize;
use serde_json::Value;

use crate::agent::Agent;
use crate::bench::{Budget, Results, Section, Target, stats};
use crate::{Netns, addr, enable_forwarding, route, veth};

pub(crate) const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub(crate) const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
/// The gateway's interface towards the client: every filter sits here.
pub(crate) const GW_IN: &str = "c0";
const GW_OUT: &str = "s0";
/// iperf3's port, TCP (control and data) and UDP (data).
pub(crate) const PORT: u16 = 5201;
/// A port no rule allows: a connection to it shows whether a filter is on
/// the path (dropped: times out) or not (refused by the server's stack).
pub(crate) const CLOSED_PORT: u16 = 5299;
const NFT_TABLE: &str = "wlbench";
/// The stateful nftables case's table (`inet`, on the forward hook).
const NFT_CT_TABLE: &str = "wlbench_ct";
const IPT_CHAIN: &str = "WLBENCH";
/// Filler rules use 100 source and 100 destination hosts in 198.19.0.0/16.
const FILLER_HOSTS: usize = 100;
/// The most an iperf3 run may take beyond its own duration.
const IPERF_SLACK: Duration = Duration::from_secs(15);
/// The UDP payload of the small-packet test.
const UDP_LEN: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    None,
    Wardline,
    /// Stateless: one set lookup per packet on the netdev ingress hook.
    Nftables,
    /// Stateful: `ct state established,related accept`, then the same set.
    NftablesStateful,
    Iptables,
}

impl Filter {
    const ALL: [Filter; 5] = [
        Filter::None,
        Filter::Wardline,
        Filter::Nftables,
        Filter::NftablesStateful,
        Filter::Iptables,
    ];

    fn key(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Wardline => "wardline",
            Filter::Nftables => "nftables",
            Filter::NftablesStateful => "nftablesStateful",
            Filter::Iptables => "iptables",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Traffic {
    Tcp,
    Udp64,
}

impl Traffic {
    fn key(self) -> &'static str {
        match self {
            Traffic::Tcp => "tcp",
            Traffic::Udp64 => "udp64",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Traffic::Tcp => "bit/s",
            Traffic::Udp64 => "packets/s received by the server's interface",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Traffic::Tcp => "TCP",
            Traffic::Udp64 => "UDP 64 B",
        }
    }

    fn from_key(key: &str) -> Option<Traffic> {
        [Traffic::Tcp, Traffic::Udp64]
            .into_iter()
            .find(|t| t.key() == key)
    }
}

/// One rule: `src -> dst`, protocol and destination port.
struct Rule {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    udp: bool,
    port: u16,
}

/// N rules: N - 2 fillers, then client to server on TCP and UDP 5201 (the
/// test's flows match the last two rules).
fn rules(n: usize) -> Vec<Rule> {
    assert!((2..=10_002).contains(&n), "fillers are unique up to 10,000");
    let host = |net: u8, i: usize| Ipv4Addr::new(198, 19, net, (i + 1) as u8);
    let mut out: Vec<Rule> = (0..n - 2)
        .map(|i| Rule {
            src: host(1, i % FILLER_HOSTS),
            dst: host(2, (i / FILLER_HOSTS) % FILLER_HOSTS),
            udp: false,
            port: 10_000 + (i as u16),
        })
        .collect();
    for udp in [false, true] {
        out.push(Rule {
            src: CLIENT,
            dst: SERVER,
            udp,
            port: PORT,
        });
    }
    out
}

fn proto(r: &Rule) -> &'static str {
    if r.udp { "udp" } else { "tcp" }
}

/// The rules as Wardline policy: one /32 segment per host, one policy per rule.
fn policy_yaml(rules: &[Rule]) -> String {
    let segment = |a: Ipv4Addr| {
        let [x, y, z, w] = a.octets();
        format!("h{x}-{y}-{z}-{w}")
    };
    let mut hosts: Vec<Ipv4Addr> = rules.iter().flat_map(|r| [r.src, r.dst]).collect();
    hosts.sort();
    hosts.dedup();
    let mut yaml = String::new();
    for h in hosts {
        let _ = write!(
            yaml,
            "---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: {}}}\nspec: {{cidrs: [\"{h}/32\"]}}\n",
            segment(h)
        );
    }
    for (i, r) in rules.iter().enumerate() {
        let _ = write!(
            yaml,
            "---\napiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: r{i:05}}}\nspec: {{action: allow, from: [{}], to: [{}], ports: [{{protocol: {}, port: {}}}]}}\n",
            segment(r.src),
            segment(r.dst),
            proto(r),
            r.port
        );
    }
    yaml
}

/// The set both nftables rulesets look new connections up in: the N
/// allowed (source, destination, protocol, port) keys, concatenated.
fn nft_allow_set(rules: &[Rule]) -> String {
    let mut s = format!(
        "  set allow {{\n    type ipv4_addr . ipv4_addr . inet_proto . inet_service\n    size {}\n    elements = {{\n",
        rules.len().max(16)
    );
    for (i, r) in rules.iter().enumerate() {
        let sep = if i + 1 == rules.len() { "" } else { "," };
        let _ = writeln!(
            s,
            "      {} . {} . {} . {}{sep}",
            r.src,
            r.dst,
            proto(r),
            r.port
        );
    }
    s.push_str("    }\n  }\n");
    s
}

/// nftables at its best: a netdev ingress hook on the gateway's interface
/// and one hash set of concatenated keys; what is not in it is dropped.
fn nft_ruleset(rules: &[Rule]) -> String {
    let mut s = format!("table netdev {NFT_TABLE} {{\n{}", nft_allow_set(rules));
    let _ = write!(
        s,
        "  chain ingress {{\n    type filter hook ingress device \"{GW_IN}\" priority 0; policy drop;\n    meta protocol != ip accept\n    ip saddr . ip daddr . meta l4proto . th dport @allow accept\n  }}\n}}\n"
    );
    s
}

/// nftables as a site replacing it would run it: stateful, on the forward
/// hook, so that every forwarded packet, either way, is judged; a packet of
/// a known connection is accepted at the first rule, a new one by the same
/// set of concatenated keys as the stateless case; the rest is dropped.
fn nft_stateful_ruleset(rules: &[Rule]) -> String {
    let mut s = format!("table inet {NFT_CT_TABLE} {{\n{}", nft_allow_set(rules));
    let _ = write!(
        s,
        "  chain forward {{\n    type filter hook forward priority 0; policy drop;\n    ct state established,related accept\n    ip saddr . ip daddr . meta l4proto . th dport @allow accept\n  }}\n}}\n"
    );
    s
}

/// A linear chain: every packet forwarded from the client's side walks the
/// rules in order; the test's flows match the last two; the rest is dropped.
fn iptables_rules(rules: &[Rule]) -> String {
    let mut s = format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:{IPT_CHAIN} - [0:0]\n-A FORWARD -i {GW_IN} -j {IPT_CHAIN}\n"
    );
    for r in rules {
        let p = proto(r);
        let _ = writeln!(
            s,
            "-A {IPT_CHAIN} -s {}/32 -d {}/32 -p {p} -m {p} --dport {} -j ACCEPT",
            r.src, r.dst, r.port
        );
    }
    let _ = write!(s, "-A {IPT_CHAIN} -j DROP\nCOMMIT\n");
    s
}

/// Runs `args` in `ns` with `input` on standard input; an error unless it exits 0.
fn exec_stdin(ns: &Netns, args: &[&str], input: &str) -> anyhow::Result<()> {
    let mut child = ns
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {args:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {args:?}"))?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

pub(crate) fn exec_ok(ns: &Netns, args: &[&str]) -> anyhow::Result<String> {
    let out = ns
        .try_exec(args)
        .with_context(|| format!("in {}", ns.name()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The three namespaces; dropping it removes them, with whatever filter
/// is still in the gateway's.
pub(crate) struct Bench {
    pub(crate) client: Netns,
    pub(crate) gw: Netns,
    pub(crate) server: Netns,
}

impl Bench {
    pub(crate) fn new() -> Bench {
        let client = Netns::new("bench-client");
        let gw = Netns::new("bench-gw");
        let server = Netns::new("bench-server");
        veth(&client, "eth0", &gw, GW_IN);
        veth(&gw, GW_OUT, &server, "eth0");
        addr(&client, "eth0", &format!("{CLIENT}/24"));
        addr(&gw, GW_IN, "198.18.1.1/24");
        addr(&gw, GW_OUT, "198.18.2.1/24");
        addr(&server, "eth0", &format!("{SERVER}/24"));
        route(&client, "default via 198.18.1.1");
        route(&server, "default via 198.18.2.1");
        enable_forwarding(&gw);
        Bench { client, gw, server }
    }

    /// What filters the gateway holds now, by what the kernel says.
    fn active_filters(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let ruleset = exec_ok(&self.gw, &["nft", "list", "ruleset"])?;
        if !ruleset.trim().is_empty() {
            out.push(format!("nftables ruleset:\n{}", ruleset.trim()));
        }
        let ipt = exec_ok(&self.gw, &["iptables-save"])?;
        if ipt.lines().any(|l| l.starts_with("-A ")) {
            out.push(format!("iptables rules:\n{}", ipt.trim()));
        }
        let bpf = exec_ok(&self.gw, &["bpftool", "-j", "net", "show", "dev", GW_IN])?;
        let bpf: Value = serde_json::from_str(bpf.trim()).unwrap_or(Value::Null);
        for entry in bpf.as_array().into_iter().flatten() {
            for (kind, progs) in entry.as_object().into_iter().flatten() {
                if progs.as_array().is_some_and(|a| !a.is_empty()) {
                    out.push(format!("BPF on {GW_IN} ({kind}): {progs}"));
                }
            }
        }
        // TCX attachments (what the agent uses), which bpftool 7.1 does not list.
        for (attach, dir) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            let names = self.gw.run_in(|| {
                SchedClassifier::query_tcx(GW_IN, attach).map(|(_, programs)| {
                    programs
                        .iter()
                        .map(|p| p.name_as_str().unwrap_or("?").to_owned())
                        .collect::<Vec<_>>()
                })
            });
            let names = names.with_context(|| format!("querying TCX {dir} on {GW_IN}"))?;
            if !names.is_empty() {
                out.push(format!("TCX {dir} on {GW_IN}: {names:?}"));
            }
        }
        Ok(out)
    }

    /// Whether a connection to a port no rule allows is dropped on the way
    /// (true) or refused by the server (false).
    pub(crate) fn closed_port_dropped(&self) -> anyhow::Result<bool> {
        let target = SocketAddr::from((SERVER, CLOSED_PORT));
        let r = self
            .client
            .run_in(move || TcpStream::connect_timeout(&target, Duration::from_millis(500)));
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(false),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(true),
            Ok(_) => bail!("{target} accepted a connection: something listens there"),
            Err(e) => bail!("connecting to {target}: {e}"),
        }
    }

    /// One iperf3 run from client to server: its JSON report, and the
    /// packet counters sampled while it ran.
    pub(crate) fn iperf(&self, traffic: Traffic, seconds: u32, omit: u32) -> anyhow::Result<Run> {
        let server_addr = SERVER.to_string();
        let port = PORT.to_string();
        let mut args = vec!["iperf3", "-s", "-1", "-B", &server_addr, "-p", &port];
        let pinned = super::cpus_online() >= 2;
        if pinned {
            args.extend(["-A", "1"]);
        }
        let mut server = self.server.spawn_command(
            self.server
                .command(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let result = self.iperf_client(traffic, seconds, omit, pinned, &mut server);
        end(&mut server, Duration::from_secs(3));
        result
    }

    fn iperf_client(
        &self,
        traffic: Traffic,
        seconds: u32,
        omit: u32,
        pinned: bool,
        server: &mut Child,
    ) -> anyhow::Result<Run> {
        let listening = Instant::now();
        loop {
            let ss = exec_ok(&self.server, &["ss", "-Hltn", &format!("sport = :{PORT}")])?;
            if !ss.trim().is_empty() {
                break;
            }
            if let Some(status) = server.try_wait()? {
                bail!("iperf3 -s exited before listening ({status})");
            }
            ensure!(
                listening.elapsed() < Duration::from_secs(5),
                "iperf3 -s does not listen on {SERVER}:{PORT}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (server_addr, client_addr) = (SERVER.to_string(), CLIENT.to_string());
        let (port, t, o) = (PORT.to_string(), seconds.to_string(), omit.to_string());
        let mut args = vec![
            "iperf3",
            "-c",
            &server_addr,
            "-B",
            &client_addr,
            "-p",
            &port,
            "-t",
            &t,
            "-O",
            &o,
            "-J",
            "--connect-timeout",
            "3000",
        ];
        if pinned {
            args.extend(["-A", "0"]);
        }
        let len = UDP_LEN.to_string();
        if traffic == Traffic::Udp64 {
            args.extend(["-u", "-l", &len, "-b", "0"]);
        }
        let out_path = std::env::temp_dir().join(format!(
            "wardline-bench-iperf-{}-{}.json",
            std::process::id(),
            self.client.name()
        ));
        let out_file = std::fs::File::create(&out_path)
            .with_context(|| format!("creating {}", out_path.display()))?;
        let started = Instant::now();
        let mut client = self.client.spawn_command(
            self.client
                .command(&args)
                .stdin(Stdio::null())
                .stdout(out_file)
                .stderr(Stdio::null()),
        );
        // Packet counters over the measured seconds (after the omitted
        // ones, a margin off either end).
        let window = (
            Duration::from_secs(u64::from(omit)) + Duration::from_millis(250),
            Duration::from_secs(u64::from(omit + seconds)) - Duration::from_millis(150),
        );
        let mut counters = None;
        if window.1 > window.0 {
            std::thread::sleep(window.0.saturating_sub(started.elapsed()));
            let first = (Instant::now(), self.packet_counters());
            std::thread::sleep(window.1.saturating_sub(started.elapsed()));
            let last = (Instant::now(), self.packet_counters());
            if let ((t1, Ok(c1)), (t2, Ok(c2))) = (first, last) {
                let secs = (t2 - t1).as_secs_f64();
                counters = Some(Counters {
                    offered_pps: c2.0.saturating_sub(c1.0) as f64 / secs,
                    delivered_pps: c2.1.saturating_sub(c1.1) as f64 / secs,
                });
            }
        }
        let deadline = Duration::from_secs(u64::from(seconds + omit)) + IPERF_SLACK;
        let exited = wait_for(&mut client, deadline.saturating_sub(started.elapsed()))?;
        if !exited {
            end(&mut client, Duration::ZERO);
        }
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        ensure!(exited, "iperf3 -c did not finish within {deadline:?}");
        let report: Value = serde_json::from_str(&text)
            .with_context(|| format!("iperf3 -J output is not JSON: {text:.200}"))?;
        if let Some(error) = report.get("error") {
            bail!("iperf3: {error}");
        }
        Ok(Run { report, counters })
    }

    /// (packets the gateway took in from the client, packets the server's
    /// interface received).
    pub(crate) fn packet_counters(&self) -> anyhow::Result<(u64, u64)> {
        let read = |ns: &Netns, ifname: &str, dir: &str| -> anyhow::Result<u64> {
            let out = ns
                .try_ip(["-j", "-s", "link", "show", "dev", ifname])
                .with_context(|| format!("counters of {ifname} in {}", ns.name()))?;
            let v: Value = serde_json::from_slice(&out.stdout)?;
            v[0]["stats64"][dir]["packets"]
                .as_u64()
                .with_context(|| format!("no stats64.{dir}.packets for {ifname}"))
        };
        Ok((
            read(&self.gw, GW_IN, "rx")?,
            read(&self.server, "eth0", "rx")?,
        ))
    }
}

/// Packet rates sampled from the interfaces during a run.
#[derive(Clone, Copy)]
struct Counters {
    /// Packets per second the gateway's client-side interface took in.
    offered_pps: f64,
    /// Packets per second the server's interface received: what got through.
    delivered_pps: f64,
}

/// One iperf3 run.
pub(crate) struct Run {
    pub(crate) report: Value,
    counters: Option<Counters>,
}

/// Waits up to `within` for `child` to exit; whether it did.
pub(crate) fn wait_for(child: &mut Child, within: Duration) -> anyhow::Result<bool> {
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if start.elapsed() >= within {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends a process we started: waits up to `grace`, then kills it by its handle.
pub(crate) fn end(child: &mut Child, grace: Duration) {
    if matches!(wait_for(child, grace), Ok(true)) {
        return;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// TCP: bits per second received (iperf3). UDP: packets per second the
/// server's interface received.
pub(crate) fn figure(traffic: Traffic, run: &Run) -> anyhow::Result<f64> {
    match traffic {
        Traffic::Tcp => run.report["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 report has no end.sum_received.bits_per_second"),
        Traffic::Udp64 => run
            .counters
            .map(|c| c.delivered_pps)
            .context("no packet counters sampled during the run"),
    }
}

/// What iperf3 itself says of a UDP run: packets per second sent and
/// received by the application.
fn udp_app_pps(report: &Value) -> Option<UdpAppRates> {
    let sent = &report["end"]["sum_sent"];
    let sent = sent["bytes"].as_f64()? / f64::from(UDP_LEN) / sent["seconds"].as_f64()?;
    let sum = &report["end"]["sum"];
    let received = (sum["packets"].as_f64()? - sum["lost_packets"].as_f64().unwrap_or(0.0))
        / sum["seconds"].as_f64()?;
    Some(UdpAppRates {
        sent,
        received_by_the_application: received,
    })
}

/// The filter installed for one case; removing it is checked.
enum Installed {
    None,
    Wardline(Box<Agent>),
    Nftables,
    NftablesStateful,
    Iptables,
}

fn install(
    bench: &Bench,
    filter: Filter,
    policy: &str,
    rules: &[Rule],
) -> anyhow::Result<Installed> {
    let active = bench.active_filters()?;
    ensure!(
        active.is_empty(),
        "the gateway still holds a filter before the {} case: {active:?}",
        filter.key()
    );
    Ok(match filter {
        Filter::None => Installed::None,
        Filter::Wardline => {
            Installed::Wardline(Box::new(Agent::start(&bench.gw, &[GW_IN], policy)))
        }
        Filter::Nftables => {
            exec_stdin(&bench.gw, &["nft", "-f", "-"], &nft_ruleset(rules))?;
            Installed::Nftables
        }
        Filter::NftablesStateful => {
            exec_stdin(&bench.gw, &["nft", "-f", "-"], &nft_stateful_ruleset(rules))?;
            Installed::NftablesStateful
        }
        Filter::Iptables => {
            exec_stdin(&bench.gw, &["iptables-restore"], &iptables_rules(rules))?;
            Installed::Iptables
        }
    })
}

fn remove(bench: &Bench, installed: Installed) -> anyhow::Result<()> {
    match installed {
        Installed::None => {}
        // Ends the agent and removes its pins: the kernel detaches its programs.
        Installed::Wardline(agent) => drop(agent),
        Installed::Nftables => {
            exec_ok(&bench.gw, &["nft", "delete", "table", "netdev", NFT_TABLE])?;
        }
        Installed::NftablesStateful => {
            exec_ok(&bench.gw, &["nft", "delete", "table", "inet", NFT_CT_TABLE])?;
        }
        Installed::Iptables => {
            exec_ok(&bench.gw, &["iptables", "-F", "FORWARD"])?;
            exec_ok(&bench.gw, &["iptables", "-F", IPT_CHAIN])?;
            exec_ok(&bench.gw, &["iptables", "-X", IPT_CHAIN])?;
            // iptables-nft leaves its (now empty) base chains hooked.
            exec_ok(&bench.gw, &["nft", "flush", "ruleset"])?;
        }
    }
    let active = bench.active_filters()?;
    ensure!(
        active.is_empty(),
        "a filter is left on the gateway: {active:?}"
    );
    // And by the traffic itself: nothing drops on the way any more.
    ensure!(
        !bench.closed_port_dropped()?,
        "with the filter removed, a connection to port {CLOSED_PORT} is still dropped"
    );
    Ok(())
}

/// The samples of one rule count: per filter and traffic, one figure per repetition.
#[derive(Default)]
struct Samples {
    by_case: Vec<(Filter, Traffic, Vec<f64>)>,
    runs: Vec<RunSample>,
    /// Runs that did not complete through a filter (counted as 0).
    failed: Vec<FailedRun>,
}

impl Samples {
    fn push(&mut self, filter: Filter, traffic: Traffic, value: f64) {
        match self
            .by_case
            .iter_mut()
            .find(|(f, t, _)| *f == filter && *t == traffic)
        {
            Some((_, _, v)) => v.push(value),
            None => self.by_case.push((filter, traffic, vec![value])),
        }
    }

    /// The median over the repetitions; NaN when none was measured.
    fn median(&self, filter: Filter, traffic: Traffic) -> f64 {
        self.by_case
            .iter()
            .find(|(f, t, _)| *f == filter && *t == traffic)
            .and_then(|(_, _, v)| stats::median(v))
            .unwrap_or(f64::NAN)
    }
}

/// iperf3's own view of a UDP run, packets per second.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UdpAppRates {
    sent: f64,
    received_by_the_application: f64,
}

/// iperf3's CPU figures of a run, percent.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct IperfCpu {
    host_total: Option<f64>,
    remote_total: Option<f64>,
}

/// One iperf3 run.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RunSample {
    rules: usize,
    repetition: usize,
    filter: &'static str,
    traffic: &'static str,
    value: f64,
    unit: &'static str,
    offered_pps: Option<f64>,
    delivered_pps: Option<f64>,
    udp_iperf3_pps: Option<UdpAppRates>,
    tcp_retransmits: Option<u64>,
    cpu: Option<IperfCpu>,
}

/// A run through a filter that did not complete (counted as 0).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FailedRun {
    rules: usize,
    repetition: usize,
    filter: &'static str,
    traffic: &'static str,
    error: String,
}

fn measure(
    bench: &Bench,
    n: usize,
    reps: usize,
    seconds: u32,
    omit: u32,
    traffics: &[Traffic],
) -> anyhow::Result<Samples> {
    let rules = rules(n);
    let policy = policy_yaml(&rules);
    let mut samples = Samples::default();
    for rep in 0..reps {
        for k in 0..Filter::ALL.len() {
            let filter = Filter::ALL[(k + rep) % Filter::ALL.len()];
            let installed = install(bench, filter, &policy, &rules)?;
            let outcome = (|| -> anyhow::Result<()> {
                // The checks that find no filter between cases must see this one.
                let seen = bench.active_filters()?;
                ensure!(
                    seen.is_empty() == (filter == Filter::None),
                    "N={n}, {}: the gateway shows {seen:?}",
                    filter.key()
                );
                let dropped = bench.closed_port_dropped()?;
                ensure!(
                    dropped == (filter != Filter::None),
                    "N={n}, {}: a connection to port {CLOSED_PORT} was {}",
                    filter.key(),
                    if dropped { "dropped" } else { "let through" }
                );
                for &traffic in traffics {
                    let run = bench
                        .iperf(traffic, seconds, omit)
                        .and_then(|run| Ok((figure(traffic, &run)?, run)));
                    let (value, run) = match run {
                        Ok(ok) => ok,
                        // With no filter, a failed run is the harness's fault.
                        Err(e) if filter == Filter::None => {
                            return Err(e.context(format!("N={n}, no filter, {}", traffic.key())));
                        }
                        // Through a filter, it counts as nothing getting through.
                        Err(e) => {
                            let error = format!("{e:#}");
                            eprintln!(
                                "throughput: N={n}, {}, {}: {error}",
                                filter.key(),
                                traffic.key()
                            );
                            samples.failed.push(FailedRun {
                                rules: n,
                                repetition: rep,
                                filter: filter.key(),
                                traffic: traffic.key(),
                                error,
                            });
                            (
                                0.0,
                                Run {
                                    report: Value::Null,
                                    counters: None,
                                },
                            )
                        }
                    };
                    samples.push(filter, traffic, value);
                    let cpu = &run.report["end"]["cpu_utilization_percent"];
                    samples.runs.push(RunSample {
                        rules: n,
                        repetition: rep,
                        filter: filter.key(),
                        traffic: traffic.key(),
                        value,
                        unit: traffic.unit(),
                        offered_pps: run.counters.map(|c| c.offered_pps),
                        delivered_pps: run.counters.map(|c| c.delivered_pps),
                        udp_iperf3_pps: if traffic == Traffic::Udp64 {
                            udp_app_pps(&run.report)
                        } else {
                            None
                        },
                        tcp_retransmits: run.report["end"]["sum_sent"]["retransmits"].as_u64(),
                        cpu: cpu.is_object().then(|| IperfCpu {
                            host_total: cpu["host_total"].as_f64(),
                            remote_total: cpu["remote_total"].as_f64(),
                        }),
                    });
                }
                Ok(())
            })();
            let removed = remove(bench, installed);
            outcome?;
            removed?;
        }
    }
    Ok(samples)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

fn fmt_value(traffic: Traffic, v: f64) -> String {
    match traffic {
        Traffic::Tcp => format!("{:.2} Gbit/s", v / 1e9),
        Traffic::Udp64 => format!("{:.0} kpps", v / 1e3),
    }
}

fn fmt_n(n: usize) -> String {
    super::thousands(n as u64)
}

/// Part 2 of the benchmarks: end-to-end throughput through the gateway with
/// each filter.
pub fn run(budget: Budget) -> anyhow::Result<Section> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "the throughput benchmark needs root (namespaces, nftables, BPF)"
    );
    for tool in ["iperf3", "nft", "iptables-restore", "bpftool", "ss"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(found, "{tool} is missing: run `cargo xtask setup`");
    }
    let (counts, reps, seconds, omit, traffics): (&[usize], usize, u32, u32, &[Traffic]) =
        if budget.quick {
            (&[100], 1, 1, 0, &[Traffic::Tcp, Traffic::Udp64])
        } else {
            (
                &[100, 1_000, 10_000],
                3,
                3,
                1,
                &[Traffic::Tcp, Traffic::Udp64],
            )
        };
    let started = Instant::now();
    let bench = Bench::new();
    // Neighbours resolved before the first measurement.
    ensure!(
        !bench.closed_port_dropped()?,
        "with no filter, {SERVER}:{CLOSED_PORT} should refuse the connection"
    );
    let iptables_version = exec_ok(&bench.gw, &["iptables", "-V"])?.trim().to_owned();
    let mut results = Vec::new();
    for &n in counts {
        eprintln!("throughput: {} rules...", fmt_n(n));
        let samples = measure(&bench, n, reps, seconds, omit, traffics)?;
        results.push((n, samples));
    }
    drop(bench);

    let mut traffic_figures = Vec::new();
    for &traffic in traffics {
        let rows = results
            .iter()
            .map(|(n, s)| {
                let m = |f| s.median(f, traffic);
                let median = ByFilter {
                    none: m(Filter::None),
                    wardline: m(Filter::Wardline),
                    nftables: m(Filter::Nftables),
                    nftables_stateful: m(Filter::NftablesStateful),
                    iptables: m(Filter::Iptables),
                };
                let wl = median.wardline;
                Row {
                    rules: *n,
                    ratio: Ratios {
                        wardline_none: ratio(wl, median.none),
                        wardline_nftables: ratio(wl, median.nftables),
                        wardline_nftables_stateful: ratio(wl, median.nftables_stateful),
                        wardline_iptables: ratio(wl, median.iptables),
                    },
                    median,
                }
            })
            .collect();
        traffic_figures.push(TrafficFigures {
            traffic: traffic.key(),
            unit: traffic.unit(),
            rows,
        });
    }
    Section::of(&ThroughputResults {
        quick: budget.quick,
        rule_counts: counts.to_vec(),
        repetitions: reps,
        seconds_per_run: seconds,
        omitted_seconds: omit,
        udp_payload_bytes: UDP_LEN,
        iptables: iptables_version,
        traffics: traffic_figures,
        samples: results.iter().flat_map(|(_, s)| s.runs.clone()).collect(),
        failed_runs: results.iter().flat_map(|(_, s)| s.failed.clone()).collect(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A figure per filter: the median over the repetitions.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ByFilter {
    none: f64,
    wardline: f64,
    nftables: f64,
    nftables_stateful: f64,
    iptables: f64,
}

/// Wardline's figure over each other case's.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Ratios {
    wardline_none: f64,
    wardline_nftables: f64,
    wardline_nftables_stateful: f64,
    wardline_iptables: f64,
}

/// One rule count of one kind of traffic.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    rules: usize,
    median: ByFilter,
    ratio: Ratios,
}

/// One kind of traffic at every rule count.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TrafficFigures {
    /// `tcp` or `udp64`.
    traffic: &'static str,
    unit: &'static str,
    rows: Vec<Row>,
}

/// What part 2 measured.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ThroughputResults {
    quick: bool,
    rule_counts: Vec<usize>,
    repetitions: usize,
    seconds_per_run: u32,
    omitted_seconds: u32,
    udp_payload_bytes: u32,
    /// `iptables -V`.
    iptables: String,
    traffics: Vec<TrafficFigures>,
    /// Every run.
    samples: Vec<RunSample>,
    failed_runs: Vec<FailedRun>,
    seconds: f64,
}

impl Results for ThroughputResults {
    fn tables(&self) -> String {
        let mut table = String::new();
        for t in &self.traffics {
            let Some(traffic) = Traffic::from_key(t.traffic) else {
                continue;
            };
            let title = match traffic {
                Traffic::Tcp => "TCP throughput, one stream (received)",
                Traffic::Udp64 => {
                    "UDP, 64-byte payloads (packets per second received by the server's interface)"
                }
            };
            let _ = writeln!(
                table,
                "**{title}**, median of {} run(s) of {} s\n",
                self.repetitions, self.seconds_per_run
            );
            table.push_str("| rules | no filter | Wardline | nftables, stateless set | nftables, stateful | iptables (linear) | Wardline / no filter | Wardline / nftables stateless | Wardline / nftables stateful | Wardline / iptables |\n");
            table.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for r in &t.rows {
                let (m, q) = (&r.median, &r.ratio);
                let _ = writeln!(
                    table,
                    "| {} | {} | {} | {} | {} | {} | {:.3} | {:.2}x | {:.2}x | {:.2}x |",
                    fmt_n(r.rules),
                    fmt_value(traffic, m.none),
                    fmt_value(traffic, m.wardline),
                    fmt_value(traffic, m.nftables),
                    fmt_value(traffic, m.nftables_stateful),
                    fmt_value(traffic, m.iptables),
                    q.wardline_none,
                    q.wardline_nftables,
                    q.wardline_nftables_stateful,
                    q.wardline_iptables,
                );
            }
            table.push('\n');
        }
        if !self.failed_runs.is_empty() {
            let _ = writeln!(
                table,
                "{} run(s) through a filter did not complete and count as 0 (see the raw results' `failedRuns`).\n",
                self.failed_runs.len()
            );
        }
        table
    }

    fn targets(&self) -> Vec<Target> {
        let mut targets = Vec::new();
        for t in &self.traffics {
            let Some(traffic) = Traffic::from_key(t.traffic) else {
                continue;
            };
            let label = traffic.label();
            let list = |pick: fn(&Ratios) -> f64, unit: &str| {
                t.rows
                    .iter()
                    .map(|r| format!("{}: {:.2}{unit}", fmt_n(r.rules), pick(&r.ratio)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let all = |pick: fn(&Ratios) -> f64, ok: fn(f64) -> bool| {
                t.rows.iter().all(|r| ok(pick(&r.ratio)))
            };
            targets.push(Target::new(
                format!(
                    "{label}: Wardline at least 0.95 of no filter ({})",
                    list(|q| q.wardline_none, "")
                ),
                all(|q| q.wardline_none, |r| r >= 0.95),
            ));
            targets.push(Target::new(
                format!(
                    "{label}: Wardline at least 1.2x nftables with a set ({})",
                    list(|q| q.wardline_nftables, "x")
                ),
                all(|q| q.wardline_nftables, |r| r >= 1.2),
            ));
            if t.rows.len() > 1 {
                let growing = t
                    .rows
                    .windows(2)
                    .all(|w| w[1].ratio.wardline_iptables > w[0].ratio.wardline_iptables);
                targets.push(Target::new(
                    format!(
                        "{label}: Wardline ahead of the linear iptables chain, by more as N grows ({})",
                        list(|q| q.wardline_iptables, "x")
                    ),
                    growing && all(|q| q.wardline_iptables, |r| r > 1.0),
                ));
            }
        }
        targets
    }

    fn how_to_read(&self) -> String {
        let how_to_read = format!(
            "Three network namespaces: a client, a routing gateway and a server, joined by veth pairs. \
The filter under test sits on the gateway's interface towards the client (`{GW_IN}`), so every \
packet the client sends is judged there before it is routed on; this is the deployment Wardline \
is built for (a gateway in front of a segment). Five cases, one at a time:\n\n\
- **no filter**: plain forwarding.\n\
- **Wardline**: a standalone `wardline-agent` enforcing `{GW_IN}` (TC ingress and egress, \
connection tracking, flow events on) with a policy of N rules.\n\
- **nftables, stateless set**: nftables at its best: a `netdev` table with an ingress hook on `{GW_IN}` \
and one hash set of N concatenated keys (`ip saddr . ip daddr . meta l4proto . th dport`); \
a packet in the set is accepted, other IPv4 is dropped (no connection tracking; ARP passes; \
replies, which come in on `{GW_OUT}`, are not judged).\n\
- **nftables, stateful**: what a site replacing nftables runs today: an `inet` table on the \
forward hook, policy drop, `ct state established,related accept` first, then the same set of \
N concatenated keys for new connections. The kernel's connection tracking (`nf_conntrack`) \
follows every forwarded packet, both ways, as Wardline's does.\n\
- **iptables (linear)**: a FORWARD jump to one chain of N `-s -d -p --dport -j ACCEPT` rules \
then `DROP` ({}). The test's flows match the last two rules, so every \
forwarded packet walks the whole chain: the worst case of a linear list, which is also what \
a large, unsorted rule base costs on average.\n\n\
The N rules are the same in every case: N - 2 host-to-host rules on distinct ports \
(198.19.1.0/24 to 198.19.2.0/24) and the two that allow the test (198.18.1.2 to 198.18.2.2, \
TCP and UDP 5201). Only one filter is ever in place: before and after each case the gateway \
is checked to hold no nftables or iptables rules and no BPF program on `{GW_IN}` (tc or TCX), \
and during a case those checks must see its filter; a connection to a port no rule allows \
must be dropped with the filter in place and refused by the server once it is removed. Traffic is iperf3, the client pinned \
to CPU 0 and the server to CPU 1 (without it, where the scheduler puts them moves the \
figures by half). On veth, a packet's whole path through the gateway (and its filter) runs in \
the sending CPU's softirq, so CPU 0 carries the client, the forwarding and the filter: the \
filter's per-packet cost lowers the rate the client reaches. **TCP**: one stream (veth \
offloads on, as the kernel sets them, so a packet is up to 64 KiB), the rate iperf3's server \
received. **UDP**: {}-byte payloads sent as fast as the client can (`-b 0`), counted as \
packets per second the server's interface received (its `rx_packets`, sampled over the \
measured seconds); iperf3's own receiver, one `recv` per packet on CPU 1, cannot keep up \
with that and its figures are in the raw results only. {}The cases run in turn, their order rotated at each repetition; a figure is the \
median of the repetitions.\n\n\
Read the **ratios**: they compare cases measured seconds apart on the same machine. The \
absolute figures are context only: this is a 2-core virtual machine (shared with whatever \
else runs), so a filter's cost shows as a share of one CPU, not of a NIC's line rate. This part took {:.0} s.",
            self.iptables,
            self.udp_payload_bytes,
            if self.omitted_seconds > 0 {
                format!(
                    "The first {} s of each run are omitted. ",
                    self.omitted_seconds
                )
            } else {
                String::new()
            },
            self.seconds,
        );
        if self.quick {
            format!(
                "{how_to_read}\n\nQuick mode: N = 100 only, one {}-second run per case and traffic: a smoke of the harness, not figures to quote.",
                self.seconds_per_run
            )
        } else {
            how_to_read
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_rules_in_every_filter() {
        let r = rules(1_000);
        assert_eq!(r.len(), 1_000);
        let mut keys: Vec<_> = r.iter().map(|r| (r.src, r.dst, r.udp, r.port)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 1_000, "rules are distinct");
        let last = &r[999];
        assert!(last.udp && last.src == CLIENT && last.dst == SERVER && last.port == PORT);
        assert_eq!(iptables_rules(&r).matches(" -j ACCEPT").count(), 1_000);
        // One set element per rule, the set and the lookup's keys aside.
        assert_eq!(nft_ruleset(&r).matches(" . ").count(), 3 * 1_000 + 3 + 3);
        let stateful = nft_stateful_ruleset(&r);
        assert_eq!(stateful.matches(" . ").count(), 3 * 1_000 + 3 + 3);
        let ct = stateful
            .find("ct state established,related accept")
            .unwrap();
        let set = stateful.find("@allow accept").unwrap();
        assert!(
            ct < set,
            "known connections are accepted before the set is looked up"
        );
        assert_eq!(policy_yaml(&r).matches("kind: Policy").count(), 1_000);
        let set = wardline_policy::parse(&policy_yaml(&rules(10_000))).expect("valid policy");
        assert_eq!(set.policies.len(), 10_000);
    }
}
