//! The control plane's TLS listener, with the site's revocations checked
//! in every handshake.
//!
//! tonic's own TLS set-up takes no custom client-certificate verifier, so
//! the server accepts connections here (rustls through tokio-rustls, the
//! same stack tonic uses) and hands tonic finished TLS streams; tonic reads
//! each caller's verified certificates from them as before.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use futures_util::Stream;
use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::revocation::{CertificateFacts, RevocationList, serial_hex};
use crate::{HANDSHAKE_TIMEOUT, Identified, Material, TlsError, Usage};

/// The site CA's chain checks, then the revocation list.
#[derive(Debug)]
struct RevokingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevocationList,
}

impl ClientCertVerifier for RevokingVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(refusal) = self.revoked.current().refuses_der(end_entity) {
            tracing::warn!(%refusal, "refused at the handshake: revoked certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The certificate a replica serves, which it can replace without a
/// restart: [`ServingCert::reload`] reads the files again and, when they
/// pass every check [`crate::server_tls`] makes, serves the new
/// certificate from the next handshake on. Connections already open keep
/// theirs. Files that fail a check change nothing: the certificate in
/// force stays, and the error names the file.
pub struct ServingCert {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, CertificateFacts)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert", &self.cert)
            .field("serial", &serial_hex(&self.facts().serial))
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Loads and checks the replica's certificate `cert` and key `key`
    /// against the site CA in `ca`.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<ServingCert, TlsError> {
        let loaded = Self::read(ca, cert, key)?;
        Ok(ServingCert {
            ca: ca.to_owned(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(loaded),
        })
    }

    fn read(
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<(Arc<CertifiedKey>, CertificateFacts), TlsError> {
        let material = Material::load(ca, cert, key, Usage::Server, Identified::Wardline)?;
        let chain = CertificateDer::pem_slice_iter(&material.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::NotCertificatePem {
                path: cert.to_owned(),
                reason: e.to_string(),
            })?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&material.key_pem).map_err(|e| TlsError::NotKeyPem {
                path: key.to_owned(),
                reason: e.to_string(),
            })?;
        let signing = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key_der)
            .map_err(|e| TlsError::UnsupportedKey {
                path: key.to_owned(),
                reason: e.to_string(),
            })?;
        let facts = chain
            .first()
            .and_then(|leaf| CertificateFacts::of(leaf))
            .ok_or_else(|| TlsError::BadCertificate {
                path: cert.to_owned(),
                reason: "no readable certificate".to_owned(),
            })?;
        Ok((Arc::new(CertifiedKey::new(chain, signing)), facts))
    }

    /// Reads the files again. Returns whether the certificate changed
    /// (another serial); on an error the one in force stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (certified, facts) = Self::read(&self.ca, &self.cert, &self.key)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let changed = current.1.serial != facts.serial;
        *current = (certified, facts);
        Ok(changed)
    }

    /// What the certificate in force says (serial, validity, identity).
    pub fn facts(&self) -> CertificateFacts {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// The files it is read from: certificate, key.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// The rustls settings of a control-plane replica: the certificate
/// `serving` holds (from each handshake on), every client required to
/// present a certificate of the CA in `ca`, and none that `revoked` names
/// accepted. gRPC's ALPN (`h2`).
pub fn server_config(
    ca: &Path,
    serving: Arc<ServingCert>,
    revoked: RevocationList,
) -> Result<rustls::ServerConfig, TlsError> {
    let ca_pem = crate::read(ca)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&ca_pem) {
        let der = der.map_err(|e| TlsError::NotCertificatePem {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
        roots.add(der).map_err(|e| TlsError::BadCertificate {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::BadCertificate {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            path: serving.cert.clone(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(Arc::new(RevokingVerifier { inner, revoked }))
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The rustls settings of a replica's web dashboard: the same certificate
/// `serving` holds (a browser checks it against the site CA), and no
/// client certificate asked for, since operators sign in with a link
/// `wardctl` gets them over mutual TLS. HTTP/1.1 only.
pub fn browser_config(serving: Arc<ServingCert>) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            path: serving.cert.clone(),
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS connections accepted on `listener`, each handshake bounded by
/// [`HANDSHAKE_TIMEOUT`] and run on its own task, so that a slow or
/// refused client holds up no other. Failed handshakes are logged and
/// dropped, never ending the stream.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    incoming_reporting(listener, config, |_, _| {})
}

/// [`incoming`], telling `refused` of each failed handshake: the peer and
/// why (a certificate of another CA, a revoked one, none, a timeout).
pub fn incoming_reporting(
    listener: TcpListener,
    config: rustls::ServerConfig,
    refused: impl Fn(std::net::SocketAddr, String) + Send + Sync + 'static,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let refused = Arc::new(refused);
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let accepted = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, "TLS handshake failed: {e}");
                        refused(peer, e.to_string());
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        refused(peer, "the handshake timed out".to_owned());
                    }
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
