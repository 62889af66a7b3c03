//! The control plane's TLS listener, with the site's revocations checked
//! in every handshake.
//!
//! tonic's own TLS set-up takes no custom client-certificate verifier, so
//! the server accepts connections here (rustls through tokio-rustls, the
//! same stack tonic uses) and hands tonic finished TLS streams; tonic reads
//! each caller's verified certificates from them as before.

use std::path::Path;
use std::sync::Arc;

use futures_util::Stream;
use rustls::DigitallySignedStruct;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::revocation::RevocationList;
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

/// The rustls settings of a control-plane replica: [`crate::server_tls`]'s
/// checks of the three files, the certificate served, every client
/// required to present a certificate of the CA in `ca`, and none that
/// `revoked` names accepted. gRPC's ALPN (`h2`).
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    revoked: RevocationList,
) -> Result<rustls::ServerConfig, TlsError> {
    let material = Material::load(ca, cert, key, Usage::Server, Identified::Wardline)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(&material.ca_pem) {
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
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Refused {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(Arc::new(RevokingVerifier { inner, revoked }))
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::UnsupportedKey {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
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
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
