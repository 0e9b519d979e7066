//! `GET /api/v1/events`: the event stream as Server-Sent Events.
//!
//! Each event is `id: N`, `event: KIND` (`run.finished`, ...) and `data:` the event as JSON.
//! `Last-Event-ID` (the header a browser's `EventSource` sends when it reconnects, or the
//! `last_event_id` parameter) resumes after that id from the server's bounded buffer (0: from the
//! oldest event it holds). A client
//! whose next event has left the buffer gets an `event: lagged` with `{"missed", "resume_at"}`
//! first, then the stream goes on from the oldest event held: it is told, never silently skipped.
//!
//! Filters: `job=a,b` (those jobs' events), `service=web,api` (those services' events: service,
//! replica, operation and release), `label=key` or `label=key=value` (events of jobs with that
//! label), `kind=run.finished,job` (a kind, or a prefix: `job`, `run`, `agent`, `service`,
//! `replica`, `operation`, `release`). Several filters must all match; agent and service events
//! have no job, so a job or label filter drops them, and a service filter drops every event
//! without a service.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tug_store::Store;

use super::{query_error, ApiError, ApiResult, AppState};
use crate::stream::{Event, EventKind, Next, Subscription};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamParams {
    job: Option<String>,
    service: Option<String>,
    kind: Option<String>,
    label: Option<String>,
    last_event_id: Option<String>,
}

/// Which events a client asked for.
struct Filter {
    jobs: Vec<String>,
    services: Vec<String>,
    kinds: Vec<EventKind>,
    label: Option<(String, Option<String>)>,
}

impl Filter {
    fn parse(p: &StreamParams) -> ApiResult<Filter> {
        let list = |v: &Option<String>| -> Vec<String> {
            v.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
        };
        let mut kinds = Vec::new();
        for k in list(&p.kind) {
            let matched: Vec<EventKind> = EventKind::ALL
                .into_iter()
                .filter(|e| e.as_str() == k || e.as_str().strip_prefix(k.as_str()).is_some_and(|r| r.starts_with('.')))
                .collect();
            if matched.is_empty() {
                let all: Vec<&str> = EventKind::ALL.iter().map(|e| e.as_str()).collect();
                return Err(ApiError::bad_request(
                    "invalid_kind",
                    format!(
                        "unknown event kind {k:?}: use job, run, agent, service, replica, operation, release or one of {}",
                        all.join(", ")
                    ),
                ));
            }
            kinds.extend(matched);
        }
        let label = p.label.as_deref().filter(|l| !l.is_empty()).map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (l.to_string(), None),
        });
        Ok(Filter { jobs: list(&p.job), services: list(&p.service), kinds, label })
    }

    /// Whether `e` passes, looking jobs' labels up (and caching them) when a label filter is set.
    async fn admits(&self, e: &Event, store: &Arc<dyn Store>, labels: &mut HashMap<String, Option<BTreeMap<String, String>>>) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&e.kind) {
            return false;
        }
        if !self.jobs.is_empty() && !e.job.as_ref().is_some_and(|j| self.jobs.contains(j)) {
            return false;
        }
        if !self.services.is_empty() && !e.service.as_ref().is_some_and(|s| self.services.contains(s)) {
            return false;
        }
        let Some((key, value)) = &self.label else { return true };
        let Some(job) = &e.job else { return false };
        if matches!(e.kind, EventKind::JobChanged | EventKind::JobDeleted | EventKind::JobCreated) {
            labels.remove(job);
        }
        if !labels.contains_key(job) {
            let found = store.get_job(job).await.ok().map(|r| r.spec.labels);
            labels.insert(job.clone(), found);
        }
        match labels.get(job).and_then(Option::as_ref) {
            Some(l) => l.get(key).is_some_and(|v| value.as_ref().is_none_or(|want| v == want)),
            // Deleted: its last events still pass if the label matched before (unknown now).
            None => false,
        }
    }
}

struct Follow {
    sub: Subscription,
    filter: Filter,
    store: Arc<dyn Store>,
    labels: HashMap<String, Option<BTreeMap<String, String>>>,
    pending: std::collections::VecDeque<SseEvent>,
}

/// Most events taken from the buffer per wake-up.
const BATCH: usize = 256;

pub(super) async fn stream(
    State(st): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let Query(p) = params.map_err(query_error)?;
    let filter = Filter::parse(&p)?;
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_string).or(p.last_event_id.clone());
    let after = match last.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request("invalid_last_event_id", format!("Last-Event-ID {s:?} is not an event id (a number)"))
        })?),
        None => None,
    };
    let follow = Follow { sub: st.events.subscribe(after), filter, store: st.store.clone(), labels: HashMap::new(), pending: Default::default() };
    let events = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some(e) = f.pending.pop_front() {
                return Some((Ok(e), f));
            }
            match f.sub.next(BATCH).await {
                Next::Events(batch) => {
                    for e in batch {
                        if f.filter.admits(&e, &f.store, &mut f.labels).await {
                            f.pending.push_back(SseEvent::default().id(e.id.to_string()).event(e.kind.as_str()).data(e.json()));
                        }
                    }
                }
                Next::Lagged(l) => {
                    let data = serde_json::to_string(&l).unwrap_or_default();
                    let id = (l.resume_at - 1).to_string();
                    f.pending.push_back(SseEvent::default().id(id).event("lagged").data(data));
                }
                Next::Closed => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
