//! The management answers as JSON: one form for `wardctl -o json` and the
//! web dashboard's API, so that a script and the browser read the same
//! names. Addresses are text, protocols are names, fields are camelCase;
//! what was not seen is `null` rather than an empty string.

use serde_json::{Value, json};

use crate::convert::{ip_from_wire, mac_text, protocol_name};
use crate::v1;

/// The address 4 or 16 bytes hold, as text; the bytes in hex otherwise.
pub fn address(bytes: &[u8]) -> String {
    match ip_from_wire(bytes) {
        Some(a) => a.to_string(),
        None => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn text_or_null(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::from(s)
    }
}

/// One flow record.
pub fn flow(f: &v1::Flow) -> Value {
    json!({
        "time": f.time, "node": f.node, "kind": f.kind, "interface": f.interface,
        "direction": f.direction, "protocol": protocol_name(f.protocol),
        "src": address(&f.src), "dst": address(&f.dst),
        "sport": f.sport, "dport": f.dport, "vlan": f.vlan,
        "srcSegment": f.src_segment, "dstSegment": f.dst_segment,
        "verdict": f.verdict, "reason": f.reason,
        "policy": text_or_null(&f.policy),
        "generation": f.generation, "revision": f.revision,
        "packets": f.packets, "bytes": f.bytes, "sequence": f.sequence,
        "srcMac": mac_text(&f.src_mac), "dstMac": mac_text(&f.dst_mac),
    })
}

/// The segment matrix: connections per segment pair and verdict.
pub fn matrix(r: &v1::FlowMatrixResponse) -> Value {
    json!({
        "connections": r.flows,
        "cells": r.cells.iter().map(|m| json!({
            "srcSegment": m.src_segment, "dstSegment": m.dst_segment,
            "verdict": m.verdict, "connections": m.flows,
        })).collect::<Vec<_>>(),
    })
}

/// Top sources or talkers.
pub fn top(r: &v1::TopResponse) -> Value {
    json!({
        "records": r.flows, "partial": r.partial,
        "entries": r.entries.iter().map(|e| json!({
            "src": address(&e.src), "srcSegment": e.src_segment,
            "dst": (!e.dst.is_empty()).then(|| address(&e.dst)),
            "dstSegment": text_or_null(&e.dst_segment),
            "connections": e.connections, "packets": e.packets, "bytes": e.bytes,
            "destinations": e.destinations, "lastSeen": e.last_seen,
        })).collect::<Vec<_>>(),
    })
}

/// The device inventory.
pub fn inventory(r: &v1::InventoryResponse) -> Value {
    json!({
        "known": r.known, "refusedFull": r.refused_full,
        "devices": r.devices.iter().map(|d| json!({
            "address": address(&d.address),
            "mac": mac_text(&d.mac), "vlan": d.vlan,
            "segment": d.segment, "node": d.node,
            "firstSeen": d.first_seen, "lastSeen": d.last_seen,
            "connections": d.connections, "dropped": d.dropped,
            "peers": d.peers.iter().map(|p| address(p)).collect::<Vec<_>>(),
            "morePeers": d.more_peers,
            "ports": d.ports.iter().map(|p| json!({
                "protocol": protocol_name(p.protocol),
                "port": p.port, "serves": p.serves,
            })).collect::<Vec<_>>(),
            "morePorts": d.more_ports,
            "new": (!d.new_reason.is_empty()).then(|| json!({"reason": d.new_reason, "at": d.new_at})),
        })).collect::<Vec<_>>(),
    })
}

/// The current revision and every agent's state.
pub fn status(r: &v1::StatusResponse) -> Value {
    json!({
        "revision": r.revision, "policySha256": r.policy_sha256, "replica": r.replica,
        "agents": r.agents.iter().map(|a| json!({
            "node": a.node, "connected": a.connected, "ackedRevision": a.acked_revision,
            "behind": a.behind, "lastHeartbeat": a.last_heartbeat, "generation": a.generation,
            "addresses": a.addresses, "labels": a.labels, "replica": a.replica, "error": a.error,
            "admission": a.admission, "approval": a.approval_name,
            "refusedAddresses": a.refused_addresses, "reportedLabels": a.reported_labels,
            "leftOut": a.left_out,
            "certificate": {
                "serial": a.certificate_serial, "notBefore": a.certificate_not_before,
                "notAfter": a.certificate_not_after, "warning": a.certificate_warning,
            },
        })).collect::<Vec<_>>(),
        "replicaCertificate": {
            "serial": r.replica_certificate_serial, "notAfter": r.replica_certificate_not_after,
            "warning": r.replica_certificate_warning,
        },
        "revocations": r.revocations.iter().map(|v| json!({
            "serial": v.serial, "role": v.role, "name": v.name, "issuedUntil": v.issued_until,
            "author": v.author, "time": v.time, "reason": v.reason,
        })).collect::<Vec<_>>(),
        "blocked": r.blocked.iter().map(|b| json!({
            "node": b.node, "author": b.author, "time": b.time, "reason": b.reason,
        })).collect::<Vec<_>>(),
        "caller": r.caller, "callerRoles": r.caller_roles, "rolesUnbound": r.roles_unbound,
        "mfaRequired": r.mfa_required, "callerSessionExpires": r.caller_session_expires,
        "openChanges": r.open_changes.iter().map(change_request).collect::<Vec<_>>(),
        "breakGlass": r.break_glass.iter().map(break_glass).collect::<Vec<_>>(),
        "quarantines": r.quarantines.iter().map(|q| json!({
            "id": q.id, "target": q.target, "addresses": q.addresses, "keep": q.keep,
            "keepPolicies": q.keep_policies, "by": q.by, "at": q.at, "reason": q.reason,
            "segment": q.segment, "revision": q.revision, "origin": q.origin,
        })).collect::<Vec<_>>(),
        "vendorGrants": r.vendor_grants.iter().map(|g| json!({
            "id": g.id, "vendor": g.vendor, "source": g.source, "to": g.to, "ports": g.ports,
            "from": g.from, "until": g.until, "ticket": g.ticket, "state": g.state,
            "policy": g.policy,
        })).collect::<Vec<_>>(),
    })
}

/// A change request filed for a second person's approval.
pub fn change_request(c: &v1::ChangeRequest) -> Value {
    json!({
        "id": c.id, "author": c.author, "created": c.created, "baseRevision": c.base_revision,
        "message": c.message, "prune": c.prune, "state": c.state, "sha256": c.sha256,
        "changes": c.changes.iter().map(|x| json!({"kind": x.kind, "name": x.name, "action": x.action})).collect::<Vec<_>>(),
        "needsApproval": c.needs_approval, "diff": c.diff,
        "decidedBy": c.decided_by, "decidedAt": c.decided_at, "decisionNote": c.decision_note,
        "appliedRevision": c.applied_revision,
        "wouldDrop": c.would_drop.iter().map(|d| json!({
            "srcSegment": d.src_segment, "dstSegment": d.dst_segment, "protocol": d.protocol,
            "port": d.port, "connections": d.connections, "lastSeen": d.last_seen,
        })).collect::<Vec<_>>(),
    })
}

/// A break-glass grant and its review.
pub fn break_glass(g: &v1::BreakGlassGrant) -> Value {
    json!({
        "id": g.id, "openedBy": g.opened_by, "openedAt": g.opened_at, "expires": g.expires,
        "from": g.from, "to": g.to, "ports": g.ports, "reason": g.reason, "policy": g.policy,
        "revision": g.revision, "state": g.state, "reviewedBy": g.reviewed_by,
        "reviewedAt": g.reviewed_at, "reviewNote": g.review_note, "reviewDue": g.review_due,
        "reviewOverdue": g.review_overdue,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_names_what_it_saw_and_nulls_what_it_did_not() {
        let f = v1::Flow {
            src: vec![198, 18, 20, 10],
            dst: vec![198, 18, 41, 10],
            protocol: 6,
            verdict: "dropped".into(),
            src_mac: vec![2, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        let v = flow(&f);
        assert_eq!(v["src"], "198.18.20.10");
        assert_eq!(v["protocol"], "tcp");
        assert_eq!(v["srcMac"], "02:00:00:00:00:01");
        assert_eq!(v["dstMac"], Value::Null);
        assert_eq!(v["policy"], Value::Null);
    }
}
