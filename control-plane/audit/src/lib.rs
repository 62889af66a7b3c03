//! The audit trail (`docs/governance.md`, "Audit trail"): every action on
//! the control plane (a call allowed, refused or failed; a sign-in; a
//! change) as one record of an append-only log.
//!
//! Each record carries its number, the SHA-256 of the record before it
//! (`previous_sha256`; empty for the first), its own SHA-256 over the rest
//! of its content (the canonical JSON of the record with the hash and the
//! seal empty), and the seal of the replica that wrote it over that hash,
//! made with the replica's site certificate. Whoever edits a stored record
//! breaks its hash; whoever recomputes the hash cannot seal it without a
//! replica's key; whoever deletes or reorders records breaks a number or
//! a link. [`verify`] checks all of it with nothing but the site CA, so
//! `wardctl audit verify` checks the trail on the operator's machine, not
//! by the replica's word.
#![forbid(unsafe_code)]

use rustls::pki_types::UnixTime;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use wardline_signing::{Seal, Signer, Verifier};

/// How an action ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done as asked.
    Done,
    /// Refused: who may not, or who could not prove who they are.
    Refused,
    /// Allowed, but it failed (a bad policy, a stale revision).
    Failed,
}

impl Outcome {
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// One action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1 for the first record, each next one more.
    pub seq: u64,
    /// RFC 3339, UTC, when the replica wrote it.
    pub time: String,
    /// The replica that wrote it (and sealed it).
    pub replica: String,
    /// Who: `operator:NAME` (the name in the certificate), `agent:NODE`.
    pub actor: String,
    /// SHA-256 (hex) of the exact certificate the actor called with.
    pub fingerprint: String,
    /// The address the call came from.
    pub peer: String,
    /// What was asked: the call (`apply`, `observe`, `dashboard-sign-in`).
    pub action: String,
    /// What it was about (`revision 12`, `RoleBinding/site-admins`, a node).
    pub target: String,
    pub outcome: Outcome,
    /// Why refused or failed, or what came of it.
    pub detail: String,
    /// The policy revision in force on the replica then.
    pub revision: u64,
    pub previous_sha256: String,
    pub record_sha256: String,
    pub seal: Option<RecordSeal>,
}

/// A replica's seal over a record's hash, as records keep it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSeal {
    /// The TLS `SignatureScheme` code.
    pub scheme: u16,
    /// Hex.
    pub signature: String,
    /// The signing replica's certificate, DER in hex.
    pub signer: String,
}

impl RecordSeal {
    /// `signer`'s seal over `hash`.
    pub fn make(hash: &str, signer: &Signer) -> Result<RecordSeal, String> {
        let seal = signer.sign(hash.as_bytes()).map_err(|e| e.to_string())?;
        Ok(RecordSeal {
            scheme: seal.scheme,
            signature: hex::encode(&seal.signature),
            signer: hex::encode(&seal.signer),
        })
    }

    /// Checks that a replica of the site CA `verifier` trusts sealed
    /// `hash`, with a certificate valid at `time` (RFC 3339).
    pub fn check(&self, hash: &str, time: &str, verifier: &Verifier) -> Result<(), String> {
        let seal = Seal {
            scheme: self.scheme,
            signature: hex::decode(&self.signature)
                .map_err(|_| "the signature is not hex".to_owned())?,
            signer: hex::decode(&self.signer).map_err(|_| "the signer is not hex".to_owned())?,
        };
        let at = OffsetDateTime::parse(time, &Rfc3339)
            .map_err(|e| format!("its time {time:?} is not RFC 3339: {e}"))?;
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(at.unix_timestamp()).unwrap_or(0),
        ));
        verifier
            .verify(hash.as_bytes(), &seal, at)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// The newest record of a trail: its number and hash (0 and empty before
/// the first).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub sha256: String,
}

impl AuditRecord {
    /// The hash of the record's content: everything but the hash and the
    /// seal.
    pub fn content_hash(&self) -> String {
        let mut content = self.clone();
        content.record_sha256.clear();
        content.seal = None;
        hex::encode(Sha256::digest(
            serde_json::to_vec(&content).unwrap_or_default(),
        ))
    }

    /// Numbers the record after `head`, links it to it, hashes it and
    /// seals it with `signer`; returns the new head.
    pub fn link(&mut self, head: &Head, signer: &Signer) -> Result<Head, String> {
        self.seq = head.seq + 1;
        self.previous_sha256 = head.sha256.clone();
        self.record_sha256 = self.content_hash();
        self.seal = Some(RecordSeal::make(&self.record_sha256, signer)?);
        Ok(Head {
            seq: self.seq,
            sha256: self.record_sha256.clone(),
        })
    }
}

/// Why a trail fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuditChainError {
    #[error("audit record {seq} is missing (the records go from {before} to {after})")]
    Missing { seq: u64, before: u64, after: u64 },
    #[error("audit record {seq} was altered: its content no longer matches its hash")]
    Altered { seq: u64 },
    #[error(
        "audit record {seq} does not follow record {}: the link to it was broken (a record edited, removed or reordered)",
        seq - 1
    )]
    Unlinked { seq: u64 },
    #[error("audit record {seq} carries no replica's seal")]
    Unsealed { seq: u64 },
    #[error("audit record {seq}'s seal is refused: {reason}")]
    BadSeal { seq: u64, reason: String },
    #[error(
        "the trail ends at record {ends}, before its head {head}: its newest records were removed"
    )]
    Truncated { ends: u64, head: u64 },
}

/// Checks `records` (in order) as the trail after `from`: numbers without
/// a gap, each linked to the one before, each hash its content's, each
/// sealed by a replica `verifier` trusts. Returns the newest record's head.
pub fn verify(
    records: &[AuditRecord],
    from: &Head,
    verifier: &Verifier,
) -> Result<Head, AuditChainError> {
    let mut head = from.clone();
    for r in records {
        let seq = r.seq;
        if seq != head.seq + 1 {
            return Err(AuditChainError::Missing {
                seq: head.seq + 1,
                before: head.seq,
                after: seq,
            });
        }
        if r.record_sha256 != r.content_hash() {
            return Err(AuditChainError::Altered { seq });
        }
        if r.previous_sha256 != head.sha256 {
            return Err(AuditChainError::Unlinked { seq });
        }
        let seal = r.seal.as_ref().ok_or(AuditChainError::Unsealed { seq })?;
        seal.check(&r.record_sha256, &r.time, verifier)
            .map_err(|reason| AuditChainError::BadSeal { seq, reason })?;
        head = Head {
            seq,
            sha256: r.record_sha256.clone(),
        };
    }
    Ok(head)
}

#[cfg(test)]
mod tests;
