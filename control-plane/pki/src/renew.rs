//! Renewal of agent certificates over the control plane's channel.
//!
//! Agent certificates can be short-lived: before one expires the agent
//! makes a new key, sends a certificate signing request (PKCS #10) on its
//! mutually authenticated connection, and the replica signs a new
//! certificate with the site CA. The request proves the agent holds the new
//! key (its signature is checked) and contributes nothing else: the name,
//! role, site, usages and validity come from the certificate the agent
//! authenticated with and from the replica's settings, never from the
//! request, so that a stolen agent key can renew only itself, as an agent.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{CertificateSigningRequestParams, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::CertificateSigningRequestDer;
use time::OffsetDateTime;
use wardline_policy::NodeName;
use wardline_tls::Role;

use crate::{CLOCK_SKEW, PkiError, SiteCa, leaf_params, to_offset};

/// The largest certificate signing request accepted. A P-256 request with
/// a short subject is about 300 bytes.
pub const MAX_REQUEST_BYTES: usize = 4096;

/// The site CA on a replica, signing renewed agent certificates.
pub struct AgentRenewer {
    ca: SiteCa,
}

impl std::fmt::Debug for AgentRenewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRenewer")
            .field("ca", &self.ca.cert_path)
            .field("site", &self.ca.site)
            .finish_non_exhaustive()
    }
}

/// A renewed certificate.
#[derive(Clone, Debug)]
pub struct Renewed {
    /// The certificate, PEM.
    pub pem: String,
    /// Its serial number, big-endian.
    pub serial: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl AgentRenewer {
    /// Loads the site CA's certificate and key (the CA's own checks:
    /// a CA certificate, the key its own), refusing a key file others
    /// may read: on a replica it is online.
    pub fn load(ca_cert: &Path, ca_key: &Path) -> Result<Self, PkiError> {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(ca_key)
            .map_err(|source| PkiError::Read {
                path: ca_key.to_owned(),
                source,
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(PkiError::KeyReadable {
                path: ca_key.to_owned(),
                mode,
            });
        }
        Ok(Self {
            ca: SiteCa::load_files(ca_cert, ca_key)?,
        })
    }

    /// Signs a new agent certificate for `node` valid for `lifetime` from
    /// now (from five minutes back, for clocks a little behind), for the
    /// P-256 key that signed `request`; cut short to the CA's own expiry.
    ///
    /// `node` must be the name the caller authenticated as; whatever names,
    /// usages or extensions the request asks for are ignored.
    pub fn renew(
        &self,
        node: &str,
        request: &[u8],
        lifetime: Duration,
    ) -> Result<Renewed, PkiError> {
        let refused = |reason: String| PkiError::BadRequest { reason };
        if request.len() > MAX_REQUEST_BYTES {
            return Err(refused(format!(
                "{} bytes, more than the {MAX_REQUEST_BYTES} a request may have",
                request.len()
            )));
        }
        node.parse::<NodeName>()
            .map_err(|e| PkiError::InvalidName {
                role: Role::Agent,
                name: node.to_owned(),
                reason: e.problem.to_string(),
            })?;
        // Parses the request and checks its signature: proof that the
        // caller holds the new key.
        let parsed =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(request))
                .map_err(|e| refused(format!("not a signed PKCS #10 request: {e}")))?;
        if parsed.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(refused(
                "the key must be ECDSA P-256, as every key of the site".to_owned(),
            ));
        }
        let now = SystemTime::now();
        let not_before = to_offset(now.checked_sub(CLOCK_SKEW).unwrap_or(now))?;
        let not_after =
            to_offset(
                now.checked_add(lifetime)
                    .ok_or_else(|| PkiError::InvalidValidity {
                        reason: format!("{lifetime:?} from now is out of range"),
                    })?,
            )?
            .min(self.ca.not_after);
        if not_after <= OffsetDateTime::now_utc() {
            return Err(PkiError::InvalidValidity {
                reason: "the site CA has expired".to_owned(),
            });
        }
        let san = SanType::DnsName(
            node.try_into()
                .map_err(|e: rcgen::Error| refused(e.to_string()))?,
        );
        let params = leaf_params(
            Role::Agent,
            node,
            vec![san],
            &self.ca.site,
            not_before,
            not_after,
        );
        let serial = params
            .serial_number
            .as_ref()
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default();
        let cert = params
            .signed_by(&parsed.public_key, &self.ca.issuer)
            .map_err(|source| PkiError::Crypto {
                what: "sign the renewed certificate",
                source,
            })?;
        Ok(Renewed {
            pem: cert.pem(),
            serial,
            not_before,
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::parse_x509_certificate;

    use super::*;
    use crate::testing::Site;

    fn renewer(site: &Site) -> AgentRenewer {
        let ca = site.ca_dir();
        AgentRenewer::load(&ca.join(crate::CA_CERT_FILE), &ca.join(crate::CA_KEY_FILE))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A request whose subject, names and usages ask for far more than
    /// an agent may have.
    fn greedy_request(key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["cp.example.org".to_owned()])
            .unwrap_or_else(|e| panic!("{e}"));
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "cp");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, "control-plane");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params
            .serialize_request(key)
            .unwrap_or_else(|e| panic!("{e}"))
            .der()
            .to_vec()
    }

    #[test]
    fn a_renewed_certificate_is_the_callers_own_whatever_the_request_asks() {
        let site = Site::new("renew");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap_or_else(|e| panic!("{e}"));
        let renewed = renewer(&site)
            .renew("node-1", &greedy_request(&key), Duration::from_secs(3600))
            .unwrap_or_else(|e| panic!("{e}"));
        let der = rustls::pki_types::CertificateDer::from_pem_slice(renewed.pem.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let id = wardline_tls::identity_of(&der).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((id.role, id.name.as_str()), (Role::Agent, "node-1"));
        let (_, cert) = parse_x509_certificate(&der).unwrap_or_else(|e| panic!("{e}"));
        assert!(!cert.is_ca(), "a request asked for a CA and got one");
        let eku = cert
            .extended_key_usage()
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no EKU"));
        assert!(eku.value.client_auth && !eku.value.server_auth);
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| {
                s.value
                    .general_names
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(sans, ["DNSName(node-1)"]);
        // The key is the requester's, the lifetime the replica's.
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        let lifetime = renewed.not_after - OffsetDateTime::now_utc();
        assert!(
            lifetime <= time::Duration::hours(1) && lifetime > time::Duration::minutes(59),
            "{lifetime}"
        );
        assert_eq!(cert.serial.to_bytes_be(), renewed.serial);
    }

    #[test]
    fn a_request_not_signed_by_its_key_or_not_p256_is_refused() {
        let site = Site::new("renew-bad");
        let renewer = renewer(&site);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap_or_else(|e| panic!("{e}"));
        let mut request = greedy_request(&key);
        // The last byte is in the signature.
        let last = request.len() - 1;
        request[last] ^= 1;
        let err = renewer
            .renew("node-1", &request, Duration::from_secs(60))
            .err()
            .unwrap_or_else(|| panic!("a forged request was signed"));
        assert!(
            err.to_string().contains("not a signed PKCS #10 request"),
            "{err}"
        );
        let err = renewer
            .renew("node-1", b"not DER at all", Duration::from_secs(60))
            .err()
            .unwrap_or_else(|| panic!("garbage was signed"));
        assert!(
            err.to_string()
                .contains("certificate signing request refused"),
            "{err}"
        );
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap_or_else(|e| panic!("{e}"));
        let err = renewer
            .renew("node-1", &greedy_request(&ed), Duration::from_secs(60))
            .err()
            .unwrap_or_else(|| panic!("an Ed25519 key was certified"));
        assert!(err.to_string().contains("ECDSA P-256"), "{err}");
        let err = renewer
            .renew(
                "node-1",
                &vec![0u8; MAX_REQUEST_BYTES + 1],
                Duration::from_secs(60),
            )
            .err()
            .unwrap_or_else(|| panic!("an oversized request was read"));
        assert!(err.to_string().contains("bytes"), "{err}");
    }

    #[test]
    fn a_ca_key_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let site = Site::new("renew-mode");
        let key = site.ca_dir().join(crate::CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = AgentRenewer::load(&site.ca_dir().join(crate::CA_CERT_FILE), &key)
            .expect_err("a group-readable CA key was loaded");
        assert!(err.to_string().contains("mode 0640"), "{err}");
    }

    #[test]
    fn a_renewal_never_outlives_the_ca() {
        let site = Site::new("renew-ca");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap_or_else(|e| panic!("{e}"));
        let renewed = renewer(&site)
            .renew(
                "node-1",
                &greedy_request(&key),
                Duration::from_secs(100 * 365 * 24 * 3600),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(renewed.not_after - OffsetDateTime::now_utc() < time::Duration::days(3651));
    }
}
