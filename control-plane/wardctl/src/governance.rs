//! `wardctl mfa`, `login`, `propose`, `changes`, `approve`, `reject`,
//! `break-glass` and `review`: the second factor, two-person changes and
//! emergency access (docs/governance.md).

use std::io::{BufRead as _, Write as _};

use serde_json::json;
use wardline_proto::json::{break_glass, change_request};
use wardline_proto::v1;

use crate::cli::{GovernanceCommand, MfaCommand};
use crate::connect::{Client, Connection, write_session};
use crate::failure::{EXIT_FAILURE, EXIT_TAMPERED, Failure, fail, from_status, read_file};
use crate::remote::print_value;
use crate::table::table;

/// A line from standard input, after `prompt` on standard error.
fn ask(prompt: &str) -> Result<String, Failure> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| fail(EXIT_FAILURE, format!("reading the code: {e}")))?;
    if read == 0 {
        return Err(fail(EXIT_FAILURE, "no code given (standard input ended)"));
    }
    Ok(line.trim().to_owned())
}

/// The QR code of `text`, in the terminal's block characters.
fn qr(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .quiet_zone(true)
            .build(),
        Err(e) => format!("(no QR code: {e})"),
    }
}

fn request_text(c: &v1::ChangeRequest) -> String {
    let mut out = format!(
        "change request {} ({})\nproposed by {} at {}, on revision {}\nsha256 {}\n",
        c.id, c.state, c.author, c.created, c.base_revision, c.sha256
    );
    if !c.message.is_empty() {
        out += &format!("message: {}\n", c.message);
    }
    if c.needs_approval.is_empty() {
        out += "needs approval: no (filed to be seen)\n";
    } else {
        out += "needs approval:\n";
        for r in &c.needs_approval {
            out += &format!("  - {r}\n");
        }
    }
    if !c.would_drop.is_empty() {
        out += "observed connections of the last 7 days it would stop:\n";
        for d in &c.would_drop {
            out += &format!(
                "  {} -> {} {}/{}: {} connection(s), last {}\n",
                d.src_segment, d.dst_segment, d.protocol, d.port, d.connections, d.last_seen
            );
        }
    }
    if !c.decided_by.is_empty() {
        out += &format!(
            "{} by {} at {}{}\n",
            c.state,
            c.decided_by,
            c.decided_at,
            if c.decision_note.is_empty() {
                String::new()
            } else {
                format!(": {}", c.decision_note)
            }
        );
    }
    if c.applied_revision != 0 {
        out += &format!("applied as revision {}\n", c.applied_revision);
    }
    out += &format!("\n{}", c.diff);
    out
}

fn grant_text(g: &v1::BreakGlassGrant) -> String {
    format!(
        "break-glass grant {} ({}), opened by {} at {}\nfrom {} to {} ports {}\nuntil {} (policy {}, revision {})\nreason: {}\nreview: {}\n",
        g.id,
        g.state,
        g.opened_by,
        g.opened_at,
        g.from.join(","),
        g.to.join(","),
        if g.ports.is_empty() {
            "all".to_owned()
        } else {
            g.ports.join(",")
        },
        g.expires,
        g.policy,
        g.revision,
        g.reason,
        if g.reviewed_by.is_empty() {
            format!(
                "due by {}{}",
                g.review_due,
                if g.review_overdue { " (OVERDUE)" } else { "" }
            )
        } else {
            format!(
                "signed off by {} at {}: {}",
                g.reviewed_by, g.reviewed_at, g.review_note
            )
        }
    )
}

/// The statement of `a`, once its signature checks out here: by the
/// agent of `node`, with a certificate of the site CA valid when signed.
pub(crate) fn checked(
    verifier: &wardline_signing::Verifier,
    node: &str,
    a: &v1::Attestation,
) -> Result<v1::AttestationStatement, Failure> {
    use prost::Message as _;
    let tampered = |why: String| {
        fail(
            EXIT_TAMPERED,
            format!("the attestation fails verification: {why}"),
        )
    };
    let statement = v1::AttestationStatement::decode(a.statement.as_slice())
        .map_err(|e| tampered(e.to_string()))?;
    let time = time::OffsetDateTime::parse(
        &statement.time,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|e| tampered(format!("its time: {e}")))?;
    let seal = wardline_signing::Seal {
        scheme: u16::try_from(a.scheme).map_err(|_| tampered("its scheme".into()))?,
        signature: a.signature.clone(),
        signer: a.signer.clone(),
    };
    let at = rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        time.unix_timestamp().max(0) as u64,
    ));
    let signer = verifier
        .verify_agent(&a.statement, &seal, at)
        .map_err(|e| tampered(e.to_string()))?;
    if signer.name != node || statement.node != node {
        return Err(tampered(format!(
            "it is about {:?}, signed by {signer}, not node {node:?}",
            statement.node
        )));
    }
    Ok(statement)
}

pub async fn run(
    command: GovernanceCommand,
    c: &mut Client,
    connection: &Connection,
) -> Result<(), Failure> {
    match command {
        GovernanceCommand::Mfa(MfaCommand::Enroll) => {
            let r = c
                .mfa_enroll(v1::MfaEnrollRequest {})
                .await
                .map_err(from_status)?
                .into_inner();
            println!(
                "Scan this with an authenticator app{}:\n\n{}\n",
                if r.replaces {
                    " (it replaces your second factor once confirmed)"
                } else {
                    ""
                },
                qr(&r.uri)
            );
            println!("or enter the secret by hand: {}", r.secret);
            println!("uri: {}", r.uri);
            let code = ask("Code the app shows now: ")?;
            c.mfa_confirm(v1::MfaConfirmRequest { code })
                .await
                .map_err(from_status)?;
            println!("second factor enrolled: run `wardctl login` before a change");
        }
        GovernanceCommand::Mfa(MfaCommand::Reset { operator, reason }) => {
            let r = c
                .mfa_reset(v1::MfaResetRequest {
                    operator: operator.clone(),
                    reason,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            println!(
                "second factor of {operator:?} forgotten, {} session(s) ended: they enrol again",
                r.sessions
            );
        }
        GovernanceCommand::Login { code } => {
            let code = match code {
                Some(code) => code,
                None => ask("Code from your authenticator app: ")?,
            };
            let r = c
                .login(v1::LoginRequest { code })
                .await
                .map_err(from_status)?
                .into_inner();
            write_session(&connection.session, &r.token)?;
            println!("session until {}", r.expires);
        }
        GovernanceCommand::Logout => {
            c.logout(v1::LogoutRequest {}).await.map_err(from_status)?;
            let _ = std::fs::remove_file(&connection.session);
            println!("session ended");
        }
        GovernanceCommand::Propose {
            file,
            prune,
            delete,
            message,
            output,
        } => {
            let mut req = v1::ProposeRequest {
                prune,
                message,
                ..Default::default()
            };
            match (file, delete) {
                (Some(file), None) => req.source = read_file(&file)?,
                (None, Some(what)) => {
                    let Some((kind, name)) = what.split_once('/') else {
                        return Err(fail(
                            EXIT_FAILURE,
                            format!("--delete {what:?}: give KIND/NAME, e.g. policy/ws-to-ehr"),
                        ));
                    };
                    req.delete_kind = kind.to_owned();
                    req.delete_name = name.to_owned();
                }
                _ => unreachable!("clap requires one of the two"),
            }
            let r = c.propose(req).await.map_err(from_status)?.into_inner();
            print_value(output, &change_request(&r), || {
                format!(
                    "{}\nan approver runs: wardctl approve {}\n",
                    request_text(&r),
                    r.id
                )
            });
        }
        GovernanceCommand::Changes { id, state, output } => {
            let r = c
                .list_changes(v1::ListChangesRequest {
                    id: id.clone().unwrap_or_default(),
                    state: state.unwrap_or_default(),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let value = json!(r.changes.iter().map(change_request).collect::<Vec<_>>());
            print_value(output, &value, || {
                if id.is_some() {
                    return r.changes.iter().map(request_text).collect();
                }
                let rows: Vec<Vec<String>> = r
                    .changes
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            c.state.clone(),
                            c.author.clone(),
                            c.base_revision.to_string(),
                            c.created.clone(),
                            if c.needs_approval.is_empty() {
                                "no".to_owned()
                            } else {
                                "yes".to_owned()
                            },
                            c.message.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ID", "STATE", "AUTHOR", "BASE", "CREATED", "NEEDS", "MESSAGE",
                    ],
                    &rows,
                )
            });
        }
        GovernanceCommand::Approve { id, note } => {
            // Approve exactly what is shown here: the hash goes with it.
            let shown = c
                .list_changes(v1::ListChangesRequest {
                    id: id.clone(),
                    state: String::new(),
                })
                .await
                .map_err(from_status)?
                .into_inner()
                .changes
                .into_iter()
                .next()
                .ok_or_else(|| fail(EXIT_FAILURE, format!("no change request {id:?}")))?;
            print!("{}", request_text(&shown));
            let r = c
                .approve(v1::DecideRequest {
                    id,
                    sha256: shown.sha256,
                    note,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            println!("approved: applied as revision {}", r.revision);
        }
        GovernanceCommand::Reject { id, note } => {
            let r = c
                .reject(v1::DecideRequest {
                    id,
                    sha256: String::new(),
                    note,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            println!("change request {} rejected", r.id);
        }
        GovernanceCommand::BreakGlass {
            from,
            to,
            ports,
            duration,
            reason,
            output,
        } => {
            let r = c
                .break_glass(v1::BreakGlassRequest {
                    from,
                    to,
                    ports,
                    seconds: duration.as_secs(),
                    reason,
                })
                .await
                .map_err(from_status)?
                .into_inner();
            print_value(output, &break_glass(&r), || grant_text(&r));
        }
        GovernanceCommand::Attest { node, at, output } => {
            let r = c
                .attested(v1::AttestedRequest {
                    node: node.clone(),
                    at: at.clone(),
                })
                .await
                .map_err(from_status)?
                .into_inner();
            let verifier = wardline_signing::Verifier::from_ca_file(&connection.ca)
                .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?;
            let a = r
                .attestation
                .ok_or_else(|| fail(EXIT_FAILURE, "the control plane sent no attestation"))?;
            let statement = checked(&verifier, &node, &a)?;
            let next = match &r.next {
                Some(n) => Some(checked(&verifier, &node, n)?),
                None => None,
            };
            let value = json!({
                "node": statement.node, "revision": statement.revision,
                "generation": statement.generation, "tablesSha256": statement.tables_sha256,
                "policySha256": statement.policy_sha256, "time": statement.time,
                "why": statement.why, "verified": true,
                "next": next.as_ref().map(|n| json!({"revision": n.revision, "time": n.time, "why": n.why, "tablesSha256": n.tables_sha256})),
                "kept": r.kept,
            });
            print_value(output, &value, || {
                format!(
                    "node {} enforced revision {} (generation {}): tables sha256 {}, policy sha256 {}\nattested {} at {}, signed by the node's own certificate: verified here against the site CA\n{}",
                    statement.node,
                    statement.revision,
                    statement.generation,
                    statement.tables_sha256,
                    statement.policy_sha256,
                    statement.why,
                    statement.time,
                    match &next {
                        Some(n) => format!(
                            "next attestation: revision {} ({}) at {}
",
                            n.revision, n.why, n.time
                        ),
                        None => "no later attestation yet
"
                        .to_owned(),
                    }
                )
            });
        }
        GovernanceCommand::Report {
            since,
            until,
            out,
            pdf,
            chromium,
        } => {
            crate::report::run(c, connection, &since, &until, &out, pdf, &chromium).await?;
        }
        GovernanceCommand::Review { id, note } => {
            let r = c
                .review_break_glass(v1::ReviewRequest { id, note })
                .await
                .map_err(from_status)?
                .into_inner();
            print!("{}", grant_text(&r));
        }
    }
    Ok(())
}
