//! All packet parsing, in one place. Mirrors `wardline_policy::packet`
//! decision for decision; reads go through `bpf_skb_load_bytes`, so a read
//! past the end of the frame is a truncation, never an out-of-bounds access.

use aya_ebpf::programs::TcContext;
use wardline_ebpf_abi::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, FlowKey, MAX_IPV6_EXT_HEADERS,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason,
};

pub const ICMP_ECHO_REQUEST: u8 = 1;
pub const ICMP_ECHO_REPLY: u8 = 2;
pub const ICMP_ERROR: u8 = 3;
pub const ICMP_OTHER: u8 = 4;

pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

pub struct Packet {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// The flow an ICMP error quotes (valid when `has_inner`).
    pub inner: FlowKey,
    pub frag_id: u32,
    pub sport: u16,
    pub dport: u16,
    pub vlan: u16,
    pub family: u8,
    pub proto: u8,
    pub tcp_flags: u8,
    pub icmp: u8,
    pub fragment: u8,
    pub has_inner: bool,
}

pub enum Parsed {
    L2Pass,
    Ethertype(u16),
    Ip,
}

#[inline(always)]
fn u8_at(ctx: &TcContext, at: usize) -> Result<u8, Reason> {
    ctx.load::<u8>(at).map_err(|_| Reason::Truncated)
}

#[inline(always)]
fn u16_at(ctx: &TcContext, at: usize) -> Result<u16, Reason> {
    ctx.load::<u16>(at)
        .map(u16::from_be)
        .map_err(|_| Reason::Truncated)
}

#[inline(always)]
fn u32_at(ctx: &TcContext, at: usize) -> Result<u32, Reason> {
    ctx.load::<u32>(at)
        .map(u32::from_be)
        .map_err(|_| Reason::Truncated)
}

#[inline(always)]
fn need(ctx: &TcContext, end: usize) -> Result<(), Reason> {
    if ctx.len() as usize >= end {
        Ok(())
    } else {
        Err(Reason::Truncated)
    }
}

#[inline(always)]
fn v4_at(ctx: &TcContext, at: usize) -> Result<[u8; 16], Reason> {
    let raw = ctx.load::<[u8; 4]>(at).map_err(|_| Reason::Truncated)?;
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12] = raw[0];
    a[13] = raw[1];
    a[14] = raw[2];
    a[15] = raw[3];
    Ok(a)
}

#[inline(always)]
fn v6_at(ctx: &TcContext, at: usize) -> Result<[u8; 16], Reason> {
    ctx.load::<[u8; 16]>(at).map_err(|_| Reason::Truncated)
}

/// Parses the frame into `p`. The 802.1Q tag may already sit in skb
/// metadata (as at ingress on a bridge port) or still be in the frame.
#[inline(never)]
pub fn parse(ctx: &TcContext, p: &mut Packet) -> Result<Parsed, Reason> {
    need(ctx, 14)?;
    let mut ethertype = u16_at(ctx, 12)?;
    let mut off = 14usize;
    let mut tagged = false;
    // SAFETY: `skb` is the context pointer the kernel handed to the program.
    let (present, proto, tci) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).vlan_present, (*skb).vlan_proto, (*skb).vlan_tci)
    };
    if present != 0 {
        if u16::from_be(proto as u16) == ETH_P_8021AD {
            return Err(Reason::UnsupportedL2);
        }
        p.vlan = (tci as u16) & 0x0fff;
        tagged = true;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if ethertype == ETH_P_8021AD || tagged {
            return Err(Reason::UnsupportedL2);
        }
        need(ctx, 18)?;
        p.vlan = u16_at(ctx, 14)? & 0x0fff;
        ethertype = u16_at(ctx, 16)?;
        off = 18;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(Reason::UnsupportedL2);
        }
    }
    match ethertype {
        ETH_P_ARP => Ok(Parsed::L2Pass),
        ETH_P_IP => parse_ipv4(ctx, off, p),
        ETH_P_IPV6 => parse_ipv6(ctx, off, p),
        other => Ok(Parsed::Ethertype(other)),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<Parsed, Reason> {
    need(ctx, off + 20)?;
    let vihl = u8_at(ctx, off)?;
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(Reason::MalformedHeader);
    }
    let hlen = ihl * 4;
    need(ctx, off + hlen)?;
    let tot_len = u16_at(ctx, off + 2)? as usize;
    if tot_len != 0 && tot_len < hlen {
        return Err(Reason::MalformedHeader);
    }
    let id = u16_at(ctx, off + 4)? as u32;
    let frag = u16_at(ctx, off + 6)?;
    p.proto = u8_at(ctx, off + 9)?;
    p.src = v4_at(ctx, off + 12)?;
    p.dst = v4_at(ctx, off + 16)?;
    p.family = 4;
    p.frag_id = id;
    if frag & 0x1fff != 0 {
        p.fragment = FRAG_LATER;
        return Ok(Parsed::Ip);
    }
    if frag & 0x2000 != 0 {
        p.fragment = FRAG_FIRST;
    }
    transport(ctx, off + hlen, p)
}

#[inline(always)]
fn is_ext_header(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 51 | 60)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<Parsed, Reason> {
    need(ctx, off + 40)?;
    if u8_at(ctx, off)? >> 4 != 6 {
        return Err(Reason::MalformedHeader);
    }
    let mut nh = u8_at(ctx, off + 6)?;
    p.src = v6_at(ctx, off + 8)?;
    p.dst = v6_at(ctx, off + 24)?;
    p.family = 6;
    let mut l4 = off + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        // Keep the offset provably small for the verifier.
        if l4 > 4096 {
            return Err(Reason::Truncated);
        }
        match nh {
            0 | 43 | 60 => {
                need(ctx, l4 + 2)?;
                let next = u8_at(ctx, l4)?;
                l4 += (u8_at(ctx, l4 + 1)? as usize + 1) * 8;
                nh = next;
            }
            51 => {
                need(ctx, l4 + 2)?;
                let next = u8_at(ctx, l4)?;
                l4 += (u8_at(ctx, l4 + 1)? as usize + 2) * 4;
                nh = next;
            }
            44 => {
                need(ctx, l4 + 8)?;
                let next = u8_at(ctx, l4)?;
                let fo = u16_at(ctx, l4 + 2)?;
                let id = u32_at(ctx, l4 + 4)?;
                l4 += 8;
                nh = next;
                p.frag_id = id;
                if fo >> 3 != 0 {
                    p.fragment = FRAG_LATER;
                    p.proto = nh;
                    return Ok(Parsed::Ip);
                } else if fo & 1 != 0 {
                    p.fragment = FRAG_FIRST;
                }
            }
            _ => break,
        }
    }
    p.proto = nh;
    if is_ext_header(nh) {
        return Err(Reason::TooManyExtHeaders);
    }
    if l4 > 4096 {
        return Err(Reason::Truncated);
    }
    transport(ctx, l4, p)
}

#[inline(always)]
fn transport(ctx: &TcContext, l4: usize, p: &mut Packet) -> Result<Parsed, Reason> {
    match p.proto {
        PROTO_TCP => {
            need(ctx, l4 + 20)?;
            p.sport = u16_at(ctx, l4)?;
            p.dport = u16_at(ctx, l4 + 2)?;
            if u8_at(ctx, l4 + 12)? >> 4 < 5 {
                return Err(Reason::MalformedHeader);
            }
            p.tcp_flags = u8_at(ctx, l4 + 13)?;
        }
        PROTO_UDP => {
            need(ctx, l4 + 8)?;
            p.sport = u16_at(ctx, l4)?;
            p.dport = u16_at(ctx, l4 + 2)?;
        }
        PROTO_SCTP => {
            need(ctx, l4 + 12)?;
            p.sport = u16_at(ctx, l4)?;
            p.dport = u16_at(ctx, l4 + 2)?;
        }
        PROTO_ICMP if p.family == 4 => {
            need(ctx, l4 + 4)?;
            let ty = u8_at(ctx, l4)?;
            match ty {
                8 | 0 => {
                    need(ctx, l4 + 8)?;
                    let id = u16_at(ctx, l4 + 4)?;
                    p.sport = id;
                    p.dport = id;
                    p.icmp = if ty == 8 {
                        ICMP_ECHO_REQUEST
                    } else {
                        ICMP_ECHO_REPLY
                    };
                }
                3 | 4 | 11 | 12 => {
                    p.icmp = ICMP_ERROR;
                    p.has_inner = quoted_v4(ctx, l4 + 8, &mut p.inner);
                }
                _ => p.icmp = ICMP_OTHER,
            }
        }
        PROTO_ICMPV6 if p.family == 6 => {
            need(ctx, l4 + 4)?;
            let ty = u8_at(ctx, l4)?;
            match ty {
                133..=137 => return Ok(Parsed::L2Pass),
                128 | 129 => {
                    need(ctx, l4 + 8)?;
                    let id = u16_at(ctx, l4 + 4)?;
                    p.sport = id;
                    p.dport = id;
                    p.icmp = if ty == 128 {
                        ICMP_ECHO_REQUEST
                    } else {
                        ICMP_ECHO_REPLY
                    };
                }
                1..=4 => {
                    p.icmp = ICMP_ERROR;
                    p.has_inner = quoted_v6(ctx, l4 + 8, &mut p.inner);
                }
                _ => p.icmp = ICMP_OTHER,
            }
        }
        _ => {}
    }
    Ok(Parsed::Ip)
}

#[inline(always)]
fn quoted_v4(ctx: &TcContext, off: usize, k: &mut FlowKey) -> bool {
    let Ok(vihl) = u8_at(ctx, off) else {
        return false;
    };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return false;
    }
    let (Ok(proto), Ok(src), Ok(dst)) = (
        u8_at(ctx, off + 9),
        v4_at(ctx, off + 12),
        v4_at(ctx, off + 16),
    ) else {
        return false;
    };
    k.proto = proto;
    k.src = src;
    k.dst = dst;
    quoted_ports(ctx, off + ihl * 4, k, PROTO_ICMP, 8)
}

#[inline(always)]
fn quoted_v6(ctx: &TcContext, off: usize, k: &mut FlowKey) -> bool {
    let Ok(v) = u8_at(ctx, off) else {
        return false;
    };
    if v >> 4 != 6 {
        return false;
    }
    let (Ok(proto), Ok(src), Ok(dst)) = (
        u8_at(ctx, off + 6),
        v6_at(ctx, off + 8),
        v6_at(ctx, off + 24),
    ) else {
        return false;
    };
    k.proto = proto;
    k.src = src;
    k.dst = dst;
    quoted_ports(ctx, off + 40, k, PROTO_ICMPV6, 128)
}

#[inline(always)]
fn quoted_ports(ctx: &TcContext, l4: usize, k: &mut FlowKey, icmp_proto: u8, echo: u8) -> bool {
    match k.proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let (Ok(s), Ok(d)) = (u16_at(ctx, l4), u16_at(ctx, l4 + 2)) else {
                return false;
            };
            k.sport = s;
            k.dport = d;
            true
        }
        p if p == icmp_proto => {
            let (Ok(ty), Ok(id)) = (u8_at(ctx, l4), u16_at(ctx, l4 + 4)) else {
                return false;
            };
            if ty != echo {
                return false;
            }
            k.sport = id;
            k.dport = id;
            true
        }
        _ => false,
    }
}
