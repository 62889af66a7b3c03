//! Tables sent as a change to tables the agent already holds.
//!
//! When a node joins, leaves or moves, only which prefixes belong to which
//! segment changes: every agent would otherwise get the whole tables again
//! for one address. [`diff`] finds such a change between two schedules;
//! [`apply`] makes the new schedule from the base and the change. The agent
//! checks what it made against the `tables_sha256` the replica signed, so a
//! change applied to the wrong base, or applied wrongly, is never enforced.

use std::collections::BTreeMap;

use ipnet::IpNet;
use wardline_policy::{Dataplane, Schedule};

use crate::convert::{WireError, prefix_from_wire, prefix_to_wire, wire_err};
use crate::v1;

/// The prefix changes that make `next` from `base`, one entry per
/// dataplane that changes; `None` when anything else differs (segments,
/// policies, rules, VLANs, flags, window boundaries): then only whole
/// tables will do.
pub fn diff(base: &Schedule, next: &Schedule) -> Option<Vec<v1::PrefixChanges>> {
    if base.ahead.len() != next.ahead.len()
        || base
            .ahead
            .iter()
            .zip(&next.ahead)
            .any(|((a, _), (b, _))| a != b)
    {
        return None;
    }
    let pairs = std::iter::once((&base.now, &next.now)).chain(
        base.ahead
            .iter()
            .zip(&next.ahead)
            .map(|((_, a), (_, b))| (a, b)),
    );
    let mut changes = Vec::new();
    for (index, (a, b)) in pairs.enumerate() {
        if !same_but_prefixes(a, b) {
            return None;
        }
        let old: BTreeMap<IpNet, u32> = a.prefixes.iter().copied().collect();
        let new: BTreeMap<IpNet, u32> = b.prefixes.iter().copied().collect();
        let removed: Vec<v1::Prefix> = old
            .iter()
            .filter(|(net, _)| !new.contains_key(net))
            .map(|(net, segment)| prefix_to_wire(*net, *segment))
            .collect();
        let set: Vec<v1::Prefix> = new
            .iter()
            .filter(|(net, segment)| old.get(net) != Some(segment))
            .map(|(net, segment)| prefix_to_wire(*net, *segment))
            .collect();
        if !removed.is_empty() || !set.is_empty() {
            changes.push(v1::PrefixChanges {
                index: u32::try_from(index).ok()?,
                removed,
                set,
            });
        }
    }
    Some(changes)
}

/// Everything but the prefixes (and the node conflicts, which never go on
/// the wire).
fn same_but_prefixes(a: &Dataplane, b: &Dataplane) -> bool {
    a.segments == b.segments
        && a.policies == b.policies
        && a.vlans == b.vlans
        && a.marks == b.marks
        && a.rules == b.rules
        && a.flags == b.flags
        && a.next_change == b.next_change
}

/// `base` with `changes` made. Refused, naming the field, when a change
/// does not fit `base`: a dataplane it does not have, a prefix to remove
/// that it does not hold, indexes out of order. The result is the caller's
/// to check against the signed hash and to validate as whole tables.
pub fn apply(base: &Schedule, changes: &[v1::PrefixChanges]) -> Result<Schedule, WireError> {
    let mut next = base.clone();
    let mut previous: Option<u32> = None;
    for (n, change) in changes.iter().enumerate() {
        let field = format!("delta.dataplanes[{n}]");
        if previous.is_some_and(|p| change.index <= p) {
            return Err(wire_err(
                format!("{field}.index"),
                format!("{} is not after the index before it", change.index),
            ));
        }
        previous = Some(change.index);
        let dataplane = match change.index {
            0 => &mut next.now,
            i => {
                let ahead = next.ahead.len();
                &mut next
                    .ahead
                    .get_mut(i as usize - 1)
                    .ok_or_else(|| {
                        wire_err(
                            format!("{field}.index"),
                            format!("the base tables have no dataplane {i} ({ahead} scheduled)"),
                        )
                    })?
                    .1
            }
        };
        let mut prefixes: BTreeMap<IpNet, u32> = dataplane.prefixes.iter().copied().collect();
        for (j, p) in change.removed.iter().enumerate() {
            let at = format!("{field}.removed[{j}]");
            let net = prefix_from_wire(&at, p)?;
            if prefixes.remove(&net).is_none() {
                return Err(wire_err(at, format!("{net} is not in the base tables")));
            }
        }
        for (j, p) in change.set.iter().enumerate() {
            let net = prefix_from_wire(&format!("{field}.set[{j}]"), p)?;
            prefixes.insert(net, p.segment);
        }
        dataplane.prefixes = prefixes.into_iter().collect();
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    use prost::Message as _;
    use time::OffsetDateTime;
    use wardline_policy::compile::NodeInfo;
    use wardline_policy::{CompileOptions, PolicySet};

    /// Pump servers join by node; a policy opens at 12:00 so the schedule
    /// has a dataplane ahead.
    const POLICY: &str = "\
apiVersion: wardline/v1
kind: Segment
metadata: {name: pumps}
spec: {cidrs: [\"198.18.30.0/24\"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server}
spec: {nodeSelector: {matchLabels: {role: pump-server}}}
---
apiVersion: wardline/v1
kind: NodeApproval
metadata: {name: servers}
spec: {nodes: [\"srv-*\"], addresses: [\"198.18.42.0/24\", \"2001:db8:42::/64\"], labels: {role: pump-server}}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: pumps-to-server}
spec: {action: allow, from: [pumps], to: [pump-server], ports: [{protocol: tcp, port: 443}], validFrom: \"2026-12-02T12:00:00Z\"}
";

    fn set() -> PolicySet {
        wardline_policy::parse(POLICY).unwrap()
    }

    fn node(name: &str, addresses: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: Default::default(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn schedule(set: &PolicySet, nodes: Vec<NodeInfo>) -> Schedule {
        let now = OffsetDateTime::parse(
            "2026-12-02T09:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        Schedule::compile(set, &CompileOptions { now, nodes }, 7).unwrap()
    }

    fn encoded(s: &Schedule) -> Vec<u8> {
        v1::Tables::from(s).encode_to_vec()
    }

    #[test]
    fn a_node_joining_moving_and_leaving_is_a_change_of_prefixes_only() {
        let set = set();
        let base = schedule(&set, vec![node("srv-1", &["198.18.42.10"])]);
        assert_eq!(base.ahead.len(), 1, "a window ahead");
        for nodes in [
            // Joins, with an IPv6 address too.
            vec![
                node("srv-1", &["198.18.42.10"]),
                node("srv-2", &["198.18.42.11", "2001:db8:42::11"]),
            ],
            // Moves to another address.
            vec![node("srv-1", &["198.18.42.99"])],
            // Leaves.
            vec![],
        ] {
            let next = schedule(&set, nodes);
            let changes = diff(&base, &next).expect("only prefixes differ");
            // Every dataplane, now and ahead, changes the same way.
            assert_eq!(changes.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 1]);
            let made = apply(&base, &changes).unwrap();
            assert_eq!(encoded(&made), encoded(&next), "byte for byte");
        }
        assert_eq!(diff(&base, &base), Some(vec![]));
    }

    #[test]
    fn anything_but_prefixes_needs_whole_tables() {
        let base = schedule(&set(), vec![]);
        // Another port: the rule table changes.
        let other = wardline_policy::parse(&POLICY.replace("port: 443", "port: 8443")).unwrap();
        assert_eq!(diff(&base, &schedule(&other, vec![])), None);
        // No window any more: the schedule ahead changes.
        let always =
            wardline_policy::parse(&POLICY.replace(", validFrom: \"2026-12-02T12:00:00Z\"", ""))
                .unwrap();
        assert_eq!(diff(&base, &schedule(&always, vec![])), None);
    }

    #[test]
    fn a_change_that_does_not_fit_its_base_is_refused_by_field() {
        let set = set();
        let base = schedule(&set, vec![]);
        let joined = schedule(&set, vec![node("srv-1", &["198.18.42.10"])]);
        let changes = diff(&base, &joined).unwrap();
        // Applied backwards: the joined tables hold the prefix, the base
        // does not, so removing it from the base fails.
        let backwards = diff(&joined, &base).unwrap();
        let e = apply(&base, &backwards).unwrap_err();
        assert_eq!(e.field, "delta.dataplanes[0].removed[0]", "{e}");
        assert!(e.message.contains("198.18.42.10/32"), "{e}");
        let mut beyond = changes.clone();
        beyond[1].index = 5;
        let e = apply(&base, &beyond).unwrap_err();
        assert_eq!(e.field, "delta.dataplanes[1].index", "{e}");
        let mut unordered = changes.clone();
        unordered.swap(0, 1);
        let e = apply(&base, &unordered).unwrap_err();
        assert_eq!(e.field, "delta.dataplanes[1].index", "{e}");
        let mut host_bits = changes;
        host_bits[0].set[0].prefix_len = 24;
        let e = apply(&base, &host_bits).unwrap_err();
        assert_eq!(e.field, "delta.dataplanes[0].set[0].address", "{e}");
    }
}
