//! `/api/v1/jobs`: create, list, show, update, delete, run now, pause, resume, kill.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tug_core::run::Run;
use tug_core::schedule::Schedule;
use tug_core::JobSpec;
use tug_store::{JobQuery, JobRecord, Page};

use super::{in_scope, query_error, visible_job, ApiError, ApiResult, AppState, ReadState};
use crate::auth::Principal;

/// A job as the API shows it: the stored record plus its next fire.
#[derive(Debug, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    record: JobRecord,
    /// The next instant the job will fire, if it is scheduled, enabled and not paused.
    next_fire: Option<Timestamp>,
}

impl JobView {
    fn new(record: JobRecord, now: Timestamp) -> JobView {
        let next_fire = next_fire(&record, now);
        JobView { record, next_fire }
    }
}

/// True when the content type says TOML (JSON otherwise).
pub(super) fn is_toml(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("toml"))
}

/// The next instant a job fires, if it is scheduled, enabled and not paused.
pub(crate) fn next_fire(record: &JobRecord, now: Timestamp) -> Option<Timestamp> {
    let spec = &record.spec;
    if !spec.enabled || spec.paused {
        return None;
    }
    spec.schedule
        .as_deref()
        .and_then(|expr| Schedule::parse(expr, spec.tz()).ok())
        .and_then(|s| s.next_after(now.max(record.fire_cursor.unwrap_or(now))))
        .map(|f| f.at)
}

/// Parses a job from JSON, or TOML when the content type says so.
fn parse_spec(headers: &HeaderMap, body: &str) -> ApiResult<JobSpec> {
    let spec = if is_toml(headers) { JobSpec::from_toml(body) } else { JobSpec::from_json(body) };
    Ok(spec?)
}

pub(super) async fn create(
    State(st): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    body: String,
) -> ApiResult<(StatusCode, Json<JobView>)> {
    let mut spec = parse_spec(&headers, &body)?;
    who.may_write(&spec)?;
    check_not_ended(&spec, st.clock.now())?;
    check_quota(&st, &who).await?;
    check_network(&st, &mut spec).await?;
    let record = st.scheduler.create_job(spec).await?;
    Ok((StatusCode::CREATED, Json(JobView::new(record, st.clock.now()))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    #[serde(default)]
    limit: usize,
    cursor: Option<String>,
    q: Option<String>,
    label: Option<String>,
}

pub(crate) async fn list(
    State(st): State<ReadState>,
    who: Principal,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Json<Page<JobView>>> {
    let Query(p) = params.map_err(query_error)?;
    let cursor = p.cursor.as_deref().map(from_cursor).transpose()?;
    let page = st.store.list_jobs(&JobQuery { limit: p.limit, cursor, q: p.q, label: p.label }).await?;
    let now = st.clock.now();
    // A scoped caller's page holds only its jobs (it may be shorter than the limit); the cursor
    // still walks the whole list.
    let items = page.items.into_iter().filter(|r| who.grant.sees(&r.spec)).map(|r| JobView::new(r, now)).collect();
    Ok(Json(Page { items, next_cursor: page.next_cursor.as_deref().map(to_cursor) }))
}

/// Refuses an ISO 8601 schedule with a count of repetitions all of which are before `now`: the
/// job would never fire. `R0/…` (never fires, on purpose) is taken as written.
fn check_not_ended(spec: &JobSpec, now: Timestamp) -> ApiResult<()> {
    let Some(schedule) = spec.schedule.as_deref().and_then(|expr| Schedule::parse(expr, spec.tz()).ok()) else {
        return Ok(());
    };
    if !schedule.is_finite() || schedule.next_after(Timestamp::MIN).is_none() || schedule.next_after(now).is_some() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_schedule",
        format!(
            "job {:?}: every repetition of schedule {:?} is in the past (now is {now}), so it would never run; \
             move the start forward, or write R/ for no end",
            spec.name,
            schedule.expr()
        ),
    ))
}

/// Refuses a new job of a scoped caller whose scope already holds the most jobs allowed
/// (`--max-jobs-per-scope`). Counted on each create, so racing creates may pass it by a few.
async fn check_quota(st: &AppState, who: &Principal) -> ApiResult<()> {
    let (Some(scope), Some(max)) = (who.scope(), st.auth.config().max_jobs_per_scope) else { return Ok(()) };
    let (q, label) = match scope {
        tug_core::access::Scope::Label { key, value } => (None, Some(format!("{key}={value}"))),
        tug_core::access::Scope::Owner(owner) => (Some(owner.clone()), None),
    };
    let mut count = 0;
    let mut cursor = None;
    loop {
        let page = st.store.list_jobs(&JobQuery { limit: 1000, cursor, q: q.clone(), label: label.clone() }).await?;
        count += page.items.iter().filter(|r| scope.covers(&r.spec)).count();
        if count >= max {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "job_limit",
                format!(
                    "scope {scope} already has {count} jobs, the most this server allows a scoped token \
                     (--max-jobs-per-scope {max}); delete jobs you no longer need, or ask an admin to raise the limit"
                ),
            ));
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}

/// The API's cursor for the job list: the last job's name in hex, so that a made-up cursor is
/// refused rather than taken for a name to start after.
fn to_cursor(name: &str) -> String {
    use std::fmt::Write;
    name.bytes().fold(String::with_capacity(2 * name.len()), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The job name an API cursor stands for; 400 when it is not one [`to_cursor`] made.
fn from_cursor(cursor: &str) -> ApiResult<String> {
    let bad = || ApiError::from(tug_store::StoreError::BadCursor(cursor.to_owned()));
    if !cursor.len().is_multiple_of(2) || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..cursor.len()).step_by(2).filter_map(|i| u8::from_str_radix(&cursor[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes).ok().filter(|n| tug_core::job::valid_name(n)).ok_or_else(bad)
}

pub(crate) async fn show(State(st): State<ReadState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<JobView>> {
    let record = visible_job(&*st.store, &who, &name).await?;
    Ok(Json(JobView::new(record, st.clock.now())))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateParams {
    /// Compare-and-set: only update if the stored version is this one.
    version: Option<u64>,
}

pub(super) async fn update(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    params: Result<Query<UpdateParams>, QueryRejection>,
    headers: HeaderMap,
    body: String,
) -> ApiResult<Json<JobView>> {
    let Query(p) = params.map_err(query_error)?;
    let mut spec = parse_spec(&headers, &body)?;
    if spec.name != name {
        return Err(ApiError::bad_request(
            "name_mismatch",
            format!("the body names job {:?} but the URL names {name:?}; renaming is not supported", spec.name),
        ));
    }
    let stored = match st.store.get_job(&name).await {
        Ok(r) => Some(r.spec),
        Err(tug_store::StoreError::JobNotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    // Pausing is state, not spec: a document that does not say `paused` keeps the job as it is.
    if !JobSpec::document_sets(&body, !is_toml(&headers), "paused") {
        spec.paused = stored.as_ref().ok_or_else(|| tug_store::StoreError::JobNotFound(name.clone()))?.paused;
    }
    check_network(&st, &mut spec).await?;
    if who.scope().is_some() {
        visible_job(&*st.store, &who, &name).await?;
        who.may_write(&spec)?;
    }
    // A job whose schedule ended may still be changed otherwise; a new schedule must fire.
    if stored.is_none_or(|s| (&s.schedule, s.tz()) != (&spec.schedule, spec.tz())) {
        check_not_ended(&spec, st.clock.now())?;
    }
    let record = st.scheduler.update_job(spec, p.version).await?;
    Ok(Json(JobView::new(record, st.clock.now())))
}

pub(super) async fn delete(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    in_scope(&st, &who, &name).await?;
    st.scheduler.delete_job(&name).await?;
    // The job's addresses go back to their pools.
    st.net.forget_job(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Refuses a job whose `network.pool` does not exist; gives a job that names none the pool its
/// labels select, if any.
pub(crate) async fn check_network(st: &AppState, spec: &mut JobSpec) -> ApiResult<()> {
    let may_draw = spec.may_draw_network();
    super::net::draw_pool(st, &format!("job {:?}", spec.name), "invalid_job", &spec.labels, &mut spec.network, may_draw).await
}

pub(super) async fn run_now(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<(StatusCode, Json<Run>)> {
    in_scope(&st, &who, &name).await?;
    let run = st.scheduler.run_now(&name).await?;
    Ok((StatusCode::CREATED, Json(run)))
}

pub(super) async fn pause(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<JobView>> {
    in_scope(&st, &who, &name).await?;
    let record = st.scheduler.set_paused(&name, true).await?;
    Ok(Json(JobView::new(record, st.clock.now())))
}

pub(super) async fn resume(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<JobView>> {
    in_scope(&st, &who, &name).await?;
    let record = st.scheduler.set_paused(&name, false).await?;
    Ok(Json(JobView::new(record, st.clock.now())))
}

pub(super) async fn kill(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<(StatusCode, Json<Vec<Run>>)> {
    in_scope(&st, &who, &name).await?;
    let runs = st.scheduler.kill_job(&name).await?;
    Ok((StatusCode::ACCEPTED, Json(runs)))
}
