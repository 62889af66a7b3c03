//! Inputs the wire fuzz target (`fuzz/fuzz_targets/wire.rs`) crashed on,
//! kept in `tests/fuzz/` and checked as the target checks them: a
//! snapshot's tables convert or are refused naming the field, and what
//! converts converts back and again to the same value.

use std::path::Path;

use prost::Message;
use wardline_policy::Schedule;
use wardline_proto::convert::WireError;
use wardline_proto::v1;

/// The fuzz target's checks; the tables' conversion result.
fn check(data: &[u8]) -> Option<Result<Schedule, WireError>> {
    let tables = v1::Tables::decode(data).ok()?;
    let converted = Schedule::try_from(&tables);
    if let Ok(schedule) = &converted {
        let again = Schedule::try_from(&v1::Tables::from(schedule)).expect("converts back");
        assert_eq!(&again, schedule);
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

/// The example's tables with one bit flipped: `198.18.20.1/24`, a prefix
/// with a host bit, was taken and came back as `198.18.20.0/24`.
#[test]
fn a_prefix_with_host_bits_is_refused() {
    let err = check(&input("tables-prefix-host-bits.pb"))
        .expect("tables that decode")
        .unwrap_err();
    assert_eq!(err.field, "tables.now.dataplane.prefixes[0].address");
    assert_eq!(err.message, "198.18.20.1 has host bits set for /24");
}
