//! Renewal of agent certificates over the agent API, and the warnings of
//! certificates nearing their expiry.
//!
//! A replica started with the site CA's key renews agent certificates:
//! `Renew` signs a certificate for the caller's own name, as an agent, for
//! the key the request proves it holds, valid for the site's lifetime
//! (`wardline_pki::renew`). Each renewal is recorded with the certificate
//! it was authenticated with, so that revoking a certificate revokes every
//! certificate renewed from it ([`Registry::renewed_from`]): a key stolen
//! before its revocation cannot live on in renewals. A certificate longer
//! lived than the site's lifetime (one an operator issued to start the
//! agent with) is retired, revoked, once the agent has connected with its
//! renewal: the start-up key on disk is then worth nothing to a thief.

use std::time::Duration;

use time::OffsetDateTime;
use tonic::Status;
use wardline_pki::renew::{AgentRenewer, Renewed};
use wardline_proto::convert::format_time;
use wardline_tls::expiry;
use wardline_tls::revocation::{CertificateFacts, serial_hex};

use crate::registry::{IssuedRecord, Registry, RevocationRecord};

/// How much longer than the site's lifetime a certificate may live and
/// still count as one of the site's renewals (clock skew, rounding).
const LIFETIME_SLACK: u64 = 10 * 60;

/// What a replica renews agents' certificates with.
#[derive(Debug)]
pub struct Renewal {
    pub renewer: AgentRenewer,
    /// The lifetime of a renewed certificate.
    pub lifetime: Duration,
}

impl Renewal {
    /// Whether a certificate lives longer than the site's renewals do.
    pub fn is_long_lived(&self, facts: &CertificateFacts) -> bool {
        facts.not_after.saturating_sub(facts.not_before) > self.lifetime.as_secs() + LIFETIME_SLACK
    }

    /// Signs a certificate for `node`'s new key (off the runtime's
    /// threads). A request that cannot be honoured is `invalid_argument`
    /// naming why.
    pub async fn sign(
        renewal: std::sync::Arc<Renewal>,
        node: String,
        csr: Vec<u8>,
    ) -> Result<Renewed, Status> {
        tokio::task::spawn_blocking(move || {
            renewal
                .renewer
                .renew(&node, &csr, renewal.lifetime)
                .map_err(|e| match e {
                    wardline_pki::PkiError::BadRequest { .. } => {
                        Status::invalid_argument(format!("csr: {e}"))
                    }
                    other => Status::internal(other.to_string()),
                })
        })
        .await
        .map_err(|e| Status::internal(format!("signing: {e}")))?
    }
}

/// The record of a renewal of `node`'s certificate `from`.
pub fn issued_record(
    node: &str,
    from: &CertificateFacts,
    long_lived: bool,
    renewed: &Renewed,
    replica: &str,
) -> IssuedRecord {
    IssuedRecord {
        serial: serial_hex(&renewed.serial),
        node: node.to_owned(),
        renewed_from: serial_hex(&from.serial),
        from_long_lived: long_lived,
        not_before: format_time(renewed.not_before),
        not_after: format_time(renewed.not_after),
        time: format_time(OffsetDateTime::now_utc()),
        replica: replica.to_owned(),
    }
}

/// Revocations of every certificate renewed from `serial` (hex), for a
/// revocation of it by `author` for `reason`.
pub async fn cascade(
    registry: &Registry,
    serial: &str,
    author: &str,
    reason: &str,
) -> Result<Vec<RevocationRecord>, crate::registry::RegistryError> {
    let now = format_time(OffsetDateTime::now_utc());
    Ok(registry
        .renewed_from(serial)
        .await?
        .into_iter()
        .map(|child| RevocationRecord {
            serial: child.serial,
            role: String::new(),
            name: String::new(),
            issued_until: String::new(),
            author: author.to_owned(),
            time: now.clone(),
            reason: format!("renewed from revoked {} ({reason})", child.renewed_from),
        })
        .collect())
}

/// A certificate's warning, from RFC 3339 validity times; empty when none
/// is due or the times are unknown.
pub fn warning(not_before: &str, not_after: &str) -> String {
    let parse = |t: &str| {
        OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .ok()
            .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
    };
    match (parse(not_before), parse(not_after)) {
        (Some(from), Some(until)) => {
            expiry::warning(from, until, expiry::now()).unwrap_or_default()
        }
        _ => String::new(),
    }
}
