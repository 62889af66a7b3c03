//! The `wardline-control-plane` command line: store settings it refuses
//! before it reads any certificate or opens any store.

use std::process::Command;

/// Runs the binary with the site TLS flags (never read: the store is
/// checked first) and `args`; returns its exit code and standard error.
fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wardline-control-plane"))
        .args([
            "--ca",
            "/nonexistent/ca.pem",
            "--cert",
            "/nonexistent/cp.pem",
        ])
        .args(["--key", "/nonexistent/cp-key.pem"])
        .args(args)
        .env_remove("WARDLINE_STORE")
        .env_remove("WARDLINE_ETCD_CA")
        .env_remove("WARDLINE_ETCD_CERT")
        .env_remove("WARDLINE_ETCD_KEY")
        .output()
        .expect("the control plane runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ETCD_FILES: [&str; 6] = [
    "--etcd-ca",
    "/etc/wardline/etcd/ca.pem",
    "--etcd-cert",
    "/etc/wardline/etcd/client.pem",
    "--etcd-key",
    "/etc/wardline/etcd/client-key.pem",
];

#[test]
fn plaintext_etcd_is_refused() {
    let mut args = vec!["--store", "etcd:https://10.0.0.1:2379,http://10.0.0.2:2379"];
    args.extend(ETCD_FILES);
    let (code, stderr) = run(&args);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(
            "etcd endpoint http://10.0.0.2:2379 is plaintext; use https:// with \
             --etcd-ca/--etcd-cert/--etcd-key"
        ),
        "{stderr}"
    );
}

#[test]
fn etcd_without_client_certificate_is_refused() {
    let (code, stderr) = run(&["--store", "etcd:https://10.0.0.1:2379"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("give --etcd-ca, --etcd-cert and --etcd-key"),
        "{stderr}"
    );

    // The three files come together.
    let (code, stderr) = run(&[
        "--store",
        "etcd:https://10.0.0.1:2379",
        "--etcd-ca",
        "/etc/wardline/etcd/ca.pem",
    ]);
    assert_eq!(code, Some(2), "a usage error from the parser: {stderr}");
    assert!(stderr.contains("--etcd-cert"), "{stderr}");
}

#[test]
fn etcd_files_with_an_embedded_store_are_refused() {
    let mut args = vec!["--store", "embedded:/tmp/never-created.redb"];
    args.extend(ETCD_FILES);
    let (code, stderr) = run(&args);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("are for an etcd store"), "{stderr}");
}
