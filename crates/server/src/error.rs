//! Errors of the scheduler's operations, each mapped to an API status and code in `api::error`.

use tug_core::dag::CycleError;
use tug_core::job::JobError;
use tug_store::StoreError;

/// Why a scheduler operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job spec is invalid.
    #[error(transparent)]
    InvalidJob(#[from] JobError),
    /// A service spec (or a release of one) is invalid.
    #[error(transparent)]
    InvalidService(#[from] tug_core::service::ServiceError),
    /// The change would create a dependency cycle.
    #[error(transparent)]
    Cycle(#[from] CycleError),
    /// A parent names a job that does not exist.
    #[error("job {job:?}: parent {parent:?} does not exist; create it first")]
    UnknownParent {
        /// The job.
        job: String,
        /// The missing parent.
        parent: String,
    },
    /// A job cannot be deleted while others depend on it.
    #[error("job {job:?} is a parent of {children}; change or delete those jobs first")]
    HasChildren {
        /// The job.
        job: String,
        /// Its children, comma-separated.
        children: String,
    },
    /// The schedule fires more often than the server allows.
    #[error(
        "job {job:?}: schedule {schedule:?} fires {gap:?} apart, and this server allows fires at least {min:?} apart \
         (its --min-interval, set by an admin); choose a longer interval"
    )]
    TooFrequent {
        /// The job.
        job: String,
        /// Its schedule expression.
        schedule: String,
        /// The shortest gap between two of its fires.
        gap: std::time::Duration,
        /// The server's limit.
        min: std::time::Duration,
    },
    /// A request conflicts with the job's state (e.g. a manual run under `forbid`).
    #[error("{0}")]
    Conflict(String),
    /// The body of a request is wrong in a way a validator did not cover.
    #[error("{0}")]
    BadRequest(String),
    /// Something other than a job or run was not found (an agent).
    #[error("{0}")]
    NotFound(String),
    /// The store failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The scheduler is shutting down.
    #[error("the scheduler is shutting down; retry against the new server")]
    ShuttingDown,
}

/// Result of scheduler operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
