//! `wardctl report`: the evidence for auditors over a time range, as one
//! self-contained HTML page (`wardline-report`) and, with `--pdf`, printed
//! by headless Chromium. Everything is read over the management API with
//! this operator's certificate (an auditor's is enough); attestations are
//! checked here against the site CA, not taken on the replica's word.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_proto::v1;
use wardline_report::{Evidence, Map, NodeEvidence};

use crate::connect::{Client, Connection};
use crate::failure::{EXIT_FAILURE, Failure, fail, from_status};

/// A time as `--since` and `--until` take it: RFC 3339, or a duration back
/// from `now`; empty is `now`.
fn instant(field: &str, text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, Failure> {
    if text.is_empty() {
        return Ok(now);
    }
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    humantime::parse_duration(text)
        .ok()
        .and_then(|d| time::Duration::try_from(d).ok())
        .map(|d| now - d)
        .ok_or_else(|| {
            fail(
                EXIT_FAILURE,
                format!(
                    "--{field} {text:?}: give an RFC 3339 time or a duration back from now (30d)"
                ),
            )
        })
}

fn time_of(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn within(text: &str, since: OffsetDateTime, until: OffsetDateTime) -> bool {
    time_of(text).is_some_and(|t| t >= since && t <= until)
}

/// Whole seconds: what a reader of the report needs.
fn format(t: OffsetDateTime) -> String {
    wardline_proto::convert::format_time(t.replace_nanosecond(0).unwrap_or(t))
}

/// Gathers the evidence of `since` to `until`.
async fn gather(
    c: &mut Client,
    connection: &Connection,
    since: OffsetDateTime,
    until: OffsetDateTime,
) -> Result<Evidence, Failure> {
    let status = c
        .status(v1::StatusRequest {})
        .await
        .map_err(from_status)?
        .into_inner();
    let mut history = c
        .history(v1::HistoryRequest { limit: 0 })
        .await
        .map_err(from_status)?
        .into_inner()
        .revisions;
    history.sort_by_key(|r| r.revision);
    let (chain_revisions, chain_head, chain_error) =
        match c.verify_history(v1::VerifyHistoryRequest {}).await {
            Ok(r) => {
                let r = r.into_inner();
                (r.revisions, r.head_sha256, None)
            }
            Err(e) => (0, String::new(), Some(e.message().to_owned())),
        };
    let in_force = history
        .iter()
        .rev()
        .find(|r| time_of(&r.time).is_some_and(|t| t <= until))
        .map_or(0, |r| r.revision);
    let documents = if in_force == 0 {
        Vec::new()
    } else {
        c.get(v1::GetRequest {
            kind: String::new(),
            name: String::new(),
            revision: in_force,
        })
        .await
        .map_err(from_status)?
        .into_inner()
        .documents
    };
    let changes = history
        .into_iter()
        .filter(|r| within(&r.time, since, until))
        .collect();
    let requests = c
        .list_changes(v1::ListChangesRequest::default())
        .await
        .map_err(from_status)?
        .into_inner()
        .changes
        .into_iter()
        .filter(|r| within(&r.created, since, until) || within(&r.decided_at, since, until))
        .collect();
    let break_glass = c
        .list_break_glass(v1::ListBreakGlassRequest {})
        .await
        .map_err(from_status)?
        .into_inner()
        .grants
        .into_iter()
        .filter(|g| {
            within(&g.opened_at, since, until)
                || within(&g.expires, since, until)
                || (g.reviewed_by.is_empty() && time_of(&g.opened_at).is_some_and(|t| t <= until))
        })
        .collect();
    let mut vendor_grants = Vec::new();
    for g in c
        .list_vendor_grants(v1::ListVendorGrantsRequest::default())
        .await
        .map_err(from_status)?
        .into_inner()
        .grants
    {
        let (Some(from), Some(to)) = (time_of(&g.from), time_of(&g.until)) else {
            continue;
        };
        if to < since || from > until {
            continue;
        }
        let flows = crate::flows::records(c, grant_window(&g)).await?;
        vendor_grants.push((g, flows));
    }
    let quarantines = c
        .list_quarantines(v1::ListQuarantinesRequest {})
        .await
        .map_err(from_status)?
        .into_inner()
        .quarantines
        .into_iter()
        .filter(|q| {
            within(&q.at, since, until)
                || within(&q.released_at, since, until)
                || (q.released_by.is_empty() && time_of(&q.at).is_some_and(|t| t <= until))
        })
        .collect();
    let verifier = wardline_signing::Verifier::from_ca_file(&connection.ca)
        .map_err(|e| fail(EXIT_FAILURE, e.to_string()))?;
    let mut nodes = Vec::new();
    for a in &status.agents {
        let attested = match c
            .attested(v1::AttestedRequest {
                node: a.node.clone(),
                at: format(until),
            })
            .await
        {
            Ok(r) => match r.into_inner().attestation {
                Some(att) => {
                    crate::governance::checked(&verifier, &a.node, &att).map_err(|f| f.message)
                }
                None => Err("no attestation".to_owned()),
            },
            Err(e) => Err(e.message().to_owned()),
        };
        nodes.push(NodeEvidence {
            node: a.node.clone(),
            attested,
        });
    }
    let range = v1::ObserveRequest {
        since: format(since),
        until: format(until),
        ..Default::default()
    };
    let matrix = c
        .flow_matrix(range.clone())
        .await
        .map_err(from_status)?
        .into_inner();
    let top_dropped = c
        .top_flows(v1::TopRequest {
            filter: Some(v1::ObserveRequest {
                verdict: "dropped".into(),
                ..range
            }),
            by: "sources".into(),
            limit: 10,
        })
        .await
        .map_err(from_status)?
        .into_inner();
    let inventory = c
        .inventory(v1::InventoryRequest {
            since: format(since),
            ..Default::default()
        })
        .await
        .map_err(from_status)?
        .into_inner();
    Ok(Evidence {
        site: status.replica.clone(),
        generated: format(OffsetDateTime::now_utc()),
        generated_by: status.caller.clone(),
        since: format(since),
        until: format(until),
        revision: in_force,
        map: map_of(&documents),
        documents,
        chain_revisions,
        chain_head,
        chain_error,
        changes,
        requests,
        break_glass,
        vendor_grants,
        quarantines,
        nodes,
        matrix,
        top_dropped,
        inventory,
    })
}

/// The segments and the allows between them, from the documents.
fn map_of(documents: &[v1::Document]) -> Map {
    let source: String = documents
        .iter()
        .filter(|d| d.kind == "Segment" || d.kind == "Policy")
        .map(|d| format!("---\n{}", d.yaml))
        .collect();
    let Ok(set) = wardline_policy::parse(&source) else {
        return Map::default();
    };
    let name = |p: &wardline_policy::Peer| match p {
        wardline_policy::Peer::Segment(s) => Some(s.clone()),
        _ => None,
    };
    Map {
        segments: set
            .segments
            .iter()
            .map(|s| {
                let mode = match s.mode {
                    wardline_policy::Mode::Monitor => "monitor",
                    wardline_policy::Mode::Enforce => "enforce",
                };
                (s.name.clone(), mode.to_owned())
            })
            .collect(),
        allows: set
            .policies
            .iter()
            .filter(|p| p.action == wardline_policy::Action::Allow)
            .flat_map(|p| {
                p.from.iter().filter_map(name).flat_map(move |f| {
                    p.to.iter()
                        .filter_map(name)
                        .map(move |t| (f.clone(), t, p.name.clone()))
                })
            })
            .collect(),
    }
}

/// Prints `html` to `pdf` with headless Chromium.
fn print_pdf(chromium: &Path, html: &Path, pdf: &Path) -> Result<(), Failure> {
    if !chromium.exists() {
        return Err(fail(
            EXIT_FAILURE,
            format!(
                "{} is missing: install Debian's chromium, or give --chromium",
                chromium.display()
            ),
        ));
    }
    let html = std::fs::canonicalize(html)
        .map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", html.display())))?;
    let profile = std::env::temp_dir().join(format!("wardctl-report-{}", std::process::id()));
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--no-pdf-header-footer",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", chromium.display())))?;
    let _ = std::fs::remove_dir_all(&profile);
    let written = std::fs::read(pdf).unwrap_or_default();
    if !out.status.success() || !written.starts_with(b"%PDF") {
        return Err(fail(
            EXIT_FAILURE,
            format!(
                "Chromium did not print {}: {}",
                pdf.display(),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    Ok(())
}

pub async fn run(
    c: &mut Client,
    connection: &Connection,
    since: &str,
    until: &str,
    out: &Path,
    pdf: Option<PathBuf>,
    chromium: &Path,
) -> Result<(), Failure> {
    let now = OffsetDateTime::now_utc();
    let (since, until) = (instant("since", since, now)?, instant("until", until, now)?);
    if since >= until {
        return Err(fail(
            EXIT_FAILURE,
            format!(
                "--since {} is not before --until {}",
                format(since),
                format(until)
            ),
        ));
    }
    let evidence = gather(c, connection, since, until).await?;
    let page = wardline_report::html(&evidence);
    std::fs::write(out, &page)
        .map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", out.display())))?;
    println!(
        "report of {} to {} written to {} ({} bytes)",
        evidence.since,
        evidence.until,
        out.display(),
        page.len()
    );
    if let Some(pdf) = pdf {
        print_pdf(chromium, out, &pdf)?;
        println!("printed to {}", pdf.display());
    }
    Ok(())
}

/// The records of a vendor grant's window that its policy decided.
pub(crate) fn grant_window(g: &v1::VendorAccess) -> v1::ObserveRequest {
    v1::ObserveRequest {
        since: g.from.clone(),
        until: g.until.clone(),
        policy: g.policy.clone(),
        ..Default::default()
    }
}
