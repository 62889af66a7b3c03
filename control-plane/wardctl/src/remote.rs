//! The commands answered by the control plane, one request each, and how
//! their answers are shown (`-o table`, `yaml`, `json`).

use serde_json::{Value, json};
use wardline_proto::v1;

use crate::connect::Client;

use crate::cli::{
    DashboardCommand, FlowFilter, FlowOutput, Output, RemoteCommand, RemotePki, TopBy,
};
use crate::failure::{
    EXIT_FAILURE, EXIT_TAMPERED, EXIT_UNHEALTHY, Failure, fail, from_status, read_file,
};
use crate::table::table;

/// How a replica's reason begins when it retires a start-up certificate
/// that its agent renewed (management.proto, `Revocation.reason`).
const RETIRED: &str = "retired:";

pub(crate) fn print_value(output: Output, value: &Value, table: impl FnOnce() -> String) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        ),
        Output::Yaml => print!("{}", serde_saphyr::to_string(value).unwrap_or_default()),
        Output::Table => print!("{}", table()),
    }
}

/// `wardctl pki revoke`.
pub async fn pki(command: RemotePki, c: &mut Client) -> Result<(), Failure> {
    let RemotePki::Revoke {
        serial,
        certificate,
        name,
        role,
        reason,
    } = command;
    let serial = match (serial, certificate) {
        (Some(s), _) => s,
        (None, Some(path)) => crate::local::serial_of_file(&path)?,
        (None, None) => String::new(),
    };
    let r = c
        .revoke(v1::RevokeRequest {
            serial,
            role: role
                .map(|r| wardline_tls::Role::from(r).as_str().to_owned())
                .unwrap_or_default(),
            name: name.unwrap_or_default(),
            reason,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let renewed = r.renewed;
    let r = r.revocation.unwrap_or_default();
    if r.serial.is_empty() {
        println!(
            "revoked every {} certificate of {:?} issued until {}",
            r.role, r.name, r.issued_until
        );
    } else {
        println!("revoked the certificate with serial {}", r.serial);
    }
    for child in &renewed {
        println!("  and its renewal {}", child.serial);
    }
    Ok(())
}

fn changes_json(c: &[v1::Change]) -> Value {
    Value::Array(
        c.iter()
            .map(|c| json!({"kind": c.kind, "name": c.name, "action": c.action}))
            .collect(),
    )
}

fn changes_text(c: &[v1::Change]) -> String {
    if c.len() <= 3 {
        return c
            .iter()
            .map(|c| format!("{} {} {}", c.action, c.kind.to_lowercase(), c.name))
            .collect::<Vec<_>>()
            .join(", ");
    }
    // Many changes: counted by action and kind (-o json lists them all).
    let mut counts: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for c in c {
        *counts
            .entry((c.action.as_str(), c.kind.as_str()))
            .or_default() += 1;
    }
    counts
        .iter()
        .map(|((action, kind), n)| format!("{action} {n} {}", kind.to_lowercase()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `command` on the control plane `c` reaches; `ca` is the site CA,
/// against which `audit --verify` checks the trail here.
pub async fn run(
    command: RemoteCommand,
    c: &mut Client,
    ca: &std::path::Path,
) -> Result<(), Failure> {
    match command {
        RemoteCommand::Apply {
            file,
            prune,
            expected_revision,
            message,
            output,
        } => {
            let source = read_file(&file)?;
            let r = c
                .apply(v1::ApplyRequest {
                    source,
                    expected_revision,
                    message,
                    prune,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = json!({"revision": r.revision, "unchanged": r.unchanged, "changes": changes_json(&r.changes)});
            print_value(output, &value, || {
                if r.unchanged {
                    format!(
                        "unchanged: revision {} already has these documents\n",
                        r.revision
                    )
                } else {
                    format!(
                        "applied as revision {}: {}\n",
                        r.revision,
                        changes_text(&r.changes)
                    )
                }
            });
        }
        RemoteCommand::Diff {
            file,
            prune,
            against_flows: Some(since),
            output,
        } => {
            let source = read_file(&file)?;
            let r = c
                .simulate(v1::SimulateRequest {
                    source,
                    prune,
                    since,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = json!({
                "revision": r.revision, "judged": r.judged,
                "changes": crate::clinical::verdict_changes_json(&r.changes),
            });
            print_value(output, &value, || {
                if r.changes.is_empty() {
                    format!(
                        "against revision {}: no observed connection would change verdict ({} judged)\n",
                        r.revision, r.judged
                    )
                } else {
                    format!(
                        "against revision {}: {} judged, these would change verdict:\n{}",
                        r.revision,
                        r.judged,
                        crate::clinical::verdict_changes_table(&r.changes)
                    )
                }
            });
        }
        RemoteCommand::Diff {
            file,
            prune,
            against_flows: None,
            output: _,
        } => {
            let source = read_file(&file)?;
            let r = c
                .diff(v1::DiffRequest { source, prune })
                .await
                .map_err(from_status)?
                .into_inner();
            if r.changes.is_empty() {
                println!("no changes against revision {}", r.revision);
            } else {
                println!(
                    "against revision {}: {}",
                    r.revision,
                    changes_text(&r.changes)
                );
                print!("{}", r.diff);
            }
        }
        RemoteCommand::Get {
            kind,
            name,
            revision,
            output,
        } => {
            let r = c
                .get(v1::GetRequest {
                    kind: kind.unwrap_or_default(),
                    name: name.unwrap_or_default(),
                    revision,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            match output {
                Output::Yaml => {
                    for d in &r.documents {
                        print!("---\n{}", d.yaml);
                    }
                }
                Output::Json => {
                    let docs: Vec<Value> = r
                        .documents
                        .iter()
                        .map(|d| {
                            // A stored document, which the policy parser has read.
                            let doc: Value = wardline_policy::yaml::from_str(
                                &d.yaml,
                                &wardline_policy::yaml::POLICY_LIMITS,
                            )
                            .unwrap_or(Value::Null);
                            json!({"kind": d.kind, "name": d.name, "document": doc})
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &json!({"revision": r.revision, "documents": docs})
                        )
                        .unwrap_or_default()
                    );
                }
                Output::Table => {
                    let rows: Vec<Vec<String>> = r
                        .documents
                        .iter()
                        .map(|d| vec![d.kind.clone(), d.name.clone()])
                        .collect();
                    print!("{}", table(&["KIND", "NAME"], &rows));
                    println!("(revision {})", r.revision);
                }
            }
        }
        RemoteCommand::Delete {
            kind,
            name,
            expected_revision,
            message,
        } => {
            let r = c
                .delete(v1::DeleteRequest {
                    kind: kind.clone(),
                    name: name.clone(),
                    expected_revision,
                    message,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            if kind.eq_ignore_ascii_case("node") {
                println!(
                    "removed node {name}: blocked until `wardctl unblock {name}`; revision {}",
                    r.revision
                );
            } else {
                println!("deleted {kind} {name}; revision {}", r.revision);
            }
        }
        RemoteCommand::Unblock { node } => {
            c.unblock(v1::UnblockRequest { node: node.clone() })
                .await
                .map_err(from_status)?;
            println!("unblocked node {node}: it may register again");
        }
        RemoteCommand::History {
            verify: true,
            output,
            ..
        } => {
            let r = c
                .verify_history(v1::VerifyHistoryRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            let value =
                json!({"verified": true, "revisions": r.revisions, "headSha256": r.head_sha256});
            print_value(output, &value, || {
                format!(
                    "history verified: {} revisions, each sealed by a replica of the site and linked to the one before\nhead sha256 {}\n",
                    r.revisions, r.head_sha256
                )
            });
        }
        RemoteCommand::History { limit, output, .. } => {
            let r = c
                .history(v1::HistoryRequest { limit })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = Value::Array(
                r.revisions
                    .iter()
                    .map(|h| {
                        json!({"revision": h.revision, "time": h.time, "author": h.author,
                               "authorFingerprint": h.author_fingerprint, "authorPeer": h.author_peer,
                               "recordSha256": h.record_sha256, "previousSha256": h.previous_sha256,
                               "action": h.action, "message": h.message,
                               "changes": changes_json(&h.changes), "policySha256": h.policy_sha256,
                               "segments": h.segments, "policies": h.policies,
                               "approvedBy": h.approved_by, "approvedAt": h.approved_at,
                               "changeRequest": h.change_request, "breakGlass": h.break_glass,
                               "operation": h.operation})
                    })
                    .collect(),
            );
            print_value(output, &value, || {
                let rows: Vec<Vec<String>> = r
                    .revisions
                    .iter()
                    .map(|h| {
                        vec![
                            h.revision.to_string(),
                            h.time.clone(),
                            h.author.clone(),
                            h.author_fingerprint.chars().take(16).collect(),
                            h.author_peer.clone(),
                            if !h.approved_by.is_empty() {
                                format!("{} ({})", h.approved_by, h.change_request)
                            } else if !h.break_glass.is_empty() {
                                format!("BREAK-GLASS {}", h.break_glass)
                            } else if !h.operation.is_empty() {
                                // "QUARANTINE q-…": the act in capitals, as
                                // BREAK-GLASS is.
                                match h.operation.split_once(' ') {
                                    Some((act, what)) => {
                                        format!("{} {what}", act.to_uppercase())
                                    }
                                    None => h.operation.to_uppercase(),
                                }
                            } else {
                                String::new()
                            },
                            h.action.clone(),
                            changes_text(&h.changes),
                            h.message.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "REVISION",
                        "TIME",
                        "AUTHOR",
                        "CERTIFICATE",
                        "FROM",
                        "APPROVED BY",
                        "ACTION",
                        "CHANGES",
                        "MESSAGE",
                    ],
                    &rows,
                )
            });
        }
        RemoteCommand::Audit {
            last,
            verify,
            output,
        } => {
            // The newest `last`, or with --verify the whole trail, a page
            // at a time, each checked from where the one before ended.
            let verifier = if verify {
                Some(
                    wardline_signing::Verifier::from_ca_file(ca)
                        .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?,
                )
            } else {
                None
            };
            let mut head = wardline_audit::Head::default();
            let mut records = Vec::new();
            let r = loop {
                let r = c
                    .audit_trail(v1::AuditRequest {
                        limit: if verify { 0 } else { last },
                        after_seq: head.seq,
                    })
                    .await
                    .map_err(from_status)?
                    .into_inner();
                let mut page = Vec::with_capacity(r.records.len());
                for (i, text) in r.records.iter().enumerate() {
                    page.push(
                        serde_json::from_str::<wardline_audit::AuditRecord>(text).map_err(|e| {
                            fail(
                                EXIT_TAMPERED,
                                format!(
                                    "the audit trail's record {} is not a record: {e}",
                                    head.seq + i as u64 + 1
                                ),
                            )
                        })?,
                    );
                }
                let Some(verifier) = &verifier else {
                    // `--last 0`: every record, page after page.
                    let end = page.last().map(|a| a.seq);
                    records.extend(page);
                    match end {
                        Some(seq) if last == 0 && r.more => {
                            head.seq = seq;
                            continue;
                        }
                        _ => break r,
                    }
                };
                head = wardline_audit::verify(&page, &head, verifier).map_err(|e| {
                    fail(
                        EXIT_TAMPERED,
                        format!("the audit trail fails verification: {e}"),
                    )
                })?;
                if !r.more || page.is_empty() {
                    break r;
                }
            };
            if verify {
                if head.seq != r.head_seq || head.sha256 != r.head_sha256 {
                    return Err(fail(
                        EXIT_TAMPERED,
                        format!(
                            "the audit trail fails verification: its records end at {} (sha256 {}), its head says {} (sha256 {}): records were removed",
                            head.seq, head.sha256, r.head_seq, r.head_sha256
                        ),
                    ));
                }
                let value = json!({"verified": true, "records": head.seq, "headSha256": head.sha256, "lost": r.lost});
                print_value(output, &value, || {
                    format!(
                        "audit trail verified here against the site CA: {} records, each sealed by a replica of the site and linked to the one before\nhead sha256 {}\n",
                        head.seq, head.sha256
                    )
                });
            } else {
                let value = Value::Array(
                    records
                        .iter()
                        .map(|a| serde_json::to_value(a).unwrap_or_default())
                        .collect(),
                );
                print_value(output, &value, || {
                    let rows: Vec<Vec<String>> = records
                        .iter()
                        .map(|a| {
                            vec![
                                a.seq.to_string(),
                                a.time.clone(),
                                a.actor.clone(),
                                a.peer.clone(),
                                a.action.clone(),
                                a.target.clone(),
                                a.outcome.as_str().to_owned(),
                                a.detail.clone(),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "SEQ", "TIME", "WHO", "FROM", "ACTION", "TARGET", "OUTCOME", "DETAIL",
                        ],
                        &rows,
                    )
                });
            }
        }
        RemoteCommand::Rollback {
            revision,
            expected_revision,
            message,
        } => {
            let r = c
                .rollback(v1::RollbackRequest {
                    to_revision: revision,
                    expected_revision,
                    message,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            println!(
                "rolled back to revision {revision} as revision {}: {}",
                r.revision,
                changes_text(&r.changes)
            );
        }
        RemoteCommand::Observe {
            filter,
            last,
            follow,
            output,
        } => {
            let request = v1::ObserveRequest {
                last: last.unwrap_or_default(),
                follow,
                ..observe_request(filter)
            };
            let mut stream = c.observe(request).await.map_err(from_status)?.into_inner();
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            while let Some(flow) = stream.message().await.map_err(from_status)? {
                let line = match output {
                    FlowOutput::Json => wardline_proto::json::flow(&flow).to_string(),
                    FlowOutput::Table => crate::flows::line(&flow),
                };
                // A closed pipe (| head) ends the command quietly.
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break;
                }
            }
        }
        RemoteCommand::Matrix { filter, output } => {
            let r = c
                .flow_matrix(observe_request(filter))
                .await
                .map_err(from_status)?
                .into_inner();
            let value = wardline_proto::json::matrix(&r);
            print_value(output, &value, || crate::flows::matrix_table(&r));
        }
        RemoteCommand::Top {
            by,
            limit,
            filter,
            output,
        } => {
            let r = c
                .top_flows(v1::TopRequest {
                    filter: Some(observe_request(filter)),
                    by: match by {
                        TopBy::Sources => "sources",
                        TopBy::Talkers => "talkers",
                    }
                    .to_owned(),
                    limit,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = wardline_proto::json::top(&r);
            print_value(output, &value, || {
                crate::flows::top_table(&r, matches!(by, TopBy::Talkers))
            });
        }
        RemoteCommand::Inventory {
            address,
            segment,
            new,
            since,
            output,
        } => {
            let r = c
                .inventory(v1::InventoryRequest {
                    address: address.unwrap_or_default(),
                    segment: segment.unwrap_or_default(),
                    new_only: new,
                    since: since.unwrap_or_default(),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = wardline_proto::json::inventory(&r);
            print_value(output, &value, || crate::flows::inventory_table(&r));
        }
        RemoteCommand::Dashboard(DashboardCommand::Login) => {
            let r = c
                .dashboard_login(v1::DashboardLoginRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            // The link alone on stdout, for scripts; the rest for people.
            println!("{}", r.url);
            eprintln!(
                "Open it before {} (it works once); the session lasts {}.",
                r.expires,
                humantime::format_duration(std::time::Duration::from_secs(r.session_seconds))
            );
        }
        RemoteCommand::Status { output, check } => {
            let r = c
                .status(v1::StatusRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            let value = wardline_proto::json::status(&r);
            print_value(output, &value, || {
                let rows: Vec<Vec<String>> = r
                    .agents
                    .iter()
                    .map(|a| {
                        let admission = match a.admission.as_str() {
                            "approved" => format!("approved ({})", a.approval_name),
                            "pending" => "PENDING".to_owned(),
                            other => other.to_owned(),
                        };
                        vec![
                            a.node.clone(),
                            admission,
                            if a.connected { "yes" } else { "NO" }.to_owned(),
                            a.acked_revision.to_string(),
                            if a.behind { "BEHIND" } else { "" }.to_owned(),
                            a.last_heartbeat.clone(),
                            a.replica.clone(),
                            if a.certificate_warning.is_empty() {
                                a.certificate_not_after.clone()
                            } else {
                                format!("{} (!)", a.certificate_not_after)
                            },
                            a.error.clone(),
                        ]
                    })
                    .collect();
                // What a node claimed and was not given, for operators to
                // look into: a lying or misconfigured agent shows here.
                let mut warnings = String::new();
                for a in &r.agents {
                    if !a.refused_addresses.is_empty() {
                        warnings += &format!(
                            "\n{}: addresses outside its approved ranges, not used: {}",
                            a.node,
                            a.refused_addresses.join(", ")
                        );
                    }
                    if !a.reported_labels.is_empty() {
                        let mut labels: Vec<_> = a
                            .reported_labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect();
                        labels.sort();
                        warnings += &format!(
                            "\n{}: reports labels that are not its own, not used: {}",
                            a.node,
                            labels.join(", ")
                        );
                    }
                    if !a.left_out.is_empty() {
                        warnings += &format!("\n{}", a.left_out);
                    }
                    if !a.certificate_warning.is_empty() {
                        warnings += &format!(
                            "\n{}: its certificate {} {}",
                            a.node, a.certificate_serial, a.certificate_warning
                        );
                    }
                }
                if !r.replica_certificate_warning.is_empty() {
                    warnings += &format!(
                        "\n{}: the replica's own certificate {} {}",
                        r.replica, r.replica_certificate_serial, r.replica_certificate_warning
                    );
                }
                // Start-up certificates retired after their renewal are
                // routine: counted, not listed.
                let retired = r
                    .revocations
                    .iter()
                    .filter(|v| v.reason.starts_with(RETIRED))
                    .count();
                if retired > 0 {
                    warnings += &format!(
                        "\n{retired} start-up certificate(s) retired after renewal (-o json lists them)"
                    );
                }
                for v in r
                    .revocations
                    .iter()
                    .filter(|v| !v.reason.starts_with(RETIRED))
                {
                    let which = if v.serial.is_empty() {
                        format!("{} {} (issued until {})", v.role, v.name, v.issued_until)
                    } else {
                        format!("serial {}", v.serial)
                    };
                    warnings += &format!(
                        "\nrevoked: {which} by {} at {}: {}",
                        v.author, v.time, v.reason
                    );
                }
                for b in &r.blocked {
                    warnings += &format!(
                        "\n{}: removed and blocked by {} at {}{}",
                        b.node,
                        b.author,
                        b.time,
                        if b.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", b.reason)
                        }
                    );
                }
                if r.roles_unbound {
                    warnings += "\nroles: no role binding exists yet, so every operator \
                                 certificate holds every role; bind an admin (see the \
                                 governance guide)";
                }
                for g in &r.break_glass {
                    warnings += &format!(
                        "\nbreak-glass {} ({}): {} -> {} {} by {} until {}; review {}",
                        g.id,
                        g.state,
                        g.from.join(","),
                        g.to.join(","),
                        if g.ports.is_empty() {
                            "all ports".to_owned()
                        } else {
                            g.ports.join(",")
                        },
                        g.opened_by,
                        g.expires,
                        if !g.reviewed_by.is_empty() {
                            format!("signed off by {}", g.reviewed_by)
                        } else if g.review_overdue {
                            format!("OVERDUE since {}", g.review_due)
                        } else {
                            format!("due by {}", g.review_due)
                        }
                    );
                }
                for q in &r.quarantines {
                    warnings += &format!(
                        "\nQUARANTINED {} ({}): {} by {} at {}, keeps {}: {}",
                        q.target,
                        q.id,
                        q.addresses.join(","),
                        q.by,
                        q.at,
                        if q.keep.is_empty() {
                            "nothing"
                        } else {
                            &q.keep
                        },
                        q.reason
                    );
                }
                for g in &r.vendor_grants {
                    warnings += &format!(
                        "\nvendor {} ({} {}): {} -> {} {} from {} until {}, ticket {}",
                        g.vendor,
                        g.id,
                        g.state,
                        g.source,
                        g.to,
                        g.ports.join(","),
                        g.from,
                        g.until,
                        g.ticket
                    );
                }
                for c in &r.open_changes {
                    warnings += &format!(
                        "\nchange request {} by {} waits for approval ({} on revision {}): {}",
                        c.id, c.author, c.state, c.base_revision, c.message
                    );
                }
                let caller = if r.caller.is_empty() {
                    String::new()
                } else {
                    let session = if !r.mfa_required {
                        String::new()
                    } else if r.caller_session_expires.is_empty() {
                        "; no session: `wardctl login` before a change".to_owned()
                    } else {
                        format!("; session until {}", r.caller_session_expires)
                    };
                    format!(
                        "you are {} ({}){session}\n",
                        r.caller,
                        if r.caller_roles.is_empty() {
                            "no role".to_owned()
                        } else {
                            r.caller_roles.join(", ")
                        }
                    )
                };
                format!(
                    "revision {} (policy sha256 {}), answered by {}\n{caller}{}{warnings}",
                    r.revision,
                    r.policy_sha256,
                    r.replica,
                    table(
                        &[
                            "NODE",
                            "ADMISSION",
                            "CONNECTED",
                            "ACKED",
                            "STATE",
                            "LAST HEARTBEAT",
                            "REPLICA",
                            "CERTIFICATE EXPIRES",
                            "ERROR"
                        ],
                        &rows
                    )
                )
            });
            if check && r.agents.iter().any(|a| !a.connected || a.behind) {
                return Err(fail(EXIT_UNHEALTHY, "an agent is disconnected or behind"));
            }
        }
    }
    Ok(())
}

/// The filter flags as the request carries them.
fn observe_request(f: FlowFilter) -> v1::ObserveRequest {
    v1::ObserveRequest {
        since: f.since.unwrap_or_default(),
        until: f.until.unwrap_or_default(),
        node: f.node.unwrap_or_default(),
        from: f.from.unwrap_or_default(),
        to: f.to.unwrap_or_default(),
        port: f.port.map_or(0, u32::from),
        protocol: f.protocol.unwrap_or_default(),
        verdict: f.verdict.unwrap_or_default(),
        reason: f.reason.unwrap_or_default(),
        policy: f.policy.unwrap_or_default(),
        last: 0,
        follow: false,
    }
}
