//! Per-run containers: a fresh container for each run, created with the run's command, attached
//! before it starts (so no output is missed), waited for, and removed once its output is captured.
//! Slow (Docker is on the path twice), but the filesystem is clean every time.
//!
//! A durable agent checkpoints the run before its container is created (`container.json`: the
//! container's name and where the run's output starts in the run log) and labels the container
//! with the attempt (`tugboat.run`). An agent that stops leaves the container running; the next
//! one keeps it when it adopts its containers, finds it by its labels and follows it to its end:
//!
//! ```text
//! the container is   the next agent
//! created            starts it, as the first agent would have (nothing ran yet)
//! running, exited    reads `docker logs --follow` from the start, skipping what the run log
//!                    already holds, and `docker wait`s for the real exit status
//! gone               reports the run lost: its exit status is unknown
//! ```

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tug_core::protocol::{KillReason, Launch};

use super::outcome::{self, Log, Stop};
use super::spec::label;
use super::{ContainerError, Inner, describe, image, spec};
use crate::checkpoint::{Checkpoint, ContainerRecord, LaunchRecord};
use crate::runtime::{Outcome, RunContext};

/// How long the rest of the output may take once the container has exited: the attach stream
/// delivers it at once; `docker logs` of a long run may take longer.
const ATTACH_DRAIN: Duration = Duration::from_millis(250);
const LOGS_DRAIN: Duration = Duration::from_secs(5);

/// Runs one attempt in a container of its own.
pub async fn run(inner: &Arc<Inner>, ctx: RunContext) -> Outcome {
    let RunContext { launch, logs, log_limit, mut kill, grace, started } = ctx;
    let mut log = Log::open(&logs, launch.run_id, log_limit).await;
    let early = *kill.borrow();
    if let Some(reason) = early {
        let o = Outcome { state: reason.final_state(), exit_code: None, signal: None, reason: Some(format!("{} before it started", outcome::why_stopped(reason, &launch))) };
        return log.finish(o, true).await;
    }
    let Some(d) = launch.task.docker.as_ref() else {
        return log.finish(Outcome::failed_to_start(format!("cannot start: {}", ContainerError::NoImage)), true).await;
    };
    if let Err(e) = image::ensure(&inner.docker, &d.image, d.pull).await {
        return log.finish(Outcome::failed_to_start(e.to_string()), true).await;
    }
    let cfg = &inner.config;
    let task = &launch.task;
    let hash = spec::spec_hash(task, &cfg.default_network);
    let name = spec::container_name(&launch.job, &spec::nonce());
    let mut labels = spec::labels(&launch.job, &hash, &cfg.agent, "per-run", "per-run", None);
    // Checkpointed before the container exists, so that no container of a durable agent's run
    // is ever unaccounted for.
    let ckpt = match &cfg.checkpoints {
        Some(dir) => checkpoint(dir, &launch, &logs, log_limit, grace, &name, log.len()).await,
        None => None,
    };
    if ckpt.is_some()
        && let Some(dir) = &cfg.checkpoints
    {
        labels.insert(label::RUN.into(), run_key(&launch));
        labels.insert(label::CHECKPOINTS.into(), dir.display().to_string());
    }
    let body = bollard::models::ContainerCreateBody {
        image: Some(d.image.clone()),
        entrypoint: d.entrypoint.clone(),
        cmd: Some(task.command.argv()),
        env: Some(spec::env(&launch).into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: task.workdir.clone(),
        user: task.user.clone(),
        labels: Some(labels),
        host_config: Some(spec::host_config(task, &cfg.default_network, Vec::new())),
        ..Default::default()
    };
    let opts = bollard::query_parameters::CreateContainerOptionsBuilder::new().name(&name).build();
    let (o, id) = match inner.docker.create_container(Some(opts), body).await {
        Ok(c) => {
            inner.created.fetch_add(1, Ordering::Relaxed);
            (attach_start_wait(inner, &c.id, &launch, &mut log, &mut kill, grace, started).await, Some(c.id))
        }
        Err(source) => (Outcome::failed_to_start(ContainerError::Create { source }.to_string()), None),
    };
    end(inner, ckpt.as_ref(), id, o, log).await
}

/// Follows a per-run container an earlier agent started (see the module's table).
pub async fn reattach(inner: &Arc<Inner>, ctx: RunContext, ckpt: Checkpoint, record: ContainerRecord) -> Outcome {
    let RunContext { launch, logs, log_limit, mut kill, grace, started } = ctx;
    let mut log = Log::open(&logs, launch.run_id, log_limit).await;
    let name = &record.container;
    let (o, id) = match find(inner, &run_key(&launch)).await {
        Ok(Some((id, state))) if state == "created" => {
            tracing::info!(container = %name, "the run's container was never started; starting it now");
            (attach_start_wait(inner, &id, &launch, &mut log, &mut kill, grace, started).await, Some(id))
        }
        Ok(Some((id, state))) => {
            tracing::info!(container = %name, state, "re-attached to the run's container");
            let skip = log.len().saturating_sub(record.log_offset);
            let _ = started.send(None);
            let opts = bollard::query_parameters::LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).build();
            let output = inner.docker.logs(&id, Some(opts)).boxed();
            (follow(inner, &id, &launch, &mut log, &mut kill, grace, output, skip, LOGS_DRAIN).await, Some(id))
        }
        Ok(None) => (crate::runtime::shim::lost(format!("the agent restarted and the run's container {name} is gone; its exit status is unknown")), None),
        Err(e) => (
            crate::runtime::shim::lost(format!(
                "the agent restarted and cannot ask Docker for the run's container {name} ({}); its exit status is unknown",
                describe(&e)
            )),
            None,
        ),
    };
    end(inner, Some(&ckpt), id, o, log).await
}

/// `RUN-ATTEMPT`: the attempt's checkpoint name, and its container's `tugboat.run` label.
fn run_key(launch: &Launch) -> String {
    format!("{}-{}", launch.run_id, launch.attempt)
}

/// Records a per-run container's checkpoint; `None` (the run is then not detachable, and ends
/// with the agent) when it cannot be written.
async fn checkpoint(dir: &Path, launch: &Launch, logs: &tug_logs::LogFiles, log_limit: u64, grace: Duration, name: &str, log_offset: u64) -> Option<Checkpoint> {
    let ckpt = Checkpoint::new(dir, launch.run_id, launch.attempt);
    let record = LaunchRecord { launch: launch.clone(), log_dir: logs.dir().to_path_buf(), log_limit, grace, launched_at: jiff::Timestamp::now() };
    let written = match ckpt.write_launch(&record).await {
        Ok(()) => ckpt.write_container(&ContainerRecord { container: name.to_owned(), log_offset }).await,
        Err(e) => Err(e),
    };
    match written {
        Ok(()) => Some(ckpt),
        Err(e) => {
            tracing::warn!(error = %e, "cannot write the run's checkpoint; it ends with the agent");
            None
        }
    }
}

/// This agent's container of the attempt `key` (checkpointed in this agent's directory): its id
/// and state.
async fn find(inner: &Inner, key: &str) -> Result<Option<(String, String)>, bollard::errors::Error> {
    let cfg = &inner.config;
    let mut want = vec![format!("{}={}", label::AGENT, cfg.agent), format!("{}={key}", label::RUN)];
    if let Some(dir) = &cfg.checkpoints {
        want.push(format!("{}={}", label::CHECKPOINTS, dir.display()));
    }
    let filters = std::collections::HashMap::from([("label".to_string(), want)]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let list = inner.docker.list_containers(Some(opts)).await?;
    Ok(list.into_iter().find_map(|c| Some((c.id?, c.state.map(|s| s.to_string()).unwrap_or_default()))))
}

/// Records the outcome in the checkpoint (before the container goes: a restart in between then
/// still has it), removes the container after `remove_delay`, and closes the log.
async fn end(inner: &Arc<Inner>, ckpt: Option<&Checkpoint>, id: Option<String>, o: Outcome, log: Log) -> Outcome {
    if let Some(ckpt) = ckpt
        && let Err(e) = ckpt.write_outcome(&o).await
    {
        tracing::warn!(error = %e, "cannot record the run's outcome in its checkpoint");
    }
    if let Some(id) = id {
        // The output is in the run log already; the container is kept `remove_delay` for
        // operators (a leftover from an agent that stopped meanwhile is removed when the next one
        // adopts).
        let delay = inner.config.remove_delay;
        let inner2 = inner.clone();
        let remove = async move {
            tokio::time::sleep(delay).await;
            let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
            if let Err(e) = inner2.docker.remove_container(&id, Some(opts)).await {
                tracing::warn!(container = %id, error = %describe(&e), "cannot remove a per-run container");
            }
        };
        if delay.is_zero() {
            remove.await;
        } else {
            tokio::spawn(remove);
        }
    }
    let note = o.state != tug_core::run::RunState::Succeeded;
    log.finish(o, note).await
}

/// Attaches to a created container (so no output is missed), starts it and follows it.
async fn attach_start_wait(
    inner: &Inner,
    id: &str,
    launch: &Launch,
    log: &mut Log,
    kill: &mut watch::Receiver<Option<KillReason>>,
    grace: Duration,
    started: oneshot::Sender<Option<u32>>,
) -> Outcome {
    let docker = &inner.docker;
    let opts = bollard::query_parameters::AttachContainerOptionsBuilder::new().stream(true).stdout(true).stderr(true).build();
    let output = match docker.attach_container(id, Some(opts)).await {
        Ok(a) => a.output,
        Err(e) => return Outcome::failed_to_start(format!("cannot attach to the container: {}", describe(&e))),
    };
    if let Err(e) = docker.start_container(id, None).await {
        return Outcome::failed_to_start(ContainerError::Start { source: e }.to_string());
    }
    let _ = started.send(None);
    follow(inner, id, launch, log, kill, grace, output, 0, ATTACH_DRAIN).await
}

/// Copies a started container's `output` into the log (less its first `skip` bytes, which the
/// log holds already), stops it on a kill (SIGTERM, SIGKILL after `grace`), and waits for its
/// exit status; the rest of the output may take `drain` after the exit.
#[allow(clippy::too_many_arguments)]
async fn follow(
    inner: &Inner,
    id: &str,
    launch: &Launch,
    log: &mut Log,
    kill: &mut watch::Receiver<Option<KillReason>>,
    grace: Duration,
    output: BoxStream<'static, Result<bollard::container::LogOutput, bollard::errors::Error>>,
    mut skip: u64,
    drain: Duration,
) -> Outcome {
    let docker = &inner.docker;
    let mut output = Some(output);
    let mut wait = docker.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
    let mut stop: Option<Stop> = None;
    let mut code: Option<i64> = None;
    loop {
        let sigkill_at = stop.filter(|s| !s.sigkilled).map(|s| s.deadline);
        tokio::select! {
            chunk = async { match output.as_mut() { Some(o) => o.next().await, None => std::future::pending().await } } => match chunk {
                Some(Ok(out)) => write_after(log, &out.into_bytes(), &mut skip).await,
                Some(Err(_)) | None => {
                    output = None;
                    if code.is_some() { break; }
                }
            },
            w = wait.next(), if code.is_none() => {
                code = Some(match w {
                    Some(Ok(r)) => r.status_code,
                    Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                    Some(Err(e)) => return Outcome::failed_to_start(format!("lost the container: {}", describe(&e))),
                    None => -1,
                });
                if output.is_none() { break; }
                // The output stream ends with the container; give it a moment to deliver the rest.
                if let Some(o) = output.as_mut() {
                    let deadline = tokio::time::sleep(drain);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            () = &mut deadline => break,
                            c = o.next() => match c { Some(Ok(out)) => write_after(log, &out.into_bytes(), &mut skip).await, _ => break },
                        }
                    }
                }
                break;
            }
            reason = outcome::kill_requested(kill), if stop.is_none() => {
                let _ = docker.kill_container(id, Some(bollard::query_parameters::KillContainerOptionsBuilder::new().signal("SIGTERM").build())).await;
                stop = Some(Stop { reason, deadline: Instant::now() + grace, sigkilled: false });
            }
            () = outcome::sleep_until_opt(sigkill_at), if sigkill_at.is_some() => {
                let _ = docker.kill_container(id, Some(bollard::query_parameters::KillContainerOptionsBuilder::new().signal("SIGKILL").build())).await;
                if let Some(s) = stop.as_mut() { s.sigkilled = true; }
            }
        }
    }
    let code = code.unwrap_or(-1);
    let oom = code == 137
        && docker.inspect_container(id, None).await.ok().and_then(|c| c.state).and_then(|s| s.oom_killed).unwrap_or(false);
    // Docker reports a signal death as 128 + signal.
    let (c, sig) = if code > 128 && code < 160 { (None, Some((code - 128) as i32)) } else { (Some(code as i32), None) };
    outcome::ended(c, sig, oom, launch.task.resources.mem.map(|m| m.0), stop, launch, grace)
}

/// Appends `bytes` to the log, less what is left of the first `skip` bytes of the output.
async fn write_after(log: &mut Log, bytes: &[u8], skip: &mut u64) {
    let n = (*skip).min(bytes.len() as u64) as usize;
    *skip -= n as u64;
    if n < bytes.len() {
        log.write(&bytes[n..]).await;
    }
}
