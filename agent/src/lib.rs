//! The Wardline agent: loads the kernel programs, keeps them pinned and
//! attached, programs policy generations into their maps, reports flows.

pub mod config;
pub mod emulation;
pub mod enforcer;
pub mod events;
pub mod managed;
pub mod renewal;
pub mod runtime;
pub mod spool;
pub mod standalone;
pub mod status;

/// How a spawned task ended, for an error message.
pub fn describe_end<E: std::fmt::Display>(
    r: Result<Result<(), E>, tokio::task::JoinError>,
) -> String {
    match r {
        Ok(Ok(())) => "stopped".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}
