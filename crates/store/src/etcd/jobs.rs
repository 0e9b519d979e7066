//! Jobs on etcd: `P/job/NAME` holds the spec and its bookkeeping, `P/stat/NAME` what follows
//! from the job's runs (kept up to date by every run write, so a read is one key).

use std::collections::{BTreeSet, HashMap};

use etcd_client::{GetOptions, KeyValue, TxnOp};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_core::JobSpec;

use super::keys::prefix_end;
use super::{EtcdStore, MAX_CONFLICTS, SCAN_PAGE, absent, decode, encode, unchanged};
use crate::derived::{Derived, label_matches, page_size, search_text, stored};
use crate::{JobQuery, JobRecord, Page, Result, RunTotals, StoreError};

/// `P/job/NAME`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct JobValue {
    spec: JobSpec,
    version: u64,
    created_at: Timestamp,
    updated_at: Timestamp,
}

/// A job and its derived fields as one record.
fn record(job: JobValue, stats: &Derived) -> JobRecord {
    JobRecord {
        spec: job.spec,
        version: job.version,
        created_at: job.created_at,
        updated_at: job.updated_at,
        fire_cursor: stats.fire_cursor,
        last_run_at: stats.last_run_at,
        last_success_at: stats.last_success_at,
        last_failure_at: stats.last_failure_at,
    }
}

/// The name at the end of a `P/job/NAME` or `P/stat/NAME` key.
fn name_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).rsplit('/').next().unwrap_or_default().to_owned()
}

impl EtcdStore {
    /// The put operations of a new job.
    fn new_job_ops(&self, spec: &JobSpec, now: Timestamp) -> Vec<TxnOp> {
        let now = stored(now);
        let job = JobValue { spec: spec.clone(), version: 1, created_at: now, updated_at: now };
        vec![
            TxnOp::put(self.keys.job(&spec.name), encode(&job), None),
            TxnOp::put(self.keys.stat(&spec.name), encode(&Derived::default()), None),
        ]
    }

    pub(super) async fn create_job(&self, spec: &JobSpec, now: Timestamp) -> Result<JobRecord> {
        let what = format!("creating job {:?}", spec.name);
        if !self.write(&what, vec![absent(self.keys.job(&spec.name))], self.new_job_ops(spec, now)).await? {
            return Err(StoreError::JobExists(spec.name.clone()));
        }
        self.get_job(&spec.name).await
    }

    /// All or nothing. More jobs than one transaction holds are written in parts, and the parts
    /// already written are removed again if a later part finds a name taken.
    pub(super) async fn create_jobs(&self, specs: &[JobSpec], now: Timestamp) -> Result<()> {
        let what = "creating jobs";
        let gets = specs.iter().map(|s| TxnOp::get(self.keys.job(&s.name), Some(GetOptions::new().with_keys_only()))).collect();
        let found = self.read(what, gets).await?;
        let mut names = BTreeSet::new();
        for (spec, kvs) in specs.iter().zip(&found) {
            if !kvs.is_empty() || !names.insert(spec.name.as_str()) {
                return Err(StoreError::JobExists(spec.name.clone()));
            }
        }
        let per_part = (self.config.max_txn_ops / 2).max(1);
        let mut written: Vec<&JobSpec> = Vec::new();
        for part in specs.chunks(per_part) {
            let compares = part.iter().map(|s| absent(self.keys.job(&s.name))).collect();
            let ops = part.iter().flat_map(|s| self.new_job_ops(s, now)).collect();
            if !self.write(what, compares, ops).await? {
                let undo = written
                    .iter()
                    .flat_map(|s| [TxnOp::delete(self.keys.job(&s.name), None), TxnOp::delete(self.keys.stat(&s.name), None)])
                    .collect();
                self.write_all("undoing a refused import", undo).await?;
                let taken = self.taken(part).await?;
                return Err(StoreError::JobExists(taken.unwrap_or_else(|| part[0].name.clone())));
            }
            written.extend(part);
        }
        Ok(())
    }

    /// The first of `specs` whose name is taken.
    async fn taken(&self, specs: &[JobSpec]) -> Result<Option<String>> {
        let gets = specs.iter().map(|s| TxnOp::get(self.keys.job(&s.name), None)).collect();
        let found = self.read("creating jobs", gets).await?;
        Ok(specs.iter().zip(found).find(|(_, kvs)| !kvs.is_empty()).map(|(s, _)| s.name.clone()))
    }

    pub(super) async fn update_job(&self, spec: &JobSpec, expected: Option<u64>, now: Timestamp) -> Result<JobRecord> {
        let what = format!("updating job {:?}", spec.name);
        for _ in 0..MAX_CONFLICTS {
            let key = self.keys.job(&spec.name);
            let kv = self.get(&what, key.clone()).await?.ok_or_else(|| StoreError::JobNotFound(spec.name.clone()))?;
            let old: JobValue = decode(&what, &kv)?;
            if let Some(expected) = expected
                && expected != old.version
            {
                return Err(StoreError::VersionConflict { name: spec.name.clone(), expected, found: old.version });
            }
            let new = JobValue { spec: spec.clone(), version: old.version + 1, updated_at: stored(now), ..old };
            if self.write(&what, vec![unchanged(key.clone(), Some(&kv))], vec![TxnOp::put(key, encode(&new), None)]).await? {
                return self.get_job(&spec.name).await;
            }
        }
        Err(Self::contended(&what))
    }

    pub(super) async fn get_job(&self, name: &str) -> Result<JobRecord> {
        let what = format!("reading job {name:?}");
        let got = self.read(&what, vec![TxnOp::get(self.keys.job(name), None), TxnOp::get(self.keys.stat(name), None)]).await?;
        let (Some(job), stat) = (got[0].first(), got[1].first()) else {
            return Err(StoreError::JobNotFound(name.to_owned()));
        };
        let stats = match stat {
            Some(kv) => decode(&what, kv)?,
            None => Derived::default(),
        };
        Ok(record(decode(&what, job)?, &stats))
    }

    /// The derived fields of the jobs whose stat keys lie in `[first, last]`, by name.
    async fn stats_between(&self, what: &str, first: &str, last: &str) -> Result<HashMap<String, Derived>> {
        let mut end = self.keys.stat(last).into_bytes();
        end.push(0);
        let kvs = self.scan(what, self.keys.stat(first).into_bytes(), end).await?;
        kvs.iter().map(|kv| Ok((name_of(kv), decode(what, kv)?))).collect()
    }

    pub(super) async fn list_jobs(&self, query: &JobQuery) -> Result<Page<JobRecord>> {
        let what = "listing jobs";
        let from = match &query.cursor {
            Some(c) if tug_core::job::valid_name(c) => {
                let mut k = self.keys.job(c).into_bytes();
                k.push(0);
                k
            }
            Some(c) => return Err(StoreError::BadCursor(c.clone())),
            None => self.keys.jobs().into_bytes(),
        };
        let end = prefix_end(self.keys.jobs().as_bytes());
        let q = query.q.as_deref().filter(|q| !q.is_empty()).map(str::to_lowercase);
        let label = query.label.as_deref().filter(|l| !l.is_empty());
        let limit = page_size(query.limit);
        let filtered = q.is_some() || label.is_some();
        let mut jobs: Vec<JobValue> = Vec::new();
        let page = if filtered { SCAN_PAGE } else { limit as i64 + 1 };
        self.walk(what, (from, end), false, page, |kv| {
            let job: JobValue = decode(what, &kv)?;
            if q.as_deref().is_none_or(|q| search_text(&job.spec).contains(q)) && label.is_none_or(|l| label_matches(&job.spec, l)) {
                jobs.push(job);
            }
            Ok(jobs.len() <= limit)
        })
        .await?;
        let stats = match (jobs.first(), jobs.last()) {
            (Some(a), Some(b)) => self.stats_between(what, &a.spec.name, &b.spec.name).await?,
            _ => HashMap::new(),
        };
        let items = jobs
            .into_iter()
            .map(|j| {
                let s = stats.get(&j.spec.name).copied().unwrap_or_default();
                record(j, &s)
            })
            .collect();
        Ok(Page::from_overfetch(items, limit, |job: &JobRecord| job.spec.name.clone()))
    }

    pub(super) async fn load_jobs(&self) -> Result<Vec<JobRecord>> {
        let what = "loading jobs";
        let jobs = self.scan_prefix(what, &self.keys.jobs()).await?;
        let stats: HashMap<String, Derived> = self
            .scan_prefix(what, &self.keys.stats())
            .await?
            .iter()
            .map(|kv| Ok((name_of(kv), decode(what, kv)?)))
            .collect::<Result<_>>()?;
        jobs.iter()
            .map(|kv| {
                let job: JobValue = decode(what, kv)?;
                let s = stats.get(&job.spec.name).copied().unwrap_or_default();
                Ok(record(job, &s))
            })
            .collect()
    }

    pub(super) async fn run_totals(&self, job: Option<&str>) -> Result<Vec<(String, RunTotals)>> {
        let what = "reading run totals";
        let totals = |d: &Derived| RunTotals { succeeded: d.succeeded, failed: d.failed };
        match job {
            Some(name) => {
                let kv = self.get(what, self.keys.stat(name)).await?.ok_or_else(|| StoreError::JobNotFound(name.to_owned()))?;
                Ok(vec![(name.to_owned(), totals(&decode(what, &kv)?))])
            }
            None => self
                .scan_prefix(what, &self.keys.stats())
                .await?
                .iter()
                .map(|kv| Ok((name_of(kv), totals(&decode(what, kv)?))))
                .collect(),
        }
    }
}
