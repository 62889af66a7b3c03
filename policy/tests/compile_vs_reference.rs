//! The compiled tables, looked up the way the kernel looks them up, give the
//! same verdict and the same deciding policy as the rules of docs/verdicts.md applied directly.

use std::collections::BTreeMap;

use ipnet::IpNet;
use rand::{Rng, SeedableRng, rngs::StdRng};
use time::{Duration, OffsetDateTime};
use wardline_ebpf_abi::{
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, SEGMENT_WORLD,
};
use wardline_policy::reference::Reference;
use wardline_policy::{
    Action, CompileOptions, Dataplane, DocRef, Mode, Peer, Policy, PolicySet, PortRule, Protocol,
    Quarantine, Segment,
};

fn random_set(rng: &mut StdRng, now: OffsetDateTime) -> PolicySet {
    let nseg = rng.random_range(1..6);
    let segments: Vec<Segment> = (0..nseg)
        .map(|i| Segment {
            name: format!("seg-{i}"),
            labels: BTreeMap::new(),
            cidrs: vec![format!("198.18.{i}.0/24").parse::<IpNet>().unwrap()],
            vlans: vec![],
            node_selector: None,
            mode: if rng.random_bool(0.2) {
                Mode::Monitor
            } else {
                Mode::Enforce
            },
            // Some segments are quarantines: out of `any`, never audited.
            quarantine: rng.random_bool(0.2).then_some(Quarantine { origin: None }),
            doc: DocRef::default(),
        })
        .collect();
    let peer = |rng: &mut StdRng| match rng.random_range(0..8) {
        0 => Peer::Any,
        1 => Peer::World,
        _ => Peer::Segment(format!("seg-{}", rng.random_range(0..nseg))),
    };
    let npol = rng.random_range(0..12);
    let policies = (0..npol)
        .map(|i| {
            let nports = rng.random_range(0..3);
            let ports = (0..nports)
                .map(|_| {
                    let protocol = [
                        Protocol::Tcp,
                        Protocol::Udp,
                        Protocol::Sctp,
                        Protocol::Icmp,
                        Protocol::Icmpv6,
                        Protocol::Any,
                    ][rng.random_range(0..6)];
                    let (port, end_port) = if !protocol.has_ports() || rng.random_bool(0.2) {
                        (None, None)
                    } else {
                        let p = rng.random_range(1..200u16);
                        let e = rng.random_bool(0.5).then(|| p + rng.random_range(0..50u16));
                        (Some(p), e)
                    };
                    PortRule {
                        protocol,
                        port,
                        end_port,
                    }
                })
                .collect();
            let window = rng.random_range(0..4);
            Policy {
                name: format!("pol-{i:02}"),
                labels: BTreeMap::new(),
                action: if rng.random_bool(0.3) {
                    Action::Deny
                } else {
                    Action::Allow
                },
                from: (0..rng.random_range(1..3)).map(|_| peer(rng)).collect(),
                to: (0..rng.random_range(1..3)).map(|_| peer(rng)).collect(),
                ports,
                valid_from: (window == 1).then(|| now + Duration::hours(1)),
                valid_until: (window == 2).then(|| now - Duration::hours(1)),
                doc: DocRef::default(),
            }
        })
        .collect();
    PolicySet {
        segments,
        policies,
        ..PolicySet::default()
    }
}

#[test]
fn compiled_tables_agree_with_reference() {
    let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    let mut checked = 0;
    for _ in 0..300 {
        let set = random_set(&mut rng, now);
        let dp = Dataplane::compile(&set, &CompileOptions::at(now)).unwrap();
        let reference = Reference::new(&set, now, &[], &[]);
        let nseg = set.segments.len() as u32;
        for _ in 0..200 {
            let src = rng.random_range(0..=nseg);
            let dst = rng.random_range(0..=nseg);
            let proto = [
                PROTO_TCP,
                PROTO_UDP,
                PROTO_SCTP,
                PROTO_ICMP,
                PROTO_ICMPV6,
                47,
            ][rng.random_range(0..6)];
            let port = match proto {
                PROTO_TCP | PROTO_UDP | PROTO_SCTP => rng.random_range(0..260u16),
                _ => 0,
            };
            assert_eq!(
                dp.decide(src, dst, proto, port),
                reference.decide(src, dst, proto, port),
                "src {src} dst {dst} proto {proto} port {port} in {set:#?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 60_000);
    let _ = SEGMENT_WORLD;
}

#[test]
fn hundred_thousand_rules_compile_within_capacity() {
    let now = OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap();
    let segments: Vec<Segment> = (0..1000u32)
        .map(|i| Segment {
            name: format!("s{i:04}"),
            labels: BTreeMap::new(),
            cidrs: (0..100u32)
                .map(|j| {
                    let n = i * 100 + j;
                    format!("198.{}.{}.{}/32", 18 + (n >> 16), (n >> 8) & 255, n & 255)
                        .parse()
                        .unwrap()
                })
                .collect(),
            vlans: vec![],
            node_selector: None,
            mode: Mode::Enforce,
            quarantine: None,
            doc: DocRef::default(),
        })
        .collect();
    let policies = (0..100_000u32)
        .map(|i| Policy {
            name: format!("p{i:06}"),
            labels: BTreeMap::new(),
            action: Action::Allow,
            from: vec![Peer::Segment(format!("s{:04}", i % 1000))],
            to: vec![Peer::Segment(format!("s{:04}", (i / 1000) % 1000))],
            ports: vec![PortRule {
                protocol: Protocol::Tcp,
                port: Some(1000 + (i % 5000) as u16),
                end_port: None,
            }],
            valid_from: None,
            valid_until: None,
            doc: DocRef::default(),
        })
        .collect();
    let set = PolicySet {
        segments,
        policies,
        ..PolicySet::default()
    };
    let dp = Dataplane::compile(&set, &CompileOptions::at(now)).unwrap();
    assert_eq!(dp.prefixes.len(), 100_000);
    assert_eq!(dp.rules.len(), 100_000);
}
