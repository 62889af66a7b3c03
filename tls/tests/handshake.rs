//! Mutual TLS end to end: certificates issued by the site PKI, served and
//! dialled with this crate's configurations over real TLS on loopback, with
//! the gRPC health service standing in for the control plane's APIs.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use wardline_pki as pki;
use wardline_tls::{self as tls, Identity, Role, TlsError};

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
use wardline_pki::testing::Site;
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The TLS configurations of the scratch site's parties.
trait SiteTls {
    fn server_tls(&self) -> ServerTlsConfig;
    fn client_tls(&self, name: &str) -> ClientTlsConfig;
}

impl SiteTls for Site {
    fn server_tls(&self) -> ServerTlsConfig {
        tls::server_tls(&self.ca, &self.cert("cp"), &self.key("cp"))
            .unwrap_or_else(|err| panic!("server_tls: {err}"))
    }

    fn client_tls(&self, name: &str) -> ClientTlsConfig {
        tls::client_tls(&self.ca, &self.cert(name), &self.key(name), "localhost")
            .unwrap_or_else(|err| panic!("client_tls {name}: {err}"))
    }
}

/// A health server behind `server_tls`, whose interceptor records who
/// called and, when `required` is set, refuses callers without that role.
struct TestServer {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Identity>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl TestServer {
    async fn start(tls: ServerTlsConfig, required: Option<Role>) -> Self {
        let listener = within(TcpListener::bind("127.0.0.1:0"), "bind")
            .await
            .unwrap_or_else(|err| panic!("bind: {err}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("local_addr: {err}"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Arc::clone(&seen);
        let interceptor = move |req: Request<()>| -> Result<Request<()>, Status> {
            let identity = match required {
                Some(role) => tls::authorize(&req, role)?,
                None => tls::peer_identity(&req)?,
            };
            recorder
                .lock()
                .unwrap_or_else(|err| panic!("recorder poisoned: {err}"))
                .push(identity);
            Ok(req)
        };
        let (_reporter, health) = tonic_health::server::health_reporter();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(tls)
            .unwrap_or_else(|err| panic!("tls_config: {err}"))
            .add_service(InterceptedService::new(health, interceptor));
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            seen,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    fn seen(&self) -> Vec<Identity> {
        self.seen
            .lock()
            .unwrap_or_else(|err| panic!("recorder poisoned: {err}"))
            .clone()
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            within(task, "server shutdown")
                .await
                .unwrap_or_else(|err| panic!("server task: {err}"))
                .unwrap_or_else(|err| panic!("server: {err}"));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Awaits `fut` for at most [`WAIT`].
async fn within<F: Future>(fut: F, what: &str) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {WAIT:?}"))
}

/// Why a health check failed.
#[derive(Debug)]
enum CallError {
    /// The connection could not be made.
    Connect(String),
    /// The call returned a status.
    Status(Status),
}

impl CallError {
    /// Everything the error says, sources included, for matching.
    fn text(&self) -> String {
        match self {
            CallError::Connect(text) => text.clone(),
            CallError::Status(status) => {
                let mut text = format!("{status:?}");
                let mut source = std::error::Error::source(status);
                while let Some(err) = source {
                    text.push_str(&format!(": {err}"));
                    source = err.source();
                }
                text
            }
        }
    }
}

/// Calls the health service at `addr` with `tls`.
async fn check(addr: std::net::SocketAddr, tls: ClientTlsConfig) -> Result<(), CallError> {
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap_or_else(|err| panic!("endpoint: {err}"))
        .tls_config(tls)
        .unwrap_or_else(|err| panic!("client tls_config: {err}"))
        .connect_timeout(WAIT)
        .timeout(WAIT);
    let channel: Channel = within(endpoint.connect(), "connect")
        .await
        .map_err(|err| CallError::Connect(error_chain(&err)))?;
    let mut client = HealthClient::new(channel);
    within(
        client.check(HealthCheckRequest {
            service: String::new(),
        }),
        "health check",
    )
    .await
    .map(|_| ())
    .map_err(CallError::Status)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        text.push_str(&format!(": {err}"));
        source = err.source();
    }
    text
}

/// A client configuration built by hand, bypassing `client_tls`'s checks.
fn raw_client_tls(ca: &Path, identity: Option<(&Path, &Path)>) -> ClientTlsConfig {
    let read = |path: &Path| {
        std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
    };
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        config = config.identity(tonic::transport::Identity::from_pem(read(cert), read(key)));
    }
    config
}

/// Asserts that a call was refused by TLS (not by the service) with an
/// error that mentions `expected` (a TLS alert or verification error).
fn assert_refused(result: Result<(), CallError>, what: &str, expected: &str) {
    match result {
        Ok(()) => panic!("{what}: the call went through"),
        Err(CallError::Status(status))
            if matches!(
                status.code(),
                Code::Unauthenticated | Code::PermissionDenied
            ) =>
        {
            panic!("{what}: refused by the service ({status:?}), not at the handshake")
        }
        Err(err) => {
            let text = err.text();
            assert!(
                text.contains(expected),
                "{what}: refused, but not with {expected}: {text}"
            );
        }
    }
}

fn identity(role: Role, name: &str) -> Identity {
    Identity {
        role,
        name: name.to_owned(),
    }
}

#[tokio::test]
async fn agent_and_operator_connect_and_are_identified() {
    let site = Site::new("site-a");
    let server = TestServer::start(site.server_tls(), None).await;

    check(server.addr, site.client_tls("node-1"))
        .await
        .unwrap_or_else(|err| panic!("agent refused: {}", err.text()));
    check(server.addr, site.client_tls("alice"))
        .await
        .unwrap_or_else(|err| panic!("operator refused: {}", err.text()));
    // The control plane's own certificate is also a client certificate.
    check(server.addr, site.client_tls("cp"))
        .await
        .unwrap_or_else(|err| panic!("control plane refused: {}", err.text()));

    assert_eq!(
        server.seen(),
        vec![
            identity(Role::Agent, "node-1"),
            identity(Role::Operator, "alice"),
            identity(Role::ControlPlane, "cp"),
        ]
    );
    server.stop().await;
}

/// Log output captured from a `tracing` subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(|err| panic!("logs poisoned: {err}"));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|err| panic!("logs poisoned: {err}"))
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A current-thread runtime (the default of `tokio::test`), so that the
// server's tasks log to this thread's subscriber.
#[tokio::test]
async fn require_refuses_the_wrong_role() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let site = Site::new("site-a");
    let server = TestServer::start(site.server_tls(), Some(Role::Operator)).await;

    match check(server.addr, site.client_tls("node-1")).await {
        Err(CallError::Status(status)) => {
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
            assert!(
                status.message().contains("operator") && status.message().contains("agent node-1"),
                "message names neither the role needed nor the caller: {}",
                status.message()
            );
        }
        other => {
            panic!("agent on an operator-only service: expected PermissionDenied, got {other:?}")
        }
    }
    check(server.addr, site.client_tls("alice"))
        .await
        .unwrap_or_else(|err| panic!("operator refused: {}", err.text()));
    assert_eq!(server.seen(), vec![identity(Role::Operator, "alice")]);
    server.stop().await;

    // The refusal is logged with the caller and its address.
    let refusals: Vec<String> = logs
        .text()
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("refused"))
        .map(str::to_owned)
        .collect();
    assert!(
        refusals.len() == 1
            && refusals[0].contains("caller=agent node-1")
            && refusals[0].contains("peer=127.0.0.1:")
            && refusals[0].contains("needed=operator"),
        "expected one warning naming the caller, its address and the role: {refusals:?}"
    );

    let agent = identity(Role::Agent, "node-1");
    assert!(tls::require(&agent, Role::Agent).is_ok());
    let status = tls::require(&agent, Role::Operator)
        .err()
        .unwrap_or_else(|| panic!("require let an agent through as an operator"));
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn client_without_certificate_is_refused_at_the_handshake() {
    let site = Site::new("site-a");
    let server = TestServer::start(site.server_tls(), None).await;

    // The server's TLS alert, as the client sees it.
    assert_refused(
        check(server.addr, raw_client_tls(&site.ca, None)).await,
        "client without a certificate",
        "CertificateRequired",
    );
    assert!(server.seen().is_empty(), "the service saw a caller");
    server.stop().await;
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let site = Site::new("site-a");
    let other = Site::new("site-b");
    let server = TestServer::start(site.server_tls(), None).await;

    // Trusts site A's CA, so it would accept the server, but presents a
    // certificate from site B.
    let config = raw_client_tls(
        &site.ca,
        Some((&other.cert("node-1"), &other.key("node-1"))),
    );
    assert_refused(
        check(server.addr, config).await,
        "client certificate from another CA",
        "UnknownCA",
    );
    assert!(server.seen().is_empty(), "the service saw a caller");

    // client_tls itself refuses to pair site A's CA with site B's
    // certificate, naming the certificate.
    let err = tls::client_tls(
        &site.ca,
        &other.cert("node-1"),
        &other.key("node-1"),
        "localhost",
    )
    .err()
    .unwrap_or_else(|| panic!("client_tls accepted a certificate from another CA"));
    assert!(matches!(err, TlsError::NotIssuedByCa { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&other.cert("node-1").display().to_string()),
        "{err}"
    );
    server.stop().await;
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused_by_the_client() {
    let site = Site::new("site-a");
    let other = Site::new("site-b");
    // A server of site B, dialled by a client of site A.
    let server = TestServer::start(other.server_tls(), None).await;

    // The client's own verification of the server's certificate.
    assert_refused(
        check(server.addr, site.client_tls("node-1")).await,
        "server certificate from another CA",
        "invalid peer certificate: UnknownIssuer",
    );
    assert!(server.seen().is_empty(), "the service saw a caller");
    server.stop().await;
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let site = Site::new("site-a");
    let now = SystemTime::now();
    let expired = pki::issue_valid_between(
        &site.ca_dir(),
        Role::Agent,
        "node-old",
        &[],
        &site.certs_dir(),
        now - 10 * DAY,
        now - DAY,
    )
    .unwrap_or_else(|err| panic!("issue expired: {err}"));

    // client_tls refuses it up front, naming the file.
    let err = tls::client_tls(&site.ca, &expired.cert, &expired.key, "localhost")
        .err()
        .unwrap_or_else(|| panic!("client_tls accepted an expired certificate"));
    assert!(matches!(err, TlsError::Expired { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&expired.cert.display().to_string()),
        "{err}"
    );

    // And a client that presents it anyway is refused by the server.
    let server = TestServer::start(site.server_tls(), None).await;
    assert_refused(
        check(
            server.addr,
            raw_client_tls(&site.ca, Some((&expired.cert, &expired.key))),
        )
        .await,
        "expired client certificate",
        "CertificateExpired",
    );
    assert!(server.seen().is_empty(), "the service saw a caller");
    server.stop().await;
}

/// A certificate of `role` for `name` signed by the site CA, like the
/// PKI's but with the extended key usages `ekus` and key usages
/// `key_usages`, which the PKI never writes for a role: how a certificate made elsewhere for another purpose
/// would look. Returns (certificate, key) file paths.
fn issue_with_ekus(
    site: &Site,
    role: Role,
    name: &str,
    sans: &[&str],
    ekus: Vec<ExtendedKeyUsagePurpose>,
    key_usages: Vec<KeyUsagePurpose>,
) -> (PathBuf, PathBuf) {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path)
            .unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
    };
    let ca_key = KeyPair::from_pem(&read(site.ca_dir().join(pki::CA_KEY_FILE)))
        .unwrap_or_else(|err| panic!("CA key: {err}"));
    let issuer = Issuer::from_ca_cert_pem(&read(site.ca.clone()), ca_key)
        .unwrap_or_else(|err| panic!("CA certificate: {err}"));
    let mut params = CertificateParams::new(
        std::iter::once(name)
            .chain(sans.iter().copied())
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    )
    .unwrap_or_else(|err| panic!("params: {err}"));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = key_usages;
    params.extended_key_usages = ekus;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(1);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap_or_else(|err| panic!("key: {err}"));
    let cert = params
        .signed_by(&key, &issuer)
        .unwrap_or_else(|err| panic!("sign: {err}"));
    let cert_path = site.certs_dir().join(format!("{name}.pem"));
    let key_path = site.certs_dir().join(format!("{name}-key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap_or_else(|err| panic!("write: {err}"));
    std::fs::write(&key_path, key.serialize_pem()).unwrap_or_else(|err| panic!("write: {err}"));
    (cert_path, key_path)
}

/// Server settings built by hand, bypassing `server_tls`'s checks.
fn raw_server_tls(ca: &Path, cert: &Path, key: &Path) -> ServerTlsConfig {
    let read = |path: &Path| {
        std::fs::read(path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()))
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(read(cert), read(key)))
        .client_ca_root(Certificate::from_pem(read(ca)))
}

#[tokio::test]
async fn not_yet_valid_certificates_are_refused() {
    let site = Site::new("site-a");
    let now = SystemTime::now();
    let early = pki::issue_valid_between(
        &site.ca_dir(),
        Role::Agent,
        "node-early",
        &[],
        &site.certs_dir(),
        now + DAY,
        now + 10 * DAY,
    )
    .unwrap_or_else(|err| panic!("issue not yet valid: {err}"));

    // client_tls refuses it up front, naming the file and the start.
    let err = tls::client_tls(&site.ca, &early.cert, &early.key, "localhost")
        .err()
        .unwrap_or_else(|| panic!("client_tls accepted a certificate not valid yet"));
    assert!(matches!(err, TlsError::NotYetValid { .. }), "{err}");
    assert!(
        err.to_string().contains(&early.cert.display().to_string())
            && err.to_string().contains("not valid before"),
        "{err}"
    );

    // A client that presents it anyway is refused by the server at the
    // handshake (TLS has one alert for expired and not yet valid).
    let server = TestServer::start(site.server_tls(), None).await;
    assert_refused(
        check(
            server.addr,
            raw_client_tls(&site.ca, Some((&early.cert, &early.key))),
        )
        .await,
        "client certificate not valid yet",
        "CertificateExpired",
    );
    assert!(server.seen().is_empty(), "the service saw a caller");
    server.stop().await;

    // A control plane whose certificate is not valid yet cannot serve...
    let early_cp = pki::issue_valid_between(
        &site.ca_dir(),
        Role::ControlPlane,
        "cp-early",
        &["localhost".to_owned()],
        &site.certs_dir(),
        now + DAY,
        now + 10 * DAY,
    )
    .unwrap_or_else(|err| panic!("issue not yet valid: {err}"));
    let err = tls::server_tls(&site.ca, &early_cp.cert, &early_cp.key)
        .err()
        .unwrap_or_else(|| panic!("server_tls accepted a certificate not valid yet"));
    assert!(matches!(err, TlsError::NotYetValid { .. }), "{err}");
    // ...and a client refuses one that serves it anyway.
    let server = TestServer::start(
        raw_server_tls(&site.ca, &early_cp.cert, &early_cp.key),
        None,
    )
    .await;
    assert_refused(
        check(server.addr, site.client_tls("node-1")).await,
        "server certificate not valid yet",
        "invalid peer certificate: certificate not valid yet",
    );
    server.stop().await;
}

#[tokio::test]
async fn certificates_for_the_other_side_are_refused() {
    let site = Site::new("site-a");

    // An operator certificate for server authentication only.
    let (cert, key) = issue_with_ekus(
        &site,
        Role::Operator,
        "mallory",
        &[],
        vec![ExtendedKeyUsagePurpose::ServerAuth],
        vec![KeyUsagePurpose::DigitalSignature],
    );
    let err = tls::client_tls(&site.ca, &cert, &key, "localhost")
        .err()
        .unwrap_or_else(|| panic!("client_tls accepted a certificate without client auth"));
    assert!(
        matches!(
            err,
            TlsError::WrongUsage {
                usage: "client authentication",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains(&cert.display().to_string()),
        "{err}"
    );
    let server = TestServer::start(site.server_tls(), None).await;
    assert_refused(
        check(server.addr, raw_client_tls(&site.ca, Some((&cert, &key)))).await,
        "client certificate without client auth",
        "UnsupportedCertificate",
    );
    assert!(server.seen().is_empty(), "the service saw a caller");
    server.stop().await;

    // A control-plane certificate for client authentication only.
    let (cert, key) = issue_with_ekus(
        &site,
        Role::ControlPlane,
        "cp-client",
        &["localhost"],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        vec![KeyUsagePurpose::DigitalSignature],
    );
    let err = tls::server_tls(&site.ca, &cert, &key)
        .err()
        .unwrap_or_else(|| panic!("server_tls accepted a certificate without server auth"));
    assert!(
        matches!(
            err,
            TlsError::WrongUsage {
                usage: "server authentication",
                ..
            }
        ),
        "{err}"
    );
    let server = TestServer::start(raw_server_tls(&site.ca, &cert, &key), None).await;
    assert_refused(
        check(server.addr, site.client_tls("node-1")).await,
        "server certificate without server auth",
        "certificate does not allow extended key usage for server authentication",
    );
    server.stop().await;

    // A client certificate whose key may not sign, which TLS needs: the
    // handshake does not look at key usage, so client_tls does.
    let (cert, key) = issue_with_ekus(
        &site,
        Role::Agent,
        "node-nosign",
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        vec![KeyUsagePurpose::KeyAgreement],
    );
    let err = tls::client_tls(&site.ca, &cert, &key, "localhost")
        .err()
        .unwrap_or_else(|| panic!("client_tls accepted a key that may not sign"));
    assert!(matches!(err, TlsError::NoDigitalSignature { .. }), "{err}");
}

#[test]
fn tls_errors_name_the_file_at_fault() {
    let site = Site::new("site-a");
    let ca = &site.ca;
    let cert = site.cert("node-1");
    let key = site.key("node-1");

    let missing = site.dir().join("missing.pem");
    let err = tls::client_tls(ca, &missing, &key, "localhost")
        .err()
        .unwrap_or_else(|| panic!("missing certificate accepted"));
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let garbage = site.dir().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap_or_else(|err| panic!("write: {err}"));
    let err = tls::client_tls(ca, &garbage, &key, "localhost")
        .err()
        .unwrap_or_else(|| panic!("non-PEM certificate accepted"));
    assert!(matches!(err, TlsError::NotCertificatePem { .. }), "{err}");
    assert!(
        err.to_string().contains(&garbage.display().to_string()),
        "{err}"
    );
    let err = tls::client_tls(ca, &cert, &garbage, "localhost")
        .err()
        .unwrap_or_else(|| panic!("non-PEM key accepted"));
    assert!(matches!(err, TlsError::NotKeyPem { .. }), "{err}");
    assert!(
        err.to_string().contains(&garbage.display().to_string()),
        "{err}"
    );

    let other_key = site.key("alice");
    let err = tls::client_tls(ca, &cert, &other_key, "localhost")
        .err()
        .unwrap_or_else(|| panic!("mismatched key accepted"));
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&other_key.display().to_string())
            && text.contains(&cert.display().to_string()),
        "{text}"
    );

    let err = tls::client_tls(&cert, &cert, &key, "localhost")
        .err()
        .unwrap_or_else(|| panic!("a leaf accepted as CA"));
    assert!(matches!(err, TlsError::NotCa { .. }), "{err}");

    let err = tls::server_tls(ca, &cert, &key)
        .err()
        .unwrap_or_else(|| panic!("an agent certificate accepted for serving"));
    assert!(
        matches!(err, TlsError::NotServerCertificate { .. }),
        "{err}"
    );

    let err = tls::client_tls(ca, &cert, &key, "bad host name")
        .err()
        .unwrap_or_else(|| panic!("bad domain accepted"));
    assert!(matches!(err, TlsError::InvalidDomain { .. }), "{err}");
}

#[test]
fn peer_identity_without_tls_is_unauthenticated() {
    let status = tls::peer_identity(&Request::new(()))
        .err()
        .unwrap_or_else(|| panic!("a request without TLS has an identity"));
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = tls::authorize(&Request::new(()), Role::Agent)
        .err()
        .unwrap_or_else(|| panic!("a request without TLS was authorized"));
    assert_eq!(status.code(), Code::Unauthenticated);
}
