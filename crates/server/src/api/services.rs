//! `/api/v1/services`: create, list, show, update and delete services, read a replica's log, scale them (an
//! asynchronous operation), and `/api/v1/operations/{id}`: how an operation is doing;
//! `/api/v1/services/{name}/releases` and `/api/v1/releases/{id}`: staged releases.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use tug_core::{Service, ServiceSpec};
use tug_store::ServiceRecord;

use crate::scheduler::{OperationView, ReleaseAction, ReleaseView, ServiceStatus};

use super::jobs::is_toml;
use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;

/// Parses and validates a service from JSON, or TOML when the content type says so, and checks
/// what validation alone cannot: that its network pool exists (or which pool its labels select).
/// Nothing is written before this
/// passes, so a bad spec leaves nothing behind.
async fn checked_spec(st: &AppState, headers: &HeaderMap, body: &str) -> ApiResult<Service> {
    let spec = if is_toml(headers) { ServiceSpec::from_toml(body) } else { ServiceSpec::from_json(body) }?;
    let mut service = spec.validate()?;
    let may_draw = service.spec.may_draw_network();
    let what = format!("service {:?}", service.spec.name);
    let s = &mut service.spec;
    super::net::draw_pool(st, &what, "invalid_service", &s.labels, &mut s.network, may_draw).await?;
    Ok(service)
}

/// A service as the API shows it: the stored record and its replicas now.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    #[serde(flatten)]
    record: ServiceRecord,
    /// Its replicas, counted and listed.
    status: ServiceStatus,
    /// The release an update started to move its replicas to the new spec (`PUT` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    release: Option<crate::scheduler::ReleaseView>,
}

async fn view(st: &AppState, record: ServiceRecord) -> ApiResult<ServiceView> {
    let status = st.scheduler.service_status(&record.spec.name).await?.unwrap_or_default();
    Ok(ServiceView { record, status, release: None })
}

/// How an update that changes what the replicas run rolls out: `batch` replicas at a time
/// (`2`, `25%`), each healthy within `health_timeout`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateParams {
    batch: Option<String>,
    health_timeout: Option<String>,
}

/// The batch and health timeout asked for in the query.
fn rollout(
    params: Result<Query<UpdateParams>, QueryRejection>,
) -> ApiResult<(Option<tug_core::release::Batch>, Option<tug_core::Duration>)> {
    let Query(p) = params.map_err(super::query_error)?;
    let batch = match p.batch.as_deref() {
        Some(b) => Some(tug_core::release::Batch::parse(b).map_err(|e| ApiError::bad_request("invalid_batch", e.to_string()))?),
        None => None,
    };
    let health_timeout = match p.health_timeout.as_deref() {
        Some(t) => Some(tug_core::Duration::parse(t).map_err(|e| ApiError::bad_request("invalid_health_timeout", format!("health_timeout={t:?}: {e}")))?),
        None => None,
    };
    Ok((batch, health_timeout))
}

/// A service the caller may see: 404 when it does not exist or is out of the caller's scope.
async fn visible(st: &AppState, who: &Principal, name: &str) -> ApiResult<ServiceRecord> {
    let record = st.store.get_service(name).await?;
    who.see_service(&record.spec)?;
    Ok(record)
}

pub(super) async fn create(
    State(st): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    body: String,
) -> ApiResult<(StatusCode, Json<ServiceView>)> {
    let service = checked_spec(&st, &headers, &body).await?;
    who.may_write_service(&service.spec)?;
    let record = st.scheduler.create_service(service).await?;
    Ok((StatusCode::CREATED, Json(view(&st, record).await?)))
}

pub(super) async fn list(State(st): State<AppState>, who: Principal) -> ApiResult<Json<Vec<ServiceView>>> {
    let mut out = Vec::new();
    for record in st.store.list_services().await?.into_iter().filter(|r| who.grant.sees_service(&r.spec)) {
        out.push(view(&st, record).await?);
    }
    Ok(Json(out))
}

pub(super) async fn show(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<ServiceView>> {
    let record = visible(&st, &who, &name).await?;
    Ok(Json(view(&st, record).await?))
}

pub(super) async fn update(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Query<UpdateParams>, QueryRejection>,
    body: String,
) -> ApiResult<Json<ServiceView>> {
    let (batch, health_timeout) = rollout(params)?;
    let service = checked_spec(&st, &headers, &body).await?;
    let spec = &service.spec;
    if spec.name != name {
        return Err(ApiError::bad_request(
            "name_mismatch",
            format!("the body names service {:?} but the URL names {name:?}; renaming is not supported", spec.name),
        ));
    }
    visible(&st, &who, &name).await?;
    who.may_write_service(spec)?;
    let (record, release) = st.scheduler.update_service(service, batch, health_timeout).await?;
    let mut v = view(&st, record).await?;
    v.release = release;
    Ok(Json(v))
}

/// Replaces every replica on the service's current spec, `batch` at a time (`?batch=`, default
/// 25%), each healthy within `health_timeout` before the next batch; answers at once (202) with
/// the release that carries it out (brake, resume or revoke it like any release).
pub(super) async fn restart(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    params: Result<Query<UpdateParams>, QueryRejection>,
) -> ApiResult<(StatusCode, Json<ReleaseView>)> {
    let (batch, health_timeout) = rollout(params)?;
    let record = visible(&st, &who, &name).await?;
    who.may_write_service(&record.spec)?;
    let release = st.scheduler.restart_service(&name, batch, health_timeout).await?;
    Ok((StatusCode::ACCEPTED, Json(release)))
}

pub(super) async fn delete(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    visible(&st, &who, &name).await?;
    st.scheduler.delete_service(&name).await?;
    // Its replicas' addresses go back to their pool.
    st.net.forget_service(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ScaleBody {
    /// Signed, so that a negative count gets a clear error.
    replicas: i64,
}

/// Sets the replica count; answers at once (202) with the operation that follows the change.
pub(super) async fn scale(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    body: String,
) -> ApiResult<(StatusCode, Json<OperationView>)> {
    let b: ScaleBody = serde_json::from_str(&body).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("invalid scale request: {e}; send {{\"replicas\": N}}"))
    })?;
    let replicas = scale_count(&name, b.replicas)?;
    visible(&st, &who, &name).await?;
    let op = st.scheduler.scale(&name, replicas).await?;
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// A replica count a scale may ask for; 422 saying the range otherwise.
pub(crate) fn scale_count(name: &str, replicas: i64) -> ApiResult<u32> {
    let max = tug_core::service::MAX_REPLICAS;
    u32::try_from(replicas).ok().filter(|n| i64::from(*n) <= max).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_service",
            format!("service {name:?}: cannot scale to {replicas} replicas; give a count from 0 to {max}"),
        )
    })
}

/// One operation and its progress.
pub(super) async fn operation(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<OperationView>> {
    match st.scheduler.operation(&id).await? {
        Some(op) => Ok(Json(op)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "operation_not_found",
            format!("no operation {id:?}; operations are kept in memory for the last 1000 scales"),
        )),
    }
}

/// Starts a staged release of a service; answers at once (202) with the release.
pub(super) async fn start_release(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    body: String,
) -> ApiResult<(StatusCode, Json<ReleaseView>)> {
    let req = tug_core::release::ReleaseRequest::from_json(&body)?;
    let record = visible(&st, &who, &name).await?;
    who.may_write_service(&record.spec)?;
    let release = st.scheduler.start_release(&name, req).await?;
    Ok((StatusCode::ACCEPTED, Json(release)))
}

/// A service's releases, newest first.
pub(super) async fn releases(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<Vec<ReleaseView>>> {
    visible(&st, &who, &name).await?;
    Ok(Json(st.scheduler.releases(&name).await?))
}

/// A release the caller may see: 404 when there is none, or its service is out of scope.
async fn visible_release(st: &AppState, who: &Principal, id: &str) -> ApiResult<ReleaseView> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "release_not_found",
            format!("no release {id:?}; releases are kept in memory, see `tug release list SERVICE`"),
        )
    };
    let release = st.scheduler.release(id).await?.ok_or_else(not_found)?;
    if let Ok(record) = st.store.get_service(&release.release.service).await
        && !who.grant.sees_service(&record.spec)
    {
        return Err(not_found());
    }
    Ok(release)
}

/// One release and its progress.
pub(super) async fn release(State(st): State<AppState>, who: Principal, Path(id): Path<String>) -> ApiResult<Json<ReleaseView>> {
    Ok(Json(visible_release(&st, &who, &id).await?))
}

/// `brake`, `resume`, `retry` or `revoke` a release.
pub(super) async fn release_action(
    State(st): State<AppState>,
    who: Principal,
    Path((id, action)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseView>> {
    let Some(act) = ReleaseAction::parse(&action) else {
        return Err(ApiError::bad_request("invalid_action", format!("no release action {action:?}; use brake, resume, retry or revoke")));
    };
    visible_release(&st, &who, &id).await?;
    Ok(Json(st.scheduler.release_action(&id, act).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogParams {
    #[serde(default)]
    offset: u64,
    /// Keep streaming the replica's output while it runs (across its restarts), until it is
    /// scaled in or its service deleted.
    #[serde(default)]
    follow: bool,
}

/// A replica's log (every attempt of it), from `offset`, as text.
pub(super) async fn replica_log(
    State(st): State<AppState>,
    who: Principal,
    Path((name, index)): Path<(String, String)>,
    params: Result<axum::extract::Query<LogParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::response::Response> {
    let axum::extract::Query(p) = params.map_err(super::query_error)?;
    visible(&st, &who, &name).await?;
    let index: u32 = index.parse().map_err(|_| {
        ApiError::bad_request("invalid_index", format!("replica index {index:?} is not a number; see the INDEX column of `tug service show {name}`"))
    })?;
    let status = st.scheduler.service_status(&name).await?.unwrap_or_default();
    let Some(r) = status.list.iter().find(|r| r.index == index) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "replica_not_found",
            format!("service {name:?} has no replica {index} now (it has {}); see `tug service show {name}`", status.list.len()),
        ));
    };
    if p.follow {
        return Ok(follow_replica(st, name, index, r.run_id, p.offset));
    }
    let mut out = Vec::new();
    let mut offset = p.offset;
    loop {
        let chunk = super::runs::read(&st, r.run_id, r.agent.as_deref(), offset).await?;
        if chunk.is_empty() || out.len() >= super::runs::MAX_LOG_READ {
            break;
        }
        offset += chunk.len() as u64;
        out.extend_from_slice(&chunk);
    }
    Ok(axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(axum::body::Body::from(out))
        .expect("static headers are valid"))
}

/// Streams replica `index` of `name` (its run `run_id`) from `offset`: what is there, then what
/// it writes, polling, until that replica is gone (scaled in, its service deleted) and its log
/// drained. Each round asks where it runs now: a restarted replica may be on another agent.
fn follow_replica(st: AppState, name: String, index: u32, run_id: tug_core::RunId, offset: u64) -> axum::response::Response {
    let stream = futures::stream::unfold((st, offset, false), move |(st, offset, done)| {
        let name = name.clone();
        async move {
            if done {
                return None;
            }
            loop {
                let now = st.scheduler.service_status(&name).await.ok().flatten().unwrap_or_default();
                let here = now.list.iter().find(|r| r.index == index && r.run_id == run_id);
                let (gone, agent) = (here.is_none(), here.and_then(|r| r.agent.clone()));
                match super::runs::read(&st, run_id, agent.as_deref(), offset).await {
                    Ok(chunk) if !chunk.is_empty() => {
                        let next = offset + chunk.len() as u64;
                        return Some((Ok::<axum::body::Bytes, std::io::Error>(axum::body::Bytes::from(chunk)), (st, next, false)));
                    }
                    Ok(_) if gone => return None,
                    Ok(_) => tokio::time::sleep(super::runs::POLL).await,
                    Err(e) => return Some((Err(std::io::Error::other(e.message)), (st, offset, true))),
                }
            }
        }
    });
    axum::response::Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(axum::body::Body::from_stream(stream))
        .expect("static headers are valid")
}
