//! Placement inside the scheduler: choosing an agent for each new or retried run (the pure
//! function in `tug_core::placement` over the registry's snapshot), keeping the snapshot's
//! resource use in step with runs, runs waiting for room, and agents that go silent.

use tokio::sync::mpsc;
use tug_core::placement::{Capacity, CompiledConstraint, NoFit, Request};
use tug_core::protocol::ToAgent;
use tug_core::run::RunId;

use super::agents::Silence;
use super::runs::Phase;
use super::timers::Slot;
use super::Scheduler;

/// How long a launched run may stay `starting` without any word from its agent.
pub(super) const LAUNCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);


impl Scheduler {
    /// Chooses an agent for a run of the job in `slot` and reserves its resources there. A job
    /// with a warm container goes back to the agent that holds it when that agent has room.
    pub(super) fn place(&mut self, slot: Slot) -> Result<usize, NoFit> {
        let Some(e) = self.slots[slot as usize].as_mut() else { return Err(NoFit::NoAgents) };
        let spec = &e.job.spec;
        let needs = Capacity::of(&spec.resources);
        let constraints = CompiledConstraint::compile(&spec.constraints);
        let warm = e.warm_agent.map(|i| self.agents.snapshot.agents[i].name.clone());
        let req = Request { job: &spec.name, needs, constraints: &constraints, strategy: spec.placement, warm_agent: warm.as_deref() };
        let i = self.agents.snapshot.place(&req)?;
        self.agents.snapshot.commit(i, &spec.name, &needs);
        if spec.docker.as_ref().is_some_and(|d| d.mode == tug_core::job::ContainerMode::Warm) {
            e.warm_agent = Some(i);
        }
        Ok(i)
    }

    /// The command channel of a run's agent.
    pub(super) fn agent_tx(&self, agent: Option<&str>) -> Option<mpsc::Sender<ToAgent>> {
        let i = self.agents.index(agent?)?;
        Some(self.agents.links[i].tx.clone())
    }

    /// Tries again to place every run waiting for room.
    pub(super) async fn place_unplaced(&mut self) {
        self.place_unplaced_replicas().await;
        if !self.runs.has_unplaced() {
            return;
        }
        let ids = self.runs.unplaced();
        if let Err(e) = self.launch_existing(ids).await {
            tracing::error!(error = %e, "placing waiting runs failed");
        }
    }

    /// Sets the agents-by-state gauges from the registry.
    pub(super) fn count_agents(&self) {
        use super::agents::AgentState;
        let mut counts = [0i64; 5];
        for i in 0..self.agents.links.len() {
            counts[self.agents.state(i) as usize] += 1;
        }
        let states = [AgentState::Up, AgentState::Draining, AgentState::Lost, AgentState::Awaited, AgentState::Restarting];
        for (state, n) in states.into_iter().zip(counts) {
            let label = crate::metrics::StateLabel { state: serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default() };
            self.metrics.agents.get_or_create(&label).set(n);
        }
    }

    /// Marks agents silent past the timeout as lost, and their runs with them.
    pub(super) async fn expire_agents(&mut self) {
        let lost = self.agents.expire(tokio::time::Instant::now(), self.config.agent_timeout);
        if !lost.is_empty() {
            self.count_agents();
        }
        for (i, why) in lost {
            let name = self.agents.name(i).to_string();
            let ids: Vec<RunId> = self.runs.on_agent(i).collect();
            let secs = self.config.agent_timeout.as_secs();
            let reason = match why {
                Silence::Awaited => {
                    tracing::warn!(agent = %name, runs = ids.len(), "agent lost: it did not reconnect after the server restarted");
                    format!("agent {name} did not reconnect within {secs}s of the server's restart; the run's outcome is unknown")
                }
                Silence::NoHeartbeat => {
                    tracing::warn!(agent = %name, runs = ids.len(), "agent lost: no heartbeat within the agent timeout");
                    format!("agent {name} stopped responding (no heartbeat for {secs}s); the run's outcome is unknown")
                }
                Silence::NotBack => {
                    tracing::warn!(agent = %name, runs = ids.len(), "agent lost: it said it was restarting and did not come back in time");
                    format!("agent {name} said it was restarting and was not back by the time it gave; the run's outcome is unknown")
                }
            };
            // Stopped there if the agent comes back: by then they are replaced or given up.
            let given_up: Vec<(RunId, u32)> = ids.iter().filter_map(|id| self.runs.run(*id).map(|r| (*id, r.attempt))).collect();
            self.agents.links[i].given_up.extend(given_up);
            self.announce_agent(crate::stream::EventKind::AgentLost, &name);
            self.mark_lost(ids, &reason).await;
            self.replicas_lost(i, &format!("agent {name} was lost (no heartbeat for {secs}s); moved")).await;
        }
    }

    /// Notes that `agent` is restarting (it leaves its runs going) and will be back within
    /// `within`: its runs wait for it, and it gets no new ones, until it registers again or the
    /// time passes (never sooner than the agent timeout).
    pub(super) fn agent_back_soon(&mut self, agent: &str, within: std::time::Duration) {
        let by = tokio::time::Instant::now() + within;
        if self.agents.back_soon(agent, by).is_some() {
            tracing::info!(agent, within_s = within.as_secs_f64(), "agent is restarting; its runs wait for it");
            self.count_agents();
        }
    }

    /// Marks launches that got no word back within [`LAUNCH_TIMEOUT`] as lost (retried by
    /// policy): a launch sent while an agent's stream was down, or an agent that lost it, must not
    /// leave a run `starting` forever.
    pub(super) async fn expire_launches(&mut self) {
        let now = tokio::time::Instant::now();
        let stale: Vec<RunId> = self
            .runs
            .iter()
            .filter(|a| matches!(a.phase, Phase::Starting { launched: Some(t) } if now.duration_since(t) > LAUNCH_TIMEOUT))
            .map(|a| a.run.id)
            .collect();
        if stale.is_empty() {
            return;
        }
        let reason = format!(
            "no word from the agent within {}s of the launch; it may never have received it",
            LAUNCH_TIMEOUT.as_secs()
        );
        self.mark_lost(stale, &reason).await;
    }

    /// Notes a heartbeat; an agent that was lost and is back has the attempts given up on it
    /// stopped, and makes room for waiting runs.
    pub(super) async fn heartbeat(&mut self, agent: &str, warm_containers: u32) {
        let was_up = self.agents.index(agent).is_some_and(|i| self.agents.snapshot.agents[i].up);
        if let Some(i) = self.agents.index(agent)
            && self.agents.links[i].warm_containers != warm_containers
        {
            self.agents.links[i].warm_containers = warm_containers;
            let total: u64 = self.agents.links.iter().map(|l| u64::from(l.warm_containers)).sum();
            self.metrics.warm_containers.set(i64::try_from(total).unwrap_or(i64::MAX));
        }
        if let Some(i) = self.agents.seen(agent, tokio::time::Instant::now())
            && !was_up
        {
            tracing::info!(agent, "agent is back");
            self.stop_given_up(i).await;
            self.count_agents();
            self.place_unplaced().await;
        }
    }
}
