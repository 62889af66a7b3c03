//! The wire: any bytes are decoded as the snapshot an agent receives, and
//! its dataplane and nodes converted to the policy crate's types. Decoding
//! and conversion may refuse, never panic; what converts must convert back
//! and again to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wardline_policy::Dataplane;
use wardline_policy::compile::NodeInfo;
use wardline_proto::v1;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = v1::PolicySnapshot::decode(data) else {
        return;
    };
    if let Some(wire) = &snapshot.dataplane
        && let Ok(dataplane) = Dataplane::try_from(wire)
    {
        let again = Dataplane::try_from(&v1::Dataplane::from(&dataplane))
            .expect("a converted dataplane converts back");
        assert_eq!(again, dataplane);
    }
    for wire in &snapshot.nodes {
        if let Ok(node) = NodeInfo::try_from(wire) {
            let again = NodeInfo::try_from(&v1::NodeInfo::from(&node))
                .expect("a converted node converts back");
            assert_eq!(again, node);
        }
    }
});
