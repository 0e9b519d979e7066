//! What this server last read or wrote of the hot keys (the run id counter, each job's `stat`,
//! each unfinished run), with each key's `mod_revision`, so the fire path and run updates write
//! without reading first.
//!
//! The cache is never trusted: a write built from it compares every key it used with the cached
//! revision, so a key changed by anyone else (another server, a job deleted, a prune) fails the
//! transaction and the caller reads from etcd and writes again. A leader is the only writer of
//! runs in a group, so after its first tick nearly every write goes through in one round trip.

use std::collections::HashMap;

use tug_core::run::{Run, RunId};

use super::runs::Stat;

/// Above this many entries a map is emptied (it fills again from the next reads): a bound on
/// memory, far above the jobs and unfinished runs of a real installation.
const MAX_ENTRIES: usize = 1_000_000;

/// The cached keys, each with its `mod_revision` (0: the key does not exist).
#[derive(Debug, Default)]
pub(super) struct Cache {
    /// `P/meta/run-id`: the last run id handed out.
    pub counter: Option<(i64, u64)>,
    /// `P/stat/NAME` by job name.
    pub stats: HashMap<String, (i64, Stat)>,
    /// `P/run/NAME/ID` of runs not yet finished, by id.
    pub runs: HashMap<RunId, (i64, Run)>,
}

impl Cache {
    /// Records a job's stat key as read or written at `revision`.
    pub fn stat(&mut self, job: &str, revision: i64, stat: Stat) {
        if self.stats.len() >= MAX_ENTRIES && !self.stats.contains_key(job) {
            self.stats.clear();
        }
        self.stats.insert(job.to_owned(), (revision, stat));
    }

    /// Records a run as written at `revision`; a finished run is dropped (it is not written
    /// again on the hot path).
    pub fn run(&mut self, revision: i64, run: Run) {
        if run.state.is_terminal() {
            self.runs.remove(&run.id);
            return;
        }
        if self.runs.len() >= MAX_ENTRIES && !self.runs.contains_key(&run.id) {
            self.runs.clear();
        }
        self.runs.insert(run.id, (revision, run));
    }

    /// Forgets everything about `job` (deleted).
    pub fn forget_job(&mut self, job: &str) {
        self.stats.remove(job);
        self.runs.retain(|_, (_, r)| r.job != job);
    }
}
