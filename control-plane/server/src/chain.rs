//! The revision history as a hash chain, each link signed.
//!
//! Every revision record carries the SHA-256 of the record before it
//! (`previous_sha256`; empty for revision 1), its own SHA-256 over the rest
//! of its content (`record_sha256`: the canonical JSON of the record with
//! the hash and seal fields empty), and the seal of the replica that wrote
//! it over that hash, made with the replica's site certificate. Whoever
//! edits a stored record (its documents, author or message) breaks its own
//! hash; whoever also recomputes the hash cannot seal it without a replica
//! key; deleting or reordering a record breaks the next one's link. Every
//! replica checks the whole chain at start and refuses a store that fails,
//! checks each new current revision before it serves it, and
//! `wardctl history --verify` checks it on demand.
//!
//! What a chain cannot show by itself: the newest records removed together
//! with the current pointer moved back (truncation). A running replica
//! remembers the newest revision it has seen and refuses to go back; an
//! operator compares `history --verify`'s head hash with one kept
//! elsewhere (the audit export).

use sha2::{Digest, Sha256};
use wardline_signing::{Signer, Verifier};

use crate::registry::RevisionRecord;

/// A replica's seal over a record's hash (the audit trail's kind).
pub use wardline_audit::RecordSeal;

/// Why a record breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("revision {revision} is missing from the store")]
    Missing { revision: u64 },
    #[error("revision {revision} was altered: its content no longer matches its hash")]
    Altered { revision: u64 },
    #[error(
        "revision {revision} does not follow revision {}: the link to it was broken (a record edited, removed or reordered)",
        revision - 1
    )]
    Unlinked { revision: u64 },
    #[error("revision {revision} carries no replica's seal")]
    Unsealed { revision: u64 },
    #[error("revision {revision}'s seal is refused: {reason}")]
    BadSeal { revision: u64, reason: String },
    #[error(
        "the store's current revision {current} is older than revision {seen}, which this replica already served"
    )]
    WentBack { current: u64, seen: u64 },
}

/// The hash of `record`'s content: everything but the hash and the seal.
pub fn record_hash(record: &RevisionRecord) -> String {
    let mut content = record.clone();
    content.record_sha256.clear();
    content.seal = None;
    hex::encode(Sha256::digest(
        serde_json::to_vec(&content).unwrap_or_default(),
    ))
}

/// Links `record` to `previous` (revision 0 for the first), hashes it and
/// seals it with `signer`.
pub fn seal(
    record: &mut RevisionRecord,
    previous: &RevisionRecord,
    signer: &Signer,
) -> Result<(), String> {
    record.previous_sha256 = previous.record_sha256.clone();
    record.record_sha256 = record_hash(record);
    record.seal = Some(RecordSeal::make(&record.record_sha256, signer)?);
    Ok(())
}

/// Checks one record: its hash, its seal (the signer's certificate valid
/// when the record was written), and its link to `previous`.
pub fn check(
    record: &RevisionRecord,
    previous: &RevisionRecord,
    verifier: &Verifier,
) -> Result<(), ChainError> {
    let revision = record.revision;
    if record.record_sha256 != record_hash(record) {
        return Err(ChainError::Altered { revision });
    }
    if record.previous_sha256 != previous.record_sha256 || previous.revision + 1 != revision {
        return Err(ChainError::Unlinked { revision });
    }
    let sealed = record
        .seal
        .as_ref()
        .ok_or(ChainError::Unsealed { revision })?;
    sealed
        .check(&record.record_sha256, &record.time, verifier)
        .map_err(|reason| ChainError::BadSeal { revision, reason })?;
    Ok(())
}
