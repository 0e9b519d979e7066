//! A follower's agent endpoint: it takes no agents, but tells each one that connects where the
//! leader's agent endpoint is (`NotLeader`), so that after a failover agents move to the new
//! leader as soon as one member knows it, instead of trying members in turn with a growing wait.
//! Without a leader (an election under way) the answer names none and the agent asks again soon.
//! The agent's join token (or client certificate) is checked first, as the leader would: an agent
//! that may not join is refused here and learns nothing of the group. A follower holding the CA
//! key signs agents' certificates as the leader would.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tug_proto::{AgentMessage, AgentService, ServerMessage, agent_message, server_message};

use super::Group;
use crate::agent_service::{Admission, TlsPeer};

/// The follower's agent service.
pub struct Redirect {
    group: Arc<Group>,
    admission: Admission,
}

impl Redirect {
    /// Redirects agents that `admission` admits to the leader of `group`.
    pub fn new(group: Arc<Group>, admission: Admission) -> Redirect {
        Redirect { group, admission }
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
        let tls_peer = request.extensions().get::<TlsPeer>().cloned();
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::invalid_argument("stream closed before Register"))?;
        let Some(agent_message::Msg::Register(reg)) = first.msg else {
            return Err(Status::invalid_argument("the first message on the stream must be Register"));
        };
        if let Some((reason, why)) = self.admission.refused(&reg.agent, &reg.join_token, tls_peer.as_ref()) {
            tracing::warn!(agent = %reg.agent, "agent refused: {why}");
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

    async fn enroll(&self, request: Request<tug_proto::EnrollRequest>) -> Result<Response<tug_proto::EnrollReply>, Status> {
        let peer = request.extensions().get::<TlsPeer>().cloned();
        self.admission.enroll(peer, request.into_inner()).await.map(Response::new)
    }
}
