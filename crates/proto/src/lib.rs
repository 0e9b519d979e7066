//! Tugboat's agent protocol: one long-lived bidirectional gRPC stream per agent (`proto/agent.proto`).
//! Launches, kills and status updates travel as JSON of the `tug_core::protocol` types, so the
//! stream carries exactly what the in-process channels carry.

#![allow(missing_docs)] // generated code

tonic::include_proto!("tugboat.agent.v1");

pub use agent_service_client::AgentServiceClient;
pub use agent_service_server::{AgentService, AgentServiceServer};
