//! Two replicas given one PostgreSQL flow store (`--flow-postgres`, over
//! TLS with a client certificate): what an agent reports to one, `wardctl
//! observe` on the other answers with, and `observe -f` there follows.

use std::io::BufRead as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use wardline_flows_postgres::testing::Postgres;
use wardline_pki as pki;
use wardline_proto::v1::{self, agent_api_client::AgentApiClient};
use wardline_tests::require_root;
use wardline_tests::site::{PORT, REPLICAS, Site, ws_ehr_record as flow};
use wardline_tls::{Role, client_tls};

/// `wardctl observe --node gw-icu -o json` on `replica`: (sequence, dport)
/// of each record, in order.
fn observed(site: &Site, replica: usize) -> Vec<(u64, u64)> {
    let out = site.wardctl(replica, &["observe", "--node", "gw-icu", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            (
                v["sequence"].as_u64().unwrap(),
                v["dport"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs root and PostgreSQL 15: run via cargo xtask test"]
fn privileged_two_replicas_on_one_postgres_flow_store_answer_with_each_others_records() {
    require_root();
    let mut site = Site::new();
    let pg = Postgres::start_in(Some(site.ns.name()));
    let tls = pg.tls();
    let (cert, key) = tls.client.clone().unwrap();
    site.replica_flags = vec![
        "--flow-postgres".into(),
        pg.url(),
        "--flow-postgres-ca".into(),
        tls.ca.display().to_string(),
        "--flow-postgres-cert".into(),
        cert.display().to_string(),
        "--flow-postgres-key".into(),
        key.display().to_string(),
    ];
    // Each replica its own policy store; the flow store is what they share.
    for i in 0..2 {
        let store = format!(
            "embedded:{}",
            site.dir.join(format!("policy-{i}.redb")).display()
        );
        site.start_replica(i, &store);
    }
    let paths = pki::issue(
        &site.dir.join("ca"),
        Role::Agent,
        "gw-icu",
        &[],
        &site.dir.join("agents"),
        1,
    )
    .unwrap();
    // The agent's batch to replica 0, and the same batch again to replica
    // 1 (as after an answer lost), then its next one there.
    let report = |replica: usize, flows: Vec<v1::Flow>| {
        let tls = client_tls(&site.ca(), &paths.cert, &paths.key, REPLICAS[replica]).unwrap();
        site.ns.run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let channel =
                    Endpoint::from_shared(format!("https://{}:{PORT}", REPLICAS[replica]))
                        .unwrap()
                        .tls_config(tls)
                        .unwrap()
                        .connect()
                        .await
                        .unwrap();
                AgentApiClient::new(channel)
                    .report_flows(v1::FlowBatch {
                        node: "gw-icu".into(),
                        flows,
                        dropped: 0,
                        buffer: 7,
                    })
                    .await
                    .unwrap()
                    .into_inner()
            })
        })
    };
    // Following on replica 1 what the agent sends to either.
    let mut follower = site
        .wardctl_command(1, &["observe", "--node", "gw-icu", "-f", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follow has subscribed once it is connected: give it that.
    std::thread::sleep(Duration::from_secs(1));
    let first = vec![flow(1, 443, "allowed"), flow(2, 22, "dropped")];
    assert_eq!(report(0, first.clone()).accepted, 2);
    assert_eq!(observed(&site, 1), vec![(1, 443), (2, 22)]);
    assert_eq!(report(1, first).accepted, 2);
    assert_eq!(report(1, vec![flow(3, 8080, "dropped")]).accepted, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let want = vec![(1, 443), (2, 22), (3, 8080)];
    while observed(&site, 0) != want {
        assert!(
            Instant::now() < deadline,
            "replica 0: {:?}",
            observed(&site, 0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(observed(&site, 1), want);
    assert_eq!(pg.psql("SELECT count(*) FROM wardline_flows"), "3");
    let followed: Vec<(u64, u64)> = (0..3)
        .map(|_| {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .expect("the follow on replica 1 shows the record");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            (
                v["sequence"].as_u64().unwrap(),
                v["dport"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(followed, want, "each record followed once, in order");
    assert!(
        lines.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing more"
    );
    follower.kill().unwrap();
    follower.wait().unwrap();
    // Replicas stop before their database.
    site.replicas.clear();
}
