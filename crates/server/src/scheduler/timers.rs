//! The one timer structure for every job: an ordered set of `(fire instant in ms, job slot)`.
//! Popping everything due is O(k log n) for k due fires; no task or timer per job.

use std::collections::BTreeSet;

use jiff::Timestamp;

/// Index of a job in the scheduler's slot table.
pub type Slot = u32;

/// Due instants keyed by millisecond, with a slot (job) or run id as the second part.
#[derive(Debug, Default)]
pub struct Timers<K: Ord + Copy> {
    set: BTreeSet<(i64, K)>,
}

impl<K: Ord + Copy> Timers<K> {
    /// Empty.
    pub fn new() -> Self {
        Timers { set: BTreeSet::new() }
    }

    /// Schedules `key` at `at`.
    pub fn insert(&mut self, at: Timestamp, key: K) {
        self.set.insert((at.as_millisecond(), key));
    }

    /// Cancels `key` at `at` (a no-op if absent).
    pub fn remove(&mut self, at: Timestamp, key: K) {
        self.set.remove(&(at.as_millisecond(), key));
    }

    /// The earliest instant anything is due.
    pub fn first(&self) -> Option<Timestamp> {
        self.set.first().and_then(|(ms, _)| Timestamp::from_millisecond(*ms).ok())
    }

    /// Removes and returns the next key due at or before `now`.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<K> {
        let now_ms = now.as_millisecond();
        match self.set.first() {
            Some(&(ms, _)) if ms <= now_ms => self.set.pop_first().map(|(_, k)| k),
            _ => None,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Every entry, earliest first.
    pub fn iter(&self) -> impl Iterator<Item = (Timestamp, K)> + '_ {
        self.set.iter().filter_map(|(ms, k)| Timestamp::from_millisecond(*ms).ok().map(|t| (t, *k)))
    }

    /// The entries after `(ms, key)` (all of them for `None`), earliest first.
    pub fn iter_after(&self, after: Option<(i64, K)>) -> impl Iterator<Item = (Timestamp, K)> + '_ {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.set.range((from, Bound::Unbounded)).filter_map(|(ms, k)| Timestamp::from_millisecond(*ms).ok().map(|t| (t, *k)))
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_order_and_only_due() {
        let t = |ms| Timestamp::from_millisecond(ms).unwrap();
        let mut timers = Timers::new();
        timers.insert(t(30), 1u32);
        timers.insert(t(10), 2);
        timers.insert(t(10), 3);
        timers.remove(t(10), 3);
        assert_eq!(timers.first(), Some(t(10)));
        assert_eq!(timers.pop_due(t(20)), Some(2));
        assert_eq!(timers.pop_due(t(20)), None);
        assert_eq!(timers.pop_due(t(30)), Some(1));
        assert!(timers.is_empty());
    }

    #[test]
    fn iterates_after_an_entry() {
        let t = |ms| Timestamp::from_millisecond(ms).unwrap();
        let mut timers = Timers::new();
        for (ms, k) in [(10, 1u32), (10, 2), (20, 0), (30, 5)] {
            timers.insert(t(ms), k);
        }
        let keys = |after| timers.iter_after(after).map(|(_, k)| k).collect::<Vec<_>>();
        assert_eq!(keys(None), [1, 2, 0, 5]);
        assert_eq!(keys(Some((10, 1))), [2, 0, 5]);
        assert_eq!(keys(Some((15, 0))), [0, 5]);
        assert_eq!(keys(Some((30, 5))), Vec::<u32>::new());
    }
}
