//! Asynchronous scale operations: `POST /services/{name}/scale` answers at once with an
//! operation, which the scheduler watches until the service has exactly the replicas asked for
//! and every one is healthy (`succeeded`), a newer scale of the same service takes over
//! (`superseded`), or a replica cannot be started and is given up (`failed`, saying which and
//! why: an image that does not exist fails the operation rather than retrying for ever). Progress is read from the replicas themselves, so it is never out of step.
//!
//! Operations are written to the store when they start and when they end, so a restarted server
//! (or a new leader) still shows them and follows those still running.

use std::collections::{BTreeMap, VecDeque};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tug_store::{ProgressKind, ProgressRecord};

use super::services::{ReplicaState, ServiceStatus};
use crate::stream::EventKind;

/// Operations kept for reading after they end.
const KEPT: usize = 1000;

/// Where an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Replicas are being placed, started or stopped.
    Running,
    /// The service has the replicas asked for, all healthy.
    Succeeded,
    /// A newer scale of the same service took over.
    Superseded,
    /// A replica could not be started and was given up (see `error`).
    Failed,
}

/// One scale operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    /// `op-N`.
    pub id: String,
    /// The service.
    pub service: String,
    /// Replicas asked for before.
    pub from: u32,
    /// Replicas asked for.
    pub to: u32,
    /// Where it is.
    pub state: OpState,
    /// When it was asked for.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Milliseconds from the call to its end (or to now).
    pub elapsed_ms: u64,
    /// Why it failed: the replica given up, and why.
    pub error: Option<String>,
    #[serde(skip, default = "Instant::now")]
    started: Instant,
    /// The counts last published as its progress: replicas, placed, started, healthy.
    #[serde(skip)]
    published: (u32, u32, u32, u32),
}

/// Replica counts of one agent.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AgentProgress {
    /// Placed there (starting, running, healthy).
    pub placed: u32,
    /// Running there.
    pub running: u32,
    /// Healthy there.
    pub healthy: u32,
}

/// An operation with the service's progress now.
#[derive(Debug, Clone, Serialize)]
pub struct OperationView {
    /// The operation.
    #[serde(flatten)]
    pub op: Operation,
    /// Replicas that exist now.
    pub replicas: u32,
    /// Placed on an agent.
    pub placed: u32,
    /// Running.
    pub started: u32,
    /// Healthy.
    pub healthy: u32,
    /// Waiting to restart after an exit or a failed health check.
    pub failed: u32,
    /// Waiting for room on an agent.
    pub unplaced: u32,
    /// Given up after failing to start.
    pub given_up: u32,
    /// The first replica's last problem while it is not up: which, and why.
    pub problem: Option<String>,
    /// The same counts per agent.
    pub agents: BTreeMap<String, AgentProgress>,
}

/// The number in `op-N`.
fn op_number(id: &str) -> Option<u64> {
    id.strip_prefix("op-")?.parse().ok()
}

/// Every recent operation.
#[derive(Default)]
pub(super) struct Operations {
    ops: VecDeque<Operation>,
    next: u64,
}

impl Operations {
    /// Starts an operation; older running ones of the service are superseded (and returned).
    pub(super) fn start(&mut self, service: &str, from: u32, to: u32, now: Timestamp) -> (Operation, Vec<Operation>) {
        let mut superseded = Vec::new();
        for op in self.ops.iter_mut().filter(|o| o.service == service && o.state == OpState::Running) {
            op.state = OpState::Superseded;
            op.finished_at = Some(now);
            op.elapsed_ms = u64::try_from(op.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            superseded.push(op.clone());
        }
        self.next += 1;
        let op = Operation {
            id: format!("op-{}", self.next),
            service: service.to_string(),
            from,
            to,
            state: OpState::Running,
            started_at: now,
            finished_at: None,
            elapsed_ms: 0,
            error: None,
            started: Instant::now(),
            published: (0, 0, 0, 0),
        };
        self.ops.push_back(op.clone());
        (op, superseded)
    }

    /// Forgets the oldest operations beyond those kept; returns their numbers.
    pub(super) fn trim(&mut self) -> Vec<u64> {
        let mut gone = Vec::new();
        while self.ops.len() > KEPT {
            if let Some(n) = self.ops.pop_front().and_then(|o| op_number(&o.id)) {
                gone.push(n);
            }
        }
        gone
    }

    /// An operation as the store keeps it.
    pub(super) fn record(&self, id: &str) -> Option<ProgressRecord> {
        let op = self.ops.iter().find(|o| o.id == id)?;
        Some(ProgressRecord {
            kind: ProgressKind::Operation,
            id: op_number(&op.id)?,
            service: op.service.clone(),
            ended: op.state != OpState::Running,
            state: serde_json::to_value(op).ok()?,
        })
    }

    /// Takes in the operations stored before a restart; those still running are followed again.
    pub(super) fn load(&mut self, records: Vec<ProgressRecord>, now: Timestamp) {
        for r in records {
            let mut op: Operation = match serde_json::from_value(r.state) {
                Ok(op) => op,
                Err(e) => {
                    tracing::error!(operation = r.id, error = %e, "stored operation cannot be read; left out");
                    continue;
                }
            };
            let ago: std::time::Duration = now.duration_since(op.started_at).try_into().unwrap_or_default();
            op.started = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            self.next = self.next.max(r.id);
            self.ops.push_back(op);
        }
    }

    /// The services with a running operation.
    pub(super) fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self.ops.iter().filter(|o| o.state == OpState::Running).map(|o| o.service.clone()).collect();
        v.dedup();
        v
    }

    /// Ends the service's running operation when `status` shows it done (a deleted service's
    /// `None` ends it too). Returns what to publish: its progress when its counts changed, and
    /// its end.
    pub(super) fn check(&mut self, service: &str, status: Option<&ServiceStatus>, now: Timestamp) -> Vec<(EventKind, OperationView)> {
        let mut events = Vec::new();
        for op in self.ops.iter_mut().filter(|o| o.service == service && o.state == OpState::Running) {
            let counts = status.map_or((0, 0, 0, 0), |s| (s.replicas, s.placed, s.running, s.healthy));
            if counts != op.published {
                op.published = counts;
                events.push((EventKind::OperationProgress, op.id.clone()));
            }
            let done = status.is_none_or(|s| s.replicas == op.to && s.healthy == op.to);
            let given_up = status.and_then(|s| s.list.iter().find(|r| r.state == ReplicaState::Failed));
            if done {
                op.state = OpState::Succeeded;
            } else if let Some(r) = given_up {
                op.state = OpState::Failed;
                op.error = Some(format!("replica {}: {}", r.index, r.reason.as_deref().unwrap_or("it could not be started")));
            } else {
                continue;
            }
            op.finished_at = Some(now);
            op.elapsed_ms = u64::try_from(op.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            events.push((EventKind::OperationFinished, op.id.clone()));
        }
        events.into_iter().filter_map(|(kind, id)| Some((kind, self.view(&id, status)?))).collect()
    }

    /// One operation with the progress in `status`.
    pub(super) fn view(&self, id: &str, status: Option<&ServiceStatus>) -> Option<OperationView> {
        let mut op = self.ops.iter().find(|o| o.id == id)?.clone();
        if op.state == OpState::Running {
            op.elapsed_ms = u64::try_from(op.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        let mut v = OperationView {
            op,
            replicas: 0,
            placed: 0,
            started: 0,
            healthy: 0,
            failed: 0,
            unplaced: 0,
            given_up: 0,
            problem: None,
            agents: BTreeMap::new(),
        };
        let Some(s) = status else { return Some(v) };
        (v.replicas, v.placed, v.started, v.healthy, v.failed) = (s.replicas, s.placed, s.running, s.healthy, s.restarting);
        v.given_up = s.failed;
        for r in &s.list {
            if r.state == ReplicaState::Unplaced {
                v.unplaced += 1;
            }
            if v.problem.is_none()
                && matches!(r.state, ReplicaState::Restarting | ReplicaState::Failed | ReplicaState::Unplaced)
                && let Some(why) = &r.reason
            {
                v.problem = Some(format!("replica {}: {why}", r.index));
            }
            let Some(agent) = &r.agent else { continue };
            let a = v.agents.entry(agent.clone()).or_default();
            match r.state {
                ReplicaState::Starting => a.placed += 1,
                ReplicaState::Running => {
                    a.placed += 1;
                    a.running += 1;
                }
                ReplicaState::Healthy => {
                    a.placed += 1;
                    a.running += 1;
                    a.healthy += 1;
                }
                _ => {}
            }
        }
        Some(v)
    }
}
