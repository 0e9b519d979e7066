//! The agent loop: takes [`ToAgent`] messages, runs each launch through the runtime in its own
//! task, enforces timeouts, and reports every state change as a [`StatusUpdate`].
//!
//! Status updates go out over a bounded channel with `send().await`: when the server is slow the
//! agent waits, it never drops an update.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tug_core::protocol::{KillReason, Launch, StatusUpdate, ToAgent, ToServer};
use tug_core::run::{RunId, RunState};
use tug_store::logs::LogFiles;

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
}

/// How an agent keeps its runs across its own restarts.
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
        }
    }
}

/// One agent: a runtime, a log directory and the runs in flight.
pub struct Agent {
    config: AgentConfig,
    runtime: SharedRuntime,
    logs: LogFiles,
    updates: mpsc::Sender<ToServer>,
    seq: AtomicU64,
    state: Mutex<Inflight>,
}

#[derive(Default)]
struct Inflight {
    running: HashMap<RunId, (u32, watch::Sender<Option<KillReason>>)>,
    seen: HashSet<(RunId, u32)>,
    seen_order: VecDeque<(RunId, u32)>,
}

impl Agent {
    /// An agent that reports to `updates`.
    pub fn new(config: AgentConfig, runtime: SharedRuntime, logs: LogFiles, updates: mpsc::Sender<ToServer>) -> Arc<Agent> {
        Arc::new(Agent { config, runtime, logs, updates, seq: AtomicU64::new(0), state: Mutex::default() })
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Number of attempts in flight.
    pub fn inflight(&self) -> usize {
        self.lock().running.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves messages until `commands` closes or `shutdown` completes; then stops every run
    /// still going (SIGTERM, grace, SIGKILL) and waits until each has reported.
    pub async fn serve(self: Arc<Self>, mut commands: mpsc::Receiver<ToAgent>, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let hb = ToServer::Heartbeat { agent: self.config.name.clone() };
                    if self.updates.send(hb).await.is_err() {
                        tracing::warn!("server side of the agent channel is closed; heartbeat not delivered");
                    }
                }
                msg = commands.recv() => match msg {
                    Some(ToAgent::Launch(launch)) => self.launch(*launch, &mut tasks),
                    Some(ToAgent::Kill { run_id, reason, .. }) => self.kill(run_id, reason),
                    Some(ToAgent::Drain { draining }) => tracing::info!(draining, "the server changed this agent's drain state"),
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
                () = &mut shutdown => break,
            }
        }
        let ids: Vec<RunId> = self.lock().running.keys().copied().collect();
        for id in ids {
            self.kill(id, KillReason::Shutdown);
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Asks a running attempt to stop. Unknown runs are ignored (they already finished).
    pub fn kill(&self, run_id: RunId, reason: KillReason) {
        if let Some((_, tx)) = self.lock().running.get(&run_id) {
            // The first reason wins: a timeout racing a kill request stays a timeout.
            tx.send_if_modified(|cur| cur.is_none() && { *cur = Some(reason); true });
        }
    }

    fn launch(self: &Arc<Self>, launch: Launch, tasks: &mut JoinSet<()>) {
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
            st.running.insert(launch.run_id, (launch.attempt, kill_tx.clone()));
        }
        let me = Arc::clone(self);
        tasks.spawn(async move { me.run_one(launch, kill_tx, kill_rx).await });
    }

    async fn run_one(
        self: Arc<Self>,
        launch: Launch,
        kill_tx: watch::Sender<Option<KillReason>>,
        kill_rx: watch::Receiver<Option<KillReason>>,
    ) {
        let (run_id, attempt, timeout) = (launch.run_id, launch.attempt, launch.task.timeout);
        let (started_tx, started_rx) = oneshot::channel();
        let ctx = RunContext {
            launch,
            logs: self.logs.clone(),
            log_limit: self.config.log_limit,
            kill: kill_rx,
            grace: self.config.grace,
            started: started_tx,
        };
        let fut = self.runtime.run(ctx);
        tokio::pin!(fut);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t.as_std());
        let mut started_rx = Some(started_rx);
        let outcome: Outcome = loop {
            tokio::select! {
                biased;
                r = async { started_rx.as_mut().expect("guarded").await }, if started_rx.is_some() => {
                    started_rx = None;
                    if r.is_ok() {
                        self.report(run_id, attempt, RunState::Running, None).await;
                    }
                }
                o = &mut fut => break o,
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
        self.lock().running.remove(&run_id);
        self.report(run_id, attempt, outcome.state, Some(outcome)).await;
    }

    async fn report(&self, run_id: RunId, attempt: u32, state: RunState, outcome: Option<Outcome>) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (exit_code, signal, reason) = outcome.map(|o| (o.exit_code, o.signal, o.reason)).unwrap_or_default();
        let update = StatusUpdate { seq, run_id, attempt, state, at: Timestamp::now(), exit_code, signal, reason };
        if self.updates.send(ToServer::Status(update)).await.is_err() {
            tracing::warn!(run = run_id, %state, "server side of the agent channel is closed; update not delivered");
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
