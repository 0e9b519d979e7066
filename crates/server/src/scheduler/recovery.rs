//! Start-up: rebuild the scheduler from the store. Jobs come back with their fire cursors (the
//! first tick then applies each job's misfire policy to the gap); pending runs are re-queued.
//! Runs that were starting or running stay so, held on their agents, until each agent reconnects
//! and reports what it holds (`reconcile.rs`): a run its agent still has goes on and is recorded
//! once. Agents that do not come back within the agent timeout are lost with their runs, and a
//! run whose agent never confirms it within that time is lost too.
//!
//! Firing waits a short, bounded time ([`REPORT_WAIT`]) for the agents that held active runs to
//! report in: a run that finished while no server led is still active in the store until its
//! agent says so, and judging a job's concurrency policy on it would skip a fire (`forbid`) or
//! kill a finished run (`replace`). After a failover the agents find the new leader within a
//! fraction of a second (a follower names it); fires due meanwhile go out late, not lost.

use tug_core::placement::Capacity;
use tug_core::run::{RunId, RunState};

use super::runs::{Phase, Placement};

use super::{Entry, Scheduler};
use crate::error::Result;

/// The longest firing waits at start-up for the agents that held active runs to report.
pub const REPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Firing's wait at start-up: for the agents that held active runs to say what they hold, and
/// for the updates of the runs they say have finished (they follow on the same stream).
#[derive(Debug)]
pub(super) struct ReportWait {
    /// Agents not heard from yet.
    agents: std::collections::HashSet<String>,
    /// Runs an agent holds as finished whose update has not been applied yet.
    finishing: std::collections::HashSet<RunId>,
    /// When firing goes ahead regardless.
    until: tokio::time::Instant,
}

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
                    e.last_failure_at = rec.last_failure_at;
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
        let mut reporting = std::collections::HashSet::new();
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
                    reporting.insert(agent.to_owned());
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
        if !reporting.is_empty() {
            let wait = REPORT_WAIT.min(self.config.agent_timeout);
            tracing::info!(agents = reporting.len(), ?wait, "firing waits for the agents holding active runs to report");
            self.awaiting_reports = Some(ReportWait { agents: reporting, finishing: Default::default(), until: now + wait });
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
    /// Until when firing waits for agents to report (`None`: it does not wait).
    pub(super) fn fire_hold(&mut self) -> Option<tokio::time::Instant> {
        let runs = &self.runs;
        let wait = self.awaiting_reports.as_mut()?;
        wait.finishing.retain(|id| runs.run(*id).is_some_and(|r| !r.state.is_terminal()));
        let until = wait.until;
        if wait.agents.is_empty() && wait.finishing.is_empty() {
            tracing::info!("every agent holding active runs has reported; firing");
        } else if tokio::time::Instant::now() >= until {
            let mut names: Vec<&str> = wait.agents.iter().map(String::as_str).collect();
            names.sort_unstable();
            tracing::warn!(agents = %names.join(", "), "agents holding active runs did not report in time; firing without them");
        } else {
            return Some(until);
        }
        self.awaiting_reports = None;
        None
    }

    /// Agent `agent` has reported what it holds; of that, `finishing` are runs it finished
    /// whose updates are still to come.
    pub(super) fn reported(&mut self, agent: &str, finishing: impl IntoIterator<Item = RunId>) {
        if let Some(wait) = self.awaiting_reports.as_mut() {
            wait.agents.remove(agent);
            wait.finishing.extend(finishing);
        }
    }

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
