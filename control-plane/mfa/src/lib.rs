//! The second factor every change needs beyond an operator certificate
//! (`docs/governance.md`): a TOTP code (RFC 6238: HMAC-SHA1, 30-second
//! steps, six digits, as every authenticator app makes them), exchanged
//! for a short-lived session bound to the certificate that asked.
//!
//! - An operator enrols once ([`Enrolment::begin`]): the secret is shown
//!   once, as a QR code, and is in force only after a code made from it is
//!   given back ([`Enrolment::confirm`]). Enrolling again needs a session
//!   of the factor in force, so a stolen certificate cannot replace it.
//! - A code is accepted for its own step and the steps either side (clock
//!   drift of up to 30 s), and once: a code of a step at or before the last
//!   one accepted is refused as replayed, also when a second replica is
//!   asked (the record is written back by compare-and-swap).
//! - Wrong codes count: [`MAX_FAILURES`] within [`FAILURE_WINDOW`] lock the
//!   operator out of new sessions until the oldest of them ages out, right
//!   code or not, so a million codes cannot be tried.
//! - A session is a random token the operator's wardctl keeps; the store
//!   keeps only its SHA-256, so a reader of the store cannot use it.
#![forbid(unsafe_code)]

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, TOTP};

/// Seconds a code stands for.
pub const STEP: u64 = 30;
/// Digits of a code.
pub const DIGITS: usize = 6;
/// Bytes of a secret: 160 bits, RFC 4226's recommendation for HMAC-SHA1.
pub const SECRET_BYTES: usize = 20;
/// Wrong codes that lock an operator out, within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// Seconds over which wrong codes count.
pub const FAILURE_WINDOW: u64 = 15 * 60;

/// Why a code was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a code is {DIGITS} digits")]
    Malformed,
    #[error("the code is wrong or expired")]
    Wrong,
    #[error("the code was already used; wait for the next one")]
    Replayed,
    #[error(
        "too many wrong codes ({MAX_FAILURES} within {} minutes): try again in {retry_in} s",
        FAILURE_WINDOW / 60
    )]
    Locked { retry_in: u64 },
    #[error("no second factor is enrolled: run `wardctl mfa enroll`")]
    NotEnrolled,
    #[error("no enrolment is waiting for its first code: run `wardctl mfa enroll`")]
    NothingPending,
}

/// One operator's second factor as the store keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolment {
    pub operator: String,
    /// The secret in force (base32); empty until the first enrolment is
    /// confirmed.
    #[serde(default)]
    pub secret: String,
    /// RFC 3339: when the secret in force was confirmed.
    #[serde(default)]
    pub enrolled: String,
    /// A secret shown but not yet confirmed by a code made from it.
    #[serde(default)]
    pub pending: String,
    /// The step of the last code accepted: none at or before it is again.
    #[serde(default)]
    pub last_step: u64,
    /// Unix seconds of the wrong codes within the window.
    #[serde(default)]
    pub failures: Vec<u64>,
}

impl Enrolment {
    /// Whether a secret is in force.
    pub fn enrolled(&self) -> bool {
        !self.secret.is_empty()
    }

    /// A fresh secret, kept as pending; returns it in base32.
    pub fn begin(&mut self) -> String {
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        let secret = totp(bytes.to_vec())
            .expect("a 160-bit secret is valid")
            .get_secret_base32();
        self.pending = secret.clone();
        secret
    }

    /// Checks `code` against the pending secret and puts it in force.
    pub fn confirm(&mut self, code: &str, now: u64, time: &str) -> Result<(), CodeError> {
        if self.pending.is_empty() {
            return Err(CodeError::NothingPending);
        }
        let pending = self.pending.clone();
        // A new secret's steps are its own: replay is judged from here on.
        let last = std::mem::take(&mut self.last_step);
        match self.check_with(&pending, code, now) {
            Ok(()) => {
                self.secret = pending;
                self.pending.clear();
                self.enrolled = time.to_owned();
                Ok(())
            }
            Err(e) => {
                self.last_step = last;
                Err(e)
            }
        }
    }

    /// Checks `code` against the secret in force, at unix time `now`;
    /// the record is changed either way (the step used, or the failure)
    /// and must be written back.
    pub fn check(&mut self, code: &str, now: u64) -> Result<(), CodeError> {
        if !self.enrolled() {
            return Err(CodeError::NotEnrolled);
        }
        let secret = self.secret.clone();
        self.check_with(&secret, code, now)
    }

    fn check_with(&mut self, secret: &str, code: &str, now: u64) -> Result<(), CodeError> {
        self.failures
            .retain(|t| *t + FAILURE_WINDOW > now && *t <= now);
        if self.failures.len() >= MAX_FAILURES {
            let oldest = self.failures.iter().min().copied().unwrap_or(now);
            return Err(CodeError::Locked {
                retry_in: (oldest + FAILURE_WINDOW).saturating_sub(now),
            });
        }
        let result = matching_step(secret, code, now).and_then(|step| {
            if step <= self.last_step {
                Err(CodeError::Replayed)
            } else {
                Ok(step)
            }
        });
        match result {
            Ok(step) => {
                self.last_step = step;
                self.failures.clear();
                Ok(())
            }
            Err(e) => {
                self.failures.push(now);
                Err(e)
            }
        }
    }
}

fn totp(secret: Vec<u8>) -> Option<TOTP> {
    TOTP::new(Algorithm::SHA1, DIGITS, 1, STEP, secret).ok()
}

fn decode(secret: &str) -> Option<TOTP> {
    totp(
        totp_rs::Secret::Encoded(secret.to_owned())
            .to_bytes()
            .ok()?,
    )
}

/// The step within one either side of `now` whose code is `code`.
fn matching_step(secret: &str, code: &str, now: u64) -> Result<u64, CodeError> {
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CodeError::Malformed);
    }
    let totp = decode(secret).ok_or(CodeError::NotEnrolled)?;
    let current = now / STEP;
    // Every candidate is compared, so the time taken tells nothing.
    let mut found = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = totp.generate(step * STEP);
        if constant_time_eq(expected.as_bytes(), code.as_bytes()) && found.is_none() {
            found = Some(step);
        }
    }
    found.ok_or(CodeError::Wrong)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The code of `secret` (base32) at unix time `now`: what an
/// authenticator app shows.
pub fn code_at(secret: &str, now: u64) -> Option<String> {
    Some(decode(secret)?.generate(now))
}

/// The `otpauth://` URI an authenticator app reads from the QR code.
pub fn otpauth_uri(site: &str, operator: &str, secret: &str) -> String {
    let label = format!("{}:{}", escape(site), escape(operator));
    format!(
        "otpauth://totp/{label}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP}",
        escape(site)
    )
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A session as the store keeps it: whose, bound to which certificate,
/// until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub operator: String,
    /// SHA-256 (hex) of the certificate that opened it: only a call with
    /// that certificate may use it.
    pub fingerprint: String,
    /// Unix seconds.
    pub opened: u64,
    pub expires: u64,
}

/// A new session token (for the operator) and its SHA-256 (the store's key).
pub fn new_token() -> (String, String) {
    let token = hex::encode(rand::random::<[u8; 32]>());
    let hash = token_hash(&token);
    (token, hash)
}

/// The SHA-256 (hex) a token is kept by.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests;
