//! The replica behind its web dashboard (`wardline-dashboard`): sign-in
//! links for operators who called over mutual TLS, and the dashboard's
//! questions answered as the same management calls answer them.

use std::sync::Arc;

use time::OffsetDateTime;
use tonic::Status;
use wardline_dashboard::{Segment, Sessions, Settings, Source};
use wardline_policy::Mode;
use wardline_proto::convert::format_time;
use wardline_proto::v1;

use crate::server::ControlPlane;

/// The dashboard of this replica: where it is served and who is signed in.
pub struct Dashboard {
    /// `https://host:port` as operators' browsers reach it.
    url: String,
    pub sessions: Arc<Sessions>,
}

impl Dashboard {
    pub fn new(url: String, settings: Settings) -> Dashboard {
        Dashboard {
            url: url.trim_end_matches('/').to_owned(),
            sessions: Arc::new(Sessions::new(settings)),
        }
    }
}

impl ControlPlane {
    /// A sign-in link for `operator`, who called with its certificate.
    pub(crate) fn sign_in_link(
        &self,
        operator: &str,
    ) -> Result<v1::DashboardLoginResponse, Status> {
        let d = self.dashboard().ok_or_else(|| {
            Status::failed_precondition(
                "this replica serves no dashboard (start it with --dashboard-address)",
            )
        })?;
        let link = d
            .sessions
            .issue(operator, OffsetDateTime::now_utc())
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        // The secret is the caller's alone: logged without it.
        tracing::info!(%operator, until = %format_time(link.expires), "dashboard sign-in link issued");
        Ok(v1::DashboardLoginResponse {
            url: format!("{}/login?token={}", d.url, link.secret),
            expires: format_time(link.expires),
            session_seconds: d.sessions.settings().session.as_secs(),
        })
    }

    /// The dashboard's routes over this replica, or none when it serves no
    /// dashboard.
    pub fn dashboard_router(&self) -> Option<axum::Router> {
        let sessions = self.dashboard()?.sessions.clone();
        Some(wardline_dashboard::router(self.clone(), sessions))
    }
}

impl Source for ControlPlane {
    async fn flows(&self, q: v1::ObserveRequest) -> Result<Vec<v1::Flow>, Status> {
        let query = self.query_of(&q)?;
        self.stored_flows(query).await
    }

    async fn matrix(&self, q: v1::ObserveRequest) -> Result<v1::FlowMatrixResponse, Status> {
        self.matrix_of(&q).await
    }

    async fn top(&self, q: v1::TopRequest) -> Result<v1::TopResponse, Status> {
        self.top_of(q).await
    }

    async fn inventory(&self, q: v1::InventoryRequest) -> Result<v1::InventoryResponse, Status> {
        self.inventory_of(&q).await
    }

    async fn status(&self) -> Result<v1::StatusResponse, Status> {
        self.status_report().await
    }

    fn allows(&self, operator: &str) -> Result<(), Status> {
        let name = operator.strip_prefix("operator:").unwrap_or(operator);
        self.grants(name)?
            .allow(wardline_roles::Verb::ReadFlows)
            .map_err(|r| crate::server::refused(&r, None))
    }

    fn needs_code(&self) -> bool {
        self.mfa_required()
    }

    async fn check_code(&self, operator: &str, code: &str) -> Result<(), Status> {
        let name = operator.strip_prefix("operator:").unwrap_or(operator);
        self.check_code(name, code).await
    }

    fn note(&self, operator: Option<&str>, action: &str, refused: bool, detail: String) {
        // The session says who (`operator:NAME`, as the link was issued);
        // the browser presented no certificate.
        let caller = crate::audit::Caller {
            actor: operator.map_or_else(
                || "unidentified (a dashboard link that proved no one)".to_owned(),
                str::to_owned,
            ),
            fingerprint: String::new(),
            peer: String::new(),
        };
        let outcome = if refused {
            wardline_audit::Outcome::Refused
        } else {
            wardline_audit::Outcome::Done
        };
        self.audit().record(
            &caller,
            action,
            String::new(),
            outcome,
            detail,
            self.revision_in_force(),
        );
    }

    fn segments(&self) -> Vec<Segment> {
        let Some(c) = self.cluster_view() else {
            return Vec::new();
        };
        c.schedule
            .now
            .segments
            .iter()
            .map(|s| Segment {
                name: s.name.clone(),
                mode: match s.mode {
                    Mode::Enforce => "enforce",
                    Mode::Monitor => "monitor",
                }
                .to_owned(),
            })
            .collect()
    }
}
