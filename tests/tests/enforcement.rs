//! Real traffic between real namespaces, enforced by the real agent, in the
//! three deployment topologies. Every scenario states the whole expected
//! reachability matrix (source x destination x service x family) and
//! every cell is probed.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_tests::agent::Agent;
use wardline_tests::matrix::{Cell, Service, check_matrix};
use wardline_tests::require_root;
use wardline_tests::topology::{self, Topology};

use wardline_tests::docs::{WS_PUMP_EHR as SEGMENTS, policy};

fn with_segments(policies: &[String]) -> String {
    wardline_tests::docs::with(SEGMENTS, policies)
}

fn is(c: &Cell, from: &str, to: &str) -> bool {
    c.from == from && c.to == to
}

/// The agent's packet counter for a reason, both directions, from /metrics.
fn packets_with_reason(agent: &Agent, ns: &wardline_tests::Netns, reason: &str) -> u64 {
    let (_, metrics) = agent.get(ns, "/metrics").expect("metrics");
    let needle = format!("reason=\"{reason}\"}}");
    metrics
        .lines()
        .filter(|l| l.starts_with("wardline_packets_total{") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn start(topo: &Topology, policy: &str) -> Agent {
    Agent::start(topo.agent_ns(), &topo.interfaces(), policy)
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_routed_gateway_scenarios() {
    require_root();
    let topo = topology::routed_gateway();
    let agent = start(&topo, &with_segments(&[]));
    let ns = topo.agent_ns();

    // 1. Default deny: nothing crosses the gateway without a policy.
    check_matrix(&topo, "default deny", |_| false);

    // 2. A single port, IPv4 and IPv6 alike; replies pass by themselves.
    agent.set_policy(
        ns,
        &with_segments(&[policy(
            "ws-ehr-web",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}]",
        )]),
    );
    check_matrix(&topo, "single port", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(443)
    });

    // 3. Port ranges: udp 5000-5010 takes 5000 not 5011; tcp 8000-8100 takes 8080.
    agent.set_policy(
        ns,
        &with_segments(&[policy(
            "pump-ehr-ranges",
            "allow",
            "pump",
            "ehr",
            "[{protocol: udp, port: 5000, endPort: 5010}, {protocol: tcp, port: 8000, endPort: 8100}]",
        )]),
    );
    check_matrix(&topo, "port range", |c| {
        is(c, "pump", "ehr") && matches!(c.service, Service::Udp(5000) | Service::Tcp(8080))
    });
    // An allowed port with no listener: the EHR's ICMP port-unreachable is
    // about a tracked connection and passes back as related.
    let related_before = packets_with_reason(&agent, ns, "related");
    assert!(!topo.host("pump").ns.udp_ok(topo.host("ehr").v4, 5005));
    assert!(
        packets_with_reason(&agent, ns, "related") > related_before,
        "the ICMP error about an allowed connection passed as related"
    );

    // 4. Deny beats allow, whatever their order: ws may reach anything but pumps.
    agent.set_policy(
        ns,
        &with_segments(&[
            policy("ws-anything", "allow", "ws", "any", ""),
            policy("never-ws-to-pumps", "deny", "ws", "pump", ""),
        ]),
    );
    check_matrix(&topo, "deny beats allow", |c| {
        c.from == "ws" && c.to != "pump"
    });

    // 5. `world` (addresses in no segment) on both sides of a policy.
    agent.set_policy(
        ns,
        &with_segments(&[
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
        ]),
    );
    check_matrix(&topo, "world", |c| {
        (is(c, "ext", "ehr") && c.service == Service::Tcp(443))
            || (is(c, "ehr", "ext") && c.service == Service::Tcp(8080))
    });

    // 6. `any` as a source: everyone may ping the EHR, nothing else.
    agent.set_policy(
        ns,
        &with_segments(&[policy(
            "ping-ehr",
            "allow",
            "any",
            "ehr",
            "[{protocol: icmp}, {protocol: icmpv6}]",
        )]),
    );
    check_matrix(&topo, "any", |c| {
        c.to == "ehr" && c.service == Service::Icmp
    });

    // 7. Replies: the responder may answer but never open a connection back.
    agent.set_policy(
        ns,
        &with_segments(&[policy(
            "ws-ehr-tcp-udp",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}, {protocol: udp, port: 5000}]",
        )]),
    );
    check_matrix(&topo, "replies", |c| {
        is(c, "ws", "ehr") && matches!(c.service, Service::Tcp(443) | Service::Udp(5000))
    });
    let status = agent.status_json(ns);
    assert!(
        status["counters"]["allowed"].as_u64().unwrap() > 0,
        "{status}"
    );

    // 8. Monitor mode: the pump segment is audited, not dropped; every
    // connection that enforcement would drop is reported as audited.
    let monitored = SEGMENTS.replace(
        "spec: {cidrs: [\"198.18.30.0/24\", \"2001:db8:30::/64\"]}",
        "spec: {cidrs: [\"198.18.30.0/24\", \"2001:db8:30::/64\"], mode: monitor}",
    );
    agent.set_policy(ns, &monitored);
    check_matrix(&topo, "monitor mode", |c| {
        c.from == "pump" || c.to == "pump"
    });
    let audited = agent
        .flows()
        .iter()
        .filter(|f| f["verdict"] == "audited" && f["reason"] == "monitor")
        .count();
    assert!(audited > 0, "audited connections are reported");
    assert!(
        agent.status_json(ns)["counters"]["audited"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Every allowed connection's event names the policy that decided.
    let flows = agent.flows();
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

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_host_agent_scenario() {
    require_root();
    let topo = topology::host_agent();
    let policy = with_segments(&[
        policy(
            "ws-ehr-web",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}]",
        ),
        policy(
            "ehr-out-8080",
            "allow",
            "ehr",
            "world",
            "[{protocol: tcp, port: 8080}]",
        ),
    ]);
    let _agent = start(&topo, &policy);
    // Traffic between the other hosts never crosses the EHR host's agent.
    check_matrix(&topo, "agent inside a host", |c| {
        (c.from != "ehr" && c.to != "ehr")
            || (is(c, "ws", "ehr") && c.service == Service::Tcp(443))
            || (is(c, "ehr", "ext") && c.service == Service::Tcp(8080))
    });
}

const VLAN_SEGMENTS: &str = r#"
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

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_vlan_bridge_scenarios() {
    require_root();
    let topo = topology::vlan_bridge();
    let pumps_policy = format!(
        "{VLAN_SEGMENTS}{}",
        policy(
            "pumps-to-server",
            "allow",
            "pumps",
            "pump-server",
            "[{protocol: tcp, port: 443}, {protocol: udp, port: 5000, endPort: 5010}, {protocol: icmp}, {protocol: icmpv6}]"
        )
    );
    let agent = start(&topo, &pumps_policy);
    let ns = topo.agent_ns();

    // VLAN identity: whatever its address, a frame tagged 30 comes from the
    // pumps; `vlan-only` has an address in no segment and is a pump all the
    // same. `rogue` sits on VLAN 30 with an EHR address: spoofed, dropped.
    let pump_services = |c: &Cell| {
        matches!(
            c.service,
            Service::Tcp(443) | Service::Udp(5000) | Service::Icmp
        )
    };
    check_matrix(&topo, "VLAN identity", |c| {
        (is(c, "pump", "pump-server") || is(c, "vlan-only", "pump-server")) && pump_services(c)
    });
    let spoofed = agent
        .flows()
        .iter()
        .filter(|f| f["reason"] == "spoofed-source")
        .count();
    assert!(
        spoofed > 0,
        "the rogue's frames are reported as spoofed-source"
    );

    // Spoofed source: even a policy that lets the EHR reach the pump server
    // does not let a VLAN-30 device that claims an EHR address through.
    agent.set_policy(
        ns,
        &format!(
            "{VLAN_SEGMENTS}{}",
            policy(
                "ehr-to-server",
                "allow",
                "ehr",
                "pump-server",
                "[{protocol: tcp, port: 443}]"
            )
        ),
    );
    check_matrix(&topo, "spoofed source", |c| {
        is(c, "ehr", "pump-server") && c.service == Service::Tcp(443)
    });
    let events = agent.flows();
    assert!(
        events.iter().any(|f| f["reason"] == "spoofed-source"
            && f["src"] == "198.18.41.66"
            && f["vlan"] == 30),
        "a spoofed-source drop names the address and VLAN"
    );
}

/// Reads a `stream` probe's progress lines as they come: (when, count).
fn watch_stream(child: &mut std::process::Child) -> std::thread::JoinHandle<Vec<(Instant, u64)>> {
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
fn last_progress(seen: &[(Instant, u64)]) -> Option<Instant> {
    seen.windows(2)
        .rev()
        .find(|w| w[1].1 > w[0].1)
        .map(|w| w[1].0)
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_established_connection_cut_within_a_second() {
    require_root();
    let topo = topology::routed_gateway();
    let allow = with_segments(&[policy(
        "ws-ehr-web",
        "allow",
        "ws",
        "ehr",
        "[{protocol: tcp, port: 443}]",
    )]);
    let agent = start(&topo, &allow);
    let ns = topo.agent_ns();
    let ehr = topo.host("ehr").v4.to_string();
    let ws = topo.host("ws");
    let mut stream =
        ws.ns
            .spawn_probe(["stream", &ehr, "443", "--seconds", "8", "--report-ms", "20"]);
    let watcher = watch_stream(&mut stream);
    std::thread::sleep(Duration::from_secs(2));

    // The allow goes away (another policy stays): the established stream is
    // judged again in both directions and cut.
    let revoked = agent.set_policy(
        ns,
        &with_segments(&[policy(
            "ws-ehr-other",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 8443}]",
        )]),
    );
    let status = stream.wait().expect("stream ends");
    let seen = watcher.join().unwrap();
    assert!(!status.success(), "the stream must be cut: {seen:?}");
    let last = last_progress(&seen).expect("the stream made progress before the change");
    let after = last.saturating_duration_since(revoked);
    assert!(
        after <= Duration::from_secs(1),
        "echoes still came {after:?} after the allow was lost"
    );
    eprintln!("stream cut; last echo {after:?} after the new policy was enforced");
    let revoked_events = agent
        .flows()
        .iter()
        .filter(|f| f["kind"] == "revoked")
        .count();
    assert!(
        revoked_events > 0,
        "the cut connection is reported as revoked"
    );
    // And a new attempt is refused.
    assert!(!ws.ns.tcp_ok(&ehr, 443));
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_valid_until_window_ends() {
    require_root();
    let topo = topology::routed_gateway();
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
        until.format(&Rfc3339).unwrap()
    );
    let agent = start(&topo, &with_segments(&[window]));
    let ns = topo.agent_ns();
    let ws = topo.host("ws");
    let ehr = topo.host("ehr").v4.to_string();
    check_matrix(&topo, "inside the window", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(443)
    });
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
    let generation = agent.generation(ns);
    let status = stream.wait().expect("stream ends");
    let seen = watcher.join().unwrap();
    assert!(!status.success(), "the window's end cuts the stream");
    let last = last_progress(&seen).expect("progress inside the window");
    let end = Instant::now() - (OffsetDateTime::now_utc() - until).unsigned_abs();
    let after = last.saturating_duration_since(end);
    assert!(
        after <= Duration::from_millis(1500),
        "the stream ran {after:?} past validUntil"
    );
    assert!(
        agent.generation(ns) > generation,
        "the window's end made a new generation"
    );
    check_matrix(&topo, "after the window", |_| false);
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_bad_policy_file_keeps_the_last_good_policy() {
    require_root();
    let topo = topology::routed_gateway();
    let good = with_segments(&[policy(
        "ws-ehr-web",
        "allow",
        "ws",
        "ehr",
        "[{protocol: tcp, port: 443}]",
    )]);
    let agent = start(&topo, &good);
    let ns = topo.agent_ns();
    let before = agent.status_json(ns);
    let bad = good.replace("port: 443", "port: 70000");
    std::fs::write(agent.policy_path(), &bad).unwrap();
    agent.hup();
    let start = Instant::now();
    let status = loop {
        let s = agent.status_json(ns);
        if !s["lastError"].is_null() || start.elapsed() > Duration::from_secs(5) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let error = status["lastError"]
        .as_str()
        .expect("the refusal is reported");
    assert!(
        error.contains("document 4")
            && error.contains("spec.ports[0].port")
            && error.contains("70000"),
        "{error}"
    );
    assert_eq!(
        status["policySha256"], before["policySha256"],
        "the old policy stays in force"
    );
    assert_eq!(status["generation"], before["generation"]);
    assert!(
        agent.log().contains("spec.ports[0].port"),
        "the log names the field"
    );
    let ws = topo.host("ws");
    assert!(
        ws.ns.tcp_ok(topo.host("ehr").v4, 443),
        "still enforced: the allow still works"
    );
    assert!(
        !ws.ns.tcp_ok(topo.host("ehr").v4, 8080),
        "still enforced: default deny still drops"
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_status_endpoint_readiness_reload_and_metrics() {
    require_root();
    let topo = topology::routed_gateway();
    let ns = topo.agent_ns();
    // One configured interface does not exist yet: not ready, and says which.
    let mut interfaces = topo.interfaces();
    interfaces.push("late0");
    let policy = with_segments(&[policy(
        "ws-ehr-web",
        "allow",
        "ws",
        "ehr",
        "[{protocol: tcp, port: 443}]",
    )]);
    // Start without waiting for readiness: it cannot come yet.
    let agent = Agent::start_unready(ns, &interfaces, &policy);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((code, body)) = agent.get(ns, "/readyz") {
            assert_eq!(code, 503, "{body}");
            if body.contains("late0") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no 503 naming late0; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(agent.get(ns, "/healthz").unwrap().0, 200);
    // The other interfaces already enforce.
    assert!(topo.host("ws").ns.tcp_ok(topo.host("ehr").v4, 443));
    assert!(!topo.host("ws").ns.tcp_ok(topo.host("ehr").v4, 8080));
    // The interface appears: the agent attaches and becomes ready.
    ns.ip([
        "link", "add", "late0", "type", "veth", "peer", "name", "late1",
    ]);
    ns.ip(["link", "set", "late0", "up"]);
    agent.wait_ready(ns, Duration::from_secs(5));
    let status = agent.status_json(ns);
    assert_eq!(status["mode"], "standalone");
    assert_eq!(status["node"], agent.node.as_str());
    let sha = status["policySha256"].as_str().unwrap().to_owned();
    assert_eq!(sha.len(), 64);

    // A change of the file is picked up without a signal.
    let generation = agent.generation(ns);
    let changed = policy.replace("port: 443", "port: 8080");
    std::fs::write(agent.policy_path(), &changed).unwrap();
    let start = Instant::now();
    while agent.generation(ns) == generation {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "file change not picked up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = agent.status_json(ns);
    assert_ne!(status["policySha256"].as_str().unwrap(), sha);
    assert!(topo.host("ws").ns.tcp_ok(topo.host("ehr").v4, 8080));
    assert!(!topo.host("ws").ns.tcp_ok(topo.host("ehr").v4, 443));

    let (code, metrics) = agent.get(ns, "/metrics").unwrap();
    assert_eq!(code, 200);
    for needle in [
        "wardline_packets_total{",
        "reason=\"policy-allow\"",
        "wardline_events_lost_total{",
        "wardline_flow_events_total{",
        "wardline_policy_generation{",
        "wardline_interface_enforced{",
        "interface=\"late0\"} 1",
        "wardline_ready{",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }
    let dropped: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("wardline_packets_total{") && l.contains("reason=\"default-deny\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(dropped > 0, "default-deny drops are counted:\n{metrics}");
}
