//! The agent's configuration: any text is read as an `AgentConfig`
//! document. It must be accepted or refused with an error, never panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wardline_agent::config::AgentConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AgentConfig::parse(Path::new("agent.yaml"), text);
    }
});
