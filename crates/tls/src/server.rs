//! The server side: a rustls config from the server's certificate (optionally requiring client
//! certificates signed by a CA, checked against a revocation list that is reloaded when it
//! changes), and [`TlsListener`], which accepts TCP connections and
//! handshakes each in its own task, so a client that stalls mid-handshake holds only itself.
//!
//! A client that speaks plain HTTP to the TLS port gets a plain HTTP 400 whose JSON error says
//! to use https, rather than a dropped connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::{Identity, TlsError, files};

/// How long a client has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// A server's TLS settings.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    clients: Option<Arc<Clients>>,
}

/// How a server checks client certificates (mTLS).
#[derive(Debug, Clone, Copy)]
pub struct ClientCerts<'a> {
    /// The CA (PEM) that must have signed them.
    pub ca: &'a Path,
    /// A PEM file of revocation lists (`tug certs revoke` makes one), reloaded when it changes.
    pub crl: Option<&'a Path>,
    /// Whether `crl` may be missing (not revoked anything yet): it is taken once it appears.
    pub crl_may_be_missing: bool,
    /// Whether a client may connect without a certificate (one it presents is still checked):
    /// for a server that issues certificates to clients that have none yet.
    pub optional: bool,
}

impl ServerTls {
    /// Presents `identity`; with `client_ca`, also requires every client to present a certificate
    /// signed by a CA in that file (mTLS). `alpn` lists the protocols offered, e.g. `h2`.
    pub fn new(identity: Identity, client_ca: Option<&Path>, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        ServerTls::with_crl(identity, client_ca, None, alpn)
    }

    /// [`ServerTls::new`], also refusing client certificates that `crl` (a PEM file of
    /// revocation lists, `tug certs revoke` makes one) revokes.
    pub fn with_crl(identity: Identity, client_ca: Option<&Path>, crl: Option<&Path>, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let clients = client_ca.map(|ca| ClientCerts { ca, crl, crl_may_be_missing: false, optional: false });
        ServerTls::with_client_certs(identity, clients, alpn)
    }

    /// Presents `identity`, and checks client certificates as `clients` says.
    pub fn with_client_certs(identity: Identity, clients: Option<ClientCerts<'_>>, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let provider = crate::provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls { context: "choosing TLS versions".into(), source })?;
        let clients = clients.map(Clients::new).transpose()?.map(Arc::new);
        let builder = match &clients {
            Some(c) => builder.with_client_cert_verifier(c.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(identity.certs, identity.key).map_err(|source| TlsError::Rustls {
            context: "the server certificate and key do not go together (or the key is not usable)".into(),
            source,
        })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls { config: Arc::new(config), clients })
    }

    /// Whether clients must present certificates (to the application: with
    /// [`ClientCerts::optional`] the handshake lets them in without one).
    pub fn requires_client_certs(&self) -> bool {
        self.clients.is_some()
    }

    /// The rustls config.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Checks a client's certificate again, against the revocation list as it is now: an agent
    /// connected before its certificate was revoked is found this way.
    pub fn check_client(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match &self.clients {
            Some(c) => c.current().verify_client_cert(cert, &[], UnixTime::now()).map(drop),
            None => Ok(()),
        }
    }

    /// Whether the revocation list, as it is now, revokes `cert`.
    pub fn revokes(&self, cert: &CertificateDer<'_>) -> bool {
        matches!(self.check_client(cert), Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)))
    }

    /// Reads the revocation list again; true when it was taken (then [`ServerTls::crl_changes`]
    /// says so). Until a good one is read the last one stays.
    pub fn reload_crl(&self) -> Result<bool, TlsError> {
        match &self.clients {
            Some(c) if c.crl.is_some() => c.reload().map(|()| true),
            _ => Ok(false),
        }
    }

    /// Ticks each time a new revocation list is taken.
    pub fn crl_changes(&self) -> Option<watch::Receiver<u64>> {
        self.clients.as_ref().map(|c| c.changed.subscribe())
    }

    /// Checks the revocation list file every `every` and takes it when it has changed (a
    /// revocation applies without a restart). `None` without one.
    pub fn watch_crl(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let clients = self.clients.clone().filter(|c| c.crl.is_some())?;
        let path = clients.crl.clone().unwrap_or_default();
        // As it is now, not when the task first runs: a change in between is still seen.
        let mut last = std::fs::read(&path).ok();
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let now = std::fs::read(&path).ok();
                if now.is_none() || now == last {
                    continue;
                }
                match clients.reload() {
                    Ok(()) => tracing::info!(crl = %path.display(), "took the changed revocation list of client certificates"),
                    Err(e) => tracing::warn!(error = %e, "the changed revocation list cannot be used; the last one stays"),
                }
                last = now;
            }
        }))
    }
}

/// A client-certificate verifier whose revocation list can be replaced while serving.
#[derive(Debug)]
struct Clients {
    roots: Arc<rustls::RootCertStore>,
    ca: std::path::PathBuf,
    crl: Option<std::path::PathBuf>,
    optional: bool,
    hints: Vec<rustls::DistinguishedName>,
    verifier: RwLock<Arc<dyn ClientCertVerifier>>,
    changed: watch::Sender<u64>,
}

impl Clients {
    fn new(c: ClientCerts<'_>) -> Result<Clients, TlsError> {
        let roots = Arc::new(files::load_roots(c.ca)?);
        let crls = match c.crl {
            Some(path) if c.crl_may_be_missing && !path.exists() => Vec::new(),
            Some(path) => files::load_crls(path)?,
            None => Vec::new(),
        };
        let verifier = build_verifier(&roots, c.ca, crls, c.optional)?;
        Ok(Clients {
            roots,
            ca: c.ca.to_path_buf(),
            crl: c.crl.map(Path::to_path_buf),
            optional: c.optional,
            hints: verifier.root_hint_subjects().to_vec(),
            verifier: RwLock::new(verifier),
            changed: watch::Sender::new(0),
        })
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn reload(&self) -> Result<(), TlsError> {
        let Some(path) = &self.crl else { return Ok(()) };
        let verifier = build_verifier(&self.roots, &self.ca, files::load_crls(path)?, self.optional)?;
        *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = verifier;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }
}

fn build_verifier(
    roots: &Arc<rustls::RootCertStore>,
    ca: &Path,
    crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), crate::provider());
    if !crls.is_empty() {
        // Agents' certificates are signed by the CA itself: no intermediates to check.
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    if optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| TlsError::ClientCa { path: ca.display().to_string(), detail: e.to_string() })
}

impl ClientCertVerifier for Clients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

/// Accepted, handshaken connections. Dropping it stops accepting.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `listener` and handshakes with `tls`. `what` names the endpoint in logs
    /// ("API", "agent endpoint").
    pub fn new(listener: TcpListener, tls: ServerTls, what: &'static str) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(accept_loop(listener, tls, what, tx));
        Ok(TlsListener { rx, local, task })
    }

    /// The next connection that completed its handshake; `None` once the accept loop has ended.
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.rx.recv().await
    }

    /// [`TlsListener::next`] for a hand-written stream.
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<(TlsStream<TcpStream>, SocketAddr)>> {
        self.rx.poll_recv(cx)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.next().await {
            Some(conn) => conn,
            // The accept loop ends only when dropped; serve until shut down.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(listener: TcpListener, tls: ServerTls, what: &'static str, tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    let acceptor = TlsAcceptor::from(tls.config());
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "{what}: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&acceptor, stream)).await {
                Ok(Ok(Some(conn))) => {
                    let _ = tx.send((conn, peer)).await;
                }
                Ok(Ok(None)) => tracing::info!(%peer, "{what}: a plain HTTP request to the TLS port was told to use https"),
                Ok(Err(e)) => tracing::info!(%peer, "{what}: TLS handshake failed: {}", crate::explain::server_side(&e)),
                Err(_) => tracing::info!(%peer, "{what}: TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}; closed"),
            }
        });
    }
}

/// The handshake; `None` when the client spoke plain HTTP (it has been answered).
async fn handshake(acceptor: &TlsAcceptor, mut stream: TcpStream) -> std::io::Result<Option<TlsStream<TcpStream>>> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    // A TLS connection opens with a handshake record (content type 22).
    if n == 1 && first[0] != 0x16 && first[0].is_ascii_uppercase() {
        // Read the request head first: closing with unread bytes resets the connection, and the
        // client would see the reset instead of the answer.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await? {
                0 => break,
                n => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = r#"{"error":{"code":"tls_required","message":"this server speaks TLS only: use an https:// URL (and --ca with the CA that signed its certificate, e.g. the ca.pem of tug certs init)"}}"#;
        let reply = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
        return Ok(None);
    }
    acceptor.accept(stream).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_revocation_list_is_taken_while_serving() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        crate::certs::init(d, &[], &["a1".into(), "a2".into()], crate::certs::Validity::days(30)).unwrap();
        let identity = Identity::load(&d.join("server.pem"), &d.join("server-key.pem")).unwrap();
        let crl = d.join("crl.pem");
        let clients = ClientCerts { ca: &d.join("ca.pem"), crl: Some(&crl), crl_may_be_missing: true, optional: false };
        let tls = ServerTls::with_client_certs(identity, Some(clients), &[]).unwrap();
        let a1 = files::load_certs(&d.join("agent-a1.pem"), "certificate").unwrap().remove(0);
        assert!(!tls.revokes(&a1), "no list yet: nothing is revoked");
        let mut changes = tls.crl_changes().unwrap();
        let watch = tls.watch_crl(Duration::from_millis(50)).unwrap();
        crate::certs::revoke_agent(d, "a1").unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed()).await.expect("the new list is taken").unwrap();
        assert!(tls.revokes(&a1));
        let a2 = files::load_certs(&d.join("agent-a2.pem"), "certificate").unwrap().remove(0);
        assert!(!tls.revokes(&a2));
        // A broken file leaves the last good list in place.
        std::fs::write(&crl, "garbage").unwrap();
        assert!(tls.reload_crl().is_err());
        assert!(tls.revokes(&a1));
        watch.abort();
    }
}
