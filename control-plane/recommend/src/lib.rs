//! Draft policy from observed flows (`docs/clinical-operations.md`,
//! "Recommendation"): allow policies that admit exactly the connections a
//! segment in monitor mode was seen making and answering, for an operator
//! to read, adjust and apply before promoting the segment to enforce.
//!
//! Each connection is taken by its first record, with its ends' segments
//! as judged by the policy in force (by the segment the agent recorded
//! when no prefix holds an address). Its service is the responder's port;
//! a record whose responder port is ephemeral while the initiator's is
//! not (a connection seen from its reply) is read the other way round.
//! Ports of one peer and protocol that follow each other become one range,
//! and there is one policy per peer segment and service.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use sha2::{Digest, Sha256};
use wardline_ebpf_abi::SEGMENT_WORLD;
use wardline_policy::PolicySet;
use wardline_policy::reference::Reference;
use wardline_proto::v1;

/// The first port of the range operating systems pick ephemeral ports
/// from (Linux starts at 32768, IANA at 49152: the lower is taken).
pub const EPHEMERAL_FROM: u16 = 32_768;

/// The draft and what it was made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    /// Policy documents, `---` separated.
    pub yaml: String,
    /// Connections it was made from.
    pub connections: u64,
    pub policies: u32,
}

/// Who opens the connections of one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Way {
    /// The segment opens them to the peer.
    Out,
    /// The peer opens them to the segment.
    In,
}

fn address(bytes: &[u8]) -> Option<IpAddr> {
    wardline_proto::convert::ip_from_wire(bytes)
}

fn protocol_word(p: u8) -> Option<&'static str> {
    Some(match p {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        1 => "icmp",
        58 => "icmpv6",
        _ => return None,
    })
}

/// Consecutive ports as inclusive ranges.
fn ranges(ports: &BTreeSet<u16>) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(p) => *end = p,
            _ => out.push((p, p)),
        }
    }
    out
}

/// A DNS label at most 63 long: `wanted`, or its head and a hash.
fn label(wanted: &str) -> String {
    if wanted.len() <= 63 {
        return wanted.to_owned();
    }
    let hash = hex::encode(&Sha256::digest(wanted.as_bytes())[..4]);
    let head = wanted[..54].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// Draft allow policies for the connections of `observed` that segment
/// `segment` of `set` took part in and that were audited (monitor mode let
/// them through, no policy allowed them). Names already in `set` are not
/// reused.
pub fn recommend(set: &PolicySet, segment: &str, observed: &[v1::Flow]) -> Draft {
    let now = time::OffsetDateTime::now_utc();
    let judge = Reference::new(set, now, &[], &[]);
    let name_of = |bytes: &[u8], recorded: &str| -> String {
        let id = address(bytes).map_or(SEGMENT_WORLD, |a| judge.segment_of(a));
        if id != SEGMENT_WORLD {
            return set
                .segments
                .iter()
                .find(|s| judge.segment_named(&s.name) == id)
                .map_or_else(|| "world".to_owned(), |s| s.name.clone());
        }
        if !recorded.is_empty() && set.segments.iter().any(|s| s.name == recorded) {
            recorded.to_owned()
        } else {
            "world".to_owned()
        }
    };
    // (way, peer, protocol) -> ports (empty for ICMP).
    let mut services: BTreeMap<(Way, String, u8), BTreeSet<u16>> = BTreeMap::new();
    let mut connections = 0;
    for f in observed {
        if f.kind != "new" || f.verdict != "audited" {
            continue;
        }
        let (Ok(protocol), Ok(sport), Ok(dport)) = (
            u8::try_from(f.protocol),
            u16::try_from(f.sport),
            u16::try_from(f.dport),
        ) else {
            continue;
        };
        let Some(_) = protocol_word(protocol) else {
            continue;
        };
        let (mut src, mut dst) = (
            name_of(&f.src, &f.src_segment),
            name_of(&f.dst, &f.dst_segment),
        );
        let ported = matches!(protocol, 6 | 17 | 132);
        let mut port = dport;
        if ported && dport >= EPHEMERAL_FROM && sport < EPHEMERAL_FROM && sport != 0 {
            std::mem::swap(&mut src, &mut dst);
            port = sport;
        }
        let key = if src == segment {
            (Way::Out, dst)
        } else if dst == segment {
            (Way::In, src)
        } else {
            continue;
        };
        connections += 1;
        let ports = services.entry((key.0, key.1, protocol)).or_default();
        if ported {
            ports.insert(port);
        }
    }
    let taken: BTreeSet<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut docs = Vec::new();
    for ((way, peer, protocol), ports) in &services {
        let word = protocol_word(*protocol).unwrap_or("any");
        let (from, to) = match way {
            Way::Out => (segment, peer.as_str()),
            Way::In => (peer.as_str(), segment),
        };
        let entries: Vec<(String, String)> = if ports.is_empty() {
            vec![(word.to_owned(), format!("{{protocol: {word}}}"))]
        } else {
            ranges(ports)
                .into_iter()
                .map(|(a, b)| {
                    if a == b {
                        (
                            format!("{word}-{a}"),
                            format!("{{protocol: {word}, port: {a}}}"),
                        )
                    } else {
                        (
                            format!("{word}-{a}-{b}"),
                            format!("{{protocol: {word}, port: {a}, endPort: {b}}}"),
                        )
                    }
                })
                .collect()
        };
        for (service, entry) in entries {
            let base = label(&format!("{from}-to-{to}-{service}"));
            let mut name = base.clone();
            let mut n = 2;
            while taken.contains(name.as_str()) || used.contains(&name) {
                name = label(&format!("{base}-{n}"));
                n += 1;
            }
            used.insert(name.clone());
            docs.push(format!(
                "apiVersion: wardline/v1\nkind: Policy\nmetadata:\n  name: {name}\n  labels: {{wardline.io/recommended-for: {segment}}}\nspec:\n  action: allow\n  from: [{from}]\n  to: [{to}]\n  ports: [{entry}]\n"
            ));
        }
    }
    Draft {
        policies: docs.len() as u32,
        yaml: docs.join("---\n"),
        connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "apiVersion: wardline/v1\nkind: Segment\nmetadata: {name: monitors}\nspec: {cidrs: [198.18.30.0/24], mode: monitor}\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {name: central-station}\nspec: {cidrs: [198.18.31.0/24]}\n---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {name: ntp}\nspec: {cidrs: [198.18.32.0/24]}\n";

    fn flow(src: [u8; 4], sport: u32, dst: [u8; 4], dport: u32, protocol: u32) -> v1::Flow {
        v1::Flow {
            kind: "new".into(),
            verdict: "audited".into(),
            src: src.to_vec(),
            dst: dst.to_vec(),
            sport,
            dport,
            protocol,
            ..Default::default()
        }
    }

    #[test]
    fn adjacent_ports_become_ranges_replies_are_turned_round_and_each_service_is_a_policy() {
        let set = wardline_policy::parse(SITE).unwrap();
        let m = [198, 18, 30, 7];
        let cs = [198, 18, 31, 5];
        let observed = vec![
            flow(m, 40_001, cs, 5000, 17),
            flow(m, 40_002, cs, 5001, 17),
            flow(m, 40_003, cs, 5002, 17),
            flow(m, 40_004, cs, 5010, 17),
            // Seen from its reply: the central station's 8443 answered.
            flow(cs, 8443, m, 51_000, 6),
            flow([198, 18, 32, 1], 50_123, m, 443, 6),
            flow(m, 0, [198, 18, 32, 1], 0, 1),
            // Not the segment's, or allowed already: left out.
            flow(cs, 40_000, [198, 18, 32, 1], 123, 17),
            v1::Flow {
                verdict: "allowed".into(),
                ..flow(m, 40_009, cs, 9000, 17)
            },
        ];
        let draft = recommend(&set, "monitors", &observed);
        assert_eq!(draft.connections, 7);
        assert_eq!(draft.policies, 5, "{}", draft.yaml);
        for expected in [
            "name: monitors-to-central-station-udp-5000-5002",
            "ports: [{protocol: udp, port: 5000, endPort: 5002}]",
            "name: monitors-to-central-station-udp-5010",
            "name: monitors-to-central-station-tcp-8443",
            "name: ntp-to-monitors-tcp-443",
            "name: monitors-to-ntp-icmp",
        ] {
            assert!(
                draft.yaml.contains(expected),
                "{expected} in\n{}",
                draft.yaml
            );
        }
        // It reads, with the site, as valid policy.
        wardline_policy::parse(&format!("{SITE}---\n{}", draft.yaml)).unwrap();
    }

    #[test]
    fn names_stay_labels_and_unique() {
        let long = "a".repeat(40);
        let l = label(&format!("{long}-to-{long}-tcp-443"));
        assert!(l.len() <= 63, "{l}");
        assert_ne!(l, label(&format!("{long}-to-{long}-tcp-444")));
    }
}
