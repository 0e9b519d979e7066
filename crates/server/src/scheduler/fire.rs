//! Fire → admit → commit → dispatch: everything that happens when timers come due.

use std::collections::{HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use tug_core::job::ConcurrencyPolicy;
use tug_core::misfire;
use tug_core::protocol::{KillReason, ToAgent};
use tug_core::run::{NewRun, Run, RunId, RunState, Trigger};
use tug_store::FireBatch;

use super::outage::Taken;
use super::timers::Slot;
use tug_core::job::NotifyOn;

use super::dispatch::Outgoing;
use super::events::RunEvent;
use super::runs::{Phase, Placement, WAITING};
use super::Scheduler;
use crate::error::Result;

/// How far ahead of their instant fires are committed.
pub(super) const LEAD: SignedDuration = SignedDuration::from_millis(2);

/// Most runs written by one tick's transaction.
const MAX_FIRES_PER_TICK: usize = 10_000;

/// What admitting a batch decided besides the runs it writes.
#[derive(Default)]
pub(super) struct Decisions {
    /// Active runs to kill to make room under `replace`.
    pub kills: Vec<RunId>,
    /// Runs of the batch that no agent can take now, by key, with why.
    pub waiting: HashMap<(String, Timestamp), String>,
    /// Extra command arguments of a manual run, by key.
    pub args: HashMap<(String, Timestamp), Vec<String>>,
    /// The jobs a tick fired, to give back their fires if the store refuses the batch.
    pub taken: Vec<Taken>,
    /// What the batch counts for once it is written.
    pub counts: Counts,
}

/// A tick's fires and misfires, counted once its batch is written.
#[derive(Default, Clone, Copy)]
pub(super) struct Counts {
    /// Runs started by schedules (on time or backfilled).
    pub fired: u64,
    /// Fires that missed their window.
    pub missed: u64,
    /// Of those, fires the store could not write when they were due, and of how many jobs.
    pub unwritten: u64,
    pub unwritten_jobs: u64,
}

impl Scheduler {
    /// Handles everything due now: job fires (one store transaction for all of them) and retries.
    ///
    /// Fires up to [`LEAD`] ahead are committed now and dispatched at their instant, so the store
    /// write and the timer's millisecond granularity do not make them late.
    pub(super) async fn tick(&mut self) -> Result<()> {
        let now = self.clock.now();
        let horizon = now.saturating_add(LEAD).unwrap_or(now);
        let mut batch = FireBatch::default();
        let mut kills = Decisions::default();
        // Bounded, so one overloaded tick cannot hold the loop for seconds; what is left stays
        // due and the next iteration takes it.
        while batch.runs.len() < MAX_FIRES_PER_TICK
            && let Some(slot) = self.timers.pop_due(horizon)
        {
            self.fire_job(slot, now, horizon, &mut batch, &mut kills);
        }
        let retries = self.runs.due_retries(now);
        while let Some(slot) = self.prewarm_timers.pop_due(now) {
            self.send_prewarm(slot).await;
        }
        let writes = !batch.runs.is_empty() || !batch.cursors.is_empty();
        let taken = std::mem::take(&mut kills.taken);
        let counts = kills.counts;
        match self.commit(batch, kills, now).await {
            Ok(_) => {
                self.stats.fires += counts.fired;
                self.metrics.fires.inc_by(counts.fired);
                self.stats.misfires += counts.missed;
                self.metrics.misfires.inc_by(counts.missed);
                self.metrics.unwritten_fires.inc_by(counts.unwritten);
                if writes {
                    self.store_wrote(counts.unwritten, counts.unwritten_jobs);
                }
            }
            // Nothing was written or launched: the jobs get their fires back (see `outage.rs`).
            Err(e) => {
                self.hold_fires(taken, horizon, &e);
                return Ok(());
            }
        }
        if !retries.is_empty()
            && let Err(e) = self.launch_existing(retries).await
        {
            self.store_failed(format!("starting runs due for retry: {e}"), false);
        }
        Ok(())
    }

    /// Turns the due fires of one job into new runs in `batch` and re-arms its timer.
    fn fire_job(&mut self, slot: Slot, now: Timestamp, horizon: Timestamp, batch: &mut FireBatch, kills: &mut Decisions) {
        let Some(e) = self.slots[slot as usize].as_mut() else { return };
        let Some(first) = e.next.take() else { return };
        let Some(schedule) = e.job.schedule.as_ref() else { return };
        let eps = SignedDuration::from_millis(e.job.spec.epsilon.as_millis());
        kills.taken.push((slot, e.cursor, first));
        let following = schedule.next_after(first);
        // A fire the store could not write when it was due is a misfire however late it is.
        let unwritten = self.held.upto.filter(|u| first <= *u);
        let on_time = unwritten.is_none() && first.checked_add(eps).is_ok_and(|late| now <= late);
        let plan = if on_time && following.is_none_or(|f| f.at > horizon) {
            // The common case: exactly one fire, on time.
            misfire::Plan { on_time: vec![first], cursor: Some(first), ..Default::default() }
        } else {
            let due = std::iter::successors(Some(first), |t| schedule.next_after(*t).map(|f| f.at))
                .take_while(|t| *t <= horizon);
            misfire::plan_unwritten(due, now, e.job.spec.epsilon, e.job.spec.misfire, unwritten)
        };
        let name = e.job.spec.name.clone();
        let missed = plan.missed();
        if missed > 0 {
            kills.counts.missed += missed;
            if unwritten.is_some() {
                // One line for all of them when the backlog is handled (`outage.rs`), not one per job.
                kills.counts.unwritten += missed;
                kills.counts.unwritten_jobs += 1;
            } else {
                tracing::warn!(job = %name, missed, unrecorded = plan.unrecorded, "fires missed their window");
            }
            if let Some(c) = plan.cursor {
                batch.cursors.push((name.clone(), c));
            }
        }
        let policy = e.job.spec.misfire;
        for (i, at) in plan.skipped.iter().enumerate() {
            let mut reason = match unwritten {
                Some(_) if *at <= self.held.upto.unwrap_or(*at) => format!(
                    "missed: due at {at}, when the store could not write it ({}); handled at {now}; misfire policy {policy:?}",
                    self.held.why
                ),
                _ => format!("missed: due at {at}, handled at {now} (epsilon {}); misfire policy {policy:?}", e.job.spec.epsilon),
            };
            if i == 0 && plan.unrecorded > 0 {
                reason.push_str(&format!("; {} earlier missed fires not recorded individually", plan.unrecorded));
            }
            batch.runs.push(skipped(&name, *at, Trigger::Misfire, reason));
        }
        e.cursor = plan.cursor.or(e.cursor);
        for at in &plan.backfill {
            self.admit(slot, *at, Trigger::Misfire, batch, kills);
        }
        for at in &plan.on_time {
            self.admit(slot, *at, Trigger::Schedule, batch, kills);
        }
        // Counted once the batch is written: a batch the store refuses is fired again later.
        kills.counts.fired += (plan.on_time.len() + plan.backfill.len()) as u64;
        self.arm(slot);
    }

    /// Applies the job's concurrency policy to a new run and adds it to `batch`.
    pub(super) fn admit(&mut self, slot: Slot, at: Timestamp, trigger: Trigger, batch: &mut FireBatch, kills: &mut Decisions) {
        let mut run = self.admit_policy(slot, at, trigger, batch, kills);
        if let Some(run) = run.as_mut()
            && run.state == RunState::Starting
        {
            match self.place(slot) {
                Ok(i) => run.agent = Some(self.agents.name(i).to_string()),
                Err(why) => {
                    run.state = RunState::Pending;
                    run.agent = None;
                    run.reason = Some(format!("{WAITING}{why}"));
                    kills.waiting.insert((run.job.clone(), at), why.to_string());
                }
            }
        }
        batch.runs.extend(run);
    }

    /// The concurrency policy's verdict on a new run.
    fn admit_policy(&mut self, slot: Slot, at: Timestamp, trigger: Trigger, batch: &mut FireBatch, kills: &mut Decisions) -> Option<NewRun> {
        let e = self.slots[slot as usize].as_ref()?;
        let name = &e.job.spec.name;
        // Runs of this job already in the batch count as active too.
        let batched = batch.runs.iter().rev().take_while(|r| r.job == *name).filter(|r| r.state != RunState::Skipped).count();
        let active = self.runs.of_job(slot);
        let busy = !active.is_empty() || batched > 0;
        let run = match e.job.spec.concurrency {
            ConcurrencyPolicy::Allow => starting(name, at, trigger),
            ConcurrencyPolicy::Forbid if busy && trigger == Trigger::Misfire => queued(name, at, trigger),
            ConcurrencyPolicy::Forbid if busy => {
                self.stats.concurrency_skips += 1;
                self.metrics.concurrency_skips.inc();
                let active = active.iter().map(|id| id.to_string()).collect::<Vec<_>>().join(", ");
                let reason = if active.is_empty() {
                    "skipped: an earlier fire in the same tick is starting (concurrency: forbid)".to_string()
                } else {
                    format!("skipped: run {active} still active (concurrency: forbid)")
                };
                skipped(name, at, trigger, reason)
            }
            ConcurrencyPolicy::Forbid => starting(name, at, trigger),
            ConcurrencyPolicy::Replace => {
                kills.kills.extend(active.iter().copied());
                // An earlier run of the same batch is replaced before it starts.
                let needs = tug_core::placement::Capacity::of(&e.job.spec.resources);
                for r in batch.runs.iter_mut().rev().take_while(|r| r.job == *name) {
                    if r.state == RunState::Starting {
                        r.state = RunState::Skipped;
                        if let Some(i) = r.agent.take().and_then(|a| self.agents.index(&a)) {
                            self.agents.snapshot.release(i, name, &needs);
                        }
                        r.reason = Some(format!("replaced by the fire at {at} (concurrency: replace)"));
                    }
                }
                starting(name, at, trigger)
            }
        };
        Some(run)
    }

    /// Writes a batch in one transaction, then kills what it replaces and dispatches what it starts.
    pub(super) async fn commit(&mut self, batch: FireBatch, mut decided: Decisions, now: Timestamp) -> Result<Vec<Run>> {
        if batch.runs.is_empty() && batch.cursors.is_empty() {
            return Ok(Vec::new());
        }
        let placed: Vec<(String, Timestamp, String)> = batch
            .runs
            .iter()
            .filter(|r| r.state == RunState::Starting)
            .filter_map(|r| r.agent.clone().map(|a| (r.job.clone(), r.scheduled_at, a)))
            .collect();
        let created = match self.store.commit_fires(batch, now).await {
            Ok(c) => c,
            Err(e) => {
                self.unreserve(&placed, &[]);
                return Err(e.into());
            }
        };
        self.unreserve(&placed, &created);
        self.stats.fire_commits += 1;
        for id in std::mem::take(&mut decided.kills) {
            self.send_kill(id, KillReason::Replaced).await;
        }
        for run in &created {
            let Some(&slot) = self.index.get(&run.job) else { continue };
            let Some(e) = self.slots[slot as usize].as_mut() else { continue };
            if run.trigger == Trigger::Misfire && !self.events.is_empty() {
                let webhooks = e.job.spec.webhooks.clone();
                self.events.emit(RunEvent { event: NotifyOn::Missed, run: run.clone(), webhooks });
            }
            if run.state == RunState::Skipped {
                continue;
            }
            e.last_run_at = e.last_run_at.max(Some(run.scheduled_at));
            let needs = tug_core::placement::Capacity::of(&e.job.spec.resources);
            // Keys are built only when a decision was recorded (rare): not once per fire.
            let key = || (run.job.clone(), run.scheduled_at);
            let args = if decided.args.is_empty() { Vec::new() } else { decided.args.remove(&key()).unwrap_or_default() };
            let (phase, placement) = match run.state {
                RunState::Starting => match run.agent.as_deref().and_then(|a| self.agents.index(a)) {
                    Some(agent) => (Phase::Starting { launched: None }, Some(Placement { agent, needs })),
                    None => {
                        tracing::error!(run = run.id, agent = ?run.agent, "run written as starting on an unknown agent");
                        continue;
                    }
                },
                RunState::Pending => match decided.waiting.remove(&key()) {
                    Some(why) => (Phase::Unplaced(why), None),
                    None => (Phase::Queued, None),
                },
                _ => continue,
            };
            let starting = placement.is_some();
            self.runs.insert(run.clone(), slot, phase, placement, args);
            // At once, not after the whole batch: the dispatcher starts sending the first
            // launches while the rest of a large herd is still being entered.
            if starting {
                self.dispatch(run.id).await;
            }
        }
        self.metrics.runs_in_flight.set(self.runs.len() as i64);
        // After the launches: the event stream is not on the path to the agents.
        self.announce_created(&created);
        Ok(created)
    }

    /// Hints the agent a job's next run will most likely land on to get ready for it.
    async fn send_prewarm(&mut self, slot: Slot) {
        let Some(e) = self.slots[slot as usize].as_ref() else { return };
        if !e.firing() {
            return;
        }
        let (job, task) = (e.job.spec.name.clone(), Box::new(tug_core::protocol::Task::of(&e.job.spec)));
        let needs = tug_core::placement::Capacity::of(&e.job.spec.resources);
        // Place without reserving: the fire itself places (and usually lands on the same agent).
        let Ok(i) = self.place(slot) else { return };
        self.agents.snapshot.release(i, &job, &needs);
        let to = self.agents.links[i].tx.clone();
        self.dispatcher.send(Outgoing { at: None, measure: false, to, msg: ToAgent::Prewarm { job, task } }).await;
    }

    /// Gives back the reservations of batch runs the store did not create (duplicate keys).
    fn unreserve(&mut self, placed: &[(String, Timestamp, String)], created: &[Run]) {
        // The common case: every placed run was created, so there is nothing to give back.
        // (A scan of `created` per placed run made a herd of 5,000 fires cost 12.5 million
        // comparisons, all before its first launch went out.)
        if created.iter().filter(|r| r.state == RunState::Starting).count() == placed.len() {
            return;
        }
        let made: HashSet<(&str, Timestamp)> = created.iter().map(|r| (r.job.as_str(), r.scheduled_at)).collect();
        for (job, at, agent) in placed {
            if made.contains(&(job.as_str(), *at)) {
                continue;
            }
            let needs = self.entry(job).map(|e| tug_core::placement::Capacity::of(&e.job.spec.resources));
            if let (Some(i), Some(needs)) = (self.agents.index(agent), needs) {
                self.agents.snapshot.release(i, job, &needs);
            }
        }
    }

    /// Sends a kill to the agent of an active run.
    pub(super) async fn send_kill(&mut self, id: RunId, reason: KillReason) {
        let Some(to) = self.runs.run(id).and_then(|r| self.agent_tx(r.agent.as_deref())) else { return };
        // Through the dispatcher, so a kill never overtakes the launch it is meant for.
        let msg = ToAgent::Kill { run_id: id, attempt: None, reason };
        self.dispatcher.send(Outgoing { at: None, measure: false, to, msg }).await;
    }

    /// Moves existing pending runs (retries, queued) to `starting`, writes that, then dispatches.
    pub(super) async fn launch_existing(&mut self, ids: Vec<RunId>) -> Result<()> {
        let mut changed = Vec::new();
        for id in &ids {
            let Some(slot) = self.runs.get(*id).filter(|a| a.run.state == RunState::Pending).map(|a| a.slot) else {
                continue;
            };
            let placed = self.place(slot);
            let Some(e) = self.slots[slot as usize].as_ref() else { continue };
            let needs = tug_core::placement::Capacity::of(&e.job.spec.resources);
            match placed {
                Ok(agent) => {
                    let name = self.agents.name(agent).to_string();
                    let snapshot = &mut self.agents.snapshot;
                    changed.extend(self.runs.start(*id, &name, Placement { agent, needs }, snapshot).cloned());
                }
                Err(why) => {
                    if self.runs.wait_for_room(*id, why.to_string(), &mut self.agents.snapshot) {
                        changed.extend(self.runs.run(*id).cloned());
                    }
                }
            }
        }
        if changed.is_empty() {
            return Ok(());
        }
        // Durable before the launch is sent, and ordered after earlier changes of these runs.
        let ids: Vec<u64> = changed.iter().filter(|r| r.state == RunState::Starting).map(|r| r.id).collect();
        match self.persister.save(changed, Vec::new()).await.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(crate::error::Error::ShuttingDown),
        }
        for id in ids {
            self.dispatch(id).await;
        }
        Ok(())
    }
}

/// A run to start; `admit` places it on an agent.
fn starting(job: &str, at: Timestamp, trigger: Trigger) -> NewRun {
    NewRun { job: job.to_string(), scheduled_at: at, trigger, state: RunState::Starting, reason: None, agent: None }
}

fn skipped(job: &str, at: Timestamp, trigger: Trigger, reason: String) -> NewRun {
    NewRun { job: job.to_string(), scheduled_at: at, trigger, state: RunState::Skipped, reason: Some(reason), agent: None }
}

/// A backfilled fire that waits for the job's active run under `forbid`.
fn queued(job: &str, at: Timestamp, trigger: Trigger) -> NewRun {
    NewRun {
        job: job.to_string(),
        scheduled_at: at,
        trigger,
        state: RunState::Pending,
        reason: Some("queued: waiting for the previous run to finish (concurrency: forbid)".into()),
        agent: None,
    }
}
