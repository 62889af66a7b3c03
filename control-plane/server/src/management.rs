//! The management API as operators call it: each call is answered by the
//! replica ([`crate::server`], [`crate::flows`]) and recorded in the
//! audit trail ([`crate::audit`]): who asked, what, about what, from
//! where, and whether it was done, refused or failed.

use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response, Status};
use wardline_audit::Outcome;
use wardline_proto::v1::{self, management_server::Management};
use wardline_roles::Verb;

use crate::audit::Caller;
use crate::flows::FlowStream;
use crate::server::ControlPlane;

impl ControlPlane {
    /// Records the call `action` by `caller` about `target`: done (with
    /// `done`'s account of the answer), refused or failed.
    fn audited<R>(
        &self,
        caller: &Caller,
        action: &str,
        target: String,
        out: &Result<R, Status>,
        done: impl FnOnce(&R) -> String,
    ) {
        let (outcome, detail) = match out {
            Ok(r) => (Outcome::Done, done(r)),
            Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                (Outcome::Refused, s.message().to_owned())
            }
            Err(s) => (Outcome::Failed, s.message().to_owned()),
        };
        self.audit().record(
            caller,
            action,
            target,
            outcome,
            detail,
            self.revision_in_force(),
        );
    }

    /// The audit trail as stored: auditors and admins.
    async fn audit_trail_call(
        &self,
        req: Request<v1::AuditRequest>,
    ) -> Result<Response<v1::AuditResponse>, Status> {
        self.allowed(&req, Verb::ReadAudit)?;
        let (limit, after) = (req.get_ref().limit as usize, req.get_ref().after_seq);
        let (mut records, head) =
            crate::audit::read(self.store().as_ref(), if limit > 0 { 0 } else { after })
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut more = false;
        if limit > 0 {
            if records.len() > limit {
                records.drain(..records.len() - limit);
            }
        } else {
            more = records.len() > AUDIT_PAGE;
            records.truncate(AUDIT_PAGE);
        }
        Ok(Response::new(v1::AuditResponse {
            more,
            records: records
                .into_iter()
                .map(|r| String::from_utf8_lossy(&r).into_owned())
                .collect(),
            head_seq: head.seq,
            head_sha256: head.sha256,
            lost: self.audit().lost(),
        }))
    }
}

/// Records one answer of the whole trail holds, at most: each carries its
/// sealing certificate, about 1.7 KB, so a page stays well within a
/// client's 4 MiB message.
const AUDIT_PAGE: usize = 1_000;

fn nothing<R>(_: &R) -> String {
    String::new()
}

/// A policy source, as a record names it: its size and hash.
fn source(text: &str) -> String {
    format!(
        "{} bytes, sha256 {}",
        text.len(),
        hex::encode(Sha256::digest(text.as_bytes()))
    )
}

/// A flow filter, as a record names it: its fields that are set.
fn filter(f: &v1::ObserveRequest) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (k, v) in [
        ("since", &f.since),
        ("until", &f.until),
        ("node", &f.node),
        ("from", &f.from),
        ("to", &f.to),
        ("protocol", &f.protocol),
        ("verdict", &f.verdict),
        ("reason", &f.reason),
        ("policy", &f.policy),
    ] {
        if !v.is_empty() {
            parts.push(format!("{k}={v}"));
        }
    }
    if f.port != 0 {
        parts.push(format!("port={}", f.port));
    }
    if f.last != 0 {
        parts.push(format!("last={}", f.last));
    }
    if f.follow {
        parts.push("follow".to_owned());
    }
    parts.join(" ")
}

#[tonic::async_trait]
impl Management for ControlPlane {
    type ObserveStream = FlowStream;

    #[tracing::instrument(skip_all)]
    async fn observe(
        &self,
        req: Request<v1::ObserveRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        let (caller, target) = (Caller::of(&req), filter(req.get_ref()));
        let out = self.observe_call(req).await;
        self.audited(&caller, "observe", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn flow_matrix(
        &self,
        req: Request<v1::ObserveRequest>,
    ) -> Result<Response<v1::FlowMatrixResponse>, Status> {
        let (caller, target) = (Caller::of(&req), filter(req.get_ref()));
        let out = self.flow_matrix_call(req).await;
        self.audited(&caller, "flow-matrix", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn top_flows(
        &self,
        req: Request<v1::TopRequest>,
    ) -> Result<Response<v1::TopResponse>, Status> {
        let r = req.get_ref();
        let target = format!(
            "by={} {}",
            r.by,
            r.filter.as_ref().map(filter).unwrap_or_default()
        );
        let caller = Caller::of(&req);
        let out = self.top_flows_call(req).await;
        self.audited(&caller, "top-flows", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn inventory(
        &self,
        req: Request<v1::InventoryRequest>,
    ) -> Result<Response<v1::InventoryResponse>, Status> {
        let caller = Caller::of(&req);
        let target = format!("{:?}", req.get_ref());
        let out = self.inventory_call(req).await;
        self.audited(&caller, "inventory", target, &out, |r| {
            format!("{} devices", r.get_ref().devices.len())
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn validate(
        &self,
        req: Request<v1::ValidateRequest>,
    ) -> Result<Response<v1::ValidateResponse>, Status> {
        let (caller, target) = (Caller::of(&req), source(&req.get_ref().source));
        let out = self.validate_call(req).await;
        self.audited(&caller, "validate", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn apply(
        &self,
        req: Request<v1::ApplyRequest>,
    ) -> Result<Response<v1::ApplyResponse>, Status> {
        let r = req.get_ref();
        let target = format!(
            "{}{}{}",
            source(&r.source),
            if r.prune { ", --prune" } else { "" },
            if r.message.is_empty() {
                String::new()
            } else {
                format!(": {}", r.message)
            }
        );
        let caller = Caller::of(&req);
        let out = self.apply_call(req).await;
        self.audited(&caller, "apply", target, &out, |r| {
            let r = r.get_ref();
            if r.unchanged {
                format!("unchanged, revision {}", r.revision)
            } else {
                format!("revision {}, {} change(s)", r.revision, r.changes.len())
            }
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn diff(
        &self,
        req: Request<v1::DiffRequest>,
    ) -> Result<Response<v1::DiffResponse>, Status> {
        let (caller, target) = (Caller::of(&req), source(&req.get_ref().source));
        let out = self.diff_call(req).await;
        self.audited(&caller, "diff", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn get(&self, req: Request<v1::GetRequest>) -> Result<Response<v1::GetResponse>, Status> {
        let r = req.get_ref();
        let target = format!("{}/{} revision {}", r.kind, r.name, r.revision);
        let caller = Caller::of(&req);
        let out = self.get_call(req).await;
        self.audited(&caller, "get", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn delete(
        &self,
        req: Request<v1::DeleteRequest>,
    ) -> Result<Response<v1::DeleteResponse>, Status> {
        let r = req.get_ref();
        let target = format!("{}/{}: {}", r.kind, r.name, r.message);
        let caller = Caller::of(&req);
        let out = self.delete_call(req).await;
        self.audited(&caller, "delete", target, &out, |r| {
            format!("revision {}", r.get_ref().revision)
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn revoke(
        &self,
        req: Request<v1::RevokeRequest>,
    ) -> Result<Response<v1::RevokeResponse>, Status> {
        let r = req.get_ref();
        let target = if r.serial.is_empty() {
            format!("{}/{}: {}", r.role, r.name, r.reason)
        } else {
            format!("serial {}: {}", r.serial, r.reason)
        };
        let caller = Caller::of(&req);
        let out = self.revoke_call(req).await;
        self.audited(&caller, "revoke", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn unblock(
        &self,
        req: Request<v1::UnblockRequest>,
    ) -> Result<Response<v1::UnblockResponse>, Status> {
        let (caller, target) = (Caller::of(&req), req.get_ref().node.clone());
        let out = self.unblock_call(req).await;
        self.audited(&caller, "unblock", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn history(
        &self,
        req: Request<v1::HistoryRequest>,
    ) -> Result<Response<v1::HistoryResponse>, Status> {
        let caller = Caller::of(&req);
        let target = format!("limit {}", req.get_ref().limit);
        let out = self.history_call(req).await;
        self.audited(&caller, "history", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn verify_history(
        &self,
        req: Request<v1::VerifyHistoryRequest>,
    ) -> Result<Response<v1::VerifyHistoryResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.verify_history_call(req).await;
        self.audited(&caller, "verify-history", String::new(), &out, |r| {
            format!("{} revisions verified", r.get_ref().revisions)
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn rollback(
        &self,
        req: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::RollbackResponse>, Status> {
        let r = req.get_ref();
        let target = format!("to revision {}: {}", r.to_revision, r.message);
        let caller = Caller::of(&req);
        let out = self.rollback_call(req).await;
        self.audited(&caller, "rollback", target, &out, |r| {
            format!("revision {}", r.get_ref().revision)
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.status_call(req).await;
        self.audited(&caller, "status", String::new(), &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn dashboard_login(
        &self,
        req: Request<v1::DashboardLoginRequest>,
    ) -> Result<Response<v1::DashboardLoginResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.dashboard_login_call(req).await;
        self.audited(
            &caller,
            "dashboard-sign-in-link",
            String::new(),
            &out,
            nothing,
        );
        out
    }

    #[tracing::instrument(skip_all)]
    async fn audit_trail(
        &self,
        req: Request<v1::AuditRequest>,
    ) -> Result<Response<v1::AuditResponse>, Status> {
        let caller = Caller::of(&req);
        let target = format!("limit {}", req.get_ref().limit);
        let out = self.audit_trail_call(req).await;
        self.audited(&caller, "audit-trail", target, &out, |r| {
            format!("{} records", r.get_ref().records.len())
        });
        out
    }
}
