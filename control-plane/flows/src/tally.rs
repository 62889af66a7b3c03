//! The segment matrix and the top lists, counted from records: written
//! once for every flow store, so that each gives the same answer from the
//! same records.

use std::collections::{BTreeMap, HashMap, HashSet};

use time::OffsetDateTime;
use wardline_proto::v1;

use crate::pairs::{Addr, Said};
use crate::record::FIRST_KINDS;
use crate::store::Top;
use crate::summary::Cell;

/// The most distinct sources or pairs a ranking holds (a flood of forged
/// sources must not make a query take the server's memory).
const MAX_RANKED: usize = 200_000;

/// Connections counted by (source segment, destination segment, verdict).
#[derive(Debug, Default)]
pub struct Matrix {
    cells: BTreeMap<(String, String, String), u64>,
    flows: u64,
}

impl Matrix {
    /// Counts `f` if it is a connection's first record.
    pub fn add(&mut self, f: v1::Flow) {
        if FIRST_KINDS.contains(&f.kind.as_str()) {
            self.flows += 1;
            *self
                .cells
                .entry((f.src_segment, f.dst_segment, f.verdict))
                .or_default() += 1;
        }
    }

    /// Adds a block's counts, taken whole.
    pub fn add_cell(&mut self, c: Cell) {
        if c.connections > 0 {
            self.flows += c.connections;
            *self
                .cells
                .entry((c.src_segment, c.dst_segment, c.verdict))
                .or_default() += c.connections;
        }
    }

    pub fn finish(self) -> v1::FlowMatrixResponse {
        v1::FlowMatrixResponse {
            cells: self
                .cells
                .into_iter()
                .map(
                    |((src_segment, dst_segment, verdict), flows)| v1::FlowMatrixCell {
                        src_segment,
                        dst_segment,
                        verdict,
                        flows,
                    },
                )
                .collect(),
            flows: self.flows,
        }
    }
}

#[derive(Debug, Default)]
struct Entry {
    src_segment: String,
    dst_segment: String,
    connections: u64,
    packets: u64,
    bytes: u64,
    destinations: HashSet<(Addr, u32)>,
    last: Option<OffsetDateTime>,
}

/// Sources (by connections) or talkers (address pairs, by bytes), ranked.
#[derive(Debug)]
pub struct Ranking {
    by: Top,
    ranked: HashMap<(Addr, Addr), Entry>,
    flows: u64,
    partial: bool,
}

impl Ranking {
    pub fn new(by: Top) -> Ranking {
        Ranking {
            by,
            ranked: HashMap::new(),
            flows: 0,
            partial: false,
        }
    }

    /// Counts `f`, judged at `at`.
    pub fn add(&mut self, at: OffsetDateTime, f: &v1::Flow) {
        self.add_said(Said {
            src: Addr::of(&f.src),
            dst: Addr::of(&f.dst),
            dport: f.dport,
            src_segment: &f.src_segment,
            dst_segment: &f.dst_segment,
            records: 1,
            connections: u64::from(FIRST_KINDS.contains(&f.kind.as_str())),
            packets: f.packets,
            bytes: f.bytes,
            last: at,
        });
    }

    /// Counts one pair of a block's tally (or one record, as [`add`] does).
    ///
    /// [`add`]: Ranking::add
    pub fn add_said(&mut self, s: Said<'_>) {
        self.flows += s.records;
        let pair = match self.by {
            Top::Sources => (s.src, Addr::NONE),
            Top::Talkers => (s.src, s.dst),
        };
        if self.ranked.len() >= MAX_RANKED && !self.ranked.contains_key(&pair) {
            self.partial = true;
            return;
        }
        let e = self.ranked.entry(pair).or_default();
        if e.last.is_none_or(|l| s.last >= l) {
            e.last = Some(s.last);
            s.src_segment.clone_into(&mut e.src_segment);
            s.dst_segment.clone_into(&mut e.dst_segment);
        }
        e.connections += s.connections;
        e.packets += s.packets;
        e.bytes += s.bytes;
        if self.by == Top::Sources && e.destinations.len() < 100_000 {
            e.destinations.insert((s.dst, s.dport));
        }
    }

    /// The `limit` highest ranked.
    pub fn finish(self, limit: usize) -> v1::TopResponse {
        let by = self.by;
        let mut entries: Vec<v1::TopEntry> = self
            .ranked
            .into_iter()
            .map(|((src, dst), e)| v1::TopEntry {
                src: src.as_bytes().to_vec(),
                src_segment: e.src_segment,
                dst: dst.as_bytes().to_vec(),
                dst_segment: if by == Top::Talkers {
                    e.dst_segment
                } else {
                    String::new()
                },
                connections: e.connections,
                packets: e.packets,
                bytes: e.bytes,
                destinations: e.destinations.len() as u64,
                last_seen: e
                    .last
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        let rank = |e: &v1::TopEntry| match by {
            Top::Sources => (e.connections, e.destinations, e.bytes),
            Top::Talkers => (e.bytes, e.packets, e.connections),
        };
        entries.sort_by(|a, b| rank(b).cmp(&rank(a)).then_with(|| a.src.cmp(&b.src)));
        entries.truncate(limit);
        v1::TopResponse {
            entries,
            flows: self.flows,
            partial: self.partial,
        }
    }
}
