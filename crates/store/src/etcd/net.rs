//! Address pools and claims on etcd: `P/pool/NAME`, and `P/claim/POOL/IP` so that a pool's
//! claims list by address and one address has one key (so one holder).

use etcd_client::{GetOptions, KeyValue, TxnOp};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::keys::prefix_end;
use super::{EtcdStore, MAX_CONFLICTS, absent, decode, encode, present, unchanged};
use crate::derived::stored;
use crate::{Claim, PoolRecord, PoolSpec, Result, StoreError};

/// `P/pool/NAME`: the spec as given, and when it was created.
#[derive(Serialize, Deserialize)]
struct PoolValue {
    spec: PoolSpec,
    created_at: Timestamp,
}

impl From<PoolValue> for PoolRecord {
    fn from(v: PoolValue) -> PoolRecord {
        PoolRecord { spec: v.spec, created_at: v.created_at }
    }
}

impl EtcdStore {
    pub(super) async fn create_pool(&self, spec: &PoolSpec, now: Timestamp) -> Result<PoolRecord> {
        let record = PoolRecord { spec: spec.clone(), created_at: stored(now) };
        let key = self.keys.pool(&spec.name);
        let what = format!("creating network pool {:?}", spec.name);
        let value = PoolValue { spec: spec.clone(), created_at: record.created_at };
        if !self.write(&what, vec![absent(key.clone())], vec![TxnOp::put(key, encode(&value), None)]).await? {
            return Err(StoreError::PoolExists(spec.name.clone()));
        }
        Ok(record)
    }

    pub(super) async fn get_pool(&self, name: &str) -> Result<PoolRecord> {
        let what = format!("reading network pool {name:?}");
        let kv = self.get(&what, self.keys.pool(name)).await?.ok_or_else(|| StoreError::PoolNotFound(name.to_owned()))?;
        Ok(decode::<PoolValue>(&what, &kv)?.into())
    }

    pub(super) async fn list_pools(&self) -> Result<Vec<PoolRecord>> {
        let what = "listing network pools";
        self.scan_prefix(what, &self.keys.pools()).await?.iter().map(|kv| Ok(decode::<PoolValue>(what, kv)?.into())).collect()
    }

    pub(super) async fn delete_pool(&self, name: &str) -> Result<()> {
        let what = format!("deleting network pool {name:?}");
        let claims = self.keys.claims(Some(name));
        for _ in 0..MAX_CONFLICTS {
            if self.get(&what, self.keys.pool(name)).await?.is_none() {
                return Err(StoreError::PoolNotFound(name.to_owned()));
            }
            let held = self.count(&what, &claims).await?;
            if held > 0 {
                return Err(StoreError::PoolInUse { pool: name.to_owned(), claims: held });
            }
            // No claim may appear in between: every key under the pool's claims must be absent.
            let compares = vec![absent(claims.clone()).with_prefix()];
            if self.write(&what, compares, vec![TxnOp::delete(self.keys.pool(name), None)]).await? {
                return Ok(());
            }
        }
        Err(Self::contended(&what))
    }

    /// How many keys lie under `prefix`.
    async fn count(&self, what: &str, prefix: &str) -> Result<usize> {
        let options = GetOptions::new().with_range(prefix_end(prefix.as_bytes())).with_count_only();
        let resp = self.kv_get(what, prefix, Some(options)).await?;
        Ok(resp.count() as usize)
    }

    pub(super) async fn list_claims(&self, pool: Option<&str>) -> Result<Vec<Claim>> {
        let what = "listing address claims";
        if let Some(pool) = pool
            && self.get(what, self.keys.pool(pool)).await?.is_none()
        {
            return Err(StoreError::PoolNotFound(pool.to_owned()));
        }
        let mut claims: Vec<Claim> =
            self.scan_prefix(what, &self.keys.claims(pool)).await?.iter().map(|kv| decode(what, kv)).collect::<Result<_>>()?;
        // Key order puts pool "a-b" before "a" ('-' sorts before '/'): order by name, then address.
        claims.sort_by(|a, b| (&a.pool, a.ip).cmp(&(&b.pool, b.ip)));
        Ok(claims)
    }

    /// The claims of one pool with their keys.
    async fn pool_claims(&self, what: &str, pool: &str) -> Result<Vec<(KeyValue, Claim)>> {
        self.scan_prefix(what, &self.keys.claims(Some(pool))).await?.into_iter().map(|kv| Ok((kv.clone(), decode(what, &kv)?))).collect()
    }

    pub(super) async fn put_claim(&self, claim: &Claim) -> Result<()> {
        let what = format!("claiming {} in network pool {:?}", claim.ip, claim.pool);
        let key = self.keys.claim(&claim.pool, claim.ip);
        for _ in 0..MAX_CONFLICTS {
            let held = self.pool_claims(&what, &claim.pool).await?;
            if let Some((_, holder)) = held.iter().find(|(_, c)| c.ip == claim.ip && c.name != claim.name) {
                return Err(StoreError::AddressTaken {
                    pool: claim.pool.clone(),
                    ip: claim.ip.to_string(),
                    holder: holder.name.clone(),
                });
            }
            let at_ip = held.iter().find(|(_, c)| c.ip == claim.ip).map(|(kv, _)| kv);
            let mut compares = vec![present(self.keys.pool(&claim.pool)), unchanged(key.clone(), at_ip)];
            let mut ops = Vec::new();
            // The same name at another address: it moves, freeing the old one.
            for (kv, _) in held.iter().filter(|(_, c)| c.name == claim.name && c.ip != claim.ip) {
                compares.push(unchanged(kv.key().to_vec(), Some(kv)));
                ops.push(TxnOp::delete(kv.key().to_vec(), None));
            }
            ops.push(TxnOp::put(key.clone(), encode(claim), None));
            if self.write(&what, compares, ops).await? {
                return Ok(());
            }
            if self.get(&what, self.keys.pool(&claim.pool)).await?.is_none() {
                return Err(StoreError::PoolNotFound(claim.pool.clone()));
            }
        }
        Err(Self::contended(&what))
    }

    pub(super) async fn remove_claim(&self, pool: &str, name: &str) -> Result<Option<Claim>> {
        let what = format!("releasing claim {name:?} of network pool {pool:?}");
        for _ in 0..MAX_CONFLICTS {
            let held = self.pool_claims(&what, pool).await?;
            let Some((kv, claim)) = held.into_iter().find(|(_, c)| c.name == name) else { return Ok(None) };
            let key = kv.key().to_vec();
            if self.write(&what, vec![unchanged(key.clone(), Some(&kv))], vec![TxnOp::delete(key, None)]).await? {
                return Ok(Some(claim));
            }
        }
        Err(Self::contended(&what))
    }
}
