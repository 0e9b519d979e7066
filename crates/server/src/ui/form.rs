//! Adding and editing a job from the browser: `/new` and `/jobs/{name}/edit` show the form,
//! `/ui/job-form` takes it. The form's fields become the same JSON document the API takes and go
//! through the same parsing, validation and scheduler calls, so a refusal says what the API
//! would (`schedule: ...`, `tz: ...`, `timeout: ...`). A refused form comes back filled in, with
//! the message. The schedule's next fires show under it: from the preview API as the user types
//! (`assets/app.js`), and rendered by the server with the page and on "Preview", so the form
//! works without the script.
//!
//! Editing changes the fields the form shows and keeps the rest of the job as it is (env,
//! docker, resources, webhooks, paused), and is a compare-and-set on the version the form was
//! opened with: a job changed meanwhile is not overwritten.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tug_core::job::{Command, JobSpec};

use super::format::command_line;
use super::{UiError, enc, render};
use crate::api::schedule::preview_fires;
use crate::api::{ApiError, AppState};
use crate::auth::session::UiSession;

/// Fires the preview lists.
const PREVIEW: usize = 5;

/// The form's fields, as posted.
#[derive(Deserialize, Default, Clone)]
pub(super) struct JobForm {
    /// Set when editing: the job's name and the version the form was opened with.
    #[serde(default)]
    original: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    labels: String,
    #[serde(default)]
    schedule: String,
    #[serde(default)]
    tz: String,
    #[serde(default)]
    parents: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    timeout: String,
    #[serde(default)]
    retries: String,
    #[serde(default)]
    concurrency: String,
    #[serde(default)]
    misfire: String,
    /// Present when the "Preview" button sent the form: show the fires, save nothing.
    preview: Option<String>,
}

/// One fire of the preview.
struct Fire {
    at: String,
    dst: bool,
}

#[derive(Template)]
#[template(path = "job_form.html")]
struct FormPage {
    error: Option<String>,
    ui: UiSession,
    editing: bool,
    link: String,
    f: JobForm,
    fires: Vec<Fire>,
    preview_error: String,
    concurrencies: Vec<(&'static str, bool)>,
    misfires: Vec<(&'static str, bool)>,
}

fn page(ui: UiSession, f: JobForm, error: Option<String>, now: jiff::Timestamp) -> Result<axum::response::Html<String>, UiError> {
    let (fires, preview_error) = preview(&f.schedule, &f.tz, now);
    let pick = |options: [&'static str; 3], current: &str, default: &str| {
        let current = if current.is_empty() { default } else { current };
        options.into_iter().map(|o| (o, o == current)).collect()
    };
    render(FormPage {
        error,
        ui,
        editing: !f.original.is_empty(),
        link: enc(&f.original),
        concurrencies: pick(["forbid", "allow", "replace"], &f.concurrency, "forbid"),
        misfires: pick(["skip", "run_once", "run_all"], &f.misfire, "skip"),
        f,
        fires,
        preview_error,
    })
}

/// The next fires of `expr` in `tz`, or what is wrong with them (the preview API's message).
fn preview(expr: &str, tz: &str, now: jiff::Timestamp) -> (Vec<Fire>, String) {
    if expr.trim().is_empty() {
        return (Vec::new(), String::new());
    }
    let tz = if tz.trim().is_empty() { "UTC" } else { tz.trim() };
    match preview_fires(expr, tz, now, PREVIEW) {
        Ok(fires) if fires.is_empty() => (Vec::new(), "it never fires after now".into()),
        Ok(fires) => (fires.into_iter().map(|f| Fire { at: f.at, dst: f.dst_adjusted }).collect(), String::new()),
        Err(e) => (Vec::new(), e.to_string()),
    }
}

/// `/new`: an empty form.
pub(super) async fn new(State(st): State<AppState>, ui: UiSession) -> Result<axum::response::Html<String>, UiError> {
    page(ui, JobForm::default(), None, st.clock.now())
}

/// `/jobs/{name}/edit`: the form filled in from the job.
pub(super) async fn edit(State(st): State<AppState>, ui: UiSession, Path(name): Path<String>) -> Result<axum::response::Html<String>, UiError> {
    let record = st.store.get_job(&name).await?;
    let s = &record.spec;
    let f = JobForm {
        original: s.name.clone(),
        version: record.version.to_string(),
        name: s.name.clone(),
        description: s.description.clone(),
        owner: s.owner.clone(),
        labels: s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
        schedule: s.schedule.clone().unwrap_or_default(),
        tz: s.tz.clone().unwrap_or_default(),
        parents: s.parents.join(", "),
        command: command_line(&s.command),
        timeout: s.timeout.map(|t| t.to_string()).unwrap_or_default(),
        retries: s.retries.count.to_string(),
        concurrency: json_word(&s.concurrency),
        misfire: json_word(&s.misfire),
        preview: None,
    };
    page(ui, f, None, st.clock.now())
}

/// How a policy is spelled in a job file (`run_once`).
fn json_word(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `POST /ui/job-form`: previews, creates or updates, then goes to the job's page.
pub(super) async fn submit(State(st): State<AppState>, ui: UiSession, axum::Form(f): axum::Form<JobForm>) -> Response {
    let now = st.clock.now();
    if f.preview.is_some() {
        return page(ui, f, None, now).into_response();
    }
    match save(&st, &f).await {
        Ok(name) => Redirect::to(&format!("/jobs/{}", enc(&name))).into_response(),
        Err(e) => {
            let status = if e.status.is_success() { StatusCode::UNPROCESSABLE_ENTITY } else { e.status };
            (status, page(ui, f, Some(e.message), now)).into_response()
        }
    }
}

async fn save(st: &AppState, f: &JobForm) -> Result<String, ApiError> {
    if f.original.is_empty() {
        let mut spec = JobSpec::from_json(&document(f, None)?.to_string())?;
        crate::api::jobs::check_network(st, &mut spec).await?;
        let record = st.scheduler.create_job(spec).await?;
        return Ok(record.spec.name);
    }
    let record = st.store.get_job(&f.original).await?;
    if f.name.trim() != f.original {
        return Err(ApiError::bad_request(
            "name_mismatch",
            format!("the form names job {:?} but it edits {:?}; renaming is not supported", f.name.trim(), f.original),
        ));
    }
    let version = f.version.parse::<u64>().ok();
    let mut spec = JobSpec::from_json(&document(f, Some(&record.spec))?.to_string())?;
    crate::api::jobs::check_network(st, &mut spec).await?;
    let record = st.scheduler.update_job(spec, version).await?;
    Ok(record.spec.name)
}

/// The job document the form stands for: the fields it shows over `base` (the job being edited),
/// empty fields left out so the job file's defaults apply.
fn document(f: &JobForm, base: Option<&JobSpec>) -> Result<Value, ApiError> {
    let mut doc = match base {
        Some(spec) => serde_json::to_value(spec).map_err(|e| ApiError::bad_request("invalid_job", e.to_string()))?,
        None => json!({}),
    };
    let Value::Object(map) = &mut doc else { unreachable!("a job serializes as an object") };
    let mut set = |key: &str, value: Option<Value>| {
        match value {
            Some(v) => map.insert(key.to_owned(), v),
            None => map.remove(key),
        };
    };
    let text = |s: &str| Some(s.trim()).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned()));
    set("name", Some(Value::String(f.name.trim().to_owned())));
    set("description", text(&f.description));
    set("owner", text(&f.owner));
    set("labels", Some(Value::Object(labels(&f.labels)?.into_iter().map(|(k, v)| (k, Value::String(v))).collect())));
    set("schedule", text(&f.schedule));
    set("tz", text(&f.tz));
    let parents: Vec<Value> = f.parents.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| Value::String(p.to_owned())).collect();
    set("parents", (!parents.is_empty()).then_some(Value::Array(parents)));
    // An argv command that the form shows unchanged stays an argv; anything typed is a shell line.
    let command = match base.map(|b| &b.command) {
        Some(c @ Command::Argv(_)) if command_line(c) == f.command.trim() => serde_json::to_value(c).ok(),
        _ => Some(Value::String(f.command.trim().to_owned())),
    };
    set("command", command);
    set("timeout", text(&f.timeout));
    set("concurrency", text(&f.concurrency));
    set("misfire", text(&f.misfire));
    let retries = f.retries.trim();
    if !retries.is_empty() {
        let count: i64 = retries
            .parse()
            .map_err(|_| ApiError::bad_request("invalid_job", format!("retries: expected a count (a whole number), got {retries:?}")))?;
        match map.get_mut("retries") {
            Some(Value::Object(r)) => {
                r.insert("count".into(), json!(count));
            }
            _ => {
                map.insert("retries".into(), json!(count));
            }
        }
    }
    Ok(doc)
}

/// `team=data, tier=batch` as labels; a part without `=` is refused with the part named.
fn labels(text: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(ApiError::bad_request("invalid_job", format!("labels: expected key=value pairs separated by commas, got {part:?}")));
        };
        out.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(name: &str, schedule: &str, command: &str) -> JobForm {
        JobForm { name: name.into(), schedule: schedule.into(), command: command.into(), ..JobForm::default() }
    }

    #[test]
    fn a_new_job_leaves_out_what_the_form_leaves_empty() {
        let mut f = form(" hello ", "*/5 * * * * *", "echo hi");
        f.labels = "team=data, tier = batch".into();
        f.retries = "3".into();
        let spec = JobSpec::from_json(&document(&f, None).unwrap().to_string()).unwrap();
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.labels.get("tier").map(String::as_str), Some("batch"));
        assert_eq!(spec.retries.count, 3);
        assert_eq!(spec.tz, None);
        assert!(spec.description.is_empty());
    }

    #[test]
    fn an_edit_keeps_what_the_form_does_not_show() {
        let base = JobSpec::from_json(
            r#"{"name":"b","schedule":"@daily","command":["/bin/echo","a b"],"env":{"K":"v"},"paused":true,
                "retries":{"count":2,"initial_delay":"7s"}}"#,
        )
        .unwrap();
        let mut f = form("b", "@hourly", "/bin/echo a b");
        f.retries = "5".into();
        let spec = JobSpec::from_json(&document(&f, Some(&base)).unwrap().to_string()).unwrap();
        assert_eq!(spec.schedule.as_deref(), Some("@hourly"));
        assert_eq!(spec.command, base.command, "an argv shown unchanged stays an argv");
        assert_eq!(spec.env.get("K").map(String::as_str), Some("v"));
        assert!(spec.paused);
        assert_eq!(spec.retries.count, 5);
        assert_eq!(spec.retries.initial_delay, base.retries.initial_delay);
    }

    #[test]
    fn bad_fields_get_the_job_files_messages() {
        let err = |f: &JobForm| match document(f, None) {
            Ok(doc) => JobSpec::from_json(&doc.to_string()).and_then(JobSpec::validate).map(drop).map_err(ApiError::from).unwrap_err().message,
            Err(e) => e.message,
        };
        let mut f = form("x", "@daily", "true");
        f.labels = "team".into();
        assert!(err(&f).contains(r#"labels: expected key=value pairs separated by commas, got "team""#), "{}", err(&f));
        let mut f = form("x", "@daily", "true");
        f.concurrency = "sometimes".into();
        assert!(err(&f).contains("concurrency: expected one of allow, forbid, replace"), "{}", err(&f));
        let mut f = form("x", "@daily", "true");
        f.retries = "-x".into();
        assert!(err(&f).contains("retries: expected a count"), "{}", err(&f));
        let mut f = form("x", "@daily", "true");
        f.tz = "Mars/Olympus".into();
        assert!(err(&f).contains("Mars/Olympus"), "{}", err(&f));
    }

    #[test]
    fn the_preview_lists_fires_in_the_zone_or_says_what_is_wrong() {
        let now: jiff::Timestamp = "2026-03-28T00:00:00Z".parse().unwrap();
        let (fires, err) = preview("0 30 2 * * *", "Europe/Berlin", now);
        assert_eq!(err, "");
        assert_eq!(fires.len(), PREVIEW);
        assert!(fires[0].at.starts_with("2026-03-28T02:30:00+01:00"), "{}", fires[0].at);
        assert!(fires[1].dst, "2:30 does not exist on 29 March in Berlin: {}", fires[1].at);
        let (fires, err) = preview("0 61 * * * *", "UTC", now);
        assert!(fires.is_empty());
        assert!(err.contains("61"), "{err}");
    }
}
