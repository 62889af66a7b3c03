use wardline_pki::testing::Site;
use wardline_tls::Role;

use super::*;

fn record(action: &str) -> AuditRecord {
    AuditRecord {
        seq: 0,
        time: OffsetDateTime::now_utc().format(&Rfc3339).unwrap(),
        replica: "replica-0".to_owned(),
        actor: "operator:otto".to_owned(),
        fingerprint: "ab".repeat(32),
        peer: "192.0.2.9:50000".to_owned(),
        action: action.to_owned(),
        target: "Policy/pumps-to-server".to_owned(),
        outcome: Outcome::Done,
        detail: String::new(),
        revision: 4,
        previous_sha256: String::new(),
        record_sha256: String::new(),
        seal: None,
    }
}

/// A trail of `n` records sealed by the site's replica, and the verifier.
fn trail(name: &str, n: usize) -> (Vec<AuditRecord>, Verifier, Site) {
    let site = Site::new(name);
    let signer = Signer::from_pem_files(&site.cert("cp"), &site.key("cp")).unwrap();
    let verifier = Verifier::from_ca_file(&site.ca).unwrap();
    let mut head = Head::default();
    let records = (0..n)
        .map(|i| {
            let mut r = record(&format!("call-{i}"));
            head = r.link(&head, &signer).unwrap();
            r
        })
        .collect();
    (records, verifier, site)
}

#[test]
fn a_sealed_trail_verifies_to_its_head() {
    let (records, verifier, _site) = trail("audit-ok", 5);
    let head = verify(&records, &Head::default(), &verifier).unwrap();
    assert_eq!(head.seq, 5);
    assert_eq!(head.sha256, records[4].record_sha256);
    // And from a head part-way, as a later check from a kept head does.
    let mid = Head {
        seq: 2,
        sha256: records[1].record_sha256.clone(),
    };
    assert_eq!(verify(&records[2..], &mid, &verifier).unwrap(), head);
}

#[test]
fn every_edit_removal_and_reordering_is_caught() {
    let (records, verifier, site) = trail("audit-edits", 5);
    let from = Head::default();
    // A field edited, every field in turn.
    let edits: [fn(&mut AuditRecord); 8] = [
        |r| r.actor = "operator:ada".into(),
        |r| r.action = "get".into(),
        |r| r.target = "Policy/other".into(),
        |r| r.outcome = Outcome::Refused,
        |r| r.detail = "nothing to see".into(),
        |r| r.time = "2030-01-01T00:00:00Z".into(),
        |r| r.revision = 5,
        |r| r.peer = "192.0.2.10:1".into(),
    ];
    for edit in edits {
        let mut t = records.clone();
        edit(&mut t[2]);
        assert_eq!(
            verify(&t, &from, &verifier),
            Err(AuditChainError::Altered { seq: 3 })
        );
    }
    // Edited with its hash recomputed: the seal no longer fits.
    let mut t = records.clone();
    t[2].detail = "rewritten".into();
    t[2].record_sha256 = t[2].content_hash();
    assert!(matches!(
        verify(&t, &from, &verifier),
        Err(AuditChainError::BadSeal { seq: 3, .. })
    ));
    // ... and resealing it with a key that is not a replica's: refused.
    let agent = site.issue(Role::Agent, "gw-1", &[]);
    let forger = Signer::from_pem_files(&agent.cert, &agent.key).unwrap();
    t[2].seal = Some(RecordSeal::make(&t[2].record_sha256, &forger).unwrap());
    assert!(matches!(
        verify(&t, &from, &verifier),
        Err(AuditChainError::BadSeal { seq: 3, .. })
    ));
    // The seal removed.
    let mut t = records.clone();
    t[1].seal = None;
    assert_eq!(
        verify(&t, &from, &verifier),
        Err(AuditChainError::Unsealed { seq: 2 })
    );
    // A record deleted.
    let mut t = records.clone();
    t.remove(2);
    assert_eq!(
        verify(&t, &from, &verifier),
        Err(AuditChainError::Missing {
            seq: 3,
            before: 2,
            after: 4
        })
    );
    // Two swapped.
    let mut t = records.clone();
    t.swap(1, 2);
    assert!(verify(&t, &from, &verifier).is_err());
    // Deleted and the rest renumbered and relinked by someone without a
    // replica's key: the renumbered records' hashes or seals fail.
    let mut t = records.clone();
    t.remove(1);
    for (i, r) in t.iter_mut().enumerate().skip(1) {
        r.seq = i as u64 + 1;
    }
    assert!(verify(&t, &from, &verifier).is_err());
}

#[test]
fn a_trail_of_another_site_is_refused() {
    let (records, _, _site) = trail("audit-ours", 2);
    let other = Site::new("audit-theirs");
    let theirs = Verifier::from_ca_file(&other.ca).unwrap();
    assert!(matches!(
        verify(&records, &Head::default(), &theirs),
        Err(AuditChainError::BadSeal { seq: 1, .. })
    ));
}
