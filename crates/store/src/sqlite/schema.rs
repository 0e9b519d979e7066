//! The database schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Migration `n` (1-based) takes a database from `user_version = n - 1` to `n`, in one
//! transaction. Append new migrations to [`MIGRATIONS`]; never edit a released one.
//!
//! Conventions: timestamps are `INTEGER` milliseconds since the Unix epoch (UTC); run states and
//! triggers are their snake_case names (as in the API); a job's spec is its JSON document.

use std::path::PathBuf;

use rusqlite::{Connection, TransactionBehavior};

use super::codec::Context;
use crate::{Result, StoreError};

/// Every migration, in order. The schema version of a database is the number applied.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8];

/// Version 1: jobs, runs and attempts.
pub(super) const V1: &str = "
-- One row per job. The last four columns are floors: values the scheduler must not lose when the
-- runs that justified them are pruned (see prune_runs). A job's reported fire cursor and last_*
-- times are the later of the floor and the aggregate over its current runs.
CREATE TABLE jobs (
    name            TEXT PRIMARY KEY NOT NULL,
    spec            TEXT NOT NULL,    -- the JobSpec as JSON
    search          TEXT NOT NULL,    -- lowercase name, description and owner, one per line, for `q`
    version         INTEGER NOT NULL, -- 1 on create, +1 on every update
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    fire_cursor     INTEGER,          -- explicit cursor from FireBatch::cursors and pruning
    last_run_at     INTEGER,
    last_success_at INTEGER,
    last_failure_at INTEGER
);

-- One row per run. AUTOINCREMENT so an id is never reused after its run is deleted: a run's id
-- also names its log file.
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job          TEXT NOT NULL,
    scheduled_at INTEGER NOT NULL,
    trigger      TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    finished_at  INTEGER,
    exit_code    INTEGER,
    signal       INTEGER,
    reason       TEXT,
    agent        TEXT,
    retry_at     INTEGER,
    -- The run key: a fire is written at most once. Time-major, so a tick's fires are appended at
    -- the end of the index instead of dirtying a page of it for every job.
    UNIQUE (scheduled_at, job)
);
-- list_runs (newest first), delete_job, prune_runs.
CREATE INDEX runs_by_job ON runs (job, id);
-- active_runs: only the few non-terminal runs are in this index. Written with OR, not IN: SQLite
-- evaluates a partial index's IN list through a temporary table built per statement, which made
-- every insert of a fire batch 60% slower.
CREATE INDEX runs_active ON runs (state)
    WHERE (state = 'pending' OR state = 'starting' OR state = 'running');

-- Finished attempts of retried runs.
CREATE TABLE attempts (
    run_id      INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    exit_code   INTEGER,
    signal      INTEGER,
    reason      TEXT,
    PRIMARY KEY (run_id, attempt)
) WITHOUT ROWID;
";

/// The per-job index of runs, as [`V1`] creates it (a bulk load drops and rebuilds it).
#[cfg(feature = "testing")]
pub(super) const RUNS_BY_JOB: &str = "CREATE INDEX runs_by_job ON runs (job, id);";

/// Version 2: run totals that survive pruning (`Store::run_totals`).
pub(super) const V2: &str = "
-- Floors of the run totals: the succeeded and the failed, timed-out or lost runs pruning deleted.
-- A job's totals are these plus the counts over its current runs.
ALTER TABLE jobs ADD COLUMN pruned_succeeded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN pruned_failed INTEGER NOT NULL DEFAULT 0;
";

/// Version 3: small named counters (the leader epoch).
pub(super) const V3: &str = "
CREATE TABLE counters (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 4: address pools and the addresses claimed from them.
pub(super) const V4: &str = "
CREATE TABLE net_pools (
    name       TEXT PRIMARY KEY NOT NULL,
    spec       TEXT NOT NULL,    -- the PoolSpec as JSON
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per claimed address. An address (and so its MAC) is held by one claim of its pool.
CREATE TABLE net_claims (
    pool  TEXT NOT NULL REFERENCES net_pools (name),
    name  TEXT NOT NULL,    -- the instance's claim name, e.g. job/thumbs/0
    ip    INTEGER NOT NULL, -- the IPv4 address as a number, so listings sort by address
    mac   TEXT NOT NULL,
    agent TEXT,             -- where it is plumbed now; NULL while the instance runs nowhere
    PRIMARY KEY (pool, name),
    UNIQUE (pool, ip)
) WITHOUT ROWID;
";

/// Version 5: API tokens (hashed) and the audit log of writes.
pub(super) const V5: &str = "
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,    -- read | operate | admin
    scope      TEXT,             -- label:KEY=VALUE | owner:NAME; NULL: every job
    hash       TEXT NOT NULL,    -- hex SHA-256 of the whole token; the secret is never stored
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER
) WITHOUT ROWID;

CREATE TABLE audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    remote TEXT NOT NULL,
    method TEXT NOT NULL,
    path   TEXT NOT NULL,
    job    TEXT,
    status INTEGER NOT NULL
);
CREATE INDEX audit_by_job ON audit (job, id);
";

/// Version 6: services (replicas of a long-running command with a health check).
pub(super) const V6: &str = "
CREATE TABLE services (
    name       TEXT PRIMARY KEY NOT NULL,
    spec       TEXT NOT NULL,    -- the ServiceSpec as JSON
    version    INTEGER NOT NULL, -- 1 on create, +1 on every update
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 7: how a given-up attempt really ended, reported late by its agent.
pub(super) const V7: &str = "
ALTER TABLE runs ADD COLUMN late_report TEXT; -- a LateReport as JSON
";

/// Version 8: releases and scale operations in progress, so a restarted server goes on with them.
pub(super) const V8: &str = "
CREATE TABLE progress (
    kind    TEXT NOT NULL,    -- release | operation
    id      INTEGER NOT NULL, -- rel-N, op-N
    service TEXT NOT NULL,
    ended   INTEGER NOT NULL, -- 1 once over: kept for reading only
    state   TEXT NOT NULL,    -- the scheduler's record as JSON
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
";

/// The schema version this build writes.
pub(super) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database up to [`VERSION`]. Refuses a database written by a newer Tugboat rather than
/// guess at its schema.
pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).ctx("reading the schema version")?;
    if current > VERSION {
        let path = PathBuf::from(conn.path().unwrap_or_default());
        return Err(StoreError::NewerSchema { path, found: current, known: VERSION });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        let what = format!("migrating the database schema to version {version}");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).ctx(&what)?;
        tx.execute_batch(sql).ctx(&what)?;
        tx.pragma_update(None, "user_version", version).ctx(&what)?;
        tx.commit().ctx(&what)?;
        tracing::info!(version, "migrated the database schema");
    }
    Ok(())
}
