//! The Wardline control plane's server: the `Management` and `AgentApi`
//! gRPC services, who may call what, the registry of policy revisions,
//! nodes and agents kept in the store, and per-node snapshots compiled and
//! pushed to agents. The `wardline-control-plane` binary is a thin `main`
//! over it.
//!
//! It keeps its records through `wardline-store` (never a backend
//! directly), reads callers from their certificates through `wardline-tls`,
//! and compiles with `wardline-policy`. It must not depend on the agent
//! (the two meet only in `wardline-proto` and `wardline-tls`), nor on
//! `wardctl`. It issues no certificate but one kind: an agent's renewed
//! certificate, through `wardline-pki`'s `AgentRenewer` when the replica
//! holds the site CA's key (`renewal`); everything else the site PKI
//! issues offline. Its `/metrics` goes through `wardline-metrics`; its SIEM
//! export through `wardline-siem`.
#![forbid(unsafe_code)]

pub mod attest;
pub mod audit;
pub mod break_glass;
pub mod chain;
pub mod changes;
pub mod dashboard;
pub mod flows;
pub mod limits;
pub mod liveness;
pub mod management;
pub mod metrics;
pub mod mfa;
pub mod promotion;
pub mod quarantine;
pub mod registry;
pub mod renewal;
pub mod server;
pub mod siem;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod vendor;
