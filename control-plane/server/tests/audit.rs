//! The audit trail against a real replica over mutual TLS and its real
//! store: each call one record (done, refused, failed) with who, what and
//! from where, checked on the caller's side against the site CA; a record
//! edited, deleted or the newest removed behind the replica's back is
//! caught.

use std::time::{Duration, Instant};

use tonic::Code;
use wardline_audit::{AuditChainError, AuditRecord, Head, Outcome};
use wardline_pki as pki;
use wardline_proto::v1::{self, management_client::ManagementClient};
use wardline_tls::Role;

const SEGMENTS: &str = "
apiVersion: wardline/v1
kind: Segment
metadata: {name: pumps}
spec: {cidrs: [198.18.10.0/24]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: admins}
spec: {role: admin, users: [alice]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: operators}
spec: {role: operator, users: [alice]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: ward-staff}
spec: {role: viewer, users: [vic]}
";

fn apply(source: &str, message: &str) -> v1::ApplyRequest {
    v1::ApplyRequest {
        source: source.to_owned(),
        message: message.to_owned(),
        ..Default::default()
    }
}

/// The trail as the replica hands it out, parsed.
async fn trail(op: &mut ManagementClient<tonic::transport::Channel>) -> (Vec<AuditRecord>, Head) {
    let r = op
        .audit_trail(v1::AuditRequest {
            limit: 0,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let records = r
        .records
        .iter()
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    (
        records,
        Head {
            seq: r.head_seq,
            sha256: r.head_sha256,
        },
    )
}

/// The trail once it holds a record for which `wanted` holds (records
/// are appended a moment after the call).
async fn trail_with(
    op: &mut ManagementClient<tonic::transport::Channel>,
    wanted: impl Fn(&AuditRecord) -> bool,
) -> (Vec<AuditRecord>, Head) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (records, head) = trail(op).await;
        if records.iter().any(&wanted) {
            return (records, head);
        }
        assert!(Instant::now() < deadline, "not recorded: {records:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_call_is_a_sealed_record_and_an_edit_behind_its_back_is_caught() {
    let site = wardline_control_plane::testing::site("audit").await;
    pki::issue(
        &site.dir.join("ca"),
        Role::Operator,
        "vic",
        &[],
        &site.dir,
        30,
    )
    .unwrap();
    pki::issue(
        &site.dir.join("ca"),
        Role::Operator,
        "mallory",
        &[],
        &site.dir,
        30,
    )
    .unwrap();
    let verifier = wardline_signing::Verifier::from_ca_file(&site.dir.join("ca/ca.pem")).unwrap();
    let mut alice = site.operator().await;
    let mut vic = ManagementClient::new(site.channel_as("vic").await);
    let mut mallory = ManagementClient::new(site.channel_as("mallory").await);

    alice.apply(apply(SEGMENTS, "CHG-7: roles")).await.unwrap();
    // Refused by role: vic may not change policy, mallory holds nothing.
    let e = vic
        .apply(apply(
            &SEGMENTS.replace("198.18.10.0", "198.18.11.0"),
            "mine",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = mallory.get(v1::GetRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Failed: a bad policy (a change, so with a second factor now that
    // roles are bound).
    let (mut alice_session, _) = site.logged_in("alice").await;
    let e = alice_session
        .apply(apply("kind: Segmnet\n", "typo"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A read of flows.
    let _ = alice
        .flow_matrix(v1::ObserveRequest {
            verdict: "dropped".into(),
            ..Default::default()
        })
        .await;
    // Vic (a viewer) may not read the trail; that too is a record.
    let e = vic
        .audit_trail(v1::AuditRequest {
            limit: 0,
            after_seq: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let (records, head) = trail_with(&mut alice, |r| r.action == "audit-trail").await;
    let verified = wardline_audit::verify(&records, &Head::default(), &verifier).unwrap();
    assert_eq!(verified, head);
    let find = |actor: &str, action: &str, outcome: Outcome| {
        records
            .iter()
            .find(|r| r.actor == actor && r.action == action && r.outcome == outcome)
            .unwrap_or_else(|| panic!("no {actor} {action} {outcome:?} in {records:#?}"))
    };
    let applied = find("operator:alice", "apply", Outcome::Done);
    assert!(applied.target.contains("CHG-7: roles"), "{applied:?}");
    assert_eq!(applied.detail, "revision 1, 4 change(s)");
    assert!(applied.peer.starts_with("127.0.0.1:"), "{applied:?}");
    assert_eq!(applied.fingerprint.len(), 64);
    let refused = find("operator:vic", "apply", Outcome::Refused);
    assert!(
        refused.detail.contains("may not change policy"),
        "{refused:?}"
    );
    let refused = find("operator:mallory", "get", Outcome::Refused);
    assert!(refused.detail.contains("hold no role"), "{refused:?}");
    let failed = find("operator:alice", "apply", Outcome::Failed);
    assert!(failed.detail.contains("policy refused"), "{failed:?}");
    let read = find("operator:alice", "flow-matrix", Outcome::Done);
    assert_eq!(read.target, "verdict=dropped");
    find("operator:vic", "audit-trail", Outcome::Refused);
    assert!(records.iter().all(|r| !r.replica.is_empty()));

    let original = records.clone();
    // Someone with the store edits who did it: caught by the record's hash.
    site.edit_stored(&wardline_control_plane::audit::record_key(2), |r| {
        r["actor"] = "operator:alice".into()
    })
    .await;
    let (records, _) = trail(&mut alice).await;
    assert_eq!(
        wardline_audit::verify(&records, &Head::default(), &verifier),
        Err(AuditChainError::Altered { seq: 2 })
    );
    // ... and recomputes its hash: the seal no longer holds.
    site.edit_stored(&wardline_control_plane::audit::record_key(2), |r| {
        let mut rec: AuditRecord = serde_json::from_value(r.clone()).unwrap();
        rec.record_sha256 = rec.content_hash();
        *r = serde_json::to_value(rec).unwrap();
    })
    .await;
    let (records, _) = trail(&mut alice).await;
    assert!(matches!(
        wardline_audit::verify(&records, &Head::default(), &verifier),
        Err(AuditChainError::BadSeal { seq: 2, .. })
    ));
    // A record deleted (checked from the untouched record before it).
    site.store
        .txn(
            vec![],
            vec![wardline_store::Op::Delete {
                key: wardline_control_plane::audit::record_key(4),
            }],
        )
        .await
        .unwrap();
    let (records, _) = trail(&mut alice).await;
    let after: Vec<AuditRecord> = records.into_iter().filter(|r| r.seq >= 3).collect();
    let from = Head {
        seq: 2,
        sha256: original[1].record_sha256.clone(),
    };
    assert_eq!(
        wardline_audit::verify(&after, &from, &verifier),
        Err(AuditChainError::Missing {
            seq: 4,
            before: 3,
            after: 5
        })
    );
}

#[tokio::test]
async fn the_newest_records_removed_are_caught_by_the_head() {
    let site = wardline_control_plane::testing::site("audit-head").await;
    let verifier = wardline_signing::Verifier::from_ca_file(&site.dir.join("ca/ca.pem")).unwrap();
    let mut alice = site.operator().await;
    for _ in 0..3 {
        alice.status(v1::StatusRequest {}).await.unwrap();
    }
    let (records, head) = trail_with(&mut alice, |r| r.seq >= 3).await;
    assert_eq!(
        wardline_audit::verify(&records, &Head::default(), &verifier).unwrap(),
        head
    );
    // The newest record removed: the chain that is left still verifies,
    // but ends before the head the trail keeps.
    let newest = head.seq;
    site.store
        .txn(
            vec![],
            vec![wardline_store::Op::Delete {
                key: wardline_control_plane::audit::record_key(newest),
            }],
        )
        .await
        .unwrap();
    let (records, kept) = trail(&mut alice).await;
    // Either what is left ends before the head the trail keeps, or a record
    // appended since leaves a gap where the newest was: caught both ways.
    match wardline_audit::verify(&records, &Head::default(), &verifier) {
        Ok(left) => assert!(left.seq < kept.seq, "{left:?} vs head {}", kept.seq),
        Err(e) => assert!(
            matches!(e, AuditChainError::Missing { seq, .. } if seq == newest),
            "{e}"
        ),
    }
}

#[tokio::test]
async fn a_refused_handshake_is_a_record_with_its_count() {
    let site = wardline_control_plane::testing::site("audit-tls").await;
    // Eve's operator certificate is another CA's: she trusts the site's
    // server, the server does not trust her.
    let elsewhere = wardline_control_plane::testing::scratch("audit-tls-elsewhere");
    pki::init_ca(&elsewhere.join("ca"), "elsewhere").unwrap();
    let eve = pki::issue(
        &elsewhere.join("ca"),
        Role::Operator,
        "eve",
        &[],
        &elsewhere,
        30,
    )
    .unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(site.dir.join("ca/ca.pem")).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(&eve.cert).unwrap(),
            std::fs::read(&eve.key).unwrap(),
        ))
        .domain_name("localhost");
    for _ in 0..3 {
        let refused = match tonic::transport::Endpoint::from_shared(site.endpoint.clone())
            .unwrap()
            .tls_config(tls.clone())
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => ManagementClient::new(channel)
                .status(v1::StatusRequest {})
                .await
                .is_err(),
            Err(_) => true,
        };
        assert!(refused, "a certificate of another CA was let in");
    }
    let mut alice = site.operator().await;
    let (records, _) = trail_with(&mut alice, |r| r.action == "tls-handshake").await;
    let r = records
        .iter()
        .find(|r| r.action == "tls-handshake")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Refused);
    assert_eq!(r.peer, "127.0.0.1");
    assert!(r.actor.starts_with("unidentified"), "{r:?}");
    assert!(r.detail.contains("handshake(s) refused"), "{r:?}");
    // Counted together, not a record each.
    let counted: u64 = records
        .iter()
        .filter(|r| r.action == "tls-handshake")
        .map(|r| r.detail.split(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!((1..=3).contains(&counted), "{records:#?}");
}

#[tokio::test]
async fn a_long_trail_comes_a_page_at_a_time_and_verifies_across_pages() {
    let site = wardline_control_plane::testing::site("audit-pages").await;
    let signer = wardline_signing::Signer::from_pem_files(
        &site.dir.join("cp.pem"),
        &site.dir.join("cp-key.pem"),
    )
    .unwrap();
    let verifier = wardline_signing::Verifier::from_ca_file(&site.dir.join("ca/ca.pem")).unwrap();
    // 2,500 records as a replica writes them, in batches of 100.
    let mut head = Head::default();
    for _ in 0..25 {
        let mut ops = Vec::new();
        for _ in 0..100 {
            let mut r = AuditRecord {
                seq: 0,
                time: wardline_proto::convert::format_time(time::OffsetDateTime::now_utc()),
                replica: "replica-0".into(),
                actor: "operator:alice".into(),
                fingerprint: String::new(),
                peer: "127.0.0.1:1".into(),
                action: "status".into(),
                target: String::new(),
                outcome: Outcome::Done,
                detail: String::new(),
                revision: 0,
                previous_sha256: String::new(),
                record_sha256: String::new(),
                seal: None,
            };
            head = r.link(&head, &signer).unwrap();
            ops.push(wardline_store::Op::Put {
                key: wardline_control_plane::audit::record_key(r.seq),
                value: serde_json::to_vec(&r).unwrap(),
            });
        }
        ops.push(wardline_store::Op::Put {
            key: wardline_control_plane::audit::HEAD_KEY.into(),
            value: serde_json::to_vec(&head).unwrap(),
        });
        site.store.txn(vec![], ops).await.unwrap();
    }
    let mut alice = site.operator().await;
    let (mut at, mut pages) = (Head::default(), 0);
    loop {
        let r = alice
            .audit_trail(v1::AuditRequest {
                limit: 0,
                after_seq: at.seq,
            })
            .await
            .unwrap()
            .into_inner();
        let page: Vec<AuditRecord> = r
            .records
            .iter()
            .map(|j| serde_json::from_str(j).unwrap())
            .collect();
        assert!(page.len() <= 1_000);
        at = wardline_audit::verify(&page, &at, &verifier).unwrap();
        pages += 1;
        if !r.more {
            assert_eq!(at.seq, r.head_seq);
            break;
        }
    }
    assert_eq!(pages, 3, "2,500 records and more, by 1,000");
    assert!(at.seq >= 2_500);
}
