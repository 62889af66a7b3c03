//! What only the etcd backend does: history with deletes, compaction,
//! endpoints that are down, and a three-member cluster losing a member, all
//! over TLS with client certificates; and the connections that TLS refuses
//! (plaintext endpoints, clients without a certificate from etcd's CA).

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use wardline_store::etcd::{EtcdOptions, EtcdStore, tls_options};
use wardline_store::testing::{EtcdCluster, EtcdPki};
use wardline_store::{
    self as store, Compare, Op, Store, StoreError, StoreSpec, WatchEvent, WatchStream,
};

/// Limit on one whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Limit on waiting for one watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Logs of the store (retries, broken watches) on the test's output, with
/// the filter in `WARDLINE_LOG` (e.g. `wardline_control_plane=debug`).
fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("WARDLINE_LOG"))
        .with_test_writer()
        .try_init();
}

async fn bounded<F: Future<Output = ()>>(name: &str, test: F) {
    init_logging();
    if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
        panic!("{name} did not finish within {TEST_TIMEOUT:?}");
    }
}

async fn next_item(watch: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(item) => item,
        Err(_) => panic!("no watch item within {EVENT_TIMEOUT:?}"),
    }
}

async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match next_item(watch).await {
        Some(Ok(event)) => event,
        Some(Err(e)) => panic!("watch failed: {e}"),
        None => panic!("watch ended early"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_replays_deletes() {
    bounded("history_replays_deletes", async {
        let cluster = EtcdCluster::single().await.expect("etcd starts");
        let s = EtcdStore::connect(&cluster.endpoints(), cluster.tls())
            .await
            .expect("connect");
        let before = s.revision().await.expect("revision");
        let put = s.put("/wl/h/k", b"v".to_vec()).await.expect("put");
        let deleted = s.delete("/wl/h/k").await.expect("delete");
        // etcd keeps the history: the delete is replayed, unlike the
        // embedded store, which only has the current state.
        let mut watch = s.watch("/wl/h/", before).await.expect("watch");
        assert_eq!(next_event(&mut watch).await.mod_revision(), put);
        assert_eq!(
            next_event(&mut watch).await,
            WatchEvent::Delete {
                key: "/wl/h/k".to_owned(),
                mod_revision: deleted
            }
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_of_compacted_history_fails_clearly() {
    bounded("watch_of_compacted_history_fails_clearly", async {
        let cluster = EtcdCluster::single().await.expect("etcd starts");
        let s = EtcdStore::connect(&cluster.endpoints(), cluster.tls())
            .await
            .expect("connect");
        let first = s.put("/wl/c/a", b"1".to_vec()).await.expect("put");
        s.put("/wl/c/a", b"2".to_vec()).await.expect("put");
        let last = s.put("/wl/c/b", b"3".to_vec()).await.expect("put");
        s.compact(last).await.expect("compact");
        s.compact(last).await.expect("compacting again is a no-op");
        let future = s
            .compact(last + 100)
            .await
            .expect_err("a future revision is refused");
        assert!(
            future.to_string().contains("compact to revision"),
            "{future}"
        );

        let mut watch = s.watch("/wl/c/", first).await.expect("watch");
        match next_item(&mut watch).await {
            Some(Err(StoreError::Compacted {
                prefix,
                after_revision,
                compact_revision,
            })) => {
                assert_eq!(
                    (prefix.as_str(), after_revision, compact_revision),
                    ("/wl/c/", first, last)
                );
            }
            other => panic!("expected a compaction error, got {other:?}"),
        }
        assert!(
            next_item(&mut watch).await.is_none(),
            "the stream ends after its error"
        );
        let message = StoreError::Compacted {
            prefix: "/wl/c/".to_owned(),
            after_revision: first,
            compact_revision: last,
        }
        .to_string();
        assert!(
            message.contains("compacted") && message.contains("/wl/c/"),
            "{message}"
        );

        // Watching from the compaction point on works: read, then follow.
        let mut follow = s.watch("/wl/c/", last).await.expect("watch");
        let next = s.put("/wl/c/a", b"4".to_vec()).await.expect("put");
        assert_eq!(next_event(&mut follow).await.mod_revision(), next);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_etcd_is_unavailable() {
    bounded("connect_without_etcd_is_unavailable", async {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let endpoint = format!("https://127.0.0.1:{port}");
        let dir = tempfile::tempdir().expect("temporary folder");
        let pki = EtcdPki::generate(dir.path()).expect("certificates");
        let options = EtcdOptions {
            retry_budget: Duration::from_secs(2),
            ..EtcdOptions::default()
        };
        let started = std::time::Instant::now();
        match EtcdStore::connect_with(std::slice::from_ref(&endpoint), &pki.client, options).await {
            Err(e @ StoreError::Unavailable { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&endpoint),
                    "the error names the endpoint: {message}"
                );
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gave up within its budget"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_spec_opens_etcd() {
    bounded("store_spec_opens_etcd", async {
        let cluster = EtcdCluster::single().await.expect("etcd starts");
        let spec = StoreSpec::from_str(&format!("etcd:{}", cluster.endpoints().join(",")))
            .expect("spec parses");
        match store::open(&spec).await {
            Err(e @ StoreError::InvalidSpec { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains("--etcd-ca/--etcd-cert/--etcd-key"),
                    "names the flags: {message}"
                );
            }
            Err(other) => panic!("expected InvalidSpec without TLS files, got {other}"),
            Ok(_) => panic!("an etcd spec without TLS files opened"),
        }
        let spec = spec.with_etcd_tls(cluster.tls().clone());
        let s = store::open(&spec).await.expect("open");
        let out = s
            .txn(
                vec![Compare::absent("/wl/spec")],
                vec![Op::put("/wl/spec", "etcd")],
            )
            .await
            .expect("txn");
        assert!(out.succeeded);
        assert_eq!(
            s.get("/wl/spec")
                .await
                .expect("get")
                .expect("present")
                .value,
            b"etcd"
        );
    })
    .await;
}

/// Collects `count` events under `prefix` after `after`, watching again
/// after the last revision seen whenever the watch breaks.
async fn collect_resiliently(
    s: &Arc<dyn Store>,
    prefix: &str,
    mut after: u64,
    mut watch: Option<WatchStream>,
    count: usize,
) -> (Vec<WatchEvent>, usize) {
    let mut events = Vec::new();
    let mut rewatches = 0;
    while events.len() < count {
        let current = match &mut watch {
            Some(w) => w,
            None => {
                rewatches += 1;
                assert!(rewatches <= 10, "watch kept breaking");
                watch.insert(s.watch(prefix, after).await.expect("re-watch"))
            }
        };
        match next_item(current).await {
            Some(Ok(event)) => {
                after = event.mod_revision();
                events.push(event);
            }
            Some(Err(e)) => {
                eprintln!("watch broke ({e}); watching again after revision {after}");
                watch = None;
            }
            None => panic!("watch ended while the store is alive"),
        }
    }
    (events, rewatches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_losing_the_leader() {
    bounded("three_members_survive_losing_the_leader", async {
        let mut cluster = EtcdCluster::start(3)
            .await
            .expect("3-member etcd cluster starts");
        let endpoints = cluster.endpoints();
        let s: Arc<dyn Store> = Arc::new(
            EtcdStore::connect(&endpoints, cluster.tls())
                .await
                .expect("connect to all members"),
        );

        let before = s.put("/wl/ha/0", b"before".to_vec()).await.expect("put");
        let watch = s.watch("/wl/ha/", before).await.expect("watch");

        // Find the leader and kill it, the hardest member to lose.
        let mut leader = None;
        let tls = tls_options(cluster.tls()).expect("client TLS");
        for (index, endpoint) in endpoints.iter().enumerate() {
            let options = etcd_client::ConnectOptions::new().with_tls(tls.clone());
            let mut client = etcd_client::Client::connect([endpoint], Some(options))
                .await
                .expect("client to one member");
            let status = client.status().await.expect("member status");
            if status.leader() == status.header().expect("header").member_id() {
                leader = Some(index);
            }
        }
        let leader = leader.expect("a leader among the members");
        let pid = cluster.members()[leader].pid().expect("leader runs");
        cluster.member_mut(leader).kill();
        eprintln!("killed leader {leader} (pid {pid})");
        assert!(!cluster.member_mut(leader).is_running());

        // Writes go on through the remaining two (after a re-election).
        // Each is done as a real caller does it: read, write on the
        // condition that nothing changed, and after an ambiguous failure
        // (the member answered "leader changed") read again to see whether
        // the write landed before trying again.
        let mut revisions = Vec::new();
        for i in 1..=5_u32 {
            let key = format!("/wl/ha/{i}");
            let value = format!("after-{i}").into_bytes();
            let mut attempts = 0;
            let revision = loop {
                attempts += 1;
                assert!(attempts <= 5, "write {i} kept failing\n{}", cluster.logs());
                let read = s.get(&key).await.expect("get after the kill");
                if let Some(kv) = read {
                    assert_eq!(kv.value, value, "only this test writes {key}");
                    break kv.mod_revision;
                }
                match s
                    .txn(
                        vec![Compare::absent(&key)],
                        vec![Op::put(&key, value.clone())],
                    )
                    .await
                {
                    Ok(out) if out.succeeded => break out.revision,
                    Ok(out) => panic!("write {i} lost its compare: {out:?}"),
                    Err(e @ StoreError::Unavailable { .. }) => {
                        eprintln!("write {i} failed ambiguously ({e}); reading again");
                    }
                    Err(e) => panic!("write {i} after the kill: {e}\n{}", cluster.logs()),
                }
            };
            revisions.push(revision);
        }
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
        assert_eq!(s.range("/wl/ha/").await.expect("range").len(), 6);

        // The watch opened before the kill delivers every write in order,
        // watching again if its member was the one killed.
        let (events, rewatches) = collect_resiliently(&s, "/wl/ha/", before, Some(watch), 5).await;
        let seen: Vec<u64> = events.iter().map(WatchEvent::mod_revision).collect();
        assert_eq!(
            seen, revisions,
            "no event lost or repeated ({rewatches} re-watches)"
        );

        // A new watch and a new connection given all three endpoints work too.
        let fresh: Arc<dyn Store> = Arc::new(
            EtcdStore::connect(&endpoints, cluster.tls())
                .await
                .expect("connect with one member down"),
        );
        let mut watch = fresh.watch("/wl/ha/", before).await.expect("watch");
        for expected in &revisions {
            assert_eq!(next_event(&mut watch).await.mod_revision(), *expected);
        }
        let last = s.put("/wl/ha/live", b"x".to_vec()).await.expect("put");
        assert_eq!(next_event(&mut watch).await.mod_revision(), last);
        assert_eq!(fresh.revision().await.expect("revision"), last);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_endpoint_is_refused_before_connecting() {
    bounded("plaintext_endpoint_is_refused_before_connecting", async {
        // Nothing needs to listen: the endpoint is refused by its scheme.
        let dir = tempfile::tempdir().expect("temporary folder");
        let pki = EtcdPki::generate(dir.path()).expect("certificates");
        let endpoints = vec![
            "https://127.0.0.1:2379".to_owned(),
            "http://127.0.0.1:22379".to_owned(),
        ];
        match EtcdStore::connect(&endpoints, &pki.client).await {
            Err(e @ StoreError::InvalidRequest(_)) => {
                let message = e.to_string();
                assert!(
                    message.contains(
                        "etcd endpoint http://127.0.0.1:22379 is plaintext; use https:// with \
                         --etcd-ca/--etcd-cert/--etcd-key"
                    ),
                    "{message}"
                );
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_of_another_ca_is_refused() {
    bounded("client_certificate_of_another_ca_is_refused", async {
        let cluster = EtcdCluster::single().await.expect("etcd starts");
        let dir = tempfile::tempdir().expect("temporary folder");
        let other = EtcdPki::generate(dir.path()).expect("certificates of another CA");

        // Checked up front: a client certificate the given CA did not
        // issue is refused by name before anything is dialled.
        let mismatched = wardline_store::EtcdTls {
            ca: cluster.tls().ca.clone(),
            ..other.client.clone()
        };
        match EtcdStore::connect(&cluster.endpoints(), &mismatched).await {
            Err(e @ StoreError::Tls(_)) => {
                let message = e.to_string();
                assert!(
                    message.contains(&other.client.cert.display().to_string())
                        && message.contains("was not issued by the CA in"),
                    "{message}"
                );
            }
            other => panic!("expected a TLS file error, got {other:?}"),
        }

        // etcd refuses it too: with a CA file that also trusts the other
        // CA (so our check passes and the certificate is presented), the
        // member, which trusts only its own CA, ends the handshake. That is
        // reported at once, not retried until the budget is spent.
        let bundle = dir.path().join("both-cas.pem");
        let mut pem = std::fs::read(&cluster.tls().ca).expect("read CA");
        pem.extend(std::fs::read(&other.ca).expect("read other CA"));
        std::fs::write(&bundle, pem).expect("write CA bundle");
        let foreign = wardline_store::EtcdTls {
            ca: bundle,
            ..other.client.clone()
        };
        let started = std::time::Instant::now();
        match EtcdStore::connect(&cluster.endpoints(), &foreign).await {
            Err(e @ StoreError::Backend(_)) => {
                let message = e.to_string();
                assert!(
                    message.contains("etcd refused the TLS connection")
                        && message.contains("--etcd-cert"),
                    "says why and what to check: {message}"
                );
            }
            other => panic!("expected a refused handshake, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a refused certificate is not retried: {:?}",
            started.elapsed()
        );

        // And the other way round: a client that trusts only the other CA
        // refuses the member's certificate.
        match EtcdStore::connect(&cluster.endpoints(), &other.client).await {
            Err(e @ StoreError::Backend(_)) => {
                let message = e.to_string();
                assert!(
                    message.contains("the etcd member's certificate was refused")
                        && message.contains("--etcd-ca"),
                    "{message}"
                );
            }
            other => panic!("expected the member's certificate refused, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refuses_tls_without_client_certificate_and_plaintext() {
    bounded(
        "etcd_refuses_tls_without_client_certificate_and_plaintext",
        async {
            let cluster = EtcdCluster::single().await.expect("etcd starts");
            let endpoint = cluster.endpoints()[0].clone();
            let ca = std::fs::read(&cluster.tls().ca).expect("read CA");
            let read = |endpoint: String, options: etcd_client::ConnectOptions| async move {
                let options = options.with_connect_timeout(Duration::from_secs(2));
                let mut client = etcd_client::Client::connect([endpoint], Some(options)).await?;
                tokio::time::timeout(Duration::from_secs(5), client.get("/wl/x", None))
                    .await
                    .unwrap_or_else(|_| panic!("no answer within 5 s"))
            };

            // TLS that verifies the member but presents no certificate.
            let anonymous = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(ca));
            let err = read(
                endpoint.clone(),
                etcd_client::ConnectOptions::new().with_tls(anonymous),
            )
            .await
            .expect_err("etcd refuses a client without a certificate");
            eprintln!("TLS without a client certificate: {err}");

            // Plaintext gRPC to the TLS port.
            let plain = endpoint.replacen("https://", "http://", 1);
            let err = read(plain, etcd_client::ConnectOptions::new())
                .await
                .expect_err("etcd refuses plaintext");
            eprintln!("plaintext: {err}");

            // And with the right certificate it answers.
            let tls = tls_options(cluster.tls()).expect("client TLS");
            read(endpoint, etcd_client::ConnectOptions::new().with_tls(tls))
                .await
                .expect("the client certificate is accepted");
        },
    )
    .await;
}
