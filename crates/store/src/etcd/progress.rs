//! Releases and scale operations on etcd: `P/progress/KIND/ID` holds the whole record as JSON.

use etcd_client::TxnOp;

use super::{EtcdStore, decode, encode};
use crate::{ProgressKind, ProgressRecord, Result};

impl EtcdStore {
    pub(super) async fn put_progress(&self, record: &ProgressRecord) -> Result<()> {
        let what = format!("writing {} {}", record.kind.as_str(), record.id);
        let key = self.keys.progress(record.kind, record.id);
        self.write_all(&what, vec![TxnOp::put(key, encode(record), None)]).await
    }

    pub(super) async fn list_progress(&self, kind: ProgressKind) -> Result<Vec<ProgressRecord>> {
        let what = "listing releases and operations";
        self.scan_prefix(what, &self.keys.progresses(kind)).await?.iter().map(|kv| decode(what, kv)).collect()
    }

    pub(super) async fn delete_progress(&self, kind: ProgressKind, ids: &[u64]) -> Result<()> {
        let ops = ids.iter().map(|&id| TxnOp::delete(self.keys.progress(kind, id), None)).collect();
        self.write_all("deleting old releases and operations", ops).await
    }
}
