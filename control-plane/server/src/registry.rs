//! Policy revisions, nodes and agent records, kept in a [`Store`].
//!
//! Every accepted change is a new revision holding the whole set of
//! documents, who made the change, when, why and what changed: history for
//! auditors, and rollback to any earlier revision. A change is written in
//! one transaction that compares the current revision's key: a stale writer
//! is refused, never merged.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_policy::compile::NodeInfo;
use wardline_policy::{CompileOptions, PolicyErrors, PolicySet, Schedule, SourceDocument};

use wardline_signing::{Signer, Verifier};
use wardline_store::{Compare, Op, Store, StoreError};

use crate::chain::{self, ChainError, RecordSeal};

pub const KEY_PREFIX: &str = "/wardline/";
pub const CURRENT_KEY: &str = "/wardline/policy/current";
pub const REVISIONS_PREFIX: &str = "/wardline/policy/revisions/";
pub const NODES_PREFIX: &str = "/wardline/nodes/";
pub const AGENTS_PREFIX: &str = "/wardline/agents/";
/// Revoked certificates: by serial under `serial/`, by role and name under
/// `name/`.
pub const REVOKED_PREFIX: &str = "/wardline/revoked/";

/// Each replica's summary of the agents it hears from, one record per
/// replica written every few seconds (never one write per heartbeat).
pub const LIVENESS_PREFIX: &str = "/wardline/liveness/";

/// Nodes operators removed: a certificate of one of these names can
/// neither register nor receive policy until it is unblocked.
pub const BLOCKED_PREFIX: &str = "/wardline/blocked/";

/// Agent certificates replicas renewed, by serial: which certificate each
/// was renewed from, so that revoking one revokes what grew from it.
pub const ISSUED_PREFIX: &str = "/wardline/issued/";

/// The largest policy source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 16 << 20;

// Every source the registry takes, the policy parser reads, and a source
// the parser reads fits in one gRPC message to an agent.
const _: () = assert!(MAX_SOURCE_BYTES <= wardline_policy::yaml::MAX_POLICY_SOURCE_BYTES);
const _: () =
    assert!(wardline_policy::yaml::MAX_POLICY_SOURCE_BYTES <= wardline_tls::MAX_MESSAGE_BYTES);

fn revision_key(n: u64) -> String {
    format!("{REVISIONS_PREFIX}{n:020}")
}

/// The kinds of document a revision holds, in the order a revision keeps
/// them (segments first: policies name them). Stored as the documents'
/// own `kind`, `Segment` or `Policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DocumentKind {
    Segment,
    Policy,
    Node,
    NodeApproval,
    RoleBinding,
    Group,
    ChangeControl,
    KeepProfile,
    Vendor,
    CriticalFlow,
}

impl DocumentKind {
    /// Every kind, in revision order.
    pub const ALL: [DocumentKind; 10] = [
        DocumentKind::Segment,
        DocumentKind::Policy,
        DocumentKind::Node,
        DocumentKind::NodeApproval,
        DocumentKind::RoleBinding,
        DocumentKind::Group,
        DocumentKind::ChangeControl,
        DocumentKind::KeepProfile,
        DocumentKind::Vendor,
        DocumentKind::CriticalFlow,
    ];

    /// The kind as documents write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            DocumentKind::Segment => wardline_policy::parse::SEGMENT_KIND,
            DocumentKind::Policy => wardline_policy::parse::POLICY_KIND,
            DocumentKind::Node => wardline_policy::parse::NODE_KIND,
            DocumentKind::NodeApproval => wardline_policy::parse::NODE_APPROVAL_KIND,
            DocumentKind::RoleBinding => wardline_policy::parse::ROLE_BINDING_KIND,
            DocumentKind::Group => wardline_policy::parse::GROUP_KIND,
            DocumentKind::ChangeControl => wardline_policy::parse::CHANGE_CONTROL_KIND,
            DocumentKind::KeepProfile => wardline_policy::parse::KEEP_PROFILE_KIND,
            DocumentKind::Vendor => wardline_policy::parse::VENDOR_KIND,
            DocumentKind::CriticalFlow => wardline_policy::parse::CRITICAL_FLOW_KIND,
        }
    }

    /// The kind a document's `kind` field names exactly, if it is one a
    /// revision holds.
    pub fn of_document(kind: &str) -> Option<DocumentKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// The kind an operator names: any case, singular or plural
    /// (`segment`, `Policies`).
    pub fn named(text: &str) -> Option<DocumentKind> {
        match text.to_ascii_lowercase().as_str() {
            "segment" | "segments" => Some(DocumentKind::Segment),
            "policy" | "policies" => Some(DocumentKind::Policy),
            "node" | "nodes" => Some(DocumentKind::Node),
            "nodeapproval" | "nodeapprovals" | "approval" | "approvals" => {
                Some(DocumentKind::NodeApproval)
            }
            "rolebinding" | "rolebindings" | "binding" | "bindings" => {
                Some(DocumentKind::RoleBinding)
            }
            "group" | "groups" => Some(DocumentKind::Group),
            "changecontrol" | "changecontrols" | "change-control" => {
                Some(DocumentKind::ChangeControl)
            }
            "keepprofile" | "keepprofiles" | "keep-profile" | "keep-profiles" => {
                Some(DocumentKind::KeepProfile)
            }
            "vendor" | "vendors" => Some(DocumentKind::Vendor),
            "criticalflow" | "criticalflows" | "critical-flow" | "critical-flows" => {
                Some(DocumentKind::CriticalFlow)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for DocumentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a change did to one document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    Created,
    Updated,
    Deleted,
}

impl ChangeAction {
    /// As the history and the wire protocol write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            ChangeAction::Created => "created",
            ChangeAction::Updated => "updated",
            ChangeAction::Deleted => "deleted",
        }
    }
}

/// How a revision came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevisionAction {
    Apply,
    Delete,
    Rollback,
}

impl RevisionAction {
    /// As the history and the wire protocol write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            RevisionAction::Apply => "apply",
            RevisionAction::Delete => "delete",
            RevisionAction::Rollback => "rollback",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StoredDocument {
    pub kind: DocumentKind,
    pub name: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub kind: DocumentKind,
    pub name: String,
    pub action: ChangeAction,
}

/// One revision of the policy: the whole set and how it came to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub revision: u64,
    pub author: String,
    pub time: String,
    /// `None` only for revision 0, which nothing made.
    pub action: Option<RevisionAction>,
    pub message: String,
    pub changes: Vec<ChangeRecord>,
    /// Segments first, then policies, each by name.
    pub documents: Vec<StoredDocument>,
    pub sha256: String,
    /// SHA-256 (hex) of the author's certificate, and the address it
    /// called from.
    #[serde(default)]
    pub author_fingerprint: String,
    #[serde(default)]
    pub author_peer: String,
    /// The chain (`chain`): the previous record's hash, this record's, and
    /// the seal of the replica that wrote it.
    #[serde(default)]
    pub previous_sha256: String,
    #[serde(default)]
    pub record_sha256: String,
    #[serde(default)]
    pub seal: Option<RecordSeal>,
    /// The second person who approved it, if one did; or the break-glass
    /// grant it opened. Absent from records that had neither, so their
    /// hashes stand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRecord>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub break_glass: String,
    /// The clinical operation that made it (`quarantine q-…`), if one did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operation: String,
}

/// Who made a change: the certificate's name, its fingerprint and the
/// address the call came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Author {
    /// The name in the operator's certificate: whose role bindings decide.
    pub operator: String,
    /// As the history records it (`operator:NAME`).
    pub name: String,
    pub fingerprint: String,
    pub peer: String,
}

impl RevisionRecord {
    /// Revision 0: nothing applied yet.
    pub fn empty() -> RevisionRecord {
        RevisionRecord {
            revision: 0,
            author: String::new(),
            time: String::new(),
            action: None,
            message: String::new(),
            changes: Vec::new(),
            documents: Vec::new(),
            sha256: String::new(),
            author_fingerprint: String::new(),
            author_peer: String::new(),
            previous_sha256: String::new(),
            record_sha256: String::new(),
            seal: None,
            approval: None,
            break_glass: String::new(),
            operation: String::new(),
        }
        .finish()
    }

    /// The canonical source of the revision: its documents in order.
    pub fn source(&self) -> String {
        source_of(&self.documents)
    }

    fn finish(mut self) -> RevisionRecord {
        self.sha256 = sha256_hex(self.source().as_bytes());
        self
    }

    pub fn time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.time, &Rfc3339).ok()
    }

    pub fn count(&self, kind: DocumentKind) -> usize {
        self.documents.iter().filter(|d| d.kind == kind).count()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn source_of(documents: &[StoredDocument]) -> String {
    documents
        .iter()
        .map(|d| format!("---\n{}", d.text))
        .collect()
}

fn sorted(mut docs: Vec<StoredDocument>) -> Vec<StoredDocument> {
    docs.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    docs
}

/// A node as it registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<IpAddr>,
    pub registered: String,
}

impl From<&NodeRecord> for NodeInfo {
    fn from(n: &NodeRecord) -> Self {
        NodeInfo {
            name: n.name.clone(),
            labels: n.labels.clone(),
            addresses: n.addresses.clone(),
        }
    }
}

/// A node operators removed and keep out: who did it, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub node: String,
    pub author: String,
    pub time: String,
    pub reason: String,
}

/// A revoked certificate, or every certificate of a name issued until a
/// time, and who revoked it, when and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// Lowercase hex, for a revocation by serial.
    #[serde(default)]
    pub serial: String,
    /// For a revocation by name: the certificate's role and name, and the
    /// last instant (RFC 3339) a revoked certificate's validity starts.
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub issued_until: String,
    pub author: String,
    pub time: String,
    pub reason: String,
}

impl RevocationRecord {
    fn key(&self) -> String {
        if self.serial.is_empty() {
            format!("{REVOKED_PREFIX}name/{}/{}", self.role, self.name)
        } else {
            format!("{REVOKED_PREFIX}serial/{}", self.serial)
        }
    }
}

/// An agent certificate a replica renewed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// Lowercase hex.
    pub serial: String,
    pub node: String,
    /// The certificate the renewal was authenticated with (hex).
    pub renewed_from: String,
    /// That certificate's lifetime was longer than the site's for agent
    /// certificates (one an operator issued): it is retired once the agent
    /// has connected with the renewed one.
    #[serde(default)]
    pub from_long_lived: bool,
    /// RFC 3339.
    pub not_before: String,
    pub not_after: String,
    pub time: String,
    pub replica: String,
}

/// One replica's summary of the agents it heard from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessRecord {
    pub replica: String,
    /// When the summary was written (RFC 3339).
    pub time: String,
    /// Node -> when this replica last heard from it (RFC 3339).
    pub nodes: BTreeMap<String, String>,
}

/// What the control plane last heard from an agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub node: String,
    pub acked_revision: u64,
    pub acked_sha256: String,
    /// The tables the agent enforces (its ack's tables_sha256).
    #[serde(default)]
    pub acked_tables_sha256: String,
    pub generation: u32,
    pub error: String,
    /// The certificate the agent last registered or renewed with: serial
    /// (hex) and validity (RFC 3339).
    #[serde(default)]
    pub certificate_serial: String,
    #[serde(default)]
    pub certificate_not_before: String,
    #[serde(default)]
    pub certificate_not_after: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The documents do not validate; nothing was written.
    #[error("policy refused, nothing changed:\n{0}")]
    Invalid(PolicyErrors),
    /// The policy validates but does not compile (capacity, node addresses).
    #[error("policy refused, nothing changed: {0}")]
    Compile(#[from] wardline_policy::compile::CompileError),
    /// Optimistic concurrency: someone changed the policy first.
    #[error(
        "stale revision: expected {expected}, the current revision is {current}; nothing changed"
    )]
    Conflict { expected: u64, current: u64 },
    #[error("no {kind} named {name:?} in revision {revision}")]
    NotFound {
        kind: String,
        name: String,
        revision: u64,
    },
    #[error("no revision {0}")]
    NoRevision(u64),
    #[error("the policy source is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("document {index}: {message}")]
    BadDocument { index: usize, message: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The node was removed by an operator and is kept out.
    #[error(
        "node {:?} was removed by {} at {} ({}) and is blocked; `wardctl unblock {}` lets it register again",
        .0.node, .0.author, .0.time, if .0.reason.is_empty() { "no reason given" } else { .0.reason.as_str() }, .0.node
    )]
    Blocked(BlockRecord),
    /// The history fails its chain: edited behind the control plane's back.
    #[error("the stored history fails verification: {0}")]
    Chain(#[from] ChainError),
    #[error("sealing the revision: {0}")]
    Seal(String),
    #[error("{0}")]
    Internal(String),
    /// The operator's roles do not allow the change; nothing changed.
    #[error("{0}; nothing changed")]
    Forbidden(wardline_roles::Refusal),
    #[error("a stored record at {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// The change needs a second person's approval and has none.
    #[error(
        "this change needs a second person's approval ({}); file it with `wardctl propose` for an approver; nothing changed",
        .0.join("; ")
    )]
    NeedsApproval(Vec<String>),
    /// An approved request's revision is no longer current.
    #[error(
        "the policy moved from revision {base} to {current} since the change was proposed; it is stale, propose it again; nothing changed"
    )]
    Stale { base: u64, current: u64 },
}

/// What lets a change through the two-person rule (`wardline-approvals`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sanction {
    /// Nothing: refused if the change needs approval.
    None,
    /// Another person approved the change request.
    Approved(ApprovalRecord),
    /// An emergency grant, opened by one person with the break-glass role
    /// and reviewed afterwards; the caller made the documents itself.
    BreakGlass(String),
    /// A clinical operation (quarantine, release, vendor grant, a
    /// promotion with no critical flow in its way), named as the history
    /// shows it: the caller checked the role and made the documents.
    Operation(String),
}

/// Who approved a revision: kept in it, so the chain covers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// The change request.
    pub request: String,
    /// The approver's certificate name and SHA-256 fingerprint.
    pub operator: String,
    pub fingerprint: String,
    pub time: String,
    #[serde(default)]
    pub note: String,
}

/// The outcome of a planned change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub documents: Vec<StoredDocument>,
    pub changes: Vec<ChangeRecord>,
}

/// Cuts an apply's source into its documents and reads each once: the
/// planning, validation and compilation of the apply all work from what
/// this returns.
pub fn read_source(source: &str) -> Result<Vec<SourceDocument>, RegistryError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(RegistryError::TooLarge {
            size: source.len(),
            limit: MAX_SOURCE_BYTES,
        });
    }
    Ok(wardline_policy::documents(source))
}

/// Merges the `applied` documents into `current` by (kind, name): new ones
/// are created, same-named ones replaced. Nothing is validated here.
pub fn plan_apply(current: &[StoredDocument], applied: &[SourceDocument]) -> Plan {
    plan(current, applied, false)
}

/// As [`plan_apply`]; with `prune`, stored documents the source does not
/// have are deleted: the source becomes the whole policy.
pub fn plan(current: &[StoredDocument], applied: &[SourceDocument], prune: bool) -> Plan {
    let mut docs: BTreeMap<(DocumentKind, String), StoredDocument> = current
        .iter()
        .map(|d| ((d.kind, d.name.clone()), d.clone()))
        .collect();
    let mut changes = Vec::new();
    // The documents of the source a revision can hold; validation of the
    // merged source names the problem with any other (no kind, no name,
    // a kind that is not a segment or a policy).
    let named: BTreeMap<(DocumentKind, &str), &str> = applied
        .iter()
        .filter_map(|d| {
            let kind = DocumentKind::of_document(d.kind.as_deref()?)?;
            Some(((kind, d.name.as_deref()?), d.text.as_str()))
        })
        .collect();
    for d in applied {
        let (Some(kind), Some(name)) = (
            d.kind.as_deref().and_then(DocumentKind::of_document),
            d.name.as_deref(),
        ) else {
            continue;
        };
        let doc = StoredDocument {
            kind,
            name: name.to_owned(),
            text: d.text.clone(),
        };
        let action = match docs.insert((kind, name.to_owned()), doc) {
            None => ChangeAction::Created,
            Some(old) if old.text == d.text => continue,
            Some(_) => ChangeAction::Updated,
        };
        changes.push(ChangeRecord {
            kind,
            name: name.to_owned(),
            action,
        });
    }
    if prune {
        docs.retain(|(kind, name), _| {
            let keep = named.contains_key(&(*kind, name.as_str()));
            if !keep {
                changes.push(ChangeRecord {
                    kind: *kind,
                    name: name.clone(),
                    action: ChangeAction::Deleted,
                });
            }
            keep
        });
    }
    Plan {
        documents: sorted(docs.into_values().collect()),
        changes,
    }
}

/// What validating an apply made of it, handed on to compilation so that
/// nothing is read or compiled twice.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The documents as the revision holds them: in its order, numbered as
    /// its stored source numbers them (what parsing that source gives).
    pub set: PolicySet,
    /// `set` compiled at `compiled_at` for `nodes`.
    pub schedule: Schedule,
    pub compiled_at: OffsetDateTime,
    pub nodes: Vec<NodeInfo>,
}

/// Validates and compiles the documents an apply would produce. Errors
/// name the `applied` documents by their position in the source; stored
/// documents the apply leaves alone are numbered after them. The stored
/// documents are read here; the applied ones are not read again.
pub fn validate_plan(
    applied: &[SourceDocument],
    plan: &Plan,
    nodes: &[NodeInfo],
) -> Result<Validated, RegistryError> {
    let keys: HashSet<(&str, &str)> = applied
        .iter()
        .filter_map(|d| Some((d.kind.as_deref()?, d.name.as_deref()?)))
        .collect();
    let mut kept = Vec::new();
    for d in &plan.documents {
        if !keys.contains(&(d.kind.as_str(), d.name.as_str())) {
            for mut doc in wardline_policy::documents(&d.text) {
                doc.index = applied.len() + kept.len() + 1;
                kept.push(doc);
            }
        }
    }
    let checked: Vec<&SourceDocument> = applied.iter().chain(&kept).collect();
    let set = wardline_policy::validate(&checked).map_err(RegistryError::Invalid)?;
    unstorable(applied)?;
    let set = in_stored_order(set);
    let compiled_at = OffsetDateTime::now_utc();
    // Every window ahead is compiled too: a revision whose tables would
    // not fit once a window opens is refused now, not left unsent then.
    let schedule = Schedule::compile(
        &set,
        &CompileOptions {
            now: compiled_at,
            nodes: nodes.to_vec(),
        },
        wardline_ebpf_abi::MAX_SCHEDULED as usize,
    )?;
    Ok(Validated {
        set,
        schedule,
        compiled_at,
        nodes: nodes.to_vec(),
    })
}

/// `set` as parsing its revision's stored source gives it: each kind in
/// name order and the kinds in [`DocumentKind`] order ([`sorted`]), every
/// document numbered by its position there. Neither validation nor the
/// compiled tables depend on document order (compilation numbers segments
/// and policies by name); this makes the handed-on set the very one every
/// other replica reads from the store, messages' document numbers included.
fn in_stored_order(mut set: PolicySet) -> PolicySet {
    set.segments.sort_by(|a, b| a.name.cmp(&b.name));
    set.policies.sort_by(|a, b| a.name.cmp(&b.name));
    set.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    set.approvals.sort_by(|a, b| a.name.cmp(&b.name));
    set.role_bindings.sort_by(|a, b| a.name.cmp(&b.name));
    set.groups.sort_by(|a, b| a.name.cmp(&b.name));
    let docs = set
        .segments
        .iter_mut()
        .map(|d| &mut d.doc)
        .chain(set.policies.iter_mut().map(|d| &mut d.doc))
        .chain(set.nodes.iter_mut().map(|d| &mut d.doc))
        .chain(set.approvals.iter_mut().map(|d| &mut d.doc))
        .chain(set.role_bindings.iter_mut().map(|d| &mut d.doc))
        .chain(set.groups.iter_mut().map(|d| &mut d.doc))
        .chain(set.change_controls.iter_mut().map(|d| &mut d.doc));
    for (i, doc) in docs.enumerate() {
        doc.index = i + 1;
    }
    set
}

/// Refuses the change from `before` to `after` unless the role bindings
/// in `before` let `operator` make it (`wardline-roles`).
fn allow_change(
    operator: &str,
    before: &[StoredDocument],
    after: &[StoredDocument],
    changes: &[ChangeRecord],
    prune: bool,
    sanction: &Sanction,
) -> Result<(), RegistryError> {
    if let Sanction::BreakGlass(_) | Sanction::Operation(_) = sanction {
        // The caller checked the break-glass role and made the one
        // windowed allow itself.
        return Ok(());
    }
    allow_roles(operator, before, after, changes)?;
    if matches!(sanction, Sanction::Approved(_)) {
        return Ok(());
    }
    let reasons = needs_approval(before, after, changes, prune)?;
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(RegistryError::NeedsApproval(reasons))
    }
}

/// The role bindings in force (in `before`).
pub fn bindings_of(before: &[StoredDocument]) -> Result<wardline_roles::Bindings, RegistryError> {
    let governance: Vec<StoredDocument> = before
        .iter()
        .filter(|d| matches!(d.kind, DocumentKind::RoleBinding | DocumentKind::Group))
        .cloned()
        .collect();
    wardline_policy::parse(&source_of(&governance))
        .map(|set| wardline_roles::Bindings::of(&set))
        .map_err(|e| RegistryError::Internal(format!("the role bindings in force: {e}")))
}

/// Refuses the change unless `operator`'s roles (by the bindings in
/// `before`) allow it, whoever approves it.
pub fn allow_roles(
    operator: &str,
    before: &[StoredDocument],
    after: &[StoredDocument],
    changes: &[ChangeRecord],
) -> Result<(), RegistryError> {
    let bindings = bindings_of(before)?;
    let changed: Vec<wardline_roles::Changed<'_>> = changes
        .iter()
        .map(|c| wardline_roles::Changed {
            kind: c.kind.as_str(),
            name: &c.name,
        })
        .collect();
    let sets = || {
        let read = |docs: &[StoredDocument]| {
            wardline_policy::parse(&source_of(docs)).map_err(|e| e.to_string())
        };
        Ok((read(before)?, read(after)?))
    };
    bindings
        .grants(operator)
        .allow_change(&changed, sets)
        .map_err(RegistryError::Forbidden)
}

/// Why the change from `before` to `after` needs a second person
/// (`wardline-approvals`); empty: it does not.
pub fn needs_approval(
    before: &[StoredDocument],
    after: &[StoredDocument],
    changes: &[ChangeRecord],
    prune: bool,
) -> Result<Vec<String>, RegistryError> {
    let read = |docs: &[StoredDocument]| {
        wardline_policy::parse(&source_of(docs))
            .map_err(|e| RegistryError::Internal(format!("reading the policy: {e}")))
    };
    let (before, after) = (read(before)?, read(after)?);
    if before.role_bindings.is_empty() {
        return Ok(Vec::new());
    }
    let touched: Vec<wardline_approvals::Touched<'_>> = changes
        .iter()
        .map(|c| wardline_approvals::Touched {
            kind: c.kind.as_str(),
            name: &c.name,
        })
        .collect();
    Ok(wardline_approvals::reasons(
        &before, &after, &touched, prune,
    ))
}

/// Refuses a document the policy language accepts but a revision cannot
/// hold (a kind that is no [`DocumentKind`]): it would otherwise be left
/// out of the revision without a word. `index` counts from 1, as the
/// policy's own errors do.
fn unstorable(applied: &[wardline_policy::SourceDocument]) -> Result<(), RegistryError> {
    for (i, d) in applied.iter().enumerate() {
        if let Some(kind) = d.kind.as_deref()
            && DocumentKind::of_document(kind).is_none()
        {
            return Err(RegistryError::BadDocument {
                index: i + 1,
                message: format!(
                    "a {kind} document cannot be kept in a revision; the control plane keeps {}",
                    DocumentKind::ALL.map(DocumentKind::as_str).join(" and ")
                ),
            });
        }
    }
    Ok(())
}

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
    /// Seals every revision this replica writes.
    signer: Signer,
    /// Checks every replica's seals.
    verifier: Verifier,
    /// What this replica validated for the last apply it wrote, by the
    /// SHA-256 of the documents' source, for compiling them without
    /// reading them again.
    validated: Arc<Mutex<Option<HandedOn>>>,
}

/// What an apply validated, by the SHA-256 of its revision's source.
struct HandedOn {
    sha256: String,
    validated: Arc<Validated>,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| RegistryError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

impl Registry {
    /// `signer`: this replica's certificate and key; `verifier`: the site
    /// CA, whose control-plane certificates seal revisions.
    /// The site CA's verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn new(store: Arc<dyn Store>, signer: Signer, verifier: Verifier) -> Registry {
        Registry {
            store,
            signer,
            verifier,
            validated: Arc::default(),
        }
    }

    /// What this replica validated when it applied `record`'s documents:
    /// their typed form and tables, so that the revision is not read and
    /// compiled again. `None` for documents another replica applied.
    pub fn validated(&self, record: &RevisionRecord) -> Option<Arc<Validated>> {
        let held = self.validated.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .filter(|h| h.sha256 == record.sha256)
            .map(|h| h.validated.clone())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The current revision and the store revision of its pointer key (0
    /// when nothing was ever applied).
    pub async fn current(&self) -> Result<(RevisionRecord, u64), RegistryError> {
        match self.store.get(CURRENT_KEY).await? {
            None => Ok((RevisionRecord::empty(), 0)),
            Some(kv) => {
                let n: u64 = decode(CURRENT_KEY, &kv.value)?;
                Ok((self.revision(n).await?, kv.mod_revision))
            }
        }
    }

    pub async fn revision(&self, n: u64) -> Result<RevisionRecord, RegistryError> {
        if n == 0 {
            return Ok(RevisionRecord::empty());
        }
        let key = revision_key(n);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or(RegistryError::NoRevision(n))?;
        decode(&key, &kv.value)
    }

    /// Checks the whole history: every revision from 1 to the current one
    /// present, unaltered, sealed by a replica of the site and linked to
    /// the one before. Returns the current record.
    pub async fn verify_chain(&self) -> Result<RevisionRecord, RegistryError> {
        let (current, _) = self.current().await?;
        let mut records: BTreeMap<u64, RevisionRecord> = BTreeMap::new();
        for kv in self.store.range(REVISIONS_PREFIX).await? {
            let r: RevisionRecord = decode(&kv.key, &kv.value)?;
            if kv.key != revision_key(r.revision) {
                return Err(ChainError::Altered {
                    revision: r.revision,
                }
                .into());
            }
            records.insert(r.revision, r);
        }
        let mut previous = RevisionRecord::empty();
        for n in 1..=current.revision {
            let record = records
                .remove(&n)
                .ok_or(ChainError::Missing { revision: n })?;
            chain::check(&record, &previous, &self.verifier)?;
            previous = record;
        }
        if let Some((&n, _)) = records.iter().next() {
            // A record after the current one: written behind our back, or
            // the current pointer moved back.
            return Err(ChainError::Unlinked { revision: n }.into());
        }
        Ok(previous)
    }

    /// Checks one record against the chain: its hash, its seal and its
    /// link to the record before it.
    pub async fn verify_record(&self, record: &RevisionRecord) -> Result<(), RegistryError> {
        if record.revision == 0 {
            return Ok(());
        }
        let previous = match self.revision(record.revision - 1).await {
            Ok(p) => p,
            Err(RegistryError::NoRevision(n)) => {
                return Err(ChainError::Missing { revision: n }.into());
            }
            Err(e) => return Err(e),
        };
        chain::check(record, &previous, &self.verifier)?;
        Ok(())
    }

    /// Every revision, most recent first.
    pub async fn history(&self) -> Result<Vec<RevisionRecord>, RegistryError> {
        let mut out = Vec::new();
        for kv in self.store.range(REVISIONS_PREFIX).await? {
            out.push(decode::<RevisionRecord>(&kv.key, &kv.value)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Writes `documents` as the next revision, if the current revision is
    /// still `current` (and `expected`, when given).
    #[expect(clippy::too_many_arguments, reason = "one place that writes revisions")]
    async fn commit(
        &self,
        current: &RevisionRecord,
        current_mod: u64,
        expected: Option<u64>,
        documents: Vec<StoredDocument>,
        changes: Vec<ChangeRecord>,
        action: RevisionAction,
        author: &Author,
        message: &str,
        prune: bool,
        sanction: Sanction,
    ) -> Result<RevisionRecord, RegistryError> {
        if let Some(expected) = expected
            && expected != current.revision
        {
            return Err(RegistryError::Conflict {
                expected,
                current: current.revision,
            });
        }
        // The role bindings and change control of the revision this one
        // replaces decide; the write below lands only if it is still the
        // current one.
        allow_change(
            &author.operator,
            &current.documents,
            &documents,
            &changes,
            prune,
            &sanction,
        )?;
        let (approval, break_glass, operation) = match sanction {
            Sanction::None => (None, String::new(), String::new()),
            Sanction::Approved(a) => (Some(a), String::new(), String::new()),
            Sanction::BreakGlass(id) => (None, id, String::new()),
            Sanction::Operation(what) => (None, String::new(), what),
        };
        let mut record = RevisionRecord {
            revision: current.revision + 1,
            author: author.name.clone(),
            time: now(),
            action: Some(action),
            message: message.to_owned(),
            changes,
            documents,
            sha256: String::new(),
            author_fingerprint: author.fingerprint.clone(),
            author_peer: author.peer.clone(),
            previous_sha256: String::new(),
            record_sha256: String::new(),
            seal: None,
            approval,
            break_glass,
            operation,
        }
        .finish();
        chain::seal(&mut record, current, &self.signer).map_err(RegistryError::Seal)?;
        let outcome = self
            .store
            .txn(
                vec![Compare::ModRevision {
                    key: CURRENT_KEY.to_owned(),
                    revision: current_mod,
                }],
                vec![
                    Op::Put {
                        key: revision_key(record.revision),
                        value: encode(&record),
                    },
                    Op::Put {
                        key: CURRENT_KEY.to_owned(),
                        value: encode(&record.revision),
                    },
                ],
            )
            .await?;
        if !outcome.succeeded {
            let (now_current, _) = self.current().await?;
            return Err(RegistryError::Conflict {
                expected: expected.unwrap_or(current.revision),
                current: now_current.revision,
            });
        }
        tracing::info!(
            revision = record.revision,
            author = %author.name,
            fingerprint = %author.fingerprint,
            peer = %author.peer,
            action = action.as_str(),
            changes = record.changes.len(),
            "policy revision written"
        );
        Ok(record)
    }

    /// Reads, plans and validates `source` against the current revision,
    /// writing nothing: what [`Registry::apply`] and a proposal start from.
    pub async fn plan_source(
        &self,
        source: &str,
        prune: bool,
    ) -> Result<(RevisionRecord, u64, Plan, Validated), RegistryError> {
        let (current, current_mod) = self.current().await?;
        let nodes = self.node_infos().await?;
        // Off the runtime's threads: a large policy takes a while to read,
        // validate and compile, and it is done once.
        let (source, stored) = (source.to_owned(), current.documents.clone());
        let (plan, validated) = tokio::task::spawn_blocking(move || {
            let applied = read_source(&source)?;
            let plan = plan(&stored, &applied, prune);
            let validated = validate_plan(&applied, &plan, &nodes)?;
            Ok::<_, RegistryError>((plan, validated))
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("validating: {e}")))??;
        Ok((current, current_mod, plan, validated))
    }

    /// Applies every document of `source`, all or nothing. `Ok(None)`: the
    /// documents are already current, nothing written.
    pub async fn apply(
        &self,
        source: &str,
        prune: bool,
        expected: Option<u64>,
        author: &Author,
        message: &str,
    ) -> Result<(Option<RevisionRecord>, Plan), RegistryError> {
        let (current, current_mod, plan, validated) = self.plan_source(source, prune).await?;
        if let Some(expected) = expected
            && expected != current.revision
        {
            return Err(RegistryError::Conflict {
                expected,
                current: current.revision,
            });
        }
        if plan.changes.is_empty() {
            return Ok((None, plan));
        }
        // Handed on before the write: the cluster view may rebuild as soon
        // as the revision lands. Kept by what the documents are, so it can
        // only ever stand for these documents.
        *self.validated.lock().unwrap_or_else(|e| e.into_inner()) = Some(HandedOn {
            sha256: sha256_hex(source_of(&plan.documents).as_bytes()),
            validated: Arc::new(validated),
        });
        let record = self
            .commit(
                &current,
                current_mod,
                expected,
                plan.documents.clone(),
                plan.changes.clone(),
                RevisionAction::Apply,
                author,
                message,
                prune,
                Sanction::None,
            )
            .await?;
        Ok((Some(record), plan))
    }

    /// The current revision without document `kind`/`name`, checked to
    /// still stand, writing nothing.
    pub async fn plan_delete(
        &self,
        kind: DocumentKind,
        name: &str,
    ) -> Result<(RevisionRecord, u64, Plan), RegistryError> {
        let (current, current_mod) = self.current().await?;
        let before = current.documents.len();
        let documents: Vec<StoredDocument> = current
            .documents
            .iter()
            .filter(|d| !(d.kind == kind && d.name == name))
            .cloned()
            .collect();
        if documents.len() == before {
            return Err(RegistryError::NotFound {
                kind: kind.as_str().to_owned(),
                name: name.to_owned(),
                revision: current.revision,
            });
        }
        // What remains must still stand (a policy may name this segment).
        let source = source_of(&documents);
        wardline_policy::parse(&source).map_err(RegistryError::Invalid)?;
        let changes = vec![ChangeRecord {
            kind,
            name: name.to_owned(),
            action: ChangeAction::Deleted,
        }];
        Ok((current, current_mod, Plan { documents, changes }))
    }

    pub async fn delete(
        &self,
        kind: DocumentKind,
        name: &str,
        expected: Option<u64>,
        author: &Author,
        message: &str,
    ) -> Result<RevisionRecord, RegistryError> {
        let (current, current_mod, plan) = self.plan_delete(kind, name).await?;
        self.commit(
            &current,
            current_mod,
            expected,
            plan.documents,
            plan.changes,
            RevisionAction::Delete,
            author,
            message,
            false,
            Sanction::None,
        )
        .await
    }

    /// Writes a change another person approved, or an emergency grant:
    /// `plan` as planned on revision `base`, refused as stale unless that
    /// is still the current revision.
    #[expect(clippy::too_many_arguments, reason = "a revision's every part")]
    pub async fn apply_sanctioned(
        &self,
        base: u64,
        plan: Plan,
        action: RevisionAction,
        prune: bool,
        author: &Author,
        message: &str,
        sanction: Sanction,
    ) -> Result<RevisionRecord, RegistryError> {
        let (current, current_mod) = self.current().await?;
        if current.revision != base {
            return Err(RegistryError::Stale {
                base,
                current: current.revision,
            });
        }
        self.commit(
            &current,
            current_mod,
            Some(base),
            plan.documents,
            plan.changes,
            action,
            author,
            message,
            prune,
            sanction,
        )
        .await
        .map_err(|e| match e {
            RegistryError::Conflict { current, .. } => RegistryError::Stale { base, current },
            e => e,
        })
    }

    pub async fn rollback(
        &self,
        to: u64,
        expected: Option<u64>,
        author: &Author,
        message: &str,
    ) -> Result<RevisionRecord, RegistryError> {
        let (current, current_mod) = self.current().await?;
        let target = self.revision(to).await?;
        let changes = diff_documents(&current.documents, &target.documents);
        let message = if message.is_empty() {
            format!("rollback to revision {to}")
        } else {
            message.to_owned()
        };
        self.commit(
            &current,
            current_mod,
            expected,
            target.documents,
            changes,
            RevisionAction::Rollback,
            author,
            &message,
            false,
            Sanction::None,
        )
        .await
    }

    /// Stores what a node reported. Refused (`Blocked`) for a blocked node,
    /// also when the block lands while this registration is in flight.
    pub async fn register(&self, node: &NodeRecord) -> Result<(), RegistryError> {
        let key = format!("{NODES_PREFIX}{}", node.name);
        let blocked_key = format!("{BLOCKED_PREFIX}{}", node.name);
        if let Some(block) = self.blocked_node(&node.name).await? {
            return Err(RegistryError::Blocked(block));
        }
        // Only a real change is written: a reconnect with the same
        // addresses and labels recompiles nothing.
        if let Some(kv) = self.store.get(&key).await? {
            let old: NodeRecord = decode(&key, &kv.value)?;
            if old.labels == node.labels && old.addresses == node.addresses {
                return Ok(());
            }
        }
        let outcome = self
            .store
            .txn(
                vec![Compare::ModRevision {
                    key: blocked_key,
                    revision: 0,
                }],
                vec![Op::Put {
                    key,
                    value: encode(node),
                }],
            )
            .await?;
        if !outcome.succeeded
            && let Some(block) = self.blocked_node(&node.name).await?
        {
            return Err(RegistryError::Blocked(block));
        }
        Ok(())
    }

    /// Forgets node `name` (its registration and agent record) and blocks
    /// it, in one transaction: it cannot register again, so its addresses
    /// stay out of every segment, until [`Registry::unblock_node`]. A name
    /// that never registered is blocked all the same (a key stolen from a
    /// node that is away). Returns whether the node was registered.
    pub async fn remove_node(
        &self,
        name: &str,
        author: &str,
        reason: &str,
    ) -> Result<bool, RegistryError> {
        let key = format!("{NODES_PREFIX}{name}");
        let registered = self.store.get(&key).await?.is_some();
        let block = BlockRecord {
            node: name.to_owned(),
            author: author.to_owned(),
            time: now(),
            reason: reason.to_owned(),
        };
        self.store
            .txn(
                vec![],
                vec![
                    Op::Delete { key },
                    Op::Delete {
                        key: format!("{AGENTS_PREFIX}{name}"),
                    },
                    Op::Put {
                        key: format!("{BLOCKED_PREFIX}{name}"),
                        value: encode(&block),
                    },
                ],
            )
            .await?;
        Ok(registered)
    }

    /// Stores revocations in one transaction (each replacing one of the
    /// same serial, or of the same role and name).
    pub async fn revoke(&self, records: &[RevocationRecord]) -> Result<(), RegistryError> {
        let ops = records
            .iter()
            .map(|r| Op::Put {
                key: r.key(),
                value: encode(r),
            })
            .collect();
        self.store.txn(vec![], ops).await?;
        Ok(())
    }

    /// Notes a renewed certificate.
    pub async fn record_issued(&self, record: &IssuedRecord) -> Result<(), RegistryError> {
        self.store
            .txn(
                vec![],
                vec![Op::Put {
                    key: format!("{ISSUED_PREFIX}{}", record.serial),
                    value: encode(record),
                }],
            )
            .await?;
        Ok(())
    }

    /// The renewed certificate of serial `serial` (hex), if a replica
    /// renewed it.
    pub async fn issued(&self, serial: &str) -> Result<Option<IssuedRecord>, RegistryError> {
        let key = format!("{ISSUED_PREFIX}{serial}");
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Forgets renewals that expired before `before`: nothing can present
    /// them any more. Renewals made from them keep their own record,
    /// which names them, so revoking an expired certificate still finds
    /// what grew from it. Returns how many were forgotten.
    pub async fn prune_issued(&self, before: OffsetDateTime) -> Result<usize, RegistryError> {
        let mut ops = Vec::new();
        for kv in self.store.range(ISSUED_PREFIX).await? {
            let record: IssuedRecord = decode(&kv.key, &kv.value)?;
            let expired =
                OffsetDateTime::parse(&record.not_after, &Rfc3339).is_ok_and(|t| t < before);
            if expired {
                ops.push(Op::Delete { key: kv.key });
            }
        }
        let n = ops.len();
        // etcd's default --max-txn-ops is 128.
        for chunk in ops.chunks(128) {
            self.store.txn(vec![], chunk.to_vec()).await?;
        }
        Ok(n)
    }

    /// Every certificate renewed from `serial`, from those, and so on.
    pub async fn renewed_from(&self, serial: &str) -> Result<Vec<IssuedRecord>, RegistryError> {
        let mut all: Vec<IssuedRecord> = Vec::new();
        for kv in self.store.range(ISSUED_PREFIX).await? {
            all.push(decode(&kv.key, &kv.value)?);
        }
        let mut out = Vec::new();
        let mut parents = vec![serial.to_owned()];
        while let Some(parent) = parents.pop() {
            for child in all.iter().filter(|r| r.renewed_from == parent) {
                if !out.iter().any(|o: &IssuedRecord| o.serial == child.serial) {
                    parents.push(child.serial.clone());
                    out.push(child.clone());
                }
            }
        }
        Ok(out)
    }

    /// Every revocation.
    pub async fn revocations(&self) -> Result<Vec<RevocationRecord>, RegistryError> {
        let mut out = Vec::new();
        for kv in self.store.range(REVOKED_PREFIX).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    /// Replaces this replica's liveness summary.
    pub async fn publish_liveness(&self, record: &LivenessRecord) -> Result<(), RegistryError> {
        self.store
            .txn(
                vec![],
                vec![Op::Put {
                    key: format!("{LIVENESS_PREFIX}{}", record.replica),
                    value: encode(record),
                }],
            )
            .await?;
        Ok(())
    }

    /// Every replica's liveness summary.
    pub async fn liveness(&self) -> Result<Vec<LivenessRecord>, RegistryError> {
        let mut out = Vec::new();
        for kv in self.store.range(LIVENESS_PREFIX).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    /// Lets a blocked node register again. Returns whether it was blocked.
    pub async fn unblock_node(&self, name: &str) -> Result<bool, RegistryError> {
        let key = format!("{BLOCKED_PREFIX}{name}");
        if self.store.get(&key).await?.is_none() {
            return Ok(false);
        }
        self.store.txn(vec![], vec![Op::Delete { key }]).await?;
        Ok(true)
    }

    /// Why node `name` is blocked, if it is.
    pub async fn blocked_node(&self, name: &str) -> Result<Option<BlockRecord>, RegistryError> {
        let key = format!("{BLOCKED_PREFIX}{name}");
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Every blocked node, by name.
    pub async fn blocked(&self) -> Result<Vec<BlockRecord>, RegistryError> {
        let mut out = Vec::new();
        for kv in self.store.range(BLOCKED_PREFIX).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        let mut out = Vec::new();
        for kv in self.store.range(NODES_PREFIX).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }

    pub async fn node_infos(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        Ok(self.nodes().await?.iter().map(NodeInfo::from).collect())
    }

    /// Stores several agents' records in one transaction.
    pub async fn put_agents(&self, records: &[AgentRecord]) -> Result<(), RegistryError> {
        let ops = records
            .iter()
            .map(|record| Op::Put {
                key: format!("{AGENTS_PREFIX}{}", record.node),
                value: encode(record),
            })
            .collect();
        self.store.txn(vec![], ops).await?;
        Ok(())
    }

    pub async fn agent(&self, node: &str) -> Result<Option<AgentRecord>, RegistryError> {
        let key = format!("{AGENTS_PREFIX}{node}");
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    pub async fn agents(&self) -> Result<Vec<AgentRecord>, RegistryError> {
        let mut out = Vec::new();
        for kv in self.store.range(AGENTS_PREFIX).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }
}

/// What turning `from` into `to` changes, document by document.
pub fn diff_documents(from: &[StoredDocument], to: &[StoredDocument]) -> Vec<ChangeRecord> {
    let index = |docs: &[StoredDocument]| -> BTreeMap<(DocumentKind, String), String> {
        docs.iter()
            .map(|d| ((d.kind, d.name.clone()), d.text.clone()))
            .collect()
    };
    let (a, b) = (index(from), index(to));
    let mut out = Vec::new();
    for ((kind, name), text) in &b {
        let action = match a.get(&(*kind, name.clone())) {
            None => ChangeAction::Created,
            Some(old) if old == text => continue,
            Some(_) => ChangeAction::Updated,
        };
        out.push(ChangeRecord {
            kind: *kind,
            name: name.clone(),
            action,
        });
    }
    for (kind, name) in a.keys() {
        if !b.contains_key(&(*kind, name.clone())) {
            out.push(ChangeRecord {
                kind: *kind,
                name: name.clone(),
                action: ChangeAction::Deleted,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_records_keep_their_text_form() {
        // Revisions already in a store were written with strings; the
        // enums read and write the same JSON.
        let json = r#"{"kind":"Policy","name":"p","action":"deleted"}"#;
        let change: ChangeRecord = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            change,
            ChangeRecord {
                kind: DocumentKind::Policy,
                name: "p".into(),
                action: ChangeAction::Deleted
            }
        );
        assert_eq!(serde_json::to_string(&change).unwrap_or_default(), json);
        for action in [
            RevisionAction::Apply,
            RevisionAction::Delete,
            RevisionAction::Rollback,
        ] {
            assert_eq!(
                serde_json::to_string(&action).unwrap_or_default(),
                format!("{:?}", action.as_str())
            );
        }
    }

    fn segment(name: &str, cidr: &str) -> String {
        format!(
            "apiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: {name}}}\nspec: {{cidrs: [{cidr}]}}\n"
        )
    }

    fn allow(name: &str, from: &str, to: &str, port: u16) -> String {
        format!(
            "apiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: {name}}}\n\
             spec: {{action: allow, from: [{from}], to: [{to}], ports: [{{protocol: tcp, port: {port}}}]}}\n"
        )
    }

    fn stored(source: &str) -> Vec<StoredDocument> {
        plan(&[], &read_source(source).unwrap(), false).documents
    }

    #[test]
    fn an_apply_is_validated_into_what_its_stored_revision_parses_to() {
        // Applied in an order of its own, over stored documents it leaves
        // alone and one it replaces: the set validation hands on must be
        // the one the follower would get by reading the revision back.
        let current = stored(&format!(
            "{}---\n{}---\n{}",
            segment("monitors", "198.18.20.0/24"),
            segment("ehr", "198.18.10.0/24"),
            allow("b-old", "monitors", "ehr", 443)
        ));
        let source = format!(
            "{}---\n{}---\n{}---\n{}",
            allow("z-new", "pumps", "ehr", 8443),
            segment("pumps", "198.18.30.0/24"),
            allow("b-old", "pumps", "monitors", 2575),
            segment("alarms", "198.18.40.0/24"),
        );
        let applied = read_source(&source).unwrap();
        let plan = plan(&current, &applied, false);
        let validated = validate_plan(&applied, &plan, &[]).unwrap();
        let reread = wardline_policy::parse(&source_of(&plan.documents)).unwrap();
        assert_eq!(validated.set, reread);
        let names: Vec<&str> = validated
            .set
            .segments
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["alarms", "ehr", "monitors", "pumps"]);
        let options = CompileOptions {
            now: validated.compiled_at,
            nodes: vec![],
        };
        assert_eq!(
            validated.schedule,
            Schedule::compile(&reread, &options, wardline_ebpf_abi::MAX_SCHEDULED as usize)
                .unwrap()
        );
    }

    #[test]
    fn validation_errors_name_applied_documents_by_their_place_in_the_source() {
        let current = stored(&segment("ehr", "198.18.10.0/24"));
        // Document 2 claims the stored segment's prefix (reported on the
        // stored one, numbered after the source's three); document 3 is not
        // YAML, and its line is the line of the source the operator wrote.
        let source = format!(
            "{}---\n{}---\nkind: [unclosed\n",
            allow("p", "pumps", "ehr", 443),
            segment("pumps", "198.18.10.0/24"),
        );
        let applied = read_source(&source).unwrap();
        let errors = match validate_plan(&applied, &plan(&current, &applied, false), &[]) {
            Err(RegistryError::Invalid(errors)) => errors,
            other => panic!("expected the apply refused, got {other:?}"),
        };
        let text = errors.to_string();
        assert!(
            text.contains(
                "document 4 (Segment \"ehr\"): spec.cidrs[0]: \"198.18.10.0/24\" is already claimed by document 2 (Segment \"pumps\")"
            ),
            "{text}"
        );
        let syntax = errors.iter().find(|e| e.document == 3).expect("document 3");
        assert_eq!(syntax.location.map(|l| l.line), Some(11), "{text}");
    }

    #[test]
    fn an_oversized_source_is_refused_unread() {
        let source = "#".repeat(MAX_SOURCE_BYTES + 1);
        assert!(matches!(
            read_source(&source),
            Err(RegistryError::TooLarge { size, .. }) if size == MAX_SOURCE_BYTES + 1
        ));
    }

    #[test]
    fn a_kind_a_revision_cannot_hold_is_refused_not_dropped() {
        let applied = wardline_policy::documents(
            "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: s}\nspec: {cidrs: []}\n---\n\
             apiVersion: wardline/v1\nkind: Gadget\nmetadata: {name: g}\nspec: {}\n",
        );
        match unstorable(&applied) {
            Err(RegistryError::BadDocument { index: 2, message }) => {
                assert!(message.contains("Gadget"), "{message}")
            }
            other => panic!("expected document 2 refused, got {other:?}"),
        }
        assert!(unstorable(&applied[..1]).is_ok());
    }

    #[test]
    fn kinds_sort_segments_first_and_read_loosely() {
        assert!(DocumentKind::Segment < DocumentKind::Policy);
        assert_eq!(DocumentKind::named("Segments"), Some(DocumentKind::Segment));
        assert_eq!(DocumentKind::named("policy"), Some(DocumentKind::Policy));
        assert_eq!(DocumentKind::named("nodes"), Some(DocumentKind::Node));
        assert_eq!(DocumentKind::named("rule"), None);
        assert_eq!(
            DocumentKind::of_document("Policy"),
            Some(DocumentKind::Policy)
        );
        assert_eq!(DocumentKind::of_document("policy"), None);
    }
}
