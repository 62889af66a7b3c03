//! The real kernel programs against the host-side reference, packet by
//! packet, through `BPF_PROG_TEST_RUN`: thousands of seeded frames (IPv4 and
//! IPv6, tagged and untagged, every protocol, options and extension headers,
//! fragments, spoofed VLAN sources, and every frame truncated at each header
//! boundary). Reason, deciding policy and segments must all agree.

mod common;

use aya::programs::TestRun;
use aya::programs::TestRunOptions;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use wardline_agent::enforcer::{self, Enforcer};
use wardline_agent::events::decode;
use wardline_ebpf_abi as abi;
use wardline_policy::packet::SkbVlan;
use wardline_policy::reference::{FailsafeDirection, FailsafeFlow, Reference};
use wardline_policy::{CompileOptions, Dataplane};

const POLICY: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: pumps}
spec: {cidrs: ["198.18.30.0/24", "2001:db8:30::/64"], vlans: [30]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: monitors}
spec: {cidrs: ["198.18.31.0/24"], vlans: [31], mode: monitor}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server}
spec: {cidrs: ["198.18.42.0/24", "198.18.42.128/25", "2001:db8:42::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: workstations}
spec: {cidrs: ["198.18.20.0/24", "2001:db8:20::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: ["198.18.41.0/24", "2001:db8:41::/64"]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: pumps-to-server}
spec:
  action: allow
  from: [pumps]
  to: [pump-server]
  ports: [{protocol: tcp, port: 443}, {protocol: udp, port: 5000, endPort: 5010}, {protocol: icmp}, {protocol: icmpv6}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: workstations-to-ehr}
spec:
  action: allow
  from: [workstations]
  to: [ehr]
  ports: [{protocol: any, port: 443}, {protocol: tcp, port: 8000, endPort: 8100}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: block-8080}
spec: {action: deny, from: [any], to: [ehr], ports: [{protocol: tcp, port: 8080}]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: world-to-ehr-web}
spec: {action: allow, from: [world], to: [ehr], ports: [{protocol: tcp, port: 80}]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: anything-to-world}
spec: {action: allow, from: [ehr], to: [world]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: no-pumps-to-workstations}
spec: {action: deny, from: [pumps], to: [workstations]}
"#;

const SEGMENT_PREFIXES_V4: [[u8; 3]; 6] = [
    [198, 18, 30],
    [198, 18, 31],
    [198, 18, 42],
    [198, 18, 20],
    [198, 18, 41],
    [198, 51, 100], // world
];
const SEGMENT_PREFIXES_V6: [u16; 5] = [0x30, 0x42, 0x20, 0x41, 0x99];

struct Frame {
    bytes: Vec<u8>,
    /// Offsets where a header ends: the frame is also tried cut there and one byte short.
    boundaries: Vec<usize>,
}

fn csum_placeholder(b: &mut Vec<u8>, n: usize) {
    b.extend(std::iter::repeat_n(0, n));
}

fn addr4(rng: &mut StdRng) -> [u8; 4] {
    let p = SEGMENT_PREFIXES_V4[rng.random_range(0..SEGMENT_PREFIXES_V4.len())];
    [p[0], p[1], p[2], rng.random_range(1..255)]
}

fn addr6(rng: &mut StdRng) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x20;
    a[1] = 0x01;
    a[2] = 0x0d;
    a[3] = 0xb8;
    let seg = SEGMENT_PREFIXES_V6[rng.random_range(0..SEGMENT_PREFIXES_V6.len())];
    a[4..6].copy_from_slice(&seg.to_be_bytes());
    a[15] = rng.random_range(1..255);
    a
}

fn port(rng: &mut StdRng) -> u16 {
    const INTERESTING: [u16; 12] = [
        443, 80, 8080, 8000, 8100, 8101, 5000, 5005, 5010, 5011, 22, 53,
    ];
    if rng.random_bool(0.8) {
        INTERESTING[rng.random_range(0..INTERESTING.len())]
    } else {
        rng.random()
    }
}

/// Appends a transport header for `proto` (v6 tells ICMP from ICMPv6).
fn transport(rng: &mut StdRng, b: &mut Vec<u8>, boundaries: &mut Vec<usize>, proto: u8, v6: bool) {
    let start = b.len();
    match proto {
        abi::PROTO_TCP => {
            b.extend(rng.random_range(1024..65535u16).to_be_bytes());
            b.extend(port(rng).to_be_bytes());
            b.extend([0, 0, 0, 1, 0, 0, 0, 0]);
            let doff = if rng.random_bool(0.05) {
                rng.random_range(0..5u8)
            } else {
                5
            };
            b.push(doff << 4);
            b.push([0x02, 0x10, 0x18, 0x11, 0x04][rng.random_range(0..5)]);
            b.extend([0xff, 0xff]);
            csum_placeholder(b, 4);
            boundaries.push(start + 20);
        }
        abi::PROTO_UDP | abi::PROTO_SCTP => {
            b.extend(rng.random_range(1024..65535u16).to_be_bytes());
            b.extend(port(rng).to_be_bytes());
            csum_placeholder(b, if proto == abi::PROTO_UDP { 4 } else { 8 });
            boundaries.push(b.len());
        }
        abi::PROTO_ICMP | abi::PROTO_ICMPV6 => {
            let types: &[u8] = if v6 {
                // Echo, errors, neighbour and router discovery (133..=137:
                // passed only with hop limit 255), MLD (130..=132, 143).
                &[
                    128, 129, 1, 3, 2, 133, 134, 135, 136, 137, 130, 131, 132, 143, 4, 138,
                ]
            } else {
                &[8, 0, 3, 11, 13, 5, 12]
            };
            let ty = types[rng.random_range(0..types.len())];
            b.push(ty);
            b.push(0);
            csum_placeholder(b, 2);
            boundaries.push(b.len());
            b.extend(rng.random::<u16>().to_be_bytes());
            b.extend([0, 1]);
            boundaries.push(b.len());
            let is_error = if v6 {
                (1..=4).contains(&ty)
            } else {
                matches!(ty, 3 | 4 | 11 | 12)
            };
            if is_error {
                // Quote a packet (our own direction flipped or random).
                let inner_proto = [abi::PROTO_TCP, abi::PROTO_UDP, proto][rng.random_range(0..3)];
                if v6 {
                    b.extend([0x60, 0, 0, 0, 0, 8, inner_proto, 64]);
                    b.extend(addr6(rng));
                    b.extend(addr6(rng));
                } else {
                    b.extend([0x45, 0, 0, 28, 0, 1, 0, 0, 64, inner_proto, 0, 0]);
                    b.extend(addr4(rng));
                    b.extend(addr4(rng));
                }
                boundaries.push(b.len());
                b.extend(rng.random::<u16>().to_be_bytes());
                b.extend(port(rng).to_be_bytes());
                boundaries.push(b.len());
                b.extend([0, 0, 0, 0]);
            }
        }
        _ => {
            b.extend([0u8; 8]);
        }
    }
    b.extend(std::iter::repeat_n(0xab, rng.random_range(0..24)));
}

fn protocol(rng: &mut StdRng, v6: bool) -> u8 {
    let icmp = if v6 {
        abi::PROTO_ICMPV6
    } else {
        abi::PROTO_ICMP
    };
    [
        abi::PROTO_TCP,
        abi::PROTO_TCP,
        abi::PROTO_UDP,
        abi::PROTO_SCTP,
        icmp,
        icmp,
        47,
        50,
    ][rng.random_range(0..8)]
}

fn generate(rng: &mut StdRng) -> (Frame, SkbVlan) {
    let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let mut boundaries = vec![12];
    // Layer 2.
    match rng.random_range(0..10) {
        0..=5 => {}
        6 | 7 => {
            b.extend(abi::ETH_P_8021Q.to_be_bytes());
            let vid = [30u16, 31, 30, 99, 0][rng.random_range(0..5)];
            b.extend(vid.to_be_bytes());
        }
        8 => {
            // QinQ: an outer 802.1ad tag or two stacked 802.1Q tags.
            let outer = if rng.random_bool(0.5) {
                abi::ETH_P_8021AD
            } else {
                abi::ETH_P_8021Q
            };
            b.extend(outer.to_be_bytes());
            b.extend(30u16.to_be_bytes());
            b.extend(abi::ETH_P_8021Q.to_be_bytes());
            b.extend(31u16.to_be_bytes());
        }
        _ => {
            // Ethertypes, and IEEE 802.3 frames whose field is a length
            // (listed as ETHERTYPE_802_3), sometimes behind an 802.1Q tag.
            const TYPES: [u16; 8] = [
                abi::ETH_P_ARP,
                0x88cc,
                0x88b5,
                0x0842,
                0x0026,
                0x05dc,
                0x0000,
                0x05ff,
            ];
            if rng.random_bool(0.2) {
                b.extend(abi::ETH_P_8021Q.to_be_bytes());
                b.extend([30u16, 99][rng.random_range(0..2)].to_be_bytes());
            }
            let t = TYPES[rng.random_range(0..TYPES.len())];
            b.extend(t.to_be_bytes());
            boundaries.push(b.len());
            // An LLC header for the 802.3 frames, zeros for the others.
            b.extend(if t < abi::ETH_P_802_3_MIN {
                [0x42, 0x42, 0x03]
            } else {
                [0; 3]
            });
            b.extend([0u8; 25]);
            return (
                Frame {
                    bytes: b,
                    boundaries,
                },
                SkbVlan::default(),
            );
        }
    }
    let v6 = rng.random_bool(0.4);
    b.extend(if v6 { abi::ETH_P_IPV6 } else { abi::ETH_P_IP }.to_be_bytes());
    boundaries.push(b.len());
    let mut proto = protocol(rng, v6);
    if !v6 {
        let ihl: u8 = if rng.random_bool(0.05) {
            rng.random_range(0..5)
        } else if rng.random_bool(0.3) {
            rng.random_range(6..=15)
        } else {
            5
        };
        let version = if rng.random_bool(0.03) { 6 } else { 4 };
        let frag: u16 = match rng.random_range(0..12) {
            0 => 0x2000,       // first fragment
            1 => 0x2000 | 185, // middle
            2 => 185,          // last
            _ => 0x4000,       // don't fragment
        };
        let start = b.len();
        b.push(version << 4 | ihl);
        b.push(0);
        let tot: u16 = if rng.random_bool(0.03) { 10 } else { 1500 };
        b.extend(tot.to_be_bytes());
        b.extend(rng.random::<u16>().to_be_bytes());
        b.extend(frag.to_be_bytes());
        b.push(64);
        b.push(proto);
        csum_placeholder(&mut b, 2);
        b.extend(addr4(rng));
        b.extend(addr4(rng));
        boundaries.push(b.len());
        let hlen = (ihl.max(5) as usize) * 4;
        while b.len() < start + hlen {
            b.push(1); // NOP options
        }
        boundaries.push(b.len());
        if frag & 0x1fff != 0 {
            b.extend([0u8; 16]);
        } else {
            transport(rng, &mut b, &mut boundaries, proto, false);
        }
    } else {
        let version = if rng.random_bool(0.03) { 4 } else { 6 };
        let next_at = b.len() + 6;
        // Hop limit 255 is what makes neighbour and router discovery L2.
        let hop_limit = [64u8, 255, 255, 1, 254][rng.random_range(0..5)];
        b.extend([version << 4, 0, 0, 0, 0, 64, 0, hop_limit]);
        b.extend(addr6(rng));
        b.extend(addr6(rng));
        boundaries.push(b.len());
        let mut nh_at = next_at;
        let nexts = rng.random_range(0..=8usize);
        let mut later_fragment = false;
        // Every extension header the parser follows: Hop-by-Hop, Routing,
        // Destination Options, Mobility, HIP, Shim6 and the experimental
        // 253 and 254 in the generic format, AH, and Fragment (twice as
        // likely, and often followed by Destination Options).
        const KINDS: [u8; 11] = [0, 60, 43, 135, 139, 140, 253, 254, 51, 44, 44];
        let mut kinds = Vec::new();
        for _ in 0..if rng.random_bool(0.6) { 0 } else { nexts } {
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            kinds.push(kind);
            if kind == 44 && rng.random_bool(0.5) {
                kinds.push(60);
            }
        }
        for kind in kinds {
            b[nh_at] = kind;
            nh_at = b.len();
            match kind {
                44 => {
                    let fo: u16 = match rng.random_range(0..3) {
                        0 => 1,              // first, more to come
                        1 => (100 << 3) | 1, // later
                        _ => 0,
                    };
                    later_fragment |= fo >> 3 != 0;
                    b.extend([0, 0]);
                    b.extend(fo.to_be_bytes());
                    b.extend(rng.random::<u32>().to_be_bytes());
                }
                51 => {
                    b.extend([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                }
                _ => {
                    // Length 0 or 1: 8 or 16 octets.
                    let len = rng.random_range(0..2u8);
                    b.extend([0, len, 1, 4, 0, 0, 0, 0]);
                    b.extend(std::iter::repeat_n(0, usize::from(len) * 8));
                }
            }
            boundaries.push(b.len());
        }
        b[nh_at] = proto;
        if later_fragment {
            b.extend([0u8; 16]);
        } else {
            if proto == abi::PROTO_ICMP {
                proto = abi::PROTO_ICMPV6;
                b[nh_at] = proto;
            }
            transport(rng, &mut b, &mut boundaries, proto, true);
        }
    }
    (
        Frame {
            bytes: b,
            boundaries,
        },
        SkbVlan::default(),
    )
}

/// One packet through the kernel: (reason, policy, src segment, dst segment)
/// where the event carries them.
fn run_kernel(
    enforcer: &mut Enforcer,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    frame: &[u8],
) -> Option<(u8, Option<abi::FlowEvent>, i32)> {
    let (reason, action) = match common::run(enforcer, abi::PROG_INGRESS, frame, None) {
        Ok(r) => r,
        Err(e) if below_minimal_ip_header(frame) => {
            // The kernel's test run reads the IP header itself and refuses
            // shorter frames; such frames cannot be tried this way.
            let _ = e;
            return None;
        }
        Err(e) => panic!(
            "BPF_PROG_TEST_RUN of {} bytes {frame:02x?}: {e}",
            frame.len()
        ),
    };
    let mut event = None;
    while let Some(item) = ring.next() {
        assert!(event.is_none(), "at most one event per packet");
        event = decode(&item);
    }
    enforcer.flush_tracking().expect("flush");
    Some((reason as u8, event, action))
}

fn below_minimal_ip_header(frame: &[u8]) -> bool {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    (ethertype == abi::ETH_P_IP && frame.len() < 14 + 20)
        || (ethertype == abi::ETH_P_IPV6 && frame.len() < 14 + 40)
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_kernel_agrees_with_reference() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run via cargo xtask test"
    );
    let set = wardline_policy::parse(POLICY).expect("test policy parses");
    let now = OffsetDateTime::now_utc();
    let dp = Dataplane::compile(&set, &CompileOptions::at(now)).expect("compiles");
    let failsafe = vec![FailsafeFlow {
        direction: FailsafeDirection::Ingress,
        protocol: abi::PROTO_TCP,
        port: 22,
        // Every test range: with the local addresses below, any host may
        // reach an EHR host on tcp/22.
        cidrs: ["198.18.0.0/15", "198.51.100.0/24", "2001:db8::/32"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect(),
    }];
    let ethertypes = [0x88cc, abi::ETHERTYPE_802_3];
    // The node's own addresses: every EHR host (failsafe flows reach them).
    let local: Vec<std::net::IpAddr> = (1..255u8)
        .flat_map(|i| {
            [
                std::net::IpAddr::from([198, 18, 41, i]),
                format!("2001:db8:41::{i:x}").parse().unwrap(),
            ]
        })
        .collect();
    let reference = Reference::new(&set, now, &failsafe, &ethertypes).with_local(&local);

    let (mut enforcer, _pins) = common::open("ref");
    enforcer.set_local_rules(&failsafe, &ethertypes).unwrap();
    enforcer.set_local_addresses(&local).unwrap();
    enforcer.apply(&dp, &[]).unwrap();
    let mut ring = enforcer.take_events().unwrap();

    let mut rng = StdRng::seed_from_u64(0x0057_a7d1);
    let mut cases = 0usize;
    let mut skipped = 0usize;
    let mut by_reason = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..3000 {
        let (frame, vlan) = generate(&mut rng);
        let mut lengths = vec![frame.bytes.len()];
        for b in &frame.boundaries {
            lengths.push(*b);
            lengths.push(b.saturating_sub(1));
        }
        for len in lengths {
            if len < 14 || len > frame.bytes.len() {
                continue;
            }
            let bytes = &frame.bytes[..len];
            let expected = reference.judge_frame(bytes, vlan);
            let Some((reason, event, ret)) = run_kernel(&mut enforcer, &mut ring, bytes) else {
                skipped += 1;
                continue;
            };
            let ctx = || {
                format!(
                    "frame {:02x?} expected {expected:?}, kernel reason {reason} event {event:?}",
                    bytes
                )
            };
            assert_eq!(reason, expected.reason as u8, "{}", ctx());
            let passes = expected.reason.verdict() != abi::Verdict::Dropped;
            let action = if passes {
                abi::ACTION_PASS
            } else {
                abi::ACTION_DROP
            };
            assert_eq!(ret, action, "{}", ctx());
            if let Some(e) = event {
                assert_eq!(e.reason, expected.reason as u8, "{}", ctx());
                if matches!(
                    expected.reason,
                    abi::Reason::PolicyAllow
                        | abi::Reason::PolicyDeny
                        | abi::Reason::DefaultDeny
                        | abi::Reason::Monitor
                ) {
                    assert_eq!(e.policy, expected.policy, "policy: {}", ctx());
                    assert_eq!(
                        e.src_segment,
                        expected.src_segment,
                        "src segment: {}",
                        ctx()
                    );
                    assert_eq!(
                        e.dst_segment,
                        expected.dst_segment,
                        "dst segment: {}",
                        ctx()
                    );
                }
            } else {
                assert!(
                    matches!(expected.reason, abi::Reason::L2Pass | abi::Reason::Failsafe),
                    "a verdict without event: {}",
                    ctx()
                );
            }
            *by_reason.entry(expected.reason.name()).or_default() += 1;
            cases += 1;
        }
    }
    eprintln!("{cases} packets agreed ({skipped} too short for the test run): {by_reason:?}");
    assert!(cases >= 10_000, "only {cases} cases");
    for reason in [
        "policy-allow",
        "policy-deny",
        "default-deny",
        "monitor",
        "truncated",
        "malformed-header",
        "too-many-extension-headers",
        "orphan-fragment",
        "unsupported-l2",
        "spoofed-source",
        "l2-pass",
        "ethertype",
        "failsafe",
    ] {
        assert!(
            by_reason.get(reason).copied().unwrap_or(0) > 0,
            "no case of {reason}: {by_reason:?}"
        );
    }
}

/// A QinQ frame: dropped before any connection exists, so every run of it
/// writes one event.
fn qinq_frame() -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend(abi::ETH_P_8021AD.to_be_bytes());
    f.extend(30u16.to_be_bytes());
    f.extend(abi::ETH_P_8021Q.to_be_bytes());
    f.extend(31u16.to_be_bytes());
    f.extend(abi::ETH_P_IP.to_be_bytes());
    f.extend([0u8; 40]);
    f
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_lost_events_are_counted() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run via cargo xtask test"
    );
    let (mut enforcer, _pins) = common::open("lost");
    let mut ring = enforcer.take_events().unwrap();
    let frame = qinq_frame();
    // More events than the ring buffer holds, none read meanwhile.
    let runs: u32 = 60_000;
    let program = enforcer.program(abi::PROG_INGRESS).unwrap();
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: runs,
            ..TestRunOptions::default()
        })
        .expect("test run");
    assert_eq!(
        result.return_value as i32,
        abi::ACTION_DROP,
        "QinQ is dropped"
    );
    let mut read = 0u64;
    while let Some(item) = ring.next() {
        let e = decode(&item).expect("an event");
        assert_eq!(e.reason, abi::Reason::UnsupportedL2 as u8);
        read += 1;
    }
    let c = enforcer.counters().unwrap();
    let dropped = c.packets[0][abi::Reason::UnsupportedL2 as usize];
    assert_eq!(dropped, u64::from(runs), "every packet is counted");
    assert!(c.lost_events > 0, "the ring buffer overflowed");
    assert_eq!(
        read + c.lost_events,
        u64::from(runs),
        "every event is read or counted lost"
    );
    eprintln!("{read} events read, {} counted lost", c.lost_events);
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_programs_100k_rules_and_prefixes() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run via cargo xtask test"
    );
    // 1,000 segments of 100 host prefixes; 100,000 single-port policies.
    let mut yaml = String::new();
    for i in 0..1000u32 {
        let cidrs: Vec<String> = (0..100u32)
            .map(|j| {
                let n = i * 100 + j;
                format!(
                    "\"198.{}.{}.{}/32\"",
                    18 + (n >> 16),
                    (n >> 8) & 255,
                    n & 255
                )
            })
            .collect();
        yaml.push_str(&format!(
            "---\napiVersion: wardline/v1\nkind: Segment\nmetadata: {{name: s{i:04}}}\nspec: {{cidrs: [{}]}}\n",
            cidrs.join(", ")
        ));
    }
    for i in 0..100_000u32 {
        yaml.push_str(&format!(
            "---\napiVersion: wardline/v1\nkind: Policy\nmetadata: {{name: p{i:06}}}\nspec: {{action: allow, from: [s{:04}], to: [s{:04}], ports: [{{protocol: tcp, port: {}}}]}}\n",
            i % 1000,
            (i / 1000) % 1000,
            1000 + i % 5000
        ));
    }
    let started = std::time::Instant::now();
    let set = wardline_policy::parse(&yaml).expect("parses");
    let parsed = started.elapsed();
    let dp = Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc())).unwrap();
    let compiled = started.elapsed();
    assert_eq!((dp.prefixes.len(), dp.rules.len()), (100_000, 100_000));

    let (mut enforcer, _pins) = common::open("100k");
    let t = std::time::Instant::now();
    let first = enforcer
        .apply(&dp, &[])
        .expect("the first generation fits")
        .live;
    let programmed = t.elapsed();
    // The next generation is written beside the live one: both must fit.
    let t = std::time::Instant::now();
    let second = enforcer
        .apply(&dp, &[])
        .expect("the second generation fits beside the first")
        .live;
    let switched = t.elapsed();
    assert_eq!(second, first + 1);
    eprintln!(
        "parse {parsed:?}, compile {:?}, program 100k+100k {programmed:?}, next generation {switched:?}",
        compiled - parsed
    );

    // A packet judged at this scale: s0000 -> s0000 tcp/1000 is policy p000000.
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend([
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
    ]);
    frame.extend(40000u16.to_be_bytes());
    frame.extend(1000u16.to_be_bytes());
    frame.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let mut ring = enforcer.take_events().unwrap();
    let program = enforcer.program(abi::PROG_INGRESS).unwrap();
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::default()
        })
        .unwrap();
    assert_eq!(r.return_value as i32, abi::ACTION_PASS, "allowed");
    let e = decode(&ring.next().expect("an event")).unwrap();
    assert_eq!(dp.policy_name(e.policy), Some("p000000"));
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_idle_connections_are_expired_and_live_ones_kept() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run via cargo xtask test"
    );
    let set = wardline_policy::parse(POLICY).expect("test policy parses");
    let dp = Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc())).unwrap();
    let (mut enforcer, _pins) = common::open("expire");
    enforcer.apply(&dp, &[]).unwrap();
    // workstations -> ehr tcp/443 is allowed: a SYN opens a tracked connection.
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    frame.extend([
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 18, 20, 7, 198, 18, 41, 9,
    ]);
    frame.extend(40000u16.to_be_bytes());
    frame.extend(443u16.to_be_bytes());
    frame.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let r = enforcer
        .program(abi::PROG_INGRESS)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            ..TestRunOptions::default()
        })
        .unwrap();
    assert_eq!(r.return_value as i32, abi::ACTION_PASS);
    assert_eq!(enforcer.connections().len(), 1);
    let now = enforcer::boot_ns();
    let swept = |e: &mut Enforcer, at: u64| {
        let s = e.sweep(at, Some(at - abi::SECOND_NS), 60 * abi::SECOND_NS);
        (s.expired.len(), s.fragments)
    };
    assert_eq!(swept(&mut enforcer, now), (0, 0), "a live connection stays");
    let opening = abi::TIMEOUT_TCP_OPENING;
    assert_eq!(
        swept(&mut enforcer, now + opening - abi::SECOND_NS),
        (0, 0),
        "not idle long enough"
    );
    let removed = enforcer.sweep(now + opening + abi::SECOND_NS, None, 60 * abi::SECOND_NS);
    assert_eq!(
        (removed.expired.len(), removed.fragments),
        (1, 0),
        "idle past its timeout"
    );
    let (key, state) = removed.expired[0];
    assert_eq!((key.proto, state.packets), (6, 1), "removed as it was");
    assert!(enforcer.connections().is_empty());
}

/// Segments nested at ten IPv4 and ten IPv6 prefix lengths (more than the
/// kernel probes in its prefix hash, so the shortest go to its trie), and
/// policies whose port ranges split into prefixes of many lengths.
const NESTED_POLICY: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: s15}
spec: {cidrs: ["198.18.0.0/15", "2001:db8::/32"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s16}
spec: {cidrs: ["198.18.0.0/16", "2001:db8::/40"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s17}
spec: {cidrs: ["198.18.0.0/17", "2001:db8::/48"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s20}
spec: {cidrs: ["198.18.16.0/20", "2001:db8::/56"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s22}
spec: {cidrs: ["198.18.20.0/22", "2001:db8::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s24}
spec: {cidrs: ["198.18.21.0/24", "2001:db8::/80"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s26}
spec: {cidrs: ["198.18.21.64/26", "2001:db8::/96"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s28}
spec: {cidrs: ["198.18.21.80/28", "2001:db8::/112"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s30}
spec: {cidrs: ["198.18.21.84/30", "2001:db8::/120"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: s32}
spec: {cidrs: ["198.18.21.85/32", "2001:db8::85/128"]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: inner-to-outer}
spec:
  action: allow
  from: [s32, s30, s28]
  to: [s15, s16, s17]
  ports: [{protocol: tcp, port: 1000, endPort: 2999}, {protocol: udp, port: 40000, endPort: 65535}, {protocol: tcp, port: 443}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: outer-to-inner}
spec:
  action: allow
  from: [s15, s16, s17, s20]
  to: [s22, s24, s26, s28, s30, s32]
  ports: [{protocol: tcp, port: 1, endPort: 1023}, {protocol: udp, port: 5000, endPort: 5099}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: no-range}
spec:
  action: deny
  from: [any]
  to: [s24, s16]
  ports: [{protocol: tcp, port: 700, endPort: 1999}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: world-in}
spec: {action: allow, from: [world], to: [s26], ports: [{protocol: tcp, port: 8000, endPort: 8191}]}
"#;

/// An Ethernet frame of one TCP SYN or UDP datagram, IPv4 or IPv6.
fn syn_frame(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let mut b = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let l4_len: usize = if proto == abi::PROTO_TCP { 20 } else { 8 };
    match (src, dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            b.extend([0x08, 0x00, 0x45, 0]);
            b.extend(((20 + l4_len) as u16).to_be_bytes());
            b.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
            b.extend(s.octets());
            b.extend(d.octets());
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            b.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
            b.extend((l4_len as u16).to_be_bytes());
            b.extend([proto, 64]);
            b.extend(s.octets());
            b.extend(d.octets());
        }
        _ => panic!("one family"),
    }
    b.extend(sport.to_be_bytes());
    b.extend(dport.to_be_bytes());
    if proto == abi::PROTO_TCP {
        b.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        b.extend(8u16.to_be_bytes());
        b.extend([0, 0]);
    }
    b
}

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_prefix_and_port_lookups_agree_with_reference_at_every_length() {
    let set = wardline_policy::parse(NESTED_POLICY).expect("test policy parses");
    let now = OffsetDateTime::now_utc();
    let dp = Dataplane::compile(&set, &CompileOptions::at(now)).expect("compiles");
    let v4_lengths: std::collections::BTreeSet<u8> = dp
        .prefixes
        .iter()
        .filter(|(n, _)| n.addr().is_ipv4())
        .map(|(n, _)| n.prefix_len())
        .collect();
    assert!(
        v4_lengths.len() > abi::PREFIX_PROBES,
        "more lengths than are probed: {v4_lengths:?}"
    );
    let reference = Reference::new(&set, now, &[], &[]);
    let (mut enforcer, _pins) = common::open("lens");
    enforcer.apply(&dp, &[]).unwrap();
    let mut ring = enforcer.take_events().unwrap();

    let mut rng = StdRng::seed_from_u64(0x1e_4675);
    // Addresses near every boundary of the nested prefixes, and outside.
    let v4_near: [[u8; 4]; 12] = [
        [198, 18, 21, 85],
        [198, 18, 21, 84],
        [198, 18, 21, 87],
        [198, 18, 21, 80],
        [198, 18, 21, 95],
        [198, 18, 21, 64],
        [198, 18, 21, 1],
        [198, 18, 20, 1],
        [198, 18, 16, 1],
        [198, 18, 1, 1],
        [198, 18, 200, 1],
        [198, 19, 7, 1],
    ];
    let v6_tail: [u16; 8] = [0x85, 0x84, 0x80, 0x1234, 0, 0x99, 0x7f, 0x100];
    let v6_mid: [u16; 6] = [0, 0, 0x1, 0xff, 0x100, 0x1_00];
    let ports = [
        1u16, 22, 443, 700, 999, 1000, 1023, 1024, 1999, 2000, 2999, 3000, 5000, 5050, 5099, 5100,
        8000, 8191, 8192, 40000, 65535,
    ];
    let mut by_reason = std::collections::BTreeMap::<&str, usize>::new();
    for i in 0..6000 {
        let v6 = i % 3 == 2;
        let pick = |rng: &mut StdRng| -> std::net::IpAddr {
            if v6 {
                let mut a = [0u16; 8];
                a[0] = 0x2001;
                a[1] = 0xdb8;
                if rng.random_range(0..8) == 0 {
                    a[1] = 0xdb9; // outside every segment
                }
                a[2] = v6_mid[rng.random_range(0..v6_mid.len())];
                a[rng.random_range(3..7)] = rng.random_range(0..2);
                a[7] = v6_tail[rng.random_range(0..v6_tail.len())];
                std::net::IpAddr::from(a)
            } else {
                let mut a = v4_near[rng.random_range(0..v4_near.len())];
                if rng.random_range(0..4) == 0 {
                    a[3] = a[3].wrapping_add(rng.random_range(0..3));
                }
                std::net::IpAddr::from(a)
            }
        };
        let (src, dst) = (pick(&mut rng), pick(&mut rng));
        let proto = if rng.random_range(0..2) == 0 {
            abi::PROTO_TCP
        } else {
            abi::PROTO_UDP
        };
        let dport = ports[rng.random_range(0..ports.len())];
        let frame = syn_frame(src, dst, proto, rng.random_range(1024..65535), dport);
        let expected = reference.judge_frame(&frame, SkbVlan::default());
        let (reason, event, _) =
            run_kernel(&mut enforcer, &mut ring, &frame).expect("a whole frame runs");
        let e = event.expect("a new connection's event");
        let ctx = format!(
            "{src} -> {dst} proto {proto} port {dport}: expected {expected:?}, kernel {reason} {e:?}"
        );
        assert_eq!(reason, expected.reason as u8, "{ctx}");
        assert_eq!(e.policy, expected.policy, "policy: {ctx}");
        assert_eq!(e.src_segment, expected.src_segment, "source segment: {ctx}");
        assert_eq!(
            e.dst_segment, expected.dst_segment,
            "destination segment: {ctx}"
        );
        *by_reason.entry(expected.reason.name()).or_default() += 1;
    }
    eprintln!("6000 new connections agreed: {by_reason:?}");
    for reason in ["policy-allow", "policy-deny", "default-deny"] {
        assert!(
            by_reason.get(reason).copied().unwrap_or(0) > 100,
            "{by_reason:?}"
        );
    }
}
