//! Flow records as OCSF events: Network Activity (class 4001, category 4,
//! Network Activity), one JSON object each, and policy changes as Wardline's
//! own JSON object (the same in syslog and in the JSON lines).

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_proto::convert::{ip_from_wire, mac_text, protocol_name};
use wardline_proto::v1;

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.1.0";
const CLASS_NETWORK_ACTIVITY: u32 = 4001;
const CATEGORY_NETWORK_ACTIVITY: u32 = 4;

/// The record's OCSF `activity_id`: Open, Refuse, Traffic or Close.
fn activity(f: &v1::Flow) -> (u32, &'static str) {
    match f.kind.as_str() {
        "new" => (1, "Open"),
        "close" | "expired" => (2, "Close"),
        "revoked" => (3, "Reset"),
        "drop" => (5, "Refuse"),
        "update" => (6, "Traffic"),
        _ => (99, "Other"),
    }
}

fn endpoint(addr: &[u8], port: u32, mac_bytes: &[u8]) -> Value {
    let mut e = json!({
        "ip": ip_from_wire(addr).map(|a| a.to_string()),
        "port": port,
    });
    if let Some(m) = mac_text(mac_bytes) {
        e["mac"] = Value::from(m);
    }
    e
}

/// The record's time, in milliseconds since the epoch.
fn millis(f: &v1::Flow) -> i64 {
    OffsetDateTime::parse(&f.time, &Rfc3339)
        .map(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .unwrap_or(0)
}

/// `f` as an OCSF Network Activity event.
pub fn network_activity(f: &v1::Flow, replica: &str) -> Value {
    let (activity_id, activity_name) = activity(f);
    let dropped = f.verdict == "dropped";
    let mut event = json!({
        "class_uid": CLASS_NETWORK_ACTIVITY,
        "class_name": "Network Activity",
        "category_uid": CATEGORY_NETWORK_ACTIVITY,
        "category_name": "Network Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": CLASS_NETWORK_ACTIVITY * 100 + activity_id,
        "time": millis(f),
        "severity_id": if dropped { 3 } else { 1 },
        "severity": if dropped { "Medium" } else { "Informational" },
        "action_id": if dropped { 2 } else { 1 },
        "action": if dropped { "Denied" } else { "Allowed" },
        "disposition_id": if dropped { 2 } else { 1 },
        "disposition": if dropped { "Blocked" } else { "Allowed" },
        "status_id": 1,
        "metadata": {
            "version": OCSF_VERSION,
            "product": { "name": "Wardline", "vendor_name": "Wardline" },
            "log_name": "flows",
            "uid": format!("{}/{}", f.node, f.sequence),
        },
        "src_endpoint": endpoint(&f.src, f.sport, &f.src_mac),
        "dst_endpoint": endpoint(&f.dst, f.dport, &f.dst_mac),
        "connection_info": {
            "protocol_num": f.protocol,
            "protocol_name": protocol_name(f.protocol),
            "direction": f.direction,
        },
        "traffic": { "packets": f.packets, "bytes": f.bytes },
        "observables": [],
        "unmapped": {
            "node": f.node,
            "replica": replica,
            "interface": f.interface,
            "vlan": f.vlan,
            "src_segment": f.src_segment,
            "dst_segment": f.dst_segment,
            "verdict": f.verdict,
            "reason": f.reason,
            "kind": f.kind,
            "revision": f.revision,
        },
    });
    if !f.policy.is_empty() {
        event["firewall_rule"] = json!({ "name": f.policy, "type": "wardline-policy" });
    }
    event
}

/// A policy revision: who made it, what it changed.
pub struct PolicyChange {
    pub revision: u64,
    pub time: String,
    pub author: String,
    pub author_fingerprint: String,
    /// apply, delete or rollback.
    pub action: String,
    pub message: String,
    /// `kind/name` of each document changed, with how.
    pub changes: Vec<(String, String)>,
    pub policy_sha256: String,
    pub record_sha256: String,
}

impl PolicyChange {
    pub fn to_json(&self, replica: &str) -> Value {
        json!({
            "event": "policy-change",
            "product": "Wardline",
            "replica": replica,
            "revision": self.revision,
            "time": self.time,
            "author": self.author,
            "authorFingerprint": self.author_fingerprint,
            "action": self.action,
            "message": self.message,
            "changes": self.changes.iter().map(|(doc, how)| json!({"document": doc, "change": how})).collect::<Vec<_>>(),
            "policySha256": self.policy_sha256,
            "recordSha256": self.record_sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_connection_is_a_refused_network_activity() {
        let f = v1::Flow {
            time: "2026-12-02T14:35:09.5Z".into(),
            node: "gw-icu".into(),
            kind: "drop".into(),
            direction: "ingress".into(),
            src: vec![198, 18, 20, 10],
            dst: vec![198, 18, 41, 10],
            sport: 40000,
            dport: 22,
            protocol: 6,
            verdict: "dropped".into(),
            reason: "default-deny".into(),
            src_segment: "ws".into(),
            dst_segment: "ehr".into(),
            src_mac: vec![2, 0, 0, 0, 0x14, 0x0a],
            sequence: 7,
            ..Default::default()
        };
        let e = network_activity(&f, "cp-1");
        assert_eq!(e["class_uid"], 4001);
        assert_eq!(e["type_uid"], 400105);
        assert_eq!(e["time"], 1_796_222_109_500i64);
        assert_eq!(e["disposition"], "Blocked");
        assert_eq!(e["src_endpoint"]["ip"], "198.18.20.10");
        assert_eq!(e["src_endpoint"]["mac"], "02:00:00:00:14:0a");
        assert!(e["dst_endpoint"].get("mac").is_none());
        assert_eq!(e["connection_info"]["protocol_name"], "tcp");
        assert_eq!(e["metadata"]["uid"], "gw-icu/7");
        assert!(e.get("firewall_rule").is_none(), "no policy decided");
    }
}
