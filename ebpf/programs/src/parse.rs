//! All packet parsing, in one place. Mirrors `wardline_policy::packet`
//! decision for decision; what each outcome means for the verdict is in
//! `docs/verdicts.md`. Each header is read whole, in one step, after
//! `need` has checked that the frame holds all of it, so a read past the end
//! of the frame is a truncation, never an out-of-bounds access. A header in
//! the skb's linear data is read in place; elsewhere `bpf_skb_load_bytes`
//! copies it out (a helper call per field cost more than the rest of an
//! established packet's verdict).

use aya_ebpf::programs::TcContext;
use wardline_ebpf_abi::{
    ETH_P_802_3_MIN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETHERTYPE_802_3,
    FlowKey, MAX_IPV6_EXT_HEADERS, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    Reason,
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
    /// The protocol part of a fragment's datagram key: the IPv4 header's
    /// protocol, 0 for IPv6 (whose fragments key by addresses and id only,
    /// whatever extension headers follow the Fragment header).
    pub frag_proto: u8,
    pub tcp_flags: u8,
    pub icmp: u8,
    pub fragment: u8,
    pub has_inner: bool,
    /// Sent to a group: an Ethernet multicast or broadcast destination,
    /// an IPv4 multicast or limited-broadcast address, IPv6 multicast.
    /// Tracked in its initiator's orientation only: nothing answers a
    /// group as a reply.
    pub group: bool,
}

impl Packet {
    /// Whether the packet is sent to a group: its frame to a multicast or
    /// broadcast Ethernet address, or its IP destination multicast
    /// (224.0.0.0/4, ff00::/8) or the limited broadcast 255.255.255.255.
    #[inline(always)]
    pub fn to_group(&self) -> bool {
        if self.group {
            return true;
        }
        if self.family == 6 {
            return self.dst[0] == 0xff;
        }
        let first = self.dst[12];
        (224..240).contains(&first)
            || (first == 255 && self.dst[13] == 255 && self.dst[14] == 255 && self.dst[15] == 255)
    }

    /// Every field cleared: what `reset` writes.
    pub const EMPTY: Packet = Packet {
        src: [0; 16],
        dst: [0; 16],
        inner: FlowKey {
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
            proto: 0,
            _pad: [0; 3],
        },
        frag_id: 0,
        sport: 0,
        dport: 0,
        vlan: 0,
        family: 0,
        proto: 0,
        frag_proto: 0,
        tcp_flags: 0,
        icmp: 0,
        fragment: 0,
        has_inner: false,
        group: false,
    };

    /// Clears the per-CPU scratch packet before each parse. All zeros, so
    /// LLVM writes it as a handful of stores.
    #[inline(always)]
    pub fn reset(&mut self) {
        *self = Packet::EMPTY;
    }
}

pub enum Parsed {
    L2Pass,
    Ethertype(u16),
    Ip,
}

#[inline(always)]
fn bytes_at<const N: usize>(ctx: &TcContext, at: usize) -> Result<[u8; N], Reason> {
    // Headers almost always sit in the linear part of the skb, where they
    // are read in place; elsewhere the helper copies them out.
    let start = ctx.data();
    if at <= 4096 && start + at + N <= ctx.data_end() {
        // SAFETY: the check above, which the verifier also proves, keeps
        // the N bytes inside the packet's linear data.
        return Ok(unsafe { core::ptr::read_unaligned((start + at) as *const [u8; N]) });
    }
    ctx.load::<[u8; N]>(at).map_err(|_| Reason::Truncated)
}

/// The frame's Ethernet destination and source addresses, as on the wire;
/// zero when the frame is shorter than them.
#[inline(always)]
pub fn ethernet_addresses(ctx: &TcContext) -> [u8; 12] {
    bytes_at::<12>(ctx, 0).unwrap_or([0; 12])
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
fn mapped_v4(b: &[u8], at: usize) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12] = b[at];
    a[13] = b[at + 1];
    a[14] = b[at + 2];
    a[15] = b[at + 3];
    a
}

#[inline(always)]
fn u8_at(ctx: &TcContext, at: usize) -> Result<u8, Reason> {
    // Not `bytes_at::<1>`: LLVM turns its bound `p + 1 <= end` into
    // `p < end`, from which the verifier derives no readable range.
    ctx.load::<u8>(at).map_err(|_| Reason::Truncated)
}

#[inline(always)]
fn u16_at(ctx: &TcContext, at: usize) -> Result<u16, Reason> {
    Ok(be16(&bytes_at::<2>(ctx, at)?, 0))
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
    Ok(mapped_v4(&bytes_at::<4>(ctx, at)?, 0))
}

#[inline(always)]
fn v6_at(ctx: &TcContext, at: usize) -> Result<[u8; 16], Reason> {
    bytes_at::<16>(ctx, at)
}

/// Parses the frame into `p`. The 802.1Q tag may already sit in skb
/// metadata (as at ingress on a bridge port) or still be in the frame.
#[inline(never)]
pub fn parse(ctx: &TcContext, p: &mut Packet) -> Result<Parsed, Reason> {
    need(ctx, 14)?;
    // The I/G bit of the destination: multicast and broadcast frames.
    p.group = (u16_at(ctx, 0)? >> 8) & 1 != 0;
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
        let tag = bytes_at::<4>(ctx, 14)?;
        p.vlan = be16(&tag, 0) & 0x0fff;
        ethertype = be16(&tag, 2);
        off = 18;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            return Err(Reason::UnsupportedL2);
        }
    }
    match ethertype {
        ETH_P_ARP => Ok(Parsed::L2Pass),
        ETH_P_IP => parse_ipv4(ctx, off, p),
        ETH_P_IPV6 => parse_ipv6(ctx, off, p),
        // An IEEE 802.3 frame: the field is its length, not an ethertype.
        len if len < ETH_P_802_3_MIN => Ok(Parsed::Ethertype(ETHERTYPE_802_3)),
        other => Ok(Parsed::Ethertype(other)),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<Parsed, Reason> {
    need(ctx, off + 20)?;
    let h = bytes_at::<20>(ctx, off)?;
    let vihl = h[0];
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 {
        return Err(Reason::MalformedHeader);
    }
    let hlen = ihl * 4;
    need(ctx, off + hlen)?;
    let tot_len = be16(&h, 2) as usize;
    if tot_len != 0 && tot_len < hlen {
        return Err(Reason::MalformedHeader);
    }
    let id = be16(&h, 4) as u32;
    let frag = be16(&h, 6);
    p.proto = h[9];
    p.frag_proto = h[9];
    p.src = mapped_v4(&h, 12);
    p.dst = mapped_v4(&h, 16);
    p.family = 4;
    p.frag_id = id;
    if frag & 0x1fff != 0 {
        p.fragment = FRAG_LATER;
        return Ok(Parsed::Ip);
    }
    if frag & 0x2000 != 0 {
        p.fragment = FRAG_FIRST;
    }
    transport(ctx, off + hlen, 0, p)
}

/// The IPv6 extension headers the parser follows.
#[inline(always)]
fn is_ext_header(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

#[inline(always)]
fn parse_ipv6(ctx: &TcContext, off: usize, p: &mut Packet) -> Result<Parsed, Reason> {
    need(ctx, off + 40)?;
    let h = bytes_at::<40>(ctx, off)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::MalformedHeader);
    }
    let mut nh = h[6];
    let hop_limit = h[7];
    p.src.copy_from_slice(&h[8..24]);
    p.dst.copy_from_slice(&h[24..40]);
    p.family = 6;
    p.frag_proto = 0;
    let mut l4 = off + 40;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        // Keep the offset provably small for the verifier.
        if l4 > 4096 {
            return Err(Reason::Truncated);
        }
        match nh {
            // Hop-by-hop, Routing, Destination options, Mobility, HIP,
            // Shim6, experimental: length in 8 octets, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 | 253 | 254 => {
                need(ctx, l4 + 2)?;
                let e = bytes_at::<2>(ctx, l4)?;
                l4 += (e[1] as usize + 1) * 8;
                nh = e[0];
            }
            // Authentication header: length in 4 octets, not counting the first 8.
            51 => {
                need(ctx, l4 + 2)?;
                let e = bytes_at::<2>(ctx, l4)?;
                l4 += (e[1] as usize + 2) * 4;
                nh = e[0];
            }
            44 => {
                need(ctx, l4 + 8)?;
                let e = bytes_at::<8>(ctx, l4)?;
                let next = e[0];
                let fo = be16(&e, 2);
                let id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
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
    transport(ctx, l4, hop_limit, p)
}

/// Reads the transport header at `l4`; `hop_limit` is the IPv6 header's
/// (0 for IPv4), which tells neighbour discovery from forwarded ICMPv6.
#[inline(always)]
fn transport(ctx: &TcContext, l4: usize, hop_limit: u8, p: &mut Packet) -> Result<Parsed, Reason> {
    match p.proto {
        PROTO_TCP => {
            need(ctx, l4 + 20)?;
            let t = bytes_at::<14>(ctx, l4)?;
            p.sport = be16(&t, 0);
            p.dport = be16(&t, 2);
            if t[12] >> 4 < 5 {
                return Err(Reason::MalformedHeader);
            }
            p.tcp_flags = t[13];
        }
        PROTO_UDP | PROTO_SCTP => {
            need(ctx, l4 + if p.proto == PROTO_UDP { 8 } else { 12 })?;
            let t = bytes_at::<4>(ctx, l4)?;
            p.sport = be16(&t, 0);
            p.dport = be16(&t, 2);
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
                // Neighbour and router discovery, only as sent on the link.
                133..=137 if hop_limit == 255 => return Ok(Parsed::L2Pass),
                // MLD.
                130..=132 | 143 => return Ok(Parsed::L2Pass),
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
