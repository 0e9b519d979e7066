//! The native REST API under `/api/v1`: jobs, runs, logs, schedule preview, agents, services, network pools,
//! health. Every route
//! (native, Chronos, `/metrics`) is timed into `tug_api_request_duration_seconds`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tug_store::Store;

use crate::clock::SharedClock;
use crate::metrics::{ApiLabels, Metrics};
use crate::scheduler::SchedulerHandle;

mod access;
mod agents;
mod cluster;
pub mod error;
mod events;
pub(crate) mod jobs;
mod net;
pub mod openapi;
pub(crate) mod runs;
pub(crate) mod schedule;
pub(crate) mod services;

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
    /// Tokens, the gate's settings and the audit log.
    pub auth: Arc<crate::auth::Auth>,
    /// The server group this server leads (`None`: a server on its own).
    pub cluster: Option<Arc<crate::cluster::Group>>,
}

/// What the read-only handlers need, which a follower of a server group has without a scheduler:
/// it answers reads of jobs and runs from the store itself (`cluster::front`).
#[derive(Clone)]
pub struct ReadState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The wall clock.
    pub clock: SharedClock,
}

impl axum::extract::FromRef<AppState> for ReadState {
    fn from_ref(st: &AppState) -> ReadState {
        ReadState { store: st.store.clone(), clock: st.clock.clone() }
    }
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
        .route("/cluster", get(cluster::show))
        .route("/agents", get(agents::list))
        .route("/agents/{name}", get(agents::show))
        .route("/agents/{name}/drain", post(agents::drain))
        .route("/agents/{name}/undrain", post(agents::undrain))
        .route("/services", post(services::create).get(services::list))
        .route("/services/{name}", get(services::show).put(services::update).delete(services::delete))
        .route("/services/{name}/scale", post(services::scale))
        .route("/services/{name}/restart", post(services::restart))
        .route("/services/{name}/replicas/{index}/log", get(services::replica_log))
        .route("/operations/{id}", get(services::operation))
        .route("/services/{name}/releases", post(services::start_release).get(services::releases))
        .route("/releases/{id}", get(services::release))
        .route("/releases/{id}/{action}", post(services::release_action))
        .route("/net/pools", post(net::create).get(net::list))
        .route("/net/pools/{name}", get(net::show).delete(net::delete))
        .route("/net/addresses", get(net::addresses))
        .route("/tokens", post(access::create).get(access::list))
        .route("/tokens/{id}", axum::routing::delete(access::revoke))
        .route("/audit", get(access::audit))
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
        // `Router::layer` wraps each route after routing, which is what puts `MatchedPath` in the
        // request for the gate's role table and the latency label. The gate is inside, so refused
        // requests are timed too; JSON errors are outermost, so they cover everything.
        .layer(middleware::from_fn_with_state(state.auth.clone(), crate::auth::gate))
        .layer(axum::extract::DefaultBodyLimit::max(state.auth.config().max_body))
        .layer(middleware::from_fn_with_state(state.metrics.clone(), track_latency))
        .layer(middleware::from_fn(json_errors))
}

/// Gives every error of the native API the JSON error shape, also those the framework answers by
/// itself (405, a body that is not UTF-8, a bad path parameter) in plain text. The Chronos API
/// keeps Chronos's plain-text errors, and the UI its error pages.
async fn json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    // The Chronos API keeps its own error texts, and the UI its pages.
    let chronos = !path.starts_with("/api/");
    let method = req.method().clone();
    let path = path.to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if chronos || !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let allow = resp.headers().get(axum::http::header::ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = allow.as_ref().and_then(|v| v.to_str().ok()).filter(|a| !a.is_empty());
            let hint = allowed.map_or_else(|| "see /api/v1/openapi.json".to_owned(), |a| format!("allowed: {a}"));
            ("method_not_allowed", format!("{method} is not allowed on {path}; {hint}"))
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", format!("the request body is too large: {text}")),
        StatusCode::BAD_REQUEST if text.contains("UTF-8") => {
            ("invalid_body", "the request body is not valid UTF-8; send JSON (or TOML for a job file)".to_owned())
        }
        StatusCode::BAD_REQUEST => ("bad_request", text),
        StatusCode::NOT_FOUND => ("not_found", format!("no such endpoint {path}; the API lives under /api/v1")),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", text),
        _ => ("error", text),
    };
    let mut out = ApiError { status, code, message }.into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(axum::http::header::ALLOW, allow);
    }
    out
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

/// A job the caller may see: 404 when it does not exist or is out of the caller's scope.
pub(crate) async fn visible_job(store: &dyn Store, who: &crate::auth::Principal, name: &str) -> ApiResult<tug_store::JobRecord> {
    let record = store.get_job(name).await?;
    who.see(&record.spec)?;
    Ok(record)
}

/// A run whose job the caller may see: 404 when it does not exist or is out of scope (as if
/// there were no such run).
pub(crate) async fn visible_run(
    store: &dyn Store,
    who: &crate::auth::Principal,
    id: tug_core::RunId,
) -> ApiResult<tug_core::Run> {
    let run = store.get_run(id).await?;
    if who.scope().is_some() {
        let visible = match store.get_job(&run.job).await {
            Ok(job) => who.grant.sees(&job.spec),
            Err(_) => false,
        };
        if !visible {
            return Err(tug_store::StoreError::RunNotFound(id).into());
        }
    }
    Ok(run)
}

/// Fails with 404 when the caller has a scope and the job is outside it (or does not exist);
/// free for unscoped callers, whose handlers find out about a missing job themselves.
pub(crate) async fn in_scope(st: &AppState, who: &crate::auth::Principal, name: &str) -> ApiResult<()> {
    if who.scope().is_some() {
        visible_job(&*st.store, who, name).await?;
    }
    Ok(())
}
