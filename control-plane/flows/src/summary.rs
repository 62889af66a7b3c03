//! What a block holds, in brief: its time span, the ranges of its
//! addresses, its destination ports and protocols, and its records counted
//! by (source segment, destination segment, verdict, reason, policy).
//!
//! Kept (sealed) beside each block, so that a query opens only the blocks
//! that may hold a match, and the segment matrix over whole blocks is the
//! sum of their counts, without opening them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use time::OffsetDateTime;
use wardline_proto::v1;

use crate::filter::{End, Query};
use crate::record::{FIRST_KINDS, address, time_of};

/// More distinct ports than this: the block may hold any.
const MAX_PORTS: usize = 64;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Cell {
    #[prost(string, tag = "1")]
    pub src_segment: String,
    #[prost(string, tag = "2")]
    pub dst_segment: String,
    #[prost(string, tag = "3")]
    pub verdict: String,
    #[prost(string, tag = "4")]
    pub reason: String,
    #[prost(string, tag = "5")]
    pub policy: String,
    #[prost(uint64, tag = "6")]
    pub records: u64,
    /// Of them, the connections' first records (`new`, `drop`).
    #[prost(uint64, tag = "7")]
    pub connections: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// Unix nanoseconds of its first and last record.
    #[prost(int64, tag = "1")]
    pub first_ns: i64,
    #[prost(int64, tag = "2")]
    pub last_ns: i64,
    /// The lowest and highest source and destination, as IPv6 (IPv4
    /// mapped), big-endian.
    #[prost(bytes = "vec", tag = "3")]
    pub src_low: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub src_high: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub dst_low: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    pub dst_high: Vec<u8>,
    /// Every destination port, unless `many_ports`.
    #[prost(uint32, repeated, tag = "7")]
    pub ports: Vec<u32>,
    #[prost(bool, tag = "8")]
    pub many_ports: bool,
    #[prost(uint32, repeated, tag = "9")]
    pub protocols: Vec<u32>,
    #[prost(message, repeated, tag = "10")]
    pub cells: Vec<Cell>,
}

/// A cell's (source segment, destination segment, verdict, reason, policy).
type CellKey<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

fn wide(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bytes(b: &[u8]) -> u128 {
    <[u8; 16]>::try_from(b).map_or(0, u128::from_be_bytes)
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

impl Summary {
    /// The summary of `flows` (valid records, as stored).
    pub fn of(flows: &[v1::Flow]) -> Summary {
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        let (mut src, mut dst) = ((u128::MAX, 0u128), (u128::MAX, 0u128));
        let mut ports = BTreeSet::new();
        let mut protocols = BTreeSet::new();
        // (source, destination, verdict, reason, policy) -> (records, connections)
        let mut cells: BTreeMap<CellKey<'_>, (u64, u64)> = BTreeMap::new();
        for f in flows {
            if let Some(t) = time_of(f) {
                first = first.min(nanos(t));
                last = last.max(nanos(t));
            }
            if let (Some(s), Some(d)) = (address(&f.src), address(&f.dst)) {
                src = (src.0.min(wide(s)), src.1.max(wide(s)));
                dst = (dst.0.min(wide(d)), dst.1.max(wide(d)));
            }
            ports.insert(f.dport);
            protocols.insert(f.protocol);
            let cell = cells
                .entry((
                    &f.src_segment,
                    &f.dst_segment,
                    &f.verdict,
                    &f.reason,
                    &f.policy,
                ))
                .or_default();
            cell.0 += 1;
            cell.1 += u64::from(FIRST_KINDS.contains(&f.kind.as_str()));
        }
        let many_ports = ports.len() > MAX_PORTS;
        Summary {
            first_ns: first,
            last_ns: last,
            src_low: src.0.to_be_bytes().to_vec(),
            src_high: src.1.to_be_bytes().to_vec(),
            dst_low: dst.0.to_be_bytes().to_vec(),
            dst_high: dst.1.to_be_bytes().to_vec(),
            ports: if many_ports {
                Vec::new()
            } else {
                ports.into_iter().collect()
            },
            many_ports,
            protocols: protocols.into_iter().collect(),
            cells: cells
                .into_iter()
                .map(|((s, d, v, r, p), (records, connections))| Cell {
                    src_segment: s.to_owned(),
                    dst_segment: d.to_owned(),
                    verdict: v.to_owned(),
                    reason: r.to_owned(),
                    policy: p.to_owned(),
                    records,
                    connections,
                })
                .collect(),
        }
    }

    fn within_time(&self, q: &Query) -> (bool, bool) {
        let since = q.since.map(nanos);
        let until = q.until.map(nanos);
        let overlaps =
            since.is_none_or(|s| self.last_ns >= s) && until.is_none_or(|u| self.first_ns <= u);
        let covered =
            since.is_none_or(|s| self.first_ns >= s) && until.is_none_or(|u| self.last_ns <= u);
        (overlaps, covered)
    }

    /// Whether `q`'s time range holds every record of the block.
    pub fn covers(&self, q: &Query) -> bool {
        self.within_time(q).1
    }

    /// Whether the block may hold a record `q` wants (it may not: then it
    /// is not opened).
    pub fn may_match(&self, q: &Query) -> bool {
        let in_range = |end: &Option<End>, low: &[u8], high: &[u8]| match end {
            Some(End::Addresses(net)) => {
                let (lo, hi) = (from_bytes(low), from_bytes(high));
                let (a, b) = span(net);
                a <= hi && b >= lo
            }
            _ => true,
        };
        let segment = |end: &Option<End>, s: &str| match end {
            Some(End::Segment(name)) => name == s,
            _ => true,
        };
        self.within_time(q).0
            && in_range(&q.from, &self.src_low, &self.src_high)
            && in_range(&q.to, &self.dst_low, &self.dst_high)
            && q.port
                .is_none_or(|p| self.many_ports || self.ports.contains(&u32::from(p)))
            && q.protocol.is_none_or(|p| self.protocols.contains(&p))
            && self.cells.iter().any(|c| {
                segment(&q.from, &c.src_segment)
                    && segment(&q.to, &c.dst_segment)
                    && q.verdict.as_ref().is_none_or(|v| *v == c.verdict)
                    && q.reason.as_ref().is_none_or(|r| *r == c.reason)
                    && q.policy.as_ref().is_none_or(|p| *p == c.policy)
            })
    }

    /// The block's records counted by segment pair and verdict, when `q`
    /// wants every one of them (no filter but a time range that covers the
    /// block): the matrix then needs no record read.
    pub fn whole_counts(&self, q: &Query) -> Option<&[Cell]> {
        let only_time = q.node.is_none()
            && q.from.is_none()
            && q.to.is_none()
            && q.port.is_none()
            && q.protocol.is_none()
            && q.verdict.is_none()
            && q.reason.is_none()
            && q.policy.is_none();
        (only_time && self.within_time(q).1).then_some(self.cells.as_slice())
    }
}

/// The first and last address of `net`, as IPv6 (IPv4 mapped).
fn span(net: &IpNet) -> (u128, u128) {
    (wide(net.network()), wide(net.broadcast()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::flow;
    use time::format_description::well_known::Rfc3339;

    #[test]
    fn a_block_is_skipped_only_when_it_cannot_match() {
        let flows = vec![
            flow(
                "2026-12-02T11:00:00Z",
                "198.18.20.10",
                "198.18.41.10",
                443,
                "allowed",
                1,
            ),
            flow(
                "2026-12-02T11:00:30Z",
                "198.18.20.20",
                "198.18.41.12",
                22,
                "dropped",
                2,
            ),
        ];
        let s = Summary::of(&flows);
        let now = OffsetDateTime::parse("2026-12-02T12:00:00Z", &Rfc3339).unwrap();
        let q = |req: v1::ObserveRequest| Query::parse(&req, now).unwrap();
        let may = |req| s.may_match(&q(req));
        assert!(may(v1::ObserveRequest::default()));
        assert!(may(v1::ObserveRequest {
            from: "198.18.20.15".into(),
            ..Default::default()
        }));
        assert!(!may(v1::ObserveRequest {
            from: "198.18.21.0/24".into(),
            ..Default::default()
        }));
        assert!(!may(v1::ObserveRequest {
            to: "2001:db8::/32".into(),
            ..Default::default()
        }));
        assert!(may(v1::ObserveRequest {
            port: 22,
            ..Default::default()
        }));
        assert!(!may(v1::ObserveRequest {
            port: 80,
            ..Default::default()
        }));
        assert!(!may(v1::ObserveRequest {
            since: "30m".into(),
            ..Default::default()
        }));
        // One record must have both: dropped and policy ws-ehr never meet.
        assert!(!may(v1::ObserveRequest {
            verdict: "dropped".into(),
            policy: "ws-ehr".into(),
            ..Default::default()
        }));
        assert!(may(v1::ObserveRequest {
            verdict: "dropped".into(),
            to: "ehr".into(),
            ..Default::default()
        }));
        // The matrix takes whole counts only when nothing else filters.
        assert!(s.whole_counts(&q(v1::ObserveRequest::default())).is_some());
        assert!(
            s.whole_counts(&q(v1::ObserveRequest {
                verdict: "dropped".into(),
                ..Default::default()
            }))
            .is_none()
        );
        assert!(
            s.whole_counts(&q(v1::ObserveRequest {
                since: "2026-12-02T11:00:10Z".into(),
                ..Default::default()
            }))
            .is_none()
        );
    }
}
