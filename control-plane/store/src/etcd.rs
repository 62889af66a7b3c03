//! The etcd backend: an etcd v3 cluster shared by several control-plane
//! instances.
//!
//! etcd's model is the store's model, so revisions, create and mod
//! revisions, transactions and watches map one to one. Keys are used as
//! given: callers namespace them (`/wardline/...`).
//!
//! The connection is always TLS with a client certificate ([`EtcdTls`]):
//! every endpoint must be an `https://` URL, each member's certificate is
//! verified against the etcd CA by the endpoint's host, and the control
//! plane presents its etcd client certificate, which etcd
//! (`--client-cert-auth`) checks against the same CA. A handshake that
//! either side refuses is reported at once, not retried, naming the files
//! to check.
//!
//! The client is given every member's endpoint and balances over them; a
//! call that fails because a member is down or has no leader is tried again
//! on another member until [`EtcdOptions::retry_budget`] runs out, so a
//! cluster that keeps its quorum keeps serving while a member is down.
//! Reads are retried on any transient failure. A transaction is retried
//! only when the failure shows it was never applied (the connection could
//! not be made, or the member had no leader); after an ambiguous failure
//! (a time-out, a connection lost mid-call) it reports
//! [`StoreError::Unavailable`] and the caller reads again before retrying,
//! which its compares make safe.
//!
//! Watches are etcd watches that start at `after_revision + 1`, so the
//! history etcd keeps is replayed first. A watch after a revision that was
//! compacted away ends with [`StoreError::Compacted`]. A watch whose member
//! goes away ends with [`StoreError::WatchLost`]; watching again reaches a
//! member that is up.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType,
    GetOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use futures_util::stream;
use tokio::time::Instant;
use wardline_backoff::Backoff;

use super::{
    Compare, ETCD_TLS_FLAGS, EtcdTls, KeyValue, Op, Store, StoreError, TxnOutcome, WatchEvent,
    WatchStream, check_etcd_endpoint, validate_key, validate_txn,
};

/// How many keys one page of a [`Store::range`] read asks for.
const RANGE_PAGE: i64 = 1000;
/// The first pause before a retry (plus jitter); it doubles up to
/// [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// The longest pause between retries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Time limits of an [`EtcdStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Limit on making a connection to one member.
    pub connect_timeout: Duration,
    /// Limit on one attempt of one call (not on a watch, which is open as
    /// long as it is read).
    pub request_timeout: Duration,
    /// Total time a call is retried on transient failures.
    pub retry_budget: Duration,
    /// Interval of HTTP/2 keep-alive pings, which find a member that went
    /// silent. etcd refuses pings more frequent than every 5 s by default.
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered.
    pub keep_alive_timeout: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(15),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
        }
    }
}

/// A [`Store`] in an etcd v3 cluster.
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    /// The files the client connects with, for messages.
    tls: EtcdTls,
    options: EtcdOptions,
    /// Never sent on; dropped with the store, which ends every watch stream.
    shutdown: tokio::sync::watch::Sender<()>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Whether a call may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// A read: send again after any transient failure.
    Read,
    /// A write: send again only if the failure shows it was not applied.
    Write,
}

/// What a failed attempt means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Will fail again: report it.
    Permanent,
    /// The request was not applied (no connection, no leader): safe to send again.
    NotApplied,
    /// The request may or may not have been applied.
    Ambiguous,
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (client URLs of its members,
    /// all of them, so that a member being down does not matter; every one
    /// `https://`) over TLS with the files in `tls`, with the default
    /// [`EtcdOptions`], and checks that it answers.
    pub async fn connect(endpoints: &[String], tls: &EtcdTls) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, tls, EtcdOptions::default()).await
    }

    /// Connects with the given options.
    pub async fn connect_with(
        endpoints: &[String],
        tls: &EtcdTls,
        options: EtcdOptions,
    ) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::InvalidRequest(
                "connect to etcd: no endpoints given".to_owned(),
            ));
        }
        for endpoint in endpoints {
            check_etcd_endpoint(endpoint).map_err(StoreError::InvalidRequest)?;
        }
        let tls_options = tls_options(tls)?;
        let check = Arc::new(wardline_tls::etcd_check_config(
            &tls.ca, &tls.cert, &tls.key,
        )?);
        check_handshakes(endpoints, tls, check, options.connect_timeout).await?;
        let connect_options = ConnectOptions::new()
            .with_tls(tls_options)
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive_interval, options.keep_alive_timeout)
            // A member cut off from the others must not serve watches it
            // cannot keep up to date.
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(connect_options))
            .await
            .map_err(|e| match e {
                etcd_client::Error::InvalidUri(_) | etcd_client::Error::InvalidArgs(_) => {
                    StoreError::InvalidRequest(format!(
                        "connect to etcd at {}: {e}",
                        endpoints.join(",")
                    ))
                }
                other => StoreError::Unavailable {
                    operation: "connect to etcd".to_owned(),
                    endpoints: endpoints.join(","),
                    reason: describe(&other),
                },
            })?;
        let (shutdown, _) = tokio::sync::watch::channel(());
        let store = Self {
            client,
            endpoints: endpoints.to_vec(),
            tls: tls.clone(),
            options,
            shutdown,
        };
        let revision = store.current_revision("connect to etcd").await?;
        tracing::info!(endpoints = %store.endpoints.join(","), revision, "connected to etcd");
        Ok(store)
    }

    /// The endpoints this store was given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Discards the history before `revision`: watches after an older
    /// revision then fail with [`StoreError::Compacted`]. The control plane
    /// calls this now and then so that etcd's history does not grow without
    /// bound. Compacting to a revision already compacted is a no-op.
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let operation = format!("etcd compact to revision {revision}");
        let revision = to_etcd_revision(&operation, revision)?;
        self.call(&operation, Retry::Read, |mut client| async move {
            match client
                .compact(revision, Some(CompactionOptions::new().with_physical()))
                .await
            {
                Ok(_) => Ok(()),
                // Done before (perhaps by an attempt whose answer was lost).
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::OutOfRange
                        && status.message().contains("has been compacted") =>
                {
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })
        .await?;
        tracing::info!(revision, "etcd history compacted");
        Ok(())
    }

    async fn current_revision(&self, operation: &str) -> Result<u64, StoreError> {
        let response = self
            .call(operation, Retry::Read, |mut client| async move {
                client
                    .get(vec![0_u8], Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await?;
        Ok(header_revision(response.header()))
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry
    /// budget is spent; `operation` names the call and its key in errors.
    async fn call<T, F, Fut>(
        &self,
        operation: &str,
        retry: Retry,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + self.options.retry_budget;
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
        let mut tries = 0_u32;
        loop {
            tries += 1;
            let (failure, reason) = match tokio::time::timeout(
                self.options.request_timeout,
                attempt(self.client.clone()),
            )
            .await
            {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(err)) => {
                    if let Some(refusal) = tls_refusal(&err, &self.tls) {
                        return Err(StoreError::Backend(format!("{operation}: {refusal}")));
                    }
                    (classify(&err), describe(&err))
                }
                Err(_) => (
                    Failure::Ambiguous,
                    format!("no answer within {:?}", self.options.request_timeout),
                ),
            };
            let again = match failure {
                Failure::Permanent => {
                    return Err(StoreError::Backend(format!("{operation}: {reason}")));
                }
                Failure::NotApplied => true,
                Failure::Ambiguous => retry == Retry::Read,
            };
            let delay = backoff.next_delay();
            if !again || Instant::now() + delay >= deadline {
                return Err(StoreError::Unavailable {
                    operation: format!("{operation} (after {tries} attempts)"),
                    endpoints: self.endpoints.join(","),
                    reason,
                });
            }
            tracing::debug!(operation, tries, %reason, "etcd call failed, trying again");
            tokio::time::sleep(delay).await;
        }
    }
}

/// The client TLS settings for etcd from the files in `tls`, checked up
/// front so that a bad file is reported by name (see
/// [`wardline_tls::etcd_client_tls`]).
pub fn tls_options(tls: &EtcdTls) -> Result<TlsOptions, StoreError> {
    Ok(wardline_tls::etcd_client_tls(&tls.ca, &tls.cert, &tls.key)?)
}

/// What to say when `err` is a TLS handshake that one side refused, which
/// trying again would not change: etcd refusing the client certificate
/// (a fatal alert from the member), or this client refusing the member's
/// certificate. `None` for every other failure.
fn tls_refusal(err: &etcd_client::Error, tls: &EtcdTls) -> Option<String> {
    let text = error_chain(err);
    let lower = text.to_ascii_lowercase();
    if lower.contains("received fatal alert") {
        Some(refused_by_etcd(&text, tls))
    } else if lower.contains("invalid peer certificate") {
        Some(refused_of_etcd(&text, tls))
    } else {
        None
    }
}

/// The message for etcd refusing the client certificate (`detail`).
fn refused_by_etcd(detail: &str, tls: &EtcdTls) -> String {
    format!(
        "etcd refused the TLS connection ({detail}): it does not accept the client certificate \
         {}; check that {ETCD_TLS_FLAGS} are a client certificate and key issued by the CA etcd \
         trusts (its --trusted-ca-file), valid now",
        tls.cert.display()
    )
}

/// The message for this client refusing a member's certificate (`detail`).
fn refused_of_etcd(detail: &str, tls: &EtcdTls) -> String {
    format!(
        "the etcd member's certificate was refused ({detail}): check that --etcd-ca ({}) is the \
         CA that issued the members' certificates and that they name the host of each endpoint",
        tls.ca.display()
    )
}

/// Makes one TLS handshake with each member (at once, each within
/// `timeout`), with the TLS 1.2 configuration `check` (see
/// [`wardline_tls::etcd_check_config`]), and fails if a member refuses the
/// client certificate or this client refuses the member's certificate.
///
/// Every other outcome passes: a member that is down, slow or that speaks
/// only TLS 1.3 is left to the calls that follow, which report it.
async fn check_handshakes(
    endpoints: &[String],
    tls: &EtcdTls,
    check: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), StoreError> {
    let checks = endpoints.iter().map(|endpoint| {
        let connector = tokio_rustls::TlsConnector::from(check.clone());
        async move {
            let refusal = tokio::time::timeout(timeout, handshake(endpoint, connector))
                .await
                .ok()
                .flatten();
            refusal.map(|refusal| (endpoint, refusal))
        }
    });
    let refusals = futures_util::future::join_all(checks).await;
    if let Some((endpoint, refusal)) = refusals.into_iter().flatten().next() {
        let reason = match refusal {
            Refusal::ByEtcd(alert) => refused_by_etcd(&format!("alert {alert:?}"), tls),
            Refusal::OfEtcd(error) => refused_of_etcd(&error.to_string(), tls),
        };
        return Err(StoreError::Backend(format!(
            "connect to etcd at {endpoint}: {reason}"
        )));
    }
    Ok(())
}

/// Which side refused a check handshake.
enum Refusal {
    /// The member refused the client certificate with this alert.
    ByEtcd(rustls::AlertDescription),
    /// This client refused the member's certificate.
    OfEtcd(rustls::CertificateError),
}

/// One check handshake with the member at `endpoint`; `Some` only when a
/// certificate was refused.
async fn handshake(endpoint: &str, connector: tokio_rustls::TlsConnector) -> Option<Refusal> {
    use rustls::AlertDescription as A;
    let uri: http::Uri = endpoint.parse().ok()?;
    // An IPv6 host comes in brackets.
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(2379);
    let name = rustls::pki_types::ServerName::try_from(host)
        .ok()?
        .to_owned();
    let stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
    let err = connector.connect(name, stream).await.err()?;
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::AlertReceived(
            alert @ (A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired),
        ) => Some(Refusal::ByEtcd(*alert)),
        rustls::Error::InvalidCertificate(error) => Some(Refusal::OfEtcd(error.clone())),
        _ => None,
    }
}

/// An error's message and every cause's, joined.
fn error_chain(err: &etcd_client::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sorts an etcd client error by what a retry would do.
fn classify(err: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    match err {
        E::GRpcStatus(status) => {
            let message = status.message();
            match status.code() {
                tonic::Code::Unavailable => {
                    if message.contains("no leader") || is_connect_failure(status) {
                        Failure::NotApplied
                    } else {
                        // "request timed out", "leader changed", a broken connection.
                        Failure::Ambiguous
                    }
                }
                tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => {
                    Failure::Ambiguous
                }
                _ => Failure::Permanent,
            }
        }
        E::TransportError(_) | E::IoError(_) => Failure::NotApplied,
        E::WatchError(_) => Failure::Ambiguous,
        _ => Failure::Permanent,
    }
}

/// Whether a gRPC status reports a connection that could not be made, so
/// that the request never left this process.
fn is_connect_failure(status: &tonic::Status) -> bool {
    let mut text = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    let text = text.to_ascii_lowercase();
    [
        "connect error",
        "connection refused",
        "error trying to connect",
        "dns error",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// An etcd client error with its causes, each said once.
fn describe(err: &etcd_client::Error) -> String {
    let (mut text, mut source) = match err {
        etcd_client::Error::GRpcStatus(status) => (
            format!("gRPC {:?}: {}", status.code(), status.message()),
            std::error::Error::source(status),
        ),
        other => (other.to_string(), std::error::Error::source(other)),
    };
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| from_etcd_revision(h.revision()))
}

fn from_etcd_revision(revision: i64) -> u64 {
    // etcd revisions are never negative.
    u64::try_from(revision).unwrap_or(0)
}

fn to_etcd_revision(operation: &str, revision: u64) -> Result<i64, StoreError> {
    i64::try_from(revision).map_err(|_| {
        StoreError::InvalidRequest(format!(
            "{operation}: revision {revision} is beyond etcd's range"
        ))
    })
}

/// The end of the key range holding every key that starts with `prefix`
/// (`[0]`, meaning "no end", for the empty prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn convert_kv(operation: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let key = kv.key_str().map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: format!("{operation}: the key is not UTF-8: {e}"),
    })?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: kv.value().to_vec(),
        create_revision: from_etcd_revision(kv.create_revision()),
        mod_revision: from_etcd_revision(kv.mod_revision()),
    })
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        EtcdStore::compact(self, revision).await
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key("get", key)?;
        let operation = format!("etcd get key {key:?}");
        let response = self
            .call(&operation, Retry::Read, |mut client| async move {
                client.get(key, None).await
            })
            .await?;
        response
            .kvs()
            .first()
            .map(|kv| convert_kv(&operation, kv))
            .transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let operation = format!("etcd range prefix {prefix:?}");
        let end = prefix_end(prefix.as_bytes());
        let mut start = if prefix.is_empty() {
            vec![0_u8]
        } else {
            prefix.as_bytes().to_vec()
        };
        // Every page after the first is read at the first one's revision,
        // so the pages make one snapshot.
        let mut at_revision = None;
        let mut out = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(RANGE_PAGE);
            if let Some(revision) = at_revision {
                options = options.with_revision(revision);
            }
            let page_start = start.clone();
            let response = self
                .call(&operation, Retry::Read, |mut client| {
                    let key = page_start.clone();
                    let options = options.clone();
                    async move { client.get(key, Some(options)).await }
                })
                .await?;
            if at_revision.is_none() {
                at_revision = response.header().map(|h| h.revision());
            }
            for kv in response.kvs() {
                out.push(convert_kv(&operation, kv)?);
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome, StoreError> {
        validate_txn(&compares, &ops)?;
        let keys: Vec<&str> = ops.iter().map(Op::key).collect();
        let operation = format!("etcd transaction on keys {keys:?}");
        let mut when = Vec::with_capacity(compares.len());
        for compare in &compares {
            let Compare::ModRevision { key, revision } = compare;
            let revision = to_etcd_revision(&operation, *revision)?;
            when.push(EtcdCompare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            ));
        }
        let then: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key.as_str(), value.as_slice(), None),
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let txn = Txn::new().when(when).and_then(then);
        let response = self
            .call(&operation, Retry::Write, |mut client| {
                let txn = txn.clone();
                async move { client.txn(txn).await }
            })
            .await?;
        let outcome = TxnOutcome {
            succeeded: response.succeeded(),
            revision: header_revision(response.header()),
        };
        if !outcome.succeeded {
            tracing::debug!(%operation, revision = outcome.revision, "etcd transaction compare failed");
        }
        Ok(outcome)
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.current_revision("etcd read the revision").await
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        let operation = format!("etcd watch prefix {prefix:?} after revision {after_revision}");
        let start = to_etcd_revision(&operation, after_revision.saturating_add(1))?;
        let options = WatchOptions::new().with_prefix().with_start_revision(start);
        let inner = self
            .call(&operation, Retry::Read, |client| {
                let options = options.clone();
                async move { client.watch_client().watch(prefix, Some(options)).await }
            })
            .await?;
        tracing::debug!(prefix, after_revision, "etcd watch started");
        let watcher = Watcher {
            prefix: prefix.to_owned(),
            after_revision,
            inner: Some(inner),
            pending: VecDeque::new(),
            shutdown: self.shutdown.subscribe(),
        };
        Ok(Box::pin(stream::unfold(watcher, Watcher::next)))
    }
}

/// The state of one etcd watch stream.
struct Watcher {
    prefix: String,
    after_revision: u64,
    /// `None` once the stream has ended.
    inner: Option<etcd_client::WatchStream>,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
    shutdown: tokio::sync::watch::Receiver<()>,
}

impl Watcher {
    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, Self)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if item.is_err() {
                    self.inner = None;
                    self.pending.clear();
                }
                return Some((item, self));
            }
            let inner = self.inner.as_mut()?;
            let message = tokio::select! {
                message = inner.message() => message,
                // Err: the store was dropped (nothing is ever sent).
                _ = self.shutdown.changed() => {
                    tracing::debug!(prefix = %self.prefix, "etcd store dropped, watch ends");
                    self.inner = None;
                    return None;
                }
            };
            let lost = |reason: String| StoreError::WatchLost {
                prefix: self.prefix.clone(),
                reason,
            };
            match message {
                Ok(Some(response)) => {
                    if response.canceled() {
                        let compact_revision = response.compact_revision();
                        let err = if compact_revision > 0 {
                            StoreError::Compacted {
                                prefix: self.prefix.clone(),
                                after_revision: self.after_revision,
                                compact_revision: from_etcd_revision(compact_revision),
                            }
                        } else {
                            lost(format!(
                                "etcd cancelled the watch: {}",
                                response.cancel_reason()
                            ))
                        };
                        tracing::warn!(prefix = %self.prefix, error = %err, "etcd watch cancelled");
                        self.pending.push_back(Err(err));
                        continue;
                    }
                    let operation = format!("etcd watch prefix {:?}", self.prefix);
                    for event in response.events() {
                        let Some(kv) = event.kv() else {
                            continue;
                        };
                        let converted = match event.event_type() {
                            EventType::Put => convert_kv(&operation, kv).map(WatchEvent::Put),
                            EventType::Delete => {
                                convert_kv(&operation, kv).map(|kv| WatchEvent::Delete {
                                    key: kv.key,
                                    mod_revision: kv.mod_revision,
                                })
                            }
                        };
                        self.pending.push_back(converted);
                    }
                }
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, "etcd closed the watch stream");
                    self.pending
                        .push_back(Err(lost("etcd closed the watch stream".to_owned())));
                }
                Err(err) => {
                    let reason = describe(&err);
                    tracing::warn!(prefix = %self.prefix, %reason, "etcd watch stream failed");
                    self.pending.push_back(Err(lost(reason)));
                }
            }
        }
    }
}
