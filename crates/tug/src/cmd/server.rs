//! `tug server`: the scheduler, API and embedded store, with remote agents (`tug agent run`)
//! joining over the agent protocol's gRPC stream, until SIGINT or SIGTERM.
//!
//! It has no agent of its own: runs go to the agents that join (`tug up` is the one-process
//! server with an agent).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tug_server::agent_service::{self, AgentGateway};
use tug_server::clock::SystemClock;
use tug_server::embedded::{Embedded, EmbeddedConfig};

/// Arguments of `tug server`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug server --join-token s3cret\n  \
    tug server --listen 0.0.0.0:4400 --agent-listen 0.0.0.0:4401 --data-dir /var/lib/tug\n\n\
    Then on each host: tug agent run --server http://SERVER:4401 --join-token s3cret\n\n\
    With TLS and agent certificates (tug certs init certs --name SERVER --agent host1):\n  \
    tug server --listen 0.0.0.0:4400 --agent-listen 0.0.0.0:4401 --init-token-file admin.token \\\n    \
    --tls-cert certs/server.pem --tls-key certs/server-key.pem --agent-ca certs/ca.pem\n  \
    tug agent run --server https://SERVER:4401 --name host1 --ca certs/ca.pem \\\n    \
    --cert certs/agent-host1.pem --key certs/agent-host1-key.pem")]
pub struct ServerArgs {
    /// Where the database and the server's own run logs are kept.
    #[arg(long, env = "TUG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address the API listens on.
    #[arg(long, env = "TUG_LISTEN", default_value = "127.0.0.1:4400")]
    listen: SocketAddr,
    /// Address agents connect to (gRPC).
    #[arg(long, env = "TUG_AGENT_LISTEN", default_value = "127.0.0.1:4401")]
    agent_listen: SocketAddr,
    /// The secret agents must present to join; without one any agent that connects is accepted.
    #[arg(long, env = "TUG_JOIN_TOKEN", hide_env_values = true, conflicts_with = "join_token_file")]
    join_token: Option<String>,
    /// Read the join token from this file (so it does not show in `ps`).
    #[arg(long, env = "TUG_JOIN_TOKEN_FILE")]
    join_token_file: Option<PathBuf>,
    #[command(flatten)]
    security: super::security::SecurityArgs,
    #[command(flatten)]
    tls: super::security::TlsArgs,
    /// Require agents to present a client certificate signed by this CA (PEM), and to join under
    /// a name in it (mTLS; needs --tls-cert).
    #[arg(long, env = "TUG_AGENT_CA", requires = "tls_cert", value_name = "FILE")]
    agent_ca: Option<PathBuf>,
    /// Finished runs kept per job (a job's `keep_runs` overrides it).
    #[arg(long, env = "TUG_KEEP_RUNS", default_value_t = 100)]
    keep_runs: u32,
    /// An agent not heard from for this long is lost; its runs are lost and retried elsewhere
    /// (e.g. 10s, 1m).
    #[arg(long, env = "TUG_AGENT_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    agent_timeout: std::time::Duration,
    /// Log filter (e.g. info, debug, tug_server=debug).
    #[arg(long, env = "TUG_LOG", default_value = "info")]
    log: String,
}

/// Runs until a signal arrives.
pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    super::init_logs(&args.log)?;
    let data_dir = args.data_dir.unwrap_or_else(super::default_data_dir);
    let join_token = match &args.join_token_file {
        Some(path) => Some(super::security::read_secret(path)?),
        None => args.join_token.clone(),
    };
    let auth_config = args.security.config(args.listen)?;
    if join_token.is_none() && args.agent_ca.is_none() && !args.agent_listen.ip().is_loopback() && auth_config.mode != tug_server::auth::AuthMode::Open {
        anyhow::bail!(
            "refusing to accept agents on {} without a join token: anyone who can reach it could join as an agent \
             and be handed jobs. Give --join-token-file PATH (or --join-token) or --agent-ca FILE (client certificates), or pass --insecure on a network you trust",
            args.agent_listen
        );
    }
    let api_tls = args.tls.server(&[b"h2", b"http/1.1"], None)?;
    let agent_tls = args.tls.server(&[b"h2"], args.agent_ca.as_deref()).context("the agent endpoint's TLS (--agent-ca)")?;
    let listener = super::bind_api(args.listen).await?;
    let agent_listener = tokio::net::TcpListener::bind(args.agent_listen).await.with_context(|| {
        format!("cannot listen for agents on {}; pick another with --agent-listen", args.agent_listen)
    })?;
    let mut config = EmbeddedConfig::new(&data_dir);
    config.keep_runs = args.keep_runs;
    config.agent_timeout = args.agent_timeout;
    config.auth = auth_config;
    config.api_tls = api_tls;
    config.min_interval = args.security.min_interval;
    config.webhook_delivery.tls = args.tls.webhooks()?;
    let server = Embedded::start(config, None, Arc::new(SystemClock), Some(listener)).await?;
    if let Err(e) = args.security.after_start(&server.auth, args.listen).await {
        server.shutdown().await;
        return Err(e);
    }
    if join_token.is_none() && args.agent_ca.is_none() {
        tracing::warn!("no --join-token and no --agent-ca: any agent that can reach --agent-listen may join");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let gateway = AgentGateway::new(
        server.scheduler.clone(),
        server.updates_sender(),
        join_token,
        stop_rx.clone(),
        server.logs.clone(),
    )
    .with_network(server.net.clone());
    let scheme = if agent_tls.is_some() { "https" } else { "http" };
    let mut grpc = tokio::spawn(agent_service::serve(agent_listener, gateway, agent_tls, async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    }));
    eprintln!(
        "Tugboat server is up: API at {scheme}://{}/api/v1, agents join at {scheme}://{}, data in {}",
        args.listen,
        args.agent_listen,
        data_dir.display()
    );
    tokio::select! {
        () = super::shutdown_signal() => {}
        r = &mut grpc => {
            r.context("agent listener task")?.context("agent listener failed")?;
        }
    }
    eprintln!("Shutting down...");
    let _ = stop_tx.send(true);
    // The agent streams hold senders into the scheduler; it stops only once they are gone.
    if tokio::time::timeout(Duration::from_secs(5), &mut grpc).await.is_err() {
        grpc.abort();
    }
    server.shutdown().await;
    Ok(())
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d: tug_core::Duration = s.parse().map_err(|e| format!("{e}; e.g. 10s or 1m"))?;
    if d.as_std().is_zero() {
        return Err("must be more than zero, e.g. 10s".into());
    }
    Ok(d.as_std())
}
