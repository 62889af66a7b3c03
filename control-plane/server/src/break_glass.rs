//! Break-glass (`docs/governance.md`): emergency access opened at once by
//! one person with the break-glass role and a second factor, for a
//! clinical emergency, with no approval beforehand.
//!
//! A grant is an allow policy with a window (`validFrom` now, `validUntil`
//! at the end), written as a revision of its own: the agents program the
//! window into the kernel, which closes it on time even if the control
//! plane or the agent is down by then. The audit record of the grant goes
//! to the SIEM as an alert. Every grant queues a review that another
//! person with the approver role must sign off within [`REVIEW_WITHIN`] of
//! its end; open grants and unsigned reviews show in `wardctl status` and
//! on the dashboard, overdue ones flagged.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use wardline_proto::v1;
use wardline_roles::Verb;

use crate::registry::{RevisionAction, Sanction};
use crate::server::{ControlPlane, change_author, or_logged, registry_status, store_unavailable};

/// Each grant: `/wardline/break-glass/<id>`.
pub const GRANTS_PREFIX: &str = "/wardline/break-glass/";
/// The shortest and longest grant.
pub const MIN_GRANT: Duration = Duration::from_secs(60);
pub const MAX_GRANT: Duration = Duration::from_secs(12 * 3600);
/// A grant's review is due this long after the grant ends.
pub const REVIEW_WITHIN: Duration = Duration::from_secs(72 * 3600);
/// The label that marks a grant's policy.
pub const LABEL: &str = "wardline.io/break-glass";

/// A grant as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub id: String,
    pub opened_by: String,
    pub opened_fingerprint: String,
    pub opened_at: String,
    pub expires: String,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub ports: Vec<String>,
    pub reason: String,
    pub policy: String,
    pub revision: u64,
    #[serde(default)]
    pub reviewed_by: String,
    #[serde(default)]
    pub reviewed_at: String,
    #[serde(default)]
    pub review_note: String,
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

fn format_time(t: OffsetDateTime) -> String {
    wardline_proto::convert::format_time(t)
}

impl GrantRecord {
    fn wire(&self, now: OffsetDateTime) -> v1::BreakGlassGrant {
        let expires = parse_time(&self.expires);
        let due = expires.map(|e| e + REVIEW_WITHIN);
        v1::BreakGlassGrant {
            id: self.id.clone(),
            opened_by: self.opened_by.clone(),
            opened_at: self.opened_at.clone(),
            expires: self.expires.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            ports: self.ports.clone(),
            reason: self.reason.clone(),
            policy: self.policy.clone(),
            revision: self.revision,
            state: if expires.is_some_and(|e| now < e) {
                "open"
            } else {
                "expired"
            }
            .to_owned(),
            reviewed_by: self.reviewed_by.clone(),
            reviewed_at: self.reviewed_at.clone(),
            review_note: self.review_note.clone(),
            review_due: due.map(format_time).unwrap_or_default(),
            review_overdue: self.reviewed_by.is_empty() && due.is_some_and(|d| now >= d),
        }
    }

    /// Open, or not yet signed off: what status shows.
    fn pending(&self, now: OffsetDateTime) -> bool {
        self.reviewed_by.is_empty() || parse_time(&self.expires).is_some_and(|e| now < e)
    }
}

/// One `--ports` entry as a policy's `ports` item: `tcp/443`,
/// `udp/5000-5010`, `icmp`.
pub(crate) fn port_item(text: &str) -> Result<String, String> {
    let (protocol, ports) = match text.split_once('/') {
        Some((p, rest)) => (p, Some(rest)),
        None => (text, None),
    };
    let protocol = protocol.to_ascii_lowercase();
    if !matches!(
        protocol.as_str(),
        "tcp" | "udp" | "sctp" | "icmp" | "icmpv6"
    ) {
        return Err(format!(
            "{text:?}: the protocol is tcp, udp, sctp, icmp or icmpv6"
        ));
    }
    let Some(ports) = ports else {
        return Ok(format!("{{protocol: {protocol}}}"));
    };
    let number = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{text:?}: {p:?} is no port (1 to 65535)"))
    };
    match ports.split_once('-') {
        Some((a, b)) => Ok(format!(
            "{{protocol: {protocol}, port: {}, endPort: {}}}",
            number(a)?,
            number(b)?
        )),
        None => Ok(format!(
            "{{protocol: {protocol}, port: {}}}",
            number(ports)?
        )),
    }
}

/// The grant's policy document.
fn policy_source(
    name: &str,
    id: &str,
    r: &v1::BreakGlassRequest,
    from: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<String, String> {
    let peers = |list: &[String]| {
        list.iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ports = r
        .ports
        .iter()
        .map(|p| port_item(p))
        .collect::<Result<Vec<_>, _>>()?
        .join(", ");
    Ok(format!(
        "apiVersion: wardline/v1\nkind: Policy\nmetadata:\n  name: {name}\n  labels: {{{LABEL}: {id}}}\nspec:\n  action: allow\n  from: [{}]\n  to: [{}]\n  ports: [{ports}]\n  validFrom: {}\n  validUntil: {}\n",
        peers(&r.from),
        peers(&r.to),
        format_time(from),
        format_time(until)
    ))
}

impl ControlPlane {
    async fn grants_stored(&self) -> Result<Vec<(GrantRecord, u64)>, Status> {
        let mut out: Vec<(GrantRecord, u64)> =
            self.stored_json(GRANTS_PREFIX, "break-glass grant").await?;
        out.sort_by(|a, b| a.0.opened_at.cmp(&b.0.opened_at));
        Ok(out)
    }

    /// Grants open now or not yet reviewed, as status shows them.
    pub(crate) async fn pending_grants(&self) -> Vec<v1::BreakGlassGrant> {
        let now = OffsetDateTime::now_utc();
        or_logged(self.grants_stored().await, "break-glass grants")
            .into_iter()
            .filter(|(g, _)| g.pending(now))
            .map(|(g, _)| g.wire(now))
            .collect()
    }

    pub(crate) async fn break_glass_call(
        &self,
        req: Request<v1::BreakGlassRequest>,
    ) -> Result<Response<v1::BreakGlassGrant>, Status> {
        let id = self.allowed(&req, Verb::BreakGlass)?;
        self.second_factor(&req, &id).await?;
        let r = req.get_ref();
        crate::limits::message("reason", &r.reason)?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "break-glass needs a reason (--reason): the clinical emergency, for the review",
            ));
        }
        if r.from.is_empty() || r.to.is_empty() {
            return Err(Status::invalid_argument(
                "break-glass needs --from and --to: the segments to open between",
            ));
        }
        let length = Duration::from_secs(r.seconds);
        if !(MIN_GRANT..=MAX_GRANT).contains(&length) {
            return Err(Status::invalid_argument(format!(
                "--for {} s: a grant lasts {} s to {} h",
                r.seconds,
                MIN_GRANT.as_secs(),
                MAX_GRANT.as_secs() / 3600
            )));
        }
        let grant = format!("bg-{}", hex::encode(rand::random::<[u8; 5]>()));
        let name = format!("break-glass-{}", &grant[3..]);
        let opened = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::now_utc());
        let until = opened + length;
        let source =
            policy_source(&name, &grant, r, opened, until).map_err(Status::invalid_argument)?;
        let (current, _, plan, _) = self
            .registry()
            .plan_source(&source, false)
            .await
            .map_err(registry_status)?;
        let who = change_author(&req, &id);
        let record = self
            .registry()
            .apply_sanctioned(
                current.revision,
                plan,
                RevisionAction::Apply,
                false,
                &who,
                &format!("break-glass {grant}: {}", r.reason),
                Sanction::BreakGlass(grant.clone()),
            )
            .await
            .map_err(registry_status)?;
        let g = GrantRecord {
            id: grant.clone(),
            opened_by: id.name.clone(),
            opened_fingerprint: who.fingerprint.clone(),
            opened_at: format_time(opened),
            expires: format_time(until),
            from: r.from.clone(),
            to: r.to.clone(),
            ports: r.ports.clone(),
            reason: r.reason.clone(),
            policy: name,
            revision: record.revision,
            reviewed_by: String::new(),
            reviewed_at: String::new(),
            review_note: String::new(),
        };
        let value = serde_json::to_vec(&g).map_err(|e| Status::internal(e.to_string()))?;
        self.store()
            .put(&format!("{GRANTS_PREFIX}{grant}"), value)
            .await
            .map_err(store_unavailable)?;
        tracing::warn!(grant = %grant, by = %id.name, until = %g.expires, revision = record.revision,
            "break-glass access opened");
        Ok(Response::new(g.wire(OffsetDateTime::now_utc())))
    }

    pub(crate) async fn review_break_glass_call(
        &self,
        req: Request<v1::ReviewRequest>,
    ) -> Result<Response<v1::BreakGlassGrant>, Status> {
        let id = self.allowed(&req, Verb::Approve)?;
        self.second_factor(&req, &id).await?;
        let r = req.get_ref();
        crate::limits::message("note", &r.note)?;
        if r.note.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a review needs a note (--note): what was found",
            ));
        }
        let key = format!("{GRANTS_PREFIX}{}", r.id);
        let kv = self
            .store()
            .get(&key)
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| Status::not_found(format!("no break-glass grant {:?}", r.id)))?;
        let mut g: GrantRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| Status::internal(format!("{key}: unreadable: {e}")))?;
        if g.opened_by == id.name {
            tracing::warn!(operator = %id.name, grant = %g.id, "refused: reviewing one's own grant");
            return Err(Status::permission_denied(format!(
                "operator {:?} opened grant {:?} and may not review it: a second person must",
                id.name, g.id
            )));
        }
        if !g.reviewed_by.is_empty() {
            return Err(Status::failed_precondition(format!(
                "grant {:?} was reviewed by {} at {}",
                g.id, g.reviewed_by, g.reviewed_at
            )));
        }
        g.reviewed_by = id.name.clone();
        g.reviewed_at = format_time(OffsetDateTime::now_utc());
        g.review_note = r.note.clone();
        if !self.put_if_unchanged(&key, &g, kv.mod_revision).await? {
            return Err(Status::aborted("the grant was reviewed meanwhile"));
        }
        Ok(Response::new(g.wire(OffsetDateTime::now_utc())))
    }

    pub(crate) async fn list_break_glass_call(
        &self,
        req: Request<v1::ListBreakGlassRequest>,
    ) -> Result<Response<v1::ListBreakGlassResponse>, Status> {
        self.allowed(&req, Verb::ReadStatus)?;
        let now = OffsetDateTime::now_utc();
        Ok(Response::new(v1::ListBreakGlassResponse {
            grants: self
                .grants_stored()
                .await?
                .into_iter()
                .map(|(g, _)| g.wire(now))
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_review_not_signed_off_in_time_is_overdue_and_stays_shown() {
        let now = OffsetDateTime::now_utc();
        let ended = now - REVIEW_WITHIN - time::Duration::minutes(1);
        let mut g = GrantRecord {
            id: "bg-1".into(),
            opened_by: "brett".into(),
            opened_fingerprint: String::new(),
            opened_at: format_time(ended - time::Duration::minutes(30)),
            expires: format_time(ended),
            from: vec!["ws".into()],
            to: vec!["pump".into()],
            ports: vec![],
            reason: "r".into(),
            policy: "break-glass-1".into(),
            revision: 3,
            reviewed_by: String::new(),
            reviewed_at: String::new(),
            review_note: String::new(),
        };
        let shown = g.wire(now);
        assert_eq!(shown.state, "expired");
        assert!(shown.review_overdue);
        assert!(g.pending(now));
        // Signed off: no longer overdue, no longer shown in status.
        g.reviewed_by = "april".into();
        assert!(!g.wire(now).review_overdue);
        assert!(!g.pending(now));
        // Open, whatever the review: shown.
        g.expires = format_time(now + time::Duration::minutes(5));
        assert_eq!(g.wire(now).state, "open");
        assert!(g.pending(now));
    }

    #[test]
    fn ports_are_read_or_named_wrong() {
        assert_eq!(port_item("tcp/443").unwrap(), "{protocol: tcp, port: 443}");
        assert_eq!(
            port_item("UDP/5000-5010").unwrap(),
            "{protocol: udp, port: 5000, endPort: 5010}"
        );
        assert_eq!(port_item("icmp").unwrap(), "{protocol: icmp}");
        for bad in ["http/80", "tcp/0", "tcp/70000", "tcp/", "tcp/1-x"] {
            assert!(port_item(bad).is_err(), "{bad}");
        }
    }
}
