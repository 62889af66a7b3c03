//! The site PKI's files: certificates carry their identity, keys are
//! private, and nothing is overwritten or issued for a bad name.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use wardline_pki::{self as pki, PkiError};
use wardline_tls::{Identity, IdentityError, Role, identity_of};

use wardline_pki::testing::{DAYS, Site};

fn identity(role: Role, name: &str) -> Identity {
    Identity {
        role,
        name: name.to_owned(),
    }
}

#[test]
fn issued_certificates_carry_their_identity() {
    let site = Site::new("site-a");
    for (role, name) in [
        (Role::Agent, "node-1"),
        (Role::Operator, "alice"),
        (Role::ControlPlane, "cp"),
    ] {
        let der = CertificateDer::from_pem_file(site.cert(name))
            .unwrap_or_else(|err| panic!("read {name}: {err}"));
        let id = identity_of(der.as_ref()).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(id, identity(role, name));
    }
    // The CA certificate has no role.
    let ca = CertificateDer::from_pem_file(&site.ca).unwrap_or_else(|err| panic!("read CA: {err}"));
    assert!(matches!(
        identity_of(ca.as_ref()),
        Err(IdentityError::OrganizationalUnit { count: 0 })
    ));
    assert!(matches!(
        identity_of(b"not a certificate"),
        Err(IdentityError::Unparsable { .. })
    ));
}

#[cfg(unix)]
#[test]
fn keys_are_private() {
    use std::os::unix::fs::PermissionsExt;

    let site = Site::new("site-a");
    for key in [
        site.ca_dir().join(pki::CA_KEY_FILE),
        site.key("node-1"),
        site.key("cp"),
    ] {
        let mode = std::fs::metadata(&key)
            .unwrap_or_else(|err| panic!("stat {}: {err}", key.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{} has mode {mode:o}", key.display());
    }
}

#[test]
fn init_ca_refuses_to_overwrite() {
    let site = Site::new("site-a");
    let before = std::fs::read(&site.ca).unwrap_or_else(|err| panic!("read CA: {err}"));
    let err = pki::init_ca(&site.ca_dir(), "site-a")
        .err()
        .unwrap_or_else(|| panic!("init_ca overwrote the CA"));
    assert!(matches!(err, PkiError::CaExists { .. }), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"), "{err}");
    let after = std::fs::read(&site.ca).unwrap_or_else(|err| panic!("read CA: {err}"));
    assert_eq!(before, after, "the CA changed");
}

#[test]
fn issue_refuses_bad_names_and_overwrites() {
    let site = Site::new("site-a");
    for bad in ["Node_1", "node.example.org", "-node", "", "ca"] {
        let err = pki::issue(
            &site.ca_dir(),
            Role::Agent,
            bad,
            &[],
            &site.certs_dir(),
            DAYS,
        )
        .err()
        .unwrap_or_else(|| panic!("agent name {bad:?} accepted"));
        assert!(
            matches!(
                err,
                PkiError::InvalidName {
                    role: Role::Agent,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
    }
    let err = pki::issue(
        &site.ca_dir(),
        Role::ControlPlane,
        "cp2",
        &["not a host".to_owned()],
        &site.certs_dir(),
        DAYS,
    )
    .err()
    .unwrap_or_else(|| panic!("bad SAN accepted"));
    assert!(err.to_string().contains("\"not a host\""), "{err}");

    let err = pki::issue(
        &site.ca_dir(),
        Role::Agent,
        "node-2",
        &[],
        &site.certs_dir(),
        0,
    )
    .err()
    .unwrap_or_else(|| panic!("zero-day certificate issued"));
    assert!(matches!(err, PkiError::InvalidValidity { .. }), "{err}");

    let err = pki::issue(
        &site.ca_dir(),
        Role::Agent,
        "node-2",
        &[],
        &site.certs_dir(),
        20 * 365,
    )
    .err()
    .unwrap_or_else(|| panic!("certificate outliving the CA issued"));
    assert!(matches!(err, PkiError::OutlivesCa { .. }), "{err}");

    let err = pki::issue(
        &site.ca_dir(),
        Role::Agent,
        "node-1",
        &[],
        &site.certs_dir(),
        DAYS,
    )
    .err()
    .unwrap_or_else(|| panic!("existing certificate overwritten"));
    assert!(matches!(err, PkiError::FileExists { .. }), "{err}");

    let missing = site.dir().join("no-ca");
    let err = pki::issue(
        &missing,
        Role::Agent,
        "node-3",
        &[],
        &site.certs_dir(),
        DAYS,
    )
    .err()
    .unwrap_or_else(|| panic!("issued without a CA"));
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}
