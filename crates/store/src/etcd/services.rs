//! Services on etcd: `P/service/NAME` holds the whole record (spec, version, instants) as JSON.

use etcd_client::TxnOp;
use jiff::Timestamp;
use tug_core::ServiceSpec;

use super::{EtcdStore, MAX_CONFLICTS, absent, decode, encode, present, unchanged};
use crate::derived::stored;
use crate::{Result, ServiceRecord, StoreError};

impl EtcdStore {
    pub(super) async fn create_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
        let now = stored(now);
        let record = ServiceRecord { spec: spec.clone(), version: 1, created_at: now, updated_at: now };
        let key = self.keys.service(&spec.name);
        let what = format!("creating service {:?}", spec.name);
        if !self.write(&what, vec![absent(key.clone())], vec![TxnOp::put(key, encode(&record), None)]).await? {
            return Err(StoreError::ServiceExists(spec.name.clone()));
        }
        Ok(record)
    }

    pub(super) async fn update_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
        let key = self.keys.service(&spec.name);
        let what = format!("updating service {:?}", spec.name);
        for _ in 0..MAX_CONFLICTS {
            let kv = self.get(&what, key.clone()).await?.ok_or_else(|| StoreError::ServiceNotFound(spec.name.clone()))?;
            let old: ServiceRecord = decode(&what, &kv)?;
            let record = ServiceRecord { spec: spec.clone(), version: old.version + 1, created_at: old.created_at, updated_at: stored(now) };
            let put = TxnOp::put(key.clone(), encode(&record), None);
            if self.write(&what, vec![unchanged(key.clone(), Some(&kv))], vec![put]).await? {
                return Ok(record);
            }
        }
        Err(Self::contended(&what))
    }

    pub(super) async fn get_service(&self, name: &str) -> Result<ServiceRecord> {
        let what = format!("reading service {name:?}");
        let kv = self.get(&what, self.keys.service(name)).await?.ok_or_else(|| StoreError::ServiceNotFound(name.to_owned()))?;
        decode(&what, &kv)
    }

    pub(super) async fn list_services(&self) -> Result<Vec<ServiceRecord>> {
        let what = "listing services";
        self.scan_prefix(what, &self.keys.services()).await?.iter().map(|kv| decode(what, kv)).collect()
    }

    pub(super) async fn delete_service(&self, name: &str) -> Result<()> {
        let key = self.keys.service(name);
        let what = format!("deleting service {name:?}");
        if !self.write(&what, vec![present(key.clone())], vec![TxnOp::delete(key, None)]).await? {
            return Err(StoreError::ServiceNotFound(name.to_owned()));
        }
        Ok(())
    }
}
