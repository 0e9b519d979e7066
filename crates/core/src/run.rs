//! Runs: one execution of a job for one scheduled instant, keyed `(job, scheduled_at)`, and the
//! states it moves through.
//!
//! ```text
//! pending ──> starting ──> running ──> succeeded | failed | killed | timed_out | lost
//!    │            │                          │ (retry left)
//!    │            └──> failed (cannot start)  └──> pending (next attempt, after backoff)
//!    └──> skipped | killed
//! ```

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The store-assigned identifier of a run.
pub type RunId = u64;

/// The state of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Written to the store, waiting for dispatch (or for a retry's backoff).
    Pending,
    /// Handed to an agent; the process is being started.
    Starting,
    /// The process is running.
    Running,
    /// Exited with status 0.
    Succeeded,
    /// Exited non-zero, died by a signal, or could not start.
    Failed,
    /// Stopped on request (kill, or replaced by a newer run).
    Killed,
    /// Killed because it ran past the job's timeout.
    TimedOut,
    /// Its agent went away and its fate is unknown.
    Lost,
    /// Never started: forbidden by the concurrency policy or missed (misfire policy).
    Skipped,
}

impl RunState {
    /// All states, in lifecycle order.
    pub const ALL: [RunState; 9] = [
        RunState::Pending,
        RunState::Starting,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Killed,
        RunState::TimedOut,
        RunState::Lost,
        RunState::Skipped,
    ];

    /// True for states a run never leaves (except to retry).
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunState::Pending | RunState::Starting | RunState::Running)
    }

    /// True for the states a retry policy applies to.
    pub fn is_retryable(self) -> bool {
        matches!(self, RunState::Failed | RunState::TimedOut | RunState::Lost)
    }

    /// The snake_case name, as in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Starting => "starting",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Killed => "killed",
            RunState::TimedOut => "timed_out",
            RunState::Lost => "lost",
            RunState::Skipped => "skipped",
        }
    }

    /// Whether a run may move from `self` to `next`. Terminal states only leave for `pending`
    /// (a retry); an update that goes backwards (running → starting) is stale and refused.
    pub fn can_move_to(self, next: RunState) -> bool {
        use RunState::*;
        match (self, next) {
            (Pending, Starting | Running | Skipped | Killed | Failed | Lost) => true,
            (Starting, Running | Failed | Killed | TimedOut | Lost | Succeeded) => true,
            (Running, Succeeded | Failed | Killed | TimedOut | Lost) => true,
            (Failed | TimedOut | Lost, Pending) => true,
            // A lost run may turn out to have finished after all when its agent reports back.
            (Lost, Succeeded | Failed | Killed | TimedOut) => true,
            _ => false,
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown run state {s:?}"))
    }
}

/// What caused a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The job's schedule.
    Schedule,
    /// A manual run request.
    Manual,
    /// All of the job's parents succeeded.
    Dependency,
    /// A missed fire run late by the misfire policy.
    Misfire,
}

impl Trigger {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Dependency => "dependency",
            Trigger::Misfire => "misfire",
        }
    }
}

impl std::str::FromStr for Trigger {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Trigger::Schedule, Trigger::Manual, Trigger::Dependency, Trigger::Misfire]
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown trigger {s:?}"))
    }
}

/// A run of a job for one scheduled instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Store-assigned id.
    pub id: RunId,
    /// The job's name.
    pub job: String,
    /// The instant the run was scheduled for; with `job`, its unique key.
    pub scheduled_at: Timestamp,
    /// What caused it.
    pub trigger: Trigger,
    /// Current state.
    pub state: RunState,
    /// 1 for the first attempt, incremented by each retry.
    pub attempt: u32,
    /// When the run was written.
    pub created_at: Timestamp,
    /// When the current attempt's process started.
    #[serde(default)]
    pub started_at: Option<Timestamp>,
    /// When the run reached a terminal state.
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// Exit code of the last attempt's process.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Signal that ended the last attempt's process.
    #[serde(default)]
    pub signal: Option<i32>,
    /// Why the run is in its state, in words ("exit code 3", "skipped: previous run still active").
    #[serde(default)]
    pub reason: Option<String>,
    /// The agent running or that ran it.
    #[serde(default)]
    pub agent: Option<String>,
    /// For a pending retry: when it is due.
    #[serde(default)]
    pub retry_at: Option<Timestamp>,
    /// How an attempt the server had given up (lost) really ended, as its agent reported later.
    /// The run's own state stays what it became meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_report: Option<LateReport>,
}

/// A final state an agent reported for an attempt after the server had given it up as lost
/// (the agent was away, then came back and said how the attempt ended).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateReport {
    /// The attempt it is about.
    pub attempt: u32,
    /// How it ended.
    pub state: RunState,
    /// When the agent reported it.
    pub at: Timestamp,
    /// The process's exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default)]
    pub signal: Option<i32>,
    /// In words.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A run to be written: the store assigns its id and `created_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// The job's name.
    pub job: String,
    /// The scheduled instant.
    pub scheduled_at: Timestamp,
    /// What caused it.
    pub trigger: Trigger,
    /// Initial state: `pending` (waiting), `starting` (written just before dispatch to `agent`,
    /// so a restart knows it may have launched) or `skipped` (a fire that will not run).
    pub state: RunState,
    /// Why, for skipped runs.
    pub reason: Option<String>,
    /// The agent a `starting` run is dispatched to.
    pub agent: Option<String>,
}

impl NewRun {
    /// The run a store creates from it, with the id and creation time it gives: the first
    /// attempt, nothing started or finished yet.
    pub fn into_run(self, id: RunId, created_at: Timestamp) -> Run {
        Run {
            id,
            job: self.job,
            scheduled_at: self.scheduled_at,
            trigger: self.trigger,
            state: self.state,
            attempt: 1,
            created_at,
            started_at: None,
            finished_at: None,
            exit_code: None,
            signal: None,
            reason: self.reason,
            agent: self.agent,
            retry_at: None,
            late_report: None,
        }
    }
}

/// A finished attempt of a run, kept for history when a run is retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The run.
    pub run_id: RunId,
    /// 1-based attempt number.
    pub attempt: u32,
    /// The state it ended in.
    pub state: RunState,
    /// When its process started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Ending signal.
    pub signal: Option<i32>,
    /// Why it ended.
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        use RunState::*;
        assert!(Pending.can_move_to(Starting));
        assert!(Running.can_move_to(TimedOut));
        assert!(Failed.can_move_to(Pending));
        assert!(!Succeeded.can_move_to(Pending));
        assert!(!Running.can_move_to(Starting));
        assert!(!Skipped.can_move_to(Running));
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
        }
    }
}
