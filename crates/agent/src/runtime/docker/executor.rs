//! The agent's side of the `dwait` protocol: hands one run to the executor inside a warm
//! container over its unix socket, copies the output frames into the run log, forwards stops as
//! signals to the run's process group (SIGTERM, SIGKILL after the grace period), and turns the
//! exit frame into an [`Outcome`]. Docker is not involved at all. A durable agent's runs are
//! detachable: they outlive the agent, and the next agent [attaches](attach) to them again.

use std::io;
use std::path::Path;
use std::time::Duration;

use dwait::protocol::{self, Attach, Exit, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tug_core::protocol::{KillReason, Launch};

use super::outcome::{self, Log, Stop};
use crate::checkpoint::Checkpoint;
use crate::runtime::Outcome;

/// Why the executor could not be reached (the container may have died): the caller may retry
/// on a fresh container.
#[derive(Debug)]
pub struct Unreachable(pub io::Error);

/// A detachable run (see [`dwait::protocol`]): it outlives the agent's connection, and a restarted
/// agent attaches to it again. Its outcome goes into its checkpoint before dwait is told DONE.
pub struct Detach<'a> {
    /// The attempt's checkpoint.
    pub ckpt: &'a Checkpoint,
    /// Its key in the container.
    pub key: String,
    /// How much of its latest output dwait keeps while no agent is attached.
    pub buffer: u64,
}

/// Everything a run needs on the agent's side of the connection.
pub struct Follow<'a> {
    pub launch: &'a Launch,
    pub log: &'a mut Log,
    pub kill: &'a mut watch::Receiver<Option<KillReason>>,
    pub grace: Duration,
    pub started: &'a mut Option<oneshot::Sender<Option<u32>>>,
    pub mem: Option<u64>,
}

/// Runs `launch` through the executor listening on `sock` (detachable with `detach`).
pub async fn run(sock: &Path, f: Follow<'_>, detach: Option<&Detach<'_>>) -> Result<Outcome, Unreachable> {
    let stream = UnixStream::connect(sock).await.map_err(Unreachable)?;
    let (rd, mut wr) = stream.into_split();
    let req = Request {
        argv: super::spec::argv(&f.launch.task),
        env: super::spec::env(f.launch),
        workdir: f.launch.task.workdir.clone(),
        user: f.launch.task.user.clone(),
        key: detach.map(|d| d.key.clone()),
        buffer: detach.map(|d| d.buffer),
    };
    write_frame(&mut wr, protocol::REQUEST, &req.encode()).await.map_err(Unreachable)?;
    follow(rd, wr, f, detach.map(|d| d.ckpt), false).await
}

/// Attaches again to the detachable run `key` through the executor on `sock`, after an agent
/// restart: the output the log lacks (from its current length on), then the rest of the run.
/// `log_offset` is where this attempt's output starts in the run log (earlier attempts' output
/// comes first).
pub async fn attach(sock: &Path, key: &str, log_offset: u64, f: Follow<'_>, ckpt: &Checkpoint) -> Result<Outcome, Unreachable> {
    let stream = UnixStream::connect(sock).await.map_err(Unreachable)?;
    let (rd, mut wr) = stream.into_split();
    let from = f.log.len().saturating_sub(log_offset);
    let a = Attach { key: key.to_owned(), from };
    write_frame(&mut wr, protocol::ATTACH, &a.encode()).await.map_err(Unreachable)?;
    follow(rd, wr, f, Some(ckpt), true).await
}

/// Follows a run's frames to its end. With a checkpoint, the outcome is recorded there, and then
/// dwait hears DONE.
async fn follow(
    mut rd: tokio::net::unix::OwnedReadHalf,
    mut wr: tokio::net::unix::OwnedWriteHalf,
    f: Follow<'_>,
    ckpt: Option<&Checkpoint>,
    attaching: bool,
) -> Result<Outcome, Unreachable> {
    let Follow { launch, log, kill, grace, started, mem } = f;
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
    let mut exited = false;
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
                    protocol::ERROR if attaching => {
                        let why = String::from_utf8_lossy(&payload);
                        break Ok(crate::runtime::shim::lost(format!("the agent restarted and cannot re-attach to the run: {why}")));
                    }
                    protocol::ERROR => break Ok(Outcome::failed_to_start(String::from_utf8_lossy(&payload).into_owned())),
                    protocol::EXIT => {
                        let exit = Exit::decode(&payload).unwrap_or_else(|e| {
                            tracing::warn!(run = launch.run_id, error = %e, "the executor's exit frame is unreadable; its exit status is unknown");
                            Exit::default()
                        });
                        exited = true;
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
    if let (Ok(o), Some(ckpt)) = (&result, ckpt) {
        if let Err(e) = ckpt.write_outcome(o).await {
            tracing::warn!(error = %e, "cannot record the run's outcome in its checkpoint");
        } else if exited {
            // Recorded: dwait may forget the run.
            let _ = write_frame(&mut wr, protocol::DONE, b"").await;
        }
    }
    result
}

async fn write_frame(wr: &mut tokio::net::unix::OwnedWriteHalf, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut frame = protocol::encode_header(kind, payload.len()).to_vec();
    frame.extend_from_slice(payload);
    wr.write_all(&frame).await
}

async fn send_signal(wr: &mut tokio::net::unix::OwnedWriteHalf, sig: i32) -> io::Result<()> {
    write_frame(wr, protocol::SIGNAL, sig.to_string().as_bytes()).await
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
