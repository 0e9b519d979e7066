//! API errors as `{"error": {"code": "...", "message": "..."}}` with the status that fits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tug_core::job::JobError;
use tug_store::{ErrorKind, StoreError};

use tug_net::PoolError;

use crate::error::Error;
use crate::net::NetError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// A 400 with `code` and `message`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    /// An error with any status.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let (status, code) = match &e {
            StoreError::JobNotFound(_) => (StatusCode::NOT_FOUND, "job_not_found"),
            StoreError::RunNotFound(_) => (StatusCode::NOT_FOUND, "run_not_found"),
            StoreError::TokenNotFound(_) => (StatusCode::NOT_FOUND, "token_not_found"),
            StoreError::ServiceNotFound(_) => (StatusCode::NOT_FOUND, "service_not_found"),
            StoreError::ServiceExists(_) => (StatusCode::CONFLICT, "service_exists"),
            StoreError::JobExists(_) => (StatusCode::CONFLICT, "job_exists"),
            StoreError::TokenExists(_) => (StatusCode::CONFLICT, "token_exists"),
            StoreError::VersionConflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            StoreError::BadCursor(_) => (StatusCode::BAD_REQUEST, "bad_cursor"),
            StoreError::PoolNotFound(_) => (StatusCode::NOT_FOUND, "pool_not_found"),
            StoreError::PoolExists(_) => (StatusCode::CONFLICT, "pool_exists"),
            StoreError::PoolInUse { .. } => (StatusCode::CONFLICT, "pool_in_use"),
            StoreError::AddressTaken { .. } => (StatusCode::CONFLICT, "address_taken"),
            _ => match e.kind() {
                ErrorKind::StorageFull => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
                ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
                ErrorKind::Corrupt => (StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
            },
        };
        ApiError { status, code, message: e.to_string() }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        let (status, code) = match &e {
            JobError::Parse(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            JobError::Schedule(tug_core::schedule::ScheduleError::Zone { .. }) | JobError::Field { field: "tz", .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_tz")
            }
            JobError::Schedule(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_job"),
        };
        ApiError { status, code, message: e.to_string() }
    }
}

impl From<tug_core::service::ServiceError> for ApiError {
    fn from(e: tug_core::service::ServiceError) -> ApiError {
        let (status, code) = match &e {
            tug_core::service::ServiceError::Parse(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_service"),
        };
        ApiError { status, code, message: e.to_string() }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let unprocessable = |code| ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, code, message: e.to_string() };
        match e {
            Error::InvalidJob(j) => j.into(),
            Error::InvalidService(s) => s.into(),
            Error::Store(s) => s.into(),
            Error::Cycle(_) => unprocessable("dependency_cycle"),
            Error::UnknownParent { .. } => unprocessable("unknown_parent"),
            Error::TooFrequent { .. } => unprocessable("schedule_too_frequent"),
            Error::HasChildren { .. } | Error::Conflict(_) => {
                ApiError { status: StatusCode::CONFLICT, code: "conflict", message: e.to_string() }
            }
            Error::BadRequest(m) => ApiError::bad_request("bad_request", m),
            Error::NotFound(m) => ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: m },
            Error::ShuttingDown => {
                ApiError { status: StatusCode::SERVICE_UNAVAILABLE, code: "shutting_down", message: e.to_string() }
            }
        }
    }
}

impl From<NetError> for ApiError {
    fn from(e: NetError) -> ApiError {
        match e {
            NetError::Store(s) => s.into(),
            NetError::Pool(PoolError::Exhausted { .. }) => {
                ApiError { status: StatusCode::CONFLICT, code: "pool_exhausted", message: e.to_string() }
            }
            NetError::Pool(_) => ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, code: "invalid_pool", message: e.to_string() },
            NetError::HeldElsewhere { .. } => {
                ApiError { status: StatusCode::CONFLICT, code: "address_held", message: e.to_string() }
            }
        }
    }
}

/// Result of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn io(kind: std::io::ErrorKind) -> tug_store::Cause {
        Arc::new(std::io::Error::from(kind))
    }

    #[test]
    fn store_errors_get_the_status_that_says_what_to_do() {
        let what = || "committing a run save".to_string();
        let cases = [
            (StoreError::JobNotFound("j".into()), 404, "job_not_found", "job \"j\" not found"),
            (StoreError::RunNotFound(7), 404, "run_not_found", "run 7 not found"),
            (StoreError::JobExists("j".into()), 409, "job_exists", "use update (PUT)"),
            (StoreError::VersionConflict { name: "j".into(), expected: 1, found: 2 }, 409, "version_conflict", "read it again"),
            (StoreError::BadCursor("x".into()), 400, "bad_cursor", "next_cursor"),
            (
                StoreError::StorageFull { what: what(), dir: "/var/lib/tug".into(), source: io(std::io::ErrorKind::StorageFull) },
                507,
                "storage_full",
                "no space left on the file system holding /var/lib/tug; free space there",
            ),
            (StoreError::Unavailable { what: what(), source: io(std::io::ErrorKind::WouldBlock) }, 503, "store_unavailable", "retry shortly"),
            (StoreError::Stopped("the SQLite thread has stopped"), 503, "store_unavailable", "restart"),
            (StoreError::Corrupt { what: what(), source: io(std::io::ErrorKind::InvalidData) }, 500, "store_corrupt", "restore the database from a backup"),
            (StoreError::Backend { what: what(), source: io(std::io::ErrorKind::PermissionDenied) }, 500, "store_error", "committing a run save: permission denied"),
        ];
        for (e, status, code, says) in cases {
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code), (status, code), "{}", api.message);
            assert!(api.message.contains(says), "{:?} should say {says:?}", api.message);
        }
    }
}
