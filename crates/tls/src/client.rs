//! The client side: the system's trusted roots plus an optional CA file (`--ca`), and for mTLS a
//! client certificate. The same settings serve the CLI and webhooks (through reqwest) and the
//! agent stream ([`ClientTls::connect`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{Identity, TlsError, files};

/// A client's TLS settings.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// The CA file given, for messages.
    pub ca_file: Option<PathBuf>,
    extra_roots: Vec<CertificateDer<'static>>,
    identity: Option<Identity>,
}

/// The settings for `ca` (trusted besides the system's roots) and, for mTLS, `identity`.
pub fn client_config(ca: Option<&Path>, identity: Option<Identity>) -> Result<ClientTls, TlsError> {
    ClientTls::new(ca, identity)
}

impl ClientTls {
    /// Trusts the system's roots and the CA certificates in `ca`; presents `identity` when the
    /// server asks for a client certificate.
    pub fn new(ca: Option<&Path>, identity: Option<Identity>) -> Result<ClientTls, TlsError> {
        let extra_roots = match ca {
            Some(path) => files::load_certs(path, "CA certificate")?,
            None => Vec::new(),
        };
        Ok(ClientTls { ca_file: ca.map(Path::to_path_buf), extra_roots, identity })
    }

    /// The same trust, presenting `identity` (a client certificate got or renewed later).
    pub fn with_identity(mut self, identity: Identity) -> ClientTls {
        self.identity = Some(identity);
        self
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// The rustls config, offering `alpn` (e.g. `h2`, `http/1.1`).
    pub fn config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = crate::provider();
        let verifier: Arc<dyn ServerCertVerifier> =
            match rustls_platform_verifier::Verifier::new_with_extra_roots(self.extra_roots.iter().cloned(), provider.clone()) {
                Ok(v) => Arc::new(v),
                // No CA file and none on the system: plain http still works; https says why not.
                Err(_) if self.extra_roots.is_empty() => Arc::new(NoRoots(provider.clone())),
                Err(source) => return Err(TlsError::Rustls { context: "loading trusted certificates".into(), source }),
            };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls { context: "choosing TLS versions".into(), source })?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.identity {
            Some(id) => builder.with_client_auth_cert(id.certs.clone(), id.key.clone_key()).map_err(|source| TlsError::Rustls {
                context: "the client certificate and key do not go together (or the key is not usable)".into(),
                source,
            })?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// The config for an HTTP client (reqwest's `tls_backend_preconfigured`): HTTP/2 or 1.1.
    pub fn for_http(&self) -> Result<ClientConfig, TlsError> {
        Ok((*self.config(&[b"h2", b"http/1.1"])?).clone())
    }

    /// Connects to `host:port` and completes the handshake, verifying the server's certificate
    /// for `host`; offers HTTP/2 only (the agent stream).
    pub async fn connect(&self, config: Arc<ClientConfig>, host: &str, port: u16) -> std::io::Result<TlsStream<TcpStream>> {
        // Bracketed IPv6 literals come from URLs.
        let name = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(name.to_owned())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host:?} is not a valid server name: {e}")))?;
        let tcp = TcpStream::connect((name, port)).await?;
        let _ = tcp.set_nodelay(true);
        TlsConnector::from(config).connect(server_name, tcp).await
    }
}

/// Trusts nothing, saying why: the system has no CA certificates and no `--ca` was given.
#[derive(Debug)]
struct NoRoots(Arc<CryptoProvider>);

impl ServerCertVerifier for NoRoots {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General(
            "no CA certificates to trust: this system has none (install ca-certificates) and no --ca file was given".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
