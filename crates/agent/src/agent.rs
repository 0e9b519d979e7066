//! The agent loop: takes [`ToAgent`] messages, runs each launch through the runtime in its own
//! task, enforces timeouts, and reports every state change as a [`StatusUpdate`].
//!
//! Status updates go out over a bounded channel with `send().await`: when the server is slow the
//! agent waits, it never drops an update.
//!
//! A durable agent ([`AgentConfig::durable`], with process runs under a
//! [`ShimRuntime`](crate::runtime::shim::ShimRuntime), docker runs through warm containers'
//! executors or in containers of their own) keeps a [`Checkpoint`] per attempt until the server has the attempt's final update.
//! At start, [`Agent::recover`] goes through them:
//!
//! ```text
//! outcome.json present            -> report the final update (the real exit status)
//! shim alive (pid + start time)   -> re-attach: running again, timeout and kills as before
//! executor.json or container.json -> re-attach through the runtime: the output the log lacks,
//!   (a docker run)                   then the rest of the run (lost if the container is gone)
//! no launch.json (stopped while   -> forget it: nothing started; the server, not hearing of it,
//!   launching)                       sends the launch again
//! none of these                   -> report it lost: its exit status is unknown
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tug_core::protocol::{HealthReport, HeldRun, KillReason, Launch, StatusUpdate, ToAgent, ToServer};
use tug_core::run::{RunId, RunState};
use tug_logs::LogFiles;

use crate::checkpoint::{Checkpoint, CheckpointError, Detached, LaunchRecord, ShimRecord};
use crate::runtime::shim::{follow, lost};
use crate::runtime::{Outcome, RunContext, SharedRuntime};

/// How many finished `(run, attempt)` pairs the agent remembers to ignore duplicate launches.
const REMEMBERED_LAUNCHES: usize = 100_000;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's name, reported with each run.
    pub name: String,
    /// The most bytes of output kept per run log.
    pub log_limit: u64,
    /// Time between SIGTERM and SIGKILL when a run is stopped.
    pub grace: Duration,
    /// How often the agent tells the server it is alive.
    pub heartbeat: Duration,
    /// Checkpointing, so runs outlive an agent restart (`None`: runs die with the agent).
    pub durable: Option<Durability>,
    /// How long a durable agent that stops leaving its runs going says it will be away (a
    /// restart): the server keeps its runs on it that long before it treats the agent as lost.
    pub restart_window: Duration,
}

/// How an agent keeps its runs across its own restarts. Process runs must go through a
/// [`ShimRuntime`](crate::runtime::shim::ShimRuntime) built from the same settings.
#[derive(Debug, Clone)]
pub struct Durability {
    /// Where each run's checkpoint lives (`<dir>/<run>-<attempt>/`).
    pub dir: std::path::PathBuf,
    /// The supervisor executable process runs are started under (`tug` itself: `tug agent shim`),
    /// which outlives the agent and records the exit status.
    pub shim: std::path::PathBuf,
    /// On a stop signal, leave runs going (re-attached at the next start) instead of stopping them.
    pub detach_on_stop: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            name: "local".into(),
            log_limit: 1 << 20,
            grace: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            durable: None,
            restart_window: Duration::from_secs(30),
        }
    }
}

/// One agent: a runtime, a log directory and the runs in flight.
pub struct Agent {
    config: AgentConfig,
    runtime: SharedRuntime,
    logs: LogFiles,
    updates: mpsc::Sender<ToServer>,
    /// Final updates count as delivered only on [`Agent::delivered`] (remote agents, which get
    /// acks); otherwise once they are on the channel.
    acked: bool,
    seq: AtomicU64,
    /// The highest leader epoch seen; launches from older epochs are refused.
    epoch: AtomicU64,
    draining: AtomicBool,
    /// Whether [`Agent::recover`] has run.
    recovered: AtomicBool,
    /// How many times [`Agent::held`] has reported (once per connection).
    held_reports: AtomicU64,
    state: Mutex<Inflight>,
}

#[derive(Default)]
struct Inflight {
    running: HashMap<RunId, (u32, watch::Sender<Option<KillReason>>)>,
    /// The launch names of the running service replicas, for [`Agent::held`].
    replicas: HashMap<RunId, String>,
    /// Finished attempts whose final update the server may not have yet: the update's seq (0: not
    /// sent yet).
    finished: HashMap<(RunId, u32), u64>,
    seen: HashSet<(RunId, u32)>,
    seen_order: VecDeque<(RunId, u32)>,
    /// What [`Agent::recover`] found, for [`Agent::serve`] to take up.
    recovered: Vec<Recovered>,
}

/// An attempt found in the checkpoints at start.
enum Recovered {
    /// Still running under its shim, or handed to a container's executor.
    Running {
        record: Box<LaunchRecord>,
        ckpt: Checkpoint,
        resume: Resume,
        kill: (watch::Sender<Option<KillReason>>, watch::Receiver<Option<KillReason>>),
    },
    /// Ended while no agent watched (or lost).
    Finished { run_id: RunId, attempt: u32, outcome: Outcome },
}

/// What a re-attached attempt is followed through.
enum Resume {
    /// A process run's shim.
    Shim(ShimRecord),
    /// A docker run's executor or container, through the runtime.
    Docker(Detached),
}

/// How [`Agent::run_one`] gets its attempt going.
enum Start {
    /// Through the runtime.
    Fresh,
    /// Following an attempt an earlier agent started.
    Reattach { ckpt: Checkpoint, resume: Resume, time_left: Option<Duration> },
}

impl Agent {
    /// An agent that reports to `updates`, in the same process as the server: a final update
    /// counts as delivered once it is on the channel.
    pub fn new(config: AgentConfig, runtime: SharedRuntime, logs: LogFiles, updates: mpsc::Sender<ToServer>) -> Arc<Agent> {
        Arc::new(Self::build(config, runtime, logs, updates, false))
    }

    /// An agent whose final updates count as delivered only when the caller says so with
    /// [`Agent::delivered`] (a remote agent, on the server's ack).
    pub fn with_acks(config: AgentConfig, runtime: SharedRuntime, logs: LogFiles, updates: mpsc::Sender<ToServer>) -> Arc<Agent> {
        Arc::new(Self::build(config, runtime, logs, updates, true))
    }

    fn build(config: AgentConfig, runtime: SharedRuntime, logs: LogFiles, updates: mpsc::Sender<ToServer>, acked: bool) -> Agent {
        Agent {
            config,
            runtime,
            logs,
            updates,
            acked,
            seq: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            recovered: AtomicBool::new(false),
            held_reports: AtomicU64::new(0),
            state: Mutex::default(),
        }
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Where its run logs are.
    pub fn logs(&self) -> &LogFiles {
        &self.logs
    }

    /// Number of attempts in flight.
    pub fn inflight(&self) -> usize {
        self.lock().running.len()
    }

    /// Whether the server has drained this agent (it gets no new runs; its runs go on).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Notes the server's leader epoch (from `Registered`); 0 means unknown and is ignored.
    /// Launches stamped with an older epoch than the highest seen are refused.
    pub fn observe_epoch(&self, epoch: u64) {
        if epoch != 0 {
            self.epoch.fetch_max(epoch, Ordering::Relaxed);
        }
    }

    /// The attempts this agent holds: running ones, and finished ones whose final update the
    /// server may not have yet (`finished: true`).
    pub fn held(&self) -> Vec<HeldRun> {
        let st = self.lock();
        let mut runs: Vec<HeldRun> = st
            .running
            .iter()
            .map(|(&run_id, &(attempt, _))| HeldRun { run_id, attempt, finished: false, replica: st.replicas.get(&run_id).cloned() })
            .chain(st.finished.keys().map(|&(run_id, attempt)| HeldRun { run_id, attempt, finished: true, replica: None }))
            .collect();
        drop(st);
        // A new server (or one that lost track) hears each replica's health again.
        self.held_reports.fetch_add(1, Ordering::Relaxed);
        runs.sort_by_key(|h| (h.run_id, h.attempt));
        runs
    }

    /// The server has `update`. For a final update, the attempt is forgotten and its checkpoint
    /// removed.
    pub fn delivered(&self, update: &StatusUpdate) {
        if !update.state.is_terminal() {
            return;
        }
        let key = (update.run_id, update.attempt);
        {
            let mut st = self.lock();
            if st.finished.get(&key) != Some(&update.seq) {
                return;
            }
            st.finished.remove(&key);
        }
        if let Some(d) = &self.config.durable {
            let ckpt = Checkpoint::new(&d.dir, update.run_id, update.attempt);
            if let Err(e) = ckpt.remove() {
                tracing::warn!(run = update.run_id, attempt = update.attempt, dir = %ckpt.dir().display(), error = %e,
                    "cannot remove the run's checkpoint; remove it by hand, or the next start reports the run again");
            }
        }
    }

    /// Goes through the checkpoints of a durable agent (once; later calls do nothing): runs that
    /// are still going are re-attached, the others are reported as they ended (see the module
    /// docs). Call before the first [`Agent::held`]; [`Agent::serve`] calls it too.
    pub async fn recover(&self) {
        if self.recovered.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(d) = &self.config.durable else { return };
        let mut entries = match tokio::fs::read_dir(&d.dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(dir = %d.dir.display(), error = %e, "cannot read the run checkpoints; runs of the last start are not re-attached");
                return;
            }
        };
        let mut found = Vec::new();
        loop {
            let entry = match entries.next_entry().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(dir = %d.dir.display(), error = %e, "cannot read the run checkpoints");
                    break;
                }
            };
            let name = entry.file_name();
            let Some((run_id, attempt)) = name.to_str().and_then(Checkpoint::parse_name) else { continue };
            let ckpt = Checkpoint::at(entry.path());
            match recover_one(ckpt.clone(), run_id, attempt).await {
                Some(r) => found.push(r),
                None => {
                    // Killed while launching, before the launch was recorded: nothing started.
                    // Forgotten, the attempt is not held, so the server sends the launch again.
                    tracing::info!(run = run_id, attempt, "a launch the last start did not record; it never started");
                    if let Err(e) = ckpt.remove() {
                        tracing::warn!(run = run_id, attempt, dir = %ckpt.dir().display(), error = %e,
                            "cannot remove the unrecorded launch's checkpoint; remove it by hand");
                    }
                }
            }
        }
        let mut st = self.lock();
        for r in found {
            let (run_id, attempt) = match &r {
                Recovered::Running { record, kill, .. } => {
                    st.running.insert(record.launch.run_id, (record.launch.attempt, kill.0.clone()));
                    if record.launch.health.is_some() || tug_core::service::is_replica_run(record.launch.run_id) {
                        st.replicas.insert(record.launch.run_id, record.launch.job.clone());
                    }
                    (record.launch.run_id, record.launch.attempt)
                }
                Recovered::Finished { run_id, attempt, .. } => {
                    st.finished.insert((*run_id, *attempt), 0);
                    (*run_id, *attempt)
                }
            };
            if st.seen.insert((run_id, attempt)) {
                st.seen_order.push_back((run_id, attempt));
            }
            st.recovered.push(r);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves messages until `commands` closes or `shutdown` completes; then stops every run
    /// still going (SIGTERM, grace, SIGKILL) and waits until each has reported. A durable agent
    /// with [`Durability::detach_on_stop`] leaves its runs going on `shutdown` instead.
    ///
    /// First it [recovers](Agent::recover); an agent without acks then sends
    /// [`ToServer::Held`] before any status update.
    pub async fn serve(self: Arc<Self>, mut commands: mpsc::Receiver<ToAgent>, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        self.recover().await;
        if !self.acked {
            let held = ToServer::Held { agent: self.config.name.clone(), runs: self.held() };
            if self.updates.send(held).await.is_err() {
                tracing::warn!("server side of the agent channel is closed; held runs not reported");
            }
        }
        let recovered = std::mem::take(&mut self.lock().recovered);
        for r in recovered {
            match r {
                Recovered::Running { record, ckpt, resume, kill: (kill_tx, kill_rx) } => {
                    tracing::info!(run = record.launch.run_id, attempt = record.launch.attempt, "re-attached to a run of the last start");
                    let time_left = record.time_left(Timestamp::now());
                    let me = Arc::clone(&self);
                    tasks.spawn(me.run_one(record.launch, kill_tx, kill_rx, Start::Reattach { ckpt, resume, time_left }));
                }
                Recovered::Finished { run_id, attempt, outcome } => {
                    tracing::info!(run = run_id, attempt, state = %outcome.state, "reporting a run that ended while the agent was down");
                    self.report(run_id, attempt, outcome.state, Some(outcome)).await;
                }
            }
        }
        let mut detach = false;
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let warm_containers = u32::try_from(self.runtime.warm_containers()).unwrap_or(u32::MAX);
                    let hb = ToServer::Heartbeat { agent: self.config.name.clone(), warm_containers };
                    if self.updates.send(hb).await.is_err() {
                        tracing::warn!("server side of the agent channel is closed; heartbeat not delivered");
                    }
                }
                msg = commands.recv() => match msg {
                    Some(ToAgent::Launch(launch)) => self.launch(*launch, &mut tasks),
                    Some(ToAgent::Kill { run_id, attempt, reason }) => self.kill_attempt(run_id, attempt, reason),
                    Some(ToAgent::Drain { draining }) => {
                        tracing::info!(draining, "the server changed this agent's drain state");
                        self.draining.store(draining, Ordering::Relaxed);
                    }
                    Some(ToAgent::Prewarm { job, task }) => {
                        let me = Arc::clone(&self);
                        tasks.spawn(async move {
                            if let Err(e) = me.runtime.prewarm(&job, &task).await {
                                tracing::warn!(job = %job, error = %e, "pre-warm failed; the first run starts cold");
                            }
                        });
                    }
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut shutdown => {
                    detach = self.config.durable.as_ref().is_some_and(|d| d.detach_on_stop);
                    break;
                }
            }
        }
        if detach {
            // Cancelling the tasks leaves the shims, executors and containers alone; they carry
            // their runs on. Runs without a checkpoint (docker exec) end with the agent.
            let (kept, ending) = self.split_by_checkpoint();
            tracing::info!("{kept} runs left running; they are re-attached at the next start");
            // The server keeps them here (and this agent out of placement) until it is back.
            let back = ToServer::BackSoon { agent: self.config.name.clone(), within: self.config.restart_window };
            if self.updates.send(back).await.is_err() {
                tracing::warn!("server side of the agent channel is closed; the restart notice is not delivered");
            }
            if ending > 0 {
                tracing::warn!("{ending} runs without a checkpoint (docker exec) end with the agent");
            }
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            return;
        }
        let ids: Vec<RunId> = self.lock().running.keys().copied().collect();
        for id in ids {
            self.kill(id, KillReason::Shutdown);
        }
        while tasks.join_next().await.is_some() {}
    }

    /// How many running attempts have a checkpoint, and how many do not.
    fn split_by_checkpoint(&self) -> (usize, usize) {
        let Some(d) = &self.config.durable else { return (0, self.inflight()) };
        let st = self.lock();
        // A stat per run, once, on the way out.
        let kept = st.running.iter().filter(|(run, (attempt, _))| Checkpoint::new(&d.dir, **run, *attempt).dir().exists()).count();
        (kept, st.running.len() - kept)
    }

    /// Asks a running attempt to stop. Unknown runs are ignored (they already finished).
    pub fn kill(&self, run_id: RunId, reason: KillReason) {
        self.kill_attempt(run_id, None, reason);
    }

    /// Asks attempt `attempt` of a run to stop (`None`: whichever is running). Another attempt,
    /// or none, is left alone.
    pub fn kill_attempt(&self, run_id: RunId, attempt: Option<u32>, reason: KillReason) {
        if let Some((running, tx)) = self.lock().running.get(&run_id) {
            if attempt.is_some_and(|a| a != *running) {
                tracing::info!(run = run_id, ?attempt, running, "kill for another attempt ignored");
                return;
            }
            // The first reason wins: a timeout racing a kill request stays a timeout.
            tx.send_if_modified(|cur| cur.is_none() && { *cur = Some(reason); true });
        }
    }

    fn launch(self: &Arc<Self>, launch: Launch, tasks: &mut JoinSet<()>) {
        let newest = self.epoch.fetch_max(launch.epoch, Ordering::Relaxed);
        if launch.epoch < newest {
            tracing::warn!(run = launch.run_id, attempt = launch.attempt, epoch = launch.epoch, newest,
                "launch from an older leader epoch ignored");
            return;
        }
        let key = (launch.run_id, launch.attempt);
        let (kill_tx, kill_rx) = watch::channel(None);
        {
            let mut st = self.lock();
            if !st.seen.insert(key) {
                tracing::warn!(run = launch.run_id, attempt = launch.attempt, "duplicate launch ignored");
                return;
            }
            st.seen_order.push_back(key);
            if st.seen_order.len() > REMEMBERED_LAUNCHES
                && let Some(old) = st.seen_order.pop_front()
            {
                st.seen.remove(&old);
            }
            // A newer attempt of a run supersedes the one still running here (the server has given
            // it up): it is stopped, not left running with nothing able to reach it.
            if let Some((old, old_kill)) = st.running.get(&launch.run_id)
                && *old < launch.attempt
            {
                tracing::warn!(run = launch.run_id, attempt = old, newer = launch.attempt, "a newer attempt supersedes a running one; stopping it");
                old_kill.send_if_modified(|cur| cur.is_none() && { *cur = Some(KillReason::Superseded); true });
            }
            st.running.insert(launch.run_id, (launch.attempt, kill_tx.clone()));
            if tug_core::service::is_replica_run(launch.run_id) {
                st.replicas.insert(launch.run_id, launch.job.clone());
            }
        }
        let me = Arc::clone(self);
        tasks.spawn(async move { me.run_one(launch, kill_tx, kill_rx, Start::Fresh).await });
    }

    async fn run_one(
        self: Arc<Self>,
        launch: Launch,
        kill_tx: watch::Sender<Option<KillReason>>,
        kill_rx: watch::Receiver<Option<KillReason>>,
        start: Start,
    ) {
        let (run_id, attempt) = (launch.run_id, launch.attempt);
        // A service replica's health is checked from its start until it ends.
        let mut health = launch.health.clone().map(|h| crate::health::Verdicts::new(h, tokio::time::Instant::now()));
        let env = if health.is_some() { launch.task.env.clone() } else { Default::default() };
        // Where the checks reach the replica: asked of the runtime once it has started.
        let mut probed = health.as_ref().map(|_| (launch.job.clone(), launch.task.clone()));
        let mut addr = None;
        let mut next_probe = None;
        // Each report of what this agent holds (a new connection, perhaps a new server) is
        // followed by this replica's health as it stands.
        let mut reports_seen = self.held_reports.load(Ordering::Relaxed);
        let (started_tx, started_rx) = oneshot::channel();
        let context = |launch: Launch, kill, started| RunContext {
            // A service's own stop grace, else the agent's.
            grace: launch.task.stop_grace.map_or(self.config.grace, |g| g.as_std()),
            launch,
            logs: self.logs.clone(),
            log_limit: self.config.log_limit,
            kill,
            started,
        };
        let (time_left, mut fut): (_, Pin<Box<dyn Future<Output = Outcome> + Send + '_>>) = match start {
            Start::Fresh => {
                let timeout = launch.task.timeout.map(|t| t.as_std());
                (timeout, self.runtime.run(context(launch, kill_rx, started_tx)))
            }
            Start::Reattach { ckpt, resume: Resume::Shim(shim), time_left } => {
                // Running again, for a server that never heard it started.
                let _ = started_tx.send(shim.child_pid);
                (time_left, Box::pin(follow(ckpt, shim, kill_rx)))
            }
            Start::Reattach { ckpt, resume: Resume::Docker(detached), time_left } => {
                (time_left, self.runtime.reattach(context(launch, kill_rx, started_tx), ckpt, detached))
            }
        };
        let deadline = time_left.map(|t| tokio::time::Instant::now() + t);
        let mut started_rx = Some(started_rx);
        let outcome: Outcome = loop {
            tokio::select! {
                biased;
                r = async { started_rx.as_mut().expect("guarded").await }, if started_rx.is_some() => {
                    started_rx = None;
                    if r.is_ok() {
                        self.report(run_id, attempt, RunState::Running, None).await;
                        next_probe = health.as_ref().map(|_| tokio::time::Instant::now());
                    }
                }
                o = &mut fut => break o,
                () = sleep_until_opt(next_probe), if next_probe.is_some() => {
                    let Some(v) = health.as_mut() else { continue };
                    if let Some((job, task)) = probed.take() {
                        addr = self.runtime.address(&job, &task).await;
                    }
                    let at = addr.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
                    let result = crate::health::probe(v.check(), at, &env).await;
                    let now = tokio::time::Instant::now();
                    next_probe = Some(now + v.interval());
                    // A new report of what this agent holds is followed by this replica's
                    // verdict; one not reached yet goes out when it is.
                    let reports = self.held_reports.load(Ordering::Relaxed);
                    let again = reports != reports_seen;
                    let verdict = v.record(result.is_ok(), now).or(if again { v.current() } else { None });
                    if verdict.is_some() {
                        reports_seen = reports;
                    }
                    if let Some(healthy) = verdict {
                        let reason = result.err().map(|e| e.to_string());
                        tracing::info!(run = run_id, attempt, healthy, ?reason, "replica health changed");
                        let report = HealthReport { run_id, attempt, healthy, reason };
                        if self.updates.send(ToServer::Health(report)).await.is_err() {
                            tracing::warn!(run = run_id, "server side of the agent channel is closed; health not delivered");
                        }
                    }
                }
                () = sleep_until_opt(deadline), if deadline.is_some() && kill_tx.borrow().is_none() => {
                    kill_tx.send_replace(Some(KillReason::Timeout));
                }
            }
        };
        // A runtime that started and finished within one poll still reports its start first.
        if let Some(mut rx) = started_rx
            && rx.try_recv().is_ok()
        {
            self.report(run_id, attempt, RunState::Running, None).await;
        }
        self.report(run_id, attempt, outcome.state, Some(outcome)).await;
    }

    /// Sends a status update. A final one moves the attempt from running to finished first, so
    /// that [`Agent::held`] never misses it.
    async fn report(&self, run_id: RunId, attempt: u32, state: RunState, outcome: Option<Outcome>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (exit_code, signal, reason) = outcome.map(|o| (o.exit_code, o.signal, o.reason)).unwrap_or_default();
        let update = StatusUpdate { seq, run_id, attempt, state, at: Timestamp::now(), exit_code, signal, reason };
        if state.is_terminal() {
            let mut st = self.lock();
            if st.running.get(&run_id).is_some_and(|(a, _)| *a == attempt) {
                st.running.remove(&run_id);
                st.replicas.remove(&run_id);
            }
            st.finished.insert((run_id, attempt), seq);
        }
        let copy = (!self.acked && state.is_terminal()).then(|| update.clone());
        if self.updates.send(ToServer::Status(update)).await.is_err() {
            tracing::warn!(run = run_id, %state, "server side of the agent channel is closed; update not delivered");
        } else if let Some(update) = copy {
            self.delivered(&update);
        }
    }
}

/// What one checkpoint holds at start; `None` when it holds no launch: the agent stopped after
/// making the directory and before recording the launch, and a launch starts nothing before it
/// is recorded.
async fn recover_one(ckpt: Checkpoint, run_id: RunId, attempt: u32) -> Option<Recovered> {
    let finished = |outcome| Some(Recovered::Finished { run_id, attempt, outcome });
    match ckpt.read_outcome().await {
        Ok(Some(outcome)) => return finished(outcome),
        Ok(None) => {}
        Err(e) => return finished(lost(format!("the agent restarted and cannot read how the run ended: {e}"))),
    }
    let record = match ckpt.read_launch().await {
        Ok(r) => r,
        Err(CheckpointError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return finished(lost(format!("the agent restarted and cannot read the run's checkpoint: {e}"))),
    };
    match ckpt.read_shim().await {
        Ok(Some(shim)) if shim.is_alive() => {
            return Some(Recovered::Running { record: Box::new(record), ckpt, resume: Resume::Shim(shim), kill: watch::channel(None) });
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(run = run_id, attempt, error = %e, "cannot read the shim's record"),
    }
    match ckpt.read_detached().await {
        Ok(Some(detached)) => {
            return Some(Recovered::Running { record: Box::new(record), ckpt, resume: Resume::Docker(detached), kill: watch::channel(None) });
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(run = run_id, attempt, error = %e, "cannot read the docker run's record"),
    }
    // The shim may have recorded the outcome just before it exited.
    if let Ok(Some(outcome)) = ckpt.read_outcome().await {
        return finished(outcome);
    }
    let outcome = lost("the agent restarted and the run's process is gone; its exit status is unknown");
    if let Err(e) = ckpt.write_outcome(&outcome).await {
        tracing::warn!(run = run_id, attempt, error = %e, "cannot record the outcome");
    }
    finished(outcome)
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
