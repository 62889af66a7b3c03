//! A penetration tester's attacks on Wardline that play on time, on the
//! order of programs on an interface, on table capacity and on address
//! families. Each test performs the attack against the real agent in
//! namespaces and asserts that it fails:
//!
//! - a policy window still opens and closes on time when the agent process
//!   has been killed (docs/verdicts.md, docs/agent.md "Lifetime");
//! - a foreign TCX program attached before Wardline cannot pass denied
//!   traffic, and Wardline hands allowed packets on to later TCX programs
//!   and legacy tc filters instead of ending the chain (docs/verdicts.md
//!   "Where packets are judged");
//! - a flood of denied SYNs from spoofed sources cannot starve allowed
//!   connections, and tracking-table insert failures are counted
//!   (docs/verdicts.md, docs/agent.md "Status endpoint");
//! - a forged router advertisement is judged by policy, not passed as L2
//!   (docs/verdicts.md "Always passed");
//! - an IPv4 address is never a member of an IPv6 segment, not even `::/0`.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn6, sockopt,
};
use nix::sys::time::TimeVal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_ebpf_abi as abi;
use wardline_tests::agent::Agent;
use wardline_tests::docs::{WS_PUMP_EHR, policy, with};
use wardline_tests::forge::{echo, flood_bin, mac_of};
use wardline_tests::matrix::{Family, Service, check_matrix};
use wardline_tests::scenarios::{last_progress, watch_stream};
use wardline_tests::tcx::{self, Hook, Order, TCX_DROP, TCX_PASS};
use wardline_tests::topology::{self, Topology};
use wardline_tests::{Netns, require_root};

// ------------------------------------------------------------- helpers --

/// How late after its instant a window boundary may take effect.
const ON_TIME: Duration = Duration::from_secs(1);
/// How early a boundary may seem to take effect: the test's clock reading
/// and the probe's own timing, nothing more.
const CLOCK_SLACK: Duration = Duration::from_millis(100);

/// The metric the agent exports for connections that passed but found no
/// room in the tracking table.
const INSERT_FAILURES_METRIC: &str = "wardline_tracking_insert_failures_total";
/// The same count in /status, under `counters`.
const INSERT_FAILURES_STATUS: &str = "trackingInsertFailures";

fn start(topo: &Topology, policy: &str) -> Agent {
    Agent::start(topo.agent_ns(), &topo.interfaces(), policy)
}

fn allow(name: &str, from: &str, to: &str, ports: &str) -> String {
    policy(name, "allow", from, to, ports)
}

/// The agent with one policy: ws may reach ehr's tcp/443.
fn ws_ehr_web_agent(topo: &Topology) -> Agent {
    start(
        topo,
        &with(
            WS_PUMP_EHR,
            &[allow(
                "ws-ehr-web",
                "ws",
                "ehr",
                "[{protocol: tcp, port: 443}]",
            )],
        ),
    )
}

/// The EHR's web port, over IPv4.
fn ehr_web(topo: &Topology) -> SocketAddr {
    SocketAddr::new(topo.host("ehr").v4, 443)
}

/// `t` rounded up to the next whole second (policies are written by
/// operators, in whole seconds).
fn whole_second_after(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).expect("zero nanoseconds") + time::Duration::seconds(1)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("RFC 3339")
}

/// The monotonic instant of the wall-clock time `t`.
fn instant_of(t: OffsetDateTime) -> Instant {
    let (now_wall, now) = (OffsetDateTime::now_utc(), Instant::now());
    let delta = t - now_wall;
    if delta.is_negative() {
        now - delta.unsigned_abs()
    } else {
        now + delta.unsigned_abs()
    }
}

/// A policy document with a window (`validFrom`, `validUntil`).
fn windowed(
    name: &str,
    from: &str,
    to: &str,
    ports: &str,
    valid_from: Option<OffsetDateTime>,
    valid_until: Option<OffsetDateTime>,
) -> String {
    let mut doc = allow(name, from, to, ports);
    if let Some(t) = valid_from {
        doc.push_str(&format!("  validFrom: {}\n", rfc3339(t)));
    }
    if let Some(t) = valid_until {
        doc.push_str(&format!("  validUntil: {}\n", rfc3339(t)));
    }
    doc
}

/// Gives the agent one policy, `name`: ws may reach ehr's tcp/443 from
/// `valid_from` until `valid_until`.
fn set_vendor_window(
    agent: &Agent,
    ns: &Netns,
    name: &str,
    valid_from: Option<OffsetDateTime>,
    valid_until: Option<OffsetDateTime>,
) {
    agent.set_policy(
        ns,
        &with(
            WS_PUMP_EHR,
            &[windowed(
                name,
                "ws",
                "ehr",
                "[{protocol: tcp, port: 443}]",
                valid_from,
                valid_until,
            )],
        ),
    );
}

/// Kills the agent with `kill -9`, and checks that it is gone.
#[track_caller]
fn kill_agent(agent: &mut Agent, ns: &Netns) {
    agent.kill9();
    assert!(agent.get(ns, "/healthz").is_none(), "the agent is dead");
}

/// The body of the agent's `path`, retried for a while: right after a flood
/// the agent is busy reading its events.
fn answer(agent: &Agent, ns: &Netns, path: &str) -> String {
    let start = Instant::now();
    loop {
        match agent.get(ns, path) {
            Some((200, body)) => return body,
            other => assert!(
                start.elapsed() < Duration::from_secs(20),
                "{path} does not answer ({other:?}); log:\n{}",
                agent.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Packets counted in `direction` (`ingress`, `egress`, or `` for both)
/// with `reason`, from the agent's /metrics.
fn packets(agent: &Agent, ns: &Netns, direction: &str, reason: &str) -> u64 {
    let metrics = answer(agent, ns, "/metrics");
    let reason = format!("reason=\"{reason}\"");
    let direction = format!("direction=\"{direction}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("wardline_packets_total{") && l.contains(&reason))
        .filter(|l| direction == "direction=\"\"" || l.contains(&direction))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The value of an unlabelled-but-for-node metric, if /metrics has it.
fn metric(agent: &Agent, ns: &Netns, name: &str) -> Option<u64> {
    let metrics = answer(agent, ns, "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .reduce(|a, b| a + b)
}

/// One fresh TCP connection from `ns`: connect, one line echoed.
fn fresh_echo(ns: &Netns, target: SocketAddr, timeout: Duration) -> Result<(), String> {
    ns.run_in(move || {
        let conn = TcpStream::connect_timeout(&target, timeout)?;
        echo(&conn, "attack fresh", timeout)
    })
    .map_err(|e| e.to_string())
}

/// Fresh connections from `ns` to `target` every 100 ms until `end`, each
/// given 90 ms: (when it started, whether its echo came back).
fn poll_tcp(ns: &Netns, target: SocketAddr, end: Instant) -> Vec<(Instant, bool)> {
    ns.run_in(move || {
        let mut seen = Vec::new();
        let mut next = Instant::now();
        while Instant::now() < end {
            let at = Instant::now();
            let ok = TcpStream::connect_timeout(&target, Duration::from_millis(90))
                .and_then(|c| echo(&c, "attack poll", Duration::from_millis(200)))
                .is_ok();
            seen.push((at, ok));
            next += Duration::from_millis(100);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        seen
    })
}

/// `poll_tcp`'s results relative to `origin`, for messages.
fn timeline(seen: &[(Instant, bool)], origin: Instant) -> String {
    let mut out = String::new();
    let mut last = None;
    for (at, ok) in seen {
        if last != Some(*ok) {
            let ms = signed_ms(*at, origin);
            out.push_str(&format!(
                "{ms:+} ms {}; ",
                if *ok { "open" } else { "closed" }
            ));
            last = Some(*ok);
        }
    }
    out
}

fn signed_ms(at: Instant, origin: Instant) -> i128 {
    at.saturating_duration_since(origin).as_millis() as i128
        - origin.saturating_duration_since(at).as_millis() as i128
}

/// Asserts that `seen` shows the service closed before `boundary` and
/// open from `boundary + ON_TIME` on (or the reverse, `opens == false`).
fn assert_switches(seen: &[(Instant, bool)], boundary: Instant, opens: bool, what: &str) {
    let story = timeline(seen, boundary);
    let before: Vec<_> = seen
        .iter()
        .filter(|(at, _)| *at + CLOCK_SLACK < boundary)
        .collect();
    let after: Vec<_> = seen
        .iter()
        .filter(|(at, _)| *at >= boundary + ON_TIME)
        .collect();
    assert!(
        !before.is_empty() && !after.is_empty(),
        "{what}: too few attempts around the boundary ({story})"
    );
    assert!(
        before.iter().all(|(_, ok)| *ok != opens),
        "{what}: {} before the boundary ({story})",
        if opens { "open" } else { "closed" }
    );
    assert!(
        after.iter().all(|(_, ok)| *ok == opens),
        "{what}: still {} more than {ON_TIME:?} after the boundary, with the agent dead ({story})",
        if opens { "closed" } else { "open" }
    );
}

// ------------------------------------------------- 1. windows, agent dead --

/// A window `name` on ws -> ehr tcp/443 that opens at the whole second
/// after 4 s from now and lasts `length` (no end if `None`), programmed into
/// a fresh agent of `topo`, which is then killed before the window opens;
/// fresh connections polled until 3 s after the window's last boundary.
/// The instants the window opens and closes, and what the polls saw.
fn window_with_the_agent_dead(
    topo: &Topology,
    name: &str,
    length: Option<time::Duration>,
) -> (Instant, Option<Instant>, Vec<(Instant, bool)>) {
    let ns = topo.agent_ns();
    let mut agent = start(topo, &with(WS_PUMP_EHR, &[]));
    let from = whole_second_after(OffsetDateTime::now_utc() + time::Duration::seconds(4));
    let until = length.map(|length| from + length);
    set_vendor_window(&agent, ns, name, Some(from), until);
    kill_agent(&mut agent, ns);
    let (opens, closes) = (instant_of(from), until.map(instant_of));
    assert!(
        Instant::now() + Duration::from_secs(1) < opens,
        "the agent must die before the window opens"
    );
    let last = closes.unwrap_or(opens);
    let seen = poll_tcp(
        &topo.host("ws").ns,
        ehr_web(topo),
        last + Duration::from_secs(3),
    );
    (opens, closes, seen)
}

/// Attack: an operator gives a vendor a window that ends at `validUntil`;
/// the vendor (or anyone on the workstation) opens a long-lived TCP stream
/// inside it, then kills the agent (`kill -9`) before the window ends,
/// hoping the stream and new connections outlive the window.
/// Expected: the kernel closes the window by itself: the stream is cut
/// within 1 s after `validUntil` (and not before it) and a new connection
/// is refused.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_window_closes_with_the_agent_dead() {
    require_root();
    let topo = topology::routed_gateway();
    let ns = topo.agent_ns();
    let mut agent = start(&topo, &with(WS_PUMP_EHR, &[]));
    let until = whole_second_after(OffsetDateTime::now_utc() + time::Duration::seconds(5));
    set_vendor_window(&agent, ns, "vendor-until", None, Some(until));
    let end = instant_of(until);
    let ws = topo.host("ws");
    let ehr = topo.host("ehr").v4.to_string();
    let seconds = end.saturating_duration_since(Instant::now()).as_secs() + 5;
    let mut stream = ws.ns.spawn_probe([
        "stream",
        &ehr,
        "443",
        "--seconds",
        &seconds.to_string(),
        "--report-ms",
        "20",
    ]);
    let watcher = watch_stream(&mut stream);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        Instant::now() + Duration::from_secs(2) < end,
        "the agent must die well before the window ends"
    );
    kill_agent(&mut agent, ns);

    let status = stream.wait().expect("stream ends");
    let seen = watcher.join().expect("watcher");
    let last = last_progress(&seen).expect("the stream ran inside the window");
    assert!(
        !status.success(),
        "the stream outlived its window by {} ms with the agent dead (last echo)",
        signed_ms(last, end)
    );
    assert!(
        last + Duration::from_millis(300) >= end,
        "the stream was cut {} ms before validUntil: killing the agent must not cut it",
        -signed_ms(last, end)
    );
    assert!(
        last <= end + ON_TIME,
        "echoes still came {} ms after validUntil",
        signed_ms(last, end)
    );
    let refused = fresh_echo(&ws.ns, ehr_web(&topo), Duration::from_millis(700));
    assert!(
        refused.is_err(),
        "a new connection after the window must be refused"
    );
}

/// Attack: a window that starts at `validFrom`, and the agent killed before
/// it opens (an attacker or a crash takes the agent down, hoping to keep
/// the window shut and the clinicians locked out, or simply a broken
/// restart during a night shift).
/// Expected: the kernel opens the window by itself: connections start to
/// work within 1 s after `validFrom`, and not before.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_window_opens_with_the_agent_dead() {
    require_root();
    let topo = topology::routed_gateway();
    let (start, _, seen) = window_with_the_agent_dead(&topo, "vendor-from", None);
    assert_switches(&seen, start, true, "validFrom with the agent dead");
}

/// Attack: a vendor's remote-support window (`validFrom` .. `validUntil`),
/// programmed while the agent ran, then the agent killed before the window
/// opens: both boundaries pass while it is dead.
/// Expected: the window opens within 1 s after `validFrom` and closes
/// within 1 s after `validUntil`, with nothing open before or after.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_vendor_window_opens_and_closes_with_the_agent_dead() {
    require_root();
    let topo = topology::routed_gateway();
    let (opens, closes, seen) =
        window_with_the_agent_dead(&topo, "vendor-support", Some(time::Duration::seconds(4)));
    let closes = closes.expect("a window with a length closes");
    let midpoint = opens + (closes - opens) / 2;
    let (first, second): (Vec<_>, Vec<_>) = seen.iter().partition(|(at, _)| *at < midpoint);
    assert_switches(&first, opens, true, "the vendor window's validFrom");
    assert_switches(&second, closes, false, "the vendor window's validUntil");
}

// --------------------------------------------------- 2. TCX chain order --

/// Attack: before Wardline starts on an interface, something else (a
/// compromised monitoring agent, a careless tool) attaches a TCX program
/// there that accepts every packet (`TCX_PASS`, which ends the chain), at
/// both hooks, hoping Wardline lands behind it and never sees a packet.
/// Expected: Wardline attaches first and still drops what policy denies;
/// what it allows still passes.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_tcx_program_attached_before_wardline_cannot_pass_denied_traffic() {
    require_root();
    let topo = topology::host_agent();
    let ehr_ns = topo.agent_ns();
    let _ingress = tcx::attach(ehr_ns, "eth0", Hook::Ingress, Order::Last, TCX_PASS);
    let _egress = tcx::attach(ehr_ns, "eth0", Hook::Egress, Order::Last, TCX_PASS);
    let agent = ws_ehr_web_agent(&topo);
    let chain = tcx::chain(ehr_ns, "eth0", Hook::Ingress);
    eprintln!("ingress chain of the EHR's eth0, first first: {chain:?}");
    let ehr = topo.host("ehr").v4;
    let denied_before = packets(&agent, ehr_ns, "ingress", "default-deny");
    let ws_8080 = topo.host("ws").ns.tcp_ok(ehr, 8080);
    let pump_443 = topo.host("pump").ns.tcp_ok(ehr, 443);
    assert!(
        !ws_8080 && !pump_443,
        "denied connections went through a pass-all program attached before Wardline \
         (ws -> ehr:8080 {ws_8080}, pump -> ehr:443 {pump_443}); ingress chain {chain:?}"
    );
    assert!(
        packets(&agent, ehr_ns, "ingress", "default-deny") > denied_before,
        "Wardline itself dropped them (default-deny at ingress)"
    );
    assert!(
        topo.host("ws").ns.tcp_ok(ehr, 443),
        "the allowed connection still passes (Wardline, then the foreign program)"
    );
    assert!(
        chain.first().is_some_and(|n| n.starts_with("wardline")),
        "Wardline runs first on ingress: {chain:?}"
    );
}

/// The packet count of every action of `dev`'s ingress filters, from
/// `tc -s filter show`.
fn tc_filter_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns.exec(["tc", "-s", "filter", "show", "dev", dev, "ingress"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("Sent ")?;
            let (_, after) = rest.split_once(" bytes ")?;
            after.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Whether a connection from `ws` to `ehr`'s web port went through, once
/// it is checked that Wardline judged its SYN and allowed it.
#[track_caller]
fn allowed_and_through(agent: &Agent, ns: &Netns, ws: &Netns, ehr: IpAddr) -> bool {
    let allowed_before = packets(agent, ns, "ingress", "policy-allow");
    let through = ws.tcp_ok(ehr, 443);
    let judged = packets(agent, ns, "ingress", "policy-allow") - allowed_before;
    assert!(judged > 0, "Wardline judged and allowed the SYN");
    through
}

/// Attack (on defence in depth): the hospital runs a second control after
/// Wardline on the same interface, a later TCX program and a legacy tc
/// filter that each drop the EHR's web port. If Wardline ends the chain
/// (`TC_ACT_OK`) for the packets it allows, those controls are silently
/// bypassed for everything Wardline lets through.
/// Expected: Wardline hands allowed packets on (`TCX_NEXT`): a later TCX
/// program that drops, and later a u32 tc filter that takes the flow away,
/// each stop the allowed flow; with them gone it passes again.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_allowed_packets_still_meet_later_filters() {
    require_root();
    let topo = topology::host_agent();
    let ehr_ns = topo.agent_ns();
    let agent = ws_ehr_web_agent(&topo);
    let ws = &topo.host("ws").ns;
    let ehr = topo.host("ehr").v4;
    assert!(ws.tcp_ok(ehr, 443), "allowed before any later filter");

    // A later TCX program that drops everything.
    let later = tcx::attach(ehr_ns, "eth0", Hook::Ingress, Order::Last, TCX_DROP);
    let chain = tcx::chain(ehr_ns, "eth0", Hook::Ingress);
    let through = allowed_and_through(&agent, ehr_ns, ws, ehr);
    assert!(
        !through,
        "a TCX program attached after Wardline never ran on an allowed packet: \
         Wardline ended the chain (ingress chain {chain:?})"
    );
    drop(later);
    assert!(
        ws.tcp_ok(ehr, 443),
        "allowed again without the later program"
    );

    // A legacy tc filter after the TCX chain. This kernel has u32 and mirred
    // but no gact: the filter takes the flow away to an interface that is
    // down, which the kernel drops.
    ehr_ns.ip([
        "link", "add", "sink0", "type", "veth", "peer", "name", "sink1",
    ]);
    ehr_ns.exec(["tc", "qdisc", "add", "dev", "eth0", "clsact"]);
    ehr_ns.exec([
        "tc", "filter", "add", "dev", "eth0", "ingress", "protocol", "ip", "prio", "1", "u32",
        "match", "ip", "protocol", "6", "0xff", "match", "ip", "dport", "443", "0xffff", "action",
        "mirred", "egress", "redirect", "dev", "sink0",
    ]);
    let through = allowed_and_through(&agent, ehr_ns, ws, ehr);
    let hits = tc_filter_packets(ehr_ns, "eth0");
    assert!(
        !through && hits > 0,
        "a legacy tc filter after Wardline never saw an allowed packet \
         (connection {}, filter hits {hits}): Wardline ended the chain",
        if through { "passed" } else { "failed" }
    );
    ehr_ns.exec(["tc", "qdisc", "del", "dev", "eth0", "clsact"]);
    assert!(ws.tcp_ok(ehr, 443), "allowed again without the filter");
}

// ----------------------------------------------------- 3-4. SYN floods --

/// Frames in the allowed flood: more than the allowed-connection table
/// holds.
const ALLOWED_FLOOD_FRAMES: u32 = abi::MAX_CONNECTIONS + 40_000;
/// Frames in the denied flood: twice that, so that the established
/// connections are checked over a few seconds of it.
const DENIED_FLOOD_FRAMES: u32 = 2 * abi::MAX_CONNECTIONS;
/// The longest a flood may take.
const FLOOD_SECONDS: u64 = 20;

/// Starts a flood of `frames` SYNs from `ext` to the routed gateway,
/// spoofed sources in 203.0.113.0/24 and every source port, towards
/// `dst:dport`.
fn start_flood(topo: &Topology, dst: &str, dport: u16, frames: u32) -> std::process::Child {
    let gw_mac = mac_of(topo.agent_ns(), "gw-ext");
    let ext = &topo.host("ext").ns;
    let mut cmd = ext.command([flood_bin().to_string_lossy().as_ref()]);
    cmd.args([
        "--interface",
        "eth0",
        "--dst-mac",
        &gw_mac,
        "--dst",
        dst,
        "--dport",
        &dport.to_string(),
        "--src-prefix",
        "203.0.113.0/24",
        "--count",
        &frames.to_string(),
        "--seconds",
        &FLOOD_SECONDS.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    ext.spawn_command(&mut cmd)
}

/// Waits for the flood to end; returns the frames it sent.
fn end_flood(flood: std::process::Child) -> u64 {
    let out = flood.wait_with_output().expect("flood ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the flooder failed: {stdout}");
    eprintln!("flood: {}", stdout.trim());
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sent="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no sent= in {stdout:?}"))
}

/// Twenty allowed connections from the workstation to the EHR's web
/// port, each shown to echo before a flood starts.
fn echoing_connections(topo: &Topology) -> Vec<TcpStream> {
    let target = ehr_web(topo);
    let conns: Vec<TcpStream> = topo.host("ws").ns.run_in(|| {
        (0..20)
            .map(|i| {
                TcpStream::connect_timeout(&target, Duration::from_secs(1))
                    .unwrap_or_else(|e| panic!("allowed connection #{i}: {e}"))
            })
            .collect()
    });
    let quiet = silent(&conns, "before", Duration::from_secs(1));
    assert!(quiet.is_empty(), "before the flood: {quiet:?}");
    conns
}

/// Five new workstation-to-EHR connections, each to connect and echo
/// within 700 ms: the ones that failed, and why.
fn failed_fresh_connections(topo: &Topology) -> Vec<String> {
    let (ws, target) = (&topo.host("ws").ns, ehr_web(topo));
    (0..5)
        .filter_map(|i| {
            fresh_echo(ws, target, Duration::from_millis(700))
                .err()
                .map(|e| format!("new connection #{i}: {e}"))
        })
        .collect()
}

/// The connections of `conns` that do not echo within `timeout`.
fn silent(conns: &[TcpStream], tag: &str, timeout: Duration) -> Vec<String> {
    conns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            echo(c, &format!("attack {tag}-{i}"), timeout)
                .err()
                .map(|e| format!("#{i}: {e}"))
        })
        .collect()
}

/// Attack: from outside, flood the gateway with TCP SYNs that policy
/// denies, from spoofed sources and source ports (more distinct tuples
/// than the tracking table holds), hoping that remembering them fills the
/// table that allowed connections need.
/// Expected: 20 allowed connections opened before the flood keep echoing
/// during and after it, and new allowed connections opened right after it
/// work (their replies pass); no allowed connection failed to be tracked.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_denied_syn_flood_cannot_starve_allowed_connections() {
    require_root();
    let topo = topology::routed_gateway();
    let ns = topo.agent_ns();
    let agent = ws_ehr_web_agent(&topo);
    let conns = echoing_connections(&topo);

    // What Wardline dropped at ingress, by policy or as a dropped flow.
    let dropped = || {
        packets(&agent, ns, "ingress", "default-deny")
            + packets(&agent, ns, "ingress", "dropped-flow")
    };
    let dropped_before = dropped();
    let mut flood = start_flood(
        &topo,
        &topo.host("ehr").v4.to_string(),
        8080,
        DENIED_FLOOD_FRAMES,
    );
    let mut during = Vec::new();
    let mut rounds = 0;
    while flood.try_wait().expect("flood status").is_none() {
        rounds += 1;
        during.extend(silent(
            &conns,
            &format!("during{rounds}"),
            Duration::from_secs(3),
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    let sent = end_flood(flood);
    // Right away, while every flooded tuple is still remembered.
    let fresh = failed_fresh_connections(&topo);
    let after = silent(&conns, "after", Duration::from_secs(2));
    let judged = dropped() - dropped_before;
    eprintln!(
        "{sent} denied SYNs sent, {judged} dropped at the gateway; {rounds} echo rounds during \
         the flood, {} stalls during, {} after; {} of 5 new connections failed",
        during.len(),
        after.len(),
        fresh.len()
    );
    assert!(
        fresh.is_empty(),
        "after a flood of {sent} denied SYNs, new allowed connections fail: {fresh:?}"
    );
    assert!(
        during.is_empty(),
        "established allowed connections stalled during the flood: {during:?}"
    );
    assert!(
        after.is_empty(),
        "established allowed connections stalled after the flood: {after:?}"
    );
    assert!(
        judged >= u64::from(abi::MAX_CONNECTIONS),
        "the flood must outnumber the tracking table to mean anything: only {judged} of \
         {sent} SYNs reached Wardline"
    );
    let failures = metric(&agent, ns, INSERT_FAILURES_METRIC);
    assert_eq!(
        failures,
        Some(0),
        "denied SYNs never take room from allowed connections ({INSERT_FAILURES_METRIC})"
    );
}

/// An allowed SYN flood cannot fill the tracking table: the attacker
/// sends more allowed SYNs (the policy lets `world` reach the EHR segment
/// on tcp/8080), from spoofed sources, towards an EHR-segment address where
/// nothing answers, than the table of connections holds. Connections that
/// no reply has confirmed live in a table of their own, least recently used
/// first out, so the flood can neither evict established connections nor
/// leave a later one untracked (its replies dropped as if policy had denied
/// them). Expected: every flooded SYN is counted policy-allow; the
/// established connections keep echoing; new allowed connections right
/// after the flood work, replies included; and no failed tracking insert is
/// counted, in /metrics (`wardline_tracking_insert_failures_total`) or in
/// /status (`counters.trackingInsertFailures`).
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_allowed_syn_flood_cannot_fill_the_tracking_table() {
    require_root();
    let topo = topology::routed_gateway();
    let ns = topo.agent_ns();
    let agent = start(
        &topo,
        &with(
            WS_PUMP_EHR,
            &[
                allow("ws-ehr-web", "ws", "ehr", "[{protocol: tcp, port: 443}]"),
                allow(
                    "world-ehr-8080",
                    "world",
                    "ehr",
                    "[{protocol: tcp, port: 8080}]",
                ),
            ],
        ),
    );
    let conns = echoing_connections(&topo);
    let allowed_before = packets(&agent, ns, "ingress", "policy-allow");
    let flood = start_flood(&topo, "198.18.41.200", 8080, ALLOWED_FLOOD_FRAMES);
    let sent = end_flood(flood);
    let allowed = packets(&agent, ns, "ingress", "policy-allow") - allowed_before;
    let fresh = failed_fresh_connections(&topo);
    let after = silent(&conns, "after", Duration::from_secs(2));
    eprintln!(
        "{sent} allowed SYNs sent, {allowed} counted policy-allow at the gateway; {} of 5 new \
         connections failed, {} established ones stalled",
        fresh.len(),
        after.len()
    );
    assert!(
        allowed > u64::from(abi::MAX_CONNECTIONS),
        "the flood must outnumber the tracking table: only {allowed} of {sent} SYNs were \
         judged policy-allow"
    );
    assert!(
        fresh.is_empty(),
        "after a flood of {sent} allowed SYNs, new allowed connections fail: {fresh:?}"
    );
    assert!(
        after.is_empty(),
        "established connections stalled after the flood: {after:?}"
    );
    let from_metrics = metric(&agent, ns, INSERT_FAILURES_METRIC);
    let body = answer(&agent, ns, "/status");
    let status: serde_json::Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"));
    let from_status = status["counters"][INSERT_FAILURES_STATUS].as_u64();
    eprintln!("insert failures: /metrics {from_metrics:?}, /status {from_status:?}");
    assert_eq!(
        from_metrics,
        Some(0),
        "/metrics {INSERT_FAILURES_METRIC} after {allowed} allowed SYNs"
    );
    assert_eq!(
        from_status,
        Some(0),
        "/status counters.{INSERT_FAILURES_STATUS}: {status}"
    );
}

// ------------------------------------------------- 5. router advertisement --

/// Marks the test's router advertisements (their reachable-time field).
const RA_MARK: [u8; 4] = *b"WLRA";
/// Router advertisements sent per hop limit.
const RA_COUNT: u32 = 20;

/// A raw ICMPv6 socket, in the namespace of the calling thread.
fn raw_icmpv6_socket() -> OwnedFd {
    socket::socket(
        AddressFamily::Inet6,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::IcmpV6,
    )
    .expect("raw ICMPv6 socket")
}

/// A raw ICMPv6 socket in `ns` that hears every ICMPv6 message delivered
/// there (raw sockets get a copy before neighbour discovery validates it).
fn icmpv6_listener(ns: &Netns) -> OwnedFd {
    ns.run_in(|| {
        let fd = raw_icmpv6_socket();
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000))
            .expect("receive timeout");
        fd
    })
}

/// Our router advertisements from `src` that `fd` heard within `wait`.
fn heard_ras(fd: &OwnedFd, src: IpAddr, wait: Duration) -> u32 {
    let end = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    let mut heard = 0;
    while Instant::now() < end {
        match socket::recvfrom::<SockaddrIn6>(fd.as_raw_fd(), &mut buf) {
            Ok((n, from)) => {
                let m = &buf[..n];
                if m.len() >= 16
                    && m[0] == 134
                    && m[8..12] == RA_MARK
                    && from.is_some_and(|a| IpAddr::V6(a.ip()) == src)
                {
                    heard += 1;
                }
            }
            Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
            Err(err) => panic!("receiving ICMPv6: {err}"),
        }
    }
    heard
}

/// Sends `RA_COUNT` router advertisements from `ns` to `dst` with this IPv6
/// hop limit. Router lifetime 0: nobody takes the sender for a router.
fn send_ras(ns: &Netns, dst: IpAddr, hop_limit: i32) {
    let IpAddr::V6(dst) = dst else {
        panic!("router advertisements are IPv6")
    };
    ns.run_in(|| {
        let fd = raw_icmpv6_socket();
        socket::setsockopt(&fd, sockopt::Ipv6Ttl, &hop_limit).expect("IPV6_UNICAST_HOPS");
        let to = SockaddrIn6::from(std::net::SocketAddrV6::new(dst, 0, 0, 0));
        for seq in 0..RA_COUNT {
            // Type 134, code 0, checksum (the kernel's), current hop limit
            // 64, no flags, router lifetime 0, reachable time (our mark),
            // retransmission timer (a sequence number).
            let mut ra = vec![134, 0, 0, 0, 64, 0, 0, 0];
            ra.extend_from_slice(&RA_MARK);
            ra.extend_from_slice(&seq.to_be_bytes());
            socket::sendto(fd.as_raw_fd(), &ra, &to, MsgFlags::empty())
                .expect("send a router advertisement");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
}

/// Attack: from a workstation, forge router advertisements (ICMPv6 134)
/// towards the EHR server with an ordinary hop limit (64): a packet that
/// cannot have been sent on the link, and could have come from anywhere,
/// hoping that everything that looks like neighbour discovery passes as L2.
/// Expected: with hop limit 64 it is ordinary ICMPv6, judged by policy
/// every time (each one counted default-deny, never remembered as a
/// dropped connection) and none reaches the EHR; with hop limit 255 (as
/// sent on the link) it passes as l2-pass.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_forged_router_advertisement_is_judged_by_policy() {
    require_root();
    let topo = topology::host_agent();
    let ehr_ns = topo.agent_ns();
    let agent = ws_ehr_web_agent(&topo);
    let ws = topo.host("ws");
    let ehr = topo.host("ehr");
    let listener = icmpv6_listener(&ehr.ns);

    let counted = |reason: &str| packets(&agent, ehr_ns, "ingress", reason);
    let (deny0, flow0, l2_0) = (
        counted("default-deny"),
        counted("dropped-flow"),
        counted("l2-pass"),
    );
    send_ras(&ws.ns, ehr.v6, 64);
    let heard_64 = heard_ras(&listener, ws.v6, Duration::from_millis(500));
    let (deny1, flow1, l2_1) = (
        counted("default-deny"),
        counted("dropped-flow"),
        counted("l2-pass"),
    );
    let counted_64 = format!(
        "default-deny +{}, dropped-flow +{}, l2-pass +{}",
        deny1 - deny0,
        flow1 - flow0,
        l2_1 - l2_0
    );
    eprintln!("hop limit 64: heard {heard_64}, {counted_64}");
    assert_eq!(
        heard_64, 0,
        "router advertisements with hop limit 64 reached the EHR"
    );
    assert!(
        deny1 - deny0 >= u64::from(RA_COUNT),
        "each of the {RA_COUNT} forged advertisements is judged by policy (default-deny): \
         {counted_64}"
    );

    send_ras(&ws.ns, ehr.v6, 255);
    let heard_255 = heard_ras(&listener, ws.v6, Duration::from_millis(500));
    let (deny2, l2_2) = (counted("default-deny"), counted("l2-pass"));
    eprintln!(
        "hop limit 255: heard {heard_255}, default-deny +{}, l2-pass +{}",
        deny2 - deny1,
        l2_2 - l2_1
    );
    assert_eq!(
        heard_255, RA_COUNT,
        "router advertisements with hop limit 255 pass"
    );
    assert!(
        l2_2 - l2_1 >= u64::from(RA_COUNT),
        "and they pass as l2-pass: +{}",
        l2_2 - l2_1
    );
}

// ------------------------------------------------ 6. families stay apart --

/// Every IPv6 address (`::/0`) is one segment; the EHR has its own.
const V6_EVERYONE: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: ["198.18.41.0/24", "2001:db8:41::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: v6-everyone}
spec: {cidrs: ["::/0"]}
"#;

/// Attack: the operator allows "every IPv6 host" (`::/0`) to reach the
/// EHR's web port. An IPv4 client hopes to count as a member, since `::/0`
/// covers the IPv4-mapped range `::ffff:0:0/96` in which IPv4 addresses are
/// often stored.
/// Expected: IPv4 from every host to the EHR is dropped by default deny;
/// IPv6 from every host to the EHR's tcp/443 passes, and nothing else.
#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn attack_ipv4_is_never_in_an_ipv6_segment() {
    require_root();
    let topo = topology::routed_gateway();
    let _agent = start(
        &topo,
        &with(
            V6_EVERYONE,
            &[allow(
                "v6-to-ehr-web",
                "v6-everyone",
                "ehr",
                "[{protocol: tcp, port: 443}]",
            )],
        ),
    );
    check_matrix(&topo, "IPv6 segment ::/0", |c| {
        c.to == "ehr" && c.service == Service::Tcp(443) && c.family == Family::V6
    });
}
