//! What this replica hands the SIEM export (`wardline-siem`): each record
//! of the audit trail it appends, as it appends it; each flow
//! record it stores itself, as it is stored (replicas sharing one flow
//! store each export their own agents' records, so that each reaches the
//! SIEM once), and each policy revision newer than the one in
//! force when the replica started, as the store's watch brings it (every
//! replica reports every revision it sees; a SIEM keys them by
//! `revision` and `recordSha256`).

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use wardline_siem::{Exporter, PolicyChange};

use crate::registry::{RevisionAction, RevisionRecord};
use crate::server::ControlPlane;

/// Audit actions that reach the SIEM as alerts when done: emergency
/// access, and devices isolated or trusted again.
const ALERTS: [&str; 3] = ["break-glass", "quarantine", "release"];

fn change_of(r: &RevisionRecord) -> PolicyChange {
    PolicyChange {
        revision: r.revision,
        time: r.time.clone(),
        author: r.author.clone(),
        author_fingerprint: r.author_fingerprint.clone(),
        action: r.action.map_or("", RevisionAction::as_str).to_owned(),
        message: r.message.clone(),
        changes: r
            .changes
            .iter()
            .map(|c| {
                (
                    format!("{}/{}", c.kind.as_str(), c.name),
                    c.action.as_str().to_owned(),
                )
            })
            .collect(),
        policy_sha256: r.sha256.clone(),
        record_sha256: r.record_sha256.clone(),
    }
}

/// Starts the two feeds.
pub(crate) fn feed(cp: &ControlPlane, exporter: Arc<Exporter>) {
    if let Some(flows) = cp.flows() {
        let mut stored = flows.store.subscribe_ingested();
        let exporter = exporter.clone();
        tokio::spawn(async move {
            loop {
                match stored.recv().await {
                    Ok(f) => exporter.flow(f),
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(records = n, "the SIEM export fell behind the flow store");
                        exporter.lost(n);
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }
    // The audit trail, each record as this replica appends it (every
    // replica exports its own: each record reaches the SIEM once).
    let mut appended = cp.audit().subscribe();
    let audit_exporter = exporter.clone();
    tokio::spawn(async move {
        loop {
            match appended.recv().await {
                Ok(r) => audit_exporter.audit(wardline_siem::AuditEvent {
                    time: r.time.clone(),
                    alarming: r.outcome != wardline_audit::Outcome::Done,
                    alert: ALERTS.contains(&r.action.as_str())
                        && r.outcome == wardline_audit::Outcome::Done,
                    record: serde_json::to_value(&r).unwrap_or_default(),
                }),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(records = n, "the SIEM export fell behind the audit trail");
                    audit_exporter.lost(n);
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    let mut view = cp.cluster_watch();
    tokio::spawn(async move {
        let mut last = view.borrow_and_update().as_ref().map(|c| c.record.revision);
        while view.changed().await.is_ok() {
            let record = view.borrow_and_update().as_ref().map(|c| c.record.clone());
            let Some(record) = record else { continue };
            if last.is_some_and(|l| record.revision <= l) {
                continue;
            }
            last = Some(record.revision);
            exporter.change(change_of(&record));
        }
    });
}
