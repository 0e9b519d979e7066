//! The pages: each handler reads what it shows (store, scheduler), turns it into display text
//! (`format.rs`), and renders its template.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use jiff::Timestamp;
use serde::Deserialize;
use tug_core::run::{Run, RunState};
use tug_core::schedule::Schedule;
use tug_store::{JobQuery, JobRecord, RunQuery};

use super::format::{absolute, command_line, millis, rate, relative, schedule_words, short};
use super::{UiError, enc, render};
use crate::api::{ApiError, AppState};
use crate::scheduler::{JobState, UpcomingCursor};
use crate::auth::session::UiSession;
use crate::api::jobs::next_fire;

/// Jobs per page.
const PAGE: usize = 50;
/// Runs per page on a job's page.
const RUNS_PAGE: usize = 25;
/// Jobs read from the store per round while a state filter looks for matches.
const SCAN: usize = 500;

#[derive(Deserialize, Default)]
pub(super) struct JobsParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    label: String,
    #[serde(default)]
    state: String,
    /// `next` (by next fire, the default) or `name`.
    #[serde(default)]
    sort: String,
    cursor: Option<String>,
    error: Option<String>,
}

struct StateLink {
    text: &'static str,
    href: String,
    current: bool,
}

struct JobRow {
    name: String,
    link: String,
    words: String,
    expr: String,
    next_rel: String,
    next_abs: String,
    last_state: &'static str,
    last_at: String,
    rate: String,
    in_flight: usize,
    paused: bool,
    class: &'static str,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    error: Option<String>,
    ui: UiSession,
    q: String,
    label: String,
    states: Vec<StateLink>,
    sort: String,
    sorts: Vec<StateLink>,
    sorted_by: &'static str,
    rows: Vec<JobRow>,
    next_link: Option<String>,
}

/// How a job's last finished run ended, from the store's bookkeeping.
pub(super) fn last_state(r: &JobRecord) -> (&'static str, Option<Timestamp>) {
    match (r.last_success_at, r.last_failure_at) {
        (Some(ok), Some(bad)) if bad > ok => ("failed", Some(bad)),
        (Some(ok), _) => ("succeeded", Some(ok)),
        (None, Some(bad)) => ("failed", Some(bad)),
        (None, None) => ("none", None),
    }
}

fn jobs_url(q: &str, label: &str, state: &str, sort: &str, cursor: Option<&str>) -> String {
    let mut parts = Vec::new();
    for (k, v) in [("q", q), ("label", label), ("state", state), ("sort", sort)] {
        if !v.is_empty() {
            parts.push(format!("{k}={}", enc(v)));
        }
    }
    if let Some(c) = cursor {
        parts.push(format!("cursor={}", enc(c)));
    }
    if parts.is_empty() { "/".into() } else { format!("/?{}", parts.join("&")) }
}

pub(super) async fn jobs(State(st): State<AppState>, ui: UiSession, Query(p): Query<JobsParams>) -> Result<Html<String>, UiError> {
    let now = st.clock.now();
    let mut active: HashMap<String, usize> = HashMap::new();
    for r in st.store.active_runs().await? {
        *active.entry(r.job).or_default() += 1;
    }
    let wanted = |r: &JobRecord| match p.state.as_str() {
        "failing" => last_state(r).0 == "failed",
        "running" => active.contains_key(&r.spec.name),
        "paused" => r.spec.paused,
        _ => true,
    };
    let by_next = p.sort != "name";
    let mut found: Vec<JobRecord> = Vec::new();
    let mut fires: HashMap<String, Timestamp> = HashMap::new();
    let mut next_cursor = None;
    if by_next {
        // In order of next fire, from the scheduler's timers; the rows' details from the store.
        let after = match p.cursor.as_deref() {
            Some(c) => Some(UpcomingCursor::parse(c).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", format!("cursor={c:?} is not one this list handed out; start again from the first page"))
            })?),
            None => None,
        };
        let filter = JobQuery { q: Some(p.q.clone()).filter(|s| !s.is_empty()), label: Some(p.label.clone()).filter(|s| !s.is_empty()), ..JobQuery::default() };
        let page = st.scheduler.upcoming(filter, JobState::parse(&p.state), after, PAGE).await?;
        for (name, at) in page.jobs {
            match st.store.get_job(&name).await {
                Ok(r) => {
                    if let Some(at) = at {
                        fires.insert(name, at);
                    }
                    found.push(r);
                }
                Err(tug_store::StoreError::JobNotFound(_)) => {} // deleted since
                Err(e) => return Err(e.into()),
            }
        }
        next_cursor = page.next.map(|c| c.to_string());
    }
    // By name: read pages of the store until a page of matches is found (state filters skip jobs).
    let mut cursor = p.cursor.clone();
    let mut more = false;
    if !by_next {
        loop {
            let q = JobQuery {
                limit: if p.state.is_empty() { PAGE + 1 } else { SCAN },
                cursor: cursor.clone(),
                q: Some(p.q.clone()).filter(|s| !s.is_empty()),
                label: Some(p.label.clone()).filter(|s| !s.is_empty()),
            };
            let page = st.store.list_jobs(&q).await?;
            for r in page.items {
                if !wanted(&r) {
                    continue;
                }
                if found.len() == PAGE {
                    more = true;
                    break;
                }
                found.push(r);
            }
            if more || page.next_cursor.is_none() {
                break;
            }
            cursor = page.next_cursor;
        }
    }
    let mut rows = Vec::with_capacity(found.len());
    for r in &found {
        let totals = st.store.run_totals(Some(&r.spec.name)).await?;
        let (ok, bad) = totals.first().map_or((0, 0), |(_, t)| (t.succeeded, t.failed));
        let (state, at) = last_state(r);
        let next = if by_next { fires.get(&r.spec.name).copied() } else { next_fire(r, now) };
        let tz = r.spec.tz();
        let expr = match &r.spec.schedule {
            Some(s) if tz != "UTC" => format!("{s} ({tz})"),
            Some(s) => s.clone(),
            None => format!("after {}", r.spec.parents.join(", ")),
        };
        let in_flight = active.get(&r.spec.name).copied().unwrap_or(0);
        rows.push(JobRow {
            name: r.spec.name.clone(),
            link: enc(&r.spec.name),
            words: r.spec.schedule.as_deref().map_or_else(|| "when its parents succeed".into(), schedule_words),
            expr,
            next_rel: next.map_or_else(|| if r.spec.paused { "paused".into() } else { "-".into() }, |t| relative(t, now)),
            next_abs: next.map(|t| absolute(t, tz)).unwrap_or_default(),
            last_state: state,
            last_at: at.map(|t| relative(t, now)).unwrap_or_default(),
            rate: rate(ok, bad),
            in_flight,
            paused: r.spec.paused,
            class: if state == "failed" { "failing" } else { "" },
        });
    }
    let states = [("", "all"), ("failing", "failing"), ("running", "running"), ("paused", "paused")]
        .into_iter()
        .map(|(v, text)| StateLink { text, href: jobs_url(&p.q, &p.label, v, &p.sort, None), current: p.state == v })
        .collect();
    let sorts = [("", "next fire"), ("name", "name")]
        .into_iter()
        .map(|(v, text)| StateLink { text, href: jobs_url(&p.q, &p.label, &p.state, v, None), current: if v.is_empty() { by_next } else { !by_next } })
        .collect();
    let next_link = if by_next {
        next_cursor.map(|c| jobs_url(&p.q, &p.label, &p.state, &p.sort, Some(&c)))
    } else {
        more.then(|| jobs_url(&p.q, &p.label, &p.state, &p.sort, found.last().map(|r| r.spec.name.as_str())))
    };
    let sorted_by = if by_next { "next fire" } else { "name" };
    render(JobsPage { error: p.error, ui, q: p.q, label: p.label, states, sort: p.sort, sorts, sorted_by, rows, next_link })
}

#[derive(Deserialize, Default)]
pub(super) struct JobParams {
    cursor: Option<String>,
    error: Option<String>,
}

struct RunRow {
    id: u64,
    scheduled: String,
    trigger: String,
    state: String,
    attempt: u32,
    agent: String,
    duration: String,
    reason: String,
}

struct InFlight {
    id: u64,
    state: String,
    agent: String,
    elapsed: String,
    usual: String,
    progress: Option<u32>,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    error: Option<String>,
    ui: UiSession,
    name: String,
    link: String,
    description: String,
    paused: bool,
    words: String,
    expr: String,
    tz: String,
    fires: Vec<(String, bool)>,
    parents: Vec<(String, String)>,
    children: Vec<(String, String)>,
    details: Vec<(String, String)>,
    in_flight: Vec<InFlight>,
    rate_day: String,
    rate_week: String,
    rate_all: String,
    chart: String,
    runs: Vec<RunRow>,
    next_link: Option<String>,
}

fn run_ms(r: &Run) -> Option<i64> {
    Some(r.finished_at?.duration_since(r.started_at?).as_millis() as i64)
}

fn duration_text(r: &Run, now: Timestamp) -> String {
    match (r.state, r.started_at, r.finished_at, r.retry_at) {
        (RunState::Pending, _, _, Some(at)) => format!("retry {}", relative(at, now)),
        (_, Some(s), Some(f), _) => millis(f.duration_since(s).as_millis() as i64),
        (RunState::Running, Some(s), None, _) => format!("{} so far", millis(now.duration_since(s).as_millis() as i64)),
        _ => "-".into(),
    }
}

/// Bars of the finished runs' durations, oldest left, coloured by how they ended.
fn duration_chart(runs: &[Run]) -> String {
    let done: Vec<(&Run, i64)> = runs.iter().rev().filter_map(|r| run_ms(r).map(|ms| (r, ms))).collect();
    if done.is_empty() {
        return "<p class=\"dim\">No finished runs yet.</p>".into();
    }
    let max = done.iter().map(|(_, ms)| *ms).max().unwrap_or(1).max(1);
    let w = 640.0 / done.len().max(20) as f64;
    let mut bars = String::new();
    for (i, (r, ms)) in done.iter().enumerate() {
        let h = (*ms as f64 / max as f64 * 100.0).max(1.0);
        let colour = if r.state == RunState::Succeeded { "#17794a" } else { "#b3261e" };
        bars.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{colour}\"><title>run {}: {} ({})</title></rect>",
            i as f64 * w,
            110.0 - h,
            (w - 1.0).max(1.0),
            r.id,
            millis(*ms),
            r.state
        ));
    }
    format!(
        "<svg class=\"chart\" viewBox=\"0 0 640 120\" role=\"img\" aria-label=\"durations of the last {} finished runs, longest {}\">{bars}<text x=\"0\" y=\"120\" font-size=\"10\" fill=\"#667\">longest {}</text></svg>",
        done.len(),
        millis(max),
        millis(max)
    )
}

pub(super) async fn job(State(st): State<AppState>, ui: UiSession, Path(name): Path<String>, Query(p): Query<JobParams>) -> Result<Html<String>, UiError> {
    let now = st.clock.now();
    let record = st.store.get_job(&name).await?;
    let spec = &record.spec;
    let tz = spec.tz().to_string();
    let mut fires = Vec::new();
    if let Some(expr) = &spec.schedule
        && let Ok(s) = Schedule::parse(expr, &tz)
    {
        let from = next_fire(&record, now).map(|t| t.saturating_sub(jiff::SignedDuration::from_nanos(1)).unwrap_or(t)).unwrap_or(now);
        fires = s.iter_after(from).take(10).map(|f| (absolute(f.at, &tz), f.dst_adjusted)).collect();
    }
    // Recent history for rates, the chart and usual durations.
    let recent = st.store.list_runs(&name, &RunQuery { limit: 1000, cursor: None, state: None }).await?.items;
    let window = |secs: i64| {
        let since = now.saturating_sub(jiff::SignedDuration::from_secs(secs)).unwrap_or(now);
        let (ok, bad) = recent.iter().filter(|r| r.finished_at.is_some_and(|f| f >= since)).fold((0, 0), |(ok, bad), r| match r.state {
            RunState::Succeeded => (ok + 1, bad),
            RunState::Failed | RunState::TimedOut | RunState::Lost => (ok, bad + 1),
            _ => (ok, bad),
        });
        rate(ok, bad)
    };
    let totals = st.store.run_totals(Some(&name)).await?;
    let (ok, bad) = totals.first().map_or((0, 0), |(_, t)| (t.succeeded, t.failed));
    let usual: Vec<i64> = recent.iter().filter(|r| r.state == RunState::Succeeded).filter_map(run_ms).take(20).collect();
    let usual_ms = (!usual.is_empty()).then(|| {
        let mut u = usual.clone();
        u.sort_unstable();
        u[u.len() / 2]
    });
    let in_flight = recent
        .iter()
        .filter(|r| !r.state.is_terminal())
        .map(|r| {
            let elapsed = r.started_at.filter(|_| r.state == RunState::Running).map(|s| now.duration_since(s).as_millis() as i64);
            InFlight {
                id: r.id,
                state: r.state.to_string(),
                agent: r.agent.clone().unwrap_or_else(|| "-".into()),
                elapsed: match (elapsed, r.retry_at) {
                    (_, Some(at)) if r.state == RunState::Pending => format!("retry {}", relative(at, now)),
                    (Some(e), _) => format!("running {}", millis(e)),
                    _ => r.reason.clone().unwrap_or_else(|| "waiting".into()),
                },
                usual: usual_ms.map(millis).unwrap_or_default(),
                progress: match (elapsed, usual_ms) {
                    (Some(e), Some(u)) if u > 0 => Some(((e * 100) / u).min(100) as u32),
                    _ => None,
                },
            }
        })
        .collect();
    let page = st.store.list_runs(&name, &RunQuery { limit: RUNS_PAGE, cursor: p.cursor.clone(), state: None }).await?;
    let next_link = page.next_cursor.map(|c| format!("/jobs/{}?cursor={}", enc(&name), enc(&c)));
    let page = page.items;
    let runs = page
        .iter()
        .map(|r| RunRow {
            id: r.id,
            scheduled: absolute(r.scheduled_at, &tz),
            trigger: r.trigger.as_str().to_string(),
            state: r.state.to_string(),
            attempt: r.attempt,
            agent: r.agent.clone().unwrap_or_else(|| "-".into()),
            duration: duration_text(r, now),
            reason: r.reason.clone().unwrap_or_default(),
        })
        .collect();
    let mut details = vec![("command".to_string(), command_line(&spec.command))];
    let mut add = |k: &str, v: String| {
        if !v.is_empty() {
            details.push((k.to_string(), v));
        }
    };
    add("owner", spec.owner.clone());
    add("labels", spec.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "));
    add("runtime", format!("{:?}", spec.runtime).to_lowercase());
    add("image", spec.docker.as_ref().map(|d| d.image.clone()).unwrap_or_default());
    add("env", spec.env.keys().cloned().collect::<Vec<_>>().join(", "));
    add("concurrency", format!("{:?}", spec.concurrency).to_lowercase());
    add("retries", if spec.retries.count == 0 { String::new() } else { spec.retries.count.to_string() });
    add("timeout", spec.timeout.map(|t| t.to_string()).unwrap_or_default());
    add("last success", record.last_success_at.map(|t| relative(t, now)).unwrap_or_default());
    add("last failure", record.last_failure_at.map(|t| relative(t, now)).unwrap_or_default());
    render(JobPage {
        error: p.error,
        ui,
        link: enc(&name),
        description: spec.description.clone(),
        paused: spec.paused,
        words: spec.schedule.as_deref().map_or_else(|| "when all its parents have succeeded".into(), schedule_words),
        expr: spec.schedule.clone().unwrap_or_else(|| format!("after {}", spec.parents.join(", "))),
        tz,
        fires,
        parents: spec.parents.iter().map(|p| (p.clone(), enc(p))).collect(),
        children: st.scheduler.children(&name).await?.into_iter().map(|c| (enc(&c), c)).map(|(link, c)| (c, link)).collect(),
        details,
        in_flight,
        rate_day: window(86_400),
        rate_week: window(7 * 86_400),
        rate_all: rate(ok, bad),
        chart: duration_chart(&recent[..recent.len().min(60)]),
        runs,
        next_link,
        name,
    })
}

struct AttemptRow {
    attempt: u32,
    state: String,
    started: String,
    finished: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    error: Option<String>,
    ui: UiSession,
    id: u64,
    job: String,
    job_link: String,
    state: String,
    active: bool,
    details: Vec<(String, String)>,
    attempts: Vec<AttemptRow>,
    log: String,
    log_len: usize,
}

#[derive(Deserialize, Default)]
pub(super) struct RunParams {
    error: Option<String>,
}

pub(super) async fn run(State(st): State<AppState>, ui: UiSession, Path(id): Path<u64>, Query(p): Query<RunParams>) -> Result<Html<String>, UiError> {
    let now = st.clock.now();
    let run = st.store.get_run(id).await?;
    let tz = st.store.get_job(&run.job).await.map(|r| r.spec.tz().to_string()).unwrap_or_else(|_| "UTC".into());
    let when = |t: Option<Timestamp>| t.map(|t| format!("{} ({})", absolute(t, &tz), relative(t, now))).unwrap_or_default();
    let mut details = Vec::new();
    for (k, v) in [
        ("scheduled", when(Some(run.scheduled_at))),
        ("trigger", run.trigger.as_str().to_string()),
        ("attempt", run.attempt.to_string()),
        ("agent", run.agent.clone().unwrap_or_default()),
        ("started", when(run.started_at)),
        ("finished", when(run.finished_at)),
        ("duration", duration_text(&run, now)),
        ("exit code", run.exit_code.map(|c| c.to_string()).unwrap_or_default()),
        ("signal", run.signal.map(|c| c.to_string()).unwrap_or_default()),
        ("reason", run.reason.clone().unwrap_or_default()),
    ] {
        if !v.is_empty() {
            details.push((k.to_string(), v));
        }
    }
    let attempts = st
        .store
        .attempts(id)
        .await?
        .into_iter()
        .map(|a| AttemptRow {
            attempt: a.attempt,
            state: a.state.to_string(),
            started: when(a.started_at),
            finished: when(a.finished_at),
            reason: a.reason.unwrap_or_default(),
        })
        .collect();
    let mut log = Vec::new();
    loop {
        match st.logs.read(id, run.agent.as_deref(), log.len() as u64, 1 << 20).await {
            Ok(chunk) if !chunk.is_empty() => log.extend_from_slice(&chunk),
            Ok(_) => break,
            Err(e) => {
                log.extend_from_slice(format!("[the log cannot be read now: {e}]").as_bytes());
                break;
            }
        }
    }
    render(RunPage {
        error: p.error,
        ui,
        id,
        job_link: enc(&run.job),
        job: run.job.clone(),
        state: run.state.to_string(),
        active: !run.state.is_terminal(),
        details,
        attempts,
        log_len: log.len(),
        log: String::from_utf8_lossy(&log).into_owned(),
    })
}

struct AgentRow {
    name: String,
    link: String,
    state: String,
    cpus: String,
    mem: String,
    runs: usize,
    warm: u32,
    seen: String,
    attributes: String,
}

#[derive(Template)]
#[template(path = "agents.html")]
struct AgentsPage {
    error: Option<String>,
    ui: UiSession,
    agents: Vec<AgentRow>,
}

pub(super) async fn agents(State(st): State<AppState>, ui: UiSession, Query(p): Query<RunParams>) -> Result<Html<String>, UiError> {
    let gib = |b: u64| format!("{:.1}", b as f64 / (1u64 << 30) as f64);
    let agents = st
        .scheduler
        .agents()
        .await?
        .into_iter()
        .map(|a| AgentRow {
            link: enc(&a.name),
            state: serde_json::to_value(a.state).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            cpus: format!("{} / {}", a.cpus.1, a.cpus.0),
            mem: format!("{} / {} GiB", gib(a.mem.1), gib(a.mem.0)),
            runs: a.runs,
            warm: a.warm_containers,
            seen: format!("{} ago", short(a.last_seen_secs as u64)),
            attributes: a.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
            name: a.name,
        })
        .collect();
    render(AgentsPage { error: p.error, ui, agents })
}
