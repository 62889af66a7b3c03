//! The evidence report (`wardctl report`, `docs/governance.md`): what the
//! control plane and every agent can show an auditor for a time range, as
//! one self-contained HTML page (no script, no file or font from
//! anywhere else, styles inline), printable to PDF.
//!
//! Each section names the requirement it evidences: the HIPAA Security
//! Rule's technical safeguards (45 CFR §164.312) and administrative ones
//! (§164.308), and the HHS 405(d) Health Industry Cybersecurity Practices
//! (HICP) for asset management (practice 5) and network management
//! (practice 6, segmentation).
//!
//! Every value from the site goes in as escaped text: a segment name or a
//! reason cannot become markup.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use wardline_proto::v1;

/// An agent's attestation as the report shows it: checked on the side
/// that made the report, or why it failed.
#[derive(Clone, Debug)]
pub struct NodeEvidence {
    pub node: String,
    pub attested: Result<v1::AttestationStatement, String>,
}

/// One segment and the allows between segments, for the map.
#[derive(Clone, Debug, Default)]
pub struct Map {
    pub segments: Vec<(String, String)>,
    /// (from, to, policy): allows between named segments.
    pub allows: Vec<(String, String, String)>,
}

/// Everything one report shows.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    pub site: String,
    pub generated: String,
    pub generated_by: String,
    pub since: String,
    pub until: String,
    /// The revision in force at `until` and its documents.
    pub revision: u64,
    pub documents: Vec<v1::Document>,
    /// The history chain checked end to end: its revisions and head, or
    /// why it failed.
    pub chain_revisions: u64,
    pub chain_head: String,
    pub chain_error: Option<String>,
    /// Revisions made within the range, oldest first.
    pub changes: Vec<v1::RevisionInfo>,
    /// Change requests decided or filed within the range.
    pub requests: Vec<v1::ChangeRequest>,
    pub break_glass: Vec<v1::BreakGlassGrant>,
    /// Vendor grants of the range, each with the flow records its policy
    /// decided during its window.
    pub vendor_grants: Vec<(v1::VendorAccess, Vec<v1::Flow>)>,
    /// Quarantines of the range.
    pub quarantines: Vec<v1::QuarantineRecord>,
    pub nodes: Vec<NodeEvidence>,
    pub matrix: v1::FlowMatrixResponse,
    pub top_dropped: v1::TopResponse,
    pub inventory: v1::InventoryResponse,
    pub map: Map,
}

/// Text as HTML text or attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:13px/1.45 'DejaVu Sans',Arial,sans-serif;color:#1b2733;margin:24px 32px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 6px;border-bottom:2px solid #2b6cb0;padding-bottom:3px}
.req{font-size:11px;color:#2b6cb0;margin:0 0 8px} .meta{color:#4a5568}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:12px}
th,td{border:1px solid #cbd5e0;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#edf2f7} td.num{text-align:right} .bad{color:#c53030;font-weight:bold} .good{color:#2f855a;font-weight:bold}
code,pre{font:11px 'DejaVu Sans Mono',monospace} pre{background:#f7fafc;border:1px solid #e2e8f0;padding:6px;white-space:pre-wrap}
section{page-break-inside:auto} .summary td{border:none;padding:1px 12px 1px 0}
";

/// A table of text cells; the columns in `markup` hold markup made here
/// (from escaped values), every other cell is escaped.
fn table(out: &mut String, id: &str, head: &[&str], rows: &[Vec<String>]) {
    table_with(out, id, head, rows, &[]);
}

fn table_with(out: &mut String, id: &str, head: &[&str], rows: &[Vec<String>], markup: &[usize]) {
    if rows.is_empty() {
        let _ = write!(out, "<p class=\"meta\" id=\"{id}\">None in this range.</p>");
        return;
    }
    let _ = write!(out, "<table id=\"{id}\"><tr>");
    for h in head {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>");
    for r in rows {
        out.push_str("<tr>");
        for (i, cell) in r.iter().enumerate() {
            if markup.contains(&i) {
                let _ = write!(out, "<td>{cell}</td>");
            } else {
                let _ = write!(out, "<td>{}</td>", escape(cell));
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn section(out: &mut String, id: &str, title: &str, requirement: &str) {
    let _ = write!(
        out,
        "<section id=\"{id}\"><h2>{}</h2><p class=\"req\">Evidences: {}</p>",
        escape(title),
        escape(requirement)
    );
}

/// The segment map: segments on a circle, an arrow per allow between
/// two of them.
fn map_svg(map: &Map) -> String {
    let n = map.segments.len().max(1) as f64;
    let (w, h, r) = (760.0, 420.0, 160.0);
    let (cx, cy) = (w / 2.0, h / 2.0);
    let at: BTreeMap<&str, (f64, f64)> = map
        .segments
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let a = std::f64::consts::TAU * i as f64 / n - std::f64::consts::FRAC_PI_2;
            (name.as_str(), (cx + r * a.cos(), cy + r * a.sin()))
        })
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"segment-map\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0L10,5L0,10z\" fill=\"#2b6cb0\"/></marker></defs>"
    );
    for (from, to, _) in &map.allows {
        if let (Some(a), Some(b)) = (at.get(from.as_str()), at.get(to.as_str())) {
            // Stop short of the box.
            let (dx, dy) = (b.0 - a.0, b.1 - a.1);
            let len = (dx * dx + dy * dy).sqrt().max(1.0);
            let (ex, ey) = (b.0 - dx / len * 34.0, b.1 - dy / len * 16.0);
            let _ = write!(
                svg,
                "<line x1=\"{:.0}\" y1=\"{:.0}\" x2=\"{ex:.0}\" y2=\"{ey:.0}\" stroke=\"#2b6cb0\" stroke-width=\"1.5\" marker-end=\"url(#arrow)\"/>",
                a.0, a.1
            );
        }
    }
    for (name, mode) in &map.segments {
        let (x, y) = at[name.as_str()];
        let fill = if mode == "monitor" {
            "#fefcbf"
        } else {
            "#ebf8ff"
        };
        let _ = write!(
            svg,
            "<rect x=\"{:.0}\" y=\"{:.0}\" width=\"120\" height=\"30\" rx=\"6\" fill=\"{fill}\" stroke=\"#2c5282\"/>\
             <text x=\"{x:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-size=\"12\">{}</text>",
            x - 60.0,
            y - 15.0,
            y + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn kind_rows(e: &Evidence, kinds: &[&str]) -> Vec<Vec<String>> {
    e.documents
        .iter()
        .filter(|d| kinds.contains(&d.kind.as_str()))
        .map(|d| {
            vec![
                d.kind.clone(),
                d.name.clone(),
                format!("<pre>{}</pre>", escape(&d.yaml)),
            ]
        })
        .collect()
}

/// The whole report.
pub fn html(e: &Evidence) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Wardline evidence report: {}</title><style>{STYLE}</style></head><body>",
        escape(&e.site)
    );
    let _ = write!(
        out,
        "<h1>Wardline evidence report</h1><p class=\"meta\">Answered by control-plane replica {} · from {} to {} · generated {} by operator {}</p>",
        escape(&e.site),
        escape(&e.since),
        escape(&e.until),
        escape(&e.generated),
        escape(&e.generated_by)
    );
    let chain = match &e.chain_error {
        None => format!(
            "<span class=\"good\">verified</span>: {} revisions, head sha256 <code>{}</code>",
            e.chain_revisions,
            escape(&e.chain_head)
        ),
        Some(why) => format!("<span class=\"bad\">FAILED</span>: {}", escape(why)),
    };
    let attested = e.nodes.iter().filter(|n| n.attested.is_ok()).count();
    let overdue = e.break_glass.iter().filter(|g| g.review_overdue).count();
    let _ = write!(
        out,
        "<table class=\"summary\" id=\"summary\"><tr><td>Policy in force at the end</td><td>revision {}</td></tr>\
         <tr><td>Revision history chain</td><td>{chain}</td></tr>\
         <tr><td>Changes in range</td><td>{} ({} approved by a second person, {} break-glass)</td></tr>\
         <tr><td>Enforcement points attested</td><td>{attested} of {}</td></tr>\
         <tr><td>Break-glass grants</td><td>{} ({overdue} reviews overdue)</td></tr>\
         <tr><td>Connections seen</td><td>{}</td></tr></table>",
        e.revision,
        e.changes.len(),
        e.changes
            .iter()
            .filter(|c| !c.approved_by.is_empty())
            .count(),
        e.changes
            .iter()
            .filter(|c| !c.break_glass.is_empty())
            .count(),
        e.nodes.len(),
        e.break_glass.len(),
        e.matrix.flows
    );

    section(
        &mut out,
        "policy",
        "Segments and policies in force",
        "HIPAA §164.312(a)(1) access control; HICP practice 6 (network segmentation)",
    );
    table_with(
        &mut out,
        "documents",
        &["kind", "name", "document"],
        &kind_rows(e, &["Segment", "Policy"]),
        &[2],
    );
    out.push_str("</section>");

    section(
        &mut out,
        "map",
        "Map of segments",
        "HICP practice 6 (network segmentation): which segments may reach which",
    );
    out.push_str(&map_svg(&e.map));
    out.push_str("<p class=\"meta\">An arrow is an allow policy from one segment to another; yellow segments are in monitor mode.</p></section>");

    section(
        &mut out,
        "attestations",
        "What each enforcement point enforced",
        "HIPAA §164.312(b) audit controls and §164.312(c)(1) integrity: each agent's own signed statement, checked against the site CA",
    );
    let rows: Vec<Vec<String>> = e
        .nodes
        .iter()
        .map(|n| match &n.attested {
            Ok(s) => vec![
                n.node.clone(),
                s.revision.to_string(),
                s.tables_sha256.clone(),
                s.time.clone(),
                s.why.clone(),
                "<span class=\"good\">signature verified</span>".to_owned(),
            ],
            Err(why) => vec![
                n.node.clone(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                format!("<span class=\"bad\">{}</span>", escape(why)),
            ],
        })
        .collect();
    table_with(
        &mut out,
        "nodes",
        &[
            "node",
            "revision",
            "tables sha256",
            "attested at",
            "why",
            "check",
        ],
        &rows,
        &[5],
    );
    out.push_str("</section>");

    section(
        &mut out,
        "changes",
        "Changes, their authors and approvals",
        "HIPAA §164.312(b) audit controls, §164.312(d) person or entity authentication, §164.308(a)(1)(ii)(D) information system activity review",
    );
    let rows: Vec<Vec<String>> = e
        .changes
        .iter()
        .map(|c| {
            vec![
                c.revision.to_string(),
                c.time.clone(),
                c.author.clone(),
                c.author_fingerprint.chars().take(16).collect(),
                if !c.approved_by.is_empty() {
                    format!(
                        "{} ({}, {})",
                        c.approved_by, c.change_request, c.approved_at
                    )
                } else if !c.break_glass.is_empty() {
                    format!("break-glass {}", c.break_glass)
                } else {
                    "not required".to_owned()
                },
                c.action.clone(),
                c.changes
                    .iter()
                    .map(|x| format!("{} {} {}", x.action, x.kind, x.name))
                    .collect::<Vec<_>>()
                    .join(", "),
                c.message.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        "revisions",
        &[
            "revision",
            "time",
            "author",
            "certificate",
            "approved by",
            "action",
            "changes",
            "message",
        ],
        &rows,
    );
    let rows: Vec<Vec<String>> = e
        .requests
        .iter()
        .map(|r| {
            vec![
                r.id.clone(),
                r.state.clone(),
                r.author.clone(),
                r.decided_by.clone(),
                r.needs_approval.join("; "),
                r.would_drop
                    .iter()
                    .map(|d| {
                        format!(
                            "{} → {} {}/{}: {}",
                            d.src_segment, d.dst_segment, d.protocol, d.port, d.connections
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
                r.decision_note.clone(),
            ]
        })
        .collect();
    out.push_str("<p>Change requests:</p>");
    table(
        &mut out,
        "requests",
        &[
            "request",
            "state",
            "proposed by",
            "decided by",
            "why it needed approval",
            "observed flows it would stop",
            "note",
        ],
        &rows,
    );
    out.push_str("</section>");

    section(
        &mut out,
        "break-glass",
        "Break-glass grants and their reviews",
        "HIPAA §164.312(a)(2)(ii) emergency access procedure",
    );
    let rows: Vec<Vec<String>> = e
        .break_glass
        .iter()
        .map(|g| {
            vec![
                g.id.clone(),
                g.opened_by.clone(),
                g.opened_at.clone(),
                g.expires.clone(),
                format!(
                    "{} → {} {}",
                    g.from.join(","),
                    g.to.join(","),
                    if g.ports.is_empty() {
                        "all".to_owned()
                    } else {
                        g.ports.join(",")
                    }
                ),
                g.reason.clone(),
                if g.reviewed_by.is_empty() {
                    if g.review_overdue {
                        format!("OVERDUE since {}", g.review_due)
                    } else {
                        format!("due by {}", g.review_due)
                    }
                } else {
                    format!(
                        "signed off by {} at {}: {}",
                        g.reviewed_by, g.reviewed_at, g.review_note
                    )
                },
            ]
        })
        .collect();
    table(
        &mut out,
        "grants",
        &[
            "grant",
            "opened by",
            "opened",
            "until",
            "access",
            "reason",
            "review",
        ],
        &rows,
    );
    out.push_str("</section>");

    section(
        &mut out,
        "vendors",
        "Vendor access windows and what each vendor did",
        "HIPAA §164.308(b)(1) business associate contracts, §164.312(a)(1) access control, §164.312(b) audit controls",
    );
    let rows: Vec<Vec<String>> = e
        .vendor_grants
        .iter()
        .map(|(g, flows)| {
            let dropped = flows.iter().filter(|f| f.verdict == "dropped").count();
            let mut peers: Vec<String> = flows
                .iter()
                .filter(|f| f.kind == "new")
                .map(|f| {
                    format!(
                        "{} → {}/{}",
                        wardline_proto::json::address(&f.src),
                        wardline_proto::json::address(&f.dst),
                        f.dport
                    )
                })
                .collect();
            peers.sort();
            peers.dedup();
            vec![
                g.id.clone(),
                g.vendor.clone(),
                format!("{} → {} {}", g.source, g.to, g.ports.join(",")),
                format!("{} to {}", g.from, g.until),
                g.ticket.clone(),
                g.granted_by.clone(),
                g.baa_expires.clone(),
                format!(
                    "{} records ({dropped} dropped): {}",
                    flows.len(),
                    if peers.is_empty() {
                        "no connection".to_owned()
                    } else {
                        peers.join("; ")
                    }
                ),
            ]
        })
        .collect();
    table(
        &mut out,
        "vendor-grants",
        &[
            "grant",
            "vendor",
            "access",
            "window",
            "ticket",
            "granted by",
            "BAA ends",
            "flows during the grant",
        ],
        &rows,
    );
    out.push_str("</section>");

    section(
        &mut out,
        "quarantines",
        "Devices quarantined and released",
        "HIPAA §164.308(a)(6)(ii) security incident response, HICP practice 8",
    );
    let rows: Vec<Vec<String>> = e
        .quarantines
        .iter()
        .map(|q| {
            vec![
                q.id.clone(),
                format!("{} [{}]", q.target, q.addresses.join(", ")),
                format!("{} at {}: {}", q.by, q.at, q.reason),
                if q.keep.is_empty() {
                    "nothing".to_owned()
                } else {
                    q.keep.clone()
                },
                if q.released_by.is_empty() {
                    "in quarantine".to_owned()
                } else {
                    format!(
                        "released by {} at {}: {}",
                        q.released_by, q.released_at, q.release_reason
                    )
                },
            ]
        })
        .collect();
    table(
        &mut out,
        "quarantine-list",
        &["quarantine", "device", "by, when, why", "kept", "state"],
        &rows,
    );
    out.push_str("</section>");

    section(
        &mut out,
        "roles",
        "Who could change what: role bindings and the change control",
        "HIPAA §164.312(a)(1) access control, §164.308(a)(4) information access management",
    );
    table_with(
        &mut out,
        "bindings",
        &["kind", "name", "document"],
        &kind_rows(e, &["RoleBinding", "Group", "ChangeControl"]),
        &[2],
    );
    out.push_str("</section>");

    section(
        &mut out,
        "flows",
        "Segment matrix and top dropped sources",
        "HIPAA §164.312(b) audit controls; HICP practice 6 (segmentation enforced, lateral movement attempts)",
    );
    let rows: Vec<Vec<String>> = e
        .matrix
        .cells
        .iter()
        .map(|c| {
            vec![
                c.src_segment.clone(),
                c.dst_segment.clone(),
                c.verdict.clone(),
                c.flows.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        "matrix",
        &["from", "to", "verdict", "connections"],
        &rows,
    );
    let rows: Vec<Vec<String>> = e
        .top_dropped
        .entries
        .iter()
        .map(|t| {
            vec![
                wardline_proto::json::address(&t.src),
                t.src_segment.clone(),
                t.connections.to_string(),
                t.destinations.to_string(),
                t.last_seen.clone(),
            ]
        })
        .collect();
    out.push_str("<p>Top sources of dropped connections:</p>");
    table(
        &mut out,
        "top-dropped",
        &[
            "source",
            "segment",
            "dropped connections",
            "destinations",
            "last seen",
        ],
        &rows,
    );
    out.push_str("</section>");

    section(
        &mut out,
        "inventory",
        "Device inventory",
        "HICP practice 5 (asset management); HIPAA §164.310(d)(1) device and media controls",
    );
    let rows: Vec<Vec<String>> = e
        .inventory
        .devices
        .iter()
        .map(|d| {
            vec![
                wardline_proto::json::address(&d.address),
                d.segment.clone(),
                d.node.clone(),
                d.first_seen.clone(),
                d.last_seen.clone(),
                d.connections.to_string(),
                d.dropped.to_string(),
                d.new_reason.clone(),
            ]
        })
        .collect();
    table(
        &mut out,
        "devices",
        &[
            "address",
            "segment",
            "node",
            "first seen",
            "last seen",
            "connections",
            "dropped",
            "new",
        ],
        &rows,
    );
    out.push_str("</section>");

    section(
        &mut out,
        "transmission",
        "Transmission security",
        "HIPAA §164.312(e)(1) transmission security",
    );
    out.push_str(
        "<p>Every call between agents, operators and the control plane in this report went over mutual TLS with certificates of the site CA; \
         each change above names the SHA-256 of the certificate it came with.</p></section>",
    );
    let segments: BTreeSet<&str> = e.map.segments.iter().map(|(n, _)| n.as_str()).collect();
    let _ = write!(
        out,
        "<p class=\"meta\">{} segments, {} documents in revision {}.</p></body></html>",
        segments.len(),
        e.documents.len(),
        e.revision
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_names_its_requirement_and_site_values_stay_text() {
        let e = Evidence {
            site: "St <Mary>".into(),
            documents: vec![v1::Document {
                kind: "Segment".into(),
                name: "<script>alert(1)</script>".into(),
                yaml: "metadata: {name: x}".into(),
            }],
            break_glass: vec![v1::BreakGlassGrant {
                id: "bg-1".into(),
                reason: "\"><img src=x onerror=alert(1)>".into(),
                review_overdue: true,
                review_due: "2026-12-01T00:00:00Z".into(),
                ..Default::default()
            }],
            vendor_grants: vec![(
                v1::VendorAccess {
                    id: "vg-1".into(),
                    ticket: "<b>CHG</b>".into(),
                    ..Default::default()
                },
                vec![],
            )],
            quarantines: vec![v1::QuarantineRecord {
                reason: "<script>x</script>".into(),
                ..Default::default()
            }],
            map: Map {
                segments: vec![
                    ("a".into(), "enforce".into()),
                    ("b<".into(), "monitor".into()),
                ],
                allows: vec![("a".into(), "b<".into(), "p".into())],
            },
            chain_error: Some("revision 3 was altered".into()),
            ..Default::default()
        };
        let page = html(&e);
        for requirement in [
            "§164.312(a)(1)",
            "§164.312(a)(2)(ii)",
            "§164.312(b)",
            "§164.312(c)(1)",
            "§164.312(d)",
            "§164.312(e)(1)",
            "HICP practice 5",
            "HICP practice 6",
            "§164.308(b)(1)",
            "§164.308(a)(6)(ii)",
        ] {
            assert!(page.contains(requirement), "{requirement}");
        }
        assert!(
            !page.contains("<script>") && !page.contains("<img") && !page.contains("<b>"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("OVERDUE since"));
        assert!(page.contains("FAILED</span>: revision 3 was altered"));
        assert!(page.contains("b&lt;</text>"));
        // Nothing fetched from anywhere.
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    }
}
