//! `/api/v1/runs` and `/api/v1/jobs/{name}/runs`: history, one run, kill, logs (with follow).

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use tug_core::run::{Attempt, Run, RunId, RunState};
use tug_store::{Page, RunQuery};

use super::{query_error, visible_job, visible_run, ApiError, ApiResult, AppState, ReadState};
use crate::auth::{AuditJob, Principal};
use crate::logs::LogError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    #[serde(default)]
    limit: usize,
    cursor: Option<String>,
    state: Option<String>,
}

pub(crate) async fn list(
    State(st): State<ReadState>,
    who: Principal,
    Path(name): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<Page<Run>>> {
    let Query(p) = params.map_err(query_error)?;
    let state = p
        .state
        .map(|s| s.parse::<RunState>())
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_state", format!("{e}; use one of pending, starting, running, succeeded, failed, killed, timed_out, lost, skipped")))?;
    // A missing job is a 404, not an empty page.
    visible_job(&*st.store, &who, &name).await?;
    let page = st.store.list_runs(&name, &RunQuery { limit: p.limit, cursor: p.cursor, state }).await?;
    Ok(Json(page))
}

/// A run with all its attempts, the current or last one included.
#[derive(Debug, Serialize)]
pub struct RunView {
    #[serde(flatten)]
    run: Run,
    attempts: Vec<Attempt>,
}

fn parse_id(id: &str) -> ApiResult<RunId> {
    id.parse().map_err(|_| ApiError::bad_request("invalid_run_id", format!("run id {id:?} is not a number")))
}

pub(crate) async fn show(State(st): State<ReadState>, who: Principal, Path(id): Path<String>) -> ApiResult<Json<RunView>> {
    let id = parse_id(&id)?;
    let run = visible_run(&*st.store, &who, id).await?;
    // The store keeps retried attempts; the current or last one is the run itself.
    let mut attempts = st.store.attempts(id).await?;
    if run.state != RunState::Skipped {
        attempts.push(Attempt {
            run_id: run.id,
            attempt: run.attempt,
            state: run.state,
            started_at: run.started_at,
            finished_at: run.finished_at,
            exit_code: run.exit_code,
            signal: run.signal,
            reason: run.reason.clone(),
        });
    }
    Ok(Json(RunView { run, attempts }))
}

pub(super) async fn kill(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, axum::Extension<AuditJob>, Json<Run>)> {
    let id = parse_id(&id)?;
    let job = visible_run(&*st.store, &who, id).await?.job;
    let run = st.scheduler.kill_run(id).await?;
    Ok((StatusCode::ACCEPTED, axum::Extension(AuditJob(job)), Json(run)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogParams {
    #[serde(default)]
    follow: bool,
    #[serde(default)]
    offset: u64,
}

const CHUNK: usize = 64 * 1024;
/// The most log bytes one non-following request returns.
pub(super) const MAX_LOG_READ: usize = 16 << 20;
/// On a log read that stopped at [`MAX_LOG_READ`]: that limit, in bytes.
pub(super) const LOG_LIMIT: &str = "x-tug-log-limit";
/// On a log read that stopped at [`MAX_LOG_READ`]: the `offset` to read on from.
pub(super) const LOG_NEXT_OFFSET: &str = "x-tug-log-next-offset";
pub(super) const POLL: Duration = Duration::from_millis(100);

pub(super) async fn log(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(p) = params.map_err(query_error)?;
    let id = parse_id(&id)?;
    let run = visible_run(&*st.store, &who, id).await?;
    let text = |body| {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body)
            .expect("static headers are valid")
    };
    if !p.follow {
        let mut out = Vec::new();
        let mut offset = p.offset;
        // One answer holds at most MAX_LOG_READ bytes; a longer log says so in its headers, with
        // the offset to ask again from.
        let more = loop {
            let chunk = read(&st, id, run.agent.as_deref(), offset).await?;
            if chunk.is_empty() {
                break false;
            }
            if out.len() == MAX_LOG_READ {
                break true;
            }
            let take = chunk.len().min(MAX_LOG_READ - out.len());
            offset += take as u64;
            out.extend_from_slice(&chunk[..take]);
        };
        let mut resp = text(Body::from(out));
        if more {
            let headers = resp.headers_mut();
            headers.insert(LOG_LIMIT, MAX_LOG_READ.into());
            headers.insert(LOG_NEXT_OFFSET, offset.into());
        }
        return Ok(resp);
    }
    // Follow: stream what is there, then poll for more until the run is final and drained. The
    // run is read again each round: a pending run gets its agent when it starts.
    let stream = futures::stream::unfold((st, p.offset, false), move |(st, offset, done)| {
        async move {
            if done {
                return None;
            }
            loop {
                let (finished, agent) = match st.store.get_run(id).await {
                    Ok(run) => (run.state.is_terminal(), run.agent),
                    Err(_) => (true, None),
                };
                match read(&st, id, agent.as_deref(), offset).await {
                    Ok(chunk) if !chunk.is_empty() => {
                        let next = offset + chunk.len() as u64;
                        return Some((Ok::<Bytes, std::io::Error>(Bytes::from(chunk)), (st, next, false)));
                    }
                    Ok(_) if finished => return None,
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(e) => return Some((Err(std::io::Error::other(e.message)), (st, offset, true))),
                }
            }
        }
    });
    Ok(text(Body::from_stream(stream)))
}

/// Reads a chunk of a run's log from wherever its agent keeps it. A log not written yet reads
/// as empty.
pub(super) async fn read(st: &AppState, id: RunId, agent: Option<&str>, offset: u64) -> ApiResult<Vec<u8>> {
    st.logs.read(id, agent, offset, CHUNK).await.map_err(|e| {
        let (status, code) = match e {
            LogError::Local { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "log_read_failed"),
            LogError::NotConnected(_) | LogError::Agent { .. } | LogError::Timeout(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "log_unavailable")
            }
        };
        ApiError { status, code, message: format!("cannot read the log of run {id}: {e}") }
    })
}
