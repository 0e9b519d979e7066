//! The embedded store: one SQLite file in WAL mode with `synchronous = FULL`, so a write is on
//! disk before it is acknowledged.
//!
//! - `schema.rs`: tables, indexes and migrations (`PRAGMA user_version`).
//! - `worker.rs`: the thread that owns the connection; async callers never block on SQLite.
//! - `checkpoint.rs`: WAL checkpoints on a thread of their own, off the write path.
//! - `jobs.rs`: job queries, with the fire cursor and last-run times derived from runs.
//! - `net.rs`: address pools and claims.
//! - `firelog.rs`: the fire log: run writes appended to a log file, durable at once, and written
//!   into the tables behind it in large batches (the hot path of a file-backed store).
//! - `record.rs`: a fire-log record in bytes.
//! - `runs.rs`: the fire batch (the in-memory store's path), run updates, listings and pruning.
//! - `services.rs`: service specs.
//! - `progress.rs`: releases and scale operations in progress, as the scheduler's JSON records.
//! - `access.rs`: API tokens and the audit log.
//! - `codec.rs`: timestamps as integer milliseconds (UTC), states and triggers as names.
//!
//! Timestamps are kept to the millisecond: what a write returns is already truncated, so it
//! equals what later reads return.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use tug_core::{JobSpec, ServiceSpec};
use tug_core::run::{Attempt, Run, RunId};

use crate::{
    AuditEntry, AuditQuery, Claim, FireBatch, JobQuery, JobRecord, Page, PoolRecord, PoolSpec, ProgressKind,
    ProgressRecord, RemovedRun, Result, RunQuery, RunTotals, ServiceRecord, Store, StoreError, TokenRecord,
};
use checkpoint::Checkpointer;
use codec::{Context, locate};
use firelog::FireLog;
use worker::{Idle, Worker};
#[cfg(feature = "testing")]
pub use fill::fill_finished_runs;

mod access;
mod checkpoint;
mod codec;
mod firelog;
#[cfg(feature = "testing")]
mod fill;
mod record;
mod jobs;
mod net;
mod runs;
mod schema;
mod progress;
mod services;
mod throttle;
mod worker;

/// How long a write waits for another process holding the database lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite's page cache, in KiB (a negative `cache_size`): large enough that a tick of 100,000
/// fires touches memory rather than disk until it commits.
const CACHE_KIB: i64 = 64 * 1024;

/// The size, in bytes, the WAL file is truncated to when it is reset.
const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;

/// The [`Store`] on SQLite.
///
/// All calls run in order on one dedicated thread that owns the connection; a second thread
/// checkpoints the WAL. Dropping the store finishes the queued calls and closes the database.
///
/// # Semantics
///
/// Beyond the [`Store`] trait's own documentation:
///
/// - Job names and run keys are compared exactly; timestamps are kept to the millisecond.
/// - `version` changes only with the spec (create, update). Cursors and runs do not bump it, so an
///   API compare-and-set update is not disturbed by the scheduler.
/// - `commit_fires` and `save_runs` are durable when they return: on a file, as one record of the
///   fire log (see `firelog.rs`), whose runs reach the tables within a second and before any read;
///   in memory, as one transaction. Runs are written as given (state, reason, agent). A run
///   whose key `(job, scheduled_at)` exists already, or whose job does not exist (deleted while
///   the tick was computed), is not created and not returned. Created runs have `attempt = 1` and
///   `created_at = now`. Explicit cursors only move forward; a missing job's cursor is ignored.
/// - A job's `fire_cursor` is the later of its explicit cursor and the latest `scheduled_at` of its
///   schedule- or misfire-triggered runs; `last_run_at` the latest `scheduled_at` of its
///   non-skipped runs; `last_success_at` / `last_failure_at` the latest `finished_at` of its
///   succeeded / failed, timed-out or lost runs. Pruning never moves any of them back.
/// - `list_jobs` pages by name; `q` matches a case-insensitive substring of the name, description
///   or owner; `label` is `key=value` (equals) or `key` (present); both filters combine. Page
///   size: 0 means 100, at most 1000. `next_cursor` is set only when another item exists.
/// - `list_runs` pages by id, newest first, and fails with `JobNotFound` for an unknown job.
/// - Cursors are opaque strings; one this store could not have handed out is `BadCursor`.
/// - `save_runs` overwrites each run's mutable fields (not its key, trigger or `created_at`) and
///   upserts attempts by `(run_id, attempt)`; any unknown run id rolls the whole call back with
///   `RunNotFound`.
/// - `delete_job` returns the deleted run ids ascending. Run ids are never reused.
/// - `prune_runs` keeps the newest `keep` terminal runs (by id) and every pending, starting or
///   running one; returns the deleted ids ascending; `JobNotFound` for an unknown job.
/// - `run_totals` counts succeeded and failed/timed-out/lost runs, pruned ones included (the jobs
///   row keeps what pruning deleted as floors, like the last_* times).
pub struct SqliteStore {
    // Field order is drop order: the fire log stops taking writes first; the writer then
    // materializes what the log holds and closes before the checkpointer, whose connection, the
    // last one, then checkpoints the whole WAL and removes it.
    log: Option<FireLog>,
    /// Set to leave the fire log unmaterialized at close, as a crash would (tests).
    skip_final: Arc<AtomicBool>,
    worker: Worker,
    checkpointer: Option<Checkpointer>,
    path: Option<PathBuf>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating the file (and its directory) and the schema if
    /// needed, and migrating an older schema. Blocks while it does; call it at start-up.
    ///
    /// Fails if the file is not a Tugboat database, was written by a newer Tugboat, or lives on
    /// a file system without WAL support (some network file systems).
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => dir.to_owned(),
            None => PathBuf::from("."),
        };
        Self::open_in(path, &dir).map_err(|e| locate(e, Some(&dir)))
    }

    /// Job specs hold their `env` (secrets, often): the database is readable by its owner only.
    /// SQLite gives its `-wal` and `-shm` files the database's mode.
    fn owner_only(path: &Path) -> Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let made = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path);
        let restrict = |p: &Path| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600));
        made.and_then(|_| restrict(path)).map_err(|e| StoreError::io("making the database readable by its owner only", path, e))?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = PathBuf::from(side);
            if side.exists() {
                restrict(&side).map_err(|e| StoreError::io("making the database readable by its owner only", &side, e))?;
            }
        }
        Ok(())
    }

    fn open_in(path: &Path, dir: &Path) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io("creating the database directory", dir, e))?;
        Self::owner_only(path)?;
        let what = format!("opening the database {}", path.display());
        let conn = Connection::open(path).ctx(&what)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).ctx(&what)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path: path.to_owned(), mode });
        }
        // The checkpointer takes over from the writer's automatic checkpoint, but for a safety valve.
        conn.pragma_update(None, "wal_autocheckpoint", checkpoint::WRITER_THRESHOLD_PAGES).ctx(&what)?;
        // After a checkpoint, shrink the WAL file back to this size rather than keep its peak.
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT).ctx(&what)?;
        let mut store = Self::start(conn, Some(path.to_owned()), Some(dir.to_owned()), true)?;
        store.checkpointer = Some(Checkpointer::spawn(path)?);
        Ok(store)
    }

    /// A private database in memory, for tests. Gone when the store is dropped. It has no fire
    /// log: fires and run changes are written to the tables directly, one transaction each.
    pub fn open_in_memory() -> Result<SqliteStore> {
        Self::start(Connection::open_in_memory().ctx("opening an in-memory database")?, None, None, false)
    }

    /// The fire log beside the database at `path`: `PATH.firelog` (with its own `-wal` and
    /// `-shm`). Back it up, move it and delete it together with the database.
    pub fn fire_log_path(path: &Path) -> PathBuf {
        firelog::path_for(path)
    }

    /// Closes the store the way a crash would leave it: every acknowledged write is in the fire
    /// log, and what the log holds is not written into the tables first. The next open replays it.
    #[cfg(feature = "testing")]
    pub fn close_as_if_crashed(self) {
        self.skip_final.store(true, Ordering::Release);
    }

    /// Runs `f` on the connection thread once everything the fire log acknowledged is in the
    /// tables, so it reads (and writes over) the latest runs and cursors.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        match &self.log {
            None => self.worker.call(f).await,
            Some(log) => {
                let overlay = log.overlay.clone();
                self.worker.call(move |c| firelog::materialize(c, &overlay).and_then(|()| f(c))).await
            }
        }
    }

    /// The database file; `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version this build creates and migrates to.
    pub fn schema_version() -> i64 {
        schema::VERSION
    }

    fn start(mut conn: Connection, path: Option<PathBuf>, dir: Option<PathBuf>, logged: bool) -> Result<SqliteStore> {
        let what = "configuring the database";
        // FULL: the WAL is synced at every commit, so an acknowledged write survives a power cut.
        conn.pragma_update(None, "synchronous", "FULL").ctx(what)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB).ctx(what)?;
        conn.pragma_update(None, "temp_store", "MEMORY").ctx(what)?;
        conn.busy_timeout(BUSY_TIMEOUT).ctx(what)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        let skip_final = Arc::new(AtomicBool::new(false));
        let (log, idle) = match path.as_deref().filter(|_| logged) {
            Some(db) => {
                let log = FireLog::open(db, &mut conn)?;
                let (overlay, skip) = (log.overlay.clone(), skip_final.clone());
                // A full disk fails every round (20 a second): the log says so once per interval.
                let mut failures = throttle::Throttle::default();
                let dir = dir.clone();
                let idle: Idle = Box::new(move |c, last| {
                    if last && skip.load(Ordering::Acquire) {
                        return;
                    }
                    let due = last || overlay.lock().unwrap_or_else(|p| p.into_inner()).due();
                    if !due {
                        return;
                    }
                    match firelog::materialize(c, &overlay) {
                        Err(e) => {
                            if let Some(unlogged) = failures.failed() {
                                let e = locate(e, dir.as_deref());
                                tracing::error!(error = %e, failed_since_last_report = unlogged, "writing the fire log into the tables failed; will retry");
                            }
                        }
                        Ok(()) if failures.ok() => tracing::warn!("writing the fire log into the tables works again"),
                        Ok(()) => {}
                    }
                });
                (Some(log), Some(idle))
            }
            None => (None, None),
        };
        let worker = Worker::spawn(conn, "tug-sqlite", dir, idle)?;
        Ok(SqliteStore { log, skip_final, worker, checkpointer: None, path })
    }
}

/// Page size when a query asks for 0.
const DEFAULT_LIMIT: usize = 100;
/// The largest page handed out.
const MAX_LIMIT: usize = 1000;

/// The page size a query asks for, defaulted and capped.
fn page_size(limit: usize) -> usize {
    match limit {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    }
}

/// Starts a write transaction, taking the database lock at once so that it cannot fail half-way
/// for lock contention (another process on the same file waits up to the busy timeout instead).
fn write_tx(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate).ctx("starting a write transaction")
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_job(&self, spec: &JobSpec, now: Timestamp) -> Result<JobRecord> {
        let spec = spec.clone();
        self.call(move |c| jobs::create(c, &spec, now)).await
    }

    async fn create_jobs(&self, specs: &[JobSpec], now: Timestamp) -> Result<()> {
        let specs = specs.to_vec();
        self.call(move |c| jobs::create_many(c, &specs, now)).await
    }

    async fn update_job(&self, spec: &JobSpec, expected_version: Option<u64>, now: Timestamp) -> Result<JobRecord> {
        let spec = spec.clone();
        self.call(move |c| jobs::update(c, &spec, expected_version, now)).await
    }

    async fn get_job(&self, name: &str) -> Result<JobRecord> {
        let name = name.to_owned();
        self.call(move |c| jobs::get(c, &name)).await
    }

    async fn delete_job(&self, name: &str) -> Result<Vec<RemovedRun>> {
        let name = name.to_owned();
        let removed = self.call(move |c| jobs::delete(c, &name)).await?;
        if let Some(log) = &self.log {
            log.deletions.fetch_add(1, Ordering::AcqRel);
        }
        Ok(removed)
    }

    async fn list_jobs(&self, query: &JobQuery) -> Result<Page<JobRecord>> {
        let query = query.clone();
        self.call(move |c| jobs::list(c, &query)).await
    }

    async fn load_jobs(&self) -> Result<Vec<JobRecord>> {
        self.call(|c| jobs::load(c)).await
    }

    async fn commit_fires(&self, batch: FireBatch, now: Timestamp) -> Result<Vec<Run>> {
        match &self.log {
            Some(_) if batch.runs.is_empty() && batch.cursors.is_empty() => Ok(Vec::new()),
            Some(log) => log.commit_fires(batch, now).await.map_err(|e| self.worker.locate(e)),
            None => self.worker.call(move |c| runs::commit_fires(c, batch, now)).await,
        }
    }

    async fn save_runs(&self, runs: &[Run], attempts: &[Attempt]) -> Result<()> {
        let (runs, attempts) = (runs.to_vec(), attempts.to_vec());
        match &self.log {
            Some(log) => log.save_runs(runs, attempts).await.map_err(|e| self.worker.locate(e)),
            None => self.worker.call(move |c| runs::save(c, &runs, &attempts)).await,
        }
    }

    async fn get_run(&self, id: RunId) -> Result<Run> {
        self.call(move |c| runs::get(c, id)).await
    }

    async fn list_runs(&self, job: &str, query: &RunQuery) -> Result<Page<Run>> {
        let (job, query) = (job.to_owned(), query.clone());
        match &self.log {
            // The tables with what the fire log holds for the job laid over them: a read does not
            // wait for the log to be written into the tables (a second of fires, under load). On
            // the connection thread, so no materialization runs between the two.
            Some(log) if query.state.is_none() => {
                let overlay = log.overlay.clone();
                self.worker
                    .call(move |c| {
                        let held = firelog::lock(&overlay).runs_of(&job);
                        runs::list_with(c, &job, &query, held)
                    })
                    .await
            }
            _ => self.call(move |c| runs::list(c, &job, &query)).await,
        }
    }

    async fn active_runs(&self) -> Result<Vec<Run>> {
        self.call(|c| runs::active(c)).await
    }

    async fn attempts(&self, id: RunId) -> Result<Vec<Attempt>> {
        self.call(move |c| runs::attempts(c, id)).await
    }

    async fn prune_runs(&self, job: &str, keep: u32) -> Result<Vec<RemovedRun>> {
        let job = job.to_owned();
        self.call(move |c| runs::prune(c, &job, keep)).await
    }

    async fn prune_many(&self, jobs: &[(String, u32)]) -> Result<Vec<RemovedRun>> {
        let jobs = jobs.to_vec();
        self.call(move |c| runs::prune_many(c, &jobs)).await
    }

    async fn next_epoch(&self) -> Result<u64> {
        self.worker
            .call(|c| {
                let tx = write_tx(c)?;
                let epoch: i64 = tx
                    .query_row(
                        "INSERT INTO counters (name, value) VALUES ('epoch', 1)
                         ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value",
                        [],
                        |r| r.get(0),
                    )
                    .ctx("taking the next leader epoch")?;
                tx.commit().ctx("taking the next leader epoch")?;
                Ok(epoch as u64)
            })
            .await
    }

    async fn run_totals(&self, job: Option<&str>) -> Result<Vec<(String, RunTotals)>> {
        let job = job.map(str::to_owned);
        self.call(move |c| runs::totals(c, job.as_deref())).await
    }

    async fn create_pool(&self, spec: &PoolSpec, now: Timestamp) -> Result<PoolRecord> {
        let spec = spec.clone();
        self.call(move |c| net::create_pool(c, &spec, now)).await
    }

    async fn get_pool(&self, name: &str) -> Result<PoolRecord> {
        let name = name.to_owned();
        self.call(move |c| net::get_pool(c, &name)).await
    }

    async fn list_pools(&self) -> Result<Vec<PoolRecord>> {
        self.call(|c| net::list_pools(c)).await
    }

    async fn delete_pool(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.call(move |c| net::delete_pool(c, &name)).await
    }

    async fn list_claims(&self, pool: Option<&str>) -> Result<Vec<Claim>> {
        let pool = pool.map(str::to_owned);
        self.call(move |c| net::list_claims(c, pool.as_deref())).await
    }

    async fn put_claim(&self, claim: &Claim) -> Result<()> {
        let claim = claim.clone();
        self.call(move |c| net::put_claim(c, &claim)).await
    }

    async fn remove_claim(&self, pool: &str, name: &str) -> Result<Option<Claim>> {
        let (pool, name) = (pool.to_owned(), name.to_owned());
        self.call(move |c| net::remove_claim(c, &pool, &name)).await
    }

    async fn create_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
        let spec = spec.clone();
        self.call(move |c| services::create(c, &spec, now)).await
    }

    async fn update_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
        let spec = spec.clone();
        self.call(move |c| services::update(c, &spec, now)).await
    }

    async fn get_service(&self, name: &str) -> Result<ServiceRecord> {
        let name = name.to_owned();
        self.call(move |c| services::get(c, &name)).await
    }

    async fn list_services(&self) -> Result<Vec<ServiceRecord>> {
        self.call(|c| services::list(c)).await
    }

    async fn delete_service(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.call(move |c| services::delete(c, &name)).await
    }

    async fn put_progress(&self, record: &ProgressRecord) -> Result<()> {
        let record = record.clone();
        self.call(move |c| progress::put(c, &record)).await
    }

    async fn list_progress(&self, kind: ProgressKind) -> Result<Vec<ProgressRecord>> {
        self.call(move |c| progress::list(c, kind)).await
    }

    async fn delete_progress(&self, kind: ProgressKind, ids: &[u64]) -> Result<()> {
        let ids = ids.to_vec();
        self.call(move |c| progress::delete(c, kind, &ids)).await
    }

    async fn create_token(&self, token: &TokenRecord) -> Result<()> {
        let token = token.clone();
        self.call(move |c| access::create_token(c, &token)).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.call(access::list_tokens).await
    }

    async fn revoke_token(&self, id: &str, now: Timestamp) -> Result<TokenRecord> {
        let id = id.to_owned();
        self.call(move |c| access::revoke_token(c, &id, now)).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        let entry = entry.clone();
        self.call(move |c| access::append_audit(c, &entry)).await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let query = query.clone();
        self.call(move |c| access::list_audit(c, &query)).await
    }

    async fn prune_audit(&self, before: Timestamp) -> Result<u64> {
        self.call(move |c| access::prune_audit(c, before)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql`, one step per line.
    fn plan(conn: &Connection, sql: &str) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        // Unbound parameters are NULL, which is all a plan needs.
        let mut rows = stmt.raw_query();
        let mut steps = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            steps.push(row.get::<_, String>(3).unwrap());
        }
        steps.join("\n")
    }

    #[test]
    fn queries_use_their_indexes() {
        let mut conn = Connection::open_in_memory().unwrap();
        schema::migrate(&mut conn).unwrap();
        let uses = |sql: &str, needles: &[&str]| {
            let p = plan(&conn, sql);
            for needle in needles {
                assert!(p.contains(needle), "expected {needle:?} in the plan of\n{sql}\n---\n{p}");
            }
            assert!(!p.lines().any(|l| l.starts_with("SCAN runs")), "a full scan of runs in\n{sql}\n---\n{p}");
        };
        uses(&runs::ACTIVE_SQL, &["runs_active"]);
        uses(&runs::LIST_SQL, &["runs_by_job"]);
        uses(&runs::PRUNE_SQL, &["runs_by_job"]);
        uses(&runs::GET_SQL, &["INTEGER PRIMARY KEY"]);
        uses(&jobs::GET_SQL, &["sqlite_autoindex_jobs_1", "SEARCH runs USING INDEX"]);
        uses(&jobs::LIST_SQL, &["sqlite_autoindex_jobs_1", "SEARCH runs USING INDEX"]);
        // load_jobs reads every run once, by design.
        assert!(plan(&conn, &jobs::LOAD_SQL).contains("runs"));
    }
}
