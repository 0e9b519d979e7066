//! Services inside the scheduler: the replica controller. It keeps each service's replicas at
//! its desired count, placed by the same placement as runs (spread by default) and launched with
//! the same `Launch` messages: a replica is a long-running run whose id lives above
//! [`REPLICA_RUN_IDS`], restarted as attempt `n + 1` of the same run.
//!
//! ```text
//!            place          launch ack           health ok (or no check)
//!  unplaced ───────► starting ─────────► running ───────────────────────► healthy
//!     ▲                 │                  │  ▲                             │
//!     │ no room         └──── exited ──────┤  └──────── health failed ──────┤
//!     │                                    ▼                               ▼
//!     └──────── backoff over ──────── restart-at ◄──── exited ──────── stopping
//! ```
//!
//! | event                                  | action                                              |
//! |----------------------------------------|-----------------------------------------------------|
//! | desired > replicas                     | new replicas at the missing indices, placed at once |
//! | desired < replicas                     | by `scale_in`: the highest indices (`newest`) or the longest running (`oldest`) stop gracefully |
//! | a replica exits (any state)            | restarted after the policy's backoff, same index    |
//! | a health check fails past its threshold| stopped, then restarted like an exit                |
//! | its agent is lost                      | placed elsewhere at once (same index, same address) |
//! | its agent reconnects without it        | restarted; one it holds that we gave up is stopped  |
//! | a release replaces it (`releases.rs`)  | stopped, then started at once on the release's spec |
//!
//! Replicas live in memory (a release in progress is stored: `releases.rs`). After a server restart the replicas of the stored services wait (for
//! the agent timeout at most) for their agents to report them: one an agent still runs is
//! adopted as it is (same run, same attempt); the others are then started afresh. An agent's
//! replica that no service wants any more is stopped as stale.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio::time::Instant;
use tug_core::placement::{Capacity, CompiledConstraint, Request};
use tug_core::protocol::{HealthReport, HeldRun, KillReason, Launch, StatusUpdate, Task, ToAgent};
use tug_core::run::{RunId, RunState};
use tug_core::service::{ScaleIn, Service, replica_claim_name};

use super::Scheduler;
use super::dispatch::Outgoing;
use crate::stream::EventKind;

pub use tug_core::service::{REPLICA_RUN_IDS, is_replica_run as is_replica};

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ReplicaState {
    /// No agent can take it now (no agent up, no room, constraints).
    Unplaced,
    /// Launched on its agent, not yet running.
    Starting,
    /// Running; its health check has not passed yet.
    Running,
    /// Running and passing its health check (or running, without one).
    Healthy,
    /// Asked to stop (scaled in, unhealthy, or its service deleted).
    Stopping,
    /// Exited; restarts when its backoff is over.
    Restarting,
    /// Could not be started [`MAX_START_FAILURES`] times in a row (its image does not exist, its
    /// command cannot be run): not tried again until its service's spec changes or it is scaled.
    Failed,
}

/// Failed starts in a row (ended before it ever ran) after which a replica is given up: a
/// missing image or command does not heal by trying again, and each try costs its agent a pull.
pub const MAX_START_FAILURES: u32 = 3;

/// One replica.
#[derive(Debug, Clone)]
pub(super) struct Replica {
    pub(super) run_id: RunId,
    pub(super) attempt: u32,
    pub(super) state: ReplicaState,
    /// Its agent while starting, running, healthy or stopping.
    pub(super) agent: Option<usize>,
    pub(super) needs: Capacity,
    /// Restarts in a row (for the backoff); reset once it stays up for the longest delay.
    pub(super) restarts: u32,
    /// Restart once this instant passes (state `Restarting`).
    pub(super) restart_at: Option<Instant>,
    /// When the current attempt started running.
    pub(super) up_since: Option<Instant>,
    /// Remove it when it has stopped, rather than restart it.
    pub(super) remove: bool,
    /// The last thing that went wrong, in words.
    pub(super) reason: Option<String>,
    /// Restarts over its whole life.
    pub(super) total_restarts: u32,
    /// The connection of its agent its current attempt was launched on (see `reconcile_replicas`).
    pub(super) connection: u64,
    /// Its attempts run the spec of the service's release in progress, not the current one.
    pub(super) release: bool,
    /// Taken out of service by a release while it is replaced: not ready, whatever its health.
    pub(super) pulled_out: bool,
    /// Stopped by a release to be replaced: restarts at once when it has stopped, and the stop
    /// does not count as a restart.
    pub(super) replacing: bool,
    /// Attempts in a row that ended before they ran.
    pub(super) start_failures: u32,
    /// Loaded at start-up and not launched since: its agent may still run it from before the
    /// restart, and adopt it when it says so (see `adopt_replica`).
    pub(super) recovered: bool,
}

/// One service's replicas by index.
struct Svc {
    service: Service,
    /// The spec of its release in progress, which replicas marked `release` run.
    target: Option<Service>,
    replicas: BTreeMap<u32, Replica>,
    /// Deleted: every replica stops, then the service is forgotten.
    deleted: bool,
}

/// Every service's replicas: the one owner of replica state.
#[derive(Default)]
pub(super) struct Replicas {
    services: BTreeMap<String, Svc>,
    by_run: HashMap<RunId, (String, u32)>,
    next: u64,
    /// Scaling rules' next fires: `(instant, service, rule index)`.
    rule_timers: std::collections::BTreeSet<(jiff::Timestamp, String, usize)>,
    /// Until this instant after a start-up, replicas loaded from the store wait for their agents
    /// to report them before they are started afresh.
    adopt_until: Option<Instant>,
    /// Loading services at start-up: the replicas created are `recovered`.
    loading: bool,
}

/// A replica as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    /// Its index: with the service's name, its identity (and its address's name).
    pub index: u32,
    /// Where it is in its life.
    #[serde(flatten)]
    pub state: ReplicaState,
    /// The agent it is on.
    pub agent: Option<String>,
    /// Its run id (its log: `tug logs RUN_ID`).
    pub run_id: RunId,
    /// Its current attempt (1 + restarts).
    pub attempt: u32,
    /// Restarts so far.
    pub restarts: u32,
    /// The last thing that went wrong.
    pub reason: Option<String>,
    /// Healthy and in service: what a load balancer should route to. A replica a release has
    /// pulled out is not ready until it is back in.
    pub ready: bool,
    /// It runs the spec of the service's release in progress.
    pub on_release: bool,
}

/// A service's replicas, counted and listed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServiceStatus {
    /// Replicas wanted.
    pub desired: u32,
    /// Replicas that exist (placed or not).
    pub replicas: u32,
    /// On an agent (starting, running, healthy).
    pub placed: u32,
    /// Running (healthy or not yet).
    pub running: u32,
    /// Healthy.
    pub healthy: u32,
    /// Healthy and in service (not pulled out by a release).
    pub ready: u32,
    /// Waiting to restart after an exit or a failed health check.
    pub restarting: u32,
    /// Given up after failing to start (see [`ReplicaState::Failed`]).
    pub failed: u32,
    /// Each replica, by index.
    pub list: Vec<ReplicaView>,
}

impl Replicas {
    fn new_id(&mut self, epoch: u64) -> RunId {
        self.next += 1;
        REPLICA_RUN_IDS | ((epoch & 0x3fff_ffff) << 32) | (self.next & 0xffff_ffff)
    }

    /// Capacity the replicas hold on each agent (the run table's invariant check adds it).
    pub(super) fn used(&self) -> HashMap<usize, Capacity> {
        let mut out: HashMap<usize, Capacity> = HashMap::new();
        for r in self.services.values().flat_map(|s| s.replicas.values()) {
            if let Some(i) = r.agent {
                let u = out.entry(i).or_default();
                u.cpus += r.needs.cpus;
                u.mem += r.needs.mem;
                u.disk += r.needs.disk;
            }
        }
        out
    }

    /// The next instant a scaling rule fires.
    pub(super) fn next_rule(&self) -> Option<jiff::Timestamp> {
        self.rule_timers.first().map(|(at, _, _)| *at)
    }

    /// Sets a service's rule timers afresh: each rule's next fire after `now`.
    fn arm_rules(&mut self, name: &str, now: jiff::Timestamp) {
        self.rule_timers.retain(|(_, s, _)| s != name);
        let Some(svc) = self.services.get(name).filter(|s| !s.deleted) else { return };
        for (i, rule) in svc.service.rules.iter().enumerate() {
            if let Some(fire) = rule.next_after(now) {
                self.rule_timers.insert((fire.at, name.to_string(), i));
            }
        }
    }

    /// Whether replicas loaded at start-up still wait for their agents to report them.
    pub(super) fn adopting(&self) -> bool {
        self.adopt_until.is_some()
    }

    /// The earliest restart due.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        self.services.values().flat_map(|s| s.replicas.values()).filter_map(|r| r.restart_at).min()
    }

    /// One service's replicas; `None` if the controller does not hold it.
    pub(super) fn status(&self, name: &str, agent_name: impl Fn(usize) -> String) -> Option<ServiceStatus> {
        let svc = self.services.get(name)?;
        let mut st = ServiceStatus { desired: if svc.deleted { 0 } else { svc.service.replicas() }, ..Default::default() };
        for (&index, r) in &svc.replicas {
            st.replicas += 1;
            match r.state {
                ReplicaState::Starting => st.placed += 1,
                ReplicaState::Running => {
                    st.placed += 1;
                    st.running += 1;
                }
                ReplicaState::Healthy => {
                    st.placed += 1;
                    st.running += 1;
                    st.healthy += 1;
                }
                ReplicaState::Restarting => st.restarting += 1,
                ReplicaState::Failed => st.failed += 1,
                ReplicaState::Unplaced | ReplicaState::Stopping => {}
            }
            let ready = r.state == ReplicaState::Healthy && !r.pulled_out;
            st.ready += u32::from(ready);
            st.list.push(ReplicaView {
                index,
                state: r.state,
                agent: r.agent.map(&agent_name),
                run_id: r.run_id,
                attempt: r.attempt,
                restarts: r.total_restarts,
                reason: r.reason.clone(),
                ready,
                on_release: r.release,
            });
        }
        Some(st)
    }

    /// Whether attempt `attempt` of replica run `id` is one we believe runs on agent `i`.
    fn ours(&self, id: RunId, attempt: u32, i: usize) -> bool {
        self.replica(id).is_some_and(|r| {
            r.attempt == attempt
                && r.agent == Some(i)
                && matches!(r.state, ReplicaState::Starting | ReplicaState::Running | ReplicaState::Healthy | ReplicaState::Stopping)
        })
    }

    fn replica(&self, id: RunId) -> Option<&Replica> {
        let (name, index) = self.by_run.get(&id)?;
        self.services.get(name)?.replicas.get(index)
    }

    /// A replica and the service spec its attempts run (the release's, for one marked so).
    fn replica_mut(&mut self, id: RunId) -> Option<(&Service, &mut Replica)> {
        let (name, index) = self.by_run.get(&id)?;
        let svc = self.services.get_mut(name)?;
        let r = svc.replicas.get_mut(index)?;
        let service = match &svc.target {
            Some(target) if r.release => target,
            _ => &svc.service,
        };
        Some((service, r))
    }

    /// A replica by service and index.
    pub(super) fn by_index(&self, name: &str, index: u32) -> Option<&Replica> {
        self.services.get(name)?.replicas.get(&index)
    }

    /// A replica by service and index, to change.
    pub(super) fn by_index_mut(&mut self, name: &str, index: u32) -> Option<&mut Replica> {
        self.services.get_mut(name)?.replicas.get_mut(&index)
    }

    /// The indices of a service's replicas (empty for none, or a deleted service).
    pub(super) fn indices(&self, name: &str) -> Vec<u32> {
        self.services.get(name).filter(|s| !s.deleted).map(|s| s.replicas.keys().copied().collect()).unwrap_or_default()
    }

    /// Sets (or clears) the spec of a service's release in progress; cleared, every replica
    /// goes back to the current spec.
    pub(super) fn set_target(&mut self, name: &str, target: Option<Service>) {
        let Some(svc) = self.services.get_mut(name) else { return };
        if target.is_none() {
            for r in svc.replicas.values_mut() {
                r.release = false;
                r.pulled_out = false;
            }
        }
        svc.target = target;
    }

    /// The current spec of a service, replaced by its release's once that succeeded.
    pub(super) fn promote(&mut self, name: &str, service: Service) {
        if let Some(svc) = self.services.get_mut(name) {
            svc.service = service;
        }
        self.set_target(name, None);
    }

    /// The replica runs on agent `i`.
    fn on_agent(&self, i: usize) -> Vec<RunId> {
        self.services.values().flat_map(|s| s.replicas.values()).filter(|r| r.agent == Some(i)).map(|r| r.run_id).collect()
    }
}

impl Scheduler {
    /// The snapshot key replicas of a service are counted under (spread places by it).
    fn service_key(name: &str) -> String {
        format!("service/{name}")
    }

    /// Takes in a created or changed service and converges it.
    pub(super) async fn service_put(&mut self, service: Service) {
        let name = service.spec.name.clone();
        match self.replicas.services.get_mut(&name) {
            Some(svc) => {
                svc.service = service;
                svc.deleted = false;
            }
            None => {
                self.replicas.services.insert(name.clone(), Svc { service, target: None, replicas: BTreeMap::new(), deleted: false });
            }
        }
        let now = self.clock.now();
        self.replicas.arm_rules(&name, now);
        // A change (or a scale) is worth another try for replicas given up.
        if let Some(svc) = self.replicas.services.get_mut(&name) {
            for r in svc.replicas.values_mut().filter(|r| r.state == ReplicaState::Failed) {
                r.start_failures = 0;
                r.state = ReplicaState::Restarting;
                r.restart_at = Some(Instant::now());
            }
        }
        self.converge(&name).await;
        self.restart_due().await;
    }

    /// Applies the scaling rules that are due, each as a scale operation, and arms their next
    /// fires. A rule's fire missed while the server was down is not applied late.
    pub(super) async fn apply_scale_rules(&mut self) {
        let now = self.clock.now();
        while let Some((at, name, i)) = self.replicas.rule_timers.first().cloned().filter(|(at, _, _)| *at <= now) {
            self.replicas.rule_timers.remove(&(at, name.clone(), i));
            let Some(svc) = self.replicas.services.get(&name) else { continue };
            let (Some(rule), Some(schedule)) = (svc.service.spec.scale.get(i), svc.service.rules.get(i)) else { continue };
            let replicas = u32::try_from(rule.replicas).unwrap_or(0);
            if let Some(next) = schedule.next_after(at) {
                self.replicas.rule_timers.insert((next.at, name.clone(), i));
            }
            tracing::info!(service = %name, rule = i + 1, replicas, scheduled = %at, "scaling rule fired");
            if let Err(e) = self.scale(&name, replicas).await {
                tracing::error!(service = %name, error = %e, "scheduled scaling failed");
            }
        }
    }

    /// Stops every replica of a deleted service; it is forgotten once they have stopped.
    pub(super) async fn service_delete(&mut self, name: &str) {
        if let Some(svc) = self.replicas.services.get_mut(name) {
            svc.deleted = true;
        }
        self.replicas.rule_timers.retain(|(_, s, _)| s != name);
        self.converge(name).await;
    }

    /// One service's replicas.
    pub(super) fn service_status(&self, name: &str) -> Option<ServiceStatus> {
        self.replicas.status(name, |i| self.agents.name(i).to_string())
    }

    /// Brings a service's replicas to its desired count: missing indices are created and placed,
    /// indices at or above the count stop.
    pub(super) async fn converge(&mut self, name: &str) {
        let Some(svc) = self.replicas.services.get(name) else { return };
        let want = if svc.deleted { 0 } else { svc.service.replicas() };
        let needs = Capacity::of(&svc.service.spec.resources);
        let (missing, extra): (Vec<u32>, Vec<RunId>) = match svc.service.spec.scale_in {
            // The replicas are indices 0..want: those above go, the gaps below are filled.
            ScaleIn::Newest => (
                (0..want).filter(|i| !svc.replicas.contains_key(i)).collect(),
                svc.replicas.range(want..).filter(|(_, r)| !r.remove).map(|(_, r)| r.run_id).collect(),
            ),
            // Any `want` replicas may stay: the longest running go, and a scale-out takes the
            // lowest free indices.
            ScaleIn::Oldest => {
                let live: Vec<(u32, Option<Instant>)> =
                    svc.replicas.iter().filter(|(_, r)| !r.remove).map(|(&i, r)| (i, r.up_since)).collect();
                let more = (want as usize).saturating_sub(live.len());
                let fewer = live.len().saturating_sub(want as usize);
                let stop = ScaleIn::Oldest.choose(&live, fewer);
                (
                    (0..).filter(|i| !svc.replicas.contains_key(i)).take(more).collect(),
                    stop.iter().filter_map(|i| svc.replicas.get(i)).map(|r| r.run_id).collect(),
                )
            }
        };
        if svc.deleted && svc.replicas.is_empty() {
            self.replicas.services.remove(name);
            return;
        }
        let epoch = self.epoch;
        for index in missing {
            let run_id = self.replicas.new_id(epoch);
            let r = Replica {
                run_id,
                attempt: 0,
                state: ReplicaState::Unplaced,
                agent: None,
                needs,
                restarts: 0,
                restart_at: None,
                up_since: None,
                remove: false,
                reason: None,
                total_restarts: 0,
                connection: 0,
                release: false,
                pulled_out: false,
                replacing: false,
                start_failures: 0,
                recovered: self.replicas.loading,
            };
            self.replicas.by_run.insert(run_id, (name.to_string(), index));
            if let Some(svc) = self.replicas.services.get_mut(name) {
                svc.replicas.insert(index, r);
            }
            self.start_replica(run_id).await;
        }
        for id in extra {
            self.stop_replica(id, true, "scaled in").await;
        }
    }

    /// Places and launches a replica's next attempt; it waits as `unplaced` when nothing fits.
    async fn start_replica(&mut self, id: RunId) {
        let Some(&(_, index)) = self.replicas.by_run.get(&id) else { return };
        let adopting = self.replicas.adopt_until.is_some_and(|t| Instant::now() < t);
        let Some((service, r)) = self.replicas.replica_mut(id) else { return };
        if r.recovered && adopting {
            r.state = ReplicaState::Unplaced;
            r.reason = Some("the server restarted: waiting for its agent to report it still runs".into());
            return;
        }
        r.recovered = false;
        let spec = &service.spec;
        let key = Self::service_key(&spec.name);
        let constraints = CompiledConstraint::compile(&spec.constraints);
        let req = Request { job: &key, needs: r.needs, constraints: &constraints, strategy: spec.placement, warm_agent: None };
        let i = match self.agents.snapshot.place(&req) {
            Ok(i) => i,
            Err(e) => {
                r.state = ReplicaState::Unplaced;
                r.restart_at = None;
                r.reason = Some(format!("waiting for an agent: {e}"));
                return;
            }
        };
        self.agents.snapshot.commit(i, &key, &r.needs);
        r.attempt += 1;
        r.agent = Some(i);
        r.state = ReplicaState::Starting;
        r.restart_at = None;
        r.up_since = None;
        r.connection = self.agents.links[i].connection;
        let launch = Launch {
            run_id: id,
            job: replica_claim_name(&spec.name, index),
            scheduled_at: self.clock.now(),
            attempt: r.attempt,
            epoch: self.epoch,
            task: Task::of_replica(spec, index),
            health: spec.health.clone(),
        };
        tracing::info!(service = %spec.name, index, run = id, attempt = r.attempt, agent = %self.agents.name(i), "replica launched");
        let detail = serde_json::json!({
            "index": index, "agent": self.agents.name(i), "attempt": r.attempt, "run_id": id, "on_release": r.release,
        });
        let name = spec.name.clone();
        self.announce_service(EventKind::ReplicaPlaced, &name, detail);
        let to = self.agents.links[i].tx.clone();
        self.dispatcher.send(Outgoing { at: None, measure: false, to, msg: ToAgent::Launch(Box::new(launch)) }).await;
    }

    /// Asks a replica to stop; `remove` drops it once stopped, otherwise it restarts.
    pub(super) async fn stop_replica(&mut self, id: RunId, remove: bool, why: &str) {
        let Some((_, r)) = self.replicas.replica_mut(id) else { return };
        r.remove |= remove;
        r.reason = Some(why.to_string());
        match (r.agent, r.state) {
            (Some(i), ReplicaState::Starting | ReplicaState::Running | ReplicaState::Healthy) => {
                r.state = ReplicaState::Stopping;
                let msg = ToAgent::Kill { run_id: id, attempt: Some(r.attempt), reason: KillReason::Requested };
                let to = self.agents.links[i].tx.clone();
                self.dispatcher.send(Outgoing { at: None, measure: false, to, msg }).await;
            }
            (_, ReplicaState::Stopping) => {}
            // Not on an agent: nothing to stop.
            // Boxed: ending a replica may converge its service, which may stop another.
            _ => Box::pin(self.replica_ended(id, None)).await,
        }
    }

    /// A replica's attempt is over (exited, killed, lost): it is removed, or restarted after its
    /// backoff (`backoff` false: at once, as when its host was lost).
    async fn replica_ended_with(&mut self, id: RunId, reason: Option<String>, backoff: bool) {
        let Some(&(ref name, index)) = self.replicas.by_run.get(&id) else { return };
        let name = name.clone();
        let Some((service, r)) = self.replicas.replica_mut(id) else { return };
        let agent = r.agent.take();
        if let Some(i) = agent {
            let key = Self::service_key(&service.spec.name);
            self.agents.snapshot.release(i, &key, &r.needs);
        }
        if reason.is_some() {
            r.reason = reason;
        }
        let detail = serde_json::json!({
            "index": index, "agent": agent.map(|i| self.agents.name(i)), "attempt": r.attempt, "run_id": id,
            "reason": r.reason, "removed": r.remove,
        });
        self.announce_service(EventKind::ReplicaStopped, &name, detail);
        let Some((service, r)) = self.replicas.replica_mut(id) else { return };
        if r.remove {
            let (name, index) = self.replicas.by_run.remove(&id).expect("a replica has its run");
            let svc = self.replicas.services.get_mut(&name).expect("a replica has its service");
            svc.replicas.remove(&index);
            // Room freed, and a scale-out while it stopped may want its index back.
            self.converge(&name).await;
            self.place_unplaced_replicas().await;
            return;
        }
        let now = Instant::now();
        if std::mem::take(&mut r.replacing) {
            // Replaced by a release: its next attempt (on the release's spec, or back on the
            // current one) starts at once, and this was no failure.
            r.up_since = None;
            r.state = ReplicaState::Restarting;
            r.restart_at = Some(now);
            self.restart_due().await;
            return;
        }
        if r.start_failures >= MAX_START_FAILURES {
            r.up_since = None;
            r.state = ReplicaState::Failed;
            r.restart_at = None;
            let why = r.reason.take().unwrap_or_else(|| "it ended before it ran".into());
            r.reason = Some(format!(
                "gave up after {} failed starts in a row: {why}; it is started again when the service's spec changes (or it is scaled)",
                r.start_failures
            ));
            tracing::warn!(service = %service.spec.name, run = id, reason = ?r.reason, "replica given up");
            self.place_unplaced_replicas().await;
            return;
        }
        let policy = service.spec.restart;
        // A replica that stayed up for the longest delay starts its backoff over.
        if r.up_since.is_some_and(|t| now.duration_since(t) >= policy.max_delay.as_std()) {
            r.restarts = 0;
        }
        let delay = if backoff { policy.delay(r.restarts).as_std() } else { std::time::Duration::ZERO };
        r.restarts += 1;
        r.total_restarts += 1;
        r.up_since = None;
        r.state = ReplicaState::Restarting;
        r.restart_at = Some(now + delay);
        let detail = serde_json::json!({
            "index": index, "attempt": r.attempt + 1, "restart_in_ms": delay.as_millis() as u64, "reason": r.reason,
        });
        self.announce_service(EventKind::ReplicaReplaced, &name, detail);
        if delay.is_zero() {
            self.restart_due().await;
        } else {
            self.place_unplaced_replicas().await;
        }
    }

    async fn replica_ended(&mut self, id: RunId, reason: Option<String>) {
        self.replica_ended_with(id, reason, true).await;
    }

    /// Restarts replicas whose backoff is over.
    pub(super) async fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<RunId> = self
            .replicas
            .services
            .values()
            .flat_map(|s| s.replicas.values())
            .filter(|r| r.restart_at.is_some_and(|t| t <= now))
            .map(|r| r.run_id)
            .collect();
        for id in due {
            self.start_replica(id).await;
        }
    }

    /// Tries again to place replicas waiting for room.
    pub(super) async fn place_unplaced_replicas(&mut self) {
        let waiting: Vec<RunId> = self
            .replicas
            .services
            .values()
            .flat_map(|s| s.replicas.values())
            .filter(|r| r.state == ReplicaState::Unplaced)
            .map(|r| r.run_id)
            .collect();
        for id in waiting {
            self.start_replica(id).await;
        }
    }

    /// A status update of a replica's attempt.
    pub(super) async fn replica_status(&mut self, u: &StatusUpdate) {
        let Some((name, index)) = self.replicas.by_run.get(&u.run_id).cloned() else {
            tracing::debug!(run = u.run_id, "update for a replica that is gone; ignored");
            return;
        };
        let Some((service, r)) = self.replicas.replica_mut(u.run_id) else { return };
        if r.attempt != u.attempt || r.agent.is_none() {
            return;
        }
        match u.state {
            RunState::Running if r.state == ReplicaState::Starting => {
                r.up_since = Some(Instant::now());
                r.start_failures = 0;
                // Without a health check, running is healthy.
                r.state = if service.spec.health.is_some() { ReplicaState::Running } else { ReplicaState::Healthy };
                let healthy = r.state == ReplicaState::Healthy;
                let detail = serde_json::json!({"index": index, "attempt": u.attempt, "run_id": u.run_id});
                self.announce_service(EventKind::ReplicaStarted, &name, detail.clone());
                if healthy {
                    self.announce_service(EventKind::ReplicaHealthy, &name, detail);
                }
            }
            s if s.is_terminal() => {
                if r.state == ReplicaState::Starting {
                    r.start_failures += 1;
                }
                let why = match (&u.reason, r.state) {
                    (_, ReplicaState::Stopping) => None,
                    (Some(reason), _) => Some(format!("exited ({s}): {reason}")),
                    (None, _) => Some(format!("exited ({s})")),
                };
                self.replica_ended(u.run_id, why).await;
            }
            _ => {}
        }
    }

    /// A health change of a replica's attempt: healthy, or stopped to be replaced.
    pub(super) async fn replica_health(&mut self, h: &HealthReport) {
        let Some((name, index)) = self.replicas.by_run.get(&h.run_id).cloned() else { return };
        let Some((_, r)) = self.replicas.replica_mut(h.run_id) else { return };
        if r.attempt != h.attempt {
            return;
        }
        match (h.healthy, r.state) {
            (true, ReplicaState::Running) => {
                r.state = ReplicaState::Healthy;
                let detail = serde_json::json!({"index": index, "attempt": h.attempt, "run_id": h.run_id});
                self.announce_service(EventKind::ReplicaHealthy, &name, detail);
            }
            (false, ReplicaState::Running | ReplicaState::Healthy) => {
                let why = format!("unhealthy: {}", h.reason.as_deref().unwrap_or("its health check failed"));
                tracing::warn!(run = h.run_id, reason = %why, "replica unhealthy; replacing it");
                let detail = serde_json::json!({"index": index, "attempt": h.attempt, "run_id": h.run_id, "reason": why});
                self.announce_service(EventKind::ReplicaUnhealthy, &name, detail);
                self.stop_replica(h.run_id, false, &why).await;
            }
            _ => {}
        }
    }

    /// Agent `i` was lost: its replicas start elsewhere at once, and are stopped there if it
    /// comes back.
    pub(super) async fn replicas_lost(&mut self, i: usize, why: &str) {
        for id in self.replicas.on_agent(i) {
            if let Some(r) = self.replicas.replica(id) {
                self.agents.links[i].given_up.push((id, r.attempt));
            }
            self.replica_ended_with(id, Some(why.to_string()), false).await;
        }
    }

    /// Reconciles agent `i`'s replicas with what it holds (see `reconcile.rs`): returns the held
    /// replica attempts to stop as stale; replicas it should have but does not are restarted.
    ///
    /// The report was made when the agent registered, so it says nothing of the launches sent
    /// since on the same connection (a replica placed as the agent joined, perhaps already
    /// running by the time the report is applied): those are left alone. Taking their absence
    /// for a loss would launch attempt N+1 beside a running attempt N.
    pub(super) async fn reconcile_replicas(&mut self, i: usize, held: &[HeldRun]) -> Vec<(RunId, u32)> {
        let mut stale = Vec::new();
        for h in held.iter().filter(|h| is_replica(h.run_id) && !h.finished) {
            if !self.replicas.ours(h.run_id, h.attempt, i) && !self.adopt_replica(i, h) {
                stale.push((h.run_id, h.attempt));
            }
        }
        let connection = self.agents.links[i].connection;
        for id in self.replicas.on_agent(i) {
            let Some(r) = self.replicas.replica(id) else { continue };
            if r.connection >= connection || held.iter().any(|h| h.run_id == id && h.attempt == r.attempt) {
                continue;
            }
            let why = format!("agent {} came back without it", self.agents.name(i));
            self.replica_ended_with(id, Some(why), false).await;
        }
        stale
    }

    /// Loads every stored service at start-up (replicas are placed as agents join).
    /// Loads every stored service at start-up. Their replicas wait, for the agent timeout at
    /// most, for their agents to report them running from before (then they are adopted);
    /// the others are placed when that wait is over.
    pub(super) async fn load_services(&mut self) -> crate::error::Result<()> {
        self.replicas.adopt_until = Some(Instant::now() + self.config.agent_timeout);
        self.replicas.loading = true;
        for record in self.store.list_services().await? {
            match record.spec.clone().validate() {
                Ok(service) => self.service_put(service).await,
                Err(e) => tracing::error!(service = %record.spec.name, error = %e, "stored service is invalid; not run"),
            }
        }
        self.replicas.loading = false;
        Ok(())
    }

    /// Ends the start-up wait for replicas' agents once it is over: the replicas no agent
    /// reported are placed afresh.
    pub(super) async fn end_adoption(&mut self) {
        if self.replicas.adopt_until.is_some_and(|t| Instant::now() >= t) {
            self.replicas.adopt_until = None;
            let waiting = self.replicas.services.values().flat_map(|s| s.replicas.values()).filter(|r| r.recovered).count();
            if waiting > 0 {
                tracing::info!(replicas = waiting, "no agent reported these replicas after the restart; starting them afresh");
            }
            for r in self.replicas.services.values_mut().flat_map(|s| s.replicas.values_mut()) {
                r.recovered = false;
            }
            self.place_unplaced_replicas().await;
        }
    }

    /// Takes over a replica that agent `i` still runs from before a server restart: held run
    /// `h` named `service/NAME/INDEX`, for a replica loaded at start-up and not launched since.
    fn adopt_replica(&mut self, i: usize, h: &HeldRun) -> bool {
        let Some((name, index)) = h.replica.as_deref().and_then(|n| n.strip_prefix("service/")).and_then(|n| n.rsplit_once('/')) else {
            return false;
        };
        let Ok(index) = index.parse::<u32>() else { return false };
        let Some(svc) = self.replicas.services.get_mut(name).filter(|s| !s.deleted && index < s.service.replicas()) else {
            return false;
        };
        let has_check = svc.service.spec.health.is_some();
        let Some(r) = svc.replicas.get_mut(&index).filter(|r| r.recovered && r.attempt == 0 && r.agent.is_none()) else {
            return false;
        };
        let old = std::mem::replace(&mut r.run_id, h.run_id);
        r.attempt = h.attempt;
        r.agent = Some(i);
        // Its agent says how its health check stands now, after its report.
        r.state = if has_check { ReplicaState::Running } else { ReplicaState::Healthy };
        r.up_since = Some(Instant::now());
        r.connection = self.agents.links[i].connection;
        r.recovered = false;
        r.reason = None;
        let needs = r.needs;
        self.replicas.by_run.remove(&old);
        self.replicas.by_run.insert(h.run_id, (name.to_string(), index));
        let key = Self::service_key(name);
        self.agents.snapshot.commit(i, &key, &needs);
        tracing::info!(service = name, index, run = h.run_id, attempt = h.attempt, agent = %self.agents.name(i), "replica adopted after a restart");
        let detail = serde_json::json!({
            "index": index, "agent": self.agents.name(i), "attempt": h.attempt, "run_id": h.run_id, "adopted": true,
        });
        self.announce_service(EventKind::ReplicaStarted, name, detail);
        true
    }

    /// Changes a service. What needs no replacement of its replicas (the count, scaling rules,
    /// labels...) is written and applied at once; a change of what its replicas run (see
    /// `ServiceSpec::launch_changed`) rolls out to them through a release of its own (no smoke,
    /// no bake, `batch` at a time, each replaced replica healthy before the next batch), and is
    /// the service's once that release succeeds. Returns the record written and that release.
    pub(super) async fn update_service(
        &mut self,
        service: Service,
        batch: Option<tug_core::release::Batch>,
        health_timeout: Option<tug_core::Duration>,
    ) -> crate::error::Result<(tug_store::ServiceRecord, Option<super::ReleaseView>)> {
        let name = service.spec.name.clone();
        let current = self.store.get_service(&name).await?.spec;
        if !current.launch_changed(&service.spec) {
            return Ok((self.put_service(service, false).await?, None));
        }
        if let Some(r) = self.releases.active(&name) {
            return Err(crate::error::Error::Conflict(format!(
                "service {name:?} is being released ({}); change it through the release, or revoke it (tug release revoke {}) first",
                r.id, r.id
            )));
        }
        // Checked before anything is written, so a refused rollout changes nothing.
        let req = tug_core::release::ReleaseRequest {
            spec: Some(service.spec.clone()),
            smoke: Some(0),
            bake: Some(tug_core::Duration::ZERO),
            batch,
            health_timeout,
            ..Default::default()
        };
        let settled = current.with_settings_of(&service.spec);
        req.clone().plan(&settled)?;
        let settled = settled.validate()?;
        let record = self.put_service(settled, false).await?;
        let mut release = self.start_release(&name, req).await?;
        self.releases.note_update(&release.release.id, self.clock.now());
        if let Some(v) = self.release_view(&release.release.id) {
            release = v;
        }
        Ok((record, Some(release)))
    }

    /// Writes a created (`create`) or changed service, then converges it.
    pub(super) async fn put_service(&mut self, service: Service, create: bool) -> crate::error::Result<tug_store::ServiceRecord> {
        if !create && let Some(r) = self.releases.active(&service.spec.name) {
            return Err(crate::error::Error::Conflict(format!(
                "service {:?} is being released ({}); change it through the release, or revoke it (tug release revoke {}) first",
                service.spec.name, r.id, r.id
            )));
        }
        let now = self.clock.now();
        let record = if create {
            self.store.create_service(&service.spec, now).await?
        } else {
            self.store.update_service(&service.spec, now).await?
        };
        let kind = if create { EventKind::ServiceCreated } else { EventKind::ServiceChanged };
        let detail = serde_json::json!({"version": record.version, "replicas": record.spec.replicas});
        self.announce_service(kind, &service.spec.name, detail);
        self.service_put(service).await;
        Ok(record)
    }

    /// Sets a service's replica count, durably, and starts an operation that follows it.
    pub(super) async fn scale(&mut self, name: &str, replicas: u32) -> crate::error::Result<super::OperationView> {
        let record = self.store.get_service(name).await?;
        let from = u32::try_from(record.spec.replicas).unwrap_or(0);
        let mut spec = record.spec;
        spec.replicas = i64::from(replicas);
        let service = spec.validate().map_err(|e| crate::error::Error::BadRequest(e.to_string()))?;
        self.store.update_service(&service.spec, self.clock.now()).await?;
        let (op, superseded) = self.ops.start(name, from, replicas, self.clock.now());
        for old in &superseded {
            let detail = serde_json::json!({"operation": old.id, "state": old.state, "from": old.from, "to": old.to, "by": op.id});
            self.announce_service(EventKind::OperationFinished, name, detail);
        }
        let changed: Vec<String> = superseded.into_iter().map(|o| o.id).chain([op.id.clone()]).collect();
        self.save_operations(&changed).await;
        let detail = serde_json::json!({"from": from, "replicas": replicas, "operation": op.id});
        self.announce_service(EventKind::ServiceScaled, name, detail);
        self.service_put(service).await;
        self.check_operations().await;
        let status = self.service_status(name);
        Ok(self.ops.view(&op.id, status.as_ref()).expect("the operation just started"))
    }

    /// Writes operations to the store (started, ended), and deletes those no longer kept. A
    /// failed write is logged: the operation goes on, and the next write of it carries it.
    pub(super) async fn save_operations(&mut self, ids: &[String]) {
        for id in ids {
            let Some(record) = self.ops.record(id) else { continue };
            if let Err(e) = self.store.put_progress(&record).await {
                tracing::error!(operation = %id, error = %e, "could not write the scale operation to the store");
            }
        }
        let gone = self.ops.trim();
        if !gone.is_empty()
            && let Err(e) = self.store.delete_progress(tug_store::ProgressKind::Operation, &gone).await
        {
            tracing::warn!(error = %e, "could not delete old scale operations from the store");
        }
    }

    /// Loads the stored scale operations at start-up.
    pub(super) async fn load_operations(&mut self) -> crate::error::Result<()> {
        let records = self.store.list_progress(tug_store::ProgressKind::Operation).await?;
        self.ops.load(records, self.clock.now());
        Ok(())
    }

    /// Ends the operations whose service has reached its count, all healthy.
    pub(super) async fn check_operations(&mut self) {
        let running = self.ops.running();
        if running.is_empty() {
            return;
        }
        let now = self.clock.now();
        let mut ended = Vec::new();
        for name in running {
            let status = self.service_status(&name);
            for (kind, view) in self.ops.check(&name, status.as_ref(), now) {
                if kind == EventKind::OperationFinished {
                    ended.push(view.op.id.clone());
                }
                let detail = serde_json::json!({
                    "operation": view.op.id, "state": view.op.state, "from": view.op.from, "to": view.op.to,
                    "replicas": view.replicas, "placed": view.placed, "started": view.started, "healthy": view.healthy,
                    "error": view.op.error,
                });
                self.announce_service(kind, &name, detail);
            }
        }
        self.save_operations(&ended).await;
    }
}
