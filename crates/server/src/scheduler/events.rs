//! Run events for notifications: the scheduler emits one when a run succeeds, fails, will be
//! retried, runs out of retries, or misses its time. Consumers (webhooks) read them from a
//! bounded channel; a full channel drops the event and counts it in `tug_events_dropped_total`,
//! so a slow consumer never delays firing.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;
use tug_core::job::{NotifyOn, Webhook};
use tug_core::run::Run;

use crate::metrics::Metrics;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct RunEvent {
    /// What happened.
    pub event: NotifyOn,
    /// The run as it is after the event.
    pub run: Run,
    /// The job's own webhooks (the notifier adds the global ones).
    #[serde(skip)]
    pub webhooks: Vec<Webhook>,
}

/// Where the scheduler sends events.
#[derive(Clone, Default)]
pub struct EventSink {
    subscribers: Vec<mpsc::Sender<RunEvent>>,
    metrics: Option<Arc<Metrics>>,
}

impl EventSink {
    /// A sink that counts drops in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> EventSink {
        EventSink { subscribers: Vec::new(), metrics: Some(metrics) }
    }

    /// Adds a subscriber with a queue of `capacity` events.
    pub fn subscribe(&mut self, capacity: usize) -> mpsc::Receiver<RunEvent> {
        let (tx, rx) = mpsc::channel(capacity);
        self.subscribers.push(tx);
        rx
    }

    /// Sends to every subscriber without waiting.
    pub fn emit(&self, event: RunEvent) {
        for s in &self.subscribers {
            if s.try_send(event.clone()).is_err() {
                if let Some(m) = &self.metrics {
                    m.events_dropped.inc();
                }
                tracing::warn!(run = event.run.id, job = %event.run.job, "event queue full; notification dropped");
            }
        }
    }

    /// True when nobody listens (so callers can skip building events).
    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }
}
