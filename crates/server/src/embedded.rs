//! `tug up`: the scheduler, its API, the embedded SQLite store and (when the caller supplies one)
//! a local agent in a single process. The server knows agents only as the gateway sees them:
//! the local agent gets the same command and report channels a remote one gets. Shutdown stops firing and API writes at once, lets the agent stop its runs (SIGTERM,
//! grace, SIGKILL) and record how they ended, then gives the webhooks of those last events a
//! short grace to go out, then returns.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use futures::future::BoxFuture;
use tug_core::placement::Capacity;
use tug_core::protocol::ToAgent;
use tug_core::job::Webhook;
use tug_logs::LogFiles;
use tug_store::sqlite::SqliteStore;
use tug_store::Store;

use crate::api::{self, AppState};
use crate::clock::SharedClock;
use crate::logs::RunLogs;
use crate::metrics::{Metrics, PerJobMetrics};
use crate::notify::{self, DeliveryConfig, Notifier};
use crate::scheduler::events::EventSink;
use crate::scheduler::agents::Registration;
use crate::scheduler::{self, FromAgent, Hooks, SchedulerConfig, SchedulerHandle};

/// Settings of an embedded server.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Where the database and logs live.
    pub data_dir: PathBuf,
    /// Finished runs kept per job.
    pub keep_runs: u32,
    /// Server-wide webhooks, called for every job's runs (each job may add its own).
    pub webhooks: Vec<Webhook>,
    /// Timeouts, retries and bounds of webhook deliveries.
    pub webhook_delivery: DeliveryConfig,
    /// Export `tug_job_runs_finished_total{job,state}`. Off by default: a label per job is a
    /// series per job and state, too many at 100,000 jobs.
    pub per_job_metrics: bool,
    /// With `per_job_metrics`, the most jobs that get their own label; the rest are counted
    /// under `job="_other"`.
    pub per_job_metrics_limit: usize,
    /// An agent silent this long is lost; its runs are lost and retried elsewhere.
    pub agent_timeout: Duration,
    /// Events the stream keeps for clients that resume (`Last-Event-ID`).
    pub event_buffer: usize,
    /// Tokens, browser guards, limits and audit retention of the API.
    pub auth: crate::auth::AuthConfig,
    /// The shortest time between two fires a job may ask for (0: no limit).
    pub min_interval: Duration,
    /// Serve the API over TLS with these settings (`--tls-cert`, `--tls-key`).
    pub api_tls: Option<tug_tls::ServerTls>,
    /// The server group this server leads (`None`: a server on its own).
    pub cluster: Option<Arc<crate::cluster::Group>>,
}

impl EmbeddedConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> EmbeddedConfig {
        EmbeddedConfig {
            data_dir: data_dir.into(),
            keep_runs: 100,
            webhooks: Vec::new(),
            webhook_delivery: DeliveryConfig::default(),
            per_job_metrics: false,
            per_job_metrics_limit: 1000,
            agent_timeout: Duration::from_secs(10),
            event_buffer: crate::stream::DEFAULT_CAPACITY,
            auth: crate::auth::AuthConfig::default(),
            api_tls: None,
            min_interval: crate::scheduler::DEFAULT_MIN_INTERVAL,
            cluster: None,
        }
    }
}

/// An agent in this process (`tug up`'s): registered under `name` with `resources`, started
/// with a [`LocalLink`]. Without one (`tug server`) runs go to agents that join over the stream.
pub struct LocalAgent {
    /// Its name.
    pub name: String,
    /// What it offers.
    pub resources: Capacity,
    /// Serves the agent on the link until it has stopped its runs and reported how they ended.
    pub start: Box<dyn FnOnce(LocalLink) -> BoxFuture<'static, ()> + Send>,
}

/// What a [`LocalAgent`] is given: the channels a remote agent's gateway connection has, the
/// directory its run logs go to, and the signal to stop.
pub struct LocalLink {
    /// Commands from the scheduler.
    pub commands: mpsc::Receiver<ToAgent>,
    /// Where it reports (what it holds first, then heartbeats and status updates).
    pub updates: mpsc::Sender<FromAgent>,
    /// Its run logs, which the server reads from the same directory.
    pub logs: LogFiles,
    /// Completes when the server shuts down: the agent stops its runs and reports them.
    pub shutdown: BoxFuture<'static, ()>,
}

/// A running embedded server.
pub struct Embedded {
    /// Talk to the scheduler directly (benchmarks, tests).
    pub scheduler: SchedulerHandle,
    /// The event stream (benchmarks, tests).
    pub events: crate::stream::EventBus,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The metric families.
    pub metrics: Arc<Metrics>,
    /// API tokens and the gate's settings.
    pub auth: Arc<crate::auth::Auth>,
    /// Every run's log: the local agent's in the data dir, remote agents' through their streams
    /// (give it to the agent gateway).
    pub logs: RunLogs,
    /// Address pools and claims (the API's and the agent gateway's).
    pub net: Arc<crate::net::Network>,
    /// Where agents in this process report (another in-process agent can be added with it).
    updates: mpsc::Sender<FromAgent>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Stops the notifier, after the scheduler (so it sees the scheduler's last events).
    notify_stop: watch::Sender<bool>,
    notifier: tokio::task::JoinHandle<()>,
    per_job: Option<tokio::task::JoinHandle<()>>,
}

impl Embedded {
    /// Opens the store, recovers the scheduler and starts the agent; serves the API on
    /// `listener` when one is given.
    pub async fn start(
        config: EmbeddedConfig,
        local: Option<LocalAgent>,
        clock: SharedClock,
        listener: Option<TcpListener>,
    ) -> anyhow::Result<Embedded> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        // Job specs (their env) and run logs: the server's user only.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("making data dir {} readable by its owner only", config.data_dir.display()))?;
        }
        let db = config.data_dir.join("tug.db");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&db).with_context(|| format!("opening the store at {}", db.display()))?,
        );
        Self::start_with_store(config, store, local, clock, listener).await
    }

    /// Like [`Embedded::start`], but on a store the caller opened. Tests under tokio's paused time
    /// pass an in-memory store: while a call waits on SQLite's thread, every task looks idle and
    /// tokio would jump the clock ahead. Run logs still go under `config.data_dir`, created when a
    /// run first writes one.
    pub async fn start_with_store(
        config: EmbeddedConfig,
        store: Arc<dyn Store>,
        local: Option<LocalAgent>,
        clock: SharedClock,
        listener: Option<TcpListener>,
    ) -> anyhow::Result<Embedded> {
        let files = LogFiles::new(config.data_dir.join("logs"));
        let logs = RunLogs::default();
        let (stop, stop_rx) = watch::channel(false);
        let (updates_tx, updates_rx) = mpsc::channel(65_536);
        let sched_cfg = SchedulerConfig {
            keep_runs: config.keep_runs,
            agent_timeout: config.agent_timeout,
            min_interval: config.min_interval,
            ..SchedulerConfig::default()
        };
        let per_job = config.per_job_metrics.then(|| PerJobMetrics::new(config.per_job_metrics_limit));
        let mut metrics = Metrics::with_per_job(per_job.as_ref());
        if let Some(group) = &config.cluster {
            metrics.register_cluster(group.clone());
        }
        let metrics = Arc::new(metrics);
        let mut events = EventSink::new(metrics.clone());
        // Subscribers first: the scheduler takes the sink as it is when it starts.
        let notifier = Notifier::new(
            config.webhooks.clone(),
            config.webhook_delivery.clone(),
            logs.clone(),
            clock.clone(),
            metrics.clone(),
        )
        .context("setting up webhooks")?;
        let (notify_stop, notify_stop_rx) = watch::channel(false);
        let notifier = tokio::spawn(notifier.run(events.subscribe(notify::QUEUE_CAPACITY), stopped(notify_stop_rx)));
        let per_job = per_job.map(|p| tokio::spawn(p.run(events.subscribe(notify::QUEUE_CAPACITY))));
        let bus = crate::stream::EventBus::new(clock.clone(), config.event_buffer);
        let hooks = Hooks { metrics: metrics.clone(), events, bus: Some(bus.clone()) };
        let (handle, sched_task) = scheduler::start(
            store.clone(),
            clock.clone(),
            logs.clone(),
            sched_cfg,
            hooks,
            updates_rx,
            stopped(stop_rx.clone()),
        )
        .await
        .context("starting the scheduler")?;
        let mut tasks = vec![sched_task];
        if let Some(local) = local {
            logs.share_dir(&local.name, files.clone());
            let (agent_tx, agent_rx) = mpsc::channel(65_536);
            // Registered before it reports what it holds, as a remote agent is.
            let reg = Registration {
                name: local.name.clone(),
                tx: agent_tx,
                resources: local.resources,
                attributes: Default::default(),
            };
            handle.register_agent(reg).await.context("registering the local agent")?;
            let link = LocalLink {
                commands: agent_rx,
                updates: updates_tx.clone(),
                logs: files,
                shutdown: Box::pin(stopped(stop_rx.clone())),
            };
            tasks.push(tokio::spawn((local.start)(link)));
        }
        let net = Arc::new(crate::net::Network::new(store.clone(), clock.clone()));
        let mut auth_config = config.auth.clone();
        // Browsers send the UI's cookies back only over TLS when the API has it.
        auth_config.secure_cookies |= config.api_tls.is_some();
        let auth = crate::auth::Auth::load(auth_config, store.clone(), clock.clone())
            .await
            .context("loading API tokens")?;
        tasks.push(tokio::spawn(auth.clone().prune_audit(stopped(stop_rx.clone()))));
        if let Some(listener) = listener {
            let state = AppState {
                store: store.clone(),
                scheduler: handle.clone(),
                logs: logs.clone(),
                net: net.clone(),
                clock,
                metrics: metrics.clone(),
                events: bus.clone(),
                auth: auth.clone(),
                cluster: config.cluster.clone(),
            };
            let app = api::router(state);
            let rx = stop_rx.clone();
            let header_timeout = config.auth.header_timeout;
            tasks.push(match &config.api_tls {
                Some(tls) => {
                    let listener = tug_tls::TlsListener::new(listener, tls.clone(), "API").context("listening for TLS connections")?;
                    tokio::spawn(crate::http::serve(listener, app, header_timeout, stopped(rx)))
                }
                None => tokio::spawn(crate::http::serve(listener, app, header_timeout, stopped(rx))),
            });
        }
        Ok(Embedded {
            events: bus,
            scheduler: handle,
            net,
            store,
            metrics,
            auth,
            logs,
            updates: updates_tx,
            stop,
            tasks,
            notify_stop,
            notifier,
            per_job,
        })
    }

    /// A sender for another agent in this process to report on (tests, benchmarks).
    pub fn updates_sender(&self) -> mpsc::Sender<FromAgent> {
        self.updates.clone()
    }

    /// Stops every task at once, as a crash would: nothing more is written or sent, and a store
    /// write in progress may or may not land (crash tests).
    pub fn abort(self) {
        for t in self.tasks.iter().chain([&self.notifier]).chain(self.per_job.as_ref()) {
            t.abort();
        }
    }

    /// Stops everything and waits until runs have been stopped and recorded.
    pub async fn shutdown(self) {
        // The scheduler stops once every agent's sender is gone; ours goes first.
        drop(self.updates);
        let _ = self.stop.send(true);
        // Open event streams end, so the API's graceful shutdown does not wait on them.
        self.events.close();
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.notify_stop.send(true);
        let _ = self.notifier.await;
        if let Some(t) = self.per_job {
            // Only counts; the scheduler has stopped, so nothing is left for it.
            t.abort();
        }
    }
}

/// Completes when the stop flag is set.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
