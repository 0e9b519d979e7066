//! Webhook notifications. The notifier reads run events from the scheduler's [`EventSink`]
//! queue, picks the webhooks that asked for each event (the server's global ones and the job's
//! own), and POSTs a JSON [`Payload`] to each.
//!
//! ```text
//! scheduler ──emit (never waits)──▶ bounded queue ──▶ notifier loop ──spawn──▶ delivery task
//!                 full: tug_events_dropped_total        no permit:            per event: log tail,
//!                                                        result="dropped"      then every webhook
//!                                                                              at once, each with
//!                                                                              retries + backoff
//! ```
//!
//! The loop itself never waits on I/O: it takes a permit per delivery (a global bound and one per
//! endpoint, so one dead receiver cannot use up the budget of the others) and hands the work to a
//! task. Every delivery ends in `tug_webhook_deliveries_total{result="ok|failed|dropped"}`.
//!
//! Delivery is at least once (a receiver that answers too slowly may see an attempt twice; the
//! `X-Tug-Delivery` header names the delivery) and unordered: each event goes out on its own, so
//! a run's `retries_exhausted` may arrive before its `failure`.
//!
//! [`EventSink`]: crate::scheduler::events::EventSink

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tug_core::job::Webhook;

use crate::clock::SharedClock;
use crate::logs::RunLogs;
use crate::metrics::Metrics;
use crate::scheduler::events::RunEvent;

pub mod deliver;
pub mod payload;

pub use deliver::{DeliveryConfig, Outcome};
pub use payload::Payload;

/// A global webhook that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The URL does not parse, or is not http(s).
    #[error("invalid webhook URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it, and what to give instead.
        reason: String,
    },
    /// The TLS settings (the webhook CA file) cannot be used.
    #[error("webhook TLS settings")]
    Tls(#[source] tug_tls::TlsError),
    /// The HTTP client could not be built.
    #[error("building the webhook HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The events-queue capacity the notifier should subscribe with: deep enough for bursts (a tick
/// that fails thousands of runs), small enough to bound memory (each event holds a run).
pub const QUEUE_CAPACITY: usize = 16_384;

/// Sends webhooks for run events.
pub struct Notifier {
    shared: Arc<Shared>,
    global_limit: Arc<Semaphore>,
    per_endpoint: HashMap<String, Arc<Semaphore>>,
}

/// What delivery tasks share.
struct Shared {
    global: Vec<Webhook>,
    http: reqwest::Client,
    logs: RunLogs,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    cfg: DeliveryConfig,
}

/// The permits one delivery holds until it ends.
struct Permits {
    _global: OwnedSemaphorePermit,
    _endpoint: OwnedSemaphorePermit,
}

impl Notifier {
    /// A notifier for the server-wide `global` webhooks (checked here) plus each job's own.
    pub fn new(
        global: Vec<Webhook>,
        cfg: DeliveryConfig,
        logs: RunLogs,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Result<Notifier, NotifyError> {
        for w in &global {
            parse_url(&w.url)?;
        }
        let tls = cfg.tls.for_http().map_err(NotifyError::Tls)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(concat!("tugboat/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(cfg.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(NotifyError::Client)?;
        let global_limit = Arc::new(Semaphore::new(cfg.max_pending.max(1)));
        let shared = Arc::new(Shared { global, http, logs, clock, metrics, cfg });
        Ok(Notifier { shared, global_limit, per_endpoint: HashMap::new() })
    }

    /// Handles events until `shutdown` completes or the queue closes; then sends what is still
    /// queued and gives deliveries under way `shutdown_grace` to finish.
    pub async fn run(mut self, mut events: mpsc::Receiver<RunEvent>, shutdown: impl Future<Output = ()>) {
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.handle(ev, &mut tasks),
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        // The scheduler has stopped: what it emitted last (runs stopped by the shutdown) is queued.
        while let Ok(ev) = events.try_recv() {
            self.handle(ev, &mut tasks);
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.shared.cfg.shutdown_grace, drain).await.is_err() {
            let left = self.shared.cfg.max_pending.max(1) - self.global_limit.available_permits();
            tracing::warn!(deliveries = left, "webhook deliveries still under way at shutdown; abandoned");
            for _ in 0..left {
                self.shared.metrics.webhook_delivery("dropped");
            }
            tasks.abort_all();
        }
    }

    /// Starts the deliveries of one event, or counts them dropped when over the bounds.
    fn handle(&mut self, ev: RunEvent, tasks: &mut JoinSet<()>) {
        let mut targets: Vec<(reqwest::Url, Permits)> = Vec::new();
        let shared = self.shared.clone();
        let wanted = shared.global.iter().chain(ev.webhooks.iter()).filter(|w| w.on.contains(&ev.event));
        for w in wanted {
            let url = match parse_url(&w.url) {
                Ok(u) => u,
                Err(e) => {
                    tracing::warn!(run = ev.run.id, job = %ev.run.job, error = %e, "webhook not sent");
                    shared.metrics.webhook_delivery("failed");
                    continue;
                }
            };
            // The same URL listed globally and on the job gets one delivery.
            if targets.iter().any(|(u, _)| *u == url) {
                continue;
            }
            match self.permits(&url) {
                Some(p) => targets.push((url, p)),
                None => {
                    tracing::warn!(
                        run = ev.run.id, job = %ev.run.job, endpoint = %deliver::endpoint(&url), event = ?ev.event,
                        "too many webhook deliveries under way; this one is dropped",
                    );
                    shared.metrics.webhook_delivery("dropped");
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        shared.metrics.webhook_pending.inc_by(targets.len() as i64);
        tasks.spawn(async move {
            // A payload without a tail beats no payload.
            let tail = match shared.logs.tail(ev.run.id, ev.run.agent.as_deref(), shared.cfg.log_tail_bytes).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(run = ev.run.id, error = %e, "reading the run's log for a webhook failed; sending without it");
                    None
                }
            };
            let payload = Payload::new(ev.event, &ev.run, tail);
            let sends = targets.into_iter().map(|(url, permits)| {
                let shared = shared.clone();
                let mut payload = payload.clone();
                async move {
                    let m = &shared.metrics;
                    let outcome = deliver::deliver(&shared.http, &url, &mut payload, &shared.clock, &shared.cfg, || {
                        m.webhook_retries.inc();
                    })
                    .await;
                    drop(permits);
                    m.webhook_pending.dec();
                    report(&url, &payload, outcome, m);
                }
            });
            futures::future::join_all(sends).await;
        });
    }

    /// A global and a per-endpoint permit, or `None` when either bound is reached.
    fn permits(&mut self, url: &reqwest::Url) -> Option<Permits> {
        let global = self.global_limit.clone().try_acquire_owned().ok()?;
        let per = self.shared.cfg.max_pending_per_endpoint.max(1);
        if self.per_endpoint.len() >= 4096 {
            // Forget idle endpoints so the map stays as small as the set of busy ones.
            self.per_endpoint.retain(|_, s| s.available_permits() < per);
        }
        let sem = self.per_endpoint.entry(deliver::endpoint(url)).or_insert_with(|| Arc::new(Semaphore::new(per)));
        let endpoint = sem.clone().try_acquire_owned().ok()?;
        Some(Permits { _global: global, _endpoint: endpoint })
    }
}

/// Counts and logs how a delivery ended.
fn report(url: &reqwest::Url, p: &Payload, outcome: Outcome, metrics: &Metrics) {
    match outcome {
        Outcome::Delivered { attempts } => {
            metrics.webhook_delivery("ok");
            tracing::debug!(endpoint = %deliver::endpoint(url), run = p.run.id, job = %p.job, attempts, "webhook delivered");
        }
        Outcome::Failed { attempts, error } => {
            metrics.webhook_delivery("failed");
            tracing::warn!(
                endpoint = %deliver::endpoint(url), run = p.run.id, job = %p.job, event = ?p.event, attempts, %error,
                "webhook delivery failed; giving up",
            );
        }
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, NotifyError> {
    let invalid = |reason: String| NotifyError::InvalidUrl { url: url.to_owned(), reason };
    let want = "give an absolute http:// or https:// URL";
    let u = reqwest::Url::parse(url).map_err(|e| invalid(format!("{e}; {want}")))?;
    match u.scheme() {
        "http" | "https" if u.host_str().is_some() => Ok(u),
        "http" | "https" => Err(invalid(format!("no host; {want}"))),
        s => Err(invalid(format!("scheme {s:?} is not supported; {want}"))),
    }
}
