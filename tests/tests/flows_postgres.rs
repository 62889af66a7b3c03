//! Two replicas given one PostgreSQL flow store (`--flow-postgres`): what
//! an agent reports to one, `wardctl observe` on the other answers with.

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
    site.replica_flags = vec!["--flow-postgres".into(), pg.url()];
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
    // Replicas stop before their database.
    site.replicas.clear();
}
