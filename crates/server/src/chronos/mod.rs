//! The Chronos-compatible REST API under `/scheduler` and `/v1/scheduler`, so Chronos clients
//! work unchanged. Jobs are the same jobs the native API serves: a Chronos document is mapped
//! onto a [`JobSpec`](tug_core::JobSpec) (`job.rs`); counts and run times come from the run
//! history (`stats.rs`); the dependency graph as dot or CSV is in `graph.rs`.
//!
//! Status codes follow Chronos: 204 on a successful write or run, 400 (with the reason as text)
//! for bad input and for unknown jobs, 200 with JSON or text for reads.
//!
//! Where Tugboat differs, on purpose or by its model:
//! - Job names are `[A-Za-z0-9_.-]`; Chronos also allows spaces and `#`.
//! - `scheduleTimeZone` must be an IANA zone (`America/Los_Angeles`); Java aliases such as `PST`
//!   are refused with a 400.
//! - A manual run of a `concurrent: false` job that is still running is refused with 409 and the
//!   reason; Chronos answers 204 and drops the run.
//! - `?arguments=` are appended to shell commands too (single-quoted); Chronos's docs say they
//!   are ignored for `shell: true` jobs.
//! - Unknown jobs on `DELETE /task/kill/{name}` get 400 like the other endpoints (Chronos: 500).
//! - Volumes need a `hostPath` (no Mesos sandbox volumes).
//! - `successCount`/`errorCount` count every run since the job was created (Chronos: since it was
//!   last changed, or as a client posted them); run-time statistics use the retained runs.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tug_store::{ErrorKind, JobRecord, StoreError};

use crate::api::AppState;
use crate::error::Error;

mod graph;
mod job;
mod stats;

pub use job::{Kind, to_spec};

/// The Chronos routes, under both prefixes.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/jobs", get(list).delete(delete_all))
        .route("/jobs/search", get(search))
        .route("/jobs/summary", get(summary))
        // PUT too: the chronos-python client updates jobs with PUT on these paths.
        .route("/iso8601", post(post_scheduled).put(post_scheduled))
        .route("/dependency", post(post_dependent).put(post_dependent))
        .route("/job/{name}", get(show).put(run_now).delete(delete_job))
        .route("/job/stat/{name}", get(job_stat))
        .route("/task/kill/{name}", delete(kill))
        .route("/graph/dot", get(graph_dot))
        .route("/graph/csv", get(graph_csv))
        .route("/stats/{percentile}", get(percentile))
        .with_state(state);
    Router::new().nest("/scheduler", routes.clone()).nest("/v1/scheduler", routes)
}

/// An error as Chronos answers it: a status and a plain-text reason, or for the job-posting
/// endpoints its `{"status": "Bad Request", "message": ...}` document.
#[derive(Debug)]
pub struct ChronosError {
    status: StatusCode,
    message: String,
    json: bool,
}

impl ChronosError {
    fn bad_request(message: impl Into<String>) -> ChronosError {
        ChronosError { status: StatusCode::BAD_REQUEST, message: message.into(), json: false }
    }

    fn not_found(name: &str) -> ChronosError {
        // Chronos answers an unknown job with 400, not 404.
        ChronosError::bad_request(format!("Job '{name}' not found"))
    }

    fn into_json(mut self) -> ChronosError {
        self.json = true;
        self
    }
}

impl IntoResponse for ChronosError {
    fn into_response(self) -> Response {
        if self.json {
            let reason = self.status.canonical_reason().unwrap_or("Error");
            (self.status, Json(json!({"status": reason, "message": self.message}))).into_response()
        } else {
            (self.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], self.message).into_response()
        }
    }
}

impl From<Error> for ChronosError {
    fn from(e: Error) -> ChronosError {
        let status = match &e {
            Error::InvalidJob(_)
            | Error::InvalidService(_)
            | Error::Cycle(_)
            | Error::UnknownParent { .. }
            | Error::TooFrequent { .. }
            | Error::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::Store(s) => return s_error(s, e.to_string()),
            Error::HasChildren { .. } | Error::Conflict(_) => StatusCode::CONFLICT,
            Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Error::NotFound(_) => StatusCode::BAD_REQUEST,
        };
        ChronosError { status, message: e.to_string(), json: false }
    }
}

impl From<StoreError> for ChronosError {
    fn from(e: StoreError) -> ChronosError {
        let m = e.to_string();
        s_error(&e, m)
    }
}

fn s_error(e: &StoreError, message: String) -> ChronosError {
    let status = match e {
        StoreError::JobNotFound(name) => return ChronosError::not_found(name),
        StoreError::JobExists(_) | StoreError::VersionConflict { .. } => StatusCode::CONFLICT,
        StoreError::RunNotFound(_) | StoreError::BadCursor(_) => StatusCode::BAD_REQUEST,
        _ => match e.kind() {
            ErrorKind::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
    };
    ChronosError { status, message, json: false }
}

type Result<T, E = ChronosError> = std::result::Result<T, E>;

/// Every job, by name, for listings and the graph.
async fn all_jobs(st: &AppState) -> Result<Vec<JobRecord>> {
    let mut jobs = st.store.load_jobs().await?;
    jobs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(jobs)
}

/// Jobs as Chronos documents.
async fn views(st: &AppState, records: &[JobRecord]) -> Result<Vec<Value>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let counts = stats::counts(&*st.store, records).await?;
    Ok(records
        .iter()
        .map(|r| job::to_chronos(r, &counts.get(&r.spec.name).copied().unwrap_or_default()))
        .collect())
}

async fn list(State(st): State<AppState>) -> Result<Json<Vec<Value>>> {
    let jobs = all_jobs(&st).await?;
    Ok(Json(views(&st, &jobs).await?))
}

#[derive(Debug, Deserialize)]
struct SearchParams {
    name: Option<String>,
    command: Option<String>,
    any: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// Chronos's search: `name` and `command` must both match when given (case-insensitive
/// substring); a job failing them still matches when `any` is in its name or command.
async fn search(State(st): State<AppState>, Query(p): Query<SearchParams>) -> Result<Json<Vec<Value>>> {
    let int = |field: &str, v: &Option<String>, dflt: usize| -> Result<usize> {
        match v.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(dflt),
            Some(s) => s
                .parse()
                .map_err(|_| ChronosError::bad_request(format!("`{field}` must be a non-negative integer, got {s:?}"))),
        }
    };
    let limit = int("limit", &p.limit, 10)?;
    let offset = int("offset", &p.offset, 0)?;
    let term = |t: &Option<String>| t.as_deref().filter(|s| !s.is_empty()).map(str::to_lowercase);
    let (name, command, any) = (term(&p.name), term(&p.command), term(&p.any));
    let mut out = Vec::new();
    for r in all_jobs(&st).await? {
        let n = r.spec.name.to_lowercase();
        let c = r.spec.command.display().to_lowercase();
        let mut ok = name.as_ref().is_none_or(|t| n.contains(t)) && command.as_ref().is_none_or(|t| c.contains(t));
        if !ok && let Some(a) = &any {
            ok = n.contains(a) || c.contains(a);
        }
        if ok {
            out.push(r);
        }
    }
    let page: Vec<JobRecord> = out.into_iter().skip(offset).take(limit).collect();
    Ok(Json(views(&st, &page).await?))
}

async fn post_scheduled(State(st): State<AppState>, body: String) -> Result<StatusCode> {
    post_job(st, body, Kind::Scheduled).await.map_err(ChronosError::into_json)
}

async fn post_dependent(State(st): State<AppState>, body: String) -> Result<StatusCode> {
    post_job(st, body, Kind::Dependent).await
}

/// Creates the job, or replaces it when the name exists (Chronos has no separate update).
async fn post_job(st: AppState, body: String, kind: Kind) -> Result<StatusCode> {
    let name = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string));
    let existing = match name {
        Some(n) => match st.store.get_job(&n).await {
            Ok(r) => Some(r.spec),
            Err(StoreError::JobNotFound(_)) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    let now = st.clock.now();
    let is_update = existing.is_some();
    let spec = job::to_spec(&body, kind, existing, now).map_err(ChronosError::bad_request)?;
    if !is_update
        && let Some(sched) = &spec.schedule
        && let Some(start) = job::iso_start(sched, spec.tz())
        && start < now - jiff::SignedDuration::from_hours(24 * 366)
    {
        // As Chronos: a new job whose start is over a year ago is refused.
        return Err(ChronosError::bad_request(format!(
            "Scheduled start date '{}' is more than 1 year in the past! Move the start of {sched:?} forward.",
            job::iso(start)
        )));
    }
    if is_update {
        st.scheduler.update_job(spec, None).await?;
    } else {
        match st.scheduler.create_job(spec.clone()).await {
            // Created by someone else in between: Chronos would replace it.
            Err(Error::Store(StoreError::JobExists(_))) => {
                st.scheduler.update_job(spec, None).await?;
            }
            r => {
                r?;
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct RunParams {
    arguments: Option<String>,
}

async fn run_now(State(st): State<AppState>, Path(name): Path<String>, Query(p): Query<RunParams>) -> Result<StatusCode> {
    let args: Vec<String> = p.arguments.as_deref().unwrap_or("").split_whitespace().map(str::to_string).collect();
    st.scheduler.run_now_with_args(&name, args).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a job. As Chronos does, its children are not refused but re-parented: children of a
/// dependent job inherit its parents; children of a scheduled job take over its schedule.
async fn delete_job(State(st): State<AppState>, Path(name): Path<String>) -> Result<StatusCode> {
    let record = st.store.get_job(&name).await?;
    let gone = record.spec;
    for child in all_jobs(&st).await? {
        let mut spec = child.spec;
        if !spec.parents.contains(&name) {
            continue;
        }
        if gone.parents.is_empty() {
            spec.parents.clear();
            spec.schedule = gone.schedule.clone();
            spec.tz = gone.tz.clone();
        } else {
            spec.parents.retain(|p| *p != name);
            for p in &gone.parents {
                if !spec.parents.contains(p) {
                    spec.parents.push(p.clone());
                }
            }
        }
        st.scheduler.update_job(spec, None).await?;
    }
    st.scheduler.delete_job(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes every job, children before parents.
async fn delete_all(State(st): State<AppState>) -> Result<StatusCode> {
    let mut jobs = all_jobs(&st).await?;
    while !jobs.is_empty() {
        let before = jobs.len();
        let parents: std::collections::HashSet<String> =
            jobs.iter().flat_map(|j| j.spec.parents.iter().cloned()).collect();
        let (leaves, rest): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| !parents.contains(&j.spec.name));
        for j in &leaves {
            match st.scheduler.delete_job(&j.spec.name).await {
                Ok(()) | Err(Error::Store(StoreError::JobNotFound(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        jobs = rest;
        if jobs.len() == before {
            return Err(ChronosError::bad_request("the dependency graph has a cycle; delete those jobs one by one"));
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn kill(State(st): State<AppState>, Path(name): Path<String>) -> Result<StatusCode> {
    st.scheduler.kill_job(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn job_stat(State(st): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>> {
    st.store.get_job(&name).await?;
    let s = stats::summarize(&*st.store, &name).await?;
    Ok(Json(stats::job_stat(&s)))
}

/// `GET /scheduler/stats/{percentile}`: every job with that run time in seconds, slowest first.
/// An unknown percentile name gives an empty list, as in Chronos.
async fn percentile(State(st): State<AppState>, Path(p): Path<String>) -> Result<Json<Vec<Value>>> {
    if !stats::PERCENTILES.iter().any(|(n, _)| *n == p) {
        return Ok(Json(Vec::new()));
    }
    let mut rows = Vec::new();
    for r in all_jobs(&st).await? {
        let s = stats::summarize(&*st.store, &r.spec.name).await?;
        if let Some(ms) = stats::stat(&s, &p) {
            rows.push((r.spec.name, ms));
        }
    }
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Json(rows.into_iter().map(|(n, ms)| json!({"jobNameLabel": n, "time": ms / 1000.0})).collect()))
}

async fn graph_dot(State(st): State<AppState>) -> Result<Response> {
    let jobs = all_jobs(&st).await?;
    Ok(text(graph::dot(&jobs)))
}

async fn graph_csv(State(st): State<AppState>) -> Result<Response> {
    let jobs = all_jobs(&st).await?;
    let states = current_states(&st, &jobs).await?;
    Ok(text(graph::csv(&jobs, &states)))
}

/// Each job's current state as Chronos names it: `running`, `queued` or `idle`.
async fn current_states(st: &AppState, jobs: &[JobRecord]) -> Result<Vec<&'static str>> {
    use tug_core::run::RunState;
    let mut by_job: std::collections::HashMap<String, &'static str> = std::collections::HashMap::new();
    for r in st.store.active_runs().await? {
        let e = by_job.entry(r.job).or_insert("idle");
        match r.state {
            RunState::Starting | RunState::Running => *e = "running",
            RunState::Pending if *e == "idle" => *e = "queued",
            _ => {}
        }
    }
    Ok(jobs.iter().map(|j| by_job.get(&j.spec.name).copied().unwrap_or("idle")).collect())
}

/// `GET /scheduler/job/{name}` (Chronos 3): one job.
async fn show(State(st): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>> {
    let record = st.store.get_job(&name).await?;
    let mut v = views(&st, std::slice::from_ref(&record)).await?;
    Ok(Json(v.pop().unwrap_or(Value::Null)))
}

/// `GET /scheduler/jobs/summary` (Chronos 3): name, last outcome, current state, trigger.
async fn summary(State(st): State<AppState>) -> Result<Json<Value>> {
    let jobs = all_jobs(&st).await?;
    let states = current_states(&st, &jobs).await?;
    let items: Vec<Value> = jobs
        .iter()
        .zip(states)
        .map(|(j, status)| {
            json!({
                "name": j.spec.name,
                "status": status,
                "state": graph::last_state(j),
                "schedule": if j.spec.parents.is_empty() { j.spec.schedule.clone().unwrap_or_default() } else { String::new() },
                "parents": j.spec.parents,
                "disabled": !j.spec.enabled,
            })
        })
        .collect();
    Ok(Json(json!({ "jobs": items })))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}
