//! Misfire handling: given the fires a job has due (those after its fire cursor and not after now),
//! decide which run and which are recorded as skipped. The same rule serves start-up after
//! downtime, resume after a pause, and a scheduler running late under load.

use jiff::Timestamp;

use crate::duration::Duration;
use crate::job::{MAX_BACKFILL, MisfirePolicy};

/// At most this many missed fires of one gap are written as individual `skipped` runs; the rest
/// are counted in the reason of the oldest one written.
pub const MAX_RECORDED_SKIPS: usize = 10;

/// Due fires examined one by one before the rest of a gap is jumped over and only counted.
pub const MAX_SCAN: usize = 100_000;

/// What to do with the due fires of one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Fires to run because they are still within `epsilon` (on time).
    pub on_time: Vec<Timestamp>,
    /// Missed fires to run anyway (policy `run_once` or `run_all`), oldest first.
    pub backfill: Vec<Timestamp>,
    /// Missed fires to record as skipped, oldest first, at most [`MAX_RECORDED_SKIPS`].
    pub skipped: Vec<Timestamp>,
    /// Missed fires neither run nor recorded individually.
    pub unrecorded: u64,
    /// The last fire examined: the job's new fire cursor.
    pub cursor: Option<Timestamp>,
}

impl Plan {
    /// All missed fires, run or not.
    pub fn missed(&self) -> u64 {
        (self.backfill.len() + self.skipped.len()) as u64 + self.unrecorded
    }
}

/// Sorts `due` (ascending fires in `(cursor, now]`) into on-time, backfilled and skipped fires.
/// A fire is on time when `now <= fire + epsilon`.
pub fn plan(due: impl IntoIterator<Item = Timestamp>, now: Timestamp, epsilon: Duration, policy: MisfirePolicy) -> Plan {
    plan_unwritten(due, now, epsilon, policy, None)
}

/// Like [`plan`], but the fires at or before `unwritten` are missed whatever `epsilon` says: they
/// fell due while the store could not write them (a full disk), were held rather than dropped,
/// and the policy decides what becomes of them now that it can.
pub fn plan_unwritten(
    due: impl IntoIterator<Item = Timestamp>,
    now: Timestamp,
    epsilon: Duration,
    policy: MisfirePolicy,
    unwritten: Option<Timestamp>,
) -> Plan {
    let eps = jiff::SignedDuration::from_millis(epsilon.as_millis());
    let keep_missed = match policy {
        MisfirePolicy::Skip => MAX_RECORDED_SKIPS,
        MisfirePolicy::RunOnce => MAX_RECORDED_SKIPS + 1,
        MisfirePolicy::RunAll => MAX_BACKFILL.max(MAX_RECORDED_SKIPS),
    };
    let mut out = Plan::default();
    // The most recent missed fires, oldest first; older ones only counted.
    let mut missed: std::collections::VecDeque<Timestamp> = std::collections::VecDeque::new();
    let mut dropped: u64 = 0;
    for (i, fire) in due.into_iter().enumerate() {
        if i >= MAX_SCAN {
            break;
        }
        out.cursor = Some(fire);
        let held = unwritten.is_some_and(|u| fire <= u);
        if !held && fire.checked_add(eps).is_ok_and(|late| now <= late) {
            out.on_time.push(fire);
        } else {
            missed.push_back(fire);
            if missed.len() > keep_missed {
                missed.pop_front();
                dropped += 1;
            }
        }
    }
    let mut missed: Vec<Timestamp> = missed.into();
    match policy {
        MisfirePolicy::Skip => out.skipped = missed,
        MisfirePolicy::RunOnce => {
            if let Some(last) = missed.pop() {
                // A fire on time already covers the gap; running a stale one too would double up.
                if out.on_time.is_empty() {
                    out.backfill.push(last);
                } else {
                    missed.push(last);
                }
            }
            let extra = missed.len().saturating_sub(MAX_RECORDED_SKIPS);
            dropped += extra as u64;
            out.skipped = missed.split_off(extra);
        }
        MisfirePolicy::RunAll => {
            let extra = missed.len().saturating_sub(MAX_BACKFILL);
            dropped += extra as u64;
            out.backfill = missed.split_off(extra);
        }
    }
    out.unrecorded = dropped;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn on_time_within_epsilon() {
        let p = plan([ts(100)], ts(130), Duration::from_secs(60), MisfirePolicy::Skip);
        assert_eq!(p.on_time, vec![ts(100)]);
        assert_eq!(p.missed(), 0);
        assert_eq!(p.cursor, Some(ts(100)));
    }

    #[test]
    fn skip_records_recent_misses_and_counts_the_rest() {
        let due: Vec<_> = (0..50).map(|i| ts(i * 10)).collect();
        let p = plan(due, ts(1000), Duration::from_secs(1), MisfirePolicy::Skip);
        assert!(p.on_time.is_empty() && p.backfill.is_empty());
        assert_eq!(p.skipped.len(), MAX_RECORDED_SKIPS);
        assert_eq!(p.skipped.last(), Some(&ts(490)));
        assert_eq!(p.missed(), 50);
    }

    #[test]
    fn run_once_runs_latest_miss() {
        let due: Vec<_> = (0..5).map(|i| ts(i * 10)).collect();
        let p = plan(due, ts(1000), Duration::from_secs(1), MisfirePolicy::RunOnce);
        assert_eq!(p.backfill, vec![ts(40)]);
        assert_eq!(p.skipped, vec![ts(0), ts(10), ts(20), ts(30)]);
        assert_eq!(p.missed(), 5);
    }

    #[test]
    fn run_once_with_an_on_time_fire_runs_only_that() {
        let p = plan([ts(0), ts(995)], ts(1000), Duration::from_secs(10), MisfirePolicy::RunOnce);
        assert_eq!(p.on_time, vec![ts(995)]);
        assert!(p.backfill.is_empty());
        assert_eq!(p.skipped, vec![ts(0)]);
    }

    #[test]
    fn unwritten_fires_are_missed_within_epsilon() {
        let due = [ts(10), ts(20), ts(30)];
        let p = plan_unwritten(due, ts(31), Duration::from_secs(60), MisfirePolicy::RunOnce, Some(ts(20)));
        assert_eq!(p.on_time, vec![ts(30)]);
        assert_eq!(p.skipped, vec![ts(10), ts(20)], "an on-time fire covers the gap under run_once");
        let p = plan_unwritten(due, ts(31), Duration::from_secs(60), MisfirePolicy::RunOnce, Some(ts(30)));
        assert_eq!((p.missed(), p.backfill, p.skipped), (3, vec![ts(30)], vec![ts(10), ts(20)]));
        let p = plan_unwritten(due, ts(31), Duration::from_secs(60), MisfirePolicy::Skip, Some(ts(30)));
        assert_eq!((p.on_time.len(), p.skipped.len(), p.cursor), (0, 3, Some(ts(30))));
        assert_eq!(plan_unwritten(due, ts(31), Duration::from_secs(60), MisfirePolicy::Skip, None).on_time.len(), 3);
    }

    #[test]
    fn run_all_is_bounded() {
        let due: Vec<_> = (0..250).map(ts).collect();
        let p = plan(due, ts(10_000), Duration::from_secs(1), MisfirePolicy::RunAll);
        assert_eq!(p.backfill.len(), MAX_BACKFILL);
        assert_eq!(p.backfill.first(), Some(&ts(150)));
        assert_eq!(p.unrecorded, 150);
        assert_eq!(p.missed(), 250);
    }
}
