//! A control plane on a loopback listener with a fresh site PKI and an
//! embedded store, for tests: this crate's and, with the `test-support`
//! feature, other crates' (`wardctl` against a real server).
//!
//! ```no_run
//! # async fn demo() {
//! let site = wardline_control_plane::testing::site("demo").await;
//! let mut operator = site.operator().await;
//! # }
//! ```

use std::path::PathBuf;

use crate::registry::Registry;
use crate::renewal::Renewal;
use crate::server::{self, ControlPlane};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use wardline_pki as pki;
use wardline_proto::v1::{
    self, agent_api_client::AgentApiClient, management_client::ManagementClient,
};
use wardline_store::{self as store, StoreSpec};
use wardline_tls as tls;
use wardline_tls::Role;

/// The lifetime of the agent certificates the test replica renews.
pub const RENEWED_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// A management client whose calls carry a session token.
pub type SessionClient = ManagementClient<InterceptedService<Channel, Token>>;

/// Adds a session token to each call.
#[derive(Clone)]
pub struct Token(pub Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert(crate::mfa::SESSION_HEADER, t.clone());
        }
        Ok(req)
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub struct Site {
    pub dir: PathBuf,
    pub endpoint: String,
    /// The replica's web dashboard, `https://127.0.0.1:port`.
    pub dashboard: String,
    /// The replica's store, for tests that change it behind its back.
    pub store: std::sync::Arc<dyn wardline_store::Store>,
    /// The replica, for what it shows outside gRPC (`/metrics`).
    pub control_plane: ControlPlane,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "wardline-cp-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub async fn site(tag: &str) -> Site {
    site_configured(tag, |cp| cp).await
}

/// [`site`], its replica changed by `configure` before it serves.
pub async fn site_configured(
    tag: &str,
    configure: impl FnOnce(ControlPlane) -> ControlPlane,
) -> Site {
    let dir = scratch(tag);
    let ca = dir.join("ca");
    pki::init_ca(&ca, "test-hospital").unwrap();
    let sans = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    pki::issue(&ca, Role::ControlPlane, "cp", &sans, &dir, 30).unwrap();
    for (role, name) in [
        (Role::Operator, "alice"),
        (Role::Agent, "gw-1"),
        (Role::Agent, "gw-2"),
    ] {
        pki::issue(&ca, role, name, &[], &dir, 30).unwrap();
    }
    let spec: StoreSpec = format!("embedded:{}", dir.join("store.redb").display())
        .parse()
        .unwrap();
    let signer =
        wardline_signing::Signer::from_pem_files(&dir.join("cp.pem"), &dir.join("cp-key.pem"))
            .unwrap();
    let verifier = wardline_signing::Verifier::from_ca_file(&ca.join("ca.pem")).unwrap();
    // As a replica runs: every value encrypted at rest.
    let key_file = dir.join("store.key");
    store::encrypted::StoreKey::generate(&key_file).unwrap();
    let store: std::sync::Arc<dyn wardline_store::Store> =
        std::sync::Arc::new(store::encrypted::EncryptedStore::new(
            store::open(&spec).await.unwrap(),
            store::encrypted::StoreKey::load(&key_file).unwrap(),
        ));
    let serving = std::sync::Arc::new(
        tls::ServingCert::load(
            &ca.join("ca.pem"),
            &dir.join("cp.pem"),
            &dir.join("cp-key.pem"),
        )
        .unwrap(),
    );
    // Renewing agent certificates, as a replica given the CA key does.
    let renewal = Renewal {
        renewer: pki::renew::AgentRenewer::load(&ca.join("ca.pem"), &ca.join("ca-key.pem"))
            .unwrap(),
        lifetime: RENEWED_LIFETIME,
    };
    let flows = std::sync::Arc::new(
        wardline_flows::FlowStore::open(
            &dir.join("flows.redb"),
            store::encrypted::StoreKey::load(&key_file).unwrap(),
            wardline_flows::Retention::default(),
        )
        .unwrap(),
    );
    let cp = ControlPlane::start(
        Registry::new(store.clone(), signer.clone(), verifier),
        "replica-a".into(),
        signer,
    )
    .await
    .unwrap()
    .with_serving(serving.clone())
    .with_renewal(renewal)
    .with_flows(flows);
    // The web dashboard beside gRPC, as `--dashboard-address` serves it.
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dashboard = format!("https://{}", web.local_addr().unwrap());
    let cp =
        configure(cp.with_dashboard(dashboard.clone(), wardline_dashboard::Settings::default()));
    let router = cp.dashboard_router().expect("a dashboard");
    let browser = tls::browser_config(serving.clone()).unwrap();
    tokio::spawn(wardline_dashboard::serve(web, browser, router));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    let tls = tls::server_config(&ca.join("ca.pem"), serving, cp.revocations()).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let control_plane = cp.clone();
    tokio::spawn(server::serve(cp, listener, tls, async {
        let _ = rx.await;
    }));
    Site {
        dir,
        endpoint,
        dashboard,
        store,
        control_plane,
        shutdown: Some(tx),
    }
}

impl Site {
    pub async fn channel_as(&self, name: &str) -> Channel {
        let address: tls::ServerAddress = self.endpoint.parse().unwrap();
        tls::client_endpoint(
            &address,
            &self.dir.join("ca/ca.pem"),
            &self.dir.join(format!("{name}.pem")),
            &self.dir.join(format!("{name}-key.pem")),
        )
        .unwrap()
        .connect()
        .await
        .unwrap()
    }

    /// A channel presenting the certificate `cert` with key `key` (the
    /// handshake's verdict on it comes with the first call).
    pub async fn channel_with(
        &self,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Channel, tonic::transport::Error> {
        let address: tls::ServerAddress = self.endpoint.parse().unwrap();
        tls::client_endpoint(&address, &self.dir.join("ca/ca.pem"), cert, key)
            .unwrap()
            .connect()
            .await
    }

    pub async fn operator(&self) -> ManagementClient<Channel> {
        ManagementClient::new(self.channel_as("alice").await)
    }

    /// Edits the JSON value stored at `key` behind the replica's back, as
    /// someone with the store would.
    pub async fn edit_stored(&self, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let kv = self
            .store
            .get(key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} is stored"));
        let mut value: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
        edit(&mut value);
        self.store
            .txn(
                vec![],
                vec![store::Op::Put {
                    key: key.to_owned(),
                    value: serde_json::to_vec(&value).unwrap(),
                }],
            )
            .await
            .unwrap();
    }

    /// Issues an operator certificate for `name`.
    pub fn issue_operator(&self, name: &str) {
        pki::issue(
            &self.dir.join("ca"),
            Role::Operator,
            name,
            &[],
            &self.dir,
            30,
        )
        .unwrap();
    }

    /// `name`'s client whose calls carry `token` as their session.
    pub async fn client_with_token(&self, name: &str, token: Option<&str>) -> SessionClient {
        let token = token.map(|t| t.parse().expect("a header value"));
        ManagementClient::with_interceptor(self.channel_as(name).await, Token(token))
    }

    /// `name` enrolled in a second factor (now) and logged in: their
    /// client with the session, and their secret.
    pub async fn logged_in(&self, name: &str) -> (SessionClient, String) {
        let mut plain = self.client_with_token(name, None).await;
        let secret = plain
            .mfa_enroll(v1::MfaEnrollRequest {})
            .await
            .unwrap()
            .into_inner()
            .secret;
        let now = unix_now();
        plain
            .mfa_confirm(v1::MfaConfirmRequest {
                code: wardline_mfa::code_at(&secret, now).unwrap(),
            })
            .await
            .unwrap();
        let token = self.login(name, &secret, 1).await;
        (self.client_with_token(name, Some(&token)).await, secret)
    }

    /// A session token for `name`, with the code `steps` steps ahead of
    /// now (each code is good once, and for a step either side).
    pub async fn login(&self, name: &str, secret: &str, steps: u64) -> String {
        let code = wardline_mfa::code_at(secret, unix_now() + steps * wardline_mfa::STEP).unwrap();
        self.client_with_token(name, None)
            .await
            .login(v1::LoginRequest { code })
            .await
            .unwrap()
            .into_inner()
            .token
    }

    pub async fn agent(&self, node: &str) -> AgentApiClient<Channel> {
        AgentApiClient::new(self.channel_as(node).await)
    }
}
