//! Flow records as `wardctl observe` prints them: one line each, as
//! `hubble observe` reads, so that a followed stream needs no table.
//!
//! ```text
//! Dec 02 14:35:09.123  gw-icu  198.18.20.10:40112 (ws) -> 198.18.41.10:443 (ehr)  tcp  ALLOWED  policy-allow  ws-ehr-web
//! ```

use wardline_proto::convert::protocol_name;
use wardline_proto::v1;

pub use wardline_proto::json::address;

/// An Ethernet address as text; none when not seen.
pub use wardline_proto::convert::mac_text as mac;

/// The segment matrix as a table: one row per segment pair and verdict.
pub fn matrix_table(r: &v1::FlowMatrixResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .cells
        .iter()
        .map(|c| {
            vec![
                c.src_segment.clone(),
                c.dst_segment.clone(),
                c.verdict.to_uppercase(),
                c.flows.to_string(),
            ]
        })
        .collect();
    crate::table::table(&["FROM", "TO", "VERDICT", "CONNECTIONS"], &rows)
        + &format!("{} connections\n", r.flows)
}

/// `wardctl top` as a table.
pub fn top_table(r: &v1::TopResponse, talkers: bool) -> String {
    let rows: Vec<Vec<String>> = r
        .entries
        .iter()
        .map(|e| {
            let mut row = vec![format!("{} ({})", address(&e.src), e.src_segment)];
            if talkers {
                row.push(format!("{} ({})", address(&e.dst), e.dst_segment));
            }
            row.push(e.connections.to_string());
            if !talkers {
                row.push(e.destinations.to_string());
            }
            row.push(e.packets.to_string());
            row.push(e.bytes.to_string());
            row.push(when(&e.last_seen));
            row
        })
        .collect();
    let header: &[&str] = if talkers {
        &[
            "SOURCE",
            "DESTINATION",
            "CONNECTIONS",
            "PACKETS",
            "BYTES",
            "LAST SEEN",
        ]
    } else {
        &[
            "SOURCE",
            "CONNECTIONS",
            "DESTINATIONS",
            "PACKETS",
            "BYTES",
            "LAST SEEN",
        ]
    };
    let mut out = crate::table::table(header, &rows);
    if r.partial {
        out += "(more distinct sources than the control plane ranks at once: narrow the filter)\n";
    }
    out
}

/// `wardctl inventory` as a table.
pub fn inventory_table(r: &v1::InventoryResponse) -> String {
    let rows: Vec<Vec<String>> = r
        .devices
        .iter()
        .map(|d| {
            let ports: Vec<String> = d
                .ports
                .iter()
                .filter(|p| p.serves)
                .map(|p| format!("{}/{}", protocol_name(p.protocol), p.port))
                .collect();
            vec![
                address(&d.address),
                mac(&d.mac).unwrap_or_else(|| "-".to_owned()),
                if d.vlan == 0 {
                    "-".to_owned()
                } else {
                    d.vlan.to_string()
                },
                d.segment.clone(),
                when(&d.first_seen),
                when(&d.last_seen),
                format!("{}{}", d.peers.len(), if d.more_peers { "+" } else { "" }),
                format!(
                    "{}{}",
                    ports.join(","),
                    if d.more_ports { ",..." } else { "" }
                ),
                if d.new_reason.is_empty() {
                    String::new()
                } else {
                    format!("NEW: {}", d.new_reason)
                },
            ]
        })
        .collect();
    let mut out = crate::table::table(
        &[
            "ADDRESS",
            "MAC",
            "VLAN",
            "SEGMENT",
            "FIRST SEEN",
            "LAST SEEN",
            "PEERS",
            "SERVES",
            "",
        ],
        &rows,
    );
    if r.refused_full > 0 {
        out += &format!(
            "the inventory is full: {} addresses were not added\n",
            r.refused_full
        );
    }
    out
}

/// `address:port`, IPv6 in brackets; no port for protocols without.
fn end(bytes: &[u8], port: u32, ports: bool) -> String {
    let a = address(bytes);
    match (ports, bytes.len()) {
        (false, _) => a,
        (true, 16) => format!("[{a}]:{port}"),
        (true, _) => format!("{a}:{port}"),
    }
}

/// `2026-12-02T14:35:09.123456789Z` as `Dec 02 14:35:09.123`; other text
/// as it is.
fn when(time: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (Some(month), Some(day), Some(clock)) = (
        time.get(5..7).and_then(|m| m.parse::<usize>().ok()),
        time.get(8..10),
        time.get(11..19),
    ) else {
        return time.to_owned();
    };
    let millis = time
        .get(19..)
        .and_then(|rest| rest.strip_prefix('.'))
        .map(|f| {
            f.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .map(|f| format!("{f:0<3}")[..3].to_owned())
        .unwrap_or_else(|| "000".to_owned());
    match MONTHS.get(month.wrapping_sub(1)) {
        Some(m) => format!("{m} {day} {clock}.{millis}"),
        None => time.to_owned(),
    }
}

/// One record, one line.
pub fn line(f: &v1::Flow) -> String {
    let ports = matches!(f.protocol, 6 | 17 | 132);
    let mut s = format!(
        "{}  {}  {} ({}) -> {} ({})  {}  {}  {}",
        when(&f.time),
        f.node,
        end(&f.src, f.sport, ports),
        f.src_segment,
        end(&f.dst, f.dport, ports),
        f.dst_segment,
        protocol_name(f.protocol),
        f.verdict.to_uppercase(),
        f.reason,
    );
    if !f.policy.is_empty() {
        s.push_str("  ");
        s.push_str(&f.policy);
    }
    if f.kind != "new" && f.kind != "drop" {
        s.push_str(&format!("  ({})", f.kind));
    }
    s
}

/// Every record an Observe call answers (one that does not follow).
pub async fn records(
    c: &mut crate::connect::Client,
    request: v1::ObserveRequest,
) -> Result<Vec<v1::Flow>, crate::failure::Failure> {
    let mut stream = c
        .observe(request)
        .await
        .map_err(crate::failure::from_status)?
        .into_inner();
    let mut out = Vec::new();
    while let Some(f) = stream
        .message()
        .await
        .map_err(crate::failure::from_status)?
    {
        out.push(f);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_as_one_line() {
        let f = v1::Flow {
            time: "2026-12-02T14:35:09.1234Z".into(),
            node: "gw-icu".into(),
            kind: "new".into(),
            src: vec![198, 18, 20, 10],
            dst: vec![198, 18, 41, 10],
            sport: 40112,
            dport: 443,
            protocol: 6,
            src_segment: "ws".into(),
            dst_segment: "ehr".into(),
            verdict: "allowed".into(),
            reason: "policy-allow".into(),
            policy: "ws-ehr-web".into(),
            ..Default::default()
        };
        assert_eq!(
            line(&f),
            "Dec 02 14:35:09.123  gw-icu  198.18.20.10:40112 (ws) -> 198.18.41.10:443 (ehr)  tcp  ALLOWED  policy-allow  ws-ehr-web"
        );
        let v6 = v1::Flow {
            time: "2026-12-02T14:35:09Z".into(),
            kind: "close".into(),
            src: vec![0x20, 1, 0xd, 0xb8, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            dst: vec![0x20, 1, 0xd, 0xb8, 0, 0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
            protocol: 58,
            verdict: "dropped".into(),
            reason: "default-deny".into(),
            ..f
        };
        assert_eq!(
            line(&v6),
            "Dec 02 14:35:09.000  gw-icu  2001:db8:20::10 (ws) -> 2001:db8:41::10 (ehr)  icmpv6  DROPPED  default-deny  ws-ehr-web  (close)"
        );
    }
}
