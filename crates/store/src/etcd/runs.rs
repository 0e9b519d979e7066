//! Runs on etcd: the fire batch (the hot path), run updates, listings, pruning and deletion.
//!
//! ```text
//! commit_fires: write (if P/meta/run-id and every P/stat/JOB are as this server last saw them
//!                      and no run key of the batch exists):
//!                     per new run  P/key/JOB/MS, P/run/JOB/ID, P/id/ID
//!                     per job      P/stat/JOB (cursor, last run, totals, unfinished runs)
//!                     once         P/meta/run-id
//!               else read P/meta/run-id, P/stat/JOB and the run keys P/key/JOB/[min, max] of
//!               each job fired, skip the run keys that exist, and write (if what was read is
//!               unchanged, else read again)
//! save_runs:    write each run and its job's stat (if the run and the stat are
//!               as this server last wrote them), else read them, then write (if unchanged)
//! ```
//!
//! A run key `(job, scheduled_at)` that exists is skipped, so a batch committed twice (a retry,
//! a new leader) creates nothing the second time. The first try of a write takes the counter,
//! stat and run values from the cache (see `cache.rs`): one round trip instead of two or three.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use etcd_client::{DeleteOptions, GetOptions, KeyValue, TxnOp};
use jiff::Timestamp;
use tug_core::run::{Attempt, NewRun, Run, RunId};

use super::keys::prefix_end;
use super::{
    EtcdStore, MAX_CONFLICTS, SCAN_PAGE, absent, decode, decode_num, decode_str, encode, present, unchanged, unchanged_since,
};
use serde::{Deserialize, Serialize};

use crate::derived::{Derived, page_size, stored, stored_opt, updated};
use crate::{FireBatch, Page, RemovedRun, Result, RunQuery, StoreError};

/// Operations one new run takes (key, run, id), plus its job's stat and the run key's compare at
/// worst.
const OPS_PER_FIRE: usize = 5;

/// The value of `P/stat/NAME`: what follows from the job's runs, and its runs not yet finished
/// (the runs a new leader takes over, found without an index key per run).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Stat {
    #[serde(flatten)]
    pub derived: Derived,
    /// The ids of the job's unfinished runs.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub active: BTreeSet<RunId>,
}

impl Stat {
    /// Counts a new or changed run (`old`: as it was stored).
    fn absorb(&mut self, old: Option<&Run>, run: &Run) {
        if let Some(old) = old {
            self.derived.uncount(old);
        }
        self.derived.absorb(run);
        if run.state.is_terminal() {
            self.active.remove(&run.id);
        } else {
            self.active.insert(run.id);
        }
    }
}

impl EtcdStore {
    pub(super) async fn commit_fires(&self, batch: FireBatch, now: Timestamp) -> Result<Vec<Run>> {
        let per_part = ((self.config.max_txn_ops - 2) / OPS_PER_FIRE).max(1);
        let mut created = Vec::with_capacity(batch.runs.len());
        let mut runs = batch.runs;
        let mut cursors = batch.cursors;
        loop {
            let rest = runs.split_off(runs.len().min(per_part));
            // Cursors ride with the last part when they fit.
            let room = self.config.max_txn_ops.saturating_sub(2 + runs.len() * OPS_PER_FIRE);
            let take = if rest.is_empty() { cursors.len().min(room) } else { 0 };
            let part_cursors: Vec<_> = cursors.drain(..take).collect();
            created.extend(self.commit_part(&runs, &part_cursors, now).await?);
            runs = rest;
            if runs.is_empty() && cursors.is_empty() {
                return Ok(created);
            }
        }
    }

    /// The operations that record a new run.
    fn new_run_ops(&self, key: String, run: &Run, ops: &mut Vec<TxnOp>) {
        ops.push(TxnOp::put(key, run.id.to_string(), None));
        ops.push(TxnOp::put(self.keys.run(&run.job, run.id), encode(run), None));
        ops.push(TxnOp::put(self.keys.id(run.id), run.job.clone(), None));
    }

    /// Records in the cache what a successful fire commit wrote at `revision`, and the counter
    /// as it is now.
    fn cache_fires(&self, revision: i64, counter: Option<(i64, u64)>, stats: Vec<(&str, Stat)>, created: &[Run]) {
        let mut cache = self.cache();
        cache.counter = counter;
        for (job, stat) in stats {
            cache.stat(job, revision, stat);
        }
        for run in created {
            cache.run(revision, run.clone());
        }
    }

    /// One transaction's worth of fires and cursors, first from the cache: `None` when the
    /// cache lacks a key or a compare failed (a run key exists, or a key changed meanwhile).
    async fn commit_cached(
        &self,
        runs: &[NewRun],
        cursors: &[(String, Timestamp)],
        now: Timestamp,
    ) -> Result<Option<Vec<Run>>> {
        let what = "committing fires";
        let (counter, mut stats) = {
            let cache = self.cache();
            let Some(counter) = cache.counter else { return Ok(None) };
            let mut stats: BTreeMap<&str, (i64, Stat)> = BTreeMap::new();
            for job in runs.iter().map(|r| r.job.as_str()).chain(cursors.iter().map(|(j, _)| j.as_str())) {
                if stats.contains_key(job) {
                    continue;
                }
                let Some(stat) = cache.stats.get(job) else { return Ok(None) };
                stats.insert(job, stat.clone());
            }
            (counter, stats)
        };
        let created_at = stored(now);
        let mut last_id = counter.1;
        let mut taken: HashSet<String> = HashSet::with_capacity(runs.len());
        let mut compares = Vec::with_capacity(1 + stats.len() + runs.len());
        let mut ops = Vec::with_capacity(runs.len() * 4 + stats.len() + 1);
        let mut created = Vec::with_capacity(runs.len());
        for new in runs {
            let scheduled_at = stored(new.scheduled_at);
            let key = self.keys.run_key(&new.job, scheduled_at.as_millisecond());
            if !taken.insert(key.clone()) {
                continue;
            }
            last_id += 1;
            let run = NewRun { scheduled_at, ..new.clone() }.into_run(last_id, created_at);
            stats.get_mut(run.job.as_str()).expect("every job is in stats").1.absorb(None, &run);
            compares.push(absent(key.clone()));
            self.new_run_ops(key, &run, &mut ops);
            created.push(run);
        }
        for (job, cursor) in cursors {
            let derived = &mut stats.get_mut(job.as_str()).expect("every job is in stats").1.derived;
            derived.fire_cursor = derived.fire_cursor.max(Some(stored(*cursor)));
        }
        compares.push(unchanged_since(self.keys.run_id(), counter.0));
        for (job, (revision, stat)) in &stats {
            compares.push(unchanged_since(self.keys.stat(job), *revision));
            ops.push(TxnOp::put(self.keys.stat(job), encode(stat), None));
        }
        if !created.is_empty() {
            ops.push(TxnOp::put(self.keys.run_id(), last_id.to_string(), None));
        }
        match self.write_at(what, compares, ops).await? {
            Some(revision) => {
                let stats: Vec<(&str, Stat)> = stats.into_iter().map(|(j, (_, stat))| (j, stat)).collect();
                // The counter's revision moves only when it was written.
                let counter_revision = if created.is_empty() { counter.0 } else { revision };
                self.cache_fires(revision, Some((counter_revision, last_id)), stats, &created);
                Ok(Some(created))
            }
            None => Ok(None),
        }
    }

    /// One transaction's worth of fires and cursors.
    async fn commit_part(&self, runs: &[NewRun], cursors: &[(String, Timestamp)], now: Timestamp) -> Result<Vec<Run>> {
        if runs.is_empty() && cursors.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(created) = self.commit_cached(runs, cursors, now).await? {
            return Ok(created);
        }
        let what = "committing fires";
        // The instants fired per job, for one range read of its existing keys.
        let mut fired: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for r in runs {
            let ms = stored(r.scheduled_at).as_millisecond();
            let span = fired.entry(r.job.as_str()).or_insert((ms, ms));
            *span = (span.0.min(ms), span.1.max(ms));
        }
        let mut jobs: Vec<&str> = fired.keys().copied().collect();
        for (job, _) in cursors {
            if !fired.contains_key(job.as_str()) && !jobs.contains(&job.as_str()) {
                jobs.push(job);
            }
        }
        let counter = self.keys.run_id();
        for _ in 0..MAX_CONFLICTS {
            let mut gets = vec![TxnOp::get(counter.clone(), None)];
            gets.extend(jobs.iter().map(|j| TxnOp::get(self.keys.stat(j), None)));
            for (job, (lo, hi)) in &fired {
                let mut end = self.keys.run_key(job, *hi).into_bytes();
                end.push(0);
                gets.push(TxnOp::get(self.keys.run_key(job, *lo), Some(GetOptions::new().with_range(end).with_keys_only())));
            }
            let got = self.read(what, gets).await?;
            let counter_kv = got[0].first().cloned();
            let mut last_id = match &counter_kv {
                Some(kv) => decode_num(what, kv)?,
                None => 0,
            };
            let mut stats: HashMap<&str, (Option<KeyValue>, Option<Stat>)> = HashMap::new();
            for (job, kvs) in jobs.iter().zip(&got[1..]) {
                let kv = kvs.first().cloned();
                let derived = kv.as_ref().map(|kv| decode(what, kv)).transpose()?;
                stats.insert(job, (kv, derived));
            }
            let mut taken: HashSet<Vec<u8>> =
                got[1 + jobs.len()..].iter().flatten().map(|kv| kv.key().to_vec()).collect();

            let created_at = stored(now);
            let mut ops = Vec::new();
            let mut created = Vec::new();
            for new in runs {
                // A job deleted while the tick was computed: nothing to do.
                let Some((_, Some(stat))) = stats.get_mut(new.job.as_str()) else { continue };
                let scheduled_at = stored(new.scheduled_at);
                let key = self.keys.run_key(&new.job, scheduled_at.as_millisecond());
                if !taken.insert(key.clone().into_bytes()) {
                    continue;
                }
                last_id += 1;
                let run = NewRun { scheduled_at, ..new.clone() }.into_run(last_id, created_at);
                stat.absorb(None, &run);
                self.new_run_ops(key, &run, &mut ops);
                created.push(run);
            }
            for (job, cursor) in cursors {
                if let Some((_, Some(stat))) = stats.get_mut(job.as_str()) {
                    stat.derived.fire_cursor = stat.derived.fire_cursor.max(Some(stored(*cursor)));
                }
            }
            if ops.is_empty() && cursors.is_empty() {
                return Ok(created);
            }
            let mut compares = vec![unchanged(counter.clone(), counter_kv.as_ref())];
            for (job, (kv, derived)) in &stats {
                compares.push(unchanged(self.keys.stat(job), kv.as_ref()));
                if let Some(d) = derived {
                    ops.push(TxnOp::put(self.keys.stat(job), encode(d), None));
                }
            }
            if !created.is_empty() {
                ops.push(TxnOp::put(counter.clone(), last_id.to_string(), None));
            }
            if let Some(revision) = self.write_at(what, compares, ops).await? {
                let written: Vec<(&str, Stat)> = stats.into_iter().filter_map(|(j, (_, stat))| stat.map(|stat| (j, stat))).collect();
                // The counter keeps the revision read unless it was written.
                let counter = if created.is_empty() {
                    counter_kv.as_ref().map(|kv| (kv.mod_revision(), last_id))
                } else {
                    Some((revision, last_id))
                };
                self.cache_fires(revision, counter, written, &created);
                return Ok(created);
            }
        }
        Err(Self::contended(what))
    }

    /// The job of each run id (`None`: no such run).
    async fn jobs_of(&self, what: &str, ids: &[RunId]) -> Result<Vec<Option<String>>> {
        let got = self.read(what, ids.iter().map(|id| TxnOp::get(self.keys.id(*id), None)).collect()).await?;
        got.iter().map(|kvs| kvs.first().map(|kv| decode_str(what, kv)).transpose()).collect()
    }

    /// All or nothing when it fits one transaction; a bigger call is split into parts by run,
    /// each atomic.
    pub(super) async fn save_runs(&self, runs: &[Run], attempts: &[Attempt]) -> Result<()> {
        // Each run takes a put, a compare and at worst its job's stat.
        let per_part = ((self.config.max_txn_ops - 1) / 3).max(1);
        if runs.len() + attempts.len() <= per_part && self.save_cached(runs, attempts).await? {
            return Ok(());
        }
        let what = "saving runs";
        let ids: Vec<RunId> = runs.iter().map(|r| r.id).chain(attempts.iter().map(|a| a.run_id)).collect();
        let jobs = self.jobs_of(what, &ids).await?;
        if let Some((id, _)) = ids.iter().zip(&jobs).find(|(_, j)| j.is_none()) {
            return Err(StoreError::RunNotFound(*id));
        }
        let job_of: HashMap<RunId, String> = ids.iter().copied().zip(jobs.into_iter().flatten()).collect();
        if runs.len() + attempts.len() > per_part {
            for part in runs.chunks(per_part) {
                self.save_part(part, &[], &job_of).await?;
            }
            for part in attempts.chunks(per_part) {
                self.save_part(&[], part, &job_of).await?;
            }
            return Ok(());
        }
        self.save_part(runs, attempts, &job_of).await
    }

    /// The operations that write the runs changed by `runs` (later changes of a run win) and
    /// `attempts`, given each run as stored and each job's stat as stored (updated here).
    fn save_ops(
        &self,
        runs: &[Run],
        attempts: &[Attempt],
        stored: &HashMap<RunId, Run>,
        stats: &mut BTreeMap<String, Stat>,
    ) -> (Vec<TxnOp>, BTreeMap<RunId, Run>) {
        let mut ops = Vec::new();
        let mut latest: BTreeMap<RunId, Run> = BTreeMap::new();
        for run in runs {
            let old = latest.get(&run.id).cloned().unwrap_or_else(|| stored[&run.id].clone());
            let new = updated(&old, run);
            stats.get_mut(old.job.as_str()).expect("read above").absorb(Some(&old), &new);
            latest.insert(run.id, new);
        }
        for (id, run) in &latest {
            ops.push(TxnOp::put(self.keys.run(&run.job, *id), encode(run), None));
        }
        for (job, stat) in stats.iter() {
            ops.push(TxnOp::put(self.keys.stat(job), encode(stat), None));
        }
        for a in attempts {
            let a = Attempt { started_at: stored_opt(a.started_at), finished_at: stored_opt(a.finished_at), ..a.clone() };
            ops.push(TxnOp::put(self.keys.attempt(a.run_id, a.attempt), encode(&a), None));
        }
        (ops, latest)
    }

    /// Records in the cache what a successful run write wrote at `revision`.
    fn cache_saved(&self, revision: i64, latest: BTreeMap<RunId, Run>, stats: BTreeMap<String, Stat>) {
        let mut cache = self.cache();
        for run in latest.into_values() {
            cache.run(revision, run);
        }
        for (job, stat) in stats {
            cache.stat(&job, revision, stat);
        }
    }

    /// One transaction of run changes from the cache, without reading: `false` when a run or
    /// its job's stat is not cached, or a compare failed (then the caller reads and writes).
    async fn save_cached(&self, runs: &[Run], attempts: &[Attempt]) -> Result<bool> {
        let what = "saving runs";
        let mut stored: HashMap<RunId, Run> = HashMap::with_capacity(runs.len());
        let mut stats: BTreeMap<String, Stat> = BTreeMap::new();
        let mut compares = Vec::with_capacity(runs.len() + attempts.len() + 1);
        {
            let cache = self.cache();
            for run in runs {
                if stored.contains_key(&run.id) {
                    continue;
                }
                let Some((revision, old)) = cache.runs.get(&run.id) else { return Ok(false) };
                if !stats.contains_key(&old.job) {
                    let Some((stat_revision, stat)) = cache.stats.get(&old.job) else { return Ok(false) };
                    compares.push(unchanged_since(self.keys.stat(&old.job), *stat_revision));
                    stats.insert(old.job.clone(), stat.clone());
                }
                compares.push(unchanged_since(self.keys.run(&old.job, run.id), *revision));
                stored.insert(run.id, old.clone());
            }
        }
        // An attempt's run must exist; its job need not be known.
        compares.extend(attempts.iter().map(|a| present(self.keys.id(a.run_id))));
        let (ops, latest) = self.save_ops(runs, attempts, &stored, &mut stats);
        match self.write_at(what, compares, ops).await? {
            Some(revision) => {
                self.cache_saved(revision, latest, stats);
                Ok(true)
            }
            None => {
                let mut cache = self.cache();
                for id in stored.keys() {
                    cache.runs.remove(id);
                }
                Ok(false)
            }
        }
    }

    async fn save_part(&self, runs: &[Run], attempts: &[Attempt], job_of: &HashMap<RunId, String>) -> Result<()> {
        let what = "saving runs";
        for _ in 0..MAX_CONFLICTS {
            let mut gets: Vec<TxnOp> = runs.iter().map(|r| TxnOp::get(self.keys.run(&job_of[&r.id], r.id), None)).collect();
            let jobs: Vec<&str> = {
                let mut j: Vec<&str> = runs.iter().map(|r| job_of[&r.id].as_str()).collect();
                j.sort_unstable();
                j.dedup();
                j
            };
            gets.extend(jobs.iter().map(|j| TxnOp::get(self.keys.stat(j), None)));
            let got = self.read(what, gets).await?;
            let mut current: HashMap<RunId, (KeyValue, Run)> = HashMap::new();
            for (run, kvs) in runs.iter().zip(&got) {
                let kv = kvs.first().ok_or(StoreError::RunNotFound(run.id))?;
                current.entry(run.id).or_insert((kv.clone(), decode(what, kv)?));
            }
            let mut stats: BTreeMap<&str, (KeyValue, Stat)> = BTreeMap::new();
            for (job, kvs) in jobs.iter().zip(&got[runs.len()..]) {
                // A job deleted meanwhile: its runs are gone too.
                let kv = kvs.first().ok_or(StoreError::RunNotFound(runs[0].id))?;
                stats.insert(job, (kv.clone(), decode(what, kv)?));
            }
            let mut compares: Vec<_> = current.iter().map(|(id, (kv, _))| unchanged(self.keys.run(&job_of[id], *id), Some(kv))).collect();
            compares.extend(stats.iter().map(|(job, (kv, _))| unchanged(self.keys.stat(job), Some(kv))));
            compares.extend(attempts.iter().map(|a| present(self.keys.id(a.run_id))));
            let stored: HashMap<RunId, Run> = current.into_iter().map(|(id, (_, run))| (id, run)).collect();
            let mut stats: BTreeMap<String, Stat> = stats.into_iter().map(|(job, (_, stat))| (job.to_owned(), stat)).collect();
            let (ops, latest) = self.save_ops(runs, attempts, &stored, &mut stats);
            if let Some(revision) = self.write_at(what, compares, ops).await? {
                self.cache_saved(revision, latest, stats);
                return Ok(());
            }
        }
        Err(Self::contended(what))
    }

    pub(super) async fn get_run(&self, id: RunId) -> Result<Run> {
        let what = format!("reading run {id}");
        let job = self.jobs_of(&what, &[id]).await?.pop().flatten().ok_or(StoreError::RunNotFound(id))?;
        let kv = self.get(&what, self.keys.run(&job, id)).await?.ok_or(StoreError::RunNotFound(id))?;
        decode(&what, &kv)
    }

    pub(super) async fn list_runs(&self, job: &str, query: &RunQuery) -> Result<Page<Run>> {
        let what = format!("listing runs of job {job:?}");
        let before = match &query.cursor {
            None => RunId::MAX,
            Some(c) => c.parse::<RunId>().map_err(|_| StoreError::BadCursor(c.clone()))?,
        };
        if self.get(&what, self.keys.stat(job)).await?.is_none() {
            return Err(StoreError::JobNotFound(job.to_owned()));
        }
        let limit = page_size(query.limit);
        let start = self.keys.runs(job).into_bytes();
        let end = if before == RunId::MAX { prefix_end(&start) } else { self.keys.run(job, before).into_bytes() };
        let mut items: Vec<Run> = Vec::new();
        let page = if query.state.is_some() { SCAN_PAGE } else { limit as i64 + 1 };
        self.walk(&what, (start, end), true, page, |kv| {
            let run: Run = decode(&what, &kv)?;
            if query.state.is_none_or(|s| run.state == s) {
                items.push(run);
            }
            Ok(items.len() <= limit)
        })
        .await?;
        Ok(Page::from_overfetch(items, limit, |run: &Run| run.id.to_string()))
    }

    pub(super) async fn active_runs(&self) -> Result<Vec<Run>> {
        let what = "reading active runs";
        let prefix = self.keys.stats();
        let mut gets = Vec::new();
        for kv in self.scan_prefix(what, &prefix).await? {
            let stat: Stat = decode(what, &kv)?;
            let job = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
            gets.extend(stat.active.iter().map(|id| TxnOp::get(self.keys.run(&job, *id), None)));
        }
        let mut runs = Vec::with_capacity(gets.len());
        for kvs in self.read(what, gets).await? {
            if let Some(kv) = kvs.first() {
                let run: Run = decode(what, kv)?;
                if !run.state.is_terminal() {
                    runs.push(run);
                }
            }
        }
        runs.sort_unstable_by_key(|r| r.id);
        Ok(runs)
    }

    pub(super) async fn attempts(&self, id: RunId) -> Result<Vec<Attempt>> {
        let what = format!("reading the attempts of run {id}");
        let prefix = self.keys.attempts(id);
        let range = GetOptions::new().with_range(prefix_end(prefix.as_bytes()));
        let got = self.read(&what, vec![TxnOp::get(self.keys.id(id), None), TxnOp::get(prefix, Some(range))]).await?;
        if got[0].is_empty() {
            return Err(StoreError::RunNotFound(id));
        }
        got[1].iter().map(|kv| decode(&what, kv)).collect()
    }

    /// The operations that delete a run with everything about it. `free_key` also frees its run
    /// key (pruning); deleting a job deletes its keys as a range.
    fn forget_run_ops(&self, run: &Run, free_key: bool) -> Vec<TxnOp> {
        let attempts = self.keys.attempts(run.id);
        let mut ops = vec![
            TxnOp::delete(self.keys.id(run.id), None),
            TxnOp::delete(attempts.clone(), Some(DeleteOptions::new().with_range(prefix_end(attempts.as_bytes())))),
        ];
        if free_key {
            ops.push(TxnOp::delete(self.keys.run(&run.job, run.id), None));
            ops.push(TxnOp::delete(self.keys.run_key(&run.job, run.scheduled_at.as_millisecond()), None));
        }
        ops
    }

    pub(super) async fn prune_runs(&self, job: &str, keep: u32) -> Result<Vec<RemovedRun>> {
        let what = format!("pruning runs of job {job:?}");
        if self.get(&what, self.keys.stat(job)).await?.is_none() {
            return Err(StoreError::JobNotFound(job.to_owned()));
        }
        let kvs = self.scan_prefix(&what, &self.keys.runs(job)).await?;
        let mut doomed: Vec<(KeyValue, Run)> = Vec::new();
        let mut kept = 0;
        for kv in kvs.iter().rev() {
            let run: Run = decode(&what, kv)?;
            if !run.state.is_terminal() {
                continue;
            }
            if kept < keep {
                kept += 1;
            } else {
                doomed.push((kv.clone(), run));
            }
        }
        doomed.reverse();
        // The stat key already counts these runs and holds their instants: it stays as it is.
        let per_part = (self.config.max_txn_ops / 5).max(1);
        let mut removed = Vec::with_capacity(doomed.len());
        for part in doomed.chunks(per_part) {
            let compares = part.iter().map(|(kv, r)| unchanged(self.keys.run(job, r.id), Some(kv))).collect();
            let ops = part.iter().flat_map(|(_, r)| self.forget_run_ops(r, true)).collect();
            // A run changed meanwhile (it cannot become unfinished again): leave this part for
            // the next prune.
            if self.write(&what, compares, ops).await? {
                removed.extend(part.iter().map(|(_, r)| RemovedRun { id: r.id, agent: r.agent.clone() }));
            }
        }
        Ok(removed)
    }

    pub(super) async fn delete_job(&self, name: &str) -> Result<Vec<RemovedRun>> {
        let what = format!("deleting job {name:?}");
        for _ in 0..MAX_CONFLICTS {
            let got = self.read(&what, vec![TxnOp::get(self.keys.job(name), None), TxnOp::get(self.keys.stat(name), None)]).await?;
            let Some(job) = got[0].first() else { return Err(StoreError::JobNotFound(name.to_owned())) };
            let runs: Vec<Run> =
                self.scan_prefix(&what, &self.keys.runs(name)).await?.iter().map(|kv| decode(&what, kv)).collect::<Result<_>>()?;
            let range = |prefix: String| {
                let end = prefix_end(prefix.as_bytes());
                TxnOp::delete(prefix, Some(DeleteOptions::new().with_range(end)))
            };
            // The stat key changes with every run written, so no run slips in between.
            let compares = vec![unchanged(self.keys.job(name), Some(job)), unchanged(self.keys.stat(name), got[1].first())];
            let ops = vec![
                TxnOp::delete(self.keys.job(name), None),
                TxnOp::delete(self.keys.stat(name), None),
                range(self.keys.runs(name)),
                range(self.keys.run_keys(name)),
            ];
            if !self.write(&what, compares, ops).await? {
                continue;
            }
            self.cache().forget_job(name);
            // Unreachable now (the job is gone); removed in parts.
            self.write_all(&what, runs.iter().flat_map(|r| self.forget_run_ops(r, false)).collect()).await?;
            return Ok(runs.into_iter().map(|r| RemovedRun { id: r.id, agent: r.agent }).collect());
        }
        Err(Self::contended(&what))
    }
}
