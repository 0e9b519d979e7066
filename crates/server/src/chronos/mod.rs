//! The Chronos-compatible REST API under `/scheduler` and `/v1/scheduler`.

use axum::Router;

use crate::api::AppState;

/// The Chronos routes (none yet).
pub fn router(_state: AppState) -> Router {
    Router::new()
}
