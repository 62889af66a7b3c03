//! Signed payloads between the control plane and its agents.
//!
//! A control-plane replica signs every policy snapshot it sends with the
//! private key of its own site certificate (the one it serves TLS with). An
//! agent keeps the signed bytes, and every time it reads them, from the
//! channel or from its disk after a restart, it checks them with
//! [`Verifier::verify`]: the signer's certificate was issued by the site CA,
//! is a control-plane certificate for server authentication, was valid at
//! the time given, and its key made the signature over exactly these bytes.
//! A file edited on disk, or bytes from anyone else (an agent's stolen key,
//! a certificate of another CA), are refused.
//!
//! The signature scheme is TLS's (`SignatureScheme`), chosen by the key:
//! ECDSA P-256 with SHA-256 for the keys the site PKI issues.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::SignatureScheme;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use rustls::sign::SigningKey;
use wardline_tls::{Identity, Role, identity_of};

/// The schemes a signer may use, in order of preference.
const SCHEMES: [SignatureScheme; 4] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA256,
];

/// A signature and who made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seal {
    /// The TLS `SignatureScheme` code of `signature`.
    pub scheme: u16,
    pub signature: Vec<u8>,
    /// The signer's certificate (DER).
    pub signer: Vec<u8>,
}

/// Why a signer could not be set up or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM {what}: {reason}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("the key in {path} cannot sign with any scheme agents accept")]
    NoScheme { path: PathBuf },
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why signed bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the signer's certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("the signer's certificate was not issued by the site CA or was not valid then: {0}")]
    Untrusted(String),
    #[error("the signer is {0}, not a control-plane replica")]
    NotControlPlane(Identity),
    #[error("the signer is {0}, not an agent")]
    NotAgent(Identity),
    #[error("signature scheme {0:#06x} is not one agents accept")]
    UnknownScheme(u16),
    #[error("the signature does not match the signed bytes (altered, or signed by another key)")]
    BadSignature,
}

/// A replica's signing key and certificate. Clones share them, so that
/// [`Signer::replace`] (the replica's certificate renewed) changes what
/// every clone signs with.
#[derive(Clone)]
pub struct Signer {
    current: Arc<RwLock<Arc<SigningPair>>>,
}

/// One key and the certificate that names it.
struct SigningPair {
    key: Arc<dyn SigningKey>,
    scheme: SignatureScheme,
    cert: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("scheme", &self.pair().scheme)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, SignError> {
    std::fs::read(path).map_err(|source| SignError::Read {
        path: path.to_owned(),
        source,
    })
}

impl Signer {
    /// The certificate in `cert` (its first, the leaf) and the private key
    /// in `key`, both PEM: a replica's serving certificate and key, which
    /// the TLS set-up has already checked belong together.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Signer, SignError> {
        let cert_pem = read(cert)?;
        let leaf = CertificateDer::pem_slice_iter(&cert_pem)
            .next()
            .ok_or_else(|| SignError::Pem {
                path: cert.to_owned(),
                what: "certificate",
                reason: "no certificate found".to_owned(),
            })?
            .map_err(|e| SignError::Pem {
                path: cert.to_owned(),
                what: "certificate",
                reason: e.to_string(),
            })?;
        let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| SignError::Pem {
            path: key.to_owned(),
            what: "private key",
            reason: e.to_string(),
        })?;
        let provider: CryptoProvider = rustls::crypto::ring::default_provider();
        let key_obj = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| SignError::Pem {
                path: key.to_owned(),
                what: "private key",
                reason: e.to_string(),
            })?;
        let signer = key_obj
            .choose_scheme(&SCHEMES)
            .ok_or_else(|| SignError::NoScheme {
                path: key.to_owned(),
            })?;
        Ok(Signer {
            current: Arc::new(RwLock::new(Arc::new(SigningPair {
                scheme: signer.scheme(),
                key: key_obj,
                cert: leaf.to_vec(),
            }))),
        })
    }

    /// Signs from now on, in this signer and every clone of it, with
    /// `other`'s key and certificate.
    pub fn replace(&self, other: &Signer) {
        let pair = other.pair();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = pair;
    }

    fn pair(&self) -> Arc<SigningPair> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Signs `payload`.
    pub fn sign(&self, payload: &[u8]) -> Result<Seal, SignError> {
        let pair = self.pair();
        let signer = pair
            .key
            .choose_scheme(&[pair.scheme])
            .ok_or_else(|| SignError::Sign(format!("scheme {:?} unavailable", pair.scheme)))?;
        let signature = signer
            .sign(payload)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        Ok(Seal {
            scheme: u16::from(pair.scheme),
            signature,
            signer: pair.cert.clone(),
        })
    }
}

/// Checks seals against the site CA.
#[derive(Clone, Debug)]
pub struct Verifier {
    anchors: Vec<TrustAnchor<'static>>,
}

impl Verifier {
    /// The site CA's certificates in PEM file `ca`.
    pub fn from_ca_file(ca: &Path) -> Result<Verifier, SignError> {
        let pem = read(ca)?;
        let mut anchors = Vec::new();
        for der in CertificateDer::pem_slice_iter(&pem) {
            let der = der.map_err(|e| SignError::Pem {
                path: ca.to_owned(),
                what: "CA certificate",
                reason: e.to_string(),
            })?;
            let anchor = webpki::anchor_from_trusted_cert(&der).map_err(|e| SignError::Pem {
                path: ca.to_owned(),
                what: "CA certificate",
                reason: e.to_string(),
            })?;
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(SignError::Pem {
                path: ca.to_owned(),
                what: "CA certificate",
                reason: "no certificate found".to_owned(),
            });
        }
        Ok(Verifier { anchors })
    }

    /// Checks that `seal` is a control-plane replica's signature over
    /// `payload`, with its certificate valid at `at`. Returns the signer.
    pub fn verify(
        &self,
        payload: &[u8],
        seal: &Seal,
        at: UnixTime,
    ) -> Result<Identity, VerifyError> {
        self.verify_as(payload, seal, at, Role::ControlPlane)
    }

    /// Checks that `seal` is an agent's signature over `payload` (an
    /// attestation of what it enforces), with its certificate valid at
    /// `at`. Returns the signer: its name is the node.
    pub fn verify_agent(
        &self,
        payload: &[u8],
        seal: &Seal,
        at: UnixTime,
    ) -> Result<Identity, VerifyError> {
        self.verify_as(payload, seal, at, Role::Agent)
    }

    fn verify_as(
        &self,
        payload: &[u8],
        seal: &Seal,
        at: UnixTime,
        role: Role,
    ) -> Result<Identity, VerifyError> {
        let provider = rustls::crypto::ring::default_provider();
        let algorithms = provider.signature_verification_algorithms;
        let der = CertificateDer::from(seal.signer.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| VerifyError::BadCertificate(format!("{e:?}")))?;
        let usage = if role == Role::Agent {
            webpki::KeyUsage::client_auth()
        } else {
            webpki::KeyUsage::server_auth()
        };
        cert.verify_for_usage(algorithms.all, &self.anchors, &[], at, usage, None, None)
            .map_err(|e| VerifyError::Untrusted(format!("{e:?}")))?;
        let identity =
            identity_of(&seal.signer).map_err(|e| VerifyError::BadCertificate(e.to_string()))?;
        if identity.role != role {
            return Err(if role == Role::Agent {
                VerifyError::NotAgent(identity)
            } else {
                VerifyError::NotControlPlane(identity)
            });
        }
        let scheme = SignatureScheme::from(seal.scheme);
        let candidates = algorithms
            .mapping
            .iter()
            .find(|(s, _)| *s == scheme)
            .map(|(_, algs)| *algs)
            .ok_or(VerifyError::UnknownScheme(seal.scheme))?;
        if candidates.iter().any(|alg| {
            cert.verify_signature(*alg, payload, &seal.signature)
                .is_ok()
        }) {
            Ok(identity)
        } else {
            Err(VerifyError::BadSignature)
        }
    }
}
