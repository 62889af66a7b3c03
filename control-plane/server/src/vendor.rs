//! Vendor access windows (`docs/clinical-operations.md`): a vendor named
//! by a `Vendor` document (contact, the date its business associate
//! agreement ends, the segment its connections come from) is given access
//! to one segment on named ports from one time until another, against a
//! change ticket.
//!
//! A grant is an allow policy with a window (`validFrom`, `validUntil`),
//! written as a revision of its own: the agents program the window into
//! the kernel, which opens and closes it on time even with the control
//! plane or the agent down. No grant reaches past the agreement's end.
//! Every flow during the grant names its policy, so `wardctl vendor flows`
//! and the evidence report list them per grant.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use wardline_proto::convert::{Towards, format_time, instant};
use wardline_proto::v1;
use wardline_roles::Verb;

use crate::registry::RevisionAction;
use crate::server::{
    ControlPlane, change_author, known_names, or_logged, registry_status, store_unavailable,
};

/// Each grant: `/wardline/vendor-grants/<id>`.
pub const VENDOR_GRANTS_PREFIX: &str = "/wardline/vendor-grants/";
/// The label that marks a grant's policy.
pub const LABEL: &str = "wardline.io/vendor-grant";
/// The longest grant: a maintenance window, not standing access.
pub const MAX_GRANT: Duration = Duration::from_secs(30 * 24 * 3600);

/// A grant as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub id: String,
    pub vendor: String,
    pub source: String,
    pub to: String,
    pub ports: Vec<String>,
    pub from: String,
    pub until: String,
    pub ticket: String,
    pub granted_by: String,
    pub granted_at: String,
    pub policy: String,
    pub revision: u64,
    pub baa_expires: String,
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

impl GrantRecord {
    fn state(&self, now: OffsetDateTime) -> &'static str {
        match (parse_time(&self.from), parse_time(&self.until)) {
            (Some(f), _) if now < f => "scheduled",
            (_, Some(u)) if now < u => "open",
            _ => "expired",
        }
    }

    fn wire(&self, now: OffsetDateTime) -> v1::VendorAccess {
        v1::VendorAccess {
            id: self.id.clone(),
            vendor: self.vendor.clone(),
            source: self.source.clone(),
            to: self.to.clone(),
            ports: self.ports.clone(),
            from: self.from.clone(),
            until: self.until.clone(),
            ticket: self.ticket.clone(),
            granted_by: self.granted_by.clone(),
            granted_at: self.granted_at.clone(),
            policy: self.policy.clone(),
            revision: self.revision,
            state: self.state(now).to_owned(),
            baa_expires: self.baa_expires.clone(),
        }
    }
}

impl ControlPlane {
    async fn vendor_grants_stored(&self) -> Result<Vec<GrantRecord>, Status> {
        let mut out: Vec<GrantRecord> = self
            .stored_json(VENDOR_GRANTS_PREFIX, "vendor grant")
            .await?
            .into_iter()
            .map(|(g, _)| g)
            .collect();
        out.sort_by(|a, b| a.from.cmp(&b.from));
        Ok(out)
    }

    /// Vendor grants open now or still to come, as status shows them.
    pub(crate) async fn current_vendor_grants(&self) -> Vec<v1::VendorAccess> {
        let now = OffsetDateTime::now_utc();
        or_logged(self.vendor_grants_stored().await, "vendor grants")
            .iter()
            .filter(|g| g.state(now) != "expired")
            .map(|g| g.wire(now))
            .collect()
    }

    pub(crate) async fn vendor_grant_call(
        &self,
        req: Request<v1::VendorGrantRequest>,
    ) -> Result<Response<v1::VendorAccess>, Status> {
        let id = self.allowed(&req, Verb::ChangePolicy)?;
        self.second_factor(&req, &id).await?;
        let r = req.get_ref();
        for (field, text) in [
            ("vendor", &r.vendor),
            ("to", &r.to),
            ("ticket", &r.ticket),
            ("from", &r.from),
            ("until", &r.until),
        ] {
            crate::limits::message(field, text)?;
        }
        if r.ticket.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a vendor grant needs the change ticket that authorises it (--ticket)",
            ));
        }
        if r.ports.is_empty() {
            return Err(Status::invalid_argument(
                "a vendor grant names the ports the vendor needs (--ports tcp/22,tcp/443)",
            ));
        }
        let ports = r
            .ports
            .iter()
            .map(|p| crate::break_glass::port_item(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("--ports {e}")))?;
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::now_utc());
        let from = if r.from.is_empty() {
            now
        } else {
            instant(&r.from, now, Towards::Future)
                .map_err(|e| Status::invalid_argument(format!("--from {e}")))?
                .max(now)
        };
        if r.until.is_empty() {
            return Err(Status::invalid_argument(
                "a vendor grant needs its end (--until): RFC 3339, or a duration from now such as 2h",
            ));
        }
        let until = instant(&r.until, now, Towards::Future)
            .map_err(|e| Status::invalid_argument(format!("--until {e}")))?;
        if until <= from {
            return Err(Status::invalid_argument(format!(
                "--until {} is not after --from {}: the window would be empty",
                format_time(until),
                format_time(from)
            )));
        }
        if until - from > MAX_GRANT {
            return Err(Status::invalid_argument(format!(
                "the window lasts {}; a vendor grant lasts {} days at most",
                humantime::format_duration(Duration::from_secs(
                    (until - from).whole_seconds() as u64
                )),
                MAX_GRANT.as_secs() / 86_400
            )));
        }
        let (current, _) = self.registry().current().await.map_err(registry_status)?;
        let set = self.policy_of(&current)?;
        let vendor = set
            .vendors
            .iter()
            .find(|v| v.name == r.vendor)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no Vendor {:?} ({})",
                    r.vendor,
                    known_names(set.vendors.iter().map(|v| v.name.as_str()))
                ))
            })?;
        if until > vendor.baa_expires {
            return Err(Status::failed_precondition(format!(
                "the business associate agreement on file for {:?} ends at {}: no access past it (grant until {})",
                vendor.name,
                format_time(vendor.baa_expires),
                format_time(until)
            )));
        }
        if !set.segments.iter().any(|s| s.name == r.to) {
            return Err(Status::not_found(format!(
                "--to {:?}: no such segment",
                r.to
            )));
        }
        let grant = format!("vg-{}", hex::encode(rand::random::<[u8; 4]>()));
        let name = format!("vendor-grant-{}", &grant[3..]);
        let source = format!(
            "apiVersion: wardline/v1\nkind: Policy\nmetadata:\n  name: {name}\n  labels: {{{LABEL}: {grant}, wardline.io/vendor: {}}}\nspec:\n  action: allow\n  from: [{}]\n  to: [{}]\n  ports: [{}]\n  validFrom: {}\n  validUntil: {}\n",
            vendor.name,
            vendor.segment,
            r.to,
            ports.join(", "),
            format_time(from),
            format_time(until)
        );
        let (base, _, plan, _) = self
            .registry()
            .plan_source(&source, false)
            .await
            .map_err(registry_status)?;
        let who = change_author(&req, &id);
        let record = self
            .write_operation(
                base.revision,
                plan,
                RevisionAction::Apply,
                &who,
                &format!(
                    "vendor grant {grant}: {} to {} for ticket {}",
                    vendor.name, r.to, r.ticket
                ),
                format!("vendor-grant {grant}"),
            )
            .await
            .map_err(registry_status)?;
        let g = GrantRecord {
            id: grant.clone(),
            vendor: vendor.name.clone(),
            source: vendor.segment.clone(),
            to: r.to.clone(),
            ports: r.ports.clone(),
            from: format_time(from),
            until: format_time(until),
            ticket: r.ticket.clone(),
            granted_by: id.name.clone(),
            granted_at: format_time(now),
            policy: name,
            revision: record.revision,
            baa_expires: format_time(vendor.baa_expires),
        };
        let value = serde_json::to_vec(&g).map_err(|e| Status::internal(e.to_string()))?;
        self.store()
            .put(&format!("{VENDOR_GRANTS_PREFIX}{grant}"), value)
            .await
            .map_err(store_unavailable)?;
        tracing::info!(grant = %grant, vendor = %g.vendor, by = %id.name, from = %g.from,
            until = %g.until, revision = record.revision, "vendor access granted");
        Ok(Response::new(g.wire(OffsetDateTime::now_utc())))
    }

    pub(crate) async fn list_vendor_grants_call(
        &self,
        req: Request<v1::ListVendorGrantsRequest>,
    ) -> Result<Response<v1::ListVendorGrantsResponse>, Status> {
        self.allowed(&req, Verb::ReadStatus)?;
        let now = OffsetDateTime::now_utc();
        let wanted = req.get_ref().id.trim();
        let grants: Vec<v1::VendorAccess> = self
            .vendor_grants_stored()
            .await?
            .iter()
            .filter(|g| wanted.is_empty() || g.id == wanted)
            .map(|g| g.wire(now))
            .collect();
        if !wanted.is_empty() && grants.is_empty() {
            return Err(Status::not_found(format!("no vendor grant {wanted:?}")));
        }
        Ok(Response::new(v1::ListVendorGrantsResponse { grants }))
    }
}
