//! The replica's `/metrics` (`docs/deployment.md`): what it serves and how
//! its agents keep up, read from the cluster view when Prometheus scrapes,
//! encoded through `wardline_metrics`. Served over plain HTTP on the
//! address `--metrics-address` names (a loopback or management address:
//! it carries counts, never policy, names or addresses).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wardline_metrics::{Exposition, Histogram, HistogramOpts};
use wardline_policy::nodes::Admission;

use crate::server::ControlPlane;

/// What the replica counts as it goes.
pub struct Metrics {
    /// From a revision being written to each agent's acknowledgement of it.
    pub apply_to_ack: Histogram,
    /// Snapshots sent: whole tables, and changes to tables the stream sent.
    whole: AtomicU64,
    delta: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let opts = HistogramOpts::new(
            "wardline_apply_to_ack_seconds",
            "From a policy revision being written to each agent acknowledging it.",
        )
        .buckets(vec![
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ]);
        Self {
            apply_to_ack: Histogram::with_opts(opts).expect("a valid histogram"),
            whole: AtomicU64::new(0),
            delta: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// One snapshot sent to an agent.
    pub fn sent(&self, delta: bool) {
        let counter = if delta { &self.delta } else { &self.whole };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl ControlPlane {
    /// The Prometheus text exposition of this replica, as it stands now.
    pub fn render_metrics(&self) -> String {
        let metrics = self.metrics();
        let mut e = Exposition::new();
        let cluster = self.cluster_view();
        if let Some(c) = &cluster {
            e.gauge(
                "wardline_policy_revision",
                "The policy revision this replica serves.",
            )
            .sample(&[], c.record.revision as f64);
            let (mut declared, mut approved, mut pending) = (0u64, 0u64, 0u64);
            for n in c.admitted.iter() {
                match n.admission {
                    Admission::Declared => declared += 1,
                    Admission::Approved(_) => approved += 1,
                    Admission::Pending => pending += 1,
                }
            }
            e.gauge(
                "wardline_nodes",
                "Registered nodes, by how they were admitted (pending: none yet).",
            )
            .sample(&[("admission", "declared")], declared as f64)
            .sample(&[("admission", "approved")], approved as f64)
            .sample(&[("admission", "pending")], pending as f64);
            e.gauge(
                "wardline_node_conflicts",
                "Nodes left out of segment membership because their addresses collide.",
            )
            .sample(&[], c.conflicts.len() as f64);
            e.gauge(
                "wardline_nodes_blocked",
                "Nodes operators removed and keep out.",
            )
            .sample(&[], c.blocked.len() as f64);
        }
        e.gauge(
            "wardline_agents_connected",
            "Agents with a policy stream open to this replica.",
        )
        .sample(&[], self.open_streams() as f64);
        e.counter(
            "wardline_snapshots_sent_total",
            "Snapshots sent to agents: whole tables, or only the prefixes that changed (delta).",
        )
        .sample(
            &[("form", "whole")],
            metrics.whole.load(Ordering::Relaxed) as f64,
        )
        .sample(
            &[("form", "delta")],
            metrics.delta.load(Ordering::Relaxed) as f64,
        );
        e.histogram(&metrics.apply_to_ack);
        if let Some(flows) = self.flows() {
            let counts = flows.store.counts();
            e.counter(
                "wardline_flow_records_total",
                "Flow records agents reported: stored, refused at ingest (invalid, dropped whole), sent again and already stored, or past the node's quota a minute.",
            )
            .sample(&[("result", "stored")], counts.stored.load(Ordering::Relaxed) as f64)
            .sample(&[("result", "refused")], counts.refused.load(Ordering::Relaxed) as f64)
            .sample(&[("result", "duplicate")], counts.duplicates.load(Ordering::Relaxed) as f64)
            .sample(&[("result", "over-quota")], counts.over_quota.load(Ordering::Relaxed) as f64);
            e.gauge(
                "wardline_flow_records_stored",
                "Flow records in this replica's flow store.",
            )
            .sample(&[], flows.store.records() as f64);
            e.gauge(
                "wardline_flow_records_lost_by_agents",
                "Flow records agents had to drop (their buffer full), as they last reported, summed.",
            )
            .sample(&[], flows.lost().values().sum::<u64>() as f64);
            e.gauge(
                "wardline_inventory_devices",
                "Devices in this replica's inventory.",
            )
            .sample(&[], flows.store.devices() as f64);
            e.counter(
                "wardline_inventory_full_total",
                "Addresses not added to the inventory because it was full (--flow-max-devices).",
            )
            .sample(&[], counts.inventory_full.load(Ordering::Relaxed) as f64);
        }
        if let Some(siem) = self.siem() {
            let sinks = siem.counts();
            let mut messages = e.counter(
                "wardline_siem_messages_total",
                "Messages to the SIEM export, by sink (syslog, ocsf) and result (sent, or dropped: its queue was full while the collector was away).",
            );
            for (sink, c) in &sinks {
                messages
                    .sample(
                        &[("sink", sink), ("result", "sent")],
                        c.sent.load(Ordering::Relaxed) as f64,
                    )
                    .sample(
                        &[("sink", sink), ("result", "dropped")],
                        c.dropped.load(Ordering::Relaxed) as f64,
                    );
            }
            let mut connected = e.gauge(
                "wardline_siem_connected",
                "Whether the SIEM sink is connected (the JSON lines file: open).",
            );
            for (sink, c) in &sinks {
                connected.sample(
                    &[("sink", sink)],
                    f64::from(u8::from(c.connected.load(Ordering::Relaxed))),
                );
            }
        }
        e.encode()
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(cp: ControlPlane, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    use axum::http::header;
    use axum::response::IntoResponse;

    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving /metrics");
    }
    let cp = Arc::new(cp);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let cp = cp.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, wardline_metrics::CONTENT_TYPE)],
                    cp.render_metrics(),
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app).await
}
