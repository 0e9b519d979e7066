//! Tugboat's pure core: the job model, schedules, run states, policies and the dependency graph.
//! Nothing here does I/O or reads the clock: callers pass the current instant in.
//!
//! - [`schedule`]: cron and ISO 8601 schedules in a time zone.
//! - [`job`]: the job spec users write, and its validation.
//! - [`run`]: runs, their states and transitions.
//! - [`misfire`]: which late fires run and which are skipped.
//! - [`dag`]: dependency cycles.
//! - [`protocol`]: server ↔ agent messages.
//! - [`service`]: the service spec (replicas with a health check), and its validation.
//! - [`release`]: staged releases of a service: the request, the target spec and the plan.
//! - [`access`]: API token roles and scopes.

pub mod access;
pub mod bytesize;
pub mod constraint;
pub mod dag;
pub mod duration;
pub mod job;
pub mod misfire;
pub mod placement;
pub mod protocol;
pub mod release;
pub mod run;
pub mod schedule;
pub mod service;
pub mod timefmt;

pub use duration::Duration;
pub use job::{Job, JobSpec};
pub use run::{Run, RunId, RunState};
pub use service::{Service, ServiceSpec};
