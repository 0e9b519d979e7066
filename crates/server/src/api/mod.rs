//! The native REST API under `/api/v1`: jobs, runs, logs, schedule preview, agents, network pools,
//! health. Every route
//! (native, Chronos, `/metrics`) is timed into `tug_api_request_duration_seconds`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tug_store::Store;

use crate::clock::SharedClock;
use crate::metrics::{ApiLabels, Metrics};
use crate::scheduler::SchedulerHandle;

mod agents;
pub mod error;
mod events;
pub(crate) mod jobs;
mod net;
pub mod openapi;
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
    /// Every run's log, wherever its agent keeps it.
    pub logs: crate::logs::RunLogs,
    /// The wall clock.
    pub clock: SharedClock,
    /// Metric families, for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Address pools and claims.
    pub net: Arc<crate::net::Network>,
    /// The event stream, for `/api/v1/events`.
    pub events: crate::stream::EventBus,
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
        .route("/events", get(events::stream))
        .route("/agents", get(agents::list))
        .route("/agents/{name}", get(agents::show))
        .route("/agents/{name}/drain", post(agents::drain))
        .route("/agents/{name}/undrain", post(agents::undrain))
        .route("/net/pools", post(net::create).get(net::list))
        .route("/net/pools/{name}", get(net::show).delete(net::delete))
        .route("/net/addresses", get(net::addresses))
        .route("/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        .with_state(state.clone());
    let metrics = state.metrics.clone();
    Router::new()
        .nest("/api/v1", v1)
        .merge(crate::chronos::router(state.clone()))
        .merge(crate::ui::router(state.clone()))
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
        // Last, so it wraps every route above and the fallback. `Router::layer` wraps each route
        // after routing, which is what puts `MatchedPath` in the request for the label.
        .layer(middleware::from_fn_with_state(state.metrics.clone(), track_latency))
}

/// Observes one request's latency, labelled by route pattern, method and status class.
async fn track_latency(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = tokio::time::Instant::now();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let labels = ApiLabels { route, method, status: status_class(resp.status()) };
    metrics.api_request_duration.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    resp
}

/// A method as a label; any extension method is `other`, so clients cannot mint series.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `2xx`, `4xx`, ... for a status.
fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Turns a query-string rejection into our error shape.
pub(crate) fn query_error(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", e.body_text())
}
