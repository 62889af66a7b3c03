//! The flow store: every flow record the agents report, validated at
//! ingest, kept with retention by age and by size, queried by time, node,
//! segment, address or CIDR, port, protocol, verdict, reason and policy,
//! counted into the segment matrix and the top sources and talkers,
//! followed live, and the device inventory they make.
//!
//! It holds no policy and speaks to no agent: the server hands it the
//! batches it received (with the caller's node from its certificate) and
//! the queries operators send. Its records are sealed at rest with the
//! site's store key, as the policy store's values are.
#![forbid(unsafe_code)]

pub mod backend;
pub mod filter;
pub mod ingest;
pub mod inventory;
pub mod pairs;
pub mod record;
pub mod store;
pub mod summary;
pub mod tally;

pub use backend::FlowBackend;
pub use filter::{Query, QueryError};
pub use inventory::InventoryQuery;
pub use store::{Counts, FlowError, FlowStore, Ingested, Retention, Top};
