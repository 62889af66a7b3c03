//! Both APIs over real mutual TLS on loopback, with the embedded store:
//! what operators and agents may do, and every refusal.

use wardline_control_plane::testing::scratch;

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::Endpoint;
use tonic::{Code, Request};
use wardline_control_plane::server;
use wardline_pki as pki;
use wardline_proto::v1::{
    self, agent_api_client::AgentApiClient, management_client::ManagementClient,
};
use wardline_tls::Role;

const SEGMENTS: &str = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pumps}\nspec: {cidrs: [\"198.18.30.0/24\"], vlans: [30]}\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pump-server}\nspec:\n  nodeSelector: {matchLabels: {role: pump-server}}\n";
const POLICY: &str = "apiVersion: wardline/v1\nkind: Policy\nmetadata: {name: pumps-to-server}\nspec: {action: allow, from: [pumps], to: [pump-server], ports: [{protocol: tcp, port: 443}]}\n";

/// The nodes operators declared: gw-1 a gateway, gw-2 a pump server, each
/// with the addresses it may claim.
const NODES: &str = "apiVersion: wardline/v1\nkind: Node\nmetadata: {name: gw-1, labels: {role: gateway}}\nspec: {addresses: [\"198.18.20.0/24\"]}\n---\napiVersion: wardline/v1\nkind: Node\nmetadata: {name: gw-2, labels: {role: pump-server}}\nspec: {addresses: [\"198.18.42.0/24\"]}\n";

fn apply(source: &str, expected: Option<u64>, message: &str) -> v1::ApplyRequest {
    v1::ApplyRequest {
        source: source.into(),
        expected_revision: expected,
        message: message.into(),
        prune: false,
    }
}

#[tokio::test]
async fn apply_history_rollback_and_optimistic_concurrency() {
    let site = site("apply").await;
    let mut op = site.operator().await;
    let r = op
        .apply(apply(SEGMENTS, Some(0), "first segments"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, 1);
    assert_eq!(r.changes.len(), 2);
    let r = op
        .apply(apply(POLICY, None, "pump policy"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, 2);
    // Unchanged documents write nothing.
    let r = op
        .apply(apply(POLICY, None, "again"))
        .await
        .unwrap()
        .into_inner();
    assert!(r.unchanged);
    assert_eq!(r.revision, 2);
    // A stale writer is refused, not merged.
    let err = op
        .apply(apply(&POLICY.replace("443", "8443"), Some(1), "stale"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("expected 1") && err.message().contains("current revision is 2"),
        "{}",
        err.message()
    );
    // Diff shows what an apply would change.
    let d = op
        .diff(v1::DiffRequest {
            source: POLICY.replace("443", "8443"),
            prune: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.changes.len(), 1);
    assert!(
        d.diff.contains("-") && d.diff.contains("+") && d.diff.contains("8443"),
        "{}",
        d.diff
    );
    let r = op
        .apply(apply(
            &POLICY.replace("443", "8443"),
            Some(2),
            "move to 8443",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, 3);
    // Get, by kind and name, now and at an earlier revision.
    let g = op
        .get(v1::GetRequest {
            kind: "policy".into(),
            name: "pumps-to-server".into(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.documents[0].yaml.contains("8443"));
    let g = op
        .get(v1::GetRequest {
            kind: "policy".into(),
            name: "pumps-to-server".into(),
            revision: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(g.documents[0].yaml.contains("port: 443"));
    // Rollback to revision 2 is revision 4, recorded as such.
    let r = op
        .rollback(v1::RollbackRequest {
            to_revision: 2,
            expected_revision: Some(3),
            message: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, 4);
    let h = op
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.revisions.iter().map(|r| r.revision).collect::<Vec<_>>(),
        [4, 3, 2, 1]
    );
    assert_eq!(h.revisions[0].action, "rollback");
    assert_eq!(h.revisions[0].author, "operator:alice");
    assert_eq!(h.revisions[1].message, "move to 8443");
    // Delete: a segment a policy names cannot go; the policy can.
    let err = op
        .delete(v1::DeleteRequest {
            kind: "segment".into(),
            name: "pumps".into(),
            expected_revision: None,
            message: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let r = op
        .delete(v1::DeleteRequest {
            kind: "policy".into(),
            name: "pumps-to-server".into(),
            expected_revision: Some(4),
            message: "gone".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision, 5);
    let err = op
        .get(v1::GetRequest {
            kind: "policy".into(),
            name: "pumps-to-server".into(),
            revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn bad_input_is_refused_and_the_store_is_unchanged() {
    let site = site("bad").await;
    let mut op = site.operator().await;
    op.apply(apply(&format!("{SEGMENTS}---\n{POLICY}"), None, ""))
        .await
        .unwrap();
    let cases = [
        (POLICY.replace("to: [pump-server]", "to: [nowhere]"), "spec.to[0]"),
        (POLICY.replace("port: 443", "port: 70000"), "spec.ports[0].port"),
        (SEGMENTS.replace("vlans: [30]", "vlans: [4095]"), "spec.vlans[0]"),
        // A new segment claiming a stored segment's prefix.
        ("apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: dup}\nspec: {cidrs: [\"198.18.30.0/24\"]}\n".to_owned(), "198.18.30.0/24"),
        // And its VLAN.
        ("apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: dup}\nspec: {vlans: [30]}\n".to_owned(), "30"),
        ("kind: Policy\n: : :\n".to_owned(), "document 1"),
    ];
    for (source, needle) in cases {
        let err = op.apply(apply(&source, None, "")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{source}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{needle:?} not in {}",
            err.message()
        );
        let v = op
            .validate(v1::ValidateRequest {
                source: source.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!v.errors.is_empty(), "validate agrees for {source}");
    }
    // Oversized.
    let big = format!("# {}\n{POLICY}", "x".repeat(17 << 20));
    let err = op.apply(apply(&big, None, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit"), "{}", err.message());
    let h = op
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.revisions.len(), 1, "nothing was written");
}

#[tokio::test]
async fn refusals_agents_and_operators_stay_in_their_lanes() {
    let site = site("refuse").await;
    // An agent cannot call the management API.
    let mut as_agent = ManagementClient::new(site.channel_as("gw-1").await);
    let err = as_agent.status(v1::StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // An operator cannot pose as an agent.
    let mut as_operator = AgentApiClient::new(site.channel_as("alice").await);
    let err = as_operator
        .register(v1::RegisterRequest {
            node: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // An agent cannot speak for, or read the policy of, another node.
    let mut gw1 = site.agent("gw-1").await;
    for err in [
        gw1.register(v1::RegisterRequest {
            node: "gw-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        gw1.watch(v1::WatchRequest {
            node: "gw-2".into(),
            known_revision: 0,
        })
        .await
        .unwrap_err(),
        gw1.ack(v1::AckRequest {
            node: "gw-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
        gw1.heartbeat(v1::HeartbeatRequest {
            node: "gw-2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().contains("gw-1") && err.message().contains("gw-2"),
            "{}",
            err.message()
        );
    }
    // No client certificate at all: the handshake fails, nothing is served.
    let ca =
        tonic::transport::Certificate::from_pem(std::fs::read(site.dir.join("ca/ca.pem")).unwrap());
    let plain_tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("127.0.0.1");
    let channel = Endpoint::from_shared(site.endpoint.clone())
        .unwrap()
        .tls_config(plain_tls)
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = channel {
        let err = ManagementClient::new(channel)
            .status(Request::new(v1::StatusRequest {}))
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }
    // A certificate from another CA: refused too.
    let other = scratch("other-ca");
    pki::init_ca(&other.join("ca"), "elsewhere").unwrap();
    pki::issue(
        &other.join("ca"),
        Role::Operator,
        "mallory",
        &[],
        &other,
        30,
    )
    .unwrap();
    // (client_tls refuses such a certificate up front; the server must too.)
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(site.dir.join("ca/ca.pem")).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(other.join("mallory.pem")).unwrap(),
            std::fs::read(other.join("mallory-key.pem")).unwrap(),
        ))
        .domain_name("127.0.0.1");
    let channel = Endpoint::from_shared(site.endpoint.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = channel {
        let err = ManagementClient::new(channel)
            .status(v1::StatusRequest {})
            .await
            .unwrap_err();
        assert_ne!(
            err.code(),
            Code::Ok,
            "a foreign certificate must not be served"
        );
    }
    std::fs::remove_dir_all(other).unwrap();
}

async fn next(stream: &mut tonic::Streaming<v1::SignedSnapshot>) -> v1::PolicySnapshot {
    let signed = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("a snapshot within 5 s")
        .expect("the stream goes on")
        .expect("a snapshot");
    open(&signed)
}

/// The snapshot inside `signed`, once its seal verifies against the CA of
/// the test site.
fn open(signed: &v1::SignedSnapshot) -> v1::PolicySnapshot {
    let seal = wardline_signing::Seal {
        scheme: u16::try_from(signed.scheme).unwrap(),
        signature: signed.signature.to_vec(),
        signer: signed.signer.to_vec(),
    };
    let who = VERIFIER
        .with(|v| {
            v.borrow().as_ref().expect("a site was started").verify(
                &signed.snapshot,
                &seal,
                rustls::pki_types::UnixTime::now(),
            )
        })
        .expect("signed by the site's replica");
    assert_eq!(who.role, Role::ControlPlane);
    let snapshot: v1::PolicySnapshot = prost::Message::decode(signed.snapshot.as_ref()).unwrap();
    whole(snapshot)
}

/// `snapshot` with its tables whole: a change is made from the tables it
/// names (seen earlier on this thread), as an agent makes it, and must
/// give the tables the replica signed.
fn whole(mut snapshot: v1::PolicySnapshot) -> v1::PolicySnapshot {
    use sha2::Digest as _;

    if let Some(delta) = &snapshot.delta {
        let base = SEEN.with(|seen| seen.borrow().get(&delta.base_tables_sha256).cloned());
        let base = base.expect("a change to tables this thread saw");
        let base: v1::Tables = prost::Message::decode(base.as_slice()).unwrap();
        let base = wardline_policy::Schedule::try_from(&base).unwrap();
        let made = wardline_proto::delta::apply(&base, &delta.dataplanes).unwrap();
        snapshot.tables = prost::Message::encode_to_vec(&v1::Tables::from(&made));
    }
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&snapshot.tables)),
        snapshot.tables_sha256
    );
    SEEN.with(|seen| {
        seen.borrow_mut()
            .insert(snapshot.tables_sha256.clone(), snapshot.tables.clone())
    });
    snapshot
}

thread_local! {
    /// The verifier of the site the test on this thread started.
    static VERIFIER: std::cell::RefCell<Option<wardline_signing::Verifier>> =
        const { std::cell::RefCell::new(None) };
    /// Every set of whole tables seen on this thread, by SHA-256.
    static SEEN: std::cell::RefCell<std::collections::HashMap<String, Vec<u8>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// A test site whose snapshots [`open`] verifies.
async fn site(tag: &str) -> wardline_control_plane::testing::Site {
    let site = wardline_control_plane::testing::site(tag).await;
    let verifier = wardline_signing::Verifier::from_ca_file(&site.dir.join("ca/ca.pem")).unwrap();
    VERIFIER.with(|v| *v.borrow_mut() = Some(verifier));
    site
}

/// The first snapshot within 5 s for which `wanted` holds; snapshots
/// before it (still on their way from earlier changes) are passed over.
async fn next_where(
    stream: &mut tonic::Streaming<v1::SignedSnapshot>,
    wanted: impl Fn(&v1::PolicySnapshot) -> bool,
) -> v1::PolicySnapshot {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let s = next(stream).await;
            if wanted(&s) {
                return s;
            }
        }
    })
    .await
    .expect("the snapshot within 5 s")
}

/// How a stream ends, within 5 s, after any snapshot already on its way.
async fn stream_error(stream: &mut tonic::Streaming<v1::SignedSnapshot>) -> tonic::Status {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.next().await.expect("an error, not a clean end") {
                Ok(_) => continue,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the stream ends within 5 s")
}

/// `node`'s snapshot stream, from no revision known.
async fn watch_from_start(
    agent: &mut AgentApiClient<tonic::transport::Channel>,
    node: &str,
) -> tonic::Streaming<v1::SignedSnapshot> {
    agent
        .watch(v1::WatchRequest {
            node: node.into(),
            known_revision: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

/// gw-2, the pump server, connected and registered with its address.
async fn pump_server(
    site: &wardline_control_plane::testing::Site,
) -> AgentApiClient<tonic::transport::Channel> {
    let mut gw2 = site.agent("gw-2").await;
    gw2.register(v1::RegisterRequest {
        node: "gw-2".into(),
        addresses: vec!["198.18.42.10".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    gw2
}

/// The compiled tables in force now that a snapshot carries.
fn tables(s: &v1::PolicySnapshot) -> wardline_policy::Dataplane {
    let tables: v1::Tables = prost::Message::decode(s.tables.as_ref()).unwrap();
    wardline_policy::Schedule::try_from(&tables).unwrap().now
}

#[tokio::test]
async fn an_apply_is_sent_as_read_once_and_as_its_stored_revision_compiles() {
    // The replica validates and compiles the apply from the source as the
    // operator ordered it, and sends those tables without reading the
    // revision back. They must be the tables any replica compiles from the
    // stored revision, or two replicas would send different tables for one
    // revision.
    let site = site("read-once").await;
    let mut op = site.operator().await;
    let source = format!(
        "{POLICY}---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: alarms}}\nspec: {{cidrs: [\"198.18.40.0/24\"]}}\n---\n{SEGMENTS}"
    );
    op.apply(apply(&source, None, "")).await.unwrap();
    let mut gw1 = site.agent("gw-1").await;
    let mut stream = watch_from_start(&mut gw1, "gw-1").await;
    let sent = next_where(&mut stream, |s| s.revision == 1).await;
    let stored = op
        .get(v1::GetRequest {
            revision: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let reread: String = stored
        .documents
        .iter()
        .map(|d| format!("---\n{}", d.yaml))
        .collect();
    let set = wardline_policy::parse(&reread).unwrap();
    let names: Vec<&str> = set.segments.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["alarms", "pump-server", "pumps"], "stored order");
    let options = wardline_policy::CompileOptions {
        now: time::OffsetDateTime::now_utc(),
        nodes: vec![],
    };
    let schedule = wardline_policy::Schedule::compile(&set, &options, 8).unwrap();
    let expected = prost::Message::encode_to_vec(&v1::Tables::from(&schedule));
    assert_eq!(
        sent.tables, expected,
        "the tables the stored revision compiles to"
    );
}

#[tokio::test]
async fn a_node_change_goes_out_as_a_delta_that_makes_the_signed_tables() {
    use sha2::Digest as _;

    let site = site("delta").await;
    let mut op = site.operator().await;
    op.apply(apply(
        &format!("{SEGMENTS}---\n{NODES}---\n{POLICY}"),
        None,
        "",
    ))
    .await
    .unwrap();
    let mut gw1 = site.agent("gw-1").await;
    let mut stream = watch_from_start(&mut gw1, "gw-1").await;
    let first = next_where(&mut stream, |s| s.revision == 1).await;
    assert!(
        first.delta.is_none() && !first.tables.is_empty(),
        "a new stream gets whole tables"
    );
    let base = wardline_policy::Schedule::try_from(
        &prost::Message::decode(first.tables.as_ref()).unwrap(),
    )
    .unwrap();

    // The pump server joins: only which prefixes are in which segment
    // changes, so the stream sends that change alone.
    let _gw2 = pump_server(&site).await;
    let signed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let signed = stream.next().await.unwrap().unwrap();
            if open(&signed).tables_sha256 != first.tables_sha256 {
                return signed;
            }
        }
    })
    .await
    .expect("the change within 5 s");
    let changed: v1::PolicySnapshot = prost::Message::decode(signed.snapshot.as_ref()).unwrap();
    assert_eq!(changed.revision, 1, "a node change is no new revision");
    assert!(changed.tables.is_empty(), "no whole tables");
    let delta = changed.delta.clone().expect("sent as a change");
    assert_eq!(delta.base_tables_sha256, first.tables_sha256);
    let made = wardline_proto::delta::apply(&base, &delta.dataplanes).unwrap();
    let encoded = prost::Message::encode_to_vec(&v1::Tables::from(&made));
    assert_eq!(
        hex::encode(sha2::Sha256::digest(&encoded)),
        changed.tables_sha256,
        "the change makes the tables the replica signed"
    );
    assert!(
        made.now
            .prefixes
            .iter()
            .any(|(n, _)| n.to_string() == "198.18.42.10/32")
    );

    // A stream that did not see the base (an agent that restarted, or
    // one that could not use the change) gets whole tables.
    let mut again = watch_from_start(&mut gw1, "gw-1").await;
    let all = next(&mut again).await;
    assert!(all.delta.is_none());
    assert_eq!(all.tables, encoded);
    assert_eq!(all.tables_sha256, changed.tables_sha256);
}

/// The value of the series `series` (name and labels exactly as exposed).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_replica_counts_what_it_serves_in_metrics() {
    let site = site("metrics").await;
    let mut op = site.operator().await;
    op.apply(apply(
        &format!("{SEGMENTS}---\n{NODES}---\n{POLICY}"),
        None,
        "",
    ))
    .await
    .unwrap();
    let mut gw1 = site.agent("gw-1").await;
    gw1.register(v1::RegisterRequest {
        node: "gw-1".into(),
        addresses: vec!["198.18.20.1".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = watch_from_start(&mut gw1, "gw-1").await;
    let first = next_where(&mut stream, |s| s.revision == 1).await;
    gw1.ack(v1::AckRequest {
        node: "gw-1".into(),
        revision: 1,
        policy_sha256: first.policy_sha256.clone(),
        generation: 1,
        error: String::new(),
        tables_sha256: first.tables_sha256.clone(),
    })
    .await
    .unwrap();
    // gw-2 joins: gw-1's stream gets the change alone.
    let _gw2 = pump_server(&site).await;
    next_where(&mut stream, |s| s.tables_sha256 != first.tables_sha256).await;
    let metrics = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = site.control_plane.render_metrics();
            if sample(&m, "wardline_apply_to_ack_seconds_count") == Some(1.0) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the ack counted within 5 s");
    for (series, value) in [
        ("wardline_policy_revision", 1.0),
        ("wardline_agents_connected", 1.0),
        ("wardline_nodes{admission=\"declared\"}", 2.0),
        ("wardline_nodes{admission=\"pending\"}", 0.0),
        ("wardline_snapshots_sent_total{form=\"whole\"}", 1.0),
        ("wardline_snapshots_sent_total{form=\"delta\"}", 1.0),
        ("wardline_apply_to_ack_seconds_bucket{le=\"+Inf\"}", 1.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series}:\n{metrics}"
        );
    }
    // Counts only: no node's name, address or policy.
    for secret in ["gw-1", "198.18.", "pumps-to-server"] {
        assert!(!metrics.contains(secret), "{secret}:\n{metrics}");
    }
}

/// A flow record of gw-1's, `ago` seconds before now.
fn flow_record(seq: u64, ago: i64, dst: [u8; 4], dport: u32, verdict: &str) -> v1::Flow {
    let time = (time::OffsetDateTime::now_utc() - time::Duration::seconds(ago))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let dropped = verdict == "dropped";
    v1::Flow {
        time,
        kind: if dropped { "drop" } else { "new" }.into(),
        interface: "eth1".into(),
        direction: "ingress".into(),
        src: vec![198, 18, 20, 10],
        dst: dst.to_vec(),
        sport: 40_000 + seq as u32,
        dport,
        protocol: 6,
        src_segment: "pumps".into(),
        dst_segment: if dst[2] == 42 { "pump-server" } else { "world" }.into(),
        verdict: verdict.into(),
        reason: if dropped {
            "default-deny"
        } else {
            "policy-allow"
        }
        .into(),
        policy: if dropped { "" } else { "pumps-to-server" }.into(),
        generation: 1,
        revision: 1,
        packets: 1,
        bytes: 60,
        sequence: seq,
        src_mac: Vec::new(),
        dst_mac: Vec::new(),
        ..Default::default()
    }
}

#[tokio::test]
async fn flow_records_are_stored_under_the_callers_name_queried_and_followed() {
    let site = site("flows").await;
    let mut op = site.operator().await;
    let mut gw1 = site.agent("gw-1").await;
    let batch = v1::FlowBatch {
        node: "gw-1".into(),
        flows: vec![
            flow_record(1, 30, [198, 18, 42, 10], 443, "allowed"),
            flow_record(2, 20, [203, 0, 113, 9], 22, "dropped"),
            {
                // An impossible record: refused whole, the others kept.
                let mut f = flow_record(3, 10, [198, 18, 42, 10], 443, "allowed");
                f.dst = vec![1, 2, 3];
                f
            },
        ],
        dropped: 5,
        buffer: 42,
    };
    let got = gw1.report_flows(batch.clone()).await.unwrap().into_inner();
    assert_eq!((got.accepted, got.refused), (2, 1), "{got:?}");
    assert!(got.first_refusal.contains("record 3: src, dst"), "{got:?}");
    // The answer was lost, the agent sends again: stored once.
    let again = gw1.report_flows(batch.clone()).await.unwrap().into_inner();
    assert_eq!((again.accepted, again.refused), (3, 0));

    // gw-1's certificate cannot report for gw-2.
    let forged = v1::FlowBatch {
        node: "gw-2".into(),
        ..batch.clone()
    };
    let e = gw1.report_flows(forged).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let observe = |req: v1::ObserveRequest| {
        let mut op = op.clone();
        async move {
            let mut s = op.observe(req).await?.into_inner();
            let mut out = Vec::new();
            while let Some(f) = s.next().await {
                out.push(f?);
            }
            Ok::<_, tonic::Status>(out)
        }
    };
    let all = observe(v1::ObserveRequest::default()).await.unwrap();
    assert_eq!(all.iter().map(|f| f.sequence).collect::<Vec<_>>(), [1, 2]);
    assert!(
        all.iter().all(|f| f.node == "gw-1"),
        "named by the certificate"
    );
    let dropped = observe(v1::ObserveRequest {
        verdict: "dropped".into(),
        to: "203.0.113.0/24".into(),
        since: "5m".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0].dport, 22);
    let none = observe(v1::ObserveRequest {
        from: "pump-server".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(none.is_empty());
    // A malformed filter is refused, naming it.
    for (req, field) in [
        (
            v1::ObserveRequest {
                from: "198.18.0.0/99".into(),
                ..Default::default()
            },
            "from:",
        ),
        (
            v1::ObserveRequest {
                since: "the day before".into(),
                ..Default::default()
            },
            "since:",
        ),
        (
            v1::ObserveRequest {
                verdict: "denied".into(),
                ..Default::default()
            },
            "verdict:",
        ),
    ] {
        let e = observe(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().starts_with(field), "{}", e.message());
    }
    let matrix = op
        .flow_matrix(v1::ObserveRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(matrix.flows, 2);
    assert!(matrix.cells.iter().any(|c| c.src_segment == "pumps"
        && c.dst_segment == "world"
        && c.verdict == "dropped"
        && c.flows == 1));

    // Following: the stored ones, then a new one as it arrives.
    let mut follow = op
        .observe(v1::ObserveRequest {
            follow: true,
            verdict: "allowed".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = follow.next().await.unwrap().unwrap();
    assert_eq!(first.sequence, 1);
    gw1.report_flows(v1::FlowBatch {
        node: "gw-1".into(),
        flows: vec![
            flow_record(4, 0, [203, 0, 113, 9], 22, "dropped"),
            flow_record(5, 0, [198, 18, 42, 10], 443, "allowed"),
        ],
        dropped: 5,
        buffer: 42,
    })
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), follow.next())
        .await
        .expect("the new record within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.sequence, 5, "only what the filter wants");

    // More records than a batch may hold: refused whole.
    let e = gw1
        .report_flows(v1::FlowBatch {
            node: "gw-1".into(),
            flows: (1..=1_001)
                .map(|i| flow_record(100 + i, 0, [198, 18, 42, 10], 443, "allowed"))
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let metrics = site.control_plane.render_metrics();
    assert_eq!(
        sample(&metrics, "wardline_flow_records_total{result=\"refused\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "wardline_flow_records_lost_by_agents"),
        Some(5.0)
    );
    assert_eq!(sample(&metrics, "wardline_flow_records_stored"), Some(4.0));
}

#[tokio::test]
async fn agents_get_snapshots_nodes_join_and_acks_are_tracked() {
    let site = site("agents").await;
    let mut op = site.operator().await;
    op.apply(apply(
        &format!("{SEGMENTS}---\n{NODES}---\n{POLICY}"),
        None,
        "",
    ))
    .await
    .unwrap();
    let mut gw1 = site.agent("gw-1").await;
    gw1.register(v1::RegisterRequest {
        node: "gw-1".into(),
        labels: [("role".into(), "gateway".into())].into(),
        addresses: vec!["198.18.20.1".into()],
    })
    .await
    .unwrap();
    let mut stream = watch_from_start(&mut gw1, "gw-1").await;
    let first = next_where(&mut stream, |s| s.revision == 1).await;
    let dp = tables(&first);
    assert!(
        !dp.prefixes
            .iter()
            .any(|(n, _)| n.to_string() == "198.18.42.10/32")
    );
    gw1.ack(v1::AckRequest {
        node: "gw-1".into(),
        revision: 1,
        policy_sha256: first.policy_sha256.clone(),
        generation: 7,
        error: String::new(),
        tables_sha256: String::new(),
    })
    .await
    .unwrap();

    // A pump server joins: its address joins the selecting segment, and
    // gw-1 gets a new snapshot of the same revision with it.
    let mut gw2 = site.agent("gw-2").await;
    gw2.register(v1::RegisterRequest {
        node: "gw-2".into(),
        labels: [("role".into(), "pump-server".into())].into(),
        addresses: vec!["198.18.42.10".into()],
    })
    .await
    .unwrap();
    let joined = next_where(&mut stream, |s| {
        tables(s)
            .prefixes
            .iter()
            .any(|(n, _)| n.to_string() == "198.18.42.10/32")
    })
    .await;
    assert_eq!(joined.revision, 1);
    let dp = tables(&joined);
    let server = dp
        .segments
        .iter()
        .find(|s| s.name == "pump-server")
        .unwrap()
        .id;
    assert!(
        dp.prefixes
            .iter()
            .any(|(n, id)| n.to_string() == "198.18.42.10/32" && *id == server)
    );
    // Registering again with the same addresses changes nothing: no push.
    gw2.register(v1::RegisterRequest {
        node: "gw-2".into(),
        labels: [("role".into(), "pump-server".into())].into(),
        addresses: vec!["198.18.42.10".into()],
    })
    .await
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(700), stream.next())
            .await
            .is_err(),
        "nothing changed, nothing sent"
    );

    // A new revision reaches the stream.
    op.apply(apply(&POLICY.replace("443", "8443"), None, ""))
        .await
        .unwrap();
    let second = next(&mut stream).await;
    assert_eq!(second.revision, 2);
    let status = op.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.revision, 2);
    let a = status.agents.iter().find(|a| a.node == "gw-1").unwrap();
    assert_eq!(a.acked_revision, 1);
    assert!(a.connected);
    assert_eq!(a.addresses, ["198.18.20.1"]);
    assert_eq!(status.agents.len(), 2);
}

#[tokio::test]
async fn a_node_leaving_is_pushed_and_a_lagging_agent_is_flagged() {
    let site = site("leave").await;
    let mut op = site.operator().await;
    op.apply(apply(
        &format!("{SEGMENTS}---\n{NODES}---\n{POLICY}"),
        None,
        "",
    ))
    .await
    .unwrap();
    let mut gw1 = site.agent("gw-1").await;
    gw1.register(v1::RegisterRequest {
        node: "gw-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = watch_from_start(&mut gw1, "gw-1").await;
    let first = next(&mut stream).await;
    gw1.ack(v1::AckRequest {
        node: "gw-1".into(),
        revision: first.revision,
        policy_sha256: first.policy_sha256,
        generation: 1,
        error: String::new(),
        tables_sha256: String::new(),
    })
    .await
    .unwrap();
    let has_server = |s: &v1::PolicySnapshot| {
        tables(s)
            .prefixes
            .iter()
            .any(|(n, _)| n.to_string() == "198.18.42.10/32")
    };
    let mut gw2 = site.agent("gw-2").await;
    gw2.register(v1::RegisterRequest {
        node: "gw-2".into(),
        labels: [("role".into(), "pump-server".into())].into(),
        addresses: vec!["198.18.42.10".into()],
    })
    .await
    .unwrap();
    next_where(&mut stream, has_server).await;
    // The node leaves (an operator removes it): pushed without its address.
    op.delete(v1::DeleteRequest {
        kind: "node".into(),
        name: "gw-2".into(),
        expected_revision: None,
        message: String::new(),
    })
    .await
    .unwrap();
    next_where(&mut stream, |s| !has_server(s)).await;

    // A revision gw-1 receives but does not acknowledge: flagged after the grace period.
    op.apply(apply(&POLICY.replace("443", "8443"), None, ""))
        .await
        .unwrap();
    let second = next_where(&mut stream, |s| s.revision == 2).await;
    let status = |op: &mut wardline_proto::v1::management_client::ManagementClient<
        tonic::transport::Channel,
    >| {
        let mut op = op.clone();
        async move { op.status(v1::StatusRequest {}).await.unwrap().into_inner() }
    };
    let gw1_of =
        |s: &v1::StatusResponse| s.agents.iter().find(|a| a.node == "gw-1").cloned().unwrap();
    assert!(
        !gw1_of(&status(&mut op).await).behind,
        "not yet: within the grace period"
    );
    tokio::time::sleep(server::BEHIND_GRACE + Duration::from_millis(500)).await;
    gw1.heartbeat(v1::HeartbeatRequest {
        node: "gw-1".into(),
        revision: 1,
        generation: 1,
    })
    .await
    .unwrap();
    let s = status(&mut op).await;
    assert!(gw1_of(&s).behind && gw1_of(&s).connected, "{s:?}");
    gw1.ack(v1::AckRequest {
        node: "gw-1".into(),
        revision: 2,
        policy_sha256: second.policy_sha256,
        generation: 2,
        error: String::new(),
        tables_sha256: String::new(),
    })
    .await
    .unwrap();
    assert!(!gw1_of(&status(&mut op).await).behind);
}

/// One stolen agent key: the gateway's agent registers as a pump server
/// with the EHR's address. Its claims change no snapshot anywhere, and
/// the operators' next apply goes through.
#[tokio::test]
async fn a_stolen_agent_key_cannot_move_addresses_or_block_applies() {
    let ehr = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: ehr}\nspec: {cidrs: [\"198.18.41.0/24\"]}\n";
    let site = site("stolen").await;
    let mut op = site.operator().await;
    op.apply(apply(
        &format!("{SEGMENTS}---\n{ehr}---\n{NODES}---\n{POLICY}"),
        None,
        "",
    ))
    .await
    .unwrap();
    let mut gw2 = pump_server(&site).await;
    let mut stream = watch_from_start(&mut gw2, "gw-2").await;
    let before = tables(
        &next_where(&mut stream, |s| {
            tables(s)
                .prefixes
                .iter()
                .any(|(n, _)| n.to_string() == "198.18.42.10/32")
        })
        .await,
    );

    // gw-1's key, stolen: it claims the pump server's role and an EHR host.
    let mut stolen = site.agent("gw-1").await;
    stolen
        .register(v1::RegisterRequest {
            node: "gw-1".into(),
            labels: [("role".into(), "pump-server".into())].into(),
            addresses: vec!["198.18.41.5".into(), "198.18.20.1".into()],
        })
        .await
        .unwrap();
    // A node under another name is refused: the certificate names the node.
    let err = stolen
        .register(v1::RegisterRequest {
            node: "gw-2".into(),
            labels: [("role".into(), "pump-server".into())].into(),
            addresses: vec!["198.18.41.5".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // gw-1's own address (within its range) joins nothing new for gw-2's
    // segments; the EHR address stays the EHR's.
    if let Ok(Some(Ok(s))) = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await
    {
        let after = tables(&open(&s));
        assert_eq!(
            before.prefixes, after.prefixes,
            "a lying registration changed the tables"
        );
    }
    // Operators see what it claimed and was not given.
    let status = op.status(v1::StatusRequest {}).await.unwrap().into_inner();
    let gw1 = status.agents.iter().find(|a| a.node == "gw-1").unwrap();
    assert_eq!(gw1.admission, "declared");
    assert_eq!(gw1.labels.get("role").map(String::as_str), Some("gateway"));
    assert_eq!(gw1.addresses, vec!["198.18.20.1".to_owned()]);
    assert_eq!(gw1.refused_addresses, vec!["198.18.41.5".to_owned()]);
    assert_eq!(
        gw1.reported_labels.get("role").map(String::as_str),
        Some("pump-server")
    );

    // The operators' next apply succeeds and reaches gw-2.
    op.apply(apply(&POLICY.replace("443", "8443"), None, "after the lie"))
        .await
        .expect("an apply right after succeeds");
    let after = next(&mut stream).await;
    assert_eq!(after.revision, 2);
    // gw-2 gets compiled tables only: neither the policy source nor other
    // nodes' names or labels.
    let tables_bytes: &[u8] = &after.tables;
    for leak in ["apiVersion", "gw-1", "gateway", "CHG-"] {
        assert!(
            !tables_bytes
                .windows(leak.len())
                .any(|w| w == leak.as_bytes()),
            "the snapshot carries {leak:?}"
        );
    }
    assert!(after.tables_sha256.len() == 64);
    let dp = tables(&after);
    let ehr_id = dp.segments.iter().find(|s| s.name == "ehr").unwrap().id;
    assert!(
        !dp.prefixes
            .iter()
            .any(|(n, id)| n.to_string() == "198.18.41.5/32" && *id != ehr_id),
        "the EHR host stays in the EHR segment"
    );
    assert!(
        dp.prefixes
            .iter()
            .any(|(n, _)| n.to_string() == "198.18.42.10/32"),
        "the honest pump server is still a member"
    );
}

#[tokio::test]
async fn a_removed_node_is_cut_off_and_stays_out_until_unblocked() {
    let site = site("blocked").await;
    let mut op = site.operator().await;
    op.apply(apply(
        &format!("{SEGMENTS}---\n{NODES}---\n{POLICY}"),
        None,
        "",
    ))
    .await
    .unwrap();
    let register = |agent: &AgentApiClient<tonic::transport::Channel>| {
        let mut agent = agent.clone();
        async move {
            agent
                .register(v1::RegisterRequest {
                    node: "gw-2".into(),
                    addresses: vec!["198.18.42.10".into()],
                    ..Default::default()
                })
                .await
        }
    };
    let has_server = |s: &v1::PolicySnapshot| {
        tables(s)
            .prefixes
            .iter()
            .any(|(n, _)| n.to_string() == "198.18.42.10/32")
    };
    let mut gw1 = site.agent("gw-1").await;
    let mut gw1_stream = watch_from_start(&mut gw1, "gw-1").await;
    next(&mut gw1_stream).await;
    // gw-2's key was stolen; its agent is connected and streaming.
    let mut gw2 = site.agent("gw-2").await;
    register(&gw2).await.unwrap();
    next_where(&mut gw1_stream, has_server).await;
    let mut gw2_stream = watch_from_start(&mut gw2, "gw-2").await;
    next(&mut gw2_stream).await;

    op.delete(v1::DeleteRequest {
        kind: "node".into(),
        name: "gw-2".into(),
        expected_revision: None,
        message: "key on a stolen laptop".into(),
    })
    .await
    .unwrap();
    next_where(&mut gw1_stream, |s| !has_server(s)).await;
    // Its live stream is ended, not left running.
    let err = stream_error(&mut gw2_stream).await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // It cannot come back with the same certificate.
    let err = register(&gw2).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        err.message().contains("operator:alice") && err.message().contains("stolen laptop"),
        "{}",
        err.message()
    );
    let err = gw2
        .watch(v1::WatchRequest {
            node: "gw-2".into(),
            known_revision: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = gw2
        .heartbeat(v1::HeartbeatRequest {
            node: "gw-2".into(),
            revision: 1,
            generation: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // gw-1 is told nothing of it: no snapshot with its address comes.
    if let Ok(Some(Ok(s))) =
        tokio::time::timeout(Duration::from_millis(1500), gw1_stream.next()).await
    {
        assert!(!has_server(&open(&s)), "a blocked node's address came back");
    }
    // Operators see it as blocked, and by whom.
    let status = op.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert!(status.agents.iter().all(|a| a.node != "gw-2"));
    assert_eq!(status.blocked.len(), 1);
    assert_eq!(status.blocked[0].node, "gw-2");
    assert_eq!(status.blocked[0].author, "operator:alice");
    assert_eq!(status.blocked[0].reason, "key on a stolen laptop");
    // Applies go on while it is blocked.
    op.apply(apply(&POLICY.replace("443", "8443"), None, ""))
        .await
        .unwrap();
    let s = next_where(&mut gw1_stream, |s| s.revision == 2).await;
    assert!(!has_server(&s));

    // An agent cannot unblock itself; an operator can.
    let err = ManagementClient::new(site.channel_as("gw-2").await)
        .unblock(v1::UnblockRequest {
            node: "gw-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    op.unblock(v1::UnblockRequest {
        node: "gw-2".into(),
    })
    .await
    .unwrap();
    let err = op
        .unblock(v1::UnblockRequest {
            node: "gw-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    register(&gw2)
        .await
        .expect("registers again once unblocked");
    next_where(&mut gw1_stream, has_server).await;
}

/// Whether a fresh connection with `name`'s certificate gets a call
/// through (the handshake, and then a status or register call).
async fn reaches(site: &wardline_control_plane::testing::Site, name: &str, agent: bool) -> bool {
    let address: wardline_tls::ServerAddress = site.endpoint.parse().unwrap();
    let endpoint = wardline_tls::client_endpoint(
        &address,
        &site.dir.join("ca/ca.pem"),
        &site.dir.join(format!("{name}.pem")),
        &site.dir.join(format!("{name}-key.pem")),
    )
    .unwrap();
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    if agent {
        AgentApiClient::new(channel)
            .heartbeat(v1::HeartbeatRequest {
                node: name.into(),
                revision: 0,
                generation: 0,
            })
            .await
            .is_ok()
    } else {
        ManagementClient::new(channel)
            .status(v1::StatusRequest {})
            .await
            .is_ok()
    }
}

fn serial_of(pem: &std::path::Path) -> String {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_file(pem).unwrap();
    let facts = wardline_tls::revocation::CertificateFacts::of(&der).unwrap();
    wardline_tls::revocation::serial_hex(&facts.serial)
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_at_the_handshake_and_its_streams_close() {
    let site = site("revoke").await;
    let mut op = site.operator().await;
    op.apply(apply(
        &format!("{SEGMENTS}---\n{NODES}---\n{POLICY}"),
        None,
        "",
    ))
    .await
    .unwrap();
    let mut gw2 = pump_server(&site).await;
    let mut stream = watch_from_start(&mut gw2, "gw-2").await;
    next(&mut stream).await;
    assert!(reaches(&site, "gw-2", true).await);

    // gw-2's key is lost: every certificate issued to it so far is revoked.
    let r = op
        .revoke(v1::RevokeRequest {
            role: "agent".into(),
            name: "gw-2".into(),
            reason: "INC-7: laptop stolen".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let revoked_at = r.revocation.unwrap().issued_until;
    // Its open stream is closed within seconds (after any snapshot that
    // was already on its way).
    let ended = stream_error(&mut stream).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended}");
    assert!(ended.message().contains("revoked"), "{}", ended.message());
    // Calls on its open connection are refused, and so is a new one.
    let err = gw2
        .heartbeat(v1::HeartbeatRequest {
            node: "gw-2".into(),
            revision: 1,
            generation: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(
        !reaches(&site, "gw-2", true).await,
        "a new handshake is refused"
    );
    // Others are unaffected.
    assert!(reaches(&site, "gw-1", true).await);

    // A certificate issued to gw-2 after the revocation is accepted.
    let start = std::time::SystemTime::now() + Duration::from_secs(2);
    for old in ["gw-2.pem", "gw-2-key.pem"] {
        std::fs::remove_file(site.dir.join(old)).unwrap();
    }
    pki::issue_valid_between(
        &site.dir.join("ca"),
        Role::Agent,
        "gw-2",
        &[],
        &site.dir,
        start,
        start + Duration::from_secs(86_400),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        reaches(&site, "gw-2", true).await,
        "a replacement issued after {revoked_at} is accepted"
    );

    // An operator certificate, revoked by its serial.
    pki::issue(
        &site.dir.join("ca"),
        Role::Operator,
        "bob",
        &[],
        &site.dir,
        30,
    )
    .unwrap();
    let mut bob = ManagementClient::new(site.channel_as("bob").await);
    bob.status(v1::StatusRequest {}).await.unwrap();
    let serial = serial_of(&site.dir.join("bob.pem"));
    op.revoke(v1::RevokeRequest {
        serial: serial.clone(),
        reason: "left the hospital".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match bob.status(v1::StatusRequest {}).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "bob's open connection still works: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!reaches(&site, "bob", false).await);
    assert!(reaches(&site, "alice", false).await);

    // Operators see every revocation; bad requests are refused by name.
    let status = op.status(v1::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.revocations.len(), 2);
    assert!(
        status
            .revocations
            .iter()
            .any(|r| r.serial == serial && r.author == "operator:alice")
    );
    assert!(
        status
            .revocations
            .iter()
            .any(|r| r.name == "gw-2" && r.reason.contains("INC-7"))
    );
    for (request, field) in [
        (
            v1::RevokeRequest {
                serial: "not-hex".into(),
                ..Default::default()
            },
            "serial",
        ),
        (
            v1::RevokeRequest {
                role: "king".into(),
                name: "x".into(),
                ..Default::default()
            },
            "role",
        ),
        (
            v1::RevokeRequest {
                role: "agent".into(),
                ..Default::default()
            },
            "name",
        ),
    ] {
        let err = op.revoke(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    // An agent cannot revoke.
    let err = ManagementClient::new(site.channel_as("gw-1").await)
        .revoke(v1::RevokeRequest {
            role: "operator".into(),
            name: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
}

/// Rewrites stored revision `n` with `edit` applied to its JSON, behind
/// the control plane's back.
async fn tamper(
    site: &wardline_control_plane::testing::Site,
    n: u64,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    site.edit_stored(&format!("/wardline/policy/revisions/{n:020}"), edit)
        .await;
}

#[tokio::test]
async fn the_history_is_a_sealed_chain_and_an_edit_behind_its_back_is_caught() {
    let site = site("chain").await;
    let mut op = site.operator().await;
    op.apply(apply(SEGMENTS, None, "segments")).await.unwrap();
    op.apply(apply(POLICY, None, "CHG-1: pumps to server"))
        .await
        .unwrap();
    op.apply(apply(&POLICY.replace("443", "8443"), None, "CHG-2"))
        .await
        .unwrap();
    let verified = op
        .verify_history(v1::VerifyHistoryRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.revisions, 3);
    // Each record names the exact certificate and the address it came from.
    let history = op
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    use rustls::pki_types::pem::PemObject as _;
    let alice =
        rustls::pki_types::CertificateDer::from_pem_file(site.dir.join("alice.pem")).unwrap();
    let fingerprint: String = <sha2::Sha256 as sha2::Digest>::digest(&alice)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for r in &history.revisions {
        assert_eq!(r.author_fingerprint, fingerprint);
        assert!(r.author_peer.starts_with("127.0.0.1:"), "{}", r.author_peer);
    }
    assert_eq!(history.revisions[0].record_sha256, verified.head_sha256);
    assert_eq!(
        history.revisions[0].previous_sha256,
        history.revisions[1].record_sha256
    );

    let mut gw1 = site.agent("gw-1").await;
    let mut stream = watch_from_start(&mut gw1, "gw-1").await;
    next(&mut stream).await;

    // Someone with the store edits who made revision 2 and why.
    tamper(&site, 2, |r| {
        r["author"] = "operator:bob".into();
        r["message"] = "harmless".into();
    })
    .await;
    let err = op
        .verify_history(v1::VerifyHistoryRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    assert!(
        err.message().contains("revision 2 was altered"),
        "{}",
        err.message()
    );

    // ... and recomputes the hash: the seal no longer holds.
    tamper(&site, 2, |r| {
        let mut record: wardline_control_plane::registry::RevisionRecord =
            serde_json::from_value(r.clone()).unwrap();
        record.record_sha256 = wardline_control_plane::chain::record_hash(&record);
        *r = serde_json::to_value(&record).unwrap();
    })
    .await;
    let err = op
        .verify_history(v1::VerifyHistoryRequest {})
        .await
        .unwrap_err();
    assert!(
        err.message().contains("revision 2's seal is refused"),
        "{}",
        err.message()
    );

    // The current revision edited to open everything: never compiled nor sent.
    tamper(&site, 3, |r| {
        let docs = r["documents"].as_array_mut().unwrap();
        for d in docs {
            if d["kind"] == "Policy" {
                d["text"] = d["text"]
                    .as_str()
                    .unwrap()
                    .replace("port: 8443", "port: 22")
                    .into();
            }
        }
    })
    .await;
    if let Ok(Some(Ok(s))) = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await
    {
        let dp = tables(&open(&s));
        assert!(
            !dp.rules.iter().any(|r| r.port == 22),
            "an edited revision reached an agent"
        );
    }

    // A revision removed from the middle.
    site.store
        .txn(
            vec![],
            vec![wardline_store::Op::Delete {
                key: format!("/wardline/policy/revisions/{:020}", 1),
            }],
        )
        .await
        .unwrap();
    let err = op
        .verify_history(v1::VerifyHistoryRequest {})
        .await
        .unwrap_err();
    assert!(
        err.message().contains("revision 1 is missing"),
        "{}",
        err.message()
    );

    // A replica starting on this store refuses it.
    let signer = wardline_signing::Signer::from_pem_files(
        &site.dir.join("cp.pem"),
        &site.dir.join("cp-key.pem"),
    )
    .unwrap();
    let verifier = wardline_signing::Verifier::from_ca_file(&site.dir.join("ca/ca.pem")).unwrap();
    let refused = server::ControlPlane::start(
        wardline_control_plane::registry::Registry::new(
            site.store.clone(),
            signer.clone(),
            verifier,
        ),
        "replica-b".into(),
        signer,
    )
    .await;
    let err = refused.err().expect("a replica refuses an edited store");
    assert!(err.to_string().contains("fails verification"), "{err}");
}

#[tokio::test]
async fn heartbeats_stay_in_memory_and_status_still_sees_them() {
    let site = site("liveness").await;
    let mut op = site.operator().await;
    op.apply(apply(SEGMENTS, None, "")).await.unwrap();
    let mut agents = Vec::new();
    for node in ["gw-1", "gw-2"] {
        let mut a = site.agent(node).await;
        a.register(v1::RegisterRequest {
            node: node.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        agents.push((node, a));
    }
    // Let the registrations and the first liveness summary settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = site.store.revision().await.unwrap();
    for _ in 0..20 {
        for (node, a) in &mut agents {
            a.heartbeat(v1::HeartbeatRequest {
                node: (*node).into(),
                revision: 1,
                generation: 1,
            })
            .await
            .unwrap();
        }
    }
    let after = site.store.revision().await.unwrap();
    // 40 heartbeats: one write for each agent's first generation, and at
    // most one liveness summary in between; not one per heartbeat.
    assert!(
        after - before <= 3,
        "40 heartbeats made {} store writes",
        after - before
    );
    let status = op.status(v1::StatusRequest {}).await.unwrap().into_inner();
    for a in &status.agents {
        assert!(a.connected, "{} connected", a.node);
        assert_eq!(a.replica, "replica-a");
        assert_eq!(a.generation, 1, "the new generation was recorded");
    }
}

#[tokio::test]
async fn one_agent_key_cannot_flood_the_control_plane() {
    let site = site("limits").await;
    let mut op = site.operator().await;
    op.apply(apply(SEGMENTS, None, "")).await.unwrap();
    let mut gw1 = site.agent("gw-1").await;
    let register = |labels: std::collections::HashMap<String, String>, addresses: Vec<String>| {
        v1::RegisterRequest {
            node: "gw-1".into(),
            labels,
            addresses,
        }
    };
    // Oversized claims are refused by name, before anything is stored.
    let many: std::collections::HashMap<String, String> =
        (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let err = gw1.register(register(many, vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().starts_with("labels: 65 labels"),
        "{}",
        err.message()
    );
    let addresses: Vec<String> = (0..300)
        .map(|i| format!("198.18.{}.{}", i / 250, i % 250))
        .collect();
    let err = gw1
        .register(register(Default::default(), addresses))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("addresses: 300"),
        "{}",
        err.message()
    );
    // A request far beyond what an agent ever sends is cut off by size.
    let huge: std::collections::HashMap<String, String> =
        [("k".to_owned(), "v".repeat(400 << 10))].into();
    let err = gw1.register(register(huge, vec![])).await.unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert!(err.message().contains("message length too large"), "{err}");

    // Registrations are rate limited per node: a burst, then refused.
    let mut site_refused = None;
    for i in 0..10 {
        match gw1
            .register(register(
                Default::default(),
                vec![format!("198.18.20.{}", i + 1)],
            ))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                site_refused = Some((i, e));
                break;
            }
        }
    }
    let (i, err) = site_refused.expect("registrations are limited");
    assert!(i <= 5, "refused only after {i} registrations");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("registers too often"),
        "{}",
        err.message()
    );
    // Another node is not held back by it.
    let mut gw2 = site.agent("gw-2").await;
    gw2.register(v1::RegisterRequest {
        node: "gw-2".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // One policy stream per node: a second Watch ends the first.
    let mut first = watch_from_start(&mut gw1, "gw-1").await;
    next(&mut first).await;
    let mut second = watch_from_start(&mut gw1, "gw-1").await;
    next(&mut second).await;
    let err = stream_error(&mut first).await;
    assert_eq!(err.code(), Code::Aborted, "{err}");
    // The newer one goes on.
    op.apply(apply(POLICY, None, "")).await.unwrap();
    next_where(&mut second, |s| s.revision == 2).await;

    // An operator's message is bounded too.
    let err = op
        .apply(apply(
            &POLICY.replace("443", "8443"),
            None,
            &"x".repeat(5000),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.message().starts_with("message: 5000 bytes"),
        "{}",
        err.message()
    );
}
