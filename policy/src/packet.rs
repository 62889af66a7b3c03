//! The host-side reference of the kernel's packet parser.
//!
//! It makes the same decisions, in the same order, as `ebpf/programs`: what
//! is truncated, what is malformed, which tag gives the VLAN, where the
//! transport header starts. The kernel is tested against it packet by packet
//! through `BPF_PROG_TEST_RUN`.

use wardline_ebpf_abi::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, FlowKey, MAX_IPV6_EXT_HEADERS,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason,
};

/// The 802.1Q tag the kernel already moved out of the frame into skb
/// metadata (as at TC ingress on a bridge port), if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbVlan {
    pub present: bool,
    pub proto: u16,
    pub tci: u16,
}

/// What kind of ICMP message a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    NotIcmp,
    EchoRequest,
    EchoReply,
    /// An error that quotes the packet it is about: that packet's flow.
    Error(Option<FlowKey>),
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment (or an atomic fragment).
    None,
    /// Offset 0 with more fragments to come: carries the transport header.
    First(u32),
    /// A later fragment: no transport header.
    Later(u32),
}

/// An IP packet as the verdict logic sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// 802.1Q VLAN id; 0 for untagged (or priority-tagged) frames.
    pub vlan: u16,
    pub family: u8,
    /// IPv4 addresses IPv4-mapped.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    /// Flow ports: transport ports, the echo identifier for ICMP echo, else 0.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp: IcmpKind,
    pub fragment: Fragment,
}

impl Packet {
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// The responder's port that policies speak of (0 where the protocol has none).
    pub fn policy_port(&self) -> u16 {
        match self.proto {
            PROTO_TCP | PROTO_UDP | PROTO_SCTP => self.dport,
            _ => 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// ARP or IPv6 neighbour/router discovery: always passed.
    L2Pass,
    /// Any other non-IP ethertype: passed only where configured.
    Ethertype(u16),
    Ip(Packet),
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&self, at: usize) -> Result<u8, Reason> {
        self.0.get(at).copied().ok_or(Reason::Truncated)
    }
    fn u16(&self, at: usize) -> Result<u16, Reason> {
        Ok(u16::from_be_bytes([self.u8(at)?, self.u8(at + 1)?]))
    }
    fn u32(&self, at: usize) -> Result<u32, Reason> {
        Ok(u32::from_be_bytes([
            self.u8(at)?,
            self.u8(at + 1)?,
            self.u8(at + 2)?,
            self.u8(at + 3)?,
        ]))
    }
    fn need(&self, end: usize) -> Result<(), Reason> {
        if self.0.len() >= end {
            Ok(())
        } else {
            Err(Reason::Truncated)
        }
    }
    fn v4(&self, at: usize) -> Result<[u8; 16], Reason> {
        self.need(at + 4)?;
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&self.0[at..at + 4]);
        Ok(a)
    }
    fn v6(&self, at: usize) -> Result<[u8; 16], Reason> {
        self.need(at + 16)?;
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.0[at..at + 16]);
        Ok(a)
    }
}

fn is_ext_header(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 51 | 60)
}

/// Parses a frame that starts at its Ethernet header.
pub fn parse(frame: &[u8], skb_vlan: SkbVlan) -> Result<Parsed, Reason> {
    let b = Bytes(frame);
    b.need(14)?;
    let mut ethertype = b.u16(12)?;
    let mut off = 14;
    let mut vlan = 0u16;
    let mut tagged = false;
    if skb_vlan.present {
        if skb_vlan.proto == ETH_P_8021AD {
            return Err(Reason::UnsupportedL2);
        }
        vlan = skb_vlan.tci & 0x0fff;
        tagged = true;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if ethertype == ETH_P_8021AD || tagged {
            return Err(Reason::UnsupportedL2);
        }
        b.need(18)?;
        vlan = b.u16(14)? & 0x0fff;
        ethertype = b.u16(16)?;
        off = 18;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(Reason::UnsupportedL2);
        }
    }
    match ethertype {
        ETH_P_ARP => Ok(Parsed::L2Pass),
        ETH_P_IP => parse_ipv4(&b, off, vlan),
        ETH_P_IPV6 => parse_ipv6(&b, off, vlan),
        other => Ok(Parsed::Ethertype(other)),
    }
}

fn parse_ipv4(b: &Bytes<'_>, off: usize, vlan: u16) -> Result<Parsed, Reason> {
    b.need(off + 20)?;
    let vihl = b.u8(off)?;
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(Reason::MalformedHeader);
    }
    let hlen = ihl * 4;
    b.need(off + hlen)?;
    let tot_len = b.u16(off + 2)? as usize;
    if tot_len != 0 && tot_len < hlen {
        return Err(Reason::MalformedHeader);
    }
    let id = b.u16(off + 4)? as u32;
    let frag = b.u16(off + 6)?;
    let proto = b.u8(off + 9)?;
    let src = b.v4(off + 12)?;
    let dst = b.v4(off + 16)?;
    let fragment = if frag & 0x1fff != 0 {
        Fragment::Later(id)
    } else if frag & 0x2000 != 0 {
        Fragment::First(id)
    } else {
        Fragment::None
    };
    let mut p = Packet {
        vlan,
        family: 4,
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp: IcmpKind::NotIcmp,
        fragment,
    };
    if let Fragment::Later(_) = fragment {
        return Ok(Parsed::Ip(p));
    }
    transport(b, off + hlen, &mut p)
}

fn parse_ipv6(b: &Bytes<'_>, off: usize, vlan: u16) -> Result<Parsed, Reason> {
    b.need(off + 40)?;
    if b.u8(off)? >> 4 != 6 {
        return Err(Reason::MalformedHeader);
    }
    let mut nh = b.u8(off + 6)?;
    let src = b.v6(off + 8)?;
    let dst = b.v6(off + 24)?;
    let mut l4 = off + 40;
    let mut fragment = Fragment::None;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match nh {
            0 | 43 | 60 => {
                b.need(l4 + 2)?;
                let next = b.u8(l4)?;
                l4 += (b.u8(l4 + 1)? as usize + 1) * 8;
                nh = next;
            }
            51 => {
                b.need(l4 + 2)?;
                let next = b.u8(l4)?;
                l4 += (b.u8(l4 + 1)? as usize + 2) * 4;
                nh = next;
            }
            44 => {
                b.need(l4 + 8)?;
                let next = b.u8(l4)?;
                let fo = b.u16(l4 + 2)?;
                let id = b.u32(l4 + 4)?;
                l4 += 8;
                nh = next;
                if fo >> 3 != 0 {
                    fragment = Fragment::Later(id);
                    break;
                } else if fo & 1 != 0 {
                    fragment = Fragment::First(id);
                }
            }
            _ => break,
        }
    }
    let mut p = Packet {
        vlan,
        family: 6,
        src,
        dst,
        proto: nh,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp: IcmpKind::NotIcmp,
        fragment,
    };
    if let Fragment::Later(_) = fragment {
        return Ok(Parsed::Ip(p));
    }
    if is_ext_header(nh) {
        return Err(Reason::TooManyExtHeaders);
    }
    transport(b, l4, &mut p)
}

fn transport(b: &Bytes<'_>, l4: usize, p: &mut Packet) -> Result<Parsed, Reason> {
    match p.proto {
        PROTO_TCP => {
            b.need(l4 + 20)?;
            p.sport = b.u16(l4)?;
            p.dport = b.u16(l4 + 2)?;
            if b.u8(l4 + 12)? >> 4 < 5 {
                return Err(Reason::MalformedHeader);
            }
            p.tcp_flags = b.u8(l4 + 13)?;
        }
        PROTO_UDP => {
            b.need(l4 + 8)?;
            p.sport = b.u16(l4)?;
            p.dport = b.u16(l4 + 2)?;
        }
        PROTO_SCTP => {
            b.need(l4 + 12)?;
            p.sport = b.u16(l4)?;
            p.dport = b.u16(l4 + 2)?;
        }
        PROTO_ICMP if p.family == 4 => {
            b.need(l4 + 4)?;
            match b.u8(l4)? {
                8 | 0 => {
                    b.need(l4 + 8)?;
                    let id = b.u16(l4 + 4)?;
                    p.sport = id;
                    p.dport = id;
                    p.icmp = if b.u8(l4)? == 8 {
                        IcmpKind::EchoRequest
                    } else {
                        IcmpKind::EchoReply
                    };
                }
                3 | 4 | 11 | 12 => p.icmp = IcmpKind::Error(quoted_v4(b, l4 + 8)),
                _ => p.icmp = IcmpKind::Other,
            }
        }
        PROTO_ICMPV6 if p.family == 6 => {
            b.need(l4 + 4)?;
            match b.u8(l4)? {
                133..=137 => return Ok(Parsed::L2Pass),
                128 | 129 => {
                    b.need(l4 + 8)?;
                    let id = b.u16(l4 + 4)?;
                    p.sport = id;
                    p.dport = id;
                    p.icmp = if b.u8(l4)? == 128 {
                        IcmpKind::EchoRequest
                    } else {
                        IcmpKind::EchoReply
                    };
                }
                1..=4 => p.icmp = IcmpKind::Error(quoted_v6(b, l4 + 8)),
                _ => p.icmp = IcmpKind::Other,
            }
        }
        _ => {}
    }
    Ok(Parsed::Ip(*p))
}

/// The flow of the IPv4 packet an ICMP error quotes, if it can be read.
fn quoted_v4(b: &Bytes<'_>, off: usize) -> Option<FlowKey> {
    let vihl = b.u8(off).ok()?;
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let proto = b.u8(off + 9).ok()?;
    let src = b.v4(off + 12).ok()?;
    let dst = b.v4(off + 16).ok()?;
    quoted_ports(b, off + ihl * 4, proto, src, dst, PROTO_ICMP, 8)
}

fn quoted_v6(b: &Bytes<'_>, off: usize) -> Option<FlowKey> {
    if b.u8(off).ok()? >> 4 != 6 {
        return None;
    }
    let proto = b.u8(off + 6).ok()?;
    let src = b.v6(off + 8).ok()?;
    let dst = b.v6(off + 24).ok()?;
    quoted_ports(b, off + 40, proto, src, dst, PROTO_ICMPV6, 128)
}

fn quoted_ports(
    b: &Bytes<'_>,
    l4: usize,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    icmp_proto: u8,
    echo_request: u8,
) -> Option<FlowKey> {
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => (b.u16(l4).ok()?, b.u16(l4 + 2).ok()?),
        p if p == icmp_proto => {
            if b.u8(l4).ok()? != echo_request {
                return None;
            }
            let id = b.u16(l4 + 4).ok()?;
            (id, id)
        }
        _ => return None,
    };
    Some(FlowKey {
        src,
        dst,
        sport,
        dport,
        proto,
        _pad: [0; 3],
    })
}
