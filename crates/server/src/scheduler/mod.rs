//! The scheduler loop: one task that owns every job's timer and every active run. See README.md
//! in this folder for the pipeline and its vocabulary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use jiff::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tug_core::job::Job;
use tug_core::protocol::{Launch, Task, ToAgent, ToServer};
use tug_core::run::{Run, RunId};
use tug_core::JobSpec;
use tug_store::{JobRecord, Store};

use crate::clock::{SharedClock, instant_at};
use crate::logs::RunLogs;
use crate::metrics::Metrics;
use events::EventSink;
use crate::stream::{EventBus, EventKind};
use crate::error::{Error, Result};

pub mod agents;
mod deps;
mod runs;
mod dispatch;
pub mod events;
mod fire;
mod jobs;
mod persist;
mod placing;
mod operations;
mod outage;
mod reconcile;
mod recovery;
mod releases;
mod services;
pub mod stats;
mod status;
pub mod timers;
mod upcoming;

use agents::{AgentView, Agents, Registration};
use stats::Stats;
use dispatch::{Dispatcher, Outgoing};
use persist::Persister;
use runs::RunTable;
use timers::{Slot, Timers};
pub use operations::{AgentProgress, OpState, Operation, OperationView};
pub use releases::{Release, ReleaseAction, ReleaseEvent, ReleaseState, ReleaseView};
pub use services::{ReplicaState, ReplicaView, ServiceStatus, is_replica};
pub use upcoming::{JobState, Upcoming, UpcomingCursor};

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Finished runs kept per job unless the job says otherwise.
    pub keep_runs: u32,
    /// Most status updates applied in one store transaction.
    pub max_update_batch: usize,
    /// An agent silent this long is lost; its runs are lost and retried elsewhere.
    pub agent_timeout: StdDuration,
    /// The shortest time between two fires of a job a create or update may ask for: a job firing
    /// every millisecond writes thousands of run rows a second. Zero: no limit.
    pub min_interval: StdDuration,
}

/// The default of [`SchedulerConfig::min_interval`]: one fire a second, what cron's seconds field
/// allows at most.
pub const DEFAULT_MIN_INTERVAL: StdDuration = StdDuration::from_secs(1);

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            keep_runs: 100,
            max_update_batch: 1024,
            agent_timeout: StdDuration::from_secs(10),
            min_interval: DEFAULT_MIN_INTERVAL,
        }
    }
}

/// A message from an agent connection to the scheduler. A status update that carries `acks` is
/// acknowledged there, by its `seq`, once its store write has returned (and only then: on the ack
/// the agent forgets the attempt and deletes its checkpoint).
#[derive(Debug)]
pub struct FromAgent {
    /// The message.
    pub msg: ToServer,
    /// Where to acknowledge a status update once it is durable (`None`: nobody waits for it).
    pub acks: Option<mpsc::UnboundedSender<u64>>,
}

impl From<ToServer> for FromAgent {
    fn from(msg: ToServer) -> FromAgent {
        FromAgent { msg, acks: None }
    }
}

/// How long before a fire a docker job's warm container is created when the job does not say.
const DEFAULT_PREWARM: tug_core::Duration = tug_core::Duration::from_secs(30);

/// A request to the scheduler, answered on its oneshot.
pub(crate) enum Command {
    CreateJob(JobSpec, oneshot::Sender<Result<JobRecord>>),
    UpdateJob(JobSpec, Option<u64>, oneshot::Sender<Result<JobRecord>>),
    DeleteJob(String, oneshot::Sender<Result<()>>),
    SetPaused(String, bool, oneshot::Sender<Result<JobRecord>>),
    RunNow(String, Vec<String>, oneshot::Sender<Result<Run>>),
    KillRun(RunId, oneshot::Sender<Result<Run>>),
    KillJob(String, oneshot::Sender<Result<Vec<Run>>>),
    Stats(bool, oneshot::Sender<Stats>),
    RegisterAgent(Registration, oneshot::Sender<()>),
    Agents(oneshot::Sender<Vec<AgentView>>),
    Children(String, oneshot::Sender<Vec<String>>),
    Edges(oneshot::Sender<Vec<(String, String)>>),
    Drain(String, bool, oneshot::Sender<Result<AgentView>>),
    Check(oneshot::Sender<std::result::Result<(), String>>),
    PutService(tug_core::Service, bool, oneshot::Sender<Result<tug_store::ServiceRecord>>),
    UpdateService(
        tug_core::Service,
        Option<tug_core::release::Batch>,
        Option<tug_core::Duration>,
        oneshot::Sender<Result<(tug_store::ServiceRecord, Option<ReleaseView>)>>,
    ),
    RestartService(
        String,
        Option<tug_core::release::Batch>,
        Option<tug_core::Duration>,
        oneshot::Sender<Result<ReleaseView>>,
    ),
    DeleteService(String, oneshot::Sender<Result<()>>),
    ServiceStatus(String, oneshot::Sender<Option<ServiceStatus>>),
    Scale(String, u32, oneshot::Sender<Result<OperationView>>),
    Operation(String, oneshot::Sender<Option<OperationView>>),
    StartRelease(String, tug_core::release::ReleaseRequest, oneshot::Sender<Result<ReleaseView>>),
    ReleaseAction(String, ReleaseAction, oneshot::Sender<Result<ReleaseView>>),
    Release(String, oneshot::Sender<Option<ReleaseView>>),
    Releases(String, oneshot::Sender<Vec<ReleaseView>>),
    Upcoming(tug_store::JobQuery, Option<JobState>, Option<UpcomingCursor>, usize, oneshot::Sender<Upcoming>),
}

/// A cheap, cloneable way to talk to the scheduler task.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Command>,
    epoch: u64,
    /// Job changes made through the handle are published here.
    bus: Option<EventBus>,
}

impl SchedulerHandle {
    /// The leader epoch this scheduler stamps on launches (one more than the last server's on
    /// the same store).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Error::ShuttingDown)?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }

    /// Publishes a job event when the change succeeded.
    fn announce<T>(&self, r: Result<T>, kind: EventKind, job: &str) -> Result<T> {
        if let (Ok(_), Some(bus)) = (&r, &self.bus) {
            bus.publish(kind, Some(job), None, None);
        }
        r
    }

    /// Validates and creates a job; durable when it returns.
    pub async fn create_job(&self, spec: JobSpec) -> Result<JobRecord> {
        let name = spec.name.clone();
        let r = self.ask(|tx| Command::CreateJob(spec, tx)).await?;
        self.announce(r, EventKind::JobCreated, &name)
    }

    /// Replaces a job's spec (compare-and-set on `expected_version` when given).
    pub async fn update_job(&self, spec: JobSpec, expected_version: Option<u64>) -> Result<JobRecord> {
        let name = spec.name.clone();
        let r = self.ask(|tx| Command::UpdateJob(spec, expected_version, tx)).await?;
        self.announce(r, EventKind::JobChanged, &name)
    }

    /// Deletes a job, killing its active runs.
    pub async fn delete_job(&self, name: &str) -> Result<()> {
        let r = self.ask(|tx| Command::DeleteJob(name.to_string(), tx)).await?;
        self.announce(r, EventKind::JobDeleted, name)
    }

    /// Pauses (`true`) or resumes (`false`) a job.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<JobRecord> {
        let r = self.ask(|tx| Command::SetPaused(name.to_string(), paused, tx)).await?;
        self.announce(r, if paused { EventKind::JobPaused } else { EventKind::JobResumed }, name)
    }

    /// Starts a manual run now.
    pub async fn run_now(&self, name: &str) -> Result<Run> {
        self.ask(|tx| Command::RunNow(name.to_string(), Vec::new(), tx)).await?
    }

    /// Starts a manual run now with `args` appended to the job's command for this run only (the
    /// Chronos API's `PUT /scheduler/job/{name}?arguments=`). An argv command gets them as extra
    /// arguments; a shell command gets them appended, each single-quoted.
    ///
    /// The arguments are kept in memory only, not in the store: a retry of the run on the same
    /// server uses them, but after a server restart a recovered run runs the plain command.
    pub async fn run_now_with_args(&self, name: &str, args: Vec<String>) -> Result<Run> {
        self.ask(|tx| Command::RunNow(name.to_string(), args, tx)).await?
    }

    /// Stops a run. Returns it as it is now; the final state follows from its agent.
    pub async fn kill_run(&self, id: RunId) -> Result<Run> {
        self.ask(|tx| Command::KillRun(id, tx)).await?
    }

    /// Stops every active run of a job.
    pub async fn kill_job(&self, name: &str) -> Result<Vec<Run>> {
        self.ask(|tx| Command::KillJob(name.to_string(), tx)).await?
    }

    /// Adds an agent (or refreshes one that comes back); runs waiting for room are placed.
    pub async fn register_agent(&self, registration: Registration) -> Result<()> {
        self.ask(|tx| Command::RegisterAgent(registration, tx)).await
    }

    /// Every agent.
    pub async fn agents(&self) -> Result<Vec<AgentView>> {
        self.ask(Command::Agents).await
    }

    /// The jobs that run after `job` (it is one of their parents), by name.
    pub async fn children(&self, job: &str) -> Result<Vec<String>> {
        self.ask(|tx| Command::Children(job.to_string(), tx)).await
    }

    /// A page of jobs passing `filter` in order of their next fire, then those with none by
    /// name (see `upcoming.rs`).
    pub async fn upcoming(
        &self,
        filter: tug_store::JobQuery,
        state: Option<JobState>,
        after: Option<UpcomingCursor>,
        limit: usize,
    ) -> Result<Upcoming> {
        self.ask(|tx| Command::Upcoming(filter, state, after, limit, tx)).await
    }

    /// Every dependency as (parent, child), sorted.
    pub async fn dependencies(&self) -> Result<Vec<(String, String)>> {
        self.ask(Command::Edges).await
    }

    /// Drains (`true`: no new runs) or undrains an agent.
    pub async fn drain(&self, name: &str, drain: bool) -> Result<AgentView> {
        self.ask(|tx| Command::Drain(name.to_string(), drain, tx)).await?
    }

    /// Checks the run table's invariants (see `runs.rs`) between two commands: the first
    /// violation, in words. For tests.
    pub async fn check_invariants(&self) -> Result<std::result::Result<(), String>> {
        self.ask(Command::Check).await
    }

    /// Creates a validated service and starts its replicas; durable when it returns.
    pub async fn create_service(&self, service: tug_core::Service) -> Result<tug_store::ServiceRecord> {
        self.ask(|tx| Command::PutService(service, true, tx)).await?
    }

    /// Changes a service's spec: its replica count, scaling rules and labels apply at once; a
    /// change of what its replicas run rolls out to them through a release (`batch` at a time,
    /// default 25%), which is returned.
    pub async fn update_service(
        &self,
        service: tug_core::Service,
        batch: Option<tug_core::release::Batch>,
        health_timeout: Option<tug_core::Duration>,
    ) -> Result<(tug_store::ServiceRecord, Option<ReleaseView>)> {
        self.ask(|tx| Command::UpdateService(service, batch, health_timeout, tx)).await?
    }

    /// Replaces every replica of a service on its current spec, a batch at a time, each replaced
    /// replica healthy before the next batch: a release that changes nothing but the replicas'
    /// attempts; returns at once.
    pub async fn restart_service(
        &self,
        name: &str,
        batch: Option<tug_core::release::Batch>,
        health_timeout: Option<tug_core::Duration>,
    ) -> Result<ReleaseView> {
        self.ask(|tx| Command::RestartService(name.to_string(), batch, health_timeout, tx)).await?
    }

    /// Deletes a service; its replicas stop.
    pub async fn delete_service(&self, name: &str) -> Result<()> {
        self.ask(|tx| Command::DeleteService(name.to_string(), tx)).await?
    }

    /// A service's replicas now (`None`: no such service).
    pub async fn service_status(&self, name: &str) -> Result<Option<ServiceStatus>> {
        self.ask(|tx| Command::ServiceStatus(name.to_string(), tx)).await
    }

    /// Sets a service's replica count (durable when it returns) and starts an operation that
    /// follows the change; returns at once.
    pub async fn scale(&self, name: &str, replicas: u32) -> Result<OperationView> {
        self.ask(|tx| Command::Scale(name.to_string(), replicas, tx)).await?
    }

    /// A scale operation and its progress.
    pub async fn operation(&self, id: &str) -> Result<Option<OperationView>> {
        self.ask(|tx| Command::Operation(id.to_string(), tx)).await
    }

    /// Starts a staged release of a service; returns at once.
    pub async fn start_release(&self, name: &str, req: tug_core::release::ReleaseRequest) -> Result<ReleaseView> {
        self.ask(|tx| Command::StartRelease(name.to_string(), req, tx)).await?
    }

    /// Brakes, resumes, retries or revokes a release.
    pub async fn release_action(&self, id: &str, action: ReleaseAction) -> Result<ReleaseView> {
        self.ask(|tx| Command::ReleaseAction(id.to_string(), action, tx)).await?
    }

    /// A release and its progress.
    pub async fn release(&self, id: &str) -> Result<Option<ReleaseView>> {
        self.ask(|tx| Command::Release(id.to_string(), tx)).await
    }

    /// A service's releases, newest first.
    pub async fn releases(&self, service: &str) -> Result<Vec<ReleaseView>> {
        self.ask(|tx| Command::Releases(service.to_string(), tx)).await
    }

    /// Counters and lateness.
    pub async fn stats(&self) -> Result<Stats> {
        self.ask(|tx| Command::Stats(false, tx)).await
    }

    /// Counters and lateness, then starts both afresh (benchmarks measure a window this way).
    pub async fn take_stats(&self) -> Result<Stats> {
        self.ask(|tx| Command::Stats(true, tx)).await
    }
}

/// A job as the scheduler holds it.
pub(crate) struct Entry {
    pub job: Job,
    pub version: u64,
    /// Last scheduled instant handled.
    pub cursor: Option<Timestamp>,
    /// The instant its timer is set for (`None`: paused, disabled, dependent or exhausted).
    pub next: Option<Timestamp>,
    /// When the job last got a run that was not skipped (dependency rule).
    pub last_run_at: Option<Timestamp>,
    /// When a run of the job last succeeded.
    pub last_success_at: Option<Timestamp>,
    /// When a run of the job last failed, timed out or was lost.
    pub last_failure_at: Option<Timestamp>,
    /// Runs finished since the last prune.
    pub finished_since_prune: u32,
    /// The agent its last docker run went to, which holds its warm container.
    pub warm_agent: Option<usize>,
}

impl Entry {
    fn new(job: Job, version: u64) -> Entry {
        Entry {
            job,
            version,
            cursor: None,
            next: None,
            last_run_at: None,
            last_success_at: None,
            last_failure_at: None,
            finished_since_prune: 0,
            warm_agent: None,
        }
    }

    /// Whether its schedule should be firing.
    fn firing(&self) -> bool {
        self.job.schedule.is_some() && self.job.spec.enabled && !self.job.spec.paused
    }
}

/// The scheduler's state. Owned by one task; see [`Scheduler::run`].
pub struct Scheduler {
    store: Arc<dyn Store>,
    persister: Persister,
    persister_task: Option<tokio::task::JoinHandle<()>>,
    dispatcher: Dispatcher,
    dispatcher_task: Option<tokio::task::JoinHandle<()>>,
    clock: SharedClock,
    logs: RunLogs,
    config: SchedulerConfig,
    agents: Agents,
    /// Every active run: the only place one changes (`runs.rs`).
    runs: RunTable,
    slots: Vec<Option<Entry>>,
    free: Vec<Slot>,
    index: HashMap<String, Slot>,
    children: HashMap<String, Vec<String>>,
    timers: Timers<Slot>,
    /// When to send docker jobs' pre-warm hints.
    prewarm_timers: Timers<Slot>,
    to_prune: Vec<Slot>,
    /// The retention task of the last prune round, if it may still be going.
    pruning: Option<tokio::task::JoinHandle<()>>,
    stats: Stats,
    metrics: Arc<Metrics>,
    events: EventSink,
    /// The event stream (`/api/v1/events`), when the server serves one.
    bus: Option<EventBus>,
    /// The leader epoch stamped on launches.
    epoch: u64,
    /// When this scheduler started.
    started: tokio::time::Instant,
    /// Whether runs recovered at start-up that no agent confirmed have been given up.
    unconfirmed_checked: bool,
    /// What firing waits for at start-up (`recovery.rs`).
    awaiting_reports: Option<recovery::ReportWait>,
    /// Every service's replicas (`services.rs`).
    replicas: services::Replicas,
    /// Scale operations (`operations.rs`).
    ops: operations::Operations,
    /// Staged releases (`releases.rs`).
    releases: releases::Releases,
    /// Fires the store could not write, held until it can (`outage.rs`).
    held: outage::Held,
}

/// What the scheduler reports to besides the store: metrics and run events.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Metric families it updates.
    pub metrics: Arc<Metrics>,
    /// Where run events go.
    pub events: EventSink,
    /// The event stream every job, run and agent change is published on.
    pub bus: Option<EventBus>,
}

impl Scheduler {
    /// Publishes an agent event on the stream.
    pub(super) fn announce_agent(&self, kind: EventKind, agent: &str) {
        if let Some(bus) = &self.bus {
            bus.publish(kind, None, Some(agent), None);
        }
    }

    /// Publishes a service event (service, replica, operation, release) on the stream.
    pub(super) fn announce_service(&self, kind: EventKind, service: &str, detail: serde_json::Value) {
        if let Some(bus) = &self.bus {
            bus.publish_service(kind, service, detail);
        }
    }

    /// Publishes the runs a fire commit created (run events after their first write).
    pub(super) fn announce_created(&self, created: &[Run]) {
        let Some(bus) = &self.bus else { return };
        let mut events = Vec::with_capacity(created.len() * 2);
        for run in created {
            let kind = if run.state == tug_core::run::RunState::Skipped { EventKind::RunMisfired } else { EventKind::RunFired };
            events.push((kind, run.clone()));
            if run.state == tug_core::run::RunState::Starting {
                events.push((EventKind::of_run(run), run.clone()));
            }
        }
        bus.publish_runs(events);
    }

    /// Loads jobs and active runs from the store (see `recovery.rs`).
    pub async fn load(
        store: Arc<dyn Store>,
        clock: SharedClock,
        logs: RunLogs,
        config: SchedulerConfig,
        hooks: Hooks,
    ) -> Result<Scheduler> {
        let epoch = store.next_epoch().await?;
        if let Some(bus) = &hooks.bus {
            bus.start_epoch(epoch);
        }
        let (persister, persister_task) = Persister::start(store.clone(), hooks.bus.clone());
        let (dispatcher, dispatcher_task) = Dispatcher::start(clock.clone(), hooks.metrics.clone());
        // No agents yet: each joins with `register_agent`, in this process or over the stream.
        let registry = Agents::default();
        let mut s = Scheduler {
            store,
            persister,
            persister_task: Some(persister_task),
            dispatcher,
            dispatcher_task: Some(dispatcher_task),
            clock,
            logs,
            config,
            agents: registry,
            runs: RunTable::default(),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            children: HashMap::new(),
            timers: Timers::new(),
            prewarm_timers: Timers::new(),
            to_prune: Vec::new(),
            pruning: None,
            stats: Stats::default(),
            metrics: hooks.metrics,
            events: hooks.events,
            bus: hooks.bus,
            epoch,
            started: tokio::time::Instant::now(),
            unconfirmed_checked: false,
            awaiting_reports: None,
            replicas: Default::default(),
            ops: Default::default(),
            releases: Default::default(),
            held: Default::default(),
        };
        s.count_agents();
        s.recover().await?;
        s.load_services().await?;
        s.load_releases().await?;
        s.load_operations().await?;
        Ok(s)
    }

    /// Runs the loop. Stops firing when `stop_firing` completes, then keeps applying status
    /// updates until every agent has hung up (`updates` closed), so runs stopped at shutdown are
    /// still recorded.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut updates: mpsc::Receiver<FromAgent>,
        stop_firing: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop_firing);
        let mut firing = true;
        let mut agent_check = tokio::time::interval(StdDuration::from_secs(1));
        agent_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune_tick = tokio::time::interval(StdDuration::from_secs(10));
        prune_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            let early = self.timers.first().and_then(|t| t.checked_sub(fire::LEAD).ok());
            let wake = [early, self.runs.next_retry(), self.prewarm_timers.first()].into_iter().flatten().min();
            let hold = self.fire_hold().max(self.outage_hold());
            let restart = self.replicas.next_wake();
            let rule_at = self.replicas.next_rule().map(|at| instant_at(&*self.clock, at));
            let release_at = self.releases.next_wake();
            let sleep = async {
                match wake {
                    Some(at) if firing => tokio::time::sleep_until(instant_at(&*self.clock, at).max(hold.unwrap_or(tokio::time::Instant::now()))).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                // Not biased: under overload a due tick and a batch of status updates take turns,
                // so neither starves the other.
                () = &mut stop_firing, if firing => firing = false,
                () = sleep => {
                    if let Err(e) = self.tick().await {
                        tracing::error!(error = %e, "scheduler tick failed; retrying in 1s");
                        tokio::time::sleep(StdDuration::from_secs(1)).await;
                    }
                }
                n = updates.recv_many(&mut batch, self.config.max_update_batch) => {
                    if n == 0 {
                        break;
                    }
                    let msgs = std::mem::take(&mut batch);
                    self.apply_updates(msgs).await;
                }
                cmd = commands.recv(), if firing => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => firing = false,
                },
                () = sleep_until_opt(restart), if restart.is_some() && firing => self.restart_due().await,
                () = sleep_until_opt(rule_at), if rule_at.is_some() && firing => self.apply_scale_rules().await,
                // Releases move on below, after every turn; this only wakes the loop.
                () = sleep_until_opt(release_at), if release_at.is_some() && firing => {}
                _ = prune_tick.tick() => self.prune().await,
                _ = agent_check.tick() => {
                    self.expire_agents().await;
                    self.expire_launches().await;
                    self.expire_unconfirmed().await;
                    self.end_adoption().await;
                }
            }
            if firing && self.releases.moving() {
                self.drive_releases().await;
            }
            self.check_operations().await;
        }
        // Drain the persister so every change made so far is written before we return.
        let tasks = [self.persister_task.take(), self.dispatcher_task.take()];
        drop(self);
        for t in tasks.into_iter().flatten() {
            let _ = t.await;
        }
        tracing::info!("scheduler stopped");
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::CreateJob(spec, tx) => {
                let _ = tx.send(self.create_job(spec).await);
            }
            Command::UpdateJob(spec, v, tx) => {
                let _ = tx.send(self.update_job(spec, v).await);
            }
            Command::DeleteJob(name, tx) => {
                let _ = tx.send(self.delete_job(&name).await);
            }
            Command::SetPaused(name, paused, tx) => {
                let _ = tx.send(self.set_paused(&name, paused).await);
            }
            Command::RunNow(name, args, tx) => {
                let _ = tx.send(self.run_now(&name, args).await);
            }
            Command::KillRun(id, tx) => {
                let _ = tx.send(self.kill_run(id).await);
            }
            Command::KillJob(name, tx) => {
                let _ = tx.send(self.kill_job(&name).await);
            }
            Command::RegisterAgent(reg, tx) => {
                let name = reg.name.clone();
                self.agents.register(reg, tokio::time::Instant::now());
                self.count_agents();
                tracing::info!(agent = %name, "agent registered");
                self.announce_agent(EventKind::AgentJoined, &name);
                self.place_unplaced().await;
                let _ = tx.send(());
            }
            Command::Agents(tx) => {
                let now = tokio::time::Instant::now();
                let views = (0..self.agents.links.len()).map(|i| self.agents.view(i, self.runs.count_on_agent(i), now));
                let _ = tx.send(views.collect());
            }
            Command::Children(job, tx) => {
                let mut children = self.children.get(&job).cloned().unwrap_or_default();
                children.sort();
                let _ = tx.send(children);
            }
            Command::Upcoming(filter, state, after, limit, tx) => {
                let _ = tx.send(self.upcoming(&filter, state, after.as_ref(), limit));
            }
            Command::Edges(tx) => {
                let mut edges: Vec<(String, String)> =
                    self.children.iter().flat_map(|(p, cs)| cs.iter().map(move |c| (p.clone(), c.clone()))).collect();
                edges.sort();
                let _ = tx.send(edges);
            }
            Command::Drain(name, drain, tx) => {
                let r = match self.agents.index(&name) {
                    Some(i) => {
                        self.agents.snapshot.agents[i].draining = drain;
                        // Tell the agent too; a lost or awaited one learns nothing, which is fine.
                        let _ = self.agents.links[i].tx.try_send(ToAgent::Drain { draining: drain });
                        self.count_agents();
                        self.announce_agent(if drain { EventKind::AgentDrained } else { EventKind::AgentUndrained }, &name);
                        if !drain {
                            self.place_unplaced().await;
                        }
                        Ok(self.agents.view(i, self.runs.count_on_agent(i), tokio::time::Instant::now()))
                    }
                    None => Err(Error::NotFound(format!("agent {name:?} not found; see `tug agent list`"))),
                };
                let _ = tx.send(r);
            }
            Command::Check(tx) => {
                let _ = tx.send(self.runs.check(&self.agents.snapshot, self.replicas.used()));
            }
            Command::PutService(service, create, tx) => {
                let _ = tx.send(self.put_service(service, create).await);
            }
            Command::UpdateService(service, batch, health_timeout, tx) => {
                let _ = tx.send(self.update_service(service, batch, health_timeout).await);
            }
            Command::RestartService(name, batch, health_timeout, tx) => {
                let _ = tx.send(self.restart_service(&name, batch, health_timeout).await);
            }
            Command::DeleteService(name, tx) => {
                let r = self.store.delete_service(&name).await.map_err(Error::from);
                if r.is_ok() {
                    self.announce_service(EventKind::ServiceDeleted, &name, serde_json::Value::Null);
                    self.service_delete(&name).await;
                }
                let _ = tx.send(r);
            }
            Command::ServiceStatus(name, tx) => {
                let _ = tx.send(self.service_status(&name));
            }
            Command::Scale(name, replicas, tx) => {
                let _ = tx.send(self.scale(&name, replicas).await);
            }
            Command::Operation(id, tx) => {
                let status = |s: &str| self.service_status(s);
                let view = self.ops.view(&id, None).map(|v| v.op.service.clone()).and_then(|svc| self.ops.view(&id, status(&svc).as_ref()));
                let _ = tx.send(view);
            }
            Command::StartRelease(name, req, tx) => {
                let _ = tx.send(self.start_release(&name, req).await);
            }
            Command::ReleaseAction(id, action, tx) => {
                let _ = tx.send(self.release_action(&id, action).await);
            }
            Command::Release(id, tx) => {
                let _ = tx.send(self.release_view(&id));
            }
            Command::Releases(service, tx) => {
                let _ = tx.send(self.releases_of(&service));
            }
            Command::Stats(reset, tx) => {
                let _ = tx.send(self.snapshot());
                if reset {
                    self.stats = Stats::default();
                    *self.dispatcher.stats.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
                }
            }
        }
    }

    fn snapshot(&self) -> Stats {
        let mut s = self.stats.clone();
        s.jobs = self.index.len();
        s.scheduled = self.timers.len();
        s.active_runs = self.runs.len();
        let d = self.dispatcher.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.dispatched = d.sent;
        s.lateness_p50_us = d.lateness.quantile(0.5);
        s.lateness_p99_us = d.lateness.quantile(0.99);
        s.lateness_max_us = d.lateness.max();
        s
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).and_then(|&s| self.slots[s as usize].as_ref())
    }

    /// Sets (or clears) a job's timer from its cursor.
    fn arm(&mut self, slot: Slot) {
        let Some(e) = self.slots[slot as usize].as_mut() else { return };
        if let Some(old) = e.next.take() {
            self.timers.remove(old, slot);
        }
        if !e.firing() {
            return;
        }
        let after = e.cursor.unwrap_or_else(|| self.clock.now());
        if let Some(fire) = e.job.schedule.as_ref().and_then(|s| s.next_after(after)) {
            e.next = Some(fire.at);
            self.timers.insert(fire.at, slot);
            // A docker job whose fires are further apart than its pre-warm window may find its
            // warm container gone: hint the agent to create it shortly before the fire.
            if let Some(d) = e.job.spec.docker.as_ref().filter(|d| d.mode == tug_core::job::ContainerMode::Warm) {
                let window = jiff::SignedDuration::from_millis(d.prewarm.unwrap_or(DEFAULT_PREWARM).as_millis());
                if fire.at.duration_since(after) > window
                    && let Ok(at) = fire.at.checked_sub(window)
                {
                    self.prewarm_timers.insert(at, slot);
                }
            }
        }
    }

    /// Sends a launch for an active run that is already written as `starting`.
    async fn dispatch(&mut self, id: RunId) {
        self.dispatch_measured(id, true).await;
    }

    /// Like `dispatch`; with `measure` false its lateness is not recorded (a launch sent again
    /// on reconnect is late by design, not because the scheduler was).
    async fn dispatch_measured(&mut self, id: RunId, measure: bool) {
        self.runs.launched(id, tokio::time::Instant::now());
        let Some(active) = self.runs.get(id) else { return };
        let run = &active.run;
        let Some(e) = self.slots[active.slot as usize].as_ref() else { return };
        let mut task = Task::of(&e.job.spec);
        if !active.args.is_empty() {
            task.command = jobs::with_args(task.command, &active.args);
        }
        let launch = Launch {
            run_id: id,
            job: run.job.clone(),
            scheduled_at: run.scheduled_at,
            attempt: run.attempt,
            epoch: self.epoch,
            task,
            health: None,
        };
        // Fire lateness is the first attempt's: a retry waits for its backoff on purpose.
        let measure = measure && run.attempt == 1 && run.trigger == tug_core::run::Trigger::Schedule;
        let at = Some(run.scheduled_at);
        // Its placement names the agent (run table invariant 2): no lookup by name per launch.
        let to = match active.placement {
            Some(p) => self.agents.links.get(p.agent).map(|l| l.tx.clone()),
            None => self.agent_tx(run.agent.as_deref()),
        };
        let Some(to) = to else {
            tracing::error!(run = id, agent = ?run.agent, "run is starting on an unknown agent; not launched");
            return;
        };
        self.dispatcher.send(Outgoing { at, measure, to, msg: ToAgent::Launch(Box::new(launch)) }).await;
    }

    async fn prune(&mut self) {
        if self.pruning.as_ref().is_some_and(|t| !t.is_finished()) {
            return; // the last round is still going; these jobs wait for the next tick
        }
        let slots = std::mem::take(&mut self.to_prune);
        let mut jobs = Vec::with_capacity(slots.len());
        for slot in slots {
            let Some(e) = self.slots[slot as usize].as_mut() else { continue };
            e.finished_since_prune = 0;
            jobs.push((e.job.spec.name.clone(), e.job.spec.keep_runs.unwrap_or(self.config.keep_runs)));
        }
        if jobs.is_empty() {
            return;
        }
        // In the background, so the loop keeps firing; a few hundred jobs per transaction: one
        // commit for many busy jobs, yet short enough not to hold up fire commits behind it.
        let (store, logs) = (self.store.clone(), self.logs.clone());
        self.pruning = Some(tokio::spawn(async move {
            for chunk in jobs.chunks(200) {
                match store.prune_many(chunk).await {
                    Ok(removed) => logs.remove(&removed).await,
                    Err(e) => tracing::warn!(error = %e, jobs = chunk.len(), "pruning old runs failed"),
                }
            }
        }));
    }
}

/// Starts the scheduler task, with no agents: each joins through
/// [`SchedulerHandle::register_agent`]. Returns its handle and the task.
pub async fn start(
    store: Arc<dyn Store>,
    clock: SharedClock,
    logs: RunLogs,
    config: SchedulerConfig,
    hooks: Hooks,
    updates: mpsc::Receiver<FromAgent>,
    stop_firing: impl Future<Output = ()> + Send + 'static,
) -> Result<(SchedulerHandle, tokio::task::JoinHandle<()>)> {
    let bus = hooks.bus.clone();
    let sched = Scheduler::load(store, clock, logs, config, hooks).await?;
    let epoch = sched.epoch;
    let (tx, rx) = mpsc::channel(1024);
    let task = tokio::spawn(sched.run(rx, updates, stop_firing));
    Ok((SchedulerHandle { tx, epoch, bus }, task))
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
