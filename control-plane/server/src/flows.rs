//! Flow records through the replica: agents' batches into the flow store
//! (`wardline-flows`), and operators' queries, the segment matrix and the
//! live follow out of it.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio_stream::Stream;
use tonic::{Request, Status};
use wardline_flows::{FlowBackend, FlowError, Query};
use wardline_proto::v1;

use crate::server::ControlPlane;

/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The flow store and what agents said they lost.
pub struct Flows {
    pub store: Arc<dyn FlowBackend>,
    /// Per node: records its agent dropped since its buffer was made (its
    /// buffer full), as it last reported.
    lost: Mutex<BTreeMap<String, u64>>,
}

impl Flows {
    pub fn new(store: Arc<dyn FlowBackend>) -> Flows {
        Flows {
            store,
            lost: Mutex::default(),
        }
    }

    /// Records agents reported they had to drop, per node.
    pub fn lost(&self) -> BTreeMap<String, u64> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs retention on `store` every minute, off the async runtime.
pub async fn prune(store: Arc<dyn FlowBackend>) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.prune(OffsetDateTime::now_utc())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(records = n, "flow records past retention dropped"),
            Ok(Err(e)) => tracing::warn!("flow retention: {e}"),
            Err(e) => tracing::warn!("flow retention: {e}"),
        }
    }
}

fn store_status(e: FlowError) -> Status {
    match e {
        FlowError::BatchTooLarge(_) => Status::invalid_argument(e.to_string()),
        FlowError::Corrupt { .. } => Status::data_loss(e.to_string()),
        FlowError::Store { .. } => Status::unavailable(e.to_string()),
    }
}

pub type FlowStream = Pin<Box<dyn Stream<Item = Result<v1::Flow, Status>> + Send>>;

impl ControlPlane {
    fn flow_store(&self) -> Result<&Arc<Flows>, Status> {
        self.flows()
            .ok_or_else(|| Status::failed_precondition("this replica keeps no flow records"))
    }

    /// An agent's batch: stored under the name in its certificate.
    pub(crate) async fn ingest_flows(
        &self,
        req: Request<v1::FlowBatch>,
    ) -> Result<v1::FlowBatchResponse, Status> {
        let node = req.get_ref().node.clone();
        self.admitted_agent(&req, &node)?;
        let flows = self.flow_store()?.clone();
        let batch = req.into_inner();
        let dropped = batch.dropped;
        let store = flows.store.clone();
        let name = node.clone();
        let got = tokio::task::spawn_blocking(move || {
            store.ingest(&name, &batch, OffsetDateTime::now_utc())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(store_status)?;
        flows
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.clone(), dropped);
        if got.refused > 0 {
            tracing::warn!(node = %node, refused = got.refused, first = %got.first_refusal, "flow records refused");
        }
        if got.over_quota > 0 {
            tracing::warn!(node = %node, over_quota = got.over_quota, "flow records past the node's quota a minute, not stored");
        }
        Ok(v1::FlowBatchResponse {
            accepted: got.accepted,
            refused: got.refused,
            first_refusal: got.first_refusal,
            over_quota: got.over_quota,
        })
    }

    pub(crate) fn query_of(&self, req: &v1::ObserveRequest) -> Result<Query, Status> {
        Query::parse(req, OffsetDateTime::now_utc())
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// Stored records, then with `follow` each new match as it is stored.
    pub(crate) async fn observe_flows(
        &self,
        req: Request<v1::ObserveRequest>,
    ) -> Result<FlowStream, Status> {
        self.allowed(&req, wardline_roles::Verb::ReadFlows)?;
        let query = self.query_of(req.get_ref())?;
        let flows = self.flow_store()?.clone();
        // Subscribed first, so nothing stored while the query runs is
        // missed; what both see is sent once.
        let mut live = query.follow.then(|| flows.store.subscribe());
        let stored = self.stored_flows(query.clone()).await?;
        let stream = async_stream::try_stream! {
            let mut sent: HashSet<(String, u64, String)> = HashSet::new();
            for f in stored {
                if live.is_some() {
                    sent.insert((f.node.clone(), f.sequence, f.time.clone()));
                }
                yield f;
            }
            if let Some(live) = live.as_mut() {
                loop {
                    match live.recv().await {
                        Ok(f) => {
                            let Some(at) = wardline_flows::record::time_of(&f) else { continue };
                            if sent.remove(&(f.node.clone(), f.sequence, f.time.clone())) || !query.matches(&f, at) {
                                continue;
                            }
                            yield (*f).clone();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            Err(Status::resource_exhausted(format!(
                                "the follow fell {n} records behind; narrow the filter or follow again"
                            )))?;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        };
        Ok(Box::pin(stream))
    }

    /// The stored records `query` wants (no follow).
    pub(crate) async fn stored_flows(&self, query: Query) -> Result<Vec<v1::Flow>, Status> {
        let store = self.flow_store()?.store.clone();
        tokio::task::spawn_blocking(move || store.query(&query))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)
    }

    pub(crate) async fn count_flows(
        &self,
        req: Request<v1::ObserveRequest>,
    ) -> Result<v1::FlowMatrixResponse, Status> {
        self.allowed(&req, wardline_roles::Verb::ReadFlows)?;
        self.matrix_of(req.get_ref()).await
    }

    /// The segment matrix of the connections a filter wants.
    pub(crate) async fn matrix_of(
        &self,
        req: &v1::ObserveRequest,
    ) -> Result<v1::FlowMatrixResponse, Status> {
        let query = self.query_of(req)?;
        let store = self.flow_store()?.store.clone();
        tokio::task::spawn_blocking(move || store.matrix(&query))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)
    }

    /// Top sources or talkers among the connections a filter wants.
    pub(crate) async fn rank_flows(
        &self,
        req: Request<v1::TopRequest>,
    ) -> Result<v1::TopResponse, Status> {
        self.allowed(&req, wardline_roles::Verb::ReadFlows)?;
        self.top_of(req.into_inner()).await
    }

    pub(crate) async fn top_of(&self, req: v1::TopRequest) -> Result<v1::TopResponse, Status> {
        let query = self.query_of(&req.filter.unwrap_or_default())?;
        let by = wardline_flows::Top::parse(&req.by)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let limit = match req.limit {
            0 => 10,
            n @ 1..=1000 => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "limit: {n} is not between 1 and 1000"
                )));
            }
        };
        let store = self.flow_store()?.store.clone();
        tokio::task::spawn_blocking(move || store.top(&query, by, limit))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)
    }

    /// The device inventory.
    pub(crate) async fn list_inventory(
        &self,
        req: Request<v1::InventoryRequest>,
    ) -> Result<v1::InventoryResponse, Status> {
        self.allowed(&req, wardline_roles::Verb::ReadFlows)?;
        self.inventory_of(req.get_ref()).await
    }

    pub(crate) async fn inventory_of(
        &self,
        req: &v1::InventoryRequest,
    ) -> Result<v1::InventoryResponse, Status> {
        let query = wardline_flows::InventoryQuery::parse(req, OffsetDateTime::now_utc())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let store = self.flow_store()?.store.clone();
        tokio::task::spawn_blocking(move || store.inventory(&query))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(store_status)
    }

    /// The records of connections observed since `since` (RFC 3339 or a
    /// duration back) with one of `verdicts`, newest last, at most
    /// [`wardline_flows::filter::MAX_RESULTS`] of each verdict.
    pub(crate) async fn observed_flows(
        &self,
        since: &str,
        verdicts: &[&str],
    ) -> Result<Vec<v1::Flow>, Status> {
        let store = self.flow_store()?.store.clone();
        let now = OffsetDateTime::now_utc();
        let mut queries = Vec::new();
        for verdict in verdicts {
            queries.push(
                wardline_flows::Query::parse(
                    &v1::ObserveRequest {
                        since: since.into(),
                        verdict: (*verdict).into(),
                        last: wardline_flows::filter::MAX_RESULTS as u32,
                        ..Default::default()
                    },
                    now,
                )
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
            );
        }
        tokio::task::spawn_blocking(move || {
            let mut observed = Vec::new();
            for q in &queries {
                observed.extend(store.query(q).map_err(store_status)?);
            }
            Ok(observed)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }
}
