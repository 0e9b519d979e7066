//! Agents' claim and release requests (`tug_net::protocol`), answered from the control plane.

use tug_net::protocol::{NetAnswer, NetOp, NetRequest};
use tug_net::Identity;

use super::Network;
use crate::scheduler::SchedulerHandle;
use crate::scheduler::agents::AgentState;

/// Answers one request of `agent`. An address held by another agent is handed over only when that
/// agent is lost (or unknown): see the table in the module above.
pub async fn answer(net: &Network, scheduler: &SchedulerHandle, agent: &str, req: NetRequest) -> NetAnswer {
    let result = match req.op {
        NetOp::Claim { pool, instance } => match instance.parse::<Identity>() {
            Ok(who) => {
                let live: Vec<String> = match scheduler.agents().await {
                    Ok(agents) => agents.into_iter().filter(|a| a.state != AgentState::Lost).map(|a| a.name).collect(),
                    Err(e) => return NetAnswer { id: req.id, result: Err(e.to_string()) },
                };
                net.claim(&pool, &who, agent, |a| live.iter().any(|l| l == a)).await.map(Some).map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        },
        NetOp::Release { pool, instance } => match instance.parse::<Identity>() {
            Ok(who) => net.release(&pool, &who, agent).await.map(|()| None).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        },
    };
    if let Err(why) = &result {
        tracing::warn!(agent, id = req.id, "container network request refused: {why}");
    }
    NetAnswer { id: req.id, result }
}
