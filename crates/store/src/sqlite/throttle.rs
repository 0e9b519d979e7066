//! Logging a failure that repeats every round (a full disk fails every checkpoint and every
//! materialization): the first at once, then once per [`REPORT_EVERY`].
// Real elapsed time on the store's own threads, like the checkpointer's interval.
#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant};

/// How often a failure that repeats every round (a full disk) is logged.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Decides when a failure that repeats is logged: the first at once, then once per
/// [`REPORT_EVERY`] with how many were not.
#[derive(Default)]
pub(super) struct Throttle {
    reported: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// Another failure: `Some(n)` to log it now, `n` failures since the last line.
    pub(super) fn failed(&mut self) -> Option<u64> {
        if self.reported.is_some_and(|at| at.elapsed() < REPORT_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.reported = Some(Instant::now());
        Some(std::mem::take(&mut self.unlogged))
    }

    /// A success: whether failures had been logged (so the log can say it works again).
    pub(super) fn ok(&mut self) -> bool {
        self.unlogged = 0;
        self.reported.take().is_some()
    }
}

