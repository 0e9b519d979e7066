//! What the key-value stores (in memory, etcd) share: a job's fields derived from its runs, and
//! the conventions SQLite's columns impose on every store (millisecond timestamps, page sizes,
//! what `q` and `label` match).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_core::JobSpec;
use tug_core::run::{Run, RunState, Trigger};

/// Page size when a query asks for 0 (as in SQLite).
const DEFAULT_LIMIT: usize = 100;
/// The largest page handed out (as in SQLite).
const MAX_LIMIT: usize = 1000;

/// The fields of a [`JobRecord`](crate::JobRecord) that follow from its runs. `None` orders
/// before every `Some`, so `max` keeps whichever is present.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Derived {
    pub fire_cursor: Option<Timestamp>,
    pub last_run_at: Option<Timestamp>,
    pub last_success_at: Option<Timestamp>,
    pub last_failure_at: Option<Timestamp>,
    /// Succeeded runs (a floor: pruned runs stay counted).
    pub succeeded: u64,
    /// Failed, timed-out or lost runs.
    pub failed: u64,
}

impl Derived {
    /// Raises these fields by what `run` says about its job.
    pub fn absorb(&mut self, run: &Run) {
        if matches!(run.trigger, Trigger::Schedule | Trigger::Misfire) {
            self.fire_cursor = self.fire_cursor.max(Some(run.scheduled_at));
        }
        if run.state != RunState::Skipped {
            self.last_run_at = self.last_run_at.max(Some(run.scheduled_at));
        }
        match run.state {
            RunState::Succeeded => {
                self.last_success_at = self.last_success_at.max(run.finished_at);
                self.succeeded += 1;
            }
            RunState::Failed | RunState::TimedOut | RunState::Lost => {
                self.last_failure_at = self.last_failure_at.max(run.finished_at);
                self.failed += 1;
            }
            _ => {}
        }
    }

    /// Takes back the counts `run` added when it was absorbed, before its new state is (a store
    /// that keeps these fields up to date as runs change, rather than deriving them on read).
    pub fn uncount(&mut self, run: &Run) {
        match run.state {
            RunState::Succeeded => self.succeeded = self.succeeded.saturating_sub(1),
            RunState::Failed | RunState::TimedOut | RunState::Lost => self.failed = self.failed.saturating_sub(1),
            _ => {}
        }
    }
}

/// `ts` as the store keeps it: truncated to the millisecond, like SQLite's integer column.
pub(crate) fn stored(ts: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(ts.as_millisecond()).expect("a timestamp's own millisecond is in range")
}

/// An optional timestamp as the store keeps it.
pub(crate) fn stored_opt(ts: Option<Timestamp>) -> Option<Timestamp> {
    ts.map(stored)
}

/// `stored` with what `save_runs` may change taken from `from`: the key, trigger and
/// `created_at` are the store's, not the caller's.
pub(crate) fn updated(stored: &Run, from: &Run) -> Run {
    Run {
        state: from.state,
        attempt: from.attempt,
        started_at: stored_opt(from.started_at),
        finished_at: stored_opt(from.finished_at),
        exit_code: from.exit_code,
        signal: from.signal,
        reason: from.reason.clone(),
        agent: from.agent.clone(),
        retry_at: stored_opt(from.retry_at),
        late_report: from.late_report.clone().map(|l| tug_core::run::LateReport { at: self::stored(l.at), ..l }),
        ..stored.clone()
    }
}

/// The page size a query asks for, defaulted and capped.
pub(crate) fn page_size(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    }
}

/// The text `q` searches: name, description and owner, lowercased, one per line (as in SQLite).
pub(crate) fn search_text(spec: &JobSpec) -> String {
    format!("{}\n{}\n{}", spec.name, spec.description, spec.owner).to_lowercase()
}

/// Whether a job passes a `label` filter: `key=value` (equals) or `key` (present).
pub(crate) fn label_matches(spec: &JobSpec, label: &str) -> bool {
    match label.split_once('=') {
        Some((key, value)) => spec.labels.get(key).is_some_and(|v| v == value),
        None => spec.labels.contains_key(label),
    }
}
