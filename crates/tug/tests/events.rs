//! The event stream (`GET /api/v1/events`) against a real server: what a run's life publishes,
//! resuming with Last-Event-ID, filters, a client too far behind, and bad requests.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures::StreamExt;
use serde_json::{Value, json};

/// One server-sent event.
#[derive(Debug, Clone)]
struct Sse {
    id: Option<String>,
    event: String,
    data: Value,
}

/// Reads a text/event-stream response event by event.
struct Reader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl Reader {
    async fn open(s: &TestServer, query: &str, last: Option<&str>) -> Reader {
        let mut r = s.http.get(format!("{}/events{query}", s.base));
        if let Some(l) = last {
            r = r.header("Last-Event-ID", l);
        }
        let resp = r.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Reader { body: resp.bytes_stream().boxed(), buf: String::new() }
    }

    /// The next event, or panics after 10 s.
    async fn next(&mut self) -> Sse {
        tokio::time::timeout(Duration::from_secs(10), self.next_inner()).await.expect("an event within 10 s")
    }

    async fn next_inner(&mut self) -> Sse {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Sse { id, event, data: serde_json::from_str(&data).unwrap() };
            }
            let chunk = self.body.next().await.expect("stream open").unwrap();
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events until one of `kind` for `job` arrives; returns all read.
    async fn until(&mut self, kind: &str, pred: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            let done = e.event == kind && pred(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

fn kinds(events: &[Sse]) -> Vec<String> {
    events.iter().map(|e| e.event.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_life_is_published_in_order_and_resumes_from_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let mut all = Reader::open(&s, "", None).await;
    s.create(json!({"name": "hello", "schedule": "@yearly", "command": "echo hi", "labels": {"team": "web"}})).await;
    let (st, run) = s.post("/jobs/hello/run").await;
    assert_eq!(st, 201);
    let id = run["id"].as_u64().unwrap();
    let seen = all.until("run.finished", |e| e.data["run"]["id"] == id).await;
    assert_eq!(kinds(&seen), ["job.created", "run.fired", "run.placed", "run.started", "run.finished"], "{seen:?}");
    let finished = seen.last().unwrap();
    assert_eq!(finished.data["run"]["state"], "succeeded");
    assert_eq!(finished.data["job"], "hello");
    let ids: Vec<u64> = seen.iter().map(|e| e.id.as_deref().unwrap().parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    assert_eq!(seen[0].data["id"], ids[0]);

    // Resuming after the fire replays what followed it.
    let fired = seen[1].id.clone().unwrap();
    let mut again = Reader::open(&s, "", Some(&fired)).await;
    let replay = again.until("run.finished", |_| true).await;
    assert_eq!(kinds(&replay), ["run.placed", "run.started", "run.finished"]);
    // The same through the query parameter.
    let mut q = Reader::open(&s, &format!("?last_event_id={fired}&kind=run.finished"), None).await;
    assert_eq!(q.next().await.data["run"]["id"], id);

    // Pausing, agents and deletion are events too.
    s.post("/jobs/hello/pause").await;
    s.post("/agents/local/drain").await;
    assert_eq!(all.next().await.event, "job.paused");
    let drained = all.next().await;
    assert_eq!((drained.event.as_str(), &drained.data["agent"]), ("agent.drained", &json!("local")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_job_label_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let mut by_job = Reader::open(&s, "?job=b", None).await;
    let mut by_label = Reader::open(&s, "?label=team=web", None).await;
    let mut by_kind = Reader::open(&s, "?kind=job", None).await;
    s.create(json!({"name": "a", "schedule": "@yearly", "command": "true", "labels": {"team": "web"}})).await;
    s.create(json!({"name": "b", "schedule": "@yearly", "command": "true", "labels": {"team": "data"}})).await;
    s.post("/jobs/b/run").await;
    s.post("/jobs/a/run").await;
    let e = by_job.next().await;
    assert_eq!((e.event.as_str(), &e.data["job"]), ("job.created", &json!("b")));
    let rest = by_job.until("run.finished", |_| true).await;
    assert!(rest.iter().all(|e| e.data["job"] == "b"), "{rest:?}");
    let l = by_label.until("run.finished", |_| true).await;
    assert!(l.iter().all(|e| e.data["job"] == "a"), "{l:?}");
    assert_eq!(l[0].event, "job.created");
    assert_eq!(kinds(&[by_kind.next().await, by_kind.next().await]), ["job.created", "job.created"]);
    s.req(reqwest::Method::DELETE, "/jobs/a", None).await;
    assert_eq!(by_kind.next().await.event, "job.deleted", "no run events in between");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_far_behind_is_told_what_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), |c| c.event_buffer = 4).await;
    let mut first = Reader::open(&s, "", None).await;
    for i in 0..10 {
        s.create(json!({"name": format!("j{i}"), "schedule": "@yearly", "command": "true"})).await;
    }
    let start: u64 = first.next().await.id.unwrap().parse().unwrap();
    let mut late = Reader::open(&s, "", Some(&start.to_string())).await;
    let lag = late.next().await;
    assert_eq!(lag.event, "lagged");
    assert_eq!(lag.data, json!({"missed": 5, "resume_at": start + 6}));
    let next = late.next().await;
    assert_eq!(next.id.unwrap().parse::<u64>().unwrap(), start + 6);
    assert_eq!(next.data["job"], "j6");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_requests_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let (st, v) = s.req(reqwest::Method::GET, "/events?kind=run.exploded", None).await;
    assert_eq!(st, 400);
    assert_eq!(v["error"]["code"], "invalid_kind");
    assert!(v["error"]["message"].as_str().unwrap().contains("unknown event kind \"run.exploded\": use job, run, agent or one of job.created"), "{v}");
    let r = s.http.get(format!("{}/events", s.base)).header("Last-Event-ID", "yesterday").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_last_event_id");
    let (st, v) = s.req(reqwest::Method::GET, "/events?jobs=a", None).await;
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("invalid_query")));
    // An open stream does not hold up shutdown.
    let _open = Reader::open(&s, "", None).await;
    tokio::time::timeout(Duration::from_secs(20), s.stop()).await.expect("shutdown with a stream open");
}
