//! Clinical operations against the real kernel, across three managed
//! agents: a compromised workstation quarantined fleet-wide (its
//! established connection cut, the EHR lost on every agent, back on
//! release), a pump quarantined keeping only its telemetry flow on its own
//! VLAN, shown in status, the audit trail and the SIEM; bad targets and
//! profiles refused with nothing changed. Then a vendor grant that the
//! kernel opens and closes on time, refused past the vendor's BAA; a
//! promotion refused while a critical flow would be dropped, a
//! recommendation that, applied, leaves the observed flows passing, and
//! the promotion that then goes through.

use std::time::{Duration, Instant};

use wardline_tests::agent::{Agent, managed_gateway};
use wardline_tests::docs::{FLEET_SEGMENTS, WS_PUMP_EHR, policy};
use wardline_tests::require_root;
use wardline_tests::site::Site;
use wardline_tests::topology;

/// The fleet's segments, and what a quarantined pump keeps: its
/// telemetry to the pump server.
fn segments() -> String {
    format!(
        "{FLEET_SEGMENTS}---\napiVersion: wardline/v1\nkind: KeepProfile\nmetadata: {{name: pump-telemetry}}\nspec:\n  flows:\n    - to: [pump-server]\n      ports: [{{protocol: udp, port: 5000}}]\n"
    )
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
#[ignore = "needs root (network namespaces, eBPF): run via cargo xtask test"]
fn privileged_quarantine_cuts_a_workstation_and_keeps_a_pump_s_telemetry_across_three_agents() {
    require_root();
    let mut site = Site::new();
    let ocsf = site.dir.join("ocsf.jsonl");
    site.replica_flags = vec![
        "--siem-ocsf".into(),
        ocsf.display().to_string(),
        "--dashboard-address".into(),
        format!("{}:8443", wardline_tests::site::REPLICAS[0]),
    ];
    site.start_replica(0, &site.embedded_store());
    let routed = topology::routed_gateway();
    let host = topology::host_agent();
    let bridge = topology::vlan_bridge();
    for t in [&routed, &host, &bridge] {
        site.connect(t.agent_ns());
    }
    let endpoints = [Site::endpoint(0)];
    let agents: Vec<Agent> = [
        (&routed, "{role: gateway}"),
        (&host, "{role: ehr-server}"),
        (&bridge, "{role: bridge}"),
    ]
    .into_iter()
    .map(|(t, labels)| {
        Agent::start_managed(t.agent_ns(), &t.interfaces(), &site, labels, &endpoints)
    })
    .collect();
    let nodes: Vec<&str> = agents.iter().map(|a| a.node.as_str()).collect();
    let revision = site.apply(
        0,
        &format!(
            "{}{}{}",
            segments(),
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
                "[{protocol: tcp, port: 443}, {protocol: udp, port: 5000, endPort: 5010}]"
            ),
        ),
    );
    site.wait_acked(0, &nodes, revision, Duration::from_secs(10));
    let (ws, ehr) = (routed.host("ws"), routed.host("ehr"));
    let (host_ws, host_ehr) = (host.host("ws"), host.host("ehr"));
    let (pump, server) = (bridge.host("pump"), bridge.host("pump-server"));
    assert!(ws.ns.tcp_ok(ehr.v4, 443), "routed: ws reaches the EHR");
    assert!(
        host_ws.ns.tcp_ok(host_ehr.v4, 443),
        "host: ws reaches the EHR"
    );
    assert!(
        pump.ns.tcp_ok(server.v4, 443),
        "bridge: the pump reaches its server"
    );
    assert!(
        pump.ns.udp_ok(server.v4, 5000),
        "bridge: the pump's telemetry"
    );

    // Bad input: refused, naming what is wrong, nothing written.
    let pump_v4 = pump.v4.to_string();
    for (args, says) in [
        (
            vec!["quarantine", "198.51.100.250", "--reason", "x"],
            "matches nothing",
        ),
        (
            vec!["quarantine", "02:00:00:00:99:99", "--reason", "x"],
            "matches nothing",
        ),
        (
            vec![
                "quarantine",
                &pump_v4,
                "--reason",
                "x",
                "--keep",
                "pump-telemetery",
            ],
            "no KeepProfile has this name",
        ),
        (
            vec!["quarantine", "pump-7", "--reason", "x"],
            "neither an IP address nor an Ethernet address",
        ),
        (
            vec!["quarantine", "198.18.20.10", "--reason", ""],
            "needs a reason",
        ),
    ] {
        let out = site.wardctl(0, &args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert_eq!(site.status(0)["revision"], revision, "nothing written");

    // The workstation, mid-session with the EHR, is quarantined.
    let mut stream = ws
        .ns
        .spawn_probe(["stream", &ehr.v4.to_string(), "443", "--seconds", "30"]);
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    let q = json(&site.wardctl(
        0,
        &[
            "quarantine",
            &ws.v4.to_string(),
            "--reason",
            "IR-2291: beaconing to a known C2 address",
            "-o",
            "json",
        ],
    ));
    let answered = start.elapsed();
    // In force when every agent has programmed it into the kernel (each
    // acknowledges a revision once its tables are written).
    site.wait_acked(
        0,
        &nodes,
        q["revision"].as_u64().unwrap(),
        Duration::from_secs(10),
    );
    let in_force = start.elapsed();
    eprintln!(
        "quarantine of the workstation: answered in {answered:?}, in force on all 3 agents {in_force:?} after the command"
    );
    assert!(
        !ws.ns.tcp_ok(ehr.v4, 443),
        "routed: ws still reaches the EHR"
    );
    assert!(
        !host_ws.ns.tcp_ok(host_ehr.v4, 443),
        "host: ws still reaches the EHR"
    );
    let status = stream.wait().expect("the stream ends");
    assert!(
        !status.success(),
        "the established connection was not cut by the quarantine"
    );
    assert_eq!(q["state"], "quarantined");
    assert_eq!(q["addresses"][0], ws.v4.to_string());

    // The pump keeps its telemetry flow, on its own VLAN, and nothing else.
    let start = Instant::now();
    let p = json(&site.wardctl(
        0,
        &[
            "quarantine",
            &pump.v4.to_string(),
            "--reason",
            "IR-2292: firmware integrity check failed",
            "--keep",
            "pump-telemetry",
            "-o",
            "json",
        ],
    ));
    site.wait_acked(
        0,
        &nodes,
        p["revision"].as_u64().unwrap(),
        Duration::from_secs(10),
    );
    eprintln!(
        "quarantine of the pump: in force on all 3 agents {:?} after the command",
        start.elapsed()
    );
    assert!(
        !pump.ns.tcp_ok(server.v4, 443),
        "the quarantined pump still reaches its server on tcp/443"
    );
    assert_eq!(p["origin"], "pump", "{p}");
    assert!(
        pump.ns.udp_ok(server.v4, 5000),
        "the pump's telemetry (udp/5000, its keep-profile) must still pass"
    );
    assert!(
        pump.ns.udp_ok(server.v6, 5000) && pump.ns.tcp_ok(server.v6, 443),
        "the pump's IPv6 address was not named: it is untouched"
    );

    // Shown in status, the audit trail and the SIEM (as alerts).
    let out = site.wardctl(0, &["status"]);
    for id in [&q["id"], &p["id"]] {
        assert!(
            text(&out).contains(&format!("({})", id.as_str().unwrap())),
            "{}",
            text(&out)
        );
    }
    assert!(text(&out).contains("QUARANTINED"), "{}", text(&out));
    let audit = text(&site.wardctl(0, &["audit", "-o", "json"]));
    assert!(audit.contains("\"quarantine\""), "{audit}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = std::fs::read_to_string(&ocsf).unwrap_or_default();
        let alerts = lines
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["record"]["action"] == "quarantine" && v["alert"] == true)
            .count();
        if alerts == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{alerts} quarantine alerts in {lines}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And on the dashboard's governance page, in Chromium.
    let out = site.wardctl(0, &["dashboard", "login"]);
    let url = format!("{}#governance", String::from_utf8_lossy(&out.stdout).trim());
    let mut browser =
        wardline_tests::browser::Browser::new(&site.ns, &site.dir.join("cp.pem"), &site.dir);
    let dom = browser.dom(&url);
    for id in [&q["id"], &p["id"]] {
        assert!(
            dom.contains(&format!("data-quarantine=\"{}\"", id.as_str().unwrap())),
            "{dom}"
        );
    }
    assert!(dom.contains("pump-telemetry"), "{dom}");
    // Quarantining it again is refused: it is in quarantine.
    let out = site.wardctl(0, &["quarantine", &ws.v4.to_string(), "--reason", "again"]);
    assert!(
        text(&out).contains("in quarantine already"),
        "{}",
        text(&out)
    );

    // Released: the workstation reaches the EHR again, on both agents.
    let r = json(&site.wardctl(
        0,
        &[
            "release",
            q["id"].as_str().unwrap(),
            "--reason",
            "reimaged, IR-2291 closed",
            "-o",
            "json",
        ],
    ));
    assert_eq!(r["state"], "released");
    site.wait_acked(
        0,
        &nodes,
        r["releasedRevision"].as_u64().unwrap(),
        Duration::from_secs(10),
    );
    assert!(ws.ns.tcp_ok(ehr.v4, 443) && host_ws.ns.tcp_ok(host_ehr.v4, 443));
    assert!(
        !pump.ns.tcp_ok(server.v4, 443),
        "the pump stays quarantined"
    );
    let out = site.wardctl(0, &["history"]);
    assert!(
        text(&out).contains(&format!("RELEASE {}", q["id"].as_str().unwrap())),
        "{}",
        text(&out)
    );

    // By its Ethernet address, once the inventory has seen it: the pump,
    // released first, then quarantined again by its MAC.
    let r = json(&site.wardctl(
        0,
        &[
            "release",
            &pump.v4.to_string(),
            "--reason",
            "checked",
            "-o",
            "json",
        ],
    ));
    site.wait_acked(
        0,
        &nodes,
        r["releasedRevision"].as_u64().unwrap(),
        Duration::from_secs(10),
    );
    assert!(pump.ns.tcp_ok(server.v4, 443), "released, the pump is back");
    let mac = wardline_tests::forge::mac_of(&pump.ns, "eth0");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !text(&site.wardctl(0, &["inventory", "-o", "json"])).contains(&mac) {
        assert!(Instant::now() < deadline, "the inventory never saw {mac}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let m = json(&site.wardctl(
        0,
        &[
            "quarantine",
            &mac,
            "--reason",
            "IR-2293: by MAC",
            "-o",
            "json",
        ],
    ));
    assert!(
        m["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &pump.v4.to_string()),
        "{m}"
    );
    site.wait_acked(
        0,
        &nodes,
        m["revision"].as_u64().unwrap(),
        Duration::from_secs(10),
    );
    assert!(
        !pump.ns.tcp_ok(server.v4, 443),
        "quarantined by its MAC, the pump still reaches its server"
    );
}

/// The routed topology's segments, the pumps critical, and the vendors'
/// VPN pool (the outside host, `ext`).
fn vendor_site() -> String {
    format!(
        "{}---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: vendor-vpn}}\nspec: {{cidrs: [\"198.51.100.0/24\"]}}\n",
        WS_PUMP_EHR.replace(
            "metadata: {name: pump}",
            "metadata: {name: pump, labels: {critical: \"true\"}}"
        )
    )
}

fn vendor(name: &str, baa: &str) -> String {
    format!(
        "---\napiVersion: wardline/v1\nkind: Vendor\nmetadata: {{name: {name}}}\nspec: {{contact: \"support@{name}.example\", baaExpires: {baa}, segment: vendor-vpn}}\n"
    )
}

#[test]
#[ignore = "needs root (network namespaces, eBPF): run via cargo xtask test"]
fn privileged_a_vendor_grant_opens_and_closes_on_time_and_never_past_the_baa() {
    require_root();
    let mut site = Site::new();
    let (routed, agent) = managed_gateway(&mut site);
    let soon = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
    let baa = wardline_proto::convert::format_time(soon.replace_nanosecond(0).unwrap());
    let revision = site.apply(
        0,
        &format!(
            "{}{}{}",
            vendor_site(),
            vendor("infusion-co", "2030-01-01T00:00:00Z"),
            vendor("lapsed-co", &baa)
        ),
    );
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    // The vendor's jump host is `ext` (198.51.100.x), the pump `pump`.
    let (ext, pump) = (routed.host("ext"), routed.host("pump"));
    assert!(!ext.ns.tcp_ok(pump.v4, 22), "closed before the grant");

    for (args, says) in [
        (
            vec![
                "vendor", "grant", "nobody", "--to", "pump", "--ports", "tcp/22", "--until", "1h",
                "--ticket", "CHG-1",
            ],
            "no Vendor \"nobody\"",
        ),
        (
            vec![
                "vendor",
                "grant",
                "lapsed-co",
                "--to",
                "pump",
                "--ports",
                "tcp/22",
                "--until",
                "1h",
                "--ticket",
                "CHG-1",
            ],
            "business associate agreement on file for \"lapsed-co\" ends",
        ),
        (
            vec![
                "vendor",
                "grant",
                "infusion-co",
                "--to",
                "pump",
                "--ports",
                "tcp/22",
                "--from",
                "2h",
                "--until",
                "1h",
                "--ticket",
                "CHG-1",
            ],
            "is not after --from",
        ),
        (
            vec![
                "vendor",
                "grant",
                "infusion-co",
                "--to",
                "pumps",
                "--ports",
                "tcp/22",
                "--until",
                "1h",
                "--ticket",
                "CHG-1",
            ],
            "no such segment",
        ),
    ] {
        let out = site.wardctl(0, &args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(says), "{args:?}: {}", text(&out));
    }
    assert_eq!(site.status(0)["revision"], revision, "nothing written");

    let g = json(&site.wardctl(
        0,
        &[
            "vendor",
            "grant",
            "infusion-co",
            "--to",
            "pump",
            "--ports",
            "tcp/22",
            "--until",
            "8s",
            "--ticket",
            "CHG-4410",
            "-o",
            "json",
        ],
    ));
    let end = time::OffsetDateTime::parse(
        g["until"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    site.wait_acked(
        0,
        &[&agent.node],
        g["revision"].as_u64().unwrap(),
        Duration::from_secs(10),
    );
    assert!(ext.ns.tcp_ok(pump.v4, 22), "open inside the grant");
    assert!(!ext.ns.tcp_ok(pump.v4, 443), "only the granted port");
    let status = text(&site.wardctl(0, &["status"]));
    assert!(status.contains(g["id"].as_str().unwrap()), "{status}");
    let left = Duration::try_from(end - time::OffsetDateTime::now_utc()).unwrap_or_default();
    std::thread::sleep(left + Duration::from_millis(1200));
    assert!(!ext.ns.tcp_ok(pump.v4, 22), "closed on time by the kernel");

    // The grant's flows, by its policy.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = site.wardctl(0, &["vendor", "flows", g["id"].as_str().unwrap()]);
        if out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains(g["policy"].as_str().unwrap())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no flow of the grant: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let grants = json(&site.wardctl(0, &["vendor", "grants", "-o", "json"]));
    assert_eq!(grants[0]["state"], "expired", "{grants}");
    // The evidence report lists the grant and what the vendor did.
    let report = site.dir.join("report.html");
    let out = site.wardctl(
        0,
        &["report", "--since", "1h", "--out", report.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let page = std::fs::read_to_string(&report).unwrap();
    let section = page
        .split("id=\"vendors\"")
        .nth(1)
        .expect("a vendors section");
    assert!(section.contains(g["id"].as_str().unwrap()), "{section}");
    assert!(section.contains("CHG-4410"), "{section}");
    assert!(
        section.contains(&format!("{} → {}/22", ext.v4, pump.v4)),
        "{section}"
    );
}

#[test]
#[ignore = "needs root (network namespaces, eBPF): run via cargo xtask test"]
fn privileged_promotion_is_refused_over_a_critical_flow_until_the_recommendation_allows_it() {
    require_root();
    let mut site = Site::new();
    let (routed, agent) = managed_gateway(&mut site);
    let enforced = vendor_site();
    let monitored = enforced.replace(
        "metadata: {name: ws}\nspec: {cidrs: [\"198.18.20.0/24\", \"2001:db8:20::/64\"]}",
        "metadata: {name: ws}\nspec: {cidrs: [\"198.18.20.0/24\", \"2001:db8:20::/64\"], mode: monitor}",
    );
    assert_ne!(monitored, enforced);
    let revision = site.apply(0, &monitored);
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    let (ws, pump, ehr) = (routed.host("ws"), routed.host("pump"), routed.host("ehr"));
    // Monitor mode: these pass, audited.
    assert!(ws.ns.tcp_ok(pump.v4, 443) && ws.ns.udp_ok(pump.v4, 5000));
    assert!(ws.ns.tcp_ok(ehr.v4, 443) && ws.ns.tcp_ok(ehr.v4, 8080));

    // Wait for the records to reach the control plane.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = site.wardctl(0, &["observe", "--verdict", "audited", "--since", "5m"]);
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        if lines >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "audited records: {}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }

    // The simulation of enforcing names the flows it would drop.
    let enforce = site.dir.join("enforce.yaml");
    std::fs::write(&enforce, &enforced).unwrap();
    let d = json(&site.wardctl(
        0,
        &[
            "diff",
            "-f",
            enforce.to_str().unwrap(),
            "--against-flows",
            "1h",
            "-o",
            "json",
        ],
    ));
    let changes = d["changes"].as_array().unwrap();
    assert!(
        changes.iter().any(|c| c["from"] == "ws"
            && c["to"] == "pump"
            && c["port"] == 443
            && c["before"] == "audited"
            && c["after"] == "dropped"),
        "{d}"
    );

    // Promotion is refused: ws -> pump is critical (the pump is).
    let out = site.wardctl(0, &["promote", "ws", "--days", "1"]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    assert!(
        text(&out).contains("segment pump is critical"),
        "{}",
        text(&out)
    );
    let out = site.wardctl(0, &["promote", "ehr"]);
    assert!(
        text(&out).contains("is not in monitor mode"),
        "{}",
        text(&out)
    );
    let out = site.wardctl(0, &["promote", "pumps"]);
    assert!(
        text(&out).contains("no segment \"pumps\""),
        "{}",
        text(&out)
    );
    assert_eq!(site.status(0)["revision"], revision, "nothing written");

    // The recommendation allows exactly what was observed; applied, the
    // promotion goes through and the flows still pass, enforced.
    let draft = site.dir.join("draft.yaml");
    let out = site.wardctl(
        0,
        &[
            "recommend",
            "--segment",
            "ws",
            "--since",
            "1h",
            "--out",
            draft.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let yaml = std::fs::read_to_string(&draft).unwrap();
    for expected in [
        "ws-to-pump-tcp-443",
        "ws-to-pump-udp-5000",
        "ws-to-ehr-tcp-443",
        "ws-to-ehr-tcp-8080",
    ] {
        assert!(yaml.contains(expected), "{expected} in\n{yaml}");
    }
    let out = site.wardctl(0, &["apply", "-f", draft.to_str().unwrap(), "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let p = json(&site.wardctl(0, &["promote", "ws", "--days", "1", "-o", "json"]));
    let promoted = p["revision"].as_u64().unwrap();
    assert!(promoted > 0, "{p}");
    site.wait_acked(0, &[&agent.node], promoted, Duration::from_secs(10));
    assert!(ws.ns.tcp_ok(pump.v4, 443) && ws.ns.udp_ok(pump.v4, 5000));
    assert!(ws.ns.tcp_ok(ehr.v4, 443) && ws.ns.tcp_ok(ehr.v4, 8080));
    assert!(
        !ws.ns.tcp_ok(ehr.v4, 22),
        "never observed: dropped, enforced"
    );
    let history = text(&site.wardctl(0, &["history"]));
    assert!(history.contains("PROMOTE ws"), "{history}");
}

/// Segments of the VLAN bridge with a second access VLAN, the quarantined
/// pump (198.18.30.10, from `pumps`) keeping udp/5000 to the pump server,
/// and the groups pumps announce themselves to: WS-Discovery's multicast
/// groups and the pump server subnet's broadcast address.
fn quarantined_pump_site() -> String {
    format!(
        "{}---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: vlan40}}\nspec: {{cidrs: [\"198.18.40.0/24\", \"2001:db8:40::/64\"], vlans: [40]}}\n\
         ---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: quarantine-1}}\nspec: {{cidrs: [\"198.18.30.10/32\"], quarantine: {{origin: pumps}}}}\n\
         ---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: discovery}}\nspec: {{cidrs: [\"239.255.255.250/32\", \"ff02::c/128\", \"198.18.42.255/32\"]}}\n{}{}{}",
        wardline_tests::scenarios::VLAN_SEGMENTS,
        policy(
            "quarantine-1-keep-0",
            "allow",
            "quarantine-1",
            "pump-server",
            "[{protocol: udp, port: 5000}]"
        ),
        policy(
            "pumps-announce",
            "allow",
            "pumps",
            "discovery",
            "[{protocol: udp, port: 3702}]"
        ),
        policy("anything-to-world", "allow", "any", "world", ""),
    )
}

/// Attack: the pump 198.18.30.10 is quarantined, keeping only its
/// telemetry (udp/5000 to the pump server), on its own VLAN 30. A host on
/// access VLAN 40 sends that telemetry with the pump's address, tagged 40,
/// to have forged readings taken as the pump's. And `any -> world` must
/// not reach the quarantined pump.
///
/// Expected: the genuine telemetry arrives (VLAN 30 is its origin's); the
/// forged copy from VLAN 40 is dropped as a spoofed source; the pump's
/// tcp/8080 to an outside address (allowed `any -> world`) does not pass.
#[test]
#[ignore = "needs root (network namespaces, eBPF): run via cargo xtask test"]
fn attack_a_quarantined_device_s_kept_flow_forged_from_another_vlan() {
    require_root();
    let topo = topology::vlan_bridge_with_second_vlan();
    let _agent = Agent::start(
        topo.agent_ns(),
        &topo.interfaces(),
        &quarantined_pump_site(),
    );
    let (pump, server, attacker) = (
        topo.host("pump"),
        topo.host("pump-server"),
        topo.host("vlan40"),
    );
    let server_mac = wardline_tests::forge::mac_of(&server.ns, "eth0");
    let telemetry = wardline_tests::forge::Forged::udp(
        std::net::SocketAddr::new(pump.v4, 40_001),
        std::net::SocketAddr::new(server.v4, 5000),
    );
    assert!(
        pump.ns
            .forge_and_count("eth0", &server_mac, &telemetry, &server.ns, "eth0", Some(1))
            > 0,
        "the quarantined pump's own telemetry, on VLAN 30, must pass"
    );
    let forged =
        attacker
            .ns
            .forge_and_count("eth0", &server_mac, &telemetry, &server.ns, "eth0", None);
    assert_eq!(
        forged, 0,
        "{forged} copies of the pump's telemetry forged from VLAN 40 reached the pump server"
    );
    let web = wardline_tests::forge::Forged::tcp(
        std::net::SocketAddr::new(pump.v4, 40_002),
        std::net::SocketAddr::new(server.v4, 443),
    );
    assert_eq!(
        pump.ns
            .forge_and_count("eth0", &server_mac, &web, &server.ns, "eth0", None),
        0,
        "the quarantined pump reached the pump server beyond its keep-profile"
    );
}

/// Multicast and broadcast clinical traffic on the VLAN bridge: a pump's
/// WS-Discovery probe to 239.255.255.250 (IPv4) and ff02::c (IPv6) UDP
/// 3702, and its announcement to the pump server subnet's broadcast
/// address, pass by policy like any other; another port to the same groups
/// is dropped; and a "reply" from the group's address to the probe's
/// source port is judged as a new connection (no reply tracking for
/// groups) and dropped.
#[test]
#[ignore = "needs root (network namespaces, eBPF): run via cargo xtask test"]
fn privileged_multicast_and_broadcast_are_enforced_without_reply_tracking() {
    require_root();
    let topo = topology::vlan_bridge_with_second_vlan();
    // Without `any -> world`: the pump below is `world` by its address.
    let site = quarantined_pump_site().replace(
        &policy("anything-to-world", "allow", "any", "world", ""),
        "",
    );
    let agent = Agent::start(topo.agent_ns(), &topo.interfaces(), &site);
    // A pump by its VLAN (30), its address in no segment: 198.18.30.10 is
    // quarantined here.
    let (pump, server) = (topo.host("vlan-only"), topo.host("pump-server"));
    let (v4, v6) = (pump.v4.to_string(), pump.v6.to_string());
    let sock = |ip: &str, port| std::net::SocketAddr::new(ip.parse().unwrap(), port);
    for (src, group, mac) in [
        (v4.as_str(), "239.255.255.250", "01:00:5e:7f:ff:fa"),
        (v6.as_str(), "ff02::c", "33:33:00:00:00:0c"),
        (v4.as_str(), "198.18.42.255", "ff:ff:ff:ff:ff:ff"),
    ] {
        let probe = wardline_tests::forge::Forged::udp(sock(src, 40_100), sock(group, 3702));
        assert!(
            pump.ns
                .forge_and_count("eth0", mac, &probe, &server.ns, "eth0", Some(1))
                > 0,
            "{src} -> {group} udp/3702 is allowed and must pass"
        );
        let other = wardline_tests::forge::Forged::udp(sock(src, 40_101), sock(group, 3703));
        assert_eq!(
            pump.ns
                .forge_and_count("eth0", mac, &other, &server.ns, "eth0", None),
            0,
            "{src} -> {group} udp/3703 is allowed by no policy"
        );
        // A reply from the group to the probe's port, sent from the core
        // side where the group's frames went: a new connection from
        // `discovery` to `pumps`, which no policy allows.
        let pump_mac = wardline_tests::forge::mac_of(&pump.ns, "eth0");
        let reply = wardline_tests::forge::Forged::udp(sock(group, 3702), sock(src, 40_100));
        let leaked = server
            .ns
            .forge_and_count("eth0", &pump_mac, &reply, &pump.ns, "eth0", None);
        assert_eq!(
            leaked, 0,
            "{leaked} replies from {group} reached the pump as part of its probe"
        );
    }
    let status = agent.status_json(topo.agent_ns());
    assert!(status["ready"] == true, "{status}");
}
