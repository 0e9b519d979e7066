//! Tugboat's agent: runs work through a [`runtime::Runtime`] and reports each state change to the
//! server as a status update.
//!
//! - [`agent`]: the loop that takes launches and kills and sends status updates.
//! - [`capacity`]: what this host offers when the operator does not say.
//! - [`certificate`]: the agent's client certificate, got from the server with the join token
//!   and renewed before it expires.
//! - [`checkpoint`]: what a durable agent records per attempt, so runs outlive its restarts.
//! - [`health`]: service replicas' health checks (http, tcp, exec) and their thresholds.
//! - [`logs`]: answers the server's reads and removals of this agent's run logs.
//! - [`net`]: the container network on this host: `dresponse`, claims and plumbing.
//! - [`remote`]: runs that loop against a server over the gRPC agent stream (`tug agent run`),
//!   resending unacknowledged status updates after a reconnect.
//! - [`runtime`]: process (child in its own process group), shim (the same under a supervisor
//!   that outlives the agent), docker (warm containers with the in-container executor, or a
//!   container per run) and noop runtimes.

pub mod agent;
pub mod capacity;
pub mod certificate;
pub mod checkpoint;
pub mod health;
pub mod logs;
pub mod net;
pub mod remote;
pub mod runtime;
pub mod tls;

pub use agent::{Agent, AgentConfig, Durability};
