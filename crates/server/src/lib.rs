//! Tugboat's server: the scheduler loop, its REST API, and the wiring that runs both with an
//! embedded store and a local agent (`tug up`).
//!
//! - [`scheduler`]: fire → admit → commit → dispatch → status → complete (README.md inside).
//! - [`api`]: the native REST API under `/api/v1`.
//! - [`auth`]: the gate every request passes (tokens, roles, scopes, browser guards, limits) and
//!   the audit log.
//! - [`clock`]: the injectable wall clock.
//! - [`embedded`]: server + local agent + SQLite in one process.
//! - [`chronos`]: the Chronos-compatible REST API under `/scheduler` and `/v1/scheduler`.
//! - [`cluster`]: a group of servers on etcd: the leader election and the followers' front.
//! - [`agent_service`]: the gRPC endpoint remote agents (`tug agent run`) connect to.
//! - [`logs`]: every run's log, read and removed through one interface wherever its agent keeps it.
//! - [`net`]: the container network's control plane: address pools and claims.
//! - [`metrics`]: the Prometheus families; [`prom`]: reading a metrics page back; [`notify`]:
//!   webhooks for run events.
//! - [`ui`]: the web UI's server-rendered pages; [`http`]: serving them and the API with
//!   timeouts for slow clients.
//! - [`stream`]: the event stream (`/api/v1/events`): every job, run and agent change, resumable.

pub mod agent_service;
pub mod api;
pub mod auth;
pub mod chronos;
pub mod cluster;
pub mod clock;
pub mod embedded;
pub mod logs;
pub mod error;
pub mod http;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod prom;
pub mod scheduler;
pub mod stream;
pub mod ui;

pub use error::{Error, Result};
