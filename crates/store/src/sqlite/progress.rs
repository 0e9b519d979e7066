//! Releases and scale operations in progress: the scheduler's records as JSON, by kind and id.

use std::sync::Arc;

use rusqlite::types::Type;
use rusqlite::{Connection, Row, params};

use super::codec::{Context, conversion};
use super::write_tx;
use crate::{ProgressKind, ProgressRecord, Result, StoreError};

fn from_row(row: &Row<'_>) -> rusqlite::Result<ProgressRecord> {
    let kind = row.get_ref(0)?.as_str()?;
    let kind = ProgressKind::parse(kind).ok_or_else(|| conversion(0, Type::Text, std::io::Error::other(format!("unknown kind {kind:?}"))))?;
    let id: i64 = row.get(1)?;
    let ended: i64 = row.get(3)?;
    let state = serde_json::from_str(row.get_ref(4)?.as_str()?).map_err(|e| conversion(4, Type::Text, e))?;
    Ok(ProgressRecord { kind, id: id as u64, service: row.get(2)?, ended: ended != 0, state })
}

pub(super) fn put(conn: &mut Connection, r: &ProgressRecord) -> Result<()> {
    let what = format!("writing {} {}", r.kind.as_str(), r.id);
    let json = serde_json::to_string(&r.state).map_err(|e| StoreError::Backend { what: what.clone(), source: Arc::new(e) })?;
    let tx = write_tx(conn)?;
    tx.prepare_cached(
        "INSERT INTO progress (kind, id, service, ended, state) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (kind, id) DO UPDATE SET service = excluded.service, ended = excluded.ended, state = excluded.state",
    )
    .and_then(|mut s| s.execute(params![r.kind.as_str(), r.id as i64, r.service, i64::from(r.ended), json]))
    .ctx(&what)?;
    tx.commit().ctx(&what)
}

pub(super) fn list(conn: &Connection, kind: ProgressKind) -> Result<Vec<ProgressRecord>> {
    conn.prepare_cached("SELECT kind, id, service, ended, state FROM progress WHERE kind = ?1 ORDER BY id")
        .and_then(|mut s| s.query_map([kind.as_str()], from_row)?.collect())
        .ctx("listing releases and operations")
}

pub(super) fn delete(conn: &mut Connection, kind: ProgressKind, ids: &[u64]) -> Result<()> {
    let tx = write_tx(conn)?;
    {
        let mut s = tx.prepare_cached("DELETE FROM progress WHERE kind = ?1 AND id = ?2").ctx("deleting old releases and operations")?;
        for id in ids {
            s.execute(params![kind.as_str(), *id as i64]).ctx("deleting old releases and operations")?;
        }
    }
    tx.commit().ctx("deleting old releases and operations")
}
