//! The JSON body a webhook receives, and the log tail in it.

use jiff::Timestamp;
use serde::Serialize;
use tug_core::job::NotifyOn;
use tug_core::run::{Run, RunId, RunState};

use crate::logs::LogTail;

/// What a webhook receives:
///
/// ```json
/// {"event": "failure", "job": "backup",
///  "run": {"id": 42, "scheduled_at": "...", "state": "failed", "attempt": 1, "exit_code": 3,
///          "reason": "exit code 3", "started_at": "...", "finished_at": "..."},
///  "log_tail": "...last 4 KiB of output...", "log_truncated": true, "sent_at": "..."}
/// ```
///
/// `sent_at` is set per attempt; everything else is the same in every attempt, and the
/// `X-Tug-Delivery` header (`<run id>-<attempt>-<event>`) lets a receiver drop duplicates.
/// The log tail is read when the delivery starts, so for a `retry` event whose next attempt
/// starts at once it may already hold that attempt's first lines.
#[derive(Debug, Clone, Serialize)]
pub struct Payload {
    /// What happened.
    pub event: NotifyOn,
    /// The job's name.
    pub job: String,
    /// The run as it was after the event.
    pub run: RunInfo,
    /// The end of the run's log (lossy UTF-8), read from the agent that ran it, or `null` when
    /// the run has no log (a skipped fire, or a missed fire that has not started yet) or it could
    /// not be read (its agent is away).
    pub log_tail: Option<String>,
    /// True when the log is longer than the tail.
    pub log_truncated: bool,
    /// When this attempt was sent.
    pub sent_at: Timestamp,
}

/// The run fields in a payload.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// The run's id (as in `/api/v1/runs/{id}`).
    pub id: RunId,
    /// The instant it was scheduled for.
    pub scheduled_at: Timestamp,
    /// Its state after the event (`pending` for a retry that is waiting).
    pub state: RunState,
    /// 1 for the first attempt; a retry event carries the attempt that comes next.
    pub attempt: u32,
    /// The last attempt's exit code.
    pub exit_code: Option<i32>,
    /// Why it is in its state.
    pub reason: Option<String>,
    /// When the last attempt started.
    pub started_at: Option<Timestamp>,
    /// When the run reached its final state.
    pub finished_at: Option<Timestamp>,
}

impl Payload {
    /// The payload of `event` for `run`, with `sent_at` to be filled per attempt.
    pub fn new(event: NotifyOn, run: &Run, log_tail: Option<LogTail>) -> Payload {
        let (log_tail, log_truncated) = log_tail.map_or((None, false), |t| (Some(t.text), t.truncated));
        Payload {
            event,
            job: run.job.clone(),
            run: RunInfo {
                id: run.id,
                scheduled_at: run.scheduled_at,
                state: run.state,
                attempt: run.attempt,
                exit_code: run.exit_code,
                reason: run.reason.clone(),
                started_at: run.started_at,
                finished_at: run.finished_at,
            },
            log_tail,
            log_truncated,
            sent_at: Timestamp::UNIX_EPOCH,
        }
    }

    /// The body of one attempt.
    pub fn to_json(&mut self, sent_at: Timestamp) -> Vec<u8> {
        self.sent_at = sent_at;
        serde_json::to_vec(self).expect("a payload always serializes")
    }
}
