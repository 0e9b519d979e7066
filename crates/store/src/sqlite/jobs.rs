//! Job queries. A job row holds the spec and bookkeeping; the fire cursor and the last-run times in
//! a [`JobRecord`] are derived from the job's runs with one aggregate per query, never a query per
//! job.

use std::sync::{Arc, LazyLock};

use jiff::Timestamp;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, named_params, params};
use tug_core::JobSpec;

use super::codec::{Context, conversion, get_opt_ts, get_ts, get_unsigned, ms};
use super::{page_size, write_tx};
use crate::{JobQuery, JobRecord, Page, RemovedRun, Result, StoreError};

/// What a job's runs say about it, in the order [`record_from_row`] reads them (after
/// [`JOB_COLUMNS`]): the latest schedule- or misfire-triggered key, the latest non-skipped key,
/// the latest success and the latest failure.
const AGGREGATES: &str = "\
    max(CASE WHEN trigger IN ('schedule', 'misfire') THEN scheduled_at END) AS cursor, \
    max(CASE WHEN state <> 'skipped' THEN scheduled_at END) AS last_run, \
    max(CASE WHEN state = 'succeeded' THEN finished_at END) AS last_ok, \
    max(CASE WHEN state IN ('failed', 'timed_out', 'lost') THEN finished_at END) AS last_fail";

/// The stored columns of a job `j`, in the order [`record_from_row`] reads them.
const JOB_COLUMNS: &str = "j.spec, j.version, j.created_at, j.updated_at, \
    j.fire_cursor, j.last_run_at, j.last_success_at, j.last_failure_at";

/// One job: its row, and the aggregates over its runs.
pub(super) static GET_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS}, a.cursor, a.last_run, a.last_ok, a.last_fail \
         FROM jobs AS j, (SELECT {AGGREGATES} FROM runs WHERE job = ?1) AS a \
         WHERE j.name = ?1"
    )
});

/// A page of jobs. The page is chosen first (walking the name index, applying the filters), then
/// only its jobs' runs are aggregated.
pub(super) static LIST_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH page AS MATERIALIZED ( \
             SELECT * FROM jobs \
             WHERE name > :after \
               AND (:q IS NULL OR instr(search, :q) > 0) \
               AND (:key IS NULL OR EXISTS ( \
                     SELECT 1 FROM json_each(jobs.spec, '$.labels') AS l \
                     WHERE l.key = :key AND (:value IS NULL OR l.value = :value))) \
             ORDER BY name LIMIT :limit) \
         SELECT {JOB_COLUMNS}, a.cursor, a.last_run, a.last_ok, a.last_fail \
         FROM page AS j LEFT JOIN ( \
             SELECT job, {AGGREGATES} FROM runs WHERE job IN (SELECT name FROM page) GROUP BY job \
         ) AS a ON a.job = j.name \
         ORDER BY j.name"
    )
});

/// Every job: one pass over the jobs joined with one grouped pass over all runs.
pub(super) static LOAD_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {JOB_COLUMNS}, a.cursor, a.last_run, a.last_ok, a.last_fail \
         FROM jobs AS j LEFT JOIN (SELECT job, {AGGREGATES} FROM runs GROUP BY job) AS a ON a.job = j.name \
         ORDER BY j.name"
    )
});

/// A job record from [`JOB_COLUMNS`] followed by the four [`AGGREGATES`] of an alias `a`. Each
/// derived value is the later of the job row's floor and the runs' aggregate.
fn record_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    let spec = serde_json::from_str(row.get_ref(0)?.as_str()?).map_err(|e| conversion(0, Type::Text, e))?;
    let later = |floor: usize, aggregate: usize| -> rusqlite::Result<Option<Timestamp>> {
        // `None` orders before every `Some`, so `max` keeps whichever is present.
        Ok(get_opt_ts(row, floor)?.max(get_opt_ts(row, aggregate)?))
    };
    Ok(JobRecord {
        spec,
        version: get_unsigned(row, 1)?,
        created_at: get_ts(row, 2)?,
        updated_at: get_ts(row, 3)?,
        fire_cursor: later(4, 8)?,
        last_run_at: later(5, 9)?,
        last_success_at: later(6, 10)?,
        last_failure_at: later(7, 11)?,
    })
}

/// The spec as stored.
fn spec_json(spec: &JobSpec) -> Result<String> {
    serde_json::to_string(spec)
        .map_err(|e| StoreError::Backend { what: format!("encoding job {:?}", spec.name), source: Arc::new(e) })
}

/// The text `q` searches: name, description and owner, lowercased (Unicode-aware, which SQLite's
/// `lower` is not), one per line so a match cannot span two fields.
fn search_text(spec: &JobSpec) -> String {
    format!("{}\n{}\n{}", spec.name, spec.description, spec.owner).to_lowercase()
}

/// Fails with [`StoreError::JobNotFound`] unless the job exists.
pub(super) fn ensure_exists(conn: &Connection, name: &str) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM jobs WHERE name = ?1")
        .and_then(|mut s| s.exists([name]))
        .ctx("looking up a job")?;
    if found { Ok(()) } else { Err(StoreError::JobNotFound(name.to_owned())) }
}

/// One job with its derived fields.
pub(super) fn get(conn: &Connection, name: &str) -> Result<JobRecord> {
    conn.prepare_cached(&GET_SQL)
        .and_then(|mut s| s.query_row([name], record_from_row).optional())
        .ctx("reading a job")?
        .ok_or_else(|| StoreError::JobNotFound(name.to_owned()))
}

/// Creates a job at version 1; [`StoreError::JobExists`] if the name is taken.
pub(super) fn create(conn: &mut Connection, spec: &JobSpec, now: Timestamp) -> Result<JobRecord> {
    let json = spec_json(spec)?;
    let tx = write_tx(conn)?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO jobs (name, spec, search, version, created_at, updated_at) \
             VALUES (?1, ?2, ?3, 1, ?4, ?4) ON CONFLICT (name) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![spec.name, json, search_text(spec), ms(now)]))
        .ctx("inserting a job")?;
    if inserted == 0 {
        return Err(StoreError::JobExists(spec.name.clone()));
    }
    let record = get(&tx, &spec.name)?;
    tx.commit().ctx("committing a new job")?;
    Ok(record)
}

/// Creates many jobs in one transaction: all of them, or none when a name is taken.
pub(super) fn create_many(conn: &mut Connection, specs: &[JobSpec], now: Timestamp) -> Result<()> {
    let tx = write_tx(conn)?;
    {
        let mut stmt = tx
            .prepare_cached(
                "INSERT INTO jobs (name, spec, search, version, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, 1, ?4, ?4) ON CONFLICT (name) DO NOTHING",
            )
            .ctx("preparing the job insert")?;
        for spec in specs {
            let json = spec_json(spec)?;
            let inserted = stmt.execute(params![spec.name, json, search_text(spec), ms(now)]).ctx("inserting a job")?;
            if inserted == 0 {
                return Err(StoreError::JobExists(spec.name.clone()));
            }
        }
    }
    tx.commit().ctx("committing new jobs")
}

/// Replaces a job's spec and bumps its version, comparing the version first when one is expected.
/// Cursors and run history are kept.
pub(super) fn update(
    conn: &mut Connection,
    spec: &JobSpec,
    expected_version: Option<u64>,
    now: Timestamp,
) -> Result<JobRecord> {
    let json = spec_json(spec)?;
    let tx = write_tx(conn)?;
    let found: Option<i64> = tx
        .prepare_cached("SELECT version FROM jobs WHERE name = ?1")
        .and_then(|mut s| s.query_row([&spec.name], |r| r.get(0)).optional())
        .ctx("reading a job's version")?;
    let found = found.ok_or_else(|| StoreError::JobNotFound(spec.name.clone()))? as u64;
    if let Some(expected) = expected_version
        && expected != found
    {
        return Err(StoreError::VersionConflict { name: spec.name.clone(), expected, found });
    }
    tx.prepare_cached("UPDATE jobs SET spec = ?2, search = ?3, version = version + 1, updated_at = ?4 WHERE name = ?1")
        .and_then(|mut s| s.execute(params![spec.name, json, search_text(spec), ms(now)]))
        .ctx("updating a job")?;
    let record = get(&tx, &spec.name)?;
    tx.commit().ctx("committing a job update")?;
    Ok(record)
}

/// Deletes a job with its runs and their attempts; returns the run ids, ascending.
pub(super) fn delete(conn: &mut Connection, name: &str) -> Result<Vec<RemovedRun>> {
    let tx = write_tx(conn)?;
    ensure_exists(&tx, name)?;
    let ids = tx
        .prepare_cached("SELECT id, agent FROM runs WHERE job = ?1 ORDER BY id")
        .and_then(|mut s| {
            s.query_map([name], |r| Ok(RemovedRun { id: get_unsigned(r, 0)?, agent: r.get(1)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("listing a job's runs")?;
    for sql in [
        "DELETE FROM attempts WHERE run_id IN (SELECT id FROM runs WHERE job = ?1)",
        "DELETE FROM runs WHERE job = ?1",
        "DELETE FROM jobs WHERE name = ?1",
    ] {
        tx.prepare_cached(sql).and_then(|mut s| s.execute([name])).ctx("deleting a job")?;
    }
    tx.commit().ctx("committing a job deletion")?;
    Ok(ids)
}

/// A page of jobs ordered by name.
///
/// The cursor is the name of the last job of the previous page (job names are URL-safe);
/// anything that is not a valid job name is a [`StoreError::BadCursor`].
pub(super) fn list(conn: &Connection, query: &JobQuery) -> Result<Page<JobRecord>> {
    let after = match &query.cursor {
        Some(c) if tug_core::job::valid_name(c) => c.as_str(),
        Some(c) => return Err(StoreError::BadCursor(c.clone())),
        // Every name sorts after the empty string.
        None => "",
    };
    let q = query.q.as_deref().filter(|q| !q.is_empty()).map(str::to_lowercase);
    let (key, value) = match query.label.as_deref().filter(|l| !l.is_empty()) {
        None => (None, None),
        Some(label) => match label.split_once('=') {
            Some((k, v)) => (Some(k), Some(v)),
            None => (Some(label), None),
        },
    };
    let limit = page_size(query.limit);
    let items = conn
        .prepare_cached(&LIST_SQL)
        .and_then(|mut s| {
            s.query_map(
                named_params! {
                    ":after": after,
                    ":q": q,
                    ":key": key,
                    ":value": value,
                    // One more than asked: its presence says there is another page.
                    ":limit": (limit + 1) as i64,
                },
                record_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .ctx("listing jobs")?;
    Ok(Page::from_overfetch(items, limit, |r| r.spec.name.clone()))
}

/// Every job, ordered by name: one pass over the jobs joined with one grouped pass over the runs.
pub(super) fn load(conn: &Connection) -> Result<Vec<JobRecord>> {
    conn.prepare_cached(&LOAD_SQL).and_then(|mut s| s.query_map([], record_from_row)?.collect()).ctx("loading jobs")
}
