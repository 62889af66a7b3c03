//! The wire: any bytes are decoded as the tables an agent receives in a
//! snapshot, and converted to the policy crate's schedule of dataplanes.
//! Decoding and conversion may refuse, never panic; what converts must
//! convert back and again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wardline_policy::Schedule;
use wardline_proto::v1;

fuzz_target!(|data: &[u8]| {
    let Ok(tables) = v1::Tables::decode(data) else {
        return;
    };
    if let Ok(schedule) = Schedule::try_from(&tables) {
        let again = Schedule::try_from(&v1::Tables::from(&schedule))
            .expect("converted tables convert back");
        assert_eq!(again, schedule);
    }
});
