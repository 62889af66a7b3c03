//! The Wardline agent: loads the kernel programs, keeps them pinned and
//! attached, programs policy generations into their maps, reports flows.

pub mod config;
pub mod emulation;
pub mod enforcer;
pub mod events;
pub mod standalone;
pub mod status;
