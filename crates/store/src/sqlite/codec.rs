//! Conversions between SQLite values and Tugboat's types: timestamps as integer milliseconds since
//! the Unix epoch (UTC), states and triggers as their snake_case names, run ids as `INTEGER`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use jiff::Timestamp;
use rusqlite::Row;
use rusqlite::types::{FromSqlError, Type};
use tug_core::run::{Run, RunId};

use crate::{Cause, Result, StoreError};

/// Adds what the store was doing to a SQLite error, classified by [`classify`].
pub(super) trait Context<T> {
    /// Maps the error to a [`StoreError`] that says it happened while doing `what`.
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| classify(what, e))
    }
}

/// A SQLite error as a [`StoreError`] by what the caller can do about it. A full disk gets its
/// directory from [`locate`], which knows where the database lives.
pub(super) fn classify(what: &str, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    let what = what.to_owned();
    let code = e.sqlite_error_code();
    let corrupt_row = matches!(e, rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..));
    let source: Cause = Arc::new(e);
    match code {
        Some(DiskFull) => StoreError::StorageFull { what, dir: PathBuf::new(), source },
        Some(DatabaseBusy | DatabaseLocked) => StoreError::Unavailable { what, source },
        Some(DatabaseCorrupt | NotADatabase) => StoreError::Corrupt { what, source },
        _ if corrupt_row => StoreError::Corrupt { what, source },
        _ => StoreError::Backend { what, source },
    }
}

/// Fills in where a full disk is: the directory of the database. SQLite reports some failures to
/// grow a file (its shared-memory index, say) as an I/O error rather than as a full disk, so an
/// I/O error while the directory's file system has no room left is a full disk too.
pub(super) fn locate(e: StoreError, dir: Option<&Path>) -> StoreError {
    let Some(dir) = dir else { return e };
    match e {
        StoreError::StorageFull { what, dir: d, source } if d.as_os_str().is_empty() => {
            StoreError::StorageFull { what, dir: dir.to_owned(), source }
        }
        StoreError::Backend { what, source } if is_io_error(&source) && no_room(dir) => {
            StoreError::StorageFull { what, dir: dir.to_owned(), source }
        }
        e => e,
    }
}

fn is_io_error(e: &Cause) -> bool {
    e.downcast_ref::<rusqlite::Error>().and_then(rusqlite::Error::sqlite_error_code)
        == Some(rusqlite::ErrorCode::SystemIoFailure)
        || e.downcast_ref::<std::io::Error>().is_some()
}

/// Whether the file system holding `dir` is out of blocks (less than a few pages) or inodes.
fn no_room(dir: &Path) -> bool {
    const FEW_PAGES: u64 = 64 * 1024;
    nix::sys::statvfs::statvfs(dir).is_ok_and(|s| {
        s.blocks_available().saturating_mul(s.fragment_size()) < FEW_PAGES || s.files_available() == 0
    })
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
     finished_at, exit_code, signal, reason, agent, retry_at, late_report";

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
        late_report: match row.get::<_, Option<String>>(14)? {
            Some(json) => Some(serde_json::from_str(&json).map_err(|e| conversion(14, Type::Text, e))?),
            None => None,
        },
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

    fn io_error() -> StoreError {
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_WRITE), None);
        classify("writing", e)
    }

    #[test]
    fn an_io_error_on_a_full_file_system_is_a_full_disk() {
        let Some(disk) = crate::testing::Tmpfs::mount("256k") else { return };
        let e = locate(io_error(), Some(disk.path()));
        assert!(matches!(e, StoreError::Backend { .. }), "room left: an I/O error stays one: {e:?}");
        disk.fill("filler");
        let e = locate(io_error(), Some(disk.path()));
        assert!(matches!(&e, StoreError::StorageFull { dir, .. } if dir == disk.path()), "{e:?}");
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        let e = locate(classify("writing", full), Some(disk.path()));
        assert!(matches!(&e, StoreError::StorageFull { dir, .. } if dir == disk.path()), "{e:?}");
    }

    #[test]
    fn sqlite_codes_map_to_what_the_caller_can_do() {
        let code = |c| classify("x", rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(c), None)).kind();
        assert_eq!(code(rusqlite::ffi::SQLITE_BUSY), crate::ErrorKind::Unavailable);
        assert_eq!(code(rusqlite::ffi::SQLITE_LOCKED), crate::ErrorKind::Unavailable);
        assert_eq!(code(rusqlite::ffi::SQLITE_CORRUPT), crate::ErrorKind::Corrupt);
        assert_eq!(code(rusqlite::ffi::SQLITE_NOTADB), crate::ErrorKind::Corrupt);
        assert_eq!(code(rusqlite::ffi::SQLITE_FULL), crate::ErrorKind::StorageFull);
        assert_eq!(code(rusqlite::ffi::SQLITE_READONLY), crate::ErrorKind::Other);
        let in_memory = locate(classify("x", rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None)), None);
        assert!(in_memory.to_string().contains("no space left for the store"), "{in_memory}");
    }
}
