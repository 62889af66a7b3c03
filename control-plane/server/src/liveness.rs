//! Which agents are alive, kept in memory per replica.
//!
//! Agents send a heartbeat every `HEARTBEAT_SECONDS`. Writing each to the
//! store made a fleet's heartbeats the store's main load (a thousand agents:
//! five hundred durable writes a second) and made every heartbeat depend on
//! the store being up. A replica now notes each heartbeat in memory, and
//! writes one summary of everyone it hears from every
//! [`PUBLISH_EVERY`], so that `wardctl status` answered by any replica sees
//! agents connected to the others. A store that is away costs the summary,
//! never a heartbeat nor policy delivery.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_proto::convert::format_time;

use crate::registry::{LivenessRecord, Registry};

/// How often a replica writes its summary.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// When and by which replica an agent was last heard from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heard {
    pub at: OffsetDateTime,
    pub replica: String,
}

/// This replica's heartbeats.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    own: Arc<Mutex<BTreeMap<String, (OffsetDateTime, u32)>>>,
}

impl Liveness {
    /// Notes a heartbeat (or any call) of `node`, enforcing `generation`.
    /// Returns whether the generation differs from the one last heard (the
    /// agent reprogrammed: worth a store write).
    pub fn heard(&self, node: &str, generation: Option<u32>) -> bool {
        let mut own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        let entry = own.entry(node.to_owned()).or_insert((now, 0));
        entry.0 = now;
        match generation {
            Some(g) if g != entry.1 => {
                entry.1 = g;
                true
            }
            _ => false,
        }
    }

    pub fn forget(&self, node: &str) {
        self.own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(node);
    }

    fn summary(&self, replica: &str) -> LivenessRecord {
        let own = self.own.lock().unwrap_or_else(|p| p.into_inner());
        LivenessRecord {
            replica: replica.to_owned(),
            time: format_time(OffsetDateTime::now_utc()),
            nodes: own
                .iter()
                .map(|(node, (at, _))| (node.clone(), format_time(*at)))
                .collect(),
        }
    }

    /// Writes this replica's summary every [`PUBLISH_EVERY`], for ever.
    pub async fn publish(self, registry: Registry, replica: String) {
        let mut every = tokio::time::interval(PUBLISH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = registry.publish_liveness(&self.summary(&replica)).await {
                tracing::warn!("writing the liveness summary: {e}");
            }
        }
    }

    /// Every node heard from, by this replica (now) or by another (as of
    /// its last summary), the latest of each.
    pub fn merged(&self, replica: &str, others: &[LivenessRecord]) -> BTreeMap<String, Heard> {
        let mut out: BTreeMap<String, Heard> = BTreeMap::new();
        let mut note = |node: &str, at: OffsetDateTime, by: &str| {
            if out.get(node).is_none_or(|h| h.at < at) {
                out.insert(
                    node.to_owned(),
                    Heard {
                        at,
                        replica: by.to_owned(),
                    },
                );
            }
        };
        for record in others.iter().filter(|r| r.replica != replica) {
            for (node, at) in &record.nodes {
                if let Ok(at) = OffsetDateTime::parse(at, &Rfc3339) {
                    note(node, at, &record.replica);
                }
            }
        }
        for (node, (at, _)) in self.own.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            note(node, *at, replica);
        }
        out
    }
}
