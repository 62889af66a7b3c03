//! Inputs the wire fuzz target (`fuzz/fuzz_targets/wire.rs`) crashed on,
//! kept in `tests/fuzz/` and checked as the target checks them: a snapshot
//! converts or is refused naming the field, and what converts converts back
//! and again to the same value.

use std::path::Path;

use prost::Message;
use wardline_policy::Dataplane;
use wardline_policy::compile::NodeInfo;
use wardline_proto::convert::WireError;
use wardline_proto::v1;

/// The fuzz target's checks; the dataplane's conversion result.
fn check(data: &[u8]) -> Option<Result<Dataplane, WireError>> {
    let snapshot = v1::PolicySnapshot::decode(data).ok()?;
    for wire in &snapshot.nodes {
        if let Ok(node) = NodeInfo::try_from(wire) {
            let again = NodeInfo::try_from(&v1::NodeInfo::from(&node)).expect("converts back");
            assert_eq!(again, node);
        }
    }
    let converted = Dataplane::try_from(snapshot.dataplane.as_ref()?);
    if let Ok(dataplane) = &converted {
        let again = Dataplane::try_from(&v1::Dataplane::from(dataplane)).expect("converts back");
        assert_eq!(&again, dataplane);
    }
    Some(converted)
}

fn input(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_kept_input_passes_the_fuzz_checks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        check(&std::fs::read(&path).unwrap());
    }
}

/// The example's snapshot with one bit flipped: `198.18.20.1/24`, a prefix
/// with a host bit, was taken and came back as `198.18.20.0/24`.
#[test]
fn a_prefix_with_host_bits_is_refused() {
    let err = check(&input("wire-prefix-host-bits.pb"))
        .expect("a snapshot with a dataplane")
        .unwrap_err();
    assert_eq!(err.field, "dataplane.prefixes[0].address");
    assert_eq!(err.message, "198.18.20.1 has host bits set for /24");
}
