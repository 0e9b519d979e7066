//! The native REST API under `/api/v1`: jobs, runs, logs, schedule preview, health.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::routing::{get, post};
use axum::Router;
use tug_store::logs::LogFiles;
use tug_store::Store;

use crate::clock::SharedClock;
use crate::scheduler::SchedulerHandle;

pub mod error;
mod jobs;
mod runs;
mod schedule;

pub use error::{ApiError, ApiResult};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Reads go straight to the store.
    pub store: Arc<dyn Store>,
    /// Writes go through the scheduler.
    pub scheduler: SchedulerHandle,
    /// Run logs.
    pub logs: LogFiles,
    /// The wall clock.
    pub clock: SharedClock,
    /// Metric families, for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The API router.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/jobs", post(jobs::create).get(jobs::list))
        .route("/jobs/{name}", get(jobs::show).put(jobs::update).delete(jobs::delete))
        .route("/jobs/{name}/run", post(jobs::run_now))
        .route("/jobs/{name}/pause", post(jobs::pause))
        .route("/jobs/{name}/resume", post(jobs::resume))
        .route("/jobs/{name}/kill", post(jobs::kill))
        .route("/jobs/{name}/runs", get(runs::list))
        .route("/runs/{id}", get(runs::show))
        .route("/runs/{id}/kill", post(runs::kill))
        .route("/runs/{id}/log", get(runs::log))
        .route("/schedule/preview", get(schedule::preview))
        .with_state(state.clone());
    let metrics = state.metrics.clone();
    Router::new()
        .nest("/api/v1", v1)
        .merge(crate::chronos::router(state.clone()))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
                }
            }),
        )
        .fallback(|| async {
            ApiError {
                status: axum::http::StatusCode::NOT_FOUND,
                code: "not_found",
                message: "no such endpoint; the API lives under /api/v1 (e.g. GET /api/v1/jobs)".into(),
            }
        })
}

/// Turns a query-string rejection into our error shape.
pub(crate) fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", e.body_text())
}
