//! The Wardline control plane: the versioned policy store, distribution to
//! agents over gRPC with mutual TLS, agent tracking, the flow store and
//! `wardctl`. Its place in the workspace is fixed by the architecture (it
//! depends on `wardline-policy` and `wardline-proto`, never on the agent);
//! its code arrives with managed mode. Until then agents run standalone
//! from a policy file.
#![forbid(unsafe_code)]
