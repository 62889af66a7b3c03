//! The policy sets under `examples/` parse, and parse to what they say.

use std::collections::BTreeMap;

use time::macros::datetime;
use wardline_policy::{Action, DocRef, Mode, Peer, Policy, PortRule, Protocol, Segment, parse};

const HOSPITAL: &str = include_str!("../../examples/hospital.yaml");

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn doc(index: usize, kind: &str, name: &str) -> DocRef {
    DocRef {
        index,
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

fn segment<'a>(segments: &'a [Segment], name: &str) -> &'a Segment {
    segments
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no segment {name}"))
}

fn policy<'a>(policies: &'a [Policy], name: &str) -> &'a Policy {
    policies
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no policy {name}"))
}

fn port(protocol: Protocol, port: Option<u16>, end_port: Option<u16>) -> PortRule {
    PortRule {
        protocol,
        port,
        end_port,
    }
}

#[test]
fn hospital_example_is_valid() {
    let set = parse(HOSPITAL).unwrap_or_else(|errors| panic!("examples/hospital.yaml:\n{errors}"));

    let segments: Vec<_> = set.segments.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        segments,
        [
            "infusion-pumps",
            "patient-monitors",
            "central-station",
            "imaging-modalities",
            "pacs",
            "ehr",
            "clinician-workstations",
            "pump-server",
            "management",
            "vendor-support",
        ]
    );
    let policies: Vec<_> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        policies,
        [
            "pumps-to-pump-server",
            "pump-server-to-ehr",
            "monitors-to-central-station",
            "workstations-to-ehr",
            "workstations-to-pacs",
            "workstations-to-central-station",
            "modalities-to-pacs",
            "deny-workstations-to-devices",
            "management-ssh",
            "management-icmp",
            "vendor-window",
        ]
    );

    let pumps = segment(&set.segments, "infusion-pumps");
    assert_eq!(
        *pumps,
        Segment {
            name: "infusion-pumps".into(),
            labels: labels(&[("zone", "clinical"), ("device-class", "infusion-pump")]),
            cidrs: vec![
                "198.18.30.0/24".parse().expect("CIDR"),
                "2001:db8:30::/64".parse().expect("CIDR"),
            ],
            vlans: vec![30],
            node_selector: None,
            mode: Mode::Enforce,
            quarantine: None,
            doc: doc(1, "Segment", "infusion-pumps"),
        }
    );
    assert_eq!(segment(&set.segments, "patient-monitors").vlans, [31]);
    assert_eq!(
        segment(&set.segments, "imaging-modalities").mode,
        Mode::Monitor
    );
    assert_eq!(segment(&set.segments, "vendor-support").mode, Mode::Enforce);
    assert_eq!(
        segment(&set.segments, "pump-server").node_selector,
        Some(labels(&[("role", "pump-server")]))
    );

    let allowed_addresses = ["198.18.0.0/15", "203.0.113.0/24", "2001:db8::/32"]
        .map(|net| net.parse::<ipnet::IpNet>().expect("CIDR"));
    for segment in &set.segments {
        for cidr in &segment.cidrs {
            assert!(
                allowed_addresses.iter().any(|range| range.contains(cidr)),
                "{} uses {cidr}, outside the documentation ranges",
                segment.name
            );
        }
    }

    assert_eq!(
        *policy(&set.policies, "pumps-to-pump-server"),
        Policy {
            name: "pumps-to-pump-server".into(),
            labels: BTreeMap::new(),
            action: Action::Allow,
            from: vec![Peer::Segment("infusion-pumps".into())],
            to: vec![Peer::Segment("pump-server".into())],
            ports: vec![
                port(Protocol::Tcp, Some(443), None),
                port(Protocol::Udp, Some(5000), Some(5010)),
            ],
            valid_from: None,
            valid_until: None,
            doc: doc(11, "Policy", "pumps-to-pump-server"),
        }
    );
    let deny = policy(&set.policies, "deny-workstations-to-devices");
    assert_eq!(deny.action, Action::Deny);
    assert_eq!(
        deny.to,
        [
            Peer::Segment("infusion-pumps".into()),
            Peer::Segment("patient-monitors".into())
        ]
    );
    assert!(deny.ports.is_empty(), "every protocol and port");
    assert_eq!(policy(&set.policies, "management-ssh").to, [Peer::Any]);
    assert_eq!(
        policy(&set.policies, "management-icmp").ports,
        [
            port(Protocol::Icmp, None, None),
            port(Protocol::Icmpv6, None, None)
        ]
    );
    let vendor = policy(&set.policies, "vendor-window");
    assert_eq!(vendor.valid_from, Some(datetime!(2026-03-14 08:00 UTC)));
    assert_eq!(vendor.valid_until, Some(datetime!(2026-03-14 12:00 UTC)));
    assert!(!vendor.in_force(datetime!(2026-03-14 07:59:59 UTC)));
    assert!(vendor.in_force(datetime!(2026-03-14 08:00 UTC)));
    assert!(!vendor.in_force(datetime!(2026-03-14 12:00 UTC)));
}

/// The spec's own examples, word for word, with the segments they name.
#[test]
fn spec_examples_are_valid() {
    let source = r#"
apiVersion: wardline/v1
kind: Segment
metadata:
  name: infusion-pumps
  labels: {zone: clinical, device-class: infusion-pump}
spec:
  cidrs: ["198.18.30.0/24", "2001:db8:30::/64"]
  vlans: [30]            # 802.1Q VLAN IDs, 1..4094
  nodeSelector:          # managed mode: nodes whose labels match add their addresses
    matchLabels: {role: pump-server}
  mode: enforce          # enforce (default) | monitor
---
apiVersion: wardline/v1
kind: Segment
metadata:
  name: pump-server
spec:
  cidrs: ["198.18.42.0/24"]
---
apiVersion: wardline/v1
kind: Policy
metadata:
  name: pumps-to-pump-server
spec:
  action: allow          # allow | deny
  from: [infusion-pumps] # segment names, `world`, or `any`
  to: [pump-server]
  ports:                 # omitted or empty: every protocol and port
    - {protocol: tcp, port: 443}
    - {protocol: udp, port: 5000, endPort: 5010}
    - {protocol: icmp}   # tcp | udp | sctp | icmp | icmpv6 | any
  validFrom: 2026-01-01T08:00:00Z    # optional, RFC 3339: the policy is
  validUntil: 2026-01-01T12:00:00Z   # in force only inside this window
---
"#;
    let set = parse(source).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(set.segments.len(), 2);
    assert_eq!(set.policies.len(), 1);
    let policy = &set.policies[0];
    assert_eq!(policy.doc, doc(3, "Policy", "pumps-to-pump-server"));
    assert_eq!(policy.ports.len(), 3);
    assert_eq!(policy.valid_from, Some(datetime!(2026-01-01 08:00 UTC)));
}

#[test]
fn defaults_and_special_peers() {
    let source = "\
apiVersion: wardline/v1
kind: Segment
metadata: {name: lab}
spec: {cidrs: [\"2001:db8:ab::/48\"]}
---
# A document with nothing but comments does not count.
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: lab}
spec:
  action: allow
  from: [world, any]
  to: [lab]
  ports: []
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: lab-any-port}
spec:
  action: allow
  from: [lab]
  to: [lab]
  ports: [{protocol: any, port: 8080, endPort: 8080}, {protocol: sctp}]
";
    let set = parse(source).unwrap_or_else(|errors| panic!("{errors}"));
    let lab = &set.segments[0];
    assert_eq!(lab.mode, Mode::Enforce, "enforce is the default");
    assert!(lab.labels.is_empty());
    assert_eq!(lab.vlans, [] as [u16; 0]);
    // A Segment and a Policy may share a name: names are unique per kind.
    let policy = &set.policies[0];
    assert_eq!(policy.doc, doc(2, "Policy", "lab"));
    assert_eq!(policy.from, [Peer::World, Peer::Any]);
    assert!(policy.ports.is_empty());
    assert_eq!(
        set.policies[1].ports,
        [
            port(Protocol::Any, Some(8080), None),
            port(Protocol::Sctp, None, None)
        ]
    );
}

#[test]
fn empty_source_is_an_empty_set() {
    assert_eq!(parse(""), Ok(Default::default()));
    assert_eq!(parse("# nothing yet\n---\n"), Ok(Default::default()));
}
