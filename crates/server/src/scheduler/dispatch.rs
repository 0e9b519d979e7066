//! The dispatcher: sends launches and kills to the agent in the order the scheduler decided
//! them, each launch at its scheduled instant. It is its own task so the scheduler loop never
//! waits for an instant; the loop commits fires up to `LEAD` ahead and moves on.

use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use tokio::sync::mpsc;
use tug_core::protocol::ToAgent;

use super::stats::Histogram;
use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// One message for the agent, held until `at`.
pub(crate) struct Outgoing {
    /// Not before this instant (launches); `None` sends at once (kills).
    pub at: Option<Timestamp>,
    /// Record scheduled → sent lateness for it (scheduled fires only).
    pub measure: bool,
    /// The agent it goes to.
    pub to: mpsc::Sender<ToAgent>,
    pub msg: ToAgent,
}

/// What the dispatcher measured.
#[derive(Debug, Default)]
pub(crate) struct DispatchStats {
    pub sent: u64,
    pub lateness: Histogram,
}

/// Handle to the dispatcher task.
pub(crate) struct Dispatcher {
    tx: mpsc::Sender<Outgoing>,
    pub stats: Arc<Mutex<DispatchStats>>,
}

impl Dispatcher {
    /// Starts the task; it ends when the handle is dropped and the queue is sent.
    pub(crate) fn start(clock: SharedClock, metrics: Arc<Metrics>) -> (Dispatcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(65_536);
        let stats = Arc::new(Mutex::new(DispatchStats::default()));
        let task = tokio::spawn(run(clock, rx, stats.clone(), metrics));
        (Dispatcher { tx, stats }, task)
    }

    /// Queues a message (waits only when the queue is full: backpressure, never a drop).
    pub(crate) async fn send(&self, out: Outgoing) {
        if self.tx.send(out).await.is_err() {
            tracing::error!("the dispatcher has stopped; message to the agent not sent");
        }
    }
}

async fn run(
    clock: SharedClock,
    mut rx: mpsc::Receiver<Outgoing>,
    stats: Arc<Mutex<DispatchStats>>,
    metrics: Arc<Metrics>,
) {
    let mut buf = Vec::new();
    while rx.recv_many(&mut buf, 1024).await > 0 {
        for out in buf.drain(..) {
            if let Some(at) = out.at {
                wait_until(&*clock, at).await;
            }
            if out.to.send(out.msg).await.is_err() {
                tracing::error!("the agent's channel is closed; launch or kill not delivered");
                continue;
            }
            let mut st = stats.lock().unwrap_or_else(|p| p.into_inner());
            st.sent += 1;
            if out.measure
                && let Some(at) = out.at
            {
                let late = clock.now().duration_since(at);
                st.lateness.record(u64::try_from(late.as_micros()).unwrap_or(0));
                metrics.fire_lateness.observe(late.as_secs_f64().max(0.0));
            }
        }
    }
}

/// Waits for a wall-clock instant more precisely than tokio's millisecond timer: sleeps most of
/// the way, then yields until it is there.
async fn wait_until(clock: &dyn crate::clock::Clock, at: Timestamp) {
    let mut last = clock.now();
    loop {
        let left = at.duration_since(last);
        if left <= SignedDuration::ZERO {
            return;
        }
        if left > SignedDuration::from_micros(1500) {
            tokio::time::sleep((left - SignedDuration::from_millis(1)).unsigned_abs()).await;
        } else {
            tokio::task::yield_now().await;
        }
        let now = clock.now();
        if now == last {
            // A clock that stands still while we yield (tokio's paused time): let the timer move it.
            tokio::time::sleep(left.unsigned_abs()).await;
            return;
        }
        last = now;
    }
}
