//! Status updates from agents: state transitions, finished attempts, retries with backoff, and
//! completion (which frees a `forbid` slot and triggers dependents).

use std::collections::HashSet;

use jiff::{SignedDuration, Timestamp};
use tokio::sync::oneshot;
use tug_core::protocol::{StatusUpdate, ToServer};
use tug_core::run::{Attempt, LateReport, Run, RunId, RunState};

use tug_core::job::NotifyOn;

use super::events::RunEvent;
use super::{FromAgent, Scheduler};
use crate::metrics::StateLabel;
use tug_store::StoreError;

impl Scheduler {
    /// Applies a batch of updates in one store transaction, then acts on what finished. Each
    /// status update is acknowledged to its agent once that transaction has returned, and not
    /// before: an update that changed nothing (a duplicate, a stale attempt) waits too, since the
    /// write it repeats may still be queued.
    pub(super) async fn apply_updates(&mut self, msgs: Vec<FromAgent>) {
        let now = self.clock.now();
        let mut changed: Vec<RunId> = Vec::new();
        let mut seen = HashSet::new();
        let mut attempts = Vec::new();
        let mut finished = Vec::new();
        let mut beats = Vec::new();
        let mut held = Vec::new();
        let mut acks = Vec::new();
        let mut replica_updates = Vec::new();
        let mut health = Vec::new();
        let mut late = Vec::new();
        for FromAgent { msg, acks: to } in msgs {
            match msg {
                // Replicas live in memory: nothing to write before the ack.
                ToServer::Status(u) if super::is_replica(u.run_id) => {
                    if let Some(to) = to {
                        let _ = to.send(u.seq);
                    }
                    replica_updates.push(u);
                }
                ToServer::Health(h) => health.push(h),
                ToServer::Status(u) => {
                    if self.apply_one(&u, now, &mut attempts, &mut finished) {
                        if seen.insert(u.run_id) {
                            changed.push(u.run_id);
                        }
                    } else if u.state.is_terminal() {
                        late.push(u.clone());
                    }
                    if let Some(to) = to {
                        acks.push((to, u.seq));
                    }
                }
                ToServer::Heartbeat { agent, warm_containers } => {
                    match beats.iter_mut().find(|(a, _)| *a == agent) {
                        Some(b) => b.1 = warm_containers,
                        None => beats.push((agent, warm_containers)),
                    }
                }
                ToServer::Held { agent, runs } => held.push((agent, runs)),
                ToServer::BackSoon { agent, within } => self.agent_back_soon(&agent, within),
            }
        }
        for (agent, warm) in beats {
            self.heartbeat(&agent, warm).await;
        }
        let mut late_runs = Vec::new();
        for u in late {
            if let Some(run) = self.late_report(&u, now).await {
                if self.runs.get(run.id).is_some() {
                    if seen.insert(run.id) {
                        changed.push(run.id);
                    }
                } else {
                    late_runs.push(run);
                }
            }
        }
        let written = self.save_and_complete(changed, attempts, finished, now).await;
        // Runs no longer active that got a late report: after the batch's write, in order.
        let late_written = if late_runs.is_empty() { None } else { Some(self.persister.save(late_runs, Vec::new()).await) };
        if !acks.is_empty() {
            // Nothing changed: wait for the writes queued before this batch instead.
            let written = match written {
                Some(w) => w,
                None => self.persister.save(Vec::new(), Vec::new()).await,
            };
            // Not awaited here: the loop moves on while the write goes to the store.
            tokio::spawn(async move {
                // Unacknowledged, the agent keeps the updates and sends them again when it
                // reconnects; a failed write itself is logged by the persister.
                let late_ok = match late_written {
                    Some(w) => matches!(w.await, Ok(Ok(()))),
                    None => true,
                };
                if let Ok(Ok(())) = written.await
                    && late_ok
                {
                    for (to, seq) in acks {
                        let _ = to.send(seq);
                    }
                }
            });
        }
        for u in replica_updates {
            self.replica_status(&u).await;
        }
        // After the batch: updates an agent sent before reconnecting are applied first.
        for (agent, runs) in held {
            Box::pin(self.reconcile(&agent, &runs)).await;
        }
        // After the reconciliation: a replica adopted from what its agent holds hears the
        // health verdict that agent sent right behind its report.
        for h in health {
            self.replica_health(&h).await;
        }
    }

    /// Writes changed runs and attempts, then completes the finished ones. Returns when the
    /// write is durable (`None`: nothing to write).
    pub(super) async fn save_and_complete(
        &mut self,
        changed: Vec<RunId>,
        attempts: Vec<Attempt>,
        finished: Vec<RunId>,
        now: Timestamp,
    ) -> Option<oneshot::Receiver<Result<(), StoreError>>> {
        if changed.is_empty() {
            return None;
        }
        let runs: Vec<Run> = changed.iter().filter_map(|id| self.runs.run(*id).cloned()).collect();
        // Not awaited: the persister writes in order and logs failures; the loop moves on.
        let written = self.persister.save(runs, attempts).await;
        self.complete(finished, now).await;
        Some(written)
    }

    /// A final update for an attempt this server had given up as lost (its run has moved on:
    /// retried, or ended `lost`): the run with the report attached, to be written, or `None` when
    /// the update is not that (a stale or repeated one, a run pruned since). The run's own state
    /// stays. An active run is changed in the run table.
    async fn late_report(&mut self, u: &StatusUpdate, now: Timestamp) -> Option<Run> {
        let mut run = match self.runs.run(u.run_id) {
            Some(r) => r.clone(),
            None => self.store.get_run(u.run_id).await.ok()?,
        };
        if run.late_report.as_ref().is_some_and(|l| l.attempt == u.attempt) {
            return None;
        }
        let given_up = if u.attempt == run.attempt {
            run.state == RunState::Lost
        } else if u.attempt < run.attempt {
            // An earlier attempt's record says how the server saw it end.
            let attempts = self.store.attempts(u.run_id).await.ok()?;
            attempts.iter().any(|a| a.attempt == u.attempt && a.state == RunState::Lost)
        } else {
            false
        };
        if !given_up {
            return None;
        }
        tracing::info!(run = u.run_id, attempt = u.attempt, state = %u.state, "late report of an attempt given up as lost; attached to the run");
        let report = LateReport {
            attempt: u.attempt,
            state: u.state,
            at: now,
            exit_code: u.exit_code,
            signal: u.signal,
            reason: u.reason.clone(),
        };
        if let Some(active) = self.runs.record_mut(u.run_id) {
            active.late_report = Some(report.clone());
        }
        run.late_report = Some(report);
        Some(run)
    }

    /// Applies one update to the in-memory run. Returns whether the run changed.
    fn apply_one(&mut self, u: &StatusUpdate, now: Timestamp, attempts: &mut Vec<Attempt>, finished: &mut Vec<RunId>) -> bool {
        let Some(active) = self.runs.get(u.run_id) else {
            tracing::debug!(run = u.run_id, state = %u.state, "update for a run that is not active; ignored");
            return false;
        };
        let (run, slot) = (&active.run, active.slot);
        if run.attempt != u.attempt || !run.state.can_move_to(u.state) {
            tracing::debug!(run = u.run_id, from = %run.state, to = %u.state, "stale update ignored");
            return false;
        }
        if u.state == RunState::Running {
            self.runs.running(u.run_id, now);
            return true;
        }
        let spec = self.slots[slot as usize].as_ref().map(|e| &e.job.spec);
        let policy = spec.map(|s| s.retries);
        let webhooks = spec.map(|s| s.webhooks.clone()).unwrap_or_default();
        let retry = policy.filter(|p| u.state.is_retryable() && run.attempt <= p.count);
        let Some(run) = self.runs.record_mut(u.run_id) else { return false };
        run.exit_code = u.exit_code;
        run.signal = u.signal;
        run.reason = u.reason.clone();
        match retry {
            Some(p) => {
                // Only a retried attempt is kept apart; the last attempt lives in the run itself.
                attempts.push(Attempt {
                    run_id: run.id,
                    attempt: run.attempt,
                    state: u.state,
                    started_at: run.started_at,
                    finished_at: Some(now),
                    exit_code: u.exit_code,
                    signal: u.signal,
                    reason: u.reason.clone(),
                });
                let delay = p.delay(run.attempt);
                let at = now.saturating_add(SignedDuration::from_millis(delay.as_millis())).unwrap_or(now);
                run.reason = Some(format!(
                    "{}; retry {} of {} in {delay}",
                    u.reason.as_deref().unwrap_or(u.state.as_str()),
                    run.attempt,
                    p.count
                ));
                self.runs.retry(u.run_id, at, &mut self.agents.snapshot);
                self.stats.retries += 1;
                self.metrics.retries.inc();
                if !self.events.is_empty()
                    && let Some(run) = self.runs.run(u.run_id)
                {
                    self.events.emit(RunEvent { event: NotifyOn::Retry, run: run.clone(), webhooks });
                }
            }
            None => {
                run.state = u.state;
                run.finished_at = Some(now);
                finished.push(run.id);
                if !self.events.is_empty() {
                    let exhausted = u.state.is_retryable() && policy.is_some_and(|p| p.count > 0);
                    let event = if u.state == RunState::Succeeded { NotifyOn::Success } else { NotifyOn::Failure };
                    if exhausted {
                        let ev = RunEvent { event: NotifyOn::RetriesExhausted, run: run.clone(), webhooks: webhooks.clone() };
                        self.events.emit(ev);
                    }
                    self.events.emit(RunEvent { event, run: run.clone(), webhooks });
                }
            }
        }
        true
    }

    /// Ends runs that reached a final state: frees their job's slot, records success for
    /// dependents, starts the next queued run, and marks the job for pruning.
    pub(super) async fn complete(&mut self, finished: Vec<RunId>, now: Timestamp) {
        let mut succeeded = Vec::new();
        let mut next = Vec::new();
        for id in finished {
            let Some(active) = self.runs.finish(id, &mut self.agents.snapshot) else { continue };
            let (run, slot) = (active.run, active.slot);
            *self.stats.finished.entry(run.state.to_string()).or_default() += 1;
            self.metrics.runs_finished.get_or_create(&StateLabel { state: run.state.to_string() }).inc();
            if let (Some(s), Some(f)) = (run.started_at, run.finished_at) {
                self.metrics.run_duration.observe(f.duration_since(s).as_secs_f64().max(0.0));
            }
            let Some(e) = self.slots[slot as usize].as_mut() else { continue };
            if run.state == RunState::Succeeded {
                // Whole milliseconds, like the run keys it is compared with (deps.rs).
                e.last_success_at = Timestamp::from_millisecond(now.as_millisecond()).ok();
                succeeded.push(run.job.clone());
            }
            if matches!(run.state, RunState::Failed | RunState::TimedOut | RunState::Lost) {
                e.last_failure_at = Timestamp::from_millisecond(now.as_millisecond()).ok();
            }
            let keep = e.job.spec.keep_runs.unwrap_or(self.config.keep_runs);
            e.finished_since_prune += 1;
            if e.finished_since_prune == (keep / 2).max(1) {
                self.to_prune.push(slot);
            }
            // Only a queued run waits for a free slot; start the oldest once none is past queued.
            if let Some(q) = self.runs.next_queued(slot)
                && !next.contains(&q)
            {
                next.push(q);
            }
        }
        self.metrics.runs_in_flight.set(self.runs.len() as i64);
        // Freed resources may fit runs that were waiting for room.
        self.place_unplaced().await;
        if !next.is_empty()
            && let Err(e) = self.launch_existing(next).await
        {
            tracing::error!(error = %e, "starting queued runs failed");
        }
        if !succeeded.is_empty() {
            self.trigger_dependents(&succeeded, now).await;
        }
    }

    /// Marks runs whose agent is gone as `lost` (retried by policy), as if the agent said so.
    pub(super) async fn mark_lost(&mut self, ids: Vec<RunId>, reason: &str) {
        let now = self.clock.now();
        let msgs = ids
            .into_iter()
            .filter_map(|id| self.runs.run(id).map(|r| (id, r.attempt)))
            .map(|(run_id, attempt)| {
                FromAgent::from(ToServer::Status(StatusUpdate {
                    seq: 0,
                    run_id,
                    attempt,
                    state: RunState::Lost,
                    at: now,
                    exit_code: None,
                    signal: None,
                    reason: Some(reason.to_string()),
                }))
            })
            .collect();
        self.apply_updates(msgs).await;
    }
}
