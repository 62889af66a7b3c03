//! Signing with site certificates and every way a seal is refused.

use rustls::pki_types::UnixTime;
use wardline_pki::testing::Site;
use wardline_signing::{Signer, Verifier, VerifyError};
use wardline_tls::Role;

const PAYLOAD: &[u8] = b"revision 7: the tables";

fn now() -> UnixTime {
    UnixTime::now()
}

#[test]
fn a_replicas_seal_verifies_and_names_it() {
    let site = Site::new("seal");
    let signer = Signer::from_pem_files(&site.cert("cp"), &site.key("cp")).unwrap();
    let seal = signer.sign(PAYLOAD).unwrap();
    let verifier = Verifier::from_ca_file(&site.ca).unwrap();
    let who = verifier.verify(PAYLOAD, &seal, now()).unwrap();
    assert_eq!(who.role, Role::ControlPlane);
    assert_eq!(who.name, "cp");
}

#[test]
fn altered_bytes_or_signature_are_refused() {
    let site = Site::new("seal-altered");
    let signer = Signer::from_pem_files(&site.cert("cp"), &site.key("cp")).unwrap();
    let verifier = Verifier::from_ca_file(&site.ca).unwrap();
    let seal = signer.sign(PAYLOAD).unwrap();
    let mut tampered = PAYLOAD.to_vec();
    tampered[0] ^= 1;
    assert!(matches!(
        verifier.verify(&tampered, &seal, now()),
        Err(VerifyError::BadSignature)
    ));
    let mut bad = seal.clone();
    let last = bad.signature.len() - 1;
    bad.signature[last] ^= 1;
    assert!(verifier.verify(PAYLOAD, &bad, now()).is_err());
    // Another replica's certificate beside this one's signature.
    site.issue(Role::ControlPlane, "cp-2", &["localhost"]);
    let other = Signer::from_pem_files(&site.cert("cp-2"), &site.key("cp-2")).unwrap();
    let mut swapped = seal.clone();
    swapped.signer = other.sign(PAYLOAD).unwrap().signer;
    assert!(matches!(
        verifier.verify(PAYLOAD, &swapped, now()),
        Err(VerifyError::BadSignature)
    ));
}

#[test]
fn an_agent_or_operator_key_or_another_ca_cannot_sign() {
    let site = Site::new("seal-who");
    let verifier = Verifier::from_ca_file(&site.ca).unwrap();
    // A stolen agent key signs a snapshot of its own making.
    let agent = Signer::from_pem_files(&site.cert("node-1"), &site.key("node-1")).unwrap();
    let err = verifier
        .verify(PAYLOAD, &agent.sign(PAYLOAD).unwrap(), now())
        .unwrap_err();
    // Agent certificates are for client authentication only.
    assert!(matches!(err, VerifyError::Untrusted(_)), "{err}");
    let operator = Signer::from_pem_files(&site.cert("alice"), &site.key("alice")).unwrap();
    assert!(
        verifier
            .verify(PAYLOAD, &operator.sign(PAYLOAD).unwrap(), now())
            .is_err()
    );
    // A control-plane certificate of another site.
    let elsewhere = Site::new("seal-elsewhere");
    let foreign = Signer::from_pem_files(&elsewhere.cert("cp"), &elsewhere.key("cp")).unwrap();
    let err = verifier
        .verify(PAYLOAD, &foreign.sign(PAYLOAD).unwrap(), now())
        .unwrap_err();
    assert!(matches!(err, VerifyError::Untrusted(_)), "{err}");
}

#[test]
fn a_seal_is_checked_at_the_time_given() {
    let site = Site::new("seal-time");
    let signer = Signer::from_pem_files(&site.cert("cp"), &site.key("cp")).unwrap();
    let verifier = Verifier::from_ca_file(&site.ca).unwrap();
    let seal = signer.sign(PAYLOAD).unwrap();
    let far = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        now().as_secs() + 400 * 86_400,
    ));
    let err = verifier.verify(PAYLOAD, &seal, far).unwrap_err();
    assert!(matches!(err, VerifyError::Untrusted(_)), "{err}");
}
