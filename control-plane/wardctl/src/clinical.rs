//! `wardctl quarantine`, `release`, `quarantines`, `vendor`, `promote`
//! and `recommend`: the clinical operations (docs/clinical-operations.md).

use serde_json::{Value, json};
use wardline_proto::v1;

use crate::cli::{ClinicalCommand, FlowOutput, VendorCommand};
use crate::connect::Client;
use crate::failure::{EXIT_FAILURE, Failure, fail, from_status};
use crate::remote::print_value;
use crate::table::table;

/// Exit code of a promotion refused because critical flows are in its way.
pub const EXIT_REFUSED_PROMOTION: u8 = 10;

fn quarantine_json(q: &v1::QuarantineRecord) -> Value {
    json!({
        "id": q.id, "target": q.target, "addresses": q.addresses, "origin": q.origin,
        "keep": q.keep, "keepPolicies": q.keep_policies, "reason": q.reason, "by": q.by,
        "at": q.at, "segment": q.segment, "revision": q.revision, "state": q.state,
        "releasedBy": q.released_by, "releasedAt": q.released_at,
        "releaseReason": q.release_reason, "releasedRevision": q.released_revision,
    })
}

fn quarantine_text(q: &v1::QuarantineRecord) -> String {
    let mut out = format!(
        "quarantine {} ({}): {} [{}]\nby {} at {}: {}\nsegment {} in revision {}, from {}\nkeeps: {}\n",
        q.id,
        q.state,
        q.target,
        q.addresses.join(", "),
        q.by,
        q.at,
        q.reason,
        q.segment,
        q.revision,
        if q.origin.is_empty() {
            "world"
        } else {
            &q.origin
        },
        if q.keep.is_empty() {
            "nothing".to_owned()
        } else {
            format!("{} ({})", q.keep, q.keep_policies.join(", "))
        }
    );
    if !q.released_by.is_empty() {
        out += &format!(
            "released by {} at {} in revision {}: {}\n",
            q.released_by, q.released_at, q.released_revision, q.release_reason
        );
    }
    out
}

fn vendor_json(g: &v1::VendorAccess) -> Value {
    json!({
        "id": g.id, "vendor": g.vendor, "source": g.source, "to": g.to, "ports": g.ports,
        "from": g.from, "until": g.until, "ticket": g.ticket, "grantedBy": g.granted_by,
        "grantedAt": g.granted_at, "policy": g.policy, "revision": g.revision,
        "state": g.state, "baaExpires": g.baa_expires,
    })
}

fn vendor_text(g: &v1::VendorAccess) -> String {
    format!(
        "vendor grant {} ({}): {} from segment {} to {} on {}\n{} to {}, ticket {}; granted by {} at {} as policy {} in revision {}; BAA ends {}\n",
        g.id,
        g.state,
        g.vendor,
        g.source,
        g.to,
        g.ports.join(", "),
        g.from,
        g.until,
        g.ticket,
        g.granted_by,
        g.granted_at,
        g.policy,
        g.revision,
        g.baa_expires
    )
}

pub(crate) fn verdict_changes_json(c: &[v1::VerdictChange]) -> Value {
    c.iter()
        .map(|c| {
            json!({
                "from": c.src_segment, "to": c.dst_segment, "protocol": c.protocol,
                "port": c.port, "before": c.before, "after": c.after,
                "connections": c.connections, "lastSeen": c.last_seen,
                "critical": c.critical,
            })
        })
        .collect()
}

pub(crate) fn verdict_changes_table(c: &[v1::VerdictChange]) -> String {
    let rows: Vec<Vec<String>> = c
        .iter()
        .map(|c| {
            vec![
                c.src_segment.clone(),
                c.dst_segment.clone(),
                if c.port == 0 {
                    c.protocol.clone()
                } else {
                    format!("{}/{}", c.protocol, c.port)
                },
                format!("{} -> {}", c.before, c.after),
                c.connections.to_string(),
                c.last_seen.clone(),
                c.critical.clone(),
            ]
        })
        .collect();
    table(
        &[
            "FROM",
            "TO",
            "SERVICE",
            "VERDICT",
            "CONNECTIONS",
            "LAST SEEN",
            "CRITICAL",
        ],
        &rows,
    )
}

pub async fn run(command: ClinicalCommand, c: &mut Client) -> Result<(), Failure> {
    match command {
        ClinicalCommand::Quarantine {
            target,
            reason,
            keep,
            output,
        } => {
            let q = c
                .quarantine(v1::QuarantineRequest {
                    target,
                    reason,
                    keep,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            print_value(output, &quarantine_json(&q), || quarantine_text(&q));
        }
        ClinicalCommand::Release { id, reason, output } => {
            let q = c
                .release(v1::ReleaseRequest { id, reason })
                .await
                .map_err(from_status)?
                .into_inner();
            print_value(output, &quarantine_json(&q), || quarantine_text(&q));
        }
        ClinicalCommand::Quarantines { output } => {
            let r = c
                .list_quarantines(v1::ListQuarantinesRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            let value: Value = r.quarantines.iter().map(quarantine_json).collect();
            print_value(output, &value, || {
                let rows: Vec<Vec<String>> = r
                    .quarantines
                    .iter()
                    .map(|q| {
                        vec![
                            q.id.clone(),
                            q.state.clone(),
                            q.target.clone(),
                            q.keep.clone(),
                            q.by.clone(),
                            q.at.clone(),
                            q.reason.clone(),
                        ]
                    })
                    .collect();
                table(
                    &["ID", "STATE", "TARGET", "KEEPS", "BY", "AT", "REASON"],
                    &rows,
                )
            });
        }
        ClinicalCommand::Vendor(command) => vendor(command, c).await?,
        ClinicalCommand::Promote {
            segment,
            days,
            override_,
            reason,
            output,
        } => {
            let span = if days == 1 {
                "day".to_owned()
            } else {
                format!("{days} days")
            };
            let r = c
                .promote(v1::PromoteRequest {
                    segment: segment.clone(),
                    days,
                    r#override: override_,
                    reason,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = json!({
                "segment": segment, "revision": r.revision, "judged": r.judged,
                "critical": verdict_changes_json(&r.critical),
                "changeRequest": r.change.as_ref().map(|c| c.id.clone()),
            });
            print_value(output, &value, || {
                let mut out = String::new();
                if r.revision != 0 {
                    out += &format!(
                        "segment {segment} enforces from revision {}: no critical flow of the last {span} would have been dropped ({} connections judged)\n",
                        r.revision, r.judged
                    );
                } else {
                    out += &format!(
                        "segment {segment} stays in monitor mode: enforcing would have dropped these critical flows of the last {span}:\n{}",
                        verdict_changes_table(&r.critical)
                    );
                    if let Some(change) = &r.change {
                        out += &format!(
                            "filed as change request {} for an approver (wardctl approve {} --note …)\n",
                            change.id, change.id
                        );
                    }
                }
                out
            });
            if r.revision == 0 && r.change.is_none() {
                return Err(fail(
                    EXIT_REFUSED_PROMOTION,
                    format!(
                        "promotion of {segment} refused: {} critical flows would be dropped (--override --reason … files it for an approver)",
                        r.critical.len()
                    ),
                ));
            }
        }
        ClinicalCommand::Recommend {
            segment,
            since,
            out,
        } => {
            let r = c
                .recommend(v1::RecommendRequest { segment, since })
                .await
                .map_err(from_status)?
                .into_inner();
            match out {
                Some(path) => {
                    std::fs::write(&path, &r.yaml).map_err(|e| {
                        fail(EXIT_FAILURE, format!("writing {}: {e}", path.display()))
                    })?;
                    eprintln!(
                        "{} policies from {} connections written to {}",
                        r.policies,
                        r.flows,
                        path.display()
                    );
                }
                None => print!("{}", r.yaml),
            }
        }
    }
    Ok(())
}

async fn vendor(command: VendorCommand, c: &mut Client) -> Result<(), Failure> {
    match command {
        VendorCommand::Grant {
            vendor,
            to,
            ports,
            from,
            until,
            ticket,
            output,
        } => {
            let g = c
                .vendor_grant(v1::VendorGrantRequest {
                    vendor,
                    to,
                    ports,
                    from,
                    until,
                    ticket,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            print_value(output, &vendor_json(&g), || vendor_text(&g));
        }
        VendorCommand::Grants { id, output } => {
            let r = c
                .list_vendor_grants(v1::ListVendorGrantsRequest {
                    id: id.unwrap_or_default(),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let value: Value = r.grants.iter().map(vendor_json).collect();
            print_value(output, &value, || {
                r.grants
                    .iter()
                    .map(vendor_text)
                    .collect::<Vec<_>>()
                    .join("")
            });
        }
        VendorCommand::Flows { grant, output } => {
            let r = c
                .list_vendor_grants(v1::ListVendorGrantsRequest { id: grant })
                .await
                .map_err(from_status)?
                .into_inner();
            let g = r
                .grants
                .first()
                .ok_or_else(|| fail(EXIT_FAILURE, "the control plane sent no grant"))?;
            let flows = crate::flows::records(c, crate::report::grant_window(g)).await?;
            for flow in &flows {
                println!(
                    "{}",
                    match output {
                        FlowOutput::Json => wardline_proto::json::flow(flow).to_string(),
                        FlowOutput::Table => crate::flows::line(flow),
                    }
                );
            }
            if matches!(output, FlowOutput::Table) {
                eprintln!(
                    "{} records of grant {} ({} to {}, {} to {})",
                    flows.len(),
                    g.id,
                    g.vendor,
                    g.to,
                    g.from,
                    g.until
                );
            }
        }
    }
    Ok(())
}
