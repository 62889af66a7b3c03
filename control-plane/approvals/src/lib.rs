//! Which changes need a second person (`docs/governance.md`, "Two-person
//! changes"): [`reasons`] names every reason a change from one policy set
//! to another needs someone else's approval, by the change control in
//! force before it.
//!
//! Always, once a site has role bindings (before that it is being set up,
//! by one person):
//! - a change to role bindings or groups;
//! - a change to the change control itself (what needs approval is under
//!   two-person control too);
//! - a change to a critical flow (it gates promotion to enforce), a
//!   keep-profile (what a quarantined device keeps) or a vendor (who may
//!   be given access, until when);
//! - any `--prune`.
//!
//! And every change that could take away an allowed flow of a critical
//! segment (labelled `critical: "true"`, or as the change control's
//! `criticalSegments` says):
//! - removing an allow policy that reaches a critical segment (in `from`
//!   or `to`, or through `any`), or changing it in any way that is not
//!   purely wider (more peers, more ports, a longer window);
//! - adding or changing a deny policy that reaches one;
//! - changing or deleting a critical segment, or a segment such an allow
//!   names (its members are the allow's other end), and creating or
//!   changing a segment whose prefixes overlap one of those (it may take
//!   endpoints from it);
//! - changing a node while such a segment takes members by node labels.
//!
//! With `everyChange: true`, every change needs approval.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};

use wardline_policy::parse::{
    CHANGE_CONTROL_KIND, CRITICAL_FLOW_KIND, GROUP_KIND, KEEP_PROFILE_KIND, NODE_APPROVAL_KIND,
    NODE_KIND, POLICY_KIND, ROLE_BINDING_KIND, SEGMENT_KIND, VENDOR_KIND,
};
use wardline_policy::{Action, Peer, Policy, PolicySet, PortRule};

/// The label critical segments carry when the change control names none.
pub const DEFAULT_CRITICAL: (&str, &str) = ("critical", "true");

/// One document a change touches: its kind and name.
#[derive(Clone, Copy, Debug)]
pub struct Touched<'a> {
    pub kind: &'a str,
    pub name: &'a str,
}

/// Every reason the change from `before` to `after`, touching `touched`
/// (with `--prune` if `prune`), needs a second person; empty: it does not.
pub fn reasons(
    before: &PolicySet,
    after: &PolicySet,
    touched: &[Touched<'_>],
    prune: bool,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if before.role_bindings.is_empty() {
        return out;
    }
    let control = before.change_controls.first();
    if let Some(c) = control.filter(|c| c.every_change) {
        out.push(format!(
            "the change control {:?} makes every change need approval",
            c.name
        ));
    }
    if prune {
        out.push("it prunes: every stored document the source lacks is deleted".to_owned());
    }
    for t in touched {
        match t.kind {
            ROLE_BINDING_KIND | GROUP_KIND => {
                out.push(format!(
                    "it changes {} {:?}: who may do what",
                    t.kind, t.name
                ));
            }
            CHANGE_CONTROL_KIND => out.push(format!(
                "it changes the change control {:?}, which decides what needs approval",
                t.name
            )),
            CRITICAL_FLOW_KIND => out.push(format!(
                "it changes critical flow {:?}, which gates promotion to enforce",
                t.name
            )),
            KEEP_PROFILE_KIND => out.push(format!(
                "it changes keep-profile {:?}: what a quarantined device keeps",
                t.name
            )),
            VENDOR_KIND => out.push(format!(
                "it changes vendor {:?}: who may be given access, and until when",
                t.name
            )),
            _ => {}
        }
    }
    let selector = control
        .and_then(|c| c.critical_segments.clone())
        .unwrap_or_else(|| {
            BTreeMap::from([(DEFAULT_CRITICAL.0.to_owned(), DEFAULT_CRITICAL.1.to_owned())])
        });
    let critical: BTreeSet<&str> = before
        .segments
        .iter()
        .filter(|s| selector.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| s.name.as_str())
        .collect();
    // Segments whose members an allow of a critical segment depends on:
    // the critical ones, and every segment such an allow names.
    let mut protected: BTreeMap<&str, String> = critical
        .iter()
        .map(|s| (*s, "is critical".to_owned()))
        .collect();
    for p in before.policies.iter().filter(|p| p.action == Action::Allow) {
        if let Some(c) = reaches(p, &critical) {
            for peer in p.from.iter().chain(&p.to) {
                if let Peer::Segment(name) = peer {
                    protected.entry(name.as_str()).or_insert_with(|| {
                        format!("allow {:?} names it with critical {c:?}", p.name)
                    });
                }
            }
        }
    }
    for t in touched {
        match t.kind {
            POLICY_KIND => {
                let b = before.policies.iter().find(|p| p.name == t.name);
                let a = after.policies.iter().find(|p| p.name == t.name);
                if let Some(b) = b.filter(|b| b.action == Action::Allow)
                    && let Some(c) = reaches(b, &critical)
                {
                    match a {
                        None => out.push(format!(
                            "it removes allow {:?}, which reaches critical segment {c:?}",
                            t.name
                        )),
                        Some(a) if !widens(b, a) => out.push(format!(
                            "it narrows allow {:?}, which reaches critical segment {c:?}",
                            t.name
                        )),
                        Some(_) => {}
                    }
                }
                if let Some(a) = a.filter(|a| a.action == Action::Deny)
                    && let Some(c) = reaches(a, &critical)
                    && b != Some(a)
                {
                    out.push(format!("deny {:?} reaches critical segment {c:?}", t.name));
                }
            }
            SEGMENT_KIND => {
                if let Some(why) = protected.get(t.name)
                    && before.segments.iter().any(|s| s.name == t.name)
                {
                    out.push(format!("it changes segment {:?}, which {why}", t.name));
                } else if let Some(s) = after.segments.iter().find(|s| s.name == t.name) {
                    let overlapped = before.segments.iter().find(|o| {
                        protected.contains_key(o.name.as_str())
                            && o.name != s.name
                            && o.cidrs
                                .iter()
                                .any(|x| s.cidrs.iter().any(|y| overlap(x, y)))
                    });
                    if let Some(o) = overlapped {
                        out.push(format!(
                            "segment {:?} overlaps segment {:?} (which {}): it may take endpoints from it",
                            t.name, o.name, protected[o.name.as_str()]
                        ));
                    }
                }
            }
            NODE_KIND | NODE_APPROVAL_KIND => {
                if let Some(s) = before
                    .segments
                    .iter()
                    .find(|s| s.node_selector.is_some() && protected.contains_key(s.name.as_str()))
                {
                    out.push(format!(
                        "it changes {} {:?}, and segment {:?} (which {}) takes members by node labels",
                        t.kind,
                        t.name,
                        s.name,
                        protected[s.name.as_str()]
                    ));
                }
            }
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    out.retain(|r| seen.insert(r.clone()));
    out
}

/// The critical segment `p` reaches, if any (`any` reaches them all).
fn reaches<'a>(p: &Policy, critical: &BTreeSet<&'a str>) -> Option<&'a str> {
    p.from.iter().chain(&p.to).find_map(|peer| match peer {
        Peer::Segment(name) => critical.get(name.as_str()).copied(),
        Peer::Any => critical.first().copied(),
        Peer::World => None,
    })
}

/// Whether allow `a` lets through everything allow `b` does.
fn widens(b: &Policy, a: &Policy) -> bool {
    a.action == Action::Allow
        && covers_peers(&a.from, &b.from)
        && covers_peers(&a.to, &b.to)
        && covers_ports(&a.ports, &b.ports)
        && a.valid_from
            .is_none_or(|af| b.valid_from.is_some_and(|bf| af <= bf))
        && a.valid_until
            .is_none_or(|au| b.valid_until.is_some_and(|bu| au >= bu))
}

fn covers_peers(a: &[Peer], b: &[Peer]) -> bool {
    a.contains(&Peer::Any) || b.iter().all(|p| a.contains(p))
}

fn covers_ports(a: &[PortRule], b: &[PortRule]) -> bool {
    a.is_empty()
        || (!b.is_empty()
            && b.iter().all(|r| {
                let (lo, hi) = r.range();
                a.iter().any(|q| {
                    let (qlo, qhi) = q.range();
                    q.protocol == r.protocol && qlo <= lo && qhi >= hi
                })
            }))
}

fn overlap(x: &ipnet::IpNet, y: &ipnet::IpNet) -> bool {
    x.contains(&y.network()) || y.contains(&x.network())
}

#[cfg(test)]
mod tests;
