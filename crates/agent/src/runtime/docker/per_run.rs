//! Per-run containers: a fresh container for each run, created with the run's command, attached
//! before it starts (so no output is missed), waited for, and removed once its output is captured.
//! Slow (Docker is on the path twice), but the filesystem is clean every time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use tokio::time::Instant;

use super::outcome::{self, Log, Stop};
use super::{ContainerError, Inner, describe, image, spec};
use crate::runtime::{Outcome, RunContext};

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
    let body = bollard::models::ContainerCreateBody {
        image: Some(d.image.clone()),
        entrypoint: d.entrypoint.clone(),
        cmd: Some(task.command.argv()),
        env: Some(spec::env(&launch).into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: task.workdir.clone(),
        user: task.user.clone(),
        labels: Some(spec::labels(&launch.job, &hash, &cfg.agent, "per-run", "per-run", None)),
        host_config: Some(spec::host_config(task, &cfg.default_network, Vec::new())),
        ..Default::default()
    };
    let name = spec::container_name(&launch.job, &spec::nonce());
    let opts = bollard::query_parameters::CreateContainerOptionsBuilder::new().name(&name).build();
    let id = match inner.docker.create_container(Some(opts), body).await {
        Ok(c) => c.id,
        Err(source) => return log.finish(Outcome::failed_to_start(ContainerError::Create { source }.to_string()), true).await,
    };
    inner.created.fetch_add(1, Ordering::Relaxed);
    let o = attach_start_wait(inner, &id, &launch, &mut log, &mut kill, grace, started).await;
    // The output is in the run log already; the container is kept `remove_delay` for operators
    // (a leftover from an agent that stopped meanwhile is removed when the next one adopts).
    let delay = cfg.remove_delay;
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
    let note = o.state != tug_core::run::RunState::Succeeded;
    log.finish(o, note).await
}

async fn attach_start_wait(
    inner: &Inner,
    id: &str,
    launch: &tug_core::protocol::Launch,
    log: &mut Log,
    kill: &mut tokio::sync::watch::Receiver<Option<tug_core::protocol::KillReason>>,
    grace: std::time::Duration,
    started: tokio::sync::oneshot::Sender<Option<u32>>,
) -> Outcome {
    let docker = &inner.docker;
    let opts = bollard::query_parameters::AttachContainerOptionsBuilder::new().stream(true).stdout(true).stderr(true).build();
    let mut output = match docker.attach_container(id, Some(opts)).await {
        Ok(a) => Some(a.output),
        Err(e) => return Outcome::failed_to_start(format!("cannot attach to the container: {}", describe(&e))),
    };
    if let Err(e) = docker.start_container(id, None).await {
        return Outcome::failed_to_start(ContainerError::Start { source: e }.to_string());
    }
    let _ = started.send(None);
    let mut wait = docker.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
    let mut stop: Option<Stop> = None;
    let mut code: Option<i64> = None;
    loop {
        let sigkill_at = stop.filter(|s| !s.sigkilled).map(|s| s.deadline);
        tokio::select! {
            chunk = async { match output.as_mut() { Some(o) => o.next().await, None => std::future::pending().await } } => match chunk {
                Some(Ok(out)) => log.write(&out.into_bytes()).await,
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
                // The attach stream ends with the container; give it a moment to deliver the rest.
                if let Some(o) = output.as_mut() {
                    let deadline = tokio::time::sleep(std::time::Duration::from_millis(250));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            () = &mut deadline => break,
                            c = o.next() => match c { Some(Ok(out)) => log.write(&out.into_bytes()).await, _ => break },
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
