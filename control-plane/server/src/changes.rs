//! Two-person changes (`docs/governance.md`): a change filed by one
//! operator (`wardctl propose`), shown with its diff and why it needs a
//! second person, and approved or rejected by another with the approver
//! role. An approval applies exactly what was proposed, on the revision it
//! was proposed against, with the proposer as author and the approver kept
//! in the revision record (so the history chain covers both); a request
//! whose revision has moved on is stale and applies nothing.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use wardline_proto::v1;
use wardline_roles::Verb;

use crate::registry::{
    ApprovalRecord, Author, ChangeRecord, Plan, RevisionAction, Sanction, StoredDocument,
};
use crate::server::{
    ControlPlane, change_author, changes, document_kind, fingerprint, or_logged, plan_diff,
    registry_status, store_unavailable,
};

/// Each request: `/wardline/changes/<id>`.
pub const CHANGES_PREFIX: &str = "/wardline/changes/";
/// Requests kept at most; the oldest decided ones go first.
const MAX_REQUESTS: usize = 1_000;

/// A change request as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: String,
    pub author: String,
    pub author_fingerprint: String,
    pub author_peer: String,
    pub created: String,
    pub base_revision: u64,
    pub message: String,
    pub prune: bool,
    /// Apply or delete.
    pub action: RevisionAction,
    pub documents: Vec<StoredDocument>,
    pub changes: Vec<ChangeRecord>,
    pub diff: String,
    pub needs_approval: Vec<String>,
    /// open | approved | rejected
    pub state: String,
    #[serde(default)]
    pub decided_by: String,
    #[serde(default)]
    pub decided_fingerprint: String,
    #[serde(default)]
    pub decided_at: String,
    #[serde(default)]
    pub decision_note: String,
    #[serde(default)]
    pub applied_revision: u64,
    pub sha256: String,
    /// Observed connections the change would stop, when it was proposed.
    #[serde(default)]
    pub would_drop: Vec<DropRecord>,
}

/// Observed connections of one kind a change would stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropRecord {
    pub src_segment: String,
    pub dst_segment: String,
    pub protocol: u8,
    pub port: u16,
    pub connections: u64,
    pub last_seen: String,
}

/// How far back a proposal looks for the flows it would stop.
const OBSERVED: &str = "7d";

impl RequestRecord {
    /// The hash of what an approval applies: who proposed it, on which
    /// revision, why, and the documents.
    fn content_hash(&self) -> String {
        let content = serde_json::json!({
            "author": self.author,
            "base_revision": self.base_revision,
            "message": self.message,
            "prune": self.prune,
            "action": self.action.as_str(),
            "documents": self.documents,
            "changes": self.changes,
            "would_drop": self.would_drop,
        });
        hex::encode(Sha256::digest(content.to_string().as_bytes()))
    }

    fn wire(&self, current: u64) -> v1::ChangeRequest {
        let state = if self.state == "open" && current != self.base_revision {
            "stale"
        } else {
            self.state.as_str()
        };
        v1::ChangeRequest {
            id: self.id.clone(),
            author: self.author.clone(),
            created: self.created.clone(),
            base_revision: self.base_revision,
            message: self.message.clone(),
            changes: changes(&self.changes),
            diff: self.diff.clone(),
            needs_approval: self.needs_approval.clone(),
            state: state.to_owned(),
            decided_by: self.decided_by.clone(),
            decided_at: self.decided_at.clone(),
            decision_note: self.decision_note.clone(),
            applied_revision: self.applied_revision,
            sha256: self.sha256.clone(),
            prune: self.prune,
            would_drop: self
                .would_drop
                .iter()
                .map(|d| v1::WouldDrop {
                    src_segment: d.src_segment.clone(),
                    dst_segment: d.dst_segment.clone(),
                    protocol: wardline_proto::convert::protocol_name(u32::from(d.protocol)),
                    port: u32::from(d.port),
                    connections: d.connections,
                    last_seen: d.last_seen.clone(),
                })
                .collect(),
        }
    }
}

fn now() -> String {
    wardline_proto::convert::format_time(OffsetDateTime::now_utc())
}

impl ControlPlane {
    /// Observed connections of the last [`OBSERVED`] that `current` lets
    /// through and `documents` would stop; none without a flow store.
    async fn would_drop(
        &self,
        current: &[StoredDocument],
        documents: &[StoredDocument],
    ) -> Result<Vec<DropRecord>, Status> {
        if self.flows().is_none() {
            return Ok(Vec::new());
        }
        let read = |docs: &[StoredDocument]| {
            wardline_policy::parse(&crate::registry::source_of(docs))
                .map_err(|e| Status::internal(format!("reading the policy: {e}")))
        };
        let (before, set) = (read(current)?, read(documents)?);
        let now = OffsetDateTime::now_utc();
        let observed = self
            .observed_flows(OBSERVED, &["allowed", "audited"])
            .await?;
        Ok(
            wardline_simulation::would_drop(&before, &set, now, &observed)
                .into_iter()
                .map(|d| DropRecord {
                    src_segment: d.src_segment,
                    dst_segment: d.dst_segment,
                    protocol: d.protocol,
                    port: d.port,
                    connections: d.connections,
                    last_seen: d.last_seen,
                })
                .collect(),
        )
    }

    async fn request(&self, id: &str) -> Result<(RequestRecord, u64), Status> {
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(Status::invalid_argument(format!(
                "{id:?} is no change request id (`wardctl changes` lists them)"
            )));
        }
        let key = format!("{CHANGES_PREFIX}{id}");
        let kv = self
            .store()
            .get(&key)
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| Status::not_found(format!("no change request {id:?}")))?;
        let record: RequestRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| Status::internal(format!("{key}: unreadable: {e}")))?;
        if record.content_hash() != record.sha256 || record.id != id {
            tracing::error!(%key, "a stored change request was edited: its hash no longer matches");
            return Err(Status::data_loss(format!(
                "change request {id:?} was altered in the store: its content no longer matches its hash; it cannot be decided"
            )));
        }
        Ok((record, kv.mod_revision))
    }

    /// Writes `record` back if it is still at `revision`.
    async fn put_request(&self, record: &RequestRecord, revision: u64) -> Result<(), Status> {
        let key = format!("{CHANGES_PREFIX}{}", record.id);
        if self.put_if_unchanged(&key, record, revision).await? {
            Ok(())
        } else {
            Err(Status::aborted(format!(
                "change request {:?} was decided by someone else meanwhile",
                record.id
            )))
        }
    }

    async fn requests(&self) -> Result<Vec<(RequestRecord, u64)>, Status> {
        let mut out: Vec<(RequestRecord, u64)> =
            self.stored_json(CHANGES_PREFIX, "change request").await?;
        out.sort_by(|a, b| a.0.created.cmp(&b.0.created).then(a.0.id.cmp(&b.0.id)));
        Ok(out)
    }

    /// Open requests, as status shows them.
    pub(crate) async fn open_changes(&self, current: u64) -> Vec<v1::ChangeRequest> {
        or_logged(self.requests().await, "change requests")
            .into_iter()
            .filter(|(r, _)| r.state == "open")
            .map(|(r, _)| r.wire(current))
            .collect()
    }

    pub(crate) async fn propose_call(
        &self,
        req: Request<v1::ProposeRequest>,
    ) -> Result<Response<v1::ChangeRequest>, Status> {
        let id = self.may_change(&req)?;
        self.second_factor(&req, &id).await?;
        let who = change_author(&req, &id);
        let r = req.into_inner();
        crate::limits::message("message", &r.message)?;
        let (current, plan, action, prune) = match (r.source.is_empty(), r.delete_kind.is_empty()) {
            (false, true) => {
                let (current, _, plan, _) = self
                    .registry()
                    .plan_source(&r.source, r.prune)
                    .await
                    .map_err(registry_status)?;
                (current, plan, RevisionAction::Apply, r.prune)
            }
            (true, false) => {
                if r.prune {
                    return Err(Status::invalid_argument(
                        "--prune goes with a source, not a deletion",
                    ));
                }
                let kind = document_kind(&r.delete_kind)?;
                let (current, _, plan) = self
                    .registry()
                    .plan_delete(kind, &r.delete_name)
                    .await
                    .map_err(registry_status)?;
                (current, plan, RevisionAction::Delete, false)
            }
            _ => {
                return Err(Status::invalid_argument(
                    "a proposal is a policy source (-f FILE) or one document to delete (--delete KIND/NAME), one of the two",
                ));
            }
        };
        self.file_request(&who, current, plan, action, prune, r.message, Vec::new())
            .await
            .map(Response::new)
    }

    /// Files `plan` (on `current`) as a change request by `who`, needing
    /// approval for the reasons the change control gives and for `more`.
    #[expect(clippy::too_many_arguments, reason = "a request's every part")]
    pub(crate) async fn file_request(
        &self,
        who: &Author,
        current: crate::registry::RevisionRecord,
        plan: Plan,
        action: RevisionAction,
        prune: bool,
        message: String,
        more: Vec<String>,
    ) -> Result<v1::ChangeRequest, Status> {
        if plan.changes.is_empty() {
            return Err(Status::invalid_argument(format!(
                "nothing would change: revision {} already has these documents",
                current.revision
            )));
        }
        // The proposer's own roles must allow the change: an approval adds
        // a second person, never a role.
        crate::registry::allow_roles(
            &who.operator,
            &current.documents,
            &plan.documents,
            &plan.changes,
        )
        .map_err(registry_status)?;
        let mut needs = crate::registry::needs_approval(
            &current.documents,
            &plan.documents,
            &plan.changes,
            prune,
        )
        .map_err(registry_status)?;
        needs.extend(more);
        let would_drop = self.would_drop(&current.documents, &plan.documents).await?;
        let mut record = RequestRecord {
            id: format!("cr-{}", hex::encode(rand_bytes())),
            author: who.operator.clone(),
            author_fingerprint: who.fingerprint.clone(),
            author_peer: who.peer.clone(),
            created: now(),
            base_revision: current.revision,
            message,
            prune,
            action,
            diff: plan_diff(&current.documents, &plan),
            documents: plan.documents,
            changes: plan.changes,
            needs_approval: needs,
            state: "open".to_owned(),
            decided_by: String::new(),
            decided_fingerprint: String::new(),
            decided_at: String::new(),
            decision_note: String::new(),
            applied_revision: 0,
            sha256: String::new(),
            would_drop,
        };
        record.sha256 = record.content_hash();
        self.forget_old_requests().await?;
        self.put_request(&record, 0).await?;
        tracing::info!(id = %record.id, author = %record.author, base = record.base_revision, "change proposed");
        Ok(record.wire(current.revision))
    }

    /// Keeps the store's requests under [`MAX_REQUESTS`]: the oldest
    /// decided or stale go; open ones are never dropped (refused instead).
    async fn forget_old_requests(&self) -> Result<(), Status> {
        let all = self.requests().await?;
        if all.len() < MAX_REQUESTS {
            return Ok(());
        }
        let current = self.revision_in_force();
        let old = all
            .iter()
            .find(|(r, _)| r.state != "open" || r.base_revision != current);
        match old {
            Some((r, _)) => self
                .store()
                .delete(&format!("{CHANGES_PREFIX}{}", r.id))
                .await
                .map(|_| ())
                .map_err(store_unavailable),
            None => Err(Status::resource_exhausted(format!(
                "{MAX_REQUESTS} change requests are open: decide some first"
            ))),
        }
    }

    pub(crate) async fn list_changes_call(
        &self,
        req: Request<v1::ListChangesRequest>,
    ) -> Result<Response<v1::ListChangesResponse>, Status> {
        self.allowed(&req, Verb::ReadPolicy)?;
        let r = req.get_ref();
        let current = self
            .registry()
            .current()
            .await
            .map_err(registry_status)?
            .0
            .revision;
        let list: Vec<v1::ChangeRequest> = if r.id.is_empty() {
            self.requests()
                .await?
                .into_iter()
                .map(|(c, _)| c.wire(current))
                .filter(|c| r.state.is_empty() || c.state == r.state)
                .collect()
        } else {
            vec![self.request(&r.id).await?.0.wire(current)]
        };
        Ok(Response::new(v1::ListChangesResponse { changes: list }))
    }

    pub(crate) async fn approve_call(
        &self,
        req: Request<v1::DecideRequest>,
    ) -> Result<Response<v1::ApproveResponse>, Status> {
        let id = self.allowed(&req, Verb::Approve)?;
        self.second_factor(&req, &id).await?;
        let r = req.get_ref();
        crate::limits::message("note", &r.note)?;
        let (mut record, revision) = self.request(&r.id).await?;
        if record.state != "open" {
            return Err(Status::failed_precondition(format!(
                "change request {:?} is {} already",
                record.id, record.state
            )));
        }
        if record.author == id.name {
            tracing::warn!(operator = %id.name, request = %record.id, "refused: self-approval");
            return Err(Status::permission_denied(format!(
                "operator {:?} proposed change request {:?} and may not approve it: a second person must",
                id.name, record.id
            )));
        }
        if r.sha256 != record.sha256 {
            return Err(Status::failed_precondition(format!(
                "change request {:?} is not the one shown (sha256 {} given, {} stored): look at it again with `wardctl changes {}`",
                record.id,
                if r.sha256.is_empty() {
                    "none"
                } else {
                    &r.sha256
                },
                record.sha256,
                record.id
            )));
        }
        let (current, _) = self.registry().current().await.map_err(registry_status)?;
        let touched: Vec<wardline_roles::Changed<'_>> = record
            .changes
            .iter()
            .map(|c| wardline_roles::Changed {
                kind: c.kind.as_str(),
                name: &c.name,
            })
            .collect();
        let (before, after) = (current.documents.clone(), record.documents.clone());
        crate::registry::bindings_of(&current.documents)
            .map_err(registry_status)?
            .grants(&id.name)
            .allow_approval(&touched, || {
                let read = |d: &[StoredDocument]| {
                    wardline_policy::parse(&crate::registry::source_of(d))
                        .map_err(|e| e.to_string())
                };
                Ok((read(&before)?, read(&after)?))
            })
            .map_err(|e| crate::server::refused(&e, req.remote_addr()))?;
        let author = Author {
            operator: record.author.clone(),
            name: format!("operator:{}", record.author),
            fingerprint: record.author_fingerprint.clone(),
            peer: record.author_peer.clone(),
        };
        let approval = ApprovalRecord {
            request: record.id.clone(),
            operator: id.name.clone(),
            fingerprint: fingerprint(&req),
            time: now(),
            note: r.note.clone(),
        };
        let plan = Plan {
            documents: record.documents.clone(),
            changes: record.changes.clone(),
        };
        let written = self
            .registry()
            .apply_sanctioned(
                record.base_revision,
                plan,
                record.action,
                record.prune,
                &author,
                &record.message,
                Sanction::Approved(approval.clone()),
            )
            .await
            .map_err(registry_status)?;
        record.state = "approved".to_owned();
        record.decided_by = id.name.clone();
        record.decided_fingerprint = approval.fingerprint;
        record.decided_at = approval.time;
        record.decision_note = r.note.clone();
        record.applied_revision = written.revision;
        if let Err(e) = self.put_request(&record, revision).await {
            tracing::warn!(request = %record.id, "the approved change was applied but its request not updated: {}", e.message());
        }
        tracing::info!(request = %record.id, approver = %id.name, revision = written.revision, "change approved and applied");
        Ok(Response::new(v1::ApproveResponse {
            change: Some(record.wire(written.revision)),
            revision: written.revision,
        }))
    }

    pub(crate) async fn reject_call(
        &self,
        req: Request<v1::DecideRequest>,
    ) -> Result<Response<v1::ChangeRequest>, Status> {
        let id = self.operator(&req)?;
        let r = req.get_ref();
        crate::limits::message("note", &r.note)?;
        let (mut record, revision) = self.request(&r.id).await?;
        // The proposer may withdraw their own; anyone else needs the
        // approver role.
        if record.author != id.name {
            self.allowed(&req, Verb::Approve)?;
        }
        self.second_factor(&req, &id).await?;
        if record.state != "open" {
            return Err(Status::failed_precondition(format!(
                "change request {:?} is {} already",
                record.id, record.state
            )));
        }
        if r.note.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a rejection needs a note (--note): the proposer reads why",
            ));
        }
        record.state = "rejected".to_owned();
        record.decided_by = id.name.clone();
        record.decided_fingerprint = fingerprint(&req);
        record.decided_at = now();
        record.decision_note = r.note.clone();
        self.put_request(&record, revision).await?;
        tracing::info!(request = %record.id, by = %id.name, "change rejected");
        Ok(Response::new(record.wire(self.revision_in_force())))
    }
}

fn rand_bytes() -> [u8; 6] {
    rand::random()
}
