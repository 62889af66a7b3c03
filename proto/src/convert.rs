//! Conversions between wire messages and the policy crate's domain types.
//! Wire to domain is fallible: a message from the network is checked field
//! by field, and an error names the field and the bad value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_ebpf_abi::{MARK_MONITOR, MARK_QUARANTINE, RuleValue, SEGMENT_WORLD, SegmentMarks};
use wardline_policy::compile::{CompiledPolicy, CompiledSegment, NodeInfo, RuleEntry};
use wardline_policy::{Action, Dataplane, Mode, PolicyErrors, Schedule};

use crate::v1;

/// A wire message that does not make a valid domain value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct WireError {
    pub field: String,
    pub message: String,
}

pub(crate) fn wire_err(field: impl Into<String>, message: impl Into<String>) -> WireError {
    WireError {
        field: field.into(),
        message: message.into(),
    }
}

fn narrow<T: TryFrom<u32>>(field: impl Into<String>, v: u32) -> Result<T, WireError> {
    T::try_from(v).map_err(|_| wire_err(field, format!("{v} is out of range")))
}

fn parse_time(field: &str, s: &str) -> Result<Option<OffsetDateTime>, WireError> {
    if s.is_empty() {
        return Ok(None);
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(Some)
        .map_err(|e| wire_err(field, format!("{s:?} is not RFC 3339: {e}")))
}

/// The name of IANA protocol `n` as flow records and filters write it
/// (`tcp`, `udp`, `sctp`, `icmp`, `icmpv6`), or the number.
pub fn protocol_name(n: u32) -> String {
    match n {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// The IANA number of a protocol [`protocol_name`] writes, or of a number
/// written (0 to 255).
pub fn protocol_number(name: &str) -> Option<u32> {
    match name {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        "icmp" => Some(1),
        "icmpv6" => Some(58),
        n => n.parse::<u8>().ok().map(u32::from),
    }
}

pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Which way a duration counts from now when [`instant`] reads one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Towards {
    /// "2h": two hours ago (a query's since).
    Past,
    /// "2h": in two hours (a grant's until).
    Future,
}

/// A time as operators write it: RFC 3339, or a duration from now (`10m`,
/// `2h`, `7d`) counted `towards` the past or the future. The error says
/// what was expected.
pub fn instant(
    text: &str,
    now: OffsetDateTime,
    towards: Towards,
) -> Result<OffsetDateTime, String> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let way = match towards {
        Towards::Past => "back from now",
        Towards::Future => "from now",
    };
    let length = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor a duration {way} such as 10m or 2h")
    })?;
    let length =
        time::Duration::try_from(length).map_err(|_| format!("{text:?} is too long a duration"))?;
    match towards {
        Towards::Past => now.checked_sub(length),
        Towards::Future => now.checked_add(length),
    }
    .ok_or_else(|| format!("{text:?} is too long a duration"))
}

/// The address 4 or 16 bytes on the wire hold; `None` for any other length.
pub fn ip_from_wire(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        16 => <[u8; 16]>::try_from(b)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a))),
        _ => None,
    }
}

fn ip_from_bytes(field: &str, b: &[u8]) -> Result<IpAddr, WireError> {
    ip_from_wire(b).ok_or_else(|| {
        wire_err(
            field,
            format!("an address has 4 or 16 bytes, not {}", b.len()),
        )
    })
}

/// An Ethernet address as operators write it (`02:00:00:00:14:0a`): for 6
/// bytes not all zero; none otherwise (not seen).
pub fn mac_text(bytes: &[u8]) -> Option<String> {
    (bytes.len() == 6 && bytes.iter().any(|b| *b != 0)).then(|| {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    })
}

/// An address as the wire carries it: 4 or 16 bytes.
pub fn ip_to_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The network `p` names (its segment is the caller's to check).
pub(crate) fn prefix_from_wire(field: &str, p: &v1::Prefix) -> Result<IpNet, WireError> {
    let addr = ip_from_bytes(&format!("{field}.address"), &p.address)?;
    let len = narrow::<u8>(format!("{field}.prefix_len"), p.prefix_len)?;
    let net = IpNet::new(addr, len)
        .map_err(|e| wire_err(format!("{field}.prefix_len"), e.to_string()))?;
    // The control plane sends networks, never an address with host bits:
    // one would not survive the way back (the wire carries `network()`),
    // and names a prefix no policy wrote.
    if net.network() != addr {
        return Err(wire_err(
            format!("{field}.address"),
            format!("{addr} has host bits set for /{len}"),
        ));
    }
    Ok(net)
}

pub(crate) fn prefix_to_wire(net: IpNet, segment: u32) -> v1::Prefix {
    v1::Prefix {
        address: ip_to_bytes(net.network()),
        prefix_len: u32::from(net.prefix_len()),
        segment,
    }
}

impl From<&Dataplane> for v1::Dataplane {
    fn from(dp: &Dataplane) -> Self {
        v1::Dataplane {
            segments: dp
                .segments
                .iter()
                .map(|s| v1::Segment {
                    id: s.id,
                    name: s.name.clone(),
                    monitor: s.mode == Mode::Monitor,
                })
                .collect(),
            policies: dp
                .policies
                .iter()
                .map(|p| v1::PolicyRef {
                    id: p.id,
                    name: p.name.clone(),
                    deny: p.action == Action::Deny,
                    in_force: p.in_force,
                })
                .collect(),
            prefixes: dp
                .prefixes
                .iter()
                .map(|(net, seg)| prefix_to_wire(*net, *seg))
                .collect(),
            vlans: dp
                .vlans
                .iter()
                .map(|(vid, seg)| v1::Vlan {
                    vid: *vid as u32,
                    segment: *seg,
                })
                .collect(),
            marks: dp
                .marks
                .iter()
                .map(|(segment, m)| v1::SegmentMark {
                    segment: *segment,
                    flags: m.flags,
                    origin: m.origin,
                })
                .collect(),
            rules: dp
                .rules
                .iter()
                .map(|r| v1::Rule {
                    proto: r.proto as u32,
                    src: r.src,
                    dst: r.dst,
                    port: r.port as u32,
                    port_bits: r.port_bits as u32,
                    deny: r.value.deny,
                    allow: r.value.allow,
                })
                .collect(),
            flags: dp.flags,
            next_change: dp.next_change.map(format_time).unwrap_or_default(),
        }
    }
}

impl TryFrom<&v1::Dataplane> for Dataplane {
    type Error = WireError;

    fn try_from(w: &v1::Dataplane) -> Result<Self, WireError> {
        let segments = w
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if s.id as usize != i + 1 {
                    return Err(wire_err(
                        format!("dataplane.segments[{i}].id"),
                        format!("{} out of sequence (expected {})", s.id, i + 1),
                    ));
                }
                Ok(CompiledSegment {
                    id: s.id,
                    name: s.name.clone(),
                    mode: if s.monitor {
                        Mode::Monitor
                    } else {
                        Mode::Enforce
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let policies = w
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.id as usize != i + 1 {
                    return Err(wire_err(
                        format!("dataplane.policies[{i}].id"),
                        format!("{} out of sequence (expected {})", p.id, i + 1),
                    ));
                }
                Ok(CompiledPolicy {
                    id: p.id,
                    name: p.name.clone(),
                    action: if p.deny { Action::Deny } else { Action::Allow },
                    in_force: p.in_force,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let known_segment = |field: String, id: u32, any_ok: bool| {
            let ok = id == wardline_ebpf_abi::SEGMENT_WORLD
                || (any_ok && id == wardline_ebpf_abi::SEGMENT_ANY)
                || (id as usize) <= segments.len();
            if ok {
                Ok(id)
            } else {
                Err(wire_err(
                    field,
                    format!("segment {id} is not in dataplane.segments"),
                ))
            }
        };
        let known_policy = |field: String, id: u32| {
            if (id as usize) <= policies.len() {
                Ok(id)
            } else {
                Err(wire_err(
                    field,
                    format!("policy {id} is not in dataplane.policies"),
                ))
            }
        };
        let mut prefixes = Vec::with_capacity(w.prefixes.len());
        for (i, p) in w.prefixes.iter().enumerate() {
            let field = format!("dataplane.prefixes[{i}]");
            prefixes.push((
                prefix_from_wire(&field, p)?,
                known_segment(format!("{field}.segment"), p.segment, false)?,
            ));
        }
        let mut vlans = Vec::with_capacity(w.vlans.len());
        for (i, v) in w.vlans.iter().enumerate() {
            let field = format!("dataplane.vlans[{i}]");
            let vid = narrow::<u16>(format!("{field}.vid"), v.vid)?;
            if !(1..=4094).contains(&vid) {
                return Err(wire_err(
                    format!("{field}.vid"),
                    format!("{vid} is not a VLAN id"),
                ));
            }
            vlans.push((
                vid,
                known_segment(format!("{field}.segment"), v.segment, false)?,
            ));
        }
        let mut marks = Vec::with_capacity(w.marks.len());
        for (i, m) in w.marks.iter().enumerate() {
            let field = format!("dataplane.marks[{i}]");
            let known = MARK_MONITOR | MARK_QUARANTINE;
            if m.flags & !known != 0 || m.flags == 0 {
                return Err(wire_err(
                    format!("{field}.flags"),
                    format!("{:#x} is not a set of segment marks", m.flags),
                ));
            }
            marks.push((
                known_segment(format!("{field}.segment"), m.segment, false)?,
                SegmentMarks {
                    flags: m.flags,
                    origin: if m.origin == SEGMENT_WORLD {
                        SEGMENT_WORLD
                    } else {
                        known_segment(format!("{field}.origin"), m.origin, false)?
                    },
                },
            ));
        }
        let mut rules = Vec::with_capacity(w.rules.len());
        for (i, r) in w.rules.iter().enumerate() {
            let field = format!("dataplane.rules[{i}]");
            let port_bits = narrow::<u8>(format!("{field}.port_bits"), r.port_bits)?;
            if port_bits > 16 {
                return Err(wire_err(
                    format!("{field}.port_bits"),
                    format!("{port_bits} is over 16"),
                ));
            }
            rules.push(RuleEntry {
                proto: narrow(format!("{field}.proto"), r.proto)?,
                src: known_segment(format!("{field}.src"), r.src, true)?,
                dst: known_segment(format!("{field}.dst"), r.dst, true)?,
                port: narrow(format!("{field}.port"), r.port)?,
                port_bits,
                value: RuleValue {
                    deny: known_policy(format!("{field}.deny"), r.deny)?,
                    allow: known_policy(format!("{field}.allow"), r.allow)?,
                },
            });
        }
        Ok(Dataplane {
            segments,
            policies,
            prefixes,
            vlans,
            marks,
            rules,
            // Which nodes were left out is the control plane's report to
            // operators; an agent only programs the tables.
            node_conflicts: Vec::new(),
            flags: w.flags,
            next_change: parse_time("dataplane.next_change", &w.next_change)?,
        })
    }
}

impl From<&Schedule> for v1::Tables {
    fn from(s: &Schedule) -> Self {
        v1::Tables {
            now: Some(v1::Dataplane::from(&s.now)),
            scheduled: s
                .ahead
                .iter()
                .map(|(at, dp)| v1::ScheduledDataplane {
                    at: format_time(*at),
                    dataplane: Some(v1::Dataplane::from(dp)),
                })
                .collect(),
        }
    }
}

impl TryFrom<&v1::Tables> for Schedule {
    type Error = WireError;

    /// Also checks that the boundaries ahead are in strictly increasing
    /// order: the kernel switches to each in turn.
    fn try_from(w: &v1::Tables) -> Result<Self, WireError> {
        let now = Dataplane::try_from(
            w.now
                .as_ref()
                .ok_or_else(|| wire_err("tables.now", "missing"))?,
        )
        .map_err(|e| wire_err(format!("tables.now.{}", e.field), e.message))?;
        let mut ahead: Vec<(OffsetDateTime, Dataplane)> = Vec::with_capacity(w.scheduled.len());
        for (i, s) in w.scheduled.iter().enumerate() {
            let field = format!("tables.scheduled[{i}]");
            let at = parse_time(&format!("{field}.at"), &s.at)?
                .ok_or_else(|| wire_err(format!("{field}.at"), "missing"))?;
            if ahead.last().is_some_and(|(before, _)| *before >= at) {
                return Err(wire_err(
                    format!("{field}.at"),
                    format!("{} is not after the boundary before it", s.at),
                ));
            }
            let dp = Dataplane::try_from(
                s.dataplane
                    .as_ref()
                    .ok_or_else(|| wire_err(format!("{field}.dataplane"), "missing"))?,
            )
            .map_err(|e| wire_err(format!("{field}.{}", e.field), e.message))?;
            ahead.push((at, dp));
        }
        Ok(Schedule { now, ahead })
    }
}

impl From<&NodeInfo> for v1::NodeInfo {
    fn from(n: &NodeInfo) -> Self {
        v1::NodeInfo {
            name: n.name.clone(),
            labels: n.labels.clone().into_iter().collect(),
            addresses: n.addresses.iter().map(ToString::to_string).collect(),
        }
    }
}

impl TryFrom<&v1::NodeInfo> for NodeInfo {
    type Error = WireError;

    fn try_from(w: &v1::NodeInfo) -> Result<Self, WireError> {
        let addresses = w
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<IpAddr>().map_err(|_| {
                    wire_err(
                        format!("nodes[{}].addresses[{i}]", w.name),
                        format!("{a:?} is not an address"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NodeInfo {
            name: w.name.clone(),
            labels: w.labels.clone().into_iter().collect(),
            addresses,
        })
    }
}

/// Every validation error as the wire carries it.
pub fn validation_errors(errors: &PolicyErrors) -> Vec<v1::ValidationError> {
    errors
        .iter()
        .map(|e| v1::ValidationError {
            document: e.document as u32,
            kind: e.kind.clone().unwrap_or_default(),
            name: e.name.clone().unwrap_or_default(),
            field: e.field.clone().unwrap_or_default(),
            message: e.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardline_policy::CompileOptions;

    const POLICY: &str = include_str!("../../examples/hospital.yaml");

    #[test]
    fn a_compiled_dataplane_survives_the_wire() {
        let set = wardline_policy::parse(POLICY).unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_773_475_200).unwrap(); // inside the vendor window
        let dp = Dataplane::compile(&set, &CompileOptions::at(now)).unwrap();
        assert!(dp.next_change.is_some() && !dp.rules.is_empty());
        let wire = v1::Dataplane::from(&dp);
        let bytes = prost::Message::encode_to_vec(&wire);
        let back: v1::Dataplane = prost::Message::decode(bytes.as_slice()).unwrap();
        assert_eq!(Dataplane::try_from(&back).unwrap(), dp);
    }

    #[test]
    fn bad_wire_values_name_the_field() {
        let set = wardline_policy::parse(POLICY).unwrap();
        let dp = Dataplane::compile(&set, &CompileOptions::at(OffsetDateTime::now_utc())).unwrap();
        let good = v1::Dataplane::from(&dp);
        type Mutation = Box<dyn Fn(&mut v1::Dataplane)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|w| w.prefixes[0].address = vec![1, 2, 3]),
                "dataplane.prefixes[0].address",
            ),
            (
                Box::new(|w| w.prefixes[0].prefix_len = 40),
                "dataplane.prefixes[0].prefix_len",
            ),
            (
                Box::new(|w| w.prefixes[0].segment = 999),
                "dataplane.prefixes[0].segment",
            ),
            (
                Box::new(|w| w.vlans[0].vid = 4095),
                "dataplane.vlans[0].vid",
            ),
            (
                Box::new(|w| w.rules[0].port_bits = 17),
                "dataplane.rules[0].port_bits",
            ),
            (
                Box::new(|w| w.rules[0].proto = 256),
                "dataplane.rules[0].proto",
            ),
            (
                Box::new(|w| w.rules[0].allow = 9999),
                "dataplane.rules[0].allow",
            ),
            (
                Box::new(|w| w.segments[1].id = 7),
                "dataplane.segments[1].id",
            ),
            (
                Box::new(|w| w.next_change = "tomorrow".into()),
                "dataplane.next_change",
            ),
        ];
        for (mutate, field) in cases {
            let mut w = good.clone();
            mutate(&mut w);
            let err = Dataplane::try_from(&w).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn nodes_round_trip_and_bad_addresses_are_named() {
        let n = NodeInfo {
            name: "gw-icu".into(),
            labels: [("role".to_owned(), "gateway".to_owned())].into(),
            addresses: vec![
                "198.18.42.10".parse().unwrap(),
                "2001:db8:42::10".parse().unwrap(),
            ],
        };
        let w = v1::NodeInfo::from(&n);
        assert_eq!(NodeInfo::try_from(&w).unwrap(), n);
        let mut bad = w.clone();
        bad.addresses[1] = "nowhere".into();
        assert_eq!(
            NodeInfo::try_from(&bad).unwrap_err().field,
            "nodes[gw-icu].addresses[1]"
        );
    }
}
