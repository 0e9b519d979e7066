//! `dresponse`: answers each networked container's `dwait` on a unix socket (`dwait::net` has the
//! exchange). The container is known by the peer credentials of its connection: the pid of its
//! `dwait` as this host sees it, whose network namespace gets the container's interface.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::NetAgent;

/// How long a container may take to say what it wants.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `dresponse.sock` in `dir` (replacing a socket left by an earlier run) and answers every
/// container until `shutdown` completes.
pub async fn serve(dir: &Path, net: Arc<NetAgent>, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("dresponse.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    tracing::info!(socket = %path.display(), "dresponse listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    let net = net.clone();
                    tokio::spawn(async move { answer(stream, &net).await });
                }
                Err(e) => tracing::warn!(error = %e, "dresponse: accept failed"),
            },
            () = &mut shutdown => break,
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

async fn answer(stream: UnixStream, net: &NetAgent) {
    let pid = match stream.peer_cred().map(|c| c.pid()) {
        Ok(Some(pid)) if pid > 0 => pid as u32,
        other => {
            tracing::warn!(?other, "dresponse: a connection without a peer pid");
            return;
        }
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(ASK_TIMEOUT, BufReader::new(read).read_line(&mut line)).await;
    let reply = match read {
        Ok(Ok(n)) if n > 0 => match dwait::net::Ask::from_line(&line) {
            Ok(ask) => match net.ready(&ask.instance, &ask.pool, pid).await {
                Ok(g) => {
                    let a = &g.attachment;
                    dwait::net::ok_line(&a.ip.to_string(), a.prefix, &a.mac.to_string(), &a.gateway.to_string())
                }
                Err(why) => {
                    tracing::warn!(instance = %ask.instance, pool = %ask.pool, pid, "container network refused: {why}");
                    dwait::net::error_line(&why.to_string())
                }
            },
            Err(why) => dwait::net::error_line(&why.to_string()),
        },
        _ => return,
    };
    let _ = write.write_all(reply.as_bytes()).await;
}
