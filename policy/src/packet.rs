//! The host-side reference of the kernel's packet parser.
//!
//! It makes the same decisions, in the same order, as `ebpf/programs`: what
//! is truncated, what is malformed, which tag gives the VLAN, where the
//! transport header starts. The kernel is tested against it packet by packet
//! through `BPF_PROG_TEST_RUN`. What each outcome means for the verdict is in
//! `docs/verdicts.md`.

use wardline_ebpf_abi::{
    ETH_P_802_3_MIN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ETHERTYPE_802_3,
    FlowKey, FragmentKey, MAX_IPV6_EXT_HEADERS, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP,
    PROTO_UDP, Reason,
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
    /// The protocol part of a fragment's datagram key: the IPv4 header's
    /// protocol, 0 for IPv6 (whose fragments key by addresses and id only,
    /// whatever extension headers follow the Fragment header).
    pub frag_proto: u8,
    /// Flow ports: transport ports, the echo identifier for ICMP echo, else 0.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp: IcmpKind,
    pub fragment: Fragment,
    /// Sent to a group: an Ethernet multicast or broadcast destination, an
    /// IPv4 multicast or limited-broadcast address, IPv6 multicast. Tracked
    /// in its initiator's orientation only: nothing answers a group as a
    /// reply.
    pub group: bool,
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

    /// The key of the datagram a fragment belongs to (as the kernel's
    /// fragment table keys it); `None` when the packet is not a fragment.
    pub fn fragment_key(&self) -> Option<FragmentKey> {
        let id = match self.fragment {
            Fragment::None => return None,
            Fragment::First(id) | Fragment::Later(id) => id,
        };
        Some(FragmentKey {
            src: self.src,
            dst: self.dst,
            id,
            proto: self.frag_proto,
            _pad: [0; 3],
        })
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
    /// ARP, IPv6 neighbour/router discovery with hop limit 255, or MLD:
    /// always passed.
    L2Pass,
    /// Any other non-IP ethertype, or [`ETHERTYPE_802_3`] for an IEEE 802.3
    /// frame (whose ethertype field is a length): passed only where configured.
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

/// Header offsets at or past this are `truncated`: the kernel keeps its
/// offsets under it so that the verifier can bound them.
const MAX_HEADER_OFFSET: usize = 4096;

/// The IPv6 extension headers the parser follows.
fn is_ext_header(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
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
    let group_frame = b.u8(0)? & 1 != 0;
    let to_group = |parsed: Result<Parsed, Reason>| {
        parsed.map(|parsed| match parsed {
            Parsed::Ip(mut p) => {
                p.group = group_frame || group_address(&p);
                Parsed::Ip(p)
            }
            other => other,
        })
    };
    match ethertype {
        ETH_P_ARP => Ok(Parsed::L2Pass),
        ETH_P_IP => to_group(parse_ipv4(&b, off, vlan)),
        ETH_P_IPV6 => to_group(parse_ipv6(&b, off, vlan)),
        // An IEEE 802.3 frame: the field is its length, not an ethertype.
        len if len < ETH_P_802_3_MIN => Ok(Parsed::Ethertype(ETHERTYPE_802_3)),
        other => Ok(Parsed::Ethertype(other)),
    }
}

/// A multicast destination (224.0.0.0/4, ff00::/8) or the limited
/// broadcast 255.255.255.255.
fn group_address(p: &Packet) -> bool {
    if p.family == 6 {
        return p.dst[0] == 0xff;
    }
    (224..240).contains(&p.dst[12]) || p.dst[12..16] == [255; 4]
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
        frag_proto: proto,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp: IcmpKind::NotIcmp,
        fragment,
        group: false,
    };
    if let Fragment::Later(_) = fragment {
        return Ok(Parsed::Ip(p));
    }
    transport(b, off + hlen, 0, &mut p)
}

fn parse_ipv6(b: &Bytes<'_>, off: usize, vlan: u16) -> Result<Parsed, Reason> {
    b.need(off + 40)?;
    if b.u8(off)? >> 4 != 6 {
        return Err(Reason::MalformedHeader);
    }
    let mut nh = b.u8(off + 6)?;
    let hop_limit = b.u8(off + 7)?;
    let src = b.v6(off + 8)?;
    let dst = b.v6(off + 24)?;
    let mut l4 = off + 40;
    let mut fragment = Fragment::None;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if l4 > MAX_HEADER_OFFSET {
            return Err(Reason::Truncated);
        }
        match nh {
            // Hop-by-hop, Routing, Destination options, Mobility, HIP,
            // Shim6, experimental: length in 8 octets, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 | 253 | 254 => {
                b.need(l4 + 2)?;
                let next = b.u8(l4)?;
                l4 += (b.u8(l4 + 1)? as usize + 1) * 8;
                nh = next;
            }
            // Authentication header: length in 4 octets, not counting the first 8.
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
        frag_proto: 0,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp: IcmpKind::NotIcmp,
        fragment,
        group: false,
    };
    if let Fragment::Later(_) = fragment {
        return Ok(Parsed::Ip(p));
    }
    if is_ext_header(nh) {
        return Err(Reason::TooManyExtHeaders);
    }
    if l4 > MAX_HEADER_OFFSET {
        return Err(Reason::Truncated);
    }
    transport(b, l4, hop_limit, &mut p)
}

/// Reads the transport header at `l4`; `hop_limit` is the IPv6 header's
/// (0 for IPv4), which tells neighbour discovery from forwarded ICMPv6.
fn transport(b: &Bytes<'_>, l4: usize, hop_limit: u8, p: &mut Packet) -> Result<Parsed, Reason> {
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
                // Neighbour and router discovery, only as sent on the link.
                133..=137 if hop_limit == 255 => return Ok(Parsed::L2Pass),
                // MLD.
                130..=132 | 143 => return Ok(Parsed::L2Pass),
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

#[cfg(test)]
mod tests {
    use super::*;

    const SRC6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7,
    ];
    const DST6: [u8; 16] = [
        0x20, 0x01, 0x0d, 0xb8, 0, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9,
    ];

    fn ethernet(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend(ethertype.to_be_bytes());
        f
    }

    /// An IPv6 frame: `exts` are (type, header bytes) in order, then
    /// `proto` and its header `l4`.
    fn ipv6(hop_limit: u8, exts: &[(u8, Vec<u8>)], proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = ethernet(ETH_P_IPV6);
        let first = exts.first().map_or(proto, |e| e.0);
        f.extend([0x60, 0, 0, 0, 0, 0, first, hop_limit]);
        f.extend(SRC6);
        f.extend(DST6);
        for (i, (_, h)) in exts.iter().enumerate() {
            let mut h = h.clone();
            h[0] = exts.get(i + 1).map_or(proto, |e| e.0);
            f.extend(h);
        }
        f.extend(l4);
        f
    }

    /// A generic-format extension header of 16 octets (length field 1).
    fn generic(kind: u8) -> (u8, Vec<u8>) {
        let mut h = vec![0u8; 16];
        h[1] = 1;
        (kind, h)
    }

    fn fragment(offset: u16, more: bool, id: u32) -> (u8, Vec<u8>) {
        let mut h = vec![0u8; 2];
        h.extend((offset << 3 | u16::from(more)).to_be_bytes());
        h.extend(id.to_be_bytes());
        (44, h)
    }

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        let mut t = sport.to_be_bytes().to_vec();
        t.extend(dport.to_be_bytes());
        t.extend([0, 8, 0, 0]);
        t
    }

    fn icmpv6(ty: u8) -> Vec<u8> {
        vec![ty, 0, 0, 0, 0, 0, 0, 0]
    }

    fn ip(frame: &[u8]) -> Packet {
        match parse(frame, SkbVlan::default()) {
            Ok(Parsed::Ip(p)) => p,
            other => panic!("expected an IP packet, got {other:?} for {frame:02x?}"),
        }
    }

    #[test]
    fn every_extension_header_type_is_followed() {
        for kind in [0u8, 43, 60, 135, 139, 140, 253, 254] {
            let p = ip(&ipv6(64, &[generic(kind)], PROTO_UDP, &udp(40000, 5000)));
            assert_eq!(
                (p.proto, p.sport, p.dport),
                (PROTO_UDP, 40000, 5000),
                "extension header {kind}"
            );
            assert!(is_ext_header(kind), "{kind} is an extension header");
        }
        // AH: length in 4-octet units plus 2 (here 16 octets).
        let mut ah = vec![0u8; 16];
        ah[1] = 2;
        let p = ip(&ipv6(64, &[(51, ah)], PROTO_UDP, &udp(40000, 5000)));
        assert_eq!((p.proto, p.dport), (PROTO_UDP, 5000), "after AH");
        for not_ext in [6u8, 17, 58, 59, 50, 136, 255] {
            assert!(!is_ext_header(not_ext), "{not_ext} is not followed");
        }
    }

    #[test]
    fn a_truncated_generic_extension_header_is_truncated() {
        let f = ipv6(64, &[generic(139)], PROTO_UDP, &udp(40000, 5000));
        // Cut inside the extension header's declared length, past its first two bytes.
        let cut = 14 + 40 + 10;
        assert_eq!(parse(&f[..cut], SkbVlan::default()), Err(Reason::Truncated));
        assert_eq!(
            parse(&f[..14 + 40 + 1], SkbVlan::default()),
            Err(Reason::Truncated)
        );
    }

    #[test]
    fn at_most_six_extension_headers() {
        let six: Vec<_> = [0u8, 60, 43, 135, 140, 253].map(generic).to_vec();
        let p = ip(&ipv6(64, &six, PROTO_UDP, &udp(40000, 5000)));
        assert_eq!(p.proto, PROTO_UDP, "six are followed");
        let mut seven = six.clone();
        seven.push(generic(254));
        assert_eq!(
            parse(
                &ipv6(64, &seven, PROTO_UDP, &udp(40000, 5000)),
                SkbVlan::default()
            ),
            Err(Reason::TooManyExtHeaders)
        );
    }

    #[test]
    fn extension_headers_past_4096_octets_are_truncated() {
        // Two Destination Options headers of 2048 octets each, in a jumbo
        // frame long enough to hold them: the kernel does not read headers
        // that far in.
        let mut big = vec![0u8; 2048];
        big[1] = 255;
        let exts = [(60, big.clone()), (60, big)];
        let mut l4 = udp(40000, 5000);
        l4.extend([0u8; 64]);
        let f = ipv6(64, &exts, PROTO_UDP, &l4);
        assert_eq!(parse(&f, SkbVlan::default()), Err(Reason::Truncated));
        let one = ipv6(64, &exts[..1], PROTO_UDP, &l4);
        assert_eq!(ip(&one).dport, 5000, "2048 octets in is still read");
    }

    #[test]
    fn length_field_frames_are_802_3() {
        for len in [0u16, 46, 0x05dc, 0x05ff] {
            let mut f = ethernet(len);
            f.extend([0xaa, 0xaa, 0x03, 0, 0, 0, 0, 0]);
            assert_eq!(
                parse(&f, SkbVlan::default()),
                Ok(Parsed::Ethertype(ETHERTYPE_802_3)),
                "length {len:#06x}"
            );
        }
        // Tagged, with the tag in the frame or already in skb metadata.
        let mut f = ethernet(ETH_P_8021Q);
        f.extend(30u16.to_be_bytes());
        f.extend(0x0100u16.to_be_bytes());
        f.extend([0u8; 8]);
        assert_eq!(
            parse(&f, SkbVlan::default()),
            Ok(Parsed::Ethertype(ETHERTYPE_802_3))
        );
        let tag = SkbVlan {
            present: true,
            proto: ETH_P_8021Q,
            tci: 30,
        };
        assert_eq!(
            parse(&ethernet(0x0040), tag),
            Ok(Parsed::Ethertype(ETHERTYPE_802_3))
        );
        // 0x0600 and above are ethertypes.
        assert_eq!(
            parse(&ethernet(0x0600), SkbVlan::default()),
            Ok(Parsed::Ethertype(0x0600))
        );
        assert_eq!(
            parse(&ethernet(0x88cc), SkbVlan::default()),
            Ok(Parsed::Ethertype(0x88cc))
        );
    }

    #[test]
    fn neighbour_discovery_passes_only_with_hop_limit_255() {
        for ty in 133..=137u8 {
            assert_eq!(
                parse(
                    &ipv6(255, &[], PROTO_ICMPV6, &icmpv6(ty)),
                    SkbVlan::default()
                ),
                Ok(Parsed::L2Pass),
                "type {ty}, hop limit 255"
            );
            for hop_limit in [0u8, 1, 64, 254] {
                let p = ip(&ipv6(hop_limit, &[], PROTO_ICMPV6, &icmpv6(ty)));
                assert_eq!(
                    (p.proto, p.icmp),
                    (PROTO_ICMPV6, IcmpKind::Other),
                    "type {ty}, hop limit {hop_limit}"
                );
            }
        }
    }

    #[test]
    fn mld_passes_whatever_the_hop_limit() {
        for ty in [130u8, 131, 132, 143] {
            for hop_limit in [1u8, 64, 255] {
                assert_eq!(
                    parse(
                        &ipv6(hop_limit, &[generic(0)], PROTO_ICMPV6, &icmpv6(ty)),
                        SkbVlan::default()
                    ),
                    Ok(Parsed::L2Pass),
                    "type {ty}, hop limit {hop_limit}"
                );
            }
        }
        // Types next to them are ordinary ICMPv6.
        for ty in [129u8, 133, 138, 142, 144] {
            let p = ip(&ipv6(1, &[], PROTO_ICMPV6, &icmpv6(ty)));
            assert_ne!(p.icmp, IcmpKind::NotIcmp, "type {ty} is ICMPv6");
        }
    }

    #[test]
    fn every_fragment_of_an_ipv6_datagram_keys_the_same() {
        let first = ip(&ipv6(
            64,
            &[fragment(0, true, 7)],
            PROTO_UDP,
            &udp(40000, 5000),
        ));
        let later_plain = ip(&ipv6(64, &[fragment(100, true, 7)], PROTO_UDP, &[0; 16]));
        let later_opts = ip(&ipv6(
            64,
            &[fragment(185, false, 7), generic(60)],
            PROTO_UDP,
            &[0; 16],
        ));
        assert_eq!(first.fragment, Fragment::First(7));
        assert_eq!(later_plain.fragment, Fragment::Later(7));
        assert_eq!(later_opts.fragment, Fragment::Later(7));
        // The kernel's p.proto of a later fragment is the header after the
        // Fragment header; the key never uses it.
        assert_eq!(later_opts.proto, 60);
        let key = first.fragment_key().expect("a fragment");
        assert_eq!(key.proto, 0);
        assert_eq!(later_plain.fragment_key(), Some(key));
        assert_eq!(later_opts.fragment_key(), Some(key));
        let whole = ip(&ipv6(64, &[], PROTO_UDP, &udp(40000, 5000)));
        assert_eq!(whole.fragment_key(), None);
    }

    #[test]
    fn ipv4_fragments_key_by_protocol() {
        let v4 = |frag: u16, proto: u8| {
            let mut f = ethernet(ETH_P_IP);
            f.extend([0x45, 0, 0, 48, 0, 9]);
            f.extend(frag.to_be_bytes());
            f.extend([64, proto, 0, 0, 198, 18, 30, 7, 198, 18, 42, 9]);
            f.extend(udp(40000, 5000));
            f.extend([0u8; 8]);
            ip(&f)
        };
        let first = v4(0x2000, PROTO_UDP);
        let later = v4(185, PROTO_UDP);
        let other = v4(185, PROTO_TCP);
        let key = first.fragment_key().expect("a fragment");
        assert_eq!((key.id, key.proto), (9, PROTO_UDP));
        assert_eq!(later.fragment_key(), Some(key));
        assert_ne!(other.fragment_key(), Some(key));
        assert_eq!(v4(0x4000, PROTO_UDP).fragment_key(), None);
    }
}
