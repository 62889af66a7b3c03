//! Test infrastructure for Wardline's cross-process tests: every test host is
//! a network namespace behind an RAII guard ([`Netns`]), wired with veth
//! pairs, routes and bridges ([`veth`], [`addr`], [`route`], [`bridge`]),
//! and exercised with the `wardline-probe` binary ([`Netns::serve`],
//! [`Netns::tcp_ok`], [`Netns::udp_ok`], [`Netns::ping_ok`]).
//!
//! Tests that need root call [`require_root`] and are marked
//! `#[ignore = "needs root: run via cargo xtask test"]`, so that a plain
//! `cargo test` passes without privileges. Only the test address ranges are
//! used: 198.18.0.0/15, 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and
//! 2001:db8::/32.
//!
//! ```no_run
//! use wardline_tests::{Netns, addr, require_root, veth};
//!
//! require_root();
//! let client = Netns::new("client");
//! let server = Netns::new("server");
//! veth(&client, "eth0", &server, "eth0");
//! addr(&client, "eth0", "198.18.0.1/24");
//! addr(&server, "eth0", "198.18.0.2/24");
//! let _echo = server.serve(&[8080], &[]);
//! assert!(client.tcp_ok("198.18.0.2", 8080));
//! ```

mod command;
mod link;
mod netns;
mod probe;

pub use command::{CommandError, run, try_run};
pub use link::{
    IFNAMSIZ_MAX, addr, bridge, check_ifname, enable_forwarding, link_up, route, unique_ifname,
    veth,
};
pub use netns::{NETNS_DIR, Netns, netns_exists};
pub use probe::{PROBE_BIN_NAME, PROBE_TIMEOUT, RetryCount, ServerHandle, probe_bin, quiet_probes};

/// The environment variable that points at the directory holding the built
/// binaries (`wardline-probe`, the agent); defaults to the workspace's
/// `target/debug`.
pub const BIN_DIR_ENV: &str = "WARDLINE_BIN_DIR";

/// Panics unless the process runs as root, telling how privileged tests are
/// meant to run. Call it first in every test that needs root.
pub fn require_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test needs root (network namespaces, raw sockets, BPF): run it via `cargo xtask test`"
    );
}

pub mod agent;
pub mod bench;
pub mod browser;
pub mod docs;
pub mod forge;
pub mod frame;
pub mod lab;
pub mod matrix;
pub mod prometheus;
pub mod scenarios;
pub mod site;
pub mod tcx;
pub mod topology;
