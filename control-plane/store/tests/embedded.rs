//! What only the embedded backend does: a file that survives restarts,
//! exclusive opening, its format check, lagging watchers; and the store
//! specification text.

use std::str::FromStr as _;
use std::time::Duration;

use futures_util::StreamExt as _;
use wardline_store::embedded::{EmbeddedOptions, EmbeddedStore};
use wardline_store::{self as store, Compare, EtcdTls, Op, Store, StoreError, StoreSpec};

/// Limit on one whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

async fn bounded<F: Future<Output = ()>>(name: &str, test: F) {
    if tokio::time::timeout(TEST_TIMEOUT, test).await.is_err() {
        panic!("{name} did not finish within {TEST_TIMEOUT:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_data_and_revision() {
    bounded("reopen_keeps_data_and_revision", async {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("var/lib/wardline/control-plane.redb");
        let (revision, created) = {
            let s = EmbeddedStore::open(&path).await.expect("open");
            let created = s.put("/wl/policy/web", b"v1".to_vec()).await.expect("put");
            s.put("/wl/policy/db", b"v1".to_vec()).await.expect("put");
            s.put("/wl/policy/web", b"v2".to_vec()).await.expect("put");
            let out = s
                .txn(
                    vec![],
                    vec![Op::delete("/wl/policy/db"), Op::put("/wl/agents/a1", "up")],
                )
                .await
                .expect("txn");
            (out.revision, created)
        };
        assert!(path.is_file(), "the file and its folders were created");

        let s = EmbeddedStore::open(&path).await.expect("reopen");
        assert_eq!(
            s.revision().await.expect("revision"),
            revision,
            "the revision persisted"
        );
        let web = s
            .get("/wl/policy/web")
            .await
            .expect("get")
            .expect("present");
        assert_eq!(web.value, b"v2");
        assert_eq!(
            (web.create_revision, web.mod_revision),
            (created, created + 2)
        );
        assert_eq!(
            s.get("/wl/policy/db").await.expect("get"),
            None,
            "the delete persisted"
        );
        let keys: Vec<String> = s
            .range("/wl/")
            .await
            .expect("range")
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        assert_eq!(keys, ["/wl/agents/a1", "/wl/policy/web"]);

        // Counting goes on from where it was, and compares see the old revisions.
        let out = s
            .txn(
                vec![Compare::mod_revision("/wl/policy/web", web.mod_revision)],
                vec![Op::put("/wl/policy/web", "v3")],
            )
            .await
            .expect("txn");
        assert_eq!((out.succeeded, out.revision), (true, revision + 1));

        // A watch on the reopened store replays what changed after a revision.
        let mut watch = s.watch("/wl/policy/", created).await.expect("watch");
        let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("replayed in time")
            .expect("an item")
            .expect("an event");
        assert_eq!(
            (event.key(), event.mod_revision()),
            ("/wl/policy/web", revision + 1)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_of_one_file_is_refused() {
    bounded("second_open_of_one_file_is_refused", async {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("cp.redb");
        let first = EmbeddedStore::open(&path).await.expect("open");
        match EmbeddedStore::open(&path).await {
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.contains(&path.display().to_string()),
                    "names the file: {message}"
                );
            }
            Ok(_) => panic!("the same file opened twice"),
        }
        first
            .put("/wl/still", b"works".to_vec())
            .await
            .expect("the first handle still works");
        drop(first);
        EmbeddedStore::open(&path)
            .await
            .expect("opens again once closed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_of_another_format_is_refused() {
    bounded("file_of_another_format_is_refused", async {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("future.redb");
        {
            let db = redb::Database::create(&path).expect("create a redb file");
            let wtx = db.begin_write().expect("begin");
            {
                let mut meta = wtx
                    .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                    .expect("table");
                meta.insert("format", 99).expect("insert");
            }
            wtx.commit().expect("commit");
        }
        let message = EmbeddedStore::open(&path)
            .await
            .expect_err("refused")
            .to_string();
        assert!(message.contains("format version 99"), "{message}");
        assert!(message.contains("future.redb"), "{message}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_watcher_is_told_and_can_resume() {
    bounded("lagging_watcher_is_told_and_can_resume", async {
        let dir = tempfile::tempdir().expect("temporary folder");
        let s = EmbeddedStore::open_with(
            &dir.path().join("lag.redb"),
            EmbeddedOptions { watch_buffer: 4 },
        )
        .await
        .expect("open");
        let from = s.revision().await.expect("revision");
        let mut watch = s.watch("/wl/", from).await.expect("watch");
        for i in 0..10_u32 {
            s.put(&format!("/wl/k{i}"), b"x".to_vec())
                .await
                .expect("put");
        }
        let item = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("in time");
        match item {
            Some(Err(StoreError::WatchLagged { prefix, missed })) => {
                assert_eq!(prefix, "/wl/");
                assert!(missed >= 6, "missed {missed}");
            }
            other => panic!("expected WatchLagged, got {other:?}"),
        }
        let end = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("in time");
        assert!(end.is_none(), "the stream ends after its error");

        // Watching again after the last revision seen gets everything.
        let mut again = s.watch("/wl/", from).await.expect("re-watch");
        let mut keys = Vec::new();
        for _ in 0..10 {
            let event = tokio::time::timeout(Duration::from_secs(5), again.next())
                .await
                .expect("in time")
                .expect("an item")
                .expect("an event");
            keys.push(event.key().to_owned());
        }
        let expected: Vec<String> = (0..10).map(|i| format!("/wl/k{i}")).collect();
        assert_eq!(keys, expected);
    })
    .await;
}

#[test]
fn store_spec_parses_and_prints() {
    assert_eq!(
        StoreSpec::from_str("embedded:/var/lib/wardline/control-plane.redb").expect("parses"),
        StoreSpec::Embedded("/var/lib/wardline/control-plane.redb".into())
    );
    let etcd = StoreSpec::from_str("etcd:https://127.0.0.1:2379, https://etcd2.example:2379")
        .expect("parses");
    assert_eq!(
        etcd,
        StoreSpec::Etcd {
            endpoints: vec![
                "https://127.0.0.1:2379".to_owned(),
                "https://etcd2.example:2379".to_owned()
            ],
            tls: None,
        }
    );
    assert_eq!(
        etcd.to_string(),
        "etcd:https://127.0.0.1:2379,https://etcd2.example:2379"
    );
    assert_eq!(
        StoreSpec::from_str(&etcd.to_string()).expect("round trip"),
        etcd
    );
    let tls = EtcdTls {
        ca: "/etc/wardline/etcd/ca.pem".into(),
        cert: "/etc/wardline/etcd/client.pem".into(),
        key: "/etc/wardline/etcd/client-key.pem".into(),
    };
    match etcd.clone().with_etcd_tls(tls.clone()) {
        StoreSpec::Etcd {
            tls: Some(given), ..
        } => assert_eq!(given, tls),
        other => panic!("expected an etcd spec with TLS, got {other:?}"),
    }
    let embedded = StoreSpec::Embedded("/x.redb".into());
    assert_eq!(embedded.clone().with_etcd_tls(tls), embedded);

    for (bad, why) in [
        ("embedded:", "file path"),
        ("etcd:", "at least one endpoint"),
        ("etcd:127.0.0.1:2379", "not an https:// URL"),
        (
            "etcd:https://127.0.0.1:2379,http://127.0.0.1:22379",
            "etcd endpoint http://127.0.0.1:22379 is plaintext; use https:// with \
             --etcd-ca/--etcd-cert/--etcd-key",
        ),
        ("redis://localhost", "expected"),
        ("", "expected"),
    ] {
        match StoreSpec::from_str(bad) {
            Err(e @ StoreError::InvalidSpec { .. }) => {
                let message = e.to_string();
                assert!(message.contains(why), "{bad:?}: {message}");
                assert!(
                    message.contains(&format!("{bad:?}")),
                    "names the spec: {message}"
                );
            }
            other => panic!("{bad:?}: expected InvalidSpec, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_spec_opens_embedded() {
    bounded("store_spec_opens_embedded", async {
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("nested/cp.redb");
        let spec = StoreSpec::from_str(&format!("embedded:{}", path.display())).expect("parses");
        let s = store::open(&spec).await.expect("open");
        assert!(
            s.txn(vec![Compare::absent("/wl/x")], vec![Op::put("/wl/x", "1")])
                .await
                .expect("txn")
                .succeeded
        );
        drop(s);
        let s = store::open(&spec).await.expect("reopen");
        assert_eq!(
            s.get("/wl/x").await.expect("get").expect("present").value,
            b"1"
        );
    })
    .await;
}

#[tokio::test]
async fn the_file_is_private_and_encrypted_values_are_not_in_it() {
    use std::os::unix::fs::PermissionsExt as _;
    use wardline_store::encrypted::{EncryptedStore, StoreKey};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.redb");
    let inner = std::sync::Arc::new(EmbeddedStore::open(&path).await.unwrap());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A key file others can read is refused.
    let key_file = dir.path().join("store.key");
    StoreKey::generate(&key_file).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = StoreKey::load(&key_file).unwrap_err().to_string();
    assert!(err.contains("readable by others (mode 0644)"), "{err}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let secret = b"kind: Policy allow-ws-to-ehr-prod";
    {
        let store = EncryptedStore::new(inner.clone(), StoreKey::load(&key_file).unwrap());
        store
            .put("/wardline/policy", secret.to_vec())
            .await
            .unwrap();
        assert_eq!(
            store.get("/wardline/policy").await.unwrap().unwrap().value,
            secret
        );
        // A plaintext value written behind its back is refused, not used.
        inner
            .put("/wardline/planted", b"plain".to_vec())
            .await
            .unwrap();
        let err = store
            .get("/wardline/planted")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not encrypted"), "{err}");
        // Rotation: a new key seals; rekey rewrites everything under it.
        assert_eq!(StoreKey::generate(&key_file).unwrap(), 2);
        let rotated = EncryptedStore::new(inner.clone(), StoreKey::load(&key_file).unwrap());
        assert_eq!(
            rotated
                .get("/wardline/policy")
                .await
                .unwrap()
                .unwrap()
                .value,
            secret
        );
        assert_eq!(rotated.rekey("/wardline/").await.unwrap(), 2);
        assert_eq!(
            rotated
                .get("/wardline/planted")
                .await
                .unwrap()
                .unwrap()
                .value,
            b"plain"
        );
        assert_eq!(
            rotated.rekey("/wardline/").await.unwrap(),
            0,
            "all current now"
        );
    }
    drop(inner);
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret),
        "the policy text is in the file in the clear"
    );
}
