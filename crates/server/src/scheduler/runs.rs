//! The run table: every active run and the only code that changes one.
//!
//! An active run is an [`ActiveRun`]: the run as the store has it, the job it belongs to, its
//! [`Phase`], the agent and resources it holds, and the extra arguments of a manual run. The
//! other scheduler files decide; they change a run only through the transitions here:
//!
//! ```text
//!            insert ─┬─► Queued ─────────────┐
//!                    ├─► Unplaced(why) ◄─────┤ wait_for_room
//!                    │        │ start        │
//!  retry ─► RetryAt(at) ──────┼──────────────┘
//!    ▲                        ▼
//!    │     recover ─► Unconfirmed ─confirm─► Starting{launched} ─running─► Running
//!    └───────────────────────┴──────────────────┴──────────────────────────┴──► finish (removed)
//! ```
//!
//! Invariants, checked by [`RunTable::check`] (the property test in `crates/tug/tests/run_table.rs` drives
//! random fires, placements, updates, agent losses, reconnects and restarts and checks after
//! every step):
//! 1. A run is in exactly one phase, and its stored state agrees with it: `Queued`, `Unplaced`,
//!    `RetryAt` are `pending` (`RetryAt` with its `retry_at`), `Starting` is `starting`,
//!    `Running` is `running`, `Unconfirmed` is either.
//! 2. A run holds a placement exactly when it is `Starting`, `Running` or `Unconfirmed`; the
//!    placement names the run's agent.
//! 3. An agent's used resources are the sum of what the runs placed on it hold, and its run set
//!    is exactly those runs.
//! 4. The retry timers hold exactly the `RetryAt` runs, at their instants; the waiting list holds
//!    exactly the `Unplaced` runs; each job's list holds exactly its active runs.
//! 5. No run key `(job, scheduled_at)` has two active runs.

use std::collections::{BTreeSet, HashMap, HashSet};

use jiff::Timestamp;
use tokio::time::Instant;
use tug_core::placement::{Capacity, Snapshot};
use tug_core::run::{Run, RunId, RunState};

use super::timers::{Slot, Timers};

/// Where an active run is in its life; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Phase {
    /// Pending behind the job's running run (`forbid`, a backfilled fire).
    Queued,
    /// Pending: no agent can take it now, for this reason.
    Unplaced(String),
    /// Pending until its retry instant.
    RetryAt(Timestamp),
    /// Placed and written `starting`; the launch went out at `launched` (`None`: not yet).
    Starting { launched: Option<Instant> },
    /// Its agent said it runs.
    Running,
    /// Recovered at start-up as starting or running, until its agent says what it holds.
    Unconfirmed,
}

impl Phase {
    /// Whether a run in this phase holds resources on an agent.
    fn placed(&self) -> bool {
        matches!(self, Phase::Starting { .. } | Phase::Running | Phase::Unconfirmed)
    }
}

/// The agent a run was placed on and what it holds there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Placement {
    /// The agent's index in the registry.
    pub agent: usize,
    /// What the run holds.
    pub needs: Capacity,
}

/// One active run.
#[derive(Debug, Clone)]
pub(crate) struct ActiveRun {
    /// The run, as last written.
    pub run: Run,
    /// Its job's slot.
    pub slot: Slot,
    /// Where it is.
    pub phase: Phase,
    /// Its agent and resources, while it has them.
    pub placement: Option<Placement>,
    /// Extra command arguments of a manual run (memory only: see
    /// [`SchedulerHandle::run_now_with_args`](super::SchedulerHandle::run_now_with_args)).
    pub args: Vec<String>,
}

/// Every active run, with the indexes the scheduler looks them up by.
#[derive(Default)]
pub(crate) struct RunTable {
    runs: HashMap<RunId, ActiveRun>,
    /// Each job's active runs, oldest first.
    by_slot: HashMap<Slot, Vec<RunId>>,
    /// The runs placed on each agent.
    by_agent: Vec<HashSet<RunId>>,
    /// The `Unplaced` runs, oldest first.
    unplaced: BTreeSet<RunId>,
    /// When each `RetryAt` run is due.
    retries: Timers<RunId>,
}

impl RunTable {
    /// Number of active runs.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// An active run.
    pub fn get(&self, id: RunId) -> Option<&ActiveRun> {
        self.runs.get(&id)
    }

    /// The run record of an active run.
    pub fn run(&self, id: RunId) -> Option<&Run> {
        self.runs.get(&id).map(|a| &a.run)
    }

    /// Every active run.
    pub fn iter(&self) -> impl Iterator<Item = &ActiveRun> {
        self.runs.values()
    }

    /// A job's active runs, oldest first.
    pub fn of_job(&self, slot: Slot) -> &[RunId] {
        self.by_slot.get(&slot).map_or(&[], Vec::as_slice)
    }

    /// The runs placed on agent `i`.
    pub fn on_agent(&self, i: usize) -> impl Iterator<Item = RunId> + '_ {
        self.by_agent.get(i).into_iter().flatten().copied()
    }

    /// How many runs are placed on agent `i`.
    pub fn count_on_agent(&self, i: usize) -> usize {
        self.by_agent.get(i).map_or(0, HashSet::len)
    }

    /// The runs waiting for room, oldest first; they stay `Unplaced` until placed.
    pub fn unplaced(&self) -> Vec<RunId> {
        self.unplaced.iter().copied().collect()
    }

    /// Whether any run waits for room.
    pub fn has_unplaced(&self) -> bool {
        !self.unplaced.is_empty()
    }

    /// The earliest retry instant.
    pub fn next_retry(&self) -> Option<Timestamp> {
        self.retries.first()
    }

    /// Takes the runs whose retry is due at `now`; each stays `RetryAt` until started.
    pub fn due_retries(&mut self, now: Timestamp) -> Vec<RunId> {
        std::iter::from_fn(|| self.retries.pop_due(now)).collect()
    }

    /// Whether a job's queued run may start: none of its active runs is past `Queued`.
    pub fn next_queued(&self, slot: Slot) -> Option<RunId> {
        let ids = self.of_job(slot);
        let busy = ids.iter().any(|id| self.runs.get(id).is_some_and(|a| a.phase != Phase::Queued));
        if busy {
            return None;
        }
        ids.iter().copied().find(|id| self.runs.get(id).is_some_and(|a| a.phase == Phase::Queued))
    }

    /// Adds an active run (created, or recovered from the store). A placed phase needs its
    /// placement, whose resources the caller has already committed in the snapshot.
    pub fn insert(&mut self, run: Run, slot: Slot, phase: Phase, placement: Option<Placement>, args: Vec<String>) {
        let id = run.id;
        match &phase {
            Phase::Unplaced(_) => {
                self.unplaced.insert(id);
            }
            Phase::RetryAt(at) => self.retries.insert(*at, id),
            _ => {}
        }
        if let Some(p) = placement {
            self.agent_runs(p.agent).insert(id);
        }
        self.by_slot.entry(slot).or_default().push(id);
        self.runs.insert(id, ActiveRun { run, slot, phase, placement, args });
    }

    fn agent_runs(&mut self, i: usize) -> &mut HashSet<RunId> {
        if self.by_agent.len() <= i {
            self.by_agent.resize_with(i + 1, HashSet::new);
        }
        &mut self.by_agent[i]
    }

    /// Leaves the current phase: drops the run from the waiting list or the retry timers, and
    /// gives back what it held.
    fn leave(&mut self, id: RunId, snapshot: &mut Snapshot) {
        let Some(a) = self.runs.get_mut(&id) else { return };
        match &a.phase {
            Phase::Unplaced(_) => {
                self.unplaced.remove(&id);
            }
            Phase::RetryAt(at) => self.retries.remove(*at, id),
            _ => {}
        }
        if let Some(p) = a.placement.take() {
            snapshot.release(p.agent, &a.run.job, &p.needs);
            if let Some(set) = self.by_agent.get_mut(p.agent) {
                set.remove(&id);
            }
        }
    }

    /// A pending run was placed on `placement.agent` (resources already committed in the
    /// snapshot): it becomes `starting` there. Returns the run to write.
    pub fn start(&mut self, id: RunId, agent: &str, placement: Placement, snapshot: &mut Snapshot) -> Option<&Run> {
        self.leave(id, snapshot);
        self.agent_runs(placement.agent).insert(id);
        let a = self.runs.get_mut(&id)?;
        a.phase = Phase::Starting { launched: None };
        a.placement = Some(placement);
        a.run.state = RunState::Starting;
        a.run.agent = Some(agent.to_string());
        a.run.retry_at = None;
        a.run.started_at = None;
        Some(&a.run)
    }

    /// A pending run no agent can take: it waits, saying why. Returns whether its record changed.
    pub fn wait_for_room(&mut self, id: RunId, why: String, snapshot: &mut Snapshot) -> bool {
        self.leave(id, snapshot);
        self.unplaced.insert(id);
        let Some(a) = self.runs.get_mut(&id) else { return false };
        let reason = format!("{WAITING}{why}");
        let changed = a.run.reason.as_deref() != Some(&reason);
        a.run.reason = Some(reason);
        a.phase = Phase::Unplaced(why);
        changed
    }

    /// The launch of a starting run went out (again) now.
    pub fn launched(&mut self, id: RunId, now: Instant) {
        if let Some(a) = self.runs.get_mut(&id)
            && matches!(a.phase, Phase::Starting { .. })
        {
            a.phase = Phase::Starting { launched: Some(now) };
        }
    }

    /// Its agent says the run runs.
    pub fn running(&mut self, id: RunId, now: Timestamp) {
        if let Some(a) = self.runs.get_mut(&id) {
            a.phase = Phase::Running;
            a.run.state = RunState::Running;
            a.run.started_at = Some(now);
        }
    }

    /// A recovered run its agent still holds: it goes on as it was.
    pub fn confirm(&mut self, id: RunId, now: Instant) {
        if let Some(a) = self.runs.get_mut(&id)
            && a.phase == Phase::Unconfirmed
        {
            a.phase = match a.run.state {
                RunState::Running => Phase::Running,
                _ => Phase::Starting { launched: Some(now) },
            };
        }
    }

    /// An attempt ended and the run will be retried at `at` (attempt + 1, pending), giving back
    /// what it held. The caller has set the ended attempt's fields and the reason.
    pub fn retry(&mut self, id: RunId, at: Timestamp, snapshot: &mut Snapshot) {
        self.leave(id, snapshot);
        let Some(a) = self.runs.get_mut(&id) else { return };
        a.run.state = RunState::Pending;
        a.run.attempt += 1;
        a.run.retry_at = Some(at);
        a.phase = Phase::RetryAt(at);
        self.retries.insert(at, id);
    }

    /// The run record, for fields that do not change its phase (exit code, reason).
    pub fn record_mut(&mut self, id: RunId) -> Option<&mut Run> {
        self.runs.get_mut(&id).map(|a| &mut a.run)
    }

    /// The run reached a final state (or its job is gone): it leaves the table and gives back
    /// what it held.
    pub fn finish(&mut self, id: RunId, snapshot: &mut Snapshot) -> Option<ActiveRun> {
        self.leave(id, snapshot);
        let a = self.runs.remove(&id)?;
        if let Some(ids) = self.by_slot.get_mut(&a.slot) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_slot.remove(&a.slot);
            }
        }
        Some(a)
    }

    /// Checks the invariants in the module docs against the agents' snapshot; the first
    /// violation, in words.
    pub fn check(&self, snapshot: &Snapshot, replicas: HashMap<usize, Capacity>) -> Result<(), String> {
        // Service replicas hold capacity on agents too.
        let mut used: HashMap<usize, Capacity> = replicas;
        let mut keys = HashSet::new();
        for (id, a) in &self.runs {
            let r = &a.run;
            let state_ok = match &a.phase {
                Phase::Queued | Phase::Unplaced(_) => r.state == RunState::Pending,
                Phase::RetryAt(at) => r.state == RunState::Pending && r.retry_at == Some(*at),
                Phase::Starting { .. } => r.state == RunState::Starting,
                Phase::Running => r.state == RunState::Running,
                Phase::Unconfirmed => matches!(r.state, RunState::Starting | RunState::Running),
            };
            if !state_ok {
                return Err(format!("run {id} is {} in phase {:?}", r.state, a.phase));
            }
            match (&a.placement, a.phase.placed()) {
                (Some(p), true) => {
                    if r.agent.as_deref() != Some(snapshot.agents[p.agent].name.as_str()) {
                        return Err(format!("run {id} is placed on agent {} but names {:?}", p.agent, r.agent));
                    }
                    if !self.by_agent.get(p.agent).is_some_and(|s| s.contains(id)) {
                        return Err(format!("run {id} is placed on agent {} but not in its run set", p.agent));
                    }
                    let u = used.entry(p.agent).or_default();
                    u.cpus += p.needs.cpus;
                    u.mem += p.needs.mem;
                    u.disk += p.needs.disk;
                }
                (None, false) => {}
                (p, _) => return Err(format!("run {id} in phase {:?} has placement {p:?}", a.phase)),
            }
            if matches!(a.phase, Phase::Unplaced(_)) != self.unplaced.contains(id) {
                return Err(format!("run {id} in phase {:?} and the waiting list disagree", a.phase));
            }
            if !self.by_slot.get(&a.slot).is_some_and(|v| v.contains(id)) {
                return Err(format!("run {id} is missing from its job's list"));
            }
            if !keys.insert((r.job.as_str(), r.scheduled_at)) {
                return Err(format!("run key ({}, {}) has two active runs", r.job, r.scheduled_at));
            }
        }
        let retries = self.retries.iter().collect::<Vec<_>>();
        let retrying = self.runs.values().filter(|a| matches!(a.phase, Phase::RetryAt(_))).count();
        if retries.len() != retrying
            || retries.iter().any(|(at, id)| self.runs.get(id).is_none_or(|a| a.phase != Phase::RetryAt(*at)))
        {
            return Err(format!("retry timers {retries:?} and the {retrying} runs waiting to retry disagree"));
        }
        if let Some(id) = self.unplaced.iter().find(|id| !self.runs.contains_key(id)) {
            return Err(format!("run {id} is waiting for room but not active"));
        }
        for (slot, ids) in &self.by_slot {
            if let Some(id) = ids.iter().find(|id| self.runs.get(id).is_none_or(|a| a.slot != *slot)) {
                return Err(format!("job slot {slot} lists run {id}, which is not its active run"));
            }
        }
        for (i, set) in self.by_agent.iter().enumerate() {
            if let Some(id) = set.iter().find(|id| self.runs.get(id).and_then(|a| a.placement).is_none_or(|p| p.agent != i)) {
                return Err(format!("agent {i} lists run {id}, which is not placed there"));
            }
        }
        for (i, agent) in snapshot.agents.iter().enumerate() {
            let want = used.get(&i).copied().unwrap_or_default();
            let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
            if !close(agent.used.cpus, want.cpus) || agent.used.mem != want.mem || agent.used.disk != want.disk {
                return Err(format!("agent {} uses {:?} but its runs hold {want:?}", agent.name, agent.used));
            }
        }
        Ok(())
    }
}

/// The reason of a run that waits because no agent can take it.
pub(super) const WAITING: &str = "waiting for an agent: ";
