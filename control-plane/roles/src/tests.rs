use super::*;

const SITE: &str = "
apiVersion: wardline/v1
kind: Segment
metadata: {name: pumps, labels: {zone: clinical-devices}}
spec: {cidrs: [198.18.10.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server, labels: {zone: clinical-devices}}
spec: {cidrs: [198.18.11.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr, labels: {zone: clinical-systems}}
spec: {cidrs: [198.18.12.0/24]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: pumps-to-server}
spec: {action: allow, from: [pumps], to: [pump-server]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: pumps-to-ehr}
spec: {action: allow, from: [pumps], to: [ehr]}
---
apiVersion: wardline/v1
kind: Group
metadata: {name: biomed}
spec: {members: [bea, ben]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: site-admins}
spec: {role: admin, users: [ada]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: netops}
spec: {role: operator, users: [otto]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: biomed-devices}
spec:
  role: operator
  groups: [biomed]
  segments: {matchLabels: {zone: clinical-devices}}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: change-board}
spec: {role: approver, users: [april]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: compliance}
spec: {role: auditor, users: [audrey]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: ward-staff}
spec: {role: viewer, users: [vic]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: emergency}
spec: {role: break-glass, users: [brett]}
";

fn site() -> PolicySet {
    wardline_policy::parse(SITE).expect("the test site parses")
}

fn with(extra: &str) -> PolicySet {
    wardline_policy::parse(&format!("{SITE}---\n{extra}")).expect("parses")
}

fn changed<'a>(kind: &'a str, name: &'a str) -> Vec<Changed<'a>> {
    vec![Changed { kind, name }]
}

#[test]
fn every_role_against_every_verb() {
    let bindings = Bindings::of(&site());
    // (operator, role) and the verbs that role allows; every other verb
    // is refused.
    let table: [(&str, &[Verb]); 7] = [
        (
            "vic",
            &[Verb::ReadPolicy, Verb::ReadStatus, Verb::ReadFlows],
        ),
        (
            "audrey",
            &[
                Verb::ReadPolicy,
                Verb::ReadStatus,
                Verb::ReadFlows,
                Verb::ReadHistory,
                Verb::ReadAudit,
            ],
        ),
        (
            "otto",
            &[
                Verb::ReadPolicy,
                Verb::ReadStatus,
                Verb::ReadFlows,
                Verb::ReadHistory,
                Verb::ChangePolicy,
            ],
        ),
        (
            "april",
            &[
                Verb::ReadPolicy,
                Verb::ReadStatus,
                Verb::ReadFlows,
                Verb::ReadHistory,
                Verb::Approve,
            ],
        ),
        (
            "brett",
            &[
                Verb::ReadPolicy,
                Verb::ReadStatus,
                Verb::ReadFlows,
                Verb::ReadHistory,
                Verb::BreakGlass,
            ],
        ),
        (
            "ada",
            &[
                Verb::ReadPolicy,
                Verb::ReadStatus,
                Verb::ReadFlows,
                Verb::ReadHistory,
                Verb::ReadAudit,
                Verb::ChangeNodes,
                Verb::ChangeRoles,
                Verb::ChangePki,
            ],
        ),
        ("mallory", &[]),
    ];
    for (who, allowed) in table {
        let grants = bindings.grants(who);
        for verb in Verb::ALL {
            let got = grants.allow(verb);
            assert_eq!(
                got.is_ok(),
                allowed.contains(&verb),
                "{who} {verb}: {got:?}"
            );
            if let Err(r) = got {
                assert!(r.message.contains(who), "{r}");
                assert!(r.message.contains("needs the"), "{r}");
            }
        }
    }
    let refused = bindings
        .grants("mallory")
        .allow(Verb::ReadFlows)
        .unwrap_err();
    assert!(refused.message.contains("hold no role"), "{refused}");
    let refused = bindings.grants("vic").allow(Verb::ChangePki).unwrap_err();
    assert!(
        refused
            .message
            .contains("needs the admin role; they hold viewer (binding \"ward-staff\")"),
        "{refused}"
    );
}

#[test]
fn a_change_to_each_kind_needs_its_role() {
    let bindings = Bindings::of(&site());
    let sets = || Ok((site(), site()));
    for (kind, who_may, who_may_not) in [
        ("Segment", "otto", "ada"),
        ("Policy", "otto", "april"),
        ("Node", "ada", "otto"),
        ("NodeApproval", "ada", "otto"),
        ("RoleBinding", "ada", "otto"),
        ("Group", "ada", "audrey"),
    ] {
        let c = changed(kind, "x");
        assert!(
            bindings.grants(who_may).allow_change(&c, sets).is_ok(),
            "{who_may} changes {kind}"
        );
        let e = bindings
            .grants(who_may_not)
            .allow_change(&c, sets)
            .unwrap_err();
        assert!(e.message.contains(&format!("changing {kind} \"x\"")), "{e}");
    }
    let e = bindings
        .grants("otto")
        .allow_change(&changed("Mystery", "x"), sets)
        .unwrap_err();
    assert!(e.message.contains("no kind of document"), "{e}");
}

#[test]
fn a_scoped_binding_reaches_only_its_segments_and_policies_between_them() {
    let bindings = Bindings::of(&site());
    let bea = bindings.grants("bea");
    assert_eq!(bea.roles(), [Role::Operator].into_iter().collect());
    let unchanged = || Ok((site(), site()));
    // Within reach: a pump segment, and a policy between pump segments.
    assert!(
        bea.allow_change(&changed("Segment", "pumps"), unchanged)
            .is_ok()
    );
    assert!(
        bea.allow_change(&changed("Policy", "pumps-to-server"), unchanged)
            .is_ok()
    );
    // Beyond: the EHR segment, and a policy that names it.
    let e = bea
        .allow_change(&changed("Segment", "ehr"), unchanged)
        .unwrap_err();
    assert!(
        e.message
            .contains("\"biomed-devices\" reaches segments labelled zone=clinical-devices"),
        "{e}"
    );
    let e = bea
        .allow_change(&changed("Policy", "pumps-to-ehr"), unchanged)
        .unwrap_err();
    assert!(e.message.contains("it names \"ehr\", \"pumps\""), "{e}");
    // A new policy opening the pumps to the world, or to any: beyond.
    for to in ["world", "any"] {
        let after = with(&format!(
            "apiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: pumps-out}}\nspec: {{action: allow, from: [pumps], to: [{to}]}}\n"
        ));
        let e = bea
            .allow_change(&changed("Policy", "pumps-out"), || Ok((site(), after)))
            .unwrap_err();
        assert!(e.message.contains(&format!("\"{to}\"")), "{e}");
    }
    // Relabelling the EHR into reach is judged as it was: refused.
    let relabelled = wardline_policy::parse(&SITE.replace(
        "name: ehr, labels: {zone: clinical-systems}",
        "name: ehr, labels: {zone: clinical-devices}",
    ))
    .unwrap();
    let e = bea
        .allow_change(&changed("Segment", "ehr"), || Ok((site(), relabelled)))
        .unwrap_err();
    assert!(e.message.contains("beyond the reach"), "{e}");
    // And relabelling a pump segment out of reach is judged as it will be.
    let moved = wardline_policy::parse(&SITE.replace(
        "name: pumps, labels: {zone: clinical-devices}",
        "name: pumps, labels: {zone: elsewhere}",
    ))
    .unwrap();
    assert!(
        bea.allow_change(&changed("Segment", "pumps"), || Ok((site(), moved)))
            .is_err()
    );
    // An unscoped operator reaches everything; sets are not even read.
    assert!(
        bindings
            .grants("otto")
            .allow_change(&changed("Segment", "ehr"), || Err("not read".into()))
            .is_ok()
    );
}

#[test]
fn no_binding_is_set_up_mode_and_the_bindings_always_keep_an_admin() {
    let empty = Bindings::default();
    assert!(empty.bootstrap());
    let anyone = empty.grants("first-admin");
    assert_eq!(anyone.roles().len(), Role::ALL.len());
    for verb in Verb::ALL {
        assert!(anyone.allow(verb).is_ok());
    }
    // The first bindings must leave an admin.
    let no_admin = wardline_policy::parse(
        "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: ops}\nspec: {role: operator, users: [otto]}\n",
    )
    .unwrap();
    let e = anyone
        .allow_change(&changed("RoleBinding", "ops"), || {
            Ok((PolicySet::default(), no_admin))
        })
        .unwrap_err();
    assert!(e.message.contains("leave no one an admin"), "{e}");
    // So must every later change: an admin removing the last admin, or
    // emptying the group that made someone admin.
    let bindings = Bindings::of(&site());
    let without = wardline_policy::parse(
        &SITE.replace("role: admin, users: [ada]", "role: viewer, users: [ada]"),
    )
    .unwrap();
    let e = bindings
        .grants("ada")
        .allow_change(&changed("RoleBinding", "site-admins"), || {
            Ok((site(), without))
        })
        .unwrap_err();
    assert!(e.message.contains("leave no one an admin"), "{e}");
    let by_group = with(
        "apiVersion: wardline/v1\nkind: Group\nmetadata: {name: admins}\nspec: {members: []}\n---\napiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: admins}\nspec: {role: admin, groups: [admins]}\n",
    );
    let only_empty_group = PolicySet {
        role_bindings: by_group
            .role_bindings
            .iter()
            .filter(|b| b.name != "site-admins")
            .cloned()
            .collect(),
        ..by_group.clone()
    };
    assert!(!Bindings::of(&only_empty_group).has_admin());
    assert!(Bindings::of(&by_group).has_admin());
}

#[test]
fn the_bindings_that_decide_are_those_before_the_change() {
    // Otto, an operator, adds a binding making himself admin in the same
    // change: the bindings in force say he may not change bindings.
    let bindings = Bindings::of(&site());
    let after = with(
        "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: otto-admin}\nspec: {role: admin, users: [otto]}\n",
    );
    let e = bindings
        .grants("otto")
        .allow_change(&changed("RoleBinding", "otto-admin"), || {
            Ok((site(), after))
        })
        .unwrap_err();
    assert!(e.message.contains("needs the admin role"), "{e}");
}

#[test]
fn a_scoped_approver_approves_only_within_reach() {
    let site = with(
        "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {name: biomed-approvers}\nspec: {role: approver, users: [bert], segments: {matchLabels: {zone: clinical-devices}}}\n",
    );
    let bindings = Bindings::of(&site);
    let sets = || Ok((site.clone(), site.clone()));
    let bert = bindings.grants("bert");
    bert.allow_approval(&changed(POLICY_KIND, "pumps-to-server"), sets)
        .unwrap();
    let refused = bert
        .allow_approval(&changed(POLICY_KIND, "pumps-to-ehr"), sets)
        .unwrap_err();
    assert!(refused.message.contains("beyond the reach"), "{refused}");
    assert!(refused.message.contains("\"ehr\""), "{refused}");
    // A site-wide approver reaches everything; an operator approves nothing.
    bindings
        .grants("april")
        .allow_approval(&changed(POLICY_KIND, "pumps-to-ehr"), sets)
        .unwrap();
    assert!(
        bindings
            .grants("otto")
            .allow_approval(&changed(POLICY_KIND, "pumps-to-server"), sets)
            .is_err()
    );
}
