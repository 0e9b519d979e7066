//! Prometheus metrics. The scheduler and dispatcher update these families directly (atomics,
//! no locks on the hot path); `/metrics` encodes the registry in the text format.
//!
//! No family is labelled per job: at 100,000 jobs that would explode cardinality.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A run state or trigger as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state (`succeeded`, `failed`, ...).
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
    registry: Registry,
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
            concurrency_skips: Counter::default(),
            runs_finished: Family::default(),
            // 1 ms .. ~9 h
            run_duration: Histogram::new(exponential_buckets(0.001, 2.0, 25)),
            retries: Counter::default(),
            runs_in_flight: Gauge::default(),
            jobs: Gauge::default(),
            events_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("fires", "Runs created by schedules", m.fires.clone());
        registry.register("fire_lateness_seconds", "Scheduled instant to launch sent", m.fire_lateness.clone());
        registry.register("misfires", "Fires that missed their window", m.misfires.clone());
        registry.register("concurrency_skips", "Fires skipped by concurrency policy forbid", m.concurrency_skips.clone());
        registry.register("runs_finished", "Runs that reached a final state", m.runs_finished.clone());
        registry.register("run_duration_seconds", "Start to end of finished runs", m.run_duration.clone());
        registry.register("retries", "Retries scheduled", m.retries.clone());
        registry.register("runs_in_flight", "Runs pending, starting or running", m.runs_in_flight.clone());
        registry.register("jobs", "Jobs loaded by the scheduler", m.jobs.clone());
        registry.register("events_dropped", "Notification events dropped because the notifier was behind", m.events_dropped.clone());
        Metrics { registry, ..m }
    }

    /// The registry, to add more families (API latency, agents) or encode.
    pub fn registry(&self) -> &Registry {
        &self.registry
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
