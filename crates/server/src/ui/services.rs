//! The services pages: `/services` (every service, its replicas counted), `/services/{name}` (its
//! replicas with their health, agent and problem; scaling; its releases) and `/releases/{id}`
//! (a release's stages, progress and history, with brake, resume, retry and revoke). Services
//! publish no events on the stream, so these pages redraw their live parts every two seconds
//! instead (`data-poll` in `assets/app.js`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use tug_core::release::Batch;
use tug_core::service::HealthCheck;

use super::format::{absolute, command_line, millis, relative};
use super::{UiError, back, enc, render};
use crate::api::{ApiError, AppState};
use crate::auth::session::UiSession;
use crate::scheduler::{ReleaseAction, ReleaseState, ReleaseView};

#[derive(Deserialize, Default)]
pub(super) struct Params {
    error: Option<String>,
}

/// A serde enum as its job-file word (`rolling_out`, `healthy`).
fn word(v: &impl serde::Serialize) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(m)) => m.get("state").and_then(|s| s.as_str()).unwrap_or_default().to_owned(),
        _ => String::new(),
    }
}

/// A health check in a few words: `http :8080/healthz every 10s`.
fn health_words(h: Option<&HealthCheck>) -> String {
    let Some(h) = h else { return "none (running is healthy)".into() };
    let what = match (h.port, &h.path, &h.command) {
        (Some(port), Some(path), _) => format!(":{port}{path}"),
        (Some(port), None, _) => format!(":{port}"),
        (None, _, Some(c)) => command_line(c),
        _ => String::new(),
    };
    format!("{} {what} every {}", word(&h.kind), h.interval)
}

struct ServiceRow {
    name: String,
    link: String,
    desired: u32,
    healthy: u32,
    replicas: u32,
    ready: u32,
    class: &'static str,
    runtime: String,
    health: String,
    release: String,
}

#[derive(Template)]
#[template(path = "services.html")]
struct ServicesPage {
    error: Option<String>,
    ui: UiSession,
    services: Vec<ServiceRow>,
}

pub(super) async fn services(State(st): State<AppState>, ui: UiSession, Query(p): Query<Params>) -> Result<Html<String>, UiError> {
    let mut services = Vec::new();
    for record in st.store.list_services().await? {
        let spec = &record.spec;
        let status = st.scheduler.service_status(&spec.name).await?.unwrap_or_default();
        let release = st.scheduler.releases(&spec.name).await?.into_iter().max_by_key(|r| r.release.started_at);
        services.push(ServiceRow {
            link: enc(&spec.name),
            desired: status.desired,
            healthy: status.healthy,
            replicas: status.replicas,
            ready: status.ready,
            class: if status.failed > 0 || status.healthy < status.desired { "failing" } else { "" },
            runtime: word(&spec.runtime),
            health: health_words(spec.health.as_ref()),
            release: release.map(|r| format!("{} {}", r.release.id, release_state(&r))).unwrap_or_default(),
            name: spec.name.clone(),
        });
    }
    render(ServicesPage { error: p.error, ui, services })
}

fn release_state(r: &ReleaseView) -> String {
    let s = word(&r.release.state);
    if r.release.braked { format!("{s} (braked)") } else { s }
}

struct ReplicaRow {
    index: u32,
    state: String,
    agent: String,
    attempt: u32,
    restarts: u32,
    ready: bool,
    on_release: bool,
    reason: String,
    log: String,
}

struct ReleaseRow {
    id: String,
    state: String,
    started: String,
    progress: String,
    failure: String,
}

#[derive(Template)]
#[template(path = "service.html")]
struct ServicePage {
    error: Option<String>,
    ui: UiSession,
    name: String,
    link: String,
    description: String,
    details: Vec<(String, String)>,
    desired: u32,
    healthy: u32,
    ready: u32,
    replicas: Vec<ReplicaRow>,
    releases: Vec<ReleaseRow>,
}

pub(super) async fn service(State(st): State<AppState>, ui: UiSession, Path(name): Path<String>, Query(p): Query<Params>) -> Result<Html<String>, UiError> {
    let record = st.store.get_service(&name).await?;
    let spec = &record.spec;
    let status = st.scheduler.service_status(&name).await?.unwrap_or_default();
    let now = st.clock.now();
    let mut details = vec![
        ("command".to_string(), command_line(&spec.command)),
        ("runtime".into(), word(&spec.runtime)),
        ("health check".into(), health_words(spec.health.as_ref())),
        ("placement".into(), word(&spec.placement)),
    ];
    if let Some(d) = &spec.docker {
        details.push(("image".into(), d.image.clone()));
    }
    if !spec.labels.is_empty() {
        details.push(("labels".into(), spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")));
    }
    if !spec.owner.is_empty() {
        details.push(("owner".into(), spec.owner.clone()));
    }
    details.push(("changed".into(), relative(record.updated_at, now)));
    let replicas = status
        .list
        .iter()
        .map(|r| ReplicaRow {
            index: r.index,
            state: word(&r.state),
            agent: r.agent.clone().unwrap_or_else(|| "-".into()),
            attempt: r.attempt,
            restarts: r.restarts,
            ready: r.ready,
            on_release: r.on_release,
            reason: r.reason.clone().unwrap_or_default(),
            log: format!("/api/v1/services/{}/replicas/{}/log", enc(&name), r.index),
        })
        .collect();
    let mut releases = st.scheduler.releases(&name).await?;
    releases.sort_by_key(|r| std::cmp::Reverse(r.release.started_at));
    let releases = releases
        .iter()
        .map(|r| ReleaseRow {
            id: r.release.id.clone(),
            state: release_state(r),
            started: relative(r.release.started_at, now),
            progress: format!("{} of {} on the new spec", r.on_release, r.replicas),
            failure: r.release.failure.clone().unwrap_or_default(),
        })
        .collect();
    render(ServicePage {
        error: p.error,
        ui,
        link: enc(&name),
        description: spec.description.clone(),
        details,
        desired: status.desired,
        healthy: status.healthy,
        ready: status.ready,
        replicas,
        releases,
        name,
    })
}

/// One stage of a release as the page shows it.
struct Stage {
    name: &'static str,
    plan: String,
    /// `done`, `current`, `failed` or `waiting`.
    status: &'static str,
}

#[derive(Template)]
#[template(path = "release.html")]
struct ReleasePage {
    error: Option<String>,
    ui: UiSession,
    id: String,
    service: String,
    service_link: String,
    state: String,
    failure: String,
    stages: Vec<Stage>,
    progress: String,
    in_progress: String,
    bake_left: String,
    elapsed: String,
    changes: Vec<(String, String, String)>,
    history: Vec<(String, String)>,
    actions: Vec<&'static str>,
}

/// The three stages with where the release is in them.
fn stages(r: &ReleaseView) -> Vec<Stage> {
    let plan = &r.release.plan;
    let order = [ReleaseState::Smoking, ReleaseState::Baking, ReleaseState::RollingOut];
    // How far it got: the stage it is in, failed in, or all of them once it succeeded.
    let (reached, failed) = match r.release.state {
        ReleaseState::Pending => (None, false),
        ReleaseState::Succeeded => (Some(order.len()), false),
        ReleaseState::Failed => (r.release.failed_in().and_then(|s| order.iter().position(|o| *o == s)), true),
        s => (order.iter().position(|o| *o == s), false),
    };
    let batch = match plan.batch {
        Batch::Count(n) => format!("{n} replica{} at a time", if n == 1 { "" } else { "s" }),
        Batch::Percent(p) => format!("{p}% of the replicas at a time"),
    };
    let plans = [format!("{} replica{} replaced one by one", plan.smoke, if plan.smoke == 1 { "" } else { "s" }), format!("{} healthy", plan.bake), batch];
    ["smoke", "bake", "rollout"]
        .into_iter()
        .zip(plans)
        .enumerate()
        .map(|(i, (name, plan))| Stage {
            name,
            plan,
            status: match reached {
                Some(at) if i < at => "done",
                Some(at) if i == at && failed => "failed",
                Some(at) if i == at => "current",
                _ => "waiting",
            },
        })
        .collect()
}

/// The fields a release changes, as (field, from, to).
fn changes(r: &ReleaseView) -> Vec<(String, String, String)> {
    let (Ok(serde_json::Value::Object(from)), Ok(serde_json::Value::Object(to))) = (serde_json::to_value(&r.release.from), serde_json::to_value(&r.release.to)) else {
        return Vec::new();
    };
    let show = |v: Option<&serde_json::Value>| match v {
        None => "-".to_owned(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    let mut keys: Vec<&String> = from.keys().chain(to.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        // The replica count is the service's, not the release's; env values may be secret.
        .filter(|k| *k != "replicas" && from.get(*k) != to.get(*k))
        .map(|k| if k == "env" { (k.clone(), "(values hidden)".into(), "(changed)".into()) } else { (k.clone(), show(from.get(k)), show(to.get(k))) })
        .collect()
}

pub(super) async fn release(State(st): State<AppState>, ui: UiSession, Path(id): Path<String>, Query(p): Query<Params>) -> Result<Html<String>, UiError> {
    let Some(r) = st.scheduler.release(&id).await? else {
        return Err(ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("release {id:?} not found (the server keeps the recent ones)") }.into());
    };
    let tz = "UTC";
    let state = r.release.state;
    let mut actions = Vec::new();
    if !state.ended() {
        match state {
            ReleaseState::Failed => actions.extend(["retry", "revoke"]),
            ReleaseState::Revoking => {}
            _ if r.release.braked => actions.extend(["resume", "revoke"]),
            _ => actions.extend(["brake", "revoke"]),
        }
    }
    render(ReleasePage {
        error: p.error,
        ui,
        service_link: enc(&r.release.service),
        service: r.release.service.clone(),
        state: release_state(&r),
        failure: r.release.failure.clone().unwrap_or_default(),
        stages: stages(&r),
        progress: format!("{} of {} replicas on the new spec; {} done in this stage", r.on_release, r.replicas, r.done),
        in_progress: r.in_progress.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        bake_left: r.bake_left_ms.map(|ms| millis(ms as i64)).unwrap_or_default(),
        elapsed: millis(r.elapsed_ms as i64),
        changes: changes(&r),
        history: r.release.history.iter().map(|e| (absolute(e.at, tz), e.what.clone())).collect(),
        actions,
        id,
    })
}

#[derive(Deserialize)]
pub(super) struct ScaleForm {
    #[serde(default)]
    replicas: String,
}

/// `POST /ui/services/{name}/scale`: starts a scale operation and goes back to the service.
pub(super) async fn scale(State(st): State<AppState>, Path(name): Path<String>, axum::Form(f): axum::Form<ScaleForm>) -> Response {
    let to = format!("/services/{}", enc(&name));
    let r = match f.replicas.trim().parse::<i64>() {
        Ok(n) => match crate::api::services::scale_count(&name, n) {
            Ok(n) => st.scheduler.scale(&name, n).await.map(drop).map_err(ApiError::from),
            Err(e) => Err(e),
        },
        Err(_) => Err(ApiError::bad_request("invalid_replicas", format!("replicas: expected a count (a whole number), got {:?}", f.replicas.trim()))),
    };
    back(&to, r).into_response()
}

/// `POST /ui/releases/{id}/{action}`: brake, resume, retry or revoke, then back to the release.
pub(super) async fn release_action(State(st): State<AppState>, Path((id, action)): Path<(String, String)>) -> Response {
    let Some(act) = ReleaseAction::parse(&action) else {
        return UiError(ApiError::bad_request("invalid_action", format!("no release action {action:?}; use brake, resume, retry or revoke"))).into_response();
    };
    let r = st.scheduler.release_action(&id, act).await.map(drop).map_err(ApiError::from);
    back(&format!("/releases/{}", enc(&id)), r).into_response()
}
