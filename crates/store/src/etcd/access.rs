//! API tokens (`P/token/ID`, with the hash of the secret) and the audit log (`P/audit/ID`,
//! ids from the counter `P/meta/audit-id`) on etcd.

use etcd_client::TxnOp;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_core::access::{Role, Scope};

use super::keys::prefix_end;
use super::{EtcdStore, MAX_CONFLICTS, SCAN_PAGE, absent, decode, decode_num, encode, unchanged};
use crate::derived::{page_size, stored};
use crate::{AuditEntry, AuditQuery, Page, Result, StoreError, TokenRecord};

/// `P/token/ID`: a [`TokenRecord`] with its hash, which the record leaves out when serialized
/// for the API.
#[derive(Serialize, Deserialize)]
struct TokenValue {
    id: String,
    name: String,
    role: Role,
    scope: Option<Scope>,
    hash: String,
    created_at: Timestamp,
    expires_at: Option<Timestamp>,
    revoked_at: Option<Timestamp>,
}

impl From<&TokenRecord> for TokenValue {
    fn from(t: &TokenRecord) -> TokenValue {
        TokenValue {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            scope: t.scope.clone(),
            hash: t.hash.clone(),
            created_at: stored(t.created_at),
            expires_at: t.expires_at.map(stored),
            revoked_at: t.revoked_at.map(stored),
        }
    }
}

impl From<TokenValue> for TokenRecord {
    fn from(t: TokenValue) -> TokenRecord {
        TokenRecord {
            id: t.id,
            name: t.name,
            role: t.role,
            scope: t.scope,
            hash: t.hash,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

impl EtcdStore {
    pub(super) async fn create_token(&self, token: &TokenRecord) -> Result<()> {
        let key = self.keys.token(&token.id);
        let put = TxnOp::put(key.clone(), encode(&TokenValue::from(token)), None);
        if !self.write("creating a token", vec![absent(key)], vec![put]).await? {
            return Err(StoreError::TokenExists(token.id.clone()));
        }
        Ok(())
    }

    pub(super) async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        let what = "listing tokens";
        self.scan_prefix(what, &self.keys.tokens())
            .await?
            .iter()
            .map(|kv| Ok(decode::<TokenValue>(what, kv)?.into()))
            .collect()
    }

    pub(super) async fn revoke_token(&self, id: &str, now: Timestamp) -> Result<TokenRecord> {
        let what = format!("revoking token {id:?}");
        let key = self.keys.token(id);
        for _ in 0..MAX_CONFLICTS {
            let kv = self.get(&what, key.clone()).await?.ok_or_else(|| StoreError::TokenNotFound(id.to_owned()))?;
            let mut token: TokenValue = decode(&what, &kv)?;
            if token.revoked_at.is_some() {
                return Ok(token.into());
            }
            token.revoked_at = Some(stored(now));
            let put = TxnOp::put(key.clone(), encode(&token), None);
            if self.write(&what, vec![unchanged(key.clone(), Some(&kv))], vec![put]).await? {
                return Ok(token.into());
            }
        }
        Err(Self::contended(&what))
    }

    pub(super) async fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        let what = "appending to the audit log";
        let counter = self.keys.audit_id();
        for _ in 0..MAX_CONFLICTS {
            let kv = self.get(what, counter.clone()).await?;
            let id = match &kv {
                Some(kv) => decode_num(what, kv)? + 1,
                None => 1,
            };
            let entry = AuditEntry { id, at: stored(entry.at), ..entry.clone() };
            let ops = vec![TxnOp::put(counter.clone(), id.to_string(), None), TxnOp::put(self.keys.audit(id), encode(&entry), None)];
            if self.write(what, vec![unchanged(counter.clone(), kv.as_ref())], ops).await? {
                return Ok(id);
            }
        }
        Err(Self::contended(what))
    }

    pub(super) async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let what = "listing the audit log";
        let after: u64 = match &query.cursor {
            None => 0,
            Some(c) => c.parse().ok().filter(|n| *n > 0).ok_or_else(|| StoreError::BadCursor(c.clone()))?,
        };
        let limit = page_size(query.limit);
        let end = prefix_end(self.keys.audits().as_bytes());
        let from = self.keys.audit(after.saturating_add(1)).into_bytes();
        let mut items = Vec::new();
        self.walk(what, (from, end), false, SCAN_PAGE, |kv| {
            let e: AuditEntry = decode(what, &kv)?;
            if query.since.is_none_or(|s| e.at >= s) && query.job.as_ref().is_none_or(|j| e.job.as_ref() == Some(j)) {
                items.push(e);
            }
            Ok(items.len() <= limit)
        })
        .await?;
        Ok(Page::from_overfetch(items, limit, |e| e.id.to_string()))
    }

    pub(super) async fn prune_audit(&self, before: Timestamp) -> Result<u64> {
        let what = "pruning the audit log";
        let mut doomed = Vec::new();
        for kv in self.scan_prefix(what, &self.keys.audits()).await? {
            let e: AuditEntry = decode(what, &kv)?;
            if e.at < before {
                doomed.push(TxnOp::delete(kv.key().to_vec(), None));
            }
        }
        let n = doomed.len() as u64;
        self.write_all(what, doomed).await?;
        Ok(n)
    }
}
