//! The second factor as the replicas keep it (`wardline-mfa` checks the
//! codes): each operator's enrolment, and the sessions codes opened, in
//! the store, so that every replica accepts a session and no replica
//! accepts a code twice.
//!
//! Every change needs a session once the site has role bindings
//! ([`ControlPlane::second_factor`]): the token of `wardctl login` in the
//! `x-wardline-session` header, with the very certificate that opened it.

use std::time::Duration;

use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use wardline_mfa::{CodeError, Enrolment, SessionRecord};
use wardline_proto::v1;
use wardline_roles::Verb;
use wardline_tls::Identity;

use crate::server::{ControlPlane, fingerprint, store_unavailable};

/// Each operator's enrolment: `/wardline/mfa/operators/<name>`.
pub const OPERATORS_PREFIX: &str = "/wardline/mfa/operators/";
/// Each session, by its token's SHA-256: `/wardline/mfa/sessions/<hash>`.
pub const SESSIONS_PREFIX: &str = "/wardline/mfa/sessions/";
/// The header a session's token travels in.
pub const SESSION_HEADER: &str = "x-wardline-session";
/// How long a session lasts unless the replica is told otherwise.
pub const SESSION: Duration = Duration::from_secs(30 * 60);
/// Tries at a compare-and-swap before giving up (another replica wrote
/// the same record meanwhile).
const CAS_TRIES: usize = 5;

fn unix(t: OffsetDateTime) -> u64 {
    t.unix_timestamp().max(0) as u64
}

fn rfc3339(unix: u64) -> String {
    OffsetDateTime::from_unix_timestamp(unix as i64)
        .map(wardline_proto::convert::format_time)
        .unwrap_or_default()
}

fn code_status(e: CodeError) -> Status {
    match e {
        CodeError::NotEnrolled | CodeError::NothingPending => {
            Status::failed_precondition(e.to_string())
        }
        _ => Status::unauthenticated(e.to_string()),
    }
}

/// Whether session `s` was opened by the caller, with the certificate the
/// call came with.
fn callers<T>(s: &SessionRecord, req: &Request<T>, id: &Identity) -> bool {
    s.operator == id.name && s.fingerprint == fingerprint(req)
}

/// Whether session `s` has not ended.
fn live(s: &SessionRecord) -> bool {
    s.expires > unix(OffsetDateTime::now_utc())
}

/// The session token a call carries, if any.
fn token<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl ControlPlane {
    /// Refuses a change unless the call carries a live session opened
    /// with the caller's own certificate (once any role binding exists).
    pub(crate) async fn second_factor<T>(
        &self,
        req: &Request<T>,
        id: &Identity,
    ) -> Result<(), Status> {
        if !self.mfa_required() {
            return Ok(());
        }
        let session = self.session_of(req).await?;
        let now = unix(OffsetDateTime::now_utc());
        match session {
            None => Err(Status::unauthenticated(format!(
                "a change needs a second factor: run `wardctl login` (and `wardctl mfa enroll` \
                 first if {:?} has none)",
                id.name
            ))),
            Some((_, s)) if !callers(&s, req, id) => {
                tracing::warn!(certificate = %id.name, session = %s.operator, peer = ?req.remote_addr(),
                    "refused: a session presented with another certificate");
                Err(Status::unauthenticated(
                    "the session was opened with another certificate: run `wardctl login`",
                ))
            }
            Some((_, s)) if s.expires <= now => Err(Status::unauthenticated(format!(
                "the session ended at {}: run `wardctl login`",
                rfc3339(s.expires)
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The session the call's token names: its key and record.
    async fn session_of<T>(
        &self,
        req: &Request<T>,
    ) -> Result<Option<(String, SessionRecord)>, Status> {
        let Some(token) = token(req) else {
            return Ok(None);
        };
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::unauthenticated(format!(
                "the {SESSION_HEADER} header is no session token: run `wardctl login`"
            )));
        }
        let key = format!("{SESSIONS_PREFIX}{}", wardline_mfa::token_hash(&token));
        let Some(kv) = self.store().get(&key).await.map_err(store_unavailable)? else {
            return Err(Status::unauthenticated(
                "the session is unknown or was ended: run `wardctl login`",
            ));
        };
        let record = serde_json::from_slice(&kv.value)
            .map_err(|e| Status::internal(format!("{key}: unreadable: {e}")))?;
        Ok(Some((key, record)))
    }

    /// Until when the caller's session lasts (RFC 3339; empty: none).
    pub(crate) async fn session_expires<T>(&self, req: &Request<T>, id: &Identity) -> String {
        match self.session_of(req).await {
            Ok(Some((_, s))) if callers(&s, req, id) && live(&s) => rfc3339(s.expires),
            _ => String::new(),
        }
    }

    /// Reads `operator`'s enrolment, lets `change` decide, and writes it
    /// back if nothing else wrote it meanwhile (else reads again).
    async fn update_enrolment<R>(
        &self,
        operator: &str,
        mut change: impl FnMut(&mut Enrolment) -> Result<R, Status>,
    ) -> Result<Result<R, Status>, Status> {
        let key = format!("{OPERATORS_PREFIX}{operator}");
        for _ in 0..CAS_TRIES {
            let kv = self.store().get(&key).await.map_err(store_unavailable)?;
            let (mut e, revision) = match &kv {
                Some(kv) => (
                    serde_json::from_slice::<Enrolment>(&kv.value)
                        .map_err(|e| Status::internal(format!("{key}: unreadable: {e}")))?,
                    kv.mod_revision,
                ),
                None => (
                    Enrolment {
                        operator: operator.to_owned(),
                        ..Enrolment::default()
                    },
                    0,
                ),
            };
            let before = e.clone();
            let outcome = change(&mut e);
            if e == before {
                return Ok(outcome);
            }
            if self.put_if_unchanged(&key, &e, revision).await? {
                return Ok(outcome);
            }
        }
        Err(Status::aborted(
            "the enrolment changed while it was checked; try again",
        ))
    }

    /// Checks a code of `operator`'s second factor: once, within a step
    /// either side, wrong ones counted (`wardline-mfa`), on every replica.
    pub(crate) async fn check_code(&self, operator: &str, code: &str) -> Result<(), Status> {
        let code = code.trim().to_owned();
        let now = unix(OffsetDateTime::now_utc());
        self.update_enrolment(operator, |e| e.check(&code, now).map_err(code_status))
            .await?
    }

    pub(crate) async fn mfa_enroll_call(
        &self,
        req: Request<v1::MfaEnrollRequest>,
    ) -> Result<Response<v1::MfaEnrollResponse>, Status> {
        let id = self.allowed(&req, Verb::ReadStatus)?;
        let key = format!("{OPERATORS_PREFIX}{}", id.name);
        let enrolled = match self.store().get(&key).await.map_err(store_unavailable)? {
            Some(kv) => serde_json::from_slice::<Enrolment>(&kv.value)
                .map(|e| e.enrolled())
                .unwrap_or(false),
            None => false,
        };
        if enrolled {
            // Replacing a factor needs the one in force: a stolen
            // certificate alone cannot swap in the thief's phone.
            self.second_factor_always(&req, &id).await?;
        }
        let secret = self.update_enrolment(&id.name, |e| Ok(e.begin())).await??;
        Ok(Response::new(v1::MfaEnrollResponse {
            uri: wardline_mfa::otpauth_uri("Wardline", &id.name, &secret),
            secret,
            replaces: enrolled,
        }))
    }

    /// [`ControlPlane::second_factor`], also on a site being set up.
    async fn second_factor_always<T>(&self, req: &Request<T>, id: &Identity) -> Result<(), Status> {
        match self.session_of(req).await? {
            Some((_, s)) if callers(&s, req, id) && live(&s) => Ok(()),
            _ => Err(Status::unauthenticated(
                "a second factor is enrolled already: replacing it needs a session of it \
                 (`wardctl login`), or an admin's `wardctl mfa reset`",
            )),
        }
    }

    pub(crate) async fn mfa_confirm_call(
        &self,
        req: Request<v1::MfaConfirmRequest>,
    ) -> Result<Response<v1::MfaConfirmResponse>, Status> {
        let id = self.allowed(&req, Verb::ReadStatus)?;
        let code = req.get_ref().code.trim().to_owned();
        let now = OffsetDateTime::now_utc();
        let time = wardline_proto::convert::format_time(now);
        self.update_enrolment(&id.name, |e| {
            e.confirm(&code, unix(now), &time).map_err(code_status)
        })
        .await??;
        tracing::info!(operator = %id.name, "second factor enrolled");
        Ok(Response::new(v1::MfaConfirmResponse {}))
    }

    pub(crate) async fn login_call(
        &self,
        req: Request<v1::LoginRequest>,
    ) -> Result<Response<v1::LoginResponse>, Status> {
        let id = self.allowed(&req, Verb::ReadStatus)?;
        if let Err(e) = self.check_code(&id.name, &req.get_ref().code).await {
            tracing::warn!(operator = %id.name, peer = ?req.remote_addr(), "second factor refused: {}", e.message());
            return Err(e);
        }
        let now = unix(OffsetDateTime::now_utc());
        let (token, hash) = wardline_mfa::new_token();
        let record = SessionRecord {
            operator: id.name.clone(),
            fingerprint: fingerprint(&req),
            opened: now,
            expires: now + self.mfa_session().as_secs(),
        };
        let value = serde_json::to_vec(&record).map_err(|e| Status::internal(e.to_string()))?;
        self.store()
            .put(&format!("{SESSIONS_PREFIX}{hash}"), value)
            .await
            .map_err(store_unavailable)?;
        self.forget_ended_sessions(now).await;
        tracing::info!(operator = %id.name, until = %rfc3339(record.expires), "second-factor session opened");
        Ok(Response::new(v1::LoginResponse {
            token,
            expires: rfc3339(record.expires),
        }))
    }

    /// Deletes sessions that have ended: the store keeps only live ones.
    async fn forget_ended_sessions(&self, now: u64) {
        let Ok(all) = self.store().range(SESSIONS_PREFIX).await else {
            return;
        };
        for kv in all {
            let ended = serde_json::from_slice::<SessionRecord>(&kv.value)
                .map(|s| s.expires <= now)
                .unwrap_or(true);
            if ended && let Err(e) = self.store().delete(&kv.key).await {
                tracing::warn!("forgetting an ended session: {e}");
            }
        }
    }

    pub(crate) async fn logout_call(
        &self,
        req: Request<v1::LogoutRequest>,
    ) -> Result<Response<v1::LogoutResponse>, Status> {
        let id = self.allowed(&req, Verb::ReadStatus)?;
        if let Some((key, s)) = self.session_of(&req).await?
            && callers(&s, &req, &id)
        {
            self.store().delete(&key).await.map_err(store_unavailable)?;
        }
        Ok(Response::new(v1::LogoutResponse {}))
    }

    pub(crate) async fn mfa_reset_call(
        &self,
        req: Request<v1::MfaResetRequest>,
    ) -> Result<Response<v1::MfaResetResponse>, Status> {
        let id = self.allowed(&req, Verb::ChangePki)?;
        self.second_factor(&req, &id).await?;
        let r = req.get_ref();
        crate::limits::message("reason", &r.reason)?;
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "a reset needs a reason (--reason), kept in the audit trail",
            ));
        }
        let key = format!("{OPERATORS_PREFIX}{}", r.operator);
        if self
            .store()
            .get(&key)
            .await
            .map_err(store_unavailable)?
            .is_none()
        {
            return Err(Status::not_found(format!(
                "operator {:?} has no second factor enrolled",
                r.operator
            )));
        }
        self.store().delete(&key).await.map_err(store_unavailable)?;
        let mut ended = 0;
        for kv in self
            .store()
            .range(SESSIONS_PREFIX)
            .await
            .map_err(store_unavailable)?
        {
            if serde_json::from_slice::<SessionRecord>(&kv.value)
                .is_ok_and(|s| s.operator == r.operator)
            {
                self.store()
                    .delete(&kv.key)
                    .await
                    .map_err(store_unavailable)?;
                ended += 1;
            }
        }
        tracing::warn!(operator = %r.operator, by = %id.name, "second factor reset");
        Ok(Response::new(v1::MfaResetResponse { sessions: ended }))
    }
}
