//! How wardctl fails: a message and an exit code scripts can rely on.

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_INVALID: u8 = 3;
pub const EXIT_CONFLICT: u8 = 4;
pub const EXIT_NOT_FOUND: u8 = 5;
pub const EXIT_UNAVAILABLE: u8 = 6;
pub const EXIT_REFUSED: u8 = 7;
pub const EXIT_UNHEALTHY: u8 = 8;
pub const EXIT_TAMPERED: u8 = 9;

pub struct Failure {
    pub code: u8,
    pub message: String,
}

pub fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// The exit code of a refusal by the control plane.
pub fn from_status(s: tonic::Status) -> Failure {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument => EXIT_INVALID,
        Code::FailedPrecondition | Code::Aborted => EXIT_CONFLICT,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::DataLoss => EXIT_TAMPERED,
        Code::Unavailable | Code::DeadlineExceeded => EXIT_UNAVAILABLE,
        Code::Unauthenticated | Code::PermissionDenied => EXIT_REFUSED,
        _ => EXIT_FAILURE,
    };
    fail(code, s.message().to_owned())
}

/// Reads a policy file.
pub fn read_file(path: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| fail(EXIT_FAILURE, format!("{}: {e}", path.display())))
}
