//! The wire fuzz target's seeds (`fuzz/seeds/wire/`, see `cargo xtask
//! fuzz`) are the tables an agent would receive for the example policy, so
//! that fuzzing starts from messages that decode and convert rather than
//! from noise. `WARDLINE_REGENERATE=1 cargo test -p wardline-proto --test
//! fuzz_seeds` rewrites them after a change to the wire or the example.

use std::path::Path;

use prost::Message;
use time::OffsetDateTime;
use wardline_policy::compile::NodeInfo;
use wardline_policy::{CompileOptions, Schedule};
use wardline_proto::v1;

const POLICY: &str = include_str!("../../examples/hospital.yaml");

/// The tables of the example at `now` (and at its next window
/// boundaries), with the node its `Node` document declares registered.
fn snapshot(now: OffsetDateTime) -> v1::Tables {
    let set = wardline_policy::parse(POLICY).expect("the example parses");
    let node = NodeInfo {
        name: "pumpsrv-1".into(),
        labels: [("role".to_owned(), "pump-server".to_owned())].into(),
        addresses: vec!["198.18.42.10".parse().expect("an address")],
    };
    let options = CompileOptions {
        nodes: vec![node],
        ..CompileOptions::at(now)
    };
    let schedule = Schedule::compile(&set, &options, 3).expect("the example compiles");
    v1::Tables::from(&schedule)
}

#[test]
fn wire_seeds_are_the_example_s_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wire");
    // Inside the example's vendor window, and after it has closed.
    let seeds = [
        ("hospital-in-window.pb", 1_773_475_200),
        ("hospital-after-window.pb", 1_900_000_000),
    ];
    let regenerate = std::env::var_os("WARDLINE_REGENERATE").is_some();
    for (name, unix) in seeds {
        let now = OffsetDateTime::from_unix_timestamp(unix).expect("a valid instant");
        let fresh = snapshot(now).encode_to_vec();
        let path = dir.join(name);
        if regenerate {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &fresh).unwrap();
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == fresh,
            "{} is stale: run WARDLINE_REGENERATE=1 cargo test -p wardline-proto --test fuzz_seeds",
            path.display()
        );
    }
}
