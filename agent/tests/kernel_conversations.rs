//! The real kernel programs against the stateful reference
//! (`wardline_policy::reference::Tracker`), conversation by conversation,
//! through `BPF_PROG_TEST_RUN` on both hooks and three interfaces:
//! handshakes, replies, forged replies from other interfaces and VLANs,
//! initiator tuples reused elsewhere, echo requests posing as replies, ICMP
//! errors quoting tracked and untracked tuples in both directions, denied
//! retries and their reverse orientation, fragments, failsafe flows of the
//! node's own addresses, and policy changes in mid-connection. Every
//! packet's reason must agree.
//!
//! The interfaces are veth devices in a network namespace of the test's own
//! (`unshare`), so the test run can name them as the packet's interface.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;
use wardline_agent::enforcer::{self, Enforcer};
use wardline_ebpf_abi as abi;
use wardline_policy::packet::SkbVlan;
use wardline_policy::reference::{FailsafeDirection, FailsafeFlow, Hook, Reference, Tracker};
use wardline_policy::{CompileOptions, Dataplane, PolicySet};

const SEGMENTS: &str = r#"
apiVersion: wardline/v1
kind: Segment
metadata: {name: pumps}
spec: {cidrs: ["198.18.30.0/24", "2001:db8:30::/64"], vlans: [30]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: monitors}
spec: {cidrs: ["198.18.31.0/24", "2001:db8:31::/64"], vlans: [31], mode: monitor}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: pump-server}
spec: {cidrs: ["198.18.42.0/24", "2001:db8:42::/64"]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: workstations}
spec: {cidrs: ["198.18.20.0/24", "2001:db8:20::/64"], vlans: [20]}
---
apiVersion: wardline/v1
kind: Segment
metadata: {name: ehr}
spec: {cidrs: ["198.18.41.0/24", "2001:db8:41::/64"]}
"#;

/// Generation A: pumps reach the server, workstations the EHR.
const POLICIES_A: &str = r#"
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
  ports: [{protocol: tcp, port: 443}, {protocol: udp, port: 53}, {protocol: icmp}, {protocol: icmpv6}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: no-pumps-to-workstations}
spec: {action: deny, from: [pumps], to: [workstations]}
"#;

/// Generation B: the workstations lose the EHR's web port, the pumps gain
/// workstations on udp (deny removed), the EHR may reach everyone.
const POLICIES_B: &str = r#"
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: pumps-to-server}
spec:
  action: allow
  from: [pumps]
  to: [pump-server]
  ports: [{protocol: tcp, port: 443}, {protocol: icmp}, {protocol: icmpv6}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: workstations-to-ehr}
spec:
  action: allow
  from: [workstations]
  to: [ehr]
  ports: [{protocol: udp, port: 53}]
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: pumps-to-workstations}
spec: {action: allow, from: [pumps], to: [workstations], ports: [{protocol: udp, port: 5000}]}
---
apiVersion: wardline/v1
kind: Policy
metadata: {name: ehr-anywhere}
spec: {action: allow, from: [ehr], to: [any]}
"#;

const PREFIXES_V4: [[u8; 3]; 6] = [
    [198, 18, 30],
    [198, 18, 31],
    [198, 18, 42],
    [198, 18, 20],
    [198, 18, 41],
    [198, 51, 100], // world
];
const PREFIXES_V6: [u16; 6] = [0x30, 0x31, 0x42, 0x20, 0x41, 0x99];
/// VLAN tags hosts may carry (0: untagged); 99 is claimed by no segment.
const VLANS: [u16; 5] = [0, 30, 31, 20, 99];
/// The node's own addresses: EHR hosts .1 to .8.
const LOCAL_HOSTS: u8 = 8;

// ---------------------------------------------------------------------------
// Frames.

fn addr(rng: &mut StdRng, v6: bool) -> [u8; 16] {
    let i = rng.random_range(0..PREFIXES_V4.len());
    let host: u8 = rng.random_range(1..16);
    let mut a = [0u8; 16];
    if v6 {
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[4..6].copy_from_slice(&PREFIXES_V6[i].to_be_bytes());
        a[15] = host;
    } else {
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..15].copy_from_slice(&PREFIXES_V4[i]);
        a[15] = host;
    }
    a
}

/// One packet of a conversation, as built.
#[derive(Clone, Copy, Debug)]
struct Pkt {
    v6: bool,
    vlan: u16,
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    /// ICMP type for ICMP packets.
    icmp_type: u8,
    /// For ICMP errors: the packet quoted.
    quoted: Option<Quoted>,
    /// Fragment: (id, offset in 8-byte units, more fragments).
    frag: Option<(u32, u16, bool)>,
}

#[derive(Clone, Copy, Debug)]
struct Quoted {
    src: [u8; 16],
    dst: [u8; 16],
    proto: u8,
    sport: u16,
    dport: u16,
}

const ICMP4_ECHO_REQUEST: u8 = 8;
const ICMP4_ECHO_REPLY: u8 = 0;
const ICMP6_ECHO_REQUEST: u8 = 128;
const ICMP6_ECHO_REPLY: u8 = 129;

fn icmp_proto(v6: bool) -> u8 {
    if v6 {
        abi::PROTO_ICMPV6
    } else {
        abi::PROTO_ICMP
    }
}

fn build(p: &Pkt) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if p.vlan != 0 {
        f.extend(abi::ETH_P_8021Q.to_be_bytes());
        f.extend(p.vlan.to_be_bytes());
    }
    f.extend(if p.v6 { abi::ETH_P_IPV6 } else { abi::ETH_P_IP }.to_be_bytes());
    let l4 = transport(p);
    if p.v6 {
        let (nh, ext) = match p.frag {
            Some((id, off, more)) => {
                let mut e = vec![p.proto, 0];
                e.extend(((off << 3) | more as u16).to_be_bytes());
                e.extend(id.to_be_bytes());
                (44, e)
            }
            None => (p.proto, Vec::new()),
        };
        f.extend([0x60, 0, 0, 0]);
        f.extend(((ext.len() + l4.len()) as u16).to_be_bytes());
        f.extend([nh, 64]);
        f.extend(p.src);
        f.extend(p.dst);
        f.extend(ext);
    } else {
        let (id, frag) = match p.frag {
            Some((id, off, more)) => (id as u16, off | if more { 0x2000 } else { 0 }),
            None => (1, 0x4000),
        };
        f.extend([0x45, 0]);
        f.extend(((20 + l4.len()) as u16).to_be_bytes());
        f.extend(id.to_be_bytes());
        f.extend(frag.to_be_bytes());
        f.extend([64, p.proto, 0, 0]);
        f.extend(&p.src[12..]);
        f.extend(&p.dst[12..]);
    }
    f.extend(l4);
    f
}

fn transport(p: &Pkt) -> Vec<u8> {
    let mut t = Vec::new();
    if let Some((_, off, _)) = p.frag
        && off != 0
    {
        t.extend([0xab; 16]);
        return t;
    }
    match p.proto {
        abi::PROTO_TCP => {
            t.extend(p.sport.to_be_bytes());
            t.extend(p.dport.to_be_bytes());
            t.extend([
                0,
                0,
                0,
                1,
                0,
                0,
                0,
                0,
                0x50,
                p.tcp_flags,
                0xff,
                0xff,
                0,
                0,
                0,
                0,
            ]);
        }
        abi::PROTO_UDP => {
            t.extend(p.sport.to_be_bytes());
            t.extend(p.dport.to_be_bytes());
            t.extend([0, 16, 0, 0]);
            t.extend([0xcd; 8]);
        }
        _ => {
            t.extend([p.icmp_type, 0, 0, 0]);
            match p.quoted {
                None => {
                    t.extend(p.sport.to_be_bytes());
                    t.extend(7u16.to_be_bytes());
                }
                Some(q) => {
                    t.extend([0; 4]);
                    if p.v6 {
                        t.extend([0x60, 0, 0, 0, 0, 8, q.proto, 64]);
                        t.extend(q.src);
                        t.extend(q.dst);
                    } else {
                        t.extend([0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, q.proto, 0, 0]);
                        t.extend(&q.src[12..]);
                        t.extend(&q.dst[12..]);
                    }
                    if q.proto == icmp_proto(p.v6) {
                        let ty = if p.v6 {
                            ICMP6_ECHO_REQUEST
                        } else {
                            ICMP4_ECHO_REQUEST
                        };
                        t.extend([ty, 0, 0, 0]);
                        t.extend(q.sport.to_be_bytes());
                        t.extend(1u16.to_be_bytes());
                    } else {
                        t.extend(q.sport.to_be_bytes());
                        t.extend(q.dport.to_be_bytes());
                        t.extend([0; 4]);
                    }
                }
            }
        }
    }
    t
}

// ---------------------------------------------------------------------------
// Conversations.

/// Where one end of a conversation sits: its interface and VLAN; `None`
/// for the node itself (packets start or end at its own stack).
#[derive(Clone, Copy, Debug)]
struct End {
    at: Option<(usize, u16)>,
}

struct Conversation {
    v6: bool,
    proto: u8,
    a: [u8; 16],
    b: [u8; 16],
    sport: u16,
    dport: u16,
    /// The initiator's end and the responder's.
    ea: End,
    eb: End,
    steps: usize,
}

impl Conversation {
    fn packet(&self, reply: bool, vlan: u16) -> Pkt {
        let (src, dst, sport, dport) = if reply {
            (self.b, self.a, self.dport, self.sport)
        } else {
            (self.a, self.b, self.sport, self.dport)
        };
        let icmp_type = match (self.v6, reply) {
            (false, false) => ICMP4_ECHO_REQUEST,
            (false, true) => ICMP4_ECHO_REPLY,
            (true, false) => ICMP6_ECHO_REQUEST,
            (true, true) => ICMP6_ECHO_REPLY,
        };
        Pkt {
            v6: self.v6,
            vlan,
            src,
            dst,
            proto: self.proto,
            sport,
            dport,
            tcp_flags: 0x10,
            icmp_type,
            quoted: None,
            frag: None,
        }
    }
}

struct Lab {
    enforcer: Enforcer,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    ifindex: [u32; 3],
    tracker: Tracker,
    sets: [PolicySet; 2],
    live: usize,
    generation: u32,
    failsafe: Vec<FailsafeFlow>,
    local: Vec<IpAddr>,
    now: OffsetDateTime,
    packets: usize,
    by_reason: BTreeMap<&'static str, usize>,
    /// Packets whose kernel reason differs from the reference's, and the
    /// first few of them.
    mismatches: usize,
    first_mismatches: Vec<String>,
}

impl Lab {
    /// Judges `p` at a hook in the kernel and the reference; both must agree.
    /// Returns whether it passed.
    fn judge(&mut self, p: &Pkt, direction: u8, interface: usize, what: &str) -> bool {
        let frame = build(p);
        let ifindex = self.ifindex[interface];
        let mut ctx = [0u8; 192];
        // struct __sk_buff: `ifindex` is its eleventh u32.
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let name = if direction == abi::DIR_INGRESS {
            abi::PROG_INGRESS
        } else {
            abi::PROG_EGRESS
        };
        let (kernel, ret) = common::run(&mut self.enforcer, name, &frame, Some(&ctx))
            .unwrap_or_else(|e| panic!("test run of {what}: {e}"));
        while self.ring.next().is_some() {}
        let reference = Reference::new(&self.sets[self.live], self.now, &self.failsafe, &[])
            .with_local(&self.local);
        let expected = self.tracker.judge(
            &reference,
            self.generation,
            &frame,
            SkbVlan::default(),
            Hook { direction, ifindex },
            enforcer::boot_ns(),
        );
        if kernel != expected.reason {
            // Counted, not fatal at once: a soak run reports how many.
            self.mismatches += 1;
            if self.first_mismatches.len() < 5 {
                self.first_mismatches.push(format!(
                    "{what} at {} if{interface} (packet {}): kernel {kernel:?}, reference {:?}: {p:?}",
                    if direction == abi::DIR_INGRESS {
                        "ingress"
                    } else {
                        "egress"
                    },
                    self.packets,
                    expected.reason,
                ));
            }
        }
        let passes = kernel.verdict() != abi::Verdict::Dropped;
        let action = if passes {
            abi::ACTION_PASS
        } else {
            abi::ACTION_DROP
        };
        assert_eq!(ret, action, "{what}: the program's action");
        self.packets += 1;
        *self.by_reason.entry(kernel.name()).or_default() += 1;
        passes
    }

    /// Sends `p` from end `from` to end `to` through the node: the ingress
    /// hook where it arrives, then (if it passed) the egress hook it leaves.
    fn send(&mut self, p: &Pkt, from: End, to: End, out_vlan: u16, what: &str) {
        if let Some((i, _)) = from.at
            && !self.judge(p, abi::DIR_INGRESS, i, what)
        {
            return;
        }
        if let Some((o, _)) = to.at {
            let mut out = *p;
            out.vlan = out_vlan;
            self.judge(&out, abi::DIR_EGRESS, o, what);
        }
    }

    fn switch_policy(&mut self) {
        self.live ^= 1;
        let dp = Dataplane::compile(&self.sets[self.live], &CompileOptions::at(self.now))
            .expect("compiles");
        self.generation = self.enforcer.apply(&dp, &[]).expect("apply").live;
    }
}

fn new_conversation(rng: &mut StdRng) -> Conversation {
    let v6 = rng.random_bool(0.4);
    let proto = match rng.random_range(0..10) {
        0..=4 => abi::PROTO_TCP,
        5..=7 => abi::PROTO_UDP,
        _ => icmp_proto(v6),
    };
    let end = |rng: &mut StdRng| End {
        at: if rng.random_bool(0.12) {
            None
        } else {
            Some((
                rng.random_range(0..3),
                VLANS[rng.random_range(0..VLANS.len())],
            ))
        },
    };
    let mut ea = end(rng);
    let mut eb = end(rng);
    if ea.at.is_none() && eb.at.is_none() {
        eb.at = Some((1, 0));
    }
    let mut a = addr(rng, v6);
    let mut b = addr(rng, v6);
    let local = |rng: &mut StdRng| {
        let mut x = [0u8; 16];
        if v6 {
            x[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0x41]);
        } else {
            x[10..15].copy_from_slice(&[0xff, 0xff, 198, 18, 41]);
        }
        x[15] = rng.random_range(1..=LOCAL_HOSTS);
        x
    };
    if ea.at.is_none() {
        a = local(rng);
    }
    if eb.at.is_none() {
        b = local(rng);
    }
    // Some hosts on a VLAN use their VLAN's own addresses, as real ones do.
    if let Some((_, vlan @ (20 | 30 | 31))) = ea.at
        && rng.random_bool(0.7)
    {
        // The VLAN number is the segment's third octet (IPv6: its hex digits).
        if v6 {
            a[5] = u8::from_str_radix(&vlan.to_string(), 16).unwrap_or(0x30);
        } else {
            a[14] = vlan as u8;
        }
    }
    if rng.random_bool(0.05) {
        ea.at = ea.at.map(|(i, _)| (i, 0));
    }
    const PORTS: [u16; 6] = [443, 53, 5000, 5005, 22, 7443];
    let dport = if proto == icmp_proto(v6) {
        rng.random()
    } else {
        PORTS[rng.random_range(0..PORTS.len())]
    };
    let sport = if proto == icmp_proto(v6) {
        dport
    } else {
        rng.random_range(1024..65535)
    };
    Conversation {
        v6,
        proto,
        a,
        b,
        sport,
        dport,
        ea,
        eb,
        steps: rng.random_range(2..12),
    }
}

/// One step of `c`: its next packet, or an attack on it.
fn step(lab: &mut Lab, rng: &mut StdRng, c: &mut Conversation, n: usize) {
    let vlan_a = c.ea.at.map_or(0, |(_, v)| v);
    let vlan_b = c.eb.at.map_or(0, |(_, v)| v);
    let other_if = |i: usize| (i + 1) % 3;
    match rng.random_range(0..100) {
        // The conversation itself: the initiator first, then either side.
        0..=59 => {
            let reply = n > 0 && rng.random_bool(0.5);
            let (from, to, vin, vout) = if reply {
                (c.eb, c.ea, vlan_b, vlan_a)
            } else {
                (c.ea, c.eb, vlan_a, vlan_b)
            };
            let mut p = c.packet(reply, vin);
            if c.proto == abi::PROTO_TCP {
                p.tcp_flags = match (n, reply) {
                    (0, false) => 0x02,
                    (_, true) if n == 1 => 0x12,
                    _ if rng.random_bool(0.05) => 0x11,
                    _ if rng.random_bool(0.02) => 0x04,
                    _ => 0x10,
                };
            }
            lab.send(&p, from, to, vout, "conversation");
        }
        // A forged reply: the responder's tuple from another interface or
        // another VLAN.
        60..=67 => {
            let (i, v) = c.ea.at.or(c.eb.at).unwrap_or((0, 0));
            let (i, v) = if rng.random_bool(0.5) {
                (other_if(i), v)
            } else {
                (i, VLANS[rng.random_range(0..VLANS.len())])
            };
            let p = c.packet(true, v);
            lab.send(&p, End { at: Some((i, v)) }, c.ea, vlan_a, "forged reply");
        }
        // The initiator's tuple reused elsewhere.
        68..=73 => {
            let (i, _) = c.ea.at.unwrap_or((2, 0));
            let v = VLANS[rng.random_range(0..VLANS.len())];
            let p = c.packet(false, v);
            lab.send(
                &p,
                End {
                    at: Some((other_if(i), v)),
                },
                c.eb,
                vlan_b,
                "reused tuple",
            );
        }
        // An echo request in the reply's orientation (or any ICMP echo pair).
        74..=77 => {
            let mut p = c.packet(true, vlan_b);
            p.proto = icmp_proto(c.v6);
            p.icmp_type = if c.v6 {
                ICMP6_ECHO_REQUEST
            } else {
                ICMP4_ECHO_REQUEST
            };
            p.sport = c.dport;
            p.dport = c.dport;
            lab.send(&p, c.eb, c.ea, vlan_a, "echo request as a reply");
        }
        // An ICMP error quoting the initiator's or the responder's packet,
        // sent towards either end, from either side.
        78..=87 => {
            let quote_reply = rng.random_bool(0.3);
            let q = if quote_reply {
                Quoted {
                    src: c.b,
                    dst: c.a,
                    proto: c.proto,
                    sport: c.dport,
                    dport: c.sport,
                }
            } else {
                Quoted {
                    src: c.a,
                    dst: c.b,
                    proto: c.proto,
                    sport: c.sport,
                    dport: c.dport,
                }
            };
            let towards_source = rng.random_bool(0.6);
            let dst = if towards_source { q.src } else { q.dst };
            let from_side = if rng.random_bool(0.7) {
                if quote_reply { c.ea } else { c.eb }
            } else if quote_reply {
                c.eb
            } else {
                c.ea
            };
            let router = addr(rng, c.v6);
            let p = Pkt {
                v6: c.v6,
                vlan: from_side.at.map_or(0, |(_, v)| v),
                src: router,
                dst,
                proto: icmp_proto(c.v6),
                sport: 0,
                dport: 0,
                tcp_flags: 0,
                icmp_type: if c.v6 { 1 } else { 3 },
                quoted: Some(q),
                frag: None,
            };
            let to = if dst == c.a { c.ea } else { c.eb };
            lab.send(&p, from_side, to, to.at.map_or(0, |(_, v)| v), "icmp error");
        }
        // A fragmented datagram of the conversation: first, later, and an
        // orphan of another id.
        88..=93 => {
            let id = rng.random::<u32>() & if c.v6 { u32::MAX } else { 0xffff };
            let mut first = c.packet(false, vlan_a);
            first.frag = Some((id, 0, true));
            first.tcp_flags = 0x10;
            lab.send(&first, c.ea, c.eb, vlan_b, "first fragment");
            let mut later = first;
            later.frag = Some((id, 3, false));
            lab.send(&later, c.ea, c.eb, vlan_b, "later fragment");
            let mut orphan = first;
            orphan.frag = Some((id ^ 0x5a5a, 3, false));
            lab.send(&orphan, c.ea, c.eb, vlan_b, "orphan fragment");
        }
        // Other ICMP informational messages and unsolicited echo replies.
        _ => {
            let mut p = c.packet(rng.random_bool(0.5), vlan_a);
            p.proto = icmp_proto(c.v6);
            p.icmp_type = if rng.random_bool(0.5) {
                if c.v6 {
                    ICMP6_ECHO_REPLY
                } else {
                    ICMP4_ECHO_REPLY
                }
            } else if c.v6 {
                139
            } else {
                13
            };
            p.sport = c.sport;
            p.dport = c.sport;
            lab.send(&p, c.ea, c.eb, vlan_b, "unsolicited icmp");
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Enters a network namespace of this thread's own, with three interfaces.
fn own_namespace() -> [u32; 3] {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare the network");
    ip(&[
        "link", "add", "wlc0", "type", "veth", "peer", "name", "wlc1",
    ]);
    ip(&[
        "link", "add", "wlc2", "type", "veth", "peer", "name", "wlc3",
    ]);
    ["wlc0", "wlc1", "wlc2"].map(|n| nix::net::if_::if_nametoindex(n).expect("ifindex"))
}

/// How many packets to replay (default 100,000).
const PACKETS_VAR: &str = "WARDLINE_CONVERSATION_PACKETS";

#[test]
#[ignore = "needs root: run via cargo xtask test"]
fn privileged_kernel_agrees_with_reference_over_conversations() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "needs root: run via cargo xtask test"
    );
    // `cargo xtask soak` runs a million.
    let packets: usize = std::env::var(PACKETS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let ifindex = own_namespace();
    let sets = [POLICIES_A, POLICIES_B]
        .map(|p| wardline_policy::parse(&format!("{SEGMENTS}{p}")).expect("test policy parses"));
    let now = OffsetDateTime::now_utc();
    let failsafe = vec![
        FailsafeFlow {
            direction: FailsafeDirection::Ingress,
            protocol: abi::PROTO_TCP,
            port: 22,
            cidrs: vec![
                "198.18.20.0/24".parse().unwrap(),
                "2001:db8:20::/64".parse().unwrap(),
            ],
        },
        FailsafeFlow {
            direction: FailsafeDirection::Egress,
            protocol: abi::PROTO_TCP,
            port: 7443,
            cidrs: vec![
                "198.18.42.0/24".parse().unwrap(),
                "2001:db8:42::/64".parse().unwrap(),
            ],
        },
    ];
    let local: Vec<IpAddr> = (1..=LOCAL_HOSTS)
        .flat_map(|i| {
            [
                IpAddr::from([198, 18, 41, i]),
                format!("2001:db8:41::{i:x}").parse().unwrap(),
            ]
        })
        .collect();

    let (mut enforcer, _pins) = common::open("conv");
    enforcer.set_local_rules(&failsafe, &[]).unwrap();
    enforcer.set_local_addresses(&local).unwrap();
    let ring = enforcer.take_events().unwrap();
    let mut lab = Lab {
        enforcer,
        ring,
        ifindex,
        tracker: Tracker::new(),
        sets,
        live: 1,
        generation: 0,
        failsafe,
        local,
        now,
        packets: 0,
        by_reason: BTreeMap::new(),
        mismatches: 0,
        first_mismatches: Vec::new(),
    };
    lab.switch_policy();

    let mut rng = StdRng::seed_from_u64(0x00c0_4e75);
    let mut live: Vec<(Conversation, usize)> = Vec::new();
    let mut next_switch = 1500;
    while lab.packets < packets {
        while live.len() < 64 {
            live.push((new_conversation(&mut rng), 0));
        }
        let i = rng.random_range(0..live.len());
        let (c, n) = &mut live[i];
        step(&mut lab, &mut rng, c, *n);
        *n += 1;
        if *n >= c.steps {
            live.swap_remove(i);
        }
        if lab.packets >= next_switch {
            // A policy change in mid-connection: everything tracked is
            // judged again by the new generation.
            lab.switch_policy();
            next_switch = lab.packets + rng.random_range(500..4000);
        }
        if rng.random_bool(0.0005) {
            // A restart of tracking (both sides forget), now and then.
            lab.enforcer.flush_tracking().unwrap();
            lab.tracker.clear();
        }
    }
    eprintln!(
        "conversations: {} packets, {} mismatches: {:?}",
        lab.packets, lab.mismatches, lab.by_reason
    );
    assert_eq!(
        lab.mismatches, 0,
        "the kernel and the reference disagree; the first: {:#?}",
        lab.first_mismatches
    );
    for reason in [
        "policy-allow",
        "policy-deny",
        "default-deny",
        "monitor",
        "monitor-established",
        "established",
        "failsafe",
        "related",
        "fragment",
        "orphan-fragment",
        "dropped-flow",
        "spoofed-source",
    ] {
        assert!(
            lab.by_reason.get(reason).copied().unwrap_or(0) > 0,
            "no case of {reason}: {:?}",
            lab.by_reason
        );
    }
}
