//! Chronos's per-job numbers from the run history: success and error counts, run-time
//! percentiles (`/scheduler/stats/*`, `/scheduler/job/stat/*`) and the task history.
//!
//! Success and error counts come from the store's run totals, which survive pruning. Run times
//! and the task history come from the runs the store still holds (`keep_runs`, default 100):
//! Chronos's own histograms are a sample of recent runs as well.

use std::collections::HashMap;

use jiff::Timestamp;
use serde_json::{json, Value};
use tug_core::run::{Run, RunState};
use tug_store::{JobRecord, RunQuery, Store, StoreError};

/// The percentile names Chronos serves under `/scheduler/stats/{name}`, with their quantile
/// (`None`: the mean).
pub const PERCENTILES: &[(&str, Option<f64>)] = &[
    ("99thPercentile", Some(0.99)),
    ("98thPercentile", Some(0.98)),
    ("95thPercentile", Some(0.95)),
    ("75thPercentile", Some(0.75)),
    ("median", Some(0.5)),
    ("mean", None),
];

/// The counts a Chronos job document shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    /// Runs that succeeded, ever (pruned ones included).
    pub success_count: u64,
    /// Runs that failed, timed out or were lost (after their retries), ever.
    pub error_count: u64,
    /// Failed runs newer than the newest success (among the retained runs).
    pub errors_since_last_success: u64,
}

/// The counts of `jobs`, by name: totals from the store, and for the jobs
/// whose latest end was a failure, the failures since their last success from the run history.
pub async fn counts(store: &dyn Store, jobs: &[JobRecord]) -> Result<HashMap<String, Counts>, StoreError> {
    // A page of a search asks per job; a full listing counts every job in one query. A job
    // deleted since `jobs` was read just shows zeros.
    let totals = if jobs.len() <= 50 {
        let mut v = Vec::with_capacity(jobs.len());
        for j in jobs {
            match store.run_totals(Some(&j.spec.name)).await {
                Err(StoreError::JobNotFound(_)) => {}
                r => v.extend(r?),
            }
        }
        v
    } else {
        store.run_totals(None).await?
    };
    let mut out: HashMap<String, Counts> = totals
        .into_iter()
        .map(|(n, t)| (n, Counts { success_count: t.succeeded, error_count: t.failed, errors_since_last_success: 0 }))
        .collect();
    for j in jobs {
        let failing = match (j.last_success_at, j.last_failure_at) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(s), Some(f)) => f > s,
        };
        if failing && let Some(c) = out.get_mut(&j.spec.name) {
            let page = match store.list_runs(&j.spec.name, &RunQuery { limit: 1000, cursor: None, state: None }).await {
                Err(StoreError::JobNotFound(_)) => continue,
                r => r?,
            };
            c.errors_since_last_success = page
                .items
                .iter()
                .take_while(|r| r.state != RunState::Succeeded)
                .filter(|r| matches!(r.state, RunState::Failed | RunState::TimedOut | RunState::Lost))
                .count() as u64;
        }
    }
    Ok(out)
}

/// Run times and recent runs of one job.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Run times of succeeded runs in milliseconds, ascending.
    pub durations_ms: Vec<f64>,
    /// Whether a run is pending (`queued`) or starting/running (`running`).
    pub state: &'static str,
    /// The newest runs, newest first (for the task history).
    pub recent: Vec<Run>,
}

/// Reads a job's retained runs and sums them up.
pub async fn summarize(store: &dyn Store, job: &str) -> Result<Summary, StoreError> {
    let mut s = Summary { state: "idle", ..Summary::default() };
    let mut cursor = None;
    loop {
        let page = store.list_runs(job, &RunQuery { limit: 1000, cursor, state: None }).await?;
        for r in &page.items {
            match r.state {
                RunState::Succeeded => {
                    if let (Some(a), Some(b)) = (r.started_at, r.finished_at) {
                        s.durations_ms.push(b.duration_since(a).as_secs_f64() * 1000.0);
                    }
                }
                RunState::Starting | RunState::Running => s.state = "running",
                RunState::Pending if s.state == "idle" => s.state = "queued",
                _ => {}
            }
            if r.state != RunState::Skipped && s.recent.len() < 100 {
                s.recent.push(r.clone());
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    s.durations_ms.sort_by(f64::total_cmp);
    Ok(s)
}

/// A quantile of sorted values the way Dropwizard's snapshot computes it (0 when empty).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let pos = q * (n as f64 + 1.0);
    if pos < 1.0 {
        return sorted[0];
    }
    if pos >= n as f64 {
        return sorted[n - 1];
    }
    let lower = sorted[pos as usize - 1];
    let upper = sorted[pos as usize];
    lower + (pos - pos.floor()) * (upper - lower)
}

/// The mean (0 when empty).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// One named statistic in milliseconds; `None` for an unknown name.
pub fn stat(s: &Summary, name: &str) -> Option<f64> {
    let (_, q) = PERCENTILES.iter().find(|(n, _)| *n == name)?;
    Some(match q {
        Some(q) => quantile(&s.durations_ms, *q),
        None => mean(&s.durations_ms),
    })
}

/// `GET /scheduler/job/stat/{name}`: the histogram (milliseconds) and the task history.
pub fn job_stat(s: &Summary) -> Value {
    let d = &s.durations_ms;
    let history: Vec<Value> = s.recent.iter().map(task_stat).collect();
    json!({
        "histogram": {
            "75thPercentile": quantile(d, 0.75),
            "95thPercentile": quantile(d, 0.95),
            "98thPercentile": quantile(d, 0.98),
            "99thPercentile": quantile(d, 0.99),
            "median": quantile(d, 0.5),
            "mean": mean(d),
            "count": d.len(),
        },
        "taskStatHistory": history,
    })
}

fn task_stat(r: &Run) -> Value {
    let fmt = |t: Option<Timestamp>| t.map_or_else(|| "N/A".to_string(), |t| t.strftime("%m/%d/%y %H:%M:%S").to_string());
    let status = match r.state {
        RunState::Succeeded => "SUCCESS",
        RunState::Starting | RunState::Running => "RUNNING",
        RunState::Pending => "IDLE",
        _ => "FAIL",
    };
    let mut v = json!({
        "taskId": format!("ct:{}:{}:{}:", r.scheduled_at.as_millisecond(), r.attempt.saturating_sub(1), r.job),
        "jobName": r.job,
        "slaveId": r.agent.clone().unwrap_or_default(),
        "startTime": fmt(r.started_at),
        "endTime": fmt(r.finished_at),
        "status": status,
    });
    if let (Some(a), Some(b)) = (r.started_at, r.finished_at) {
        let secs = b.duration_since(a).as_secs().max(0);
        let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
        let mut out = String::new();
        for (n, u) in [(d, "d"), (h, "h"), (m, "m")] {
            if n > 0 {
                out += &format!("{n}{u}");
            }
        }
        out += &format!("{s}s");
        v["duration"] = json!(out);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_like_dropwizard() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.5), 2.5);
        assert_eq!(quantile(&v, 0.99), 4.0);
        assert_eq!(quantile(&v, 0.1), 1.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(mean(&v), 2.5);
    }
}
