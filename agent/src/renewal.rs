//! The agent's certificate for the control plane, renewed before it
//! expires (`docs/agent.md`, "Certificate renewal").
//!
//! The configuration names the certificate an operator issued to start the
//! agent with. When the control plane renews agent certificates (its
//! `RegisterResponse` gives their lifetime), the agent renews halfway
//! through its certificate's lifetime, and at once when the certificate it
//! has lives longer than the site's renewals (the start-up certificate,
//! which the control plane then retires). Renewing makes a new P-256 key
//! that never leaves the host, sends a certificate signing request over
//! the existing mutual-TLS connection, checks the certificate that comes
//! back (issued by the site CA, for this node, as an agent, for this key)
//! and keeps both in `identity.pem` (0600) in the node's state directory,
//! written whole or not at all. The agent then reconnects with it.
//!
//! At start, and at every connection, the agent presents the renewed
//! certificate when it passes every check the TLS set-up makes and was
//! issued after the configured one; otherwise the configured one (an
//! operator who issues a new start-up certificate, say after revoking a
//! renewal, has it used at once). A renewal
//! that fails leaves the certificate in force as it is, is counted and
//! reported in `/status`, and is tried again a minute later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use wardline_tls::Role;
use wardline_tls::expiry;
use wardline_tls::revocation::{CertificateFacts, serial_hex};

use crate::config::ControlPlane;
use crate::status::CertificateState;

/// The renewed certificate and its key, in the node's state directory.
pub const IDENTITY_FILE: &str = "identity.pem";
/// How long after a failed renewal the next is tried.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The certificate the agent presents.
#[derive(Clone, Debug)]
pub struct Presented {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub facts: CertificateFacts,
    /// A renewal (in the state directory), not the configured files.
    pub renewed: bool,
}

impl Presented {
    /// Whether to renew now, with the site renewing certificates for
    /// `site_lifetime` seconds (0: it renews none).
    pub fn due(&self, site_lifetime: u64, now: u64) -> bool {
        if site_lifetime == 0 {
            return false;
        }
        let lifetime = self.facts.not_after.saturating_sub(self.facts.not_before);
        // Ten minutes of slack for the five minutes a renewal starts early.
        lifetime > site_lifetime + 600
            || now >= expiry::renew_at(self.facts.not_before, self.facts.not_after)
    }

    /// For `/status` and `/metrics`.
    pub fn state(&self, previous: Option<&CertificateState>) -> CertificateState {
        let (renewals, renewal_failures, renewal_error) = previous.map_or((0, 0, None), |p| {
            (p.renewals, p.renewal_failures, p.renewal_error.clone())
        });
        CertificateState {
            serial: serial_hex(&self.facts.serial),
            not_before_seconds: self.facts.not_before,
            not_after_seconds: self.facts.not_after,
            not_before: expiry::rfc3339(self.facts.not_before),
            not_after: expiry::rfc3339(self.facts.not_after),
            source: if self.renewed {
                "renewed"
            } else {
                "configured"
            },
            // Derived when shown (`CertificateState::warning_now`).
            warning: None,
            renewals,
            renewal_failures,
            renewal_error,
        }
    }
}

/// The certificate to present: the renewal in `dir` when it checks out and
/// is newer (valid from later) than the configured one, else the
/// configured one (checked when the channel is set up, which names a bad
/// file).
pub fn choose(cp: &ControlPlane, dir: &Path, node: &str) -> anyhow::Result<Presented> {
    let renewed = dir.join(IDENTITY_FILE);
    let configured = wardline_tls::check_client_files(&cp.ca_file, &cp.cert_file, &cp.key_file);
    let from_renewal = if renewed.exists() {
        match check_own(&cp.ca_file, &renewed, node) {
            Ok(facts) => Some(facts),
            Err(e) => {
                tracing::warn!(
                    "{}: {e:#}; presenting the configured certificate",
                    renewed.display()
                );
                None
            }
        }
    } else {
        None
    };
    let configured = configured.map(|facts| Presented {
        cert: cp.cert_file.clone(),
        key: cp.key_file.clone(),
        facts,
        renewed: false,
    });
    match (from_renewal, configured) {
        (Some(r), Ok(c)) if r.not_before <= c.facts.not_before => Ok(c),
        (Some(r), _) => Ok(Presented {
            cert: renewed.clone(),
            key: renewed,
            facts: r,
            renewed: true,
        }),
        (None, configured) => configured.context("spec.controlPlane.certFile"),
    }
}

/// Checks a certificate-and-key file as the TLS set-up will, and that the
/// certificate is this node's as an agent.
fn check_own(ca: &Path, file: &Path, node: &str) -> anyhow::Result<CertificateFacts> {
    let facts = wardline_tls::check_client_files(ca, file, file)?;
    match &facts.identity {
        Some(id) if id.role == Role::Agent && id.name == node => Ok(facts),
        Some(id) => anyhow::bail!("the certificate is for {id}, not agent {node:?}"),
        None => anyhow::bail!("the certificate carries no Wardline identity"),
    }
}

/// A new key and a certificate signing request for `node`, signed by it.
/// The request's subject is informative: the control plane takes the name
/// from the certificate the request comes with.
pub fn request(node: &str) -> anyhow::Result<(KeyPair, Vec<u8>)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating a key")?;
    let mut params = CertificateParams::new(vec![node.to_owned()]).context("request")?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, Role::Agent.as_str());
    let csr = params
        .serialize_request(&key)
        .context("signing the request")?;
    Ok((key, csr.der().to_vec()))
}

/// Checks the certificate the control plane returned for `key` and keeps
/// both in `dir` as [`IDENTITY_FILE`]: only a file that passes every check
/// replaces the one there.
pub fn keep(
    ca: &Path,
    dir: &Path,
    node: &str,
    certificate_pem: &str,
    key: &KeyPair,
) -> anyhow::Result<Presented> {
    let mut bytes = certificate_pem.trim_end().as_bytes().to_vec();
    bytes.push(b'\n');
    bytes.extend_from_slice(key.serialize_pem().as_bytes());
    let candidate = format!("{IDENTITY_FILE}.new");
    crate::managed::write_private(dir, &candidate, &bytes)
        .with_context(|| format!("writing {}", dir.join(&candidate).display()))?;
    let checked = check_own(ca, &dir.join(&candidate), node);
    let facts = match checked {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_file(dir.join(&candidate));
            return Err(e.context("the renewed certificate is refused"));
        }
    };
    std::fs::rename(dir.join(&candidate), dir.join(IDENTITY_FILE))
        .with_context(|| format!("keeping {}", dir.join(IDENTITY_FILE).display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    let path = dir.join(IDENTITY_FILE);
    Ok(Presented {
        cert: path.clone(),
        key: path,
        facts,
        renewed: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(not_before: u64, not_after: u64) -> Presented {
        Presented {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            facts: CertificateFacts {
                serial: vec![1],
                not_before,
                not_after,
                identity: None,
            },
            renewed: false,
        }
    }

    #[test]
    fn renewal_is_due_halfway_or_at_once_for_a_long_lived_certificate() {
        let day = 86_400;
        // A site renewing for a day: a day-long certificate at noon.
        assert!(!presented(0, day).due(day, day / 2 - 1));
        assert!(presented(0, day).due(day, day / 2));
        // A year-long start-up certificate: at once.
        assert!(presented(0, 365 * day).due(day, 1));
        // A site that renews nothing: never.
        assert!(!presented(0, day).due(0, day));
    }
}
