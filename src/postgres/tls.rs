//! TLS for PostgreSQL connections with libpq's sslmode semantics, on rustls.
//!
//! libpq verifies nothing in `prefer`/`allow`/`require` (unless `require` is given a root
//! CA, when it behaves as `verify-ca`), the chain only in `verify-ca`, and chain plus host
//! name in `verify-full`. rustls verifies both by default, so the weaker modes get their own
//! verifiers here; handshake signatures are always checked.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::api::SslMode;

/// PEM material and names that decide how a server is verified and who we are to it. Its
/// `Debug` leaves the private key out.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct TlsMaterial {
    /// Root CA bundle (PEM). Without it, the public web roots are used.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain (PEM) for mutual TLS.
    pub client_cert_pem: Option<Vec<u8>>,
    /// Client private key (PEM).
    pub client_key_pem: Option<Vec<u8>>,
    /// Name to send as SNI and to verify, instead of the host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = |p: &Option<Vec<u8>>| p.as_ref().map(Vec::len);
        f.debug_struct("TlsMaterial")
            .field("ca_pem_bytes", &bytes(&self.ca_pem))
            .field("client_cert_pem_bytes", &bytes(&self.client_cert_pem))
            .field(
                "client_key_pem",
                &self.client_key_pem.as_ref().map(|_| "<redacted>"),
            )
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Something in the TLS material is unusable; the message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("the CA bundle holds no PEM certificate")]
    EmptyCa,
    #[error("the CA bundle is not valid PEM: {0}")]
    BadCa(String),
    #[error("the client certificate is not valid PEM: {0}")]
    BadClientCert(String),
    #[error("the client key is not a valid PEM private key: {0}")]
    BadClientKey(String),
    #[error("a client certificate needs its private key (and a key its certificate)")]
    ClientPairIncomplete,
    #[error("the client certificate does not match its key, or is unusable: {0}")]
    ClientAuth(rustls::Error),
    #[error("cannot build a verifier from the CA bundle: {0}")]
    Verifier(String),
    #[error("{0:?} is not a valid server name for TLS")]
    ServerName(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for `mode`. `None` for `disable`.
pub fn client_config(
    mode: SslMode,
    material: &TlsMaterial,
) -> Result<Option<Arc<ClientConfig>>, TlsConfigError> {
    let provider = provider();
    let roots = || -> Result<Arc<RootCertStore>, TlsConfigError> {
        let mut store = RootCertStore::empty();
        match &material.ca_pem {
            Some(pem) => {
                let certs = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| TlsConfigError::BadCa(e.to_string()))?;
                if certs.is_empty() {
                    return Err(TlsConfigError::EmptyCa);
                }
                for cert in certs {
                    store
                        .add(cert)
                        .map_err(|e| TlsConfigError::BadCa(e.to_string()))?;
                }
            }
            None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        Ok(Arc::new(store))
    };
    let webpki = || -> Result<Arc<WebPkiServerVerifier>, TlsConfigError> {
        WebPkiServerVerifier::builder_with_provider(roots()?, provider.clone())
            .build()
            .map_err(|e| TlsConfigError::Verifier(e.to_string()))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Allow | SslMode::Prefer => Arc::new(NoVerification(provider.clone())),
        SslMode::Require if material.ca_pem.is_none() => Arc::new(NoVerification(provider.clone())),
        SslMode::Require | SslMode::VerifyCa => Arc::new(ChainOnly(webpki()?)),
        SslMode::VerifyFull => webpki()?,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Verifier(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&material.client_cert_pem, &material.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsConfigError::BadClientCert(e.to_string()))?;
            if chain.is_empty() {
                return Err(TlsConfigError::BadClientCert("no CERTIFICATE block".into()));
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| TlsConfigError::BadClientKey(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(TlsConfigError::ClientAuth)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsConfigError::ClientPairIncomplete),
    };
    Ok(Some(Arc::new(config)))
}

/// Accepts any certificate (sslmode allow, prefer, require without CA) but still checks
/// that the server holds the key of the certificate it sent.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca: the chain must lead to a trusted root; the name in the certificate is not
/// compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres glue: makes a rustls connection per server, naming it by `server_name`
/// when set, else by the host tokio-postgres dials.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
    server_name: Option<String>,
}

impl MakeRustls {
    pub fn new(config: Arc<ClientConfig>, server_name: Option<String>) -> Self {
        Self {
            config,
            server_name,
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsConfigError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, TlsConfigError> {
        let name = self.server_name.as_deref().unwrap_or(domain);
        let name = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsConfigError::ServerName(name.to_owned()))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One pending TLS handshake.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream to a server.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
