//! `tug agent run`: an agent in its own process, joined to a `tug server` over the agent protocol.
//! It runs process jobs, and docker jobs when Docker is reachable (connected on the first docker
//! run). Run logs stay in this agent's data dir. Runs are durable: a process run runs under a shim
//! (`tug agent shim`), a docker run in a warm container under its executor (dwait), each with a
//! checkpoint in `<data dir>/runs`, so stopping or restarting the agent leaves them running; the
//! next start re-attaches them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use tug_agent::certificate::Enrollment;
use tug_agent::remote::{self, RemoteConfig};
use tug_agent::runtime::noop::NoopRuntime;
use tug_agent::runtime::{Dispatch, SharedRuntime};
use tug_agent::runtime::docker::{DockerConfig, LazyDocker};
use tug_agent::runtime::shim::ShimRuntime;
use tug_agent::{AgentConfig, Durability};
use tug_core::bytesize::ByteSize;
use tug_core::placement::Capacity;
use tug_logs::LogFiles;

/// Arguments of `tug agent run`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug agent run --server http://10.0.0.1:4401 --join-token s3cret\n  \
    tug agent run --server http://10.0.0.1:4401,http://10.0.0.2:4401,http://10.0.0.3:4401 --join-token s3cret\n  \
    tug agent run --server http://10.0.0.1:4401 --name gpu1 --attributes rack=a,gpu=yes --resources cpus=8,mem=32GiB\n  \
    tug agent run --server https://10.0.0.1:4401 --name host1 --ca ca.pem --join-token-file join.token\n  \
    tug agent run --server https://10.0.0.1:4401 --name host1 --ca ca.pem --cert agent-host1.pem --key agent-host1-key.pem")]
pub struct AgentRunArgs {
    /// The server's agent endpoint (`tug server --agent-listen`), not its API; for a group of
    /// servers, every member's, comma-separated (the agent finds the leader). Its own variable,
    /// so that TUG_SERVER exported for the CLI does not point agents at the API.
    #[arg(long, env = "TUG_AGENT_SERVER", default_value = "http://127.0.0.1:4401", value_name = "URL")]
    server: String,
    /// This agent's name (default: the host name).
    #[arg(long, env = "TUG_AGENT_NAME")]
    name: Option<String>,
    /// Attributes for placement constraints, as k=v,k=v.
    #[arg(long, env = "TUG_AGENT_ATTRIBUTES", value_delimiter = ',')]
    attributes: Vec<String>,
    /// What this agent offers, as cpus=N,mem=SIZE,disk=SIZE; what is left out is measured on
    /// this machine (all cores, all memory, free space of /).
    #[arg(long, env = "TUG_AGENT_RESOURCES", value_delimiter = ',')]
    resources: Vec<String>,
    /// The secret the server asks for.
    #[arg(long, env = "TUG_JOIN_TOKEN", hide_env_values = true, default_value = "", conflicts_with = "join_token_file")]
    join_token: String,
    /// Read the join token from this file (so it does not show in `ps`).
    #[arg(long, env = "TUG_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    /// For an https:// server: trust this CA (PEM) for its certificate, besides the system's
    /// roots (the ca.pem of `tug certs init`).
    #[arg(long, env = "TUG_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This agent's client certificate (PEM), for a server that requires one (--agent-ca); its
    /// name must be the agent's --name. Without it, over https, the agent gets one from the
    /// server with the join token (a server with --agent-ca-key), keeps it in its data dir and
    /// renews it.
    #[arg(long, env = "TUG_AGENT_CERT", requires = "key", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "TUG_AGENT_KEY", requires = "cert", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Where this agent keeps run logs and docker state.
    #[arg(long, env = "TUG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Most bytes of output kept per run; the rest is dropped with a marker.
    #[arg(long, env = "TUG_LOG_LIMIT", default_value_t = 1 << 20)]
    log_limit: u64,
    /// Run logs not written to for this long are removed (e.g. 7d, 12h). The server prunes run
    /// records; the logs of runs on this agent stay here, so this bounds them.
    #[arg(long, env = "TUG_LOG_RETENTION", default_value = "7d", value_parser = parse_retention)]
    log_retention: std::time::Duration,
    /// Log filter (e.g. info, debug, tug_agent=debug).
    #[arg(long, env = "TUG_LOG", default_value = "info")]
    log: String,
    #[command(flatten)]
    net: super::host_net::HostNetArgs,
    /// Run nothing: every launch succeeds at once (for `tug bench agents`).
    #[arg(long, hide = true)]
    noop: bool,
}

fn parse_attributes(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => bail!("invalid attribute {s:?}: expected key=value, e.g. rack=a"),
        })
        .collect()
}

fn parse_resources(items: &[String]) -> anyhow::Result<Capacity> {
    let mut cap = tug_agent::capacity::host_capacity();
    for s in items.iter().filter(|s| !s.is_empty()) {
        let Some((k, v)) = s.split_once('=') else {
            bail!("invalid resource {s:?}: expected cpus=N, mem=SIZE or disk=SIZE");
        };
        match k {
            "cpus" => {
                cap.cpus = v.parse().ok().filter(|c: &f64| c.is_finite() && *c >= 0.0).with_context(|| {
                    format!("invalid cpus {v:?}: expected a number of cores, e.g. cpus=2 or cpus=0.5")
                })?
            }
            "mem" => cap.mem = ByteSize::parse(v).map_err(|e| anyhow::anyhow!("invalid mem {v:?}: {e}"))?.0,
            "disk" => cap.disk = ByteSize::parse(v).map_err(|e| anyhow::anyhow!("invalid disk {v:?}: {e}"))?.0,
            _ => bail!("unknown resource {k:?}: expected cpus, mem or disk"),
        }
    }
    Ok(cap)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".into())
}

/// Runs the agent until a signal arrives (then leaves its process runs going, to be re-attached at
/// the next start), or until the server refuses it.
pub async fn run(args: AgentRunArgs) -> anyhow::Result<()> {
    super::init_logs(&args.log)?;
    let server = args.server.as_str();
    let name = args.name.unwrap_or_else(hostname);
    let mut schemes = std::collections::BTreeSet::new();
    for one in server.split(',') {
        let url = reqwest::Url::parse(one.trim()).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        let Some(url) = url else {
            bail!(
                "invalid --server {one:?}: give the server's agent endpoint as a URL, e.g. --server http://10.0.0.1:4401 \
                 (https:// when the server has --tls-cert), or each group member's, comma-separated"
            );
        };
        schemes.insert(url.scheme().to_owned());
    }
    if schemes.len() > 1 {
        bail!("invalid --server {server:?}: give every member as https:// or every one as http://, not a mix");
    }
    let tls = if schemes.contains("https") {
        let identity = match (&args.cert, &args.key) {
            (Some(c), Some(k)) => Some(tug_tls::Identity::load(c, k)?),
            _ => None,
        };
        Some(tug_tls::ClientTls::new(args.ca.as_deref(), identity)?)
    } else {
        if args.ca.is_some() || args.cert.is_some() {
            bail!("--ca and --cert are for TLS: give the server as https://{}", server.trim_start_matches("http://"));
        }
        None
    };
    let join_token = match &args.join_token_file {
        Some(path) => super::security::read_secret(path)?,
        None => args.join_token.clone(),
    };
    let data_dir = args.data_dir.unwrap_or_else(|| super::default_data_dir().join("agent"));
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    // Run logs, checkpoints (with the runs' env) and its certificate's key: this agent's user only.
    std::fs::set_permissions(&data_dir, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700))
        .with_context(|| format!("making data dir {} readable by its owner only", data_dir.display()))?;
    // Over TLS without --cert: a certificate got from the server with the join token (or kept
    // from an earlier start) and renewed.
    let enroll = match &tls {
        Some(tls) if !tls.has_identity() => Some(Enrollment::new(&data_dir, &name, &join_token, tls.clone())),
        _ => None,
    };
    let remote = RemoteConfig {
        server: server.to_string(),
        join_token,
        resources: parse_resources(&args.resources)?,
        attributes: parse_attributes(&args.attributes)?,
        tls,
        enroll,
    };
    let mut docker_config = DockerConfig::new(&name, data_dir.join("docker"));
    // The container network, when this host has a segment to join: dresponse answers networked
    // containers, with addresses claimed over the agent stream.
    let host = args.net.host();
    let networked = host.is_some();
    let (claims, net_calls) = remote::net_channel(args.net.vtep);
    let (push_tx, push_rx) = tokio::sync::mpsc::channel(64);
    let mut dresponse = None;
    if let Some(host) = host {
        let (setup, task) = super::host_net::start(host, Arc::new(claims), &data_dir, push_rx);
        docker_config.net = Some(setup);
        dresponse = Some(task);
    }
    // Docker runs of a durable agent are checkpointed beside its process runs and outlive it.
    docker_config.checkpoints = (!args.noop).then(|| data_dir.join("runs"));
    let docker = LazyDocker::new(docker_config);
    let (runtime, durable): (SharedRuntime, _) = if args.noop {
        (Arc::new(NoopRuntime), None)
    } else {
        let durable = Durability {
            dir: data_dir.join("runs"),
            shim: std::env::current_exe().context("finding the tug executable to supervise runs with")?,
            detach_on_stop: true,
        };
        let process = Arc::new(ShimRuntime::new(&durable));
        (Arc::new(Dispatch::new(process, Ok(Arc::new(docker)))), Some(durable))
    };
    let config = AgentConfig { name: name.clone(), log_limit: args.log_limit, durable, ..AgentConfig::default() };
    eprintln!(
        "Tugboat agent {name} joining {} with {} cpus, {} MiB memory; data in {}",
        remote.server,
        remote.resources.cpus,
        remote.resources.mem >> 20,
        data_dir.display()
    );
    let logs = LogFiles::new(data_dir.join("logs"));
    let sweeper = tokio::spawn(sweep_logs(logs.clone(), args.log_retention));
    let net_calls = networked.then_some((net_calls, push_tx));
    let result = remote::run_with_net(remote, config, runtime, logs, net_calls, super::shutdown_signal()).await;
    sweeper.abort();
    if let Some(d) = dresponse {
        d.abort();
    }
    result?;
    Ok(())
}

fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    let d: tug_core::Duration = s.parse().map_err(|e| format!("{e}; e.g. 7d or 12h"))?;
    Ok(d.as_std())
}

/// Removes run logs older than `retention`, at start and then hourly.
async fn sweep_logs(logs: LogFiles, retention: std::time::Duration) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match logs.remove_older_than(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed run logs past the log retention"),
            Err(e) => tracing::warn!(error = %e, dir = %logs.dir().display(), "sweeping old run logs failed"),
        }
    }
}
