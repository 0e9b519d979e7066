//! Dependent jobs (Chronos semantics): a job with `parents` runs once all of its parents have
//! succeeded since its own last run.

use jiff::Timestamp;
use tug_core::run::Trigger;
use tug_store::FireBatch;

use super::fire::Decisions;
use super::Scheduler;

impl Scheduler {
    /// Called with the jobs that just had a run succeed: fires each child that is now ready.
    pub(super) async fn trigger_dependents(&mut self, parents: &[String], now: Timestamp) {
        let mut batch = FireBatch::default();
        let mut kills = Decisions::default();
        let mut fired = Vec::new();
        for parent in parents {
            let Some(children) = self.children.get(parent) else { continue };
            for child in children.clone() {
                if fired.contains(&child) || !self.ready(&child) {
                    continue;
                }
                let Some(&slot) = self.index.get(&child) else { continue };
                let at = self.unique_instant(&child, now);
                self.admit(slot, at, Trigger::Dependency, &mut batch, &mut kills);
                fired.push(child);
            }
        }
        if let Err(e) = self.commit(batch, kills, now).await {
            tracing::error!(error = %e, "firing dependent jobs failed");
        }
    }

    /// Whether every parent of `child` succeeded after the child's last run.
    fn ready(&self, child: &str) -> bool {
        let Some(e) = self.entry(child) else { return false };
        if !e.job.spec.enabled || e.job.spec.paused {
            return false;
        }
        e.job.spec.parents.iter().all(|p| {
            let ok = self.entry(p).and_then(|pe| pe.last_success_at);
            match (ok, e.last_run_at) {
                (Some(s), Some(last)) => s > last,
                (Some(_), None) => true,
                (None, _) => false,
            }
        })
    }

    /// `now` in whole milliseconds, moved forward past the job's latest run key so that two
    /// runs of one job in the same millisecond get distinct keys.
    pub(super) fn unique_instant(&self, job: &str, now: Timestamp) -> Timestamp {
        let ms = now.as_millisecond();
        let last = self.entry(job).and_then(|e| e.last_run_at).map_or(i64::MIN, |t| t.as_millisecond());
        Timestamp::from_millisecond(ms.max(last.saturating_add(1))).unwrap_or(now)
    }
}
