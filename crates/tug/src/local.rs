//! The agent `tug up` runs in its own process: a [`tug_agent::Agent`] served on the channels
//! the embedded server gives it ([`LocalLink`]), with the host's capacity.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tug_agent::runtime::SharedRuntime;
use tug_agent::{Agent, AgentConfig};
use tug_core::protocol::{StatusUpdate, ToAgent, ToServer};
use tug_server::embedded::{LocalAgent, LocalLink};
use tug_server::scheduler::FromAgent;

/// An agent for [`tug_server::embedded::Embedded::start`], running on `runtime`.
pub fn local_agent(config: AgentConfig, runtime: SharedRuntime) -> LocalAgent {
    LocalAgent {
        name: config.name.clone(),
        resources: tug_agent::capacity::host_capacity(),
        start: Box::new(move |link: LocalLink| {
            let (reports_tx, reports_rx) = mpsc::channel(65_536);
            let agent = Agent::with_acks(config, runtime, link.logs, reports_tx);
            Box::pin(serve_in_process(agent, link.commands, reports_rx, link.updates, link.shutdown))
        }),
    }
}

/// How long an in-process agent that has stopped waits for the acks of its last status updates.
const FLUSH_GRACE: Duration = Duration::from_secs(3);

/// Serves an agent in this process (one built [with acks](Agent::with_acks), reporting on
/// `reports`) until it stops: what it holds goes to the scheduler first, then its heartbeats and
/// status updates; a final update counts as delivered only once the scheduler has written it,
/// as for a remote agent. Ends once the agent has stopped and its last updates are acknowledged
/// (or [`FLUSH_GRACE`] has passed).
pub async fn serve_in_process(
    agent: Arc<Agent>,
    commands: mpsc::Receiver<ToAgent>,
    mut reports: mpsc::Receiver<ToServer>,
    updates: mpsc::Sender<FromAgent>,
    shutdown: impl Future<Output = ()>,
) {
    agent.recover().await;
    let held = ToServer::Held { agent: agent.name().to_string(), runs: agent.held() };
    if updates.send(held.into()).await.is_err() {
        tracing::warn!("the scheduler has stopped; held runs not reported");
    }
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let mut unacked: std::collections::HashMap<u64, StatusUpdate> = std::collections::HashMap::new();
    let serving = Arc::clone(&agent).serve(commands, shutdown);
    tokio::pin!(serving);
    let mut stopped_at: Option<tokio::time::Instant> = None;
    loop {
        if stopped_at.is_some() && reports.is_empty() && unacked.is_empty() {
            return;
        }
        let grace = async {
            match stopped_at {
                Some(at) => tokio::time::sleep_until(at + FLUSH_GRACE).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut serving, if stopped_at.is_none() => stopped_at = Some(tokio::time::Instant::now()),
            Some(msg) = reports.recv() => {
                let acks = match &msg {
                    ToServer::Status(u) => {
                        if u.state.is_terminal() {
                            unacked.insert(u.seq, u.clone());
                        }
                        Some(acks_tx.clone())
                    }
                    _ => None,
                };
                if updates.send(FromAgent { msg, acks }).await.is_err() {
                    tracing::warn!("the scheduler has stopped; status update not delivered");
                }
            }
            Some(seq) = acks.recv() => {
                if let Some(u) = unacked.remove(&seq) {
                    agent.delivered(&u);
                }
            }
            () = grace => {
                tracing::warn!(unacked = unacked.len(), "stopping before the server wrote every status update");
                return;
            }
        }
    }
}

/// Addresses for `tug up`'s own agent: claimed from the embedded server's control plane directly,
/// with the same answers a remote agent gets over its stream. Connected once the server has
/// started ([`LocalClaims::connect`]); no container asks before then, since runs come from it.
pub struct LocalClaims {
    agent: String,
    vtep: Option<std::net::Ipv4Addr>,
    server: std::sync::OnceLock<(Arc<tug_server::net::Network>, tug_server::scheduler::SchedulerHandle)>,
    ids: std::sync::atomic::AtomicU64,
}

impl LocalClaims {
    /// Claims for agent `agent`, whose VXLAN tunnel endpoint (if any) is `vtep`.
    pub fn new(agent: &str, vtep: Option<std::net::Ipv4Addr>) -> LocalClaims {
        LocalClaims { agent: agent.to_owned(), vtep, server: std::sync::OnceLock::new(), ids: Default::default() }
    }

    /// Answers from now on from `net`, ordering moves with `scheduler`'s view of the agents.
    pub fn connect(&self, net: Arc<tug_server::net::Network>, scheduler: tug_server::scheduler::SchedulerHandle) {
        let _ = self.server.set((net, scheduler));
    }

    async fn ask(&self, op: tug_net::protocol::NetOp) -> Result<Option<(tug_net::PoolSpec, tug_net::Claim)>, String> {
        let (net, scheduler) = self.server.get().ok_or("the server is still starting; start the container again")?;
        let id = self.ids.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tug_server::net::answer(net, scheduler, &self.agent, tug_net::protocol::NetRequest { id, op }).await.result
    }
}

#[async_trait::async_trait]
impl tug_agent::net::Claims for LocalClaims {
    async fn claim(&self, pool: &str, instance: &str) -> Result<(tug_net::PoolSpec, tug_net::Claim), String> {
        let op = tug_net::protocol::NetOp::Claim { pool: pool.into(), instance: instance.into(), vtep: self.vtep };
        self.ask(op).await?.ok_or_else(|| "the server answered a claim without an address".into())
    }

    async fn release(&self, pool: &str, instance: &str) -> Result<(), String> {
        self.ask(tug_net::protocol::NetOp::Release { pool: pool.into(), instance: instance.into() }).await.map(|_| ())
    }
}
