//! Warm containers: at most one live container per job, which every run of the job goes through.
//!
//! A run *acquires* the job's container, creating it when there is none. The current container
//! is *retired* (removed once its last run ended) and a new one made when the job's container
//! settings changed (spec hash), after `max_runs` runs, past `max_age`, or when its executor is
//! unreachable (it died). The sweeper retires containers idle for `idle_timeout`. On start the
//! runtime *adopts* the running containers labelled with its agent name, so a restarted agent
//! creates no second container and leaves no orphan.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tug_core::protocol::Task;

use super::outcome::Log;
use super::spec::{self, label};
use super::{ContainerError, Inner, Lifecycle, describe, executor, image};
use crate::checkpoint::{Checkpoint, ExecutorRecord, LaunchRecord};
use crate::runtime::{Outcome, RunContext};

/// Where dwait and its socket directory appear inside a warm container.
const DWAIT_IN_CONTAINER: &str = "/.tug/dwait";
const RUN_DIR_IN_CONTAINER: &str = "/.tug/run";
const SOCKET_NAME: &str = "dwait.sock";

/// How long a new container's executor may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One warm container.
pub struct Warm {
    /// Docker's id.
    pub id: String,
    /// Host directory bind-mounted at `/.tug/run` (holds the socket).
    pub dir: PathBuf,
    /// Spec hash it was created with.
    pub hash: String,
    /// True when runs go through `docker exec` instead of dwait.
    pub via_exec: bool,
    /// A networked container's instance (its address's claim name), torn down with it.
    pub instance: Option<String>,
    created: Instant,
    runs: AtomicU64,
    inflight: AtomicU32,
    retired: AtomicBool,
    last_used: Mutex<Instant>,
    life: Mutex<Lifecycle>,
}

impl Warm {
    /// The executor's socket on the host.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(SOCKET_NAME)
    }
}

/// A job's current warm container. The async mutex serializes creation, so concurrent first runs
/// of a job share one container.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Warm>>>>;

/// The warm containers of one runtime.
#[derive(Default)]
pub struct Pool {
    /// Per job: the current container.
    slots: Mutex<HashMap<String, Slot>>,
}

impl Pool {
    fn slot(&self, job: &str) -> Slot {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(job.to_string()).or_default().clone()
    }

    /// Jobs with a warm container now (one being created counts).
    pub fn warm(&self) -> usize {
        self.all().iter().filter(|(_, s)| s.try_lock().map_or(true, |g| g.is_some())).count()
    }

    fn all(&self) -> Vec<(String, Slot)> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// A run's hold on a warm container; releasing it removes a retired container after its last run.
pub struct Lease {
    inner: Arc<Inner>,
    /// The container.
    pub warm: Arc<Warm>,
}

impl Lease {
    /// Gives the lease back without counting a run (pre-warm).
    pub fn release_unused(self) {
        self.warm.runs.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.warm.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let left = self.warm.inflight.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == 0 && self.warm.retired.load(Ordering::SeqCst) {
            let (inner, warm) = (self.inner.clone(), self.warm.clone());
            tokio::spawn(async move { remove(&inner, &warm).await });
        }
    }
}

fn lifecycle(inner: &Inner, task: &Task) -> Lifecycle {
    let d = &inner.config.defaults;
    let spec = task.docker.as_ref();
    Lifecycle {
        max_runs: spec.and_then(|s| s.max_runs).or(d.max_runs),
        max_age: spec.and_then(|s| s.max_age).map_or(d.max_age, |a| a.as_std()),
        idle_timeout: spec.and_then(|s| s.idle_timeout).map_or(d.idle_timeout, |a| a.as_std()),
    }
}

/// The job's warm container, created or replaced as needed, with one more run counted on it.
pub async fn acquire(inner: &Arc<Inner>, job: &str, task: &Task, replace_dead: bool) -> Result<Lease, ContainerError> {
    let hash = spec::spec_hash(task, &inner.config.default_network);
    let life = lifecycle(inner, task);
    let slot = inner.pool.slot(job);
    let mut current = slot.lock().await;
    if let Some(w) = current.as_ref() {
        let runs = w.runs.load(Ordering::SeqCst);
        let why = if w.hash != hash {
            Some("its job's container settings changed")
        } else if life.max_runs.is_some_and(|m| runs >= m) {
            Some("it reached max_runs")
        } else if w.created.elapsed() >= life.max_age {
            Some("it reached max_age")
        } else if replace_dead {
            Some("its executor is unreachable")
        } else if inner.events.is_dead(&w.id) {
            Some("it died")
        } else {
            None
        };
        if let Some(why) = why {
            tracing::info!(container = %short(&w.id), runs, "replacing the warm container: {why}");
            retire(inner, w);
            *current = None;
        }
    }
    let warm = match current.as_ref() {
        Some(w) => Arc::clone(w),
        None => Arc::clone(current.insert(create(inner, job, task, &hash, life).await?)),
    };
    *warm.life.lock().unwrap_or_else(|p| p.into_inner()) = life;
    warm.runs.fetch_add(1, Ordering::SeqCst);
    warm.inflight.fetch_add(1, Ordering::SeqCst);
    Ok(Lease { inner: inner.clone(), warm })
}

/// Marks `w` retired; removes it now when no run uses it.
fn retire(inner: &Arc<Inner>, w: &Arc<Warm>) {
    if !w.retired.swap(true, Ordering::SeqCst) && w.inflight.load(Ordering::SeqCst) == 0 {
        let (inner, w) = (inner.clone(), w.clone());
        tokio::spawn(async move { remove(&inner, &w).await });
    }
}

async fn remove(inner: &Inner, w: &Warm) {
    let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
    match inner.docker.remove_container(&w.id, Some(opts)).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
            tracing::info!(container = %short(&w.id), runs = w.runs.load(Ordering::SeqCst), "removed a warm container");
        }
        Err(e) => tracing::warn!(container = %short(&w.id), error = %describe(&e), "cannot remove a warm container"),
    }
    let _ = tokio::fs::remove_dir_all(&w.dir).await;
    if let (Some(instance), Some(net)) = (&w.instance, &inner.config.net)
        && let Err(e) = net.agent.teardown(instance, &crate::net::Owner::Container(w.id.clone())).await
    {
        tracing::warn!(container = %short(&w.id), instance, "tearing down the container's network: {e}");
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Creates and starts a warm container and waits for its executor to listen.
async fn create(inner: &Arc<Inner>, job: &str, task: &Task, hash: &str, life: Lifecycle) -> Result<Arc<Warm>, ContainerError> {
    let d = task.docker.as_ref().ok_or(ContainerError::NoImage)?;
    image::ensure(&inner.docker, &d.image, d.pull).await?;
    let cfg = &inner.config;
    let nonce = spec::nonce();
    let name = spec::container_name(job, &nonce);
    let dwait = cfg.dwait.clone().filter(|_| !cfg.force_exec);
    let via_exec = dwait.is_none();
    let dir = cfg.state_dir.join("c").join(&nonce);
    if let Err(source) = tokio::fs::create_dir_all(&dir).await {
        return Err(ContainerError::RunDir { dir, source });
    }
    let (entrypoint, cmd, binds) = match &dwait {
        Some(bin) => (
            vec![DWAIT_IN_CONTAINER.to_string()],
            vec!["serve".to_string(), format!("{RUN_DIR_IN_CONTAINER}/{SOCKET_NAME}")],
            vec![format!("{}:{DWAIT_IN_CONTAINER}:ro", bin.display()), format!("{}:{RUN_DIR_IN_CONTAINER}", dir.display())],
        ),
        // No executor: keep the container alive with the image's shell and run through exec.
        None => (
            vec!["/bin/sh".to_string()],
            vec!["-c".to_string(), "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done".to_string()],
            Vec::new(),
        ),
    };
    // A networked container starts with no network of its own; dwait asks dresponse for it.
    let mut binds = binds;
    let (mut network_mode, mut env, mut instance) = (cfg.default_network.clone(), Vec::new(), None);
    if let Some(net) = &task.network {
        let setup = cfg.net.as_ref().ok_or_else(|| ContainerError::NoNetwork(net.pool.clone()))?;
        if via_exec {
            return Err(ContainerError::NoNetwork(net.pool.clone()));
        }
        // A service replica's launches name it (`service/web/3`): its address is named after the
        // replica, so it follows the index wherever the replica runs. Job names have no `/`.
        let who = match job.parse::<tug_net::Identity>() {
            Ok(id @ tug_net::Identity::Replica { .. }) => id.claim_name(),
            _ => tug_net::Identity::JobSlot { job: job.to_owned(), slot: 0 }.claim_name(),
        };
        binds.push(format!("{}:/.tug/net", setup.dir.display()));
        env = vec![format!("TUG_NET_POOL={}", net.pool), format!("TUG_NET_INSTANCE={who}")];
        network_mode = "none".into();
        instance = Some(who);
    }
    let mut labels = spec::labels(job, hash, &cfg.agent, "warm", if via_exec { "exec" } else { "executor" }, Some(&dir));
    if let (Some(who), Some(net)) = (&instance, &task.network) {
        labels.insert(label::NET_INSTANCE.into(), who.clone());
        labels.insert(label::NET_POOL.into(), net.pool.clone());
    }
    let body = bollard::models::ContainerCreateBody {
        image: Some(d.image.clone()),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        labels: Some(labels),
        env: Some(env),
        host_config: Some(spec::host_config(task, &network_mode, binds)),
        ..Default::default()
    };
    let opts = bollard::query_parameters::CreateContainerOptionsBuilder::new().name(&name).build();
    let id = match inner.docker.create_container(Some(opts), body).await {
        Ok(c) => c.id,
        Err(source) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(ContainerError::Create { source });
        }
    };
    inner.created.fetch_add(1, Ordering::Relaxed);
    // Only this container may ask for the instance's network.
    if let (Some(who), Some(net)) = (&instance, &cfg.net) {
        net.agent.expect(who, crate::net::Owner::Container(id.clone()));
    }
    let warm = Arc::new(Warm {
        id: id.clone(),
        dir,
        hash: hash.to_string(),
        via_exec,
        instance,
        created: Instant::now(),
        runs: AtomicU64::new(0),
        inflight: AtomicU32::new(0),
        retired: AtomicBool::new(false),
        last_used: Mutex::new(Instant::now()),
        life: Mutex::new(life),
    });
    if let Err(source) = inner.docker.start_container(&id, None).await {
        remove(inner, &warm).await;
        return Err(ContainerError::Start { source });
    }
    if !via_exec {
        let sock = warm.socket();
        let deadline = Instant::now() + READY_TIMEOUT;
        while tokio::net::UnixStream::connect(&sock).await.is_err() {
            if inner.events.is_dead(&id) {
                let said = last_output(inner, &id).await;
                remove(inner, &warm).await;
                return Err(ContainerError::ExitedEarly(said));
            }
            if Instant::now() >= deadline {
                remove(inner, &warm).await;
                return Err(ContainerError::ExecutorTimeout(READY_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tracing::info!(container = %short(&id), name, via_exec, "created a warm container");
    Ok(warm)
}

/// The last lines a container wrote (its dwait's reason to exit), or a hint where to look.
async fn last_output(inner: &Inner, id: &str) -> String {
    use futures::StreamExt;
    let opts = bollard::query_parameters::LogsOptionsBuilder::new().stdout(true).stderr(true).tail("5").build();
    let mut out = String::new();
    let mut logs = inner.docker.logs(id, Some(opts));
    while let Some(Ok(chunk)) = logs.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    let out = out.trim();
    if out.is_empty() { format!("it wrote nothing; see `docker logs {}`", short(id)) } else { out.to_owned() }
}

/// Runs one attempt in the job's warm container. With checkpoints on (a durable agent), a run
/// through the executor is detachable and checkpointed, so that it outlives the agent.
pub async fn run_warm(inner: &Arc<Inner>, ctx: RunContext) -> Outcome {
    let RunContext { launch, logs, log_limit, mut kill, grace, started } = ctx;
    let mut log = Log::open(&logs, launch.run_id, log_limit).await;
    let early = *kill.borrow();
    if let Some(reason) = early {
        let o = Outcome { state: reason.final_state(), exit_code: None, signal: None, reason: Some(format!("{} before it started", super::outcome::why_stopped(reason, &launch))) };
        return log.finish(o, true).await;
    }
    let mut started = Some(started);
    let mem = launch.task.resources.mem.map(|m| m.0);
    let ckpt = inner.config.checkpoints.as_ref().map(|dir| Checkpoint::new(dir, launch.run_id, launch.attempt));
    let mut replace_dead = false;
    for attempt in 0..2 {
        let lease = match acquire(inner, &launch.job, &launch.task, replace_dead).await {
            Ok(l) => l,
            Err(e) => return log.finish(Outcome::failed_to_start(e.to_string()), true).await,
        };
        if lease.warm.via_exec {
            let o = super::exec::run(inner, &lease.warm.id, &launch, &mut log, &mut kill, grace, &mut started, mem).await;
            return log.finish(o, true).await;
        }
        let key = format!("{}-{}", launch.run_id, launch.attempt);
        let detach = match &ckpt {
            Some(ckpt) => checkpoint(ckpt, &launch, &logs, log_limit, grace, &lease.warm, &key, log.len()).await.then_some(executor::Detach {
                ckpt,
                key,
                buffer: inner.config.detached_buffer,
            }),
            None => None,
        };
        let follow = executor::Follow { launch: &launch, log: &mut log, kill: &mut kill, grace, started: &mut started, mem };
        match executor::run(&lease.warm.socket(), follow, detach.as_ref()).await {
            Ok(o) => {
                let note = o.state != tug_core::run::RunState::Succeeded;
                return log.finish(o, note).await;
            }
            Err(executor::Unreachable(e)) => {
                tracing::warn!(container = %short(&lease.warm.id), error = %e, attempt, "the warm container's executor is unreachable; recreating the container");
                replace_dead = true;
            }
        }
    }
    let o = Outcome::failed_to_start("cannot start: the warm container's executor is unreachable even in a fresh container");
    if let Some(ckpt) = &ckpt
        && let Err(e) = ckpt.write_outcome(&o).await
    {
        tracing::warn!(error = %e, "cannot record the run's outcome in its checkpoint");
    }
    log.finish(o, true).await
}

/// Records a docker run's checkpoint before it is handed to the executor; false (the run is then
/// not detachable, and ends with the agent) when it cannot be written.
#[allow(clippy::too_many_arguments)]
async fn checkpoint(
    ckpt: &Checkpoint,
    launch: &tug_core::protocol::Launch,
    logs: &tug_logs::LogFiles,
    log_limit: u64,
    grace: Duration,
    warm: &Warm,
    key: &str,
    log_offset: u64,
) -> bool {
    let record = LaunchRecord { launch: launch.clone(), log_dir: logs.dir().to_path_buf(), log_limit, grace, launched_at: jiff::Timestamp::now() };
    let exec = ExecutorRecord { container: warm.id.clone(), socket: warm.socket(), key: key.to_owned(), log_offset };
    // A retry on a fresh container keeps the first launch time (its timeout counts from there).
    let written = match ckpt.read_launch().await {
        Ok(_) => Ok(()),
        Err(_) => ckpt.write_launch(&record).await,
    };
    match written {
        Ok(()) => ckpt.write_executor(&exec).await,
        Err(e) => Err(e),
    }
    .inspect_err(|e| tracing::warn!(error = %e, "cannot write the run's checkpoint; it ends with the agent"))
    .is_ok()
}

/// Follows a docker run an earlier agent handed to the executor of `exec.container` (see
/// [`run_warm`]): the container is adopted by now; its run goes on here with the output the log
/// lacks, kills and the timeout as before.
pub async fn reattach_warm(inner: &Arc<Inner>, ctx: RunContext, ckpt: Checkpoint, exec: ExecutorRecord) -> Outcome {
    let RunContext { launch, logs, log_limit, mut kill, grace, started } = ctx;
    let mut log = Log::open(&logs, launch.run_id, log_limit).await;
    let mut started = Some(started);
    let mem = launch.task.resources.mem.map(|m| m.0);
    // The run holds its container as a fresh run would: not idle, not removed under it.
    let lease = lease_adopted(inner, &launch.job, &exec.container).await;
    let o = if lease.is_none() {
        crate::runtime::shim::lost(format!(
            "the agent restarted and the run's container {} is gone; its exit status is unknown",
            short(&exec.container)
        ))
    } else {
        let follow = executor::Follow { launch: &launch, log: &mut log, kill: &mut kill, grace, started: &mut started, mem };
        match executor::attach(&exec.socket, &exec.key, exec.log_offset, follow, &ckpt).await {
            Ok(o) => {
                drop(lease);
                let note = o.state != tug_core::run::RunState::Succeeded;
                return log.finish(o, note).await;
            }
            Err(executor::Unreachable(e)) => crate::runtime::shim::lost(format!(
                "the agent restarted and the run's container {} does not answer ({e}); its exit status is unknown",
                short(&exec.container)
            )),
        }
    };
    if let Err(e) = ckpt.write_outcome(&o).await {
        tracing::warn!(error = %e, "cannot record the run's outcome in its checkpoint");
    }
    log.finish(o, true).await
}

/// A lease on the adopted container `id` of `job`, if the pool holds it.
async fn lease_adopted(inner: &Arc<Inner>, job: &str, id: &str) -> Option<Lease> {
    let slot = inner.pool.slot(job);
    let current = slot.lock().await;
    let warm = current.as_ref().filter(|w| w.id == id)?.clone();
    warm.runs.fetch_add(1, Ordering::SeqCst);
    warm.inflight.fetch_add(1, Ordering::SeqCst);
    Some(Lease { inner: inner.clone(), warm })
}

/// Adopts this agent's running warm containers and keeps the per-run containers of runs it
/// re-attaches; removes its stopped ones, per-run leftovers and duplicates. A warm container is this agent's when it carries its name and lives under its
/// state dir: agents of the same name with other state dirs keep theirs.
pub async fn adopt(inner: &Arc<Inner>) {
    let filters = HashMap::from([("label".to_string(), vec![format!("{}={}", label::AGENT, inner.config.agent)])]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    let list = match inner.docker.list_containers(Some(opts)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %describe(&e), "cannot list containers to adopt");
            return;
        }
    };
    let now_ms = jiff::Timestamp::now().as_millisecond();
    for c in list {
        let (Some(id), Some(labels)) = (c.id, c.labels) else { continue };
        let running = c.state.map(|s| s.to_string() == "running").unwrap_or(false);
        let get = |k: &str| labels.get(k).cloned();
        let usable = running && get(label::MODE).as_deref() == Some("warm");
        let job = get(label::JOB).unwrap_or_default();
        let via_exec = get(label::PATH).as_deref() == Some("exec");
        let dir = get(label::DIR).map(PathBuf::from).unwrap_or_default();
        if !dir.as_os_str().is_empty() && !dir.starts_with(&inner.config.state_dir) {
            // Another agent of the same name on this Docker host (two `tug up`s, each `local`):
            // its container, not ours to adopt or remove.
            continue;
        }
        if get(label::MODE).as_deref() == Some("per-run") && keep_per_run(inner, get(label::RUN), get(label::CHECKPOINTS)).await {
            tracing::info!(container = %short(&id), job, running, "kept a per-run container: its run is re-attached");
            continue;
        }
        let slot = inner.pool.slot(&job);
        let mut current = slot.lock().await;
        let warm = Arc::new(Warm {
            id: id.clone(),
            dir: dir.clone(),
            hash: get(label::SPEC).unwrap_or_default(),
            via_exec,
            // Its network stays plumbed, and goes with it: see below.
            instance: get(label::NET_INSTANCE).filter(|_| inner.config.net.is_some()),
            created: {
                let age_ms = get(label::CREATED).and_then(|c| c.parse::<i64>().ok()).map_or(0, |c| (now_ms - c).max(0));
                Instant::now().checked_sub(Duration::from_millis(age_ms as u64)).unwrap_or_else(Instant::now)
            },
            runs: AtomicU64::new(0),
            inflight: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
            life: Mutex::new(inner.config.defaults),
        });
        let ready = via_exec || tokio::net::UnixStream::connect(warm.socket()).await.is_ok();
        if let (Some(instance), Some(pool), Some(net)) = (&warm.instance, get(label::NET_POOL), &inner.config.net) {
            // Its network is this agent's again: only it may ask for it, and removing it tears it
            // down and gives the address back.
            // The claim goes to the server, which this agent may not have reached yet: not waited
            // for here.
            let owner = crate::net::Owner::Container(id.clone());
            net.agent.expect(instance, owner.clone());
            // A leftover (removed below) gives its address back once it is known.
            let leftover = !(usable && ready && current.is_none());
            let (agent, instance, c) = (net.agent.clone(), instance.clone(), short(&id).to_owned());
            tokio::spawn(async move {
                let mut taken = agent.adopt(&instance, &pool, owner.clone()).await;
                if taken.is_ok() && leftover {
                    taken = agent.teardown(&instance, &owner).await;
                }
                if let Err(e) = taken {
                    tracing::warn!(container = %c, instance, "cannot take over the container's network: {e}");
                }
            });
        }
        if usable && ready && current.is_none() {
            tracing::info!(container = %short(&id), job, "adopted a warm container");
            *current = Some(warm);
        } else {
            tracing::info!(container = %short(&id), job, running, "removing a leftover container");
            remove(inner, &warm).await;
        }
    }
}

/// Whether a per-run container stays: its run (`run`, the checkpoint's name) is checkpointed
/// here and has not ended, so it is re-attached; or it belongs to another agent of the same name
/// (checkpointed in another directory that exists). Other per-run containers are leftovers.
async fn keep_per_run(inner: &Inner, run: Option<String>, dir: Option<String>) -> bool {
    let (Some(run), Some(dir)) = (run, dir.map(PathBuf::from)) else { return false };
    if inner.config.checkpoints.as_ref() != Some(&dir) {
        return dir.is_dir();
    }
    let Some((run_id, attempt)) = Checkpoint::parse_name(&run) else { return false };
    let ckpt = Checkpoint::new(&dir, run_id, attempt);
    matches!(ckpt.read_detached().await, Ok(Some(crate::checkpoint::Detached::Container(_))))
        && matches!(ckpt.read_outcome().await, Ok(None))
}

/// The address `job`'s warm container is reached at from this host: from its pool when it has
/// one, else its IP on its docker network (none on the host's network).
pub async fn address(inner: &Arc<Inner>, job: &str, task: &Task) -> Option<std::net::IpAddr> {
    let warm = inner.pool.slot(job).lock().await.clone()?;
    if let (Some(instance), Some(net)) = (&warm.instance, &inner.config.net) {
        return net.agent.address(instance).map(std::net::IpAddr::V4);
    }
    let _ = task;
    let c = inner.docker.inspect_container(&warm.id, None).await.ok()?;
    let networks = c.network_settings?.networks?;
    networks.values().filter_map(|n| n.ip_address.as_deref()).find(|ip| !ip.is_empty()).and_then(|ip| ip.parse().ok())
}

/// Removes the warm containers this runtime holds (and no other container, even of an agent of
/// the same name).
pub async fn remove_warm(inner: &Arc<Inner>) {
    for (_job, slot) in inner.pool.all() {
        if let Some(w) = slot.lock().await.take() {
            w.retired.store(true, Ordering::SeqCst);
            remove(inner, &w).await;
        }
    }
}

/// Stops `job`'s warm container now, or once its running runs end (its instance is moving to
/// another host); its network is torn down with it.
pub async fn evict(inner: &Arc<Inner>, job: &str) {
    let slot = inner.pool.slot(job);
    let taken = slot.lock().await.take();
    if let Some(w) = taken {
        w.retired.store(true, Ordering::SeqCst);
        if w.inflight.load(Ordering::SeqCst) == 0 {
            remove(inner, &w).await;
        }
    }
}

/// Every second (or `sweep_every`), retires warm containers idle past their `idle_timeout`.
pub fn spawn_sweeper(weak: Weak<Inner>) {
    tokio::spawn(async move {
        loop {
            let every = match weak.upgrade() {
                Some(i) => i.config.sweep_every,
                None => return,
            };
            tokio::time::sleep(every).await;
            let Some(inner) = weak.upgrade() else { return };
            for (_job, slot) in inner.pool.all() {
                let Ok(mut current) = slot.try_lock() else { continue };
                let idle = current.as_ref().is_some_and(|w| {
                    let life = *w.life.lock().unwrap_or_else(|p| p.into_inner());
                    let last = *w.last_used.lock().unwrap_or_else(|p| p.into_inner());
                    w.inflight.load(Ordering::SeqCst) == 0 && last.elapsed() >= life.idle_timeout
                });
                if idle && let Some(w) = current.take() {
                    tracing::info!(container = %short(&w.id), "removing an idle warm container");
                    retire(&inner, &w);
                }
            }
        }
    });
}

/// Removes every container of this agent.
pub async fn remove_all(inner: &Arc<Inner>) {
    remove_warm(inner).await;
    let filters = HashMap::from([("label".to_string(), vec![format!("{}={}", label::AGENT, inner.config.agent)])]);
    let opts = bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
    if let Ok(list) = inner.docker.list_containers(Some(opts)).await {
        for c in list {
            if let Some(id) = c.id {
                let opts = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
                let _ = inner.docker.remove_container(&id, Some(opts)).await;
            }
        }
    }
}
