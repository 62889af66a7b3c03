//! Break-glass against the real kernel: emergency access opened by one
//! person with the break-glass role and a second factor passes traffic at
//! once, reaches the SIEM as an alert before anything else is done, and
//! closes on time in the kernel while the control plane is down; the
//! review is signed off by another person afterwards; the auditor's
//! report shows it all, rendered by headless Chromium (screenshot of its
//! first page in `target/report/`).

use std::time::{Duration, Instant};

use wardline_tests::agent::managed_gateway;
use wardline_tests::browser::Browser;
use wardline_tests::docs::policy;
use wardline_tests::matrix::{Cell, Family, Service, probe_cells};
use wardline_tests::require_root;
use wardline_tests::site::Site;

const SITE: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: ws}
spec: {cidrs: ["198.18.20.0/24", "2001:db8:20::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump, labels: {critical: "true"}}
spec: {cidrs: ["198.18.30.0/24", "2001:db8:30::/64"], vlans: [30]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: ["198.18.41.0/24", "2001:db8:41::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server}
spec: {cidrs: ["198.18.42.0/24", "2001:db8:42::/64"]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: admins}
spec: {role: admin, users: [ops]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: operators}
spec: {role: operator, users: [ops]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: change-board}
spec: {role: approver, users: [april]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: emergency}
spec: {role: break-glass, users: [brett]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: compliance}
spec: {role: auditor, users: [audrey]}
"#;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn cells() -> Vec<Cell> {
    [Family::V4, Family::V6]
        .into_iter()
        .map(|family| Cell {
            from: "ws",
            to: "pump",
            service: Service::Tcp(443),
            family,
        })
        .collect()
}

/// Whether both families' probes got through.
fn open(topo: &wardline_tests::topology::Topology) -> (bool, bool) {
    let r = probe_cells(topo, &cells());
    (r[0].1, r[1].1)
}

#[test]
#[ignore = "needs root (network namespaces, eBPF): run via cargo xtask test"]
fn privileged_break_glass_opens_at_once_alerts_the_siem_and_closes_on_time_with_the_control_plane_down()
 {
    require_root();
    let mut site = Site::new();
    let ocsf = site.dir.join("ocsf.jsonl");
    site.replica_flags = vec!["--siem-ocsf".into(), ocsf.display().to_string()];
    let (routed, agent) = managed_gateway(&mut site);
    let store = site.embedded_store();
    for who in ["april", "brett", "audrey"] {
        site.issue("operator", who);
    }
    let revision = site.apply(
        0,
        &format!(
            "{SITE}{}",
            policy(
                "ws-ehr-web",
                "allow",
                "ws",
                "ehr",
                "[{protocol: tcp, port: 443}]"
            )
        ),
    );
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    assert_eq!(open(&routed), (false, false), "closed before the grant");
    site.mfa_login("brett", 0);
    site.mfa_login("april", 0);

    // An operator may not: it is not their role.
    let grant_args = [
        "break-glass",
        "--from",
        "ws",
        "--to",
        "pump",
        "--ports",
        "tcp/443",
        "--for",
        "1m",
        "--reason",
        "pump console needed for an ICU drug-library recall",
        "-o",
        "json",
    ];
    site.mfa_login("ops", 0);
    let out = site.wardctl_as("ops", 0, &grant_args);
    assert!(!out.status.success());
    assert!(text(&out).contains("may not break glass"), "{}", text(&out));

    let out = site.wardctl_as("brett", 0, &grant_args);
    assert!(out.status.success(), "{}", text(&out));
    let grant: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = grant["id"].as_str().unwrap().to_owned();
    let expires = time::OffsetDateTime::parse(
        grant["expires"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let revision = grant["revision"].as_u64().unwrap();
    site.wait_acked(0, &[&agent.node], revision, Duration::from_secs(10));
    assert_eq!(open(&routed), (true, true), "open at once");
    // The agent signed what it now enforces: checked here against the CA.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = site.wardctl_as("april", 0, &["attest", &agent.node, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["revision"] == revision && v["verified"] == true {
            assert_eq!(v["why"], "applied", "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no attestation of revision {revision}: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The SIEM has it as an alert, now.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines = std::fs::read_to_string(&ocsf).unwrap_or_default();
        let alert = lines.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["event"] == "audit" && v["record"]["action"] == "break-glass" && v["alert"] == true)
                .then_some(v)
        });
        if let Some(alert) = alert {
            assert_eq!(alert["record"]["actor"], "operator:brett");
            assert!(
                alert["record"]["detail"].as_str().unwrap().contains(&id),
                "{alert}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no break-glass alert in {lines}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Status shows it open, its review due.
    let out = site.wardctl_as("april", 0, &["status"]);
    assert!(
        text(&out).contains(&format!("break-glass {id} (open)")),
        "{}",
        text(&out)
    );

    // The control plane goes down; the kernel closes the grant on time.
    site.replicas[0].kill9();
    let now = time::OffsetDateTime::now_utc();
    let left = Duration::try_from(expires - now).unwrap_or_default();
    assert!(left > Duration::from_secs(5), "the grant ends in {left:?}");
    std::thread::sleep(left - Duration::from_secs(3));
    assert_eq!(
        open(&routed),
        (true, true),
        "still open just before its end"
    );
    let until = Duration::try_from(expires - time::OffsetDateTime::now_utc()).unwrap_or_default();
    std::thread::sleep(until + Duration::from_millis(500));
    assert_eq!(
        open(&routed),
        (false, false),
        "closed on time with the control plane down"
    );

    // Back up: the grant shows expired, its review waiting; the one who
    // opened it cannot sign it off, another person does.
    site.start_replica(0, &store);
    let out = site.wardctl_as("brett", 0, &["review", &id, "--note", "all fine"]);
    assert!(!out.status.success());
    let out = site.wardctl_as(
        "april",
        0,
        &[
            "review",
            &id,
            "--note",
            "recall applied; console access logged twice",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("signed off by april"), "{}", text(&out));
    let out = site.wardctl_as("april", 0, &["status"]);
    assert!(
        !text(&out).contains(&format!("break-glass {id}")),
        "reviewed and closed: no longer shown\n{}",
        text(&out)
    );
    let out = site.wardctl_as("april", 0, &["history", "--limit", "2"]);
    assert!(
        text(&out).contains(&format!("BREAK-GLASS {id}")),
        "{}",
        text(&out)
    );

    // The auditor's report of the last hour: rendered by Chromium, it
    // shows the grant and its review, the agent's verified attestation,
    // every change with its author, and names each requirement.
    let dir = site.dir.join("report");
    std::fs::create_dir_all(&dir).unwrap();
    let (html, pdf) = (dir.join("report.html"), dir.join("report.pdf"));
    let out = site.wardctl_as(
        "audrey",
        0,
        &[
            "report",
            "--since",
            "1h",
            "--out",
            html.to_str().unwrap(),
            "--pdf",
            pdf.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(&pdf).unwrap().starts_with(b"%PDF"));
    let mut browser = Browser::new(&site.ns, &site.dir.join("cp.pem"), &dir);
    let url = format!("file://{}", html.display());
    let dom = browser.dom(&url);
    for wanted in [
        "Wardline evidence report",
        "§164.312(a)(2)(ii) emergency access procedure",
        "§164.312(b) audit controls",
        "HICP practice 6",
        "HICP practice 5",
        id.as_str(),
        "signed off by april",
        "signature verified",
        "operator:brett",
        "id=\"segment-map\"",
        "ws-ehr-web",
    ] {
        assert!(dom.contains(wanted), "the report lacks {wanted:?}");
    }
    assert!(!dom.contains("FAILED"), "{dom}");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/report");
    std::fs::create_dir_all(&shots).unwrap();
    browser.screenshot(&url, &shots.join("report.png"));
}

/// Roles, second factors, two-person changes, break-glass and the audit
/// trail on the etcd backend, across two replicas: a session opened on
/// one works on the other, a code used on one is refused on the other, a
/// change proposed on one is approved on the other.
#[test]
#[ignore = "needs root (network namespaces, etcd): run via cargo xtask test"]
fn privileged_governance_holds_across_two_replicas_on_etcd() {
    require_root();
    let mut site = Site::new();
    let store = site.start_etcd(1);
    site.start_replica(0, &store);
    site.start_replica(1, &store);
    for who in ["april", "brett", "audrey"] {
        site.issue("operator", who);
    }
    site.apply(
        0,
        &format!(
            "{SITE}{}",
            policy(
                "ws-pump",
                "allow",
                "ws",
                "pump",
                "[{protocol: tcp, port: 443}, {protocol: tcp, port: 8080}]"
            )
        ),
    );
    // A session opened on replica 0 works on replica 1.
    site.mfa_login("ops", 0);
    let labs = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: labs}\nspec: {cidrs: [\"198.18.60.0/24\"]}\n";
    let file = site.dir.join("labs.yaml");
    std::fs::write(&file, labs).unwrap();
    let out = site.wardctl_as("ops", 1, &["apply", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // A code used on one replica is refused on the other.
    let secret = site.mfa_enroll("april", 0);
    let code = wardline_mfa::code_at(&secret, wardline_tests::site::unix_now() + 30).unwrap();
    let out = site.wardctl_as("april", 0, &["login", "--code", &code]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.wardctl_as("april", 1, &["login", "--code", &code]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already used"), "{}", text(&out));

    // Proposed on replica 0, approved on replica 1.
    let narrower = policy(
        "ws-pump",
        "allow",
        "ws",
        "pump",
        "[{protocol: tcp, port: 443}]",
    );
    let file = site.dir.join("narrower.yaml");
    std::fs::write(&file, &narrower).unwrap();
    let out = site.wardctl_as("ops", 0, &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        text(&out).contains("needs a second person's approval"),
        "{}",
        text(&out)
    );
    let out = site.wardctl_as(
        "ops",
        0,
        &["propose", "-f", file.to_str().unwrap(), "-o", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let request: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = request["id"].as_str().unwrap().to_owned();
    let out = site.wardctl_as("april", 1, &["approve", &id, "--note", "checked"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.wardctl_as("ops", 0, &["history", "--limit", "1", "-o", "json"]);
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history[0]["approvedBy"], "april", "{history}");
    assert_eq!(history[0]["author"], "operator:ops");

    // Break-glass on replica 1 shows on replica 0.
    site.mfa_login("brett", 1);
    let out = site.wardctl_as(
        "brett",
        1,
        &[
            "break-glass",
            "--from",
            "ws",
            "--to",
            "ehr",
            "--ports",
            "tcp/22",
            "--for",
            "5m",
            "--reason",
            "etcd test",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let grant: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = site.wardctl_as("april", 0, &["status"]);
    assert!(
        text(&out).contains(grant["id"].as_str().unwrap()),
        "{}",
        text(&out)
    );

    // One audit trail of both replicas, verified against the site CA.
    let out = site.wardctl_as("audrey", 1, &["audit", "--verify"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.wardctl_as("audrey", 0, &["audit", "--last", "0", "-o", "json"]);
    let trail: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    for replica in ["replica-0", "replica-1"] {
        assert!(
            trail
                .iter()
                .any(|r| r["replica"] == replica && r["action"] == "login"),
            "no login recorded by {replica}"
        );
    }
    assert!(trail.iter().any(|r| r["action"] == "approve"
        && r["outcome"] == "done"
        && r["replica"] == "replica-1"));
    assert!(trail.iter().any(|r| r["action"] == "login"
        && r["outcome"] == "refused"
        && r["detail"].as_str().unwrap_or("").contains("already used")));
}
