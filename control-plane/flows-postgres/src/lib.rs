//! The shared flow store: the flow records of every replica of a site in
//! one PostgreSQL database, for sites whose replicas share one store (the
//! embedded `wardline-flows` store is each replica's own).
//!
//! Records go to `wardline_flows`, partitioned by range on the record's
//! time (nanoseconds since the epoch), one partition an hour, made as
//! records for its hour arrive. Retention drops whole partitions: by age
//! those whose hour ended before `max_age` ago, then by size the oldest
//! while the records stored are more than `max_records`. Nothing is
//! deleted row by row.
//!
//! Each record is stored sealed with the site's store key (`record`, its
//! row's node, buffer, sequence and time as its AAD); beside it, in clear
//! so that queries can be narrowed in the database, are its time, node,
//! segments, verdict, reason, policy, protocol and destination port. Its
//! addresses, ports but the destination's, Ethernet addresses, counters
//! and everything else are only in the sealed record. The inventory's
//! entries (`wardline_flow_devices`) are sealed whole, by address.
//!
//! The batch sorting, the filters, the matrix, the top lists and the
//! inventory are the embedded store's own code (`wardline_flows::ingest`,
//! `Query::matches`, `tally`, `inventory`): the database narrows, the same
//! code decides, so both stores answer alike.
//!
//! Ingest and retention take one advisory lock of the database for their
//! transaction, so that replicas sharing it neither store a batch sent
//! again twice nor make or drop one partition at once.
//!
//! Live follow ([`FlowBackend::subscribe`]) carries every record stored,
//! whichever replica stored it: each row takes the next number of one
//! sequence (`ingest_id`) as it is inserted, and the ingest that inserted
//! it notifies (`NOTIFY wardline_flows`, with its highest number) as it
//! commits. Every replica listens, and while someone follows it reads the
//! rows numbered after the last it read, in that order. Ingests hold the
//! advisory lock until they commit, so numbers become visible in order: a
//! row numbered below one already read is never found later. The SIEM
//! export takes [`FlowBackend::subscribe_ingested`] instead, the records
//! this replica stored itself, so that each record reaches the SIEM once
//! from the replicas between them.
//!
//! Over TCP the database is reached only over TLS ([`PgTls`]): its
//! certificate verified against the CA given for it by the host dialled,
//! never plaintext and never a fallback to it; with a client certificate
//! for PostgreSQL's `cert` authentication, or by password over that TLS.
//! A Unix socket (a host that is a path) is local and needs none.
#![forbid(unsafe_code)]

#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt as _, pin_mut};
use prost::Message as _;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;
use wardline_flows::filter::MAX_RESULTS;
use wardline_flows::ingest::{QuotaUsed, sort};
use wardline_flows::record::time_of;
use wardline_flows::tally::{Matrix, Ranking};
use wardline_flows::{
    Counts, FlowBackend, FlowError, Ingested, InventoryQuery, Query, Retention, Top, inventory,
};
use wardline_proto::v1;
use wardline_store::encrypted::StoreKey;

/// A partition's span: an hour, in nanoseconds.
pub const PARTITION_NS: i64 = 3_600 * 1_000_000_000;
/// The parent table; its partitions are `wardline_flows_h<hour>`.
const TABLE: &str = "wardline_flows";
/// The advisory lock ingest and retention hold for their transaction.
const LOCK: i64 = 0x5761_7264_466c_6f77; // "WardFlow"
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The channel ingests notify on, with the highest `ingest_id` they
/// inserted.
const CHANNEL: &str = "wardline_flows";
/// Rows the follow reads at once.
const TAIL_PAGE: i64 = 10_000;
/// The pause before the follow's connection is made again.
const TAIL_RETRY: Duration = Duration::from_secs(1);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS wardline_flows (
    at_ns bigint NOT NULL,
    node text NOT NULL,
    buffer bigint NOT NULL,
    sequence bigint NOT NULL,
    src_segment text NOT NULL,
    dst_segment text NOT NULL,
    verdict text NOT NULL,
    reason text NOT NULL,
    policy text NOT NULL,
    protocol integer NOT NULL,
    dport integer NOT NULL,
    record bytea NOT NULL
) PARTITION BY RANGE (at_ns);
CREATE INDEX IF NOT EXISTS wardline_flows_at ON wardline_flows (at_ns);
CREATE TABLE IF NOT EXISTS wardline_flow_sequences (
    node text PRIMARY KEY,
    buffer bigint NOT NULL,
    high bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS wardline_flow_devices (
    address bytea PRIMARY KEY,
    device bytea NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS wardline_flows_ingest;
ALTER TABLE wardline_flows ADD COLUMN IF NOT EXISTS
    ingest_id bigint NOT NULL DEFAULT nextval('wardline_flows_ingest');
CREATE INDEX IF NOT EXISTS wardline_flows_ingest_id ON wardline_flows (ingest_id);
";

/// The columns a query reads, in this order.
const COLUMNS: &str = "at_ns, node, buffer, sequence, record";
/// The columns an ingest writes, in this order (`ingest_id` is numbered
/// by the database).
const INSERTED: &str = "at_ns, node, buffer, sequence, src_segment, dst_segment, verdict, \
    reason, policy, protocol, dport, record";
/// What narrows a query in the database (the same code decides after).
const WHERE: &str = "at_ns >= $1 AND at_ns <= $2 \
    AND ($3::text IS NULL OR node = $3) \
    AND ($4::text IS NULL OR verdict = $4) \
    AND ($5::text IS NULL OR reason = $5) \
    AND ($6::text IS NULL OR policy = $6) \
    AND ($7::integer IS NULL OR protocol = $7) \
    AND ($8::integer IS NULL OR dport = $8)";

/// The flow store in PostgreSQL. Every call blocks (on the store's own
/// runtime): call it off the async runtime, as the server does.
pub struct PgFlowStore {
    /// The runtime the connection runs on; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    client: tokio::sync::Mutex<Client>,
    config: Config,
    connector: Connector,
    /// The database as errors name it (no password).
    name: String,
    key: StoreKey,
    retention: Retention,
    records: AtomicU64,
    devices: AtomicU64,
    counts: Counts,
    /// Every record stored, by any replica (fed by [`tail`]).
    follow: broadcast::Sender<Arc<v1::Flow>>,
    /// The records this replica stored.
    ingested: broadcast::Sender<Arc<v1::Flow>>,
    quota: Mutex<QuotaUsed>,
}

/// TLS to the database: the CA that issued its certificate, and a client
/// certificate and its key for PostgreSQL's `cert` authentication (its
/// common name the database user), if the database asks for one.
#[derive(Debug, Clone)]
pub struct PgTls {
    pub ca: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How a connection is made: TLS over TCP, nothing over a Unix socket.
#[derive(Clone)]
enum Connector {
    Tls(MakeRustlsConnect),
    Socket,
}

impl Drop for PgFlowStore {
    fn drop(&mut self) {
        // Safe from any context, async or not.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn nanos(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(if t.unix_timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// The partition (quoted) holding records of `hour`.
fn partition(hour: i64) -> String {
    format!("\"{TABLE}_h{hour}\"")
}

/// The hour a partition's name says, if it is one of ours.
fn hour_of(name: &str) -> Option<i64> {
    name.strip_prefix(TABLE)?.strip_prefix("_h")?.parse().ok()
}

/// A record's AAD: its row.
fn record_name(node: &str, buffer: i64, sequence: i64, at_ns: i64) -> String {
    format!("flow-records/{node}/{buffer}/{sequence}/{at_ns}")
}

/// `e`, with the server's message where it sent one.
fn message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{e}: {}", db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The database `config` names, without its password.
fn describe(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgresql://{}@{host}:{port}/{}",
        config.get_user().unwrap_or_default(),
        config.get_dbname().unwrap_or_default()
    )
}

/// A connection, run on a task of its own; with `notices`, every
/// notification it receives goes there.
async fn connect(
    config: &Config,
    connector: &Connector,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) -> Result<Client, tokio_postgres::Error> {
    match connector {
        Connector::Tls(tls) => {
            let (client, connection) = config.connect(tls.clone()).await?;
            tokio::spawn(run(connection, notices));
            Ok(client)
        }
        Connector::Socket => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(run(connection, notices));
            Ok(client)
        }
    }
}

async fn run<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    notices: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(m) = messages.next().await {
        match m {
            Ok(AsyncMessage::Notification(n)) => {
                if let Some(tx) = &notices {
                    let _ = tx.send(n.payload().to_owned());
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("flow store connection: {}", message(&e));
                break;
            }
        }
    }
}

/// How `config` is to be reached: over TCP only with `tls` (and never
/// with `sslmode=disable`), which it then requires; over a Unix socket
/// without.
fn connector_for(config: &mut Config, tls: Option<&PgTls>) -> Result<Connector, String> {
    let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
    if !tcp {
        return Ok(Connector::Socket);
    }
    let Some(tls) = tls else {
        return Err(
            "a database over TCP is reached only over TLS: give the CA that issued its \
             certificate (--flow-postgres-ca)"
                .to_owned(),
        );
    };
    if config.get_ssl_mode() == SslMode::Disable {
        return Err("sslmode=disable: a database over TCP is reached only over TLS".to_owned());
    }
    // Never `prefer`: a server (or whoever answers in its place) that
    // declines TLS is refused, not spoken to in plaintext.
    config.ssl_mode(SslMode::Require);
    let client = tls.client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let rustls =
        wardline_tls::database_client_config(&tls.ca, client).map_err(|e| e.to_string())?;
    Ok(Connector::Tls(MakeRustlsConnect::new(rustls)))
}

impl PgFlowStore {
    /// Connects to the database `url` names (`postgresql://user@host:port/db`
    /// or `host=... user=...`), makes the tables if they are missing and
    /// counts what is stored.
    /// Over TCP it needs `tls` (see [`PgTls`]).
    pub fn open(
        url: &str,
        tls: Option<&PgTls>,
        key: StoreKey,
        retention: Retention,
    ) -> Result<PgFlowStore, FlowError> {
        let bad = |message: String| FlowError::Store {
            path: "URL".to_owned(),
            message,
        };
        let mut config: Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| bad(format!("not a PostgreSQL URL: {e}")))?;
        if config.get_hosts().is_empty() {
            return Err(bad("it names no host".to_owned()));
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("wardline-control-plane");
        let name = describe(&config);
        let connector = connector_for(&mut config, tls).map_err(|message| FlowError::Store {
            path: name.clone(),
            message,
        })?;
        let fail = |message: String| FlowError::Store {
            path: name.clone(),
            message,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wardline-flows-postgres")
            .enable_all()
            .build()
            .map_err(|e| fail(format!("its runtime: {e}")))?;
        let (client, records, devices, newest) = runtime.block_on(async {
            let client = connect(&config, &connector, None)
                .await
                .map_err(|e| fail(message(&e)))?;
            client
                .batch_execute(&format!(
                    "SELECT pg_advisory_lock({LOCK}); {SCHEMA} SELECT pg_advisory_unlock({LOCK});"
                ))
                .await
                .map_err(|e| fail(message(&e)))?;
            let records: i64 = client
                .query_one(&format!("SELECT count(*) FROM {TABLE}"), &[])
                .await
                .map_err(|e| fail(message(&e)))?
                .get(0);
            let devices: i64 = client
                .query_one("SELECT count(*) FROM wardline_flow_devices", &[])
                .await
                .map_err(|e| fail(message(&e)))?
                .get(0);
            // Followers follow from here on.
            let newest: i64 = client
                .query_one(
                    &format!("SELECT coalesce(max(ingest_id), 0) FROM {TABLE}"),
                    &[],
                )
                .await
                .map_err(|e| fail(message(&e)))?
                .get(0);
            Ok::<_, FlowError>((client, records, devices, newest))
        })?;
        let follow = broadcast::channel(65_536).0;
        runtime.spawn(tail(
            config.clone(),
            connector.clone(),
            key.clone(),
            follow.clone(),
            newest,
        ));
        Ok(PgFlowStore {
            runtime: Some(runtime),
            client: tokio::sync::Mutex::new(client),
            config,
            connector,
            name,
            key,
            retention,
            records: AtomicU64::new(u64::try_from(records).unwrap_or(0)),
            devices: AtomicU64::new(u64::try_from(devices).unwrap_or(0)),
            counts: Counts::default(),
            follow,
            ingested: broadcast::channel(65_536).0,
            quota: Mutex::default(),
        })
    }

    fn fail(&self, message: impl std::fmt::Display) -> FlowError {
        FlowError::Store {
            path: self.name.clone(),
            message: message.to_string(),
        }
    }

    fn pg(&self, e: &tokio_postgres::Error) -> FlowError {
        self.fail(message(e))
    }

    /// Runs `f` with the connection (made again if it was lost) on the
    /// store's runtime.
    fn with<T>(
        &self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, FlowError>,
    ) -> Result<T, FlowError> {
        let Some(rt) = self.runtime.as_ref() else {
            return Err(self.fail("closed"));
        };
        rt.block_on(async {
            let mut client = self.client.lock().await;
            if client.is_closed() {
                *client = connect(&self.config, &self.connector, None)
                    .await
                    .map_err(|e| self.pg(&e))?;
            }
            f(&mut client).await
        })
    }

    /// Streams the rows `query` may want, in time order (newest first
    /// with `newest_first`), and gives `each` those it wants, until `each`
    /// returns false.
    fn scan(
        &self,
        query: &Query,
        newest_first: bool,
        mut each: impl FnMut(OffsetDateTime, v1::Flow) -> bool,
    ) -> Result<(), FlowError> {
        let order = if newest_first {
            "at_ns DESC, node COLLATE \"C\" DESC, sequence DESC"
        } else {
            "at_ns, node COLLATE \"C\", sequence"
        };
        let sql = format!("SELECT {COLUMNS} FROM {TABLE} WHERE {WHERE} ORDER BY {order}");
        let since = query.since.map_or(i64::MIN, nanos);
        let until = query.until.map_or(i64::MAX, nanos);
        let protocol = query.protocol.map(|p| i32::try_from(p).unwrap_or(-1));
        let port = query.port.map(i32::from);
        self.with(async |client| {
            let params: [&(dyn ToSql + Sync); 8] = [
                &since,
                &until,
                &query.node,
                &query.verdict,
                &query.reason,
                &query.policy,
                &protocol,
                &port,
            ];
            let rows = client
                .query_raw(sql.as_str(), params)
                .await
                .map_err(|e| self.pg(&e))?;
            pin_mut!(rows);
            while let Some(row) = rows.next().await {
                let row = row.map_err(|e| self.pg(&e))?;
                let (at, flow) = open_row(&self.key, &row)?;
                if query.matches(&flow, at) && !each(at, flow) {
                    break;
                }
            }
            Ok(())
        })
    }
}

/// Opens the record sealed in a row of [`COLUMNS`].
fn open_row(
    key: &StoreKey,
    row: &tokio_postgres::Row,
) -> Result<(OffsetDateTime, v1::Flow), FlowError> {
    let (at_ns, node, buffer, sequence): (i64, String, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let name = record_name(&node, buffer, sequence, at_ns);
    let corrupt = |message: String| FlowError::Corrupt {
        key: name.clone(),
        message,
    };
    let opened = key
        .open(&name, row.get::<_, &[u8]>(4))
        .map_err(|e| corrupt(e.to_string()))?;
    let flow = v1::Flow::decode(opened.as_slice()).map_err(|e| corrupt(e.to_string()))?;
    let at = time_of(&flow).ok_or_else(|| corrupt("its time does not parse".to_owned()))?;
    if nanos(at) != at_ns || flow.node != node {
        return Err(corrupt("its row's time or node is not its own".to_owned()));
    }
    Ok((at, flow))
}

/// Feeds `follow` every record stored from now on, by any replica: listens
/// for ingests' notifications and, while someone follows, reads the rows
/// numbered after the last read, in order. Runs until the store is
/// dropped, its connection made again when lost.
async fn tail(
    config: Config,
    connector: Connector,
    key: StoreKey,
    follow: broadcast::Sender<Arc<v1::Flow>>,
    from: i64,
) {
    let mut last = from;
    loop {
        if let Err(e) = tail_once(&config, &connector, &key, &follow, &mut last).await {
            tracing::warn!("flow store follow: {e}");
        }
        tokio::time::sleep(TAIL_RETRY).await;
    }
}

/// One connection's worth of [`tail`]: returns when it is lost.
async fn tail_once(
    config: &Config,
    connector: &Connector,
    key: &StoreKey,
    follow: &broadcast::Sender<Arc<v1::Flow>>,
    last: &mut i64,
) -> Result<(), String> {
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let mut config = config.clone();
    config.application_name("wardline-control-plane follow");
    let client = connect(&config, connector, Some(tx))
        .await
        .map_err(|e| message(&e))?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| message(&e))?;
    // Where to start: the newest row now when no one follows; otherwise
    // after the last read (at first, the newest row when the store was
    // opened), so that a connection lost loses no record.
    if follow.receiver_count() == 0 {
        let high: i64 = client
            .query_one(
                &format!("SELECT coalesce(max(ingest_id), 0) FROM {TABLE}"),
                &[],
            )
            .await
            .map_err(|e| message(&e))?
            .get(0);
        *last = high;
    } else {
        read_after(&client, key, follow, last, i64::MAX).await?;
    }
    while let Some(payload) = notices.recv().await {
        let Ok(high) = payload.parse::<i64>() else {
            continue;
        };
        if follow.receiver_count() == 0 {
            *last = (*last).max(high);
            continue;
        }
        read_after(&client, key, follow, last, high).await?;
    }
    Err("its connection closed".to_owned())
}

/// Sends `follow` the rows numbered after `last` up to `high`, in order.
async fn read_after(
    client: &Client,
    key: &StoreKey,
    follow: &broadcast::Sender<Arc<v1::Flow>>,
    last: &mut i64,
    high: i64,
) -> Result<(), String> {
    let sql = format!(
        "SELECT {COLUMNS}, ingest_id FROM {TABLE} WHERE ingest_id > $1 AND ingest_id <= $2 \
         ORDER BY ingest_id LIMIT {TAIL_PAGE}"
    );
    loop {
        let from = *last;
        let rows = client
            .query(sql.as_str(), &[&from, &high])
            .await
            .map_err(|e| message(&e))?;
        for row in &rows {
            *last = row.get::<_, i64>(5);
            match open_row(key, row) {
                Ok((_, flow)) => {
                    let _ = follow.send(Arc::new(flow));
                }
                Err(e) => tracing::warn!("flow store follow: {e}"),
            }
        }
        if (rows.len() as i64) < TAIL_PAGE {
            return Ok(());
        }
    }
}

/// The hours whose partition exists.
async fn partitions(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = $1::text::regclass",
            &[&TABLE],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| hour_of(r.get::<_, &str>(0)))
        .collect())
}

impl FlowBackend for PgFlowStore {
    fn ingest(
        &self,
        node: &str,
        batch: &v1::FlowBatch,
        now: OffsetDateTime,
    ) -> Result<Ingested, FlowError> {
        let (out, stored, upkeep, known) = self.with(async |client| {
            let tx = client.transaction().await.map_err(|e| self.pg(&e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
                .await
                .map_err(|e| self.pg(&e))?;
            let buffer = batch.buffer as i64;
            let high = tx
                .query_opt(
                    "SELECT buffer, high FROM wardline_flow_sequences WHERE node = $1",
                    &[&node],
                )
                .await
                .map_err(|e| self.pg(&e))?
                .filter(|r| r.get::<_, i64>(0) == buffer)
                .map_or(0, |r| r.get::<_, i64>(1) as u64);
            let sorted = {
                let mut quota = self.quota.lock().unwrap_or_else(|p| p.into_inner());
                sort(
                    node,
                    batch,
                    now,
                    high,
                    &mut quota,
                    self.retention.max_per_node_minute,
                )?
            };
            self.counts
                .duplicates
                .fetch_add(sorted.duplicates, Ordering::Relaxed);
            let stored: Vec<v1::Flow> = sorted.groups.into_values().flatten().collect();
            // Partitions for the hours the records fall in, made under the
            // lock (replicas sharing the database take it too). Asked of
            // the database each time: another replica's retention may have
            // dropped one since.
            let hours: BTreeSet<i64> = stored
                .iter()
                .map(|f| time_of(f).map_or(0, nanos).div_euclid(PARTITION_NS))
                .collect();
            for hour in hours {
                let (from, to) = (
                    hour.saturating_mul(PARTITION_NS),
                    hour.saturating_add(1).saturating_mul(PARTITION_NS),
                );
                // Integers only: DDL takes no parameters.
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {} PARTITION OF {TABLE} \
                     FOR VALUES FROM ({from}) TO ({to})",
                    partition(hour)
                ))
                .await
                .map_err(|e| self.pg(&e))?;
            }
            let mut cols: Cols = Cols::default();
            for f in &stored {
                let at = time_of(f).map_or(0, nanos);
                let sequence = f.sequence as i64;
                let sealed = self
                    .key
                    .seal(
                        &record_name(node, buffer, sequence, at),
                        &f.encode_to_vec(),
                    )
                    .map_err(|e| self.fail(e))?;
                cols.push(f, at, buffer, sealed);
            }
            if !stored.is_empty() {
                let c = &cols;
                let insert = format!(
                    "INSERT INTO {TABLE} ({INSERTED}) SELECT * FROM unnest($1::bigint[], \
                     $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], \
                     $8::text[], $9::text[], $10::integer[], $11::integer[], $12::bytea[])"
                );
                tx.execute(
                    insert.as_str(),
                    &[
                        &c.at, &c.node, &c.buffer, &c.sequence, &c.src_segment, &c.dst_segment,
                        &c.verdict, &c.reason, &c.policy, &c.protocol, &c.dport, &c.record,
                    ],
                )
                .await
                .map_err(|e| self.pg(&e))?;
                // Delivered as the transaction commits, to every replica
                // listening (this one too): the rows up to this number.
                tx.execute(
                    "SELECT pg_notify($1, currval('wardline_flows_ingest')::text)",
                    &[&CHANNEL],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            }
            let known: i64 = tx
                .query_one("SELECT count(*) FROM wardline_flow_devices", &[])
                .await
                .map_err(|e| self.pg(&e))?
                .get(0);
            let addresses: Vec<Vec<u8>> = inventory::addresses_of(&stored)
                .iter()
                .map(|a| a.to_vec())
                .collect();
            let existing: HashMap<Vec<u8>, Vec<u8>> = tx
                .query(
                    "SELECT address, device FROM wardline_flow_devices WHERE address = ANY($1)",
                    &[&addresses],
                )
                .await
                .map_err(|e| self.pg(&e))?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let (mut put_addr, mut put_dev): (Vec<Vec<u8>>, Vec<Vec<u8>>) = Default::default();
            let upkeep = inventory::take_with(
                &self.key,
                &stored,
                u64::try_from(known).unwrap_or(0),
                self.retention.max_devices,
                |addr| Ok(existing.get(addr.as_slice()).cloned()),
                |addr, sealed| {
                    put_addr.push(addr.to_vec());
                    put_dev.push(sealed);
                    Ok(())
                },
            )
            .map_err(|e| self.fail(e))?;
            if !put_addr.is_empty() {
                tx.execute(
                    "INSERT INTO wardline_flow_devices SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                     ON CONFLICT (address) DO UPDATE SET device = EXCLUDED.device",
                    &[&put_addr, &put_dev],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            }
            if sorted.highest != high || batch.buffer != 0 {
                tx.execute(
                    "INSERT INTO wardline_flow_sequences VALUES ($1, $2, $3) \
                     ON CONFLICT (node) DO UPDATE SET buffer = EXCLUDED.buffer, high = EXCLUDED.high",
                    &[&node, &buffer, &(sorted.highest as i64)],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            }
            tx.commit().await.map_err(|e| self.pg(&e))?;
            Ok((sorted.out, stored, upkeep, known))
        })?;
        self.records
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.devices.store(
            u64::try_from(known).unwrap_or(0) + upkeep.added,
            Ordering::Relaxed,
        );
        self.counts
            .ingested(stored, &out, upkeep.refused_full, &self.ingested);
        Ok(out)
    }

    fn query(&self, query: &Query) -> Result<Vec<v1::Flow>, FlowError> {
        let mut out = Vec::new();
        if query.last > 0 {
            self.scan(query, true, |_, f| {
                out.push(f);
                out.len() < query.last
            })?;
            out.reverse();
        } else {
            self.scan(query, false, |_, f| {
                out.push(f);
                out.len() < MAX_RESULTS
            })?;
        }
        Ok(out)
    }

    fn matrix(&self, query: &Query) -> Result<v1::FlowMatrixResponse, FlowError> {
        let mut matrix = Matrix::default();
        self.scan(query, false, |_, f| {
            matrix.add(f);
            true
        })?;
        Ok(matrix.finish())
    }

    fn top(&self, query: &Query, by: Top, limit: usize) -> Result<v1::TopResponse, FlowError> {
        let mut ranking = Ranking::new(by);
        self.scan(query, false, |at, f| {
            ranking.add(at, &f);
            true
        })?;
        Ok(ranking.finish(limit))
    }

    fn inventory(&self, q: &InventoryQuery) -> Result<v1::InventoryResponse, FlowError> {
        let (low, high) = inventory::range_of(q);
        let (low, high) = (low.to_vec(), high.to_vec());
        let devices = self.with(async |client| {
            let rows = client
                .query(
                    "SELECT address, device FROM wardline_flow_devices \
                     WHERE address >= $1 AND address <= $2 ORDER BY address",
                    &[&low, &high],
                )
                .await
                .map_err(|e| self.pg(&e))?;
            let mut out = Vec::new();
            for r in &rows {
                out.extend(
                    inventory::device(&self.key, r.get(0), r.get(1), q)
                        .map_err(|e| self.fail(e))?,
                );
            }
            Ok(out)
        })?;
        Ok(v1::InventoryResponse {
            devices,
            known: self.devices(),
            refused_full: self.counts.inventory_full.load(Ordering::Relaxed),
        })
    }

    fn prune(&self, now: OffsetDateTime) -> Result<u64, FlowError> {
        let age = time::Duration::try_from(self.retention.max_age).unwrap_or(time::Duration::MAX);
        let cutoff = now.checked_sub(age).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let cutoff_ns = nanos(cutoff);
        let (dropped, left, devices) = self.with(async |client| {
            let tx = client.transaction().await.map_err(|e| self.pg(&e))?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
                .await
                .map_err(|e| self.pg(&e))?;
            let mut hours = partitions(&tx).await.map_err(|e| self.pg(&e))?;
            hours.sort_unstable();
            let mut counted = Vec::with_capacity(hours.len());
            for hour in hours {
                let n: i64 = tx
                    .query_one(&format!("SELECT count(*) FROM {}", partition(hour)), &[])
                    .await
                    .map_err(|e| self.pg(&e))?
                    .get(0);
                counted.push((hour, u64::try_from(n).unwrap_or(0)));
            }
            let mut total: u64 = counted.iter().map(|(_, n)| n).sum();
            let mut dropped = 0;
            for (hour, n) in counted {
                let ended = hour.saturating_add(1).saturating_mul(PARTITION_NS);
                if ended > cutoff_ns && total <= self.retention.max_records {
                    break;
                }
                tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", partition(hour)))
                    .await
                    .map_err(|e| self.pg(&e))?;
                total -= n;
                dropped += n;
            }
            let mut gone: Vec<Vec<u8>> = Vec::new();
            for r in tx
                .query("SELECT address, device FROM wardline_flow_devices", &[])
                .await
                .map_err(|e| self.pg(&e))?
            {
                let addr: &[u8] = r.get(0);
                if inventory::last_seen(&self.key, addr, r.get(1)).map_err(|e| self.fail(e))?
                    < cutoff
                {
                    gone.push(addr.to_vec());
                }
            }
            tx.execute(
                "DELETE FROM wardline_flow_devices WHERE address = ANY($1)",
                &[&gone],
            )
            .await
            .map_err(|e| self.pg(&e))?;
            let devices: i64 = tx
                .query_one("SELECT count(*) FROM wardline_flow_devices", &[])
                .await
                .map_err(|e| self.pg(&e))?
                .get(0);
            tx.commit().await.map_err(|e| self.pg(&e))?;
            Ok((dropped, total, devices))
        })?;
        // The store is shared: what is left is what every replica stored.
        self.records.store(left, Ordering::Relaxed);
        self.devices
            .store(u64::try_from(devices).unwrap_or(0), Ordering::Relaxed);
        Ok(dropped)
    }

    fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    fn devices(&self) -> u64 {
        self.devices.load(Ordering::Relaxed)
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<v1::Flow>> {
        self.follow.subscribe()
    }

    fn subscribe_ingested(&self) -> broadcast::Receiver<Arc<v1::Flow>> {
        self.ingested.subscribe()
    }

    fn counts(&self) -> &Counts {
        &self.counts
    }
}

/// A batch's rows, column by column, for one `unnest` insert.
#[derive(Default)]
struct Cols {
    at: Vec<i64>,
    node: Vec<String>,
    buffer: Vec<i64>,
    sequence: Vec<i64>,
    src_segment: Vec<String>,
    dst_segment: Vec<String>,
    verdict: Vec<String>,
    reason: Vec<String>,
    policy: Vec<String>,
    protocol: Vec<i32>,
    dport: Vec<i32>,
    record: Vec<Vec<u8>>,
}

impl Cols {
    fn push(&mut self, f: &v1::Flow, at: i64, buffer: i64, sealed: Vec<u8>) {
        self.at.push(at);
        self.node.push(f.node.clone());
        self.buffer.push(buffer);
        self.sequence.push(f.sequence as i64);
        self.src_segment.push(f.src_segment.clone());
        self.dst_segment.push(f.dst_segment.clone());
        self.verdict.push(f.verdict.clone());
        self.reason.push(f.reason.clone());
        self.policy.push(f.policy.clone());
        // Checked at ingest: a protocol is at most 255, a port 65535.
        self.protocol.push(f.protocol as i32);
        self.dport.push(f.dport as i32);
        self.record.push(sealed);
    }
}
