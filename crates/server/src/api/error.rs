//! API errors as `{"error": {"code": "...", "message": "..."}}` with the status that fits.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tug_core::job::JobError;
use tug_store::StoreError;

use crate::error::Error;

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
            StoreError::JobExists(_) => (StatusCode::CONFLICT, "job_exists"),
            StoreError::VersionConflict { .. } => (StatusCode::CONFLICT, "version_conflict"),
            StoreError::BadCursor(_) => (StatusCode::BAD_REQUEST, "bad_cursor"),
            StoreError::Backend(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
        };
        ApiError { status, code, message: e.to_string() }
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> ApiError {
        let (status, code) = match &e {
            JobError::Parse(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            JobError::Schedule(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_schedule"),
            _ => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_job"),
        };
        ApiError { status, code, message: e.to_string() }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let unprocessable = |code| ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, code, message: e.to_string() };
        match e {
            Error::InvalidJob(j) => j.into(),
            Error::Store(s) => s.into(),
            Error::Cycle(_) => unprocessable("dependency_cycle"),
            Error::UnknownParent { .. } => unprocessable("unknown_parent"),
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

/// Result of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
