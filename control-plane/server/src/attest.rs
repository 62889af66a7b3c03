//! What each agent enforced, provably (`docs/governance.md`): agents sign
//! attestations (node, revision, the SHA-256 of the tables they
//! programmed into the kernel, time) with their own key each time they
//! apply a snapshot and periodically; the replica checks each against the
//! site CA and keeps it; `wardctl attest NODE --at TIME` gets the one in
//! force then and checks its signature again on the operator's side.

use prost::Message as _;
use rustls::pki_types::UnixTime;
use time::OffsetDateTime;
use tonic::{Request, Status};
use wardline_proto::v1;
use wardline_roles::Verb;
use wardline_signing::Seal;

use crate::server::{ControlPlane, fingerprint, store_unavailable};

/// Each attestation: `/wardline/attestations/<node>/<unix seconds, 20
/// digits>-<why>`.
pub const ATTESTATIONS_PREFIX: &str = "/wardline/attestations/";
/// Attestations kept per node; the oldest go first (an hourly one and one
/// per change keep well over a year).
const KEPT_PER_NODE: usize = 20_000;
/// How far an agent's clock may be from the replica's.
const CLOCK_SKEW: i64 = 300;

/// An attestation as the store keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    statement: String,
    scheme: u16,
    signature: String,
    signer: String,
}

impl Kept {
    fn wire(&self) -> Option<v1::Attestation> {
        Some(v1::Attestation {
            statement: hex::decode(&self.statement).ok()?,
            scheme: u32::from(self.scheme),
            signature: hex::decode(&self.signature).ok()?,
            signer: hex::decode(&self.signer).ok()?,
        })
    }
}

fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        t.unix_timestamp().max(0) as u64
    ))
}

/// A time as `wardctl attest --at` gives it: RFC 3339, a duration back
/// from now, or empty for now.
fn instant(text: &str, now: OffsetDateTime) -> Result<OffsetDateTime, Status> {
    if text.is_empty() {
        return Ok(now);
    }
    wardline_proto::convert::instant(text, now, wardline_proto::convert::Towards::Past)
        .map_err(|e| Status::invalid_argument(format!("at: {e}")))
}

impl ControlPlane {
    /// Checks an agent's attestation and keeps it.
    pub(crate) async fn keep_attestation(
        &self,
        req: Request<v1::Attestation>,
    ) -> Result<v1::AttestResponse, Status> {
        let a = req.get_ref();
        let statement = v1::AttestationStatement::decode(a.statement.as_slice())
            .map_err(|e| Status::invalid_argument(format!("the statement does not decode: {e}")))?;
        // The calling certificate speaks for this node only, and signed it.
        self.admitted_agent(&req, &statement.node)?;
        let signer_fingerprint = hex::encode(sha2::Digest::finalize(
            <sha2::Sha256 as sha2::Digest>::new_with_prefix(&a.signer),
        ));
        if signer_fingerprint != fingerprint(&req) {
            return Err(Status::permission_denied(
                "an attestation is signed with the certificate the agent calls with",
            ));
        }
        let time = OffsetDateTime::parse(
            &statement.time,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| Status::invalid_argument(format!("time: {:?}: {e}", statement.time)))?;
        let now = OffsetDateTime::now_utc();
        if (time - now).whole_seconds().abs() > CLOCK_SKEW {
            return Err(Status::invalid_argument(format!(
                "time: {} is more than {CLOCK_SKEW} s from the replica's clock ({}): fix the node's clock",
                statement.time,
                wardline_proto::convert::format_time(now)
            )));
        }
        if !matches!(statement.why.as_str(), "applied" | "periodic") {
            return Err(Status::invalid_argument(format!(
                "why: {:?} is neither applied nor periodic",
                statement.why
            )));
        }
        let seal = Seal {
            scheme: u16::try_from(a.scheme)
                .map_err(|_| Status::invalid_argument("scheme: not a TLS signature scheme"))?,
            signature: a.signature.clone(),
            signer: a.signer.clone(),
        };
        let signer = self
            .registry()
            .verifier()
            .verify_agent(&a.statement, &seal, unix_time(time))
            .map_err(|e| Status::permission_denied(format!("the attestation is refused: {e}")))?;
        if signer.name != statement.node {
            return Err(Status::permission_denied(format!(
                "the attestation of node {:?} is signed by {signer}",
                statement.node
            )));
        }
        let prefix = format!("{ATTESTATIONS_PREFIX}{}/", statement.node);
        let key = format!("{prefix}{:020}-{}", time.unix_timestamp(), statement.why);
        let kept = Kept {
            statement: hex::encode(&a.statement),
            scheme: seal.scheme,
            signature: hex::encode(&seal.signature),
            signer: hex::encode(&seal.signer),
        };
        let value = serde_json::to_vec(&kept).map_err(|e| Status::internal(e.to_string()))?;
        self.store()
            .put(&key, value)
            .await
            .map_err(store_unavailable)?;
        let all = self
            .store()
            .range(&prefix)
            .await
            .map_err(store_unavailable)?;
        for old in all.iter().take(all.len().saturating_sub(KEPT_PER_NODE)) {
            let _ = self.store().delete(&old.key).await;
        }
        tracing::debug!(node = %statement.node, revision = statement.revision, why = %statement.why, "attestation kept");
        Ok(v1::AttestResponse {})
    }

    pub(crate) async fn attested_call(
        &self,
        req: Request<v1::AttestedRequest>,
    ) -> Result<v1::AttestedResponse, Status> {
        self.allowed(&req, Verb::ReadStatus)?;
        let r = req.get_ref();
        r.node
            .parse::<wardline_policy::NodeName>()
            .map_err(|e| Status::invalid_argument(format!("node: {e}")))?;
        let at = instant(&r.at, OffsetDateTime::now_utc())?;
        let prefix = format!("{ATTESTATIONS_PREFIX}{}/", r.node);
        let all = self
            .store()
            .range(&prefix)
            .await
            .map_err(store_unavailable)?;
        let cut = format!("{prefix}{:020}.", at.unix_timestamp());
        let read = |kv: &wardline_store::KeyValue| {
            serde_json::from_slice::<Kept>(&kv.value)
                .ok()
                .and_then(|k| k.wire())
        };
        let before = all.iter().rev().find(|kv| kv.key < cut);
        let next = all.iter().find(|kv| kv.key >= cut);
        let Some(before) = before else {
            return Err(Status::not_found(format!(
                "node {:?} has no attestation at or before {}{}",
                r.node,
                wardline_proto::convert::format_time(at),
                if all.is_empty() {
                    " (none at all)".to_owned()
                } else {
                    format!(" ({} kept, from a later time)", all.len())
                }
            )));
        };
        Ok(v1::AttestedResponse {
            attestation: read(before),
            next: next.and_then(read),
            kept: all.len() as u64,
        })
    }
}
