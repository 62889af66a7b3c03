//! Real traffic between real namespaces, enforced by the real agent, in the
//! three deployment topologies. Every scenario states the whole expected
//! reachability matrix (source x destination x service x family) and
//! every cell is probed.

use std::time::{Duration, Instant};

use wardline_tests::agent::Agent;
use wardline_tests::matrix::{Cell, Service, check_matrix};
use wardline_tests::require_root;
use wardline_tests::scenarios::{self, Standalone};
use wardline_tests::topology::{self, Topology};

use wardline_tests::docs::{WS_PUMP_EHR as SEGMENTS, policy};

fn with_segments(policies: &[String]) -> String {
    wardline_tests::docs::with(SEGMENTS, policies)
}

fn is(c: &Cell, from: &str, to: &str) -> bool {
    c.from == from && c.to == to
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
    scenarios::routed_gateway(
        &topo,
        &Standalone {
            agent: &agent,
            ns: topo.agent_ns(),
        },
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

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_vlan_bridge_scenarios() {
    require_root();
    let topo = topology::vlan_bridge();
    let agent = start(&topo, &scenarios::pumps_policy());
    scenarios::vlan_bridge(
        &topo,
        &Standalone {
            agent: &agent,
            ns: topo.agent_ns(),
        },
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_established_connection_cut_within_a_second() {
    require_root();
    let topo = topology::routed_gateway();
    let agent = start(&topo, &with_segments(&[]));
    scenarios::established_cut(
        &topo,
        &Standalone {
            agent: &agent,
            ns: topo.agent_ns(),
        },
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_valid_until_window_ends() {
    require_root();
    let topo = topology::routed_gateway();
    let agent = start(&topo, &with_segments(&[]));
    let ns = topo.agent_ns();
    let generation = agent.generation(ns);
    scenarios::window_ends(&topo, &Standalone { agent: &agent, ns });
    assert!(
        agent.generation(ns) > generation + 1,
        "the window's end made a generation of its own"
    );
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
        "wardline_events_lost_total{source=\"kernel\"} ",
        "wardline_flow_events_total{",
        "wardline_policy_generation ",
        "wardline_interface_enforced{",
        "wardline_interface_enforced{interface=\"late0\"} 1",
        "wardline_ready 1",
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
    // The scrape target names the node; no series repeats it.
    assert!(!metrics.contains("node=\""), "{metrics}");
}

/// One iperf3 stream from ws to ehr on TCP 5201 (`args` added to the
/// client's), its JSON report.
fn iperf3_ws_to_ehr(topo: &Topology, args: &[&str]) -> serde_json::Value {
    let ehr = topo.host("ehr");
    let mut server = ehr.ns.spawn(["iperf3", "-s", "-1", "-p", "5201"]);
    std::thread::sleep(Duration::from_millis(500));
    let target = ehr.v4.to_string();
    let mut client = vec!["iperf3", "-c", &target, "-p", "5201", "-J"];
    client.extend_from_slice(args);
    let out = topo.host("ws").ns.exec(client);
    let _ = server.wait();
    serde_json::from_slice(&out.stdout).expect("iperf3 JSON")
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_bulk_tcp_keeps_its_connection_across_cpus() {
    require_root();
    // A bulk stream's packets are judged on both CPUs at once, in both
    // directions: no packet of the allowed connection may be taken for a
    // new one (and dropped).
    let topo = topology::routed_gateway();
    let agent = start(
        &topo,
        &with_segments(&[policy(
            "ws-ehr-bulk",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 5201}]",
        )]),
    );
    let report = iperf3_ws_to_ehr(&topo, &["-t", "3"]);
    let bytes = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(bytes > 0, "the stream moved data: {report}");
    let wrong: Vec<_> = agent
        .flows()
        .into_iter()
        .filter(|f| {
            f["protocol"] == "tcp"
                && f["verdict"] == "dropped"
                && (f["sport"] == 5201 || f["dport"] == 5201)
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "packets of the allowed stream were dropped: {wrong:?}"
    );
    eprintln!(
        "{} bytes, {} retransmits, no packet of the allowed stream dropped",
        bytes, report["end"]["sum_sent"]["retransmits"]
    );
}

/// The Ethernet address of the one non-loopback interface in `ns`.
fn mac_in(ns: &wardline_tests::Netns) -> String {
    let out = ns.exec(["ip", "-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("LOOPBACK"))
        .find_map(|l| {
            let at = l.find("link/ether ")? + "link/ether ".len();
            l.get(at..at + 17).map(str::to_owned)
        })
        .expect("an Ethernet interface")
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_a_long_connection_reports_its_counts_as_it_goes_and_they_add_up() {
    require_root();
    // A 12 s stream with counts every 5 s: its records are new (nothing
    // counted yet, the initiator's Ethernet address), updates with what
    // passed since the one before, and its close with the rest; together
    // at least what iperf3 moved.
    let topo = topology::routed_gateway();
    let agent = Agent::start_with(
        topo.agent_ns(),
        &topo.interfaces(),
        &with_segments(&[policy(
            "ws-ehr-bulk",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 5201}]",
        )]),
        "  flowUpdateSeconds: 5\n",
    );
    let report = iperf3_ws_to_ehr(&topo, &["-t", "12", "-b", "20M"]);
    let moved = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(moved > 1_000_000, "the stream moved data: {report}");
    let data_port = report["start"]["connected"][0]["local_port"]
        .as_u64()
        .expect("iperf3 names its data connection");
    // The sweeps during the stream counted its connections in the table.
    let (_, metrics) = agent.get(topo.agent_ns(), "/metrics").expect("/metrics");
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(
        gauge("wardline_tracking_entries{table=\"connections\"}") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        gauge("wardline_tracking_capacity_entries{table=\"connections\"}"),
        262_144.0
    );
    // Its records, as the flow log has them once the close is written.
    let deadline = Instant::now() + Duration::from_secs(10);
    let records = loop {
        let records: Vec<serde_json::Value> = agent
            .flows()
            .into_iter()
            .filter(|f| f["dport"] == 5201 && f["sport"] == data_port)
            .collect();
        if records.iter().any(|f| f["kind"] == "close") || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let kinds: Vec<&str> = records.iter().filter_map(|f| f["kind"].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"new"), "{records:#?}");
    assert_eq!(kinds.last(), Some(&"close"), "{records:#?}");
    let updates = kinds.iter().filter(|k| **k == "update").count();
    assert!(
        (1..=3).contains(&updates),
        "a 12 s stream has one to three 5 s updates: {kinds:?}"
    );
    let new = &records[0];
    assert_eq!(
        (new["packets"].as_u64(), new["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(new["srcMac"], mac_in(&topo.host("ws").ns), "{new}");
    assert!(new["dstMac"].is_string(), "{new}");
    for f in records.iter().filter(|f| f["kind"] == "update") {
        assert!(f["bytes"].as_u64().unwrap() > 0, "{f}");
        assert_eq!(f["srcSegment"], "ws", "{f}");
        assert_eq!(f["policy"], "ws-ehr-bulk", "{f}");
        assert!(f["srcMac"].is_null(), "no frame made an update: {f}");
    }
    let total: u64 = records.iter().filter_map(|f| f["bytes"].as_u64()).sum();
    assert!(
        total >= moved,
        "records add up to at least what moved: {total} < {moved}\n{records:#?}"
    );
    let status = agent.status_json(topo.agent_ns());
    assert!(status["counters"]["lostEvents"] == 0, "{status}");
}
