//! Prometheus metrics. The scheduler and dispatcher update these families directly (atomics,
//! no locks on the hot path); `/metrics` encodes the registry in the text format.
//!
//! Cardinality is bounded by design, so a server with 100,000 jobs exports as many series as one
//! with ten (bounded by routes, states and histogram buckets):
//! - no family in [`Metrics`] is labelled per job;
//! - API latency is labelled by route *pattern* (`/api/v1/jobs/{name}`), method and status class;
//! - per-job run counts ([`PerJobMetrics`], `tug_job_runs_finished_total{job,state}`) are opt-in
//!   and capped: the first `limit` jobs to finish a run get their own label, every later job is
//!   counted under `job="_other"`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tug_core::job::NotifyOn;

use crate::scheduler::events::RunEvent;

/// A run state or trigger as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state (`succeeded`, `failed`, ...).
    pub state: String,
}

/// Labels of an API request: the route pattern, not the path, so ids and names in URLs do not
/// create series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// The matched route pattern (`/api/v1/jobs/{name}`), or `unmatched` for 404s from the fallback.
    pub route: String,
    /// The HTTP method (`GET`, `POST`, ...; `other` for anything unusual).
    pub method: &'static str,
    /// The status class: `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: &'static str,
}

/// The outcome of a webhook delivery as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` (a 2xx answer), `failed` (gave up after retries, or a permanent error) or `dropped`
    /// (never attempted: the notifier was at its bound, or shut down first).
    pub result: &'static str,
}

/// A job and a final run state, for the opt-in per-job family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobStateLabel {
    /// The job's name, or `_other` past the cap.
    pub job: String,
    /// The final state.
    pub state: String,
}

/// The metric families Tugboat exports.
pub struct Metrics {
    /// Runs created by a schedule (on time or backfilled).
    pub fires: Counter,
    /// Scheduled instant → launch sent, in seconds.
    pub fire_lateness: Histogram,
    /// Fires that missed their window.
    pub misfires: Counter,
    /// Fires the store could not write when they were due (a full disk), handled as misfires
    /// once it could; each is counted in `misfires` too.
    pub unwritten_fires: Counter,
    /// Jobs whose due fires are held because the store could not write them.
    pub fires_held: Gauge,
    /// Fires skipped by the `forbid` concurrency policy.
    pub concurrency_skips: Counter,
    /// Runs that reached a final state, by state.
    pub runs_finished: Family<StateLabel, Counter>,
    /// Start → end of finished runs, in seconds.
    pub run_duration: Histogram,
    /// Retries scheduled.
    pub retries: Counter,
    /// Runs pending, starting or running.
    pub runs_in_flight: Gauge,
    /// Jobs loaded.
    pub jobs: Gauge,
    /// Notification events that could not be queued because the notifier was behind.
    pub events_dropped: Counter,
    /// Agents known to the server, by state (`up`, `draining`, `lost`), set by the scheduler from
    /// its agent registry.
    pub agents: Family<StateLabel, Gauge>,
    /// Warm containers held by agents' container runtimes. The process runtime holds none, so this
    /// stays 0 until a docker runtime reports its containers.
    pub warm_containers: Gauge,
    /// API request latency (request received → response headers), by route pattern, method and
    /// status class.
    pub api_request_duration: Family<ApiLabels, Histogram, fn() -> Histogram>,
    /// Webhook deliveries by final outcome (one per event and webhook, however many attempts).
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    /// Webhook attempts that failed and were retried.
    pub webhook_retries: Counter,
    /// Webhook deliveries in progress (sending or waiting to retry).
    pub webhook_pending: Gauge,
    registry: Registry,
}

/// Buckets of API latency: 100 µs .. ~13 s.
fn api_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tug");
        let m = Metrics {
            fires: Counter::default(),
            // 50 µs .. ~100 s
            fire_lateness: Histogram::new(exponential_buckets(0.000_05, 2.0, 22)),
            misfires: Counter::default(),
            unwritten_fires: Counter::default(),
            fires_held: Gauge::default(),
            concurrency_skips: Counter::default(),
            runs_finished: Family::default(),
            // 1 ms .. ~9 h
            run_duration: Histogram::new(exponential_buckets(0.001, 2.0, 25)),
            retries: Counter::default(),
            runs_in_flight: Gauge::default(),
            jobs: Gauge::default(),
            events_dropped: Counter::default(),
            agents: Family::default(),
            warm_containers: Gauge::default(),
            api_request_duration: Family::new_with_constructor(api_histogram as fn() -> Histogram),
            webhook_deliveries: Family::default(),
            webhook_retries: Counter::default(),
            webhook_pending: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("fires", "Runs created by schedules", m.fires.clone());
        registry.register("fire_lateness_seconds", "Scheduled instant to launch sent", m.fire_lateness.clone());
        registry.register("misfires", "Fires that missed their window", m.misfires.clone());
        registry.register(
            "unwritten_fires",
            "Fires the store could not write when due (full disk), handled as misfires once it could",
            m.unwritten_fires.clone(),
        );
        registry.register("fires_held", "Jobs whose due fires wait for the store to accept writes", m.fires_held.clone());
        registry.register("concurrency_skips", "Fires skipped by concurrency policy forbid", m.concurrency_skips.clone());
        registry.register("runs_finished", "Runs that reached a final state", m.runs_finished.clone());
        registry.register("run_duration_seconds", "Start to end of finished runs", m.run_duration.clone());
        registry.register("retries", "Retries scheduled", m.retries.clone());
        registry.register("runs_in_flight", "Runs pending, starting or running", m.runs_in_flight.clone());
        registry.register("jobs", "Jobs loaded by the scheduler", m.jobs.clone());
        registry.register("events_dropped", "Notification events dropped because the notifier was behind", m.events_dropped.clone());
        registry.register("agents", "Agents known to the server, by state", m.agents.clone());
        registry.register("warm_containers", "Warm containers held by agents' container runtimes", m.warm_containers.clone());
        registry.register(
            "api_request_duration_seconds",
            "API requests, received to response headers, by route pattern, method and status class",
            m.api_request_duration.clone(),
        );
        registry.register("webhook_deliveries", "Webhook deliveries by outcome: ok, failed, dropped", m.webhook_deliveries.clone());
        registry.register("webhook_retries", "Webhook attempts that failed and were retried", m.webhook_retries.clone());
        registry.register("webhook_pending", "Webhook deliveries sending or waiting to retry", m.webhook_pending.clone());
        // Pre-create the outcomes so dashboards see zeros rather than no data.
        for result in ["ok", "failed", "dropped"] {
            let _ = m.webhook_deliveries.get_or_create(&ResultLabel { result });
        }
        Metrics { registry, ..m }
    }

    /// Like [`Metrics::new`], plus the opt-in per-job family when `per_job` is given.
    pub fn with_per_job(per_job: Option<&PerJobMetrics>) -> Metrics {
        let mut m = Metrics::new();
        if let Some(p) = per_job {
            m.registry.register(
                "job_runs_finished",
                "Runs that reached a final state, per job (opt-in; capped, later jobs under job=\"_other\")",
                p.family.clone(),
            );
        }
        m
    }

    /// Counts one delivery outcome.
    pub fn webhook_delivery(&self, result: &'static str) {
        self.webhook_deliveries.get_or_create(&ResultLabel { result }).inc();
    }

    /// The registry, to add more families (API latency, agents) or encode.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Adds the server group's families: writes refused by the fence, and whether this server
    /// leads (read when scraped).
    pub fn register_cluster(&mut self, group: std::sync::Arc<crate::cluster::Group>) {
        use prometheus_client::collector::Collector;
        use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        #[derive(Debug)]
        struct GroupCollector(std::sync::Arc<crate::cluster::Group>);
        impl Collector for GroupCollector {
            fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                let fenced = ConstCounter::new(self.0.store().fenced_writes());
                let e = encoder.encode_descriptor(
                    "store_fenced_writes",
                    "Store writes refused because this server was no longer the leader",
                    None,
                    fenced.metric_type(),
                )?;
                fenced.encode(e)?;
                let leader = ConstGauge::new(i64::from(self.0.role() == crate::cluster::Role::Leader));
                let e = encoder.encode_descriptor("leader", "1 while this server leads its group", None, leader.metric_type())?;
                leader.encode(e)
            }
        }
        self.registry.register_collector(Box::new(GroupCollector(group)));
    }

    /// Encodes every family in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Opt-in per-job run counts, fed from the scheduler's run events (success and failure, which
/// cover every final state but `skipped`).
///
/// Bounded: the first `limit` jobs to finish a run get their own `job` label; every later job is
/// counted under `job="_other"`. Labels of deleted jobs stay until restart. Events the event sink
/// dropped under overload (`tug_events_dropped_total`) are missing here too, so the numbers are
/// exact only while that counter stands still; `tug_runs_finished_total` is always exact.
#[derive(Clone)]
pub struct PerJobMetrics {
    family: Family<JobStateLabel, Counter>,
    seen: Arc<Mutex<HashSet<String>>>,
    limit: usize,
}

impl PerJobMetrics {
    /// The label used for jobs past the cap.
    pub const OTHER: &'static str = "_other";

    /// Per-job counts for at most `limit` jobs.
    pub fn new(limit: usize) -> PerJobMetrics {
        PerJobMetrics { family: Family::default(), seen: Arc::default(), limit }
    }

    /// Counts a run of `job` that ended in `state`.
    pub fn record(&self, job: &str, state: &str) {
        let label = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.contains(job) {
                job.to_owned()
            } else if seen.len() < self.limit {
                seen.insert(job.to_owned());
                job.to_owned()
            } else {
                Self::OTHER.to_owned()
            }
        };
        self.family.get_or_create(&JobStateLabel { job: label, state: state.to_owned() }).inc();
    }

    /// Counts final runs from `events` until the channel closes.
    pub async fn run(self, mut events: mpsc::Receiver<RunEvent>) {
        while let Some(ev) = events.recv().await {
            if matches!(ev.event, NotifyOn::Success | NotifyOn::Failure) {
                self.record(&ev.run.job, ev.run.state.as_str());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_job_labels_are_capped() {
        let p = PerJobMetrics::new(2);
        let m = Metrics::with_per_job(Some(&p));
        for job in ["a", "b", "c", "d", "a"] {
            p.record(job, "succeeded");
        }
        let text = m.encode();
        assert!(text.contains(r#"tug_job_runs_finished_total{job="a",state="succeeded"} 2"#), "{text}");
        assert!(text.contains(r#"tug_job_runs_finished_total{job="b",state="succeeded"} 1"#), "{text}");
        assert!(text.contains(r#"tug_job_runs_finished_total{job="_other",state="succeeded"} 2"#), "{text}");
        assert!(!text.contains(r#"job="c""#), "{text}");
    }

    #[test]
    fn per_job_family_is_absent_by_default() {
        assert!(!Metrics::new().encode().contains("tug_job_runs_finished"));
    }
}
