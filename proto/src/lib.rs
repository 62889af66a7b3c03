//! The wire between the control plane and agents: the `.proto` definitions
//! (`wardline/v1/`), their generated code (committed, checked by a test that
//! regenerates it) and hand-written conversions to the policy crate's
//! domain types. The agent and the control plane meet only here.
#![forbid(unsafe_code)]

#[rustfmt::skip]
#[expect(
    clippy::allow_attributes,
    reason = "the generated code carries its own allow attributes"
)]
pub mod v1 {
    include!("gen/wardline.v1.rs");
}

pub mod convert;
pub mod delta;
pub mod json;
