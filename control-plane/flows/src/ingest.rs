//! What every flow store does with a batch before it stores anything: the
//! batch's size checked, records already stored (a batch sent again)
//! recognised by their sequence numbers, each record checked whole
//! ([`check`]) and the invalid ones counted and dropped, and the node's
//! quota a minute applied. Written once, so that the embedded and the
//! PostgreSQL stores take the same records from the same batch.

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;
use wardline_proto::v1;

use crate::record::{MAX_BATCH, check};
use crate::store::{FlowError, Ingested};

/// Records stored per (node, minute) by this replica, for the quota.
pub type QuotaUsed = HashMap<(String, u64), u64>;

/// The minute (since the epoch) `t` falls in.
pub fn minute_of(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp().div_euclid(60)).unwrap_or(0)
}

/// A batch sorted for storing.
#[derive(Debug, Default)]
pub struct Sorted {
    /// What the batch comes to, once what `groups` holds is stored.
    pub out: Ingested,
    /// Minute -> the records to store in it (their node set), in sequence
    /// order.
    pub groups: BTreeMap<u64, Vec<v1::Flow>>,
    /// The highest sequence number the batch settles (stored, duplicate
    /// or refused).
    pub highest: u64,
    /// Records already stored.
    pub duplicates: u64,
}

/// Sorts `batch` from `node` (the name in its certificate): `high` is the
/// highest sequence number already stored for the batch's buffer, `quota`
/// what this replica stored per node and minute, `per_node_minute` the
/// most one node may add to a minute.
pub fn sort(
    node: &str,
    batch: &v1::FlowBatch,
    now: OffsetDateTime,
    high: u64,
    quota: &mut QuotaUsed,
    per_node_minute: u64,
) -> Result<Sorted, FlowError> {
    if batch.flows.len() > MAX_BATCH {
        return Err(FlowError::BatchTooLarge(batch.flows.len()));
    }
    // Minutes long past take no more records worth counting.
    let recent = minute_of(now).saturating_sub(10);
    quota.retain(|(_, minute), _| *minute >= recent);
    let mut sorted = Sorted {
        highest: high,
        ..Default::default()
    };
    for flow in &batch.flows {
        if flow.sequence != 0 && flow.sequence <= sorted.highest {
            sorted.out.accepted += 1;
            sorted.duplicates += 1;
            continue;
        }
        match check(flow, now) {
            Ok(at) => {
                sorted.highest = flow.sequence;
                let minute = minute_of(at);
                let used = quota.entry((node.to_owned(), minute)).or_default();
                if *used >= per_node_minute {
                    sorted.out.over_quota += 1;
                    continue;
                }
                *used += 1;
                let mut f = flow.clone();
                f.node = node.to_owned();
                sorted.groups.entry(minute).or_default().push(f);
                sorted.out.accepted += 1;
            }
            Err(why) => {
                sorted.highest = sorted.highest.max(flow.sequence);
                sorted.out.refused += 1;
                if sorted.out.first_refusal.is_empty() {
                    sorted.out.first_refusal = format!("record {}: {why}", flow.sequence);
                }
            }
        }
    }
    Ok(sorted)
}
