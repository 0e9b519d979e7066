//! An in-memory [`Store`]: the fake for unit tests, with the semantics of the SQLite store and
//! none of its threads or files.
//!
//! It is conformance-tested against the same suite as [`crate::sqlite::SqliteStore`]
//! (`tests/mem.rs` runs `tests/conformance`), so a test that passes on it passes on SQLite.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use jiff::Timestamp;
use tug_core::{JobSpec, ServiceSpec};
use tug_core::run::{Attempt, NewRun, Run, RunId};

use crate::derived::{Derived, label_matches, page_size, search_text, stored, stored_opt, updated};
use crate::{
    AuditEntry, AuditQuery, Claim, FireBatch, JobQuery, JobRecord, Page, PoolRecord, PoolSpec, ProgressKind,
    ProgressRecord, RemovedRun, Result, RunQuery, RunTotals, ServiceRecord, Store, StoreError, TokenRecord,
};

/// A [`Store`] held in memory behind one mutex: the fake for unit tests.
///
/// Every call takes the lock, does its work without awaiting, and returns, so it never blocks the
/// async runtime for long and needs no thread of its own. That makes it safe under tokio's paused
/// time: the runtime auto-advances the clock only when every task is idle, and a store call never
/// leaves a task idle while it waits on another thread.
///
/// # Semantics
///
/// The same as [`SqliteStore`](crate::sqlite::SqliteStore)'s (see its documentation), and checked
/// by the same conformance suite:
///
/// - Timestamps are truncated to the millisecond on the way in, so what a write returns equals
///   what later reads return, and run keys `(job, scheduled_at)` compare by millisecond.
/// - `version` starts at 1 and changes only with the spec (update); cursors and runs leave it.
/// - `commit_fires` is atomic: a run whose key exists or whose job does not exist is neither
///   created nor returned; created runs get `attempt = 1`, `created_at = now` and increasing ids;
///   explicit cursors only move forward, and a missing job's cursor is ignored.
/// - A job's `fire_cursor`, `last_run_at`, `last_success_at` and `last_failure_at` are derived
///   from its runs, floored by the explicit cursor and by what pruned runs contributed, so
///   pruning never moves them back.
/// - Listings page with opaque cursors (a job name; a run id in decimal); a cursor the store could
///   not have handed out is [`StoreError::BadCursor`].
/// - `save_runs` is all or nothing: an unknown run id, for a run or an attempt, changes nothing.
/// - Run ids start at 1, increase, and are never reused, even after their job is deleted. As with
///   SQLite's AUTOINCREMENT, a fire ignored for its duplicate key uses up an id.
/// - `create_jobs` is all or nothing: a name that is taken, or given twice, creates no job.
#[derive(Default)]
pub struct MemStore {
    state: Mutex<State>,
}

impl fmt::Debug for MemStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemStore")
            .field("jobs", &state.jobs.len())
            .field("runs", &state.runs.len())
            .field("attempts", &state.attempts.len())
            .finish()
    }
}

/// Everything the store holds.
#[derive(Debug, Default)]
struct State {
    /// Jobs by name; ordered, for listings.
    jobs: BTreeMap<String, JobRow>,
    /// Every run by id; ordered, for `active_runs`.
    runs: BTreeMap<RunId, Run>,
    /// Finished attempts by `(run, attempt)`; ordered, so a run's attempts are a range.
    attempts: BTreeMap<(RunId, u32), Attempt>,
    /// The last run id handed out (0: none yet).
    last_id: RunId,
    /// The last leader epoch handed out (0: none yet).
    epoch: u64,
    /// Address pools by name.
    pools: BTreeMap<String, PoolRecord>,
    /// Services by name.
    services: BTreeMap<String, ServiceRecord>,
    /// Releases and scale operations in progress (or kept for reading) by `(kind, id)`.
    progress: BTreeMap<(ProgressKind, u64), ProgressRecord>,
    /// Claimed addresses by `(pool, ip)`, so a pool's claims list by address.
    claims: BTreeMap<(String, std::net::Ipv4Addr), Claim>,
    /// API tokens by id.
    tokens: BTreeMap<String, TokenRecord>,
    /// The audit log by id.
    audit: BTreeMap<u64, AuditEntry>,
    /// The last audit id handed out.
    last_audit: u64,
}

/// A job as stored: the spec, its bookkeeping and an index of its runs.
#[derive(Debug)]
struct JobRow {
    spec: JobSpec,
    /// What `q` searches, kept with the spec (SQLite's `search` column).
    search: String,
    version: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
    /// Floors under the derived fields: the explicit cursor, and whatever pruned runs contributed.
    floors: Derived,
    /// The job's runs by key (`scheduled_at` in milliseconds), for INSERT-OR-IGNORE.
    keys: HashMap<i64, RunId>,
    /// The job's run ids, for listings, pruning and deletion.
    run_ids: BTreeSet<RunId>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The state, even after a panic elsewhere: every call checks before it changes anything, so
    /// a poisoned lock still guards consistent data.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl JobRow {
    /// A new job at version 1, without runs.
    fn new(spec: &JobSpec, now: Timestamp) -> JobRow {
        let now = stored(now);
        JobRow {
            spec: spec.clone(),
            search: search_text(spec),
            version: 1,
            created_at: now,
            updated_at: now,
            floors: Derived::default(),
            keys: HashMap::new(),
            run_ids: BTreeSet::new(),
        }
    }
}

impl State {
    fn job(&self, name: &str) -> Result<&JobRow> {
        self.jobs.get(name).ok_or_else(|| StoreError::JobNotFound(name.to_owned()))
    }

    /// A job with its derived fields: each the later of the row's floor and its runs' aggregate.
    fn record(&self, row: &JobRow) -> JobRecord {
        let mut derived = row.floors;
        for id in &row.run_ids {
            derived.absorb(&self.runs[id]);
        }
        JobRecord {
            spec: row.spec.clone(),
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            fire_cursor: derived.fire_cursor,
            last_run_at: derived.last_run_at,
            last_success_at: derived.last_success_at,
            last_failure_at: derived.last_failure_at,
        }
    }

    fn totals(&self, row: &JobRow) -> RunTotals {
        let mut derived = row.floors;
        for id in &row.run_ids {
            derived.absorb(&self.runs[id]);
        }
        RunTotals { succeeded: derived.succeeded, failed: derived.failed }
    }

    fn get_record(&self, name: &str) -> Result<JobRecord> {
        self.job(name).map(|row| self.record(row))
    }

    fn run(&self, id: RunId) -> Result<&Run> {
        self.runs.get(&id).ok_or(StoreError::RunNotFound(id))
    }

    /// The next run id; ids are never reused, even after their runs are deleted.
    fn next_id(&mut self) -> RunId {
        self.last_id += 1;
        self.last_id
    }

    /// Removes runs (and their attempts) from the global tables; the caller fixes the job's index.
    /// Deletes runs and their attempts; returns them as removed, in the order of `ids`.
    fn forget_runs(&mut self, ids: &[RunId]) -> Vec<RemovedRun> {
        let mut removed = Vec::with_capacity(ids.len());
        for &id in ids {
            if let Some(run) = self.runs.remove(&id) {
                removed.push(RemovedRun { id, agent: run.agent });
            }
            let attempts: Vec<_> = self.attempts.range((id, 0)..=(id, u32::MAX)).map(|(k, _)| *k).collect();
            for key in attempts {
                self.attempts.remove(&key);
            }
        }
        removed
    }
}

#[async_trait]
impl Store for MemStore {
    async fn create_job(&self, spec: &JobSpec, now: Timestamp) -> Result<JobRecord> {
        let mut state = self.lock();
        if state.jobs.contains_key(&spec.name) {
            return Err(StoreError::JobExists(spec.name.clone()));
        }
        state.jobs.insert(spec.name.clone(), JobRow::new(spec, now));
        state.get_record(&spec.name)
    }

    async fn create_jobs(&self, specs: &[JobSpec], now: Timestamp) -> Result<()> {
        let mut state = self.lock();
        // Check every name first (against the store and the earlier specs), so a refusal creates
        // nothing; the first conflict in order is the one reported, as in SQLite.
        let mut names = BTreeSet::new();
        for spec in specs {
            if state.jobs.contains_key(&spec.name) || !names.insert(spec.name.as_str()) {
                return Err(StoreError::JobExists(spec.name.clone()));
            }
        }
        for spec in specs {
            state.jobs.insert(spec.name.clone(), JobRow::new(spec, now));
        }
        Ok(())
    }

    async fn update_job(&self, spec: &JobSpec, expected_version: Option<u64>, now: Timestamp) -> Result<JobRecord> {
        let mut state = self.lock();
        let row = state.jobs.get_mut(&spec.name).ok_or_else(|| StoreError::JobNotFound(spec.name.clone()))?;
        if let Some(expected) = expected_version
            && expected != row.version
        {
            return Err(StoreError::VersionConflict { name: spec.name.clone(), expected, found: row.version });
        }
        row.spec = spec.clone();
        row.search = search_text(spec);
        row.version += 1;
        row.updated_at = stored(now);
        state.get_record(&spec.name)
    }

    async fn get_job(&self, name: &str) -> Result<JobRecord> {
        self.lock().get_record(name)
    }

    async fn delete_job(&self, name: &str) -> Result<Vec<RemovedRun>> {
        let mut state = self.lock();
        let row = state.jobs.remove(name).ok_or_else(|| StoreError::JobNotFound(name.to_owned()))?;
        let ids: Vec<RunId> = row.run_ids.into_iter().collect();
        Ok(state.forget_runs(&ids))
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<Page<JobRecord>> {
        let after = match &query.cursor {
            Some(c) if tug_core::job::valid_name(c) => c.as_str(),
            Some(c) => return Err(StoreError::BadCursor(c.clone())),
            None => "",
        };
        let q = query.q.as_deref().filter(|q| !q.is_empty()).map(str::to_lowercase);
        let label = query.label.as_deref().filter(|l| !l.is_empty());
        let limit = page_size(query.limit);
        let state = self.lock();
        let items = state
            .jobs
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .map(|(_, row)| row)
            .filter(|row| q.as_deref().is_none_or(|q| row.search.contains(q)))
            .filter(|row| label.is_none_or(|l| label_matches(&row.spec, l)))
            .take(limit + 1)
            .map(|row| state.record(row))
            .collect();
        Ok(Page::from_overfetch(items, limit, |job: &JobRecord| job.spec.name.clone()))
    }

    async fn load_jobs(&self) -> Result<Vec<JobRecord>> {
        let state = self.lock();
        Ok(state.jobs.values().map(|row| state.record(row)).collect())
    }

    async fn commit_fires(&self, batch: FireBatch, now: Timestamp) -> Result<Vec<Run>> {
        let mut state = self.lock();
        let created_at = stored(now);
        let mut created = Vec::with_capacity(batch.runs.len());
        for new in batch.runs {
            let scheduled_at = stored(new.scheduled_at);
            let key = scheduled_at.as_millisecond();
            // A job deleted while the tick was computed: nothing to do.
            if !state.jobs.contains_key(&new.job) {
                continue;
            }
            // Taken before the key is checked: like SQLite's AUTOINCREMENT, a duplicate key uses
            // up an id, so both stores hand out the same ids for the same calls.
            let id = state.next_id();
            let row = state.jobs.get_mut(&new.job).expect("checked above");
            if row.keys.contains_key(&key) {
                continue;
            }
            row.keys.insert(key, id);
            row.run_ids.insert(id);
            let run = NewRun { scheduled_at, ..new }.into_run(id, created_at);
            state.runs.insert(id, run.clone());
            created.push(run);
        }
        for (job, cursor) in batch.cursors {
            if let Some(row) = state.jobs.get_mut(&job) {
                row.floors.fire_cursor = row.floors.fire_cursor.max(Some(stored(cursor)));
            }
        }
        Ok(created)
    }

    async fn save_runs(&self, runs: &[Run], attempts: &[Attempt]) -> Result<()> {
        let mut state = self.lock();
        // Check everything first, so a failure changes nothing (SQLite rolls back).
        for run in runs {
            state.run(run.id)?;
        }
        for attempt in attempts {
            state.run(attempt.run_id)?;
        }
        for run in runs {
            let stored_run = state.runs.get_mut(&run.id).expect("checked above");
            *stored_run = updated(stored_run, run);
        }
        for attempt in attempts {
            let attempt = Attempt {
                started_at: stored_opt(attempt.started_at),
                finished_at: stored_opt(attempt.finished_at),
                ..attempt.clone()
            };
            state.attempts.insert((attempt.run_id, attempt.attempt), attempt);
        }
        Ok(())
    }

    async fn get_run(&self, id: RunId) -> Result<Run> {
        self.lock().run(id).cloned()
    }

    async fn list_runs(&self, job: &str, query: &RunQuery) -> Result<Page<Run>> {
        let before = match &query.cursor {
            None => RunId::MAX,
            Some(c) => c.parse::<RunId>().map_err(|_| StoreError::BadCursor(c.clone()))?,
        };
        let state = self.lock();
        let row = state.job(job)?;
        let limit = page_size(query.limit);
        let items = row
            .run_ids
            .range(..before)
            .rev()
            .map(|id| &state.runs[id])
            .filter(|run| query.state.is_none_or(|s| run.state == s))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |run: &Run| run.id.to_string()))
    }

    async fn active_runs(&self) -> Result<Vec<Run>> {
        Ok(self.lock().runs.values().filter(|run| !run.state.is_terminal()).cloned().collect())
    }

    async fn attempts(&self, id: RunId) -> Result<Vec<Attempt>> {
        let state = self.lock();
        state.run(id)?;
        Ok(state.attempts.range((id, 0)..=(id, u32::MAX)).map(|(_, a)| a.clone()).collect())
    }

    async fn prune_runs(&self, job: &str, keep: u32) -> Result<Vec<RemovedRun>> {
        let mut state = self.lock();
        let row = state.job(job)?;
        let doomed: Vec<RunId> = row
            .run_ids
            .iter()
            .rev()
            .filter(|id| state.runs[*id].state.is_terminal())
            .skip(keep as usize)
            .copied()
            .collect();
        if doomed.is_empty() {
            return Ok(Vec::new());
        }
        // The floors absorb what the deleted runs said, so a pruned schedule key never fires again.
        let mut floors = row.floors;
        for id in &doomed {
            floors.absorb(&state.runs[id]);
        }
        let row = state.jobs.get_mut(job).expect("checked above");
        row.floors = floors;
        for id in &doomed {
            row.run_ids.remove(id);
        }
        let gone: BTreeSet<RunId> = doomed.iter().copied().collect();
        row.keys.retain(|_, id| !gone.contains(id));
        let mut removed = state.forget_runs(&doomed);
        removed.reverse();
        Ok(removed)
    }

    async fn next_epoch(&self) -> Result<u64> {
        let mut state = self.lock();
        state.epoch += 1;
        Ok(state.epoch)
    }

    async fn run_totals(&self, job: Option<&str>) -> Result<Vec<(String, RunTotals)>> {
        let state = self.lock();
        match job {
            Some(name) => Ok(vec![(name.to_owned(), state.totals(state.job(name)?))]),
            None => Ok(state.jobs.iter().map(|(name, row)| (name.clone(), state.totals(row))).collect()),
        }
    }

    async fn create_pool(&self, spec: &PoolSpec, now: Timestamp) -> Result<PoolRecord> {
        let mut state = self.lock();
        if state.pools.contains_key(&spec.name) {
            return Err(StoreError::PoolExists(spec.name.clone()));
        }
        let record = PoolRecord { spec: spec.clone(), created_at: stored(now) };
        state.pools.insert(spec.name.clone(), record.clone());
        Ok(record)
    }

    async fn get_pool(&self, name: &str) -> Result<PoolRecord> {
        self.lock().pools.get(name).cloned().ok_or_else(|| StoreError::PoolNotFound(name.to_owned()))
    }

    async fn list_pools(&self) -> Result<Vec<PoolRecord>> {
        Ok(self.lock().pools.values().cloned().collect())
    }

    async fn delete_pool(&self, name: &str) -> Result<()> {
        let mut state = self.lock();
        if !state.pools.contains_key(name) {
            return Err(StoreError::PoolNotFound(name.to_owned()));
        }
        let claims = state.claims.keys().filter(|(p, _)| p == name).count();
        if claims > 0 {
            return Err(StoreError::PoolInUse { pool: name.to_owned(), claims });
        }
        state.pools.remove(name);
        Ok(())
    }

    async fn list_claims(&self, pool: Option<&str>) -> Result<Vec<Claim>> {
        let state = self.lock();
        if let Some(pool) = pool
            && !state.pools.contains_key(pool)
        {
            return Err(StoreError::PoolNotFound(pool.to_owned()));
        }
        Ok(state.claims.values().filter(|c| pool.is_none_or(|p| c.pool == p)).cloned().collect())
    }

    async fn put_claim(&self, claim: &Claim) -> Result<()> {
        let mut state = self.lock();
        if !state.pools.contains_key(&claim.pool) {
            return Err(StoreError::PoolNotFound(claim.pool.clone()));
        }
        let key = (claim.pool.clone(), claim.ip);
        if let Some(holder) = state.claims.get(&key).filter(|c| c.name != claim.name) {
            return Err(StoreError::AddressTaken {
                pool: claim.pool.clone(),
                ip: claim.ip.to_string(),
                holder: holder.name.clone(),
            });
        }
        state.claims.retain(|(p, _), c| !(p == &claim.pool && c.name == claim.name));
        state.claims.insert(key, claim.clone());
        Ok(())
    }

    async fn remove_claim(&self, pool: &str, name: &str) -> Result<Option<Claim>> {
        let mut state = self.lock();
        let key = state.claims.iter().find(|((p, _), c)| p == pool && c.name == name).map(|(k, _)| k.clone());
        Ok(key.and_then(|k| state.claims.remove(&k)))
    }

    async fn create_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
        let mut state = self.lock();
        if state.services.contains_key(&spec.name) {
            return Err(StoreError::ServiceExists(spec.name.clone()));
        }
        let now = stored(now);
        let record = ServiceRecord { spec: spec.clone(), version: 1, created_at: now, updated_at: now };
        state.services.insert(spec.name.clone(), record.clone());
        Ok(record)
    }

    async fn update_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
        let mut state = self.lock();
        let record = state.services.get_mut(&spec.name).ok_or_else(|| StoreError::ServiceNotFound(spec.name.clone()))?;
        record.spec = spec.clone();
        record.version += 1;
        record.updated_at = stored(now);
        Ok(record.clone())
    }

    async fn get_service(&self, name: &str) -> Result<ServiceRecord> {
        self.lock().services.get(name).cloned().ok_or_else(|| StoreError::ServiceNotFound(name.to_owned()))
    }

    async fn list_services(&self) -> Result<Vec<ServiceRecord>> {
        Ok(self.lock().services.values().cloned().collect())
    }

    async fn delete_service(&self, name: &str) -> Result<()> {
        self.lock().services.remove(name).map(|_| ()).ok_or_else(|| StoreError::ServiceNotFound(name.to_owned()))
    }

    async fn put_progress(&self, record: &ProgressRecord) -> Result<()> {
        self.lock().progress.insert((record.kind, record.id), record.clone());
        Ok(())
    }

    async fn list_progress(&self, kind: ProgressKind) -> Result<Vec<ProgressRecord>> {
        Ok(self.lock().progress.range((kind, 0)..=(kind, u64::MAX)).map(|(_, r)| r.clone()).collect())
    }

    async fn delete_progress(&self, kind: ProgressKind, ids: &[u64]) -> Result<()> {
        let mut state = self.lock();
        for id in ids {
            state.progress.remove(&(kind, *id));
        }
        Ok(())
    }

    async fn create_token(&self, token: &TokenRecord) -> Result<()> {
        let mut state = self.lock();
        if state.tokens.contains_key(&token.id) {
            return Err(StoreError::TokenExists(token.id.clone()));
        }
        let mut token = token.clone();
        token.created_at = stored(token.created_at);
        token.expires_at = token.expires_at.map(stored);
        token.revoked_at = token.revoked_at.map(stored);
        state.tokens.insert(token.id.clone(), token);
        Ok(())
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(self.lock().tokens.values().cloned().collect())
    }

    async fn revoke_token(&self, id: &str, now: Timestamp) -> Result<TokenRecord> {
        let mut state = self.lock();
        let token = state.tokens.get_mut(id).ok_or_else(|| StoreError::TokenNotFound(id.to_owned()))?;
        token.revoked_at.get_or_insert(stored(now));
        Ok(token.clone())
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        let mut state = self.lock();
        state.last_audit += 1;
        let id = state.last_audit;
        state.audit.insert(id, AuditEntry { id, at: stored(entry.at), ..entry.clone() });
        Ok(id)
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let state = self.lock();
        let after: u64 = match &query.cursor {
            None => 0,
            Some(c) => c.parse().ok().filter(|n| *n > 0).ok_or_else(|| StoreError::BadCursor(c.clone()))?,
        };
        let limit = page_size(query.limit);
        let items: Vec<AuditEntry> = state
            .audit
            .range(after + 1..)
            .map(|(_, e)| e)
            .filter(|e| query.since.is_none_or(|s| e.at >= s) && query.job.as_ref().is_none_or(|j| e.job.as_ref() == Some(j)))
            .take(limit + 1)
            .cloned()
            .collect();
        Ok(Page::from_overfetch(items, limit, |e| e.id.to_string()))
    }

    async fn prune_audit(&self, before: Timestamp) -> Result<u64> {
        let mut state = self.lock();
        let n = state.audit.len();
        state.audit.retain(|_, e| e.at >= before);
        Ok((n - state.audit.len()) as u64)
    }
}
