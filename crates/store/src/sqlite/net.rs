//! Address pools and claims.

use std::net::Ipv4Addr;
use std::sync::Arc;

use jiff::Timestamp;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tug_net::{Claim, PoolSpec};

use super::codec::{Context, conversion, get_ts, ms};
use super::write_tx;
use crate::{PoolRecord, Result, StoreError};

fn pool_from_row(row: &Row<'_>) -> rusqlite::Result<PoolRecord> {
    let spec = serde_json::from_str(row.get_ref(0)?.as_str()?).map_err(|e| conversion(0, Type::Text, e))?;
    Ok(PoolRecord { spec, created_at: get_ts(row, 1)? })
}

fn claim_from_row(row: &Row<'_>) -> rusqlite::Result<Claim> {
    let ip: i64 = row.get(2)?;
    let ip = u32::try_from(ip).map_err(|e| conversion(2, Type::Integer, e))?;
    let mac: String = row.get(3)?;
    let mac = mac.parse::<tug_net::Mac>().map_err(|e| conversion(3, Type::Text, e))?;
    Ok(Claim { pool: row.get(0)?, name: row.get(1)?, ip: Ipv4Addr::from(ip), mac, agent: row.get(4)? })
}

const CLAIM_COLUMNS: &str = "pool, name, ip, mac, agent";

pub(super) fn create_pool(conn: &mut Connection, spec: &PoolSpec, now: Timestamp) -> Result<PoolRecord> {
    let json = serde_json::to_string(spec)
        .map_err(|e| StoreError::Backend { what: format!("encoding pool {:?}", spec.name), source: Arc::new(e) })?;
    let tx = write_tx(conn)?;
    let inserted = tx
        .prepare_cached("INSERT INTO net_pools (name, spec, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING")
        .and_then(|mut s| s.execute(params![spec.name, json, ms(now)]))
        .ctx("inserting a network pool")?;
    if inserted == 0 {
        return Err(StoreError::PoolExists(spec.name.clone()));
    }
    let record = get_pool(&tx, &spec.name)?;
    tx.commit().ctx("committing a new network pool")?;
    Ok(record)
}

pub(super) fn get_pool(conn: &Connection, name: &str) -> Result<PoolRecord> {
    conn.prepare_cached("SELECT spec, created_at FROM net_pools WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], pool_from_row).optional())
        .ctx("reading a network pool")?
        .ok_or_else(|| StoreError::PoolNotFound(name.to_owned()))
}

pub(super) fn list_pools(conn: &Connection) -> Result<Vec<PoolRecord>> {
    conn.prepare_cached("SELECT spec, created_at FROM net_pools ORDER BY name")
        .and_then(|mut s| s.query_map([], pool_from_row)?.collect())
        .ctx("listing network pools")
}

pub(super) fn delete_pool(conn: &mut Connection, name: &str) -> Result<()> {
    let tx = write_tx(conn)?;
    get_pool(&tx, name)?;
    let claims: i64 = tx
        .prepare_cached("SELECT count(*) FROM net_claims WHERE pool = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get(0)))
        .ctx("counting a pool's claims")?;
    if claims > 0 {
        return Err(StoreError::PoolInUse { pool: name.to_owned(), claims: claims as usize });
    }
    tx.prepare_cached("DELETE FROM net_pools WHERE name = ?1")
        .and_then(|mut s| s.execute([name]))
        .ctx("deleting a network pool")?;
    tx.commit().ctx("committing a pool deletion")
}

pub(super) fn list_claims(conn: &Connection, pool: Option<&str>) -> Result<Vec<Claim>> {
    match pool {
        Some(pool) => {
            get_pool(conn, pool)?;
            conn.prepare_cached(&format!("SELECT {CLAIM_COLUMNS} FROM net_claims WHERE pool = ?1 ORDER BY ip"))
                .and_then(|mut s| s.query_map([pool], claim_from_row)?.collect())
        }
        None => conn
            .prepare_cached(&format!("SELECT {CLAIM_COLUMNS} FROM net_claims ORDER BY pool, ip"))
            .and_then(|mut s| s.query_map([], claim_from_row)?.collect()),
    }
    .ctx("listing claimed addresses")
}

pub(super) fn put_claim(conn: &mut Connection, claim: &Claim) -> Result<()> {
    let tx = write_tx(conn)?;
    get_pool(&tx, &claim.pool)?;
    let ip = i64::from(u32::from(claim.ip));
    let holder: Option<String> = tx
        .prepare_cached("SELECT name FROM net_claims WHERE pool = ?1 AND ip = ?2 AND name <> ?3")
        .and_then(|mut s| s.query_row(params![claim.pool, ip, claim.name], |r| r.get(0)).optional())
        .ctx("checking a claimed address")?;
    if let Some(holder) = holder {
        return Err(StoreError::AddressTaken { pool: claim.pool.clone(), ip: claim.ip.to_string(), holder });
    }
    tx.prepare_cached(
        "INSERT INTO net_claims (pool, name, ip, mac, agent) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (pool, name) DO UPDATE SET ip = excluded.ip, mac = excluded.mac, agent = excluded.agent",
    )
    .and_then(|mut s| s.execute(params![claim.pool, claim.name, ip, claim.mac.to_string(), claim.agent]))
    .ctx("writing a claimed address")?;
    tx.commit().ctx("committing a claimed address")
}

pub(super) fn remove_claim(conn: &mut Connection, pool: &str, name: &str) -> Result<Option<Claim>> {
    let tx = write_tx(conn)?;
    let claim = tx
        .prepare_cached(&format!("DELETE FROM net_claims WHERE pool = ?1 AND name = ?2 RETURNING {CLAIM_COLUMNS}"))
        .and_then(|mut s| s.query_row([pool, name], claim_from_row).optional())
        .ctx("removing a claimed address")?;
    tx.commit().ctx("committing a released address")?;
    Ok(claim)
}
