//! The second factor, two-person changes and break-glass against a real
//! replica over mutual TLS and its real (encrypted, embedded) store: each
//! as an operator uses it, and each as an attacker with one stolen
//! certificate, one stolen session token, or write access to the store
//! would try to get around it.

use std::time::Duration;

use tonic::Code;
use wardline_audit::{AuditRecord, Outcome};
use wardline_control_plane::testing::{self, SessionClient, Site, unix_now};
use wardline_proto::v1;

/// Roles: alice admin and operator, otto operator and approver (to try
/// approving his own), april approver, brett break-glass, vic viewer.
const GOVERNED: &str = "
apiVersion: wardline/v1
kind: Segment
metadata: {name: monitors, labels: {critical: 'true'}}
spec: {cidrs: [198.18.30.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: central-station}
spec: {cidrs: [198.18.31.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: workstations}
spec: {cidrs: [198.18.40.0/24]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: telemetry}
spec:
  action: allow
  from: [monitors]
  to: [central-station]
  ports: [{protocol: udp, port: 5000, endPort: 5010}]
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: admins}
spec: {role: admin, users: [alice]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: operators}
spec: {role: operator, users: [alice, otto]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: change-board}
spec: {role: approver, users: [april, otto]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: emergency}
spec: {role: break-glass, users: [brett]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: ward-staff}
spec: {role: viewer, users: [vic]}
";

/// A site with [`GOVERNED`] applied while it was being set up.
async fn governed(tag: &str) -> Site {
    governed_with(tag, |cp| cp).await
}

async fn governed_with(
    tag: &str,
    configure: impl FnOnce(
        wardline_control_plane::server::ControlPlane,
    ) -> wardline_control_plane::server::ControlPlane,
) -> Site {
    let site = testing::site_configured(tag, configure).await;
    for who in ["otto", "april", "brett", "vic", "mallory"] {
        site.issue_operator(who);
    }
    site.operator()
        .await
        .apply(apply(GOVERNED))
        .await
        .expect("a site being set up takes its bindings from one person");
    // The replica's view of the bindings follows the store.
    for _ in 0..100 {
        let status = site
            .operator()
            .await
            .status(v1::StatusRequest {})
            .await
            .unwrap();
        if status.into_inner().mfa_required {
            return site;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the bindings never came into force");
}

fn apply(source: &str) -> v1::ApplyRequest {
    v1::ApplyRequest {
        source: source.to_owned(),
        ..Default::default()
    }
}

fn segment(name: &str, cidr: &str) -> String {
    format!(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: {name}}}\nspec: {{cidrs: [{cidr}]}}\n"
    )
}

fn narrower_telemetry() -> String {
    "apiVersion: wardline/v1\nkind: Policy\nmetadata: {name: telemetry}\nspec:\n  action: allow\n  from: [monitors]\n  to: [central-station]\n  ports: [{protocol: udp, port: 5000, endPort: 5005}]\n".to_owned()
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, says: &str) -> String {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(says),
        "{:?} lacks {says:?}",
        e.message()
    );
    e.message().to_owned()
}

async fn trail(op: &mut SessionClient) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let r = op
            .audit_trail(v1::AuditRequest {
                limit: 0,
                after_seq: after,
            })
            .await
            .unwrap()
            .into_inner();
        for j in &r.records {
            let rec: AuditRecord = serde_json::from_str(j).unwrap();
            after = rec.seq;
            out.push(rec);
        }
        if !r.more {
            return out;
        }
    }
}

/// The trail once a record for which `wanted` holds is in it.
async fn trail_with(
    op: &mut SessionClient,
    wanted: impl Fn(&AuditRecord) -> bool,
) -> Vec<AuditRecord> {
    for _ in 0..100 {
        let records = trail(op).await;
        if records.iter().any(&wanted) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no such audit record");
}

#[tokio::test]
async fn a_change_needs_a_session_of_the_second_factor_with_the_same_certificate() {
    let site = governed("mfa").await;
    let mut alice = site.client_with_token("alice", None).await;
    // A stolen certificate alone: refused, and told how.
    let msg = refused(
        alice.apply(apply(&segment("labs", "198.18.60.0/24"))).await,
        Code::Unauthenticated,
        "wardctl login",
    );
    assert!(msg.contains("wardctl mfa enroll"), "{msg}");
    // Reads need no second factor.
    alice.status(v1::StatusRequest {}).await.unwrap();

    // Enrolment is in force only once a code from it comes back.
    let secret = alice
        .mfa_enroll(v1::MfaEnrollRequest {})
        .await
        .unwrap()
        .into_inner()
        .secret;
    let now = unix_now();
    let code = wardline_mfa::code_at(&secret, now).unwrap();
    refused(
        alice.login(v1::LoginRequest { code: code.clone() }).await,
        Code::FailedPrecondition,
        "no second factor is enrolled",
    );
    let wrong = if code == "000000" { "111111" } else { "000000" };
    refused(
        alice
            .mfa_confirm(v1::MfaConfirmRequest { code: wrong.into() })
            .await,
        Code::Unauthenticated,
        "wrong",
    );
    alice
        .mfa_confirm(v1::MfaConfirmRequest { code: code.clone() })
        .await
        .unwrap();
    // The confirming code, replayed: refused.
    refused(
        alice.login(v1::LoginRequest { code }).await,
        Code::Unauthenticated,
        "already used",
    );
    let token = site.login("alice", &secret, 1).await;
    let mut session = site.client_with_token("alice", Some(&token)).await;
    session
        .apply(apply(&segment("labs", "198.18.60.0/24")))
        .await
        .unwrap();
    let status = session
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.mfa_required);
    assert!(!status.caller_session_expires.is_empty());

    // A stolen token with another operator's certificate: refused.
    let mut otto_with_alices = site.client_with_token("otto", Some(&token)).await;
    refused(
        otto_with_alices
            .apply(apply(&segment("labs2", "198.18.61.0/24")))
            .await,
        Code::Unauthenticated,
        "another certificate",
    );
    // A made-up token: refused.
    let made_up = "ab".repeat(32);
    let mut forged = site.client_with_token("alice", Some(&made_up)).await;
    refused(
        forged
            .apply(apply(&segment("labs2", "198.18.61.0/24")))
            .await,
        Code::Unauthenticated,
        "unknown",
    );

    // Replacing the factor needs the one in force.
    refused(
        alice.mfa_enroll(v1::MfaEnrollRequest {}).await,
        Code::Unauthenticated,
        "enrolled already",
    );
    let replaced = session
        .mfa_enroll(v1::MfaEnrollRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(replaced.replaces);

    // Logging out ends the session on every replica (it is in the store).
    session.logout(v1::LogoutRequest {}).await.unwrap();
    refused(
        session
            .apply(apply(&segment("labs2", "198.18.61.0/24")))
            .await,
        Code::Unauthenticated,
        "unknown",
    );

    // Every login, good or refused, is in the audit trail (reading it
    // needs no second factor).
    let records = trail_with(&mut alice, |r| {
        r.action == "logout" && r.outcome == Outcome::Done
    })
    .await;
    assert!(
        records.iter().any(|r| r.action == "login"
            && r.outcome == Outcome::Refused
            && r.detail.contains("already used")),
        "{records:#?}"
    );
    assert!(records.iter().any(|r| r.action == "apply"
        && r.outcome == Outcome::Refused
        && r.detail.contains("second factor")));
    // The secret never is.
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains(&secret) && !all.contains(&replaced.secret));
}

#[tokio::test]
async fn guessing_codes_locks_the_operator_out_and_is_audited() {
    let site = governed("mfa-guess").await;
    let (mut alice, _) = site.logged_in("alice").await;
    let mut otto = site.client_with_token("otto", None).await;
    let secret = otto
        .mfa_enroll(v1::MfaEnrollRequest {})
        .await
        .unwrap()
        .into_inner()
        .secret;
    otto.mfa_confirm(v1::MfaConfirmRequest {
        code: wardline_mfa::code_at(&secret, unix_now()).unwrap(),
    })
    .await
    .unwrap();
    let right = wardline_mfa::code_at(&secret, unix_now() + 30).unwrap();
    let mut tried = 0;
    for guess in 0..1000 {
        let guess = format!("{guess:06}");
        if guess == right
            || wardline_mfa::code_at(&secret, unix_now()).as_deref() == Some(&guess)
            || wardline_mfa::code_at(&secret, unix_now() - 30).as_deref() == Some(&guess)
        {
            continue;
        }
        let r = otto.login(v1::LoginRequest { code: guess }).await;
        tried += 1;
        if tried <= wardline_mfa::MAX_FAILURES {
            refused(r, Code::Unauthenticated, "wrong");
        } else {
            refused(r, Code::Unauthenticated, "too many wrong codes");
            break;
        }
    }
    // Locked out: the right code too.
    refused(
        otto.login(v1::LoginRequest { code: right }).await,
        Code::Unauthenticated,
        "too many wrong codes",
    );
    let records = trail_with(&mut alice, |r| {
        r.action == "login" && r.detail.contains("too many wrong codes")
    })
    .await;
    let refusals = records
        .iter()
        .filter(|r| r.action == "login" && r.outcome == Outcome::Refused)
        .count();
    assert!(refusals > wardline_mfa::MAX_FAILURES, "{refusals}");

    // An admin resets a lost factor: the operator enrols again.
    alice
        .mfa_reset(v1::MfaResetRequest {
            operator: "otto".into(),
            reason: "phone lost".into(),
        })
        .await
        .unwrap();
    refused(
        otto.login(v1::LoginRequest {
            code: wardline_mfa::code_at(&secret, unix_now() + 30).unwrap(),
        })
        .await,
        Code::FailedPrecondition,
        "no second factor is enrolled",
    );
    // Only an admin: an operator may not reset anyone's.
    let (mut otto2, _) = site.logged_in("otto").await;
    refused(
        otto2
            .mfa_reset(v1::MfaResetRequest {
                operator: "alice".into(),
                reason: "x".into(),
            })
            .await,
        Code::PermissionDenied,
        "change pki",
    );
}

#[tokio::test]
async fn a_session_ends_on_time() {
    let site = governed_with("mfa-expiry", |cp| {
        cp.with_mfa_session(Duration::from_secs(2))
    })
    .await;
    let (mut alice, _) = site.logged_in("alice").await;
    alice
        .apply(apply(&segment("labs", "198.18.60.0/24")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    refused(
        alice
            .apply(apply(&segment("labs2", "198.18.61.0/24")))
            .await,
        Code::Unauthenticated,
        "the session ended",
    );
}

#[tokio::test]
async fn a_narrowed_critical_allow_needs_another_person_who_approves_exactly_what_was_shown() {
    let site = governed("two-person").await;
    let (mut otto, _) = site.logged_in("otto").await;
    let (mut april, _) = site.logged_in("april").await;
    // Two monitors were seen sending telemetry to port 5008, one to 5001.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let seen = |seq: u64, host: u8, dport: u32| v1::Flow {
        time: now.clone(),
        kind: "new".into(),
        interface: "eth1".into(),
        direction: "ingress".into(),
        src: vec![198, 18, 30, host],
        dst: vec![198, 18, 31, 5],
        sport: 40_000,
        dport,
        protocol: 17,
        src_segment: "monitors".into(),
        dst_segment: "central-station".into(),
        verdict: "allowed".into(),
        reason: "policy-allow".into(),
        policy: "telemetry".into(),
        generation: 1,
        revision: 1,
        packets: 1,
        bytes: 100,
        sequence: seq,
        node: "gw-1".into(),
        ..Default::default()
    };
    let stored = site
        .agent("gw-1")
        .await
        .report_flows(v1::FlowBatch {
            node: "gw-1".into(),
            flows: vec![seen(1, 7, 5008), seen(2, 8, 5008), seen(3, 7, 5001)],
            dropped: 0,
            buffer: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.accepted, 3, "{stored:?}");
    // Straight in: refused, told to propose.
    let msg = refused(
        otto.apply(apply(&narrower_telemetry())).await,
        Code::PermissionDenied,
        "needs a second person's approval",
    );
    assert!(msg.contains("narrows allow \"telemetry\""), "{msg}");
    // Proposed: filed with its diff and why.
    let request = otto
        .propose(v1::ProposeRequest {
            source: narrower_telemetry(),
            message: "vendor says 5000-5005 only".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(request.state, "open");
    assert!(
        request
            .diff
            .contains("-  ports: [{protocol: udp, port: 5000, endPort: 5010}]")
            || request.diff.contains("endPort: 5010"),
        "{}",
        request.diff
    );
    assert_eq!(
        request.needs_approval,
        ["it narrows allow \"telemetry\", which reaches critical segment \"monitors\""]
    );
    // What the approver sees it would stop: the two monitors on 5008.
    assert_eq!(request.would_drop.len(), 1, "{:?}", request.would_drop);
    let stopped = &request.would_drop[0];
    assert_eq!(
        (
            stopped.src_segment.as_str(),
            stopped.dst_segment.as_str(),
            stopped.protocol.as_str(),
            stopped.port,
            stopped.connections
        ),
        ("monitors", "central-station", "udp", 5008, 2)
    );
    let decide = |sha256: &str| v1::DecideRequest {
        id: request.id.clone(),
        sha256: sha256.to_owned(),
        note: "checked with biomed".into(),
    };
    // The proposer cannot approve, though he holds the approver role.
    refused(
        otto.approve(decide(&request.sha256)).await,
        Code::PermissionDenied,
        "a second person must",
    );
    // A viewer cannot approve.
    let (mut vic, _) = site.logged_in("vic").await;
    refused(
        vic.approve(decide(&request.sha256)).await,
        Code::PermissionDenied,
        "approve",
    );
    // Not what was shown: refused.
    refused(
        april.approve(decide(&"0".repeat(64))).await,
        Code::FailedPrecondition,
        "not the one shown",
    );
    let approved = april
        .approve(decide(&request.sha256))
        .await
        .unwrap()
        .into_inner();
    let history = april
        .history(v1::HistoryRequest { limit: 1 })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(history[0].revision, approved.revision);
    assert_eq!(history[0].author, "operator:otto");
    assert_eq!(history[0].approved_by, "april");
    assert_eq!(history[0].change_request, request.id);
    // The history chain covers the approval.
    april
        .verify_history(v1::VerifyHistoryRequest {})
        .await
        .unwrap();
    // Decided once.
    refused(
        april.approve(decide(&request.sha256)).await,
        Code::FailedPrecondition,
        "approved already",
    );
}

#[tokio::test]
async fn a_request_goes_stale_when_the_policy_moves_under_it() {
    let site = governed("stale").await;
    let (mut otto, _) = site.logged_in("otto").await;
    let (mut april, _) = site.logged_in("april").await;
    let (mut alice, _) = site.logged_in("alice").await;
    let request = otto
        .propose(v1::ProposeRequest {
            source: narrower_telemetry(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Someone else changes the policy meanwhile (no approval needed).
    alice
        .apply(apply(&segment("labs", "198.18.60.0/24")))
        .await
        .unwrap();
    let listed = april
        .list_changes(v1::ListChangesRequest {
            id: request.id.clone(),
            state: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .changes;
    assert_eq!(listed[0].state, "stale");
    refused(
        april
            .approve(v1::DecideRequest {
                id: request.id.clone(),
                sha256: request.sha256.clone(),
                note: String::new(),
            })
            .await,
        Code::FailedPrecondition,
        "stale",
    );
    // Nothing of it was applied.
    let current = april
        .get(v1::GetRequest {
            kind: "policy".into(),
            name: "telemetry".into(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(current.documents[0].yaml.contains("5010"));
    // Rejected with a note; the proposer may withdraw his own too.
    let second = otto
        .propose(v1::ProposeRequest {
            source: narrower_telemetry(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    refused(
        april
            .reject(v1::DecideRequest {
                id: second.id.clone(),
                sha256: String::new(),
                note: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "needs a note",
    );
    let rejected = april
        .reject(v1::DecideRequest {
            id: second.id.clone(),
            sha256: String::new(),
            note: "not during the night shift".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rejected.state, "rejected");
    assert_eq!(rejected.decided_by, "april");
}

#[tokio::test]
async fn a_request_edited_in_the_store_cannot_be_approved() {
    let site = governed("tampered-request").await;
    let (mut otto, _) = site.logged_in("otto").await;
    let (mut april, _) = site.logged_in("april").await;
    let request = otto
        .propose(v1::ProposeRequest {
            source: narrower_telemetry(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Someone with the store slips a wider change into the request after
    // it was shown, and recomputes nothing (or the hash alone: then it no
    // longer matches what the approver was shown).
    site.edit_stored(&format!("/wardline/changes/{}", request.id), |v| {
        let docs = v["documents"].as_array_mut().unwrap();
        for d in docs.iter_mut() {
            if d["name"] == "telemetry" {
                d["text"] = serde_json::Value::String(
                    d["text"]
                        .as_str()
                        .unwrap()
                        .replace("monitors", "workstations"),
                );
            }
        }
    })
    .await;
    refused(
        april
            .approve(v1::DecideRequest {
                id: request.id.clone(),
                sha256: request.sha256.clone(),
                note: String::new(),
            })
            .await,
        Code::DataLoss,
        "altered",
    );
}

#[tokio::test]
async fn roles_prune_and_the_change_control_need_a_second_person() {
    let site = governed("two-person-roles").await;
    let (mut alice, _) = site.logged_in("alice").await;
    let (mut april, _) = site.logged_in("april").await;
    let more_viewers = "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: ward-staff}\nspec: {role: viewer, users: [vic, mallory]}\n";
    refused(
        alice.apply(apply(more_viewers)).await,
        Code::PermissionDenied,
        "RoleBinding \"ward-staff\": who may do what",
    );
    let without_workstations = GOVERNED.replace(
        "kind: Segment\nmetadata: {name: workstations}\nspec: {cidrs: [198.18.40.0/24]}\n---\napiVersion: wardline/v1\n",
        "",
    );
    assert_ne!(without_workstations, GOVERNED);
    let pruned = v1::ApplyRequest {
        source: without_workstations,
        prune: true,
        ..Default::default()
    };
    refused(
        alice.apply(pruned).await,
        Code::PermissionDenied,
        "it prunes",
    );
    let control = "apiVersion: wardline/v1\nkind: ChangeControl\nmetadata: {name: site}\nspec: {everyChange: true}\n";
    refused(
        alice.apply(apply(control)).await,
        Code::PermissionDenied,
        "the change control \"site\"",
    );
    // Through a request, approved by another: in force, and from then on
    // every change needs approval.
    let request = alice
        .propose(v1::ProposeRequest {
            source: control.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    april
        .approve(v1::DecideRequest {
            id: request.id,
            sha256: request.sha256,
            note: String::new(),
        })
        .await
        .unwrap();
    refused(
        alice.apply(apply(&segment("labs", "198.18.60.0/24"))).await,
        Code::PermissionDenied,
        "makes every change need approval",
    );
    // A deletion goes the same way.
    let request = alice
        .propose(v1::ProposeRequest {
            delete_kind: "segment".into(),
            delete_name: "workstations".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(request.changes[0].action, "deleted");
}

#[tokio::test]
async fn break_glass_opens_a_windowed_allow_at_once_and_another_person_reviews_it() {
    let site = governed("break-glass").await;
    let (mut brett, _) = site.logged_in("brett").await;
    let (mut otto, _) = site.logged_in("otto").await;
    let (mut april, _) = site.logged_in("april").await;
    let open = v1::BreakGlassRequest {
        from: vec!["workstations".into()],
        to: vec!["monitors".into()],
        ports: vec!["tcp/443".into()],
        seconds: 120,
        reason: "code blue in ICU 3: monitor console unreachable".into(),
    };
    // Without the role: refused, though an operator.
    refused(
        otto.break_glass(open.clone()).await,
        Code::PermissionDenied,
        "break glass",
    );
    // With the role but no second factor: refused.
    let mut brett_cert_only = site.client_with_token("brett", None).await;
    refused(
        brett_cert_only.break_glass(open.clone()).await,
        Code::Unauthenticated,
        "second factor",
    );
    // Bad input, named.
    for (bad, says) in [
        (
            v1::BreakGlassRequest {
                seconds: 5,
                ..open.clone()
            },
            "a grant lasts",
        ),
        (
            v1::BreakGlassRequest {
                reason: " ".into(),
                ..open.clone()
            },
            "needs a reason",
        ),
        (
            v1::BreakGlassRequest {
                ports: vec!["http/80".into()],
                ..open.clone()
            },
            "the protocol is",
        ),
        (
            v1::BreakGlassRequest {
                to: vec!["nowhere".into()],
                ..open.clone()
            },
            "nowhere",
        ),
    ] {
        refused(brett.break_glass(bad).await, Code::InvalidArgument, says);
    }
    let before = unix_now();
    let grant = brett.break_glass(open.clone()).await.unwrap().into_inner();
    assert_eq!(grant.state, "open");
    assert_eq!(grant.opened_by, "brett");
    // Its policy: an allow with a window closing at the end.
    let doc = brett
        .get(v1::GetRequest {
            kind: "policy".into(),
            name: grant.policy.clone(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .documents
        .remove(0)
        .yaml;
    assert!(doc.contains("validUntil"), "{doc}");
    assert!(doc.contains(&grant.expires), "{doc}\n{}", grant.expires);
    let until = time::OffsetDateTime::parse(
        &grant.expires,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp() as u64;
    assert!(
        (before + 119..=before + 121).contains(&until),
        "{until} {before}"
    );
    let history = brett
        .history(v1::HistoryRequest { limit: 1 })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(history[0].break_glass, grant.id);
    // Status shows it, with the review due.
    let status = april
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let shown = status
        .break_glass
        .iter()
        .find(|g| g.id == grant.id)
        .unwrap();
    assert!(shown.reviewed_by.is_empty() && !shown.review_overdue);
    // The one who opened it cannot sign off the review; another can.
    refused(
        brett
            .review_break_glass(v1::ReviewRequest {
                id: grant.id.clone(),
                note: "fine".into(),
            })
            .await,
        Code::PermissionDenied,
        "approve",
    );
    refused(
        april
            .review_break_glass(v1::ReviewRequest {
                id: grant.id.clone(),
                note: String::new(),
            })
            .await,
        Code::InvalidArgument,
        "needs a note",
    );
    let reviewed = april
        .review_break_glass(v1::ReviewRequest {
            id: grant.id.clone(),
            note: "console cable pulled during cleaning; grant used twice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reviewed.reviewed_by, "april");
    let (mut alice, _) = site.logged_in("alice").await;
    let records = trail_with(&mut alice, |r| {
        r.action == "break-glass-review" && r.outcome == Outcome::Done
    })
    .await;
    assert!(records.iter().any(|r| r.action == "break-glass"
        && r.outcome == Outcome::Done
        && r.actor == "operator:brett"
        && r.detail.contains(&grant.id)));
}

/// Clinical operations are changes: an operator with a session of the
/// second factor quarantines and releases, vendor grants and promotes; a
/// viewer may not, nor may a stolen certificate without a session; a
/// keep-profile needs a second person; every act is in the trail.
#[tokio::test]
async fn clinical_operations_need_the_operator_role_and_a_session() {
    let site = governed("clinical").await;
    let (mut otto, _) = site.logged_in("otto").await;
    let (mut vic, _) = site.logged_in("vic").await;
    let quarantine = v1::QuarantineRequest {
        target: "198.18.40.7".into(),
        reason: "IR-7: beaconing".into(),
        keep: String::new(),
    };
    refused(
        vic.quarantine(quarantine.clone()).await,
        Code::PermissionDenied,
        "operator",
    );
    let mut otto_cert_only = site.client_with_token("otto", None).await;
    refused(
        otto_cert_only.quarantine(quarantine.clone()).await,
        Code::Unauthenticated,
        "second factor",
    );
    // A keep-profile decides what a quarantined device keeps: a second
    // person must agree to it.
    let profile = "apiVersion: wardline/v1\nkind: KeepProfile\nmetadata: {name: telemetry-only}\nspec:\n  flows:\n    - {to: [central-station], ports: [{protocol: udp, port: 5000}]}\n";
    refused(
        otto.apply(apply(profile)).await,
        Code::PermissionDenied,
        "keep-profile",
    );
    refused(
        otto.quarantine(v1::QuarantineRequest {
            keep: "telemetry-only".into(),
            ..quarantine.clone()
        })
        .await,
        Code::NotFound,
        "no KeepProfile has this name",
    );
    // Isolation needs no approval beforehand.
    let q = otto
        .quarantine(quarantine.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(q.state, "quarantined");
    assert_eq!(q.origin, "workstations");
    let status = otto
        .status(v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.quarantines.len(), 1, "{:?}", status.quarantines);
    let released = otto
        .release(v1::ReleaseRequest {
            id: "198.18.40.7".into(),
            reason: "reimaged".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.state, "released");
    assert!(released.released_revision > q.revision);
    refused(
        otto.release(v1::ReleaseRequest {
            id: q.id.clone(),
            reason: "again".into(),
        })
        .await,
        Code::NotFound,
        "no device is in quarantine",
    );
    // Promotion of a segment that enforces already, and a vendor no
    // document names: refused, named.
    refused(
        otto.promote(v1::PromoteRequest {
            segment: "monitors".into(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "is not in monitor mode",
    );
    refused(
        otto.vendor_grant(v1::VendorGrantRequest {
            vendor: "acme".into(),
            to: "monitors".into(),
            ports: vec!["tcp/22".into()],
            until: "1h".into(),
            ticket: "CHG-9".into(),
            ..Default::default()
        })
        .await,
        Code::NotFound,
        "no Vendor \"acme\"",
    );
    let (mut alice, _) = site.logged_in("alice").await;
    let records = trail_with(&mut alice, |r| r.action == "release").await;
    let q_rec = records
        .iter()
        .find(|r| r.action == "quarantine" && r.outcome == Outcome::Done)
        .expect("the quarantine in the trail");
    assert_eq!(q_rec.actor, "operator:otto");
    assert!(
        records
            .iter()
            .any(|r| r.action == "quarantine" && r.outcome == Outcome::Refused),
        "the viewer's attempt is in the trail too"
    );
}

/// A promotion with a critical flow in its way is refused, listing it; an
/// override is no way around the second person: it files a change
/// request the operator who filed it cannot approve, and only another
/// approver's approval switches the segment to enforce.
#[tokio::test]
async fn an_overridden_promotion_needs_another_person() {
    let site = governed("promotion").await;
    let (mut otto, _) = site.logged_in("otto").await;
    let (mut april, _) = site.logged_in("april").await;
    let monitored = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: workstations}\nspec: {cidrs: [198.18.40.0/24], mode: monitor}\n";
    otto.apply(apply(monitored)).await.unwrap();
    // A workstation was seen (audited) opening the monitors' web UI: no
    // policy allows it, and the monitors are critical.
    let stored = site
        .agent("gw-1")
        .await
        .report_flows(v1::FlowBatch {
            node: "gw-1".into(),
            flows: vec![v1::Flow {
                time: wardline_proto::convert::format_time(time::OffsetDateTime::now_utc()),
                kind: "new".into(),
                interface: "eth1".into(),
                direction: "ingress".into(),
                src: vec![198, 18, 40, 9],
                dst: vec![198, 18, 30, 7],
                sport: 40_000,
                dport: 443,
                protocol: 6,
                src_segment: "workstations".into(),
                dst_segment: "monitors".into(),
                verdict: "audited".into(),
                reason: "monitor".into(),
                generation: 1,
                revision: 2,
                packets: 1,
                bytes: 100,
                sequence: 1,
                node: "gw-1".into(),
                ..Default::default()
            }],
            dropped: 0,
            buffer: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.accepted, 1, "{stored:?}");
    let promote = v1::PromoteRequest {
        segment: "workstations".into(),
        days: 1,
        ..Default::default()
    };
    let refused_promotion = otto.promote(promote.clone()).await.unwrap().into_inner();
    assert_eq!(refused_promotion.revision, 0);
    assert!(refused_promotion.change.is_none());
    assert_eq!(refused_promotion.critical.len(), 1, "{refused_promotion:?}");
    let c = &refused_promotion.critical[0];
    assert_eq!(
        (
            c.dst_segment.as_str(),
            c.port,
            c.before.as_str(),
            c.after.as_str()
        ),
        ("monitors", 443, "audited", "dropped")
    );
    assert_eq!(c.critical, "segment monitors is critical");
    refused(
        otto.promote(v1::PromoteRequest {
            r#override: true,
            ..promote.clone()
        })
        .await,
        Code::InvalidArgument,
        "an override needs a reason",
    );
    let filed = otto
        .promote(v1::PromoteRequest {
            r#override: true,
            reason: "CAB-77: the web UI is retired".into(),
            ..promote
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filed.revision, 0, "an override switches nothing itself");
    let request = filed.change.expect("a change request");
    assert!(
        request
            .needs_approval
            .iter()
            .any(|r| r.contains("critical flows seen in the last 1 days")),
        "{:?}",
        request.needs_approval
    );
    let decide = v1::DecideRequest {
        id: request.id.clone(),
        sha256: request.sha256.clone(),
        note: "biomed agrees".into(),
    };
    refused(
        otto.approve(decide.clone()).await,
        Code::PermissionDenied,
        "a second person must",
    );
    let approved = april.approve(decide).await.unwrap().into_inner();
    assert!(approved.revision > 0);
    let doc = april
        .get(v1::GetRequest {
            kind: "segment".into(),
            name: "workstations".into(),
            revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let yaml: String = doc.documents.iter().map(|d| d.yaml.clone()).collect();
    assert!(yaml.contains("mode: enforce"), "{yaml}");
}
