//! Wardline's developer tasks: what cargo cannot do alone. `main.rs` only
//! parses the command line; each task lives in its own module, and every
//! external command goes through [`cmd`], which echoes it before it runs.

pub mod bench;
pub mod cmd;
pub mod fuzz;
pub mod lab;
pub mod lint;
pub mod package;
pub mod setup;
pub mod soak;
pub mod test;
pub mod units;

/// Whether this process runs as root (installs, mounts and the privileged
/// tests need it).
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The workspace root (the directory above `xtask/`).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| std::path::PathBuf::from("."))
}
