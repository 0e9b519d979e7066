//! The server end of the agent protocol: one gRPC stream per remote agent (`tug agent run`).
//!
//! The agent opens the stream with `Register`; a wrong join token gets `Refused` and the stream
//! closes. Otherwise the agent joins the scheduler's registry with a command channel whose
//! launches and kills are forwarded down the stream, and its heartbeats and status updates go into
//! the scheduler's updates channel. Each status update is acknowledged by its `seq` once the
//! scheduler has written it to the store (the agent then forgets it: an earlier ack could lose a
//! run's result in a server crash). Agents and servers that both say `batches` send every queued
//! update in one message and every written update's ack in one `Ack`, so the cost of the stream
//! follows the number of wakeups, not the number of runs.
//! The runs the agent holds, from `Register`, go into that channel first (as `ToServer::Held`),
//! so the scheduler reconciles them before it sees anything else from this connection.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tug_core::placement::Capacity;
use tug_core::protocol::{HeldRun, StatusUpdate, ToAgent, ToServer};
use tug_proto::{AgentMessage, AgentService, AgentServiceServer, ServerMessage, agent_message, server_message};
use tug_tls::certs::{AgentIssuer, IssueError};

use crate::logs::RunLogs;
use crate::scheduler::{FromAgent, SchedulerHandle};
use crate::scheduler::agents::Registration;

/// Messages queued towards one agent before the stream applies backpressure.
const OUTBOUND: usize = 1024;
/// The most commands sent to an agent in one message.
const MAX_BATCH: usize = 1024;

/// The agent protocol's gRPC service.
pub struct AgentGateway {
    scheduler: SchedulerHandle,
    updates: mpsc::Sender<FromAgent>,
    admission: Admission,
    stop: watch::Receiver<bool>,
    logs: RunLogs,
    /// Answers agents' container-network requests; `None`: they are refused.
    net: Option<std::sync::Arc<crate::net::Network>>,
}

impl AgentGateway {
    /// A gateway into `scheduler`. With a `join_token`, agents must present it; without one every
    /// agent is accepted. Streams end when `stop` becomes true, so the scheduler can shut down.
    /// Each connected agent serves its run logs to `logs` (see `logs.rs`).
    pub fn new(
        scheduler: SchedulerHandle,
        updates: mpsc::Sender<FromAgent>,
        join_token: Option<String>,
        stop: watch::Receiver<bool>,
        logs: RunLogs,
    ) -> AgentGateway {
        AgentGateway { scheduler, updates, admission: Admission { join_token, ..Admission::default() }, stop, logs, net: None }
    }

    /// Checks agents' client certificates with `tls` (the agent endpoint's settings: connected
    /// agents whose certificates its revocation list comes to revoke are cut off) and, with an
    /// `issuer`, signs certificates for agents that bring the join token.
    pub fn with_certificates(mut self, tls: Option<tug_tls::ServerTls>, issuer: Option<Arc<AgentIssuer>>) -> AgentGateway {
        self.admission.tls = tls;
        self.admission.issuer = issuer;
        self
    }

    /// Answers agents' claims and releases of container addresses from `net`.
    pub fn with_network(mut self, net: std::sync::Arc<crate::net::Network>) -> AgentGateway {
        self.net = Some(net);
        self
    }

    /// The tonic service, for `tonic::transport::Server::add_service`.
    pub fn into_service(self) -> AgentServiceServer<AgentGateway> {
        AgentServiceServer::new(self)
    }
}

fn msg(m: server_message::Msg) -> Result<ServerMessage, Status> {
    Ok(ServerMessage { msg: Some(m) })
}

#[tonic::async_trait]
impl AgentService for AgentGateway {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send + 'static>>;

    async fn session(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        // Over TLS the connection's info is ours (the peer's address and client certificate).
        let tls_peer = request.extensions().get::<TlsPeer>().cloned();
        let peer = request.remote_addr().or(tls_peer.as_ref().map(|p| p.addr));
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream closed before Register"))?;
        let Some(agent_message::Msg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument("the first message on the stream must be Register"));
        };
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND);
        let stream: Self::SessionStream = Box::pin(ReceiverStream::new(out_rx));
        if let Some((reason, why)) = self.admission.refused(&reg.agent, &reg.join_token, tls_peer.as_ref()) {
            tracing::warn!(agent = %reg.agent, ?peer, "agent refused: {why}");
            let _ = out_tx.send(msg(server_message::Msg::Refused(tug_proto::Refused { reason }))).await;
            return Ok(Response::new(stream));
        }
        let name = reg.agent.clone();
        let held: Vec<HeldRun> = reg
            .held
            .iter()
            .map(|h| HeldRun { run_id: h.run_id, attempt: h.attempt, finished: h.finished, replica: Some(h.replica.clone()).filter(|r| !r.is_empty()) })
            .collect();
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<ToAgent>(OUTBOUND);
        self.scheduler
            .register_agent(Registration {
                name: name.clone(),
                tx: cmd_tx,
                resources: Capacity { cpus: reg.cpus, mem: reg.mem, disk: reg.disk },
                attributes: reg.attributes.into_iter().collect(),
            })
            .await
            .map_err(|e| Status::unavailable(format!("scheduler: {e}")))?;
        tracing::info!(agent = %name, ?peer, cpus = reg.cpus, mem = reg.mem, held = held.len(), "remote agent connected");
        // Before anything else this stream carries, so the scheduler reconciles first.
        self.updates
            .send(ToServer::Held { agent: name.clone(), runs: held }.into())
            .await
            .map_err(|_| Status::unavailable("the scheduler is shutting down"))?;
        let registered = tug_proto::Registered { epoch: self.scheduler.epoch(), batches: true };
        let _ = out_tx.send(msg(server_message::Msg::Registered(registered))).await;
        // An agent that says `batches` gets one Ack per written batch instead of one per update,
        // and the commands queued for it (a tick's launches) in one message.
        let batches = reg.batches;
        let updates = self.updates.clone();
        let mut stop = self.stop.clone();
        let mut logs = self.logs.connect(&name);
        // The scheduler acknowledges this connection's status updates here once they are written.
        let (acks_tx, mut acks) = mpsc::unbounded_channel();
        // Answers to this connection's container-network requests, made on tasks of their own.
        let (net_tx, mut net_answers) = mpsc::unbounded_channel::<tug_net::protocol::NetAnswer>();
        let (net, scheduler) = (self.net.clone(), self.scheduler.clone());
        // With client certificates: a new revocation list may revoke this agent's, and cuts it off.
        let cert = tls_peer.and_then(|p| p.cert);
        let tls = self.admission.tls.clone().filter(|_| cert.is_some());
        let mut crl_changes = tls.as_ref().and_then(|t| t.crl_changes());
        // What the network tells agents unasked: every VXLAN pool's routes now, then changes.
        let mut pushes = match &net {
            Some(n) => {
                let rx = n.subscribe();
                for r in n.routes().await.unwrap_or_default() {
                    push(&out_tx, &r).await;
                }
                Some(rx)
            }
            None => None,
        };
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(seq) = acks.recv() => {
                        // A written batch's acks arrive together: take all that are there.
                        let mut seqs = vec![seq];
                        while let Ok(seq) = acks.try_recv() {
                            seqs.push(seq);
                        }
                        if !send_acks(&out_tx, seqs, batches).await {
                            break;
                        }
                    }
                    p = async { pushes.as_mut()?.recv().await.ok() }, if pushes.is_some() => match p {
                        Some((to, p)) if to.as_deref().is_none_or(|t| t == name) => push(&out_tx, &p).await,
                        Some(_) => {}
                        // Lagged behind or closed: the next change carries the whole pool again.
                        None => {}
                    },
                    Some(a) = net_answers.recv() => {
                        let Ok(bytes) = serde_json::to_vec(&a) else { continue };
                        if out_tx.send(msg(server_message::Msg::NetAnswer(bytes))).await.is_err() {
                            break;
                        }
                    }
                    Some(m) = logs.next() => {
                        if out_tx.send(msg(m)).await.is_err() {
                            break;
                        }
                    }
                    cmd = cmd_rx.recv() => {
                        // None: the agent registered again on a newer stream, which replaced ours.
                        let Some(cmd) = cmd else { break };
                        // A tick's launches arrive together: all that are queued go in one message.
                        let mut cmds = vec![cmd];
                        while batches && cmds.len() < MAX_BATCH && let Ok(cmd) = cmd_rx.try_recv() {
                            cmds.push(cmd);
                        }
                        let encoded = if cmds.len() == 1 {
                            serde_json::to_vec(&cmds[0]).map(server_message::Msg::ToAgent)
                        } else {
                            serde_json::to_vec(&cmds).map(server_message::Msg::ToAgents)
                        };
                        let m = match encoded {
                            Ok(m) => m,
                            Err(e) => { tracing::error!(agent = %name, error = %e, "cannot encode a command"); continue }
                        };
                        if out_tx.send(msg(m)).await.is_err() {
                            break;
                        }
                    }
                    m = inbound.message() => match m {
                        Ok(Some(AgentMessage { msg: Some(agent_message::Msg::LogChunk(c)) })) => logs.answer(c),
                        Ok(Some(AgentMessage { msg: Some(agent_message::Msg::NetRequest(bytes)) })) => {
                            net_request(&name, &bytes, net.clone(), scheduler.clone(), net_tx.clone());
                        }
                        Ok(Some(AgentMessage { msg: Some(m) })) => {
                            if !forward(&name, m, &updates, &acks_tx).await {
                                break;
                            }
                        }
                        Ok(Some(AgentMessage { msg: None })) => {}
                        Ok(None) => { tracing::info!(agent = %name, "remote agent disconnected"); break }
                        Err(e) => { tracing::warn!(agent = %name, error = %e, "remote agent stream broke"); break }
                    },
                    () = async { let _ = stop.wait_for(|s| *s).await; } => break,
                    changed = async { crl_changes.as_mut()?.changed().await.ok() }, if crl_changes.is_some() => {
                        if changed.is_none() {
                            crl_changes = None;
                            continue;
                        }
                        let (Some(tls), Some(cert)) = (&tls, &cert) else { continue };
                        if tls.revokes(cert) {
                            tracing::warn!(agent = %name, "agent cut off: its client certificate has been revoked");
                            let reason = format!(
                                "this agent's client certificate has been revoked (tug certs revoke), so the server has \
                                 cut it off; a host that should join again needs a new name ({name} stays revoked)"
                            );
                            let _ = out_tx.send(msg(server_message::Msg::Refused(tug_proto::Refused { reason }))).await;
                            // The answer ends after the refusal. The agent's half stays open until
                            // it has read it and gone (briefly): dropping that half at once resets
                            // the stream, and the agent might see only the reset.
                            drop(out_tx);
                            let drained = async { while let Ok(Some(_)) = inbound.message().await {} };
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drained).await;
                            break;
                        }
                    }
                }
            }
            // Dropping `cmd_rx` leaves the registry entry in place: the agent is lost once its
            // heartbeats have been missing for the agent timeout, unless it reconnects first.
        });
        Ok(Response::new(stream))
    }

    async fn enroll(&self, request: Request<tug_proto::EnrollRequest>) -> Result<Response<tug_proto::EnrollReply>, Status> {
        let peer = request.extensions().get::<TlsPeer>().cloned();
        self.admission.enroll(peer, request.into_inner()).await.map(Response::new)
    }
}

/// Who may join and how, the same on the leader and on followers: the join token, client
/// certificates, and the CA key that signs certificates for agents that bring the join token.
///
/// | the agent presents | it may |
/// | --- | --- |
/// | a client certificate for its name | join (the join token is not needed: it only bootstraps certificates) and renew its certificate |
/// | a client certificate for another name | nothing |
/// | no certificate, to a server that checks them | only ask for a certificate, with the join token |
/// | no certificate, to a server that does not | join with the join token (any name) |
#[derive(Clone, Default)]
pub struct Admission {
    /// The secret agents must present (without a certificate); `None`: any agent may join.
    pub join_token: Option<String>,
    /// The agent endpoint's TLS settings; with client certificates, every agent needs one.
    pub tls: Option<tug_tls::ServerTls>,
    /// Signs agents' certificates (`--agent-ca-key`).
    pub issuer: Option<Arc<AgentIssuer>>,
}

impl Admission {
    /// Why an agent named `agent` presenting `token` over a connection from `peer` may not join,
    /// as the reason told to it and the reason logged; `None` when it may.
    pub fn refused(&self, agent: &str, token: &str, peer: Option<&TlsPeer>) -> Option<(String, &'static str)> {
        match peer.and_then(|p| p.cert.as_ref()) {
            // With client certificates, an agent may only join under a name its certificate has:
            // a stolen certificate of one host cannot pose as another and take its runs.
            Some(cert) if !tug_tls::certs::cert_is_for(cert, agent) => Some((
                format!(
                    "this agent's client certificate is not for the name {agent:?}: run it with --name set to the name in its \
                     certificate, or make a certificate for this name (tug certs agent DIR {agent})"
                ),
                "its client certificate is for another name",
            )),
            Some(_) => None,
            None if self.tls.as_ref().is_some_and(|t| t.requires_client_certs()) => Some((
                "the server requires a client certificate (mTLS): give --cert and --key, or only --ca and the join token \
                 to get one from this server"
                    .to_string(),
                "the client presented no certificate",
            )),
            None => join_token_refused(self.join_token.as_deref(), token).map(|r| (r, "wrong join token")),
        }
    }

    /// Signs the certificate `req` asks for, when its agent brings the join token or renews a
    /// certificate for its own name.
    pub async fn enroll(&self, peer: Option<TlsPeer>, req: tug_proto::EnrollRequest) -> Result<tug_proto::EnrollReply, Status> {
        let Some(issuer) = self.issuer.clone() else {
            return Err(Status::failed_precondition(
                "this server does not issue agent certificates: start it with --agent-ca-key (the key of its --agent-ca), \
                 or give the agent --cert and --key made with tug certs agent",
            ));
        };
        let Some(peer) = peer else {
            return Err(Status::failed_precondition("agent certificates are issued over TLS only: give the server as https://"));
        };
        let name = req.agent;
        let valid = !name.is_empty() && name.len() <= 253 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
        if !valid {
            return Err(Status::invalid_argument(format!(
                "invalid agent name {name:?} for a certificate: use letters, digits, '-' and '.' (a host name)"
            )));
        }
        let renewal = peer.cert.as_ref().is_some_and(|c| tug_tls::certs::cert_is_for(c, &name));
        if !renewal {
            let refused = match self.join_token.as_deref() {
                None => Some("this server issues agent certificates only against a join token, and it has none".to_string()),
                Some(expected) => join_token_refused(Some(expected), &req.join_token),
            };
            if let Some(reason) = refused {
                tracing::warn!(agent = %name, peer = %peer.addr, "agent certificate refused: wrong join token");
                return Err(Status::permission_denied(format!("{reason}; no certificate was issued")));
            }
        }
        let signed = {
            let name = name.clone();
            tokio::task::spawn_blocking(move || issuer.sign(&name, &req.csr)).await
        };
        match signed {
            Ok(Ok(certificate)) => {
                let how = if renewal { "renewed" } else { "issued against the join token" };
                tracing::info!(agent = %name, peer = %peer.addr, "agent certificate {how}");
                Ok(tug_proto::EnrollReply { certificate })
            }
            Ok(Err(e @ IssueError::Revoked(_))) => {
                tracing::warn!(agent = %name, peer = %peer.addr, "agent certificate refused: the name is revoked");
                Err(Status::permission_denied(e.to_string()))
            }
            Ok(Err(e @ IssueError::BadRequest(_))) => Err(Status::invalid_argument(e.to_string())),
            Ok(Err(e)) => {
                tracing::error!(agent = %name, error = %e, "cannot issue an agent certificate");
                Err(Status::internal(format!("the server cannot issue the certificate: {e}")))
            }
            Err(e) => Err(Status::internal(format!("the server cannot issue the certificate: {e}"))),
        }
    }
}

/// Why an agent presenting `given` may not join a server that expects `expected` (`None`: every
/// agent may), in words that say what to do; `None` when it may.
pub(crate) fn join_token_refused(expected: Option<&str>, given: &str) -> Option<String> {
    let expected = expected?;
    // In constant time, as API tokens are compared.
    if crate::auth::tokens::same_secret(expected, given) {
        return None;
    }
    Some(if given.is_empty() {
        "join token refused: the server requires one; pass --join-token or set TUG_JOIN_TOKEN".to_string()
    } else {
        "join token refused: it does not match the server's; check --join-token / TUG_JOIN_TOKEN on both sides".to_string()
    })
}

/// Acknowledges `seqs` down an agent's stream: in one message to an agent that reads
/// `Ack.seqs`, one by one to an older agent. False when the stream is gone.
async fn send_acks(out: &mpsc::Sender<Result<ServerMessage, Status>>, seqs: Vec<u64>, batches: bool) -> bool {
    if batches {
        return out.send(msg(server_message::Msg::Ack(tug_proto::Ack { seq: 0, seqs }))).await.is_ok();
    }
    for seq in seqs {
        if out.send(msg(server_message::Msg::Ack(tug_proto::Ack { seq, seqs: Vec::new() }))).await.is_err() {
            return false;
        }
    }
    true
}

/// Sends one network push down an agent's stream.
async fn push(out: &mpsc::Sender<Result<ServerMessage, Status>>, p: &tug_net::protocol::NetPush) {
    if let Ok(bytes) = serde_json::to_vec(p) {
        let _ = out.send(msg(server_message::Msg::NetPush(bytes))).await;
    }
}

/// Answers a container-network request on a task of its own (a claim waits on the store), the
/// answer going back on `answers`.
fn net_request(
    agent: &str,
    bytes: &[u8],
    net: Option<std::sync::Arc<crate::net::Network>>,
    scheduler: SchedulerHandle,
    answers: mpsc::UnboundedSender<tug_net::protocol::NetAnswer>,
) {
    let req: tug_net::protocol::NetRequest = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(agent, error = %e, "undecodable container-network request dropped");
            return;
        }
    };
    let agent = agent.to_owned();
    tokio::spawn(async move {
        let answer = match net {
            Some(net) => crate::net::answer(&net, &scheduler, &agent, req).await,
            None => tug_net::protocol::NetAnswer {
                id: req.id,
                result: Err("this server has no container network; start it with `tug server`".into()),
            },
        };
        let _ = answers.send(answer);
    });
}

/// Passes one agent message to the scheduler (a status update with where to acknowledge it);
/// false when the scheduler is gone.
async fn forward(
    name: &str,
    m: agent_message::Msg,
    updates: &mpsc::Sender<FromAgent>,
    acks: &mpsc::UnboundedSender<u64>,
) -> bool {
    match m {
        agent_message::Msg::Heartbeat(h) => {
            let hb = ToServer::Heartbeat { agent: name.to_string(), warm_containers: h.warm_containers };
            updates.send(hb.into()).await.is_ok()
        }
        agent_message::Msg::StatusUpdate(bytes) => {
            let update: StatusUpdate = match serde_json::from_slice(&bytes) {
                Ok(u) => u,
                Err(e) => {
                    tracing::error!(agent = %name, error = %e, "undecodable status update dropped");
                    return true;
                }
            };
            let report = FromAgent { msg: ToServer::Status(update), acks: Some(acks.clone()) };
            updates.send(report).await.is_ok()
        }
        agent_message::Msg::StatusUpdates(bytes) => {
            let batch: Vec<StatusUpdate> = match serde_json::from_slice(&bytes) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(agent = %name, error = %e, "undecodable batch of status updates dropped");
                    return true;
                }
            };
            // Room for the whole batch at once: one wait instead of one per update.
            let Ok(permits) = updates.reserve_many(batch.len().min(updates.max_capacity())).await else { return false };
            let mut batch = batch.into_iter();
            for (permit, u) in permits.zip(batch.by_ref()) {
                permit.send(FromAgent { msg: ToServer::Status(u), acks: Some(acks.clone()) });
            }
            for u in batch {
                if updates.send(FromAgent { msg: ToServer::Status(u), acks: Some(acks.clone()) }).await.is_err() {
                    return false;
                }
            }
            true
        }
        agent_message::Msg::Health(bytes) => match serde_json::from_slice(&bytes) {
            Ok(h) => updates.send(ToServer::Health(h).into()).await.is_ok(),
            Err(e) => {
                tracing::error!(agent = %name, error = %e, "undecodable health report dropped");
                true
            }
        },
        agent_message::Msg::BackSoon(b) => {
            let within = std::time::Duration::from_millis(b.within_ms);
            updates.send(ToServer::BackSoon { agent: name.to_string(), within }.into()).await.is_ok()
        }
        agent_message::Msg::Register(_) => {
            tracing::warn!(agent = %name, "second Register on one stream ignored");
            true
        }
        // Answered where the request was made (the session loop).
        agent_message::Msg::LogChunk(_) | agent_message::Msg::NetRequest(_) => true,
    }
}

/// Serves the agent protocol on `listener` until `shutdown` completes; over TLS with `tls` (which,
/// when it requires client certificates, makes every agent present one and join under a name in
/// it).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: AgentGateway,
    tls: Option<tug_tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    serve_service(listener, gateway.into_service(), tls, shutdown).await
}

/// [`serve`] with another implementation of the agent protocol (a follower's
/// [`crate::cluster::Redirect`]).
pub async fn serve_service<S: AgentService>(
    listener: tokio::net::TcpListener,
    service: AgentServiceServer<S>,
    tls: Option<tug_tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        // Notice dead peers on the transport too, not only by missing heartbeats.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .add_service(service);
    match tls {
        None => {
            router.serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown).await
        }
        Some(tls) => {
            let mut listener = tug_tls::TlsListener::new(listener, tls, "agent endpoint")
                .map_err(|e| tracing::error!(error = %e, "agent endpoint: cannot listen"))
                .ok();
            let incoming = futures::stream::poll_fn(move |cx| match listener.as_mut() {
                Some(l) => l.poll_next(cx).map(|c| c.map(|(stream, addr)| Ok::<_, std::io::Error>(TlsConn::new(stream, addr)))),
                None => std::task::Poll::Ready(None),
            });
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    }
}

/// Who is at the other end of a TLS agent connection: its address and, with mTLS, its client
/// certificate.
#[derive(Debug, Clone)]
pub struct TlsPeer {
    /// The peer's address.
    pub addr: std::net::SocketAddr,
    /// Its end-entity client certificate, when it presented one.
    pub cert: Option<rustls_pki_types::CertificateDer<'static>>,
}

/// An agent connection over TLS, as tonic serves it.
struct TlsConn {
    inner: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    peer: TlsPeer,
}

impl TlsConn {
    fn new(inner: tokio_rustls::server::TlsStream<tokio::net::TcpStream>, addr: std::net::SocketAddr) -> TlsConn {
        let cert = inner.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
        TlsConn { inner, peer: TlsPeer { addr, cert } }
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsPeer;
    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use tonic::Code;

    /// A CA in `dir`, and an admission that signs with it against the join token "s3cret".
    fn issuing(dir: &std::path::Path) -> Admission {
        tug_tls::certs::init(dir, &[], &["made".into()], tug_tls::certs::Validity::days(1)).unwrap();
        let issuer = AgentIssuer::load(&dir.join("ca.pem"), &dir.join("ca-key.pem"), std::time::Duration::from_secs(600)).unwrap();
        Admission { join_token: Some("s3cret".into()), tls: None, issuer: Some(Arc::new(issuer)) }
    }

    fn peer(cert: Option<rustls_pki_types::CertificateDer<'static>>) -> Option<TlsPeer> {
        Some(TlsPeer { addr: "10.0.0.9:5000".parse().unwrap(), cert })
    }

    fn request(agent: &str, token: &str) -> tug_proto::EnrollRequest {
        let (_, csr) = tug_tls::certs::agent_request(agent).unwrap();
        tug_proto::EnrollRequest { agent: agent.into(), join_token: token.into(), csr }
    }

    fn cert_of(reply: &tug_proto::EnrollReply) -> rustls_pki_types::CertificateDer<'static> {
        rustls_pki_types::CertificateDer::from_pem_slice(reply.certificate.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn certificates_go_to_the_join_token_or_to_their_own_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = issuing(dir.path());
        let got = a.enroll(peer(None), request("host1", "s3cret")).await.unwrap();
        let cert = cert_of(&got);
        assert!(tug_tls::certs::cert_is_for(&cert, "host1"));
        // A wrong or missing token gets nothing, and is told why.
        for token in ["guess", ""] {
            let err = a.enroll(peer(None), request("host2", token)).await.unwrap_err();
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
            assert!(err.message().contains("join token refused") && err.message().contains("no certificate was issued"), "{err:?}");
        }
        // Renewal: host1's certificate is enough for host1, not for another name.
        let renewed = a.enroll(peer(Some(cert.clone())), request("host1", "")).await.unwrap();
        assert!(tug_tls::certs::cert_is_for(&cert_of(&renewed), "host1"));
        let err = a.enroll(peer(Some(cert)), request("host3", "")).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        // Names a certificate cannot carry, and requests that are not requests.
        let bad_name = tug_proto::EnrollRequest { agent: "bad name".into(), ..request("host1", "s3cret") };
        let err = a.enroll(peer(None), bad_name).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("invalid agent name \"bad name\""), "{err:?}");
        let bad = tug_proto::EnrollRequest { agent: "host4".into(), join_token: "s3cret".into(), csr: "garbage".into() };
        assert_eq!(a.enroll(peer(None), bad).await.unwrap_err().code(), Code::InvalidArgument);
        // Over plain gRPC (no TLS peer) nothing is issued.
        let err = a.enroll(None, request("host5", "s3cret")).await.unwrap_err();
        assert!(err.message().contains("over TLS only"), "{err:?}");
        // A revoked name gets no new certificate, even with the token.
        tug_tls::certs::revoke_agent(dir.path(), "host1").unwrap();
        let err = a.enroll(peer(None), request("host1", "s3cret")).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("\"host1\" has been revoked"), "{err:?}");
        // A server without the CA key says how to get one.
        let plain = Admission { issuer: None, ..a.clone() };
        let err = plain.enroll(peer(None), request("host6", "s3cret")).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("--agent-ca-key"), "{err:?}");
    }

    #[test]
    fn an_agent_with_a_certificate_for_its_name_needs_no_join_token() {
        let dir = tempfile::tempdir().unwrap();
        let a = issuing(dir.path());
        let made = tug_tls::files::load_certs(&dir.path().join("agent-made.pem"), "certificate").unwrap().remove(0);
        assert_eq!(a.refused("made", "", peer(Some(made.clone())).as_ref()), None);
        let (reason, why) = a.refused("other", "s3cret", peer(Some(made)).as_ref()).unwrap();
        assert!(reason.contains("not for the name \"other\""), "{reason}");
        assert_eq!(why, "its client certificate is for another name");
        // Without a certificate, on a server that does not check them: the token decides.
        assert_eq!(a.refused("any", "s3cret", peer(None).as_ref()), None);
        assert_eq!(a.refused("any", "guess", peer(None).as_ref()).unwrap().1, "wrong join token");
    }
}
