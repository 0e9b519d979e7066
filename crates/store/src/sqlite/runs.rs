//! Run queries: the group-committed fire batch (the hot path), run updates, listings, pruning.

use std::collections::HashMap;
use std::sync::LazyLock;

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use tug_core::run::{Attempt, NewRun, Run, RunId, RunState, Trigger};

use super::codec::{
    Context, RUN_COLUMNS, get_opt_ts, get_parsed, get_unsigned, ms, opt_ms, run_from_row, sql_id, stored,
};
use super::jobs::ensure_exists;
use super::{page_size, write_tx};
use crate::{FireBatch, Page, RemovedRun, Result, RunQuery, RunTotals, StoreError};

/// "The run is active", as SQL. Must match the condition of the partial index `runs_active` word
/// for word so the planner uses it, and [`RunState::is_terminal`] (both checked by tests).
pub(super) const ACTIVE: &str = "(state = 'pending' OR state = 'starting' OR state = 'running')";

/// One run by id.
pub(super) static GET_SQL: LazyLock<String> = LazyLock::new(|| format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"));

/// A page of a job's runs, newest first, walking the `runs_by_job` index backwards.
pub(super) static LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs \
         WHERE job = ?1 AND id < ?2 AND (?3 IS NULL OR state = ?3) \
         ORDER BY id DESC LIMIT ?4"
    )
});

/// Every active run, from the partial index `runs_active`.
pub(super) static ACTIVE_SQL: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {RUN_COLUMNS} FROM runs WHERE {ACTIVE} ORDER BY id"));

/// A job's terminal runs beyond the newest `?2`.
pub(super) static PRUNE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id, scheduled_at, trigger, state, finished_at, agent FROM runs \
         WHERE job = ?1 AND NOT {ACTIVE} ORDER BY id DESC LIMIT -1 OFFSET ?2"
    )
});

/// Writes a tick's fires in one transaction; see [`crate::Store::commit_fires`].
///
/// Each run is an `INSERT OR IGNORE` through one cached statement: a key `(job, scheduled_at)`
/// that exists already, or a job that no longer exists (deleted while the tick was computed), makes
/// the insert a no-op, which `changes() == 0` reveals without reading anything back. Explicit
/// cursors only move forward.
pub(super) fn commit_fires(conn: &mut Connection, batch: FireBatch, now: Timestamp) -> Result<Vec<Run>> {
    let tx = write_tx(conn)?;
    let created_at = stored(now);
    let mut created = Vec::with_capacity(batch.runs.len());
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO runs (job, scheduled_at, trigger, state, attempt, created_at, reason, agent) \
                 SELECT ?1, ?2, ?3, ?4, 1, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM jobs WHERE name = ?1)",
            )
            .ctx("preparing the fire insert")?;
        for run in batch.runs {
            let inserted = insert
                .execute(params![
                    run.job,
                    ms(run.scheduled_at),
                    run.trigger.as_str(),
                    run.state.as_str(),
                    ms(created_at),
                    run.reason,
                    run.agent
                ])
                .ctx("inserting a fired run")?;
            if inserted == 0 {
                continue;
            }
            let id = tx.last_insert_rowid() as RunId;
            created.push(NewRun { scheduled_at: stored(run.scheduled_at), ..run }.into_run(id, created_at));
        }
        for (job, cursor) in &batch.cursors {
            advance_cursor(&tx, job, ms(*cursor))?;
        }
    }
    tx.commit().ctx("committing fires")?;
    Ok(created)
}

/// Overwrites runs' mutable columns (state, attempt, times, exit status, reason, agent, retry) by
/// id and appends attempts, in one transaction. The key, trigger and `created_at` never change.
/// An unknown run id, for a run or an attempt, rolls everything back with
/// [`StoreError::RunNotFound`]. Saving an attempt number again replaces it, so a retried save is
/// harmless.
pub(super) fn save(conn: &mut Connection, runs: &[Run], attempts: &[Attempt]) -> Result<()> {
    let tx = write_tx(conn)?;
    for run in runs {
        if update(&tx, run)? == 0 {
            return Err(StoreError::RunNotFound(run.id));
        }
    }
    for a in attempts {
        if insert_attempt(&tx, a)? == 0 {
            return Err(StoreError::RunNotFound(a.run_id));
        }
    }
    tx.commit().ctx("committing run updates")
}

/// Overwrites one run's mutable columns by id; returns how many rows changed (0: no such run).
pub(super) fn update(conn: &Connection, run: &Run) -> Result<usize> {
    // An id above i64::MAX was never handed out.
    let Ok(id) = sql_id(run.id) else { return Ok(0) };
    conn.prepare_cached(
        "UPDATE runs SET state = ?2, attempt = ?3, started_at = ?4, finished_at = ?5, exit_code = ?6, \
         signal = ?7, reason = ?8, agent = ?9, retry_at = ?10, late_report = ?11 WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            run.state.as_str(),
            run.attempt,
            opt_ms(run.started_at),
            opt_ms(run.finished_at),
            run.exit_code,
            run.signal,
            run.reason,
            run.agent,
            opt_ms(run.retry_at),
            late_json(run),
        ])
    })
    .ctx("updating a run")
}

/// Inserts (or replaces) a finished attempt of an existing run; returns how many rows changed
/// (0: no such run).
pub(super) fn insert_attempt(conn: &Connection, a: &Attempt) -> Result<usize> {
    let Ok(id) = sql_id(a.run_id) else { return Ok(0) };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO attempts \
         (run_id, attempt, state, started_at, finished_at, exit_code, signal, reason) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS (SELECT 1 FROM runs WHERE id = ?1)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            a.attempt,
            a.state.as_str(),
            opt_ms(a.started_at),
            opt_ms(a.finished_at),
            a.exit_code,
            a.signal,
            a.reason,
        ])
    })
    .ctx("inserting an attempt")
}

/// Inserts a run created through the fire log, with the id the log gave it, unless its job is
/// gone (deleted after the fire was logged) or its key exists; returns how many rows it inserted.
pub(super) fn insert_logged(conn: &Connection, run: &Run) -> Result<usize> {
    let id = sql_id(run.id)?;
    conn.prepare_cached(
        "INSERT OR IGNORE INTO runs (id, job, scheduled_at, trigger, state, attempt, created_at, started_at, \
         finished_at, exit_code, signal, reason, agent, retry_at, late_report) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15 \
         WHERE EXISTS (SELECT 1 FROM jobs WHERE name = ?2)",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            run.job,
            ms(run.scheduled_at),
            run.trigger.as_str(),
            run.state.as_str(),
            run.attempt,
            ms(run.created_at),
            opt_ms(run.started_at),
            opt_ms(run.finished_at),
            run.exit_code,
            run.signal,
            run.reason,
            run.agent,
            opt_ms(run.retry_at),
            late_json(run),
        ])
    })
    .ctx("writing a logged run")
}

/// Moves a job's explicit fire cursor forward to `at` (milliseconds); a missing job is ignored.
pub(super) fn advance_cursor(conn: &Connection, job: &str, at: i64) -> Result<()> {
    conn.prepare_cached("UPDATE jobs SET fire_cursor = max(coalesce(fire_cursor, ?2), ?2) WHERE name = ?1")
        .and_then(|mut s| s.execute(params![job, at]))
        .ctx("advancing a fire cursor")?;
    Ok(())
}

fn late_json(run: &Run) -> Option<String> {
    run.late_report.as_ref().map(|l| serde_json::to_string(l).unwrap_or_default())
}

/// One run.
pub(super) fn get(conn: &Connection, id: RunId) -> Result<Run> {
    let run_id = sql_id(id)?;
    conn.prepare_cached(&GET_SQL)
        .and_then(|mut s| s.query_row([run_id], run_from_row).optional())
        .ctx("reading a run")?
        .ok_or(StoreError::RunNotFound(id))
}

/// A page of a job's runs, newest (highest id) first. The cursor is the id of the last run of the
/// previous page, in decimal; [`StoreError::JobNotFound`] for an unknown job.
pub(super) fn list(conn: &Connection, job: &str, query: &RunQuery) -> Result<Page<Run>> {
    let before = page_before(query)?;
    ensure_exists(conn, job)?;
    let limit = page_size(query.limit);
    let items = fetch(conn, job, before, query.state, limit + 1)?;
    Ok(Page::from_overfetch(items, limit, |r| r.id.to_string()))
}

/// Up to `n` of a job's runs below id `before`, newest first.
fn fetch(conn: &Connection, job: &str, before: i64, state: Option<RunState>, n: usize) -> Result<Vec<Run>> {
    conn.prepare_cached(&LIST_SQL)
        .and_then(|mut s| {
            s.query_map(params![job, before, state.map(RunState::as_str), n as i64], run_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("listing runs")
}

/// [`list`] without a state filter, over the tables and `held`: the job's runs that the fire log
/// holds and has not written into the tables yet, each in its latest state (`true`: not in the
/// tables at all). A read this way does not wait for the fire log to be written into the tables.
pub(super) fn list_with(conn: &Connection, job: &str, query: &RunQuery, held: Vec<(bool, Run)>) -> Result<Page<Run>> {
    debug_assert!(query.state.is_none(), "a state filter reads the tables once they hold everything");
    let before = page_before(query)?;
    ensure_exists(conn, job)?;
    let limit = page_size(query.limit);
    let mut items = fetch(conn, job, before, None, limit + 1)?;
    let mut held: HashMap<RunId, (bool, Run)> =
        held.into_iter().filter(|(_, r)| i64::try_from(r.id).is_ok_and(|id| id < before)).map(|h| (h.1.id, h)).collect();
    for row in &mut items {
        if let Some((_, r)) = held.remove(&row.id) {
            *row = r;
        }
    }
    // Updates of runs outside this page, or deleted since, stay out of it.
    items.extend(held.into_values().filter(|(created, _)| *created).map(|(_, r)| r));
    items.sort_unstable_by_key(|r| std::cmp::Reverse(r.id));
    Ok(Page::from_overfetch(items, limit, |r| r.id.to_string()))
}

fn page_before(query: &RunQuery) -> Result<i64> {
    Ok(match &query.cursor {
        None => i64::MAX,
        Some(c) => c.parse::<u64>().map_err(|_| StoreError::BadCursor(c.clone()))?.try_into().unwrap_or(i64::MAX),
    })
}

/// Every pending, starting or running run, by id.
pub(super) fn active(conn: &Connection) -> Result<Vec<Run>> {
    conn.prepare_cached(&ACTIVE_SQL)
        .and_then(|mut s| s.query_map([], run_from_row)?.collect())
        .ctx("listing active runs")
}

/// A run's finished attempts, oldest first; [`StoreError::RunNotFound`] for an unknown run.
pub(super) fn attempts(conn: &Connection, id: RunId) -> Result<Vec<Attempt>> {
    let run_id = sql_id(id)?;
    let exists = conn
        .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")
        .and_then(|mut s| s.exists([run_id]))
        .ctx("looking up a run")?;
    if !exists {
        return Err(StoreError::RunNotFound(id));
    }
    conn.prepare_cached(
        "SELECT run_id, attempt, state, started_at, finished_at, exit_code, signal, reason \
         FROM attempts WHERE run_id = ?1 ORDER BY attempt",
    )
    .and_then(|mut s| {
        s.query_map([run_id], |row| {
            Ok(Attempt {
                run_id: get_unsigned(row, 0)?,
                attempt: get_unsigned(row, 1)?,
                state: get_parsed(row, 2)?,
                started_at: get_opt_ts(row, 3)?,
                finished_at: get_opt_ts(row, 4)?,
                exit_code: row.get(5)?,
                signal: row.get(6)?,
                reason: row.get(7)?,
            })
        })?
        .collect()
    })
    .ctx("reading attempts")
}

/// Deletes a job's terminal runs beyond the newest `keep` of them (by id), with their attempts;
/// returns the deleted ids, ascending. Pending, starting and running runs are never deleted.
///
/// Before deleting, the job row's floors absorb what the deleted runs contributed to the derived
/// fields, so the fire cursor (and the last run, success and failure times) never move back: a
/// pruned schedule key must not fire again.
pub(super) fn prune(conn: &mut Connection, job: &str, keep: u32) -> Result<Vec<RemovedRun>> {
    let tx = write_tx(conn)?;
    ensure_exists(&tx, job)?;
    let ids = prune_in(&tx, job, keep)?;
    tx.commit().ctx("committing a prune")?;
    Ok(ids)
}

/// Prunes many jobs in one transaction; jobs that no longer exist are skipped.
pub(super) fn prune_many(conn: &mut Connection, jobs: &[(String, u32)]) -> Result<Vec<RemovedRun>> {
    let tx = write_tx(conn)?;
    let mut ids = Vec::new();
    for (job, keep) in jobs {
        match ensure_exists(&tx, job) {
            Ok(()) => ids.extend(prune_in(&tx, job, *keep)?),
            Err(StoreError::JobNotFound(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    tx.commit().ctx("committing a prune")?;
    Ok(ids)
}

/// The work of a prune inside the caller's transaction.
fn prune_in(tx: &rusqlite::Transaction<'_>, job: &str, keep: u32) -> Result<Vec<RemovedRun>> {
    let doomed = tx
        .prepare_cached(&PRUNE_SQL)
        .and_then(|mut s| {
            s.query_map(params![job, keep], |row| {
                Ok((
                    get_unsigned::<RunId>(row, 0)?,
                    row.get::<_, i64>(1)?,
                    get_parsed::<Trigger>(row, 2)?,
                    get_parsed::<RunState>(row, 3)?,
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("selecting runs to prune")?;
    if doomed.is_empty() {
        return Ok(Vec::new());
    }

    let (mut cursor, mut last_run, mut last_ok, mut last_fail) = (None, None, None, None);
    let (mut n_ok, mut n_fail) = (0i64, 0i64);
    for &(_, scheduled_at, trigger, state, finished_at, _) in &doomed {
        if matches!(trigger, Trigger::Schedule | Trigger::Misfire) {
            cursor = cursor.max(Some(scheduled_at));
        }
        if state != RunState::Skipped {
            last_run = last_run.max(Some(scheduled_at));
        }
        match state {
            RunState::Succeeded => {
                last_ok = last_ok.max(finished_at);
                n_ok += 1;
            }
            RunState::Failed | RunState::TimedOut | RunState::Lost => {
                last_fail = last_fail.max(finished_at);
                n_fail += 1;
            }
            _ => {}
        }
    }
    // max(coalesce(a, b), coalesce(b, a)): the later of two, either of which may be NULL.
    tx.prepare_cached(
        "UPDATE jobs SET \
           fire_cursor     = max(coalesce(fire_cursor, ?2), coalesce(?2, fire_cursor)), \
           last_run_at     = max(coalesce(last_run_at, ?3), coalesce(?3, last_run_at)), \
           last_success_at = max(coalesce(last_success_at, ?4), coalesce(?4, last_success_at)), \
           last_failure_at = max(coalesce(last_failure_at, ?5), coalesce(?5, last_failure_at)), \
           pruned_succeeded = pruned_succeeded + ?6, \
           pruned_failed = pruned_failed + ?7 \
         WHERE name = ?1",
    )
    .and_then(|mut s| s.execute(params![job, cursor, last_run, last_ok, last_fail, n_ok, n_fail]))
    .ctx("keeping a job's cursor before pruning")?;

    {
        let mut del_attempts =
            tx.prepare_cached("DELETE FROM attempts WHERE run_id = ?1").ctx("preparing the prune")?;
        let mut del_run = tx.prepare_cached("DELETE FROM runs WHERE id = ?1").ctx("preparing the prune")?;
        for &(id, ..) in &doomed {
            let id = id as i64;
            del_attempts.execute([id]).ctx("pruning attempts")?;
            del_run.execute([id]).ctx("pruning a run")?;
        }
    }
    let mut removed: Vec<RemovedRun> = doomed.into_iter().map(|(id, .., agent)| RemovedRun { id, agent }).collect();
    removed.reverse();
    Ok(removed)
}

/// Run totals: the pruned floors plus counts over the current runs (through `runs_by_job`).
const TOTALS_SQL: &str = "SELECT j.name, \
       j.pruned_succeeded + (SELECT count(*) FROM runs r WHERE r.job = j.name AND r.state = 'succeeded'), \
       j.pruned_failed + (SELECT count(*) FROM runs r WHERE r.job = j.name \
                            AND (r.state = 'failed' OR r.state = 'timed_out' OR r.state = 'lost')) \
     FROM jobs j";

/// Every job's totals. (One statement with `?1 IS NULL OR j.name = ?1` scanned every job even
/// for one: SQLite cannot use the name index through the OR.)
static TOTALS_ALL_SQL: LazyLock<String> = LazyLock::new(|| format!("{TOTALS_SQL} ORDER BY j.name"));
/// One job's totals, through the name index.
static TOTALS_ONE_SQL: LazyLock<String> = LazyLock::new(|| format!("{TOTALS_SQL} WHERE j.name = ?1"));

/// Run totals of one job or of every job, by name.
pub(super) fn totals(conn: &Connection, job: Option<&str>) -> Result<Vec<(String, RunTotals)>> {
    if let Some(name) = job {
        ensure_exists(conn, name)?;
    }
    let sql: &str = if job.is_some() { &TOTALS_ONE_SQL } else { &TOTALS_ALL_SQL };
    conn.prepare_cached(sql)
        .and_then(|mut s| {
            let params = match job {
                Some(name) => vec![name],
                None => vec![],
            };
            s.query_map(rusqlite::params_from_iter(params), |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    RunTotals { succeeded: get_unsigned(row, 1)?, failed: get_unsigned(row, 2)? },
                ))
            })?
            .collect()
        })
        .ctx("counting runs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_matches_the_model_and_the_index() {
        let active: Vec<String> =
            RunState::ALL.iter().filter(|s| !s.is_terminal()).map(|s| format!("state = '{}'", s.as_str())).collect();
        assert_eq!(ACTIVE, format!("({})", active.join(" OR ")));
        assert!(super::super::schema::V1.contains(&format!("WHERE {ACTIVE};")));
    }
}
