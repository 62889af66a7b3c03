//! The SIEM export against a real collector: rsyslog (Debian `rsyslog` with
//! `rsyslog-gnutls`) receiving RFC 5424 over TLS, and the OCSF JSON lines
//! file, fed by a real replica.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use wardline_pki as pki;
use wardline_proto::v1::{self, agent_api_client::AgentApiClient};
use wardline_tests::require_root;
use wardline_tests::site::{PORT, REPLICAS, Site, ws_ehr_record as flow};
use wardline_tls::{Role, client_tls};

/// A CA of the collector's own and its certificate for 127.0.0.1, in `dir`.
fn collector_pki(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "siem-ca-key.pem",
        "-out",
        "siem-ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test SIEM CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "collector-key.pem",
        "-out",
        "collector.csr",
        "-subj",
        "/CN=collector",
    ]);
    std::fs::write(
        dir.join("collector.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "collector.csr",
        "-CA",
        "siem-ca.pem",
        "-CAkey",
        "siem-ca-key.pem",
        "-CAcreateserial",
        "-out",
        "collector.pem",
        "-days",
        "2",
        "-extfile",
        "collector.ext",
    ]);
}

const COLLECTOR_PORT: u16 = 16514;

/// rsyslog's configuration: TLS on 127.0.0.1, every message's MSGID,
/// HOSTNAME and MSG to `received.log`.
fn rsyslog_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"global(workDirectory="{d}"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{d}/siem-ca.pem"
       defaultNetstreamDriverCertFile="{d}/collector.pem"
       defaultNetstreamDriverKeyFile="{d}/collector-key.pem")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="anon")
template(name="seen" type="string" string="%msgid% %hostname% %app-name% %msg%\n")
ruleset(name="siem") {{
  action(type="omfile" file="{d}/received.log" template="seen")
}}
input(type="imtcp" address="127.0.0.1" port="{COLLECTOR_PORT}" ruleset="siem")
"#
    )
}

/// The replica's `/metrics` (`--metrics-address` below).
fn replica_metrics(site: &Site) -> String {
    site.ns
        .run_in(|| wardline_tests::agent::http_get("127.0.0.1:19464".parse().unwrap(), "/metrics"))
        .expect("/metrics")
        .1
}

fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_flows_and_policy_changes_reach_rsyslog_over_tls_and_the_ocsf_file() {
    require_root();
    let mut site = Site::new();
    let dir = site.dir.join("siem");
    std::fs::create_dir_all(&dir).unwrap();
    collector_pki(&dir);
    std::fs::write(dir.join("rsyslog.conf"), rsyslog_conf(&dir)).unwrap();
    let mut rsyslog = site.ns.spawn([
        "rsyslogd",
        "-n",
        "-f",
        dir.join("rsyslog.conf").to_str().unwrap(),
        "-i",
        dir.join("rsyslog.pid").to_str().unwrap(),
    ]);
    let ocsf = dir.join("ocsf.jsonl");
    site.replica_flags = vec![
        "--siem-syslog".into(),
        format!("127.0.0.1:{COLLECTOR_PORT}"),
        "--siem-ca".into(),
        dir.join("siem-ca.pem").display().to_string(),
        "--siem-ocsf".into(),
        ocsf.display().to_string(),
        "--metrics-address".into(),
        "127.0.0.1:19464".into(),
    ];
    site.start_replica(0, &site.embedded_store());

    // A policy change, and an agent's flow records.
    let revision = site.apply(0, &wardline_tests::docs::ws_ehr_web());
    let paths = pki::issue(
        &site.dir.join("ca"),
        Role::Agent,
        "gw-icu",
        &[],
        &site.dir.join("agents"),
        1,
    )
    .unwrap();
    let tls = client_tls(&site.ca(), &paths.cert, &paths.key, REPLICAS[0]).unwrap();
    let answer = site.ns.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let channel = Endpoint::from_shared(format!("https://{}:{PORT}", REPLICAS[0]))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap();
            AgentApiClient::new(channel)
                .report_flows(v1::FlowBatch {
                    node: "gw-icu".into(),
                    flows: vec![flow(1, 443, "allowed"), flow(2, 22, "dropped")],
                    dropped: 0,
                    buffer: 7,
                })
                .await
                .unwrap()
                .into_inner()
        })
    });
    assert_eq!(answer.accepted, 2);

    let received = dir.join("received.log");
    let lines = || {
        std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    wait_for(
        Duration::from_secs(20),
        "rsyslog received all three",
        || {
            let got = lines();
            let flows = got
                .iter()
                .filter(|l| l.starts_with("flow replica-0 "))
                .count();
            let changes = got
                .iter()
                .filter(|l| l.starts_with("policy-change replica-0 "))
                .count();
            // The audit trail's record of that apply, as it was appended.
            let audited = got.iter().any(|l| {
                l.starts_with("audit replica-0 ")
                    && l.contains(r#""actor":"operator:ops""#)
                    && l.contains(r#""action":"apply""#)
                    && l.contains(r#""outcome":"done""#)
            });
            if flows == 2 && changes == 1 && audited {
                Ok(())
            } else {
                Err(format!(
                    "{got:#?}\nreplica log:\n{}",
                    site.replicas[0].log()
                ))
            }
        },
    );
    let got = lines();
    let body = |line: &str| -> serde_json::Value {
        let json = &line[line.find('{').expect("a JSON body")..];
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let dropped = got
        .iter()
        .map(|l| body(l))
        .find(|e| e["disposition"] == "Blocked")
        .expect("the dropped connection");
    assert_eq!(dropped["class_uid"], 4001);
    assert_eq!(dropped["activity_name"], "Refuse");
    assert_eq!(dropped["dst_endpoint"]["port"], 22);
    assert_eq!(
        dropped["unmapped"]["node"], "gw-icu",
        "named by its certificate"
    );
    let change = got
        .iter()
        .find(|l| l.starts_with("policy-change"))
        .map(|l| body(l))
        .unwrap();
    assert_eq!(change["revision"], revision);
    assert_eq!(change["author"], "operator:ops");
    assert!(
        change["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["document"] == "Policy/ws-ehr-web" && c["change"] == "created"),
        "{change}"
    );
    assert!(got.iter().all(|l| l.contains(" wardline-control-plane ")));

    // The same in the JSON lines file, one object per line.
    wait_for(Duration::from_secs(5), "the OCSF file", || {
        let text = std::fs::read_to_string(&ocsf).unwrap_or_default();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
            .collect::<Result<_, _>>()?;
        let allowed = events
            .iter()
            .filter(|e| e["class_uid"] == 4001 && e["firewall_rule"]["name"] == "ws-ehr-web")
            .count();
        let audit = events.iter().filter(|e| e["event"] == "audit").count();
        if allowed == 1 && events.len() - audit == 3 && audit >= 1 {
            Ok(())
        } else {
            Err(text)
        }
    });
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&ocsf).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let metrics = replica_metrics(&site);
    // The flows, the change and the audit records, every one sent.
    let sent: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("wardline_siem_messages_total{sink=\"syslog\",result=\"sent\"} ")
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(sent >= 4, "{metrics}");

    // A collector whose certificate the configured CA did not sign (here:
    // the site CA is configured instead of the SIEM's) is never sent a
    // byte: someone who answers on the collector's address learns nothing.
    site.replicas[0].kill9();
    site.replica_flags[3] = site.ca().display().to_string();
    site.start_replica(0, &site.embedded_store());
    let before = lines().len();
    site.apply(
        0,
        &wardline_tests::docs::with(wardline_tests::docs::WS_PUMP_EHR, &[]),
    );
    wait_for(Duration::from_secs(10), "the refusal", || {
        let log = site.replicas[0].log();
        if log.contains("SIEM syslog") && log.contains("certificate") {
            Ok(())
        } else {
            Err(log)
        }
    });
    assert_eq!(lines().len(), before, "nothing reached the collector");
    let metrics = replica_metrics(&site);
    assert!(
        metrics.contains("wardline_siem_connected{sink=\"syslog\"} 0"),
        "{metrics}"
    );
    let _ = rsyslog.kill();
    let _ = rsyslog.wait();
}
