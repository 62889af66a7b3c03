//! A policy judged against observed flows (`docs/governance.md`): the
//! connections that were let through (allowed, or audited in monitor
//! mode) and that a proposed policy would drop, grouped by segment pair,
//! protocol and port, with how many and when last seen.
//!
//! Each connection is judged as the kernel judges a new one
//! (`wardline_policy::reference`): its ends' segments by the proposed
//! prefixes (by the segment the agent recorded when no prefix holds the
//! address: VLAN or node membership), then the policies in force at the
//! time given.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use time::OffsetDateTime;
use wardline_ebpf_abi::{Reason, SEGMENT_WORLD};
use wardline_policy::PolicySet;
use wardline_policy::reference::Reference;
use wardline_proto::v1;

/// Observed connections of one kind a change would drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WouldDrop {
    pub src_segment: String,
    pub dst_segment: String,
    pub protocol: u8,
    pub port: u16,
    pub connections: u64,
    /// RFC 3339, as the newest record has it.
    pub last_seen: String,
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// The flows of `observed` that were let through, that `current` lets
/// through at `now` and that `proposed` would drop: what the change takes
/// away (a connection `current` drops already is not the change's doing).
/// One entry per segment pair (as `proposed` names them), protocol and
/// port, the most connections first. Only first records count (`new`):
/// one per connection.
pub fn would_drop(
    current: &PolicySet,
    proposed: &PolicySet,
    now: OffsetDateTime,
    observed: &[v1::Flow],
) -> Vec<WouldDrop> {
    let before = Reference::new(current, now, &[], &[]);
    let judge = Reference::new(proposed, now, &[], &[]);
    let name_of = |id: u32| {
        if id == SEGMENT_WORLD {
            return "world".to_owned();
        }
        proposed
            .segments
            .iter()
            .find(|s| judge.segment_named(&s.name) == id)
            .map_or_else(|| "world".to_owned(), |s| s.name.clone())
    };
    let segment = |judge: &Reference<'_>, bytes: &[u8], recorded: &str| {
        let by_prefix = address(bytes).map_or(SEGMENT_WORLD, |a| judge.segment_of(a));
        if by_prefix != SEGMENT_WORLD || recorded.is_empty() {
            by_prefix
        } else {
            judge.segment_named(recorded)
        }
    };
    let passes = |judge: &Reference<'_>, f: &v1::Flow, protocol: u8, port: u16| {
        let (src, dst) = (
            segment(judge, &f.src, &f.src_segment),
            segment(judge, &f.dst, &f.dst_segment),
        );
        let (reason, _) = judge.decide(src, dst, protocol, port);
        (
            matches!(reason, Reason::PolicyAllow | Reason::Monitor),
            src,
            dst,
        )
    };
    let mut out: BTreeMap<(String, String, u8, u16), (u64, String)> = BTreeMap::new();
    for f in observed {
        if f.kind != "new" || !matches!(f.verdict.as_str(), "allowed" | "audited") {
            continue;
        }
        let (Ok(protocol), Ok(port)) = (u8::try_from(f.protocol), u16::try_from(f.dport)) else {
            continue;
        };
        let (now_passes, _, _) = passes(&before, f, protocol, port);
        let (still_passes, src, dst) = passes(&judge, f, protocol, port);
        if !now_passes || still_passes {
            continue;
        }
        let e = out
            .entry((name_of(src), name_of(dst), protocol, port))
            .or_insert((0, String::new()));
        e.0 += 1;
        if f.time > e.1 {
            e.1 = f.time.clone();
        }
    }
    let mut list: Vec<WouldDrop> = out
        .into_iter()
        .map(
            |((src_segment, dst_segment, protocol, port), (connections, last_seen))| WouldDrop {
                src_segment,
                dst_segment,
                protocol,
                port,
                connections,
                last_seen,
            },
        )
        .collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.connections));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "
apiVersion: wardline/v1
kind: Segment
metadata: {name: monitors}
spec: {cidrs: [198.18.30.0/24], vlans: [30]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: central-station}
spec: {cidrs: [198.18.31.0/24]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: telemetry}
spec:
  action: allow
  from: [monitors]
  to: [central-station]
  ports: [{protocol: udp, port: 5000, endPort: 5010}]
";

    fn flow(src: [u8; 4], dport: u32, verdict: &str, kind: &str, time: &str) -> v1::Flow {
        v1::Flow {
            time: time.into(),
            kind: kind.into(),
            src: src.to_vec(),
            dst: vec![198, 18, 31, 5],
            protocol: 17,
            dport,
            verdict: verdict.into(),
            src_segment: "monitors".into(),
            dst_segment: "central-station".into(),
            ..Default::default()
        }
    }

    #[test]
    fn connections_a_narrower_allow_would_stop_are_counted_by_kind() {
        let narrower =
            wardline_policy::parse(&SITE.replace("endPort: 5010", "endPort: 5005")).unwrap();
        let current = wardline_policy::parse(SITE).unwrap();
        let observed = [
            flow(
                [198, 18, 30, 7],
                5008,
                "allowed",
                "new",
                "2026-12-01T10:00:00Z",
            ),
            flow(
                [198, 18, 30, 8],
                5008,
                "allowed",
                "new",
                "2026-12-01T11:00:00Z",
            ),
            // Not a connection's first record: not counted again.
            flow(
                [198, 18, 30, 8],
                5008,
                "allowed",
                "update",
                "2026-12-01T11:05:00Z",
            ),
            // Still allowed.
            flow(
                [198, 18, 30, 7],
                5001,
                "allowed",
                "new",
                "2026-12-01T10:00:00Z",
            ),
            // Dropped already: nothing the change takes away.
            flow(
                [198, 18, 30, 7],
                22,
                "dropped",
                "drop",
                "2026-12-01T10:00:00Z",
            ),
        ];
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            would_drop(&current, &narrower, now, &observed),
            [WouldDrop {
                src_segment: "monitors".into(),
                dst_segment: "central-station".into(),
                protocol: 17,
                port: 5008,
                connections: 2,
                last_seen: "2026-12-01T11:00:00Z".into(),
            }]
        );
        assert!(would_drop(&current, &current, now, &observed).is_empty());
        // Allowed when seen, dropped already by the policy in force (a
        // device quarantined since): not the change's doing.
        let quarantined = wardline_policy::parse(&format!(
            "{SITE}---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: quarantine}}\nspec: {{cidrs: [198.18.30.7/32]}}\n"
        ))
        .unwrap();
        let narrower_too = wardline_policy::parse(&format!(
            "{}---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: quarantine}}\nspec: {{cidrs: [198.18.30.7/32]}}\n",
            SITE.replace("endPort: 5010", "endPort: 5005")
        ))
        .unwrap();
        let left = would_drop(&quarantined, &narrower_too, now, &observed);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].connections, 1, "only the monitor not quarantined");
    }

    #[test]
    fn an_address_no_prefix_holds_keeps_its_recorded_segment() {
        // A monitor reached by its VLAN, its address in no prefix.
        let set = wardline_policy::parse(SITE).unwrap();
        let f = flow(
            [10, 9, 9, 9],
            5008,
            "allowed",
            "new",
            "2026-12-01T10:00:00Z",
        );
        assert!(
            would_drop(
                &set,
                &set,
                OffsetDateTime::now_utc(),
                std::slice::from_ref(&f)
            )
            .is_empty()
        );
        let narrower =
            wardline_policy::parse(&SITE.replace("endPort: 5010", "endPort: 5005")).unwrap();
        assert_eq!(
            would_drop(&set, &narrower, OffsetDateTime::now_utc(), &[f])[0].src_segment,
            "monitors"
        );
    }
}
