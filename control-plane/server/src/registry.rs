//! Policy revisions, nodes and agent records, kept in a [`Store`].
//!
//! Every accepted change is a new revision holding the whole set of
//! documents, who made the change, when, why and what changed: history for
//! auditors, and rollback to any earlier revision. A change is written in
//! one transaction that compares the current revision's key: a stale writer
//! is refused, never merged.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_policy::compile::NodeInfo;
use wardline_policy::{PolicyErrors, PolicySet};

use wardline_store::{Compare, Op, Store, StoreError};

pub const KEY_PREFIX: &str = "/wardline/";
pub const CURRENT_KEY: &str = "/wardline/policy/current";
pub const REVISIONS_PREFIX: &str = "/wardline/policy/revisions/";
pub const NODES_PREFIX: &str = "/wardline/nodes/";
pub const AGENTS_PREFIX: &str = "/wardline/agents/";

/// The largest policy source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 16 << 20;

fn revision_key(n: u64) -> String {
    format!("{REVISIONS_PREFIX}{n:020}")
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StoredDocument {
    pub kind: String,
    pub name: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub kind: String,
    pub name: String,
    /// created | updated | deleted
    pub action: String,
}

/// One revision of the policy: the whole set and how it came to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    pub revision: u64,
    pub author: String,
    pub time: String,
    /// apply | delete | rollback
    pub action: String,
    pub message: String,
    pub changes: Vec<ChangeRecord>,
    /// Segments first, then policies, each by name.
    pub documents: Vec<StoredDocument>,
    pub sha256: String,
}

impl RevisionRecord {
    /// Revision 0: nothing applied yet.
    pub fn empty() -> RevisionRecord {
        RevisionRecord {
            revision: 0,
            author: String::new(),
            time: String::new(),
            action: String::new(),
            message: String::new(),
            changes: Vec::new(),
            documents: Vec::new(),
            sha256: String::new(),
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

    pub fn count(&self, kind: &str) -> usize {
        self.documents.iter().filter(|d| d.kind == kind).count()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn kind_order(kind: &str) -> u8 {
    match kind {
        "Segment" => 0,
        "Policy" => 1,
        _ => 2,
    }
}

fn source_of(documents: &[StoredDocument]) -> String {
    documents
        .iter()
        .map(|d| format!("---\n{}", d.text))
        .collect()
}

fn sorted(mut docs: Vec<StoredDocument>) -> Vec<StoredDocument> {
    docs.sort_by(|a, b| (kind_order(&a.kind), &a.name).cmp(&(kind_order(&b.kind), &b.name)));
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

/// What the control plane last heard from an agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    pub node: String,
    pub acked_revision: u64,
    pub acked_sha256: String,
    pub generation: u32,
    pub last_heartbeat: String,
    pub error: String,
    pub replica: String,
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
    #[error("a stored record at {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
}

/// The outcome of a planned change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub documents: Vec<StoredDocument>,
    pub changes: Vec<ChangeRecord>,
}

/// Merges the documents of `source` into `current` by (kind, name): new ones
/// are created, same-named ones replaced. Nothing is validated here.
pub fn plan_apply(current: &[StoredDocument], source: &str) -> Result<Plan, RegistryError> {
    plan(current, source, false)
}

/// As [`plan_apply`]; with `prune`, stored documents the source does not
/// have are deleted: the source becomes the whole policy.
pub fn plan(current: &[StoredDocument], source: &str, prune: bool) -> Result<Plan, RegistryError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(RegistryError::TooLarge {
            size: source.len(),
            limit: MAX_SOURCE_BYTES,
        });
    }
    let mut docs: BTreeMap<(String, String), StoredDocument> = current
        .iter()
        .map(|d| ((d.kind.clone(), d.name.clone()), d.clone()))
        .collect();
    let mut changes = Vec::new();
    for d in wardline_policy::documents(source) {
        let (Some(kind), Some(name)) = (d.kind, d.name) else {
            // Validation of the merged source names the problem.
            continue;
        };
        let doc = StoredDocument {
            kind: kind.clone(),
            name: name.clone(),
            text: d.text,
        };
        let action = match docs.insert((kind.clone(), name.clone()), doc.clone()) {
            None => "created",
            Some(old) if old.text == doc.text => continue,
            Some(_) => "updated",
        };
        changes.push(ChangeRecord {
            kind,
            name,
            action: action.into(),
        });
    }
    if prune {
        let named: Vec<(String, String)> = wardline_policy::documents(source)
            .into_iter()
            .filter_map(|d| Some((d.kind?, d.name?)))
            .collect();
        docs.retain(|key, _| {
            let keep = named.contains(key);
            if !keep {
                changes.push(ChangeRecord {
                    kind: key.0.clone(),
                    name: key.1.clone(),
                    action: "deleted".into(),
                });
            }
            keep
        });
    }
    Ok(Plan {
        documents: sorted(docs.into_values().collect()),
        changes,
    })
}

/// Validates the documents an apply would produce. Errors name the
/// documents of `source` by their position there: the applied documents
/// come first in the checked source, stored ones after them.
pub fn validate_plan(
    source: &str,
    plan: &Plan,
    nodes: &[NodeInfo],
) -> Result<PolicySet, RegistryError> {
    let applied = wardline_policy::documents(source);
    let keys: Vec<(Option<String>, Option<String>)> = applied
        .iter()
        .map(|d| (d.kind.clone(), d.name.clone()))
        .collect();
    let mut checked: String = applied.iter().map(|d| format!("---\n{}", d.text)).collect();
    for d in &plan.documents {
        if !keys.contains(&(Some(d.kind.clone()), Some(d.name.clone()))) {
            checked.push_str(&format!("---\n{}", d.text));
        }
    }
    let set = wardline_policy::parse(&checked).map_err(RegistryError::Invalid)?;
    wardline_policy::Dataplane::compile(
        &set,
        &wardline_policy::CompileOptions {
            now: OffsetDateTime::now_utc(),
            nodes: nodes.to_vec(),
        },
    )?;
    Ok(set)
}

#[derive(Clone)]
pub struct Registry {
    store: Arc<dyn Store>,
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
    pub fn new(store: Arc<dyn Store>) -> Registry {
        Registry { store }
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
        action: &str,
        author: &str,
        message: &str,
    ) -> Result<RevisionRecord, RegistryError> {
        if let Some(expected) = expected
            && expected != current.revision
        {
            return Err(RegistryError::Conflict {
                expected,
                current: current.revision,
            });
        }
        let record = RevisionRecord {
            revision: current.revision + 1,
            author: author.to_owned(),
            time: now(),
            action: action.to_owned(),
            message: message.to_owned(),
            changes,
            documents,
            sha256: String::new(),
        }
        .finish();
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
            author,
            action,
            changes = record.changes.len(),
            "policy revision written"
        );
        Ok(record)
    }

    /// Applies every document of `source`, all or nothing. `Ok(None)`: the
    /// documents are already current, nothing written.
    pub async fn apply(
        &self,
        source: &str,
        prune: bool,
        expected: Option<u64>,
        author: &str,
        message: &str,
    ) -> Result<(Option<RevisionRecord>, Plan), RegistryError> {
        let (current, current_mod) = self.current().await?;
        let plan = plan(&current.documents, source, prune)?;
        let nodes = self.node_infos().await?;
        validate_plan(source, &plan, &nodes)?;
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
        let record = self
            .commit(
                &current,
                current_mod,
                expected,
                plan.documents.clone(),
                plan.changes.clone(),
                "apply",
                author,
                message,
            )
            .await?;
        Ok((Some(record), plan))
    }

    pub async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<u64>,
        author: &str,
        message: &str,
    ) -> Result<RevisionRecord, RegistryError> {
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
                kind: kind.to_owned(),
                name: name.to_owned(),
                revision: current.revision,
            });
        }
        // What remains must still stand (a policy may name this segment).
        let source = source_of(&documents);
        wardline_policy::parse(&source).map_err(RegistryError::Invalid)?;
        let changes = vec![ChangeRecord {
            kind: kind.to_owned(),
            name: name.to_owned(),
            action: "deleted".into(),
        }];
        self.commit(
            &current,
            current_mod,
            expected,
            documents,
            changes,
            "delete",
            author,
            message,
        )
        .await
    }

    pub async fn rollback(
        &self,
        to: u64,
        expected: Option<u64>,
        author: &str,
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
            "rollback",
            author,
            &message,
        )
        .await
    }

    pub async fn register(&self, node: &NodeRecord) -> Result<(), RegistryError> {
        let key = format!("{NODES_PREFIX}{}", node.name);
        // Only a real change is written: a reconnect with the same
        // addresses and labels recompiles nothing.
        if let Some(kv) = self.store.get(&key).await? {
            let old: NodeRecord = decode(&key, &kv.value)?;
            if old.labels == node.labels && old.addresses == node.addresses {
                return Ok(());
            }
        }
        self.store
            .txn(
                vec![],
                vec![Op::Put {
                    key,
                    value: encode(node),
                }],
            )
            .await?;
        Ok(())
    }

    pub async fn remove_node(&self, name: &str) -> Result<bool, RegistryError> {
        let key = format!("{NODES_PREFIX}{name}");
        if self.store.get(&key).await?.is_none() {
            return Ok(false);
        }
        self.store
            .txn(
                vec![],
                vec![
                    Op::Delete { key },
                    Op::Delete {
                        key: format!("{AGENTS_PREFIX}{name}"),
                    },
                ],
            )
            .await?;
        Ok(true)
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
    let index = |docs: &[StoredDocument]| -> BTreeMap<(String, String), String> {
        docs.iter()
            .map(|d| ((d.kind.clone(), d.name.clone()), d.text.clone()))
            .collect()
    };
    let (a, b) = (index(from), index(to));
    let mut out = Vec::new();
    for ((kind, name), text) in &b {
        let action = match a.get(&(kind.clone(), name.clone())) {
            None => "created",
            Some(old) if old == text => continue,
            Some(_) => "updated",
        };
        out.push(ChangeRecord {
            kind: kind.clone(),
            name: name.clone(),
            action: action.into(),
        });
    }
    for (kind, name) in a.keys() {
        if !b.contains_key(&(kind.clone(), name.clone())) {
            out.push(ChangeRecord {
                kind: kind.clone(),
                name: name.clone(),
                action: "deleted".into(),
            });
        }
    }
    out
}
