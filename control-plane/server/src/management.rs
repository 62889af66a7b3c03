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

    #[tracing::instrument(skip_all)]
    async fn mfa_enroll(
        &self,
        req: Request<v1::MfaEnrollRequest>,
    ) -> Result<Response<v1::MfaEnrollResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.mfa_enroll_call(req).await;
        // The secret is never recorded.
        self.audited(&caller, "mfa-enroll", String::new(), &out, |r| {
            if r.get_ref().replaces {
                "a new secret shown, to replace the one in force".to_owned()
            } else {
                "a secret shown, in force once confirmed".to_owned()
            }
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn mfa_confirm(
        &self,
        req: Request<v1::MfaConfirmRequest>,
    ) -> Result<Response<v1::MfaConfirmResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.mfa_confirm_call(req).await;
        self.audited(&caller, "mfa-confirm", String::new(), &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn login(
        &self,
        req: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::LoginResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.login_call(req).await;
        self.audited(&caller, "login", String::new(), &out, |r| {
            format!("session until {}", r.get_ref().expires)
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        req: Request<v1::LogoutRequest>,
    ) -> Result<Response<v1::LogoutResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.logout_call(req).await;
        self.audited(&caller, "logout", String::new(), &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn mfa_reset(
        &self,
        req: Request<v1::MfaResetRequest>,
    ) -> Result<Response<v1::MfaResetResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.get_ref();
        let target = format!("operator {} ({})", r.operator, r.reason);
        let out = self.mfa_reset_call(req).await;
        self.audited(&caller, "mfa-reset", target, &out, |r| {
            format!("{} sessions ended", r.get_ref().sessions)
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn propose(
        &self,
        req: Request<v1::ProposeRequest>,
    ) -> Result<Response<v1::ChangeRequest>, Status> {
        let caller = Caller::of(&req);
        let r = req.get_ref();
        let target = if r.source.is_empty() {
            format!("delete {}/{}", r.delete_kind, r.delete_name)
        } else {
            format!(
                "{}{}",
                source(&r.source),
                if r.prune { ", prune" } else { "" }
            )
        };
        let out = self.propose_call(req).await;
        self.audited(&caller, "propose", target, &out, |r| {
            let c = r.get_ref();
            format!(
                "change request {} on revision {}, sha256 {}; needs approval: {}",
                c.id,
                c.base_revision,
                c.sha256,
                if c.needs_approval.is_empty() {
                    "no".to_owned()
                } else {
                    c.needs_approval.join("; ")
                }
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn list_changes(
        &self,
        req: Request<v1::ListChangesRequest>,
    ) -> Result<Response<v1::ListChangesResponse>, Status> {
        let caller = Caller::of(&req);
        let target = req.get_ref().id.clone();
        let out = self.list_changes_call(req).await;
        self.audited(&caller, "list-changes", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn approve(
        &self,
        req: Request<v1::DecideRequest>,
    ) -> Result<Response<v1::ApproveResponse>, Status> {
        let caller = Caller::of(&req);
        let target = format!("change request {}", req.get_ref().id);
        let out = self.approve_call(req).await;
        self.audited(&caller, "approve", target, &out, |r| {
            let r = r.get_ref();
            format!(
                "applied as revision {}, proposed by {}",
                r.revision,
                r.change.as_ref().map(|c| c.author.as_str()).unwrap_or("")
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn reject(
        &self,
        req: Request<v1::DecideRequest>,
    ) -> Result<Response<v1::ChangeRequest>, Status> {
        let caller = Caller::of(&req);
        let target = format!("change request {}", req.get_ref().id);
        let out = self.reject_call(req).await;
        self.audited(&caller, "reject", target, &out, |r| {
            format!(
                "proposed by {}: {}",
                r.get_ref().author,
                r.get_ref().decision_note
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn break_glass(
        &self,
        req: Request<v1::BreakGlassRequest>,
    ) -> Result<Response<v1::BreakGlassGrant>, Status> {
        let caller = Caller::of(&req);
        let r = req.get_ref();
        let target = format!(
            "from {} to {} ports {} for {} s: {}",
            r.from.join(","),
            r.to.join(","),
            if r.ports.is_empty() {
                "all".to_owned()
            } else {
                r.ports.join(",")
            },
            r.seconds,
            r.reason
        );
        let out = self.break_glass_call(req).await;
        self.audited(&caller, "break-glass", target, &out, |r| {
            let g = r.get_ref();
            format!(
                "grant {} as policy {} in revision {}, until {}; review due {}",
                g.id, g.policy, g.revision, g.expires, g.review_due
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn review_break_glass(
        &self,
        req: Request<v1::ReviewRequest>,
    ) -> Result<Response<v1::BreakGlassGrant>, Status> {
        let caller = Caller::of(&req);
        let target = format!("grant {}", req.get_ref().id);
        let out = self.review_break_glass_call(req).await;
        self.audited(&caller, "break-glass-review", target, &out, |r| {
            format!(
                "opened by {}: {}",
                r.get_ref().opened_by,
                r.get_ref().review_note
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn list_break_glass(
        &self,
        req: Request<v1::ListBreakGlassRequest>,
    ) -> Result<Response<v1::ListBreakGlassResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.list_break_glass_call(req).await;
        self.audited(&caller, "list-break-glass", String::new(), &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn attested(
        &self,
        req: Request<v1::AttestedRequest>,
    ) -> Result<Response<v1::AttestedResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.get_ref();
        let target = format!(
            "node {} at {}",
            r.node,
            if r.at.is_empty() { "now" } else { &r.at }
        );
        let out = self.attested_call(req).await.map(Response::new);
        self.audited(&caller, "attested", target, &out, |r| {
            format!("{} attestations kept", r.get_ref().kept)
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn quarantine(
        &self,
        req: Request<v1::QuarantineRequest>,
    ) -> Result<Response<v1::QuarantineRecord>, Status> {
        let caller = Caller::of(&req);
        let r = req.get_ref();
        let target = format!(
            "{} keeping {}: {}",
            r.target,
            if r.keep.is_empty() {
                "nothing"
            } else {
                &r.keep
            },
            r.reason
        );
        let out = self.quarantine_call(req).await;
        self.audited(&caller, "quarantine", target, &out, |r| {
            let q = r.get_ref();
            format!(
                "{} as segment {} in revision {}: addresses {}, kept policies {}",
                q.id,
                q.segment,
                q.revision,
                q.addresses.join(","),
                if q.keep_policies.is_empty() {
                    "none".to_owned()
                } else {
                    q.keep_policies.join(",")
                }
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn release(
        &self,
        req: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::QuarantineRecord>, Status> {
        let caller = Caller::of(&req);
        let target = format!("{}: {}", req.get_ref().id, req.get_ref().reason);
        let out = self.release_call(req).await;
        self.audited(&caller, "release", target, &out, |r| {
            let q = r.get_ref();
            format!(
                "{} of {} in revision {}",
                q.id, q.target, q.released_revision
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn list_quarantines(
        &self,
        req: Request<v1::ListQuarantinesRequest>,
    ) -> Result<Response<v1::ListQuarantinesResponse>, Status> {
        let caller = Caller::of(&req);
        let out = self.list_quarantines_call(req).await;
        self.audited(&caller, "list-quarantines", String::new(), &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn vendor_grant(
        &self,
        req: Request<v1::VendorGrantRequest>,
    ) -> Result<Response<v1::VendorAccess>, Status> {
        let caller = Caller::of(&req);
        let r = req.get_ref();
        let target = format!(
            "{} to {} ports {} from {} until {}, ticket {}",
            r.vendor,
            r.to,
            r.ports.join(","),
            if r.from.is_empty() { "now" } else { &r.from },
            r.until,
            r.ticket
        );
        let out = self.vendor_grant_call(req).await;
        self.audited(&caller, "vendor-grant", target, &out, |r| {
            let g = r.get_ref();
            format!(
                "{} as policy {} in revision {}, {} to {}",
                g.id, g.policy, g.revision, g.from, g.until
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn list_vendor_grants(
        &self,
        req: Request<v1::ListVendorGrantsRequest>,
    ) -> Result<Response<v1::ListVendorGrantsResponse>, Status> {
        let caller = Caller::of(&req);
        let target = req.get_ref().id.clone();
        let out = self.list_vendor_grants_call(req).await;
        self.audited(&caller, "list-vendor-grants", target, &out, nothing);
        out
    }

    #[tracing::instrument(skip_all)]
    async fn promote(
        &self,
        req: Request<v1::PromoteRequest>,
    ) -> Result<Response<v1::PromoteResponse>, Status> {
        let caller = Caller::of(&req);
        let r = req.get_ref();
        let target = format!(
            "{} over {} days{}",
            r.segment,
            if r.days == 0 { 7 } else { r.days },
            if r.r#override {
                format!(", override: {}", r.reason)
            } else {
                String::new()
            }
        );
        let out = self.promote_call(req).await;
        self.audited(&caller, "promote", target, &out, |r| {
            let p = r.get_ref();
            match (&p.change, p.revision) {
                (Some(c), _) => format!(
                    "{} critical flows in the way: change request {} filed for an approver",
                    p.critical.len(),
                    c.id
                ),
                (None, 0) => format!(
                    "refused: {} critical flows would be dropped",
                    p.critical.len()
                ),
                (None, n) => format!(
                    "enforcing from revision {n}, {} connections judged",
                    p.judged
                ),
            }
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn simulate(
        &self,
        req: Request<v1::SimulateRequest>,
    ) -> Result<Response<v1::SimulateResponse>, Status> {
        let caller = Caller::of(&req);
        let target = source(&req.get_ref().source);
        let out = self.simulate_call(req).await;
        self.audited(&caller, "simulate", target, &out, |r| {
            format!(
                "{} connections judged, {} verdict changes",
                r.get_ref().judged,
                r.get_ref().changes.len()
            )
        });
        out
    }

    #[tracing::instrument(skip_all)]
    async fn recommend(
        &self,
        req: Request<v1::RecommendRequest>,
    ) -> Result<Response<v1::RecommendResponse>, Status> {
        let caller = Caller::of(&req);
        let target = format!("{} since {}", req.get_ref().segment, req.get_ref().since);
        let out = self.recommend_call(req).await;
        self.audited(&caller, "recommend", target, &out, |r| {
            format!(
                "{} policies from {} connections",
                r.get_ref().policies,
                r.get_ref().flows
            )
        });
        out
    }
}
