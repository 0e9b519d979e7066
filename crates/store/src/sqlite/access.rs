//! API tokens and the audit log.

use jiff::Timestamp;
use rusqlite::types::Type;
use rusqlite::{Connection, OptionalExtension, Row, named_params, params};
use tug_core::access::{Role, Scope};

use super::codec::{Context, conversion, get_opt_ts, get_ts, get_unsigned, ms, opt_ms};
use super::{page_size, write_tx};
use crate::{AuditEntry, AuditQuery, Page, Result, StoreError, TokenRecord};

const TOKEN_COLUMNS: &str = "id, name, role, scope, hash, created_at, expires_at, revoked_at";

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let role: String = row.get(2)?;
    let scope: Option<String> = row.get(3)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        role: role.parse::<Role>().map_err(|e| conversion(2, Type::Text, e))?,
        scope: scope.map(|s| s.parse::<Scope>()).transpose().map_err(|e| conversion(3, Type::Text, e))?,
        hash: row.get(4)?,
        created_at: get_ts(row, 5)?,
        expires_at: get_opt_ts(row, 6)?,
        revoked_at: get_opt_ts(row, 7)?,
    })
}

pub(super) fn create_token(c: &mut Connection, t: &TokenRecord) -> Result<()> {
    let what = "storing a token";
    let tx = write_tx(c)?;
    let inserted = tx
        .execute(
            &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING"),
            params![
                t.id,
                t.name,
                t.role.as_str(),
                t.scope.as_ref().map(ToString::to_string),
                t.hash,
                ms(t.created_at),
                opt_ms(t.expires_at),
                opt_ms(t.revoked_at)
            ],
        )
        .ctx(what)?;
    if inserted == 0 {
        return Err(StoreError::TokenExists(t.id.clone()));
    }
    tx.commit().ctx(what)
}

pub(super) fn list_tokens(c: &mut Connection) -> Result<Vec<TokenRecord>> {
    let what = "listing tokens";
    let mut stmt = c.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id")).ctx(what)?;
    let rows = stmt.query_map([], token_from_row).ctx(what)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().ctx(what)
}

pub(super) fn revoke_token(c: &mut Connection, id: &str, now: Timestamp) -> Result<TokenRecord> {
    let what = "revoking a token";
    let tx = write_tx(c)?;
    tx.execute("UPDATE tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1", params![id, ms(now)])
        .ctx(what)?;
    let token = tx
        .query_row(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"), [id], token_from_row)
        .optional()
        .ctx(what)?
        .ok_or_else(|| StoreError::TokenNotFound(id.to_owned()))?;
    tx.commit().ctx(what)?;
    Ok(token)
}

pub(super) fn append_audit(c: &mut Connection, e: &AuditEntry) -> Result<u64> {
    let what = "writing the audit log";
    let tx = write_tx(c)?;
    tx.execute(
        "INSERT INTO audit (at, actor, remote, method, path, job, status) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![ms(e.at), e.actor, e.remote, e.method, e.path, e.job, e.status],
    )
    .ctx(what)?;
    let id = tx.last_insert_rowid();
    tx.commit().ctx(what)?;
    Ok(id as u64)
}

pub(super) fn list_audit(c: &mut Connection, q: &AuditQuery) -> Result<Page<AuditEntry>> {
    let what = "reading the audit log";
    let after: i64 = match &q.cursor {
        None => 0,
        Some(s) => s.parse().ok().filter(|n: &i64| *n > 0).ok_or_else(|| StoreError::BadCursor(s.clone()))?,
    };
    let limit = page_size(q.limit);
    let mut stmt = c
        .prepare_cached(
            "SELECT id, at, actor, remote, method, path, job, status FROM audit \
             WHERE id > :after AND (:since IS NULL OR at >= :since) AND (:job IS NULL OR job = :job) \
             ORDER BY id LIMIT :limit",
        )
        .ctx(what)?;
    let rows = stmt
        .query_map(
            named_params! {":after": after, ":since": opt_ms(q.since), ":job": q.job, ":limit": limit as i64 + 1},
            |row| {
                Ok(AuditEntry {
                    id: get_unsigned(row, 0)?,
                    at: get_ts(row, 1)?,
                    actor: row.get(2)?,
                    remote: row.get(3)?,
                    method: row.get(4)?,
                    path: row.get(5)?,
                    job: row.get(6)?,
                    status: get_unsigned(row, 7)?,
                })
            },
        )
        .ctx(what)?;
    let items = rows.collect::<rusqlite::Result<Vec<_>>>().ctx(what)?;
    Ok(Page::from_overfetch(items, limit, |e| e.id.to_string()))
}

pub(super) fn prune_audit(c: &mut Connection, before: Timestamp) -> Result<u64> {
    let what = "pruning the audit log";
    let tx = write_tx(c)?;
    let n = tx.execute("DELETE FROM audit WHERE at < ?1", [ms(before)]).ctx(what)?;
    tx.commit().ctx(what)?;
    Ok(n as u64)
}
