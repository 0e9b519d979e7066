//! A follower's agent endpoint: it takes no agents, but tells each one that connects where the
//! leader's agent endpoint is (`NotLeader`), so that after a failover agents move to the new
//! leader as soon as one member knows it, instead of trying members in turn with a growing wait.
//! Without a leader (an election under way) the answer names none and the agent asks again soon.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tug_proto::{AgentMessage, AgentService, ServerMessage, server_message};

use super::Group;

/// The follower's agent service.
pub struct Redirect {
    group: Arc<Group>,
}

impl Redirect {
    /// Redirects agents to the leader of `group`.
    pub fn new(group: Arc<Group>) -> Redirect {
        Redirect { group }
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
        // The agent's Register is not needed to answer; the stream ends after the answer.
        drop(request);
        let answer = ServerMessage { msg: Some(server_message::Msg::NotLeader(tug_proto::NotLeader { leader })) };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(answer)]))))
    }
}
