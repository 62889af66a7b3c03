//! A block's records tallied by who spoke to whom: one entry per distinct
//! (source, destination, destination port, protocol, segments, verdict,
//! reason, policy), with its records, connections, packets, bytes and the
//! time of its last record.
//!
//! Kept (sealed) beside each block, so that the top sources and talkers
//! over blocks a query's time range covers are counted from these tallies
//! without opening the blocks: records that differ only in their source
//! port (every new connection of a workstation to the EHR) are one entry.
//! A query naming addresses also checks a block's tally before opening the
//! block: a block's address range spans its ward, its tally names each.

use std::collections::HashMap;

use time::OffsetDateTime;
use wardline_proto::v1;

use crate::filter::{Facts, Query};
use crate::record::{FIRST_KINDS, time_of};

/// An address as records carry it (4 or 16 bytes), held without the heap:
/// a ranking over a day of records keys by millions of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr {
    len: u8,
    bytes: [u8; 16],
}

impl Addr {
    /// No address (a ranking of sources keys by the source alone).
    pub const NONE: Addr = Addr {
        len: 0,
        bytes: [0; 16],
    };

    pub fn of(bytes: &[u8]) -> Addr {
        let mut a = Addr::NONE;
        let n = bytes.len().min(16);
        a.bytes[..n].copy_from_slice(&bytes[..n]);
        a.len = n as u8;
        a
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// As a pair stores it: the high and low 64 bits, and whether it is
    /// IPv4 (then in the low 32 bits).
    fn wide(&self) -> (u64, u64, bool) {
        if self.len == 4 {
            let v4 =
                u32::from_be_bytes([self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]]);
            (0, u64::from(v4), true)
        } else {
            let n = u128::from_be_bytes(self.bytes);
            ((n >> 64) as u64, n as u64, false)
        }
    }

    fn from_wide(high: u64, low: u64, v4: bool) -> Addr {
        if v4 {
            Addr::of(&(low as u32).to_be_bytes())
        } else {
            Addr::of(&((u128::from(high) << 64) | u128::from(low)).to_be_bytes())
        }
    }
}

/// One pair, as [`Pairs`] holds it in its columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pair {
    pub src: Addr,
    pub dst: Addr,
    pub dport: u32,
    pub protocol: u32,
    /// Indexes into [`Pairs::names`].
    pub src_segment: u32,
    pub dst_segment: u32,
    pub verdict: u32,
    pub reason: u32,
    pub policy: u32,
    pub records: u64,
    /// Of them, the connections' first records (`new`, `drop`).
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Unix nanoseconds of its last record.
    pub last_ns: i64,
}

/// A block's pairs, a column per field (each holding one value per pair),
/// so that a tally decodes as a few packed arrays: no allocation, and no
/// message framing, per pair.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pairs {
    /// Every segment, verdict, reason and policy the pairs name, once.
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
    /// The addresses' high and low 64 bits (an IPv4 address in the low 32,
    /// its bit set in `v4`).
    #[prost(fixed64, repeated, tag = "2")]
    src_high: Vec<u64>,
    #[prost(fixed64, repeated, tag = "3")]
    src_low: Vec<u64>,
    #[prost(fixed64, repeated, tag = "4")]
    dst_high: Vec<u64>,
    #[prost(fixed64, repeated, tag = "5")]
    dst_low: Vec<u64>,
    /// Bit 0: the source is IPv4; bit 1: the destination is.
    #[prost(uint32, repeated, tag = "6")]
    v4: Vec<u32>,
    #[prost(uint32, repeated, tag = "7")]
    dport: Vec<u32>,
    #[prost(uint32, repeated, tag = "8")]
    protocol: Vec<u32>,
    #[prost(uint32, repeated, tag = "9")]
    src_segment: Vec<u32>,
    #[prost(uint32, repeated, tag = "10")]
    dst_segment: Vec<u32>,
    #[prost(uint32, repeated, tag = "11")]
    verdict: Vec<u32>,
    #[prost(uint32, repeated, tag = "12")]
    reason: Vec<u32>,
    #[prost(uint32, repeated, tag = "13")]
    policy: Vec<u32>,
    #[prost(uint64, repeated, tag = "14")]
    records: Vec<u64>,
    #[prost(uint64, repeated, tag = "15")]
    connections: Vec<u64>,
    #[prost(uint64, repeated, tag = "16")]
    packets: Vec<u64>,
    #[prost(uint64, repeated, tag = "17")]
    bytes: Vec<u64>,
    #[prost(int64, repeated, tag = "18")]
    last_ns: Vec<i64>,
}

/// A pair's key: (source, destination, port, protocol, the five names).
type Key<'a> = (&'a [u8], &'a [u8], u32, u32, [&'a str; 5]);

/// One pair, as a ranking reads it.
#[derive(Clone, Copy, Debug)]
pub struct Said<'a> {
    pub src: Addr,
    pub dst: Addr,
    pub dport: u32,
    pub src_segment: &'a str,
    pub dst_segment: &'a str,
    pub records: u64,
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
    pub last: OffsetDateTime,
}

impl Pairs {
    /// The tally of `flows` (valid records, as stored).
    pub fn of(flows: &[v1::Flow]) -> Pairs {
        let mut names: Vec<String> = Vec::new();
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut pairs: Vec<Pair> = Vec::new();
        let mut at: HashMap<Key<'_>, usize> = HashMap::new();
        for f in flows {
            // As a block read counts only records with a time.
            let Some(last_ns) =
                time_of(f).and_then(|t| i64::try_from(t.unix_timestamp_nanos()).ok())
            else {
                continue;
            };
            let words = [
                f.src_segment.as_str(),
                &f.dst_segment,
                &f.verdict,
                &f.reason,
                &f.policy,
            ];
            let key = (
                f.src.as_slice(),
                f.dst.as_slice(),
                f.dport,
                f.protocol,
                words,
            );
            let slot = *at.entry(key).or_insert_with(|| {
                let [src_segment, dst_segment, verdict, reason, policy] = words.map(|w| {
                    *index.entry(w).or_insert_with(|| {
                        names.push(w.to_owned());
                        (names.len() - 1) as u32
                    })
                });
                pairs.push(Pair {
                    src: Addr::of(&f.src),
                    dst: Addr::of(&f.dst),
                    dport: f.dport,
                    protocol: f.protocol,
                    src_segment,
                    dst_segment,
                    verdict,
                    reason,
                    policy,
                    last_ns: i64::MIN,
                    ..Default::default()
                });
                pairs.len() - 1
            });
            let p = &mut pairs[slot];
            p.records += 1;
            p.connections += u64::from(FIRST_KINDS.contains(&f.kind.as_str()));
            p.packets += f.packets;
            p.bytes += f.bytes;
            p.last_ns = p.last_ns.max(last_ns);
        }
        let mut tally = Pairs {
            names,
            ..Default::default()
        };
        for p in pairs {
            tally.push(p);
        }
        tally
    }

    fn push(&mut self, p: Pair) {
        let (src_high, src_low, src_v4) = p.src.wide();
        let (dst_high, dst_low, dst_v4) = p.dst.wide();
        self.src_high.push(src_high);
        self.src_low.push(src_low);
        self.dst_high.push(dst_high);
        self.dst_low.push(dst_low);
        self.v4.push(u32::from(src_v4) | (u32::from(dst_v4) << 1));
        self.dport.push(p.dport);
        self.protocol.push(p.protocol);
        self.src_segment.push(p.src_segment);
        self.dst_segment.push(p.dst_segment);
        self.verdict.push(p.verdict);
        self.reason.push(p.reason);
        self.policy.push(p.policy);
        self.records.push(p.records);
        self.connections.push(p.connections);
        self.packets.push(p.packets);
        self.bytes.push(p.bytes);
        self.last_ns.push(p.last_ns);
    }

    /// How many pairs it holds: `None` when its columns disagree.
    pub fn count(&self) -> Option<usize> {
        let n = self.src_high.len();
        let lens = [
            self.src_low.len(),
            self.dst_high.len(),
            self.dst_low.len(),
            self.v4.len(),
            self.dport.len(),
            self.protocol.len(),
            self.src_segment.len(),
            self.dst_segment.len(),
            self.verdict.len(),
            self.reason.len(),
            self.policy.len(),
            self.records.len(),
            self.connections.len(),
            self.packets.len(),
            self.bytes.len(),
            self.last_ns.len(),
        ];
        lens.iter().all(|l| *l == n).then_some(n)
    }

    /// Pair `i`; `None` past the end of any column.
    pub fn pair(&self, i: usize) -> Option<Pair> {
        let v4 = *self.v4.get(i)?;
        Some(Pair {
            src: Addr::from_wide(*self.src_high.get(i)?, *self.src_low.get(i)?, v4 & 1 != 0),
            dst: Addr::from_wide(*self.dst_high.get(i)?, *self.dst_low.get(i)?, v4 & 2 != 0),
            dport: *self.dport.get(i)?,
            protocol: *self.protocol.get(i)?,
            src_segment: *self.src_segment.get(i)?,
            dst_segment: *self.dst_segment.get(i)?,
            verdict: *self.verdict.get(i)?,
            reason: *self.reason.get(i)?,
            policy: *self.policy.get(i)?,
            records: *self.records.get(i)?,
            connections: *self.connections.get(i)?,
            packets: *self.packets.get(i)?,
            bytes: *self.bytes.get(i)?,
            last_ns: *self.last_ns.get(i)?,
        })
    }

    /// The indexes of the pairs `q` wants (its time range and node are the
    /// caller's to check: the block's). `None` when the tally names a name
    /// it does not hold or a time out of range (it does not then count at
    /// all).
    pub fn wanted(&self, q: &Query) -> Option<Vec<u32>> {
        let mut wanted = Vec::new();
        for i in 0..self.count()? {
            let p = self.pair(i)?;
            let (src, dst) = (p.src, p.dst);
            let facts = Facts {
                src_segment: self.name(p.src_segment)?,
                dst_segment: self.name(p.dst_segment)?,
                src: src.as_bytes(),
                dst: dst.as_bytes(),
                dport: p.dport,
                protocol: p.protocol,
                verdict: self.name(p.verdict)?,
                reason: self.name(p.reason)?,
                policy: self.name(p.policy)?,
            };
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(p.last_ns)).ok()?;
            if q.matches_facts(&facts) {
                wanted.push(u32::try_from(i).ok()?);
            }
        }
        Some(wanted)
    }

    /// Pair `i`, as a ranking reads it (`None` where [`wanted`] would be).
    ///
    /// [`wanted`]: Pairs::wanted
    pub fn said(&self, i: u32) -> Option<Said<'_>> {
        let p = self.pair(usize::try_from(i).ok()?)?;
        Some(Said {
            src: p.src,
            dst: p.dst,
            dport: p.dport,
            src_segment: self.name(p.src_segment)?,
            dst_segment: self.name(p.dst_segment)?,
            records: p.records,
            connections: p.connections,
            packets: p.packets,
            bytes: p.bytes,
            last: OffsetDateTime::from_unix_timestamp_nanos(i128::from(p.last_ns)).ok()?,
        })
    }

    fn name(&self, at: u32) -> Option<&str> {
        self.names
            .get(usize::try_from(at).ok()?)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::flow;
    use prost::Message as _;

    impl Pairs {
        fn each_wanted(&self, q: &Query) -> Option<Vec<Said<'_>>> {
            self.wanted(q)?.into_iter().map(|i| self.said(i)).collect()
        }
    }

    #[test]
    fn records_that_differ_only_in_source_port_are_one_pair() {
        let mut flows = Vec::new();
        for (i, second) in ["00", "10", "20"].iter().enumerate() {
            let mut f = flow(
                &format!("2026-12-02T11:00:{second}Z"),
                "198.18.20.10",
                "198.18.41.10",
                443,
                "allowed",
                i as u64 + 1,
            );
            f.sport = 40_000 + i as u32;
            f.bytes = 100;
            flows.push(f);
        }
        let mut update = flows[0].clone();
        update.kind = "update".into();
        update.time = "2026-12-02T11:00:40Z".into();
        flows.push(update);
        flows.push(flow(
            "2026-12-02T11:00:30Z",
            "198.18.20.10",
            "198.18.41.10",
            22,
            "dropped",
            9,
        ));
        let tally = Pairs::of(&flows);
        assert_eq!(tally.count(), Some(2));
        let now = OffsetDateTime::parse(
            "2026-12-02T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let q = |req: v1::ObserveRequest| Query::parse(&req, now).unwrap();
        let mut seen = Vec::new();
        for s in tally
            .each_wanted(&q(v1::ObserveRequest::default()))
            .unwrap()
        {
            seen.push((s.dport, s.records, s.connections, s.bytes, s.last));
        }
        let at = |t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339);
        assert_eq!(
            seen,
            vec![
                (443, 4, 3, 400, at("2026-12-02T11:00:40Z").unwrap()),
                (22, 1, 1, 60, at("2026-12-02T11:00:30Z").unwrap()),
            ]
        );
        seen.clear();
        let dropped = q(v1::ObserveRequest {
            verdict: "dropped".into(),
            ..Default::default()
        });
        for s in tally.each_wanted(&dropped).unwrap() {
            seen.push((s.dport, s.records, s.connections, s.bytes, s.last));
        }
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, 22);
    }

    #[test]
    fn addresses_of_either_family_come_back_as_records_carry_them() {
        for a in [
            "198.18.20.10",
            "0.0.0.0",
            "2001:db8::7",
            "::ffff:198.18.20.10",
            "::",
        ] {
            let ip: std::net::IpAddr = a.parse().unwrap();
            let bytes = wardline_proto::convert::ip_to_bytes(ip);
            let (high, low, v4) = Addr::of(&bytes).wide();
            assert_eq!(Addr::from_wide(high, low, v4).as_bytes(), bytes, "{a}");
        }
        let mut f = flow(
            "2026-12-02T11:00:00Z",
            "2001:db8:20::10",
            "198.18.41.10",
            443,
            "allowed",
            1,
        );
        let decoded = Pairs::decode(
            Pairs::of(std::slice::from_ref(&f))
                .encode_to_vec()
                .as_slice(),
        );
        let mut seen = Vec::new();
        for s in decoded.unwrap().each_wanted(&Query::default()).unwrap() {
            seen.push((s.src.as_bytes().to_vec(), s.dst.as_bytes().to_vec()));
        }
        assert_eq!(seen, [(f.src.clone(), f.dst.clone())]);
        f.protocol = 17;
        assert_eq!(Pairs::of(&[f]).pair(0).unwrap().protocol, 17);
    }

    #[test]
    fn a_tally_naming_what_it_does_not_hold_counts_nothing() {
        let mut tally = Pairs::of(&[flow(
            "2026-12-02T11:00:00Z",
            "198.18.20.10",
            "198.18.41.10",
            443,
            "allowed",
            1,
        )]);
        tally.verdict[0] = 99;
        assert!(tally.each_wanted(&Query::default()).is_none());
        assert!(tally.wanted(&Query::default()).is_none());
        // Nor one whose columns disagree.
        tally.verdict[0] = 0;
        assert!(tally.wanted(&Query::default()).is_some());
        tally.records.pop();
        assert!(tally.wanted(&Query::default()).is_none());
    }
}
