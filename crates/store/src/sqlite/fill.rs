//! Bulk-loading finished runs straight into a database's tables (feature `testing`), so a
//! benchmark can start a server over ten million retained runs without firing them first.

use std::path::Path;

use jiff::Timestamp;
use rusqlite::{Connection, params};

use super::codec::{Context, ms};
use crate::Result;

/// Puts `n` finished manual runs into the database at `path` (created by [`super::SqliteStore`],
/// holding the jobs; no store may have it open), round-robin over its jobs in name order, one
/// millisecond apart per round from 2025-01-01 (so they move no job's fire cursor), each
/// `succeeded` at `now`. Returns the number of jobs they were spread over.
///
/// Rows go in key order with the per-job index dropped and rebuilt after (one sort instead of a
/// random index insert per row), in one transaction without a journal: a crash mid-fill leaves a
/// database to delete, which is fine for a benchmark's and nothing else's.
pub fn fill_finished_runs(path: &Path, n: u64, now: Timestamp) -> Result<u64> {
    let what = "filling the database with finished runs";
    let mut conn = Connection::open(path).ctx(what)?;
    conn.pragma_update(None, "journal_mode", "OFF").ctx(what)?;
    conn.pragma_update(None, "synchronous", "OFF").ctx(what)?;
    conn.pragma_update(None, "cache_size", -(256 * 1024)).ctx(what)?;
    let jobs: Vec<String> = conn
        .prepare("SELECT name FROM jobs ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .ctx(what)?;
    if jobs.is_empty() || n == 0 {
        return Ok(jobs.len() as u64);
    }
    let first_id: i64 = conn.query_row("SELECT coalesce(max(id), 0) + 1 FROM runs", [], |r| r.get(0)).ctx(what)?;
    let base = ms(Timestamp::from_second(1_735_689_600).expect("2025-01-01 is a valid instant"));
    let done = ms(now);
    let tx = conn.transaction().ctx(what)?;
    tx.execute_batch("DROP INDEX runs_by_job").ctx(what)?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO runs (id, job, scheduled_at, trigger, state, attempt, created_at, started_at, finished_at, \
                 exit_code, agent) VALUES (?1, ?2, ?3, 'manual', 'succeeded', 1, ?4, ?4, ?4, 0, 'bench')",
            )
            .ctx(what)?;
        for k in 0..n {
            let job = &jobs[(k % jobs.len() as u64) as usize];
            let round = (k / jobs.len() as u64) as i64;
            insert.execute(params![first_id + k as i64, job, base + round, done]).ctx(what)?;
        }
    }
    tx.execute_batch(super::schema::RUNS_BY_JOB).ctx(what)?;
    tx.commit().ctx(what)?;
    conn.pragma_update(None, "journal_mode", "WAL").ctx(what)?;
    Ok(jobs.len() as u64)
}
