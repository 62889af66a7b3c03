//! The wire between the control plane and agents: `.proto` definitions,
//! their generated code and the conversions to the policy crate's domain
//! types. The agent and the control plane meet only here. Its code arrives
//! with managed mode.
#![forbid(unsafe_code)]
