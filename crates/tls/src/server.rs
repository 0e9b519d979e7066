//! The server side: a rustls config from the server's certificate (optionally requiring client
//! certificates signed by a CA), and [`TlsListener`], which accepts TCP connections and
//! handshakes each in its own task, so a client that stalls mid-handshake holds only itself.
//!
//! A client that speaks plain HTTP to the TLS port gets a plain HTTP 400 whose JSON error says
//! to use https, rather than a dropped connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
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
    client_auth: bool,
}

impl ServerTls {
    /// Presents `identity`; with `client_ca`, also requires every client to present a certificate
    /// signed by a CA in that file (mTLS). `alpn` lists the protocols offered, e.g. `h2`.
    pub fn new(identity: Identity, client_ca: Option<&Path>, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        ServerTls::with_crl(identity, client_ca, None, alpn)
    }

    /// [`ServerTls::new`], also refusing client certificates that `crl` (a PEM file of
    /// revocation lists, `tug certs revoke` makes one) revokes. Read once, here.
    pub fn with_crl(identity: Identity, client_ca: Option<&Path>, crl: Option<&Path>, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        let provider = crate::provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls { context: "choosing TLS versions".into(), source })?;
        let builder = match client_ca {
            Some(path) => {
                let roots = files::load_roots(path)?;
                let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                if let Some(crl) = crl {
                    // Agents' certificates are signed by the CA itself: no intermediates to check.
                    verifier = verifier.with_crls(files::load_crls(crl)?).only_check_end_entity_revocation();
                }
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::ClientCa { path: path.display().to_string(), detail: e.to_string() })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(identity.certs, identity.key).map_err(|source| TlsError::Rustls {
            context: "the server certificate and key do not go together (or the key is not usable)".into(),
            source,
        })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(ServerTls { config: Arc::new(config), client_auth: client_ca.is_some() })
    }

    /// Whether clients must present certificates.
    pub fn requires_client_certs(&self) -> bool {
        self.client_auth
    }

    /// The rustls config.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
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
