//! The agent's side of the `dwait` protocol: hands one run to the executor inside a warm
//! container over its unix socket, copies the output frames into the run log, forwards stops as
//! signals to the run's process group (SIGTERM, SIGKILL after the grace period), and turns the
//! exit frame into an [`Outcome`]. Docker is not involved at all.

use std::io;
use std::path::Path;
use std::time::Duration;

use dwait::protocol::{self, Exit, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tug_core::protocol::{KillReason, Launch};

use super::outcome::{self, Log, Stop};
use crate::runtime::Outcome;

/// Why the executor could not be reached (the container may have died): the caller may retry
/// on a fresh container.
#[derive(Debug)]
pub struct Unreachable(pub io::Error);

/// Runs `launch` through the executor listening on `sock`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    sock: &Path,
    launch: &Launch,
    log: &mut Log,
    kill: &mut watch::Receiver<Option<KillReason>>,
    grace: Duration,
    started: &mut Option<oneshot::Sender<Option<u32>>>,
    mem: Option<u64>,
) -> Result<Outcome, Unreachable> {
    let stream = UnixStream::connect(sock).await.map_err(Unreachable)?;
    let (mut rd, mut wr) = stream.into_split();
    let req = Request {
        argv: super::spec::argv(&launch.task),
        env: super::spec::env(launch),
        workdir: launch.task.workdir.clone(),
        user: launch.task.user.clone(),
    };
    let payload = req.encode();
    let mut frame = protocol::encode_header(protocol::REQUEST, payload.len()).to_vec();
    frame.extend_from_slice(&payload);
    wr.write_all(&frame).await.map_err(Unreachable)?;

    // Frames are read by their own task so the loop below only awaits cancel-safe futures.
    let (tx, mut frames) = mpsc::channel::<io::Result<(u8, Vec<u8>)>>(64);
    let reader = tokio::spawn(async move {
        loop {
            let mut h = [0u8; 5];
            let item = match rd.read_exact(&mut h).await {
                Ok(_) => match protocol::decode_header(h) {
                    Ok((kind, len)) => {
                        let mut p = vec![0; len];
                        rd.read_exact(&mut p).await.map(|_| (kind, p))
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            let end = item.is_err();
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });

    let mut stop: Option<Stop> = None;
    let mut first = true;
    let result = loop {
        let sigkill_at = stop.filter(|s| !s.sigkilled).map(|s| s.deadline);
        tokio::select! {
            item = frames.recv() => {
                let (kind, payload) = match item {
                    Some(Ok(f)) => f,
                    Some(Err(e)) if first => break Err(Unreachable(e)),
                    Some(Err(e)) => break Ok(lost(launch, stop, &e.to_string())),
                    None => break Ok(lost(launch, stop, "connection closed")),
                };
                first = false;
                match kind {
                    protocol::STARTED => {
                        let pid = std::str::from_utf8(&payload).ok().and_then(|p| p.parse::<u32>().ok());
                        if let Some(s) = started.take() {
                            let _ = s.send(pid);
                        }
                    }
                    protocol::STDOUT | protocol::STDERR => log.write(&payload).await,
                    protocol::ERROR => break Ok(Outcome::failed_to_start(String::from_utf8_lossy(&payload).into_owned())),
                    protocol::EXIT => {
                        let exit = Exit::decode(&payload).unwrap_or_default();
                        break Ok(outcome::ended(exit.code, exit.signal, exit.oom, mem, stop, launch, grace));
                    }
                    _ => {}
                }
            }
            reason = outcome::kill_requested(kill), if stop.is_none() => {
                let first = launch.task.stop_signal_number();
                tracing::info!(?reason, signal = first, "stopping: signalling the run's process group in the container");
                let _ = send_signal(&mut wr, first).await;
                stop = Some(Stop { reason, deadline: Instant::now() + grace, sigkilled: false });
            }
            () = outcome::sleep_until_opt(sigkill_at), if sigkill_at.is_some() => {
                tracing::info!("grace period over: SIGKILL to the run's process group in the container");
                let _ = send_signal(&mut wr, 9).await;
                if let Some(s) = stop.as_mut() {
                    s.sigkilled = true;
                }
            }
        }
    };
    reader.abort();
    result
}

async fn send_signal(wr: &mut tokio::net::unix::OwnedWriteHalf, sig: i32) -> io::Result<()> {
    let p = sig.to_string();
    let mut f = protocol::encode_header(protocol::SIGNAL, p.len()).to_vec();
    f.extend_from_slice(p.as_bytes());
    wr.write_all(&f).await
}

/// The executor went away mid-run (the container died or was removed).
fn lost(launch: &Launch, stop: Option<Stop>, why: &str) -> Outcome {
    let mut o = Outcome::failed_to_start(format!("lost the run: the container's executor went away ({why})"));
    if let Some(s) = stop {
        o.state = s.reason.final_state();
        o.reason = Some(format!("{}; the container's executor went away", outcome::why_stopped(s.reason, launch)));
    }
    o
}
