//! The etcd key layout: every key Tugboat writes, under one prefix (`/tug` unless the store URL
//! names another), so several installations can share an etcd cluster.
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `P/meta/version` | the data version, `2` | the first server to start |
//! | `P/meta/epoch` | the last leader epoch handed out | `next_epoch` |
//! | `P/meta/run-id` | the last run id handed out | `commit_fires` |
//! | `P/meta/audit-id` | the last audit entry id | `append_audit` |
//! | `P/meta/proxy-secret` | the secret followers prove themselves with to the leader (audit of passed-on writes) | the first server to start |
//! | `P/job/NAME` | the spec, its version, created and updated instants (JSON) | job writes |
//! | `P/stat/NAME` | the fire cursor, last run/success/failure instants, run totals, the ids of the job's unfinished runs (JSON) | with every run write of the job |
//! | `P/key/NAME/MS` | the run id of run key `(NAME, scheduled_at)`; `MS` is the key's millisecond | `commit_fires` |
//! | `P/run/NAME/ID` | the run (JSON, no output: logs stay on agents) | `commit_fires`, `save_runs` |
//! | `P/id/ID` | the run's job name, to find a run by id | `commit_fires` |
//! | `P/attempt/ID/N` | a finished attempt of a run (JSON) | `save_runs` |
//! | `P/pool/NAME` | an address pool (JSON) | pool writes |
//! | `P/claim/POOL/IP` | a claimed address; `IP` as a 10-digit number, so claims list by address | claim writes |
//! | `P/service/NAME` | a service: its spec, version, created and updated instants (JSON) | service writes |
//! | `P/progress/KIND/ID` | a release (`KIND` = `release`) or scale operation (`operation`) in progress or kept for reading: the scheduler's record (JSON) | the leader's scheduler |
//! | `P/token/ID` | an API token with its hash, never the secret (JSON) | token writes |
//! | `P/audit/ID` | an audit log entry (JSON) | `append_audit` |
//! | `P/leader/…` | the leader election's keys, one per candidate, each on its lease | the servers |
//!
//! Numbers in keys (`ID`, `N`, `MS`, `IP`) are zero-padded decimals, so a key range is a numeric
//! range and `P/run/NAME/` lists a job's runs by id. Job names have no `/`, so `P/run/a/` holds
//! the runs of `a` only. `MS` is shifted by 2^63, so instants before 1970 sort before those after.
//!
//! Why this shape: a tick's fires touch only the keys of the fired runs, their jobs' `stat` keys
//! and the id counter, so one transaction writes them; `stat` keeps what SQLite derives with a
//! query (cursor, totals), so reading a job is one key, not a scan of its runs; a job's run
//! history is one range read, newest first, a page at a time. A new run costs three keys (`key`,
//! `run`, `id`) and a run change one (`run`): the unfinished runs are listed in their job's
//! `stat`, which the same transaction writes anyway, rather than in a key per run.
//!
//! Data version 1 kept a `P/active/ID` key per unfinished run; a server of this version refuses
//! it (start on an empty prefix).

use tug_core::run::RunId;

/// The data version this build reads and writes.
pub const DATA_VERSION: u32 = 2;

/// The keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// `n` zero-padded so that keys order as numbers.
fn num(n: u64) -> String {
    format!("{n:020}")
}

/// The first key after every key that starts with `prefix`: the end of a prefix range.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Keys {
    /// Keys under `prefix` (no trailing `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.trim_end_matches('/').to_owned() }
    }

    fn key(&self, rest: std::fmt::Arguments<'_>) -> String {
        format!("{}/{}", self.prefix, rest)
    }

    pub fn version(&self) -> String {
        self.key(format_args!("meta/version"))
    }
    pub fn epoch(&self) -> String {
        self.key(format_args!("meta/epoch"))
    }
    pub fn run_id(&self) -> String {
        self.key(format_args!("meta/run-id"))
    }
    pub fn proxy_secret(&self) -> String {
        self.key(format_args!("meta/proxy-secret"))
    }
    pub fn audit_id(&self) -> String {
        self.key(format_args!("meta/audit-id"))
    }
    pub fn jobs(&self) -> String {
        self.key(format_args!("job/"))
    }
    pub fn job(&self, name: &str) -> String {
        self.key(format_args!("job/{name}"))
    }
    pub fn stats(&self) -> String {
        self.key(format_args!("stat/"))
    }
    pub fn stat(&self, name: &str) -> String {
        self.key(format_args!("stat/{name}"))
    }
    pub fn run_keys(&self, job: &str) -> String {
        self.key(format_args!("key/{job}/"))
    }
    /// The key of run key `(job, ms)`.
    pub fn run_key(&self, job: &str, ms: i64) -> String {
        self.key(format_args!("key/{job}/{}", num((ms as u64) ^ (1 << 63))))
    }
    pub fn runs(&self, job: &str) -> String {
        self.key(format_args!("run/{job}/"))
    }
    pub fn run(&self, job: &str, id: RunId) -> String {
        self.key(format_args!("run/{job}/{}", num(id)))
    }
    pub fn id(&self, id: RunId) -> String {
        self.key(format_args!("id/{}", num(id)))
    }
    pub fn attempts(&self, id: RunId) -> String {
        self.key(format_args!("attempt/{}/", num(id)))
    }
    pub fn attempt(&self, id: RunId, n: u32) -> String {
        self.key(format_args!("attempt/{}/{n:010}", num(id)))
    }
    pub fn pools(&self) -> String {
        self.key(format_args!("pool/"))
    }
    pub fn pool(&self, name: &str) -> String {
        self.key(format_args!("pool/{name}"))
    }
    /// Every claim (`None`) or one pool's.
    pub fn claims(&self, pool: Option<&str>) -> String {
        match pool {
            Some(pool) => self.key(format_args!("claim/{pool}/")),
            None => self.key(format_args!("claim/")),
        }
    }
    pub fn claim(&self, pool: &str, ip: std::net::Ipv4Addr) -> String {
        self.key(format_args!("claim/{pool}/{:010}", u32::from(ip)))
    }
    pub fn services(&self) -> String {
        self.key(format_args!("service/"))
    }
    pub fn service(&self, name: &str) -> String {
        self.key(format_args!("service/{name}"))
    }
    pub fn progresses(&self, kind: crate::ProgressKind) -> String {
        self.key(format_args!("progress/{}/", kind.as_str()))
    }
    pub fn progress(&self, kind: crate::ProgressKind, id: u64) -> String {
        self.key(format_args!("progress/{}/{}", kind.as_str(), num(id)))
    }
    pub fn tokens(&self) -> String {
        self.key(format_args!("token/"))
    }
    pub fn token(&self, id: &str) -> String {
        self.key(format_args!("token/{id}"))
    }
    pub fn audits(&self) -> String {
        self.key(format_args!("audit/"))
    }
    pub fn audit(&self, id: u64) -> String {
        self.key(format_args!("audit/{}", num(id)))
    }
    /// The election's prefix: each candidate's key under it.
    pub fn leader(&self) -> String {
        self.key(format_args!("leader"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_keys_order_by_instant_across_1970() {
        let k = Keys::new("/t/");
        assert!(k.run_key("j", -5) < k.run_key("j", 0));
        assert!(k.run_key("j", 0) < k.run_key("j", 7));
        assert!(k.run_key("j", 9) < k.run_key("j", 10));
        assert_eq!(k.job("j"), "/t/job/j");
    }

    #[test]
    fn prefix_end_is_past_every_key_of_the_prefix() {
        assert_eq!(prefix_end(b"/t/run/a/"), b"/t/run/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert!(prefix_end(Keys::new("/t").stats().as_bytes()) > Keys::new("/t").stat("zzz").into_bytes());
    }
}
