//! The agent stream over TLS: a connector that dials the server and handshakes with rustls
//! (verifying the server's certificate, presenting the agent's own for mTLS), for tonic's
//! `connect_with_connector`. tonic is given an `http://` URI: the TLS here is ours, whatever
//! TLS features tonic itself was built with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tonic::transport::Uri;
use tug_tls::ClientTls;

/// Dials `host` (the name the server's certificate must carry) at the URI's port.
#[derive(Clone)]
pub struct Connector {
    tls: ClientTls,
    config: Arc<rustls::ClientConfig>,
    host: String,
}

impl Connector {
    /// A connector for the server named `host`, offering HTTP/2.
    pub fn new(tls: ClientTls, host: String) -> Result<Connector, tug_tls::TlsError> {
        let config = tls.config(&[b"h2"])?;
        Ok(Connector { tls, config, host })
    }
}

type Conn = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let port = uri.port_u16().unwrap_or(443);
            this.tls.connect(this.config.clone(), &this.host, port).await.map(TokioIo::new)
        })
    }
}
