//! What one caller may cost the control plane: request sizes, counts and
//! string lengths, registrations per second, and one policy stream per
//! node. Each limit is named in its refusal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Status;

use crate::registry::MAX_SOURCE_BYTES;

/// The largest request an agent sends (register, ack, heartbeat, a batch of
/// flow records): a few hundred addresses and labels fit many times over,
/// and agents cut flow batches to fit.
pub const AGENT_REQUEST_BYTES: usize = 256 << 10;
/// The largest request an operator may send: twice the largest policy
/// source, so that a source somewhat over its limit is refused by the
/// registry with its size and the limit, and a far larger one by gRPC
/// before it is read whole.
pub const MANAGEMENT_REQUEST_BYTES: usize = 2 * MAX_SOURCE_BYTES;
/// Labels an agent may report (shown to operators, never used).
pub const MAX_LABELS: usize = 64;
/// A label key's and a label value's longest (Kubernetes' limits).
pub const MAX_LABEL_KEY: usize = 253;
pub const MAX_LABEL_VALUE: usize = 63;
/// Addresses one node may report.
pub const MAX_ADDRESSES: usize = 256;
/// The longest change message or reason an operator may give.
pub const MAX_MESSAGE: usize = 4096;
/// Registrations one node may make: a burst, then one per this interval.
/// Each may write the store and rebuild every agent's tables.
pub const REGISTER_BURST: u32 = 5;
pub const REGISTER_EVERY: Duration = Duration::from_secs(2);

/// Checks what an agent reports about itself against the caps.
pub fn registration(
    labels: &std::collections::HashMap<String, String>,
    addresses: &[String],
) -> Result<(), Status> {
    if labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!(
            "labels: {} labels; the most a node may report is {MAX_LABELS}",
            labels.len()
        )));
    }
    for (k, v) in labels {
        if k.len() > MAX_LABEL_KEY || v.len() > MAX_LABEL_VALUE {
            return Err(Status::invalid_argument(format!(
                "labels: {:?} is longer than {MAX_LABEL_KEY} (key) or {MAX_LABEL_VALUE} (value) bytes",
                k.chars().take(40).collect::<String>()
            )));
        }
    }
    if addresses.len() > MAX_ADDRESSES {
        return Err(Status::invalid_argument(format!(
            "addresses: {} addresses; the most a node may report is {MAX_ADDRESSES}",
            addresses.len()
        )));
    }
    Ok(())
}

/// Checks an operator's change message or reason.
pub fn message(field: &str, text: &str) -> Result<(), Status> {
    if text.len() > MAX_MESSAGE {
        return Err(Status::invalid_argument(format!(
            "{field}: {} bytes; the most is {MAX_MESSAGE}",
            text.len()
        )));
    }
    Ok(())
}

/// Certificate renewals one node may ask for: a burst, then one per this
/// interval. Each is a signature by the site CA and a store write; an
/// agent renews once per half of its certificate's lifetime.
pub const RENEW_BURST: u32 = 3;
pub const RENEW_EVERY: Duration = Duration::from_secs(60);

/// A token bucket per node for one kind of call.
#[derive(Clone, Debug)]
pub struct Throttle {
    /// What the node does too often, for the refusal ("registers").
    verb: &'static str,
    burst: u32,
    every: Duration,
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl Throttle {
    pub fn new(verb: &'static str, burst: u32, every: Duration) -> Throttle {
        Throttle {
            verb,
            burst,
            every,
            buckets: Arc::default(),
        }
    }

    /// Registrations: [`REGISTER_BURST`], then one per [`REGISTER_EVERY`].
    pub fn registrations() -> Throttle {
        Throttle::new("registers", REGISTER_BURST, REGISTER_EVERY)
    }

    /// Renewals: [`RENEW_BURST`], then one per [`RENEW_EVERY`].
    pub fn renewals() -> Throttle {
        Throttle::new("renews its certificate", RENEW_BURST, RENEW_EVERY)
    }

    /// Takes a token for `node`, or refuses with how long to wait.
    pub fn take(&self, node: &str) -> Result<(), Status> {
        let (verb, burst, every) = (self.verb, self.burst, self.every);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (tokens, at) = buckets
            .entry(node.to_owned())
            .or_insert((f64::from(burst), now));
        let refill = now.duration_since(*at).as_secs_f64() / every.as_secs_f64();
        *tokens = (*tokens + refill).min(f64::from(burst));
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let wait = every.mul_f64(1.0 - *tokens);
        Err(Status::resource_exhausted(format!(
            "node {node:?} {verb} too often: at most {burst} at once, then one every {every:?}; try again in {wait:.1?}"
        )))
    }
}

/// One policy stream per node: a new Watch supersedes the node's older
/// one (an agent that restarted, or a stale connection), which ends.
#[derive(Clone, Debug, Default)]
pub struct Streams {
    epochs: Arc<Mutex<HashMap<String, watch::Sender<u64>>>>,
}

impl Streams {
    /// Opens a stream for `node`: a receiver whose value changes when a
    /// newer stream for the node opens, and this stream's epoch.
    pub fn open(&self, node: &str) -> (watch::Receiver<u64>, u64) {
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        let tx = epochs
            .entry(node.to_owned())
            .or_insert_with(|| watch::channel(0).0);
        let epoch = *tx.borrow() + 1;
        tx.send_replace(epoch);
        (tx.subscribe(), epoch)
    }

    /// How many nodes have a stream open (each open stream holds a
    /// receiver of its node's epochs).
    pub fn open_count(&self) -> usize {
        let epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        epochs.values().filter(|tx| tx.receiver_count() > 0).count()
    }
}
