//! Messages between the server and an agent. Today they travel over in-process channels inside
//! `tug up`; they are plain serializable data so a network stream can carry them unchanged.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::job::{Command, DockerSpec, JobSpec, NetworkSpec, Resources, RuntimeKind};
use crate::service::{HealthCheck, ServiceSpec};
use crate::run::{RunId, RunState};

/// Everything an agent needs to run one attempt of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    /// The run.
    pub run_id: RunId,
    /// The job's name.
    pub job: String,
    /// The run's scheduled instant (with `job`, the run key).
    pub scheduled_at: Timestamp,
    /// Attempt number; an agent ignores a `(run_id, attempt)` it has already seen.
    pub attempt: u32,
    /// The leader epoch that sent it; agents refuse launches from an older epoch.
    pub epoch: u64,
    /// What to run.
    pub task: Task,
    /// A service replica's health check, which the agent runs while the attempt runs and reports
    /// on with [`ToServer::Health`]. `None` for job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

/// The runtime-facing part of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// Which runtime runs it.
    pub runtime: RuntimeKind,
    /// The container, for docker.
    pub docker: Option<DockerSpec>,
    /// Limits the runtime enforces.
    pub resources: Resources,
    /// The command.
    pub command: Command,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub workdir: Option<String>,
    /// User to run as.
    pub user: Option<String>,
    /// Kill after this long.
    pub timeout: Option<Duration>,
    /// The container network: the pool the job's warm container draws its address from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// The signal a stop sends first (a service's `stop_signal`, as in
    /// [`crate::service::STOP_SIGNALS`]); TERM when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// How long a stop waits for an exit before KILL (a service's `stop_grace`); the agent's own
    /// grace when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace: Option<Duration>,
}

impl Task {
    /// The task of a job.
    pub fn of(spec: &JobSpec) -> Task {
        Task {
            runtime: spec.runtime,
            docker: spec.docker.clone(),
            resources: spec.resources,
            command: spec.command.clone(),
            env: spec.env.clone(),
            workdir: spec.workdir.clone(),
            user: spec.user.clone(),
            timeout: spec.timeout,
            network: spec.network.clone(),
            stop_signal: None,
            stop_grace: None,
        }
    }

    /// The number of the signal a stop sends first.
    pub fn stop_signal_number(&self) -> i32 {
        self.stop_signal.as_deref().and_then(crate::service::signal_number).unwrap_or(15)
    }
}

impl Task {
    /// The task of replica `index` of a service: its command with `TUG_SERVICE` and
    /// `TUG_REPLICA` in the environment, no timeout.
    pub fn of_replica(spec: &ServiceSpec, index: u32) -> Task {
        let mut env = spec.env.clone();
        env.insert("TUG_SERVICE".into(), spec.name.clone());
        env.insert("TUG_REPLICA".into(), index.to_string());
        Task {
            runtime: spec.runtime,
            docker: spec.docker.clone(),
            resources: spec.resources,
            command: spec.command.clone(),
            env,
            workdir: spec.workdir.clone(),
            user: spec.user.clone(),
            timeout: None,
            network: spec.network.clone(),
            stop_signal: Some(spec.stop_signal.clone()),
            stop_grace: Some(spec.stop_grace),
        }
    }
}

/// Why a run is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// A user asked.
    Requested,
    /// A newer run replaced it (concurrency policy `replace`).
    Replaced,
    /// It ran past its timeout.
    Timeout,
    /// The agent is shutting down.
    Shutdown,
    /// The server had already given this attempt up (its agent was lost) and moved on; found
    /// still running when the agent came back.
    Superseded,
}

impl KillReason {
    /// The state a run killed for this reason ends in.
    pub fn final_state(self) -> RunState {
        match self {
            KillReason::Timeout => RunState::TimedOut,
            _ => RunState::Killed,
        }
    }
}

/// A message from the server to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToAgent {
    /// Start an attempt.
    Launch(Box<Launch>),
    /// Get ready for a run of `job` that fires soon (docker: create its warm container now).
    Prewarm {
        /// The job.
        job: String,
        /// What its runs will run.
        task: Box<Task>,
    },
    /// Stop a running attempt.
    Kill {
        /// The run.
        run_id: RunId,
        /// Only this attempt (`None`: whichever attempt of the run is running).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        /// Why.
        reason: KillReason,
    },
    /// The agent was drained (`true`: it gets no new runs; its runs go on) or undrained.
    Drain {
        /// Whether it is draining now.
        draining: bool,
    },
}

/// An attempt an agent holds when it (re)registers: still running, or finished with its final
/// status update not yet acknowledged (that update follows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldRun {
    /// The run.
    pub run_id: RunId,
    /// The attempt.
    pub attempt: u32,
    /// Finished; its final update is on its way.
    pub finished: bool,
    /// A running service replica's name in its launch (`service/NAME/INDEX`): a server that
    /// restarted adopts the replica by it instead of starting it afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

/// A state change of one attempt, reported by an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// Per-agent sequence number; the server acknowledges by it.
    pub seq: u64,
    /// The run.
    pub run_id: RunId,
    /// The attempt.
    pub attempt: u32,
    /// The new state: running, succeeded, failed, killed, timed_out.
    pub state: RunState,
    /// When the change happened (agent clock).
    pub at: Timestamp,
    /// Exit code, for finished processes.
    pub exit_code: Option<i32>,
    /// Ending signal, for processes killed by one.
    pub signal: Option<i32>,
    /// Why, in words.
    pub reason: Option<String>,
}

/// A change in a service replica's health, as its agent's checks see it: sent when the replica
/// becomes healthy, and when a healthy one (or one still starting) fails its threshold of checks
/// in a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The replica's run.
    pub run_id: RunId,
    /// Its attempt.
    pub attempt: u32,
    /// Healthy now, or not.
    pub healthy: bool,
    /// Why not, in words (the last failed check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A message from an agent to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToServer {
    /// A status change.
    Status(StatusUpdate),
    /// The agent is alive (sent every few seconds).
    Heartbeat {
        /// The agent's name.
        agent: String,
        /// Warm containers its container runtime holds now.
        #[serde(default)]
        warm_containers: u32,
    },
    /// A replica's health changed.
    Health(HealthReport),
    /// What the agent holds, sent once per connection before any status update of that
    /// connection (remote agents: in `Register`). The server reconciles its runs with it: kills
    /// attempts it has given up, re-sends launches that never arrived, and marks runs the agent
    /// no longer has as lost.
    Held {
        /// The agent's name.
        agent: String,
        /// Its attempts.
        runs: Vec<HeldRun>,
    },
    /// The agent is restarting and leaves its runs going: the server keeps them where they are
    /// and gives the agent no new runs until it registers again, or until `within` has passed
    /// (then it is lost as usual).
    BackSoon {
        /// The agent's name.
        agent: String,
        /// How long it expects to be away.
        within: std::time::Duration,
    },
}

