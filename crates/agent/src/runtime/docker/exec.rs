//! Runs through the Docker exec API: the fallback when no static dwait is available, and the
//! benchmark's middle baseline. Docker is on the per-run path (create, start, inspect).

use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::StreamExt;
use nix::sys::signal::{Signal, kill as send_kill};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tug_core::protocol::{KillReason, Launch};

use super::outcome::{self, Log, Stop};
use super::{Inner, describe, spec};
use crate::runtime::Outcome;

/// Runs `launch` in container `id` through `docker exec`. Stops signal the exec'd process by its
/// host pid (the agent shares the host's pid namespace with dockerd's children).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    inner: &Inner,
    id: &str,
    launch: &Launch,
    log: &mut Log,
    kill: &mut watch::Receiver<Option<KillReason>>,
    grace: Duration,
    started: &mut Option<oneshot::Sender<Option<u32>>>,
    mem: Option<u64>,
) -> Outcome {
    let docker = &inner.docker;
    log.line("(run through docker exec: no in-container executor)").await;
    let opts = CreateExecOptions::<String> {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(spec::argv(&launch.task)),
        env: Some(spec::env(launch).into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: launch.task.workdir.clone(),
        user: launch.task.user.clone(),
        ..Default::default()
    };
    let exec = match docker.create_exec(id, opts).await {
        Ok(e) => e.id,
        Err(e) => return Outcome::failed_to_start(format!("cannot create the exec: {}", describe(&e))),
    };
    let mut output = match docker.start_exec(&exec, None).await {
        Ok(StartExecResults::Attached { output, .. }) => output,
        Ok(StartExecResults::Detached) => return Outcome::failed_to_start("docker started the exec detached"),
        Err(e) => return Outcome::failed_to_start(format!("cannot start the exec: {}", describe(&e))),
    };
    if let Some(s) = started.take() {
        let _ = s.send(None);
    }
    let mut stop: Option<Stop> = None;
    loop {
        let sigkill_at = stop.filter(|s| !s.sigkilled).map(|s| s.deadline);
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(out)) => log.write(&out.into_bytes()).await,
                _ => break,
            },
            reason = outcome::kill_requested(kill), if stop.is_none() => {
                let first = Signal::try_from(launch.task.stop_signal_number()).unwrap_or(Signal::SIGTERM);
                signal_exec(inner, &exec, first).await;
                stop = Some(Stop { reason, deadline: Instant::now() + grace, sigkilled: false });
            }
            () = outcome::sleep_until_opt(sigkill_at), if sigkill_at.is_some() => {
                signal_exec(inner, &exec, Signal::SIGKILL).await;
                if let Some(s) = stop.as_mut() { s.sigkilled = true; }
            }
        }
    }
    let code = match docker.inspect_exec(&exec).await {
        Ok(i) => i.exit_code,
        Err(e) => return Outcome::failed_to_start(format!("cannot inspect the exec: {}", describe(&e))),
    };
    let code = code.unwrap_or(-1);
    let (c, sig) = if code > 128 && code < 160 { (None, Some((code - 128) as i32)) } else { (Some(code as i32), None) };
    outcome::ended(c, sig, false, mem, stop, launch, grace)
}

async fn signal_exec(inner: &Inner, exec: &str, sig: Signal) {
    if let Ok(i) = inner.docker.inspect_exec(exec).await
        && let Some(pid) = i.pid.filter(|p| *p > 0)
    {
        let _ = send_kill(Pid::from_raw(pid as i32), sig);
    }
}
