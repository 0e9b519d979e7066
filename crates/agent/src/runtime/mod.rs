//! Runtimes: how an agent turns a [`Launch`] into a running process. `process` forks a child in
//! its own process group; `shim` does the same under a supervisor that outlives the agent (durable
//! agents); `docker` runs it in a container (see [`docker`]); `noop` finishes at once (for
//! benchmarks); [`Dispatch`] routes each launch by its task's runtime kind.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tug_core::protocol::{KillReason, Launch};
use tug_core::run::RunState;
use tug_logs::LogFiles;

use crate::checkpoint::{Checkpoint, Detached};

pub mod docker;
mod ending;
pub mod noop;
pub mod process;
pub mod shim;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// succeeded, failed, killed or timed_out.
    pub state: RunState,
    /// The process's exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// In words: "exit code 3", "killed by SIGKILL after timeout 5s", "cannot start: ...".
    pub reason: Option<String>,
}

impl Outcome {
    /// An attempt that never started.
    pub fn failed_to_start(reason: impl Into<String>) -> Outcome {
        Outcome { state: RunState::Failed, exit_code: None, signal: None, reason: Some(reason.into()) }
    }
}

/// Everything a runtime gets for one attempt.
pub struct RunContext {
    /// What to run.
    pub launch: Launch,
    /// Where the run's log goes (`logs.writer(launch.run_id, log_limit)`).
    pub logs: LogFiles,
    /// The most bytes of output kept per run.
    pub log_limit: u64,
    /// Becomes `Some(reason)` when the attempt must stop (kill, timeout, replace, shutdown).
    pub kill: watch::Receiver<Option<KillReason>>,
    /// Time between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Send the process id once it has started (a runtime without pids sends `None`).
    pub started: oneshot::Sender<Option<u32>>,
}

/// A way of running tasks.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// A short name for logs ("process", "noop").
    fn name(&self) -> &'static str;
    /// Runs one attempt to the end: starts it, reports the start through `ctx.started`, captures
    /// its output to the log, stops the whole process group when `ctx.kill` fires, reaps it, and
    /// says how it ended. Never panics on a bad command; that is an `Outcome` with state `failed`.
    async fn run(&self, ctx: RunContext) -> Outcome;
    /// Gets ready for a run of `job` that fires soon (docker: creates its warm container now,
    /// so even the first run is warm). Runtimes with nothing to prepare do nothing.
    async fn prewarm(&self, job: &str, task: &tug_core::protocol::Task) -> Result<(), RuntimeError> {
        let _ = (job, task);
        Ok(())
    }
    /// Warm containers it holds now (runtimes without containers: 0).
    fn warm_containers(&self) -> usize {
        0
    }
    /// The address `job`'s running instance is reached at from this host (a container's on its
    /// docker network, or from its pool), for health checks; `None`: this host's own (processes,
    /// host-network containers).
    async fn address(&self, job: &str, task: &tug_core::protocol::Task) -> Option<std::net::IpAddr> {
        let _ = (job, task);
        None
    }
    /// Follows an attempt an earlier agent left in a container ([`Detached`]: handed to a warm
    /// container's executor, or in a container of its own) to its end, as [`Runtime::run`] would
    /// have; records the outcome in `ckpt`. Runtimes without containers report it lost.
    async fn reattach(&self, ctx: RunContext, ckpt: Checkpoint, detached: Detached) -> Outcome {
        let _ = (ctx, detached);
        let o = shim::lost("the agent restarted without a docker runtime to re-attach the run with");
        if let Err(e) = ckpt.write_outcome(&o).await {
            tracing::warn!(error = %e, "cannot record the run's outcome in its checkpoint");
        }
        o
    }
}

/// A shared runtime.
pub type SharedRuntime = Arc<dyn Runtime>;

/// Why a runtime could not get ready for a job ([`Runtime::prewarm`]).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Docker cannot be used on this agent now.
    #[error("the docker runtime is unavailable: {0}")]
    DockerUnavailable(#[source] Arc<docker::DockerError>),
    /// The job's container or image could not be made ready.
    #[error(transparent)]
    Container(#[from] docker::ContainerError),
}

/// Routes each launch to the runtime its task names: `process` or `docker`. When Docker is not
/// available, docker runs fail with the reason instead of taking the agent down.
pub struct Dispatch {
    process: SharedRuntime,
    docker: Result<SharedRuntime, Arc<docker::DockerError>>,
}

impl Dispatch {
    /// A dispatcher over `process` and `docker` (or why docker is unavailable).
    pub fn new(process: SharedRuntime, docker: Result<SharedRuntime, docker::DockerError>) -> Dispatch {
        Dispatch { process, docker: docker.map_err(Arc::new) }
    }
}

#[async_trait::async_trait]
impl Runtime for Dispatch {
    fn name(&self) -> &'static str {
        "dispatch"
    }

    fn warm_containers(&self) -> usize {
        self.docker.as_ref().map_or(0, |d| d.warm_containers())
    }

    async fn prewarm(&self, job: &str, task: &tug_core::protocol::Task) -> Result<(), RuntimeError> {
        match (task.runtime, &self.docker) {
            (tug_core::job::RuntimeKind::Process, _) => self.process.prewarm(job, task).await,
            (tug_core::job::RuntimeKind::Docker, Ok(docker)) => docker.prewarm(job, task).await,
            (tug_core::job::RuntimeKind::Docker, Err(why)) => Err(RuntimeError::DockerUnavailable(why.clone())),
        }
    }

    async fn address(&self, job: &str, task: &tug_core::protocol::Task) -> Option<std::net::IpAddr> {
        match (task.runtime, &self.docker) {
            (tug_core::job::RuntimeKind::Docker, Ok(docker)) => docker.address(job, task).await,
            _ => None,
        }
    }

    async fn reattach(&self, ctx: RunContext, ckpt: Checkpoint, detached: Detached) -> Outcome {
        match &self.docker {
            Ok(docker) => docker.reattach(ctx, ckpt, detached).await,
            Err(_) => self.process.reattach(ctx, ckpt, detached).await,
        }
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        match (ctx.launch.task.runtime, &self.docker) {
            (tug_core::job::RuntimeKind::Process, _) => self.process.run(ctx).await,
            (tug_core::job::RuntimeKind::Docker, Ok(docker)) => docker.run(ctx).await,
            (tug_core::job::RuntimeKind::Docker, Err(why)) => {
                let why = RuntimeError::DockerUnavailable(why.clone());
                let outcome = Outcome::failed_to_start(format!("cannot start: {why}"));
                if let Ok(mut log) = ctx.logs.writer(ctx.launch.run_id, ctx.log_limit).await {
                    let _ = log.line(outcome.reason.as_deref().unwrap_or_default()).await;
                    let _ = log.finish().await;
                }
                outcome
            }
        }
    }
}
