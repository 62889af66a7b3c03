//! `wardctl` as operators and scripts use it: config file or environment,
//! output formats, and exit codes.

use std::process::{Command, Output};

use wardline_control_plane::testing::site;
use wardline_proto::v1;

fn wardctl(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wardctl"));
    cmd.args(args)
        .env_remove("WARDCTL_ENDPOINT")
        .env_remove("WARDCTL_CA")
        .env_remove("WARDCTL_CERT")
        .env_remove("WARDCTL_KEY");
    cmd.env("WARDCTL_CONFIG", "/nonexistent/wardctl.yaml")
        .env("HOME", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("wardctl runs")
}

async fn run(args: &[&str], env: &[(&str, String)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(&'static str, String)> = env.iter().map(|(k, v)| (leak(k), v.clone())).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        wardctl(&args, &env)
    })
    .await
    .unwrap()
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const POLICY: &str = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pumps}\nspec: {cidrs: [\"198.18.30.0/24\"]}\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {name: ehr}\nspec: {cidrs: [\"198.18.41.0/24\"]}\n---\napiVersion: wardline/v1\nkind: Policy\nmetadata: {name: pumps-to-ehr}\nspec: {action: allow, from: [pumps], to: [ehr], ports: [{protocol: tcp, port: 2575}]}\n";

#[tokio::test]
async fn config_environment_formats_and_exit_codes() {
    let site = site("wardctl").await;
    let dir = site.dir.clone();
    let file = dir.join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, POLICY.replace("port: 2575", "port: 0")).unwrap();
    let f = file.to_str().unwrap();

    // Offline validation: the same errors, exit 3 when invalid.
    let o = run(&["validate", "-f", f], &[]).await;
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["validate", "-f", bad.to_str().unwrap()], &[]).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("document 3") && text(&o).contains("spec.ports[0].port"),
        "{}",
        text(&o)
    );

    // Nothing configured: says what is missing.
    let o = run(&["status"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("no endpoint"), "{}", text(&o));

    // From a config file.
    let config = dir.join("wardctl.yaml");
    std::fs::write(
        &config,
        format!(
            "endpoint: {}\ncaFile: {}\ncertFile: {}\nkeyFile: {}\n",
            site.endpoint,
            dir.join("ca/ca.pem").display(),
            dir.join("alice.pem").display(),
            dir.join("alice-key.pem").display()
        ),
    )
    .unwrap();
    let cfg = [("WARDCTL_CONFIG", config.display().to_string())];
    let o = run(&["apply", "-f", f, "-m", "first"], &cfg).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("applied as revision 1"), "{}", text(&o));
    let o = run(&["get", "policy", "-o", "yaml"], &cfg).await;
    assert!(
        text(&o).contains("kind: Policy") && text(&o).contains("pumps-to-ehr"),
        "{}",
        text(&o)
    );
    let o = run(&["get", "-o", "table"], &cfg).await;
    assert!(
        text(&o).contains("KIND") && text(&o).contains("Segment  pumps"),
        "{}",
        text(&o)
    );

    // From the environment, JSON out; an agent appears in status.
    let mut gw = site.agent("gw-1").await;
    gw.register(v1::RegisterRequest {
        node: "gw-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    gw.heartbeat(v1::HeartbeatRequest {
        node: "gw-1".into(),
        revision: 0,
        generation: 0,
    })
    .await
    .unwrap();
    let env = alice(&site);
    let o = run(&["status", "-o", "json"], &env).await;
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    assert_eq!(v["revision"], 1);
    assert_eq!(v["agents"][0]["node"], "gw-1");
    let o = run(&["history", "-o", "json"], &env).await;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["message"], "first");
    assert_eq!(v[0]["author"], "operator:alice");

    // Exit codes scripts can use.
    std::fs::write(&file, POLICY.replace("2575", "2576")).unwrap();
    let o = run(&["apply", "-f", f, "--expected-revision", "0"], &env).await;
    assert_eq!(o.status.code(), Some(4), "stale revision: {}", text(&o));
    let mut op = site.operator().await;
    let h = op
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.revisions.len(), 1, "the stale apply wrote nothing");
    let o = run(&["apply", "-f", bad.to_str().unwrap()], &env).await;
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let o = run(&["get", "policy", "nope"], &env).await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    let mut closed = env.clone();
    closed[0].1 = "https://127.0.0.1:1".into();
    let o = run(&["status"], &closed).await;
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let mut as_agent = env.clone();
    as_agent[2].1 = dir.join("gw-1.pem").display().to_string();
    as_agent[3].1 = dir.join("gw-1-key.pem").display().to_string();
    let o = run(&["status"], &as_agent).await;
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let o = run(&["status", "--check"], &env).await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "gw-1 is connected, within its grace period: {}",
        text(&o)
    );
    let mut gw2 = site.agent("gw-2").await;
    gw2.register(v1::RegisterRequest {
        node: "gw-2".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let o = run(&["status", "--check"], &env).await;
    assert_eq!(
        o.status.code(),
        Some(8),
        "gw-2 registered and never heartbeat: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("gw-2") && text(&o).contains("NO"),
        "{}",
        text(&o)
    );
}

#[tokio::test]
async fn removing_a_node_and_revoking_certificates() {
    let site = site("wardctl-revoke").await;
    let dir = site.dir.clone();
    let env = alice(&site);
    let o = run(&["delete", "node", "gw-2", "-m", "decommissioned"], &env).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("blocked until `wardctl unblock gw-2`"),
        "{}",
        text(&o)
    );
    let o = run(&["status"], &env).await;
    assert!(
        text(&o).contains("gw-2: removed and blocked by operator:alice")
            && text(&o).contains("decommissioned"),
        "{}",
        text(&o)
    );
    let o = run(&["unblock", "gw-2"], &env).await;
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["unblock", "gw-2"], &env).await;
    assert_eq!(
        o.status.code(),
        Some(5),
        "not blocked: not found; {}",
        text(&o)
    );

    // Issuing prints the serial; revoking by the certificate file takes it.
    let ca = dir.join("ca");
    let o = run(
        &[
            "pki",
            "issue",
            "--dir",
            ca.to_str().unwrap(),
            "--role",
            "operator",
            "--name",
            "carol",
            "--out",
            dir.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("(serial "), "{}", text(&o));
    let carol = dir.join("carol.pem");
    let o = run(
        &[
            "pki",
            "revoke",
            "--certificate",
            carol.to_str().unwrap(),
            "--reason",
            "left",
        ],
        &env,
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("revoked the certificate with serial"),
        "{}",
        text(&o)
    );
    let as_carol = [
        env[0].clone(),
        env[1].clone(),
        ("WARDCTL_CERT", carol.display().to_string()),
        (
            "WARDCTL_KEY",
            dir.join("carol-key.pem").display().to_string(),
        ),
    ];
    let o = run(&["status"], &as_carol).await;
    assert!(
        !o.status.success(),
        "a revoked operator is refused: {}",
        text(&o)
    );
    // By role and name; the reason is required.
    let o = run(
        &["pki", "revoke", "--role", "agent", "--name", "gw-1"],
        &env,
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&["pki", "revoke", "--name", "gw-1", "--reason", "x"], &env).await;
    assert_eq!(
        o.status.code(),
        Some(2),
        "--name needs --role: {}",
        text(&o)
    );
    let o = run(
        &[
            "pki", "revoke", "--role", "agent", "--name", "gw-1", "--reason", "lost",
        ],
        &env,
    )
    .await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("revoked every agent certificate of \"gw-1\""),
        "{}",
        text(&o)
    );
    let o = run(&["status", "-o", "json"], &env).await;
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        status["revocations"].as_array().unwrap().len(),
        2,
        "{status}"
    );
}

/// A flow record of gw-1's, from a workstation to `dst`:`dport`.
fn flow(seq: u64, dst: [u8; 4], dport: u32, verdict: &str, policy: &str) -> v1::Flow {
    let dropped = verdict == "dropped";
    v1::Flow {
        time: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        kind: if dropped { "drop" } else { "new" }.into(),
        interface: "eth1".into(),
        direction: "ingress".into(),
        src: vec![198, 18, 30, 10],
        dst: dst.to_vec(),
        sport: 40_000,
        dport,
        protocol: 6,
        src_segment: "pumps".into(),
        dst_segment: "ehr".into(),
        verdict: verdict.into(),
        reason: if dropped {
            "default-deny"
        } else {
            "policy-allow"
        }
        .into(),
        policy: policy.into(),
        generation: 1,
        revision: 1,
        packets: 1,
        bytes: 60,
        sequence: seq,
        src_mac: vec![2, 0, 0, 0, 0x14, 0x0a],
        dst_mac: Vec::new(),
        ..Default::default()
    }
}

/// `flows` reported by gw-1's agent, as one batch.
async fn report(site: &wardline_control_plane::testing::Site, flows: Vec<v1::Flow>) {
    site.agent("gw-1")
        .await
        .report_flows(v1::FlowBatch {
            node: "gw-1".into(),
            flows,
            dropped: 0,
            buffer: 1,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn observe_prints_filters_and_refuses_a_bad_filter() {
    let site = site("wardctl-observe").await;
    let env = alice(&site);
    report(
        &site,
        vec![
            flow(1, [198, 18, 41, 10], 2575, "allowed", "pumps-to-ehr"),
            flow(2, [198, 18, 41, 10], 22, "dropped", ""),
            flow(3, [198, 18, 41, 11], 2575, "allowed", "pumps-to-ehr"),
        ],
    )
    .await;

    let o = run(&["observe"], &env).await;
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines().next().unwrap().contains(
            "gw-1  198.18.30.10:40000 (pumps) -> 198.18.41.10:2575 (ehr)  tcp  ALLOWED  policy-allow  pumps-to-ehr"
        ),
        "{out}"
    );
    let o = run(&["observe", "--verdict", "dropped", "-o", "json"], &env).await;
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", text(&o));
    assert_eq!(lines[0]["dport"], 22);
    assert_eq!(lines[0]["reason"], "default-deny");
    assert_eq!(lines[0]["policy"], serde_json::Value::Null);
    let o = run(
        &[
            "observe",
            "--to",
            "198.18.41.11",
            "--port",
            "2575",
            "--since",
            "5m",
        ],
        &env,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).lines().count(),
        1,
        "{}",
        text(&o)
    );
    let o = run(&["observe", "--last", "2", "--protocol", "tcp"], &env).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.contains("198.18.41.11:2575"), "{out}");

    // The aggregate views over the same records.
    let o = run(&["matrix"], &env).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["pumps", "ehr", "ALLOWED", "2"]),
        "{out}"
    );
    assert!(out.contains("3 connections"), "{out}");
    let o = run(&["top", "--verdict", "dropped", "-o", "json"], &env).await;
    let top: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(top["entries"][0]["src"], "198.18.30.10", "{}", text(&o));
    assert_eq!(top["entries"][0]["connections"], 1);
    let o = run(&["top", "--by", "talkers", "-n", "1"], &env).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(
        out.split_whitespace().take(2).collect::<Vec<_>>(),
        ["SOURCE", "DESTINATION"],
        "{out}"
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    let o = run(&["inventory"], &env).await;
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    let pump = out
        .lines()
        .find(|l| l.starts_with("198.18.30.10 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        pump.contains("02:00:00:00:14:0a") && pump.contains("pumps"),
        "{pump}"
    );
    let o = run(
        &["inventory", "--address", "198.18.41.0/24", "-o", "json"],
        &env,
    )
    .await;
    let inv: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let served: Vec<_> = inv["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(served, ["198.18.41.10", "198.18.41.11"], "{inv}");

    // A malformed filter: exit 3, naming it.
    for (args, named) in [
        (vec!["top", "-n", "5000"], "limit:"),
        (vec!["inventory", "--address", "pumps"], "address:"),
        (vec!["matrix", "--until", "soon"], "until:"),
        (vec!["observe", "--from", "198.18.0.0/40"], "from:"),
        (vec!["observe", "--since", "last week"], "since:"),
        (vec!["observe", "--protocol", "gopher"], "protocol:"),
    ] {
        let o = run(&args, &env).await;
        assert_eq!(o.status.code(), Some(3), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(named), "{args:?}: {}", text(&o));
    }
}

/// wardctl's environment for the operator alice of `site`.
fn alice(site: &wardline_control_plane::testing::Site) -> [(&'static str, String); 4] {
    let dir = &site.dir;
    [
        ("WARDCTL_ENDPOINT", site.endpoint.clone()),
        ("WARDCTL_CA", dir.join("ca/ca.pem").display().to_string()),
        ("WARDCTL_CERT", dir.join("alice.pem").display().to_string()),
        (
            "WARDCTL_KEY",
            dir.join("alice-key.pem").display().to_string(),
        ),
    ]
}

/// One answer of the dashboard.
struct Page {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

/// `method path` on the dashboard at `base` (`https://127.0.0.1:port`),
/// with `cookie` if any, the server checked against the site CA.
async fn fetch(
    site: &wardline_control_plane::testing::Site,
    method: &str,
    path: &str,
    cookie: Option<&str>,
) -> Page {
    send(site, method, path, cookie, None).await
}

/// [`fetch`], with a form as the body.
async fn send(
    site: &wardline_control_plane::testing::Site,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<String>,
) -> Page {
    use http_body_util::BodyExt as _;
    use rustls::pki_types::pem::PemObject as _;

    let mut roots = rustls::RootCertStore::empty();
    for der in rustls::pki_types::CertificateDer::pem_file_iter(site.dir.join("ca/ca.pem")).unwrap()
    {
        roots.add(der.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let host = site.dashboard.trim_start_matches("https://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the dashboard's certificate verifies against the site CA");
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", &host);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if form.is_some() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    let body = http_body_util::Full::new(hyper::body::Bytes::from(form.unwrap_or_default()));
    let r = send.send_request(req.body(body).unwrap()).await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[tokio::test]
async fn dashboard_sign_in_links_work_once_and_only_sessions_read_flows() {
    let site = site("wardctl-dashboard").await;
    let env = alice(&site);
    report(
        &site,
        vec![
            flow(1, [198, 18, 41, 10], 2575, "allowed", "pumps-to-ehr"),
            flow(2, [198, 18, 41, 10], 22, "dropped", ""),
        ],
    )
    .await;

    // Nothing without a session: not the page's data, not a guessed cookie.
    assert_eq!(fetch(&site, "GET", "/api/flows", None).await.status, 401);
    let forged = format!("wardline_session={}", "0".repeat(64));
    assert_eq!(
        fetch(&site, "GET", "/api/flows", Some(&forged))
            .await
            .status,
        401
    );
    let page = fetch(&site, "GET", "/", None).await;
    assert_eq!(page.status, 401);
    assert!(
        page.body.contains("wardctl dashboard login"),
        "{}",
        page.body
    );

    // An agent's certificate gets no link; an operator's does.
    let mut agent =
        wardline_proto::v1::management_client::ManagementClient::new(site.channel_as("gw-1").await);
    let refused = agent
        .dashboard_login(v1::DashboardLoginRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    let o = run(&["dashboard", "login"], &env).await;
    assert!(o.status.success(), "{}", text(&o));
    let url = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(
        url.starts_with(&format!("{}/login?token=", site.dashboard)),
        "{url}"
    );
    assert!(text(&o).contains("works once"), "{}", text(&o));
    let path = url.trim_start_matches(&site.dashboard).to_owned();

    // The link: a hardened cookie and a redirect that drops it from the
    // address bar.
    let signed_in = fetch(&site, "GET", &path, None).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    assert_eq!(signed_in.headers["location"], "/");
    assert_eq!(signed_in.headers["referrer-policy"], "no-referrer");
    let cookie = signed_in.headers["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let cookie = cookie.split(';').next().unwrap().to_owned();
    // Used once: the same link again opens nothing.
    let again = fetch(&site, "GET", &path, None).await;
    assert_eq!(again.status, 401);
    assert!(again.headers.get("set-cookie").is_none());

    // The session reads what wardctl reads, in the same JSON.
    let who = fetch(&site, "GET", "/api/session", Some(&cookie)).await;
    assert_eq!(who.status, 200, "{}", who.body);
    let who: serde_json::Value = serde_json::from_str(&who.body).unwrap();
    assert_eq!(who["operator"], "operator:alice");
    let page = fetch(&site, "GET", "/", Some(&cookie)).await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(
        !page.body.contains("http://") && !page.body.contains("https://"),
        "nothing from elsewhere"
    );
    let script = fetch(&site, "GET", "/assets/app.js", None).await;
    assert_eq!(script.status, 200);
    assert!(
        !script.body.contains("innerHTML"),
        "values go in as text, never markup"
    );
    let dropped = fetch(&site, "GET", "/api/flows?verdict=dropped", Some(&cookie)).await;
    assert_eq!(dropped.status, 200, "{}", dropped.body);
    let dropped: serde_json::Value = serde_json::from_str(&dropped.body).unwrap();
    let flows = dropped["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1, "{dropped}");
    assert_eq!(flows[0]["dport"], 22);
    assert_eq!(flows[0]["srcMac"], "02:00:00:00:14:0a");
    let matrix = fetch(&site, "GET", "/api/matrix?since=1h", Some(&cookie)).await;
    let matrix: serde_json::Value = serde_json::from_str(&matrix.body).unwrap();
    assert_eq!(matrix["connections"], 2, "{matrix}");
    let inventory = fetch(&site, "GET", "/api/inventory", Some(&cookie)).await;
    assert_eq!(inventory.status, 200, "{}", inventory.body);
    let agents = fetch(&site, "GET", "/api/agents", Some(&cookie)).await;
    assert_eq!(agents.status, 200, "{}", agents.body);

    // Bad filters are refused by name, as wardctl's are.
    for (query, named) in [
        ("/api/flows?port=70000", "port:"),
        ("/api/flows?since=yesterday-ish", "since:"),
        ("/api/flows?to=198.18.41.0%2F33", "to:"),
        ("/api/flows?last=5000", "last:"),
        ("/api/inventory?new=maybe", "new:"),
    ] {
        let r = fetch(&site, "GET", query, Some(&cookie)).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert!(r.body.contains(named), "{query}: {}", r.body);
    }
    let unknown = fetch(&site, "GET", "/api/flows?verdictt=dropped", Some(&cookie)).await;
    assert_eq!(unknown.status, 400, "{}", unknown.body);

    // Sign-out ends the session.
    assert_eq!(
        fetch(&site, "POST", "/logout", Some(&cookie)).await.status,
        303
    );
    assert_eq!(
        fetch(&site, "GET", "/api/session", Some(&cookie))
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn the_dashboard_asks_for_the_second_factor_once_roles_are_bound() {
    let site = site("wardctl-dashboard-mfa").await;
    site.issue_operator("otto");
    let bindings = "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: admins}\nspec: {role: admin, users: [alice]}\n---\napiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: ops}\nspec: {role: operator, users: [otto]}\n";
    site.operator()
        .await
        .apply(v1::ApplyRequest {
            source: bindings.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut otto = site.client_with_token("otto", None).await;
    for _ in 0..100 {
        if otto
            .status(v1::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .mfa_required
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let secret = otto
        .mfa_enroll(v1::MfaEnrollRequest {})
        .await
        .unwrap()
        .into_inner()
        .secret;
    let now = wardline_control_plane::testing::unix_now();
    otto.mfa_confirm(v1::MfaConfirmRequest {
        code: wardline_mfa::code_at(&secret, now).unwrap(),
    })
    .await
    .unwrap();
    let link = |otto: &mut wardline_control_plane::testing::SessionClient| {
        let mut otto = otto.clone();
        async move {
            let url = otto
                .dashboard_login(v1::DashboardLoginRequest {})
                .await
                .unwrap()
                .into_inner()
                .url;
            url.split_once("/login?token=").unwrap().1.to_owned()
        }
    };
    let token = link(&mut otto).await;
    // The link asks for the code and is not used up by asking.
    let asked = fetch(&site, "GET", &format!("/login?token={token}"), None).await;
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(asked.body.contains("Second factor"), "{}", asked.body);
    assert!(asked.headers.get("set-cookie").is_none());
    // A wrong code: no session, and the page says why.
    let right = wardline_mfa::code_at(&secret, now + wardline_mfa::STEP).unwrap();
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let refused = send(
        &site,
        "POST",
        "/login",
        None,
        Some(format!("token={token}&code={wrong}")),
    )
    .await;
    assert_eq!(refused.status, 401);
    assert!(refused.headers.get("set-cookie").is_none());
    assert!(
        refused.body.contains("wrong or expired"),
        "{}",
        refused.body
    );
    // The right one: a session.
    let opened = send(
        &site,
        "POST",
        "/login",
        None,
        Some(format!("token={token}&code={right}")),
    )
    .await;
    assert_eq!(opened.status, 303, "{}", opened.body);
    let cookie = opened.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        fetch(&site, "GET", "/api/session", Some(&cookie))
            .await
            .status,
        200
    );
    // The link is used; the code is too, on a new link.
    let again = send(
        &site,
        "POST",
        "/login",
        None,
        Some(format!("token={token}&code={right}")),
    )
    .await;
    assert_eq!(again.status, 401);
    let token = link(&mut otto).await;
    let replayed = send(
        &site,
        "POST",
        "/login",
        None,
        Some(format!("token={token}&code={right}")),
    )
    .await;
    assert_eq!(replayed.status, 401);
    assert!(replayed.body.contains("already used"), "{}", replayed.body);
    // A forged link gets no form.
    let forged = fetch(
        &site,
        "GET",
        &format!("/login?token={}", "ab".repeat(32)),
        None,
    )
    .await;
    assert_eq!(forged.status, 401);
    assert!(!forged.body.contains("Second factor"));
}

/// `statement` signed with the certificate and key of `who` in the site.
fn signed(
    site: &wardline_control_plane::testing::Site,
    who: &str,
    statement: &v1::AttestationStatement,
) -> v1::Attestation {
    use prost::Message as _;
    let signer = wardline_signing::Signer::from_pem_files(
        &site.dir.join(format!("{who}.pem")),
        &site.dir.join(format!("{who}-key.pem")),
    )
    .unwrap();
    let bytes = statement.encode_to_vec();
    let seal = signer.sign(&bytes).unwrap();
    v1::Attestation {
        statement: bytes,
        scheme: u32::from(seal.scheme),
        signature: seal.signature,
        signer: seal.signer,
    }
}

#[tokio::test]
async fn what_a_node_enforced_at_a_time_is_its_own_signed_word_checked_here() {
    let site = site("wardctl-attest").await;
    let env = alice(&site);
    let at = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let now = time::OffsetDateTime::now_utc();
    let statement = |revision: u64, t: time::OffsetDateTime| v1::AttestationStatement {
        node: "gw-1".into(),
        revision,
        generation: revision as u32,
        tables_sha256: format!("{revision:064x}"),
        policy_sha256: format!("{:064x}", revision + 100),
        time: at(t),
        why: "applied".into(),
    };
    let mut gw1 = site.agent("gw-1").await;
    let earlier = now - time::Duration::seconds(120);
    gw1.attest(signed(&site, "gw-1", &statement(3, earlier)))
        .await
        .unwrap();
    gw1.attest(signed(&site, "gw-1", &statement(4, now)))
        .await
        .unwrap();

    // Lies an agent or a thief might tell, each refused.
    let refused = |r: Result<tonic::Response<v1::AttestResponse>, tonic::Status>, says: &str| {
        let e = r.expect_err("refused");
        assert!(
            e.message().contains(says),
            "{:?} lacks {says:?}",
            e.message()
        );
    };
    // gw-2's key speaking for gw-1, over gw-1's channel or its own.
    refused(
        gw1.attest(signed(&site, "gw-2", &statement(5, now))).await,
        "signed with the certificate the agent calls with",
    );
    let mut gw2 = site.agent("gw-2").await;
    refused(
        gw2.attest(signed(&site, "gw-2", &statement(5, now))).await,
        "cannot speak for node \"gw-1\"",
    );
    // An operator's certificate signing for a node.
    let mut by_alice =
        wardline_proto::v1::agent_api_client::AgentApiClient::new(site.channel_as("alice").await);
    assert!(
        by_alice
            .attest(signed(&site, "alice", &statement(5, now)))
            .await
            .is_err()
    );
    // The statement altered after signing.
    let mut altered = signed(&site, "gw-1", &statement(5, now));
    let last = altered.statement.len() - 1;
    altered.statement[last] ^= 1;
    assert!(gw1.attest(altered).await.is_err());
    // A statement from far in the past, to fill in history.
    refused(
        gw1.attest(signed(
            &site,
            "gw-1",
            &statement(1, now - time::Duration::days(30)),
        ))
        .await,
        "from the replica's clock",
    );

    // Between the two: revision 3, with 4 as the next.
    let between = at(now - time::Duration::seconds(60));
    let o = run(&["attest", "gw-1", "--at", &between, "-o", "json"], &env).await;
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["revision"], 3, "{v}");
    assert_eq!(v["verified"], true);
    assert_eq!(v["next"]["revision"], 4);
    let o = run(&["attest", "gw-1"], &env).await;
    assert!(text(&o).contains("enforced revision 4"), "{}", text(&o));
    assert!(
        text(&o).contains("verified here against the site CA"),
        "{}",
        text(&o)
    );
    // Before any: not found, named.
    let o = run(&["attest", "gw-1", "--at", "1h"], &env).await;
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));
    assert!(
        text(&o).contains("no attestation at or before"),
        "{}",
        text(&o)
    );

    // Someone with the store rewrites what gw-1 said it enforced: wardctl
    // catches it here, whatever the replica hands out.
    let key = site
        .store
        .range("/wardline/attestations/gw-1/")
        .await
        .unwrap()
        .into_iter()
        .last()
        .unwrap()
        .key;
    site.edit_stored(&key, |v| {
        use prost::Message as _;
        let mut s = statement(4, now);
        s.revision = 2;
        v["statement"] = serde_json::Value::String(hex::encode(s.encode_to_vec()));
    })
    .await;
    let o = run(&["attest", "gw-1"], &env).await;
    assert_eq!(o.status.code(), Some(9), "{}", text(&o));
    assert!(text(&o).contains("fails verification"), "{}", text(&o));
}
