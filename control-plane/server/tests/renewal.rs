//! Agent certificates renewed over the agent API, with real mutual TLS on
//! loopback: an agent gets a short-lived certificate for its own name and
//! nothing more, its start-up certificate is retired once it has come back
//! with the renewal, and revoking a certificate revokes its renewals.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, PKCS_ECDSA_P256_SHA256,
};
use tonic::Code;
use wardline_control_plane::testing::{RENEWED_LIFETIME, Site, site};
use wardline_proto::v1::{
    self, agent_api_client::AgentApiClient, management_client::ManagementClient,
};
use wardline_tls::revocation::{CertificateFacts, serial_hex};
use wardline_tls::{Role, identity_of};

/// A new key and a request, signed by it, that claims to be the control
/// plane and a CA: what a thief holding an agent key would ask for.
fn greedy_request() -> (KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        CertificateParams::new(vec!["cp".to_owned(), "ehr.example".to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "cp");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "control-plane");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    (key, csr)
}

/// Writes a renewed certificate and its key as `<name>.pem` and
/// `<name>-key.pem` in the site's directory.
fn keep(site: &Site, name: &str, renewed: &v1::RenewResponse, key: &KeyPair) -> (PathBuf, PathBuf) {
    let cert = site.dir.join(format!("{name}.pem"));
    let key_path = site.dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, &renewed.certificate_pem).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert, key_path)
}

fn facts_of(pem: &str) -> CertificateFacts {
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    CertificateFacts::of(&der).unwrap()
}

/// Whether an agent presenting `cert` gets a heartbeat through as `node`.
async fn heartbeat_as(site: &Site, cert: &Path, key: &Path, node: &str) -> Result<(), Code> {
    let channel = site
        .channel_with(cert, key)
        .await
        .map_err(|_| Code::Unavailable)?;
    AgentApiClient::new(channel)
        .heartbeat(v1::HeartbeatRequest {
            node: node.into(),
            revision: 0,
            generation: 0,
        })
        .await
        .map(drop)
        .map_err(|s| s.code())
}

/// A renewal of `agent`'s certificate for a new key of a greedy request.
async fn renew(
    agent: &mut AgentApiClient<tonic::transport::Channel>,
    node: &str,
) -> (KeyPair, v1::RenewResponse) {
    let (key, csr) = greedy_request();
    let renewed = agent
        .renew(v1::RenewRequest {
            node: node.into(),
            csr,
        })
        .await
        .unwrap()
        .into_inner();
    (key, renewed)
}

async fn register(
    agent: &mut AgentApiClient<tonic::transport::Channel>,
    node: &str,
) -> v1::RegisterResponse {
    agent
        .register(v1::RegisterRequest {
            node: node.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn an_agent_renews_its_own_certificate_and_nothing_more() {
    let site = site("renew").await;
    let mut gw2 = site.agent("gw-2").await;
    let first = register(&mut gw2, "gw-2").await;
    assert_eq!(
        first.certificate_lifetime_seconds,
        RENEWED_LIFETIME.as_secs()
    );

    // The request asks to be the control plane, a CA, for other names.
    let (key, renewed) = renew(&mut gw2, "gw-2").await;
    use rustls::pki_types::pem::PemObject as _;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(renewed.certificate_pem.as_bytes())
        .unwrap();
    let id = identity_of(&der).unwrap();
    assert_eq!((id.role, id.name.as_str()), (Role::Agent, "gw-2"));
    let facts = facts_of(&renewed.certificate_pem);
    assert_eq!(serial_hex(&facts.serial), renewed.serial);
    let lifetime = facts.not_after - wardline_tls::expiry::now();
    assert!(
        lifetime <= RENEWED_LIFETIME.as_secs() && lifetime + 60 > RENEWED_LIFETIME.as_secs(),
        "renewed for {lifetime} s"
    );
    let (cert, key_path) = keep(&site, "gw-2-renewed", &renewed, &key);
    // The renewal cannot serve: a client would refuse it as the control
    // plane, and the TLS checks refuse it for serving.
    let err = wardline_tls::ServingCert::load(&site.dir.join("ca/ca.pem"), &cert, &key_path)
        .expect_err("an agent's renewal served as the control plane");
    assert!(
        err.to_string().contains("control-plane certificate"),
        "{err}"
    );

    // Until gw-2 comes back with the renewal, its start-up certificate
    // works; once it has, the start-up certificate is retired.
    let old = (site.dir.join("gw-2.pem"), site.dir.join("gw-2-key.pem"));
    assert_eq!(heartbeat_as(&site, &old.0, &old.1, "gw-2").await, Ok(()));
    let mut renewed_agent = AgentApiClient::new(site.channel_with(&cert, &key_path).await.unwrap());
    register(&mut renewed_agent, "gw-2").await;
    let mut op = site.operator().await;
    let status = op.status(v1::StatusRequest {}).await.unwrap().into_inner();
    let agent = status.agents.iter().find(|a| a.node == "gw-2").unwrap();
    assert_eq!(agent.certificate_serial, renewed.serial);
    assert_eq!(agent.certificate_warning, "", "{agent:?}");
    assert!(
        status
            .revocations
            .iter()
            .any(|r| r.reason.contains("retired")),
        "{:?}",
        status.revocations
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while heartbeat_as(&site, &old.0, &old.1, "gw-2").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the retired start-up certificate still works"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(heartbeat_as(&site, &cert, &key_path, "gw-2").await, Ok(()));

    // Nor for another node, nor for an operator, nor from garbage.
    let (_, csr) = greedy_request();
    let err = renewed_agent
        .renew(v1::RenewRequest {
            node: "gw-1".into(),
            csr,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = renewed_agent
        .renew(v1::RenewRequest {
            node: "gw-2".into(),
            csr: b"not a request".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("csr"), "{}", err.message());
    let operator_channel = site
        .channel_with(&site.dir.join("alice.pem"), &site.dir.join("alice-key.pem"))
        .await
        .unwrap();
    let (_, csr) = greedy_request();
    let err = AgentApiClient::new(operator_channel)
        .renew(v1::RenewRequest {
            node: "alice".into(),
            csr,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // A stolen key cannot mint certificates at will.
    let mut refused = None;
    for _ in 0..5 {
        let (_, csr) = greedy_request();
        if let Err(e) = renewed_agent
            .renew(v1::RenewRequest {
                node: "gw-2".into(),
                csr,
            })
            .await
        {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("renewals are not limited");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
}

#[tokio::test]
async fn revoking_a_certificate_revokes_what_was_renewed_from_it() {
    let site = site("renew-revoke").await;
    let mut gw1 = site.agent("gw-1").await;
    register(&mut gw1, "gw-1").await;
    // A thief renews gw-1's stolen key into a key of their own, twice.
    let (key, child) = renew(&mut gw1, "gw-1").await;
    let (child_cert, child_key) = keep(&site, "thief-1", &child, &key);
    let mut thief = AgentApiClient::new(site.channel_with(&child_cert, &child_key).await.unwrap());
    let (key, grandchild) = renew(&mut thief, "gw-1").await;
    let (grand_cert, grand_key) = keep(&site, "thief-2", &grandchild, &key);
    assert_eq!(
        heartbeat_as(&site, &grand_cert, &grand_key, "gw-1").await,
        Ok(())
    );

    // The operators revoke the certificate they know was stolen.
    let mut op = ManagementClient::new(
        site.channel_with(&site.dir.join("alice.pem"), &site.dir.join("alice-key.pem"))
            .await
            .unwrap(),
    );
    let stolen =
        serial_hex(&facts_of(&std::fs::read_to_string(site.dir.join("gw-1.pem")).unwrap()).serial);
    let r = op
        .revoke(v1::RevokeRequest {
            serial: stolen,
            reason: "INC-12: workstation phished".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut renewed: Vec<&str> = r.renewed.iter().map(|r| r.serial.as_str()).collect();
    renewed.sort_unstable();
    let mut expected = vec![child.serial.as_str(), grandchild.serial.as_str()];
    expected.sort_unstable();
    assert_eq!(renewed, expected);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for (cert, key) in [(&child_cert, &child_key), (&grand_cert, &grand_key)] {
        while heartbeat_as(&site, cert, key, "gw-1").await.is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "a renewal of a revoked certificate still works"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // gw-2 is not touched.
    assert_eq!(
        heartbeat_as(
            &site,
            &site.dir.join("gw-2.pem"),
            &site.dir.join("gw-2-key.pem"),
            "gw-2"
        )
        .await,
        Ok(())
    );
}

#[tokio::test]
async fn status_warns_of_a_certificate_near_its_expiry() {
    let site = site("expiry").await;
    // Valid for 65 minutes, 55 of them gone: inside its last quarter.
    let now = std::time::SystemTime::now();
    for old in ["gw-1.pem", "gw-1-key.pem"] {
        std::fs::remove_file(site.dir.join(old)).unwrap();
    }
    wardline_pki::issue_valid_between(
        &site.dir.join("ca"),
        Role::Agent,
        "gw-1",
        &[],
        &site.dir,
        now - Duration::from_secs(55 * 60),
        now + Duration::from_secs(10 * 60),
    )
    .unwrap();
    let mut gw1 = site.agent("gw-1").await;
    register(&mut gw1, "gw-1").await;
    let mut gw2 = site.agent("gw-2").await;
    register(&mut gw2, "gw-2").await;
    let mut op = site.operator().await;
    let status = op.status(v1::StatusRequest {}).await.unwrap().into_inner();
    let warning = |node: &str| {
        status
            .agents
            .iter()
            .find(|a| a.node == node)
            .map(|a| a.certificate_warning.clone())
            .unwrap()
    };
    let w = warning("gw-1");
    assert!(
        w.starts_with("expires in 9m") || w.starts_with("expires in 10m"),
        "{w:?}"
    );
    // gw-2's certificate has 30 days: no warning yet.
    assert_eq!(warning("gw-2"), "");
    // The replica reports its own certificate (30 days: no warning).
    // 16 random bytes, a leading zero byte not written (a serial is a
    // positive integer).
    let serial = &status.replica_certificate_serial;
    assert!(
        !serial.is_empty() && serial.len() <= 32 && serial.len() % 2 == 0,
        "{status:?}"
    );
    assert!(!status.replica_certificate_not_after.is_empty());
    assert_eq!(status.replica_certificate_warning, "");
}
