//! The embedded backend: one `redb` file on the control plane's disk.
//!
//! The file holds two tables: `kv` maps each key to its create revision,
//! mod revision and value, and `meta` holds the store's revision and the
//! file's format version. Every write transaction is one `redb`
//! transaction committed with immediate durability (fsync), so a write the
//! caller saw succeed survives a crash or restart, and a failed or
//! interrupted one leaves nothing behind.
//!
//! Watching is in-process: committed changes are broadcast to the watchers
//! of this [`EmbeddedStore`]. The store keeps no history of past changes,
//! only the current state, so a watch after an old revision first replays
//! the current keys under the prefix whose `mod_revision` is newer, as puts
//! in revision order; keys deleted since then are not reported as deletes
//! (their history is gone). A caller that needs to see such deletes reads
//! the prefix with [`Store::range`] and watches after the revision it read
//! at, which is the pattern the control plane uses anyway.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::stream;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::{
    Compare, KeyValue, Op, Store, StoreError, TxnOutcome, WatchEvent, WatchStream, validate_key,
    validate_txn,
};

/// Key to (create_revision, mod_revision, value).
const KV: TableDefinition<'_, &str, (u64, u64, &[u8])> = TableDefinition::new("kv");
/// Store-wide counters.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// `meta` key of the store's revision.
const META_REVISION: &str = "revision";
/// `meta` key of the file's format version.
const META_FORMAT: &str = "format";
/// The format this code writes and reads.
const FORMAT_VERSION: u64 = 1;
/// The revision of a fresh store, as in etcd.
const INITIAL_REVISION: u64 = 1;
/// The changes of one committed transaction, as broadcast to watchers.
type Batch = Arc<[WatchEvent]>;

/// How many committed transactions a watcher may be behind before it is
/// told it lagged, unless [`EmbeddedOptions`] says otherwise.
const WATCH_BUFFER: usize = 4096;

/// Settings of an [`EmbeddedStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// How many committed transactions a watcher may fall behind before
    /// its stream fails with [`StoreError::WatchLagged`].
    pub watch_buffer: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        Self {
            watch_buffer: WATCH_BUFFER,
        }
    }
}

/// A [`Store`] in one local `redb` file. Cheap to clone; clones share the
/// file and the watchers.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Held from the start of a write transaction until its changes are
    /// broadcast, and while a watcher subscribes and reads its snapshot, so
    /// a watcher sees every commit exactly once: either in its snapshot or
    /// live.
    commit_lock: Mutex<()>,
    events: broadcast::Sender<Batch>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the store in `path`, creating the file and its parent folders
    /// if they do not exist. The file must not be open in another process
    /// or by another `EmbeddedStore` of this one.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, EmbeddedOptions::default()).await
    }

    /// Opens the store in `path` with the given settings.
    pub async fn open_with(path: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let task_path = path.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(task_path, options))
            .await
            .map_err(|e| {
                StoreError::Backend(format!(
                    "open embedded store {}: the opening task failed: {e}",
                    path.display()
                ))
            })?
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn open_blocking(path: PathBuf, options: EmbeddedOptions) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Io {
                operation: "create the embedded store's folder",
                path: parent.to_owned(),
                source,
            })?;
        }
        let fail = |what: &str, err: redb::Error| {
            StoreError::Backend(format!(
                "open embedded store {}: {what}: {err}",
                path.display()
            ))
        };
        let db = Database::create(&path).map_err(|e| fail("open the file", e.into()))?;
        // The control plane's alone, whatever the umask.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| StoreError::Io {
                    operation: "make the embedded store's file private (0600)",
                    path: path.clone(),
                    source,
                },
            )?;
        }
        let wtx = db
            .begin_write()
            .map_err(|e| fail("begin the set-up transaction", e.into()))?;
        let revision = {
            wtx.open_table(KV)
                .map_err(|e| fail("open table kv", e.into()))?;
            let mut meta = wtx
                .open_table(META)
                .map_err(|e| fail("open table meta", e.into()))?;
            let format = meta
                .get(META_FORMAT)
                .map_err(|e| fail("read the format version", e.into()))?
                .map(|g| g.value());
            match format {
                Some(FORMAT_VERSION) => {}
                Some(other) => {
                    return Err(StoreError::Backend(format!(
                        "open embedded store {}: the file has format version {other}, this \
                         version of Wardline reads format {FORMAT_VERSION}",
                        path.display()
                    )));
                }
                None => {
                    meta.insert(META_FORMAT, FORMAT_VERSION)
                        .map_err(|e| fail("write the format version", e.into()))?;
                }
            }
            let revision = meta
                .get(META_REVISION)
                .map_err(|e| fail("read the revision", e.into()))?
                .map(|g| g.value());
            match revision {
                Some(revision) => revision,
                None => {
                    meta.insert(META_REVISION, INITIAL_REVISION)
                        .map_err(|e| fail("write the initial revision", e.into()))?;
                    INITIAL_REVISION
                }
            }
        };
        wtx.commit()
            .map_err(|e| fail("commit the set-up transaction", e.into()))?;
        tracing::info!(path = %path.display(), revision, "opened embedded store");
        let (events, _) = broadcast::channel(options.watch_buffer.max(1));
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                commit_lock: Mutex::new(()),
                events,
            }),
        })
    }

    /// Runs `f` on the blocking pool with the store; `operation` names the
    /// call in the error if the task itself fails.
    async fn blocking<T, F>(&self, operation: String, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Backend(format!(
                "embedded store {}: {operation}: the task failed: {e}",
                self.inner.path.display()
            ))),
        }
    }
}

impl Inner {
    /// An error of `operation` (which names the key or prefix) from redb.
    fn fail(&self, operation: &str, err: impl Into<redb::Error>) -> StoreError {
        StoreError::Backend(format!(
            "embedded store {}: {operation}: {}",
            self.path.display(),
            err.into()
        ))
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let operation = format!("get key {key:?}");
        let rtx = self.db.begin_read().map_err(|e| self.fail(&operation, e))?;
        let table = rtx.open_table(KV).map_err(|e| self.fail(&operation, e))?;
        let found = table.get(key).map_err(|e| self.fail(&operation, e))?;
        Ok(found.map(|guard| {
            let (create_revision, mod_revision, value) = guard.value();
            KeyValue {
                key: key.to_owned(),
                value: value.to_vec(),
                create_revision,
                mod_revision,
            }
        }))
    }

    /// The keys under `prefix` and the revision they were read at, from
    /// one read transaction.
    fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let operation = format!("range prefix {prefix:?}");
        let rtx = self.db.begin_read().map_err(|e| self.fail(&operation, e))?;
        let meta = rtx.open_table(META).map_err(|e| self.fail(&operation, e))?;
        let revision = read_revision(&meta).map_err(|e| self.fail(&operation, e))?;
        let table = rtx.open_table(KV).map_err(|e| self.fail(&operation, e))?;
        let mut out = Vec::new();
        for entry in table
            .range(prefix..)
            .map_err(|e| self.fail(&operation, e))?
        {
            let (key, value) = entry.map_err(|e| self.fail(&operation, e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            let (create_revision, mod_revision, value) = value.value();
            out.push(KeyValue {
                key: key.to_owned(),
                value: value.to_vec(),
                create_revision,
                mod_revision,
            });
        }
        Ok((out, revision))
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let operation = "read the revision";
        let rtx = self.db.begin_read().map_err(|e| self.fail(operation, e))?;
        let meta = rtx.open_table(META).map_err(|e| self.fail(operation, e))?;
        read_revision(&meta).map_err(|e| self.fail(operation, e))
    }

    fn txn(&self, compares: &[Compare], ops: Vec<Op>) -> Result<TxnOutcome, StoreError> {
        let _commit = self
            .commit_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let wtx = self
            .db
            .begin_write()
            .map_err(|e| self.fail("begin a write transaction", e))?;
        let (outcome, events) = 'apply: {
            let mut meta = wtx
                .open_table(META)
                .map_err(|e| self.fail("transaction: open table meta", e))?;
            let mut table = wtx
                .open_table(KV)
                .map_err(|e| self.fail("transaction: open table kv", e))?;
            let current =
                read_revision(&meta).map_err(|e| self.fail("transaction: read the revision", e))?;
            for compare in compares {
                let Compare::ModRevision { key, revision } = compare;
                let actual = table
                    .get(key.as_str())
                    .map_err(|e| self.fail(&format!("transaction: compare key {key:?}"), e))?
                    .map_or(0, |guard| guard.value().1);
                if actual != *revision {
                    tracing::debug!(
                        key = %key,
                        expected = revision,
                        actual,
                        "embedded store transaction compare failed"
                    );
                    break 'apply (
                        TxnOutcome {
                            succeeded: false,
                            revision: current,
                        },
                        Vec::new(),
                    );
                }
            }
            let next = current + 1;
            let mut events = Vec::with_capacity(ops.len());
            for op in ops {
                match op {
                    Op::Put { key, value } => {
                        let operation = format!("transaction: put key {key:?}");
                        let create_revision = table
                            .get(key.as_str())
                            .map_err(|e| self.fail(&operation, e))?
                            .map_or(next, |guard| guard.value().0);
                        table
                            .insert(key.as_str(), (create_revision, next, value.as_slice()))
                            .map_err(|e| self.fail(&operation, e))?;
                        events.push(WatchEvent::Put(KeyValue {
                            key,
                            value,
                            create_revision,
                            mod_revision: next,
                        }));
                    }
                    Op::Delete { key } => {
                        let removed = table
                            .remove(key.as_str())
                            .map_err(|e| self.fail(&format!("transaction: delete key {key:?}"), e))?
                            .is_some();
                        if removed {
                            events.push(WatchEvent::Delete {
                                key,
                                mod_revision: next,
                            });
                        }
                    }
                }
            }
            if events.is_empty() {
                (
                    TxnOutcome {
                        succeeded: true,
                        revision: current,
                    },
                    events,
                )
            } else {
                meta.insert(META_REVISION, next)
                    .map_err(|e| self.fail("transaction: write the revision", e))?;
                (
                    TxnOutcome {
                        succeeded: true,
                        revision: next,
                    },
                    events,
                )
            }
        };
        if events.is_empty() {
            // A compare failed or nothing changed: no commit, no revision.
            wtx.abort()
                .map_err(|e| self.fail("abort a transaction that changed nothing", e))?;
            return Ok(outcome);
        }
        wtx.commit()
            .map_err(|e| self.fail("commit a transaction", e))?;
        tracing::trace!(
            revision = outcome.revision,
            changes = events.len(),
            "embedded store committed"
        );
        // No receivers is not an error: nobody is watching.
        let _ = self.events.send(events.into());
        Ok(outcome)
    }

    /// Subscribes to live changes and reads the keys under `prefix` changed
    /// after `after_revision`, with no commit in between.
    fn subscribe(
        &self,
        prefix: &str,
        after_revision: u64,
    ) -> Result<(broadcast::Receiver<Batch>, Vec<KeyValue>), StoreError> {
        let _commit = self
            .commit_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let receiver = self.events.subscribe();
        let (mut current, _) = self.range(prefix)?;
        current.retain(|kv| kv.mod_revision > after_revision);
        current.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
        Ok((receiver, current))
    }
}

fn read_revision(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64, redb::StorageError> {
    Ok(meta
        .get(META_REVISION)?
        .map_or(INITIAL_REVISION, |guard| guard.value()))
}

/// The state of one embedded watch stream.
struct Watcher {
    prefix: String,
    after_revision: u64,
    pending: VecDeque<WatchEvent>,
    /// `None` once the stream has ended.
    receiver: Option<broadcast::Receiver<Batch>>,
}

impl Watcher {
    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            let receiver = self.receiver.as_mut()?;
            match receiver.recv().await {
                Ok(batch) => {
                    self.pending.extend(
                        batch
                            .iter()
                            .filter(|e| {
                                e.key().starts_with(&self.prefix)
                                    && e.mod_revision() > self.after_revision
                            })
                            .cloned(),
                    );
                }
                Err(broadcast::error::RecvError::Closed) => {
                    tracing::debug!(prefix = %self.prefix, "embedded store dropped, watch ends");
                    return None;
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(prefix = %self.prefix, missed, "embedded store watcher lagged");
                    self.receiver = None;
                    let err = StoreError::WatchLagged {
                        prefix: self.prefix.clone(),
                        missed,
                    };
                    return Some((Err(err), self));
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key("get", key)?;
        let owned = key.to_owned();
        self.blocking(format!("get key {key:?}"), move |inner| inner.get(&owned))
            .await
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let owned = prefix.to_owned();
        self.blocking(format!("range prefix {prefix:?}"), move |inner| {
            inner.range(&owned).map(|(kvs, _)| kvs)
        })
        .await
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome, StoreError> {
        validate_txn(&compares, &ops)?;
        self.blocking("transaction".to_owned(), move |inner| {
            inner.txn(&compares, ops)
        })
        .await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.blocking("read the revision".to_owned(), Inner::revision)
            .await
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        let owned = prefix.to_owned();
        let (receiver, replay) = self
            .blocking(format!("watch prefix {prefix:?}"), move |inner| {
                inner.subscribe(&owned, after_revision)
            })
            .await?;
        tracing::debug!(
            prefix,
            after_revision,
            replayed = replay.len(),
            "embedded store watch started"
        );
        let watcher = Watcher {
            prefix: prefix.to_owned(),
            after_revision,
            pending: replay.into_iter().map(WatchEvent::Put).collect(),
            receiver: Some(receiver),
        };
        Ok(Box::pin(stream::unfold(watcher, Watcher::next)))
    }
}
