//! Conversions between SQLite values and Tugboat's types: timestamps as integer milliseconds since
//! the Unix epoch (UTC), states and triggers as their snake_case names, run ids as `INTEGER`.

use std::str::FromStr;

use jiff::Timestamp;
use rusqlite::Row;
use rusqlite::types::{FromSqlError, Type};
use tug_core::run::{Run, RunId};

use crate::{Result, StoreError};

/// Adds what the store was doing to a SQLite error, as a [`StoreError::Backend`].
pub(super) trait Context<T> {
    /// Maps the error to `Backend("{what}: {error}")`.
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| StoreError::Backend(format!("{what}: {e}")))
    }
}

/// A timestamp as stored: milliseconds since the epoch. Sub-millisecond precision is dropped.
pub(super) fn ms(ts: Timestamp) -> i64 {
    ts.as_millisecond()
}

/// An optional timestamp as stored.
pub(super) fn opt_ms(ts: Option<Timestamp>) -> Option<i64> {
    ts.map(ms)
}

/// `ts` as it reads back from the store (truncated to the millisecond), so that what a write
/// returns equals what a later read returns.
pub(super) fn stored(ts: Timestamp) -> Timestamp {
    Timestamp::from_millisecond(ms(ts)).expect("a timestamp's own millisecond is in range")
}

/// A run id as SQLite's signed rowid. Ids above `i64::MAX` were never handed out, so they are
/// reported as not found.
pub(super) fn sql_id(id: RunId) -> Result<i64> {
    i64::try_from(id).map_err(|_| StoreError::RunNotFound(id))
}

/// Reads column `i` as a timestamp.
pub(super) fn get_ts(row: &Row<'_>, i: usize) -> rusqlite::Result<Timestamp> {
    let ms: i64 = row.get(i)?;
    Timestamp::from_millisecond(ms).map_err(|e| conversion(i, Type::Integer, e))
}

/// Reads column `i` as an optional timestamp.
pub(super) fn get_opt_ts(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Timestamp>> {
    let ms: Option<i64> = row.get(i)?;
    ms.map(|ms| Timestamp::from_millisecond(ms).map_err(|e| conversion(i, Type::Integer, e))).transpose()
}

/// Reads column `i` as text and parses it (a run state, a trigger).
pub(super) fn get_parsed<T: FromStr<Err = String>>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text = row.get_ref(i)?.as_str()?;
    text.parse().map_err(|e: String| conversion(i, Type::Text, e))
}

/// Reads column `i` as a non-negative integer of a narrower type (a run id, an attempt number).
pub(super) fn get_unsigned<T: TryFrom<i64>>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let v: i64 = row.get(i)?;
    T::try_from(v)
        .map_err(|_| rusqlite::Error::FromSqlConversionFailure(i, Type::Integer, Box::new(FromSqlError::OutOfRange(v))))
}

/// A value in column `i` that does not convert.
pub(super) fn conversion(
    i: usize,
    ty: Type,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, ty, e.into())
}

/// The columns of `runs`, in the order [`run_from_row`] reads them.
pub(super) const RUN_COLUMNS: &str = "id, job, scheduled_at, trigger, state, attempt, created_at, started_at, \
     finished_at, exit_code, signal, reason, agent, retry_at";

/// A run from a row selected with [`RUN_COLUMNS`].
pub(super) fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        id: get_unsigned(row, 0)?,
        job: row.get(1)?,
        scheduled_at: get_ts(row, 2)?,
        trigger: get_parsed(row, 3)?,
        state: get_parsed(row, 4)?,
        attempt: get_unsigned(row, 5)?,
        created_at: get_ts(row, 6)?,
        started_at: get_opt_ts(row, 7)?,
        finished_at: get_opt_ts(row, 8)?,
        exit_code: row.get(9)?,
        signal: row.get(10)?,
        reason: row.get(11)?,
        agent: row.get(12)?,
        retry_at: get_opt_ts(row, 13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_milliseconds() {
        let t: Timestamp = "2026-03-29T01:30:00.123456789Z".parse().unwrap();
        assert_eq!(Timestamp::from_millisecond(ms(t)).unwrap(), stored(t));
        assert_eq!(stored(t).to_string(), "2026-03-29T01:30:00.123Z");
    }
}
