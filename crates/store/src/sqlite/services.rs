//! Services: their specs as JSON documents, versioned like jobs.

use std::sync::Arc;

use jiff::Timestamp;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tug_core::ServiceSpec;

use super::codec::{Context, conversion, get_ts, ms};
use super::write_tx;
use crate::{Result, ServiceRecord, StoreError};

const COLUMNS: &str = "spec, version, created_at, updated_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<ServiceRecord> {
    let spec = serde_json::from_str(row.get_ref(0)?.as_str()?).map_err(|e| conversion(0, Type::Text, e))?;
    let version: i64 = row.get(1)?;
    Ok(ServiceRecord { spec, version: version as u64, created_at: get_ts(row, 2)?, updated_at: get_ts(row, 3)? })
}

fn encode(spec: &ServiceSpec) -> Result<String> {
    serde_json::to_string(spec)
        .map_err(|e| StoreError::Backend { what: format!("encoding service {:?}", spec.name), source: Arc::new(e) })
}

pub(super) fn create(conn: &mut Connection, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
    let json = encode(spec)?;
    let tx = write_tx(conn)?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO services (name, spec, version, created_at, updated_at) VALUES (?1, ?2, 1, ?3, ?3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![spec.name, json, ms(now)]))
        .ctx("inserting a service")?;
    if inserted == 0 {
        return Err(StoreError::ServiceExists(spec.name.clone()));
    }
    let record = get(&tx, &spec.name)?;
    tx.commit().ctx("committing a new service")?;
    Ok(record)
}

pub(super) fn update(conn: &mut Connection, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
    let json = encode(spec)?;
    let tx = write_tx(conn)?;
    let changed = tx
        .prepare_cached("UPDATE services SET spec = ?2, version = version + 1, updated_at = ?3 WHERE name = ?1")
        .and_then(|mut s| s.execute(params![spec.name, json, ms(now)]))
        .ctx("updating a service")?;
    if changed == 0 {
        return Err(StoreError::ServiceNotFound(spec.name.clone()));
    }
    let record = get(&tx, &spec.name)?;
    tx.commit().ctx("committing a service update")?;
    Ok(record)
}

pub(super) fn get(conn: &Connection, name: &str) -> Result<ServiceRecord> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM services WHERE name = ?1"))
        .and_then(|mut s| s.query_row([name], from_row).optional())
        .ctx("reading a service")?
        .ok_or_else(|| StoreError::ServiceNotFound(name.to_owned()))
}

pub(super) fn list(conn: &Connection) -> Result<Vec<ServiceRecord>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM services ORDER BY name"))
        .and_then(|mut s| s.query_map([], from_row)?.collect())
        .ctx("listing services")
}

pub(super) fn delete(conn: &mut Connection, name: &str) -> Result<()> {
    let tx = write_tx(conn)?;
    let deleted = tx
        .prepare_cached("DELETE FROM services WHERE name = ?1")
        .and_then(|mut s| s.execute([name]))
        .ctx("deleting a service")?;
    if deleted == 0 {
        return Err(StoreError::ServiceNotFound(name.to_owned()));
    }
    tx.commit().ctx("committing a service deletion")
}
