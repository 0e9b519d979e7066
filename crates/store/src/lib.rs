//! Tugboat's persistent state behind one [`Store`] trait.
//!
//! The trait speaks in jobs, runs and batches, never SQL, so a key-value store with transactions,
//! watches and leases (etcd) can implement it too. [`sqlite::SqliteStore`] is the embedded default;
//! [`etcd::EtcdStore`] is the store of a server group.
//!
//! Writes return only once they are durable (SQLite WAL with `synchronous = FULL`; etcd once a
//! quorum of members has them).

use async_trait::async_trait;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_core::run::{Attempt, NewRun, Run, RunId, RunState};
use tug_core::{JobSpec, ServiceSpec};
pub use tug_net::{Claim, PoolSpec};

mod access;
mod derived;
pub mod etcd;
mod error;
pub mod mem;
pub mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use access::{AuditEntry, AuditQuery, TokenRecord};
pub use error::{Cause, ErrorKind, StoreError};

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A job as stored: the spec plus bookkeeping the scheduler needs after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The spec.
    pub spec: JobSpec,
    /// Incremented by every write; starts at 1.
    pub version: u64,
    /// When the job was created.
    pub created_at: Timestamp,
    /// When the spec last changed.
    pub updated_at: Timestamp,
    /// The last scheduled instant the scheduler handled (fired, skipped or counted as missed):
    /// the later of the explicit cursor and the latest schedule- or misfire-triggered run key.
    pub fire_cursor: Option<Timestamp>,
    /// The latest `scheduled_at` of any run of the job that was not skipped.
    pub last_run_at: Option<Timestamp>,
    /// When the latest succeeded run finished.
    pub last_success_at: Option<Timestamp>,
    /// When the latest failed, timed-out or lost run finished.
    pub last_failure_at: Option<Timestamp>,
}

/// How a job's runs ended, counted over its whole history: runs removed by
/// [`Store::prune_runs`] still count. The Chronos API's `successCount` and `errorCount`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTotals {
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Runs that ended failed, timed out or lost.
    pub failed: u64,
}

/// A run the store deleted (pruned, or with its job), and the agent of its last attempt, which
/// holds its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedRun {
    /// The run.
    pub id: RunId,
    /// The agent its last attempt ran on; `None` if it never started.
    pub agent: Option<String>,
}

/// An address pool as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// The pool.
    #[serde(flatten)]
    pub spec: PoolSpec,
    /// When it was created.
    pub created_at: Timestamp,
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The spec.
    pub spec: ServiceSpec,
    /// Incremented by every write; starts at 1.
    pub version: u64,
    /// When the service was created.
    pub created_at: Timestamp,
    /// When the spec last changed.
    pub updated_at: Timestamp,
}

/// What a [`ProgressRecord`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressKind {
    /// A staged release of a service (`rel-N`).
    Release,
    /// A scale operation (`op-N`).
    Operation,
}

impl ProgressKind {
    /// Its name in keys and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ProgressKind::Release => "release",
            ProgressKind::Operation => "operation",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<ProgressKind> {
        match s {
            "release" => Some(ProgressKind::Release),
            "operation" => Some(ProgressKind::Operation),
            _ => None,
        }
    }
}

/// Something the scheduler carries out over time (a release, a scale operation), kept so a
/// restarted server, or a new leader, goes on with it where it was. The store keeps the
/// scheduler's own record of it (`state`) without reading it: only the scheduler knows its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressRecord {
    /// What it follows.
    pub kind: ProgressKind,
    /// Its number (`rel-N`, `op-N`); records of a kind list in this order.
    pub id: u64,
    /// The service it is about.
    pub service: String,
    /// Over: kept for reading only.
    pub ended: bool,
    /// The scheduler's record of it.
    pub state: serde_json::Value,
}

/// A page of results and the cursor for the next page, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Splits one item more than a page off `items` (fetched as `limit + 1`): its presence says
    /// there is another page, whose cursor `cursor_of` makes from the last item kept.
    pub(crate) fn from_overfetch(mut items: Vec<T>, limit: usize, cursor_of: impl Fn(&T) -> String) -> Page<T> {
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(cursor_of)
        } else {
            None
        };
        Page { items, next_cursor }
    }
}

/// Filters for listing jobs, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    /// Page size (the store caps it at 1000; 0 means 100).
    pub limit: usize,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Case-insensitive substring of the name, description or owner.
    pub q: Option<String>,
    /// `key=value` (label equals) or `key` (label present).
    pub label: Option<String>,
}

impl JobQuery {
    /// Whether a job passes the query's `q` and `label` filters, as every store applies them
    /// (for lists kept outside the store, such as the scheduler's jobs in order of next fire).
    pub fn matches(&self, spec: &JobSpec) -> bool {
        let q = self.q.as_deref().filter(|q| !q.is_empty()).map(str::to_lowercase);
        q.is_none_or(|q| search_matches(spec, &q))
            && self.label.as_deref().filter(|l| !l.is_empty()).is_none_or(|l| derived::label_matches(spec, l))
    }
}

/// Whether `q` (lowercased) is in the job's search text; without allocating for ASCII text, since
/// a search may test every job the scheduler holds.
fn search_matches(spec: &JobSpec, q: &str) -> bool {
    let ascii = q.is_ascii() && !q.contains('\n') && [&spec.name, &spec.description, &spec.owner].iter().all(|f| f.is_ascii());
    if !ascii {
        return derived::search_text(spec).contains(q);
    }
    let q = q.as_bytes();
    [&spec.name, &spec.description, &spec.owner].iter().any(|f| f.as_bytes().windows(q.len()).any(|w| w.eq_ignore_ascii_case(q)))
}

/// Filters for listing a job's runs, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    /// Page size (capped at 1000; 0 means 100).
    pub limit: usize,
    /// From a previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
}

/// The fires of one scheduler tick, written in one transaction before any is dispatched.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FireBatch {
    /// Runs to create. A run whose key `(job, scheduled_at)` already exists is not created again.
    pub runs: Vec<NewRun>,
    /// Explicit fire cursors, for instants handled without writing a run (counted misses, a job
    /// whose schedule changed). The cursor only moves forward.
    pub cursors: Vec<(String, Timestamp)>,
}

/// The store behind the scheduler and the API.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates a job; [`StoreError::JobExists`] if the name is taken.
    async fn create_job(&self, spec: &JobSpec, now: Timestamp) -> Result<JobRecord>;
    /// Replaces a job's spec. With `expected_version`, fails with
    /// [`StoreError::VersionConflict`] unless the stored version matches.
    async fn update_job(&self, spec: &JobSpec, expected_version: Option<u64>, now: Timestamp) -> Result<JobRecord>;
    /// Creates many jobs (an import), all or nothing: the first error creates none of them. The
    /// default (one `create_job` per spec) is not atomic; every store overrides it (the
    /// conformance suite checks).
    async fn create_jobs(&self, specs: &[JobSpec], now: Timestamp) -> Result<()> {
        for spec in specs {
            self.create_job(spec, now).await?;
        }
        Ok(())
    }
    /// One job.
    async fn get_job(&self, name: &str) -> Result<JobRecord>;
    /// Deletes a job, its runs, attempts and cursor; returns the deleted runs, ascending by id (so
    /// their logs can be removed).
    async fn delete_job(&self, name: &str) -> Result<Vec<RemovedRun>>;
    /// A page of jobs.
    async fn list_jobs(&self, query: &JobQuery) -> Result<Page<JobRecord>>;
    /// Every job, for the scheduler at start-up.
    async fn load_jobs(&self) -> Result<Vec<JobRecord>>;

    /// Writes a tick's fires and cursors atomically; returns the runs created (with ids).
    async fn commit_fires(&self, batch: FireBatch, now: Timestamp) -> Result<Vec<Run>>;
    /// Writes runs as given (by id) and appends finished attempts, in one transaction.
    async fn save_runs(&self, runs: &[Run], attempts: &[Attempt]) -> Result<()>;
    /// One run.
    async fn get_run(&self, id: RunId) -> Result<Run>;
    /// A page of one job's runs, newest first.
    async fn list_runs(&self, job: &str, query: &RunQuery) -> Result<Page<Run>>;
    /// Every run that is pending, starting or running, for recovery at start-up.
    async fn active_runs(&self) -> Result<Vec<Run>>;
    /// The finished attempts of a run, oldest first.
    async fn attempts(&self, id: RunId) -> Result<Vec<Attempt>>;
    /// Deletes a job's finished runs beyond the newest `keep`; returns the deleted runs, ascending
    /// by id.
    async fn prune_runs(&self, job: &str, keep: u32) -> Result<Vec<RemovedRun>>;
    /// Prunes many jobs (`(job, keep)`), skipping jobs that no longer exist. Implementations
    /// should do it in one transaction: retention of many busy jobs must not cost a commit each.
    async fn prune_many(&self, jobs: &[(String, u32)]) -> Result<Vec<RemovedRun>> {
        let mut ids = Vec::new();
        for (job, keep) in jobs {
            match self.prune_runs(job, *keep).await {
                Ok(mut d) => ids.append(&mut d),
                Err(StoreError::JobNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ids)
    }
    /// Run totals of one job (`Some(name)`; [`StoreError::JobNotFound`] if unknown) or of every
    /// job (`None`), by job name. Every job is listed, with zeros when no run of it has ended.
    /// Deleting a job forgets its totals.
    async fn run_totals(&self, job: Option<&str>) -> Result<Vec<(String, RunTotals)>>;

    /// Takes the next leader epoch: one more than any this store has handed out (the first is 1),
    /// durable before it returns. A server takes one at start-up and stamps it on every launch,
    /// so agents can refuse launches from a server that has since been replaced.
    async fn next_epoch(&self) -> Result<u64>;

    /// Creates an address pool; [`StoreError::PoolExists`] if the name is taken. The caller has
    /// validated it, also against the other pools (overlaps, segments).
    async fn create_pool(&self, spec: &PoolSpec, now: Timestamp) -> Result<PoolRecord>;
    /// One pool; [`StoreError::PoolNotFound`] if unknown.
    async fn get_pool(&self, name: &str) -> Result<PoolRecord>;
    /// Every pool, by name.
    async fn list_pools(&self) -> Result<Vec<PoolRecord>>;
    /// Deletes a pool; [`StoreError::PoolInUse`] while any address of it is claimed.
    async fn delete_pool(&self, name: &str) -> Result<()>;
    /// The claims of one pool (`Some`; [`StoreError::PoolNotFound`] if unknown) or of every pool,
    /// ordered by pool name, then address.
    async fn list_claims(&self, pool: Option<&str>) -> Result<Vec<Claim>>;
    /// Creates or replaces the claim `(claim.pool, claim.name)`. [`StoreError::PoolNotFound`] if
    /// the pool does not exist; [`StoreError::AddressTaken`] if another claim of the pool holds
    /// the same IP (a MAC follows from its IP, so
    /// it is unique too).
    async fn put_claim(&self, claim: &Claim) -> Result<()>;
    /// Removes a claim; returns it, or `None` if there was none.
    async fn remove_claim(&self, pool: &str, name: &str) -> Result<Option<Claim>>;
    /// Creates a service; [`StoreError::ServiceExists`] if the name is taken. The caller has
    /// validated it.
    async fn create_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord>;
    /// Replaces a service's spec (its version goes up by one); [`StoreError::ServiceNotFound`]
    /// if unknown.
    async fn update_service(&self, spec: &ServiceSpec, now: Timestamp) -> Result<ServiceRecord>;
    /// One service; [`StoreError::ServiceNotFound`] if unknown.
    async fn get_service(&self, name: &str) -> Result<ServiceRecord>;
    /// Every service, by name.
    async fn list_services(&self) -> Result<Vec<ServiceRecord>>;
    /// Deletes a service; [`StoreError::ServiceNotFound`] if unknown.
    async fn delete_service(&self, name: &str) -> Result<()>;

    /// Creates or replaces the record `(record.kind, record.id)`.
    async fn put_progress(&self, record: &ProgressRecord) -> Result<()>;
    /// Every record of a kind, by id.
    async fn list_progress(&self, kind: ProgressKind) -> Result<Vec<ProgressRecord>>;
    /// Deletes the records of a kind with these ids (unknown ids are skipped).
    async fn delete_progress(&self, kind: ProgressKind, ids: &[u64]) -> Result<()>;

    /// Stores a new API token; [`StoreError::TokenExists`] if its id is taken.
    async fn create_token(&self, token: &TokenRecord) -> Result<()>;
    /// Every token, revoked and expired ones included, by id.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Marks a token revoked at `now` (a second revoke keeps the first instant); returns it.
    /// [`StoreError::TokenNotFound`] if unknown.
    async fn revoke_token(&self, id: &str, now: Timestamp) -> Result<TokenRecord>;

    /// Appends an entry to the audit log (its `id` is assigned); returns the id.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<u64>;
    /// A page of the audit log, oldest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>>;
    /// Deletes audit entries older than `before`; returns how many.
    async fn prune_audit(&self, before: Timestamp) -> Result<u64>;
}

#[cfg(test)]
mod query_tests {
    use super::*;

    #[test]
    fn a_query_matches_jobs_as_the_stores_filter_them() {
        let spec = JobSpec::from_json(
            r#"{"name":"Nightly-Report","description":"Dump für Ärzte","owner":"data@example.com","schedule":"@daily","command":"true","labels":{"team":"data"}}"#,
        )
        .unwrap();
        let q = |q: &str, label: &str| JobQuery { q: Some(q.into()), label: Some(label.into()), ..JobQuery::default() }.matches(&spec);
        for (text, label, want) in [
            ("", "", true),
            ("nightly-r", "", true),
            ("REPORT", "", true),
            ("ärzte", "", true),
            ("DATA@", "team", true),
            ("report", "team=data", true),
            ("report", "team=web", false),
            ("report", "tier", false),
            ("weekly", "", false),
            ("report\ndump", "", true),
        ] {
            assert_eq!(q(text, label), want, "q={text:?} label={label:?}");
            let stored = derived::search_text(&spec).contains(&text.to_lowercase()) && (label.is_empty() || derived::label_matches(&spec, label));
            assert_eq!(stored, want, "the stores' own test agrees for q={text:?} label={label:?}");
        }
    }
}
