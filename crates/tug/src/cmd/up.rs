//! `tug up`: server, local agent and embedded store in one process, until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tug_agent::runtime::docker::{DockerConfig, LazyDocker, NetSetup};
use tug_agent::Durability;
use tug_agent::runtime::shim::ShimRuntime;
use tug_agent::runtime::{Dispatch, SharedRuntime};
use tug_server::clock::SystemClock;
use tug_server::embedded::{Embedded, EmbeddedConfig};

/// Arguments of `tug up`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug up\n  tug up --data-dir /var/lib/tug --listen 0.0.0.0:4400\n  \
    tug up --vtep 10.0.0.11   # networked containers: VXLAN pools on this host")]
pub struct UpArgs {
    /// Where the database and run logs are kept.
    #[arg(long, env = "TUG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address the API listens on.
    #[arg(long, env = "TUG_LISTEN", default_value = "127.0.0.1:4400")]
    listen: SocketAddr,
    /// Finished runs kept per job (a job's `keep_runs` overrides it).
    #[arg(long, env = "TUG_KEEP_RUNS", default_value_t = 100)]
    keep_runs: u32,
    /// Most bytes of output kept per run; the rest is dropped with a marker.
    #[arg(long, env = "TUG_LOG_LIMIT", default_value_t = 1 << 20)]
    log_limit: u64,
    /// Log filter (e.g. info, debug, tug_server=debug).
    #[arg(long, env = "TUG_LOG", default_value = "info")]
    log: String,
    /// A webhook told about every job's failures, missed fires and exhausted retries
    /// (repeatable; http:// or https://).
    #[arg(long = "webhook", env = "TUG_WEBHOOKS", value_delimiter = ',')]
    webhooks: Vec<String>,
    /// Export per-job run counters (`tug_job_runs_finished_total{job}`) for up to N jobs; 0 = off.
    #[arg(long, env = "TUG_PER_JOB_METRICS", default_value_t = 0)]
    per_job_metrics: usize,
    /// Leave the docker jobs' warm containers running on a clean stop, for the next `tug up` to
    /// adopt (it removes any idle past its job's idle_timeout, 10m by default). Without it they
    /// are removed.
    #[arg(long, env = "TUG_KEEP_WARM")]
    keep_warm: bool,
    /// A TOML file with any of these settings (data_dir, listen, keep_runs, log_limit, log,
    /// webhooks, per_job_metrics, keep_warm); flags and TUG_* variables win over it.
    #[arg(long, env = "TUG_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    net: super::host_net::HostNetArgs,
    #[command(flatten)]
    security: super::security::SecurityArgs,
    #[command(flatten)]
    tls: super::security::TlsArgs,
}

/// `tug up` settings as a TOML file may give them.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    keep_runs: Option<u32>,
    log_limit: Option<u64>,
    log: Option<String>,
    #[serde(default)]
    webhooks: Vec<String>,
    per_job_metrics: Option<usize>,
    keep_warm: Option<bool>,
}

impl UpArgs {
    /// Fills what flags and the environment left at their defaults from the config file.
    fn merge_file(mut self, matches: &clap::ArgMatches) -> anyhow::Result<UpArgs> {
        let Some(path) = &self.config else { return Ok(self) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config file {}: {}", path.display(), e.message()))?;
        let defaulted = |id: &str| {
            matches.value_source(id).is_none_or(|s| s == clap::parser::ValueSource::DefaultValue)
        };
        if self.data_dir.is_none() {
            self.data_dir = file.data_dir;
        }
        if let Some(v) = file.listen.filter(|_| defaulted("listen")) {
            self.listen = v;
        }
        if let Some(v) = file.keep_runs.filter(|_| defaulted("keep_runs")) {
            self.keep_runs = v;
        }
        if let Some(v) = file.log_limit.filter(|_| defaulted("log_limit")) {
            self.log_limit = v;
        }
        if let Some(v) = file.log.filter(|_| defaulted("log")) {
            self.log = v;
        }
        if self.webhooks.is_empty() {
            self.webhooks = file.webhooks;
        }
        if let Some(v) = file.per_job_metrics.filter(|_| defaulted("per_job_metrics")) {
            self.per_job_metrics = v;
        }
        if let Some(v) = file.keep_warm.filter(|_| defaulted("keep_warm")) {
            self.keep_warm = v;
        }
        Ok(self)
    }
}


/// Runs until a signal arrives.
pub async fn run(args: UpArgs, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let args = args.merge_file(matches)?;
    super::init_logs(&args.log)?;
    let data_dir = args.data_dir.unwrap_or_else(super::default_data_dir);
    let auth_config = args.security.config(args.listen)?;
    let listener = super::bind_api(args.listen).await?;
    let mut config = EmbeddedConfig::new(&data_dir);
    config.auth = auth_config;
    config.keep_runs = args.keep_runs;
    config.min_interval = args.security.min_interval;
    config.api_tls = args.tls.server(&[b"h2", b"http/1.1"], None, None)?;
    config.webhook_delivery.tls = args.tls.webhooks()?;
    config.webhooks = args
        .webhooks
        .iter()
        .map(|url| tug_core::job::Webhook { url: url.clone(), on: tug_core::job::default_notify_on() })
        .collect();
    config.per_job_metrics = args.per_job_metrics > 0;
    if args.per_job_metrics > 0 {
        config.per_job_metrics_limit = args.per_job_metrics;
    }
    // Process runs go through a shim with a checkpoint, so that a run that ends while `tug up`
    // is down (it stops its runs, but may crash) is still recorded with its exit status.
    let durable = Durability {
        dir: data_dir.join("agent-runs"),
        shim: std::env::current_exe().context("finding the tug executable to supervise runs with")?,
        detach_on_stop: false,
    };
    let process = Arc::new(ShimRuntime::new(&durable));
    let agent = tug_agent::AgentConfig { log_limit: args.log_limit, durable: Some(durable), ..Default::default() };
    // The container network, when this host has a segment to join: dresponse answers networked
    // containers, with addresses claimed from the embedded server once it has started.
    let claims = Arc::new(tug::local::LocalClaims::new(&agent.name, args.net.vtep));
    let (push_tx, push_rx) = tokio::sync::mpsc::channel(64);
    let mut net = None;
    if let Some(host) = args.net.host() {
        net = Some(super::host_net::start(host, claims.clone(), &data_dir, push_rx));
    }
    let docker = docker_runtime(&agent.name, &data_dir, net.as_ref().map(|(setup, _)| setup.clone())).await;
    let agent_name = agent.name.clone();
    let runtime = Arc::new(Dispatch::new(process, Ok(docker.clone() as SharedRuntime)));
    let local = tug::local::local_agent(agent, runtime);
    let server = Embedded::start(config, Some(local), Arc::new(SystemClock), Some(listener)).await?;
    let forward = net.is_some().then(|| {
        claims.connect(server.net.clone(), server.scheduler.clone());
        // What the control plane tells this host unasked (another host's agent may join later).
        let mut pushes = server.net.subscribe();
        tokio::spawn(async move {
            loop {
                match pushes.recv().await {
                    Ok((to, push)) if to.as_deref().is_none_or(|a| a == agent_name) => {
                        if push_tx.send(push).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        })
    });
    if let Err(e) = args.security.after_start(&server.auth, args.listen).await {
        server.shutdown().await;
        return Err(e);
    }
    tracing::info!(listen = %args.listen, data_dir = %data_dir.display(), "tugboat is up");
    let scheme = if args.tls.enabled() { "https" } else { "http" };
    eprintln!("Tugboat is up: API at {scheme}://{}/api/v1, data in {}", args.listen, data_dir.display());
    eprintln!("Try: tug job add hello --schedule '*/10 * * * * *' -- echo hello");
    super::shutdown_signal().await;
    eprintln!("Shutting down: stopping runs and recording how they ended...");
    server.shutdown().await;
    stop_warm_containers(&docker, args.keep_warm).await;
    if let Some((_, dresponse)) = net {
        dresponse.abort();
    }
    if let Some(f) = forward {
        f.abort();
    }
    Ok(())
}

/// Removes the warm containers on a clean stop, or says that they stay and until when.
async fn stop_warm_containers(docker: &LazyDocker, keep: bool) {
    let Some(rt) = docker.connected().await else { return };
    let n = rt.warm_containers();
    if n == 0 {
        return;
    }
    if keep {
        eprintln!(
            "{n} warm container(s) stay in Docker (--keep-warm); the next tug up adopts them and removes \
             those idle past their job's idle_timeout (10m by default)"
        );
    } else {
        rt.remove_warm().await;
        eprintln!("removed {n} warm container(s); --keep-warm leaves them for the next tug up");
    }
}

/// The docker runtime. It connects now when it can (adopting the warm containers a previous
/// `tug up` left), and otherwise on the first docker run: with Docker down, docker runs fail with
/// the reason and work again once Docker is back; process jobs are unaffected.
async fn docker_runtime(agent: &str, data_dir: &std::path::Path, net: Option<NetSetup>) -> Arc<LazyDocker> {
    let mut config = DockerConfig::new(agent, data_dir.join("docker"));
    config.net = net;
    if config.dwait.is_none() {
        tracing::warn!("no static dwait found (set TUG_DWAIT or put it next to tug): docker jobs run through docker exec");
    }
    let docker = LazyDocker::new(config);
    if let Err(e) = docker.get().await {
        tracing::warn!(error = %e, "docker jobs fail until Docker is available");
    }
    Arc::new(docker)
}

