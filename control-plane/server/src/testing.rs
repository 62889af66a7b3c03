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
use tonic::transport::Channel;
use wardline_pki as pki;
use wardline_proto::v1::{agent_api_client::AgentApiClient, management_client::ManagementClient};
use wardline_store::{self as store, StoreSpec};
use wardline_tls as tls;
use wardline_tls::Role;

/// The lifetime of the agent certificates the test replica renews.
pub const RENEWED_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

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
    let cp = cp.with_dashboard(dashboard.clone(), wardline_dashboard::Settings::default());
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

    pub async fn agent(&self, node: &str) -> AgentApiClient<Channel> {
        AgentApiClient::new(self.channel_as(node).await)
    }
}
