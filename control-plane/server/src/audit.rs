//! The replica's side of the audit trail (`wardline-audit`): each action
//! recorded as it happens and appended to the store in order, sealed by
//! this replica.
//!
//! Records wait in a bounded queue and are appended in batches: one
//! transaction puts the batch and moves the trail's head, only if no other
//! replica moved it since (then the batch is numbered again after theirs).
//! So the records of every replica form one trail, numbered without a gap.
//! A queue full (a flood of calls, a store away) does not stall the calls:
//! the records it could not take are counted, and the count is itself
//! recorded as soon as there is room, so a gap in what was recorded is
//! never silent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::{broadcast, mpsc};
use tonic::Request;
use wardline_audit::{AuditRecord, Head, Outcome};
use wardline_backoff::Backoff;
use wardline_proto::convert::format_time;
use wardline_signing::Signer;
use wardline_store::{Compare, Op, Store, StoreError};

/// Every record, by number: `records/<seq, 20 digits>`.
pub const RECORDS_PREFIX: &str = "/wardline/audit/records/";
/// The trail's newest record: its number and hash.
pub const HEAD_KEY: &str = "/wardline/audit/head";
/// Records waiting to be appended, at most.
const QUEUE: usize = 10_000;
/// Records one transaction appends, at most (etcd takes 128 operations).
const BATCH: usize = 100;

pub fn record_key(seq: u64) -> String {
    format!("{RECORDS_PREFIX}{seq:020}")
}

/// Who called, as far as their certificate says (also when it proves
/// nothing: the record says what was presented).
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub actor: String,
    pub fingerprint: String,
    pub peer: String,
}

impl Caller {
    pub fn of<T>(req: &Request<T>) -> Caller {
        let leaf = req.peer_certs().and_then(|c| c.first().cloned());
        let actor = match leaf
            .as_ref()
            .map(|der| wardline_tls::identity_of(der.as_ref()))
        {
            Some(Ok(id)) => format!("{}:{}", id.role, id.name),
            Some(Err(e)) => format!("unidentified ({e})"),
            None => "unidentified (no certificate)".to_owned(),
        };
        Caller {
            actor,
            fingerprint: leaf
                .map(|l| hex::encode(Sha256::digest(l.as_ref())))
                .unwrap_or_default(),
            peer: req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
        }
    }
}

/// The audit trail, as this replica writes it.
pub struct Audit {
    tx: mpsc::Sender<AuditRecord>,
    /// Records the queue could not take since the last count recorded.
    lost: Arc<AtomicU64>,
    /// Every record appended, as appended (the SIEM export).
    appended: broadcast::Sender<AuditRecord>,
    replica: String,
}

impl Audit {
    /// Starts the writer: appends to `store`, sealed with `signer`.
    pub fn start(store: Arc<dyn Store>, signer: Signer, replica: String) -> Arc<Audit> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicU64::new(0));
        let appended = broadcast::channel(QUEUE).0;
        tokio::spawn(writer(
            store,
            signer,
            rx,
            appended.clone(),
            lost.clone(),
            replica.clone(),
        ));
        Arc::new(Audit {
            tx,
            lost,
            appended,
            replica,
        })
    }

    /// Records an action. Never waits: a full queue counts it lost.
    pub fn record(
        &self,
        caller: &Caller,
        action: &str,
        target: String,
        outcome: Outcome,
        detail: String,
        revision: u64,
    ) {
        let r = AuditRecord {
            seq: 0,
            time: format_time(OffsetDateTime::now_utc()),
            replica: self.replica.clone(),
            actor: caller.actor.clone(),
            fingerprint: caller.fingerprint.clone(),
            peer: caller.peer.clone(),
            action: action.to_owned(),
            target,
            outcome,
            detail,
            revision,
            previous_sha256: String::new(),
            record_sha256: String::new(),
            seal: None,
        };
        if self.tx.try_send(r).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every record appended from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AuditRecord> {
        self.appended.subscribe()
    }

    /// Records not taken since the last count recorded.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// Handshakes refused (failed authentication at the TLS layer), counted
/// by peer address and reason and recorded together every
/// [`HANDSHAKES_EVERY`]: a flood of refused handshakes is a few records
/// with its counts, not a record each.
pub struct Handshakes {
    refused: std::sync::Mutex<std::collections::BTreeMap<(std::net::IpAddr, String), u64>>,
    /// Refusals past the distinct (address, reason) pairs kept.
    others: AtomicU64,
}

/// How often refused handshakes are recorded.
pub const HANDSHAKES_EVERY: Duration = Duration::from_secs(2);
/// Distinct (address, reason) pairs counted between records, at most.
const HANDSHAKE_PAIRS: usize = 1_000;

impl Handshakes {
    /// Counts refused handshakes and records them into `audit`.
    pub fn start(
        audit: Arc<Audit>,
        revision: impl Fn() -> u64 + Send + 'static,
    ) -> Arc<Handshakes> {
        let h = Arc::new(Handshakes {
            refused: Default::default(),
            others: AtomicU64::new(0),
        });
        let counted = h.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HANDSHAKES_EVERY);
            loop {
                tick.tick().await;
                let taken =
                    std::mem::take(&mut *counted.refused.lock().unwrap_or_else(|p| p.into_inner()));
                for ((ip, reason), n) in taken {
                    let caller = Caller {
                        actor: "unidentified (TLS handshake)".to_owned(),
                        fingerprint: String::new(),
                        peer: ip.to_string(),
                    };
                    audit.record(
                        &caller,
                        "tls-handshake",
                        String::new(),
                        Outcome::Refused,
                        format!("{n} handshake(s) refused: {reason}"),
                        revision(),
                    );
                }
                let others = counted.others.swap(0, Ordering::Relaxed);
                if others > 0 {
                    audit.record(
                        &Caller {
                            actor: "unidentified (TLS handshake)".to_owned(),
                            ..Caller::default()
                        },
                        "tls-handshake",
                        String::new(),
                        Outcome::Refused,
                        format!(
                            "{others} more handshake(s) refused from addresses past the {HANDSHAKE_PAIRS} counted"
                        ),
                        revision(),
                    );
                }
            }
        });
        h
    }

    /// Counts one refused handshake from `peer`.
    pub fn refused(&self, peer: std::net::SocketAddr, reason: String) {
        let mut map = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let key = (peer.ip(), reason);
        if let Some(n) = map.get_mut(&key) {
            *n += 1;
        } else if map.len() < HANDSHAKE_PAIRS {
            map.insert(key, 1);
        } else {
            self.others.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The trail's head in `store`, and its key's modification (0: none yet).
pub async fn head(store: &dyn Store) -> Result<(Head, u64), StoreError> {
    match store.get(HEAD_KEY).await? {
        Some(kv) => {
            let head: Head = serde_json::from_slice(&kv.value)
                .map_err(|e| StoreError::Backend(format!("{HEAD_KEY} is unreadable: {e}")))?;
            Ok((head, kv.mod_revision))
        }
        None => Ok((Head::default(), 0)),
    }
}

/// The records of the trail up to its head, in order, as stored (JSON),
/// and the head. The head is read first: a head and its records are
/// written in one transaction, so every record it counts is there, and
/// records appended after it (numbered past it) are left for the next read.
/// Only those numbered after `after`.
pub async fn read(store: &dyn Store, after: u64) -> Result<(Vec<Vec<u8>>, Head), StoreError> {
    let (head, _) = head(store).await?;
    let (first, last) = (record_key(after), record_key(head.seq));
    let records = store
        .range(RECORDS_PREFIX)
        .await?
        .into_iter()
        .filter(|kv| kv.key > first && kv.key <= last)
        .map(|kv| kv.value)
        .collect();
    Ok((records, head))
}

async fn writer(
    store: Arc<dyn Store>,
    signer: Signer,
    mut rx: mpsc::Receiver<AuditRecord>,
    appended: broadcast::Sender<AuditRecord>,
    lost: Arc<AtomicU64>,
    replica: String,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let missed = lost.swap(0, Ordering::Relaxed);
        if missed > 0 {
            batch.push(AuditRecord {
                seq: 0,
                time: format_time(OffsetDateTime::now_utc()),
                replica: replica.clone(),
                actor: format!("replica:{replica}"),
                fingerprint: String::new(),
                peer: String::new(),
                action: "audit-records-lost".to_owned(),
                target: String::new(),
                outcome: Outcome::Failed,
                detail: format!(
                    "{missed} action(s) were not recorded: the queue of {QUEUE} was full"
                ),
                revision: 0,
                previous_sha256: String::new(),
                record_sha256: String::new(),
                seal: None,
            });
        }
        loop {
            match append(store.as_ref(), &signer, &mut batch).await {
                Ok(true) => {
                    backoff.reset();
                    for r in batch.drain(..) {
                        let _ = appended.send(r);
                    }
                    break;
                }
                // Another replica appended first: number the batch again.
                Ok(false) => continue,
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, records = batch.len(), "audit trail: the store refused the records; they wait");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Numbers, links, seals and appends `batch` after the stored head, in one
/// transaction; false if another replica moved the head first.
async fn append(
    store: &dyn Store,
    signer: &Signer,
    batch: &mut [AuditRecord],
) -> Result<bool, StoreError> {
    let (mut head, modified) = head(store).await?;
    let mut ops = Vec::with_capacity(batch.len() + 1);
    for r in batch.iter_mut() {
        head = r.link(&head, signer).map_err(|message| {
            StoreError::Backend(format!("sealing an audit record: {message}"))
        })?;
        ops.push(Op::Put {
            key: record_key(r.seq),
            value: serde_json::to_vec(&*r).unwrap_or_default(),
        });
    }
    ops.push(Op::Put {
        key: HEAD_KEY.to_owned(),
        value: serde_json::to_vec(&head).unwrap_or_default(),
    });
    let outcome = store
        .txn(
            vec![Compare::ModRevision {
                key: HEAD_KEY.to_owned(),
                revision: modified,
            }],
            ops,
        )
        .await?;
    Ok(outcome.succeeded)
}
