//! The PostgreSQL flow store against a real PostgreSQL 15 server, started
//! for each test in a folder of its own and stopped when it ends.

use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::broadcast::error::TryRecvError;
use wardline_flows::{FlowBackend, FlowStore, InventoryQuery, Query, Retention, Top};
use wardline_flows_postgres::testing::{PgPki, Postgres};
use wardline_flows_postgres::{PgFlowStore, PgTls};
use wardline_proto::v1;
use wardline_store::encrypted::StoreKey;

fn key(dir: &Path) -> StoreKey {
    let path = dir.join("store.key");
    StoreKey::generate(&path).unwrap();
    StoreKey::load(&path).unwrap()
}

fn at(t: &str) -> OffsetDateTime {
    OffsetDateTime::parse(t, &Rfc3339).unwrap()
}

fn bytes(a: &str) -> Vec<u8> {
    match a.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A varied record: its fields turn with `i`.
fn record(i: u64, start: OffsetDateTime) -> v1::Flow {
    let srcs = [
        "198.18.20.10",
        "198.18.20.11",
        "198.18.30.5",
        "2001:db8::10",
    ];
    let dsts = [
        "198.18.41.10",
        "198.18.41.11",
        "198.18.50.2",
        "2001:db8::41",
    ];
    let pick = (i % 4) as usize;
    let src = srcs[pick];
    let dst = if src.contains(':') {
        dsts[3]
    } else {
        dsts[(i as usize / 4) % 3]
    };
    let verdict = ["allowed", "allowed", "dropped", "audited"][(i % 4) as usize];
    let kind = if verdict == "dropped" {
        "drop"
    } else {
        ["new", "update", "close"][(i as usize / 3) % 3]
    };
    v1::Flow {
        time: (start + time::Duration::seconds_f64(i as f64 * 37.5))
            .format(&Rfc3339)
            .unwrap(),
        node: String::new(),
        kind: kind.into(),
        interface: "eth1".into(),
        direction: if i.is_multiple_of(5) {
            "egress"
        } else {
            "ingress"
        }
        .into(),
        src: bytes(src),
        dst: bytes(dst),
        sport: 40000 + (i % 7) as u32,
        dport: [443, 80, 2575, 104][(i as usize / 2) % 4],
        protocol: if i.is_multiple_of(6) { 17 } else { 6 },
        vlan: if i.is_multiple_of(3) { 20 } else { 0 },
        src_segment: ["ws", "ws", "imaging", "lab"][pick].into(),
        dst_segment: ["ehr", "pacs", "world"][(i as usize / 4) % 3].into(),
        verdict: verdict.into(),
        reason: if verdict == "dropped" {
            "default-deny"
        } else {
            "policy-allow"
        }
        .into(),
        policy: match verdict {
            "dropped" => "",
            "audited" => "lab-audit",
            _ => "ws-ehr",
        }
        .into(),
        generation: 1,
        revision: 1,
        packets: 1 + i % 9,
        bytes: 60 * (1 + i % 13),
        sequence: 0,
        src_mac: vec![2, 0, 0, 0, 0x14, (i % 5) as u8],
        dst_mac: Vec::new(),
    }
}

/// `n` records from `start`, numbered from `first`, in batches of 100.
fn batches(n: u64, first: u64, start: OffsetDateTime) -> Vec<v1::FlowBatch> {
    let flows: Vec<v1::Flow> = (0..n)
        .map(|i| {
            let mut f = record(i, start);
            f.sequence = first + i;
            f
        })
        .collect();
    flows
        .chunks(100)
        .map(|c| v1::FlowBatch {
            flows: c.to_vec(),
            buffer: 7,
            ..Default::default()
        })
        .collect()
}

/// The next `n` records `rx` follows, waiting for each up to 10 s; then
/// none more for 300 ms.
fn follow(rx: &mut tokio::sync::broadcast::Receiver<Arc<v1::Flow>>, n: usize) -> Vec<v1::Flow> {
    let mut out = Vec::new();
    let mut deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        match rx.try_recv() {
            Ok(f) => {
                out.push((*f).clone());
                deadline = Instant::now() + Duration::from_secs(10);
            }
            Err(TryRecvError::Empty) => {
                assert!(
                    Instant::now() < deadline,
                    "followed {} of {n} records",
                    out.len()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("follow: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Empty)),
        "a record followed twice or one not stored"
    );
    out
}

fn query(req: v1::ObserveRequest, now: OffsetDateTime) -> Query {
    Query::parse(&req, now).unwrap()
}

#[test]
#[ignore = "needs PostgreSQL 15 (/usr/lib/postgresql/15/bin): run via cargo xtask test"]
fn both_stores_give_the_same_answers_from_the_same_records() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path());
    let retention = Retention::default();
    let embedded = FlowStore::open(&dir.path().join("flows.redb"), key.clone(), retention).unwrap();
    let shared = PgFlowStore::open(&pg.url(), Some(&pg.tls()), key, retention).unwrap();
    let now = at("2026-12-02T12:00:00Z");
    let start = at("2026-12-02T09:10:00Z");
    // gw-2's records a millisecond after gw-1's: with `last`, which of
    // records judged in the same nanosecond the embedded store keeps at
    // the cut depends on which block it opened first.
    for (node, start) in [
        ("gw-1", start),
        ("gw-2", start + time::Duration::milliseconds(1)),
    ] {
        for b in batches(250, 1, start) {
            let a = embedded.ingest(node, &b, now).unwrap();
            let p = FlowBackend::ingest(&shared, node, &b, now).unwrap();
            assert_eq!(a, p);
        }
    }
    // A batch sent again, and one with bad records, sort alike.
    let again = &batches(250, 1, start)[1];
    assert_eq!(
        embedded.ingest("gw-1", again, now).unwrap(),
        FlowBackend::ingest(&shared, "gw-1", again, now).unwrap()
    );
    let mut bad = batches(3, 251, start).remove(0);
    bad.flows[1].src = vec![1, 2, 3];
    let (a, p) = (
        embedded.ingest("gw-1", &bad, now).unwrap(),
        FlowBackend::ingest(&shared, "gw-1", &bad, now).unwrap(),
    );
    assert_eq!((a.refused, a.accepted), (1, 2));
    assert_eq!(a, p);
    assert_eq!(embedded.records(), 502);
    assert_eq!(FlowBackend::records(&shared), 502);
    // Partitions were made for the hours the records span (09 to 11).
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_inherits WHERE inhparent = 'wardline_flows'::regclass"),
        "3"
    );

    let requests = [
        v1::ObserveRequest::default(),
        v1::ObserveRequest {
            last: 17,
            ..Default::default()
        },
        v1::ObserveRequest {
            last: 5,
            verdict: "dropped".into(),
            ..Default::default()
        },
        v1::ObserveRequest {
            since: "2026-12-02T10:00:00Z".into(),
            until: "2026-12-02T10:59:59.5Z".into(),
            ..Default::default()
        },
        v1::ObserveRequest {
            node: "gw-2".into(),
            from: "ws".into(),
            ..Default::default()
        },
        v1::ObserveRequest {
            from: "198.18.20.0/24".into(),
            to: "198.18.41.11".into(),
            ..Default::default()
        },
        v1::ObserveRequest {
            from: "2001:db8::/32".into(),
            ..Default::default()
        },
        v1::ObserveRequest {
            port: 2575,
            protocol: "tcp".into(),
            ..Default::default()
        },
        v1::ObserveRequest {
            reason: "policy-allow".into(),
            policy: "lab-audit".into(),
            ..Default::default()
        },
        v1::ObserveRequest {
            to: "world".into(),
            since: "2h".into(),
            ..Default::default()
        },
    ];
    let mut nonempty = 0;
    for req in requests {
        let q = query(req.clone(), now);
        let a = embedded.query(&q).unwrap();
        let p = FlowBackend::query(&shared, &q).unwrap();
        assert_eq!(a, p, "records for {req:?}");
        nonempty += usize::from(!a.is_empty());
        assert_eq!(
            embedded.matrix(&q).unwrap(),
            FlowBackend::matrix(&shared, &q).unwrap(),
            "matrix for {req:?}"
        );
        for by in [Top::Sources, Top::Talkers] {
            assert_eq!(
                embedded.top(&q, by, 3).unwrap(),
                FlowBackend::top(&shared, &q, by, 3).unwrap(),
                "top {by:?} for {req:?}"
            );
        }
    }
    assert_eq!(nonempty, 10, "every query finds records");
    for req in [
        v1::InventoryRequest::default(),
        v1::InventoryRequest {
            address: "198.18.20.0/24".into(),
            ..Default::default()
        },
        v1::InventoryRequest {
            segment: "world".into(),
            ..Default::default()
        },
        v1::InventoryRequest {
            new_only: true,
            ..Default::default()
        },
    ] {
        let q = InventoryQuery::parse(&req, now).unwrap();
        let a = embedded.inventory(&q).unwrap();
        assert!(!a.devices.is_empty(), "{req:?}");
        assert_eq!(a, FlowBackend::inventory(&shared, &q).unwrap(), "{req:?}");
    }
}

#[test]
#[ignore = "needs PostgreSQL 15 (/usr/lib/postgresql/15/bin): run via cargo xtask test"]
fn retention_drops_whole_partitions_by_age_then_by_size() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        max_age: Duration::from_secs(3 * 3600),
        max_records: 150,
        ..Retention::default()
    };
    let store = PgFlowStore::open(&pg.url(), Some(&pg.tls()), key(dir.path()), retention).unwrap();
    let now = at("2026-12-02T12:00:00Z");
    // 96 records an hour (one every 37.5 s), 07:00 to 11:59: five hours.
    for b in batches(480, 1, at("2026-12-02T07:00:00Z")) {
        store.ingest("gw-1", &b, now).unwrap();
    }
    let partitions = || {
        pg.psql(
            "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'wardline_flows'::regclass",
        )
    };
    let hour = |h: &str| {
        let n = at(&format!("2026-12-02T{h}:00:00Z")).unix_timestamp() / 3600;
        format!("wardline_flows_h{n}")
    };
    assert_eq!(partitions().split(',').count(), 5);
    // By age: 07:00 and 08:00 ended before 09:00, three hours ago. By
    // size: 288 left, more than 150: 09:00 goes, then 10:00 (192 > 150).
    let dropped = store.prune(now).unwrap();
    assert_eq!(dropped, 4 * 96);
    assert_eq!(store.records(), 96);
    assert_eq!(partitions(), hour("11"));
    for gone in ["07", "08", "09", "10"] {
        assert_eq!(
            pg.psql(&format!(
                "SELECT count(*) FROM pg_class WHERE relname = '{}'",
                hour(gone)
            )),
            "0"
        );
    }
    assert_eq!(pg.psql("SELECT count(*) FROM wardline_flows"), "96");
    let q = query(v1::ObserveRequest::default(), now);
    let left = store.query(&q).unwrap();
    assert_eq!(left.len(), 96);
    assert!(left.iter().all(|f| f.time.starts_with("2026-12-02T11:")));
    // Nothing more to drop; a record for a dropped hour makes it again.
    assert_eq!(store.prune(now).unwrap(), 0);
    let late = batches(1, 1000, at("2026-12-02T09:30:00Z")).remove(0);
    assert_eq!(store.ingest("gw-1", &late, now).unwrap().accepted, 1);
    assert_eq!(partitions().split(',').count(), 2);
}

#[test]
#[ignore = "needs PostgreSQL 15 (/usr/lib/postgresql/15/bin): run via cargo xtask test"]
fn two_replicas_on_one_database_see_each_others_records_once() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path());
    let a = PgFlowStore::open(
        &pg.url(),
        Some(&pg.tls()),
        key.clone(),
        Retention::default(),
    )
    .unwrap();
    let b = PgFlowStore::open(
        &pg.url(),
        Some(&pg.tls()),
        key.clone(),
        Retention::default(),
    )
    .unwrap();
    let now = at("2026-12-02T12:00:00Z");
    let sent = batches(200, 1, at("2026-12-02T09:00:00Z"));
    let mut follow_b = b.subscribe();
    let (mut own_a, mut own_b) = (a.subscribe_ingested(), b.subscribe_ingested());
    a.ingest("gw-1", &sent[0], now).unwrap();
    // The agent's answer was lost: it sends the batch again, to the other
    // replica, then the next one there.
    assert_eq!(b.ingest("gw-1", &sent[0], now).unwrap().accepted, 100);
    b.ingest("gw-1", &sent[1], now).unwrap();
    b.ingest("gw-2", &sent[1], now).unwrap();
    let q = query(v1::ObserveRequest::default(), now);
    let (ra, rb) = (a.query(&q).unwrap(), b.query(&q).unwrap());
    assert_eq!(ra.len(), 300);
    assert_eq!(ra, rb);
    assert_eq!(
        b.counts()
            .duplicates
            .load(std::sync::atomic::Ordering::Relaxed),
        100
    );
    let node = query(
        v1::ObserveRequest {
            node: "gw-2".into(),
            ..Default::default()
        },
        now,
    );
    assert_eq!(a.query(&node).unwrap().len(), 100);
    assert_eq!(a.matrix(&q).unwrap(), b.matrix(&q).unwrap());
    let inv = InventoryQuery::default();
    assert_eq!(
        a.inventory(&inv).unwrap().devices,
        b.inventory(&inv).unwrap().devices
    );
    // B follows every record stored, A's and its own, in the order they
    // were stored, each once.
    let followed: Vec<(String, u64)> = follow(&mut follow_b, 300)
        .iter()
        .map(|f| (f.node.clone(), f.sequence))
        .collect();
    let want: Vec<(String, u64)> = (1..=200)
        .map(|i| ("gw-1".to_owned(), i))
        .chain((101..=200).map(|i| ("gw-2".to_owned(), i)))
        .collect();
    assert_eq!(followed, want);
    // Each exports what it stored itself: every record once between them.
    let mine = |rx: &mut tokio::sync::broadcast::Receiver<_>| {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|f: std::sync::Arc<v1::Flow>| (f.node.clone(), f.sequence))
            .collect::<Vec<_>>()
    };
    let (by_a, by_b) = (mine(&mut own_a), mine(&mut own_b));
    assert_eq!(by_a, want[..100].to_vec());
    assert_eq!(by_b, want[100..].to_vec());
    // A third replica's retention drops every partition; A stores into
    // an hour it stored into before all the same.
    let c = PgFlowStore::open(
        &pg.url(),
        Some(&pg.tls()),
        key,
        Retention {
            max_records: 0,
            ..Retention::default()
        },
    )
    .unwrap();
    assert_eq!(c.prune(now).unwrap(), 300);
    let later = batches(1, 500, at("2026-12-02T09:00:00Z")).remove(0);
    assert_eq!(a.ingest("gw-1", &later, now).unwrap().accepted, 1);
    assert_eq!(b.query(&q).unwrap().len(), 1);
}

#[test]
#[ignore = "needs PostgreSQL 15 (/usr/lib/postgresql/15/bin): run via cargo xtask test"]
fn a_filter_value_is_a_value_not_sql() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let store = PgFlowStore::open(
        &pg.url(),
        Some(&pg.tls()),
        key(dir.path()),
        Retention::default(),
    )
    .unwrap();
    let now = at("2026-12-02T12:00:00Z");
    let mut b = batches(10, 1, at("2026-12-02T10:00:00Z")).remove(0);
    // No whitespace: a name the server's filter parsing accepts.
    let evil = "x';DROP/**/TABLE/**/wardline_flows;--";
    b.flows[3].policy = evil.into();
    b.flows[3].verdict = "allowed".into();
    assert_eq!(store.ingest("gw-1", &b, now).unwrap().accepted, 10);
    let by_policy = Query::parse(
        &v1::ObserveRequest {
            policy: evil.into(),
            ..Default::default()
        },
        now,
    )
    .unwrap();
    assert_eq!(store.query(&by_policy).unwrap().len(), 1);
    let by_reason = Query {
        reason: Some("'; DROP TABLE wardline_flow_devices; --".into()),
        node: Some("gw-1' OR '1'='1".into()),
        ..Query::default()
    };
    assert_eq!(store.query(&by_reason).unwrap().len(), 0);
    assert_eq!(store.matrix(&by_reason).unwrap().flows, 0);
    assert_eq!(pg.psql("SELECT count(*) FROM wardline_flows"), "10");
    assert_ne!(pg.psql("SELECT count(*) FROM wardline_flow_devices"), "0");
    // Records are sealed: their addresses (198.18.20.x) are nowhere in
    // clear.
    assert_eq!(
        pg.psql(
            "SELECT count(*) FROM wardline_flows WHERE position('\\xc61214'::bytea in record) > 0"
        ),
        "0"
    );
}

#[test]
fn a_bad_url_is_named_not_dialled() {
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path());
    for (url, says) in [
        ("mysql://x@y/z", "not a PostgreSQL URL"),
        (
            "postgresql://wardline@127.0.0.1:notaport/db",
            "not a PostgreSQL URL",
        ),
    ] {
        let e = PgFlowStore::open(url, None, key.clone(), Retention::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(says), "{url}: {e}");
    }
    // A port nothing listens on: named, with no password in the message.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pki = PgPki::generate(&dir.path().join("pki"));
    let e = PgFlowStore::open(
        &format!("postgresql://wardline:secret@127.0.0.1:{port}/wardline"),
        Some(&pki.tls()),
        key,
        Retention::default(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains(&format!("postgresql://wardline@127.0.0.1:{port}/wardline")),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
}

#[test]
#[ignore = "needs PostgreSQL 15 (/usr/lib/postgresql/15/bin): run via cargo xtask test"]
fn a_follower_loses_nothing_when_its_connection_is_cut() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path());
    let a = PgFlowStore::open(
        &pg.url(),
        Some(&pg.tls()),
        key.clone(),
        Retention::default(),
    )
    .unwrap();
    let b = PgFlowStore::open(&pg.url(), Some(&pg.tls()), key, Retention::default()).unwrap();
    let now = at("2026-12-02T12:00:00Z");
    let sent: Vec<v1::FlowBatch> = (0..3)
        .map(|k| batches(100, 1 + 100 * k, at("2026-12-02T09:00:00Z")).remove(0))
        .collect();
    let mut follow_b = b.subscribe();
    a.ingest("gw-1", &sent[0], now).unwrap();
    assert_eq!(follow(&mut follow_b, 100).last().unwrap().sequence, 100);
    // B's follow connection is cut (as by a database restart or a network
    // fault), and A stores while it is away.
    let cut = pg.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'wardline-control-plane follow'",
    );
    assert_eq!(cut, "2", "both replicas' follow connections");
    for batch in &sent[1..] {
        let got = a.ingest("gw-1", batch, now).unwrap();
        assert_eq!((got.accepted, got.refused, got.over_quota), (100, 0, 0));
    }
    let after: Vec<u64> = follow(&mut follow_b, 200)
        .iter()
        .map(|f| f.sequence)
        .collect();
    assert_eq!(after, (101..=300).collect::<Vec<_>>());
}

#[test]
#[ignore = "needs PostgreSQL 15 (/usr/lib/postgresql/15/bin): run via cargo xtask test"]
fn the_database_is_reached_over_tls_only_and_each_end_verified() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let key = key(dir.path());
    let open = |url: &str, tls: Option<&PgTls>| {
        PgFlowStore::open(url, tls, key.clone(), Retention::default())
            .err()
            .map(|e| e.to_string())
    };
    // Plaintext over TCP is refused before anything is dialled.
    let e = open(&pg.url(), None).unwrap();
    assert!(
        e.contains("only over TLS") && e.contains("--flow-postgres-ca"),
        "{e}"
    );
    let e = open(&format!("{}?sslmode=disable", pg.url()), Some(&pg.tls())).unwrap();
    assert!(e.contains("sslmode=disable"), "{e}");
    // A database whose certificate another CA issued (one standing in
    // for it) is refused at the handshake.
    let other = PgPki::generate(&dir.path().join("other"));
    let e = open(
        &pg.url(),
        Some(&PgTls {
            ca: other.ca.clone(),
            client: pg.tls().client,
        }),
    )
    .unwrap();
    assert!(e.contains("certificate"), "{e}");
    // A client certificate another CA issued is refused by the database.
    let e = open(
        &pg.url(),
        Some(&PgTls {
            ca: pg.pki().ca.clone(),
            client: other.tls().client,
        }),
    )
    .unwrap();
    assert!(!e.is_empty(), "{e}");
    // Without a client certificate the database's `cert` rule refuses.
    let e = open(
        &pg.url(),
        Some(&PgTls {
            ca: pg.pki().ca.clone(),
            client: None,
        }),
    )
    .unwrap();
    assert!(e.contains("certificate"), "{e}");
    // Its own CA and certificate: in; and its Unix socket needs no TLS.
    assert_eq!(open(&pg.url(), Some(&pg.tls())), None);
    assert_eq!(open(&pg.socket_url(), None), None);
}

#[test]
fn a_server_that_declines_tls_is_not_spoken_to_in_plaintext() {
    // Whoever answers on the database's address and says "no TLS" (a
    // downgrade): the replica must hang up, not send its startup message
    // (user, database) in the clear.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answered = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut request = [0u8; 8];
        conn.read_exact(&mut request).unwrap();
        conn.write_all(b"N").unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        (request, rest)
    });
    let dir = tempfile::tempdir().unwrap();
    let pki = PgPki::generate(&dir.path().join("pki"));
    let e = PgFlowStore::open(
        &format!("postgresql://wardline@127.0.0.1:{port}/wardline"),
        Some(&pki.tls()),
        key(dir.path()),
        Retention::default(),
    )
    .err()
    .unwrap()
    .to_string();
    let (request, rest) = answered.join().unwrap();
    // The SSLRequest: length 8, code 80877103.
    assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47]);
    assert!(
        rest.is_empty(),
        "sent in plaintext after the refusal: {rest:?}"
    );
    assert!(e.contains("TLS"), "{e}");
}
