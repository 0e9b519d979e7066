//! Start-up: rebuild the scheduler from the store. Jobs come back with their fire cursors (the
//! first tick then applies each job's misfire policy to the gap); pending runs are re-queued.
//! Runs that were starting or running stay so, held on their agents, until each agent reconnects
//! and reports what it holds (`reconcile.rs`): a run its agent still has goes on and is recorded
//! once. Agents that do not come back within the agent timeout are lost with their runs, and a
//! run whose agent never confirms it within that time is lost too.

use tug_core::run::RunState;

use super::{Entry, Scheduler};
use crate::error::Result;

impl Scheduler {
    pub(super) async fn recover(&mut self) -> Result<()> {
        let records = self.store.load_jobs().await?;
        let mut entries = Vec::with_capacity(records.len());
        for rec in records {
            let name = rec.spec.name.clone();
            match rec.spec.validate() {
                Ok(job) => {
                    let mut e = Entry::new(job, rec.version);
                    e.cursor = Some(rec.fire_cursor.unwrap_or(rec.created_at));
                    e.last_run_at = rec.last_run_at;
                    e.last_success_at = rec.last_success_at;
                    entries.push(e);
                }
                Err(err) => tracing::error!(job = %name, error = %err, "stored job no longer validates; not scheduled"),
            }
        }
        // Parents first is not needed: the children index is built from names.
        for e in entries {
            self.insert_entry(e);
        }
        let mut lost = Vec::new();
        let mut queued = Vec::new();
        let mut held = Vec::new();
        let now = tokio::time::Instant::now();
        for run in self.store.active_runs().await? {
            let Some(&slot) = self.index.get(&run.job) else { continue };
            let Some(e) = self.slots[slot as usize].as_mut() else { continue };
            e.active.push(run.id);
            match (run.state, run.retry_at) {
                (RunState::Pending, Some(at)) => self.retry_timers.insert(at, run.id),
                (RunState::Pending, None) => {
                    e.queued.push_back(run.id);
                    queued.push(slot);
                }
                (RunState::Starting | RunState::Running, _) if run.agent.is_some() => {
                    let i = self.agents.awaited(run.agent.as_deref().unwrap_or_default(), now);
                    held.push((run.id, i));
                    if run.state == RunState::Starting {
                        self.launched_at.insert(run.id, now);
                    }
                }
                _ => lost.push(run.id),
            }
            self.runs.insert(run.id, run);
        }
        // Each holds its resources on its agent until that agent confirms or denies it.
        for (id, i) in held {
            self.adopt(id, i);
            self.unconfirmed.entry(i).or_default().push(id);
        }
        let awaiting: usize = self.unconfirmed.values().map(Vec::len).sum();
        tracing::info!(jobs = self.index.len(), active = self.runs.len(), awaiting, lost = lost.len(), "scheduler state loaded");
        if awaiting > 0 {
            self.count_agents();
        }
        if !lost.is_empty() {
            self.mark_lost(lost, "the server restarted while this run was active; its outcome is unknown").await;
        }
        // Queued runs whose job has nothing else running can start now.
        let mut start = Vec::new();
        for slot in queued {
            let Some(e) = self.slots[slot as usize].as_mut() else { continue };
            let running = e.active.iter().filter(|a| !e.queued.contains(a)).count();
            if running == 0
                && let Some(id) = e.queued.pop_front()
            {
                start.push(id);
            }
        }
        self.launch_existing(start).await?;
        Ok(())
    }
}

impl Scheduler {
    /// After the agent timeout, runs recovered at start-up that no agent has confirmed are lost.
    pub(super) async fn expire_unconfirmed(&mut self) {
        if self.unconfirmed.is_empty() || self.started.elapsed() <= self.config.agent_timeout {
            return;
        }
        for (i, ids) in std::mem::take(&mut self.unconfirmed) {
            // Only runs still as recovered: one that was lost with its agent may be a pending
            // retry by now, which is not this agent's to lose.
            let name = self.agents.name(i);
            let ids: Vec<_> = ids
                .into_iter()
                .filter(|id| {
                    self.runs.get(id).is_some_and(|r| {
                        matches!(r.state, RunState::Starting | RunState::Running) && r.agent.as_deref() == Some(name)
                    })
                })
                .collect();
            if ids.is_empty() {
                continue;
            }
            let name = self.agents.name(i).to_string();
            let reason = format!(
                "agent {name} did not report this run within {}s of the server's restart; its outcome is unknown",
                self.config.agent_timeout.as_secs()
            );
            self.mark_lost(ids, &reason).await;
        }
    }
}
