//! Changes judged against the flows observed (`docs/clinical-operations.md`):
//! what a policy source would change (`wardctl diff --against-flows`), the
//! promotion of a segment from monitor to enforce only if no critical flow
//! of the last days would have been dropped, and draft policy recommended
//! from a segment's observed flows.
//!
//! A flow is critical when either end is a critical segment (by the change
//! control's `criticalSegments`, else the label `critical: "true"`) or a
//! `CriticalFlow` document covers it. A promotion with critical flows in
//! its way is refused and lists them; with `override`, it is filed as a
//! change request that an approver must approve.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use wardline_policy::{Mode, PolicySet, Segment};
use wardline_proto::v1;
use wardline_roles::Verb;

use crate::registry::RevisionAction;
use crate::server::{ControlPlane, change_author, registry_status};

/// How far back flows are judged by default, and at most, in days.
pub const DEFAULT_DAYS: u32 = 7;
pub const MAX_DAYS: u32 = 90;

/// A segment document as the parser reads it, with `mode` set.
fn segment_document(s: &Segment, mode: Mode) -> String {
    let quote = |t: &str| serde_json::to_string(t).unwrap_or_default();
    let map = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{}: {}", quote(k), quote(v)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut spec = Vec::new();
    if !s.cidrs.is_empty() {
        let cidrs: Vec<String> = s.cidrs.iter().map(|c| quote(&c.to_string())).collect();
        spec.push(format!("  cidrs: [{}]", cidrs.join(", ")));
    }
    if !s.vlans.is_empty() {
        let vlans: Vec<String> = s.vlans.iter().map(u16::to_string).collect();
        spec.push(format!("  vlans: [{}]", vlans.join(", ")));
    }
    if let Some(selector) = &s.node_selector {
        spec.push(format!(
            "  nodeSelector: {{matchLabels: {{{}}}}}",
            map(selector)
        ));
    }
    if let Some(q) = &s.quarantine {
        spec.push(match &q.origin {
            Some(o) => format!("  quarantine: {{origin: {o}}}"),
            None => "  quarantine: {}".to_owned(),
        });
    }
    spec.push(format!(
        "  mode: {}",
        match mode {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    ));
    format!(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata:\n  name: {}\n  labels: {{{}}}\nspec:\n{}\n",
        s.name,
        map(&s.labels),
        spec.join("\n")
    )
}

/// Why a connection from `src` to `dst` is critical, if it is.
pub(crate) fn critical(
    set: &PolicySet,
    src: &str,
    dst: &str,
    protocol: u8,
    port: u16,
) -> Option<String> {
    let selector = set
        .change_controls
        .first()
        .and_then(|c| c.critical_segments.clone())
        .unwrap_or_else(|| {
            let (k, v) = wardline_approvals::DEFAULT_CRITICAL;
            BTreeMap::from([(k.to_owned(), v.to_owned())])
        });
    for end in [src, dst] {
        if set
            .segments
            .iter()
            .any(|s| s.name == end && selector.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        {
            return Some(format!("segment {end} is critical"));
        }
    }
    set.critical_flows
        .iter()
        .find(|f| f.covers(src, dst, protocol, port))
        .map(|f| format!("critical flow {}", f.name))
}

fn wire(c: &wardline_simulation::VerdictChange, critical: Option<String>) -> v1::VerdictChange {
    v1::VerdictChange {
        src_segment: c.src_segment.clone(),
        dst_segment: c.dst_segment.clone(),
        protocol: wardline_proto::convert::protocol_name(u32::from(c.protocol)),
        port: u32::from(c.port),
        before: c.before.to_owned(),
        after: c.after.to_owned(),
        connections: c.connections,
        last_seen: c.last_seen.clone(),
        critical: critical.unwrap_or_default(),
    }
}

impl ControlPlane {
    pub(crate) async fn simulate_call(
        &self,
        req: Request<v1::SimulateRequest>,
    ) -> Result<Response<v1::SimulateResponse>, Status> {
        self.allowed(&req, Verb::ReadFlows)?;
        let r = req.get_ref();
        let since = if r.since.is_empty() { "7d" } else { &r.since };
        let (current, _, plan, _) = self
            .registry()
            .plan_source(&r.source, r.prune)
            .await
            .map_err(registry_status)?;
        let before = self.policy_of(&current)?;
        let after = wardline_policy::parse(&crate::registry::source_of(&plan.documents))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let observed = self
            .observed_flows(since, &["allowed", "audited", "dropped"])
            .await?;
        let judged = observed
            .iter()
            .filter(|f| matches!(f.kind.as_str(), "new" | "drop"))
            .count() as u64;
        let changes = wardline_simulation::verdict_changes(
            &before,
            &after,
            OffsetDateTime::now_utc(),
            &observed,
        );
        Ok(Response::new(v1::SimulateResponse {
            revision: current.revision,
            changes: changes.iter().map(|c| wire(c, None)).collect(),
            judged,
        }))
    }

    pub(crate) async fn promote_call(
        &self,
        req: Request<v1::PromoteRequest>,
    ) -> Result<Response<v1::PromoteResponse>, Status> {
        let id = self.allowed(&req, Verb::ChangePolicy)?;
        self.second_factor(&req, &id).await?;
        let r = req.get_ref();
        crate::limits::message("reason", &r.reason)?;
        let days = match r.days {
            0 => DEFAULT_DAYS,
            d @ 1..=MAX_DAYS => d,
            d => {
                return Err(Status::invalid_argument(format!(
                    "--days {d}: flows are judged over 1 to {MAX_DAYS} days"
                )));
            }
        };
        if r.r#override && r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "an override needs a reason (--reason): why enforce despite critical flows, for the approver",
            ));
        }
        let (current, _) = self.registry().current().await.map_err(registry_status)?;
        let set = self.policy_of(&current)?;
        let segment = set
            .segments
            .iter()
            .find(|s| s.name == r.segment)
            .ok_or_else(|| Status::not_found(format!("no segment {:?} to promote", r.segment)))?;
        if segment.mode != Mode::Monitor {
            return Err(Status::failed_precondition(format!(
                "segment {:?} is not in monitor mode: it enforces already",
                r.segment
            )));
        }
        self.within_reach(&id.name, &current, &r.segment)?;
        let source = segment_document(segment, Mode::Enforce);
        let (base, _, plan, _) = self
            .registry()
            .plan_source(&source, false)
            .await
            .map_err(registry_status)?;
        let after = wardline_policy::parse(&crate::registry::source_of(&plan.documents))
            .map_err(|e| Status::internal(format!("the promoted policy: {e}")))?;
        let observed = match self.flows() {
            Some(_) => {
                self.observed_flows(&format!("{}d", days), &["allowed", "audited"])
                    .await?
            }
            None => {
                return Err(Status::failed_precondition(
                    "no flow store: a promotion is judged against the flows observed, and none are kept",
                ));
            }
        };
        let judged = observed.iter().filter(|f| f.kind == "new").count() as u64;
        let changes = wardline_simulation::verdict_changes(
            &set,
            &after,
            OffsetDateTime::now_utc(),
            &observed,
        );
        let in_the_way: Vec<v1::VerdictChange> = changes
            .iter()
            .filter(|c| c.after == "dropped")
            .filter_map(|c| {
                critical(&set, &c.src_segment, &c.dst_segment, c.protocol, c.port)
                    .map(|why| wire(c, Some(why)))
            })
            .collect();
        let who = change_author(&req, &id);
        if in_the_way.is_empty() {
            let record = self
                .write_operation(
                    base.revision,
                    plan,
                    RevisionAction::Apply,
                    &who,
                    &format!(
                        "promote {} to enforce: no critical flow of the last {days} days would be dropped ({judged} connections judged)",
                        r.segment
                    ),
                    format!("promote {}", r.segment),
                )
                .await
                .map_err(registry_status)?;
            tracing::info!(segment = %r.segment, by = %id.name, revision = record.revision, "segment promoted to enforce");
            return Ok(Response::new(v1::PromoteResponse {
                revision: record.revision,
                critical: Vec::new(),
                change: None,
                judged,
            }));
        }
        if !r.r#override {
            return Ok(Response::new(v1::PromoteResponse {
                revision: 0,
                critical: in_the_way,
                change: None,
                judged,
            }));
        }
        let flows: u64 = in_the_way.iter().map(|c| c.connections).sum();
        let change = self
            .file_request(
                &who,
                base,
                plan,
                RevisionAction::Apply,
                false,
                format!("promote {} to enforce despite critical flows: {}", r.segment, r.reason),
                vec![format!(
                    "promoting {} to enforce would drop {flows} connections of critical flows seen in the last {days} days",
                    r.segment
                )],
            )
            .await?;
        Ok(Response::new(v1::PromoteResponse {
            revision: 0,
            critical: in_the_way,
            change: Some(change),
            judged,
        }))
    }
}

impl ControlPlane {
    pub(crate) async fn recommend_call(
        &self,
        req: Request<v1::RecommendRequest>,
    ) -> Result<Response<v1::RecommendResponse>, Status> {
        self.allowed(&req, Verb::ReadFlows)?;
        let r = req.get_ref();
        let since = if r.since.is_empty() { "7d" } else { &r.since };
        let (current, _) = self.registry().current().await.map_err(registry_status)?;
        let set = self.policy_of(&current)?;
        if !set.segments.iter().any(|s| s.name == r.segment) {
            return Err(Status::not_found(format!(
                "--segment {:?}: no such segment",
                r.segment
            )));
        }
        let observed = self.observed_flows(since, &["audited"]).await?;
        let draft = wardline_recommend::recommend(&set, &r.segment, &observed);
        let site = crate::registry::source_of(&current.documents);
        if draft.policies > 0 {
            wardline_policy::parse(&format!("{site}---\n{}", draft.yaml)).map_err(|e| {
                Status::internal(format!(
                    "the draft does not validate against the policy in force: {e}"
                ))
            })?;
        }
        let header = format!(
            "# Draft policy for segment {}: {} audited connections observed since {since},\n# against revision {}. Review it, then apply it and promote the segment.\n",
            r.segment, draft.connections, current.revision
        );
        Ok(Response::new(v1::RecommendResponse {
            yaml: format!("{header}{}", draft.yaml),
            flows: draft.connections,
            policies: draft.policies,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_reads_back_as_it_was_but_for_its_mode() {
        let set = wardline_policy::parse(
            "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pumps, labels: {critical: \"true\", zone: icu}}\nspec: {cidrs: [198.18.30.0/24, \"2001:db8:30::/64\"], vlans: [30], mode: monitor}\n",
        )
        .unwrap();
        let s = &set.segments[0];
        let again = wardline_policy::parse(&segment_document(s, Mode::Enforce)).unwrap();
        let t = &again.segments[0];
        assert_eq!(t.mode, Mode::Enforce);
        assert_eq!(
            (&t.name, &t.labels, &t.cidrs, &t.vlans),
            (&s.name, &s.labels, &s.cidrs, &s.vlans)
        );
    }

    #[test]
    fn critical_by_label_or_by_critical_flow() {
        let set = wardline_policy::parse(
            "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: icu, labels: {critical: \"true\"}}\nspec: {cidrs: [198.18.30.0/24]}\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pumps}\nspec: {cidrs: [198.18.31.0/24]}\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {name: library}\nspec: {cidrs: [198.18.32.0/24]}\n---\napiVersion: wardline/v1\nkind: CriticalFlow\nmetadata: {name: drug-library}\nspec: {from: [pumps], to: [library], ports: [{protocol: tcp, port: 443}]}\n",
        )
        .unwrap();
        assert!(critical(&set, "pumps", "icu", 17, 5000).is_some());
        assert_eq!(
            critical(&set, "pumps", "library", 6, 443).as_deref(),
            Some("critical flow drug-library")
        );
        assert!(critical(&set, "pumps", "library", 6, 80).is_none());
        assert!(critical(&set, "library", "pumps", 6, 443).is_none());
    }
}
