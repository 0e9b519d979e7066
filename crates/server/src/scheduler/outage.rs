//! When the store cannot write (a full disk, a read-only file system): fires are held, not dropped.
//!
//! | event | what the scheduler does |
//! | --- | --- |
//! | a tick's fire commit fails | the jobs it fired get back their cursor and timer (nothing was written, nothing launched); firing pauses for [`RETRY_EVERY`]; the first failure is logged at once |
//! | the retry fails too | the same, and again after [`RETRY_EVERY`]; the log says so once per [`REPORT_EVERY`], not per retry |
//! | a commit succeeds | firing goes on; every fire due up to the last failed attempt is a misfire whatever its `epsilon` (it could not be written when due), handled by its job's misfire policy, counted in `tug_misfires_total` and `tug_unwritten_fires_total`; the log says writes work again |
//!
//! Nothing needs a restart: the retry is the next tick. API writes meanwhile answer 507 naming the
//! directory that is full (the store's error, passed through).

use jiff::Timestamp;
use tokio::time::{Duration, Instant};
use tug_store::StoreError;

use super::Scheduler;
use super::timers::Slot;
use crate::error::Error;

/// How long firing waits after a failed fire commit before it tries again.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How often a store that still cannot write is reported in the log.
pub(super) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A job a failed commit fired: its cursor before the tick and the fire the tick took.
pub(super) type Taken = (Slot, Option<Timestamp>, Timestamp);

/// The store refusing writes, from the first failed fire commit to the first one that succeeds.
pub(super) struct Outage {
    /// What the store said at the last failure.
    why: String,
    /// When the first failure was.
    since: Timestamp,
    /// When firing tries again.
    retry_at: Instant,
    /// When the log last said so.
    reported_at: Instant,
    /// Failed attempts since the last report.
    failures: u64,
}

/// Fires held while the store could not write them, until each has been handled.
#[derive(Default)]
pub(super) struct Held {
    /// The store is refusing writes now.
    outage: Option<Outage>,
    /// Fires due at or before this instant could not be written (the horizon of the last failed
    /// attempt): they are misfires however late they are. Kept after the outage ends until every
    /// job's timer is past it, since a large backlog is fired over several ticks.
    pub(super) upto: Option<Timestamp>,
    /// Why they could not be written, for the reason of the runs skipped for it.
    pub(super) why: String,
    /// Held fires handled since the outage ended, and of how many jobs (for one log line).
    handled: (u64, u64),
}

/// A store error in words for a log line or a run's reason: the full directory when that is why.
fn describe(e: &Error) -> String {
    match e {
        Error::Store(StoreError::StorageFull { dir, .. }) if !dir.as_os_str().is_empty() => {
            format!("no space left on the file system holding {}", dir.display())
        }
        other => other.to_string(),
    }
}

impl Scheduler {
    /// Until when firing waits for the store (`None`: it does not).
    pub(super) fn outage_hold(&self) -> Option<Instant> {
        self.held.outage.as_ref().map(|o| o.retry_at)
    }

    /// A fire commit failed: gives each job its fire back, so the misfire policy handles it once
    /// the store writes again, and pauses firing for [`RETRY_EVERY`].
    pub(super) fn hold_fires(&mut self, taken: Vec<Taken>, horizon: Timestamp, e: &Error) {
        for (slot, cursor, first) in taken {
            let Some(e) = self.slots[slot as usize].as_mut() else { continue };
            if let Some(next) = e.next.take() {
                self.timers.remove(next, slot);
            }
            e.cursor = cursor;
            e.next = Some(first);
            self.timers.insert(first, slot);
        }
        let why = describe(e);
        self.held.upto = Some(self.held.upto.map_or(horizon, |u| u.max(horizon)));
        self.held.why.clone_from(&why);
        self.store_failed(why, true);
    }

    /// A store write the loop needed failed (`fires`: it held fires); logs the first failure, then
    /// once per [`REPORT_EVERY`].
    pub(super) fn store_failed(&mut self, why: String, fires: bool) {
        let now = Instant::now();
        let held = self.timers.iter().take_while(|(at, _)| self.held.upto.is_some_and(|u| *at <= u)).count();
        self.metrics.fires_held.set(held as i64);
        match self.held.outage.as_mut() {
            None => {
                tracing::error!(
                    error = %why,
                    jobs_held = held,
                    "the store cannot write; {} retrying every {}s without a restart",
                    if fires { "due fires are held, not dropped, and become misfires handled by each job's misfire policy once it can;" } else { "" },
                    RETRY_EVERY.as_secs()
                );
                self.held.outage = Some(Outage { why, since: self.clock.now(), retry_at: now + RETRY_EVERY, reported_at: now, failures: 0 });
            }
            Some(o) => {
                o.retry_at = now + RETRY_EVERY;
                o.failures += 1;
                o.why = why;
                if now.duration_since(o.reported_at) >= REPORT_EVERY {
                    tracing::error!(
                        error = %o.why,
                        since = %o.since,
                        jobs_held = held,
                        failed_attempts = o.failures,
                        "the store still cannot write; due fires stay held"
                    );
                    o.reported_at = now;
                    o.failures = 0;
                }
            }
        }
    }

    /// A fire commit succeeded: ends an outage, and once no timer is left at or before the last
    /// failed attempt, stops treating fires as unwritten.
    pub(super) fn store_wrote(&mut self, unwritten: u64, jobs: u64) {
        self.held.handled.0 += unwritten;
        self.held.handled.1 += jobs;
        if let Some(o) = self.held.outage.take() {
            tracing::warn!(since = %o.since, "the store writes again; firing goes on");
        }
        let Some(upto) = self.held.upto else { return };
        let held = self.timers.iter().take_while(|(at, _)| *at <= upto).count();
        self.metrics.fires_held.set(held as i64);
        if held == 0 {
            let (fires, jobs) = std::mem::take(&mut self.held.handled);
            tracing::warn!(
                fires,
                jobs,
                "every fire the store could not write is handled by its job's misfire policy (runs with trigger misfire)"
            );
            self.held.upto = None;
        }
    }
}
