//! Who may do what on the control plane (`docs/governance.md`): the
//! built-in roles, the verbs each allows, the roles an operator holds by
//! the role bindings of the revision in force, and the check of a change
//! against them.
//!
//! - An operator holds the roles of every binding that names them, or a
//!   group they are a member of. Roles add up; none implies another's
//!   changes (an admin who should also apply policy is bound as operator
//!   too).
//! - A site with no role binding at all is being set up: every operator
//!   certificate holds every role, and the first change that adds bindings
//!   must leave an admin, as must every later change to them.
//! - A binding with `segments` reaches only segments whose labels match
//!   it and policies that name only such segments (`world` and `any` are
//!   never within reach): a change to anything else needs another binding.
//!   A document is judged as it was and as it will be, so that relabelling
//!   a segment into reach, or a policy out of it, is refused too.
//! - The bindings that decide are those in force before the change, never
//!   those it brings.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use wardline_policy::parse::{
    CHANGE_CONTROL_KIND, CRITICAL_FLOW_KIND, GROUP_KIND, KEEP_PROFILE_KIND, NODE_APPROVAL_KIND,
    NODE_KIND, POLICY_KIND, ROLE_BINDING_KIND, SEGMENT_KIND, VENDOR_KIND,
};
use wardline_policy::{Peer, PolicySet, Role, RoleBinding};

/// What a call asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    /// Read the policy: get, validate, diff.
    ReadPolicy,
    /// Read the status of replicas, nodes and agents.
    ReadStatus,
    /// Read flow records, the segment matrix, top lists and the inventory,
    /// and sign in to the dashboard, which shows them.
    ReadFlows,
    /// Read the revision history and verify its chain.
    ReadHistory,
    /// Read the audit trail.
    ReadAudit,
    /// Change segments and policies: apply, delete, roll back.
    ChangePolicy,
    /// Change nodes: `Node` and `NodeApproval` documents, removing and
    /// unblocking nodes.
    ChangeNodes,
    /// Change role bindings, groups and the change control.
    ChangeRoles,
    /// Revoke certificates, and forget an operator's second factor.
    ChangePki,
    /// Approve or reject a change another person proposed, and sign off
    /// the review of a break-glass grant.
    Approve,
    /// Open emergency access at once.
    BreakGlass,
}

impl Verb {
    /// Every verb, in this order.
    pub const ALL: [Verb; 11] = [
        Verb::ReadPolicy,
        Verb::ReadStatus,
        Verb::ReadFlows,
        Verb::ReadHistory,
        Verb::ReadAudit,
        Verb::ChangePolicy,
        Verb::ChangeNodes,
        Verb::ChangeRoles,
        Verb::ChangePki,
        Verb::Approve,
        Verb::BreakGlass,
    ];

    /// As refusals, logs and metrics name it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::ReadPolicy => "read-policy",
            Verb::ReadStatus => "read-status",
            Verb::ReadFlows => "read-flows",
            Verb::ReadHistory => "read-history",
            Verb::ReadAudit => "read-audit",
            Verb::ChangePolicy => "change-policy",
            Verb::ChangeNodes => "change-nodes",
            Verb::ChangeRoles => "change-roles",
            Verb::ChangePki => "change-pki",
            Verb::Approve => "approve",
            Verb::BreakGlass => "break-glass",
        }
    }

    /// The verb a change to a document of `kind` asks for.
    pub fn of_kind(kind: &str) -> Option<Verb> {
        match kind {
            SEGMENT_KIND | POLICY_KIND | KEEP_PROFILE_KIND | VENDOR_KIND | CRITICAL_FLOW_KIND => {
                Some(Verb::ChangePolicy)
            }
            NODE_KIND | NODE_APPROVAL_KIND => Some(Verb::ChangeNodes),
            ROLE_BINDING_KIND | GROUP_KIND | CHANGE_CONTROL_KIND => Some(Verb::ChangeRoles),
            _ => None,
        }
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `role` allows `verb` (within a binding's reach, for a scoped
/// binding's changes).
pub const fn allows(role: Role, verb: Verb) -> bool {
    use Verb::*;
    match verb {
        ReadPolicy | ReadStatus | ReadFlows => true,
        ReadHistory => !matches!(role, Role::Viewer),
        ReadAudit => matches!(role, Role::Auditor | Role::Admin),
        ChangePolicy => matches!(role, Role::Operator),
        ChangeNodes | ChangeRoles | ChangePki => matches!(role, Role::Admin),
        Approve => matches!(role, Role::Approver),
        BreakGlass => matches!(role, Role::BreakGlass),
    }
}

/// The roles that allow `verb`.
fn roles_allowing(verb: Verb) -> Vec<Role> {
    Role::ALL.into_iter().filter(|r| allows(*r, verb)).collect()
}

/// A refusal: what was asked, by whom, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub operator: String,
    pub verb: Verb,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

/// The role bindings and groups of one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bindings {
    bindings: Vec<RoleBinding>,
    groups: BTreeMap<String, BTreeSet<String>>,
}

impl Bindings {
    /// The bindings of `set`.
    pub fn of(set: &PolicySet) -> Bindings {
        Bindings {
            bindings: set.role_bindings.clone(),
            groups: set
                .groups
                .iter()
                .map(|g| (g.name.clone(), g.members.iter().cloned().collect()))
                .collect(),
        }
    }

    /// Whether there are none: a site being set up, where every operator
    /// holds every role.
    pub fn bootstrap(&self) -> bool {
        self.bindings.is_empty()
    }

    /// What the operator whose certificate names `operator` holds.
    pub fn grants(&self, operator: &str) -> Grants {
        let held = self
            .bindings
            .iter()
            .filter(|b| {
                b.users.iter().any(|u| u == operator)
                    || b.groups.iter().any(|g| {
                        self.groups
                            .get(g)
                            .is_some_and(|members| members.contains(operator))
                    })
            })
            .map(|b| Held {
                role: b.role,
                binding: b.name.clone(),
                segments: b.segments.clone(),
            })
            .collect();
        Grants {
            operator: operator.to_owned(),
            bootstrap: self.bootstrap(),
            held,
        }
    }

    /// Whether some operator would still hold `admin` (bound by name, or
    /// through a group with members).
    fn has_admin(&self) -> bool {
        self.bindings.iter().any(|b| {
            b.role == Role::Admin
                && (!b.users.is_empty()
                    || b.groups
                        .iter()
                        .any(|g| self.groups.get(g).is_some_and(|m| !m.is_empty())))
        })
    }
}

/// One role an operator holds, and by which binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub role: Role,
    pub binding: String,
    /// The labels of the segments its changes may reach; `None`: all.
    pub segments: Option<BTreeMap<String, String>>,
}

/// What one operator holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    pub operator: String,
    /// No binding exists: every role, everywhere.
    pub bootstrap: bool,
    pub held: Vec<Held>,
}

/// One document a change touches.
#[derive(Clone, Copy, Debug)]
pub struct Changed<'a> {
    pub kind: &'a str,
    pub name: &'a str,
}

impl Grants {
    /// The roles held, each once.
    pub fn roles(&self) -> BTreeSet<Role> {
        if self.bootstrap {
            return Role::ALL.into_iter().collect();
        }
        self.held.iter().map(|h| h.role).collect()
    }

    /// Refuses `verb` unless some role held allows it (a scoped binding's
    /// changes are checked document by document: [`Grants::allow_change`]).
    pub fn allow(&self, verb: Verb) -> Result<(), Refusal> {
        if self.bootstrap || self.held.iter().any(|h| allows(h.role, verb)) {
            return Ok(());
        }
        Err(self.refusal(verb, format!("it needs {}", needs(verb))))
    }

    /// Refuses a change to `changed` unless the roles held allow a change
    /// to each document: `sets` gives the whole set before and after the
    /// change, read only when a scoped binding or a change to the bindings
    /// needs them.
    pub fn allow_change(
        &self,
        changed: &[Changed<'_>],
        sets: impl FnOnce() -> Result<(PolicySet, PolicySet), String>,
    ) -> Result<(), Refusal> {
        let mut scoped: Vec<&Changed<'_>> = Vec::new();
        let mut roles_changed = false;
        for c in changed {
            let Some(verb) = Verb::of_kind(c.kind) else {
                return Err(self.refusal(
                    Verb::ChangePolicy,
                    format!(
                        "{} {:?} is no kind of document this check knows",
                        c.kind, c.name
                    ),
                ));
            };
            roles_changed |= verb == Verb::ChangeRoles;
            if self.bootstrap {
                continue;
            }
            let holders: Vec<&Held> = self.held.iter().filter(|h| allows(h.role, verb)).collect();
            if holders.is_empty() {
                return Err(self.refusal(
                    verb,
                    format!("changing {} {:?} needs {}", c.kind, c.name, needs(verb)),
                ));
            }
            if holders.iter().all(|h| h.segments.is_some()) {
                scoped.push(c);
            }
        }
        if scoped.is_empty() && !roles_changed {
            return Ok(());
        }
        let (before, after) = sets().map_err(|e| {
            self.refusal(
                Verb::ChangePolicy,
                format!("the change could not be checked: {e}"),
            )
        })?;
        for c in scoped {
            let reach: Vec<&Held> = self
                .held
                .iter()
                .filter(|h| allows(h.role, Verb::ChangePolicy))
                .collect();
            let within = reach.iter().find(|h| {
                let selector = h.segments.as_ref().expect("only scoped holders remain");
                within_reach(&before, c, selector) && within_reach(&after, c, selector)
            });
            if within.is_none() {
                let reaches = reach
                    .iter()
                    .map(|h| {
                        format!(
                            "{:?} reaches segments labelled {}",
                            h.binding,
                            labels(h.segments.as_ref().expect("scoped"))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(self.refusal(
                    Verb::ChangePolicy,
                    format!(
                        "{} {:?} is beyond the reach of its bindings ({reaches}){}",
                        c.kind,
                        c.name,
                        why_beyond(&before, &after, c)
                    ),
                ));
            }
        }
        if roles_changed && !after.role_bindings.is_empty() && !Bindings::of(&after).has_admin() {
            return Err(self.refusal(
                Verb::ChangeRoles,
                "the change would leave no one an admin, and no one could change the bindings \
                 again; bind an admin in the same change"
                    .to_owned(),
            ));
        }
        Ok(())
    }

    /// Refuses approving a change to `changed` unless an approver binding
    /// held reaches every document of it (as [`Grants::allow_change`]
    /// judges an operator's reach).
    pub fn allow_approval(
        &self,
        changed: &[Changed<'_>],
        sets: impl FnOnce() -> Result<(PolicySet, PolicySet), String>,
    ) -> Result<(), Refusal> {
        self.allow(Verb::Approve)?;
        let holders: Vec<&Held> = self
            .held
            .iter()
            .filter(|h| allows(h.role, Verb::Approve))
            .collect();
        if self.bootstrap || holders.iter().any(|h| h.segments.is_none()) {
            return Ok(());
        }
        let (before, after) = sets().map_err(|e| {
            self.refusal(
                Verb::Approve,
                format!("the change could not be checked: {e}"),
            )
        })?;
        for c in changed {
            let within = holders.iter().any(|h| {
                let selector = h.segments.as_ref().expect("only scoped holders remain");
                within_reach(&before, c, selector) && within_reach(&after, c, selector)
            });
            if !within {
                return Err(self.refusal(
                    Verb::Approve,
                    format!(
                        "{} {:?} is beyond the reach of their approver bindings{}",
                        c.kind,
                        c.name,
                        why_beyond(&before, &after, c)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn refusal(&self, verb: Verb, why: String) -> Refusal {
        let holds = if self.held.is_empty() {
            "hold no role (no binding names them or a group of theirs)".to_owned()
        } else {
            format!(
                "hold {}",
                self.held
                    .iter()
                    .map(|h| format!("{} (binding {:?})", h.role, h.binding))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Refusal {
            operator: self.operator.clone(),
            verb,
            message: format!(
                "operator {:?} may not {}: {why}; they {holds}",
                self.operator,
                verb.as_str().replace('-', " ")
            ),
        }
    }
}

/// "the operator or admin role", for a verb.
fn needs(verb: Verb) -> String {
    let roles: Vec<String> = roles_allowing(verb)
        .iter()
        .map(|r| r.as_str().to_owned())
        .collect();
    match roles.as_slice() {
        [one] => format!("the {one} role"),
        [first @ .., last] => format!("the {} or {last} role", first.join(", ")),
        [] => "a role that does not exist".to_owned(),
    }
}

fn labels(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether the document `c` names is within a binding's reach in `set`
/// (true when it is not in `set`: created or deleted by the change).
fn within_reach(set: &PolicySet, c: &Changed<'_>, selector: &BTreeMap<String, String>) -> bool {
    let segment_within = |name: &str| {
        set.segments
            .iter()
            .find(|s| s.name == name)
            .is_some_and(|s| selects(selector, &s.labels))
    };
    match c.kind {
        SEGMENT_KIND => set
            .segments
            .iter()
            .find(|s| s.name == c.name)
            .is_none_or(|s| selects(selector, &s.labels)),
        POLICY_KIND => set
            .policies
            .iter()
            .find(|p| p.name == c.name)
            .is_none_or(|p| {
                p.from.iter().chain(&p.to).all(|peer| match peer {
                    Peer::Segment(name) => segment_within(name),
                    Peer::Any | Peer::World => false,
                })
            }),
        _ => false,
    }
}

/// What put `c` beyond reach, for the refusal.
fn why_beyond(before: &PolicySet, after: &PolicySet, c: &Changed<'_>) -> String {
    if c.kind != POLICY_KIND {
        return String::new();
    }
    let named: BTreeSet<String> = [before, after]
        .iter()
        .filter_map(|set| set.policies.iter().find(|p| p.name == c.name))
        .flat_map(|p| p.from.iter().chain(&p.to))
        .map(|peer| match peer {
            Peer::Segment(name) => name.clone(),
            Peer::Any => "any".to_owned(),
            Peer::World => "world".to_owned(),
        })
        .collect();
    format!(
        ": it names {}",
        named
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests;
