//! The [`Store`] trait on [`EtcdStore`]: each call goes to the module of its concept.

use async_trait::async_trait;
use jiff::Timestamp;
use tug_core::{JobSpec, ServiceSpec};
use tug_core::run::{Attempt, Run, RunId};

use super::EtcdStore;
use crate::{
    AuditEntry, AuditQuery, Claim, FireBatch, JobQuery, JobRecord, Page, PoolRecord, PoolSpec, ProgressKind,
    ProgressRecord, RemovedRun, Result, RunQuery, RunTotals, ServiceRecord, Store, TokenRecord,
};

#[async_trait]
impl Store for EtcdStore {
    async fn create_job(&self, spec: &JobSpec, now: Timestamp) -> Result<JobRecord> {
        EtcdStore::create_job(self, spec, now).await
    }
    async fn update_job(&self, spec: &JobSpec, expected_version: Option<u64>, now: Timestamp) -> Result<JobRecord> {
        EtcdStore::update_job(self, spec, expected_version, now).await
    }
    async fn create_jobs(&self, specs: &[JobSpec], now: Timestamp) -> Result<()> {
        EtcdStore::create_jobs(self, specs, now).await
    }
    async fn get_job(&self, name: &str) -> Result<JobRecord> {
        EtcdStore::get_job(self, name).await
    }
    async fn delete_job(&self, name: &str) -> Result<Vec<RemovedRun>> {
        EtcdStore::delete_job(self, name).await
    }
    async fn list_jobs(&self, query: &JobQuery) -> Result<Page<JobRecord>> {
        EtcdStore::list_jobs(self, query).await
    }
    async fn load_jobs(&self) -> Result<Vec<JobRecord>> {
        EtcdStore::load_jobs(self).await
    }
    async fn commit_fires(&self, batch: FireBatch, now: Timestamp) -> Result<Vec<Run>> {
        EtcdStore::commit_fires(self, batch, now).await
    }
    async fn save_runs(&self, runs: &[Run], attempts: &[Attempt]) -> Result<()> {
        EtcdStore::save_runs(self, runs, attempts).await
    }
    async fn get_run(&self, id: RunId) -> Result<Run> {
        EtcdStore::get_run(self, id).await
    }
    async fn list_runs(&self, job: &str, query: &RunQuery) -> Result<Page<Run>> {
        EtcdStore::list_runs(self, job, query).await
    }
    async fn active_runs(&self) -> Result<Vec<Run>> {
        EtcdStore::active_runs(self).await
    }
    async fn attempts(&self, id: RunId) -> Result<Vec<Attempt>> {
        EtcdStore::attempts(self, id).await
    }
    async fn prune_runs(&self, job: &str, keep: u32) -> Result<Vec<RemovedRun>> {
        EtcdStore::prune_runs(self, job, keep).await
    }
    async fn run_totals(&self, job: Option<&str>) -> Result<Vec<(String, RunTotals)>> {
        EtcdStore::run_totals(self, job).await
    }
    async fn next_epoch(&self) -> Result<u64> {
        self.next_counter("taking a leader epoch", self.keys.epoch()).await
    }
    async fn create_pool(&self, spec: &PoolSpec, now: Timestamp) -> Result<PoolRecord> {
        EtcdStore::create_pool(self, spec, now).await
    }
    async fn get_pool(&self, name: &str) -> Result<PoolRecord> {
        EtcdStore::get_pool(self, name).await
    }
    async fn list_pools(&self) -> Result<Vec<PoolRecord>> {
        EtcdStore::list_pools(self).await
    }
    async fn delete_pool(&self, name: &str) -> Result<()> {
        EtcdStore::delete_pool(self, name).await
    }
    async fn list_claims(&self, pool: Option<&str>) -> Result<Vec<Claim>> {
        EtcdStore::list_claims(self, pool).await
    }
    async fn put_claim(&self, claim: &Claim) -> Result<()> {
        EtcdStore::put_claim(self, claim).await
    }
    async fn remove_claim(&self, pool: &str, name: &str) -> Result<Option<Claim>> {
        EtcdStore::remove_claim(self, pool, name).await
    }
    async fn create_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
        EtcdStore::create_service(self, spec, now).await
    }
    async fn update_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord> {
        EtcdStore::update_service(self, spec, now).await
    }
    async fn get_service(&self, name: &str) -> Result<ServiceRecord> {
        EtcdStore::get_service(self, name).await
    }
    async fn list_services(&self) -> Result<Vec<ServiceRecord>> {
        EtcdStore::list_services(self).await
    }
    async fn delete_service(&self, name: &str) -> Result<()> {
        EtcdStore::delete_service(self, name).await
    }
    async fn put_progress(&self, record: &ProgressRecord) -> Result<()> {
        EtcdStore::put_progress(self, record).await
    }
    async fn list_progress(&self, kind: ProgressKind) -> Result<Vec<ProgressRecord>> {
        EtcdStore::list_progress(self, kind).await
    }
    async fn delete_progress(&self, kind: ProgressKind, ids: &[u64]) -> Result<()> {
        EtcdStore::delete_progress(self, kind, ids).await
    }
    async fn create_token(&self, token: &TokenRecord) -> Result<()> {
        EtcdStore::create_token(self, token).await
    }
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        EtcdStore::list_tokens(self).await
    }
    async fn revoke_token(&self, id: &str, now: Timestamp) -> Result<TokenRecord> {
        EtcdStore::revoke_token(self, id, now).await
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64> {
        EtcdStore::append_audit(self, entry).await
    }
    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        EtcdStore::list_audit(self, query).await
    }
    async fn prune_audit(&self, before: Timestamp) -> Result<u64> {
        EtcdStore::prune_audit(self, before).await
    }
}
