//! Reconciliation: matching what an agent says it holds (`ToServer::Held`, sent once per
//! connection before any status update of that connection) against what the server believes runs
//! there. It runs when an agent registers or reconnects, and after a server restart, when each
//! agent comes back and the runs recovered from the store meet their agents' reports.
//!
//! | the agent holds              | the server has                          | action                    |
//! |------------------------------|-----------------------------------------|---------------------------|
//! | attempt `a` of run `r`       | `r` active on this agent at attempt `a` | keep (adopt after restart) |
//! | attempt `a` of run `r`       | anything else (lost, retried, finished) | kill `(r, a)`: superseded |
//! | `(r, a)` finished, unacked   | —                                       | nothing: its update follows |
//! | nothing                      | `r` starting here                       | send the launch again     |
//! | nothing                      | `r` running here                        | `lost`, retried by policy |
//!
//! A launch sent again cannot start a run twice: agents ignore an attempt they have already seen.
//! Attempts the server gave up when the agent was lost are stopped too when it comes back (by
//! heartbeat on a stream that survived, or by registering), in case the report misses them.

use std::collections::HashMap;

use tug_core::protocol::{HeldRun, KillReason, ToAgent};
use tug_core::run::{RunId, RunState};

use super::dispatch::Outgoing;
use super::Scheduler;

impl Scheduler {
    /// Reconciles agent `agent`'s runs with what it holds.
    pub(super) async fn reconcile(&mut self, agent: &str, held: &[HeldRun]) {
        // Finished there, active here: the update follows; firing may wait for it at start-up.
        let finishing: Vec<RunId> = held
            .iter()
            .filter(|h| h.finished && self.runs.run(h.run_id).is_some_and(|r| r.attempt == h.attempt && !r.state.is_terminal()))
            .map(|h| h.run_id)
            .collect();
        self.reported(agent, finishing);
        let Some(i) = self.agents.index(agent) else {
            tracing::warn!(agent, "held runs reported by an agent that is not registered; ignored");
            return;
        };
        let given_up = std::mem::take(&mut self.agents.links[i].given_up);
        let mut holds: HashMap<RunId, (u32, bool)> = HashMap::with_capacity(held.len());
        let mut stale = Vec::new();
        for h in held {
            holds.insert(h.run_id, (h.attempt, h.finished));
            if h.finished || super::is_replica(h.run_id) {
                continue;
            }
            let ours = self.runs.run(h.run_id).is_some_and(|r| {
                r.attempt == h.attempt
                    && r.agent.as_deref() == Some(agent)
                    && matches!(r.state, RunState::Starting | RunState::Running)
            });
            if ours {
                self.runs.confirm(h.run_id, tokio::time::Instant::now());
            } else {
                stale.push((h.run_id, h.attempt));
            }
        }
        stale.extend(self.reconcile_replicas(i, held).await);
        // Attempts given up when the agent was lost are stopped too (once, if also reported).
        for g in given_up {
            if !stale.contains(&g) {
                stale.push(g);
            }
        }
        let mut relaunch = Vec::new();
        let mut lost = Vec::new();
        let mine: Vec<RunId> = self.runs.on_agent(i).collect();
        for id in mine {
            let Some(r) = self.runs.run(id) else { continue };
            if holds.get(&id).is_some_and(|(a, _)| *a == r.attempt) {
                continue;
            }
            match r.state {
                RunState::Starting => relaunch.push(id),
                RunState::Running => lost.push(id),
                _ => {}
            }
        }
        if !(stale.is_empty() && relaunch.is_empty() && lost.is_empty()) {
            tracing::info!(
                agent,
                held = held.len(),
                stale = stale.len(),
                relaunched = relaunch.len(),
                lost = lost.len(),
                "reconciled the agent's runs"
            );
        }
        self.kill_attempts(i, stale).await;
        for id in relaunch {
            // A recovered run goes on as a launch that was lost.
            self.runs.confirm(id, tokio::time::Instant::now());
            self.dispatch_measured(id, false).await;
        }
        if !lost.is_empty() {
            let reason = format!("agent {agent} came back without this run (it restarted and could not re-attach it); its outcome is unknown");
            self.mark_lost(lost, &reason).await;
        }
    }

    /// Stops, on agent `i`, the attempts given up when it was lost.
    pub(super) async fn stop_given_up(&mut self, i: usize) {
        let given_up = std::mem::take(&mut self.agents.links[i].given_up);
        self.kill_attempts(i, given_up).await;
    }

    async fn kill_attempts(&mut self, i: usize, attempts: Vec<(RunId, u32)>) {
        for (run_id, attempt) in attempts {
            tracing::info!(agent = self.agents.name(i), run = run_id, attempt, "stopping an attempt the server has moved on from");
            let msg = ToAgent::Kill { run_id, attempt: Some(attempt), reason: KillReason::Superseded };
            let to = self.agents.links[i].tx.clone();
            self.dispatcher.send(Outgoing { at: None, measure: false, to, msg }).await;
        }
    }
}
