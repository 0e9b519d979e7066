//! Durable process runs: each attempt runs under a shim (a supervisor process, `tug agent shim
//! <RUN_DIR>`) that lives in its own session, so the agent can stop or die without taking the
//! run with it. The shim runs the attempt with the [process runtime](super::process) and records
//! how it ended in the attempt's [`Checkpoint`].
//!
//! ```text
//! agent (ShimRuntime)                         shim                               command
//! write launch.json ──spawn──> setsid, listen for SIGTERM, write shim.json
//!                   <─"ready"─
//!                                             spawn ──────────────────────────> runs, output
//!                   <─"started <pid>"─        write shim.json with its pid        to the run log
//! on kill: write `kill`, SIGTERM ──────────>  read `kill`: stop the group ─────> SIGTERM, grace, SIGKILL
//!                   <─"done"─                 write outcome.json
//! read outcome.json
//! ```
//!
//! Lines go over the shim's stdout. Once the agent is gone, writes to the closed pipe fail with
//! EPIPE (Rust programs ignore SIGPIPE) and the shim carries on: everything that matters is in the
//! checkpoint. A later agent finds the shim through `shim.json` (pid plus start time, so a reused
//! pid is not mistaken for it) and [follows](follow) it by polling.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use jiff::Timestamp;
use nix::sys::signal::{Signal, kill as send_signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};
use tug_core::protocol::KillReason;
use tug_core::run::RunState;
use tug_logs::LogFiles;

use super::process::{finish_without_process, kill_requested, run_attempt};
use super::{Outcome, RunContext, Runtime};
use crate::checkpoint::{Checkpoint, CheckpointError, LaunchRecord, ShimRecord, process_start_time};

/// The arguments before the run directory: the shim is `tug agent shim <RUN_DIR>`.
pub const SHIM_ARGS: [&str; 2] = ["agent", "shim"];

/// How often a re-attached shim is checked for its end.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

const READY: &str = "ready";
const STARTED: &str = "started";
const DONE: &str = "done";

/// Why the shim could not supervise its run.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The checkpoint could not be read or written.
    #[error("the run's checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The shim could not listen for stop requests.
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] std::io::Error),
    /// `/proc` does not show the shim itself (not Linux, or /proc not mounted).
    #[error("cannot read this process's start time from /proc/self/stat; durable runs need Linux with /proc mounted")]
    NoStartTime,
}

/// The shim's main: supervises the attempt recorded in `run_dir` to its end. Called by `tug agent
/// shim <RUN_DIR>` (the agent starts it; it is not meant to be run by hand).
pub async fn run(run_dir: &Path) -> Result<(), ShimError> {
    // A session of its own: the agent's process group, its terminal and its end do not reach
    // the shim. Fails only for a group leader, which the agent never makes the shim.
    if let Err(e) = nix::unistd::setsid() {
        tracing::warn!(error = %e, "cannot start a new session; the run may be stopped along with the agent");
    }
    // Orphaned members of the command's process group come to the shim, which reaps them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper");
    }
    let ckpt = Checkpoint::at(run_dir);
    let record = match ckpt.read_launch().await {
        Ok(r) => r,
        Err(e) => {
            let outcome = Outcome::failed_to_start(format!("cannot start: the run's checkpoint: {e}"));
            ckpt.write_outcome(&outcome).await?;
            return Err(e.into());
        }
    };
    let mut term = signal(SignalKind::terminate()).map_err(ShimError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ShimError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(ShimError::Signals)?;
    let pid = std::process::id();
    let start_time = process_start_time(pid).ok_or(ShimError::NoStartTime)?;
    ckpt.write_shim(&ShimRecord { pid, start_time, child_pid: None }).await?;
    say(READY);

    // A stop asked for before the shim listened is in the `kill` file already.
    let (kill_tx, kill_rx) = watch::channel(ckpt.read_kill().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the stop request");
        Some(KillReason::Requested)
    }));
    let stop = |tx: &watch::Sender<Option<KillReason>>, reason: KillReason| {
        // The first reason wins, as in the agent.
        tx.send_if_modified(|cur| cur.is_none() && { *cur = Some(reason); true });
    };
    let signals = {
        let (ckpt, kill_tx) = (ckpt.clone(), kill_tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    // No terminal to hang up on; ignored rather than fatal.
                    _ = hup.recv() => continue,
                }
                // The agent writes why before it signals; a signal from elsewhere is a shutdown.
                let reason = ckpt.read_kill().await.ok().flatten().unwrap_or(KillReason::Shutdown);
                stop(&kill_tx, reason);
            }
        })
    };
    // The timeout holds even while no agent is watching.
    let timer = record.time_left(Timestamp::now()).map(|left| {
        let kill_tx = kill_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(left).await;
            stop(&kill_tx, KillReason::Timeout);
        })
    });

    let (started_tx, started_rx) = oneshot::channel();
    let reporter = {
        let ckpt = ckpt.clone();
        tokio::spawn(async move {
            if let Ok(child_pid) = started_rx.await {
                let record = ShimRecord { pid, start_time, child_pid };
                if let Err(e) = ckpt.write_shim(&record).await {
                    tracing::warn!(error = %e, "cannot record the command's pid");
                }
                say(&format!("{STARTED} {}", child_pid.unwrap_or_default()));
            }
        })
    };
    let ctx = RunContext {
        logs: LogFiles::new(&record.log_dir),
        log_limit: record.log_limit,
        grace: record.grace,
        launch: record.launch,
        kill: kill_rx,
        started: started_tx,
    };
    let (outcome, tail) = run_attempt(ctx).await;
    // "started" before "done", always.
    let _ = reporter.await;
    signals.abort();
    if let Some(timer) = timer {
        timer.abort();
    }
    ckpt.write_outcome(&outcome).await?;
    say(DONE);
    // Background processes of the command may still write to the log; the shim copies until
    // they close their output, as the agent would.
    if let Some(tail) = tail {
        let _ = tail.await;
    }
    Ok(())
}

/// Writes one line to the agent. Failures are fine: the agent may be gone.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Runs process tasks under a shim, each with a checkpoint under `dir` (the agent's
/// [`crate::Durability::dir`], so that the agent finds them again after a restart).
#[derive(Debug, Clone)]
pub struct ShimRuntime {
    dir: PathBuf,
    shim: PathBuf,
}

impl ShimRuntime {
    /// A runtime that keeps checkpoints in `durability.dir` and starts `durability.shim`.
    pub fn new(durability: &crate::Durability) -> ShimRuntime {
        ShimRuntime { dir: durability.dir.clone(), shim: durability.shim.clone() }
    }
}

#[async_trait::async_trait]
impl Runtime for ShimRuntime {
    fn name(&self) -> &'static str {
        "shim"
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let RunContext { launch, logs, log_limit, mut kill, grace, started } = ctx;
        let ckpt = Checkpoint::new(&self.dir, launch.run_id, launch.attempt);
        let (run_id, attempt) = (launch.run_id, launch.attempt);
        let record =
            LaunchRecord { launch, log_dir: logs.dir().to_path_buf(), log_limit, grace, launched_at: Timestamp::now() };
        if let Err(e) = ckpt.write_launch(&record).await {
            let reason = format!("cannot start: cannot write the run's checkpoint ({e}); check that the agent's data dir is writable");
            return fail(&ckpt, &logs, run_id, log_limit, Outcome::failed_to_start(reason)).await;
        }
        let mut shim_log = tokio::fs::OpenOptions::new();
        shim_log.write(true).create(true).truncate(true).mode(0o600);
        let stderr = match shim_log.open(ckpt.shim_log()).await {
            Ok(f) => Stdio::from(f.into_std().await),
            Err(e) => {
                tracing::warn!(run = run_id, error = %e, "cannot create the shim's log; its diagnostics are discarded");
                Stdio::null()
            }
        };
        let mut child = match Command::new(&self.shim)
            .args(SHIM_ARGS)
            .arg(ckpt.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let reason = format!(
                    "cannot start the run's supervisor {}: {e}; check the agent's shim setting",
                    self.shim.display()
                );
                return fail(&ckpt, &logs, run_id, log_limit, Outcome::failed_to_start(reason)).await;
            }
        };
        let shim_pid = child.id().and_then(|p| i32::try_from(p).ok()).map(Pid::from_raw);
        let mut lines = child.stdout.take().map(|s| BufReader::new(s).lines());
        let mut started = Some(started);
        let (mut ready, mut asked, mut signalled, mut done) = (false, None, false, false);
        let exit = loop {
            if ready && !signalled && asked.is_some() {
                signalled = true;
                if let Some(pid) = shim_pid {
                    let _ = send_signal(pid, Signal::SIGTERM);
                }
            }
            tokio::select! {
                line = async { lines.as_mut().expect("guarded").next_line().await }, if lines.is_some() => match line {
                    Ok(Some(line)) => {
                        let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                        match word {
                            READY => ready = true,
                            STARTED => {
                                if let Some(tx) = started.take() {
                                    let _ = tx.send(rest.parse().ok().filter(|p| *p != 0));
                                }
                            }
                            DONE => {
                                done = true;
                                break None;
                            }
                            _ => tracing::debug!(run = run_id, line, "unexpected line from the shim"),
                        }
                    }
                    Ok(None) | Err(_) => lines = None,
                },
                reason = kill_requested(&mut kill), if asked.is_none() => {
                    asked = Some(reason);
                    if let Err(e) = ckpt.write_kill(reason).await {
                        tracing::warn!(run = run_id, error = %e, "cannot record the stop request; the shim stops the run as a shutdown");
                    }
                }
                status = child.wait(), if lines.is_none() => break Some(status),
            }
        };
        // After "done" the shim may linger, copying output of the command's background
        // processes; tokio reaps it when it exits.
        match ckpt.read_outcome().await {
            Ok(Some(outcome)) => outcome,
            other => {
                let status = match exit {
                    Some(Ok(s)) => s.to_string(),
                    Some(Err(e)) => format!("an unknown status ({e})"),
                    None => "an unknown status".into(),
                };
                let why = match other {
                    Err(e) => format!(": {e}"),
                    Ok(_) if done => ": outcome.json is missing".into(),
                    Ok(_) => String::new(),
                };
                let reason = format!(
                    "the run's supervisor ended with {status} without recording how the run ended{why}; see {}",
                    ckpt.shim_log().display()
                );
                let outcome = Outcome {
                    state: asked.map_or(RunState::Failed, KillReason::final_state),
                    exit_code: None,
                    signal: None,
                    reason: Some(reason),
                };
                if let Err(e) = ckpt.write_outcome(&outcome).await {
                    tracing::warn!(run = run_id, attempt, error = %e, "cannot record the outcome");
                }
                outcome
            }
        }
    }
}

/// An attempt that ended before its shim could run: the reason goes to the run log and the
/// checkpoint (so a restarted agent reports the same).
async fn fail(ckpt: &Checkpoint, logs: &LogFiles, run_id: tug_core::run::RunId, log_limit: u64, outcome: Outcome) -> Outcome {
    if let Err(e) = ckpt.write_outcome(&outcome).await {
        tracing::debug!(run = run_id, error = %e, "cannot record the outcome in the checkpoint");
    }
    let log = logs.writer(run_id, log_limit).await.ok();
    finish_without_process(log, outcome).await
}

/// Follows a shim started by an earlier agent until the attempt ends; `kill` stops it as for a
/// fresh run. A shim that is gone without recording an outcome makes the attempt
/// [lost](RunState::Lost).
pub async fn follow(ckpt: Checkpoint, shim: ShimRecord, mut kill: watch::Receiver<Option<KillReason>>) -> Outcome {
    let mut asked = false;
    let mut tick = tokio::time::interval(FOLLOW_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            reason = kill_requested(&mut kill), if !asked => {
                asked = true;
                if let Err(e) = ckpt.write_kill(reason).await {
                    tracing::warn!(error = %e, "cannot record the stop request; the shim stops the run as a shutdown");
                }
                if shim.is_alive()
                    && let Ok(pid) = i32::try_from(shim.pid)
                {
                    let _ = send_signal(Pid::from_raw(pid), Signal::SIGTERM);
                }
            }
        }
        match ckpt.read_outcome().await {
            Ok(Some(outcome)) => return outcome,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the run's outcome"),
        }
        if !shim.is_alive() {
            // It may have written its outcome just before it exited.
            if let Ok(Some(outcome)) = ckpt.read_outcome().await {
                return outcome;
            }
            let outcome = lost(format!(
                "the run's supervisor (pid {}) ended without recording how the run ended; its exit status is unknown",
                shim.pid
            ));
            if let Err(e) = ckpt.write_outcome(&outcome).await {
                tracing::warn!(error = %e, "cannot record the outcome");
            }
            return outcome;
        }
    }
}

/// An attempt whose end nobody saw.
pub fn lost(reason: impl Into<String>) -> Outcome {
    Outcome { state: RunState::Lost, exit_code: None, signal: None, reason: Some(reason.into()) }
}
