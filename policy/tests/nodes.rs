//! Nodes join segments only as operators declared or approved them, and a
//! node that collides is left out and reported, never an error.

use time::OffsetDateTime;
use wardline_policy::compile::{CompileOptions, NodeInfo};
use wardline_policy::{Dataplane, parse};

const SET: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server}
spec: {nodeSelector: {matchLabels: {role: pump-server}}}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: gateways}
spec: {nodeSelector: {matchLabels: {role: gateway}}}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: ["198.18.41.0/24", "198.18.41.9/32"]}
---
apiVersion: wardline/v1
kind: Node
metadata: {name: gw-1, labels: {role: gateway}}
spec: {addresses: ["198.18.30.1/32"]}
---
apiVersion: wardline/v1
kind: Node
metadata: {name: pumpsrv-1, labels: {role: pump-server}}
spec: {addresses: ["198.18.30.0/24", "198.18.41.9/32"]}
"#;

fn node(name: &str, labels: &[(&str, &str)], addresses: &[&str]) -> NodeInfo {
    NodeInfo {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

fn compile(nodes: Vec<NodeInfo>) -> Dataplane {
    let set = parse(SET).unwrap();
    Dataplane::compile(
        &set,
        &CompileOptions {
            now: OffsetDateTime::now_utc(),
            nodes,
        },
    )
    .expect("a node never blocks compilation")
}

fn segment_of<'d>(dp: &'d Dataplane, addr: &str) -> &'d str {
    let addr: std::net::IpAddr = addr.parse().unwrap();
    let id = dp
        .prefixes
        .iter()
        .filter(|(net, _)| net.contains(&addr))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(0, |(_, id)| *id);
    dp.segment_name(id)
}

#[test]
fn a_node_claiming_labels_and_another_hosts_address_changes_nothing() {
    let honest = compile(vec![node("gw-1", &[], &["198.18.30.1"])]);
    // The gateway's agent key is stolen: it claims the pump server's role
    // and the EHR's address.
    let lying = compile(vec![node(
        "gw-1",
        &[("role", "pump-server")],
        &["198.18.30.1", "198.18.41.5"],
    )]);
    assert_eq!(segment_of(&lying, "198.18.30.1"), "gateways");
    assert_eq!(segment_of(&lying, "198.18.41.5"), "ehr");
    assert_eq!(honest.prefixes, lying.prefixes);
    // An unknown node is pending: nothing of what it claims is used.
    let stranger = compile(vec![node(
        "laptop",
        &[("role", "pump-server")],
        &["198.18.41.6"],
    )]);
    assert_eq!(segment_of(&stranger, "198.18.41.6"), "ehr");
    assert_eq!(
        stranger.prefixes,
        compile(Vec::new()).prefixes,
        "a pending node joins nothing"
    );
}

#[test]
fn a_colliding_node_is_left_out_and_reported() {
    let dp = compile(vec![
        node("pumpsrv-1", &[], &["198.18.30.7", "198.18.41.9"]),
        node("gw-1", &[], &["198.18.30.1"]),
    ]);
    assert_eq!(dp.node_conflicts.len(), 1, "{:?}", dp.node_conflicts);
    let c = &dp.node_conflicts[0];
    assert_eq!((c.node.as_str(), c.other.as_str()), ("pumpsrv-1", "ehr"));
    assert_eq!(
        c.to_string(),
        "node pumpsrv-1 left out: its address 198.18.41.9 would join segment pump-server, but segment ehr already holds it"
    );
    // None of its addresses joined; the other node did.
    assert_eq!(segment_of(&dp, "198.18.30.7"), "world");
    assert_eq!(segment_of(&dp, "198.18.41.9"), "ehr");
    assert_eq!(segment_of(&dp, "198.18.30.1"), "gateways");
}
