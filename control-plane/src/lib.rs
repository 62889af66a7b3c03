//! The Wardline control plane: the versioned policy store (embedded or
//! etcd), distribution of per-node snapshots to agents over gRPC with mutual
//! TLS, agent tracking, the site PKI and `wardctl`. It depends on
//! `wardline-policy` and `wardline-proto`, never on the agent.
#![forbid(unsafe_code)]

pub mod registry;
pub mod server;
#[cfg(feature = "test-support")]
pub mod testing;
