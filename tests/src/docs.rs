//! Policy documents for tests, written the way operators write them.

/// The segments of the routed and host topologies: workstations, pumps and
/// the EHR (the outside host is `world`).
pub const WS_PUMP_EHR: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: ws}
spec: {cidrs: ["198.18.20.0/24", "2001:db8:20::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump}
spec: {cidrs: ["198.18.30.0/24", "2001:db8:30::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: ["198.18.41.0/24", "2001:db8:41::/64"]}
"#;

/// The segments of a managed fleet across the routed, host and VLAN-bridge
/// topologies: workstations, pumps (by address and VLAN 30), the EHR and
/// the pump server.
pub const FLEET_SEGMENTS: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: ws}
spec: {cidrs: ["198.18.20.0/24", "2001:db8:20::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump}
spec: {cidrs: ["198.18.30.0/24", "2001:db8:30::/64"], vlans: [30]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: ["198.18.41.0/24", "2001:db8:41::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server}
spec: {cidrs: ["198.18.42.0/24", "2001:db8:42::/64"]}
"#;

/// [`WS_PUMP_EHR`] with one policy, `ws-ehr-web`: ws may reach ehr on
/// TCP 443, nothing else is allowed.
pub fn ws_ehr_web() -> String {
    with(
        WS_PUMP_EHR,
        &[policy(
            "ws-ehr-web",
            "allow",
            "ws",
            "ehr",
            "[{protocol: tcp, port: 443}]",
        )],
    )
}

/// A Policy document (with its `---`); `ports` is a YAML flow list or empty
/// for every protocol and port.
pub fn policy(name: &str, action: &str, from: &str, to: &str, ports: &str) -> String {
    let ports = if ports.is_empty() {
        String::new()
    } else {
        format!("\n  ports: {ports}")
    };
    format!(
        "---\napiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: {name}}}\nspec:\n  action: {action}\n  from: [{from}]\n  to: [{to}]{ports}\n"
    )
}

/// `segments` followed by `policies`.
pub fn with(segments: &str, policies: &[String]) -> String {
    let mut s = segments.to_owned();
    for p in policies {
        s.push_str(p);
    }
    s
}
