//! The hospital lab: a small hospital in network namespaces. A control plane
//! (embedded store) on a management network holds `examples/hospital.yaml`,
//! applied with `wardctl`; a managed agent on the gateway enforces it.
//! Example traffic includes a blocked lateral-movement attempt, then the
//! compromised workstation is quarantined with `wardctl quarantine`; with
//! roles bound, two-person changes, break-glass, a pump quarantined keeping
//! its telemetry, a vendor window closing on time, a promotion refused for
//! a critical flow, a recommendation, and the auditors' report.
//! `cargo xtask lab` runs it.
//!
//! ```text
//!  pump-1  pump-2  ct-scanner  rogue         (VLAN 30, 30, 44, 30)
//!     \      |       |         /
//!      [ emulated access switch ]  tags each device's frames
//!        | trunk ports (802.1Q)
//!   [ bridge gateway "gw": wardline-agent on every port ]
//!        | untagged ports
//!   workstation  ehr  pacs  pump-server  mgmt  vendor
//! ```

use std::net::IpAddr;
use std::time::Duration;

use wardline_agent::emulation::{AccessSwitch, PortPair};

use crate::agent::Agent;
use crate::link::{bridge, link_up, veth};
use crate::netns::Netns;
use crate::probe::ServerHandle;
use crate::site::{REPLICAS, Site};

/// The policy the lab enforces.
pub const POLICY: &str = include_str!("../../examples/hospital.yaml");

struct Device {
    name: &'static str,
    addr: &'static str,
    /// The VLAN its access port tags with; 0 for an untagged host.
    vlan: u16,
    ns: Netns,
    _server: Option<ServerHandle>,
}

/// One example connection and what the hospital expects of it.
struct Flow {
    from: &'static str,
    to: &'static str,
    proto: &'static str,
    port: u16,
    story: &'static str,
}

const DEVICES: [(&str, &str, u16); 10] = [
    ("pump-1", "198.18.30.11", 30),
    ("pump-2", "198.18.30.12", 30),
    ("ct-scanner", "198.18.44.20", 44),
    ("rogue", "198.18.41.66", 30),
    ("workstation", "198.18.20.10", 0),
    ("ehr", "198.18.41.10", 0),
    ("pacs", "198.18.40.10", 0),
    ("pump-server", "198.18.42.10", 0),
    ("mgmt", "198.18.250.10", 0),
    ("vendor", "203.0.113.50", 0),
];

const FLOWS: [Flow; 13] = [
    Flow {
        from: "pump-1",
        to: "pump-server",
        proto: "tcp",
        port: 443,
        story: "a pump fetches its drug library",
    },
    Flow {
        from: "pump-1",
        to: "pump-server",
        proto: "udp",
        port: 5000,
        story: "a pump streams its status",
    },
    Flow {
        from: "workstation",
        to: "ehr",
        proto: "tcp",
        port: 443,
        story: "a clinician opens the EHR",
    },
    Flow {
        from: "workstation",
        to: "pacs",
        proto: "tcp",
        port: 104,
        story: "a clinician pulls a study (DICOM)",
    },
    Flow {
        from: "ct-scanner",
        to: "pacs",
        proto: "tcp",
        port: 104,
        story: "the CT scanner stores a study",
    },
    Flow {
        from: "ct-scanner",
        to: "ehr",
        proto: "tcp",
        port: 443,
        story: "the CT scanner, still in monitor mode, reaches the EHR",
    },
    Flow {
        from: "workstation",
        to: "pump-1",
        proto: "tcp",
        port: 22,
        story: "LATERAL MOVEMENT: a phished workstation tries SSH on a pump",
    },
    Flow {
        from: "workstation",
        to: "pump-1",
        proto: "tcp",
        port: 443,
        story: "LATERAL MOVEMENT: ... and the pump's web interface",
    },
    Flow {
        from: "pump-1",
        to: "pump-2",
        proto: "tcp",
        port: 22,
        story: "pump to pump",
    },
    Flow {
        from: "pump-1",
        to: "ehr",
        proto: "tcp",
        port: 443,
        story: "a pump goes straight to the EHR",
    },
    Flow {
        from: "mgmt",
        to: "pump-1",
        proto: "tcp",
        port: 22,
        story: "a biomedical engineer logs in to a pump",
    },
    Flow {
        from: "vendor",
        to: "pump-server",
        proto: "tcp",
        port: 443,
        story: "the vendor, outside its maintenance window",
    },
    Flow {
        from: "rogue",
        to: "pump-server",
        proto: "tcp",
        port: 443,
        story: "a device on the pump VLAN claims an EHR address",
    },
];

/// Builds the hospital, runs the traffic, prints each flow's verdict and
/// the policy that decided it. With `hold`, keeps everything up until
/// SIGINT or SIGTERM so that an operator can explore; everything is
/// removed on return.
pub fn run(hold: bool) -> anyhow::Result<()> {
    crate::require_root();
    crate::quiet_probes();
    if hold {
        // Blocked before any thread or child exists, so that the signal
        // reaches `wait_for_signal` and the lab is removed in order.
        signals().thread_block()?;
    }
    println!("Building the hospital: 10 hosts, an 802.1Q access switch, a bridge gateway...");
    let gw = Netns::new("lab-gw");
    let sw = Netns::new("lab-sw");
    let mut devices: Vec<Device> = DEVICES
        .iter()
        .map(|(name, addr, vlan)| Device {
            name,
            addr,
            vlan: *vlan,
            ns: Netns::new(&format!("lab-{name}")),
            _server: None,
        })
        .collect();
    let mut bridge_ports = Vec::new();
    let mut pairs = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        if d.vlan != 0 {
            let (access, trunk) = (format!("a{i}"), format!("t{i}"));
            veth(&sw, &access, &d.ns, "eth0");
            veth(&sw, &trunk, &gw, &trunk);
            link_up(&sw, &access);
            link_up(&sw, &trunk);
            pairs.push(PortPair {
                access,
                trunk: trunk.clone(),
                vid: d.vlan,
            });
            bridge_ports.push(trunk);
        } else {
            let port = format!("p{i}");
            veth(&gw, &port, &d.ns, "eth0");
            bridge_ports.push(port);
        }
    }
    let mut switches = vec![sw.run_in(move || AccessSwitch::attach(&pairs))?];
    for d in devices.iter().filter(|d| d.vlan == 0) {
        switches.push(d.ns.run_in(|| AccessSwitch::untag("eth0"))?);
    }
    let refs: Vec<&str> = bridge_ports.iter().map(String::as_str).collect();
    bridge(&gw, "br0", &refs);
    for d in devices.iter_mut() {
        d.ns.ip(["addr", "add", &format!("{}/24", d.addr), "dev", "eth0"]);
        d.ns.ip(["link", "set", "eth0", "up"]);
        for r in ["198.18.0.0/15", "203.0.113.0/24"] {
            d.ns.ip(["route", "replace", r, "dev", "eth0"]);
        }
        d._server = Some(d.ns.serve(&[22, 104, 443, 2575], &[5000]));
    }

    println!("Starting the control plane (embedded store) on the management network...");
    let mut site = Site::new();
    let (dashboard, metrics) = (
        format!("{}:{DASHBOARD_PORT}", REPLICAS[0]),
        format!("{}:{METRICS_PORT}", REPLICAS[0]),
    );
    site.replica_flags.extend([
        "--dashboard-address".to_owned(),
        dashboard.clone(),
        "--metrics-address".to_owned(),
        metrics.clone(),
    ]);
    // Held, the dashboard is reached from this machine (`Forward`), and
    // its sign-in links say so.
    let forward = if hold { Some(Forward::bind()?) } else { None };
    let dashboard_url = match &forward {
        Some(f) => format!("https://127.0.0.1:{}", f.port()),
        None => format!("https://{dashboard}"),
    };
    site.replica_flags
        .extend(["--dashboard-url".to_owned(), dashboard_url.clone()]);
    site.start_replica(0, &site.embedded_store());
    let gateway_address = site.connect(&gw);
    println!(
        "Starting wardline-agent (managed) on the gateway's {} bridge ports...",
        refs.len()
    );
    let agent = Agent::start_managed(
        &gw,
        &refs,
        &site,
        "{role: gateway, site: main}",
        &[Site::endpoint(0)],
    );
    println!("$ wardctl apply -f examples/hospital.yaml  (and the gateway's Node document)");
    // The gateway is the operators' to name: declared, not pending.
    let gateway = format!(
        "---\napiVersion: wardline/v1\nkind: Node\nmetadata:\n  name: {}\n  labels: {{role: gateway, site: main}}\nspec:\n  addresses: [\"{gateway_address}/32\"]\n",
        agent.node
    );
    let revision = site.apply(0, &format!("{POLICY}{gateway}"));
    let took = site.wait_acked(0, &[agent.node.as_str()], revision, Duration::from_secs(10));
    agent.wait_ready(&gw, Duration::from_secs(5));
    println!(
        "revision {revision} applied; the gateway acknowledged it {} ms later.",
        took.as_millis()
    );
    println!("$ wardctl status");
    print!(
        "{}",
        String::from_utf8_lossy(&site.wardctl(0, &["status"]).stdout)
    );
    println!();

    let addr_of = |name: &str| -> IpAddr {
        DEVICES
            .iter()
            .find(|d| d.0 == name)
            .map(|d| d.1.parse().expect("address"))
            .expect("device")
    };
    let ns_of = |name: &str| &devices.iter().find(|d| d.name == name).expect("device").ns;
    println!(
        "{:<9} {:<34} {:<9} {:<30} story",
        "VERDICT", "connection", "service", "decided by"
    );
    let mut blocked_lateral = false;
    for f in &FLOWS {
        let to = addr_of(f.to);
        let ok = match f.proto {
            "tcp" => ns_of(f.from).tcp_ok(to, f.port),
            _ => ns_of(f.from).udp_ok(to, f.port),
        };
        std::thread::sleep(Duration::from_millis(150));
        let from = addr_of(f.from).to_string();
        let to_s = to.to_string();
        let event = agent.flows().into_iter().rev().find(|e| {
            e["dst"] == to_s.as_str()
                && e["dport"] == f.port
                && e["protocol"] == f.proto
                && (e["src"] == from.as_str())
                && e["kind"] != "close"
        });
        let (verdict, decided) = match &event {
            Some(e) => (
                e["verdict"].as_str().unwrap_or("?").to_uppercase(),
                match e["policy"].as_str() {
                    Some(p) => format!("policy {p}"),
                    None => e["reason"].as_str().unwrap_or("?").to_owned(),
                },
            ),
            None => ("?".to_owned(), "no event".to_owned()),
        };
        if f.story.starts_with("LATERAL") && !ok && verdict == "DROPPED" {
            blocked_lateral = true;
        }
        println!(
            "{:<9} {:<34} {:<9} {:<30} {}{}",
            verdict,
            format!("{} -> {}", f.from, f.to),
            format!("{}/{}", f.proto, f.port),
            decided,
            f.story,
            if ok { "" } else { " [no answer]" }
        );
    }
    anyhow::ensure!(
        blocked_lateral,
        "the lateral-movement attempt was not blocked"
    );
    println!("\nThe lateral-movement attempt from the workstation to the pump was dropped.");

    // The workstation is compromised: quarantine it, fleet-wide, at once.
    let args = [
        "quarantine",
        "198.18.20.10",
        "--reason",
        "IR-2291: workstation beaconing",
        "-o",
        "json",
    ];
    println!(
        "\nQuarantining the compromised workstation:\n$ wardctl {}",
        args[..4].join(" ")
    );
    let started = std::time::Instant::now();
    let out = site.wardctl(0, &args);
    anyhow::ensure!(
        out.status.success(),
        "wardctl quarantine: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let quarantine: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let revision = quarantine["revision"].as_u64().unwrap_or(0);
    site.wait_acked(0, &[agent.node.as_str()], revision, Duration::from_secs(10));
    println!(
        "quarantine {} (revision {revision}) enforced on the gateway {} ms after the command.",
        quarantine["id"].as_str().unwrap_or("?"),
        started.elapsed().as_millis()
    );
    let ehr = addr_of("ehr");
    let before = ns_of("workstation").tcp_ok(ehr, 443);
    println!(
        "workstation -> ehr tcp/443: {}",
        if before {
            "still open (unexpected)"
        } else {
            "DROPPED: quarantined"
        }
    );
    anyhow::ensure!(!before, "the quarantine did not take effect");
    println!("$ wardctl history");
    print!(
        "{}",
        String::from_utf8_lossy(&site.wardctl(0, &["history"]).stdout)
    );

    // What the control plane gathered from the gateway's flow records.
    let observe = [
        "observe",
        "--from",
        "198.18.20.10",
        "--verdict",
        "dropped",
        "--since",
        "5m",
    ];
    let observed = wait_for_output(&site, &observe, "deny-workstations-to-devices");
    println!("\n$ wardctl {}\n{observed}", observe.join(" "));
    let new = ["inventory", "--new"];
    println!(
        "$ wardctl {}\n{}",
        new.join(" "),
        wait_for_output(&site, &new, "NEW")
    );

    governance(
        &site,
        &agent,
        &devices,
        ns_of("vendor"),
        addr_of("pump-server"),
    )?;

    let status = agent.status_json(&gw);
    println!(
        "\nCounters: {} packets allowed, {} audited, {} dropped. Flow log: {}",
        status["counters"]["allowed"],
        status["counters"]["audited"],
        status["counters"]["dropped"],
        agent.dir.join("flows.jsonl").display()
    );

    if let Some(f) = forward {
        f.start(&site.ns, dashboard.parse()?)?;
    }
    let login = site.wardctl(0, &["dashboard", "login"]);
    anyhow::ensure!(
        login.status.success(),
        "wardctl dashboard login: {}",
        String::from_utf8_lossy(&login.stderr)
    );
    println!(
        "\nDashboard: {dashboard_url}/  (site CA: {})\n$ wardctl dashboard login\n{}Metrics: http://{metrics}/metrics (in the management network)",
        site.ca().display(),
        String::from_utf8_lossy(&login.stdout)
    );

    if hold {
        println!(
            "\nThe lab stays up. Open the link above in a browser on this machine within a minute\n(import the site CA to trust it), or get a new one with:\n  ip netns exec {} wardctl --endpoint {} --ca {} --cert {} --key {} dashboard login",
            site.ns.name(),
            Site::endpoint(0),
            site.ca().display(),
            site.dir.join("ops.pem").display(),
            site.dir.join("ops-key.pem").display()
        );
        println!("Enter a host with:");
        for d in &devices {
            println!(
                "  ip netns exec {} bash    # {} {}",
                d.ns.name(),
                d.name,
                d.addr
            );
        }
        println!(
            "The agent's status endpoint: ip netns exec {} wget -qO- http://127.0.0.1:9464/status\nCtrl-C ends the lab and removes everything.",
            gw.name()
        );
        wait_for_signal();
    }
    println!("Removing the lab...");
    drop(agent);
    drop(site);
    drop(switches);
    Ok(())
}

/// The site's roles: ops administers and operates, carol approves, bob
/// holds break-glass, audra audits; pumps and monitors (zone clinical)
/// are critical.
const ROLES: &str = "apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: site-admins}
spec: {role: admin, users: [ops]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: netops}
spec: {role: operator, users: [ops]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: change-board}
spec: {role: approver, users: [carol]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: emergency}
spec: {role: break-glass, users: [bob]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: compliance}
spec: {role: auditor, users: [audra]}
---
apiVersion: wardline/v1
kind: ChangeControl
metadata: {name: site}
spec:
  criticalSegments: {matchLabels: {zone: clinical}}
";

/// `wardctl ARGS` as `who`, printed with its output; fails the lab
/// unless it ends as `succeed` says.
fn show(site: &Site, who: &str, args: &[&str], succeed: bool) -> anyhow::Result<String> {
    println!("{who}$ wardctl {}", args.join(" "));
    let out = site.wardctl_as(who, 0, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    anyhow::ensure!(
        out.status.success() == succeed,
        "wardctl {} as {who} {}",
        args.join(" "),
        if succeed { "failed" } else { "was not refused" }
    );
    Ok(text)
}

/// Roles and a second factor, a two-person change (one rejected for the
/// clinical flow it would stop, one approved), a break-glass grant that
/// the kernel closes on time, and the auditors' report.
fn governance(
    site: &Site,
    agent: &Agent,
    devices: &[Device],
    vendor: &Netns,
    pump_server: IpAddr,
) -> anyhow::Result<()> {
    println!("\nGovernance. Binding roles ends set-up mode:");
    for who in ["carol", "bob", "audra"] {
        site.issue("operator", who);
    }
    let roles = site.dir.join("roles.yaml");
    std::fs::write(&roles, ROLES)?;
    show(
        site,
        "ops",
        &[
            "apply",
            "-f",
            &roles.display().to_string(),
            "-m",
            "CHG-1200: roles for go-live",
        ],
        true,
    )?;
    println!("From now on every change needs a second factor:");
    show(
        site,
        "ops",
        &["delete", "policy", "pumps-to-pump-server"],
        false,
    )?;
    for who in ["ops", "carol", "bob", "audra"] {
        site.mfa_login(who, 0);
    }
    println!("(ops, carol, bob and audra each ran `wardctl mfa enroll` and `wardctl login`)");
    println!("\nA change that would stop a critical flow needs a second person:");
    show(
        site,
        "ops",
        &["delete", "policy", "pumps-to-pump-server"],
        false,
    )?;
    let proposed = show(
        site,
        "ops",
        &[
            "propose",
            "--delete",
            "policy/pumps-to-pump-server",
            "-m",
            "CHG-1201: retire the old pump server",
        ],
        true,
    )?;
    let id = |text: &str| {
        text.lines()
            .find_map(|l| {
                l.strip_prefix("change request ")
                    .and_then(|r| r.split(' ').next())
            })
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no change request id in {text}"))
    };
    let first = id(&proposed)?;
    show(
        site,
        "carol",
        &[
            "reject",
            &first,
            "--note",
            "it would stop the pumps' drug-library downloads",
        ],
        true,
    )?;
    let proposed = show(
        site,
        "ops",
        &[
            "propose",
            "--delete",
            "policy/workstations-to-central-station",
            "-m",
            "CHG-1202: ward screens moved to the EHR",
        ],
        true,
    )?;
    let second = id(&proposed)?;
    let approved = show(
        site,
        "carol",
        &[
            "approve",
            &second,
            "--note",
            "no flows of the last week use it",
        ],
        true,
    )?;
    let revision: u64 = approved
        .rsplit("applied as revision ")
        .next()
        .and_then(|r| r.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no revision in {approved}"))?;
    site.wait_acked(0, &[agent.node.as_str()], revision, Duration::from_secs(10));

    println!("\nBreak-glass: the vendor is needed now, outside its window:");
    let before = vendor.tcp_ok(pump_server, 443);
    println!(
        "vendor -> pump-server tcp/443: {}",
        if before {
            "open (unexpected)"
        } else {
            "DROPPED"
        }
    );
    let grant = show(
        site,
        "bob",
        &[
            "break-glass",
            "--from",
            "vendor-support",
            "--to",
            "pump-server",
            "--ports",
            "tcp/443",
            "--for",
            "1m",
            "--reason",
            "drug-library server down during a code blue; vendor on the phone",
        ],
        true,
    )?;
    let grant_id = grant
        .split_whitespace()
        .find(|w| w.starts_with("bg-"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no grant id in {grant}"))?;
    let revision: u64 = grant
        .split("revision ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no revision in {grant}"))?;
    site.wait_acked(0, &[agent.node.as_str()], revision, Duration::from_secs(10));
    let during = vendor.tcp_ok(pump_server, 443);
    println!(
        "vendor -> pump-server tcp/443: {}",
        if during {
            "OPEN (break-glass)"
        } else {
            "dropped (unexpected)"
        }
    );
    anyhow::ensure!(during, "the break-glass grant did not open");
    println!(
        "(the SIEM received the grant as an alert; waiting for it to end on its own, in the kernel...)"
    );
    std::thread::sleep(Duration::from_secs(61));
    let after = vendor.tcp_ok(pump_server, 443);
    println!(
        "vendor -> pump-server tcp/443: {}",
        if after {
            "still open (unexpected)"
        } else {
            "DROPPED: the grant ended on time"
        }
    );
    anyhow::ensure!(!after, "the break-glass grant did not close");
    show(
        site,
        "carol",
        &[
            "review",
            &grant_id,
            "--note",
            "vendor restarted the service; call recorded",
        ],
        true,
    )?;
    clinical(site, agent, devices)?;
    show(site, "audra", &["attest", &agent.node], true)?;
    show(site, "audra", &["history", "--limit", "6"], true)?;

    let dir = std::env::current_dir()?.join("target/lab");
    std::fs::create_dir_all(&dir)?;
    let (html, pdf) = (dir.join("report.html"), dir.join("report.pdf"));
    show(
        site,
        "audra",
        &[
            "report",
            "--since",
            "1h",
            "--out",
            &html.display().to_string(),
            "--pdf",
            &pdf.display().to_string(),
        ],
        true,
    )?;
    Ok(())
}

/// The clinical operations, with roles bound: a pump quarantined keeping
/// its telemetry and released, a vendor window the kernel closes on time,
/// a promotion refused for the critical flow it would drop, and the draft
/// policy recommended from what the CT scanner was seen doing.
fn clinical(site: &Site, agent: &Agent, devices: &[Device]) -> anyhow::Result<()> {
    let device = |name: &str| devices.iter().find(|d| d.name == name).expect("device");
    let ip = |name: &str| -> IpAddr { device(name).addr.parse().expect("address") };
    let said = |ok: bool, yes: &str, no: &str| if ok { yes.to_owned() } else { no.to_owned() };
    let revision_of = |text: &str| -> anyhow::Result<u64> {
        text.split("revision ")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no revision in {text}"))
    };
    let (pump, server) = (&device("pump-1").ns, ip("pump-server"));

    println!(
        "\nClinical operations. pump-1 fails its firmware check: quarantine it, keeping its telemetry:"
    );
    let q = show(
        site,
        "ops",
        &[
            "quarantine",
            "198.18.30.11",
            "--reason",
            "IR-2292: firmware integrity check failed",
            "--keep",
            "pump-telemetry",
        ],
        true,
    )?;
    site.wait_acked(
        0,
        &[agent.node.as_str()],
        revision_of(&q)?,
        Duration::from_secs(10),
    );
    let (library, telemetry) = (pump.tcp_ok(server, 443), pump.udp_ok(server, 5000));
    println!(
        "pump-1 -> pump-server tcp/443 (drug library): {}\npump-1 -> pump-server udp/5000 (status, its keep-profile): {}",
        said(library, "open (unexpected)", "DROPPED: quarantined"),
        said(telemetry, "STILL FLOWING: kept", "dropped (unexpected)")
    );
    anyhow::ensure!(
        !library && telemetry,
        "the quarantine did not keep exactly the telemetry"
    );
    show(site, "ops", &["status"], true)?;
    let id = q
        .split_whitespace()
        .find(|w| w.starts_with("q-"))
        .ok_or_else(|| anyhow::anyhow!("no quarantine id in {q}"))?
        .to_owned();
    let released = show(
        site,
        "ops",
        &[
            "release",
            &id,
            "--reason",
            "reflashed by biomed, IR-2292 closed",
        ],
        true,
    )?;
    let revision = released
        .split("in revision ")
        .last()
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    site.wait_acked(0, &[agent.node.as_str()], revision, Duration::from_secs(10));
    println!(
        "pump-1 -> pump-server tcp/443: {}",
        said(
            pump.tcp_ok(server, 443),
            "open again",
            "dropped (unexpected)"
        )
    );

    println!("\nA vendor window: the pump vendor for 20 seconds, against a change ticket:");
    let vendor = &device("vendor").ns;
    let grant = show(
        site,
        "ops",
        &[
            "vendor",
            "grant",
            "pump-vendor",
            "--to",
            "pump-server",
            "--ports",
            "tcp/443",
            "--until",
            "20s",
            "--ticket",
            "CHG-1300",
        ],
        true,
    )?;
    site.wait_acked(
        0,
        &[agent.node.as_str()],
        revision_of(&grant)?,
        Duration::from_secs(10),
    );
    let open = vendor.tcp_ok(server, 443);
    println!(
        "vendor -> pump-server tcp/443: {}",
        said(open, "OPEN (vendor grant)", "dropped (unexpected)")
    );
    anyhow::ensure!(open, "the vendor grant did not open");
    println!("(waiting for the window to end, in the kernel...)");
    std::thread::sleep(Duration::from_secs(21));
    let after = vendor.tcp_ok(server, 443);
    println!(
        "vendor -> pump-server tcp/443: {}",
        said(
            after,
            "still open (unexpected)",
            "DROPPED: the window ended on time"
        )
    );
    anyhow::ensure!(!after, "the vendor grant did not close");
    let grant_id = grant
        .split_whitespace()
        .find(|w| w.starts_with("vg-"))
        .ok_or_else(|| anyhow::anyhow!("no grant id in {grant}"))?
        .to_owned();
    println!("$ wardctl vendor flows {grant_id}");
    print!(
        "{}",
        wait_for_output(site, &["vendor", "flows", &grant_id], "vendor-grant-")
    );

    println!("\nThe CT scanner's segment, in monitor mode, is not ready for enforce:");
    show(
        site,
        "ops",
        &["promote", "imaging-modalities", "--days", "1"],
        false,
    )?;
    println!("\nWhat it was seen doing, as draft policy for the change board:");
    let out = site.wardctl_as(
        "ops",
        0,
        &[
            "recommend",
            "--segment",
            "imaging-modalities",
            "--since",
            "1h",
        ],
    );
    let draft = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("ops$ wardctl recommend --segment imaging-modalities --since 1h\n{draft}");
    anyhow::ensure!(
        draft.contains("imaging-modalities-to-ehr-tcp-443"),
        "the recommendation lacks the scanner's EHR flow: {draft}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Where the replica serves its dashboard and metrics.
const DASHBOARD_PORT: u16 = 8443;
const METRICS_PORT: u16 = 9465;

/// `wardctl ARGS`' output once it contains `needle` (the gateway's
/// records reach the control plane in batches), or as it is after 10 s.
fn wait_for_output(site: &Site, args: &[&str], needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let out = site.wardctl(0, args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains(needle) || start.elapsed() > Duration::from_secs(10) {
            return text;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// This machine's 127.0.0.1:PORT carried to the dashboard inside the
/// management network's namespace, so that a browser here reaches it
/// without the lab touching this machine's own addresses or routes: each
/// connection accepted is dialled anew from inside the namespace (a socket
/// stays in the namespace it was made in) and the bytes copied both ways.
/// TLS runs end to end between the browser and the replica.
struct Forward {
    listener: std::net::TcpListener,
}

impl Forward {
    fn bind() -> anyhow::Result<Forward> {
        Ok(Forward {
            listener: std::net::TcpListener::bind("127.0.0.1:0")?,
        })
    }

    fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Serves on its own threads until the process ends.
    fn start(self, ns: &Netns, to: std::net::SocketAddr) -> anyhow::Result<()> {
        let netns = std::sync::Arc::new(std::fs::File::open(ns.path())?);
        std::thread::spawn(move || {
            for client in self.listener.incoming().flatten() {
                let netns = netns.clone();
                std::thread::spawn(move || {
                    let dialled = nix::sched::setns(&*netns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .ok()
                        .and_then(|()| {
                            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)).ok()
                        });
                    let Some(server) = dialled else { return };
                    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                        return;
                    };
                    let up = std::thread::spawn(move || {
                        let _ = std::io::copy(&mut c2, &mut s2);
                        let _ = s2.shutdown(std::net::Shutdown::Write);
                    });
                    let (mut client, mut server) = (client, server);
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        Ok(())
    }
}

fn signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Blocks until SIGINT or SIGTERM arrives.
fn wait_for_signal() {
    let _ = signals().wait();
}
