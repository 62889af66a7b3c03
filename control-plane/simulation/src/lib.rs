//! A policy judged against observed flows (`docs/governance.md`,
//! `docs/clinical-operations.md`): the connections whose verdict a
//! proposed policy would change (allowed or audited to dropped, dropped to
//! allowed), and those that were let through and would be dropped, grouped
//! by segment pair, protocol and port, with how many and when last seen.
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

/// Observed connections of one kind whose verdict a change changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictChange {
    pub src_segment: String,
    pub dst_segment: String,
    pub protocol: u8,
    pub port: u16,
    /// `allowed`, `audited` or `dropped`: by the policy in force, and by
    /// the proposed one.
    pub before: &'static str,
    pub after: &'static str,
    pub connections: u64,
    /// RFC 3339, as the newest record has it.
    pub last_seen: String,
}

/// A new connection's verdict as flow records name it.
fn verdict_of(reason: Reason) -> &'static str {
    match reason {
        Reason::PolicyAllow => "allowed",
        Reason::Monitor => "audited",
        _ => "dropped",
    }
}

/// One policy set judging observed connections as new ones.
struct Judge<'a> {
    reference: Reference<'a>,
}

impl<'a> Judge<'a> {
    fn new(set: &'a PolicySet, now: OffsetDateTime) -> Self {
        Judge {
            reference: Reference::new(set, now, &[], &[]),
        }
    }

    /// An end's segment: by this set's prefixes, else as recorded (VLAN or
    /// node membership).
    fn segment(&self, bytes: &[u8], recorded: &str) -> u32 {
        let by_prefix = address(bytes).map_or(SEGMENT_WORLD, |a| self.reference.segment_of(a));
        if by_prefix != SEGMENT_WORLD || recorded.is_empty() {
            by_prefix
        } else {
            self.reference.segment_named(recorded)
        }
    }

    /// The verdict of `f` as a new connection, and its ends' segments.
    fn judge(&self, f: &v1::Flow, protocol: u8, port: u16) -> (&'static str, u32, u32) {
        let src = self.segment(&f.src, &f.src_segment);
        let dst = self.segment(&f.dst, &f.dst_segment);
        let (reason, _) = self.reference.decide(src, dst, protocol, port);
        (verdict_of(reason), src, dst)
    }
}

/// A segment id of `set` by name; `world` for none.
fn name_in(set: &PolicySet, judge: &Judge<'_>, id: u32) -> String {
    if id == SEGMENT_WORLD {
        return "world".to_owned();
    }
    set.segments
        .iter()
        .find(|s| judge.reference.segment_named(&s.name) == id)
        .map_or_else(|| "world".to_owned(), |s| s.name.clone())
}

/// The first record of each connection of `observed` (`new`, or `drop`
/// for one dropped at once), with its protocol and port.
fn connections(observed: &[v1::Flow]) -> impl Iterator<Item = (&v1::Flow, u8, u16)> {
    observed.iter().filter_map(|f| {
        if !matches!(f.kind.as_str(), "new" | "drop") {
            return None;
        }
        Some((
            f,
            u8::try_from(f.protocol).ok()?,
            u16::try_from(f.dport).ok()?,
        ))
    })
}

/// Every connection of `observed` whose verdict `proposed` would change
/// from the one `current` gives it at `now`, grouped by segment pair (as
/// `proposed` names them), protocol, port and change; the most
/// connections first.
pub fn verdict_changes(
    current: &PolicySet,
    proposed: &PolicySet,
    now: OffsetDateTime,
    observed: &[v1::Flow],
) -> Vec<VerdictChange> {
    let (before, after) = (Judge::new(current, now), Judge::new(proposed, now));
    // (from, to, protocol, port, before, after) -> (connections, last seen).
    type Kind = (String, String, u8, u16, &'static str, &'static str);
    let mut out: BTreeMap<Kind, (u64, String)> = BTreeMap::new();
    for (f, protocol, port) in connections(observed) {
        let (was, _, _) = before.judge(f, protocol, port);
        let (will, src, dst) = after.judge(f, protocol, port);
        if was == will {
            continue;
        }
        let key = (
            name_in(proposed, &after, src),
            name_in(proposed, &after, dst),
            protocol,
            port,
            was,
            will,
        );
        let e = out.entry(key).or_insert((0, String::new()));
        e.0 += 1;
        if f.time > e.1 {
            e.1 = f.time.clone();
        }
    }
    let mut list: Vec<VerdictChange> = out
        .into_iter()
        .map(
            |(
                (src_segment, dst_segment, protocol, port, before, after),
                (connections, last_seen),
            )| {
                VerdictChange {
                    src_segment,
                    dst_segment,
                    protocol,
                    port,
                    before,
                    after,
                    connections,
                    last_seen,
                }
            },
        )
        .collect();
    list.sort_by_key(|d| std::cmp::Reverse(d.connections));
    list
}

/// The flows of `observed` that were let through, that `current` lets
/// through at `now` and that `proposed` would drop: what the change takes
/// away (a connection `current` drops already is not the change's doing).
/// One entry per segment pair (as `proposed` names them), protocol and
/// port, the most connections first.
pub fn would_drop(
    current: &PolicySet,
    proposed: &PolicySet,
    now: OffsetDateTime,
    observed: &[v1::Flow],
) -> Vec<WouldDrop> {
    let let_through: Vec<v1::Flow> = observed
        .iter()
        .filter(|f| f.kind == "new" && matches!(f.verdict.as_str(), "allowed" | "audited"))
        .cloned()
        .collect();
    let mut out: BTreeMap<(String, String, u8, u16), (u64, String)> = BTreeMap::new();
    for c in verdict_changes(current, proposed, now, &let_through) {
        if c.after != "dropped" {
            continue;
        }
        let e = out
            .entry((c.src_segment, c.dst_segment, c.protocol, c.port))
            .or_insert((0, String::new()));
        e.0 += c.connections;
        if c.last_seen > e.1 {
            e.1 = c.last_seen;
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
