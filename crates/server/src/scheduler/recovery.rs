//! Start-up: rebuild the scheduler from the store. Jobs come back with their fire cursors (the
//! first tick then applies each job's misfire policy to the gap); pending runs are re-queued;
//! runs that were starting or running belonged to an agent that is gone, so they are `lost`.

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
                _ => lost.push(run.id),
            }
            self.runs.insert(run.id, run);
        }
        tracing::info!(jobs = self.index.len(), active = self.runs.len(), lost = lost.len(), "scheduler state loaded");
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
