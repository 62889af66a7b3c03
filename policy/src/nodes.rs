//! Which registered nodes take part in segment membership, with which
//! labels and addresses (`docs/verdicts.md`, "Nodes"). Operators own a
//! node's identity: its labels and the address ranges it may claim come
//! from a `Node` document, or from a `NodeApproval` whose names match it.
//! What an agent reports when it registers is only ever a claim: its own
//! labels are never used, an address outside its approved ranges is never
//! used, and a node nobody declared or approved is pending.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::PolicySet;

/// What a node said about itself when it registered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    /// The labels its agent's configuration carries: shown, never used.
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<IpAddr>,
}

/// How a registered node was let in, if it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A `Node` document of that name.
    Declared,
    /// No `Node` document; this `NodeApproval` matched its name.
    Approved(String),
    /// Neither: its addresses join no segment until an operator declares
    /// or approves it.
    Pending,
}

/// A registered node as segment membership sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdmittedNode {
    pub name: String,
    pub admission: Admission,
    /// The operators' labels (empty while pending).
    pub labels: BTreeMap<String, String>,
    /// Reported addresses within its approved ranges: the ones used.
    pub addresses: Vec<IpAddr>,
    /// Reported addresses outside them: never used.
    pub refused_addresses: Vec<IpAddr>,
    /// The agent reported labels other than the operators' (pending nodes:
    /// any labels at all).
    pub labels_differ: bool,
}

impl AdmittedNode {
    pub fn is_admitted(&self) -> bool {
        self.admission != Admission::Pending
    }
}

/// Each registration, judged against the operators' `Node` documents and
/// approvals of `set`. A `Node` document wins over any approval.
pub fn admit(set: &PolicySet, registrations: &[Registration]) -> Vec<AdmittedNode> {
    registrations
        .iter()
        .map(|r| {
            let (admission, labels, ranges) =
                if let Some(node) = set.nodes.iter().find(|n| n.name == r.name) {
                    (
                        Admission::Declared,
                        node.labels.clone(),
                        &node.addresses[..],
                    )
                } else if let Some(a) = set.approvals.iter().find(|a| a.admits(&r.name)) {
                    (
                        Admission::Approved(a.name.clone()),
                        a.node_labels.clone(),
                        &a.addresses[..],
                    )
                } else {
                    (Admission::Pending, BTreeMap::new(), &[][..])
                };
            let (addresses, refused_addresses) = r
                .addresses
                .iter()
                .partition(|a| ranges.iter().any(|net| net.contains(*a)));
            AdmittedNode {
                name: r.name.clone(),
                labels_differ: !r.labels.is_empty() && r.labels != labels,
                admission,
                labels,
                addresses,
                refused_addresses,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"
apiVersion: wardline/v1
kind: Node
metadata: {name: gw-1, labels: {role: gateway}}
spec: {addresses: ["198.18.30.1/32", "2001:db8:30::1/128"]}
---
apiVersion: wardline/v1
kind: NodeApproval
metadata: {name: ward-hosts}
spec:
  nodes: ["ward-*", "imaging-1"]
  addresses: ["198.18.40.0/24"]
  labels: {role: ward-host}
"#;

    fn reg(name: &str, labels: &[(&str, &str)], addresses: &[&str]) -> Registration {
        Registration {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_declared_node_has_the_operators_labels_and_only_its_ranges() {
        let set = crate::parse(SET).unwrap();
        let got = admit(
            &set,
            &[reg(
                "gw-1",
                &[("role", "pump-server")],
                &["198.18.30.1", "198.18.41.5"],
            )],
        );
        assert_eq!(got[0].admission, Admission::Declared);
        assert_eq!(got[0].labels["role"], "gateway");
        assert_eq!(
            got[0].addresses,
            vec!["198.18.30.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            got[0].refused_addresses,
            vec!["198.18.41.5".parse::<IpAddr>().unwrap()]
        );
        assert!(got[0].labels_differ);
    }

    #[test]
    fn an_approval_admits_by_name_and_an_unknown_node_is_pending() {
        let set = crate::parse(SET).unwrap();
        let got = admit(
            &set,
            &[
                reg("ward-3", &[], &["198.18.40.7"]),
                reg("imaging-1", &[], &["198.18.40.8"]),
                reg("imaging-12", &[("role", "gateway")], &["198.18.40.9"]),
                reg("laptop", &[], &["198.18.40.10"]),
            ],
        );
        assert_eq!(got[0].admission, Admission::Approved("ward-hosts".into()));
        assert_eq!(got[0].labels["role"], "ward-host");
        assert_eq!(got[1].admission, Admission::Approved("ward-hosts".into()));
        // Exact names match exactly: imaging-12 is not imaging-1.
        assert_eq!(got[2].admission, Admission::Pending);
        assert!(got[2].labels.is_empty() && got[2].addresses.is_empty());
        assert!(got[2].labels_differ);
        assert_eq!(got[3].admission, Admission::Pending);
        assert!(!got[3].is_admitted());
    }
}
