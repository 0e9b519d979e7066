//! Start-up: rebuild the scheduler from the store. Jobs come back with their fire cursors (the
//! first tick then applies each job's misfire policy to the gap); pending runs are re-queued.
//! Runs that were starting or running stay so, held on their agents, until each agent reconnects
//! and reports what it holds (`reconcile.rs`): a run its agent still has goes on and is recorded
//! once. Agents that do not come back within the agent timeout are lost with their runs, and a
//! run whose agent never confirms it within that time is lost too.

use tug_core::placement::Capacity;
use tug_core::run::{RunId, RunState};

use super::runs::{Phase, Placement};

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
        let now = tokio::time::Instant::now();
        for run in self.store.active_runs().await? {
            let Some(&slot) = self.index.get(&run.job) else { continue };
            let Some(e) = self.slots[slot as usize].as_ref() else { continue };
            let needs = Capacity::of(&e.job.spec.resources);
            let (phase, placement) = match (run.state, run.retry_at, run.agent.as_deref()) {
                (RunState::Pending, Some(at), _) => (Phase::RetryAt(at), None),
                (RunState::Pending, None, _) => {
                    queued.push(slot);
                    (Phase::Queued, None)
                }
                // Each holds its resources on its agent until that agent confirms or denies it.
                (RunState::Starting | RunState::Running, _, Some(agent)) => {
                    let i = self.agents.awaited(agent, now);
                    self.agents.snapshot.commit(i, &run.job, &needs);
                    (Phase::Unconfirmed, Some(Placement { agent: i, needs }))
                }
                _ => {
                    lost.push(run.id);
                    (Phase::Unconfirmed, None)
                }
            };
            self.runs.insert(run, slot, phase, placement, Vec::new());
        }
        let awaiting = self.runs.iter().filter(|a| a.phase == Phase::Unconfirmed).count() - lost.len();
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
            if let Some(id) = self.runs.next_queued(slot)
                && !start.contains(&id)
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
        if self.unconfirmed_checked || self.started.elapsed() <= self.config.agent_timeout {
            return;
        }
        // Once: a run is unconfirmed only from start-up until this check.
        self.unconfirmed_checked = true;
        let mut by_agent: std::collections::BTreeMap<usize, Vec<RunId>> = Default::default();
        for a in self.runs.iter().filter(|a| a.phase == Phase::Unconfirmed) {
            if let Some(p) = a.placement {
                by_agent.entry(p.agent).or_default().push(a.run.id);
            }
        }
        for (i, ids) in by_agent {
            let name = self.agents.name(i).to_string();
            let reason = format!(
                "agent {name} did not report this run within {}s of the server's restart; its outcome is unknown",
                self.config.agent_timeout.as_secs()
            );
            self.mark_lost(ids, &reason).await;
        }
    }
}
