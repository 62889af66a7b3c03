//! Ethernet frames built byte by byte, for `wardline-forge`: IPv4 and IPv6
//! TCP, UDP, ICMP and ICMPv6 echo and destination-unreachable errors, with
//! any source address and ports and an optional 802.1Q tag, every checksum
//! filled in. [`summarize`] and [`Filter`] read frames back for its
//! sniffer. `wardline-flood` builds its SYNs here too, and the probe's
//! pings use its ICMP numbers, echo layout and checksum.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// The largest IP packet this builder makes (an IPv4 total length).
const MAX_IP_PACKET: usize = 65_535;

/// A MAC address.
pub type Mac = [u8; 6];

/// Why a frame cannot be built (or an argument read).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("source {src} and destination {dst} are not of one address family")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    #[error("the quoted packet ({src} -> {dst}) is not of the outer packet's address family")]
    QuotedFamily { src: IpAddr, dst: IpAddr },
    #[error("VLAN id {0} is outside 1..=4094")]
    Vlan(u16),
    #[error("the IP packet would be {0} bytes, more than {MAX_IP_PACKET}")]
    TooLong(usize),
    #[error("{0:?} is not a MAC address (six hex bytes separated by `:`)")]
    Mac(String),
    #[error("{0:?} is not a list of TCP flags (fin, syn, rst, psh, ack, urg, or none)")]
    TcpFlags(String),
}

/// Reads `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<Mac, FrameError> {
    let bad = || FrameError::Mac(text.to_owned());
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Writes `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &Mac) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads TCP flags: names separated by `,` (`syn,ack`), or `none`.
pub fn parse_tcp_flags(text: &str) -> Result<u8, FrameError> {
    if text == "none" {
        return Ok(0);
    }
    text.split(',').try_fold(0u8, |flags, name| {
        let bit = match name.trim().to_ascii_lowercase().as_str() {
            "fin" => TCP_FIN,
            "syn" => TCP_SYN,
            "rst" => TCP_RST,
            "psh" => TCP_PSH,
            "ack" => TCP_ACK,
            "urg" => TCP_URG,
            _ => return Err(FrameError::TcpFlags(text.to_owned())),
        };
        Ok(flags | bit)
    })
}

/// The protocol of the packet an ICMP error quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotedProto {
    Tcp,
    Udp,
    /// An ICMP (ICMPv6) echo request; its identifier is the quoted `sport`.
    Echo,
}

/// The packet an ICMP error is about: its IP header and the first bytes of
/// its transport header are quoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub proto: QuotedProto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    /// The quoted TCP sequence number (ignored for UDP and echo).
    pub seq: u32,
}

/// What the IP packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    EchoRequest {
        id: u16,
        seq: u16,
    },
    EchoReply {
        id: u16,
        seq: u16,
    },
    /// ICMP destination unreachable (type 3), ICMPv6 (type 1), with `code`.
    Unreachable {
        code: u8,
        quoted: Quoted,
    },
}

/// Everything a frame is made of. The payload follows the transport
/// header; in an ICMP error it follows the quoted headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    /// IPv4 identification (unused for IPv6).
    pub ip_id: u16,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

/// The one's complement sum of `data` as 16-bit big-endian words (an odd
/// last byte padded with zero), not yet folded.
fn sum_words(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|pair| {
            u32::from(u16::from_be_bytes([
                pair[0],
                pair.get(1).copied().unwrap_or(0),
            ]))
        })
        .fold(0u32, u32::wrapping_add)
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The RFC 1071 Internet checksum of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    fold(sum_words(data))
}

/// An ICMP or ICMPv6 echo message of type `kind`: type, code, a checksum
/// left at zero, identifier, sequence number, payload.
pub fn echo_message(kind: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(8 + payload.len());
    message.extend_from_slice(&[kind, 0, 0, 0]);
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(payload);
    message
}

/// The pseudo-header TCP, UDP and ICMPv6 checksums cover.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.push(0);
            h.push(proto);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.extend_from_slice(&v6_octets(src));
            h.extend_from_slice(&v6_octets(dst));
            h.extend_from_slice(&(len as u32).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, proto]);
        }
    }
    h
}

/// The checksum of a transport segment with its pseudo-header.
pub fn transport_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let pseudo = pseudo_header(src, dst, proto, segment.len());
    fold(sum_words(&pseudo).wrapping_add(sum_words(segment)))
}

fn v6_octets(addr: IpAddr) -> [u8; 16] {
    match addr {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// An IP header for `payload_len` bytes of `proto` (checksummed for IPv4).
fn ip_header(src: IpAddr, dst: IpAddr, proto: u8, ttl: u8, id: u16, payload_len: usize) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
            h.extend_from_slice(&id.to_be_bytes());
            h.extend_from_slice(&[0x40, 0]); // don't fragment
            h.extend_from_slice(&[ttl, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let sum = internet_checksum(&h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h
        }
        _ => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(payload_len as u16).to_be_bytes());
            h.extend_from_slice(&[proto, ttl]);
            h.extend_from_slice(&v6_octets(src));
            h.extend_from_slice(&v6_octets(dst));
            h
        }
    }
}

fn icmp_proto(v4: bool) -> u8 {
    if v4 { PROTO_ICMP } else { PROTO_ICMPV6 }
}

/// The quoted packet of an ICMP error: its IP header, eight bytes of its
/// transport header, then `tail`.
fn quoted_packet(q: &Quoted, tail: &[u8]) -> Vec<u8> {
    let v4 = q.src.is_ipv4();
    let mut transport = Vec::with_capacity(8 + tail.len());
    let proto = match q.proto {
        QuotedProto::Tcp => {
            transport.extend_from_slice(&q.sport.to_be_bytes());
            transport.extend_from_slice(&q.dport.to_be_bytes());
            transport.extend_from_slice(&q.seq.to_be_bytes());
            PROTO_TCP
        }
        QuotedProto::Udp => {
            transport.extend_from_slice(&q.sport.to_be_bytes());
            transport.extend_from_slice(&q.dport.to_be_bytes());
            transport.extend_from_slice(&((8 + tail.len()) as u16).to_be_bytes());
            transport.extend_from_slice(&[0, 0]);
            PROTO_UDP
        }
        QuotedProto::Echo => {
            let kind = if v4 {
                ICMP_ECHO_REQUEST
            } else {
                ICMPV6_ECHO_REQUEST
            };
            transport.extend_from_slice(&echo_message(kind, q.sport, 1, &[]));
            icmp_proto(v4)
        }
    };
    transport.extend_from_slice(tail);
    let mut packet = ip_header(q.src, q.dst, proto, 64, 0, transport.len());
    packet.extend_from_slice(&transport);
    packet
}

/// The transport header and payload, checksummed; and its protocol number.
fn transport_bytes(spec: &FrameSpec) -> Result<(u8, Vec<u8>), FrameError> {
    let (src, dst) = (spec.src, spec.dst);
    let v4 = src.is_ipv4();
    let payload = &spec.payload;
    let (proto, mut seg, sum_at) = match spec.transport {
        Transport::Tcp {
            sport,
            dport,
            flags,
            seq,
            ack,
        } => {
            let mut s = Vec::with_capacity(20 + payload.len());
            s.extend_from_slice(&sport.to_be_bytes());
            s.extend_from_slice(&dport.to_be_bytes());
            s.extend_from_slice(&seq.to_be_bytes());
            s.extend_from_slice(&ack.to_be_bytes());
            s.extend_from_slice(&[5 << 4, flags]);
            s.extend_from_slice(&64_240u16.to_be_bytes()); // window
            s.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
            s.extend_from_slice(payload);
            (PROTO_TCP, s, 16)
        }
        Transport::Udp { sport, dport } => {
            let mut s = Vec::with_capacity(8 + payload.len());
            s.extend_from_slice(&sport.to_be_bytes());
            s.extend_from_slice(&dport.to_be_bytes());
            s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            s.extend_from_slice(&[0, 0]);
            s.extend_from_slice(payload);
            (PROTO_UDP, s, 6)
        }
        Transport::EchoRequest { id, seq } | Transport::EchoReply { id, seq } => {
            let request = matches!(spec.transport, Transport::EchoRequest { .. });
            let kind = match (v4, request) {
                (true, true) => ICMP_ECHO_REQUEST,
                (true, false) => ICMP_ECHO_REPLY,
                (false, true) => ICMPV6_ECHO_REQUEST,
                (false, false) => ICMPV6_ECHO_REPLY,
            };
            (icmp_proto(v4), echo_message(kind, id, seq, payload), 2)
        }
        Transport::Unreachable { code, quoted } => {
            if !same_family(quoted.src, src) || !same_family(quoted.dst, src) {
                return Err(FrameError::QuotedFamily {
                    src: quoted.src,
                    dst: quoted.dst,
                });
            }
            let kind = if v4 {
                ICMP_DEST_UNREACH
            } else {
                ICMPV6_DEST_UNREACH
            };
            let mut s = vec![kind, code, 0, 0, 0, 0, 0, 0];
            s.extend_from_slice(&quoted_packet(&quoted, payload));
            (icmp_proto(v4), s, 2)
        }
    };
    let sum = if proto == PROTO_ICMP {
        internet_checksum(&seg)
    } else {
        let sum = transport_checksum(src, dst, proto, &seg);
        // A UDP checksum of zero means "none": send all ones instead.
        if proto == PROTO_UDP && sum == 0 {
            0xffff
        } else {
            sum
        }
    };
    seg[sum_at..sum_at + 2].copy_from_slice(&sum.to_be_bytes());
    Ok((proto, seg))
}

/// Builds the whole frame, from the Ethernet header on.
pub fn build(spec: &FrameSpec) -> Result<Vec<u8>, FrameError> {
    if !same_family(spec.src, spec.dst) {
        return Err(FrameError::MixedFamilies {
            src: spec.src,
            dst: spec.dst,
        });
    }
    if let Some(vid) = spec.vlan
        && !(1..=4094).contains(&vid)
    {
        return Err(FrameError::Vlan(vid));
    }
    let (proto, segment) = transport_bytes(spec)?;
    let ip_len = segment.len() + if spec.src.is_ipv4() { 20 } else { 40 };
    if ip_len > MAX_IP_PACKET {
        return Err(FrameError::TooLong(ip_len));
    }
    let mut frame = Vec::with_capacity(18 + ip_len);
    frame.extend_from_slice(&spec.dst_mac);
    frame.extend_from_slice(&spec.src_mac);
    if let Some(vid) = spec.vlan {
        frame.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        frame.extend_from_slice(&vid.to_be_bytes());
    }
    let ethertype = if spec.src.is_ipv4() {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame.extend_from_slice(&ip_header(
        spec.src,
        spec.dst,
        proto,
        spec.ttl,
        spec.ip_id,
        segment.len(),
    ));
    frame.extend_from_slice(&segment);
    Ok(frame)
}

/// What the sniffer reads of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The in-frame 802.1Q tag's VLAN id (a tag the kernel moved into
    /// metadata is not seen here).
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub tcp_flags: Option<u8>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// The identifier of an echo request or reply.
    pub icmp_id: Option<u16>,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads an Ethernet frame carrying IPv4 or IPv6 (one optional in-frame
/// 802.1Q tag; IPv6 extension headers are not followed); `None` for
/// anything else or a truncated header.
pub fn summarize(frame: &[u8]) -> Option<Summary> {
    let mut ethertype = be16(frame, 12)?;
    let mut off = 14;
    let mut vlan = None;
    if ethertype == ETH_P_8021Q {
        vlan = Some(be16(frame, 14)? & 0x0fff);
        ethertype = be16(frame, 16)?;
        off = 18;
    }
    let (src, dst, proto, l4) = match ethertype {
        ETH_P_IP => {
            let ip = frame.get(off..off + 20)?;
            if ip[0] >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(src), IpAddr::V4(dst), ip[9], off + ihl)
        }
        ETH_P_IPV6 => {
            let ip = frame.get(off..off + 40)?;
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                ip[6],
                off + 40,
            )
        }
        _ => return None,
    };
    let mut s = Summary {
        vlan,
        src,
        dst,
        proto,
        sport: None,
        dport: None,
        tcp_flags: None,
        icmp_type: None,
        icmp_code: None,
        icmp_id: None,
    };
    match proto {
        PROTO_TCP | PROTO_UDP => {
            s.sport = be16(frame, l4);
            s.dport = be16(frame, l4 + 2);
            if proto == PROTO_TCP {
                s.tcp_flags = frame.get(l4 + 13).copied();
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            s.icmp_type = frame.get(l4).copied();
            s.icmp_code = frame.get(l4 + 1).copied();
            if matches!(
                s.icmp_type,
                Some(ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY | ICMPV6_ECHO_REQUEST | ICMPV6_ECHO_REPLY)
            ) {
                s.icmp_id = be16(frame, l4 + 4);
            }
        }
        _ => {}
    }
    Some(s)
}

/// Which frames the sniffer counts: every field given must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub proto: Option<u8>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_id: Option<u16>,
    /// Bytes that must appear somewhere in the frame (a forged packet's
    /// marker).
    pub contains: Option<Vec<u8>>,
}

impl Filter {
    pub fn matches(&self, frame: &[u8]) -> bool {
        let Some(s) = summarize(frame) else {
            return false;
        };
        fn ok<T: PartialEq>(want: Option<T>, got: Option<T>) -> bool {
            want.is_none() || want == got
        }
        ok(self.proto, Some(s.proto))
            && ok(self.src, Some(s.src))
            && ok(self.dst, Some(s.dst))
            && ok(self.sport, s.sport)
            && ok(self.dport, s.dport)
            && ok(self.icmp_type, s.icmp_type)
            && ok(self.icmp_id, s.icmp_id)
            && self.contains.as_deref().is_none_or(|needle| {
                !needle.is_empty() && frame.windows(needle.len()).any(|w| w == needle)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardline_policy::packet::{IcmpKind, Parsed, SkbVlan, parse};

    const A: Mac = [0x02, 0, 0, 0, 0, 0xaa];
    const B: Mac = [0x02, 0, 0, 0, 0, 0xbb];

    fn spec(src: &str, dst: &str, transport: Transport) -> FrameSpec {
        FrameSpec {
            dst_mac: A,
            src_mac: B,
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ttl: 64,
            ip_id: 0x1234,
            transport,
            payload: b"wardline-forge marker!".to_vec(),
        }
    }

    fn tcp() -> Transport {
        Transport::Tcp {
            sport: 443,
            dport: 40444,
            flags: TCP_PSH | TCP_ACK,
            seq: 7,
            ack: 9,
        }
    }

    fn quoted(src: &str, dst: &str) -> Quoted {
        Quoted {
            proto: QuotedProto::Tcp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40443,
            dport: 443,
            seq: 1,
        }
    }

    fn parsed(frame: &[u8]) -> wardline_policy::packet::Packet {
        match parse(frame, SkbVlan::default()) {
            Ok(Parsed::Ip(p)) => p,
            other => panic!("the reference parser read {other:?}"),
        }
    }

    /// The IP header and the transport segment of an untagged frame.
    fn split(frame: &[u8]) -> (&[u8], &[u8]) {
        if frame[12..14] == ETH_P_IP.to_be_bytes() {
            (&frame[14..34], &frame[34..])
        } else {
            (&frame[14..54], &frame[54..])
        }
    }

    fn mapped(addr: &str) -> [u8; 16] {
        v6_octets(addr.parse().unwrap())
    }

    #[test]
    fn checksums_of_checksummed_packets_are_zero() {
        let cases = [
            ("198.18.41.10", "198.18.20.10", tcp()),
            ("2001:db8:41::10", "2001:db8:20::10", tcp()),
            (
                "198.18.41.10",
                "198.18.20.10",
                Transport::Udp {
                    sport: 53,
                    dport: 40000,
                },
            ),
            (
                "2001:db8:41::10",
                "2001:db8:20::10",
                Transport::Udp {
                    sport: 53,
                    dport: 40000,
                },
            ),
            (
                "198.18.41.10",
                "198.18.20.10",
                Transport::EchoRequest { id: 0x5a01, seq: 1 },
            ),
            (
                "2001:db8:41::10",
                "2001:db8:20::10",
                Transport::EchoReply { id: 0x5a01, seq: 1 },
            ),
            (
                "198.51.100.10",
                "198.18.41.10",
                Transport::Unreachable {
                    code: 1,
                    quoted: quoted("198.18.20.10", "198.18.41.10"),
                },
            ),
            (
                "2001:db8:99::10",
                "2001:db8:41::10",
                Transport::Unreachable {
                    code: 3,
                    quoted: quoted("2001:db8:20::10", "2001:db8:41::10"),
                },
            ),
        ];
        for (src, dst, transport) in cases {
            // Odd and even payload lengths.
            for payload in [&b"odd"[..], &b"even"[..]] {
                let mut s = spec(src, dst, transport);
                s.payload = payload.to_vec();
                let frame = build(&s).unwrap();
                let (ip, segment) = split(&frame);
                if s.src.is_ipv4() {
                    assert_eq!(internet_checksum(ip), 0, "IPv4 header of {transport:?}");
                }
                let proto = if s.src.is_ipv4() { ip[9] } else { ip[6] };
                let sum = if proto == PROTO_ICMP {
                    internet_checksum(segment)
                } else {
                    transport_checksum(s.src, s.dst, proto, segment)
                };
                assert_eq!(sum, 0, "{transport:?} with {payload:?}");
            }
        }
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    #[test]
    fn the_reference_parser_reads_what_was_built() {
        let frame = build(&spec("198.18.41.10", "198.18.20.10", tcp())).unwrap();
        let p = parsed(&frame);
        assert_eq!(
            (p.family, p.proto, p.sport, p.dport),
            (4, PROTO_TCP, 443, 40444)
        );
        assert_eq!(p.src, mapped("198.18.41.10"));
        assert_eq!(p.dst, mapped("198.18.20.10"));
        assert_eq!(p.tcp_flags, TCP_PSH | TCP_ACK);
        assert_eq!(p.vlan, 0);

        let mut tagged = spec(
            "2001:db8:30::10",
            "2001:db8:42::10",
            Transport::Udp {
                sport: 40001,
                dport: 5000,
            },
        );
        tagged.vlan = Some(30);
        let p = parsed(&build(&tagged).unwrap());
        assert_eq!(
            (p.vlan, p.family, p.proto, p.dport),
            (30, 6, PROTO_UDP, 5000)
        );

        for (src, dst, family) in [
            ("198.18.41.10", "198.18.20.10", 4),
            ("2001:db8:41::10", "2001:db8:20::10", 6),
        ] {
            let request = parsed(
                &build(&spec(
                    src,
                    dst,
                    Transport::EchoRequest { id: 0x5a01, seq: 3 },
                ))
                .unwrap(),
            );
            assert_eq!(request.icmp, IcmpKind::EchoRequest, "{family}");
            assert_eq!((request.sport, request.dport), (0x5a01, 0x5a01));
            let reply =
                parsed(&build(&spec(src, dst, Transport::EchoReply { id: 7, seq: 3 })).unwrap());
            assert_eq!(reply.icmp, IcmpKind::EchoReply, "{family}");
        }
    }

    #[test]
    fn the_reference_parser_reads_the_quoted_tuple() {
        for (outer_src, outer_dst, q_src, q_dst) in [
            (
                "198.51.100.10",
                "198.18.41.10",
                "198.18.20.10",
                "198.18.41.10",
            ),
            (
                "2001:db8:99::10",
                "2001:db8:41::10",
                "2001:db8:20::10",
                "2001:db8:41::10",
            ),
        ] {
            let q = quoted(q_src, q_dst);
            let frame = build(&spec(
                outer_src,
                outer_dst,
                Transport::Unreachable { code: 1, quoted: q },
            ))
            .unwrap();
            let p = parsed(&frame);
            let IcmpKind::Error(Some(inner)) = p.icmp else {
                panic!("not an error quoting a flow: {:?}", p.icmp);
            };
            assert_eq!(inner.src, mapped(q_src));
            assert_eq!(inner.dst, mapped(q_dst));
            assert_eq!(
                (inner.sport, inner.dport, inner.proto),
                (40443, 443, PROTO_TCP)
            );
        }
        let echo = Quoted {
            proto: QuotedProto::Echo,
            sport: 0x5a01,
            ..quoted("198.18.20.10", "198.18.41.10")
        };
        let p = parsed(
            &build(&spec(
                "198.51.100.10",
                "198.18.20.10",
                Transport::Unreachable {
                    code: 1,
                    quoted: echo,
                },
            ))
            .unwrap(),
        );
        let IcmpKind::Error(Some(inner)) = p.icmp else {
            panic!("not an error quoting an echo: {:?}", p.icmp);
        };
        assert_eq!(
            (inner.sport, inner.dport, inner.proto),
            (0x5a01, 0x5a01, PROTO_ICMP)
        );
    }

    #[test]
    fn summaries_and_filters() {
        let mut s = spec("198.18.41.10", "198.18.20.10", tcp());
        s.vlan = Some(40);
        let frame = build(&s).unwrap();
        let summary = summarize(&frame).unwrap();
        assert_eq!(summary.vlan, Some(40));
        assert_eq!(summary.sport, Some(443));
        assert_eq!(summary.tcp_flags, Some(TCP_PSH | TCP_ACK));
        let mut f = Filter {
            proto: Some(PROTO_TCP),
            src: Some(s.src),
            dport: Some(40444),
            contains: Some(b"marker".to_vec()),
            ..Filter::default()
        };
        assert!(f.matches(&frame));
        f.contains = Some(b"other".to_vec());
        assert!(!f.matches(&frame));
        f.contains = None;
        f.sport = Some(444);
        assert!(!f.matches(&frame));

        let echo = build(&spec(
            "2001:db8:41::10",
            "2001:db8:20::10",
            Transport::EchoRequest { id: 9, seq: 1 },
        ))
        .unwrap();
        let f = Filter {
            icmp_type: Some(ICMPV6_ECHO_REQUEST),
            icmp_id: Some(9),
            ..Filter::default()
        };
        assert!(f.matches(&echo));
        assert!(!Filter::default().matches(&[0u8; 10]), "truncated");
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert!(matches!(
            build(&spec("198.18.41.10", "2001:db8::1", tcp())),
            Err(FrameError::MixedFamilies { .. })
        ));
        let mut s = spec("198.18.41.10", "198.18.20.10", tcp());
        s.vlan = Some(4095);
        assert_eq!(build(&s), Err(FrameError::Vlan(4095)));
        let err = build(&spec(
            "198.18.41.10",
            "198.18.20.10",
            Transport::Unreachable {
                code: 1,
                quoted: quoted("2001:db8::1", "2001:db8::2"),
            },
        ));
        assert!(matches!(err, Err(FrameError::QuotedFamily { .. })));
        let mut big = spec("198.18.41.10", "198.18.20.10", tcp());
        big.payload = vec![0; 70_000];
        assert!(matches!(build(&big), Err(FrameError::TooLong(_))));
    }

    #[test]
    fn macs_and_flags_parse() {
        assert_eq!(parse_mac("02:00:00:00:00:aa"), Ok(A));
        assert_eq!(format_mac(&A), "02:00:00:00:00:aa");
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:aa:bb",
            "zz:00:00:00:00:00",
            "",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_tcp_flags("syn,ack"), Ok(TCP_SYN | TCP_ACK));
        assert_eq!(parse_tcp_flags("PSH, ACK"), Ok(TCP_PSH | TCP_ACK));
        assert_eq!(parse_tcp_flags("none"), Ok(0));
        assert!(parse_tcp_flags("syn,bogus").is_err());
    }
}
