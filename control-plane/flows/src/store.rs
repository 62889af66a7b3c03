//! The embedded flow store: one `redb` file beside the policy store.
//!
//! Records are kept in blocks, one per ingest batch, node and minute, each
//! sealed with the site's store key (its key in the file is its AAD, so a
//! block moved under another key does not open). A table counts the
//! records of each minute, so retention by age and by size drops whole
//! minutes, oldest first, without reading them; another keeps, per node,
//! the highest sequence number stored, so a batch sent again after a lost
//! answer is stored once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use wardline_proto::v1;
use wardline_store::encrypted::StoreKey;

use crate::filter::{End, MAX_RESULTS, Query};
use crate::ingest::{minute_of, sort};
use crate::inventory::{self, InventoryQuery};
use crate::pairs::{Pairs, Said};
use crate::record::{MAX_BATCH, time_of};
use crate::summary::Summary;
use crate::tally::{Matrix, Ranking};

/// The flow store's page cache: enough for the recent minutes queries
/// read, far below redb's default of a gigabyte.
const CACHE_BYTES: usize = 64 << 20;
/// A minute with at least this many blocks to open is read on every core.
const PARALLEL_BLOCKS: usize = 16;

/// Block key (minute, big-endian; node; 0; the agent's buffer id and the
/// block's first sequence, big-endian) to the sealed, encoded block (a
/// [`v1::FlowBatch`] holding its records).
const BLOCKS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("blocks");
/// The same key to the sealed [`Summary`] of its block.
const SUMMARIES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("summaries");
/// The same key to the sealed [`Pairs`] of its block: the top sources and
/// talkers over blocks a query covers whole are counted from these, and a
/// query naming addresses checks them before opening a block.
/// (A store written before it existed has none: its blocks are read.)
const PAIRS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("pairs");
/// Minute (since the epoch) to the records stored in it.
const MINUTES: TableDefinition<'_, u64, u64> = TableDefinition::new("minutes");
/// Node to (its agent's buffer id, the highest sequence number stored).
const SEQUENCES: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("sequences");

/// How long records are kept, how many at most, and how many one node may
/// add in a minute (so that one node, or one stolen agent key, cannot fill
/// the store and push everyone's older records out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Duration,
    pub max_records: u64,
    pub max_per_node_minute: u64,
    /// Devices the inventory holds at most (its entries also go with
    /// `max_age` after they were last seen).
    pub max_devices: u64,
}

impl Default for Retention {
    /// 30 days, 50 million records, 120,000 a minute per node (2,000 a
    /// second), 100,000 devices.
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_records: 50_000_000,
            max_per_node_minute: 120_000,
            max_devices: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("the flow store {path}: {message}")]
    Store { path: String, message: String },
    #[error("a batch holds at most {MAX_BATCH} records, not {0}")]
    BatchTooLarge(usize),
    #[error("a stored block at {key} does not open: {message}")]
    Corrupt { key: String, message: String },
}

/// What [`FlowStore::top`] ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Top {
    /// Sources, by connections.
    Sources,
    /// Address pairs, by bytes.
    Talkers,
}

impl Top {
    pub fn parse(text: &str) -> Result<Top, crate::QueryError> {
        match text {
            "sources" | "" => Ok(Top::Sources),
            "talkers" => Ok(Top::Talkers),
            other => Err(crate::QueryError {
                field: "by",
                message: format!("{other:?} is neither sources nor talkers"),
            }),
        }
    }
}

/// What one batch came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Stored now, or stored from an earlier send of the same records.
    pub accepted: u32,
    /// Invalid, dropped whole.
    pub refused: u32,
    pub first_refusal: String,
    /// Valid, not stored: past the node's quota for their minute.
    pub over_quota: u32,
}

/// Counts kept for metrics and status.
#[derive(Debug, Default)]
pub struct Counts {
    pub stored: AtomicU64,
    pub refused: AtomicU64,
    pub duplicates: AtomicU64,
    pub over_quota: AtomicU64,
    /// Addresses the inventory had no room for.
    pub inventory_full: AtomicU64,
}

impl Counts {
    /// A batch's ingest done, by either store: `stored` kept, what `out`
    /// says of the rest, and `refused_full` addresses the inventory had no
    /// room for; each stored record then goes to those following
    /// (`subscribe`).
    pub fn ingested(
        &self,
        stored: Vec<v1::Flow>,
        out: &Ingested,
        refused_full: u64,
        follow: &broadcast::Sender<Arc<v1::Flow>>,
    ) {
        self.inventory_full
            .fetch_add(refused_full, Ordering::Relaxed);
        self.stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.refused
            .fetch_add(u64::from(out.refused), Ordering::Relaxed);
        self.over_quota
            .fetch_add(u64::from(out.over_quota), Ordering::Relaxed);
        for f in stored {
            // No one following is fine.
            let _ = follow.send(Arc::new(f));
        }
    }
}

pub struct FlowStore {
    db: Database,
    path: String,
    key: StoreKey,
    retention: Retention,
    records: AtomicU64,
    /// Devices in the inventory.
    devices: AtomicU64,
    pub counts: Counts,
    follow: broadcast::Sender<Arc<v1::Flow>>,
    /// Records stored per (node, minute), for the quota; only recent
    /// minutes are kept.
    quota: std::sync::Mutex<crate::ingest::QuotaUsed>,
}

fn block_key(minute: u64, node: &str, buffer: u64, first: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(25 + node.len());
    key.extend_from_slice(&minute.to_be_bytes());
    key.extend_from_slice(node.as_bytes());
    key.push(0);
    key.extend_from_slice(&buffer.to_be_bytes());
    key.extend_from_slice(&first.to_be_bytes());
    key
}

fn key_name(key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("flows/{hex}")
}

fn summary_name(key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("flow-summaries/{hex}")
}

fn pairs_name(key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("flow-pairs/{hex}")
}

/// `flows` (in sequence order) split by verdict, each part in sequence
/// order: the part's first sequence, in its block key, is then unique.
fn by_verdict(flows: Vec<v1::Flow>) -> Vec<Vec<v1::Flow>> {
    let mut parts: Vec<Vec<v1::Flow>> = Vec::new();
    for f in flows {
        match parts.iter_mut().find(|p| p[0].verdict == f.verdict) {
            Some(part) => part.push(f),
            None => parts.push(vec![f]),
        }
    }
    parts
}

/// The node a block key names.
fn node_of(key: &[u8]) -> &[u8] {
    let rest = key.get(8..).unwrap_or_default();
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    &rest[..end]
}

/// A block's tally and the pairs of it a query wants (see
/// [`Pairs::wanted`]).
type Wanted = (Pairs, Option<Vec<u32>>);

/// How [`FlowStore::walk`] may count a block without reading its records.
enum Unread<'a> {
    /// It may not: every block that may match is read.
    None,
    /// The segment matrix: a block whose records the query wants every one
    /// of is counted from its summary's cells.
    Cells(&'a mut dyn FnMut(&[crate::summary::Cell])),
    /// The top sources and talkers: a block whose time the query covers is
    /// counted from the pairs of its tally the query wants (a tally that
    /// names what it does not hold gives none: the block is then read).
    Pairs(&'a mut dyn FnMut(&[Said<'_>])),
}

impl FlowStore {
    /// Opens (or makes, 0600) the store in `path`.
    pub fn open(path: &Path, key: StoreKey, retention: Retention) -> Result<FlowStore, FlowError> {
        let name = path.display().to_string();
        let fail = |message: String| FlowError::Store {
            path: name.clone(),
            message,
        };
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("its folder: {e}")))?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| fail(e.to_string()))?;
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail(format!("making it private (0600): {e}")))?;
        }
        let wtx = db.begin_write().map_err(|e| fail(e.to_string()))?;
        let mut records = 0;
        let devices;
        {
            wtx.open_table(BLOCKS).map_err(|e| fail(e.to_string()))?;
            wtx.open_table(SUMMARIES).map_err(|e| fail(e.to_string()))?;
            wtx.open_table(PAIRS).map_err(|e| fail(e.to_string()))?;
            wtx.open_table(SEQUENCES).map_err(|e| fail(e.to_string()))?;
            devices = wtx
                .open_table(inventory::DEVICES)
                .map_err(|e| fail(e.to_string()))?
                .len()
                .map_err(|e| fail(e.to_string()))?;
            let minutes = wtx.open_table(MINUTES).map_err(|e| fail(e.to_string()))?;
            for entry in minutes.iter().map_err(|e| fail(e.to_string()))? {
                let (_, n) = entry.map_err(|e| fail(e.to_string()))?;
                records += n.value();
            }
        }
        wtx.commit().map_err(|e| fail(e.to_string()))?;
        Ok(FlowStore {
            db,
            path: name,
            key,
            retention,
            records: AtomicU64::new(records),
            devices: AtomicU64::new(devices),
            counts: Counts::default(),
            follow: broadcast::channel(65_536).0,
            quota: Default::default(),
        })
    }

    fn fail(&self, e: impl std::fmt::Display) -> FlowError {
        FlowError::Store {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Records stored now.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Every record stored from now on, as it is stored.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::Flow>> {
        self.follow.subscribe()
    }

    /// Stores the valid records of `batch`, reported by `node` (the name in
    /// its certificate), in one transaction. Records already stored (a
    /// batch sent again) are accepted and not stored twice; invalid ones are
    /// counted and dropped whole. Blocking: call it off the async runtime.
    pub fn ingest(
        &self,
        node: &str,
        batch: &v1::FlowBatch,
        now: OffsetDateTime,
    ) -> Result<Ingested, FlowError> {
        let mut quota = self.quota.lock().unwrap_or_else(|p| p.into_inner());
        let wtx = self.db.begin_write().map_err(|e| self.fail(e))?;
        let mut stored = Vec::new();
        let upkeep;
        let out;
        {
            let mut sequences = wtx.open_table(SEQUENCES).map_err(|e| self.fail(e))?;
            let high = match sequences.get(node).map_err(|e| self.fail(e))? {
                Some(v) if v.value().0 == batch.buffer => v.value().1,
                _ => 0,
            };
            let sorted = sort(
                node,
                batch,
                now,
                high,
                &mut quota,
                self.retention.max_per_node_minute,
            )?;
            self.counts
                .duplicates
                .fetch_add(sorted.duplicates, Ordering::Relaxed);
            let (highest, groups) = (sorted.highest, sorted.groups);
            out = sorted.out;
            let mut blocks = wtx.open_table(BLOCKS).map_err(|e| self.fail(e))?;
            let mut summaries = wtx.open_table(SUMMARIES).map_err(|e| self.fail(e))?;
            let mut pairs = wtx.open_table(PAIRS).map_err(|e| self.fail(e))?;
            let mut minutes = wtx.open_table(MINUTES).map_err(|e| self.fail(e))?;
            for (minute, flows) in groups {
                let n = flows.len() as u64;
                let mut minute_stored = Vec::with_capacity(flows.len());
                // A block per verdict: a query for the dropped (the
                // common question) skips the blocks of allowed records by
                // their summary instead of reading them to find a few.
                for part in by_verdict(flows) {
                    let key = block_key(minute, node, batch.buffer, part[0].sequence);
                    let block = v1::FlowBatch {
                        flows: part,
                        ..Default::default()
                    };
                    self.put(&mut blocks, &key, key_name(&key), &block)?;
                    let summary = Summary::of(&block.flows);
                    self.put(&mut summaries, &key, summary_name(&key), &summary)?;
                    let tally = Pairs::of(&block.flows);
                    self.put(&mut pairs, &key, pairs_name(&key), &tally)?;
                    minute_stored.extend(block.flows);
                }
                let before = minutes
                    .get(minute)
                    .map_err(|e| self.fail(e))?
                    .map_or(0, |v| v.value());
                minutes
                    .insert(minute, before + n)
                    .map_err(|e| self.fail(e))?;
                // Followers and the inventory see them in sequence order.
                minute_stored.sort_by_key(|f| f.sequence);
                stored.extend(minute_stored);
            }
            let mut devices = wtx
                .open_table(inventory::DEVICES)
                .map_err(|e| self.fail(e))?;
            upkeep = inventory::take(
                &mut devices,
                &self.key,
                &stored,
                self.devices.load(Ordering::Relaxed),
                self.retention.max_devices,
            )
            .map_err(|e| self.fail(e))?;
            if highest != high || batch.buffer != 0 {
                sequences
                    .insert(node, (batch.buffer, highest))
                    .map_err(|e| self.fail(e))?;
            }
        }
        wtx.commit().map_err(|e| self.fail(e))?;
        self.records
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.devices.fetch_add(upkeep.added, Ordering::Relaxed);
        self.counts
            .ingested(stored, &out, upkeep.refused_full, &self.follow);
        Ok(out)
    }

    /// Walks the blocks of the minutes `query` spans, minute by minute
    /// (oldest first, or newest first with `newest_first`), skipping those
    /// whose summary says they hold no match. A block that can be counted
    /// without reading its records (see [`Unread`]) is counted so; the
    /// others are opened and their matching records, in time order per
    /// minute, go to `each`, which returns whether to go on.
    fn walk(
        &self,
        query: &Query,
        newest_first: bool,
        limit: Option<usize>,
        mut unread: Unread<'_>,
        mut each: impl FnMut(Vec<(OffsetDateTime, v1::Flow)>) -> bool,
    ) -> Result<(), FlowError> {
        let rtx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let minutes = rtx.open_table(MINUTES).map_err(|e| self.fail(e))?;
        let blocks = rtx.open_table(BLOCKS).map_err(|e| self.fail(e))?;
        let summaries = rtx.open_table(SUMMARIES).map_err(|e| self.fail(e))?;
        let pairs = rtx.open_table(PAIRS).map_err(|e| self.fail(e))?;
        let names_addresses = [&query.from, &query.to]
            .iter()
            .any(|end| matches!(end, Some(End::Addresses(_))));
        let first = query.since.map_or(0, minute_of);
        let last = query.until.map_or(u64::MAX, minute_of);
        let mut list: Vec<u64> = Vec::new();
        for entry in minutes.range(first..=last).map_err(|e| self.fail(e))? {
            let (minute, _) = entry.map_err(|e| self.fail(e))?;
            list.push(minute.value());
        }
        if newest_first {
            list.reverse();
        }
        let corrupt = |name: &str, e: &dyn std::fmt::Display| FlowError::Corrupt {
            key: name.to_owned(),
            message: e.to_string(),
        };
        let mut delivered = 0usize;
        for minute in list {
            let lower = minute.to_be_bytes();
            let upper = (minute + 1).to_be_bytes();
            // The blocks of this minute that may hold a match, and those
            // of them counted from their tallies.
            let mut candidates: Vec<(Vec<u8>, i64)> = Vec::new();
            let mut tallied: Vec<(Vec<u8>, i64)> = Vec::new();
            // Blocks whose tally says, before they are opened, whether any
            // record matches: a block's address ranges are wide (a
            // gateway's block spans its ward), so for a query naming
            // addresses its tally, a fraction of the block to open, says
            // whether any record matches at all.
            let mut checked: Vec<(Vec<u8>, i64)> = Vec::new();
            for entry in summaries
                .range(lower.as_slice()..upper.as_slice())
                .map_err(|e| self.fail(e))?
            {
                let (key, value) = entry.map_err(|e| self.fail(e))?;
                let key = key.value();
                if query
                    .node
                    .as_ref()
                    .is_some_and(|n| n.as_bytes() != node_of(key))
                {
                    continue;
                }
                let name = summary_name(key);
                let opened = self
                    .key
                    .open(&name, value.value())
                    .map_err(|e| corrupt(&name, &e))?;
                let summary = Summary::decode(opened.as_slice()).map_err(|e| corrupt(&name, &e))?;
                if !summary.may_match(query) {
                    continue;
                }
                match &mut unread {
                    Unread::None => {}
                    Unread::Cells(counts) => {
                        if let Some(cells) = summary.whole_counts(query) {
                            counts(cells);
                            continue;
                        }
                    }
                    Unread::Pairs(_) => {
                        if summary.covers(query) {
                            tallied.push((key.to_vec(), summary.last_ns));
                            continue;
                        }
                    }
                }
                if names_addresses {
                    checked.push((key.to_vec(), summary.last_ns));
                } else {
                    candidates.push((key.to_vec(), summary.last_ns));
                }
            }
            if let Unread::Pairs(counts) = &mut unread
                && !tallied.is_empty()
            {
                // Opened and filtered on every core; counted in order. A
                // block without a usable tally (none: a store written
                // before tallies) is read instead.
                let opened: Vec<Option<Wanted>> = if tallied.len() >= PARALLEL_BLOCKS {
                    self.on_cores(&tallied, |rtx, part| {
                        let pairs = rtx.open_table(PAIRS).map_err(|e| self.fail(e))?;
                        part.iter()
                            .map(|(key, _)| self.read_wanted(&pairs, key, query))
                            .collect()
                    })?
                } else {
                    tallied
                        .iter()
                        .map(|(key, _)| self.read_wanted(&pairs, key, query))
                        .collect::<Result<_, _>>()?
                };
                for (opened, block) in opened.iter().zip(tallied.drain(..)) {
                    let said: Option<Vec<Said<'_>>> =
                        opened.as_ref().and_then(|(tally, wanted)| {
                            wanted.as_ref()?.iter().map(|i| tally.said(*i)).collect()
                        });
                    match said {
                        Some(said) => counts(&said),
                        None => candidates.push(block),
                    }
                }
            }
            // The newest `need` only: blocks newest first, and none opened
            // once `need` matches are as new as all it could hold.
            let need = limit
                .filter(|_| newest_first)
                .map(|l| l.saturating_sub(delivered));
            let mut found: Vec<(OffsetDateTime, v1::Flow)> = Vec::new();
            if need.is_none() && candidates.len() + checked.len() >= PARALLEL_BLOCKS {
                // Checked and read on every core in one pass.
                let all: Vec<(&[u8], bool)> = candidates
                    .iter()
                    .map(|(k, _)| (k.as_slice(), false))
                    .chain(checked.iter().map(|(k, _)| (k.as_slice(), true)))
                    .collect();
                found = self.on_cores(&all, |rtx, part| {
                    let blocks = rtx.open_table(BLOCKS).map_err(|e| self.fail(e))?;
                    let pairs = rtx.open_table(PAIRS).map_err(|e| self.fail(e))?;
                    let mut found = Vec::new();
                    for (key, check) in part {
                        if *check && self.holds_none(&pairs, key, query)? {
                            continue;
                        }
                        self.read_block(&blocks, key, query, &mut found)?;
                    }
                    Ok(found)
                })?;
                candidates.clear();
                checked.clear();
            }
            for (key, last_ns) in checked.drain(..) {
                if !self.holds_none(&pairs, &key, query)? {
                    candidates.push((key, last_ns));
                }
            }
            if need.is_some() {
                candidates.sort_by(|(_, a), (_, b)| b.cmp(a));
            }
            for (key, last_ns) in &candidates {
                if let Some(need) = need
                    && need > 0
                    && found.len() >= need
                {
                    let mut times: Vec<i128> = found
                        .iter()
                        .map(|(t, _)| t.unix_timestamp_nanos())
                        .collect();
                    times.sort_unstable_by(|a, b| b.cmp(a));
                    if times[need - 1] >= i128::from(*last_ns) {
                        break;
                    }
                }
                self.read_block(&blocks, key, query, &mut found)?;
            }
            found.sort_by(|(a, fa), (b, fb)| {
                (a, &fa.node, fa.sequence).cmp(&(b, &fb.node, fb.sequence))
            });
            delivered += found.len();
            if !each(found) {
                break;
            }
        }
        Ok(())
    }

    /// `work` on `blocks`, split across the machine's cores (opening and
    /// reading blocks is a query's cost), each part with its own read
    /// transaction: the blocks named are there in any later one, since only
    /// retention removes blocks, and whole minutes.
    fn on_cores<B: Sync, T: Send>(
        &self,
        blocks: &[B],
        work: impl Fn(&redb::ReadTransaction, &[B]) -> Result<Vec<T>, FlowError> + Sync,
    ) -> Result<Vec<T>, FlowError> {
        let workers = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(4);
        let chunk = blocks.len().div_ceil(workers).max(1);
        let parts: Vec<Result<Vec<T>, FlowError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = blocks
                .chunks(chunk)
                .map(|part| {
                    let work = &work;
                    scope.spawn(move || {
                        let rtx = self.db.begin_read().map_err(|e| self.fail(e))?;
                        work(&rtx, part)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(self.fail("a block reader panicked")))
                })
                .collect()
        });
        let mut out = Vec::new();
        for part in parts {
            out.extend(part?);
        }
        Ok(out)
    }

    /// Whether the tally of the block at `key` says no record of it
    /// matches `query` (false without a tally: the block is read).
    fn holds_none(
        &self,
        pairs: &impl ReadableTable<&'static [u8], &'static [u8]>,
        key: &[u8],
        query: &Query,
    ) -> Result<bool, FlowError> {
        Ok(matches!(
            self.read_wanted(pairs, key, query)?,
            Some((_, Some(wanted))) if wanted.is_empty()
        ))
    }

    /// The tally of the block at `key` (none in a store written before
    /// tallies), and which of its pairs `query` wants.
    fn read_wanted(
        &self,
        pairs: &impl ReadableTable<&'static [u8], &'static [u8]>,
        key: &[u8],
        query: &Query,
    ) -> Result<Option<Wanted>, FlowError> {
        let tally: Option<Pairs> = self.open_sealed(pairs, key, pairs_name(key))?;
        Ok(tally.map(|tally| {
            let wanted = tally.wanted(query);
            (tally, wanted)
        }))
    }

    /// Seals `value` under `name` and stores it at `key` in `table`.
    fn put(
        &self,
        table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        key: &[u8],
        name: String,
        value: &impl prost::Message,
    ) -> Result<(), FlowError> {
        let sealed = self
            .key
            .seal(&name, &value.encode_to_vec())
            .map_err(|e| self.fail(e))?;
        table
            .insert(key, sealed.as_slice())
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The sealed value at `key` in `table` (if there is one), opened with
    /// the store key under `name` and decoded: one that does not open or
    /// decode is [`FlowError::Corrupt`].
    fn open_sealed<M: prost::Message + Default>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        key: &[u8],
        name: String,
    ) -> Result<Option<M>, FlowError> {
        let Some(sealed) = table.get(key).map_err(|e| self.fail(e))? else {
            return Ok(None);
        };
        let corrupt = |message: String| FlowError::Corrupt {
            key: name.clone(),
            message,
        };
        let opened = self
            .key
            .open(&name, sealed.value())
            .map_err(|e| corrupt(e.to_string()))?;
        M::decode(opened.as_slice())
            .map(Some)
            .map_err(|e| corrupt(e.to_string()))
    }

    /// Opens the block at `key` and adds its records `query` wants to
    /// `found`.
    fn read_block(
        &self,
        blocks: &impl ReadableTable<&'static [u8], &'static [u8]>,
        key: &[u8],
        query: &Query,
        found: &mut Vec<(OffsetDateTime, v1::Flow)>,
    ) -> Result<(), FlowError> {
        let block: v1::FlowBatch =
            self.open_sealed(blocks, key, key_name(key))?
                .ok_or_else(|| FlowError::Corrupt {
                    key: key_name(key),
                    message: "its block is missing".into(),
                })?;
        for flow in block.flows {
            if query.matches_but_time(&flow)
                && let Some(at) = time_of(&flow)
                && query.within(at)
            {
                found.push((at, flow));
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        query: &Query,
        newest_first: bool,
        each: impl FnMut(Vec<(OffsetDateTime, v1::Flow)>) -> bool,
    ) -> Result<(), FlowError> {
        let limit = (newest_first && query.last > 0).then_some(query.last);
        self.walk(query, newest_first, limit, Unread::None, each)
    }

    /// The records `query` wants, oldest first: with `last`, the newest
    /// that many; otherwise at most [`MAX_RESULTS`]. Blocking.
    pub fn query(&self, query: &Query) -> Result<Vec<v1::Flow>, FlowError> {
        if query.last > 0 {
            let mut minutes: Vec<Vec<v1::Flow>> = Vec::new();
            let mut n = 0;
            self.scan(query, true, |found| {
                n += found.len();
                minutes.push(found.into_iter().map(|(_, f)| f).collect());
                n < query.last
            })?;
            let mut out: Vec<v1::Flow> = minutes.into_iter().rev().flatten().collect();
            let skip = out.len().saturating_sub(query.last);
            out.drain(..skip);
            return Ok(out);
        }
        let mut out = Vec::new();
        self.scan(query, false, |found| {
            out.extend(found.into_iter().map(|(_, f)| f));
            out.len() < MAX_RESULTS
        })?;
        out.truncate(MAX_RESULTS);
        Ok(out)
    }

    /// Connections `query` wants (their first records, `new` and `drop`),
    /// counted by (source segment, destination segment, verdict).
    /// Blocking.
    pub fn matrix(&self, query: &Query) -> Result<v1::FlowMatrixResponse, FlowError> {
        let mut matrix = Matrix::default();
        let mut whole: Vec<crate::summary::Cell> = Vec::new();
        self.walk(
            query,
            false,
            None,
            Unread::Cells(&mut |counted| whole.extend_from_slice(counted)),
            |found| {
                for (_, f) in found {
                    matrix.add(f);
                }
                true
            },
        )?;
        for c in whole {
            matrix.add_cell(c);
        }
        Ok(matrix.finish())
    }

    /// Devices in the inventory now.
    pub fn devices(&self) -> u64 {
        self.devices.load(Ordering::Relaxed)
    }

    /// The inventory's devices `q` wants, by address. Blocking.
    pub fn inventory(&self, q: &InventoryQuery) -> Result<v1::InventoryResponse, FlowError> {
        let rtx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = rtx
            .open_table(inventory::DEVICES)
            .map_err(|e| self.fail(e))?;
        let devices = inventory::list(&table, &self.key, q).map_err(|e| self.fail(e))?;
        Ok(v1::InventoryResponse {
            devices,
            known: self.devices(),
            refused_full: self.counts.inventory_full.load(Ordering::Relaxed),
        })
    }

    /// The `limit` highest-ranked sources (by connections) or talkers
    /// (address pairs, by bytes) among the records `query` wants: blocks
    /// the query's time range covers are counted from their pair tallies,
    /// the others record by record. Blocking.
    pub fn top(&self, query: &Query, by: Top, limit: usize) -> Result<v1::TopResponse, FlowError> {
        let ranking = std::cell::RefCell::new(Ranking::new(by));
        self.walk(
            query,
            false,
            None,
            Unread::Pairs(&mut |said| {
                let mut ranking = ranking.borrow_mut();
                for s in said {
                    ranking.add_said(*s);
                }
            }),
            |found| {
                let mut ranking = ranking.borrow_mut();
                for (at, f) in found {
                    ranking.add(at, &f);
                }
                true
            },
        )?;
        Ok(ranking.into_inner().finish(limit))
    }

    /// Drops the minutes retention no longer keeps: older than its age,
    /// then the oldest while there are more records than it allows.
    /// Returns the records dropped. Blocking.
    pub fn prune(&self, now: OffsetDateTime) -> Result<u64, FlowError> {
        let age = time::Duration::try_from(self.retention.max_age).unwrap_or(time::Duration::MAX);
        let cutoff = minute_of(now.checked_sub(age).unwrap_or(OffsetDateTime::UNIX_EPOCH));
        let wtx = self.db.begin_write().map_err(|e| self.fail(e))?;
        let mut dropped = 0;
        {
            let mut minutes = wtx.open_table(MINUTES).map_err(|e| self.fail(e))?;
            let mut blocks = wtx.open_table(BLOCKS).map_err(|e| self.fail(e))?;
            let mut summaries = wtx.open_table(SUMMARIES).map_err(|e| self.fail(e))?;
            let mut pairs = wtx.open_table(PAIRS).map_err(|e| self.fail(e))?;
            let mut all: Vec<(u64, u64)> = Vec::new();
            for entry in minutes.iter().map_err(|e| self.fail(e))? {
                let (m, n) = entry.map_err(|e| self.fail(e))?;
                all.push((m.value(), n.value()));
            }
            let mut total: u64 = all.iter().map(|(_, n)| n).sum();
            for (minute, n) in all {
                if minute >= cutoff && total <= self.retention.max_records {
                    break;
                }
                minutes.remove(minute).map_err(|e| self.fail(e))?;
                let lower = minute.to_be_bytes();
                let upper = (minute + 1).to_be_bytes();
                blocks
                    .retain_in(lower.as_slice()..upper.as_slice(), |_, _| false)
                    .map_err(|e| self.fail(e))?;
                summaries
                    .retain_in(lower.as_slice()..upper.as_slice(), |_, _| false)
                    .map_err(|e| self.fail(e))?;
                pairs
                    .retain_in(lower.as_slice()..upper.as_slice(), |_, _| false)
                    .map_err(|e| self.fail(e))?;
                total -= n;
                dropped += n;
            }
            let mut devices = wtx
                .open_table(inventory::DEVICES)
                .map_err(|e| self.fail(e))?;
            let cutoff = now.checked_sub(age).unwrap_or(OffsetDateTime::UNIX_EPOCH);
            let gone =
                inventory::prune(&mut devices, &self.key, cutoff).map_err(|e| self.fail(e))?;
            self.devices.fetch_sub(gone, Ordering::Relaxed);
        }
        wtx.commit().map_err(|e| self.fail(e))?;
        self.records.fetch_sub(dropped, Ordering::Relaxed);
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::flow;
    use time::format_description::well_known::Rfc3339;

    fn store(dir: &Path, retention: Retention) -> FlowStore {
        let key_file = dir.join("store.key");
        if !key_file.exists() {
            StoreKey::generate(&key_file).unwrap();
        }
        FlowStore::open(
            &dir.join("flows.redb"),
            StoreKey::load(&key_file).unwrap(),
            retention,
        )
        .unwrap()
    }

    fn at(t: &str) -> OffsetDateTime {
        OffsetDateTime::parse(t, &Rfc3339).unwrap()
    }

    fn batch(buffer: u64, flows: Vec<v1::Flow>) -> v1::FlowBatch {
        v1::FlowBatch {
            node: "gw-1".into(),
            flows,
            dropped: 0,
            buffer,
        }
    }

    #[test]
    fn a_batch_is_stored_once_its_bad_records_dropped_whole_and_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Retention::default());
        let mut bad = flow(
            "2026-12-02T11:00:01Z",
            "198.18.20.10",
            "198.18.41.10",
            22,
            "dropped",
            3,
        );
        bad.verdict = "perhaps".into();
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
                "2026-12-02T11:00:59Z",
                "198.18.20.11",
                "198.18.41.10",
                22,
                "dropped",
                2,
            ),
            bad,
            flow(
                "2026-12-02T11:01:02Z",
                "198.18.20.12",
                "198.18.41.10",
                443,
                "allowed",
                4,
            ),
        ];
        let now = at("2026-12-02T12:00:00Z");
        let got = s.ingest("gw-1", &batch(7, flows.clone()), now).unwrap();
        assert_eq!((got.accepted, got.refused), (3, 1));
        assert!(
            got.first_refusal.contains("record 3: verdict"),
            "{}",
            got.first_refusal
        );
        // Sent again (the answer was lost): nothing stored twice.
        let again = s.ingest("gw-1", &batch(7, flows.clone()), now).unwrap();
        assert_eq!((again.accepted, again.refused), (4, 0));
        assert_eq!(s.records(), 3);
        let all = s.query(&Query::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|f| f.node == "gw-1"));
        let ports: Vec<u32> = all.iter().map(|f| f.dport).collect();
        assert_eq!(ports, [443, 22, 443], "oldest first");
        // A new buffer (the agent lost its state): numbering starts again.
        let fresh = s
            .ingest("gw-1", &batch(8, flows[..1].to_vec()), now)
            .unwrap();
        assert_eq!(fresh.accepted, 1);
        assert_eq!(s.records(), 4);
        // The newest two (by time), and a filter.
        let last = s
            .query(&Query {
                last: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(last.iter().map(|f| f.sequence).collect::<Vec<_>>(), [2, 4]);
        let dropped = Query::parse(
            &v1::ObserveRequest {
                verdict: "dropped".into(),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert_eq!(s.query(&dropped).unwrap().len(), 1);
        let m = s.matrix(&Query::default()).unwrap();
        assert_eq!(m.flows, 4);
        assert!(
            m.cells
                .iter()
                .any(|c| c.verdict == "dropped" && c.flows == 1)
        );
    }

    #[test]
    fn the_newest_n_are_the_newest_whichever_blocks_hold_them() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Retention::default());
        let now = at("2026-12-02T12:00:00Z");
        // Three agents' blocks in one minute, their times interleaved.
        let mut all = Vec::new();
        for (n, node) in ["gw-1", "gw-2", "gw-3"].iter().enumerate() {
            let flows: Vec<v1::Flow> = (0..50u64)
                .map(|i| {
                    let second = (i * 3 + n as u64) % 60;
                    let verdict = if i % 4 == 0 { "dropped" } else { "allowed" };
                    flow(
                        &format!("2026-12-02T11:58:{second:02}.{i:03}Z"),
                        "198.18.20.10",
                        "198.18.41.10",
                        443,
                        verdict,
                        i + 1,
                    )
                })
                .collect();
            all.extend(flows.iter().map(|f| {
                (
                    time_of(f).unwrap(),
                    node.to_string(),
                    f.sequence,
                    f.verdict.clone(),
                )
            }));
            s.ingest(node, &batch(1, flows), now).unwrap();
        }
        for (last, verdict) in [(1, ""), (7, ""), (7, "dropped"), (60, "dropped"), (500, "")] {
            let q = Query::parse(
                &v1::ObserveRequest {
                    last,
                    verdict: verdict.into(),
                    ..Default::default()
                },
                now,
            )
            .unwrap();
            let got: Vec<(String, u64)> = s
                .query(&q)
                .unwrap()
                .into_iter()
                .map(|f| (f.node, f.sequence))
                .collect();
            let mut want: Vec<_> = all
                .iter()
                .filter(|(_, _, _, v)| verdict.is_empty() || v == verdict)
                .cloned()
                .collect();
            want.sort();
            let skip = want.len().saturating_sub(last as usize);
            let want: Vec<(String, u64)> = want[skip..]
                .iter()
                .map(|(_, n, q, _)| (n.clone(), *q))
                .collect();
            assert_eq!(got, want, "last {last} {verdict}");
        }
    }

    #[test]
    fn one_node_cannot_crowd_the_others_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(
            dir.path(),
            Retention {
                max_per_node_minute: 3,
                ..Retention::default()
            },
        );
        let now = at("2026-12-02T12:00:00Z");
        let many = |first: u64, minute: &str| -> Vec<v1::Flow> {
            (0..5)
                .map(|i| {
                    flow(
                        &format!("2026-12-02T11:{minute}:0{i}Z"),
                        "198.18.20.10",
                        "198.18.41.10",
                        443,
                        "allowed",
                        first + i,
                    )
                })
                .collect()
        };
        // A flood from a stolen key: three a minute stored, the rest counted.
        let got = s.ingest("rogue", &batch(1, many(1, "58")), now).unwrap();
        assert_eq!((got.accepted, got.over_quota), (3, 2));
        let got = s.ingest("rogue", &batch(1, many(6, "58")), now).unwrap();
        assert_eq!((got.accepted, got.over_quota), (0, 5));
        // Another node's records, and the next minute, are untouched.
        let got = s.ingest("gw-1", &batch(1, many(1, "58")), now).unwrap();
        assert_eq!((got.accepted, got.over_quota), (3, 2));
        let got = s.ingest("rogue", &batch(1, many(11, "59")), now).unwrap();
        assert_eq!(got.accepted, 3);
        assert_eq!(s.records(), 9);
    }

    #[test]
    fn retention_drops_whole_minutes_by_age_then_by_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(
            dir.path(),
            Retention {
                max_age: Duration::from_secs(3600),
                max_records: 2,
                ..Retention::default()
            },
        );
        let now = at("2026-12-02T12:00:00Z");
        let flows = vec![
            flow(
                "2026-12-02T10:00:00Z",
                "198.18.20.10",
                "198.18.41.10",
                443,
                "allowed",
                1,
            ),
            flow(
                "2026-12-02T11:30:00Z",
                "198.18.20.10",
                "198.18.41.10",
                443,
                "allowed",
                2,
            ),
            flow(
                "2026-12-02T11:40:00Z",
                "198.18.20.10",
                "198.18.41.10",
                443,
                "allowed",
                3,
            ),
            flow(
                "2026-12-02T11:50:00Z",
                "198.18.20.10",
                "198.18.41.10",
                443,
                "allowed",
                4,
            ),
        ];
        s.ingest("gw-1", &batch(1, flows), now).unwrap();
        // 10:00 is past the hour; of the three left, the oldest goes for
        // the count.
        assert_eq!(s.prune(now).unwrap(), 2);
        let left: Vec<u64> = s
            .query(&Query::default())
            .unwrap()
            .iter()
            .map(|f| f.sequence)
            .collect();
        assert_eq!(left, [3, 4]);
        assert_eq!(s.records(), 2);
        // A dropped block's summary and tally go with it.
        {
            let rtx = s.db.begin_read().unwrap();
            let len = |t| rtx.open_table(t).unwrap().len().unwrap();
            assert_eq!((len(BLOCKS), len(SUMMARIES), len(PAIRS)), (2, 2, 2));
        }
        // Reopened: the count is read back.
        drop(s);
        let s = store(dir.path(), Retention::default());
        assert_eq!(s.records(), 2);
    }

    /// A store holding one record, with `verdict`.
    fn one_record(dir: &Path, verdict: &str) -> FlowStore {
        let s = store(dir, Retention::default());
        let f = flow(
            "2026-12-02T11:00:00Z",
            "198.18.20.10",
            "198.18.41.10",
            443,
            verdict,
            1,
        );
        s.ingest("gw-1", &batch(1, vec![f]), at("2026-12-02T12:00:00Z"))
            .unwrap();
        s
    }

    /// Edits the sealed value of the first entry of `table` on disk.
    fn flip_a_bit_of_the_first(s: &FlowStore, table: TableDefinition<'_, &[u8], &[u8]>) {
        let wtx = s.db.begin_write().unwrap();
        {
            let mut t = wtx.open_table(table).unwrap();
            let (key, mut value) = {
                let (k, v) = t.first().unwrap().unwrap();
                (k.value().to_vec(), v.value().to_vec())
            };
            let last = value.len() - 1;
            value[last] ^= 1;
            t.insert(key.as_slice(), value.as_slice()).unwrap();
        }
        wtx.commit().unwrap();
    }

    #[test]
    fn a_block_edited_on_disk_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = one_record(dir.path(), "allowed");
        flip_a_bit_of_the_first(&s, BLOCKS);
        match s.query(&Query::default()) {
            Err(FlowError::Corrupt { message, .. }) => {
                assert!(message.contains("does not open"), "{message}")
            }
            other => panic!("expected the edited block refused, got {other:?}"),
        }
    }

    fn ip(a: &str) -> Vec<u8> {
        wardline_proto::convert::ip_to_bytes(a.parse().unwrap())
    }

    /// A connection that passed (new, then its close with its counts), or
    /// one dropped.
    fn connection(
        t: &str,
        src: &str,
        dst: &str,
        verdict: &str,
        bytes: u64,
        seq: u64,
    ) -> Vec<v1::Flow> {
        let first = flow(t, src, dst, 443, verdict, seq);
        if verdict == "dropped" {
            return vec![first];
        }
        let close = v1::Flow {
            kind: "close".into(),
            packets: 10,
            bytes,
            sequence: seq + 1,
            src_mac: Vec::new(),
            ..first.clone()
        };
        vec![
            v1::Flow {
                packets: 0,
                bytes: 0,
                ..first
            },
            close,
        ]
    }

    #[test]
    fn the_matrix_and_the_top_lists_count_connections_not_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Retention::default());
        let now = at("2026-12-02T12:00:00Z");
        let mut flows = Vec::new();
        flows.extend(connection(
            "2026-12-02T11:00:00Z",
            "198.18.20.10",
            "198.18.41.10",
            "allowed",
            5_000,
            1,
        ));
        flows.extend(connection(
            "2026-12-02T11:00:01Z",
            "198.18.20.10",
            "198.18.41.10",
            "allowed",
            7_000,
            3,
        ));
        flows.extend(connection(
            "2026-12-02T11:00:02Z",
            "198.18.20.20",
            "198.18.41.11",
            "allowed",
            90_000,
            5,
        ));
        // A scan from one workstation: dropped, to many.
        for i in 0..5u64 {
            let dst = format!("198.18.41.{}", 20 + i);
            flows.extend(connection(
                "2026-12-02T11:00:03Z",
                "198.18.20.66",
                &dst,
                "dropped",
                0,
                7 + i,
            ));
        }
        let got = s.ingest("gw-1", &batch(1, flows), now).unwrap();
        assert_eq!(got.accepted, 11);
        {
            // One minute, two verdicts: two blocks, so that a query for
            // either skips the other's by its summary.
            let rtx = s.db.begin_read().unwrap();
            assert_eq!(rtx.open_table(BLOCKS).unwrap().len().unwrap(), 2);
        }
        let seqs: Vec<u64> = s
            .query(&Query::default())
            .unwrap()
            .iter()
            .map(|f| f.sequence)
            .collect();
        assert_eq!(seqs, (1..=11).collect::<Vec<_>>(), "still in order");
        let q = |req: v1::ObserveRequest| Query::parse(&req, now).unwrap();
        let m = s.matrix(&q(v1::ObserveRequest::default())).unwrap();
        assert_eq!(m.flows, 8, "eight connections in eleven records");
        let by = |v: &str| {
            m.cells
                .iter()
                .filter(|c| c.verdict == v)
                .map(|c| c.flows)
                .sum::<u64>()
        };
        assert_eq!((by("allowed"), by("dropped")), (3, 5));
        // The same counted from the records (a filter that opens blocks).
        let m = s
            .matrix(&q(v1::ObserveRequest {
                to: "198.18.41.0/24".into(),
                ..Default::default()
            }))
            .unwrap();
        assert_eq!(m.flows, 8);

        let dropped = q(v1::ObserveRequest {
            verdict: "dropped".into(),
            ..Default::default()
        });
        let top = s.top(&dropped, Top::Sources, 10).unwrap();
        assert_eq!(top.entries.len(), 1);
        let e = &top.entries[0];
        assert_eq!(e.src, ip("198.18.20.66"));
        assert_eq!((e.connections, e.destinations), (5, 5));

        let talkers = s
            .top(&q(v1::ObserveRequest::default()), Top::Talkers, 2)
            .unwrap();
        let pairs: Vec<_> = talkers
            .entries
            .iter()
            .map(|e| (e.src.clone(), e.dst.clone(), e.connections, e.bytes))
            .collect();
        assert_eq!(
            pairs,
            [
                (ip("198.18.20.20"), ip("198.18.41.11"), 1, 90_000),
                (ip("198.18.20.10"), ip("198.18.41.10"), 2, 12_000),
            ],
            "ranked by bytes, the closes' counts summed"
        );
        let all = s
            .top(&q(v1::ObserveRequest::default()), Top::Sources, 1)
            .unwrap();
        assert_eq!(all.entries[0].src, ip("198.18.20.66"), "most connections");
        assert_eq!(Top::parse("bytes").unwrap_err().field, "by");
    }

    #[test]
    fn a_responders_tagged_frame_does_not_put_the_initiator_on_its_vlan() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Retention::default());
        let now = at("2026-12-02T12:00:00Z");
        // An untagged management host opens SSH to a pump on VLAN 30; the
        // close came from the pump's FIN, arriving tagged.
        let open = flow(
            "2026-12-02T11:00:00Z",
            "198.18.250.10",
            "198.18.30.11",
            22,
            "allowed",
            1,
        );
        let close = v1::Flow {
            kind: "close".into(),
            vlan: 30,
            ..flow(
                "2026-12-02T11:00:01Z",
                "198.18.250.10",
                "198.18.30.11",
                22,
                "allowed",
                2,
            )
        };
        s.ingest("gw-1", &batch(1, vec![open, close]), now).unwrap();
        let all = s
            .inventory(&InventoryQuery::parse(&v1::InventoryRequest::default(), now).unwrap())
            .unwrap();
        let mgmt = all
            .devices
            .iter()
            .find(|d| d.address == ip("198.18.250.10"))
            .unwrap();
        assert_eq!(mgmt.vlan, 0, "{mgmt:?}");
    }

    #[test]
    fn the_inventory_knows_each_endpoint_and_reports_new_devices() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Retention::default());
        let now = at("2026-12-02T12:00:00Z");
        let pump = |t: &str, mac: u8, seq: u64| v1::Flow {
            src_segment: "pumps".into(),
            vlan: 30,
            src_mac: vec![2, 0, 0, 0, 0x1e, mac],
            dst_mac: vec![2, 0, 0, 0, 0x29, 1],
            ..flow(t, "198.18.30.10", "198.18.41.10", 443, "allowed", seq)
        };
        let stranger = v1::Flow {
            src_segment: "world".into(),
            ..flow(
                "2026-12-02T11:00:05Z",
                "198.18.99.9",
                "198.18.41.10",
                22,
                "dropped",
                3,
            )
        };
        s.ingest(
            "gw-1",
            &batch(1, vec![pump("2026-12-02T11:00:00Z", 1, 1), stranger]),
            now,
        )
        .unwrap();
        let list = |req: v1::InventoryRequest| {
            s.inventory(&InventoryQuery::parse(&req, now).unwrap())
                .unwrap()
        };
        let all = list(v1::InventoryRequest::default());
        assert_eq!(all.known, 3);
        let by_addr = |r: &v1::InventoryResponse, a: &str| {
            r.devices
                .iter()
                .find(|d| d.address == ip(a))
                .cloned()
                .unwrap()
        };
        let p = by_addr(&all, "198.18.30.10");
        assert_eq!(
            (p.vlan, p.segment.as_str(), p.mac.as_slice()),
            (30, "pumps", &[2, 0, 0, 0, 0x1e, 1][..])
        );
        assert_eq!(p.peers, [ip("198.18.41.10")]);
        assert_eq!(p.ports.len(), 1);
        assert!(!p.ports[0].serves);
        assert_eq!(p.new_reason, "new MAC 02:00:00:00:1e:01 on VLAN 30");
        let ehr = by_addr(&all, "198.18.41.10");
        assert_eq!((ehr.connections, ehr.dropped), (2, 1));
        assert!(ehr.ports.iter().all(|p| p.serves));
        assert!(ehr.new_reason.is_empty(), "untagged, in a segment");
        assert_eq!(by_addr(&all, "198.18.99.9").new_reason, "in no segment");

        // The same pump again: nothing new. Another MAC on its address
        // (a device taking its place): reported.
        s.ingest(
            "gw-1",
            &batch(1, vec![pump("2026-12-02T11:10:00Z", 1, 4)]),
            now,
        )
        .unwrap();
        let p = by_addr(&list(v1::InventoryRequest::default()), "198.18.30.10");
        assert_eq!(p.new_at, "2026-12-02T11:00:00Z");
        s.ingest(
            "gw-1",
            &batch(1, vec![pump("2026-12-02T11:20:00Z", 7, 5)]),
            now,
        )
        .unwrap();
        let new = list(v1::InventoryRequest {
            new_only: true,
            segment: "pumps".into(),
            ..Default::default()
        });
        assert_eq!(new.devices.len(), 1);
        assert_eq!(
            new.devices[0].new_reason,
            "new MAC 02:00:00:00:1e:07 on VLAN 30"
        );
        assert_eq!(new.devices[0].last_seen, "2026-12-02T11:20:00Z");
        let narrowed = list(v1::InventoryRequest {
            address: "198.18.41.0/24".into(),
            ..Default::default()
        });
        assert_eq!(narrowed.devices.len(), 1);
        for (req, field) in [
            (
                v1::InventoryRequest {
                    address: "198.18.41.0/40".into(),
                    ..Default::default()
                },
                "address",
            ),
            (
                v1::InventoryRequest {
                    segment: "Pumps!".into(),
                    ..Default::default()
                },
                "segment",
            ),
            (
                v1::InventoryRequest {
                    since: "last week".into(),
                    ..Default::default()
                },
                "since",
            ),
        ] {
            assert_eq!(InventoryQuery::parse(&req, now).unwrap_err().field, field);
        }
    }

    /// A stolen agent key sending records from thousands of forged sources
    /// fills the inventory to its limit, and no further: the devices known
    /// stay, the rest are counted.
    #[test]
    fn forged_sources_cannot_push_known_devices_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(
            dir.path(),
            Retention {
                max_devices: 10,
                ..Retention::default()
            },
        );
        let now = at("2026-12-02T12:00:00Z");
        s.ingest(
            "gw-1",
            &batch(
                1,
                vec![flow(
                    "2026-12-02T11:00:00Z",
                    "198.18.20.10",
                    "198.18.41.10",
                    443,
                    "allowed",
                    1,
                )],
            ),
            now,
        )
        .unwrap();
        let forged: Vec<v1::Flow> = (0..500u64)
            .map(|i| {
                let src = format!("198.18.{}.{}", 100 + i / 250, i % 250 + 1);
                flow(
                    "2026-12-02T11:00:01Z",
                    &src,
                    "198.18.41.10",
                    22,
                    "dropped",
                    2 + i,
                )
            })
            .collect();
        s.ingest("rogue", &batch(1, forged), now).unwrap();
        let all = s.inventory(&InventoryQuery::default()).unwrap();
        assert_eq!(all.known, 10);
        assert_eq!(all.refused_full, 492);
        for a in ["198.18.20.10", "198.18.41.10"] {
            assert!(all.devices.iter().any(|d| d.address == ip(a)), "{a} kept");
        }
        // Retention forgets devices not seen for its age.
        let later = now + time::Duration::days(31);
        s.prune(later).unwrap();
        assert_eq!(s.devices(), 0);
    }

    /// Every record `q` wants, ranked one by one: what the pair tallies
    /// must give.
    fn ranked_from_records(s: &FlowStore, q: &Query, by: Top) -> v1::TopResponse {
        let mut ranking = Ranking::new(by);
        for f in s.query(q).unwrap() {
            ranking.add(time_of(&f).unwrap(), &f);
        }
        by_address(ranking.finish(usize::MAX))
    }

    fn by_address(mut top: v1::TopResponse) -> v1::TopResponse {
        top.entries
            .sort_by(|a, b| (&a.src, &a.dst).cmp(&(&b.src, &b.dst)));
        top
    }

    #[test]
    fn the_top_lists_from_pair_tallies_are_those_from_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Retention::default());
        let now = at("2026-12-02T12:00:00Z");
        let mut seq = 1;
        // Six minutes, three batches (blocks) each, at seconds 0-9, 20-29
        // and 40-49: a range from 11:02:25 leaves one block of that minute
        // out, reads one, and takes the rest from their tallies.
        for minute in 0..6u64 {
            for part in 0..3u64 {
                let mut flows = Vec::new();
                for i in 0..10u64 {
                    let t = format!("2026-12-02T11:0{minute}:{:02}Z", part * 20 + i);
                    let src = format!("198.18.20.{}", 10 + (i % 4));
                    let dst = format!("198.18.41.{}", 10 + (i + minute) % 3);
                    let verdict = ["allowed", "dropped", "audited"][(i % 3) as usize];
                    let mut made = connection(&t, &src, &dst, verdict, 100 * i, seq);
                    for f in made.iter_mut() {
                        f.sport = 40_000 + seq as u32;
                        if i % 5 == 4 {
                            f.dport = 22;
                        }
                    }
                    seq += made.len() as u64;
                    flows.extend(made);
                }
                s.ingest("gw-1", &batch(1, flows), now).unwrap();
            }
        }
        let q = |req: v1::ObserveRequest| Query::parse(&req, now).unwrap();
        let queries = [
            v1::ObserveRequest::default(),
            v1::ObserveRequest {
                since: "2026-12-02T11:02:25Z".into(),
                ..Default::default()
            },
            v1::ObserveRequest {
                since: "2026-12-02T11:01:05Z".into(),
                until: "2026-12-02T11:04:45Z".into(),
                verdict: "dropped".into(),
                ..Default::default()
            },
            v1::ObserveRequest {
                to: "198.18.41.11/32".into(),
                port: 22,
                ..Default::default()
            },
            v1::ObserveRequest {
                from: "198.18.20.12".into(),
                node: "gw-1".into(),
                ..Default::default()
            },
        ];
        for req in &queries {
            for by in [Top::Sources, Top::Talkers] {
                let query = q(req.clone());
                let want = ranked_from_records(&s, &query, by);
                assert!(want.flows > 0, "{req:?} finds records");
                let got = by_address(s.top(&query, by, usize::MAX).unwrap());
                assert_eq!(got, want, "{req:?} by {by:?}");
            }
        }
        // A store written before blocks had tallies: its blocks are read.
        let before = by_address(s.top(&q(queries[1].clone()), Top::Sources, 100).unwrap());
        {
            let wtx = s.db.begin_write().unwrap();
            wtx.open_table(PAIRS).unwrap().retain(|_, _| false).unwrap();
            wtx.commit().unwrap();
        }
        let after = by_address(s.top(&q(queries[1].clone()), Top::Sources, 100).unwrap());
        assert_eq!(after, before);
    }

    #[test]
    fn a_tally_edited_on_disk_is_refused_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let s = one_record(dir.path(), "dropped");
        flip_a_bit_of_the_first(&s, PAIRS);
        match s.top(&Query::default(), Top::Sources, 10) {
            Err(FlowError::Corrupt { key, .. }) => assert!(key.starts_with("flow-pairs/"), "{key}"),
            other => panic!("an edited tally was counted: {other:?}"),
        }
        // The records themselves are untouched.
        assert_eq!(s.query(&Query::default()).unwrap().len(), 1);
    }

    #[test]
    fn a_minute_of_many_blocks_is_read_on_every_core_with_the_same_answer() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), Retention::default());
        let now = at("2026-12-02T12:00:00Z");
        for b in 0..(PARALLEL_BLOCKS as u64 * 3) {
            let flows = (0..10u64)
                .map(|i| {
                    let verdict = if i % 5 == 0 { "dropped" } else { "allowed" };
                    let dst = format!("198.18.41.{}", i + 1);
                    flow(
                        "2026-12-02T11:00:00Z",
                        "198.18.20.10",
                        &dst,
                        443,
                        verdict,
                        b * 10 + i + 1,
                    )
                })
                .collect();
            s.ingest("gw-1", &batch(1, flows), now).unwrap();
        }
        let q = |req: v1::ObserveRequest| Query::parse(&req, now).unwrap();
        let dropped = s
            .query(&q(v1::ObserveRequest {
                verdict: "dropped".into(),
                ..Default::default()
            }))
            .unwrap();
        assert_eq!(dropped.len(), PARALLEL_BLOCKS * 3 * 2);
        let seqs: Vec<u64> = dropped.iter().map(|f| f.sequence).collect();
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "in order, as one reader gives them");
        let last = s
            .query(&q(v1::ObserveRequest {
                verdict: "dropped".into(),
                last: 3,
                ..Default::default()
            }))
            .unwrap();
        assert_eq!(last.len(), 3);
        // The tallies of a minute of many blocks are opened on every core.
        for by in [Top::Sources, Top::Talkers] {
            let query = q(v1::ObserveRequest::default());
            let got = by_address(s.top(&query, by, usize::MAX).unwrap());
            assert_eq!(got.flows, PARALLEL_BLOCKS as u64 * 3 * 10);
            assert_eq!(got, ranked_from_records(&s, &query, by));
        }
    }
}
