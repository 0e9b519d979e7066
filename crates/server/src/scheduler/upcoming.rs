//! The jobs in order of their next fire, a page at a time (the web UI's jobs list). Read from the
//! timer set, which is already in that order, so a page costs the jobs it walks past and no sort
//! of every job; the jobs with no next fire (paused, disabled, dependent, exhausted) follow, by
//! name. A state filter ([`JobState`]: failing, running, paused) is answered from what the
//! scheduler holds of each job, so it keeps the order.
//!
//! A cursor names where the last page ended: `f<ms>.<slot>` in the timer set, `i<name>` among
//! the jobs with no next fire. A job whose next fire moves between two pages may show on both or
//! neither, as with any list that changes while it is read.

use jiff::Timestamp;
use tug_store::JobQuery;

use super::Scheduler;
use super::timers::Slot;

/// Where a page of [`Upcoming`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpcomingCursor {
    /// After this entry of the timer set.
    Fire(i64, Slot),
    /// After this job among those with no next fire.
    Idle(String),
}

impl UpcomingCursor {
    /// Parses a cursor a page handed out; `None` when it is not one.
    pub fn parse(s: &str) -> Option<UpcomingCursor> {
        if let Some(rest) = s.strip_prefix('f') {
            let (ms, slot) = rest.split_once('.')?;
            Some(UpcomingCursor::Fire(ms.parse().ok()?, slot.parse().ok()?))
        } else {
            s.strip_prefix('i').filter(|n| !n.is_empty()).map(|n| UpcomingCursor::Idle(n.to_owned()))
        }
    }
}

impl std::fmt::Display for UpcomingCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpcomingCursor::Fire(ms, slot) => write!(f, "f{ms}.{slot}"),
            UpcomingCursor::Idle(name) => write!(f, "i{name}"),
        }
    }
}

/// Jobs in a state, as the jobs page filters them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Its last finished run failed (failed, timed out or lost after its last success).
    Failing,
    /// It has runs in flight (pending, starting, running).
    Running,
    /// It is paused.
    Paused,
}

impl JobState {
    /// `failing`, `running` or `paused`; `None` for anything else.
    pub fn parse(s: &str) -> Option<JobState> {
        match s {
            "failing" => Some(JobState::Failing),
            "running" => Some(JobState::Running),
            "paused" => Some(JobState::Paused),
            _ => None,
        }
    }
}

/// One page of jobs by next fire.
#[derive(Debug, Default)]
pub struct Upcoming {
    /// Job names with their next fire, soonest first, then those with none by name.
    pub jobs: Vec<(String, Option<Timestamp>)>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<UpcomingCursor>,
}

impl Scheduler {
    /// Whether the job in `slot` is in `state` now.
    fn in_state(&self, slot: Slot, entry: &super::Entry, state: Option<JobState>) -> bool {
        match state {
            None => true,
            Some(JobState::Paused) => entry.job.spec.paused,
            Some(JobState::Running) => !self.runs.of_job(slot).is_empty(),
            Some(JobState::Failing) => match (entry.last_success_at, entry.last_failure_at) {
                (Some(ok), Some(bad)) => bad > ok,
                (None, bad) => bad.is_some(),
                (Some(_), None) => false,
            },
        }
    }

    /// Up to `limit` jobs passing `filter` (its `q` and `label`) and in `state`, after `after`.
    pub(super) fn upcoming(&self, filter: &JobQuery, state: Option<JobState>, after: Option<&UpcomingCursor>, limit: usize) -> Upcoming {
        let limit = limit.max(1);
        let mut page = Upcoming::default();
        let mut last: Option<UpcomingCursor> = None;
        if !matches!(after, Some(UpcomingCursor::Idle(_))) {
            let from = match after {
                Some(UpcomingCursor::Fire(ms, slot)) => Some((*ms, *slot)),
                _ => None,
            };
            for (at, slot) in self.timers.iter_after(from) {
                let Some(Some(entry)) = self.slots.get(slot as usize) else { continue };
                if !self.in_state(slot, entry, state) || !filter.matches(&entry.job.spec) {
                    continue;
                }
                if page.jobs.len() == limit {
                    page.next = last;
                    return page;
                }
                page.jobs.push((entry.job.spec.name.clone(), Some(at)));
                last = Some(UpcomingCursor::Fire(at.as_millisecond(), slot));
            }
        }
        let idle_after = match after {
            Some(UpcomingCursor::Idle(name)) => Some(name.as_str()),
            _ => None,
        };
        let mut idle: Vec<&str> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| Some((slot as Slot, e.as_ref()?)))
            .filter(|(slot, e)| {
                e.next.is_none()
                    && idle_after.is_none_or(|a| e.job.spec.name.as_str() > a)
                    && self.in_state(*slot, e, state)
                    && filter.matches(&e.job.spec)
            })
            .map(|(_, e)| e.job.spec.name.as_str())
            .collect();
        idle.sort_unstable();
        for name in idle {
            if page.jobs.len() == limit {
                page.next = last;
                return page;
            }
            page.jobs.push((name.to_owned(), None));
            last = Some(UpcomingCursor::Idle(name.to_owned()));
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_garbage_is_refused() {
        for c in [UpcomingCursor::Fire(1_764_000_000_000, 7), UpcomingCursor::Idle("job-1.x".into())] {
            assert_eq!(UpcomingCursor::parse(&c.to_string()), Some(c));
        }
        for bad in ["", "f", "f12", "fx.1", "f1.-2", "i", "job-1", "garbage"] {
            assert_eq!(UpcomingCursor::parse(bad), None, "{bad:?}");
        }
    }
}
