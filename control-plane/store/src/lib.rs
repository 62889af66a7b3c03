//! The control plane's storage layer: a small, etcd-shaped key-value store.
//!
//! Everything the control plane persists (policies, agent records, the
//! revision agents are at) goes through the [`Store`] trait, which has two
//! backends with the same semantics:
//!
//! - [`embedded::EmbeddedStore`]: one `redb` file on the control plane's own
//!   disk, for a single control-plane instance.
//! - [`etcd::EtcdStore`]: an etcd v3 cluster, for several control-plane
//!   instances sharing one state, reached only over TLS with a client
//!   certificate ([`EtcdTls`]).
//!
//! The model is etcd's: the store has one global revision, a counter that
//! grows by one for every transaction that changes something. Every key
//! remembers the revision it was created at and the revision it was last
//! modified at. Writes happen only through [`Store::txn`], which applies all
//! of its operations or none, and only if every [`Compare`] holds: this is
//! how callers do optimistic concurrency (read a key, remember its
//! `mod_revision`, write it back on the condition that it is unchanged).
//! [`Store::watch`] streams the changes under a prefix after a revision, so
//! a reader can take a consistent snapshot with [`Store::range`] and follow
//! it from there without missing a change.
//!
//! Rules both backends enforce the same way:
//!
//! - Keys are non-empty UTF-8 strings, ordered by their bytes. Callers
//!   namespace them (`/wardline/policies/...`).
//! - A fresh store is at revision 1; the first write makes revision 2.
//! - A transaction names each key at most once in its operations and has at
//!   most [`MAX_TXN_OPS`] operations and compares.
//! - A transaction whose operations change nothing (no operations, or only
//!   deletes of absent keys) succeeds without a new revision.
//! - All changes of one transaction share its revision.
//!
//! This crate owns storage only: it knows keys and bytes, never what the
//! records mean (revisions, nodes and agents are the server's), and it must
//! not depend on the server, the PKI or the wire protocol. It uses
//! `wardline-tls` only to check the etcd client's certificate files.
#![forbid(unsafe_code)]

pub mod embedded;
pub mod encrypted;
pub mod etcd;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;

use futures_util::Stream;

/// The largest number of operations (and, separately, of compares) in one
/// transaction. It is etcd's default `--max-txn-ops`; the embedded store
/// holds to it as well so that code tested on one backend works on the other.
pub const MAX_TXN_OPS: usize = 128;

/// A key with its value and the revisions that created and last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value, opaque to the store.
    pub value: Vec<u8>,
    /// The store revision at which the key was created (again, if it was
    /// deleted and put back).
    pub create_revision: u64,
    /// The store revision of the last put of this key.
    pub mod_revision: u64,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod_revision equals this (0: the key is absent).
    ModRevision {
        /// The key compared.
        key: String,
        /// The expected `mod_revision`; 0 expects the key to be absent.
        revision: u64,
    },
}

impl Compare {
    /// Holds when `key` was last modified at `revision`, that is when nobody
    /// wrote it since it was read at that revision.
    pub fn mod_revision(key: impl Into<String>, revision: u64) -> Self {
        Self::ModRevision {
            key: key.into(),
            revision,
        }
    }

    /// Holds when `key` does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self::mod_revision(key, 0)
    }

    /// The key this condition looks at.
    pub fn key(&self) -> &str {
        match self {
            Self::ModRevision { key, .. } => key,
        }
    }
}

/// A write in a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace the key's value.
    Put {
        /// The key written.
        key: String,
        /// The new value.
        value: Vec<u8>,
    },
    /// Remove the key; nothing happens if it is absent.
    Delete {
        /// The key removed.
        key: String,
    },
}

impl Op {
    /// A put of `value` at `key`.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// The key this operation writes.
    pub fn key(&self) -> &str {
        match self {
            Self::Put { key, .. } | Self::Delete { key } => key,
        }
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Every compare held and the operations were applied.
    pub succeeded: bool,
    /// The store revision after the transaction (the current one if it did
    /// not succeed or changed nothing).
    pub revision: u64,
}

/// A change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or replaced; the key-value is as written.
    Put(KeyValue),
    /// The key was deleted at `mod_revision`.
    Delete {
        /// The deleted key.
        key: String,
        /// The revision of the delete.
        mod_revision: u64,
    },
}

impl WatchEvent {
    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Self::Put(kv) => &kv.key,
            Self::Delete { key, .. } => key,
        }
    }

    /// The revision of the change.
    pub fn mod_revision(&self) -> u64 {
        match self {
            Self::Put(kv) => kv.mod_revision,
            Self::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// The stream [`Store::watch`] returns.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, StoreError>> + Send>>;

/// A failure of the store, naming the operation and the key or prefix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation on the embedded store's file failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The backend failed the operation; the message names the operation,
    /// the key or prefix and the backend's error.
    #[error("{0}")]
    Backend(String),
    /// etcd could not complete the operation: no endpoint answered, the
    /// cluster had no leader, or the outcome of a write is unknown (read
    /// again before retrying it).
    #[error("{operation}: etcd did not complete it (endpoints: {endpoints}): {reason}")]
    Unavailable {
        /// What was being done.
        operation: String,
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The last error seen.
        reason: String,
    },
    /// The caller asked for something the store does not accept.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A watch asked for history the backend no longer keeps.
    #[error(
        "watch of prefix {prefix:?} after revision {after_revision}: the history up to revision \
         {compact_revision} was compacted; read the current state with range and watch after its \
         revision"
    )]
    Compacted {
        /// The prefix watched.
        prefix: String,
        /// The revision the watch started after.
        after_revision: u64,
        /// The revision up to which history is gone.
        compact_revision: u64,
    },
    /// A watcher fell too far behind the embedded store's writes and
    /// missed events; it has to re-watch from the last revision it saw.
    #[error(
        "watch of prefix {prefix:?} fell behind and missed {missed} change batches; re-watch \
         after the last revision seen"
    )]
    WatchLagged {
        /// The prefix watched.
        prefix: String,
        /// How many committed transactions were missed.
        missed: u64,
    },
    /// A watch stream broke (the etcd member serving it went away, or it
    /// was cancelled); re-watch after the last revision seen.
    #[error("watch of prefix {prefix:?} broke: {reason}; re-watch after the last revision seen")]
    WatchLost {
        /// The prefix watched.
        prefix: String,
        /// What broke it.
        reason: String,
    },
    /// The etcd CA, client certificate or key cannot be used (each error
    /// names the file).
    #[error("etcd client TLS: {0}")]
    Tls(#[from] wardline_tls::TlsError),
    /// Stored data could not be decoded.
    #[error("corrupt data for key {key:?}: {reason}")]
    Corrupt {
        /// The key whose record is bad.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A store specification did not parse.
    #[error("invalid store spec {spec:?}: {reason}")]
    InvalidSpec {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The control plane's storage: an etcd-like, revisioned key-value store.
///
/// Implemented by [`embedded::EmbeddedStore`] and [`etcd::EtcdStore`];
/// usable as `Arc<dyn Store>`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The key's current value and revisions, or `None` if it is absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix` (all keys for `""`), sorted by key,
    /// read as one consistent snapshot.
    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;

    /// Applies all of `ops` if every one of `compares` holds, atomically;
    /// otherwise writes nothing and reports `succeeded: false`.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome, StoreError>;

    /// The store's current revision.
    async fn revision(&self) -> Result<u64, StoreError>;

    /// Events for keys under `prefix` with mod_revision > `after_revision`,
    /// in revision order: first the ones already in the store's history
    /// (etcd replays its history; the embedded store replays its current
    /// state, see [`embedded`]), then live ones.
    ///
    /// The stream ends (`None`) only when the store is dropped. A broken
    /// connection, a compacted history or a watcher that fell behind is an
    /// error item, after which the stream ends and the caller watches again
    /// after the last revision it saw.
    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError>;

    /// Puts `value` at `key` unconditionally; returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        Ok(self
            .txn(Vec::new(), vec![Op::put(key, value)])
            .await?
            .revision)
    }

    /// Deletes `key` unconditionally; returns the store revision after.
    async fn delete(&self, key: &str) -> Result<u64, StoreError> {
        Ok(self.txn(Vec::new(), vec![Op::delete(key)]).await?.revision)
    }

    /// Discards the store's history of changes before `revision` (etcd's
    /// compaction). The embedded store keeps no history: nothing to do.
    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let _ = revision;
        Ok(())
    }
}

/// Checks a transaction against the rules both backends share: non-empty
/// keys, each key written at most once, at most [`MAX_TXN_OPS`] operations
/// and compares.
pub(crate) fn validate_txn(compares: &[Compare], ops: &[Op]) -> Result<(), StoreError> {
    if ops.len() > MAX_TXN_OPS {
        return Err(StoreError::InvalidRequest(format!(
            "transaction has {} operations, more than the limit of {MAX_TXN_OPS}",
            ops.len()
        )));
    }
    if compares.len() > MAX_TXN_OPS {
        return Err(StoreError::InvalidRequest(format!(
            "transaction has {} compares, more than the limit of {MAX_TXN_OPS}",
            compares.len()
        )));
    }
    for compare in compares {
        validate_key("compare in transaction", compare.key())?;
    }
    let mut seen = HashSet::with_capacity(ops.len());
    for op in ops {
        validate_key("operation in transaction", op.key())?;
        if !seen.insert(op.key()) {
            return Err(StoreError::InvalidRequest(format!(
                "transaction writes key {:?} more than once",
                op.key()
            )));
        }
    }
    Ok(())
}

/// Rejects the empty key, which neither backend can store.
pub(crate) fn validate_key(operation: &str, key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidRequest(format!(
            "{operation}: the key is empty"
        )));
    }
    Ok(())
}

/// Which backend to use and where it is, as given on the command line or
/// in the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// An embedded store in this file (`embedded:/var/lib/wardline/control-plane.redb`).
    Embedded(PathBuf),
    /// An etcd cluster at these client URLs
    /// (`etcd:https://etcd1:2379,https://etcd2:2379`), reached with the
    /// client TLS files in `tls`.
    ///
    /// The text form names the endpoints only; the TLS files are given
    /// apart (the control plane's `--etcd-ca`, `--etcd-cert`, `--etcd-key`)
    /// and added with [`StoreSpec::with_etcd_tls`]. [`open`] refuses an
    /// etcd spec without them.
    Etcd {
        /// The members' client URLs, every one `https://`.
        endpoints: Vec<String>,
        /// The etcd CA, client certificate and key.
        tls: Option<EtcdTls>,
    },
}

/// The files the control plane reaches etcd with: the CA that signed the
/// etcd members' certificates (and the client certificate), and the
/// control plane's client certificate and key, issued by that CA.
///
/// etcd is run with `--client-cert-auth` and this CA as its
/// `--trusted-ca-file`, so that only holders of such a certificate can
/// read or write the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The etcd CA certificate (PEM).
    pub ca: PathBuf,
    /// The control plane's etcd client certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// The flags that give the etcd client TLS files, for messages.
pub const ETCD_TLS_FLAGS: &str = "--etcd-ca/--etcd-cert/--etcd-key";

impl StoreSpec {
    /// The same spec, reaching etcd with the TLS files `tls`; an embedded
    /// spec is returned unchanged.
    pub fn with_etcd_tls(self, tls: EtcdTls) -> Self {
        match self {
            Self::Etcd { endpoints, .. } => Self::Etcd {
                endpoints,
                tls: Some(tls),
            },
            embedded @ Self::Embedded(_) => embedded,
        }
    }
}

/// Refuses an etcd endpoint that is not an `https://` URL: the store talks
/// to etcd only over TLS.
pub(crate) fn check_etcd_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.starts_with("https://") {
        Ok(())
    } else if endpoint.starts_with("http://") {
        Err(format!(
            "etcd endpoint {endpoint} is plaintext; use https:// with {ETCD_TLS_FLAGS}"
        ))
    } else {
        Err(format!("etcd endpoint {endpoint:?} is not an https:// URL"))
    }
}

impl FromStr for StoreSpec {
    type Err = StoreError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| StoreError::InvalidSpec {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = spec.strip_prefix("embedded:") {
            if path.is_empty() {
                return Err(invalid(
                    "the embedded store needs a file path after `embedded:`",
                ));
            }
            Ok(Self::Embedded(PathBuf::from(path)))
        } else if let Some(list) = spec.strip_prefix("etcd:") {
            let endpoints: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
            if endpoints.is_empty() {
                return Err(invalid(
                    "etcd needs at least one endpoint after `etcd:`, comma-separated",
                ));
            }
            for endpoint in &endpoints {
                check_etcd_endpoint(endpoint).map_err(|reason| invalid(&reason))?;
            }
            Ok(Self::Etcd {
                endpoints,
                tls: None,
            })
        } else {
            Err(invalid(
                "expected `embedded:/path/to/file.redb` or `etcd:https://host:port[,...]`",
            ))
        }
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded(path) => write!(f, "embedded:{}", path.display()),
            Self::Etcd { endpoints, .. } => write!(f, "etcd:{}", endpoints.join(",")),
        }
    }
}

/// Opens the store `spec` names: the embedded file (created with its parent
/// folders if absent) or a TLS connection to the etcd cluster, which needs
/// the spec's [`EtcdTls`].
pub async fn open(spec: &StoreSpec) -> Result<Arc<dyn Store>, StoreError> {
    match spec {
        StoreSpec::Embedded(path) => {
            let store = embedded::EmbeddedStore::open(path).await?;
            Ok(Arc::new(store))
        }
        StoreSpec::Etcd {
            endpoints,
            tls: Some(tls),
        } => {
            let store = etcd::EtcdStore::connect(endpoints, tls).await?;
            Ok(Arc::new(store))
        }
        StoreSpec::Etcd {
            endpoints,
            tls: None,
        } => Err(StoreError::InvalidSpec {
            spec: spec.to_string(),
            reason: format!(
                "etcd at {} is reached only over TLS with a client certificate: give the etcd \
                 CA, client certificate and key ({ETCD_TLS_FLAGS})",
                endpoints.join(",")
            ),
        }),
    }
}
