//! A block's records tallied by who spoke to whom: one entry per distinct
//! (source, destination, destination port, protocol, segments, verdict,
//! reason, policy), with its records, connections, packets, bytes and the
//! time of its last record.
//!
//! Kept (sealed) beside each block, so that the top sources and talkers
//! over blocks a query's time range covers are counted from these tallies
//! without opening the blocks: records that differ only in their source
//! port (every new connection of a workstation to the EHR) are one entry.

use std::collections::HashMap;

use time::OffsetDateTime;
use wardline_proto::v1;

use crate::filter::{Facts, Query};
use crate::record::{FIRST_KINDS, time_of};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Pair {
    /// The addresses, as records carry them (4 or 16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub src: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub dst: Vec<u8>,
    #[prost(uint32, tag = "3")]
    pub dport: u32,
    #[prost(uint32, tag = "4")]
    pub protocol: u32,
    /// Indexes into [`Pairs::names`]: source segment, destination segment,
    /// verdict, reason, policy.
    #[prost(uint32, repeated, tag = "5")]
    pub names: Vec<u32>,
    #[prost(uint64, tag = "6")]
    pub records: u64,
    /// Of them, the connections' first records (`new`, `drop`).
    #[prost(uint64, tag = "7")]
    pub connections: u64,
    #[prost(uint64, tag = "8")]
    pub packets: u64,
    #[prost(uint64, tag = "9")]
    pub bytes: u64,
    /// Unix nanoseconds of its last record.
    #[prost(int64, tag = "10")]
    pub last_ns: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Pairs {
    /// Every segment, verdict, reason and policy the pairs name, once.
    #[prost(string, repeated, tag = "1")]
    pub names: Vec<String>,
    #[prost(message, repeated, tag = "2")]
    pub pairs: Vec<Pair>,
}

/// A pair's key: (source, destination, port, protocol, the five names).
type Key<'a> = (&'a [u8], &'a [u8], u32, u32, [&'a str; 5]);

/// One pair, as a ranking reads it.
#[derive(Clone, Copy, Debug)]
pub struct Said<'a> {
    pub src: &'a [u8],
    pub dst: &'a [u8],
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
            let words = [
                f.src_segment.as_str(),
                &f.dst_segment,
                &f.verdict,
                &f.reason,
                &f.policy,
            ];
            // As a block read counts only records with a time.
            let Some(last_ns) =
                time_of(f).and_then(|t| i64::try_from(t.unix_timestamp_nanos()).ok())
            else {
                continue;
            };
            let key = (
                f.src.as_slice(),
                f.dst.as_slice(),
                f.dport,
                f.protocol,
                words,
            );
            let slot = *at.entry(key).or_insert_with(|| {
                let ids = words
                    .iter()
                    .map(|w| {
                        *index.entry(w).or_insert_with(|| {
                            names.push((*w).to_owned());
                            (names.len() - 1) as u32
                        })
                    })
                    .collect();
                pairs.push(Pair {
                    src: f.src.clone(),
                    dst: f.dst.clone(),
                    dport: f.dport,
                    protocol: f.protocol,
                    names: ids,
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
        Pairs { names, pairs }
    }

    /// Each pair `q` wants (its time range and node are the caller's to
    /// check: the block's), to `each`. `None` when the tally names a name
    /// it does not hold (it does not then count at all).
    pub fn each_wanted(&self, q: &Query, mut each: impl FnMut(Said<'_>)) -> Option<()> {
        let name = |p: &Pair, i: usize| -> Option<&str> {
            let at = usize::try_from(*p.names.get(i)?).ok()?;
            self.names.get(at).map(String::as_str)
        };
        let mut wanted = Vec::with_capacity(self.pairs.len());
        for p in &self.pairs {
            let facts = Facts {
                src_segment: name(p, 0)?,
                dst_segment: name(p, 1)?,
                src: &p.src,
                dst: &p.dst,
                dport: p.dport,
                protocol: p.protocol,
                verdict: name(p, 2)?,
                reason: name(p, 3)?,
                policy: name(p, 4)?,
            };
            if q.matches_facts(&facts) {
                let last = OffsetDateTime::from_unix_timestamp_nanos(i128::from(p.last_ns)).ok()?;
                wanted.push(Said {
                    src: &p.src,
                    dst: &p.dst,
                    dport: p.dport,
                    src_segment: facts.src_segment,
                    dst_segment: facts.dst_segment,
                    records: p.records,
                    connections: p.connections,
                    packets: p.packets,
                    bytes: p.bytes,
                    last,
                });
            }
        }
        wanted.into_iter().for_each(&mut each);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::flow;

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
        assert_eq!(tally.pairs.len(), 2);
        let now = OffsetDateTime::parse(
            "2026-12-02T12:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let q = |req: v1::ObserveRequest| Query::parse(&req, now).unwrap();
        let mut seen = Vec::new();
        tally
            .each_wanted(&q(v1::ObserveRequest::default()), |s| {
                seen.push((s.dport, s.records, s.connections, s.bytes, s.last));
            })
            .unwrap();
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
        tally
            .each_wanted(&dropped, |s| {
                seen.push((s.dport, s.records, s.connections, s.bytes, s.last))
            })
            .unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, 22);
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
        tally.pairs[0].names[2] = 99;
        let q = Query::default();
        let mut n = 0;
        assert!(tally.each_wanted(&q, |_| n += 1).is_none());
        assert_eq!(n, 0);
    }
}
