//! `tug server`: the scheduler, API and store, with remote agents (`tug agent run`) joining over
//! the agent protocol's gRPC stream, until SIGINT or SIGTERM.
//!
//! It has no agent of its own: runs go to the agents that join (`tug up` is the one-process
//! server with an agent). With `--store sqlite` (the default) it is on its own; with `--store
//! etcd://...` it is a member of a server group on that etcd: it campaigns for leadership, follows
//! (answering `/api/v1/cluster` and reads of jobs and runs, passing other requests to the leader)
//! until it wins, then
//! leads (fires, takes agents) until it shuts down or cannot renew its lease, when it stops
//! firing at once and follows again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tug_server::agent_service::{self, AgentGateway, Admission};
use tug_server::clock::{SharedClock, SystemClock};
use tug_server::cluster::{Group, Member, Redirect, Role, serve_follower};
use tug_server::embedded::{Embedded, EmbeddedConfig};
use tug_store::etcd::{EtcdConfig, EtcdStore};

/// Where a server keeps its state.
#[derive(Debug, Clone)]
pub enum StoreArg {
    /// SQLite in the data directory.
    Sqlite,
    /// An etcd cluster shared by a group of servers.
    Etcd(EtcdConfig),
}

fn parse_store(s: &str) -> Result<StoreArg, String> {
    if s == "sqlite" {
        return Ok(StoreArg::Sqlite);
    }
    if s.starts_with("etcd://") {
        return EtcdConfig::parse(s).map(StoreArg::Etcd).map_err(|e| e.to_string());
    }
    Err(format!("unknown store {s:?}: give sqlite, or etcd://HOST:PORT[,HOST:PORT...] for a group of servers"))
}

/// Arguments of `tug server`.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  tug server --join-token s3cret\n  \
    tug server --listen 0.0.0.0:4400 --agent-listen 0.0.0.0:4401 --data-dir /var/lib/tug\n  \
    tug server --store etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 --name s1 \\\n      \
    --listen 0.0.0.0:4400 --advertise http://10.0.0.1:4400 --agent-listen 0.0.0.0:4401 --join-token s3cret\n\n\
    Then on each host: tug agent run --server http://SERVER:4401 --join-token s3cret\n\
    (with a group: --server http://S1:4401,http://S2:4401,http://S3:4401)\n\n\
    With TLS and agent certificates that the server signs against the join token\n\
    (tug certs init certs --name SERVER):\n  \
    tug server --listen 0.0.0.0:4400 --agent-listen 0.0.0.0:4401 --init-token-file admin.token \\\n    \
    --tls-cert certs/server.pem --tls-key certs/server-key.pem --join-token-file join.token \\\n    \
    --agent-ca certs/ca.pem --agent-ca-key certs/ca-key.pem\n  \
    tug agent run --server https://SERVER:4401 --name host1 --ca certs/ca.pem --join-token-file join.token")]
pub struct ServerArgs {
    /// Where the database (with --store sqlite) and the server's own run logs are kept.
    #[arg(long, env = "TUG_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where jobs and runs are kept: `sqlite` (in --data-dir), or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?max-txn-ops=N]` for a group of servers that
    /// elect a leader among themselves.
    #[arg(long, env = "TUG_STORE", default_value = "sqlite", value_parser = parse_store)]
    store: StoreArg,
    /// This server's name in the group (default: the host name and the API port).
    #[arg(long, env = "TUG_NAME")]
    name: Option<String>,
    /// The URL other servers reach this one's API at, in a group (default: http://LISTEN, or
    /// https:// with --tls-cert).
    #[arg(long, env = "TUG_ADVERTISE")]
    advertise: Option<String>,
    /// The URL agents reach this one's agent endpoint at, in a group (default:
    /// http://AGENT_LISTEN, or https:// with --tls-cert).
    #[arg(long, env = "TUG_AGENT_ADVERTISE")]
    agent_advertise: Option<String>,
    /// In a group: the leader's lease on etcd (e.g. 3s). A leader that cannot renew it for two
    /// thirds of this stops firing; another takes over after it expires. etcd rounds it up to
    /// whole seconds, at least 2.
    #[arg(long, env = "TUG_LEASE_TTL", default_value = "3s", value_parser = parse_timeout)]
    lease_ttl: Duration,
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
    /// In a group over TLS: trust this CA (PEM) for the other members' certificates (a follower
    /// passes requests on to the leader over https), besides the system's roots. Default: the
    /// --agent-ca.
    #[arg(long, env = "TUG_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Refuse agents whose client certificates this revocation list (PEM; `tug certs revoke`
    /// writes one) revokes. Taken again when it changes: connected agents it revokes are cut
    /// off. Default with --agent-ca-key: crl.pem beside the key, once it exists.
    #[arg(long, env = "TUG_AGENT_CRL", requires = "agent_ca", value_name = "FILE")]
    agent_crl: Option<PathBuf>,
    /// The key of --agent-ca (the ca-key.pem of `tug certs init`): sign a client certificate for
    /// each agent that brings the join token (`tug agent run` with only --ca and the token), and
    /// renew them. What it signs is recorded in issued.txt beside the key, for `tug certs revoke`.
    #[arg(long, env = "TUG_AGENT_CA_KEY", requires = "agent_ca", value_name = "FILE")]
    agent_ca_key: Option<PathBuf>,
    /// How long the agent certificates it signs are valid (agents renew them after two thirds),
    /// e.g. 24h or 30d; at least 10s.
    #[arg(long, env = "TUG_AGENT_CERT_TTL", default_value = "24h", value_parser = parse_cert_ttl)]
    agent_cert_ttl: Duration,
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
    let data_dir = args.data_dir.clone().unwrap_or_else(super::default_data_dir);
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
    let mut config = EmbeddedConfig::new(&data_dir);
    config.keep_runs = args.keep_runs;
    config.agent_timeout = args.agent_timeout;
    config.auth = auth_config;
    config.api_tls = args.tls.server(&[b"h2", b"http/1.1"], None, None)?;
    config.min_interval = args.security.min_interval;
    config.webhook_delivery.tls = args.tls.webhooks()?;
    let admission = admission(&args, join_token.clone())?;
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        super::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    match args.store.clone() {
        StoreArg::Sqlite => {
            let listener = super::bind_api(args.listen).await?;
            let agent_listener = bind_agents(args.agent_listen).await?;
            let server = Embedded::start(config, None, Arc::new(SystemClock), Some(listener)).await?;
            if let Err(e) = args.security.after_start(&server.auth, args.listen).await {
                server.shutdown().await;
                return Err(e);
            }
            announce(&args, join_token.is_none(), &format!("data in {}", data_dir.display()));
            lead(server, agent_listener, admission, stopped(stop)).await.map(|_| ())
        }
        StoreArg::Etcd(etcd) => group(args, etcd, config, admission, stop).await,
    }
}

/// Who may join as an agent: the join token, the agent endpoint's TLS with its client
/// certificates, and the CA key that signs them; the revocation list is watched from here on.
fn admission(args: &ServerArgs, join_token: Option<String>) -> anyhow::Result<Admission> {
    let key_dir = args.agent_ca_key.as_deref().map(|k| k.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")));
    if args.agent_ca_key.is_some() && join_token.is_none() {
        anyhow::bail!(
            "--agent-ca-key signs certificates for agents that bring the join token, and there is none: give \
             --join-token-file PATH (or --join-token)"
        );
    }
    // With the CA key, revocations by `tug certs revoke` in its directory apply as they are made.
    let default_crl = key_dir.map(|d| d.join("crl.pem"));
    let crl = args.agent_crl.as_deref().or(default_crl.as_deref());
    let clients = args.agent_ca.as_deref().map(|ca| tug_tls::ClientCerts {
        ca,
        crl,
        crl_may_be_missing: args.agent_crl.is_none(),
        optional: args.agent_ca_key.is_some(),
    });
    let tls = args.tls.server_with_clients(&[b"h2"], clients).context("the agent endpoint's TLS (--agent-ca, --agent-crl)")?;
    let issuer = match (&args.agent_ca, &args.agent_ca_key) {
        (Some(ca), Some(key)) => Some(Arc::new(
            tug_tls::certs::AgentIssuer::load(ca, key, args.agent_cert_ttl).context("the agents' CA (--agent-ca, --agent-ca-key)")?,
        )),
        _ => None,
    };
    if let Some(tls) = &tls {
        // Runs as long as the process: revocations apply without a restart.
        let _watch = tls.watch_crl(CRL_CHECK);
    }
    Ok(Admission { join_token, tls, issuer })
}

/// How often the agents' revocation list file is checked for changes.
const CRL_CHECK: Duration = Duration::from_secs(1);

fn parse_cert_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_timeout(s)?;
    if d < Duration::from_secs(10) {
        return Err("must be at least 10s, e.g. 24h".into());
    }
    Ok(d)
}

fn announce(args: &ServerArgs, open: bool, store: &str) {
    if open && args.agent_ca.is_none() {
        tracing::warn!("no --join-token and no --agent-ca: any agent that can reach --agent-listen may join");
    }
    let scheme = if args.tls.enabled() { "https" } else { "http" };
    eprintln!(
        "Tugboat server is up: API at {scheme}://{}/api/v1, agents join at {scheme}://{}, {store}",
        args.listen, args.agent_listen
    );
}

async fn bind_agents(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for agents on {addr}; pick another with --agent-listen"))
}

/// [`bind_agents`], retried for a moment: after leading, the agent listener of the aborted
/// gateway may still be closing.
async fn bind_agents_again(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    for _ in 0..10 {
        if let Ok(l) = tokio::net::TcpListener::bind(addr).await {
            return Ok(l);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bind_agents(addr).await
}

/// Completes when `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How leading ended.
enum Ended {
    /// Shutdown: runs were stopped and recorded.
    Shutdown,
    /// Deposed (the lease was lost): everything was stopped at once.
    Deposed,
}

/// Serves `server` with the agent gateway on `agent_listener` until a signal (a graceful
/// shutdown) or `deposed` completes (everything stops at once: another server is taking over).
async fn lead(
    server: Embedded,
    agent_listener: tokio::net::TcpListener,
    admission: Admission,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Ended> {
    lead_until(server, agent_listener, admission, shutdown, std::future::pending()).await
}

async fn lead_until(
    server: Embedded,
    agent_listener: tokio::net::TcpListener,
    admission: Admission,
    shutdown: impl Future<Output = ()>,
    deposed: impl Future<Output = ()>,
) -> anyhow::Result<Ended> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tls = admission.tls.clone();
    let gateway = AgentGateway::new(
        server.scheduler.clone(),
        server.updates_sender(),
        admission.join_token,
        stop_rx.clone(),
        server.logs.clone(),
    )
    .with_certificates(admission.tls, admission.issuer)
    .with_network(server.net.clone());
    let mut grpc = tokio::spawn(agent_service::serve(agent_listener, gateway, tls, stopped(stop_rx)));
    tokio::select! {
        () = shutdown => {}
        () = deposed => {
            // Stop firing and dispatching now, as a crash would: the writes that are under way
            // are refused by the fence anyway, and the new leader recovers from the store.
            grpc.abort();
            server.abort();
            return Ok(Ended::Deposed);
        }
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
    Ok(Ended::Shutdown)
}

/// Waits for `task` until `deadline`, then aborts it.
async fn finish_by<T>(mut task: tokio::task::JoinHandle<T>, deadline: tokio::time::Instant) {
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

/// A member of a server group: follow until elected, lead until deposed or stopped, and again.
async fn group(
    args: ServerArgs,
    etcd: EtcdConfig,
    config: EmbeddedConfig,
    admission: Admission,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let store = EtcdStore::connect(etcd).await?;
    let clock: SharedClock = Arc::new(SystemClock);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "tug".into(), |h| h.trim().to_owned());
    let scheme = if args.tls.enabled() { "https" } else { "http" };
    let me = Member {
        name: args.name.clone().unwrap_or_else(|| format!("{host}:{}", args.listen.port())),
        // Over TLS, followers send agents (and requests) to the leader's https:// endpoints.
        api: args.advertise.clone().unwrap_or_else(|| format!("{scheme}://{}", args.listen)),
        agent: args.agent_advertise.clone().unwrap_or_else(|| format!("{scheme}://{}", args.agent_listen)),
        leading_since: None,
    };
    let group = Group::join(store.clone(), me.clone(), args.lease_ttl).await.context("joining the server group")?;
    // Followers prove to the leader that they pass requests on, so its audit log names them and
    // the clients behind them.
    let secret = store.proxy_secret(&tug_server::auth::tokens::new_secret()).await.context("reading the group's secret")?;
    let mut config = config;
    config.auth.proxy_secret = Some(secret);
    // The follower's gate reads tokens from the same store (the leader makes and revokes them).
    // Members' certificates usually come from the CA that signs agents' (tug certs init).
    let leader_tls = tug_tls::ClientTls::new(args.ca.as_deref().or(args.agent_ca.as_deref()), None)
        .context("the CA trusted for the other members' certificates (--ca, or --agent-ca)")?;
    let follower_auth = tug_server::auth::Auth::load(config.auth.clone(), Arc::new(store.clone()), clock.clone())
        .await
        .context("loading API tokens")?;
    announce(&args, admission.join_token.is_none(), &format!("{}; member {:?} of the server group", store.config(), me.name));
    let mut delay = Duration::from_millis(200);
    while !*stop.borrow() {
        let lease = match group.election().lease().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "cannot take a lease on etcd");
                tokio::select! { () = tokio::time::sleep(delay) => {} () = stopped(stop.clone()) => break }
                delay = (delay * 2).min(Duration::from_secs(3));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        group.set_role(Role::Follower);
        let (front_stop, front_rx) = watch::channel(false);
        let listener = super::bind_api(args.listen).await?;
        // Agents that connect here are told where the leader is.
        let redirect = match bind_agents_again(args.agent_listen).await {
            Ok(l) => Some(tokio::spawn(agent_service::serve_service(
                l,
                Redirect::new(group.clone(), admission.clone()).into_service(),
                admission.tls.clone(),
                stopped(front_rx.clone()),
            ))),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "agents that connect here are not told where the leader is");
                None
            }
        };
        let front = tokio::spawn(serve_follower(
            listener,
            group.clone(),
            clock.clone(),
            follower_auth.clone(),
            config.api_tls.clone(),
            leader_tls.clone(),
            stopped(front_rx),
        ));
        tracing::info!(member = %me.name, "following; campaigning for leadership");
        let won = loop {
            let r = tokio::select! {
                r = group.election().campaign(&lease) => Some(r),
                () = stopped(stop.clone()) => None,
            };
            // A campaign call can break while the lease lives on (the etcd member it went to
            // was lost): campaign again on the same lease, which finds this member's key where
            // it was. A new lease would queue a second key behind the first, for one TTL.
            match r {
                Some(Err(e)) if !lease.is_lost() => {
                    tracing::warn!(error = %e, "the campaign call broke; campaigning again on the same lease");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                        () = stopped(stop.clone()) => break None,
                    }
                }
                other => break other,
            }
        };
        if let Some(Ok(won)) = &won {
            tracing::info!(member = %me.name, term = won.fence.revision, "elected leader; taking over the listeners");
        }
        let _ = front_stop.send(true);
        // Open event streams would hold a graceful shutdown: give both listeners one moment
        // together, then cut what is left.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        tokio::join!(finish_by(front, deadline), async {
            if let Some(redirect) = redirect {
                finish_by(redirect, deadline).await;
            }
        });
        let won = match won {
            None => break,
            Some(Ok(won)) => won,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the lease was lost while campaigning; starting over with a new one");
                continue;
            }
        };
        store.fence(Some(won.fence.clone()));
        group.set_role(Role::Leader);
        let leading = Member { leading_since: Some(clock.now()), ..me.clone() };
        if let Err(e) = group.election().proclaim(&won, &leading).await {
            tracing::warn!(error = %e, "could not announce the start of leadership");
        }
        tracing::info!(member = %me.name, term = won.fence.revision, "leading; recovering from the store");
        let mut config = config.clone();
        config.cluster = Some(group.clone());
        let listener = super::bind_api(args.listen).await?;
        let agent_listener = bind_agents(args.agent_listen).await?;
        let server = match Embedded::start_with_store(config, Arc::new(store.clone()), None, clock.clone(), Some(listener)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "could not start leading; resigning");
                group.election().resign(won).await;
                continue;
            }
        };
        if let Err(e) = args.security.after_start(&server.auth, args.listen).await {
            server.shutdown().await;
            group.election().resign(won).await;
            return Err(e);
        }
        match lead_until(server, agent_listener, admission.clone(), stopped(stop.clone()), lease.lost()).await? {
            Ended::Shutdown => {
                group.election().resign(won).await;
                break;
            }
            Ended::Deposed => {
                tracing::error!(member = %me.name, "stepped down: the lease could not be renewed; firing stopped, following again");
            }
        }
    }
    Ok(())
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d: tug_core::Duration = s.parse().map_err(|e| format!("{e}; e.g. 10s or 1m"))?;
    if d.as_std().is_zero() {
        return Err("must be more than zero, e.g. 10s".into());
    }
    Ok(d.as_std())
}
