//! An agent in its own process (`tug agent run`), connected to the server over the agent
//! protocol's gRPC stream.
//!
//! [`Agent::serve`] runs unchanged on two long-lived channels; this module bridges them to the
//! stream, one connection at a time. Status updates are kept until the server acknowledges their
//! `seq` and are resent, in order, after a reconnect. A broken stream is reopened with backoff; a
//! refused join token ends the agent with [`RemoteError::Refused`]. Every `Register` lists the
//! attempts the agent holds ([`Agent::held`]); an ack tells the agent the server has the update
//! ([`Agent::delivered`]), and `Registered` carries the leader epoch. With a server that takes
//! batches, every status update queued goes out in one message, and the server's acks and
//! commands come in lists. Over https with no certificate of its own, the agent first gets one
//! from the server with the join token, and renews it ([`crate::certificate`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tug_net::protocol::{NetAnswer, NetOp, NetPush, NetRequest};
use tug_net::{Claim, PoolSpec};
use tokio_stream::wrappers::ReceiverStream;
use tug_core::placement::Capacity;
use tug_core::protocol::{StatusUpdate, ToAgent, ToServer};
use tug_proto::{AgentMessage, AgentServiceClient, ServerMessage, agent_message, server_message};
use tug_logs::LogFiles;

use crate::agent::{Agent, AgentConfig};
use crate::certificate::SharedTls;
use crate::net::{ClaimError, Claims};
use crate::runtime::SharedRuntime;

/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How soon an agent asks again when a follower says no member leads yet.
const NO_LEADER_RETRY: Duration = Duration::from_millis(200);
/// How long a stopping agent waits for the server to acknowledge its last status updates.
const FLUSH_GRACE: Duration = Duration::from_secs(3);
/// The most status updates sent in one message (about 200 bytes each, far below gRPC's 4 MiB
/// message limit).
const MAX_BATCH: usize = 1024;

/// Where and how a remote agent joins.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The server's agent endpoint, e.g. `http://10.0.0.1:4401`; for a group of servers, each
    /// member's, comma-separated: the agent tries them in turn until one (the leader) takes it.
    pub server: String,
    /// The shared secret the server checks (empty: none).
    pub join_token: String,
    /// What this agent offers for placement.
    pub resources: Capacity,
    /// Attributes for placement constraints.
    pub attributes: BTreeMap<String, String>,
    /// For an `https://` server: whom to trust, and the client certificate for mTLS.
    pub tls: Option<tug_tls::ClientTls>,
    /// For an `https://` server: get the client certificate from the server with the join token
    /// and renew it (instead of `tls`'s).
    pub enroll: Option<crate::certificate::Enrollment>,
}

/// Why a remote agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The server refused the agent (a wrong join token); retrying would not help.
    #[error("the server refused this agent: {0}")]
    Refused(String),
    /// TLS failed in a way another attempt would not fix (a certificate not trusted, expired, or
    /// missing).
    #[error("TLS with {server} failed: {reason}")]
    Tls {
        /// The address given.
        server: String,
        /// What went wrong and what to do, from [`tug_tls::explain`].
        reason: String,
    },
    /// The address answers HTTP but not the agent protocol: most likely the server's REST API
    /// rather than its agent endpoint. Retrying would not help.
    #[error(
        "{server} is not an agent endpoint: it answered HTTP {status} to the agent protocol, so it is \
         most likely a Tugboat API (`tug up` or `tug server --listen`); point --server (or \
         TUG_AGENT_SERVER) at the server's --agent-listen address, http://HOST:4401 by default"
    )]
    NotAgentEndpoint {
        /// The address given.
        server: String,
        /// The HTTP status it answered with.
        status: String,
    },
}

/// The HTTP status of a plain HTTP answer to a gRPC call (tonic reports it in the message when the
/// body is not gRPC framing), e.g. `404 Not Found`.
fn http_answer(e: &tonic::Status) -> Option<String> {
    let (_, status) = e.message().split_once("while receiving response with status: ")?;
    let status = status.trim();
    (!status.starts_with("200")).then(|| status.to_string())
}

/// How one connection ended.
enum Ended {
    /// The stream broke or could not be opened; reconnect.
    Broken(String),
    /// A follower of a server group answered: the leader's agent endpoint (empty while none
    /// leads).
    NotLeader(String),
    /// The agent has stopped and its last updates were flushed (or the grace ran out).
    Done,
}

/// Runs an agent against a remote server until `shutdown` completes (then stops its runs and
/// reports how they ended) or the server refuses it.
pub async fn run(
    remote: RemoteConfig,
    config: AgentConfig,
    runtime: SharedRuntime,
    logs: LogFiles,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RemoteError> {
    run_with_net(remote, config, runtime, logs, None, shutdown).await
}

/// [`run`], also carrying the container network's claims and releases ([`net_channel`]) to the
/// server and its answers back, and handing what the server pushes (routes, evictions) to the
/// given sender.
pub async fn run_with_net(
    remote: RemoteConfig,
    config: AgentConfig,
    runtime: SharedRuntime,
    logs: LogFiles,
    net: Option<(NetCalls, mpsc::Sender<NetPush>)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RemoteError> {
    let (calls, pushes) = net.unzip();
    let mut net = NetBridge { calls, pushes, pending: BTreeMap::new(), next: 0 };
    let name = config.name.clone();
    let (updates_tx, mut updates_rx) = mpsc::channel(65_536);
    let (cmd_tx, cmd_rx) = mpsc::channel(65_536);
    let agent = Agent::with_acks(config, runtime, logs, updates_tx);
    // Before the first Register, so that it lists the runs of the last start.
    agent.recover().await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let serving = tokio::spawn(std::sync::Arc::clone(&agent).serve(cmd_rx, shutdown));
    // The agent loop has stopped (all runs reported) once `serving` finishes; tell the bridge.
    tokio::spawn(async move {
        let _ = serving.await;
        let _ = stop_tx.send(true);
    });
    let mut unacked: BTreeMap<u64, StatusUpdate> = BTreeMap::new();
    let mut servers: Vec<String> =
        remote.server.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    if servers.is_empty() {
        servers.push(remote.server.clone());
    }
    let shared_tls = match remote.enroll.clone() {
        Some(enrollment) => Some(enrollment.start(&servers, stop_rx.clone()).await?),
        None => None,
    };
    let mut current = 0;
    let mut backoff = Duration::from_millis(200);
    let mut tried_after_stop = false;
    // The leader a follower named, tried next.
    let mut redirect: Option<String> = None;
    loop {
        let mut registered = false;
        let server = redirect.take().unwrap_or_else(|| servers.get(current).cloned().unwrap_or_else(|| remote.server.clone()));
        let server = server.as_str();
        let ended = session(
            &remote,
            shared_tls.as_ref(),
            server,
            &agent,
            &name,
            &mut registered,
            &mut unacked,
            &mut updates_rx,
            &cmd_tx,
            &mut net,
            stop_rx.clone(),
        )
        .await;
        if registered {
            // The last connection worked: start the backoff afresh.
            backoff = Duration::from_millis(200);
        }
        match ended {
            Ok(Ended::Done) => return Ok(()),
            // Told who leads: go there at once (a failover costs no backoff). Without a leader
            // yet, ask the next member shortly, the wait not growing: an election is short.
            Ok(Ended::NotLeader(leader)) if !*stop_rx.borrow() => {
                if !leader.is_empty() && leader != server {
                    tracing::info!(server, leader, "not the leader; connecting to the leader it names");
                    redirect = Some(leader);
                    continue;
                }
                tracing::info!(server, "not the leader, and no leader yet; asking again");
                let mut stop = stop_rx.clone();
                tokio::select! {
                    () = tokio::time::sleep(NO_LEADER_RETRY) => {}
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {}
                }
                current = (current + 1) % servers.len().max(1);
                continue;
            }
            Ok(Ended::NotLeader(_)) => {
                if updates_rx.is_empty() && unacked.is_empty() {
                    return Ok(());
                }
            }
            Ok(Ended::Broken(why)) => {
                if *stop_rx.borrow() && updates_rx.is_empty() && unacked.is_empty() {
                    return Ok(());
                }
                tracing::warn!(server, error = %why, retry_in = ?backoff, unacked = unacked.len(), "agent stream down; reconnecting");
            }
            Err(e) => return Err(e),
        }
        let mut stop = stop_rx.clone();
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            // Stopped while disconnected: one more attempt to flush, then give up.
            () = async { let _ = stop.wait_for(|s| *s).await; }, if !*stop_rx.borrow() => {}
        }
        if *stop_rx.borrow() {
            // Stopping and disconnected: one more attempt to deliver the last updates, no more.
            if tried_after_stop {
                tracing::warn!(unacked = unacked.len(), "stopping without delivering every status update");
                return Ok(());
            }
            tried_after_stop = true;
        }
        // The next server of a group; the wait grows once every one has been tried.
        current = (current + 1) % servers.len().max(1);
        if current == 0 {
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Why a connection could not be made.
pub(crate) enum Connect {
    /// Try again later.
    Broken(String),
    /// Trying again would not help (TLS refused).
    Fatal(RemoteError),
}

/// Connects to `server`'s agent endpoint; over TLS with `tls` for an `https://` one.
pub(crate) async fn connect(server: &str, tls: Option<&tug_tls::ClientTls>) -> Result<tonic::transport::Channel, Connect> {
    // Over TLS the connector does the TLS; tonic sees a plain URI.
    let (uri, tls) = match (tls, server.strip_prefix("https://")) {
        (Some(tls), Some(rest)) => (format!("http://{rest}"), Some(tls)),
        _ => (server.to_owned(), None),
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(uri) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(5))
            // A silent link (a cut cable, a dead server host) is noticed in ~15 s, not after TCP's
            // retransmissions give up many minutes later; the agent then reconnects and re-registers.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true),
        Err(e) => return Err(Connect::Broken(format!("invalid server address {server}: {e}"))),
    };
    let connected = match tls {
        Some(tls) => {
            let host = endpoint.uri().host().unwrap_or_default().to_owned();
            match crate::tls::Connector::new(tls.clone(), host) {
                Ok(c) => endpoint.connect_with_connector(c).await,
                Err(e) => return Err(Connect::Fatal(RemoteError::Tls { server: server.to_owned(), reason: e.to_string() })),
            }
        }
        None => endpoint.connect().await,
    };
    connected.map_err(|e| match tug_tls::explain(&e) {
        Some(reason) => Connect::Fatal(RemoteError::Tls { server: server.to_owned(), reason }),
        None => Connect::Broken(format!("cannot connect to {server}: {e}")),
    })
}

fn out(m: agent_message::Msg) -> AgentMessage {
    AgentMessage { msg: Some(m) }
}

/// One connection: register, resend what is unacknowledged, then pump both ways.
#[allow(clippy::too_many_arguments)]
async fn session(
    remote: &RemoteConfig,
    shared_tls: Option<&SharedTls>,
    server: &str,
    agent: &Agent,
    name: &str,
    registered: &mut bool,
    unacked: &mut BTreeMap<u64, StatusUpdate>,
    updates: &mut mpsc::Receiver<ToServer>,
    commands: &mpsc::Sender<ToAgent>,
    net: &mut NetBridge,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, RemoteError> {
    // A certificate got from the server is read at each connection: renewal replaces it.
    let tls = shared_tls.map(SharedTls::get).or_else(|| remote.tls.clone());
    let channel = match connect(server, tls.as_ref()).await {
        Ok(ch) => ch,
        Err(Connect::Broken(why)) => return Ok(Ended::Broken(why)),
        Err(Connect::Fatal(e)) => return Err(e),
    };
    let tls_failed = |e: &(dyn std::error::Error + 'static)| {
        tug_tls::explain(e).map(|reason| RemoteError::Tls { server: server.to_owned(), reason })
    };
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(1024);
    let register = tug_proto::Register {
        agent: name.to_string(),
        join_token: remote.join_token.clone(),
        cpus: remote.resources.cpus,
        mem: remote.resources.mem,
        disk: remote.resources.disk,
        attributes: remote.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>(),
        held: agent
            .held()
            .into_iter()
            .map(|h| tug_proto::HeldRun { run_id: h.run_id, attempt: h.attempt, finished: h.finished, replica: h.replica.unwrap_or_default() })
            .collect(),
        batches: true,
    };
    let _ = tx.send(out(agent_message::Msg::Register(register))).await;
    // A TLS failure shows only now when the server refused this agent's certificate (TLS 1.3
    // reports it after the handshake).
    let not_agent = |e: &tonic::Status| {
        tls_failed(e).or_else(|| http_answer(e).map(|status| RemoteError::NotAgentEndpoint { server: server.to_owned(), status }))
    };
    let mut inbound = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return not_agent(&e).map_or_else(|| Ok(Ended::Broken(format!("opening the agent stream: {e}"))), Err),
    };
    // Whether the server takes many updates in one message (an older one does not).
    let batches = match inbound.message().await {
        Ok(Some(ServerMessage { msg: Some(server_message::Msg::Registered(r)) })) => {
            agent.observe_epoch(r.epoch);
            r.batches
        }
        Ok(Some(ServerMessage { msg: Some(server_message::Msg::Refused(r)) })) => return Err(RemoteError::Refused(r.reason)),
        Ok(Some(ServerMessage { msg: Some(server_message::Msg::NotLeader(n)) })) => return Ok(Ended::NotLeader(n.leader)),
        Ok(other) => return Ok(Ended::Broken(format!("expected Registered, got {other:?}"))),
        Err(e) => return not_agent(&e).map_or_else(|| Ok(Ended::Broken(format!("registering: {e}"))), Err),
    };
    *registered = true;
    tracing::info!(server, resend = unacked.len(), "registered with the server");
    let resend: Vec<&StatusUpdate> = unacked.values().collect();
    for chunk in resend.chunks(MAX_BATCH) {
        if !send_updates(&tx, chunk, batches).await {
            return why_closed(&mut inbound, "stream closed while resending").await;
        }
    }
    // Network requests the last connection did not see answered (the server's handling is
    // idempotent).
    for (id, call) in &net.pending {
        if !send_net(&tx, *id, &call.op).await {
            return why_closed(&mut inbound, "stream closed while resending").await;
        }
    }
    let mut flushing: Option<tokio::time::Instant> = None;
    loop {
        // `updates` stays open (this bridge keeps the agent), but once the agent loop is done it
        // sends nothing more.
        if *stop.borrow() && updates.is_empty() {
            // The agent loop is done: wait (briefly) for the last acks.
            if unacked.is_empty() {
                return Ok(close(tx, inbound).await);
            }
            let deadline = *flushing.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_GRACE);
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(unacked = unacked.len(), "stopping before the server acknowledged every status update");
                return Ok(close(tx, inbound).await);
            }
        }
        tokio::select! {
            u = updates.recv(), if !updates.is_closed() || !updates.is_empty() => {
                // Everything already queued goes out together: the runs of one tick end within
                // microseconds of each other, and one message (one wakeup of the stream) for all
                // of them costs far less than one each.
                let mut next = u;
                let mut taken = 0;
                let mut batch: Vec<StatusUpdate> = Vec::new();
                while let Some(m) = next.take() {
                    taken += 1;
                    let sent = match m {
                        ToServer::Status(u) => {
                            batch.push(u);
                            true
                        }
                        // In order: the updates before it go first.
                        other => flush(&tx, &mut batch, unacked, batches).await && send_other(&tx, other).await,
                    };
                    if !sent {
                        return why_closed(&mut inbound, "stream closed").await;
                    }
                    if taken < MAX_BATCH {
                        next = updates.try_recv().ok();
                    }
                }
                if !flush(&tx, &mut batch, unacked, batches).await {
                    return why_closed(&mut inbound, "stream closed").await;
                }
            }
            call = async { net.calls.as_mut()?.recv().await }, if net.calls.is_some() => match call {
                Some(call) => {
                    net.next += 1;
                    let id = net.next;
                    let sent = send_net(&tx, id, &call.op).await;
                    net.pending.insert(id, call);
                    if !sent {
                        return why_closed(&mut inbound, "stream closed").await;
                    }
                }
                None => net.calls = None,
            },
            m = inbound.message() => match m {
                Ok(Some(ServerMessage { msg: Some(m) })) => match m {
                    server_message::Msg::NetPush(bytes) => match serde_json::from_slice::<NetPush>(&bytes) {
                        Ok(p) => {
                            if let Some(tx) = &net.pushes {
                                let _ = tx.send(p).await;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "undecodable network push from the server dropped"),
                    },
                    server_message::Msg::NetAnswer(bytes) => match serde_json::from_slice::<NetAnswer>(&bytes) {
                        Ok(a) => {
                            if let Some(call) = net.pending.remove(&a.id) {
                                let _ = call.reply.send(a.result);
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "undecodable network answer from the server dropped"),
                    },
                    server_message::Msg::ToAgent(bytes) => match serde_json::from_slice::<ToAgent>(&bytes) {
                        Ok(cmd) => {
                            if commands.send(cmd).await.is_err() {
                                tracing::warn!("agent loop has stopped; command dropped");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "undecodable command from the server dropped"),
                    },
                    server_message::Msg::ToAgents(bytes) => match serde_json::from_slice::<Vec<ToAgent>>(&bytes) {
                        Ok(cmds) => {
                            for cmd in cmds {
                                if commands.send(cmd).await.is_err() {
                                    tracing::warn!("agent loop has stopped; command dropped");
                                }
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "undecodable commands from the server dropped"),
                    },
                    server_message::Msg::Ack(a) => {
                        for seq in (a.seq != 0).then_some(a.seq).into_iter().chain(a.seqs) {
                            if let Some(u) = unacked.remove(&seq) {
                                agent.delivered(&u);
                            }
                        }
                    }
                    server_message::Msg::Refused(r) => return Err(RemoteError::Refused(r.reason)),
                    server_message::Msg::NotLeader(n) => return Ok(Ended::NotLeader(n.leader)),
                    server_message::Msg::Registered(r) => agent.observe_epoch(r.epoch),
                    server_message::Msg::LogRequest(req) => {
                        let (logs, tx) = (agent.logs().clone(), tx.clone());
                        tokio::spawn(async move {
                            let _ = tx.send(out(agent_message::Msg::LogChunk(crate::logs::answer(&logs, req).await))).await;
                        });
                    }
                    server_message::Msg::RemoveLogs(req) => {
                        let logs = agent.logs().clone();
                        tokio::spawn(async move { crate::logs::remove(&logs, req).await });
                    }
                },
                Ok(Some(ServerMessage { msg: None })) => {}
                Ok(None) => return Ok(Ended::Broken("the server closed the stream".into())),
                Err(e) => return Ok(Ended::Broken(format!("stream: {e}"))),
            },
            () = async { let _ = stop.changed().await; }, if !*stop.borrow() => {}
            () = tokio::time::sleep(Duration::from_millis(200)), if flushing.is_some() => {}
        }
    }
}

/// The stream broke under a send: the server may have said why just before (a refusal, such as
/// a certificate revoked while connected), which is worth reading before reconnecting. What else
/// arrives meanwhile is dropped: unacknowledged updates are resent after a reconnect, and the
/// server sends launches again to an agent that registers without them.
async fn why_closed(inbound: &mut tonic::Streaming<ServerMessage>, what: &str) -> Result<Ended, RemoteError> {
    let said = async {
        loop {
            match inbound.message().await {
                Ok(Some(ServerMessage { msg: Some(server_message::Msg::Refused(r)) })) => return Some(Err(RemoteError::Refused(r.reason))),
                Ok(Some(ServerMessage { msg: Some(server_message::Msg::NotLeader(n)) })) => return Some(Ok(Ended::NotLeader(n.leader))),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(1), said).await {
        Ok(Some(ended)) => ended,
        _ => Ok(Ended::Broken(what.to_owned())),
    }
}

/// Ends a connection cleanly: the agent's side of the stream is closed after what is queued on it
/// (a last heartbeat, the restart notice), and the server's end of it is awaited (briefly), so
/// that nothing queued is lost with the process.
async fn close(tx: mpsc::Sender<AgentMessage>, mut inbound: tonic::Streaming<ServerMessage>) -> Ended {
    drop(tx);
    let drained = async { while let Ok(Some(_)) = inbound.message().await {} };
    if tokio::time::timeout(FLUSH_GRACE, drained).await.is_err() {
        tracing::debug!("the server did not close the stream in time");
    }
    Ended::Done
}

async fn send_net(tx: &mpsc::Sender<AgentMessage>, id: u64, op: &NetOp) -> bool {
    match serde_json::to_vec(&NetRequest { id, op: op.clone() }) {
        Ok(bytes) => tx.send(out(agent_message::Msg::NetRequest(bytes))).await.is_ok(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a network request");
            true
        }
    }
}

/// What a network request is answered with, as it travels over the stream (the server's refusal
/// in words).
type NetResult = Result<Option<(PoolSpec, Claim)>, String>;

/// A container-network request on its way to the server, and where its answer goes.
pub struct NetCall {
    op: NetOp,
    reply: oneshot::Sender<NetResult>,
}

/// The receiving end of [`net_channel`], for [`run_with_net`].
pub type NetCalls = mpsc::Receiver<NetCall>;

/// Network requests across reconnects: the ones sent and not yet answered are sent again.
struct NetBridge {
    calls: Option<NetCalls>,
    pushes: Option<mpsc::Sender<NetPush>>,
    pending: BTreeMap<u64, NetCall>,
    next: u64,
}

/// [`Claims`] answered by the server over the agent stream.
pub struct RemoteClaims {
    tx: mpsc::Sender<NetCall>,
    vtep: Option<std::net::Ipv4Addr>,
}

/// The claims of a remote agent whose VXLAN tunnel endpoint is `vtep`, and the requests they
/// make for [`run_with_net`] to carry.
pub fn net_channel(vtep: Option<std::net::Ipv4Addr>) -> (RemoteClaims, NetCalls) {
    let (tx, rx) = mpsc::channel(1024);
    (RemoteClaims { tx, vtep }, rx)
}

impl RemoteClaims {
    async fn ask(&self, op: NetOp) -> Result<Option<(PoolSpec, Claim)>, ClaimError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(NetCall { op, reply }).await.map_err(|_| ClaimError::Stopping)?;
        answer.await.map_err(|_| ClaimError::Stopping)?.map_err(ClaimError::Refused)
    }
}

#[async_trait::async_trait]
impl Claims for RemoteClaims {
    async fn claim(&self, pool: &str, instance: &str) -> Result<(PoolSpec, Claim), ClaimError> {
        self.ask(NetOp::Claim { pool: pool.into(), instance: instance.into(), vtep: self.vtep }).await?.ok_or(ClaimError::NoAddress)
    }

    async fn release(&self, pool: &str, instance: &str) -> Result<(), ClaimError> {
        self.ask(NetOp::Release { pool: pool.into(), instance: instance.into() }).await.map(|_| ())
    }
}

/// Sends `batch` (kept in `unacked` until acknowledged) and empties it; false when the stream is
/// gone.
async fn flush(
    tx: &mpsc::Sender<AgentMessage>,
    batch: &mut Vec<StatusUpdate>,
    unacked: &mut BTreeMap<u64, StatusUpdate>,
    batches: bool,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    let sent = send_updates(tx, &batch.iter().collect::<Vec<_>>(), batches).await;
    unacked.extend(batch.drain(..).map(|u| (u.seq, u)));
    sent
}

/// Sends status updates: in one message to a server that takes batches, else one by one.
async fn send_updates(tx: &mpsc::Sender<AgentMessage>, updates: &[&StatusUpdate], batches: bool) -> bool {
    if batches {
        return match serde_json::to_vec(updates) {
            Ok(bytes) => tx.send(out(agent_message::Msg::StatusUpdates(bytes))).await.is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode status updates");
                true
            }
        };
    }
    for u in updates {
        match serde_json::to_vec(u) {
            Ok(bytes) => {
                if tx.send(out(agent_message::Msg::StatusUpdate(bytes))).await.is_err() {
                    return false;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a status update"),
        }
    }
    true
}

/// Sends a heartbeat or a health report; false when the stream is gone.
async fn send_other(tx: &mpsc::Sender<AgentMessage>, m: ToServer) -> bool {
    let m = match m {
        ToServer::Heartbeat { warm_containers, .. } => agent_message::Msg::Heartbeat(tug_proto::Heartbeat { warm_containers }),
        // Health is a current state, not a log: one lost on a broken stream is sent again by the
        // next change, and the server re-checks replicas it hears nothing of.
        ToServer::Health(h) => agent_message::Msg::Health(serde_json::to_vec(&h).unwrap_or_default()),
        ToServer::BackSoon { within, .. } => {
            agent_message::Msg::BackSoon(tug_proto::BackSoon { within_ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX) })
        }
        // Remote agents say what they hold in Register, once per connection; status updates go
        // through `flush`.
        ToServer::Held { .. } | ToServer::Status(_) => return true,
    };
    tx.send(out(m)).await.is_ok()
}
