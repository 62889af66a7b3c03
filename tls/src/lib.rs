//! Mutual TLS for Wardline's gRPC channel, on both sides: the control
//! plane serving, agents and `wardctl` dialling it.
//!
//! There is no plaintext mode: the server always requires a client
//! certificate signed by the site CA, and clients always verify the server
//! against the site CA. [`server_tls`] and [`client_tls`] read and check the
//! PEM files up front (readable, PEM, key matching certificate, and, with
//! `rustls-webpki` as the handshake will check them: certificate issued by
//! the CA, inside its validity window, its extended key usage allowing
//! server or client authentication) so that a bad file is reported by name
//! at start-up rather than as a failed handshake later.
//!
//! Clients dial a [`ServerAddress`] (`https://host:port`, verified by its
//! host) through [`client_endpoint`], with one [`CONNECT_TIMEOUT`]; both
//! sides hold gRPC messages to one [`MAX_MESSAGE_BYTES`].
//!
//! On the server, [`peer_identity`] reads who the caller is from its
//! verified certificate ([`identity`]), and [`require`] / [`authorize`]
//! refuse callers without the role a method needs.
//!
//! The control plane is also a TLS client of its etcd cluster:
//! [`etcd_client_tls`] checks the etcd CA and the control plane's etcd
//! client certificate the same way, except that those come from the etcd
//! CA and carry no Wardline identity.
//!
//! This crate is what the agent and the control plane share besides the
//! wire protocol, so it depends on neither of them, nor on the site PKI
//! that issues certificates: it only reads and checks them.
#![forbid(unsafe_code)]

pub mod address;
pub mod expiry;
pub mod identity;
pub mod revocation;
mod serve;

pub use address::{AddressError, ServerAddress};
pub use identity::{Identity, IdentityError, Role, identity_of};
pub use revocation::{RevocationList, Revoked};
pub use serve::{ServingCert, browser_config, incoming, incoming_reporting, server_config};

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, ServerTlsConfig};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for its TCP connection to the control plane.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest gRPC message either side sends or accepts (a large policy
/// source or snapshot), on every client and server of the channel.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Errors setting up TLS. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file holds no PEM certificate, or malformed PEM.
    #[error("{path} is not a PEM certificate file: {reason}")]
    NotCertificatePem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A file holds no PEM private key, or malformed PEM.
    #[error("{path} is not a PEM private key file: {reason}")]
    NotKeyPem {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A private key is of a kind TLS cannot use.
    #[error("the private key in {path} cannot be used: {reason}")]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A certificate cannot be parsed.
    #[error("cannot parse the certificate in {path}: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("the private key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The CA file holds a certificate that is not a CA.
    #[error("{path} is not a CA certificate")]
    NotCa {
        /// The CA file.
        path: PathBuf,
    },
    /// The certificate was not signed by the CA it is checked against (the
    /// site CA, or etcd's).
    #[error("the certificate in {cert} was not issued by the CA in {ca}")]
    NotIssuedByCa {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
    },
    /// The certificate has expired.
    #[error("the certificate in {path} expired at {not_after}")]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// When it expired.
        not_after: String,
    },
    /// The certificate is not valid yet.
    #[error("the certificate in {path} is not valid before {not_before}")]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// When it becomes valid.
        not_before: String,
    },
    /// The certificate's extended key usage does not allow what it is
    /// presented for.
    #[error(
        "the certificate in {path} is not for {usage}: its extended key usage does not allow it"
    )]
    WrongUsage {
        /// The certificate file.
        path: PathBuf,
        /// What it was to be used for.
        usage: &'static str,
    },
    /// The certificate's key usage does not allow the signatures TLS makes.
    #[error(
        "the certificate in {path} does not allow digital signatures (key usage), which TLS needs"
    )]
    NoDigitalSignature {
        /// The certificate file.
        path: PathBuf,
    },
    /// The certificate fails another check of its chain to its CA.
    #[error("the certificate in {path} is refused: {reason}")]
    Refused {
        /// The certificate file.
        path: PathBuf,
        /// The check that failed.
        reason: String,
    },
    /// The certificate carries no Wardline identity.
    #[error("the certificate in {path} carries no Wardline identity: {source}")]
    NoIdentity {
        /// The certificate file.
        path: PathBuf,
        /// Why its identity cannot be read.
        source: IdentityError,
    },
    /// A server certificate belongs to a role other than the control plane.
    #[error(
        "the certificate in {path} is for {identity}, but serving needs a control-plane certificate"
    )]
    NotServerCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Who the certificate is for.
        identity: Identity,
    },
    /// The channel to the control plane cannot take the TLS settings.
    #[error("cannot set up the channel to {address}: {reason}")]
    Channel {
        /// The control-plane address.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// The domain name to verify the server by is not a valid name.
    #[error("invalid server domain name {domain:?}: {reason}")]
    InvalidDomain {
        /// The value given.
        domain: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// TLS settings for a control-plane gRPC server: serves the certificate
/// `cert` with key `key`, and requires every client to present a
/// certificate signed by the CA in `ca`.
///
/// `cert` must be a control-plane certificate issued by that CA, valid
/// now and for server authentication.
///
/// Also installs `ring` as the process's TLS crypto provider if none is
/// installed yet, the one tonic's server uses.
pub fn server_tls(ca: &Path, cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsError> {
    let material = Material::load(ca, cert, key, Usage::Server, Identified::Wardline)?;
    // Fails only when a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            material.cert_pem,
            material.key_pem,
        ))
        .client_ca_root(Certificate::from_pem(material.ca_pem))
        .client_auth_optional(false)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// TLS settings for a client of the control plane: presents the
/// certificate `cert` with key `key`, and accepts only a server whose
/// certificate is signed by the CA in `ca` and valid for `domain` (a host
/// name or IP address among its subject alternative names).
///
/// `cert` must be issued by that CA, valid now and for client
/// authentication.
pub fn client_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
    domain: &str,
) -> Result<ClientTlsConfig, TlsError> {
    ServerName::try_from(domain).map_err(|err| TlsError::InvalidDomain {
        domain: domain.to_owned(),
        reason: err.to_string(),
    })?;
    let material = Material::load(ca, cert, key, Usage::Client, Identified::Wardline)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(material.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            material.cert_pem,
            material.key_pem,
        ))
        .domain_name(domain)
        .timeout(HANDSHAKE_TIMEOUT))
}

/// Checks a client's certificate `cert` and key `key` as [`client_tls`]
/// does (they may be one file holding both), and returns what the
/// certificate says: for an agent choosing between its configured
/// certificate and a renewed one.
pub fn check_client_files(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<revocation::CertificateFacts, TlsError> {
    let material = Material::load(ca, cert, key, Usage::Client, Identified::Wardline)?;
    certificates(cert, &material.cert_pem)?
        .first()
        .and_then(|leaf| revocation::CertificateFacts::of(leaf))
        .ok_or_else(|| TlsError::BadCertificate {
            path: cert.to_owned(),
            reason: "no readable certificate".to_owned(),
        })
}

/// TLS settings for a client of etcd: presents the client certificate
/// `cert` with key `key`, and accepts only etcd members whose certificates
/// are signed by the CA in `ca`, each verified by the host of the endpoint
/// dialled (so one setting serves every member of a cluster).
///
/// These are the etcd cluster's CA and a client certificate it issued, not
/// the site CA's: the certificate needs no Wardline identity, but it must
/// be issued by that CA, valid now and for client authentication, as etcd
/// (`--client-cert-auth`, `--trusted-ca-file`) will check it.
pub fn etcd_client_tls(ca: &Path, cert: &Path, key: &Path) -> Result<ClientTlsConfig, TlsError> {
    let material = Material::load(ca, cert, key, Usage::Client, Identified::Any)?;
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(material.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            material.cert_pem,
            material.key_pem,
        ))
        .timeout(HANDSHAKE_TIMEOUT))
}

/// A TLS 1.2 client configuration with the same files and checks as
/// [`etcd_client_tls`], for one check handshake with each etcd member that
/// learns whether the member accepts the client certificate.
///
/// The version is the point: in TLS 1.2 the member's verdict on the client
/// certificate is part of the handshake, which fails with the member's
/// alert. In TLS 1.3 the client's handshake ends before the member has
/// checked the certificate, and its alert can be lost when the member
/// resets the connection, so that a refused certificate looks like a
/// dropped connection.
pub fn etcd_check_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ClientConfig, TlsError> {
    let material = Material::load(ca, cert, key, Usage::Client, Identified::Any)?;
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates(ca, &material.ca_pem)? {
        roots.add(der).map_err(|err| TlsError::BadCertificate {
            path: ca.to_owned(),
            reason: err.to_string(),
        })?;
    }
    let chain = certificates(cert, &material.cert_pem)?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&material.key_pem).map_err(|err| TlsError::NotKeyPem {
            path: key.to_owned(),
            reason: err.to_string(),
        })?;
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .and_then(|builder| {
        builder
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key_der)
    })
    .map_err(|err| TlsError::UnsupportedKey {
        path: key.to_owned(),
        reason: err.to_string(),
    })
}

/// A TLS client configuration for the shared flow database (PostgreSQL):
/// the database server verified against the CA in `ca` by the host
/// dialled, and with `client` (certificate, key) a client certificate for
/// PostgreSQL's `cert` authentication, checked as [`etcd_client_tls`]
/// checks its own (issued by that CA, valid now, for client
/// authentication). Without one the database authenticates the replica
/// by password, over this TLS.
pub fn database_client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let ca_pem = match client {
        Some((cert, key)) => Material::load(ca, cert, key, Usage::Client, Identified::Any)?.ca_pem,
        None => read(ca)?,
    };
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates(ca, &ca_pem)? {
        if !parse(ca, &der)?.is_ca() {
            return Err(TlsError::NotCa {
                path: ca.to_owned(),
            });
        }
        roots.add(der).map_err(|err| TlsError::BadCertificate {
            path: ca.to_owned(),
            reason: err.to_string(),
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|err| TlsError::BadCertificate {
        path: ca.to_owned(),
        reason: err.to_string(),
    })?
    .with_root_certificates(roots);
    let Some((cert, key)) = client else {
        return Ok(builder.with_no_client_auth());
    };
    let chain = certificates(cert, &read(cert)?)?;
    let key_der =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|err| TlsError::NotKeyPem {
            path: key.to_owned(),
            reason: err.to_string(),
        })?;
    builder
        .with_client_auth_cert(chain, key_der)
        .map_err(|err| TlsError::UnsupportedKey {
            path: key.to_owned(),
            reason: err.to_string(),
        })
}

/// A channel endpoint to the control plane at `address`: [`client_tls`]
/// with the certificate in `cert` and key in `key`, verifying the server
/// against the CA in `ca` by the address's host, and [`CONNECT_TIMEOUT`].
/// Callers add their own keep-alive and request timeouts, and connect.
pub fn client_endpoint(
    address: &ServerAddress,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Endpoint, TlsError> {
    let tls = client_tls(ca, cert, key, address.host())?;
    Endpoint::from(address.uri().clone())
        .tls_config(tls)
        .map_err(|err| TlsError::Channel {
            address: address.to_string(),
            reason: err.to_string(),
        })
        .map(|endpoint| endpoint.connect_timeout(CONNECT_TIMEOUT))
}

/// Who the caller of a request is, from the client certificate its TLS
/// connection was verified with.
///
/// Returns `unauthenticated` when the request carries no client
/// certificate (not served over TLS) or its certificate carries no
/// Wardline identity.
pub fn peer_identity<T>(req: &tonic::Request<T>) -> Result<Identity, tonic::Status> {
    let peer = req.remote_addr();
    let Some(certs) = req.peer_certs() else {
        tracing::warn!(peer = %display_peer(peer), "refused: no client certificate");
        return Err(tonic::Status::unauthenticated(
            "no client certificate presented",
        ));
    };
    let Some(leaf) = certs.first() else {
        tracing::warn!(peer = %display_peer(peer), "refused: empty client certificate chain");
        return Err(tonic::Status::unauthenticated(
            "no client certificate presented",
        ));
    };
    identity_of(leaf.as_ref()).map_err(|err| {
        tracing::warn!(
            peer = %display_peer(peer),
            error = %err,
            "refused: client certificate carries no identity"
        );
        tonic::Status::unauthenticated(format!(
            "client certificate carries no Wardline identity: {err}"
        ))
    })
}

/// Allows the call if `identity` has `role`; otherwise returns
/// `permission_denied` naming the role needed and the caller, and logs the
/// refusal.
///
/// This has no request to read the peer's address from: handlers that have
/// the request use [`authorize`], which logs it.
pub fn require(identity: &Identity, role: Role) -> Result<(), tonic::Status> {
    check_role(identity, role, None)
}

/// [`peer_identity`] then [`require`]: the caller's identity if it has
/// `role`; refusals are logged with the caller's address.
pub fn authorize<T>(req: &tonic::Request<T>, role: Role) -> Result<Identity, tonic::Status> {
    let identity = peer_identity(req)?;
    check_role(&identity, role, req.remote_addr())?;
    Ok(identity)
}

/// Checks a role and logs a refusal.
fn check_role(
    identity: &Identity,
    role: Role,
    peer: Option<SocketAddr>,
) -> Result<(), tonic::Status> {
    if identity.role == role {
        return Ok(());
    }
    tracing::warn!(
        caller = %identity,
        peer = %display_peer(peer),
        needed = %role,
        "refused: caller lacks the role"
    );
    Err(tonic::Status::permission_denied(format!(
        "the {role} role is required; caller is {identity}"
    )))
}

/// A peer address for logs.
fn display_peer(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".to_owned(), |addr| addr.to_string())
}

/// The PEM files of one party, checked.
struct Material {
    /// The CA file's contents.
    ca_pem: Vec<u8>,
    /// The certificate file's contents.
    cert_pem: Vec<u8>,
    /// The key file's contents.
    key_pem: Vec<u8>,
}

/// What a certificate is presented for, and so the extended key usage
/// (EKU) it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Usage {
    /// Served by the control plane: server authentication.
    Server,
    /// Presented by a client: client authentication.
    Client,
}

impl Usage {
    /// The extended key usage webpki requires for it.
    fn key_usage(self) -> webpki::KeyUsage {
        match self {
            Usage::Server => webpki::KeyUsage::server_auth(),
            Usage::Client => webpki::KeyUsage::client_auth(),
        }
    }

    /// For messages.
    fn describe(self) -> &'static str {
        match self {
            Usage::Server => "server authentication",
            Usage::Client => "client authentication",
        }
    }
}

/// Whether a certificate must say which Wardline party it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Identified {
    /// A site CA certificate: it carries a Wardline identity.
    Wardline,
    /// Another CA's certificate (etcd's): any subject.
    Any,
}

impl Material {
    /// Reads the three files and checks that the CA file holds CA
    /// certificates, that the key matches the certificate, that it says
    /// who it is for (with `identified` [`Identified::Wardline`]; a
    /// control-plane certificate, to serve), and then,
    /// with webpki as the TLS handshake will: that one of the CAs issued
    /// it, that it is valid now (both ends of its validity window), and
    /// that its extended key usage allows `usage`; last, that its key
    /// usage allows digital signatures.
    fn load(
        ca: &Path,
        cert: &Path,
        key: &Path,
        usage: Usage,
        identified: Identified,
    ) -> Result<Self, TlsError> {
        let ca_pem = read(ca)?;
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;

        let ca_ders = certificates(ca, &ca_pem)?;
        let cert_ders = certificates(cert, &cert_pem)?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| TlsError::NotKeyPem {
                path: key.to_owned(),
                reason: err.to_string(),
            })?;

        let provider: CryptoProvider = rustls::crypto::ring::default_provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|err| TlsError::UnsupportedKey {
                path: key.to_owned(),
                reason: err.to_string(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(cert_ders.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::KeyMismatch {
                    key: key.to_owned(),
                    cert: cert.to_owned(),
                });
            }
            Err(err) => {
                return Err(TlsError::BadCertificate {
                    path: cert.to_owned(),
                    reason: err.to_string(),
                });
            }
        }

        let mut anchors = Vec::with_capacity(ca_ders.len());
        for der in &ca_ders {
            if !parse(ca, der)?.is_ca() {
                return Err(TlsError::NotCa {
                    path: ca.to_owned(),
                });
            }
            anchors.push(webpki::anchor_from_trusted_cert(der).map_err(|err| {
                TlsError::BadCertificate {
                    path: ca.to_owned(),
                    reason: err.to_string(),
                }
            })?);
        }
        let (leaf_der, intermediates) =
            cert_ders
                .split_first()
                .ok_or_else(|| TlsError::NotCertificatePem {
                    path: cert.to_owned(),
                    reason: "no certificate found".to_owned(),
                })?;
        if identified == Identified::Wardline {
            let identity = identity_of(leaf_der).map_err(|source| TlsError::NoIdentity {
                path: cert.to_owned(),
                source,
            })?;
            if usage == Usage::Server && identity.role != Role::ControlPlane {
                return Err(TlsError::NotServerCertificate {
                    path: cert.to_owned(),
                    identity,
                });
            }
        }

        let leaf =
            webpki::EndEntityCert::try_from(leaf_der).map_err(|err| TlsError::BadCertificate {
                path: cert.to_owned(),
                reason: err.to_string(),
            })?;
        leaf.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            UnixTime::now(),
            usage.key_usage(),
            None,
            None,
        )
        .map_err(|err| refusal(err, ca, cert, usage))?;
        let key_usage = parse(cert, leaf_der)?
            .key_usage()
            .map_err(|err| TlsError::BadCertificate {
                path: cert.to_owned(),
                reason: err.to_string(),
            })?
            .map(|ext| ext.value.digital_signature());
        if key_usage == Some(false) {
            return Err(TlsError::NoDigitalSignature {
                path: cert.to_owned(),
            });
        }

        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
        })
    }
}

/// Why webpki refused the certificate in `cert` for `usage`.
fn refusal(err: webpki::Error, ca: &Path, cert: &Path, usage: Usage) -> TlsError {
    use webpki::Error as E;
    let path = cert.to_owned();
    match err {
        E::CertExpired { not_after, .. } => TlsError::Expired {
            path,
            not_after: rfc3339(not_after),
        },
        E::CertNotValidYet { not_before, .. } => TlsError::NotYetValid {
            path,
            not_before: rfc3339(not_before),
        },
        E::RequiredEkuNotFoundContext(_) => TlsError::WrongUsage {
            path,
            usage: usage.describe(),
        },
        E::UnknownIssuer | E::InvalidSignatureForPublicKey => TlsError::NotIssuedByCa {
            cert: path,
            ca: ca.to_owned(),
        },
        other => TlsError::Refused {
            path,
            reason: format!("{other:?}"),
        },
    }
}

/// A certificate time for messages.
fn rfc3339(at: UnixTime) -> String {
    let secs = i64::try_from(at.as_secs()).unwrap_or(i64::MAX);
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs} seconds after the epoch"))
}

/// Reads a whole file.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every PEM certificate in a file; at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::NotCertificatePem {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NotCertificatePem {
            path: path.to_owned(),
            reason: "no certificate found".to_owned(),
        });
    }
    Ok(certs)
}

/// Parses a DER certificate read from `path`.
fn parse<'a>(
    path: &Path,
    der: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, TlsError> {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|err| TlsError::BadCertificate {
            path: path.to_owned(),
            reason: err.to_string(),
        })
}
