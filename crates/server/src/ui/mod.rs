//! The web UI: server-rendered pages (askama templates in `templates/`) with one small script of
//! our own (`assets/app.js`, served from the binary: no CDN, works offline) that follows the event
//! stream and redraws a page's live parts. Every route is in [`router`], which the API router
//! merges, so whatever wraps the API (auth) wraps the pages too.
//!
//! | path | page |
//! | --- | --- |
//! | `/` | jobs: search, label and state filters, pagination |
//! | `/jobs/{name}` | one job: schedule and next fires, runs in flight, success, durations, history, actions |
//! | `/new`, `/jobs/{name}/edit` | add or edit a job, with its next fires previewed as one types (`form.rs`) |
//! | `/runs/{id}` | one run: attempts, the whole log, followed while it runs |
//! | `/agents` | agents: resources, warm containers, state; drain and undrain |
//! | `/services`, `/services/{name}`, `/releases/{id}` | services, one with its replicas and releases, a release's stages (`services.rs`) |
//! | `/graph` | dependencies: the job graph as SVG, failing jobs marked |
//! | `/login` | the token form that opens a session (when the server needs a token) |
//!
//! Actions are plain form posts to `/ui/...` that redirect back (with the API's error message
//! when it refuses), so the pages work without the script. Every form carries the session's CSRF
//! token (`auth/session.rs`), which the gate checks.

use axum::Router;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::{ApiError, AppState};
use crate::auth::session::{self, UiSession};

mod form;
pub mod format;
mod graph;
mod pages;
mod services;

/// The UI's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(pages::jobs))
        .route("/jobs/{name}", get(pages::job))
        .route("/new", get(form::new))
        .route("/jobs/{name}/edit", get(form::edit))
        .route("/ui/job-form", post(form::submit))
        .route("/runs/{id}", get(pages::run))
        .route("/agents", get(pages::agents))
        .route("/services", get(services::services))
        .route("/services/{name}", get(services::service))
        .route("/releases/{id}", get(services::release))
        .route("/ui/services/{name}/scale", post(services::scale))
        .route("/ui/releases/{id}/{action}", post(services::release_action))
        .route("/graph", get(graph::graph))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("../../assets/app.js")) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", include_str!("../../assets/app.css")) }))
        .route("/ui/jobs/{name}/{action}", post(job_action))
        .route("/ui/runs/{id}/kill", post(kill_run))
        .route("/ui/agents/{name}/{action}", post(agent_action))
        .with_state(state)
}

/// The route patterns of the pages a browser opens (not the API, the forms' targets or assets):
/// without credentials these send the browser to `/login` instead of answering 401.
pub fn is_page(route: &str) -> bool {
    matches!(
        route,
        "/" | "/new" | "/jobs/{name}" | "/jobs/{name}/edit" | "/runs/{id}" | "/agents" | "/graph" | "/services" | "/services/{name}" | "/releases/{id}"
    )
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<String>,
    ui: UiSession,
    next: String,
    open: bool,
}

#[derive(serde::Deserialize, Default)]
struct LoginParams {
    next: Option<String>,
    error: Option<String>,
}

/// Where to go after logging in: a path on this server, never another site (`//evil`).
fn local_path(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.starts_with("/\\") => n.to_owned(),
        _ => "/".to_owned(),
    }
}

async fn login_page(State(st): State<AppState>, ui: UiSession, Query(p): Query<LoginParams>) -> Result<Html<String>, UiError> {
    let open = !st.auth.required();
    render(LoginPage { error: p.error, ui, next: local_path(p.next.as_deref()), open })
}

#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    next: Option<String>,
}

/// Opens a session for the token in the form (the gate has checked its CSRF token).
async fn login(State(st): State<AppState>, ui: UiSession, axum::Form(f): axum::Form<LoginForm>) -> Response {
    let next = local_path(f.next.as_deref());
    match st.auth.login(&f.token) {
        Ok(opened) => {
            let secure = st.auth.config().secure_cookies;
            let cookie = session::set_cookie(session::SESSION_COOKIE, &opened.cookie, secure, None);
            let mut resp = Redirect::to(&next).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Err(e) => {
            let status = e.status;
            let page = render(LoginPage { error: Some(e.message), ui, next, open: false });
            (status, page).into_response()
        }
    }
}

/// Ends the browser's session and removes its cookie.
async fn logout(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(c) = session::cookie(&headers, session::SESSION_COOKIE) {
        st.auth.logout(c);
    }
    let gone = session::set_cookie(session::SESSION_COOKIE, "", st.auth.config().secure_cookies, Some(0));
    let mut resp = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&gone) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// A page that could not be made: the API's error, as a page with its status.
pub struct UiError(ApiError);

impl<E: Into<ApiError>> From<E> for UiError {
    fn from(e: E) -> UiError {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let msg = html_escape(&self.0.message);
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
             content=\"width=device-width, initial-scale=1\"><title>Error · Tugboat</title><link rel=\"stylesheet\" \
             href=\"/ui/app.css\"></head><body><header><a class=\"brand\" href=\"/\">Tugboat</a></header><main>\
             <h1>{}</h1><p class=\"error\" role=\"alert\">{msg}</p><p><a href=\"/\">All jobs</a></p></main></body></html>",
            self.0.status.canonical_reason().unwrap_or("Error")
        );
        (self.0.status, Html(body)).into_response()
    }
}

/// Renders a template, or says why not.
pub(crate) fn render(t: impl askama::Template) -> Result<Html<String>, UiError> {
    t.render().map(Html).map_err(|e| {
        UiError(ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "template", message: format!("rendering the page failed: {e}") })
    })
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Where to go after an action: `to`, with the refusal's message when there is one.
fn back(to: &str, result: Result<(), ApiError>) -> Redirect {
    match result {
        Ok(()) => Redirect::to(to),
        Err(e) => Redirect::to(&format!("{to}?error={}", enc(&e.message))),
    }
}

async fn job_action(State(st): State<AppState>, Path((name, action)): Path<(String, String)>) -> Response {
    let page = format!("/jobs/{}", enc(&name));
    let s = &st.scheduler;
    let r: Result<(), ApiError> = match action.as_str() {
        "run" => s.run_now(&name).await.map(drop).map_err(Into::into),
        "pause" => s.set_paused(&name, true).await.map(drop).map_err(Into::into),
        "resume" => s.set_paused(&name, false).await.map(drop).map_err(Into::into),
        "kill" => s.kill_job(&name).await.map(drop).map_err(Into::into),
        "delete" => match s.delete_job(&name).await {
            Ok(()) => {
                let _ = st.net.forget_job(&name).await;
                return Redirect::to("/").into_response();
            }
            Err(e) => Err(e.into()),
        },
        other => return UiError(ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("no job action {other:?}") }).into_response(),
    };
    back(&page, r).into_response()
}

async fn kill_run(State(st): State<AppState>, Path(id): Path<u64>) -> Response {
    let r = st.scheduler.kill_run(id).await.map(drop).map_err(Into::into);
    back(&format!("/runs/{id}"), r).into_response()
}

async fn agent_action(State(st): State<AppState>, Path((name, action)): Path<(String, String)>) -> Response {
    let drain = match action.as_str() {
        "drain" => true,
        "undrain" => false,
        other => return UiError(ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: format!("no agent action {other:?}") }).into_response(),
    };
    let r = st.scheduler.drain(&name, drain).await.map(drop).map_err(Into::into);
    back("/agents", r).into_response()
}
