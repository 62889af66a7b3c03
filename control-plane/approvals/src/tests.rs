use super::*;

const SITE: &str = "
apiVersion: wardline/v1
kind: Segment
metadata: {name: monitors, labels: {critical: 'true'}}
spec: {cidrs: [198.18.30.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: central-station}
spec: {cidrs: [198.18.31.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: workstations}
spec: {cidrs: [198.18.40.0/24]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: [198.18.50.0/24]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: telemetry}
spec:
  action: allow
  from: [monitors]
  to: [central-station]
  ports: [{protocol: udp, port: 5000, endPort: 5010}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: ws-ehr}
spec: {action: allow, from: [workstations], to: [ehr], ports: [{protocol: tcp, port: 443}]}
---
apiVersion: wardline/v1
kind: RoleBinding
metadata: {name: admins}
spec: {role: admin, users: [ada]}
";

fn set(text: &str) -> PolicySet {
    wardline_policy::parse(text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
}

/// `SITE` with `old` replaced by `new`.
fn edited(old: &str, new: &str) -> PolicySet {
    assert!(SITE.contains(old), "{old}");
    set(&SITE.replace(old, new))
}

fn of(kind: &'static str, name: &'static str) -> Vec<Touched<'static>> {
    vec![Touched { kind, name }]
}

#[test]
fn narrowing_or_removing_an_allow_of_a_critical_segment_needs_approval() {
    let before = set(SITE);
    let narrower = edited("port: 5000, endPort: 5010", "port: 5000, endPort: 5005");
    let r = reasons(&before, &narrower, &of(POLICY_KIND, "telemetry"), false);
    assert_eq!(
        r,
        ["it narrows allow \"telemetry\", which reaches critical segment \"monitors\""]
    );
    let windowed = edited(
        "port: 5000, endPort: 5010}]",
        "port: 5000, endPort: 5010}]\n  validUntil: 2030-01-01T00:00:00Z",
    );
    assert_eq!(
        reasons(&before, &windowed, &of(POLICY_KIND, "telemetry"), false).len(),
        1
    );
    let removed = set(&SITE
        .replace("name: telemetry", "name: other")
        .replace("from: [monitors]", "from: [workstations]"));
    let touched = [
        Touched {
            kind: POLICY_KIND,
            name: "telemetry",
        },
        Touched {
            kind: POLICY_KIND,
            name: "other",
        },
    ];
    assert_eq!(
        reasons(&before, &removed, &touched, false),
        ["it removes allow \"telemetry\", which reaches critical segment \"monitors\""]
    );
}

#[test]
fn widening_an_allow_of_a_critical_segment_needs_none() {
    let before = set(SITE);
    for wider in [
        edited("port: 5000, endPort: 5010", "port: 4000, endPort: 6000"),
        edited(
            "ports: [{protocol: udp, port: 5000, endPort: 5010}]",
            "ports: [{protocol: udp, port: 5000, endPort: 5010}, {protocol: tcp, port: 22}]",
        ),
        edited(
            "ports: [{protocol: udp, port: 5000, endPort: 5010}]",
            "ports: []",
        ),
        edited("to: [central-station]", "to: [central-station, ehr]"),
    ] {
        assert_eq!(
            reasons(&before, &wider, &of(POLICY_KIND, "telemetry"), false),
            Vec::<String>::new()
        );
    }
}

#[test]
fn a_deny_reaching_a_critical_segment_needs_approval() {
    let before = set(SITE);
    let after = set(&format!(
        "{SITE}---\napiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: block}}\nspec: {{action: deny, from: [workstations], to: [monitors]}}\n"
    ));
    assert_eq!(
        reasons(&before, &after, &of(POLICY_KIND, "block"), false),
        ["deny \"block\" reaches critical segment \"monitors\""]
    );
}

#[test]
fn segments_a_critical_allow_depends_on_need_approval() {
    let before = set(SITE);
    // The other end of the critical allow.
    let moved = edited("cidrs: [198.18.31.0/24]", "cidrs: [198.18.32.0/24]");
    assert_eq!(
        reasons(&before, &moved, &of(SEGMENT_KIND, "central-station"), false),
        [
            "it changes segment \"central-station\", which allow \"telemetry\" names it with critical \"monitors\""
        ]
    );
    // Taking the critical label off is a change to a critical segment.
    let declassified = edited("labels: {critical: 'true'}", "labels: {}");
    assert_eq!(
        reasons(&before, &declassified, &of(SEGMENT_KIND, "monitors"), false),
        ["it changes segment \"monitors\", which is critical"]
    );
    // A new segment carving a monitor's address out of "monitors".
    let carved = set(&format!(
        "{SITE}---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: one-monitor}}\nspec: {{cidrs: [198.18.30.7/32]}}\n"
    ));
    assert_eq!(
        reasons(&before, &carved, &of(SEGMENT_KIND, "one-monitor"), false),
        [
            "segment \"one-monitor\" overlaps segment \"monitors\" (which is critical): it may take endpoints from it"
        ]
    );
    // Segments apart from them need none.
    let ehr = edited("cidrs: [198.18.50.0/24]", "cidrs: [198.18.51.0/24]");
    assert!(reasons(&before, &ehr, &of(SEGMENT_KIND, "ehr"), false).is_empty());
}

#[test]
fn roles_prune_and_the_change_control_always_need_approval() {
    let before = set(SITE);
    let after = edited("users: [ada]", "users: [ada, otto]");
    assert_eq!(
        reasons(&before, &after, &of(ROLE_BINDING_KIND, "admins"), false),
        ["it changes RoleBinding \"admins\": who may do what"]
    );
    assert_eq!(
        reasons(&before, &before, &[], true),
        ["it prunes: every stored document the source lacks is deleted"]
    );
    let control = set(&format!(
        "{SITE}---\napiVersion: wardline/v1\nkind: ChangeControl\nmetadata: {{name: site}}\nspec: {{everyChange: false}}\n"
    ));
    assert_eq!(
        reasons(&before, &control, &of(CHANGE_CONTROL_KIND, "site"), false),
        ["it changes the change control \"site\", which decides what needs approval"]
    );
}

#[test]
fn the_change_control_in_force_decides() {
    let with_control = |spec: &str| {
        set(&format!(
            "{SITE}---\napiVersion: wardline/v1\nkind: ChangeControl\nmetadata: {{name: site}}\nspec: {spec}\n"
        ))
    };
    // EHR is critical by the change control's own label.
    let before = with_control("{criticalSegments: {matchLabels: {zone: ehr}}}");
    let before_text = SITE.replace("name: ehr}", "name: ehr, labels: {zone: ehr}}");
    let before = {
        let mut b = set(&before_text);
        b.change_controls = before.change_controls;
        b
    };
    let after = set(&before_text.replace("port: 443}", "port: 8443}"));
    assert_eq!(
        reasons(&before, &after, &of(POLICY_KIND, "ws-ehr"), false),
        ["it narrows allow \"ws-ehr\", which reaches critical segment \"ehr\""]
    );
    // And "monitors" is no longer critical under it.
    let narrower = set(&before_text.replace("endPort: 5010", "endPort: 5005"));
    assert!(reasons(&before, &narrower, &of(POLICY_KIND, "telemetry"), false).is_empty());

    let every = with_control("{everyChange: true}");
    assert_eq!(
        reasons(&every, &every, &of(SEGMENT_KIND, "ehr"), false),
        ["the change control \"site\" makes every change need approval"]
    );
}

#[test]
fn a_site_being_set_up_needs_no_approval() {
    let open = set(&SITE.replace(
        "kind: RoleBinding\nmetadata: {name: admins}\nspec: {role: admin, users: [ada]}\n",
        "kind: Group\nmetadata: {name: g}\nspec: {members: [ada]}\n",
    ));
    assert!(open.role_bindings.is_empty());
    assert!(reasons(&open, &set(SITE), &of(ROLE_BINDING_KIND, "admins"), true).is_empty());
}
