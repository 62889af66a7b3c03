//! Flow records waiting for the control plane (`docs/agent.md`): on disk
//! in the node's state directory, within a bound, sent in order and
//! removed once the control plane has stored them.
//!
//! Records are numbered from 1 as they are judged, and kept in segment
//! files of at most one batch each (`<first number>.flows`, each record
//! length-delimited). When the bound is reached, new records are dropped
//! and counted; their numbers are still used, so the gaps the control plane
//! sees are exactly the records lost. The directory's `state` file holds
//! the buffer's random id (numbering starts again when it changes), the
//! next number and the count dropped, so a restarted agent goes on where
//! it stopped.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use prost::Message as _;
use wardline_proto::v1;

/// Records per segment: one batch.
pub const SEGMENT_RECORDS: u64 = 1_000;
/// Bytes per segment: a batch must fit the control plane's 256 KiB limit
/// on an agent's request.
const SEGMENT_BYTES: u64 = 192 << 10;
const STATE_FILE: &str = "state";

/// One segment's records, to send.
pub struct Segment {
    pub path: PathBuf,
    pub flows: Vec<v1::Flow>,
}

struct Open {
    path: PathBuf,
    file: BufWriter<File>,
    records: u64,
    bytes: u64,
}

pub struct Spool {
    dir: PathBuf,
    limit: u64,
    /// The buffer's id, reported with every batch.
    pub buffer: u64,
    next: u64,
    dropped: u64,
    /// Bytes of every segment, the open one included.
    bytes: u64,
    /// Closed segments, oldest first, with their sizes.
    closed: VecDeque<(PathBuf, u64)>,
    open: Option<Open>,
    state_written: (u64, u64),
    /// When `state` was last written by [`Spool::flush`].
    state_flushed: std::time::Instant,
}

/// How often a flush may write the `state` file (closing or removing a
/// segment always does).
const STATE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn segment_name(first: u64) -> String {
    format!("{first:020}.flows")
}

/// Every record in a segment file (a torn last record, from a crash, is
/// left out).
fn read_segment(path: &Path) -> std::io::Result<Vec<v1::Flow>> {
    let bytes = std::fs::read(path)?;
    let mut buf = bytes.as_slice();
    let mut out = Vec::new();
    while !buf.is_empty() {
        match v1::Flow::decode_length_delimited(&mut buf) {
            Ok(f) => out.push(f),
            Err(_) => break,
        }
    }
    Ok(out)
}

impl Spool {
    /// Opens the spool in `dir` (0700), bounded to `limit` bytes.
    pub fn open(dir: &Path, limit: u64) -> std::io::Result<Spool> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        let state = std::fs::read_to_string(dir.join(STATE_FILE)).ok();
        let words: Vec<u64> = state
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let (buffer, mut next, dropped) = match words.as_slice() {
            [buffer, next, dropped] if *buffer != 0 => (*buffer, *next, *dropped),
            _ => (rand::random::<u64>().max(1), 1, 0),
        };
        let mut segments: Vec<(u64, PathBuf, u64)> = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(first) = name
                .strip_suffix(".flows")
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            segments.push((first, entry.path(), size));
        }
        segments.sort();
        // Numbers go on past anything already kept.
        if let Some((_, path, _)) = segments.last()
            && let Some(last) = read_segment(path)?.last()
        {
            next = next.max(last.sequence + 1);
        }
        let bytes = segments.iter().map(|(_, _, s)| s).sum();
        let mut spool = Spool {
            dir: dir.to_owned(),
            limit,
            buffer,
            next,
            dropped,
            bytes,
            closed: segments.into_iter().map(|(_, p, s)| (p, s)).collect(),
            open: None,
            state_written: (0, 0),
            state_flushed: std::time::Instant::now(),
        };
        spool.write_state()?;
        Ok(spool)
    }

    fn write_state(&mut self) -> std::io::Result<()> {
        if self.state_written == (self.next, self.dropped) {
            return Ok(());
        }
        crate::managed::write_private(
            &self.dir,
            STATE_FILE,
            format!("{} {} {}\n", self.buffer, self.next, self.dropped).as_bytes(),
        )?;
        self.state_written = (self.next, self.dropped);
        Ok(())
    }

    /// Records dropped since the buffer was made (the bound reached).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes waiting on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The bound, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Numbers `flow` and keeps it, or counts it dropped when the bound is
    /// reached.
    pub fn push(&mut self, mut flow: v1::Flow) -> std::io::Result<()> {
        flow.sequence = self.next;
        self.next += 1;
        let encoded = flow.encode_length_delimited_to_vec();
        let len = encoded.len() as u64;
        if self.bytes + len > self.limit {
            self.dropped += 1;
            return Ok(());
        }
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.records >= SEGMENT_RECORDS || o.bytes + len > SEGMENT_BYTES)
        {
            self.close()?;
        }
        if self.open.is_none() {
            let path = self.dir.join(segment_name(flow.sequence));
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            self.open = Some(Open {
                path,
                file: BufWriter::new(file),
                records: 0,
                bytes: 0,
            });
        }
        if let Some(open) = self.open.as_mut() {
            open.file.write_all(&encoded)?;
            open.records += 1;
            open.bytes += len;
        }
        self.bytes += len;
        Ok(())
    }

    /// Writes what was pushed to the files (called after each read of the
    /// kernel's events), and the `state` file at most once a second: it is
    /// synced, and a flood must not cost a sync per read. The next number
    /// is safe without it, since it is written whenever a segment closes
    /// or goes (a restart takes it from the newest segment otherwise).
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(open) = self.open.as_mut() {
            open.file.flush()?;
        }
        if self.state_flushed.elapsed() >= STATE_EVERY {
            self.state_flushed = std::time::Instant::now();
            self.write_state()?;
        }
        Ok(())
    }

    /// Ends the open segment: it is sent next once older ones are.
    fn close(&mut self) -> std::io::Result<()> {
        if let Some(open) = self.open.take() {
            let file = open
                .file
                .into_inner()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            file.sync_all()?;
            self.closed.push_back((open.path, open.bytes));
        }
        self.write_state()
    }

    /// The oldest records waiting, one segment; the open segment is closed
    /// to be sent when nothing older waits. `None`: nothing waits.
    pub fn next_segment(&mut self) -> std::io::Result<Option<Segment>> {
        if self.closed.is_empty() && self.open.as_ref().is_some_and(|o| o.records > 0) {
            self.close()?;
        }
        let Some((path, _)) = self.closed.front() else {
            return Ok(None);
        };
        let flows = read_segment(path)?;
        Ok(Some(Segment {
            path: path.clone(),
            flows,
        }))
    }

    /// The control plane stored `segment`: it is removed, once the `state`
    /// file holds a next number past its records.
    pub fn sent(&mut self, segment: &Segment) -> std::io::Result<()> {
        self.write_state()?;
        if let Some(i) = self.closed.iter().position(|(p, _)| *p == segment.path) {
            let (path, size) = self.closed.remove(i).unwrap_or_default();
            self.bytes = self.bytes.saturating_sub(size);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for Spool {
    /// On the way out (the agent stopping): what was pushed, and the
    /// counts, are written.
    fn drop(&mut self) {
        if let Some(open) = self.open.as_mut() {
            let _ = open.file.flush();
        }
        let _ = self.write_state();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(port: u32) -> v1::Flow {
        v1::Flow {
            time: "2026-12-02T12:00:00Z".into(),
            kind: "new".into(),
            dport: port,
            ..Default::default()
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "wardline-spool-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn records_are_numbered_kept_in_order_and_removed_once_sent() {
        let dir = scratch("order");
        let mut s = Spool::open(&dir, 64 << 20).unwrap();
        for port in 0..2_500 {
            s.push(record(port)).unwrap();
        }
        s.flush().unwrap();
        let mut seen = Vec::new();
        while let Some(seg) = s.next_segment().unwrap() {
            assert!(seg.flows.len() as u64 <= SEGMENT_RECORDS);
            seen.extend(seg.flows.iter().map(|f| (f.sequence, f.dport)));
            s.sent(&seg).unwrap();
        }
        assert_eq!(seen.len(), 2_500);
        assert!(
            seen.iter()
                .enumerate()
                .all(|(i, (seq, port))| *seq == i as u64 + 1 && *port == i as u32)
        );
        assert_eq!(s.bytes(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_crash_after_everything_was_sent_does_not_reuse_numbers() {
        let dir = scratch("crash");
        let mut s = Spool::open(&dir, 64 << 20).unwrap();
        for port in 0..10 {
            s.push(record(port)).unwrap();
        }
        s.flush().unwrap();
        let seg = s.next_segment().unwrap().unwrap();
        s.sent(&seg).unwrap();
        // Killed: no Drop, nothing left on disk but the state file.
        std::mem::forget(s);
        let mut s = Spool::open(&dir, 64 << 20).unwrap();
        s.push(record(10)).unwrap();
        s.flush().unwrap();
        let seg = s.next_segment().unwrap().unwrap();
        assert_eq!(
            seg.flows[0].sequence, 11,
            "the control plane would take 1..10 as sent again"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn past_the_bound_records_are_dropped_counted_and_their_numbers_used() {
        let dir = scratch("bound");
        let one = record(1).encode_length_delimited_to_vec().len() as u64 + 4;
        let mut s = Spool::open(&dir, one * 10).unwrap();
        for port in 0..25 {
            s.push(record(port)).unwrap();
        }
        s.flush().unwrap();
        assert!(s.dropped() >= 15, "{}", s.dropped());
        let kept = s.dropped();
        let seg = s.next_segment().unwrap().unwrap();
        assert_eq!(seg.flows.len() as u64 + kept, 25);
        // Restarted: the same buffer, the count and the numbering go on.
        let buffer = s.buffer;
        drop(s);
        let mut s = Spool::open(&dir, one * 10).unwrap();
        assert_eq!((s.buffer, s.dropped()), (buffer, kept));
        let seg = s.next_segment().unwrap().unwrap();
        s.sent(&seg).unwrap();
        s.push(record(99)).unwrap();
        s.flush().unwrap();
        let seg = s.next_segment().unwrap().unwrap();
        assert_eq!(seg.flows[0].sequence, 26);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
