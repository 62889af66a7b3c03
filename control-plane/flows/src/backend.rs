//! What the server asks of a flow store, whichever keeps the records: the
//! embedded [`FlowStore`](crate::FlowStore) or a shared one
//! (`wardline-flows-postgres`). Every call but [`FlowBackend::subscribe`]
//! and the counters may block: call it off the async runtime.

use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::broadcast;
use wardline_proto::v1;

use crate::store::{Counts, FlowError, Ingested, Top};
use crate::{InventoryQuery, Query};

pub trait FlowBackend: Send + Sync {
    /// Stores the valid records of `batch` from `node` (the name in its
    /// certificate); see [`crate::ingest::sort`] for what is taken.
    fn ingest(
        &self,
        node: &str,
        batch: &v1::FlowBatch,
        now: OffsetDateTime,
    ) -> Result<Ingested, FlowError>;
    /// The records `query` wants, oldest first: with `last`, the newest
    /// that many; otherwise at most [`crate::filter::MAX_RESULTS`].
    fn query(&self, query: &Query) -> Result<Vec<v1::Flow>, FlowError>;
    /// Connections `query` wants, counted by (source segment,
    /// destination segment, verdict).
    fn matrix(&self, query: &Query) -> Result<v1::FlowMatrixResponse, FlowError>;
    /// The `limit` highest-ranked sources or talkers `query` wants.
    fn top(&self, query: &Query, by: Top, limit: usize) -> Result<v1::TopResponse, FlowError>;
    /// The inventory's devices `q` wants, by address.
    fn inventory(&self, q: &InventoryQuery) -> Result<v1::InventoryResponse, FlowError>;
    /// Drops what retention no longer keeps; returns the records dropped.
    fn prune(&self, now: OffsetDateTime) -> Result<u64, FlowError>;
    /// Records stored now (as last counted).
    fn records(&self) -> u64;
    /// Devices in the inventory now (as last counted).
    fn devices(&self) -> u64;
    /// Every record stored from now on, as it is stored, whichever
    /// replica stored it (a shared store's replicas each store what
    /// their agents send).
    fn subscribe(&self) -> broadcast::Receiver<Arc<v1::Flow>>;
    /// Every record this replica stores from now on: what an export that
    /// must carry each record once takes, each replica exporting its own.
    /// The embedded store is one replica's: the same as [`Self::subscribe`].
    fn subscribe_ingested(&self) -> broadcast::Receiver<Arc<v1::Flow>> {
        self.subscribe()
    }
    /// This replica's ingest counts.
    fn counts(&self) -> &Counts;
}

impl FlowBackend for crate::FlowStore {
    fn ingest(
        &self,
        node: &str,
        batch: &v1::FlowBatch,
        now: OffsetDateTime,
    ) -> Result<Ingested, FlowError> {
        crate::FlowStore::ingest(self, node, batch, now)
    }
    fn query(&self, query: &Query) -> Result<Vec<v1::Flow>, FlowError> {
        crate::FlowStore::query(self, query)
    }
    fn matrix(&self, query: &Query) -> Result<v1::FlowMatrixResponse, FlowError> {
        crate::FlowStore::matrix(self, query)
    }
    fn top(&self, query: &Query, by: Top, limit: usize) -> Result<v1::TopResponse, FlowError> {
        crate::FlowStore::top(self, query, by, limit)
    }
    fn inventory(&self, q: &InventoryQuery) -> Result<v1::InventoryResponse, FlowError> {
        crate::FlowStore::inventory(self, q)
    }
    fn prune(&self, now: OffsetDateTime) -> Result<u64, FlowError> {
        crate::FlowStore::prune(self, now)
    }
    fn records(&self) -> u64 {
        crate::FlowStore::records(self)
    }
    fn devices(&self) -> u64 {
        crate::FlowStore::devices(self)
    }
    fn subscribe(&self) -> broadcast::Receiver<Arc<v1::Flow>> {
        crate::FlowStore::subscribe(self)
    }
    fn counts(&self) -> &Counts {
        &self.counts
    }
}
