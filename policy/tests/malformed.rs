//! Malformed policy sources: each is rejected with a message that names the
//! document, the field and the value at fault.

use wardline_policy::{PolicyError, PolicyErrors, parse};

/// A Segment document with `spec` written inline.
fn segment(name: &str, spec: &str) -> String {
    format!("apiVersion: wardline/v1\nkind: Segment\nmetadata:\n  name: {name}\nspec: {spec}\n")
}

/// A Policy document with `spec` written inline.
fn policy(name: &str, spec: &str) -> String {
    format!("apiVersion: wardline/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec: {spec}\n")
}

/// Two valid segments (documents 1 and 2) that policies can name.
fn base() -> Vec<String> {
    vec![
        segment("infusion-pumps", "{cidrs: [198.18.30.0/24], vlans: [30]}"),
        segment("pump-server", "{cidrs: [198.18.42.0/24]}"),
    ]
}

/// The base segments, then a policy (document 3) with `spec`.
fn with_policy(spec: &str) -> String {
    let mut docs = base();
    docs.push(policy("pumps-to-pump-server", spec));
    docs.join("---\n")
}

/// The base segments, then a segment (document 3) with `spec`.
fn with_segment(name: &str, spec: &str) -> String {
    let mut docs = base();
    docs.push(segment(name, spec));
    docs.join("---\n")
}

fn errors(source: &str) -> Vec<PolicyError> {
    match parse(source) {
        Ok(set) => panic!("accepted: {set:#?}\nsource:\n{source}"),
        Err(errors) => errors.0,
    }
}

/// Asserts that `source` is rejected with exactly `expected` (displayed
/// errors, one per line).
#[track_caller]
fn assert_rejected(source: &str, expected: &[&str]) {
    let errors = errors(source);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown, expected, "source:\n{source}");
}

/// A `spec` for policy tests, completing what the test does not set.
const ALLOW: &str = "action: allow, from: [infusion-pumps], to: [pump-server]";

// YAML.

#[test]
fn yaml_syntax_error_names_line_and_column() {
    let source = "\
apiVersion: wardline/v1
kind: Segment
metadata:
  name: pacs
spec:
  cidrs: [198.18.40.0/24
  vlans: [40]
";
    let errors = errors(source);
    assert_eq!(errors.len(), 1, "{}", PolicyErrors(errors.clone()));
    let error = &errors[0];
    assert_eq!(error.document, 1);
    assert_eq!(error.field, None);
    let location = error.location.expect("a syntax error has a location");
    assert_eq!((location.line, location.column), (7, 8));
    assert_eq!(
        error.to_string(),
        "document 1: line 7, column 8: invalid YAML: illegal placement of ':' indicator"
    );
}

#[test]
fn yaml_syntax_error_in_a_later_document_keeps_source_lines_and_other_errors() {
    let source = format!(
        "{}---\n{}---\n{}",
        segment("infusion-pumps", "{cidrs: [198.18.30.0/24]}"),
        "apiVersion: wardline/v1\nkind: Segment\nmetadata:\n  name: pacs\n  labels: {zone: x\n",
        segment("ehr", "{cidrs: [198.18.41.0/33]}"),
    );
    let errors = errors(&source);
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 2, "{shown:#?}");
    // The bracket left open, on the source's line 11.
    assert!(
        shown[0].starts_with("document 2: line 11, column 11: invalid YAML: unclosed bracket '{'"),
        "{}",
        shown[0]
    );
    assert_eq!(
        shown[1],
        "document 3 (Segment \"ehr\"): spec.cidrs[0]: \"198.18.41.0/33\" is not a valid CIDR (invalid prefix length)"
    );
}

#[test]
fn unreadable_document_does_not_cause_unknown_segment_errors() {
    // Document 2 may well define the segment the policy names.
    let source = format!(
        "{}---\nkind: Segment\nmetadata: {{name: pacs\n---\n{}",
        segment("infusion-pumps", "{cidrs: [198.18.30.0/24]}"),
        policy(
            "to-pacs",
            "{action: allow, from: [infusion-pumps], to: [pacs]}"
        ),
    );
    let errors = errors(&source);
    assert_eq!(errors.len(), 1, "{}", PolicyErrors(errors.clone()));
    assert_eq!(errors[0].document, 2);
    assert!(errors[0].location.is_some());
}

#[test]
fn duplicate_yaml_key() {
    let source = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pacs}\nspec:\n  cidrs: [198.18.40.0/24]\n  cidrs: [198.18.41.0/24]\n";
    let errors = errors(source);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].document, 1);
    assert!(
        errors[0]
            .message
            .contains("duplicate entry with key \"cidrs\""),
        "{}",
        errors[0]
    );
}

#[test]
fn document_is_not_a_mapping() {
    assert_rejected(
        &format!("{}---\n- a\n- list\n", base().join("---\n")),
        &["document 3: expected a document with apiVersion, kind, metadata and spec, found a list"],
    );
}

// The envelope.

#[test]
fn wrong_api_version() {
    assert_rejected(
        &base().join("---\n").replace(
            "wardline/v1\nkind: Segment\nmetadata:\n  name: pump",
            "wardline/v2\nkind: Segment\nmetadata:\n  name: pump",
        ),
        &[
            "document 2 (Segment \"pump-server\"): apiVersion: \"wardline/v2\" is not supported (expected wardline/v1)",
        ],
    );
}

#[test]
fn missing_api_version() {
    assert_rejected(
        "kind: Segment\nmetadata: {name: pacs}\nspec: {cidrs: [198.18.40.0/24]}\n",
        &["document 1 (Segment \"pacs\"): apiVersion: required field is missing"],
    );
}

#[test]
fn unknown_kind() {
    assert_rejected(
        "apiVersion: wardline/v1\nkind: Segmnet\nmetadata: {name: pacs}\nspec: {cidrs: [198.18.40.0/24]}\n",
        &[
            "document 1 (\"pacs\"): kind: \"Segmnet\" is not a kind of document (expected Segment, Policy, Node, NodeApproval, RoleBinding, Group, ChangeControl, KeepProfile, Vendor or CriticalFlow; did you mean \"Segment\"?)",
        ],
    );
    assert_rejected(
        "apiVersion: wardline/v1\nkind: NetworkPolicy\nmetadata: {name: pacs}\nspec: {}\n",
        &[
            "document 1 (\"pacs\"): kind: \"NetworkPolicy\" is not a kind of document (expected Segment, Policy, Node, NodeApproval, RoleBinding, Group, ChangeControl, KeepProfile, Vendor or CriticalFlow)",
        ],
    );
}

#[test]
fn unknown_top_level_field() {
    assert_rejected(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: pacs}\nspec: {cidrs: [198.18.40.0/24]}\nstatus: {}\n",
        &[
            "document 1 (Segment \"pacs\"): status: unknown field (expected one of: apiVersion, kind, metadata, spec)",
        ],
    );
}

#[test]
fn missing_spec() {
    assert_rejected(
        "apiVersion: wardline/v1\nkind: Policy\nmetadata: {name: p}\n",
        &["document 1 (Policy \"p\"): spec: required field is missing"],
    );
}

// Names.

#[test]
fn missing_name() {
    assert_rejected(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata: {labels: {zone: clinical}}\nspec: {cidrs: [198.18.40.0/24]}\n",
        &["document 1 (Segment): metadata.name: required field is missing"],
    );
}

#[test]
fn uppercase_name() {
    assert_rejected(
        &with_segment("Radiology", "{cidrs: [198.18.45.0/24]}"),
        &[
            "document 3 (Segment \"Radiology\"): metadata.name: \"Radiology\" is not a valid name (uppercase 'R'; names are lowercase)",
        ],
    );
}

#[test]
fn name_with_underscore() {
    assert_rejected(
        &with_segment("patient_monitors", "{cidrs: [198.18.31.0/24]}"),
        &[
            "document 3 (Segment \"patient_monitors\"): metadata.name: \"patient_monitors\" is not a valid name ('_' is not allowed; use lowercase letters, digits and '-')",
        ],
    );
}

#[test]
fn name_too_long() {
    let name = "x".repeat(64);
    assert_rejected(
        &with_segment(&name, "{cidrs: [198.18.45.0/24]}"),
        &[&format!(
            "document 3 (Segment \"{name}\"): metadata.name: \"{name}\" is not a valid name (64 characters; at most 63)"
        )],
    );
}

#[test]
fn name_with_leading_hyphen() {
    assert_rejected(
        &with_segment("-pacs", "{cidrs: [198.18.40.0/24]}"),
        &[
            "document 3 (Segment \"-pacs\"): metadata.name: \"-pacs\" is not a valid name (must start with a letter or digit)",
        ],
    );
}

#[test]
fn name_is_a_number() {
    assert_rejected(
        &with_segment("42", "{cidrs: [198.18.40.0/24]}").replace("name: 42", "name: 42.5"),
        &["document 3 (Segment): metadata.name: expected a string, found a number (42.5)"],
    );
}

#[test]
fn duplicate_segment_name() {
    assert_rejected(
        &with_segment("pump-server", "{cidrs: [198.18.43.0/24]}"),
        &[
            "document 3 (Segment \"pump-server\"): metadata.name: \"pump-server\" is already the name of document 2 (Segment \"pump-server\")",
        ],
    );
}

#[test]
fn duplicate_policy_name() {
    let mut docs = base();
    docs.push(policy("p", &format!("{{{ALLOW}}}")));
    docs.push(policy("p", &format!("{{{ALLOW}}}")));
    assert_rejected(
        &docs.join("---\n"),
        &[
            "document 4 (Policy \"p\"): metadata.name: \"p\" is already the name of document 3 (Policy \"p\")",
        ],
    );
}

#[test]
fn reserved_segment_names() {
    assert_rejected(
        &with_segment("world", "{cidrs: [198.18.45.0/24]}"),
        &[
            "document 3 (Segment \"world\"): metadata.name: \"world\" is reserved: in a policy it means the addresses no segment claims",
        ],
    );
    assert_rejected(
        &with_segment("any", "{cidrs: [198.18.45.0/24]}"),
        &[
            "document 3 (Segment \"any\"): metadata.name: \"any\" is reserved: in a policy it means every segment, world included",
        ],
    );
}

#[test]
fn bad_label_value() {
    assert_rejected(
        "apiVersion: wardline/v1\nkind: Segment\nmetadata:\n  name: pacs\n  labels: {floor: 3, zone: radiology dept}\nspec: {cidrs: [198.18.40.0/24]}\n",
        &[
            "document 1 (Segment \"pacs\"): metadata.labels.floor: expected a string, found a number (3); quote it: \"3\"",
            "document 1 (Segment \"pacs\"): metadata.labels.zone: \"radiology dept\" is not a valid label value (' ' is not allowed; use letters, digits, '-', '_' and '.')",
        ],
    );
}

// Segments.

#[test]
fn unknown_field_in_segment_spec() {
    assert_rejected(
        &with_segment("pacs", "{cidrs: [198.18.40.0/24], vlan: [40]}"),
        &["document 3 (Segment \"pacs\"): spec.vlan: unknown field (did you mean \"vlans\"?)"],
    );
}

#[test]
fn cidrs_is_a_string() {
    assert_rejected(
        &with_segment("pacs", "{cidrs: 198.18.40.0/24}"),
        &[
            "document 3 (Segment \"pacs\"): spec.cidrs: expected a list of CIDRs, such as [\"198.18.30.0/24\"], found a string (\"198.18.40.0/24\")",
        ],
    );
}

#[test]
fn cidr_bad_syntax() {
    assert_rejected(
        &with_segment("pacs", "{cidrs: [198.18.400.0/24, pacs.example]}"),
        &[
            "document 3 (Segment \"pacs\"): spec.cidrs[0]: \"198.18.400.0/24\" is not a valid CIDR (invalid address)",
            "document 3 (Segment \"pacs\"): spec.cidrs[1]: \"pacs.example\" is not a valid CIDR (expected an address and a prefix length, such as 198.18.30.0/24)",
        ],
    );
}

#[test]
fn cidr_without_prefix_length() {
    assert_rejected(
        &with_segment("pacs", "{cidrs: [198.18.40.10]}"),
        &[
            "document 3 (Segment \"pacs\"): spec.cidrs[0]: \"198.18.40.10\" is not a valid CIDR (no prefix length; for this one address write \"198.18.40.10/32\")",
        ],
    );
}

#[test]
fn cidr_prefix_too_long() {
    assert_rejected(
        &with_segment(
            "infusion-pumps-2",
            "{cidrs: [\"198.18.31.0/24\", \"198.18.30.0/33\"]}",
        ),
        &[
            "document 3 (Segment \"infusion-pumps-2\"): spec.cidrs[1]: \"198.18.30.0/33\" is not a valid CIDR (invalid prefix length)",
        ],
    );
    assert_rejected(
        &with_segment("ehr", "{cidrs: [\"2001:db8:41::/129\"]}"),
        &[
            "document 3 (Segment \"ehr\"): spec.cidrs[0]: \"2001:db8:41::/129\" is not a valid CIDR (invalid prefix length)",
        ],
    );
}

#[test]
fn cidr_with_host_bits() {
    assert_rejected(
        &with_segment("pacs", "{cidrs: [198.18.40.17/24, \"2001:db8:40::1/64\"]}"),
        &[
            "document 3 (Segment \"pacs\"): spec.cidrs[0]: \"198.18.40.17/24\" has host bits set (did you mean \"198.18.40.0/24\"?)",
            "document 3 (Segment \"pacs\"): spec.cidrs[1]: \"2001:db8:40::1/64\" has host bits set (did you mean \"2001:db8:40::/64\"?)",
        ],
    );
}

#[test]
fn duplicate_prefix_across_segments_names_both_documents() {
    assert_rejected(
        &with_segment("pumps-east", "{cidrs: [198.18.31.0/24, 198.18.30.0/24]}"),
        &[
            "document 3 (Segment \"pumps-east\"): spec.cidrs[1]: \"198.18.30.0/24\" is already claimed by document 1 (Segment \"infusion-pumps\")",
        ],
    );
}

#[test]
fn duplicate_prefix_within_a_segment_spelled_differently() {
    assert_rejected(
        &with_segment(
            "ehr",
            "{cidrs: [\"2001:db8:41::/64\", \"2001:0db8:0041:0000::/64\"]}",
        ),
        &[
            "document 3 (Segment \"ehr\"): spec.cidrs[1]: \"2001:0db8:0041:0000::/64\" is listed twice (also spec.cidrs[0])",
        ],
    );
}

#[test]
fn vlan_zero() {
    assert_rejected(
        &with_segment("pacs", "{vlans: [0]}"),
        &[
            "document 3 (Segment \"pacs\"): spec.vlans[0]: 0 is not a valid VLAN ID (VLAN 0 only carries a priority, it is not a VLAN; must be 1..=4094)",
        ],
    );
}

#[test]
fn vlan_4095() {
    assert_rejected(
        &with_segment("pacs", "{vlans: [40, 4095]}"),
        &[
            "document 3 (Segment \"pacs\"): spec.vlans[1]: 4095 is not a valid VLAN ID (4095 is reserved; must be 1..=4094)",
        ],
    );
}

#[test]
fn vlan_out_of_range_or_not_a_number() {
    assert_rejected(
        &with_segment("pacs", "{vlans: [-1, 70000, \"40\"]}"),
        &[
            "document 3 (Segment \"pacs\"): spec.vlans[0]: -1 is not a valid VLAN ID (must be 1..=4094)",
            "document 3 (Segment \"pacs\"): spec.vlans[1]: 70000 is not a valid VLAN ID (must be 1..=4094)",
            "document 3 (Segment \"pacs\"): spec.vlans[2]: expected a VLAN ID (1..=4094), found a string (\"40\")",
        ],
    );
}

#[test]
fn duplicate_vlan_names_both_documents() {
    assert_rejected(
        &with_segment(
            "patient-monitors",
            "{cidrs: [198.18.31.0/24], vlans: [31, 30]}",
        ),
        &[
            "document 3 (Segment \"patient-monitors\"): spec.vlans[1]: VLAN 30 is already claimed by document 1 (Segment \"infusion-pumps\")",
        ],
    );
}

#[test]
fn bad_mode() {
    assert_rejected(
        &with_segment("pacs", "{cidrs: [198.18.40.0/24], mode: audit}"),
        &[
            "document 3 (Segment \"pacs\"): spec.mode: \"audit\" is not a mode (expected enforce or monitor)",
        ],
    );
    assert_rejected(
        &with_segment("pacs", "{cidrs: [198.18.40.0/24], mode: monitoring}"),
        &[
            "document 3 (Segment \"pacs\"): spec.mode: \"monitoring\" is not a mode (expected enforce or monitor; did you mean \"monitor\"?)",
        ],
    );
}

#[test]
fn empty_node_selector() {
    assert_rejected(
        &with_segment("pacs", "{nodeSelector: {matchLabels: {}}}"),
        &[
            "document 3 (Segment \"pacs\"): spec.nodeSelector.matchLabels: must name at least one label (an empty selector would match every node)",
        ],
    );
    assert_rejected(
        &with_segment("pacs", "{nodeSelector: {role: pacs}}"),
        &[
            "document 3 (Segment \"pacs\"): spec.nodeSelector.role: unknown field (expected one of: matchLabels)",
            "document 3 (Segment \"pacs\"): spec.nodeSelector.matchLabels: required field is missing (an empty selector would match every node)",
        ],
    );
}

#[test]
fn segment_without_members() {
    assert_rejected(
        &with_segment("pacs", "{cidrs: [], mode: monitor}"),
        &[
            "document 3 (Segment \"pacs\"): spec: a segment needs at least one of cidrs, vlans or nodeSelector, or it has no members",
        ],
    );
}

// Policies.

#[test]
fn unknown_field_in_policy_spec() {
    assert_rejected(
        &with_policy("{action: allow, form: [infusion-pumps], to: [pump-server]}"),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.form: unknown field (did you mean \"from\"?)",
            "document 3 (Policy \"pumps-to-pump-server\"): spec.from: required field is missing",
        ],
    );
}

#[test]
fn missing_action() {
    assert_rejected(
        &with_policy("{from: [infusion-pumps], to: [pump-server]}"),
        &["document 3 (Policy \"pumps-to-pump-server\"): spec.action: required field is missing"],
    );
}

#[test]
fn bad_action() {
    assert_rejected(
        &with_policy("{action: permit, from: [infusion-pumps], to: [pump-server]}"),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.action: \"permit\" is not an action (expected allow or deny)",
        ],
    );
}

#[test]
fn empty_from() {
    assert_rejected(
        &with_policy("{action: allow, from: [], to: [pump-server]}"),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.from: must name at least one segment, world or any",
        ],
    );
}

#[test]
fn from_is_a_string() {
    assert_rejected(
        &with_policy("{action: allow, from: infusion-pumps, to: [pump-server]}"),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.from: expected a list of segment names, found a string (\"infusion-pumps\"); write [infusion-pumps]",
        ],
    );
}

#[test]
fn unknown_segment_in_to() {
    assert_rejected(
        &with_policy(
            "{action: allow, from: [infusion-pumps], to: [pump-server, pumps-server, radiology]}",
        ),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.to[1]: \"pumps-server\" is not a segment (did you mean \"pump-server\"?)",
            "document 3 (Policy \"pumps-to-pump-server\"): spec.to[2]: \"radiology\" is not a segment (no Segment document has this name)",
        ],
    );
}

#[test]
fn unknown_segment_in_from() {
    let errors = errors(&with_policy(
        "{action: allow, from: [World], to: [pump-server]}",
    ));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field.as_deref(), Some("spec.from[0]"));
    assert_eq!(
        errors[0].message,
        "\"World\" is not a segment (did you mean \"world\"?)"
    );
}

#[test]
fn ports_with_no_value() {
    assert_rejected(
        &with_policy(&format!("{{{ALLOW}, ports: }}")),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports: has no value: omit ports, or write ports: [], to mean every protocol and port",
        ],
    );
}

#[test]
fn unknown_field_in_port_entry() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, ports: [{{protocol: tcp, port: 443, end_port: 444}}]}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].end_port: unknown field (did you mean \"endPort\"?)",
        ],
    );
}

#[test]
fn bad_protocol() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, ports: [{{protocol: tcp, port: 443}}, {{protocol: TCP, port: 8443}}, {{protocol: http}}]}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[1].protocol: \"TCP\" is not a protocol (expected tcp, udp, sctp, icmp, icmpv6 or any; did you mean \"tcp\"?)",
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[2].protocol: \"http\" is not a protocol (expected tcp, udp, sctp, icmp, icmpv6 or any)",
        ],
    );
}

#[test]
fn missing_protocol() {
    assert_rejected(
        &with_policy(&format!("{{{ALLOW}, ports: [{{port: 443}}]}}")),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].protocol: required field is missing",
        ],
    );
}

#[test]
fn port_zero() {
    assert_rejected(
        &with_policy(&format!("{{{ALLOW}, ports: [{{protocol: udp, port: 0}}]}}")),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].port: 0 is not a valid port (must be 1..=65535)",
        ],
    );
}

#[test]
fn port_70000() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, ports: [{{protocol: tcp, port: 70000}}]}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].port: 70000 is not a valid port (must be 1..=65535)",
        ],
    );
}

#[test]
fn end_port_out_of_range() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, ports: [{{protocol: tcp, port: 1024, endPort: 65536}}]}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].endPort: 65536 is not a valid port (must be 1..=65535)",
        ],
    );
}

#[test]
fn port_range_as_a_string() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, ports: [{{protocol: udp, port: \"5000-5010\"}}]}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].port: expected a port number, found a string (\"5000-5010\"); write a range as port and endPort",
        ],
    );
}

#[test]
fn end_port_below_port() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, ports: [{{protocol: udp, port: 5010, endPort: 5000}}]}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].endPort: 5000 is less than port 5010 (a range runs from port up to endPort)",
        ],
    );
}

#[test]
fn end_port_without_port() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, ports: [{{protocol: udp, endPort: 5010}}]}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].endPort: endPort needs port, the first port of the range",
        ],
    );
}

#[test]
fn port_with_icmp() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, ports: [{{protocol: icmp, port: 8}}, {{protocol: icmpv6, endPort: 2}}]}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[0].port: icmp has no ports; remove port",
            "document 3 (Policy \"pumps-to-pump-server\"): spec.ports[1].endPort: icmpv6 has no ports; remove endPort",
        ],
    );
}

#[test]
fn bad_valid_until() {
    assert_rejected(
        &with_policy(&format!("{{{ALLOW}, validUntil: \"2026-01-01 noon\"}}")),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.validUntil: \"2026-01-01 noon\" is not an RFC 3339 date and time such as 2026-01-01T08:00:00Z (the 'hour' component could not be parsed)",
        ],
    );
    assert_rejected(
        &with_policy(&format!("{{{ALLOW}, validUntil: 2026-01-01T12:00:00}}")),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.validUntil: \"2026-01-01T12:00:00\" is not an RFC 3339 date and time such as 2026-01-01T08:00:00Z (the 'offset hour' component could not be parsed)",
        ],
    );
}

#[test]
fn valid_from_after_valid_until() {
    assert_rejected(
        &with_policy(&format!(
            "{{{ALLOW}, validFrom: 2026-01-01T12:00:00Z, validUntil: 2026-01-01T08:00:00Z}}"
        )),
        &[
            "document 3 (Policy \"pumps-to-pump-server\"): spec.validFrom: 2026-01-01T12:00:00Z is not before validUntil 2026-01-01T08:00:00Z",
        ],
    );
    // An empty window is no window either, whatever the offsets.
    let errors = errors(&with_policy(&format!(
        "{{{ALLOW}, validFrom: 2026-01-01T09:00:00+01:00, validUntil: 2026-01-01T08:00:00Z}}"
    )));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field.as_deref(), Some("spec.validFrom"));
}

// Across documents.

#[test]
fn error_in_a_later_document_has_its_index() {
    let mut docs = base();
    docs.push(policy("pumps-to-pump-server", &format!("{{{ALLOW}}}")));
    docs.push(segment("pacs", "{cidrs: [198.18.40.0/24]}"));
    docs.push(policy(
        "workstations-to-pacs",
        "{action: allow, from: [clinician-workstations], to: [pacs]}",
    ));
    let errors = errors(&docs.join("---\n"));
    assert_eq!(errors.len(), 1, "{}", PolicyErrors(errors.clone()));
    let error = &errors[0];
    assert_eq!(error.document, 5);
    assert_eq!(error.kind.as_deref(), Some("Policy"));
    assert_eq!(error.name.as_deref(), Some("workstations-to-pacs"));
    assert_eq!(error.field.as_deref(), Some("spec.from[0]"));
    assert_eq!(
        error.message,
        "\"clinician-workstations\" is not a segment (no Segment document has this name)"
    );
}

#[test]
fn empty_documents_are_not_counted() {
    let source = format!(
        "# header\n---\n{}---\n---\n# only a comment\n---\n{}---\n",
        segment("infusion-pumps", "{cidrs: [198.18.30.0/24]}"),
        segment("pacs", "{vlans: [0]}"),
    );
    let errors = errors(&source);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].document, 2);
}

#[test]
fn policy_may_name_a_segment_defined_after_it() {
    let source = [
        policy("to-pacs", "{action: allow, from: [world], to: [pacs]}"),
        segment("pacs", "{cidrs: [198.18.40.0/24]}"),
    ]
    .join("---\n");
    let set = parse(&source).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(set.policies[0].doc.index, 1);
}

#[test]
fn several_errors_are_collected_at_once() {
    let source = [
        segment("infusion-pumps", "{cidrs: [198.18.30.0/24], vlans: [30]}"),
        segment("Pumps", "{cidrs: [198.18.30.1/24], vlans: [30], mode: on}"),
        policy(
            "p",
            "{action: allow, from: [infusion-pumps], to: [], ports: [{protocol: tcp, port: 0}]}",
        ),
        "apiVersion: wardline/v1\nkind: Policy\nmetadata: {name: q}\nspec: {action: maybe, from: [any], to: [nowhere], validFrom: soon}\n".to_owned(),
    ]
    .join("---\n");
    let errors = parse(&source).expect_err("rejected");
    assert_eq!(
        errors.to_string(),
        "\
document 2 (Segment \"Pumps\"): metadata.name: \"Pumps\" is not a valid name (uppercase 'P'; names are lowercase)
document 2 (Segment \"Pumps\"): spec.cidrs[0]: \"198.18.30.1/24\" has host bits set (did you mean \"198.18.30.0/24\"?)
document 2 (Segment \"Pumps\"): spec.vlans[0]: VLAN 30 is already claimed by document 1 (Segment \"infusion-pumps\")
document 2 (Segment \"Pumps\"): spec.mode: \"on\" is not a mode (expected enforce or monitor)
document 3 (Policy \"p\"): spec.to: must name at least one segment, world or any
document 3 (Policy \"p\"): spec.ports[0].port: 0 is not a valid port (must be 1..=65535)
document 4 (Policy \"q\"): spec.action: \"maybe\" is not an action (expected allow or deny)
document 4 (Policy \"q\"): spec.to[0]: \"nowhere\" is not a segment (no Segment document has this name)
document 4 (Policy \"q\"): spec.validFrom: \"soon\" is not an RFC 3339 date and time such as 2026-01-01T08:00:00Z (the 'year' component could not be parsed)"
    );
    assert_eq!(errors.len(), 9);
    assert_eq!(
        errors.in_source("site.yaml").to_string().lines().next(),
        Some(
            "site.yaml: document 2 (Segment \"Pumps\"): metadata.name: \"Pumps\" is not a valid name (uppercase 'P'; names are lowercase)"
        )
    );
}

#[test]
fn node_documents() {
    assert_rejected(
        "apiVersion: wardline/v1\nkind: Node\nmetadata: {name: gw-1}\nspec: {addresses: []}\n",
        &[
            "document 1 (Node \"gw-1\"): spec.addresses: at least one address range is needed: a node claims no address outside them",
        ],
    );
    assert_rejected(
        "apiVersion: wardline/v1\nkind: Node\nmetadata: {name: gw-1}\nspec: {addresses: [198.18.30.1/24]}\n",
        &[
            "document 1 (Node \"gw-1\"): spec.addresses[0]: \"198.18.30.1/24\" has host bits set (did you mean \"198.18.30.0/24\"?)",
        ],
    );
    assert_rejected(
        "apiVersion: wardline/v1\nkind: NodeApproval\nmetadata: {name: any-node}\nspec: {nodes: [\"*\"], addresses: [198.18.30.0/24]}\n",
        &[
            "document 1 (NodeApproval \"any-node\"): spec.nodes[0]: \"*\" is not a node name or pattern (a pattern of * alone would admit every node; name them)",
        ],
    );
    assert_rejected(
        "apiVersion: wardline/v1\nkind: NodeApproval\nmetadata: {name: wards}\nspec: {nodes: [\"ward-*-a\"]}\n",
        &[
            "document 1 (NodeApproval \"wards\"): spec.nodes[0]: \"ward-*-a\" is not a node name or pattern (only a trailing * is a pattern)",
            "document 1 (NodeApproval \"wards\"): spec.addresses: required field is missing",
        ],
    );
}

#[test]
fn bad_role_bindings_and_groups() {
    let rb = |spec: &str| {
        format!(
            "apiVersion: wardline/v1\nkind: RoleBinding\nmetadata: {{name: ops}}\nspec: {spec}\n"
        )
    };
    assert_rejected(
        &rb("{role: superuser, users: [otto]}"),
        &[
            "document 1 (RoleBinding \"ops\"): spec.role: \"superuser\" is not a role (expected viewer, auditor, operator, approver, admin or break-glass)",
        ],
    );
    assert_rejected(
        &rb("{role: oprator, users: [otto]}"),
        &[
            "document 1 (RoleBinding \"ops\"): spec.role: \"oprator\" is not a role (expected viewer, auditor, operator, approver, admin or break-glass; did you mean \"operator\"?)",
        ],
    );
    assert_rejected(
        &rb("{role: operator}"),
        &[
            "document 1 (RoleBinding \"ops\"): spec: a role binding needs users or groups, or it gives its role to no one",
        ],
    );
    assert_rejected(
        &rb("{role: operator, groups: [biomed]}"),
        &[
            "document 1 (RoleBinding \"ops\"): spec.groups[0]: \"biomed\" is not a group (no Group document has that name)",
        ],
    );
    assert_rejected(
        &rb("{role: operator, users: [\"Otto Smith\", otto, otto]}"),
        &[
            "document 1 (RoleBinding \"ops\"): spec.users[0]: \"Otto Smith\" is not an operator name (the name in its certificate: uppercase 'O'; names are lowercase)",
            "document 1 (RoleBinding \"ops\"): spec.users[2]: \"otto\" is named twice",
        ],
    );
    assert_rejected(
        &rb("{role: admin, users: [ada], segments: {matchLabels: {zone: clinical-devices}}}"),
        &[
            "document 1 (RoleBinding \"ops\"): spec.segments: only an operator or approver binding may reach some segments only; the admin role is for the whole site",
        ],
    );
    assert_rejected(
        &rb("{role: operator, users: [bea], segments: {matchLabels: {}}}"),
        &[
            "document 1 (RoleBinding \"ops\"): spec.segments.matchLabels: must name at least one label (an empty selector would match every segment)",
        ],
    );
    assert_rejected(
        &rb("{role: operator, users: [bea], scope: everything}"),
        &[
            "document 1 (RoleBinding \"ops\"): spec.scope: unknown field (expected one of: role, users, groups, segments)",
        ],
    );
    assert_rejected(
        "apiVersion: wardline/v1\nkind: Group\nmetadata: {name: biomed}\nspec: {members: bea}\n",
        &[
            "document 1 (Group \"biomed\"): spec.members: expected a list of operator names, found a string (\"bea\")",
        ],
    );
}

#[test]
fn bad_change_controls() {
    let cc = |name: &str, spec: &str| {
        format!(
            "apiVersion: wardline/v1\nkind: ChangeControl\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        )
    };
    assert_rejected(
        &cc("site", "{everyChange: yes please}"),
        &[
            "document 1 (ChangeControl \"site\"): spec.everyChange: expected true or false, found a string (\"yes please\")",
        ],
    );
    assert_rejected(
        &cc("site", "{criticalSegments: {matchLabels: {}}}"),
        &[
            "document 1 (ChangeControl \"site\"): spec.criticalSegments.matchLabels: must name at least one label (an empty selector would match every segment)",
        ],
    );
    assert_rejected(
        &cc("site", "{critical: {matchLabels: {zone: icu}}}"),
        &[
            "document 1 (ChangeControl \"site\"): spec.critical: unknown field (expected one of: criticalSegments, everyChange)",
        ],
    );
    assert_rejected(
        &format!(
            "{}---\n{}",
            cc("site", "{everyChange: true}"),
            cc("other", "{everyChange: false}")
        ),
        &[
            "document 2 (ChangeControl \"other\"): a site has one ChangeControl document, and \"site\" is already it",
        ],
    );
}

// Clinical operations: quarantines, keep-profiles, vendors, critical flows.

const PUMPS: &str = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: infusion-pumps}\nspec: {cidrs: [198.18.30.0/24], vlans: [30]}\n---\n";

fn doc(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "{PUMPS}apiVersion: wardline/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

#[test]
fn bad_quarantines() {
    assert_rejected(
        &doc(
            "Segment",
            "q1",
            "{cidrs: [198.18.30.7/32], vlans: [31], quarantine: {origin: infusion-pumps}}",
        ),
        &[
            "document 2 (Segment \"q1\"): spec.quarantine: a quarantine holds addresses only (cidrs): its devices keep their VLAN through origin",
        ],
    );
    assert_rejected(
        &doc(
            "Segment",
            "q1",
            "{cidrs: [198.18.30.7/32], mode: monitor, quarantine: {}}",
        ),
        &[
            "document 2 (Segment \"q1\"): spec.mode: a quarantine is never in monitor mode: it drops what its policies do not allow",
        ],
    );
    assert_rejected(
        &doc(
            "Segment",
            "q1",
            "{cidrs: [198.18.30.7/32], quarantine: {origin: pumps}}",
        ),
        &["document 2 (Segment \"q1\"): spec.quarantine.origin: \"pumps\" is not a segment"],
    );
    assert_rejected(
        &doc(
            "Segment",
            "q1",
            "{cidrs: [198.18.30.7/32], quarantine: {origin: q1}}",
        ),
        &["document 2 (Segment \"q1\"): spec.quarantine.origin: names the quarantine itself"],
    );
}

#[test]
fn bad_keep_profiles() {
    assert_rejected(
        &doc("KeepProfile", "pump", "{flows: []}"),
        &[
            "document 2 (KeepProfile \"pump\"): spec.flows: must name at least one flow the device keeps",
        ],
    );
    assert_rejected(
        &doc(
            "KeepProfile",
            "pump",
            "{flows: [{to: [central-station], ports: [{protocol: udp, port: 5000}]}]}",
        ),
        &[
            "document 2 (KeepProfile \"pump\"): spec.flows[0].to[0]: \"central-station\" is not a segment (no Segment document has this name)",
        ],
    );
    assert_rejected(
        &doc(
            "KeepProfile",
            "pump",
            "{flows: [{to: [infusion-pumps], from: [infusion-pumps], ports: [{protocol: udp, port: 5000}]}, {to: [world]}, {to: [world], ports: [{protocol: udp, port: 70000}]}]}",
        ),
        &[
            "document 2 (KeepProfile \"pump\"): spec.flows[0]: needs exactly one of to (the device opens the connection) or from (opened to the device)",
            "document 2 (KeepProfile \"pump\"): spec.flows[1].ports: a kept flow names its service: at least one port entry",
            "document 2 (KeepProfile \"pump\"): spec.flows[2].ports[0].port: 70000 is not a valid port (must be 1..=65535)",
            "document 2 (KeepProfile \"pump\"): spec.flows[2].ports: a kept flow names its service: at least one port entry",
        ],
    );
}

#[test]
fn bad_vendors_and_critical_flows() {
    assert_rejected(
        &doc(
            "Vendor",
            "acme",
            "{contact: \"\", baaExpires: 2027-13-01T00:00:00Z, segment: vendors}",
        ),
        &[
            "document 2 (Vendor \"acme\"): spec.contact: names nobody: whom to call about this vendor",
            "document 2 (Vendor \"acme\"): spec.baaExpires: \"2027-13-01T00:00:00Z\" is not an RFC 3339 date and time such as 2026-01-01T08:00:00Z (month was not in range)",
            "document 2 (Vendor \"acme\"): spec.segment: \"vendors\" is not a segment (the one the vendor's connections come from)",
        ],
    );
    assert_rejected(
        &doc(
            "Vendor",
            "acme",
            "{contact: ops@acme.example, segment: infusion-pumps}",
        ),
        &[
            "document 2 (Vendor \"acme\"): spec.baaExpires: required field is missing: when the business associate agreement on file ends",
        ],
    );
    assert_rejected(
        &doc(
            "CriticalFlow",
            "telemetry",
            "{from: [infusion-pumps], to: [central]}",
        ),
        &[
            "document 2 (CriticalFlow \"telemetry\"): spec.to[0]: \"central\" is not a segment (no Segment document has this name)",
        ],
    );
}
