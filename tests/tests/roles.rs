//! Roles against a real replica over mutual TLS: every role against every
//! verb through `wardctl`, a binding scoped to segments by label, and the
//! ways an operator might try to climb out of their role (binding
//! themselves admin, rolling back to before the bindings, relabelling a
//! segment into reach, a valid certificate no binding names).

use std::process::Output;

use wardline_tests::require_root;
use wardline_tests::site::{REPLICAS, Site};

const SEGMENTS: &str = "
apiVersion: wardline/v1
kind: Segment
metadata: {name: pumps, labels: {zone: clinical-devices}}
spec: {cidrs: [198.18.10.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server, labels: {zone: clinical-devices}}
spec: {cidrs: [198.18.11.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr, labels: {zone: clinical-systems}}
spec: {cidrs: [198.18.12.0/24]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: pumps-to-server}
spec: {action: allow, from: [pumps], to: [pump-server], ports: [{protocol: tcp, port: 443}]}
";

const BINDINGS: &str = "
apiVersion: wardline/v1
kind: Group
metadata: {name: biomed}
spec: {members: [bea]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: site-admins}
spec: {role: admin, users: [ops, ada]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: harness-operator}
spec: {role: operator, users: [ops]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: netops}
spec: {role: operator, users: [otto]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: biomed-devices}
spec:
  role: operator
  groups: [biomed]
  segments: {matchLabels: {zone: clinical-devices}}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: change-board}
spec: {role: approver, users: [april]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: compliance}
spec: {role: auditor, users: [audrey]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: ward-staff}
spec: {role: viewer, users: [vic]}
";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `yaml` to a file of the site's and returns its path.
fn file(site: &Site, name: &str, yaml: &str) -> String {
    let path = site.dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

fn policy(name: &str, from: &str, to: &str) -> String {
    format!(
        "apiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: {name}}}\n\
         spec: {{action: allow, from: [{from}], to: [{to}], ports: [{{protocol: tcp, port: 8443}}]}}\n"
    )
}

#[test]
#[ignore = "needs root (network namespaces): run via cargo xtask test"]
fn privileged_every_role_against_every_verb_over_mutual_tls() {
    require_root();
    let mut site = Site::new();
    let dashboard = format!("https://{}:8443", REPLICAS[0]);
    site.replica_flags.extend([
        "--dashboard-address".to_owned(),
        format!("{}:8443", REPLICAS[0]),
    ]);
    let store = site.embedded_store();
    site.start_replica(0, &store);
    for who in ["ada", "otto", "bea", "april", "audrey", "vic", "mallory"] {
        site.issue("operator", who);
    }
    // A site being set up: every operator holds every role, and says so.
    let status = site.status(0);
    assert_eq!(status["rolesUnbound"], true, "{status}");
    let first = site.wardctl_as("mallory", 0, &["status"]);
    assert!(
        text(&first).contains("every operator certificate holds every role"),
        "{}",
        text(&first)
    );
    // The first bindings must leave an admin.
    let no_admin = file(
        &site,
        "no-admin.yaml",
        "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: ops}\nspec: {role: operator, users: [otto]}\n",
    );
    let out = site.wardctl(0, &["apply", "-f", &no_admin]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("leave no one an admin"),
        "{}",
        text(&out)
    );
    let bound = site.apply(0, &format!("{SEGMENTS}---{BINDINGS}"));
    let status = site.status(0);
    assert_eq!(status["rolesUnbound"], false, "{status}");
    assert_eq!(status["caller"], "ops");
    // Roles bound: every change needs a second factor from now on. Each
    // operator with a role enrols through `wardctl mfa enroll` (a QR code
    // and the secret shown, a code asked back) and opens a session with
    // `wardctl login`; mallory, with no role, cannot even enrol.
    let plain = file(
        &site,
        "plain.yaml",
        &policy("no-session", "pumps", "pump-server"),
    );
    let out = site.wardctl_as("otto", 0, &["apply", "-f", &plain]);
    assert!(!out.status.success());
    assert!(text(&out).contains("wardctl login"), "{}", text(&out));
    let mut secrets = std::collections::BTreeMap::new();
    for who in ["ada", "otto", "bea", "april", "audrey", "vic"] {
        secrets.insert(who, site.mfa_login(who, 0));
    }
    let out = site.wardctl_as("mallory", 0, &["mfa", "enroll"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("hold no role"), "{}", text(&out));
    let out = site.wardctl_as("otto", 0, &["status"]);
    assert!(text(&out).contains("session until"), "{}", text(&out));

    // Each identity, each verb: allowed or refused by role, and a refusal
    // names who, what and what they hold.
    let verbs: Vec<(&str, Vec<String>)> = {
        vec![
            ("read-policy", vec!["get".into()]),
            ("read-status", vec!["status".into()]),
            (
                "read-flows",
                vec!["observe".into(), "--last".into(), "1".into()],
            ),
            ("read-history", vec!["history".into(), "--verify".into()]),
            ("read-audit", vec!["audit".into(), "--verify".into()]),
            (
                "change-policy",
                vec!["apply".into(), "-f".into(), "POLICY".into()],
            ),
            (
                "change-nodes",
                vec!["delete".into(), "node".into(), "ghost-WHO".into()],
            ),
            // A change to roles always needs a second person: filing one
            // is what a role allows.
            (
                "change-roles",
                vec!["propose".into(), "-f".into(), "BINDING".into()],
            ),
            (
                "change-pki",
                vec![
                    "pki".into(),
                    "revoke".into(),
                    "--role".into(),
                    "agent".into(),
                    "--name".into(),
                    "ghost-WHO".into(),
                    "--reason".into(),
                    "role test".into(),
                ],
            ),
        ]
    };
    let allowed: [(&str, &[&str]); 7] = [
        ("vic", &["read-policy", "read-status", "read-flows"]),
        (
            "audrey",
            &[
                "read-policy",
                "read-status",
                "read-flows",
                "read-history",
                "read-audit",
            ],
        ),
        (
            "april",
            &["read-policy", "read-status", "read-flows", "read-history"],
        ),
        (
            "otto",
            &[
                "read-policy",
                "read-status",
                "read-flows",
                "read-history",
                "change-policy",
            ],
        ),
        (
            "bea",
            &[
                "read-policy",
                "read-status",
                "read-flows",
                "read-history",
                "change-policy",
            ],
        ),
        (
            "ada",
            &[
                "read-policy",
                "read-status",
                "read-flows",
                "read-history",
                "read-audit",
                "change-nodes",
                "change-roles",
                "change-pki",
            ],
        ),
        ("mallory", &[]),
    ];
    for (who, may) in allowed {
        let policy_file = file(
            &site,
            &format!("p-{who}.yaml"),
            &policy(&format!("try-{who}"), "pumps", "pump-server"),
        );
        let binding_file = file(
            &site,
            &format!("rb-{who}.yaml"),
            &format!(
                "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {{name: extra-{who}}}\nspec: {{role: viewer, users: [guest-{who}]}}\n"
            ),
        );
        for (verb, args) in &verbs {
            let args: Vec<String> = args
                .iter()
                .map(|a| {
                    a.replace("POLICY", &policy_file)
                        .replace("BINDING", &binding_file)
                        .replace("WHO", who)
                })
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = site.wardctl_as(who, 0, &args);
            let should = may.contains(verb);
            assert_eq!(
                out.status.success(),
                should,
                "{who} {verb} ({args:?}): {}",
                text(&out)
            );
            if !should {
                let said = text(&out);
                assert!(
                    said.contains(&format!("operator \"{who}\" may not")),
                    "{who} {verb}: {said}"
                );
            }
        }
    }
    let out = site.wardctl_as("mallory", 0, &["get"]);
    assert!(text(&out).contains("hold no role"), "{}", text(&out));
    let out = site.wardctl_as("vic", 0, &["status"]);
    assert!(
        text(&out).contains("you are vic (viewer)"),
        "{}",
        text(&out)
    );

    // The scoped binding: bea may not open the pumps to the EHR, nor to
    // the world, nor relabel the EHR into her reach; otto may.
    let to_ehr = file(
        &site,
        "to-ehr.yaml",
        &policy("pumps-to-ehr", "pumps", "ehr"),
    );
    let out = site.wardctl_as("bea", 0, &["apply", "-f", &to_ehr]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("beyond the reach of its bindings"),
        "{}",
        text(&out)
    );
    let to_world = file(
        &site,
        "to-world.yaml",
        &policy("pumps-out", "pumps", "world"),
    );
    assert!(
        !site
            .wardctl_as("bea", 0, &["apply", "-f", &to_world])
            .status
            .success()
    );
    let relabel = file(
        &site,
        "relabel.yaml",
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: ehr, labels: {zone: clinical-devices}}\nspec: {cidrs: [198.18.12.0/24]}\n",
    );
    let out = site.wardctl_as("bea", 0, &["apply", "-f", &relabel]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        site.wardctl_as("otto", 0, &["apply", "-f", &to_ehr])
            .status
            .success()
    );

    // Otto tries to climb: binding himself admin, then rolling back to the
    // revision before any binding. Both change bindings: refused.
    let climb = file(
        &site,
        "climb.yaml",
        "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: otto-admin}\nspec: {role: admin, users: [otto]}\n",
    );
    let out = site.wardctl_as("otto", 0, &["apply", "-f", &climb]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("needs the admin role"),
        "{}",
        text(&out)
    );
    let before = (bound - 1).to_string();
    let out = site.wardctl_as("otto", 0, &["rollback", &before]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("RoleBinding"), "{}", text(&out));
    // The admin removing every admin: refused, the bindings stand.
    let out = site.wardctl_as("ada", 0, &["delete", "rolebinding", "site-admins"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("leave no one an admin"),
        "{}",
        text(&out)
    );
    let out = site.wardctl_as("vic", 0, &["get", "rolebinding"]);
    assert!(text(&out).contains("site-admins"), "{}", text(&out));

    // A role taken away ends at once: vic's viewer binding removed, vic
    // reads nothing more, by wardctl or by the dashboard session she
    // signed in with before.
    assert!(site.wardctl_as("vic", 0, &["get"]).status.success());
    let out = site.wardctl_as("vic", 0, &["dashboard", "login"]);
    assert!(out.status.success(), "{}", text(&out));
    let link = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let jar = site.dir.join("vic.cookies");
    let curl_with = |url: &str, form: Option<&str>| {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", site.ns.name(), "curl", "-s", "-L"])
            .arg("--cacert")
            .arg(site.ca())
            .arg("-c")
            .arg(&jar)
            .arg("-b")
            .arg(&jar);
        if let Some(form) = form {
            cmd.args(["--data", form]);
        }
        let out = cmd
            .args(["-w", "\n%{http_code}", url])
            .output()
            .expect("curl runs");
        let said = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = said.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_owned(), body.to_owned())
    };
    let curl = |url: &str| curl_with(url, None);
    // Roles are bound: the link asks for the second factor's code first.
    let (code, body) = curl(&link);
    assert_eq!(code, "200", "the sign-in link");
    assert!(body.contains("Second factor"), "{body}");
    let token = link.split_once("token=").expect("a token").1.to_owned();
    let code = wardline_tests::site::fresh_code(&secrets["vic"]);
    let (status, body) = curl_with(
        &format!("{dashboard}/login"),
        Some(&format!("token={token}&code={code}")),
    );
    assert_eq!(status, "200", "signed in with the code: {body}");
    // Used once: a second use proves no one.
    assert_eq!(curl(&link).0, "401", "the link a second time");
    let (code, body) = curl(&format!("{dashboard}/api/agents"));
    assert_eq!(code, "200", "{body}");
    // Taking a role away is a change to roles: a second person approves.
    let out = site.wardctl_as("ada", 0, &["delete", "rolebinding", "ward-staff"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("needs a second person's approval"),
        "{}",
        text(&out)
    );
    let out = site.wardctl_as(
        "ada",
        0,
        &[
            "propose",
            "--delete",
            "rolebinding/ward-staff",
            "-m",
            "vic left the ward",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let request: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = request["id"].as_str().expect("an id").to_owned();
    let out = site.wardctl_as("ada", 0, &["approve", &id]);
    assert!(!out.status.success());
    assert!(text(&out).contains("may not approve"), "{}", text(&out));
    let out = site.wardctl_as("april", 0, &["approve", &id]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("approved: applied as revision"),
        "{}",
        text(&out)
    );
    let out = site.wardctl_as("audrey", 0, &["history", "--limit", "1"]);
    assert!(
        text(&out).contains(&format!("april ({id})")),
        "{}",
        text(&out)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let out = site.wardctl_as("vic", 0, &["get"]);
        if !out.status.success() {
            assert!(text(&out).contains("hold no role"), "{}", text(&out));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "vic still reads");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (code, body) = curl(&format!("{dashboard}/api/agents"));
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains(r#"operator \"vic\" may not read flows"#),
        "{body}"
    );
    // Every refusal is in the audit trail, which checks out here against
    // the site CA.
    let out = site.wardctl_as("audrey", 0, &["audit", "--verify"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("audit trail verified here"),
        "{}",
        text(&out)
    );
    // Records are appended a moment after each call: the trail once it
    // holds the last of them (the dashboard request refused).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let trail: Vec<serde_json::Value> = loop {
        let out = site.wardctl_as("audrey", 0, &["audit", "--last", "0", "-o", "json"]);
        let trail: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
        if trail
            .iter()
            .any(|r| r["action"] == "dashboard-request" && r["outcome"] == "refused")
            || std::time::Instant::now() > deadline
        {
            break trail;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        trail.iter().any(|r| r["actor"] == "operator:otto"
            && r["action"] == "apply"
            && r["outcome"] == "refused"
            && r["detail"].as_str().unwrap().contains("otto-admin")),
        "{trail:#?}"
    );
    assert!(
        trail
            .iter()
            .any(|r| r["actor"] == "operator:mallory" && r["outcome"] == "refused"),
        "mallory's refusals"
    );
    // The dashboard: vic's sign-in, the link used again, and the request
    // refused once her binding was gone.
    let has = |actor: &str, action: &str, outcome: &str| {
        trail.iter().any(|r| {
            r["actor"].as_str().unwrap().starts_with(actor)
                && r["action"] == action
                && r["outcome"] == outcome
        })
    };
    assert!(
        has("operator:vic", "dashboard-sign-in", "done"),
        "{trail:#?}"
    );
    assert!(
        has("unidentified", "dashboard-sign-in", "refused"),
        "{trail:#?}"
    );
    assert!(
        has("operator:vic", "dashboard-request", "refused"),
        "{trail:#?}"
    );
    // Every refusal is in the replica's log with who and what.
    let log = site.replicas[0].log();
    assert!(
        log.lines()
            .any(|l| l.contains("refused") && l.contains("otto") && l.contains("change-roles")),
        "{log}"
    );
}
