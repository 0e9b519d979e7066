//! The docker runtime: runs a job's command inside a container.
//!
//! ```text
//!            warm (default)                              per-run
//! launch ─> pool: the job's warm container ─┐        launch ─> create ─> attach ─> start
//!           (create / replace / recycle)    │                  ─> wait ─> remove
//!                  │                         │        (a durable agent's runs are checkpointed;
//!                  │                         │         the next agent finds the container by its
//!                  │                         │         labels and follows it: logs + wait)
//!                  ├─ executor: dwait (PID 1) over a unix socket  ← Docker is not on this path
//!                  │            (a durable agent's runs are checkpointed and outlive it)
//!                  └─ exec: Docker exec API (fallback when no static dwait is available)
//! ```
//!
//! - [`pool`]: one warm container per job; spec-hash replacement, `max_runs`/`max_age`
//!   recycling, idle removal, adoption of existing containers when the agent restarts.
//! - [`executor`]: the agent's side of the dwait protocol.
//! - [`exec`]: runs through `docker exec`.
//! - [`per_run`]: a fresh container per run.
//! - [`image`], [`spec`], [`outcome`]: pull policy, container settings and labels, wording.
//! - [`error`]: why a container could not be made ready, with what to do.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bollard::Docker;
use tracing::Instrument;
use tug_core::job::ContainerMode;

use super::{Outcome, RunContext, Runtime, RuntimeError};
use crate::checkpoint::Detached;

mod error;
mod events;
mod exec;
mod executor;
mod image;
mod outcome;
mod per_run;
mod pool;
pub mod spec;

pub use error::{ContainerError, DockerError, ExecutorCheckError, PullError};

/// The Docker Engine API version spoken. 1.41 (Docker 20.10) is served by every current engine.
const API_VERSION: bollard::ClientVersion = bollard::ClientVersion { major_version: 1, minor_version: 41 };

/// Settings of the docker runtime.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// This agent's name, put on every container as a label (adoption finds its own by it).
    pub agent: String,
    /// Where per-container socket directories live. Keep it short: unix socket paths are limited
    /// to 107 bytes.
    pub state_dir: PathBuf,
    /// The static `dwait` binary; `None` runs warm containers through `docker exec` instead.
    pub dwait: Option<PathBuf>,
    /// Docker's unix socket.
    pub socket: String,
    /// Network mode of containers whose job names none.
    pub default_network: String,
    /// Run warm containers through `docker exec` even when dwait is available (benchmarks).
    pub force_exec: bool,
    /// How long a finished per-run container (or a warm one that died) is kept before it is
    /// removed, for `docker logs`/`inspect` by an operator. Its output is already in the run log.
    pub remove_delay: Duration,
    /// How often idle and retired containers are looked for.
    pub sweep_every: Duration,
    /// Defaults for jobs that do not set them.
    pub defaults: Lifecycle,
    /// The container network on this host (`None`: a job with `network.pool` cannot run here).
    pub net: Option<NetSetup>,
    /// A durable agent's checkpoint directory ([`crate::Durability::dir`]): runs through the
    /// executor and in per-run containers are then checkpointed there and outlive the agent
    /// (`None`: they end with it).
    pub checkpoints: Option<PathBuf>,
    /// How many bytes of a detached run's latest output the executor keeps for the next agent.
    pub detached_buffer: u64,
}

/// How warm containers of networked jobs get their network.
#[derive(Clone)]
pub struct NetSetup {
    /// Claims, plumbs and tears down.
    pub agent: std::sync::Arc<crate::net::NetAgent>,
    /// The directory `dresponse.sock` is in, bind-mounted into each networked container.
    pub dir: PathBuf,
}

impl std::fmt::Debug for NetSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetSetup").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// When a warm container is recycled or removed.
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    /// Recycle after this many runs (`None`: never).
    pub max_runs: Option<u64>,
    /// Recycle after this age.
    pub max_age: Duration,
    /// Remove after this long without runs.
    pub idle_timeout: Duration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle { max_runs: None, max_age: Duration::from_secs(24 * 3600), idle_timeout: Duration::from_secs(600) }
    }
}

impl DockerConfig {
    /// Settings for agent `agent` keeping its sockets under `state_dir`; dwait from
    /// [`find_dwait`].
    pub fn new(agent: impl Into<String>, state_dir: impl Into<PathBuf>) -> DockerConfig {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
            .unwrap_or_else(|| "/var/run/docker.sock".into());
        DockerConfig {
            agent: agent.into(),
            state_dir: state_dir.into(),
            dwait: find_dwait(),
            socket,
            default_network: "none".into(),
            force_exec: false,
            remove_delay: Duration::from_secs(60),
            sweep_every: Duration::from_secs(1),
            defaults: Lifecycle::default(),
            net: None,
            checkpoints: None,
            detached_buffer: 1 << 20,
        }
    }
}

/// The static dwait binary: `$TUG_DWAIT`, else `dwait` next to the running executable, when it
/// is statically linked. Logs why not otherwise.
pub fn find_dwait() -> Option<PathBuf> {
    let candidates = std::env::var_os("TUG_DWAIT").map(PathBuf::from).into_iter().chain(
        std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("dwait"))),
    );
    for c in candidates {
        if !c.exists() {
            continue;
        }
        // Docker bind-mounts it, and a bind mount needs an absolute path.
        let c = std::fs::canonicalize(&c).unwrap_or(c);
        match spec::check_static(&c) {
            Ok(()) => return Some(c),
            Err(why) => tracing::warn!("{why}; warm containers will use docker exec"),
        }
    }
    None
}

/// One line for a Docker API error.
pub(crate) fn describe(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

/// Runs tasks in Docker containers.
#[derive(Clone)]
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub docker: Docker,
    pub config: DockerConfig,
    pub pool: pool::Pool,
    /// Containers this runtime created (warm and per-run).
    pub created: AtomicU64,
    /// Which containers died, from the events stream.
    pub events: events::Cache,
}

impl DockerRuntime {
    /// Connects to the daemon, adopts this agent's existing containers (removing the ones it
    /// cannot use) and starts the sweeper that removes idle and retired containers.
    pub async fn connect(mut config: DockerConfig) -> Result<DockerRuntime, DockerError> {
        // `STATE/c/NONCE/dwait.sock` must fit a unix socket address (107 bytes).
        if config.state_dir.as_os_str().len() > 80 {
            let short = std::env::temp_dir().join(format!("tug-{}", spec::nonce()));
            tracing::warn!(state_dir = %config.state_dir.display(), using = %short.display(), "the docker state directory is too long for unix sockets");
            config.state_dir = short;
        }
        let unreachable = |source| DockerError::Unreachable { socket: config.socket.clone(), source };
        let docker = Docker::connect_with_unix(&config.socket, 120, &API_VERSION).map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        std::fs::create_dir_all(config.state_dir.join("c")).map_err(|e| DockerError::StateDir(config.state_dir.clone(), e))?;
        let inner = Arc::new(Inner { docker, config, pool: pool::Pool::default(), created: AtomicU64::new(0), events: events::Cache::default() });
        if let Some(net) = &inner.config.net {
            let weak = Arc::downgrade(&inner);
            net.agent.set_evictor(Box::new(move |instance: String| {
                let Some(inner) = weak.upgrade() else { return };
                if let Ok(tug_net::Identity::JobSlot { job, .. }) = instance.parse() {
                    tokio::spawn(async move { pool::evict(&inner, &job).await });
                }
            }));
        }
        pool::adopt(&inner).await;
        events::spawn(Arc::downgrade(&inner));
        pool::spawn_sweeper(Arc::downgrade(&inner));
        Ok(DockerRuntime { inner })
    }

    /// Warm containers it holds now.
    pub fn warm_containers(&self) -> usize {
        self.inner.pool.warm()
    }

    /// Containers this runtime created so far.
    pub fn containers_created(&self) -> u64 {
        self.inner.created.load(Ordering::Relaxed)
    }

    /// The Docker client.
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    /// Removes every container of this agent (warm ones included). Warm containers are otherwise
    /// kept when the agent stops, to be adopted by the next start.
    pub async fn remove_all(&self) {
        pool::remove_all(&self.inner).await;
    }

    /// Removes the warm containers this runtime holds (a clean stop of `tug up`).
    pub async fn remove_warm(&self) {
        pool::remove_warm(&self.inner).await;
    }

}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    /// Creates `job`'s warm container ahead of its first run (per-run jobs: pulls the image).
    async fn prewarm(&self, job: &str, task: &tug_core::protocol::Task) -> Result<(), RuntimeError> {
        let d = task.docker.as_ref().ok_or(ContainerError::NoImage)?;
        match d.mode {
            ContainerMode::Warm => pool::acquire(&self.inner, job, task, false).await.map(|lease| lease.release_unused())?,
            ContainerMode::PerRun => image::ensure(&self.inner.docker, &d.image, d.pull).await?,
        }
        Ok(())
    }

    async fn address(&self, job: &str, task: &tug_core::protocol::Task) -> Option<std::net::IpAddr> {
        pool::address(&self.inner, job, task).await
    }

    async fn reattach(&self, ctx: RunContext, ckpt: crate::checkpoint::Checkpoint, detached: Detached) -> Outcome {
        let span = tracing::info_span!("docker", job = %ctx.launch.job, run = ctx.launch.run_id, attempt = ctx.launch.attempt);
        match detached {
            Detached::Executor(exec) => pool::reattach_warm(&self.inner, ctx, ckpt, exec).instrument(span).await,
            Detached::Container(c) => per_run::reattach(&self.inner, ctx, ckpt, c).instrument(span).await,
        }
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let span = tracing::info_span!("docker", job = %ctx.launch.job, run = ctx.launch.run_id, attempt = ctx.launch.attempt);
        let inner = self.inner.clone();
        async move {
            let mode = ctx.launch.task.docker.as_ref().map(|d| d.mode).unwrap_or_default();
            if ctx.launch.task.docker.is_none() {
                let log = outcome::Log::open(&ctx.logs, ctx.launch.run_id, ctx.log_limit).await;
                return log.finish(Outcome::failed_to_start(format!("cannot start: {}", ContainerError::NoImage)), true).await;
            }
            match mode {
                ContainerMode::Warm => pool::run_warm(&inner, ctx).await,
                ContainerMode::PerRun => per_run::run(&inner, ctx).await,
            }
        }
        .instrument(span)
        .await
    }
}

/// The docker runtime, connected on first use and again after a failed connection: with Docker
/// down, each docker run fails with the reason, and runs work again once Docker is back, without
/// restarting the agent.
pub struct LazyDocker {
    config: DockerConfig,
    runtime: tokio::sync::Mutex<Option<DockerRuntime>>,
}

impl LazyDocker {
    /// A runtime that connects with `config` when a docker run first needs it.
    pub fn new(config: DockerConfig) -> LazyDocker {
        LazyDocker { config, runtime: tokio::sync::Mutex::new(None) }
    }

    /// The runtime if it has connected, without connecting.
    pub async fn connected(&self) -> Option<DockerRuntime> {
        self.runtime.lock().await.clone()
    }

    /// The connected runtime, connecting now if needed.
    pub async fn get(&self) -> Result<DockerRuntime, DockerError> {
        let mut rt = self.runtime.lock().await;
        if let Some(rt) = rt.as_ref() {
            return Ok(rt.clone());
        }
        let waited = Duration::from_secs(5);
        let connected = tokio::time::timeout(waited, DockerRuntime::connect(self.config.clone()))
            .await
            .unwrap_or_else(|_| Err(DockerError::NoAnswer { socket: self.config.socket.clone(), waited }))?;
        *rt = Some(connected.clone());
        Ok(connected)
    }
}

#[async_trait::async_trait]
impl Runtime for LazyDocker {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn warm_containers(&self) -> usize {
        // Not connected yet (or busy connecting): no containers of ours to count.
        self.runtime.try_lock().ok().and_then(|g| g.as_ref().map(DockerRuntime::warm_containers)).unwrap_or(0)
    }

    async fn address(&self, job: &str, task: &tug_core::protocol::Task) -> Option<std::net::IpAddr> {
        self.connected().await?.address(job, task).await
    }

    async fn prewarm(&self, job: &str, task: &tug_core::protocol::Task) -> Result<(), RuntimeError> {
        let docker = self.get().await.map_err(|e| RuntimeError::DockerUnavailable(Arc::new(e)))?;
        docker.prewarm(job, task).await
    }

    async fn reattach(&self, ctx: RunContext, ckpt: crate::checkpoint::Checkpoint, detached: Detached) -> Outcome {
        match self.get().await {
            Ok(rt) => rt.reattach(ctx, ckpt, detached).await,
            Err(e) => {
                let o = crate::runtime::shim::lost(format!("the agent restarted and cannot reach Docker to re-attach the run: {e}"));
                if let Err(e) = ckpt.write_outcome(&o).await {
                    tracing::warn!(error = %e, "cannot record the run's outcome in its checkpoint");
                }
                let log = outcome::Log::open(&ctx.logs, ctx.launch.run_id, ctx.log_limit).await;
                log.finish(o, true).await
            }
        }
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        match self.get().await {
            Ok(rt) => rt.run(ctx).await,
            Err(e) => {
                let log = outcome::Log::open(&ctx.logs, ctx.launch.run_id, ctx.log_limit).await;
                log.finish(Outcome::failed_to_start(format!("cannot start: {e}")), true).await
            }
        }
    }
}
