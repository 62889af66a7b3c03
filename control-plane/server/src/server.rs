//! The control plane's two gRPC services over one mutual-TLS listener:
//! `Management` for operators and `AgentApi` for agents.
//!
//! Every replica follows the store: a watch on `/wardline/` rebuilds the
//! cluster view (current revision, registered nodes) whichever replica wrote
//! the change, compiles it once, and each agent's stream sends its snapshot
//! only when what that agent would enforce changed.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use wardline_backoff::Backoff;
use wardline_policy::compile::{NodeConflict, NodeInfo};
use wardline_policy::nodes::{Admission, AdmittedNode};
use wardline_policy::{CompileOptions, Schedule};
use wardline_proto::convert::{format_time, validation_errors};
use wardline_proto::v1::{self, agent_api_server::AgentApi};
use wardline_roles::Verb;
use wardline_signing::Signer;

use crate::chain::ChainError;
use crate::flows::{FlowStream, Flows};
use crate::limits;
use crate::liveness::{Heard, Liveness, PUBLISH_EVERY};
use crate::metrics::Metrics;
use crate::registry::{
    AgentRecord, Author, BlockRecord, ChangeRecord, DocumentKind, KEY_PREFIX, NodeRecord, Registry,
    RegistryError, RevisionAction, RevisionRecord, RevocationRecord, Validated, plan_apply,
    read_source, validate_plan,
};
use crate::renewal::{self, Renewal};
use time::format_description::well_known::Rfc3339;
use wardline_flows::FlowBackend;
use wardline_tls::expiry;
use wardline_tls::revocation::{CertificateFacts, Revocation, parse_serial, serial_hex};
use wardline_tls::{
    Identity, MAX_MESSAGE_BYTES, RevocationList, Revoked, Role, ServingCert, authorize,
};

/// How often agents are asked to send a heartbeat.
pub const HEARTBEAT_SECONDS: u32 = 2;
/// An agent behind the current revision for longer than this is flagged.
pub const BEHIND_GRACE: Duration = Duration::from_secs(5);
/// The first pause before reading or watching the store again after it
/// failed; it doubles up to [`WATCH_BACKOFF_MAX`].
const WATCH_BACKOFF_FIRST: Duration = Duration::from_millis(200);
/// The longest pause between attempts to follow the store.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What every agent stream is built from.
#[derive(Clone)]
pub struct Cluster {
    pub record: Arc<RevisionRecord>,
    pub nodes: Arc<Vec<NodeInfo>>,
    /// The signed snapshot every agent stream sends.
    pub snapshot: Arc<v1::SignedSnapshot>,
    /// SHA-256 of the compiled tables, to send only what changed.
    pub dataplane_hash: [u8; 32],
    /// The tables compiled, to find what the next ones change.
    pub schedule: Arc<Schedule>,
    /// The same snapshot as a change to the tables before it, for streams
    /// that sent those: when only prefixes changed (a node joined, left or
    /// moved), a few bytes instead of the whole tables to every agent.
    pub delta: Option<Delta>,
    pub next_change: Option<OffsetDateTime>,
    /// Each registered node as the operators' documents admit it.
    pub admitted: Arc<Vec<AdmittedNode>>,
    /// Nodes left out of segment membership, and why.
    pub conflicts: Arc<Vec<NodeConflict>>,
    /// Nodes operators removed: refused on every call, their streams ended.
    pub blocked: Arc<BTreeMap<String, BlockRecord>>,
    /// Revoked certificates: their streams are ended.
    pub revoked: Arc<Revoked>,
    /// The role bindings in force: what operators' calls may do.
    pub bindings: Arc<wardline_roles::Bindings>,
}

/// Compiles `record` for `nodes`. `validated`: what this replica made of
/// the same documents when it applied them; its typed documents are used
/// as they are (not read again), and its tables too while they still stand
/// (the same nodes, no window boundary passed since).
/// A snapshot sent as a change to the tables whose SHA-256 is `base`.
#[derive(Clone)]
pub struct Delta {
    pub base: [u8; 32],
    pub snapshot: Arc<v1::SignedSnapshot>,
}

/// The cluster view a rebuild starts from: what it may reuse.
struct Before {
    /// This replica's own validation of the revision's documents.
    validated: Option<Arc<Validated>>,
    /// The tables of the view being replaced, and their SHA-256.
    tables: Option<(Arc<Schedule>, [u8; 32])>,
}

/// Seals `snapshot` with the replica's key.
fn seal(snapshot: &v1::PolicySnapshot, signer: &Signer) -> Result<v1::SignedSnapshot, String> {
    let payload = prost::Message::encode_to_vec(snapshot);
    let seal = signer.sign(&payload).map_err(|e| e.to_string())?;
    Ok(v1::SignedSnapshot {
        snapshot: payload.into(),
        scheme: u32::from(seal.scheme),
        signature: seal.signature.into(),
        signer: seal.signer.into(),
    })
}

fn compile(
    record: &RevisionRecord,
    nodes: &[NodeInfo],
    before: Before,
    blocked: BTreeMap<String, BlockRecord>,
    revoked: Arc<Revoked>,
    signer: &Signer,
) -> Result<Cluster, String> {
    let validated = before.validated;
    let now = OffsetDateTime::now_utc();
    let parsed;
    let set = match &validated {
        Some(v) => &v.set,
        None => {
            parsed = wardline_policy::parse(&record.source()).map_err(|e| e.to_string())?;
            &parsed
        }
    };
    let standing = validated
        .as_ref()
        .filter(|v| v.nodes == nodes && v.schedule.now.next_change.is_none_or(|t| t > now));
    let (schedule, compiled_at) = match standing {
        Some(v) => (v.schedule.clone(), v.compiled_at),
        None => {
            let options = CompileOptions {
                now,
                nodes: nodes.to_vec(),
            };
            let schedule =
                Schedule::compile(set, &options, wardline_ebpf_abi::MAX_SCHEDULED as usize)
                    .map_err(|e| e.to_string())?;
            (schedule, now)
        }
    };
    let admitted = wardline_policy::nodes::admit(set, nodes);
    // Only compiled tables go out: the policy source and what any node
    // claimed stay here. An agent programs them as they are, and follows
    // the window boundaries they carry with the control plane away.
    let tables = prost::Message::encode_to_vec(&v1::Tables::from(&schedule));
    let dataplane_hash: [u8; 32] = Sha256::digest(&tables).into();
    let full_size = tables.len();
    let mut snapshot = v1::PolicySnapshot {
        revision: record.revision,
        policy_sha256: record.sha256.clone(),
        compiled_at: format_time(compiled_at),
        tables_sha256: hex::encode(dataplane_hash),
        tables,
        delta: None,
    };
    // Encoded and signed once; every stream sends the same bytes.
    let full = seal(&snapshot, signer)?;
    let delta = match before.tables {
        Some((old, base)) if base != dataplane_hash => wardline_proto::delta::diff(&old, &schedule)
            .map(|dataplanes| {
                let d = v1::TablesDelta {
                    base_tables_sha256: hex::encode(base),
                    dataplanes,
                };
                (base, d)
            }),
        _ => None,
    };
    let delta = match delta {
        Some((base, d)) if prost::Message::encoded_len(&d) < full_size => {
            snapshot.tables = Vec::new();
            snapshot.delta = Some(d);
            Some(Delta {
                base,
                snapshot: Arc::new(seal(&snapshot, signer)?),
            })
        }
        _ => None,
    };
    Ok(Cluster {
        snapshot: Arc::new(full),
        schedule: Arc::new(schedule.clone()),
        delta,
        record: Arc::new(record.clone()),
        nodes: Arc::new(nodes.to_vec()),
        dataplane_hash,
        next_change: schedule.now.next_change,
        admitted: Arc::new(admitted),
        conflicts: Arc::new(schedule.now.node_conflicts.clone()),
        blocked: Arc::new(blocked),
        revoked,
        bindings: Arc::new(wardline_roles::Bindings::of(set)),
    })
}

/// The revocations the records say, in the form the TLS layer checks.
fn revoked_set(records: &[RevocationRecord]) -> Revoked {
    Revoked::new(records.iter().filter_map(|r| {
        if !r.serial.is_empty() {
            return parse_serial(&r.serial).map(Revocation::Serial);
        }
        let role = r.role.parse::<Role>().ok()?;
        let until = OffsetDateTime::parse(&r.issued_until, &Rfc3339).ok()?;
        Some(Revocation::Name {
            role,
            name: r.name.clone(),
            issued_until: u64::try_from(until.unix_timestamp()).unwrap_or(0),
        })
    }))
}

fn revocation_wire(r: &RevocationRecord) -> v1::Revocation {
    v1::Revocation {
        serial: r.serial.clone(),
        role: r.role.clone(),
        name: r.name.clone(),
        issued_until: r.issued_until.clone(),
        author: r.author.clone(),
        time: r.time.clone(),
        reason: r.reason.clone(),
    }
}

fn blocked_status(block: &BlockRecord) -> Status {
    Status::permission_denied(RegistryError::Blocked(block.clone()).to_string())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

pub(crate) fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::Invalid(_) | RegistryError::Compile(_) | RegistryError::TooLarge { .. } => {
            Status::invalid_argument(e.to_string())
        }
        RegistryError::BadDocument { .. } => Status::invalid_argument(e.to_string()),
        RegistryError::Conflict { .. } | RegistryError::Stale { .. } => {
            Status::failed_precondition(e.to_string())
        }
        RegistryError::NeedsApproval(_) => Status::permission_denied(e.to_string()),
        RegistryError::NotFound { .. } | RegistryError::NoRevision(_) => {
            Status::not_found(e.to_string())
        }
        RegistryError::Store(_) => Status::unavailable(e.to_string()),
        RegistryError::Blocked(_) => Status::permission_denied(e.to_string()),
        RegistryError::Chain(_) => Status::data_loss(e.to_string()),
        RegistryError::Seal(_) | RegistryError::Internal(_) => internal(e),
        RegistryError::Corrupt { .. } => internal(e),
        RegistryError::Forbidden(ref r) => {
            tracing::warn!(operator = %r.operator, verb = %r.verb, "refused: {r}");
            Status::permission_denied(e.to_string())
        }
    }
}

/// Logs a refusal by role and turns it into the call's answer.
pub(crate) fn refused(r: &wardline_roles::Refusal, peer: Option<std::net::SocketAddr>) -> Status {
    tracing::warn!(operator = %r.operator, verb = %r.verb, ?peer, "refused: {r}");
    Status::permission_denied(r.to_string())
}

pub(crate) fn changes(c: &[ChangeRecord]) -> Vec<v1::Change> {
    c.iter()
        .map(|c| v1::Change {
            kind: c.kind.as_str().to_owned(),
            name: c.name.clone(),
            action: c.action.as_str().to_owned(),
        })
        .collect()
}

/// The shared core of both services.
#[derive(Clone)]
pub struct ControlPlane {
    registry: Registry,
    replica: String,
    revoked: RevocationList,
    liveness: Liveness,
    registrations: limits::Throttle,
    renewals: limits::Throttle,
    /// Set when this replica renews agent certificates.
    renewal: Option<Arc<Renewal>>,
    /// The certificate this replica serves, for its status.
    serving: Option<Arc<ServingCert>>,
    streams: limits::Streams,
    cluster: watch::Receiver<Option<Cluster>>,
    agents: mpsc::Sender<AgentUpdate>,
    metrics: Arc<Metrics>,
    flows: Option<Arc<Flows>>,
    siem: Option<Arc<wardline_siem::Exporter>>,
    dashboard: Option<Arc<crate::dashboard::Dashboard>>,
    audit: Arc<crate::audit::Audit>,
    /// How long a second-factor session lasts.
    mfa_session: Duration,
}

/// At most this many agent records in one store transaction (etcd's
/// default `--max-txn-ops` is 128).
const AGENT_BATCH: usize = 128;

type AgentChange = Box<dyn FnOnce(&mut AgentRecord) + Send>;

/// One change to an agent's record, and who waits for it to be stored.
struct AgentUpdate {
    node: String,
    change: AgentChange,
    done: oneshot::Sender<Result<(), Status>>,
}

/// Writes agents' records: every ack, and a heartbeat that reports a new
/// generation, updates one (liveness itself stays in memory, `liveness`). A store transaction is durable (an
/// fsync) before it returns, so one per update held a fleet to one update
/// per fsync: a thousand agents acknowledging a change waited for each
/// other's disk writes for over a second. The updates that arrive while a
/// transaction commits go together into the next one; each caller still
/// returns only once its update is stored. One writer also keeps an ack and
/// a heartbeat of the same agent from overwriting each other.
async fn agent_writer(registry: Registry, mut rx: mpsc::Receiver<AgentUpdate>) {
    let mut batch = Vec::with_capacity(AGENT_BATCH);
    while rx.recv_many(&mut batch, AGENT_BATCH).await > 0 {
        let mut changes = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for u in batch.drain(..) {
            changes.push((u.node, u.change));
            waiting.push(u.done);
        }
        let result = write_agents(&registry, changes).await;
        for done in waiting {
            let _ = done.send(result.clone());
        }
    }
}

async fn write_agents(
    registry: &Registry,
    changes: Vec<(String, AgentChange)>,
) -> Result<(), Status> {
    let mut records: BTreeMap<String, AgentRecord> = BTreeMap::new();
    for (node, change) in changes {
        let record = match records.entry(node) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let stored = registry
                    .agent(e.key())
                    .await
                    .map_err(registry_status)?
                    .unwrap_or_default();
                e.insert(stored)
            }
        };
        change(record);
    }
    let records: Vec<AgentRecord> = records
        .into_iter()
        .map(|(node, mut record)| {
            record.node = node;
            record
        })
        .collect();
    registry.put_agents(&records).await.map_err(registry_status)
}

impl ControlPlane {
    /// Loads the current state and starts following the store. `signer`
    /// (the replica's own certificate and key) signs every snapshot.
    pub async fn start(
        registry: Registry,
        replica: String,
        signer: Signer,
    ) -> Result<ControlPlane, RegistryError> {
        // A store edited behind the replicas' back is refused whole.
        let head = registry.verify_chain().await?;
        tracing::info!(
            revisions = head.revision,
            head_sha256 = %head.record_sha256,
            "revision history verified"
        );
        let (tx, rx) = watch::channel(None);
        let revoked = RevocationList::default();
        let follower_signer = signer.clone();
        let follower = Follower {
            registry: registry.clone(),
            tx,
            signer,
            revoked: revoked.clone(),
        };
        follower.rebuild().await?;
        tokio::spawn(follower.run());
        let audit =
            crate::audit::Audit::start(registry.store().clone(), follower_signer, replica.clone());
        let (agents, updates) = mpsc::channel(4 * AGENT_BATCH);
        tokio::spawn(agent_writer(registry.clone(), updates));
        let liveness = Liveness::default();
        tokio::spawn(liveness.clone().publish(registry.clone(), replica.clone()));
        tokio::spawn(compact(registry.clone()));
        Ok(ControlPlane {
            registry,
            replica,
            revoked,
            liveness,
            registrations: limits::Throttle::registrations(),
            renewals: limits::Throttle::renewals(),
            renewal: None,
            serving: None,
            streams: Default::default(),
            cluster: rx,
            agents,
            metrics: Arc::default(),
            flows: None,
            siem: None,
            dashboard: None,
            audit,
            mfa_session: crate::mfa::SESSION,
        })
    }

    /// Second-factor sessions last `d` instead of [`crate::mfa::SESSION`].
    pub fn with_mfa_session(mut self, d: Duration) -> Self {
        self.mfa_session = d;
        self
    }

    pub(crate) fn mfa_session(&self) -> Duration {
        self.mfa_session
    }

    /// Whether changes need a second factor: once any role binding
    /// exists (a site being set up has one person, who binds the roles).
    pub(crate) fn mfa_required(&self) -> bool {
        self.cluster
            .borrow()
            .as_ref()
            .is_none_or(|c| !c.bindings.bootstrap())
    }

    /// The audit trail this replica writes to.
    pub(crate) fn audit(&self) -> &Arc<crate::audit::Audit> {
        &self.audit
    }

    /// The store the replica keeps its state in.
    pub(crate) fn store(&self) -> &Arc<dyn wardline_store::Store> {
        self.registry.store()
    }

    /// The policy revision in force on this replica (0 before the first).
    pub(crate) fn revision_in_force(&self) -> u64 {
        self.cluster
            .borrow()
            .as_ref()
            .map_or(0, |c| c.record.revision)
    }

    /// Keeps the flow records agents report in `store`, and answers
    /// operators' flow queries from it.
    pub fn with_flows(mut self, store: Arc<dyn FlowBackend>) -> Self {
        self.flows = Some(Arc::new(Flows::new(store)));
        self
    }

    pub(crate) fn flows(&self) -> Option<&Arc<Flows>> {
        self.flows.as_ref()
    }

    /// Exports every flow record this replica stores (after
    /// [`ControlPlane::with_flows`]) and every new policy revision to the
    /// SIEM (`crate::siem`).
    pub fn with_siem(mut self, exporter: Arc<wardline_siem::Exporter>) -> Self {
        crate::siem::feed(&self, exporter.clone());
        self.siem = Some(exporter);
        self
    }

    /// Serves the web dashboard at `url` (`crate::dashboard`): sign-in
    /// links from [`Management::dashboard_login`] open sessions there.
    pub fn with_dashboard(mut self, url: String, settings: wardline_dashboard::Settings) -> Self {
        self.dashboard = Some(Arc::new(crate::dashboard::Dashboard::new(url, settings)));
        self
    }

    pub(crate) fn dashboard(&self) -> Option<&Arc<crate::dashboard::Dashboard>> {
        self.dashboard.as_ref()
    }

    pub(crate) fn siem(&self) -> Option<&Arc<wardline_siem::Exporter>> {
        self.siem.as_ref()
    }

    /// The cluster view: each new revision (and node change) as it comes.
    pub(crate) fn cluster_watch(&self) -> watch::Receiver<Option<Cluster>> {
        self.cluster.clone()
    }

    /// An agent call for `node` by its own certificate, from a node
    /// operators have not removed.
    pub(crate) fn admitted_agent<T>(
        &self,
        req: &Request<T>,
        node: &str,
    ) -> Result<Identity, Status> {
        let id = self.agent(req, node)?;
        self.not_blocked(req, node)?;
        Ok(id)
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The cluster view now.
    pub(crate) fn cluster_view(&self) -> Option<Cluster> {
        self.cluster.borrow().clone()
    }

    /// How many agents have a policy stream open to this replica.
    pub(crate) fn open_streams(&self) -> usize {
        self.streams.open_count()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Renews agent certificates with `renewal` (the site CA's key and the
    /// lifetime of a renewed certificate).
    pub fn with_renewal(mut self, renewal: Renewal) -> Self {
        self.renewal = Some(Arc::new(renewal));
        self
    }

    /// Reports `serving`'s certificate (this replica's own) in status,
    /// with a warning ahead of its expiry.
    pub fn with_serving(mut self, serving: Arc<ServingCert>) -> Self {
        self.serving = Some(serving);
        self
    }

    /// What the caller's certificate says: every agent call has one.
    fn peer_facts<T>(req: &Request<T>) -> Result<CertificateFacts, Status> {
        req.peer_certs()
            .and_then(|c| c.first().and_then(|leaf| CertificateFacts::of(leaf)))
            .ok_or_else(|| Status::unauthenticated("no readable client certificate"))
    }

    /// Notes the certificate an agent connected with, and retires the
    /// long-lived certificate it was renewed from once the agent has come
    /// back with the renewal.
    async fn note_certificate(&self, node: &str, facts: &CertificateFacts) -> Result<(), Status> {
        let (serial, from, until) = (
            serial_hex(&facts.serial),
            expiry::rfc3339(facts.not_before),
            expiry::rfc3339(facts.not_after),
        );
        self.touch_agent(node, move |record| {
            record.certificate_serial = serial;
            record.certificate_not_before = from;
            record.certificate_not_after = until;
        })
        .await?;
        let issued = self
            .registry
            .issued(&serial_hex(&facts.serial))
            .await
            .map_err(registry_status)?;
        let Some(issued) = issued.filter(|i| i.from_long_lived) else {
            return Ok(());
        };
        let Some(parent) = parse_serial(&issued.renewed_from) else {
            return Ok(());
        };
        let parent_facts = CertificateFacts {
            serial: parent,
            not_before: 0,
            not_after: 0,
            identity: None,
        };
        if self.revoked.current().refuses(&parent_facts).is_some() {
            return Ok(());
        }
        let record = RevocationRecord {
            serial: issued.renewed_from.clone(),
            role: String::new(),
            name: String::new(),
            issued_until: String::new(),
            author: replica_author(&self.replica),
            time: format_time(OffsetDateTime::now_utc()),
            reason: format!(
                "retired: node {node} connected with its renewal {}",
                issued.serial
            ),
        };
        self.registry
            .revoke(&[record])
            .await
            .map_err(registry_status)?;
        tracing::info!(node, retired = %issued.renewed_from, renewal = %issued.serial, "start-up certificate retired");
        Ok(())
    }

    /// The revocations this replica's TLS listener checks
    /// ([`wardline_tls::server_config`]); kept current from the store.
    pub fn revocations(&self) -> RevocationList {
        self.revoked.clone()
    }

    /// Refuses a call on a connection whose certificate was revoked after
    /// the handshake.
    fn not_revoked<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(leaf) = req.peer_certs().and_then(|c| c.first().cloned()) else {
            return Ok(());
        };
        match self.revoked.current().refuses_der(&leaf) {
            Some(refusal) => {
                tracing::warn!(%refusal, peer = ?req.remote_addr(), "refused: revoked certificate");
                Err(Status::unauthenticated(refusal.to_string()))
            }
            None => Ok(()),
        }
    }

    /// An operator's call: a valid operator certificate, not revoked.
    /// What it may do is [`ControlPlane::allowed`]'s.
    pub(crate) fn operator<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        self.not_revoked(req)?;
        authorize(req, Role::Operator)
    }

    /// An operator's call that `verb` allows, by the role bindings in
    /// force; refusals are logged with who, what and from where.
    pub(crate) fn allowed<T>(&self, req: &Request<T>, verb: Verb) -> Result<Identity, Status> {
        let id = self.operator(req)?;
        self.grants(&id.name)?
            .allow(verb)
            .map_err(|r| refused(&r, req.remote_addr()))?;
        Ok(id)
    }

    /// An operator's call that asks to change documents: refused at once
    /// unless some role held changes some kind of them; the change itself
    /// is checked document by document as it is written.
    pub(crate) fn may_change<T>(&self, req: &Request<T>) -> Result<Identity, Status> {
        let id = self.operator(req)?;
        let grants = self.grants(&id.name)?;
        let verbs = [Verb::ChangePolicy, Verb::ChangeNodes, Verb::ChangeRoles];
        if !verbs.iter().any(|v| grants.allow(*v).is_ok()) {
            let r = grants
                .allow(Verb::ChangePolicy)
                .expect_err("no change verb allowed");
            return Err(refused(&r, req.remote_addr()));
        }
        Ok(id)
    }

    /// What `operator` holds by the bindings in force; none is known
    /// before the first view of the policy is built (refused, not open).
    pub(crate) fn grants(&self, operator: &str) -> Result<wardline_roles::Grants, Status> {
        let bindings = self
            .cluster
            .borrow()
            .as_ref()
            .map(|c| c.bindings.clone())
            .ok_or_else(|| Status::unavailable("the policy in force is not loaded yet"))?;
        Ok(bindings.grants(operator))
    }

    fn agent<T>(&self, req: &Request<T>, node: &str) -> Result<Identity, Status> {
        self.not_revoked(req)?;
        let id = authorize(req, Role::Agent)?;
        if id.name != node {
            tracing::warn!(
                certificate = %id.name,
                node,
                peer = ?req.remote_addr(),
                "refused: an agent tried to speak for another node"
            );
            return Err(Status::permission_denied(format!(
                "the certificate of node {:?} cannot speak for node {node:?}",
                id.name
            )));
        }
        Ok(id)
    }

    /// Refuses a call of a node operators removed, as the cluster view
    /// knows it (Register asks the store itself).
    fn not_blocked<T>(&self, req: &Request<T>, node: &str) -> Result<(), Status> {
        let block = self
            .cluster
            .borrow()
            .as_ref()
            .and_then(|c| c.blocked.get(node).cloned());
        if let Some(block) = block {
            tracing::warn!(node, peer = ?req.remote_addr(), "refused: a removed node called");
            return Err(blocked_status(&block));
        }
        Ok(())
    }
}

impl ControlPlane {
    /// Updates what is known of an agent with `change`. Returns once stored.
    async fn touch_agent(
        &self,
        node: &str,
        change: impl FnOnce(&mut AgentRecord) + Send + 'static,
    ) -> Result<(), Status> {
        let stopping = || Status::unavailable("the control plane is shutting down");
        let (done, stored) = oneshot::channel();
        self.agents
            .send(AgentUpdate {
                node: node.to_owned(),
                change: Box::new(change),
                done,
            })
            .await
            .map_err(|_| stopping())?;
        stored.await.map_err(|_| stopping())?
    }
}

/// Rebuilds the cluster view on every change under `/wardline/`, and at the
/// next policy window boundary.
struct Follower {
    registry: Registry,
    tx: watch::Sender<Option<Cluster>>,
    signer: Signer,
    revoked: RevocationList,
}

impl Follower {
    async fn rebuild(&self) -> Result<(), RegistryError> {
        // Revocations first, and whatever else fails: a revoked key is
        // refused at once.
        let revoked = Arc::new(revoked_set(&self.registry.revocations().await?));
        if *self.revoked.current() != *revoked {
            tracing::warn!("the site's revocations changed");
            self.revoked.set((*revoked).clone());
        }
        let (record, _) = self.registry.current().await?;
        // Only a revision that holds to the chain is compiled and sent.
        let seen = self.tx.borrow().as_ref().map_or(0, |c| c.record.revision);
        if record.revision < seen {
            return Err(ChainError::WentBack {
                current: record.revision,
                seen,
            }
            .into());
        }
        self.registry.verify_record(&record).await?;
        let nodes = self.registry.node_infos().await?;
        let blocked: BTreeMap<String, BlockRecord> = self
            .registry
            .blocked()
            .await?
            .into_iter()
            .map(|b| (b.node.clone(), b))
            .collect();
        let unchanged = self.tx.borrow().as_ref().is_some_and(|c| {
            c.record.revision == record.revision
                && *c.nodes == nodes
                && *c.blocked == blocked
                && *c.revoked == *revoked
                && c.next_change.is_none_or(|t| t > OffsetDateTime::now_utc())
        });
        if unchanged {
            return Ok(());
        }
        // Parsing and compiling a large policy takes a while: off the
        // runtime's threads, so that calls and streams go on meanwhile.
        let signer = self.signer.clone();
        let before = Before {
            validated: self.registry.validated(&record),
            tables: self
                .tx
                .borrow()
                .as_ref()
                .map(|c| (c.schedule.clone(), c.dataplane_hash)),
        };
        let (record, nodes) = (Arc::new(record), Arc::new(nodes));
        let (r, n) = (record.clone(), nodes.clone());
        let compiled =
            tokio::task::spawn_blocking(move || compile(&r, &n, before, blocked, revoked, &signer))
                .await
                .unwrap_or_else(|e| Err(format!("compiling: {e}")));
        match compiled {
            Ok(cluster) => {
                tracing::info!(
                    revision = record.revision,
                    nodes = nodes.len(),
                    "cluster view rebuilt"
                );
                self.tx.send_replace(Some(cluster));
            }
            Err(e) => tracing::error!(revision = record.revision, "revision does not compile: {e}"),
        }
        Ok(())
    }

    async fn run(self) {
        let mut backoff = Backoff::new(WATCH_BACKOFF_FIRST, WATCH_BACKOFF_MAX);
        loop {
            let after = match self.registry.store().revision().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("store unavailable: {e}");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            // Catch up on anything between the last rebuild and the watch.
            if let Err(e) = self.rebuild().await {
                tracing::warn!("rebuilding the cluster view: {e}");
            }
            let mut events = match self.registry.store().watch(KEY_PREFIX, after).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!("watching the store: {e}");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            loop {
                let boundary = self
                    .tx
                    .borrow()
                    .as_ref()
                    .and_then(|c| c.next_change)
                    .map(|t| {
                        let left = t - OffsetDateTime::now_utc();
                        Duration::try_from(left).unwrap_or(Duration::ZERO)
                    })
                    .unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    event = events.next() => match event {
                        Some(Ok(ev)) => {
                            if is_agent_record(&ev) {
                                continue;
                            }
                            if let Err(e) = self.rebuild().await {
                                tracing::warn!("rebuilding the cluster view: {e}");
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!("store watch ended: {e}; watching again");
                            break;
                        }
                        None => return,
                    },
                    _ = tokio::time::sleep(boundary) => {
                        tracing::info!("a policy window opened or closed");
                        if let Err(e) = self.rebuild().await {
                            tracing::warn!("rebuilding the cluster view: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// How often a replica compacts the store's history, and how many store
/// revisions of history it keeps (for watches that reconnect).
const COMPACT_EVERY: Duration = Duration::from_secs(600);
const HISTORY_KEPT: u64 = 10_000;

/// Keeps the store's history of changes bounded (etcd keeps every old
/// value until compacted). Policy revisions are records of their own and
/// are never compacted away.
async fn compact(registry: Registry) {
    let mut every = tokio::time::interval(COMPACT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match registry.store().revision().await {
            Ok(now) if now > HISTORY_KEPT => {
                if let Err(e) = registry.store().compact(now - HISTORY_KEPT).await {
                    tracing::warn!("compacting the store's history: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("reading the store's revision: {e}"),
        }
        let day_ago = OffsetDateTime::now_utc() - time::Duration::days(1);
        match registry.prune_issued(day_ago).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(forgotten = n, "expired certificate renewals forgotten"),
            Err(e) => tracing::warn!("forgetting expired renewals: {e}"),
        }
    }
}

/// Records that change nothing any agent is sent: agents' acks, the
/// replicas' liveness summaries, renewals, and the governance records
/// (audit trail, second factors, change requests, break-glass grants;
/// a grant's policy is a revision of its own).
fn is_agent_record(ev: &wardline_store::WatchEvent) -> bool {
    let key = match ev {
        wardline_store::WatchEvent::Put(kv) => kv.key.as_str(),
        wardline_store::WatchEvent::Delete { key, .. } => key.as_str(),
    };
    key.starts_with(crate::registry::AGENTS_PREFIX)
        || key.starts_with(crate::registry::LIVENESS_PREFIX)
        || key.starts_with(crate::registry::ISSUED_PREFIX)
        || key.starts_with("/wardline/audit/")
        || key.starts_with("/wardline/mfa/")
        || key.starts_with(crate::changes::CHANGES_PREFIX)
        || key.starts_with(crate::break_glass::GRANTS_PREFIX)
        || key.starts_with(crate::attest::ATTESTATIONS_PREFIX)
        || key.starts_with(crate::quarantine::QUARANTINES_PREFIX)
        || key.starts_with(crate::vendor::VENDOR_GRANTS_PREFIX)
}

/// What status shows of a list it could not read: nothing, logged.
pub(crate) fn or_logged<T>(list: Result<Vec<T>, Status>, what: &str) -> Vec<T> {
    list.unwrap_or_else(|e| {
        tracing::warn!("reading {what}: {}", e.message());
        Vec::new()
    })
}

/// The names a refusal offers instead of an unknown one.
pub(crate) fn known_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "there are none".to_owned()
    } else {
        format!("there are: {}", names.join(", "))
    }
}

/// A store failure as a call's answer: unavailable, try again.
pub(crate) fn store_unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("store: {e}"))
}

impl ControlPlane {
    /// Every record kept under `prefix` (JSON), with its store revision;
    /// one that does not read is logged as a `what` and left out.
    pub(crate) async fn stored_json<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
        what: &str,
    ) -> Result<Vec<(T, u64)>, Status> {
        let mut out = Vec::new();
        for kv in self
            .store()
            .range(prefix)
            .await
            .map_err(store_unavailable)?
        {
            match serde_json::from_slice::<T>(&kv.value) {
                Ok(r) => out.push((r, kv.mod_revision)),
                Err(e) => tracing::warn!(key = %kv.key, "unreadable {what}: {e}"),
            }
        }
        Ok(out)
    }

    /// A clinical operation's documents (`plan`, planned on revision
    /// `base`) as a revision of its own, named `operation` in the history.
    pub(crate) async fn write_operation(
        &self,
        base: u64,
        plan: crate::registry::Plan,
        action: crate::registry::RevisionAction,
        who: &crate::registry::Author,
        message: &str,
        operation: String,
    ) -> Result<crate::registry::RevisionRecord, RegistryError> {
        self.registry()
            .apply_sanctioned(
                base,
                plan,
                action,
                false,
                who,
                message,
                crate::registry::Sanction::Operation(operation),
            )
            .await
    }

    /// Writes `value` at `key` (JSON) only if the key is still at store
    /// revision `revision` (0: absent); false if someone wrote it first.
    pub(crate) async fn put_if_unchanged(
        &self,
        key: &str,
        value: &impl serde::Serialize,
        revision: u64,
    ) -> Result<bool, Status> {
        let value = serde_json::to_vec(value).map_err(|e| Status::internal(e.to_string()))?;
        let written = self
            .store()
            .txn(
                vec![wardline_store::Compare::ModRevision {
                    key: key.to_owned(),
                    revision,
                }],
                vec![wardline_store::Op::put(key, value)],
            )
            .await
            .map_err(store_unavailable)?;
        Ok(written.succeeded)
    }
}

/// SHA-256 (hex) of the certificate a call came with.
pub(crate) fn fingerprint<T>(req: &Request<T>) -> String {
    req.peer_certs()
        .and_then(|c| c.first().map(|leaf| hex::encode(Sha256::digest(leaf))))
        .unwrap_or_default()
}

fn author(id: &Identity) -> String {
    format!("operator:{}", id.name)
}

/// Who makes a change: the operator's name, the SHA-256 of the exact
/// certificate it called with, and the address it called from.
pub(crate) fn change_author<T>(req: &Request<T>, id: &Identity) -> Author {
    Author {
        operator: id.name.clone(),
        name: author(id),
        fingerprint: fingerprint(req),
        peer: req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// The management calls as the replica answers them; `crate::management`
/// serves them, each recorded in the audit trail.
impl ControlPlane {
    pub(crate) async fn observe_call(
        &self,
        req: Request<v1::ObserveRequest>,
    ) -> Result<Response<FlowStream>, Status> {
        self.observe_flows(req).await.map(Response::new)
    }

    pub(crate) async fn flow_matrix_call(
        &self,
        req: Request<v1::ObserveRequest>,
    ) -> Result<Response<v1::FlowMatrixResponse>, Status> {
        self.count_flows(req).await.map(Response::new)
    }

    pub(crate) async fn top_flows_call(
        &self,
        req: Request<v1::TopRequest>,
    ) -> Result<Response<v1::TopResponse>, Status> {
        self.rank_flows(req).await.map(Response::new)
    }

    pub(crate) async fn inventory_call(
        &self,
        req: Request<v1::InventoryRequest>,
    ) -> Result<Response<v1::InventoryResponse>, Status> {
        self.list_inventory(req).await.map(Response::new)
    }

    pub(crate) async fn validate_call(
        &self,
        req: Request<v1::ValidateRequest>,
    ) -> Result<Response<v1::ValidateResponse>, Status> {
        self.allowed(&req, Verb::ReadPolicy)?;
        let source = &req.get_ref().source;
        let (current, _) = self.registry.current().await.map_err(registry_status)?;
        let nodes = self.registry.node_infos().await.map_err(registry_status)?;
        let (source, stored) = (source.clone(), current.documents);
        let validated = tokio::task::spawn_blocking(move || {
            let applied = read_source(&source)?;
            validate_plan(&applied, &plan_apply(&stored, &applied), &nodes)
        })
        .await
        .map_err(internal)?;
        Ok(Response::new(match validated {
            Ok(validated) => v1::ValidateResponse {
                errors: vec![],
                segments: validated.set.segments.len() as u32,
                policies: validated.set.policies.len() as u32,
            },
            Err(RegistryError::Invalid(errors)) => v1::ValidateResponse {
                errors: validation_errors(&errors),
                segments: 0,
                policies: 0,
            },
            Err(e) => v1::ValidateResponse {
                errors: vec![v1::ValidationError {
                    message: e.to_string(),
                    ..Default::default()
                }],
                segments: 0,
                policies: 0,
            },
        }))
    }

    pub(crate) async fn apply_call(
        &self,
        req: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        let id = self.may_change(&req)?;
        self.second_factor(&req, &id).await?;
        let who = change_author(&req, &id);
        let r = req.into_inner();
        limits::message("message", &r.message)?;
        let (record, plan) = self
            .registry
            .apply(&r.source, r.prune, r.expected_revision, &who, &r.message)
            .await
            .map_err(registry_status)?;
        let (revision, unchanged) = match &record {
            Some(rec) => (rec.revision, false),
            None => (
                self.registry
                    .current()
                    .await
                    .map_err(registry_status)?
                    .0
                    .revision,
                true,
            ),
        };
        Ok(Response::new(v1::ApplyResponse {
            revision,
            changes: changes(&plan.changes),
            unchanged,
        }))
    }

    pub(crate) async fn diff_call(
        &self,
        req: Request<v1::DiffRequest>,
    ) -> Result<Response<v1::DiffResponse>, Status> {
        self.allowed(&req, Verb::ReadPolicy)?;
        let source = &req.get_ref().source;
        let (current, _) = self.registry.current().await.map_err(registry_status)?;
        let applied = read_source(source).map_err(registry_status)?;
        let plan = crate::registry::plan(&current.documents, &applied, req.get_ref().prune);
        let diff = plan_diff(&current.documents, &plan);
        Ok(Response::new(v1::DiffResponse {
            revision: current.revision,
            changes: changes(&plan.changes),
            diff,
        }))
    }

    pub(crate) async fn get_call(
        &self,
        req: Request<v1::GetRequest>,
    ) -> Result<Response<v1::GetResponse>, Status> {
        self.allowed(&req, Verb::ReadPolicy)?;
        let r = req.into_inner();
        let record = if r.revision == 0 {
            self.registry.current().await.map_err(registry_status)?.0
        } else {
            self.registry
                .revision(r.revision)
                .await
                .map_err(registry_status)?
        };
        let documents: Vec<v1::Document> = record
            .documents
            .iter()
            .filter(|d| r.kind.is_empty() || d.kind.as_str().eq_ignore_ascii_case(&r.kind))
            .filter(|d| r.name.is_empty() || d.name == r.name)
            .map(|d| v1::Document {
                kind: d.kind.as_str().to_owned(),
                name: d.name.clone(),
                yaml: d.text.clone(),
            })
            .collect();
        if !r.name.is_empty() && documents.is_empty() {
            return Err(Status::not_found(format!(
                "no {} named {:?} in revision {}",
                if r.kind.is_empty() {
                    "document"
                } else {
                    &r.kind
                },
                r.name,
                record.revision
            )));
        }
        Ok(Response::new(v1::GetResponse {
            revision: record.revision,
            documents,
        }))
    }

    pub(crate) async fn delete_call(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let id = self.may_change(&req)?;
        self.second_factor(&req, &id).await?;
        let who = change_author(&req, &id);
        let r = req.into_inner();
        limits::message("message", &r.message)?;
        if r.kind.eq_ignore_ascii_case("node") {
            self.grants(&id.name)?
                .allow(Verb::ChangeNodes)
                .map_err(|e| refused(&e, None))?;
            let registered = self
                .registry
                .remove_node(&r.name, &author(&id), &r.message)
                .await
                .map_err(registry_status)?;
            self.liveness.forget(&r.name);
            tracing::warn!(node = %r.name, registered, by = %id, "node removed and blocked");
            let current = self.registry.current().await.map_err(registry_status)?.0;
            return Ok(Response::new(v1::DeleteResponse {
                revision: current.revision,
            }));
        }
        let kind = document_kind(&r.kind)?;
        let record = self
            .registry
            .delete(kind, &r.name, r.expected_revision, &who, &r.message)
            .await
            .map_err(registry_status)?;
        Ok(Response::new(v1::DeleteResponse {
            revision: record.revision,
        }))
    }

    pub(crate) async fn revoke_call(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let id = self.allowed(&req, Verb::ChangePki)?;
        self.second_factor(&req, &id).await?;
        let r = req.into_inner();
        limits::message("reason", &r.reason)?;
        let now = format_time(OffsetDateTime::now_utc());
        let record = if !r.serial.is_empty() {
            let serial = parse_serial(&r.serial).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "serial: {:?} is not a certificate serial number (hex)",
                    r.serial
                ))
            })?;
            if !r.name.is_empty() || !r.role.is_empty() {
                return Err(Status::invalid_argument(
                    "revoke by serial or by role and name, not both",
                ));
            }
            RevocationRecord {
                serial: serial_hex(&serial),
                role: String::new(),
                name: String::new(),
                issued_until: String::new(),
                author: author(&id),
                time: now,
                reason: r.reason,
            }
        } else {
            let role: Role = r.role.parse().map_err(|_| {
                Status::invalid_argument(format!(
                    "role: {:?} is not agent, operator or control-plane",
                    r.role
                ))
            })?;
            if r.name.is_empty() || r.name.len() > 253 || r.name.chars().any(char::is_whitespace) {
                return Err(Status::invalid_argument(format!(
                    "name: {:?} is not a certificate name (1 to 253 characters, no spaces)",
                    r.name
                )));
            }
            RevocationRecord {
                serial: String::new(),
                role: role.as_str().to_owned(),
                name: r.name,
                issued_until: now.clone(),
                author: author(&id),
                time: now,
                reason: r.reason,
            }
        };
        // The revocation first, then what grew from it: a renewal racing
        // this either is found here or finds the revocation (Renew checks
        // again after recording itself).
        self.registry
            .revoke(std::slice::from_ref(&record))
            .await
            .map_err(registry_status)?;
        let renewed = if record.serial.is_empty() {
            Vec::new()
        } else {
            let renewed = renewal::cascade(
                &self.registry,
                &record.serial,
                &record.author,
                &record.reason,
            )
            .await
            .map_err(registry_status)?;
            if !renewed.is_empty() {
                self.registry
                    .revoke(&renewed)
                    .await
                    .map_err(registry_status)?;
            }
            renewed
        };
        tracing::warn!(serial = %record.serial, role = %record.role, name = %record.name, renewed = renewed.len(), by = %id, "certificate revoked");
        Ok(Response::new(v1::RevokeResponse {
            revocation: Some(revocation_wire(&record)),
            renewed: renewed.iter().map(revocation_wire).collect(),
        }))
    }

    pub(crate) async fn unblock_call(
        &self,
        req: Request<v1::UnblockRequest>,
    ) -> Result<Response<v1::UnblockResponse>, Status> {
        let id = self.allowed(&req, Verb::ChangeNodes)?;
        self.second_factor(&req, &id).await?;
        let node = &req.get_ref().node;
        if !self
            .registry
            .unblock_node(node)
            .await
            .map_err(registry_status)?
        {
            return Err(Status::not_found(format!("node {node:?} is not blocked")));
        }
        tracing::warn!(node = %node, by = %id, "node unblocked");
        Ok(Response::new(v1::UnblockResponse {}))
    }

    pub(crate) async fn history_call(
        &self,
        req: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        self.allowed(&req, Verb::ReadHistory)?;
        let limit = req.get_ref().limit as usize;
        let mut all = self.registry.history().await.map_err(registry_status)?;
        if limit > 0 {
            all.truncate(limit);
        }
        Ok(Response::new(v1::HistoryResponse {
            revisions: all
                .iter()
                .map(|r| v1::RevisionInfo {
                    revision: r.revision,
                    author: r.author.clone(),
                    time: r.time.clone(),
                    action: r.action.map_or("", RevisionAction::as_str).to_owned(),
                    message: r.message.clone(),
                    changes: changes(&r.changes),
                    policy_sha256: r.sha256.clone(),
                    segments: r.count(DocumentKind::Segment) as u32,
                    policies: r.count(DocumentKind::Policy) as u32,
                    author_fingerprint: r.author_fingerprint.clone(),
                    author_peer: r.author_peer.clone(),
                    record_sha256: r.record_sha256.clone(),
                    previous_sha256: r.previous_sha256.clone(),
                    approved_by: r
                        .approval
                        .as_ref()
                        .map(|a| a.operator.clone())
                        .unwrap_or_default(),
                    approved_at: r
                        .approval
                        .as_ref()
                        .map(|a| a.time.clone())
                        .unwrap_or_default(),
                    change_request: r
                        .approval
                        .as_ref()
                        .map(|a| a.request.clone())
                        .unwrap_or_default(),
                    break_glass: r.break_glass.clone(),
                    operation: r.operation.clone(),
                })
                .collect(),
        }))
    }

    pub(crate) async fn verify_history_call(
        &self,
        req: Request<v1::VerifyHistoryRequest>,
    ) -> Result<Response<v1::VerifyHistoryResponse>, Status> {
        self.allowed(&req, Verb::ReadHistory)?;
        let head = self
            .registry
            .verify_chain()
            .await
            .map_err(registry_status)?;
        Ok(Response::new(v1::VerifyHistoryResponse {
            revisions: head.revision,
            head_sha256: head.record_sha256,
        }))
    }

    pub(crate) async fn rollback_call(
        &self,
        req: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::RollbackResponse>, Status> {
        let id = self.may_change(&req)?;
        self.second_factor(&req, &id).await?;
        let who = change_author(&req, &id);
        let r = req.into_inner();
        limits::message("message", &r.message)?;
        let record = self
            .registry
            .rollback(r.to_revision, r.expected_revision, &who, &r.message)
            .await
            .map_err(registry_status)?;
        Ok(Response::new(v1::RollbackResponse {
            revision: record.revision,
            changes: changes(&record.changes),
        }))
    }

    pub(crate) async fn status_call(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let id = self.allowed(&req, Verb::ReadStatus)?;
        let grants = self.grants(&id.name)?;
        let mut report = self.status_report().await?;
        report.caller = id.name.clone();
        report.caller_roles = grants.roles().iter().map(|r| r.to_string()).collect();
        report.roles_unbound = grants.bootstrap;
        report.mfa_required = self.mfa_required();
        report.caller_session_expires = self.session_expires(&req, &id).await;
        Ok(Response::new(report))
    }

    pub(crate) async fn dashboard_login_call(
        &self,
        req: Request<v1::DashboardLoginRequest>,
    ) -> Result<Response<v1::DashboardLoginResponse>, Status> {
        let id = self.allowed(&req, Verb::ReadFlows)?;
        self.sign_in_link(&author(&id)).map(Response::new)
    }
}

impl ControlPlane {
    /// The current revision and every agent's state, as `wardctl status`
    /// and the dashboard show them.
    pub(crate) async fn status_report(&self) -> Result<v1::StatusResponse, Status> {
        let (current, _) = self.registry.current().await.map_err(registry_status)?;
        let nodes: BTreeMap<String, NodeRecord> = self
            .registry
            .nodes()
            .await
            .map_err(registry_status)?
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let agents: BTreeMap<String, AgentRecord> = self
            .registry
            .agents()
            .await
            .map_err(registry_status)?
            .into_iter()
            .map(|a| (a.node.clone(), a))
            .collect();
        let others = self.registry.liveness().await.unwrap_or_else(|e| {
            tracing::warn!("reading other replicas' liveness: {e}");
            Vec::new()
        });
        let heard = self.liveness.merged(&self.replica, &others);
        let cluster = self.cluster.borrow().clone();
        let now = OffsetDateTime::now_utc();
        let since_current = current
            .time()
            .map(|t| now - t)
            .unwrap_or(time::Duration::ZERO);
        let mut out = Vec::new();
        for name in nodes
            .keys()
            .chain(agents.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let node = nodes.get(name);
            let agent = agents.get(name).cloned().unwrap_or_default();
            let heard = heard.get(name.as_str());
            // Another replica's summary is up to PUBLISH_EVERY old.
            let window = |h: &Heard| {
                let base = time::Duration::seconds(3 * HEARTBEAT_SECONDS as i64);
                if h.replica == self.replica {
                    base
                } else {
                    base + time::Duration::try_from(PUBLISH_EVERY).unwrap_or_default()
                }
            };
            let connected = heard.is_some_and(|h| now - h.at < window(h));
            let behind = agent.acked_revision < current.revision
                && since_current > time::Duration::try_from(BEHIND_GRACE).unwrap_or_default();
            let admitted = cluster
                .as_ref()
                .and_then(|c| c.admitted.iter().find(|a| &a.name == name).cloned());
            let left_out = cluster
                .as_ref()
                .and_then(|c| c.conflicts.iter().find(|c| &c.node == name))
                .map(ToString::to_string)
                .unwrap_or_default();
            let (admission, approval_name) = match admitted.as_ref().map(|a| &a.admission) {
                Some(Admission::Declared) => ("declared", String::new()),
                Some(Admission::Approved(by)) => ("approved", by.clone()),
                Some(Admission::Pending) | None => ("pending", String::new()),
            };
            let reported_labels = match (&admitted, node) {
                (Some(a), Some(n)) if a.labels_differ => n.labels.clone().into_iter().collect(),
                _ => Default::default(),
            };
            out.push(v1::AgentStatus {
                node: name.clone(),
                labels: admitted
                    .as_ref()
                    .map(|a| a.labels.clone().into_iter().collect())
                    .unwrap_or_default(),
                addresses: admitted
                    .as_ref()
                    .map(|a| a.addresses.iter().map(ToString::to_string).collect())
                    .unwrap_or_default(),
                admission: admission.to_owned(),
                approval_name,
                refused_addresses: match (&admitted, node) {
                    (Some(a), _) => a
                        .refused_addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                    (None, Some(n)) => n.addresses.iter().map(ToString::to_string).collect(),
                    (None, None) => Vec::new(),
                },
                reported_labels,
                left_out,
                connected,
                last_heartbeat: heard.map(|h| format_time(h.at)).unwrap_or_default(),
                acked_revision: agent.acked_revision,
                acked_policy_sha256: agent.acked_sha256.clone(),
                tables_current: cluster
                    .as_ref()
                    .is_some_and(|c| hex::encode(c.dataplane_hash) == agent.acked_tables_sha256),
                acked_tables_sha256: agent.acked_tables_sha256.clone(),
                generation: agent.generation,
                behind,
                error: agent.error.clone(),
                replica: heard.map(|h| h.replica.clone()).unwrap_or_default(),
                certificate_warning: renewal::warning(
                    &agent.certificate_not_before,
                    &agent.certificate_not_after,
                ),
                certificate_serial: agent.certificate_serial,
                certificate_not_before: agent.certificate_not_before,
                certificate_not_after: agent.certificate_not_after,
            });
        }
        let blocked = self
            .registry
            .blocked()
            .await
            .map_err(registry_status)?
            .into_iter()
            .map(|b| v1::BlockedNode {
                node: b.node,
                author: b.author,
                time: b.time,
                reason: b.reason,
            })
            .collect();
        let revocations = self
            .registry
            .revocations()
            .await
            .map_err(registry_status)?
            .iter()
            .map(revocation_wire)
            .collect();
        let own = self.serving.as_ref().map(|s| s.facts());
        Ok(v1::StatusResponse {
            revision: current.revision,
            policy_sha256: current.sha256.clone(),
            agents: out,
            replica: self.replica.clone(),
            blocked,
            revocations,
            replica_certificate_serial: own
                .as_ref()
                .map(|f| serial_hex(&f.serial))
                .unwrap_or_default(),
            replica_certificate_not_after: own
                .as_ref()
                .map(|f| expiry::rfc3339(f.not_after))
                .unwrap_or_default(),
            replica_certificate_warning: own
                .as_ref()
                .and_then(|f| expiry::warning(f.not_before, f.not_after, expiry::now()))
                .unwrap_or_default(),
            // The caller's, where there is one (`Management::status`).
            caller: String::new(),
            caller_roles: Vec::new(),
            roles_unbound: false,
            mfa_required: false,
            caller_session_expires: String::new(),
            open_changes: self.open_changes(current.revision).await,
            break_glass: self.pending_grants().await,
            quarantines: self.active_quarantines().await,
            vendor_grants: self.current_vendor_grants().await,
        })
    }
}

/// The kind of document an operator names for a delete.
pub(crate) fn document_kind(kind: &str) -> Result<DocumentKind, Status> {
    DocumentKind::named(kind).ok_or_else(|| {
        Status::invalid_argument(format!(
            "{:?} is not a kind: Segment, Policy or Node",
            kind.to_ascii_lowercase()
        ))
    })
}

/// A line diff of two texts in unified form.
/// The unified diff of every document `plan` changes in `current`.
pub(crate) fn plan_diff(
    current: &[crate::registry::StoredDocument],
    plan: &crate::registry::Plan,
) -> String {
    let old: BTreeMap<_, _> = current
        .iter()
        .map(|d| ((d.kind, d.name.clone()), d.text.clone()))
        .collect();
    let mut diff = String::new();
    for c in &plan.changes {
        let new = plan
            .documents
            .iter()
            .find(|d| d.kind == c.kind && d.name == c.name)
            .map(|d| d.text.as_str())
            .unwrap_or("");
        let before = old
            .get(&(c.kind, c.name.clone()))
            .map_or("", String::as_str);
        diff.push_str(&unified(&format!("{} {}", c.kind, c.name), before, new));
    }
    diff
}

fn unified(title: &str, before: &str, after: &str) -> String {
    let diff = similar::TextDiff::from_lines(before, after);
    diff.unified_diff()
        .context_radius(3)
        .header(&format!("a/{title}"), &format!("b/{title}"))
        .to_string()
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<v1::SignedSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl AgentApi for ControlPlane {
    type WatchStream = SnapshotStream;

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node))]
    async fn register(
        &self,
        req: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let r = req.get_ref();
        self.agent(&req, &r.node)?;
        limits::registration(&r.labels, &r.addresses)?;
        self.registrations.take(&r.node)?;
        let addresses = r
            .addresses
            .iter()
            .map(|a| {
                a.parse().map_err(|_| {
                    Status::invalid_argument(format!("addresses: {a:?} is not an address"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let record = NodeRecord {
            name: r.node.clone(),
            labels: r.labels.clone().into_iter().collect(),
            addresses,
            registered: format_time(OffsetDateTime::now_utc()),
        };
        self.registry
            .register(&record)
            .await
            .map_err(registry_status)?;
        self.note_certificate(&r.node, &Self::peer_facts(&req)?)
            .await?;
        tracing::info!(node = %r.node, addresses = ?r.addresses, "agent registered");
        let current = self.registry.current().await.map_err(registry_status)?.0;
        Ok(Response::new(v1::RegisterResponse {
            revision: current.revision,
            heartbeat_seconds: HEARTBEAT_SECONDS,
            certificate_lifetime_seconds: self.renewal.as_ref().map_or(0, |r| r.lifetime.as_secs()),
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node))]
    async fn watch(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let node = req.get_ref().node.clone();
        self.admitted_agent(&req, &node)?;
        let facts = req
            .peer_certs()
            .and_then(|c| c.first().and_then(|leaf| CertificateFacts::of(leaf)));
        let mut rx = self.cluster.clone();
        let metrics = self.metrics.clone();
        let (mut newer, epoch) = self.streams.open(&node);
        let stream = async_stream::try_stream! {
            // (revision, tables) last sent to this agent.
            let mut sent: Option<(u64, [u8; 32])> = None;
            loop {
                if *newer.borrow_and_update() != epoch {
                    tracing::info!(node = %node, "stream superseded by a newer one of the same node");
                    Err(Status::aborted("superseded by a newer Watch of the same node"))?;
                }
                let cluster = rx.borrow_and_update().clone();
                if let Some(refusal) = cluster
                    .as_ref()
                    .zip(facts.as_ref())
                    .and_then(|(c, f)| c.revoked.refuses(f))
                {
                    tracing::warn!(node = %node, %refusal, "stream closed: the certificate was revoked");
                    Err(Status::unauthenticated(refusal.to_string()))?;
                }
                if let Some(block) = cluster.as_ref().and_then(|c| c.blocked.get(&node)) {
                    tracing::warn!(node = %node, "stream closed: the node was removed");
                    Err(blocked_status(block))?;
                }
                if let Some(c) = cluster {
                    let key = (c.record.revision, c.dataplane_hash);
                    if sent != Some(key) {
                        // The change alone to a stream that sent its base;
                        // whole tables otherwise (a new stream, or one that
                        // missed a view in between).
                        let delta = c
                            .delta
                            .as_ref()
                            .filter(|d| sent.is_some_and(|(_, tables)| tables == d.base));
                        tracing::debug!(node = %node, revision = c.record.revision, delta = delta.is_some(), "snapshot sent");
                        metrics.sent(delta.is_some());
                        yield delta.map_or(&c.snapshot, |d| &d.snapshot).as_ref().clone();
                    }
                    sent = Some(key);
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    _ = newer.changed() => {}
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node))]
    async fn ack(&self, req: Request<v1::AckRequest>) -> Result<Response<v1::AckResponse>, Status> {
        let r = req.get_ref();
        self.admitted_agent(&req, &r.node)?;
        if !r.error.is_empty() {
            tracing::warn!(node = %r.node, revision = r.revision, error = %r.error, "agent could not enforce a snapshot");
        }
        self.liveness
            .heard(&r.node, r.error.is_empty().then_some(r.generation));
        let ack = r.clone();
        // How long the revision took to reach this agent, from when it was
        // written; counted once per agent and revision.
        let written = self
            .cluster
            .borrow()
            .as_ref()
            .filter(|c| c.record.revision == r.revision)
            .and_then(|c| c.record.time());
        let metrics = self.metrics.clone();
        self.touch_agent(&r.node, move |record| {
            if ack.error.is_empty() {
                if let Some(at) = written
                    && record.acked_revision < ack.revision
                {
                    let took = OffsetDateTime::now_utc() - at;
                    metrics.apply_to_ack.observe(took.as_seconds_f64().max(0.0));
                }
                record.acked_revision = ack.revision;
                record.acked_sha256 = ack.policy_sha256;
                record.acked_tables_sha256 = ack.tables_sha256;
                record.generation = ack.generation;
                record.error.clear();
            } else {
                record.error = ack.error;
            }
        })
        .await?;
        Ok(Response::new(v1::AckResponse {}))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node))]
    async fn report_flows(
        &self,
        req: Request<v1::FlowBatch>,
    ) -> Result<Response<v1::FlowBatchResponse>, Status> {
        self.ingest_flows(req).await.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn attest(
        &self,
        req: Request<v1::Attestation>,
    ) -> Result<Response<v1::AttestResponse>, Status> {
        self.keep_attestation(req).await.map(Response::new)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node))]
    async fn renew(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<Response<v1::RenewResponse>, Status> {
        self.renew_certificate(req).await.map(Response::new)
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node))]
    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let r = req.get_ref();
        self.admitted_agent(&req, &r.node)?;
        // In memory; the store hears only of a new generation.
        if self.liveness.heard(&r.node, Some(r.generation)) {
            let generation = r.generation;
            if let Err(e) = self
                .touch_agent(&r.node, move |record| record.generation = generation)
                .await
            {
                tracing::warn!(node = %r.node, "recording the agent's generation: {e}");
            }
        }
        let current = self
            .cluster
            .borrow()
            .as_ref()
            .map_or(0, |c| c.record.revision);
        Ok(Response::new(v1::HeartbeatResponse {
            current_revision: current,
        }))
    }
}

impl ControlPlane {
    /// `Renew`: see [`crate::renewal`].
    async fn renew_certificate(
        &self,
        req: Request<v1::RenewRequest>,
    ) -> Result<v1::RenewResponse, Status> {
        let node = req.get_ref().node.clone();
        self.admitted_agent(&req, &node)?;
        let facts = Self::peer_facts(&req)?;
        let Some(renewal) = self.renewal.clone() else {
            return Err(Status::failed_precondition(
                "this replica renews no certificates (started without --ca-key); the agent keeps the one it has",
            ));
        };
        self.renewals.take(&node)?;
        let long_lived = renewal.is_long_lived(&facts);
        let renewed = Renewal::sign(renewal, node.clone(), req.into_inner().csr).await?;
        let record = renewal::issued_record(&node, &facts, long_lived, &renewed, &self.replica);
        self.registry
            .record_issued(&record)
            .await
            .map_err(registry_status)?;
        // A revocation of the certificate this call came with may have
        // landed while signing: from the store, not this replica's view.
        let revoked = revoked_set(&self.registry.revocations().await.map_err(registry_status)?);
        if let Some(refusal) = revoked.refuses(&facts) {
            let children = renewal::cascade(
                &self.registry,
                &record.renewed_from,
                &replica_author(&self.replica),
                "revoked while renewing",
            )
            .await
            .map_err(registry_status)?;
            self.registry
                .revoke(&children)
                .await
                .map_err(registry_status)?;
            return Err(Status::unauthenticated(refusal.to_string()));
        }
        tracing::info!(node = %node, from = %record.renewed_from, serial = %record.serial, not_after = %record.not_after, "agent certificate renewed");
        Ok(v1::RenewResponse {
            certificate_pem: renewed.pem,
            serial: record.serial,
            not_after: expiry::rfc3339(
                u64::try_from(renewed.not_after.unix_timestamp()).unwrap_or(0),
            ),
        })
    }
}

/// The author of a revocation a replica makes itself: a retired start-up
/// certificate, renewals of a certificate revoked while renewing.
fn replica_author(replica: &str) -> String {
    format!("control-plane:{replica}")
}

/// Serves both APIs on `listener` with mutual TLS (`tls`, from
/// [`wardline_tls::server_config`] with this replica's
/// [`ControlPlane::revocations`]) until `shutdown` resolves.
pub async fn serve(
    cp: ControlPlane,
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?addr, replica = %cp.replica, "control plane listening (mutual TLS)");
    // Refused handshakes (failed authentication) go to the audit trail.
    let view = cp.cluster_watch();
    let handshakes = crate::audit::Handshakes::start(cp.audit().clone(), move || {
        view.borrow().as_ref().map_or(0, |c| c.record.revision)
    });
    let incoming = wardline_tls::incoming_reporting(listener, tls, move |peer, reason| {
        handshakes.refused(peer, reason)
    });
    tonic::transport::Server::builder()
        .add_service(
            v1::management_server::ManagementServer::new(cp.clone())
                .max_decoding_message_size(limits::MANAGEMENT_REQUEST_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            v1::agent_api_server::AgentApiServer::new(cp)
                .max_decoding_message_size(limits::AGENT_REQUEST_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
