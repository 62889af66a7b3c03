//! The policy scenarios, each with its full reachability matrix, written
//! once and run both ways: against a standalone agent (its policy file)
//! and against managed agents (`wardctl apply` to the control plane).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::agent::Agent;
use crate::docs::{WS_PUMP_EHR, policy, with};
use crate::matrix::{Cell, Service, check_matrix};
use crate::netns::Netns;
use crate::site::Site;
use crate::topology::Topology;

/// How a scenario puts a policy in force and reads what the agent saw.
pub trait Enforcing {
    /// Makes `policy` the whole policy; returns once the agent(s) enforce it.
    fn enforce(&self, policy: &str) -> Instant;
    /// Flow events of the agent in the topology under test.
    fn flows(&self) -> Vec<serde_json::Value>;
    /// Packets counted with `reason`, both directions, from its /metrics.
    fn packets_with_reason(&self, reason: &str) -> u64;
}

fn metric(agent: &Agent, ns: &Netns, reason: &str) -> u64 {
    let (_, metrics) = agent.get(ns, "/metrics").expect("metrics");
    let needle = format!("reason=\"{reason}\"}}");
    metrics
        .lines()
        .filter(|l| l.starts_with("wardline_packets_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A standalone agent: the policy file is replaced and SIGHUP sent.
pub struct Standalone<'a> {
    pub agent: &'a Agent,
    pub ns: &'a Netns,
}

impl Enforcing for Standalone<'_> {
    fn enforce(&self, policy: &str) -> Instant {
        self.agent.set_policy(self.ns, policy)
    }
    fn flows(&self) -> Vec<serde_json::Value> {
        self.agent.flows()
    }
    fn packets_with_reason(&self, reason: &str) -> u64 {
        metric(self.agent, self.ns, reason)
    }
}

/// Managed agents: `wardctl apply --prune`, then every agent's acknowledgement.
pub struct Managed<'a> {
    pub site: &'a Site,
    /// Every agent of the site, all of which must acknowledge.
    pub nodes: Vec<String>,
    /// The agent of the topology under test.
    pub agent: &'a Agent,
    pub ns: &'a Netns,
}

impl Enforcing for Managed<'_> {
    fn enforce(&self, policy: &str) -> Instant {
        let revision = self.site.apply(0, policy);
        let nodes: Vec<&str> = self.nodes.iter().map(String::as_str).collect();
        self.site
            .wait_acked(0, &nodes, revision, Duration::from_secs(10));
        Instant::now()
    }
    fn flows(&self) -> Vec<serde_json::Value> {
        self.agent.flows()
    }
    fn packets_with_reason(&self, reason: &str) -> u64 {
        metric(self.agent, self.ns, reason)
    }
}

fn is(c: &Cell, from: &str, to: &str) -> bool {
    c.from == from && c.to == to
}

fn routed(policies: &[String]) -> String {
    with(WS_PUMP_EHR, policies)
}

/// The routed gateway's eight scenarios.
pub fn routed_gateway(topo: &Topology, e: &dyn Enforcing) {
    // 1. Default deny: nothing crosses the gateway without a policy.
    e.enforce(&routed(&[]));
    check_matrix(topo, "default deny", |_| false);

    // 2. A single port, IPv4 and IPv6 alike; replies pass by themselves.
    e.enforce(&routed(&[policy(
        "ws-ehr-web",
        "allow",
        "ws",
        "ehr",
        "[{protocol: tcp, port: 443}]",
    )]));
    check_matrix(topo, "single port", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(443)
    });

    // 3. Port ranges: udp 5000-5010 takes 5000 not 5011; tcp 8000-8100 takes 8080.
    e.enforce(&routed(&[policy(
        "pump-ehr-ranges",
        "allow",
        "pump",
        "ehr",
        "[{protocol: udp, port: 5000, endPort: 5010}, {protocol: tcp, port: 8000, endPort: 8100}]",
    )]));
    check_matrix(topo, "port range", |c| {
        is(c, "pump", "ehr") && matches!(c.service, Service::Udp(5000) | Service::Tcp(8080))
    });
    // An allowed port with no listener: the EHR's ICMP port-unreachable is
    // about a tracked connection and passes back as related.
    let related_before = e.packets_with_reason("related");
    assert!(!topo.host("pump").ns.udp_ok(topo.host("ehr").v4, 5005));
    assert!(
        e.packets_with_reason("related") > related_before,
        "the ICMP error about an allowed connection passed as related"
    );

    // 4. Deny beats allow, whatever their order: ws may reach anything but pumps.
    e.enforce(&routed(&[
        policy("ws-anything", "allow", "ws", "any", ""),
        policy("never-ws-to-pumps", "deny", "ws", "pump", ""),
    ]));
    check_matrix(topo, "deny beats allow", |c| {
        c.from == "ws" && c.to != "pump"
    });

    // 5. `world` (addresses in no segment) on both sides of a policy.
    e.enforce(&routed(&[
        policy(
            "world-to-ehr-web",
            "allow",
            "world",
            "ehr",
            "[{protocol: tcp, port: 443}]",
        ),
        policy(
            "ehr-to-world-8080",
            "allow",
            "ehr",
            "world",
            "[{protocol: tcp, port: 8080}]",
        ),
    ]));
    check_matrix(topo, "world", |c| {
        (is(c, "ext", "ehr") && c.service == Service::Tcp(443))
            || (is(c, "ehr", "ext") && c.service == Service::Tcp(8080))
    });

    // 6. `any` as a source: everyone may ping the EHR, nothing else.
    e.enforce(&routed(&[policy(
        "ping-ehr",
        "allow",
        "any",
        "ehr",
        "[{protocol: icmp}, {protocol: icmpv6}]",
    )]));
    check_matrix(topo, "any", |c| c.to == "ehr" && c.service == Service::Icmp);

    // 7. Replies: the responder may answer but never open a connection back.
    e.enforce(&routed(&[policy(
        "ws-ehr-tcp-udp",
        "allow",
        "ws",
        "ehr",
        "[{protocol: tcp, port: 443}, {protocol: udp, port: 5000}]",
    )]));
    check_matrix(topo, "replies", |c| {
        is(c, "ws", "ehr") && matches!(c.service, Service::Tcp(443) | Service::Udp(5000))
    });
    assert!(
        e.packets_with_reason("established") > 0,
        "replies pass as established"
    );

    // 8. Monitor mode: the pump segment is audited, not dropped; every
    // connection that enforcement would drop is reported as audited.
    let monitored = WS_PUMP_EHR.replace(
        "spec: {cidrs: [\"198.18.30.0/24\", \"2001:db8:30::/64\"]}",
        "spec: {cidrs: [\"198.18.30.0/24\", \"2001:db8:30::/64\"], mode: monitor}",
    );
    e.enforce(&monitored);
    check_matrix(topo, "monitor mode", |c| c.from == "pump" || c.to == "pump");
    let flows = e.flows();
    assert!(
        flows
            .iter()
            .any(|f| f["verdict"] == "audited" && f["reason"] == "monitor"),
        "audited connections are reported"
    );
    assert!(e.packets_with_reason("monitor") > 0);

    // Every connection's event names the policy that decided.
    assert!(
        flows.iter().any(|f| f["verdict"] == "allowed"
            && f["policy"] == "ws-ehr-web"
            && f["srcSegment"] == "ws"
            && f["dstSegment"] == "ehr"),
        "a flow attributed to ws-ehr-web"
    );
    assert!(
        flows
            .iter()
            .any(|f| f["verdict"] == "dropped" && f["policy"] == "never-ws-to-pumps"),
        "a drop attributed to the deny policy"
    );
}

/// The segments of the VLAN bridge topology.
pub const VLAN_SEGMENTS: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: pumps}
spec: {cidrs: ["198.18.30.0/24", "2001:db8:30::/64"], vlans: [30]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server}
spec: {cidrs: ["198.18.42.0/24", "2001:db8:42::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: ["198.18.41.0/24", "2001:db8:41::/64"]}
"#;

/// The pumps' policy on the VLAN bridge.
pub fn pumps_policy() -> String {
    with(
        VLAN_SEGMENTS,
        &[policy(
            "pumps-to-server",
            "allow",
            "pumps",
            "pump-server",
            "[{protocol: tcp, port: 443}, {protocol: udp, port: 5000, endPort: 5010}, {protocol: icmp}, {protocol: icmpv6}]",
        )],
    )
}

/// VLAN identity and spoofed sources on the bridge before the pump VLAN.
pub fn vlan_bridge(topo: &Topology, e: &dyn Enforcing) {
    // VLAN identity: whatever its address, a frame tagged 30 comes from the
    // pumps; `vlan-only` has an address in no segment and is a pump all the
    // same. `rogue` sits on VLAN 30 with an EHR address: spoofed, dropped.
    e.enforce(&pumps_policy());
    check_matrix(topo, "VLAN identity", |c| {
        (is(c, "pump", "pump-server") || is(c, "vlan-only", "pump-server"))
            && matches!(
                c.service,
                Service::Tcp(443) | Service::Udp(5000) | Service::Icmp
            )
    });
    assert!(
        e.flows().iter().any(|f| f["reason"] == "spoofed-source"),
        "the rogue's frames are reported as spoofed-source"
    );

    // Spoofed source: even a policy that lets the EHR reach the pump server
    // does not let a VLAN-30 device that claims an EHR address through.
    e.enforce(&with(
        VLAN_SEGMENTS,
        &[policy(
            "ehr-to-server",
            "allow",
            "ehr",
            "pump-server",
            "[{protocol: tcp, port: 443}]",
        )],
    ));
    check_matrix(topo, "spoofed source", |c| {
        is(c, "ehr", "pump-server") && c.service == Service::Tcp(443)
    });
    assert!(
        e.flows().iter().any(|f| f["reason"] == "spoofed-source"
            && f["src"] == "198.18.41.66"
            && f["vlan"] == 30),
        "a spoofed-source drop names the address and VLAN"
    );
}

/// Reads a `stream` probe's progress lines as they come: (when, count).
pub fn watch_stream(
    child: &mut std::process::Child,
) -> std::thread::JoinHandle<Vec<(Instant, u64)>> {
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(count) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("count="))
                .and_then(|n| n.parse().ok())
            {
                seen.push((Instant::now(), count));
            }
        }
        seen
    })
}

/// The instant the count last went up.
pub fn last_progress(seen: &[(Instant, u64)]) -> Option<Instant> {
    seen.windows(2)
        .rev()
        .find(|w| w[1].1 > w[0].1)
        .map(|w| w[1].0)
}

/// An established stream is cut within a second of losing its allow.
pub fn established_cut(topo: &Topology, e: &dyn Enforcing) {
    e.enforce(&routed(&[policy(
        "ws-ehr-web",
        "allow",
        "ws",
        "ehr",
        "[{protocol: tcp, port: 443}]",
    )]));
    let ehr = topo.host("ehr").v4.to_string();
    let ws = topo.host("ws");
    let mut stream =
        ws.ns
            .spawn_probe(["stream", &ehr, "443", "--seconds", "8", "--report-ms", "20"]);
    let watcher = watch_stream(&mut stream);
    std::thread::sleep(Duration::from_secs(2));

    // The allow goes away (another policy stays): the established stream is
    // judged again in both directions and cut.
    let revoked = e.enforce(&routed(&[policy(
        "ws-ehr-other",
        "allow",
        "ws",
        "ehr",
        "[{protocol: tcp, port: 8443}]",
    )]));
    let status = stream.wait().expect("stream ends");
    let seen = watcher.join().expect("watcher");
    assert!(!status.success(), "the stream must be cut: {seen:?}");
    let last = last_progress(&seen).expect("the stream made progress before the change");
    let after = last.saturating_duration_since(revoked);
    assert!(
        after <= Duration::from_secs(1),
        "echoes still came {after:?} after the allow was lost"
    );
    eprintln!("stream cut; last echo {after:?} after the new policy was enforced");
    assert!(
        e.flows().iter().any(|f| f["kind"] == "revoked"),
        "the cut connection is reported as revoked"
    );
    assert!(!ws.ns.tcp_ok(&ehr, 443), "a new attempt is refused");
}

/// A `validUntil` window ends: the stream it allowed is cut, new
/// connections are refused.
pub fn window_ends(topo: &Topology, e: &dyn Enforcing) {
    let until = OffsetDateTime::now_utc() + time::Duration::seconds(8);
    let window = format!(
        "{}  validUntil: {}\n",
        policy(
            "vendor-window",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}]"
        ),
        until.format(&Rfc3339).expect("RFC 3339")
    );
    e.enforce(&routed(&[window]));
    check_matrix(topo, "inside the window", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(443)
    });
    let ws = topo.host("ws");
    let ehr = topo.host("ehr").v4.to_string();
    let mut stream = ws.ns.spawn_probe([
        "stream",
        &ehr,
        "443",
        "--seconds",
        "30",
        "--report-ms",
        "20",
    ]);
    let watcher = watch_stream(&mut stream);
    let status = stream.wait().expect("stream ends");
    let seen = watcher.join().expect("watcher");
    assert!(!status.success(), "the window's end cuts the stream");
    let last = last_progress(&seen).expect("progress inside the window");
    let end = Instant::now() - (OffsetDateTime::now_utc() - until).unsigned_abs();
    let after = last.saturating_duration_since(end);
    assert!(
        after <= Duration::from_millis(1500),
        "the stream ran {after:?} past validUntil"
    );
    check_matrix(topo, "after the window", |_| false);
}
