//! A follower's agent endpoint: it takes no agents, but tells each one that connects where the
//! leader's agent endpoint is (`NotLeader`), so that after a failover agents move to the new
//! leader as soon as one member knows it, instead of trying members in turn with a growing wait.
//! Without a leader (an election under way) the answer names none and the agent asks again soon.
//! The agent's join token is checked first, as the leader would: an agent that may not join is
//! refused here and learns nothing of the group.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tug_proto::{AgentMessage, AgentService, ServerMessage, agent_message, server_message};

use super::Group;
use crate::agent_service::join_token_refused;

/// The follower's agent service.
pub struct Redirect {
    group: Arc<Group>,
    join_token: Option<String>,
}

impl Redirect {
    /// Redirects agents that present `join_token` (any agent, when `None`) to the leader of
    /// `group`.
    pub fn new(group: Arc<Group>, join_token: Option<String>) -> Redirect {
        Redirect { group, join_token }
    }

    /// The tonic service, for [`crate::agent_service::serve_service`].
    pub fn into_service(self) -> tug_proto::AgentServiceServer<Redirect> {
        tug_proto::AgentServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AgentService for Redirect {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send + 'static>>;

    async fn session(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream closed before Register"))?;
        let Some(agent_message::Msg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument("the first message on the stream must be Register"));
        };
        if let Some(reason) = join_token_refused(self.join_token.as_deref(), &reg.join_token) {
            tracing::warn!(agent = %reg.agent, "agent refused: wrong join token");
            let answer = ServerMessage { msg: Some(server_message::Msg::Refused(tug_proto::Refused { reason })) };
            return Ok(Response::new(Box::pin(futures::stream::iter([Ok(answer)]))));
        }
        let me = self.group.election().me().name.clone();
        let leader = match self.group.election().leader().await {
            Ok(Some(l)) if l.name != me => l.agent,
            // None yet, or etcd still names this member: the agent asks again shortly.
            Ok(_) => String::new(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell an agent who leads");
                String::new()
            }
        };
        // The stream ends after the answer.
        drop(inbound);
        let answer = ServerMessage { msg: Some(server_message::Msg::NotLeader(tug_proto::NotLeader { leader })) };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(answer)]))))
    }
}
