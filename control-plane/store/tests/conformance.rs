//! One conformance suite, run against both store backends, the embedded
//! `redb` file and a real etcd server on a loopback port (reached over TLS
//! with a client certificate), and against the embedded store encrypted
//! at rest.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use wardline_store::embedded::EmbeddedStore;
use wardline_store::etcd::EtcdStore;
use wardline_store::testing::EtcdCluster;
use wardline_store::{Compare, MAX_TXN_OPS, Op, Store, StoreError, WatchEvent, WatchStream};

/// Limit on one whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit on waiting for one watch event.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A store under test and what keeps it alive (its folder or its etcd).
struct Backend {
    store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

async fn embedded() -> Backend {
    let dir = tempfile::tempdir().expect("temporary folder");
    let store = EmbeddedStore::open(&dir.path().join("state/control-plane.redb"))
        .await
        .expect("embedded store opens");
    Backend {
        store: Arc::new(store),
        _keep: Box::new(dir),
    }
}

/// The embedded store with every value encrypted at rest.
async fn encrypted() -> Backend {
    let dir = tempfile::tempdir().expect("temporary folder");
    let inner = EmbeddedStore::open(&dir.path().join("state/control-plane.redb"))
        .await
        .expect("embedded store opens");
    let key_file = dir.path().join("store.key");
    wardline_store::encrypted::StoreKey::generate(&key_file).expect("a store key");
    let key = wardline_store::encrypted::StoreKey::load(&key_file).expect("the store key loads");
    Backend {
        store: Arc::new(wardline_store::encrypted::EncryptedStore::new(
            Arc::new(inner),
            key,
        )),
        _keep: Box::new(dir),
    }
}

async fn etcd() -> Backend {
    let cluster = EtcdCluster::single().await.expect("etcd starts");
    let store = EtcdStore::connect(&cluster.endpoints(), cluster.tls())
        .await
        .expect("etcd store connects");
    Backend {
        store: Arc::new(store),
        _keep: Box::new(cluster),
    }
}

/// The next event of `watch`, failing the test if none comes in time.
async fn next_event(watch: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended early"),
        Err(_) => panic!("no watch event within {EVENT_TIMEOUT:?}"),
    }
}

/// Fails the test if `watch` yields anything within a short while.
async fn expect_quiet(watch: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), watch.next()).await {
        panic!("expected no watch event, got {item:?}");
    }
}

fn put_event(key: &str, value: &[u8], create_revision: u64, mod_revision: u64) -> WatchEvent {
    WatchEvent::Put(wardline_store::KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision,
        mod_revision,
    })
}

async fn put_get_range_ordering(b: Backend) {
    let s = &b.store;
    let start = s.revision().await.expect("revision");
    assert_eq!(start, 1, "a fresh store is at revision 1, as etcd");
    assert_eq!(s.get("/wl/p/missing").await.expect("get"), None);

    let mut revisions = Vec::new();
    for key in ["/wl/p/c", "/wl/p/a", "/wl/pz", "/wl/p/b", "/wl/q/a"] {
        revisions.push(s.put(key, key.as_bytes().to_vec()).await.expect("put"));
    }
    assert_eq!(revisions, vec![2, 3, 4, 5, 6], "one revision per put");

    let a = s.get("/wl/p/a").await.expect("get").expect("present");
    assert_eq!(a.value, b"/wl/p/a");
    assert_eq!((a.create_revision, a.mod_revision), (3, 3));

    let keys =
        |kvs: Vec<wardline_store::KeyValue>| kvs.into_iter().map(|kv| kv.key).collect::<Vec<_>>();
    assert_eq!(
        keys(s.range("/wl/p/").await.expect("range")),
        ["/wl/p/a", "/wl/p/b", "/wl/p/c"],
        "range is sorted and holds only the prefix"
    );
    assert_eq!(
        keys(s.range("/wl/p").await.expect("range")),
        ["/wl/p/a", "/wl/p/b", "/wl/p/c", "/wl/pz"]
    );
    assert_eq!(
        keys(s.range("").await.expect("range")),
        ["/wl/p/a", "/wl/p/b", "/wl/p/c", "/wl/pz", "/wl/q/a"],
        "the empty prefix is every key"
    );
    assert!(s.range("/nothing/").await.expect("range").is_empty());

    // Replacing keeps the create revision; deleting and putting back resets it.
    let rev = s.put("/wl/p/a", b"second".to_vec()).await.expect("put");
    let a = s.get("/wl/p/a").await.expect("get").expect("present");
    assert_eq!(
        (a.value.as_slice(), a.create_revision, a.mod_revision),
        (&b"second"[..], 3, rev)
    );
    let deleted_at = s.delete("/wl/p/a").await.expect("delete");
    assert_eq!(deleted_at, rev + 1);
    assert_eq!(s.get("/wl/p/a").await.expect("get"), None);
    let back = s.put("/wl/p/a", b"third".to_vec()).await.expect("put");
    let a = s.get("/wl/p/a").await.expect("get").expect("present");
    assert_eq!((a.create_revision, a.mod_revision), (back, back));

    // Values are bytes, not text.
    let binary = vec![0_u8, 0xff, 0x80, 10];
    s.put("/wl/bin", binary.clone()).await.expect("put");
    assert_eq!(
        s.get("/wl/bin").await.expect("get").expect("present").value,
        binary
    );
}

async fn txn_fails_on_stale_mod_revision(b: Backend) {
    let s = &b.store;
    // Create only if absent.
    let created = s
        .txn(vec![Compare::absent("/wl/k")], vec![Op::put("/wl/k", "v1")])
        .await
        .expect("txn");
    assert!(created.succeeded);
    let again = s
        .txn(
            vec![Compare::absent("/wl/k")],
            vec![Op::put("/wl/k", "other")],
        )
        .await
        .expect("txn");
    assert!(!again.succeeded, "the key exists now");
    assert_eq!(
        again.revision, created.revision,
        "a failed txn reports the current revision"
    );

    // Read, someone else writes, the write based on the stale read fails.
    let read = s.get("/wl/k").await.expect("get").expect("present");
    let theirs = s.put("/wl/k", b"theirs".to_vec()).await.expect("put");
    let stale = s
        .txn(
            vec![Compare::mod_revision("/wl/k", read.mod_revision)],
            vec![Op::put("/wl/k", "mine"), Op::put("/wl/side", "effect")],
        )
        .await
        .expect("txn");
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, theirs);
    assert_eq!(
        s.revision().await.expect("revision"),
        theirs,
        "nothing was written"
    );
    assert_eq!(
        s.get("/wl/k").await.expect("get").expect("present").value,
        b"theirs"
    );
    assert_eq!(
        s.get("/wl/side").await.expect("get"),
        None,
        "no operation of a failed txn applies"
    );

    // With the fresh revision it goes through.
    let fresh = s.get("/wl/k").await.expect("get").expect("present");
    let ok = s
        .txn(
            vec![Compare::mod_revision("/wl/k", fresh.mod_revision)],
            vec![Op::put("/wl/k", "mine")],
        )
        .await
        .expect("txn");
    assert!(ok.succeeded);
    assert_eq!(ok.revision, theirs + 1);
    assert_eq!(
        s.get("/wl/k").await.expect("get").expect("present").value,
        b"mine"
    );
}

async fn txn_is_atomic_across_ops(b: Backend) {
    let s = &b.store;
    s.put("/wl/a", b"old-a".to_vec()).await.expect("put");
    let gone = s.put("/wl/gone", b"x".to_vec()).await.expect("put");
    let before = s.revision().await.expect("revision");
    let out = s
        .txn(
            vec![
                Compare::mod_revision("/wl/gone", gone),
                Compare::absent("/wl/b"),
            ],
            vec![
                Op::put("/wl/a", "new-a"),
                Op::put("/wl/b", "new-b"),
                Op::delete("/wl/gone"),
                Op::delete("/wl/never-there"),
            ],
        )
        .await
        .expect("txn");
    assert!(out.succeeded);
    assert_eq!(out.revision, before + 1, "one transaction is one revision");
    let a = s.get("/wl/a").await.expect("get").expect("present");
    let b_kv = s.get("/wl/b").await.expect("get").expect("present");
    assert_eq!(
        (a.value.as_slice(), a.mod_revision),
        (&b"new-a"[..], out.revision)
    );
    assert_eq!(
        (b_kv.value.as_slice(), b_kv.create_revision),
        (&b"new-b"[..], out.revision)
    );
    assert_eq!(s.get("/wl/gone").await.expect("get"), None);

    // One failing compare among several holding ones: nothing at all.
    let failed = s
        .txn(
            vec![
                Compare::mod_revision("/wl/a", out.revision),
                Compare::absent("/wl/b"),
            ],
            vec![
                Op::put("/wl/a", "x"),
                Op::put("/wl/c", "x"),
                Op::delete("/wl/b"),
            ],
        )
        .await
        .expect("txn");
    assert!(!failed.succeeded);
    let all = s.range("/wl/").await.expect("range");
    let summary: Vec<(&str, &[u8])> = all
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    assert_eq!(
        summary,
        [("/wl/a", &b"new-a"[..]), ("/wl/b", &b"new-b"[..])]
    );
}

async fn revision_is_monotonic(b: Backend) {
    let s = &b.store;
    let mut last = s.revision().await.expect("revision");
    for i in 0..20_u64 {
        let rev = s
            .put(&format!("/wl/m/{}", i % 3), i.to_be_bytes().to_vec())
            .await
            .expect("put");
        assert_eq!(rev, last + 1, "every write is the next revision");
        assert_eq!(s.revision().await.expect("revision"), rev);
        last = rev;
    }
    // A transaction that changes nothing makes no revision.
    let noop = s
        .txn(vec![], vec![Op::delete("/wl/m/absent")])
        .await
        .expect("txn");
    assert!(noop.succeeded);
    assert_eq!(noop.revision, last);
    let empty = s
        .txn(vec![Compare::absent("/wl/m/absent")], vec![])
        .await
        .expect("txn");
    assert_eq!((empty.succeeded, empty.revision), (true, last));
    let failed = s
        .txn(
            vec![Compare::mod_revision("/wl/m/0", 1)],
            vec![Op::put("/wl/m/0", "x")],
        )
        .await
        .expect("txn");
    assert_eq!((failed.succeeded, failed.revision), (false, last));
    assert_eq!(s.revision().await.expect("revision"), last);
}

async fn watch_sees_later_changes_in_order(b: Backend) {
    let s = &b.store;
    s.put("/wl/w/before", b"0".to_vec()).await.expect("put");
    let from = s.revision().await.expect("revision");
    let mut watch = s.watch("/wl/w/", from).await.expect("watch");
    expect_quiet(&mut watch).await;

    let r1 = s.put("/wl/w/a", b"1".to_vec()).await.expect("put");
    s.put("/wl/other", b"not watched".to_vec())
        .await
        .expect("put");
    let r2 = s.put("/wl/w/a", b"2".to_vec()).await.expect("put");
    let r3 = s.delete("/wl/w/before").await.expect("delete");
    let r4 = s
        .txn(vec![], vec![Op::put("/wl/w/b", "3"), Op::delete("/wl/w/a")])
        .await
        .expect("txn")
        .revision;

    assert_eq!(
        next_event(&mut watch).await,
        put_event("/wl/w/a", b"1", r1, r1)
    );
    assert_eq!(
        next_event(&mut watch).await,
        put_event("/wl/w/a", b"2", r1, r2)
    );
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete {
            key: "/wl/w/before".to_owned(),
            mod_revision: r3
        }
    );
    // Both changes of the transaction, at its one revision, in its order.
    assert_eq!(
        next_event(&mut watch).await,
        put_event("/wl/w/b", b"3", r4, r4)
    );
    assert_eq!(
        next_event(&mut watch).await,
        WatchEvent::Delete {
            key: "/wl/w/a".to_owned(),
            mod_revision: r4
        }
    );
    expect_quiet(&mut watch).await;

    // A second watcher of a narrower prefix sees only its keys.
    let mut narrow = s.watch("/wl/w/b", r4).await.expect("watch");
    s.put("/wl/w/a", b"4".to_vec()).await.expect("put");
    let r6 = s.put("/wl/w/b", b"5".to_vec()).await.expect("put");
    assert_eq!(
        next_event(&mut narrow).await,
        put_event("/wl/w/b", b"5", r4, r6)
    );
    expect_quiet(&mut narrow).await;
}

async fn watch_replays_after_revision(b: Backend) {
    let s = &b.store;
    let r1 = s.put("/wl/r/k1", b"a".to_vec()).await.expect("put");
    let r2 = s.put("/wl/r/k2", b"b".to_vec()).await.expect("put");
    s.put("/wl/x", b"elsewhere".to_vec()).await.expect("put");
    let r3 = s.put("/wl/r/k1", b"c".to_vec()).await.expect("put");

    // Everything after r1: k2 at r2, then k1 at r3, in revision order.
    let mut watch = s.watch("/wl/r/", r1).await.expect("watch");
    assert_eq!(
        next_event(&mut watch).await,
        put_event("/wl/r/k2", b"b", r2, r2)
    );
    assert_eq!(
        next_event(&mut watch).await,
        put_event("/wl/r/k1", b"c", r1, r3)
    );
    expect_quiet(&mut watch).await;
    // Then live changes follow without a gap or a repeat.
    let r5 = s.put("/wl/r/k3", b"d".to_vec()).await.expect("put");
    assert_eq!(
        next_event(&mut watch).await,
        put_event("/wl/r/k3", b"d", r5, r5)
    );

    // After the latest revision: nothing to replay.
    let mut quiet = s.watch("/wl/r/", r5).await.expect("watch");
    expect_quiet(&mut quiet).await;

    // The snapshot-then-follow pattern: range, then watch after its revision.
    let snapshot_rev = s.revision().await.expect("revision");
    let snapshot = s.range("/wl/r/").await.expect("range");
    assert_eq!(snapshot.len(), 3);
    let mut follow = s.watch("/wl/r/", snapshot_rev).await.expect("watch");
    let r6 = s.delete("/wl/r/k2").await.expect("delete");
    assert_eq!(
        next_event(&mut follow).await,
        WatchEvent::Delete {
            key: "/wl/r/k2".to_owned(),
            mod_revision: r6
        }
    );
}

async fn concurrent_txns_one_wins(b: Backend) {
    let s = &b.store;
    let base = s.put("/wl/c/leader", b"none".to_vec()).await.expect("put");
    let mut tasks = Vec::new();
    for i in 0..16_u32 {
        let store = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            let out = store
                .txn(
                    vec![Compare::mod_revision("/wl/c/leader", base)],
                    vec![
                        Op::put("/wl/c/leader", format!("candidate-{i}")),
                        Op::put(format!("/wl/c/won/{i}"), "yes"),
                    ],
                )
                .await
                .expect("txn");
            (i, out)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (i, out) = task.await.expect("task");
        if out.succeeded {
            winners.push((i, out.revision));
        }
    }
    assert_eq!(winners.len(), 1, "exactly one txn wins: {winners:?}");
    let (winner, revision) = winners[0];
    assert_eq!(revision, base + 1);
    let leader = s.get("/wl/c/leader").await.expect("get").expect("present");
    assert_eq!(leader.value, format!("candidate-{winner}").into_bytes());
    let won: Vec<String> = s
        .range("/wl/c/won/")
        .await
        .expect("range")
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(
        won,
        [format!("/wl/c/won/{winner}")],
        "only the winner's other write landed"
    );
    assert_eq!(s.revision().await.expect("revision"), base + 1);
}

async fn invalid_requests_are_refused(b: Backend) {
    let s = &b.store;
    let invalid = |r: Result<_, StoreError>, what: &str| match r {
        Err(StoreError::InvalidRequest(message)) => message,
        other => panic!("{what}: expected InvalidRequest, got {other:?}"),
    };
    let m = invalid(s.get("").await.map(|_| ()), "empty key get");
    assert!(m.contains("empty"), "{m}");
    let m = invalid(s.put("", b"x".to_vec()).await.map(|_| ()), "empty key put");
    assert!(m.contains("empty"), "{m}");
    let m = invalid(
        s.txn(vec![], vec![Op::put("/wl/d", "1"), Op::delete("/wl/d")])
            .await
            .map(|_| ()),
        "duplicate key",
    );
    assert!(m.contains("/wl/d"), "the message names the key: {m}");
    let too_many = (0..=MAX_TXN_OPS)
        .map(|i| Op::put(format!("/wl/many/{i}"), "x"))
        .collect();
    invalid(s.txn(vec![], too_many).await.map(|_| ()), "too many ops");
    let at_limit = (0..MAX_TXN_OPS)
        .map(|i| Op::put(format!("/wl/many/{i}"), "x"))
        .collect();
    assert!(
        s.txn(vec![], at_limit)
            .await
            .expect("txn at the limit")
            .succeeded
    );
    assert_eq!(
        s.range("/wl/many/").await.expect("range").len(),
        MAX_TXN_OPS
    );
    assert_eq!(
        s.revision().await.expect("revision"),
        2,
        "refused requests wrote nothing"
    );
}

async fn watch_ends_when_store_dropped(b: Backend) {
    let Backend { store, _keep } = b;
    let mut watch = store.watch("/wl/", 0).await.expect("watch");
    store.put("/wl/one", b"1".to_vec()).await.expect("put");
    assert_eq!(next_event(&mut watch).await.key(), "/wl/one");
    drop(store);
    match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
        Ok(None) => {}
        Ok(Some(item)) => panic!("expected the end of the watch, got {item:?}"),
        Err(_) => panic!("the watch did not end within {EVENT_TIMEOUT:?} of dropping the store"),
    }
}

async fn bounded<F: Future<Output = ()>>(name: &str, test: F) {
    if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
        panic!("{name} did not finish within {TEST_TIMEOUT:?}");
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::bounded(stringify!($name), async {
                        super::$name(super::embedded().await).await
                    })
                    .await;
                }
            )*
        }
        mod encrypted {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::bounded(stringify!($name), async {
                        super::$name(super::encrypted().await).await
                    })
                    .await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::bounded(stringify!($name), async {
                        super::$name(super::etcd().await).await
                    })
                    .await;
                }
            )*
        }
    };
}

conformance!(
    put_get_range_ordering,
    txn_fails_on_stale_mod_revision,
    txn_is_atomic_across_ops,
    revision_is_monotonic,
    watch_sees_later_changes_in_order,
    watch_replays_after_revision,
    concurrent_txns_one_wins,
    invalid_requests_are_refused,
    watch_ends_when_store_dropped,
);
