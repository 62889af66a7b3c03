//! What a flow record must be to be stored: checked whole at ingest, so
//! that a record is stored entire or not at all.

use std::net::IpAddr;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_proto::v1;

/// The kinds of record an agent reports.
pub const KINDS: [&str; 6] = ["new", "drop", "update", "close", "expired", "revoked"];
/// The kinds that open a connection's story (its verdict): what the
/// segment matrix and the top lists count as connections.
pub const FIRST_KINDS: [&str; 2] = ["new", "drop"];
pub const DIRECTIONS: [&str; 2] = ["ingress", "egress"];
pub const VERDICTS: [&str; 3] = ["allowed", "audited", "dropped"];

/// The most records one batch may carry (and it must fit the agent API's
/// message limit, 256 KiB: agents also cut batches by size).
pub const MAX_BATCH: usize = 1_000;
/// The longest name a record carries (segments and policies are DNS
/// labels; reasons are short words).
const MAX_NAME: usize = 63;
/// How far ahead of the control plane's clock a record may be.
const MAX_AHEAD: time::Duration = time::Duration::minutes(5);

/// The address `bytes` holds (4 or 16 bytes).
pub use wardline_proto::convert::ip_from_wire as address;

/// When the record was judged.
pub fn time_of(flow: &v1::Flow) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(&flow.time, &Rfc3339).ok()
}

/// Why `flow` cannot be stored, naming the field; `Ok` with its time.
pub fn check(flow: &v1::Flow, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    let at = time_of(flow).ok_or_else(|| format!("time: {:?} is not RFC 3339", flow.time))?;
    if at > now + MAX_AHEAD {
        return Err(format!(
            "time: {} is ahead of the control plane's clock",
            flow.time
        ));
    }
    let one_of = |field: &str, value: &str, known: &[&str]| {
        if known.contains(&value) {
            Ok(())
        } else {
            Err(format!(
                "{field}: {value:?} is not one of {}",
                known.join(", ")
            ))
        }
    };
    one_of("kind", &flow.kind, &KINDS)?;
    one_of("direction", &flow.direction, &DIRECTIONS)?;
    one_of("verdict", &flow.verdict, &VERDICTS)?;
    let (src, dst) = (address(&flow.src), address(&flow.dst));
    match (src, dst) {
        (Some(IpAddr::V4(_)), Some(IpAddr::V4(_))) | (Some(IpAddr::V6(_)), Some(IpAddr::V6(_))) => {
        }
        _ => {
            return Err(format!(
                "src, dst: {} and {} bytes are not two addresses of one family",
                flow.src.len(),
                flow.dst.len()
            ));
        }
    }
    for (field, port) in [("sport", flow.sport), ("dport", flow.dport)] {
        if port > u32::from(u16::MAX) {
            return Err(format!("{field}: {port} is not a port"));
        }
    }
    if flow.protocol > 255 {
        return Err(format!(
            "protocol: {} is not an IP protocol number",
            flow.protocol
        ));
    }
    if flow.vlan > 4094 {
        return Err(format!("vlan: {} is not a VLAN id", flow.vlan));
    }
    if flow.interface.is_empty() || flow.interface.len() > 15 {
        return Err(format!(
            "interface: {:?} is not an interface name",
            flow.interface
        ));
    }
    for (field, value) in [
        ("src_segment", &flow.src_segment),
        ("dst_segment", &flow.dst_segment),
        ("reason", &flow.reason),
        ("policy", &flow.policy),
    ] {
        if value.len() > MAX_NAME || value.chars().any(char::is_control) {
            return Err(format!("{field}: not a name ({} bytes)", value.len()));
        }
    }
    if flow.src_segment.is_empty() || flow.dst_segment.is_empty() || flow.reason.is_empty() {
        return Err("src_segment, dst_segment and reason are required".to_owned());
    }
    if flow.sequence == 0 {
        return Err("sequence: records are numbered from 1".to_owned());
    }
    for (field, mac) in [("src_mac", &flow.src_mac), ("dst_mac", &flow.dst_mac)] {
        if !mac.is_empty() && mac.len() != 6 {
            return Err(format!(
                "{field}: {} bytes are not an Ethernet address",
                mac.len()
            ));
        }
    }
    Ok(at)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid record from `src` to `dst` port `dport` at `time`.
    pub fn flow(time: &str, src: &str, dst: &str, dport: u32, verdict: &str, seq: u64) -> v1::Flow {
        let bytes = |a: &str| match a.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        v1::Flow {
            time: time.into(),
            node: String::new(),
            kind: if verdict == "dropped" { "drop" } else { "new" }.into(),
            interface: "eth1".into(),
            direction: "ingress".into(),
            src: bytes(src),
            dst: bytes(dst),
            sport: 40000,
            dport,
            protocol: 6,
            vlan: 0,
            src_segment: "ws".into(),
            dst_segment: "ehr".into(),
            verdict: verdict.into(),
            reason: if verdict == "dropped" {
                "default-deny"
            } else {
                "policy-allow"
            }
            .into(),
            policy: if verdict == "dropped" { "" } else { "ws-ehr" }.into(),
            generation: 1,
            revision: 1,
            packets: 1,
            bytes: 60,
            sequence: seq,
            src_mac: vec![2, 0, 0, 0, 0x14, 0x0a],
            dst_mac: Vec::new(),
        }
    }

    #[test]
    fn each_field_is_checked_and_named() {
        let now = OffsetDateTime::parse("2026-12-02T12:00:00Z", &Rfc3339).unwrap();
        let good = flow(
            "2026-12-02T11:59:00Z",
            "198.18.20.10",
            "198.18.41.10",
            443,
            "allowed",
            1,
        );
        assert!(check(&good, now).is_ok());
        type Spoil = Box<dyn Fn(&mut v1::Flow)>;
        let cases: Vec<(Spoil, &str)> = vec![
            (Box::new(|f| f.time = "yesterday".into()), "time:"),
            (
                Box::new(|f| f.time = "2026-12-02T12:30:00Z".into()),
                "ahead",
            ),
            (Box::new(|f| f.kind = "hello".into()), "kind:"),
            (Box::new(|f| f.verdict = "maybe".into()), "verdict:"),
            (Box::new(|f| f.dst = vec![0; 16]), "src, dst:"),
            (Box::new(|f| f.src = vec![1, 2, 3]), "src, dst:"),
            (Box::new(|f| f.dport = 70_000), "dport:"),
            (Box::new(|f| f.protocol = 300), "protocol:"),
            (Box::new(|f| f.vlan = 4095), "vlan:"),
            (Box::new(|f| f.interface = "x".repeat(16)), "interface:"),
            (Box::new(|f| f.policy = "p".repeat(64)), "policy:"),
            (Box::new(|f| f.reason = "a\nb".into()), "reason:"),
            (Box::new(|f| f.sequence = 0), "sequence:"),
            (Box::new(|f| f.src_mac = vec![2; 7]), "src_mac:"),
            (Box::new(|f| f.dst_mac = vec![2; 5]), "dst_mac:"),
        ];
        for (spoil, named) in cases {
            let mut bad = good.clone();
            spoil(&mut bad);
            let e = check(&bad, now).unwrap_err();
            assert!(e.starts_with(named) || e.contains(named), "{named}: {e}");
        }
    }
}
