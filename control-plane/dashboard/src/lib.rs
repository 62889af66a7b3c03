//! The web dashboard: a replica's flows, segment matrix, top dropped
//! sources, segment map, agents and device inventory in a browser, over
//! HTTPS with the replica's site certificate (`docs/dashboard.md`).
//!
//! Operators sign in with a link (`wardctl dashboard login`, over mutual
//! TLS) that opens a session once ([`sessions`]); the browser needs no
//! client certificate. The pages and scripts are compiled into the binary
//! and served from here, so nothing is fetched from anywhere else; the
//! content security policy forbids it too.
//!
//! The dashboard holds no data of its own: every answer comes from a
//! [`Source`] (the replica, which asks its flow store and registry), in
//! the JSON `wardctl -o json` prints ([`wardline_proto::json`]).
#![forbid(unsafe_code)]

pub mod sessions;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tonic::{Code, Status};
use wardline_proto::v1;

pub use sessions::{Session, Sessions, Settings};

/// The session cookie's name.
pub const COOKIE: &str = "wardline_session";
/// Flow records one table shows at most.
pub const MAX_ROWS: u32 = 1000;
/// Flow records a table shows unless asked for another number.
pub const DEFAULT_ROWS: u32 = 200;
/// Connections served at once, at most.
const MAX_CONNECTIONS: usize = 256;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed after this, busy or idle (a browser opens
/// another), so that idle keep-alive connections cannot hold every slot.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

/// A segment as the policy in force names it.
#[derive(Clone, Debug)]
pub struct Segment {
    pub name: String,
    /// `enforce` or `monitor`.
    pub mode: String,
}

/// Where the dashboard's answers come from: the replica.
pub trait Source: Send + Sync + 'static {
    fn flows(
        &self,
        q: v1::ObserveRequest,
    ) -> impl Future<Output = Result<Vec<v1::Flow>, Status>> + Send;
    fn matrix(
        &self,
        q: v1::ObserveRequest,
    ) -> impl Future<Output = Result<v1::FlowMatrixResponse, Status>> + Send;
    fn top(
        &self,
        q: v1::TopRequest,
    ) -> impl Future<Output = Result<v1::TopResponse, Status>> + Send;
    fn inventory(
        &self,
        q: v1::InventoryRequest,
    ) -> impl Future<Output = Result<v1::InventoryResponse, Status>> + Send;
    fn status(&self) -> impl Future<Output = Result<v1::StatusResponse, Status>> + Send;
    /// The segments of the policy in force, in name order.
    fn segments(&self) -> Vec<Segment>;
    /// Refuses a session whose operator (as signed in) may no longer read
    /// what the dashboard shows: asked on every request, so that a role
    /// taken away ends what a session may see at once.
    fn allows(&self, operator: &str) -> Result<(), Status>;
    /// Records a sign-in, a sign-out or a refusal in the site's audit
    /// trail: `operator` as signed in (`None`: a link that proved no one),
    /// `refused` whether it was refused, and why.
    fn note(&self, operator: Option<&str>, action: &str, refused: bool, detail: String);
    /// Whether signing in needs a code of the operator's second factor
    /// (as every change does: the site has role bindings).
    fn needs_code(&self) -> bool;
    /// Checks a code of `operator`'s second factor as `wardctl login`
    /// does: once, wrong ones counted towards the lock-out.
    fn check_code(
        &self,
        operator: &str,
        code: &str,
    ) -> impl Future<Output = Result<(), Status>> + Send;
}

struct App<S> {
    source: S,
    sessions: Arc<Sessions>,
}

/// The filters of the flow views, as the page's query string carries them.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    since: String,
    until: String,
    node: String,
    from: String,
    to: String,
    port: String,
    protocol: String,
    verdict: String,
    reason: String,
    policy: String,
    last: String,
    /// Top: `sources` or `talkers`.
    by: String,
    /// Top: how many.
    limit: String,
}

fn number(field: &str, text: &str, max: u32) -> Result<u32, Status> {
    if text.is_empty() {
        return Ok(0);
    }
    match text.parse::<u32>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(Status::invalid_argument(format!(
            "{field}: {text:?} is not a number from 0 to {max}"
        ))),
    }
}

impl Filter {
    fn observe(&self) -> Result<v1::ObserveRequest, Status> {
        Ok(v1::ObserveRequest {
            since: self.since.clone(),
            until: self.until.clone(),
            node: self.node.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            port: number("port", &self.port, 65535)?,
            protocol: self.protocol.clone(),
            verdict: self.verdict.clone(),
            reason: self.reason.clone(),
            policy: self.policy.clone(),
            last: 0,
            follow: false,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryFilter {
    address: String,
    segment: String,
    since: String,
    new: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignIn {
    token: String,
}

/// A refusal as the page reads it: `{"error": "..."}` with a status.
struct Failure(StatusCode, String);

impl From<Status> for Failure {
    fn from(s: Status) -> Failure {
        let code = match s.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure(code, s.message().to_owned())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

type Answer = Result<axum::Json<Value>, Failure>;

fn cookie_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

impl<S: Source> App<S> {
    fn session(&self, headers: &HeaderMap) -> Result<Session, Failure> {
        let session = cookie_secret(headers)
            .and_then(|s| self.sessions.session(s, OffsetDateTime::now_utc()))
            .ok_or_else(|| {
                Failure(
                    StatusCode::UNAUTHORIZED,
                    "not signed in, or the session ended: run `wardctl dashboard login`".into(),
                )
            })?;
        if let Err(e) = self.source.allows(&session.operator) {
            self.source.note(
                Some(&session.operator),
                "dashboard-request",
                true,
                e.message().to_owned(),
            );
            return Err(e.into());
        }
        Ok(session)
    }
}

const INDEX: &str = include_str!("../assets/index.html");
const SIGN_IN: &str = include_str!("../assets/signin.html");
const CODE: &str = include_str!("../assets/code.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/app.css");

fn html(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn index<S: Source>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Response {
    match app.session(&headers) {
        Ok(_) => html(StatusCode::OK, INDEX),
        Err(_) => html(StatusCode::UNAUTHORIZED, SIGN_IN),
    }
}

/// The page that asks for the second factor's code, carrying the link.
fn code_page(token: &str, problem: &str) -> Response {
    // The link is hex; anything else never reaches here.
    let page = CODE
        .replace("{{token}}", token)
        .replace("{{problem}}", &escape(problem));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn hex_token(token: &str) -> bool {
    !token.is_empty() && token.len() <= 128 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn sign_in<S: Source>(State(app): State<Arc<App<S>>>, Query(q): Query<SignIn>) -> Response {
    if app.source.needs_code() {
        // The link is used only once the code is right.
        return match app.sessions.pending(&q.token, OffsetDateTime::now_utc()) {
            Some(_) if hex_token(&q.token) => code_page(&q.token, ""),
            _ => {
                app.source.note(
                    None,
                    "dashboard-sign-in",
                    true,
                    "unknown or used link".into(),
                );
                html(StatusCode::UNAUTHORIZED, SIGN_IN)
            }
        };
    }
    open_session(&app, &q.token)
}

/// The code form's fields.
#[derive(Deserialize)]
struct CodeForm {
    token: String,
    code: String,
}

async fn sign_in_with_code<S: Source>(
    State(app): State<Arc<App<S>>>,
    axum::Form(f): axum::Form<CodeForm>,
) -> Response {
    let Some(operator) = app
        .sessions
        .pending(&f.token, OffsetDateTime::now_utc())
        .filter(|_| hex_token(&f.token))
    else {
        app.source.note(
            None,
            "dashboard-sign-in",
            true,
            "unknown or used link".into(),
        );
        return html(StatusCode::UNAUTHORIZED, SIGN_IN);
    };
    if let Err(e) = app.source.check_code(&operator, &f.code).await {
        tracing::warn!(%operator, "dashboard sign-in refused: {}", e.message());
        app.source.note(
            Some(&operator),
            "dashboard-sign-in",
            true,
            format!("second factor: {}", e.message()),
        );
        let mut r = code_page(&f.token, e.message());
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    open_session(&app, &f.token)
}

fn open_session<S: Source>(app: &App<S>, token: &str) -> Response {
    match app.sessions.sign_in(token, OffsetDateTime::now_utc()) {
        Ok((secret, session)) => {
            let until = wardline_proto::convert::format_time(session.expires);
            tracing::info!(operator = %session.operator, until = %until, "dashboard session opened");
            app.source.note(
                Some(&session.operator),
                "dashboard-sign-in",
                false,
                format!("session until {until}"),
            );
            let max_age = app.sessions.settings().session.as_secs();
            let cookie = format!(
                "{COOKIE}={secret}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
            );
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Err(e) => {
            tracing::warn!("dashboard sign-in refused: {e}");
            app.source
                .note(None, "dashboard-sign-in", true, e.to_string());
            html(StatusCode::UNAUTHORIZED, SIGN_IN)
        }
    }
}

async fn sign_out<S: Source>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Response {
    if let Some(operator) = cookie_secret(&headers).and_then(|s| app.sessions.end(s)) {
        tracing::info!(%operator, "dashboard session ended by sign-out");
        app.source
            .note(Some(&operator), "dashboard-sign-out", false, String::new());
    }
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "wardline_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

async fn whoami<S: Source>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Answer {
    let s = app.session(&headers)?;
    Ok(axum::Json(json!({
        "operator": s.operator,
        "expires": wardline_proto::convert::format_time(s.expires),
    })))
}

async fn flows<S: Source>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Answer {
    app.session(&headers)?;
    let last = match number("last", &f.last, MAX_ROWS)? {
        0 => DEFAULT_ROWS,
        n => n,
    };
    let q = v1::ObserveRequest {
        last,
        ..f.observe()?
    };
    let got = app.source.flows(q).await?;
    Ok(axum::Json(json!({
        "flows": got.iter().map(wardline_proto::json::flow).collect::<Vec<_>>(),
        "last": last,
    })))
}

async fn matrix<S: Source>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Answer {
    app.session(&headers)?;
    let m = app.source.matrix(f.observe()?).await?;
    let mut v = wardline_proto::json::matrix(&m);
    v["segments"] = segments(&app.source);
    Ok(axum::Json(v))
}

fn segments(source: &impl Source) -> Value {
    source
        .segments()
        .into_iter()
        .map(|s| json!({"name": s.name, "mode": s.mode}))
        .collect()
}

async fn top<S: Source>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Query(f): Query<Filter>,
) -> Answer {
    app.session(&headers)?;
    let r = app
        .source
        .top(v1::TopRequest {
            filter: Some(f.observe()?),
            by: f.by.clone(),
            limit: number("limit", &f.limit, 1000)?,
        })
        .await?;
    Ok(axum::Json(wardline_proto::json::top(&r)))
}

async fn inventory<S: Source>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Query(f): Query<InventoryFilter>,
) -> Answer {
    app.session(&headers)?;
    let new_only = match f.new.as_str() {
        "" | "0" | "false" => false,
        "1" | "true" => true,
        other => {
            return Err(Failure(
                StatusCode::BAD_REQUEST,
                format!("new: {other:?} is not true or false"),
            ));
        }
    };
    let r = app
        .source
        .inventory(v1::InventoryRequest {
            address: f.address,
            segment: f.segment,
            new_only,
            since: f.since,
        })
        .await?;
    Ok(axum::Json(wardline_proto::json::inventory(&r)))
}

async fn agents<S: Source>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Answer {
    app.session(&headers)?;
    let r = app.source.status().await?;
    Ok(axum::Json(wardline_proto::json::status(&r)))
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The headers every answer carries: nothing but this origin's own
/// scripts, styles and requests; no framing; no referrer (a sign-in link
/// must not leak); nothing cached.
async fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

/// The dashboard's routes over `source`, with sign-in through `sessions`.
pub fn router<S: Source>(source: S, sessions: Arc<Sessions>) -> Router {
    let app = Arc::new(App { source, sessions });
    Router::new()
        .route("/", get(index::<S>))
        .route("/login", get(sign_in::<S>).post(sign_in_with_code::<S>))
        .route("/logout", post(sign_out::<S>))
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/session", get(whoami::<S>))
        .route("/api/flows", get(flows::<S>))
        .route("/api/matrix", get(matrix::<S>))
        .route("/api/top", get(top::<S>))
        .route("/api/inventory", get(inventory::<S>))
        .route("/api/agents", get(agents::<S>))
        .layer(axum::middleware::map_response(harden))
        .with_state(app)
}

/// Serves `router` over TLS on `listener` until the process ends: each
/// handshake bounded ([`wardline_tls::incoming`]), at most
/// [`MAX_CONNECTIONS`] connections at once, each request's headers within
/// [`HEADER_TIMEOUT`], each connection at most [`CONNECTION_TIMEOUT`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tokio_stream::StreamExt as _;

    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving the dashboard over HTTPS");
    }
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut incoming = Box::pin(wardline_tls::incoming(listener, tls));
    while let Some(stream) = incoming.next().await {
        let Ok(stream) = stream else { continue };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!("dashboard: {MAX_CONNECTIONS} connections open, one more closed");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Err(e)) => tracing::debug!("dashboard connection: {e}"),
                Ok(Ok(())) => {}
                Err(_) => {
                    tracing::debug!("dashboard connection open {CONNECTION_TIMEOUT:?}, closed")
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; wardline_session=abc; b=2"),
        );
        assert_eq!(cookie_secret(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("xwardline_session=abc"),
        );
        assert_eq!(cookie_secret(&h), None);
    }

    #[test]
    fn numbers_out_of_range_are_refused_by_name() {
        let e = number("port", "70000", 65535).unwrap_err();
        assert!(
            e.message().starts_with("port: \"70000\""),
            "{}",
            e.message()
        );
        assert_eq!(number("last", "", 1000).unwrap(), 0);
    }
}
