//! The event stream (`GET /api/v1/events`) against a real server: what a run's life publishes,
//! resuming with Last-Event-ID, filters, a client too far behind, and bad requests; a service's
//! life (its replicas, a scale operation, releases) on the same stream.

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
async fn retries_misfires_job_changes_and_agents_coming_and_going_are_published() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), |c| {
        c.agent_timeout = Duration::from_secs(4);
        c.min_interval = Duration::from_millis(100);
    })
    .await;
    // The local agent joined as the server started; the buffer still holds it.
    let mut agents = Reader::open(&s, "?last_event_id=0&kind=agent", None).await;
    let joined = agents.next().await;
    assert_eq!((joined.event.as_str(), &joined.data["agent"]), ("agent.joined", &json!("local")));
    let mut all = Reader::open(&s, "?kind=job,run", None).await;

    // A failed attempt that will be tried again is a retry, not the end of the run.
    s.create(json!({"name": "flaky", "schedule": "@yearly", "command": "exit 3",
        "retries": {"count": 1, "initial_delay": "200ms", "max_delay": "200ms"}}))
    .await;
    let (_, run) = s.post("/jobs/flaky/run").await;
    let id = run["id"].as_u64().unwrap();
    let seen = all.until("run.finished", |e| e.data["run"]["id"] == id).await;
    let k = kinds(&seen);
    let retried = seen.iter().find(|e| e.event == "run.retried").unwrap_or_else(|| panic!("a run.retried event: {k:?}"));
    assert_eq!((retried.data["job"].as_str(), retried.data["run"]["id"].as_u64()), (Some("flaky"), Some(id)));
    assert!(retried.data["run"]["retry_at"].is_string(), "{retried:?}");
    // Each attempt's start is published, also when it ended as soon as it began.
    assert_eq!(k, ["job.created", "run.fired", "run.placed", "run.started", "run.retried", "run.placed", "run.started", "run.finished"]);
    let attempts: Vec<u64> = seen[2..].iter().map(|e| e.data["run"]["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 1, 2, 2, 2, 2]);
    let finished = seen.last().unwrap();
    assert_eq!((finished.data["run"]["state"].as_str(), finished.data["run"]["attempt"].as_u64()), (Some("failed"), Some(2)), "{finished:?}");

    // Changing a job is published; fires missed while it was paused are misfires.
    s.create(json!({"name": "tick", "schedule": "* * * * * *", "command": "true", "epsilon": "1s"})).await;
    s.post("/jobs/tick/pause").await;
    all.until("job.paused", |e| e.data["job"] == "tick").await;
    let (st, _) = s.req(reqwest::Method::PUT, "/jobs/tick", Some(json!({"name": "tick", "schedule": "* * * * * *", "command": "true",
        "epsilon": "1s", "description": "every second"}))).await;
    assert_eq!(st, 200);
    let changed = all.next().await;
    assert_eq!((changed.event.as_str(), &changed.data["job"]), ("job.changed", &json!("tick")));
    tokio::time::sleep(Duration::from_secs(3)).await;
    s.post("/jobs/tick/resume").await;
    let seen = all.until("run.misfired", |e| e.data["job"] == "tick").await;
    let missed = &seen.last().unwrap().data["run"];
    assert_eq!(missed["state"], "skipped");
    assert!(missed["reason"].as_str().unwrap().starts_with("missed: due at"), "{missed}");
    s.post("/jobs/tick/pause").await;

    // An agent that joins, then goes silent, is lost after the agent timeout.
    let server = s.server.as_ref().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (reports_tx, reports) = tokio::sync::mpsc::channel(64);
    let config = tug_agent::AgentConfig { name: "b".into(), heartbeat: Duration::from_millis(500), ..Default::default() };
    let agent = tug_agent::Agent::with_acks(config, Arc::new(tug_agent::runtime::process::ProcessRuntime::new()),
        tug_logs::LogFiles::new(dir.path().join("b-logs")), reports_tx);
    let b = tokio::spawn(tug::local::serve_in_process(agent, rx, reports, server.updates_sender(), std::future::pending()));
    let resources = tug_core::placement::Capacity { cpus: 1.0, mem: 1 << 30, disk: 1 << 30 };
    let registration = tug_server::scheduler::agents::Registration { name: "b".into(), tx, resources, attributes: Default::default() };
    server.scheduler.register_agent(registration).await.unwrap();
    let joined = agents.next().await;
    assert_eq!((joined.event.as_str(), &joined.data["agent"]), ("agent.joined", &json!("b")));
    b.abort();
    let lost = agents.next().await;
    assert_eq!((lost.event.as_str(), &lost.data["agent"]), ("agent.lost", &json!("b")));
    let views = s.get("/agents").await;
    let b = views.as_array().unwrap().iter().find(|a| a["name"] == "b").cloned();
    assert_eq!(b.map(|a| a["state"].clone()), Some(json!("lost")), "{views}");
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
    assert!(v["error"]["message"].as_str().unwrap().contains("unknown event kind \"run.exploded\": use job, run, agent, service, replica, operation, release or one of job.created"), "{v}");
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

/// The events of one replica index, by kind.
fn of_replica(events: &[Sse], index: u64) -> Vec<String> {
    events.iter().filter(|e| e.data["detail"]["index"] == index).map(|e| e.event.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_services_replicas_scaling_and_releases_are_published_in_order() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let mut web = Reader::open(&s, "?service=web", None).await;
    let mut api_only = Reader::open(&s, "?service=api", None).await;
    let mut ops = Reader::open(&s, "?kind=operation,service.scaled", None).await;
    let mut jobs = Reader::open(&s, "?kind=job", None).await;
    let spec = json!({"name": "web", "replicas": 2, "command": "exec sleep 1000", "stop_grace": "1s"});
    let (st, v) = s.req(Method::POST, "/services", Some(spec)).await;
    assert_eq!(st, 201, "{v}");
    let seen = web.until("replica.healthy", |e| e.data["detail"]["index"] == 1).await;
    let seen = [seen.clone(), if of_replica(&seen, 0).contains(&"replica.healthy".to_string()) { vec![] } else { web.until("replica.healthy", |_| true).await }].concat();
    assert_eq!(seen[0].event, "service.created", "{seen:?}");
    assert_eq!((seen[0].data["service"].as_str(), seen[0].data["detail"]["replicas"].as_i64()), (Some("web"), Some(2)));
    for i in [0, 1] {
        assert_eq!(of_replica(&seen, i), ["replica.placed", "replica.started", "replica.healthy"], "replica {i}: {seen:?}");
    }
    let placed = seen.iter().find(|e| e.event == "replica.placed").unwrap();
    assert_eq!((placed.data["detail"]["agent"].as_str(), placed.data["detail"]["attempt"].as_u64()), (Some("local"), Some(1)));
    assert!(placed.data.get("job").is_none(), "{:?}", placed.data);

    // Scaling: the call, the operation's progress, its end.
    let (st, op) = s.req(Method::POST, "/services/web/scale", Some(json!({"replicas": 3}))).await;
    assert_eq!(st, 202, "{op}");
    let op_id = op["id"].as_str().unwrap().to_owned();
    let o = ops.until("operation.finished", |_| true).await;
    assert_eq!((o[0].event.as_str(), o[0].data["detail"]["operation"].as_str(), o[0].data["detail"]["replicas"].as_u64()), ("service.scaled", Some(op_id.as_str()), Some(3)));
    assert!(o.iter().any(|e| e.event == "operation.progress"), "{o:?}");
    let end = o.last().unwrap();
    assert_eq!((end.data["detail"]["state"].as_str(), end.data["detail"]["healthy"].as_u64()), (Some("succeeded"), Some(3)), "{end:?}");
    let more = web.until("operation.finished", |_| true).await;
    assert_eq!(of_replica(&more, 2), ["replica.placed", "replica.started", "replica.healthy"], "{more:?}");

    // A release: each stage, each replica replaced, then the service changed.
    let (st, rel) = s.req(Method::POST, "/services/web/releases", Some(json!({"env": {"V": "2"}, "smoke": 1, "bake": "0s", "batch": 2}))).await;
    assert_eq!(st, 202, "{rel}");
    let rel_id = rel["id"].as_str().unwrap().to_owned();
    let r = web.until("release.succeeded", |_| true).await;
    let release_events: Vec<String> = r
        .iter()
        .filter(|e| e.event.starts_with("release."))
        .map(|e| format!("{} {}", e.event, e.data["detail"]["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        release_events,
        ["release.started pending", "release.stage smoking", "release.stage baking", "release.stage rolling_out", "release.succeeded succeeded"],
        "{r:?}"
    );
    assert!(r.iter().all(|e| !e.event.starts_with("release.") || e.data["detail"]["release"] == rel_id.as_str()));
    let replaced: Vec<u64> =
        r.iter().filter(|e| e.event == "replica.replaced" && e.data["detail"]["release"] == rel_id.as_str()).map(|e| e.data["detail"]["index"].as_u64().unwrap()).collect();
    assert_eq!(replaced, [0, 1, 2], "smoke first, then a batch of two");
    assert_eq!(web.next().await.event, "service.changed");

    // Braked, resumed and revoked, each with its event.
    let (_, rel) = s.req(Method::POST, "/services/web/releases", Some(json!({"env": {"V": "3"}, "bake": "1h"}))).await;
    let rel_id = rel["id"].as_str().unwrap().to_owned();
    web.until("release.stage", |e| e.data["detail"]["state"] == "baking").await;
    for action in ["brake", "resume", "revoke"] {
        let (st, v) = s.req(Method::POST, &format!("/releases/{rel_id}/{action}"), None).await;
        assert_eq!(st, 200, "{action}: {v}");
    }
    assert_eq!(web.next().await.event, "release.braked");
    assert_eq!(web.next().await.event, "release.resumed");
    let revoking = web.next().await;
    assert_eq!((revoking.event.as_str(), revoking.data["detail"]["state"].as_str()), ("release.stage", Some("revoking")));
    let rest = web.until("release.revoked", |_| true).await;
    assert_eq!(of_replica(&rest, 0).first().map(String::as_str), Some("replica.replaced"), "{rest:?}");

    // Deleted: every replica stops for good.
    s.req(Method::DELETE, "/services/web", None).await;
    assert_eq!(web.next().await.event, "service.deleted");
    let gone = web.until("replica.stopped", |e| e.data["detail"]["removed"] == true).await;
    assert!(gone.iter().all(|e| e.event == "replica.stopped"), "{gone:?}");

    // The CLI follows one service's events too.
    let server = s.base.trim_end_matches("/api/v1").to_owned();
    let out = tokio::task::spawn_blocking(move || ok(&server, &["events", "--service", "web", "--kind", "release", "--since", "0", "--count", "3"])).await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("release.started") && lines[0].contains("  web  rel-"), "{out}");
    assert!(lines[1].contains("release.stage") && lines[1].ends_with("smoking"), "{out}");

    // None of it reached a reader of another service, or of jobs.
    s.req(Method::POST, "/services", Some(json!({"name": "api", "replicas": 0, "command": "exec sleep 1000"}))).await;
    assert_eq!(api_only.next().await.event, "service.created");
    s.create(json!({"name": "a-job", "schedule": "@yearly", "command": "true"})).await;
    assert_eq!(jobs.next().await.data["job"], "a-job");
    s.stop().await;
}
