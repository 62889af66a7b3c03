//! A control plane and managed agents in namespaces: the reachability
//! matrices driven through `wardctl apply`, propagation from apply to every
//! agent's acknowledgement, and faults (control plane killed, agent
//! restarted while it is away, an etcd member and a replica lost).

use std::time::Duration;

use wardline_tests::agent::{Agent, managed_gateway};
use wardline_tests::docs::policy;
use wardline_tests::matrix::{Cell, Service, check_matrix};
use wardline_tests::require_root;
use wardline_tests::scenarios::{self, Managed};
use wardline_tests::site::Site;
use wardline_tests::topology;

use wardline_tests::docs::FLEET_SEGMENTS as SEGMENTS;

fn is(c: &Cell, from: &str, to: &str) -> bool {
    c.from == from && c.to == to
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_managed_fleet_matrices_and_propagation() {
    require_root();
    let mut site = Site::new();
    site.start_replica(0, &site.embedded_store());
    let routed = topology::routed_gateway();
    let host = topology::host_agent();
    let bridge = topology::vlan_bridge();
    for t in [&routed, &host, &bridge] {
        site.connect(t.agent_ns());
    }
    let endpoints = [Site::endpoint(0)];
    let agents = [
        Agent::start_managed(
            routed.agent_ns(),
            &routed.interfaces(),
            &site,
            "{role: gateway}",
            &endpoints,
        ),
        Agent::start_managed(
            host.agent_ns(),
            &host.interfaces(),
            &site,
            "{role: ehr-server}",
            &endpoints,
        ),
        Agent::start_managed(
            bridge.agent_ns(),
            &bridge.interfaces(),
            &site,
            "{role: bridge}",
            &endpoints,
        ),
    ];
    let nodes: Vec<&str> = agents.iter().map(|a| a.node.as_str()).collect();

    // Scenario 1: a single port, and the pump VLAN's identity.
    let first = format!(
        "{SEGMENTS}{}{}",
        policy(
            "ws-ehr-web",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}]"
        ),
        policy(
            "pumps-to-server",
            "allow",
            "pump",
            "pump-server",
            "[{protocol: tcp, port: 443}, {protocol: udp, port: 5000, endPort: 5010}, {protocol: icmp}, {protocol: icmpv6}]"
        ),
    );
    let revision = site.apply(0, &first);
    let took = site.wait_acked(0, &nodes, revision, Duration::from_secs(10));
    eprintln!("revision {revision}: apply to acknowledgement by all 3 agents in {took:?}");
    for (a, t) in agents.iter().zip([&routed, &host, &bridge]) {
        a.wait_ready(t.agent_ns(), Duration::from_secs(5));
        assert_eq!(a.status_json(t.agent_ns())["mode"], "managed");
    }
    check_matrix(&routed, "managed routed: single port", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(443)
    });
    check_matrix(&host, "managed host: single port", |c| {
        (c.from != "ehr" && c.to != "ehr") || (is(c, "ws", "ehr") && c.service == Service::Tcp(443))
    });
    check_matrix(&bridge, "managed bridge: VLAN identity", |c| {
        (is(c, "pump", "pump-server") || is(c, "vlan-only", "pump-server"))
            && matches!(
                c.service,
                Service::Tcp(443) | Service::Udp(5000) | Service::Icmp
            )
    });

    // Scenario 2: deny beats allow, and `world`; the old policies are gone.
    let second = format!(
        "{SEGMENTS}{}{}{}",
        policy("ws-anything", "allow", "ws", "any", ""),
        policy("never-ws-to-pumps", "deny", "ws", "pump", ""),
        policy(
            "world-to-ehr-web",
            "allow",
            "world",
            "ehr",
            "[{protocol: tcp, port: 443}]"
        ),
    );
    let revision = site.apply(0, &second);
    let took = site.wait_acked(0, &nodes, revision, Duration::from_secs(10));
    eprintln!("revision {revision}: apply to acknowledgement by all 3 agents in {took:?}");
    check_matrix(&routed, "managed routed: deny beats allow, world", |c| {
        (c.from == "ws" && c.to != "pump")
            || (is(c, "ext", "ehr") && c.service == Service::Tcp(443))
    });
    check_matrix(&host, "managed host: deny beats allow, world", |c| {
        (c.from != "ehr" && c.to != "ehr")
            || is(c, "ws", "ehr")
            || (is(c, "ext", "ehr") && c.service == Service::Tcp(443))
    });
    check_matrix(&bridge, "managed bridge: nothing allowed there", |_| false);

    let status = site.status(0);
    for a in status["agents"].as_array().unwrap() {
        assert_eq!(a["connected"], true, "{a}");
        assert_eq!(a["behind"], false, "{a}");
    }
    // Revisions and their authors, for auditors.
    let out = site.wardctl(0, &["history", "-o", "json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history[0]["author"], "operator:ops");
    assert_eq!(history.as_array().unwrap().len(), 2);
}

/// One replica on the embedded store, the routed gateway topology, its
/// managed agent, and the policy allowing ws to ehr on 443 (not applied).
struct GatewaySite {
    site: Site,
    store: String,
    routed: topology::Topology,
    agent: Agent,
    web: String,
}

fn gateway_site() -> GatewaySite {
    gateway_site_with(|_| {})
}

/// [`gateway_site`] with `prepare` run on the site before its replica
/// starts (flags).
fn gateway_site_with(prepare: impl FnOnce(&mut Site)) -> GatewaySite {
    let mut site = Site::new();
    prepare(&mut site);
    let (routed, agent) = managed_gateway(&mut site);
    let store = site.embedded_store();
    let web = format!(
        "{SEGMENTS}{}",
        policy(
            "ws-ehr-web",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}]"
        )
    );
    GatewaySite {
        site,
        store,
        routed,
        agent,
        web,
    }
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_managed_faults_control_plane_away_and_agent_restart() {
    require_root();
    let GatewaySite {
        mut site,
        store,
        routed,
        mut agent,
        web,
    } = gateway_site();
    let ns = routed.agent_ns();
    let revision = site.apply(0, &web);
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    let expect_web = |c: &Cell| is(c, "ws", "ehr") && c.service == Service::Tcp(443);
    check_matrix(&routed, "control plane up", expect_web);

    // The control plane dies: nothing changes, nothing opens.
    site.replicas[0].kill9();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.status_json(ns)["controlPlaneConnected"], false);
    check_matrix(&routed, "control plane away", expect_web);

    // The agent restarts while the control plane is away: it enforces the
    // persisted snapshot and becomes ready on its own.
    agent.kill9();
    agent.spawn();
    agent.wait_ready(ns, Duration::from_secs(10));
    assert_eq!(agent.status_json(ns)["revision"], revision);
    check_matrix(&routed, "agent restarted, control plane away", expect_web);

    // The control plane returns: the agent resynchronises and the next
    // change arrives.
    site.start_replica(0, &store);
    // Nothing was lost across the restart.
    let out = site.wardctl(0, &["get", "policy", "ws-ehr-web", "-o", "yaml"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("port: 443"),
        "the stored policy survived"
    );
    let moved = web.replace("port: 443", "port: 8080");
    let revision = site.apply(0, &moved);
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(15));
    check_matrix(&routed, "after the outage", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(8080)
    });
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_etcd_cluster_survives_a_member_and_a_replica() {
    require_root();
    let mut site = Site::new();
    let store = site.start_etcd(3);
    site.start_replica(0, &store);
    site.start_replica(1, &store);
    let routed = topology::routed_gateway();
    let host = topology::host_agent();
    site.connect(routed.agent_ns());
    site.connect(host.agent_ns());
    let endpoints = [Site::endpoint(0), Site::endpoint(1)];
    let a1 = Agent::start_managed(
        routed.agent_ns(),
        &routed.interfaces(),
        &site,
        "{role: gateway}",
        &endpoints,
    );
    let a2 = Agent::start_managed(
        host.agent_ns(),
        &host.interfaces(),
        &site,
        "{role: ehr-server}",
        &endpoints,
    );
    let nodes = [a1.node.as_str(), a2.node.as_str()];
    let web = format!(
        "{SEGMENTS}{}",
        policy(
            "ws-ehr-web",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}]"
        )
    );
    let revision = site.apply(0, &web);
    site.wait_acked(1, &nodes, revision, Duration::from_secs(10));

    // Lose one etcd member and the replica every agent is connected to.
    site.etcd[0].kill9();
    site.replicas[0].kill9();
    let moved = web.replace("port: 443", "port: 8080");
    let revision = site.apply(1, &moved);
    let took = site.wait_acked(1, &nodes, revision, Duration::from_secs(20));
    eprintln!(
        "after losing an etcd member and a replica: revision {revision} acknowledged by every agent in {took:?}"
    );
    check_matrix(&routed, "etcd HA: routed", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(8080)
    });
    check_matrix(&host, "etcd HA: host", |c| {
        (c.from != "ehr" && c.to != "ehr")
            || (is(c, "ws", "ehr") && c.service == Service::Tcp(8080))
    });
    let out = site.wardctl(1, &["history", "-o", "json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        history.as_array().unwrap().len(),
        2,
        "both revisions, written by two replicas"
    );
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_managed_scenarios_through_wardctl() {
    require_root();
    let mut site = Site::new();
    site.start_replica(0, &site.embedded_store());
    let routed = topology::routed_gateway();
    let bridge = topology::vlan_bridge();
    site.connect(routed.agent_ns());
    site.connect(bridge.agent_ns());
    let endpoints = [Site::endpoint(0)];
    let gw = Agent::start_managed(
        routed.agent_ns(),
        &routed.interfaces(),
        &site,
        "{role: gateway}",
        &endpoints,
    );
    let br = Agent::start_managed(
        bridge.agent_ns(),
        &bridge.interfaces(),
        &site,
        "{role: bridge}",
        &endpoints,
    );
    let nodes = vec![gw.node.clone(), br.node.clone()];
    let on_routed = Managed {
        site: &site,
        nodes: nodes.clone(),
        agent: &gw,
        ns: routed.agent_ns(),
    };
    scenarios::routed_gateway(&routed, &on_routed);
    scenarios::established_cut(&routed, &on_routed);
    scenarios::window_ends(&routed, &on_routed);
    let on_bridge = Managed {
        site: &site,
        nodes,
        agent: &br,
        ns: bridge.agent_ns(),
    };
    scenarios::vlan_bridge(&bridge, &on_bridge);
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_persisted_snapshot_is_signed_private_and_never_rolled_back() {
    use std::os::unix::fs::PermissionsExt as _;

    use prost::Message as _;
    use wardline_proto::v1;

    require_root();
    let GatewaySite {
        mut site,
        store,
        routed,
        mut agent,
        web,
    } = gateway_site();
    let ns = routed.agent_ns();
    let first = site.apply(0, &web);
    site.wait_acked(0, &[&agent.node], first, Duration::from_secs(10));
    let snapshot = agent.state_file("snapshot.pb");
    let old = std::fs::read(&snapshot).expect("the snapshot is persisted");
    for file in ["snapshot.pb", "enforced"] {
        let mode = std::fs::metadata(agent.state_file(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is the agent's alone");
    }
    // What the agent enforces, by hash, in /status.
    let tables = agent.status_json(ns)["tablesSha256"]
        .as_str()
        .expect("tablesSha256 in /status")
        .to_owned();
    assert_eq!(tables.len(), 64);

    let moved = web.replace("port: 443", "port: 8080");
    let second = site.apply(0, &moved);
    site.wait_acked(0, &[&agent.node], second, Duration::from_secs(10));
    let expect_8080 = |c: &Cell| is(c, "ws", "ehr") && c.service == Service::Tcp(8080);
    check_matrix(&routed, "second revision", expect_8080);
    assert_ne!(agent.status_json(ns)["tablesSha256"], tables.as_str());
    let current = std::fs::read(&snapshot).unwrap();

    // With the control plane away, someone with the disk restores the
    // older snapshot (port 443 open again): refused, the pinned tables stay.
    site.replicas[0].kill9();
    agent.kill9();
    std::fs::write(&snapshot, &old).unwrap();
    agent.spawn();
    // Loading the programs again takes a few seconds; more on a busy machine.
    let refused = |agent: &Agent, what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let status = agent.get(ns, "/status").map(|(_, b)| b).unwrap_or_default();
            if status.contains(what) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no refusal naming {what:?}; status: {status}\nlog: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    refused(&agent, "older than revision");
    check_matrix(&routed, "rolled-back file refused", expect_8080);

    // The current file with its revision edited: the seal no longer holds.
    agent.kill9();
    let mut signed = v1::SignedSnapshot::decode(current.as_slice()).unwrap();
    let mut inner = v1::PolicySnapshot::decode(signed.snapshot.as_ref()).unwrap();
    inner.revision += 10;
    signed.snapshot = inner.encode_to_vec().into();
    std::fs::write(&snapshot, signed.encode_to_vec()).unwrap();
    agent.spawn();
    refused(&agent, "signature is refused");
    check_matrix(&routed, "edited file refused", expect_8080);

    // A snapshot of the attacker's making (the older tables, a higher
    // revision) sealed with the agent's own stolen key.
    agent.kill9();
    let old_signed = v1::SignedSnapshot::decode(old.as_slice()).unwrap();
    let mut forged = v1::PolicySnapshot::decode(old_signed.snapshot.as_ref()).unwrap();
    forged.revision = second + 1;
    let payload = forged.encode_to_vec();
    let (agent_cert, agent_key) = site.issue("agent", "stolen-laptop");
    let seal = wardline_signing::Signer::from_pem_files(&agent_cert, &agent_key)
        .unwrap()
        .sign(&payload)
        .unwrap();
    let forged = v1::SignedSnapshot {
        snapshot: payload.into(),
        scheme: u32::from(seal.scheme),
        signature: seal.signature.into(),
        signer: seal.signer.into(),
    };
    std::fs::write(&snapshot, forged.encode_to_vec()).unwrap();
    agent.spawn();
    refused(&agent, "signature is refused");
    check_matrix(&routed, "forged file refused", expect_8080);

    // The control plane returns: the agent takes its snapshot and is whole.
    site.start_replica(0, &store);
    agent.wait_ready(ns, Duration::from_secs(15));
    // Connected is not yet whole: the replica's snapshot clears the error
    // the forged file left once it is enforced.
    let status = wait_status(&agent, ns, Duration::from_secs(15), "whole again", |s| {
        s["revision"] == second && s["lastError"].is_null()
    });
    assert_eq!(status["revision"], second);
    assert!(status["lastError"].is_null(), "{status}");
    check_matrix(&routed, "control plane back", expect_8080);
}

/// Registers `node` with `addresses` as its agent would, with a
/// certificate of that name.
fn register_node(site: &Site, node: &str, addresses: &[&str]) {
    use wardline_proto::v1;

    let (cert, key) = site.issue("agent", node);
    let (ca, node, addresses) = (
        site.ca(),
        node.to_owned(),
        addresses
            .iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<_>>(),
    );
    // From the management network, where the replicas listen.
    site.ns.run_in(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let url: wardline_tls::ServerAddress = Site::endpoint(0).parse().unwrap();
            let channel = wardline_tls::client_endpoint(&url, &ca, &cert, &key)
                .unwrap()
                .connect()
                .await
                .unwrap();
            v1::agent_api_client::AgentApiClient::new(channel)
                .register(v1::RegisterRequest {
                    node,
                    labels: Default::default(),
                    addresses,
                })
                .await
                .unwrap();
        })
    });
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_a_node_change_is_enforced_from_a_delta_and_kept_across_restarts() {
    require_root();
    let GatewaySite {
        mut site,
        store,
        routed,
        mut agent,
        web,
    } = gateway_site();
    let ns = routed.agent_ns();
    // The EHR database host joins a segment of its own when its node
    // registers: no policy lets anything reach that segment.
    let policy = format!(
        "{web}---
apiVersion: wardline/v1
kind: Segment
metadata: {{name: ehr-db}}
spec: {{nodeSelector: {{matchLabels: {{role: ehr-db}}}}}}
---
apiVersion: wardline/v1
kind: Node
metadata: {{name: ehr-db-1, labels: {{role: ehr-db}}}}
spec: {{addresses: [\"198.18.41.10/32\", \"2001:db8:41::10/128\"]}}
"
    );
    let revision = site.apply(0, &policy);
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    let web_open = |c: &Cell| is(c, "ws", "ehr") && c.service == Service::Tcp(443);
    check_matrix(&routed, "before the node joins", web_open);
    let before = agent.status_json(ns)["tablesSha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let tables_of = |file: &[u8]| {
        let signed = <wardline_proto::v1::SignedSnapshot as prost::Message>::decode(file).unwrap();
        <wardline_proto::v1::PolicySnapshot as prost::Message>::decode(signed.snapshot.as_ref())
            .unwrap()
    };
    let earlier = tables_of(&std::fs::read(agent.state_file("snapshot.pb")).unwrap()).tables;
    assert!(!earlier.is_empty(), "whole tables first");

    register_node(&site, "ehr-db-1", &["198.18.41.10", "2001:db8:41::10"]);
    let status = wait_status(
        &agent,
        ns,
        Duration::from_secs(10),
        "the node's change",
        |s| s["tablesSha256"] != before.as_str(),
    );
    let after = status["tablesSha256"].as_str().unwrap().to_owned();
    assert_eq!(
        status["revision"], revision,
        "a node change is no new revision"
    );
    assert!(status["lastError"].is_null(), "{status}");
    check_matrix(&routed, "the host moved by its node", |_| false);
    // It came as a change: the agent keeps the tables it made beside the
    // snapshot, which holds no tables of its own.
    let kept = agent.state_file(&format!("tables-{after}.pb"));
    let made = std::fs::read(&kept).expect("the tables made from the change are kept");
    assert_eq!(
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&made)),
        after
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&kept).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The control plane away, the agent restarts: it enforces the
    // persisted change, its tables read back from the kept file.
    site.replicas[0].kill9();
    agent.kill9();
    agent.spawn();
    let status = wait_status(&agent, ns, Duration::from_secs(30), "restarted", |s| {
        s["tablesSha256"] == after.as_str()
    });
    assert!(status["lastError"].is_null(), "{status}");
    check_matrix(&routed, "restarted from the kept change", |_| false);

    // Someone with the disk puts the earlier tables (the host back in
    // ehr, port 443 open) in the kept file: refused, the pinned tables stay.
    agent.kill9();
    let inner = tables_of(&std::fs::read(agent.state_file("snapshot.pb")).unwrap());
    assert!(
        inner.tables.is_empty() && inner.delta.is_some(),
        "the change itself is persisted"
    );
    std::fs::write(&kept, &earlier).unwrap();
    agent.spawn();
    wait_status(&agent, ns, Duration::from_secs(30), "the refusal", |s| {
        s["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("do not match their tables_sha256"))
    });
    check_matrix(&routed, "tampered tables refused", |_| false);

    // The control plane returns: whole tables, the same ones.
    site.start_replica(0, &store);
    let status = wait_status(&agent, ns, Duration::from_secs(15), "back", |s| {
        s["tablesSha256"] == after.as_str() && s["lastError"].is_null()
    });
    assert_eq!(status["revision"], revision);
    check_matrix(&routed, "control plane back", |_| false);
}

/// Flow records the replica stored for `node`, as `wardctl observe -o json`
/// prints them.
fn observed(site: &Site, node: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["observe", "--node", node, "-o", "json"];
    all.extend_from_slice(args);
    let out = site.wardctl(0, &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// The sum of the agent's `wardline_flow_events_total` series.
fn events_read(agent: &Agent, ns: &wardline_tests::Netns) -> u64 {
    let (_, metrics) = agent.get(ns, "/metrics").expect("/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("wardline_flow_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_every_flow_verdict_reaches_observe_also_across_a_control_plane_outage() {
    require_root();
    let GatewaySite {
        mut site,
        store,
        routed,
        agent,
        web,
    } = gateway_site();
    let ns = routed.agent_ns();
    let revision = site.apply(0, &web);
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    check_matrix(&routed, "observed", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(443)
    });
    // Every record the agent read from the kernel is stored, none lost.
    let all_stored = |site: &Site| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let read = events_read(&agent, ns);
            let stored = observed(site, &agent.node, &[]).len() as u64;
            if read > 0 && stored == read {
                return stored;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the agent read {read} flow events, the replica stored {stored}\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let before = all_stored(&site);
    let allowed = observed(
        &site,
        &agent.node,
        &["--verdict", "allowed", "--to", "ehr", "--port", "443"],
    );
    assert!(!allowed.is_empty());
    for f in &allowed {
        assert_eq!(f["srcSegment"], "ws", "{f}");
        assert_eq!(f["policy"], "ws-ehr-web", "{f}");
        assert_eq!(f["revision"], revision, "{f}");
    }
    let dropped = observed(
        &site,
        &agent.node,
        &["--verdict", "dropped", "--from", "198.18.30.0/24"],
    );
    assert!(!dropped.is_empty());
    assert!(
        dropped
            .iter()
            .all(|f| f["reason"] == "default-deny" && f["srcSegment"] == "pump"),
        "{dropped:?}"
    );

    // The control plane away: the agent keeps what it judges on disk and
    // delivers it when the replica is back.
    site.replicas[0].kill9();
    check_matrix(&routed, "with the control plane away", |c| {
        is(c, "ws", "ehr") && c.service == Service::Tcp(443)
    });
    let waiting = agent.status_json(ns)["flows"]["waitingBytes"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        waiting > 0,
        "records wait on disk: {}",
        agent.status_json(ns)
    );
    site.start_replica(0, &store);
    let after = all_stored(&site);
    assert!(after > before, "{before} then {after}");
    let status = agent.status_json(ns);
    assert_eq!(status["flows"]["dropped"], 0, "{status}");
    // No record stored twice across the reconnect.
    let records = observed(&site, &agent.node, &[]);
    let mut numbers: Vec<u64> = records
        .iter()
        .map(|f| f["sequence"].as_u64().unwrap())
        .collect();
    let n = numbers.len();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), n, "each record once");
}

/// Until `check` holds of the agent's `/status`, within `within`.
fn wait_status(
    agent: &Agent,
    ns: &wardline_tests::Netns,
    within: Duration,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        // Not answering yet (starting) counts as not yet.
        let status: serde_json::Value = agent
            .get(ns, "/status")
            .and_then(|(_, body)| serde_json::from_str(body.trim()).ok())
            .unwrap_or_default();
        if check(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}; status: {status}\nlog: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_certificates_renew_over_the_channel_and_the_replica_reloads_its_own() {
    use std::os::unix::fs::PermissionsExt as _;

    require_root();
    let GatewaySite {
        site,
        store: _,
        routed,
        mut agent,
        web,
    } = gateway_site_with(|site| site.renew_agents("10m"));
    let ns = routed.agent_ns();
    let revision = site.apply(0, &web);
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    let expect_web = |c: &Cell| is(c, "ws", "ehr") && c.service == Service::Tcp(443);

    // The start-up certificate (a year) outlives the site's ten minutes:
    // the agent renews at once, with a key of its own making.
    let status = wait_status(&agent, ns, Duration::from_secs(20), "renewed", |s| {
        s["certificate"]["source"] == "renewed" && s["controlPlaneConnected"] == true
    });
    let serial = status["certificate"]["serial"].as_str().unwrap().to_owned();
    let not_after = time::OffsetDateTime::parse(
        status["certificate"]["notAfter"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = not_after - time::OffsetDateTime::now_utc();
    assert!(
        left <= time::Duration::minutes(10) && left > time::Duration::minutes(9),
        "renewed for {left}"
    );
    let identity = agent.state_file("identity.pem");
    assert_eq!(
        std::fs::metadata(&identity).unwrap().permissions().mode() & 0o777,
        0o600,
        "the renewed key is the agent's alone"
    );
    assert_eq!(status["certificate"]["renewals"], 1, "{status}");
    let (_, metrics) = agent.get(ns, "/metrics").expect("/metrics answers");
    assert!(
        metrics.contains(&format!("serial=\"{serial}\",source=\"renewed\"")),
        "{metrics}"
    );
    assert!(
        metrics.contains("wardline_certificate_expiring 0"),
        "{metrics}"
    );
    check_matrix(&routed, "certificate renewed", expect_web);

    // The control plane sees the renewal, and retired the start-up one.
    let cp = site.status(0);
    let seen = cp["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["node"] == agent.node.as_str())
        .cloned()
        .unwrap();
    assert_eq!(seen["certificate"]["serial"], serial.as_str(), "{cp}");
    assert!(
        cp["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["reason"].as_str().unwrap_or("").starts_with("retired:")),
        "{cp}"
    );

    // Restarted, the agent comes back with the renewal (its start-up
    // certificate no longer works) and policy keeps flowing.
    agent.kill9();
    agent.spawn();
    wait_status(
        &agent,
        ns,
        Duration::from_secs(30),
        "reconnected with the renewal",
        |s| s["certificate"]["serial"] == serial.as_str() && s["controlPlaneConnected"] == true,
    );
    let moved = web.replace("port: 443", "port: 8080");
    let second = site.apply(0, &moved);
    site.wait_acked(0, &[&agent.node], second, Duration::from_secs(15));

    // The replica's own certificate is replaced on disk and reloaded
    // without a restart: new handshakes get it, and the agent takes what
    // it signs.
    let before = site.status(0)["replicaCertificate"]["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    let fresh = site.dir.join("fresh");
    site.issue_replica_certificate(&fresh);
    // Broken files first: refused, the certificate in force stays.
    let (cert, key) = (site.dir.join("cp.pem"), site.dir.join("cp-key.pem"));
    let (old_cert, old_key) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    std::fs::write(&cert, b"not a certificate").unwrap();
    site.replicas[0].hup();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        site.status(0)["replicaCertificate"]["serial"],
        before.as_str(),
        "a broken file changed the served certificate"
    );
    assert!(
        site.replicas[0].log().contains("the one in force stays"),
        "{}",
        site.replicas[0].log()
    );
    std::fs::write(&cert, &old_cert).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    // Then the renewal, put in place.
    std::fs::copy(fresh.join("cp-key.pem"), &key).unwrap();
    std::fs::copy(fresh.join("cp.pem"), &cert).unwrap();
    site.replicas[0].hup();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = site.status(0)["replicaCertificate"]["serial"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if now != before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica still serves {before}:\n{}",
            site.replicas[0].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let third = site.apply(0, &web);
    site.wait_acked(0, &[&agent.node], third, Duration::from_secs(15));
    check_matrix(&routed, "replica certificate reloaded", expect_web);
}
