//! The policy language: any text is parsed, cut into documents, and what
//! parses is compiled. None of it may panic; whatever the parser accepts,
//! the compiler must take or refuse with an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use time::OffsetDateTime;
use wardline_policy::{CompileOptions, Dataplane};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let documents = wardline_policy::documents(source);
    let parsed = wardline_policy::parse(source);
    // Validating the documents as cut is parsing: the control plane
    // validates an apply that way, without reading it again.
    let cut: Vec<_> = documents.iter().collect();
    assert_eq!(
        wardline_policy::validate(&cut),
        parsed,
        "validate() and parse() disagree on {source:?}"
    );
    if let Ok(set) = &parsed {
        // Every document parse accepted is one documents() cuts out.
        assert!(documents.len() >= set.segments.len() + set.policies.len());
        // A fixed instant, so that a crash replays the same way.
        let now = OffsetDateTime::from_unix_timestamp(1_773_475_200).expect("a valid instant");
        let _ = Dataplane::compile(set, &CompileOptions::at(now));
    }
    // The documents, joined again, read as the source did.
    let again: String = documents
        .iter()
        .map(|d| format!("---\n{}", d.text))
        .collect();
    assert_eq!(
        wardline_policy::parse(&again).is_ok(),
        parsed.is_ok(),
        "documents() and parse() disagree on {source:?}"
    );
});
