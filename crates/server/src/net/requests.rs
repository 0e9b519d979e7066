//! Agents' claim and release requests (`tug_net::protocol`), answered from the control plane.

use tug_net::protocol::{NetAnswer, NetOp, NetRequest};
use tug_net::Identity;

use std::time::Duration;

use super::{NetError, Network};
use crate::scheduler::SchedulerHandle;
use crate::scheduler::agents::AgentState;

/// How long a claim waits for the agent that holds the address to stop the instance.
const MOVE_WAIT: Duration = Duration::from_secs(15);

/// Claims `who`'s address for `agent`. While a live agent holds it, that agent is asked to stop
/// the instance, and the claim waits (up to [`MOVE_WAIT`]) for its release: a move is ordered,
/// stopped there before plumbed here.
async fn claim_in_order(
    net: &Network,
    scheduler: &SchedulerHandle,
    agent: &str,
    pool: &str,
    who: &Identity,
) -> Result<Option<(tug_net::PoolSpec, tug_net::Claim)>, String> {
    let deadline = tokio::time::Instant::now() + MOVE_WAIT;
    let mut asked = None;
    loop {
        let live: Vec<String> = match scheduler.agents().await {
            Ok(agents) => agents.into_iter().filter(|a| a.state != AgentState::Lost).map(|a| a.name).collect(),
            Err(e) => return Err(e.to_string()),
        };
        match net.claim(pool, who, agent, |a| live.iter().any(|l| l == a)).await {
            Ok(granted) => return Ok(Some(granted)),
            Err(NetError::HeldElsewhere { agent: holder, .. }) if tokio::time::Instant::now() < deadline => {
                if asked.as_deref() != Some(holder.as_str()) {
                    tracing::info!(instance = %who, from = %holder, to = agent, "moving an instance: asking its old host to stop it");
                    net.evict(&holder, &who.claim_name());
                    asked = Some(holder);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Answers one request of `agent`. An address held by another agent is handed over only when that
/// agent is lost (or unknown): see the table in the module above.
pub async fn answer(net: &Network, scheduler: &SchedulerHandle, agent: &str, req: NetRequest) -> NetAnswer {
    let result = match req.op {
        NetOp::Claim { pool, instance, vtep } => match instance.parse::<Identity>() {
            Ok(who) => {
                if let Some(vtep) = vtep {
                    net.set_vtep(agent, vtep);
                }
                claim_in_order(net, scheduler, agent, &pool, &who).await
            }
            Err(e) => Err(e.to_string()),
        },
        NetOp::Release { pool, instance } => match instance.parse::<Identity>() {
            Ok(who) => net.release(&pool, &who, agent).await.map(|()| None).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    if let Err(why) = &result {
        tracing::warn!(agent, id = req.id, "container network request refused: {why}");
    }
    NetAnswer { id: req.id, result }
}
