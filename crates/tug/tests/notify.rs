//! Webhooks against a real server and a real receiver: the payloads of each event, and that dead
//! or slow receivers neither delay fires nor go without retries.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{TestServer, count, manual_job, state};
use jiff::Timestamp;
use serde_json::{Value, json};
use tug_core::job::{NotifyOn, Webhook};
use tug_server::embedded::{Embedded, EmbeddedConfig};

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    /// The path after `/hook/`.
    hook: String,
    delivery: String,
    body: Value,
    at: Timestamp,
}

/// A webhook receiver on 127.0.0.1:0. `/hook/{name}` answers 200; `/flaky/{name}` answers 503
/// to the first two attempts of each delivery; `/slow/{name}` answers after 30 s.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    base: String,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver { base: format!("http://{}", listener.local_addr().unwrap()), ..Default::default() };
        let app = Router::new()
            .route("/hook/{name}", post(ok))
            .route("/flaky/{name}", post(flaky))
            .route("/slow/{name}", post(slow))
            .with_state(r.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn record(&self, kind: &str, name: String, headers: &HeaderMap, body: Value) -> usize {
        let delivery = headers.get("x-tug-delivery").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert_eq!(headers.get("x-tug-event").and_then(|v| v.to_str().ok()), body["event"].as_str(), "header and body agree");
        let mut got = self.got.lock().unwrap();
        got.push(Received { hook: format!("{kind}/{name}"), delivery: delivery.clone(), body, at: Timestamp::now() });
        got.iter().filter(|r| r.delivery == delivery && r.hook.starts_with(kind)).count()
    }

    fn got(&self, hook: &str) -> Vec<Received> {
        self.got.lock().unwrap().iter().filter(|r| r.hook == hook).cloned().collect()
    }

    /// Waits until `pred` holds for what `hook` received, or panics after `secs`.
    async fn wait(&self, hook: &str, secs: u64, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.got(hook);
            if pred(&got) {
                return got;
            }
            assert!(tokio::time::Instant::now() < deadline, "{hook} got: {:#?}", got.iter().map(|r| &r.body).collect::<Vec<_>>());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn ok(State(r): State<Receiver>, Path(name): Path<String>, headers: HeaderMap, body: axum::Json<Value>) -> StatusCode {
    r.record("hook", name, &headers, body.0);
    StatusCode::OK
}

async fn flaky(State(r): State<Receiver>, Path(name): Path<String>, headers: HeaderMap, body: axum::Json<Value>) -> StatusCode {
    if r.record("flaky", name, &headers, body.0) <= 2 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK }
}

async fn slow(State(r): State<Receiver>, Path(name): Path<String>, headers: HeaderMap, body: axum::Json<Value>) -> StatusCode {
    r.record("slow", name, &headers, body.0);
    tokio::time::sleep(Duration::from_secs(30)).await;
    StatusCode::OK
}

fn hook(url: String, on: &[NotifyOn]) -> Webhook {
    Webhook { url, on: on.to_vec() }
}

/// A server with these global webhooks and quick delivery settings.
async fn start(dir: &std::path::Path, webhooks: Vec<Webhook>) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = EmbeddedConfig::new(dir);
    config.webhooks = webhooks;
    config.webhook_delivery.timeout = Duration::from_millis(300);
    config.webhook_delivery.backoff = Duration::from_millis(50);
    config.webhook_delivery.max_attempts = 3;
    config.webhook_delivery.shutdown_grace = Duration::from_millis(300);
    let clock = Arc::new(tug_server::clock::SystemClock);
    let server = Embedded::start(config, Some(common::quick_agent()), clock, Some(listener)).await.unwrap();
    TestServer { base: format!("http://{addr}/api/v1"), server: Some(server), http: tug::http() }
}

fn ts(v: &Value) -> Timestamp {
    v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}")).parse().unwrap()
}

fn events(got: &[Received]) -> Vec<&str> {
    got.iter().map(|r| r.body["event"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_success_failure_retry_exhausted_and_missed_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    let all = [NotifyOn::Success, NotifyOn::Failure, NotifyOn::RetriesExhausted, NotifyOn::Missed];
    let mut s = start(dir.path(), vec![hook(rx.url("hook/global"), &all)]).await;

    // Success: the whole (short) log comes along.
    s.create(manual_job("fine", "echo all good")).await;
    let id = s.post("/jobs/fine/run").await.1["id"].as_u64().unwrap();
    let run = s.wait_run(id, 5).await;
    let got = rx.wait("hook/global", 5, |g| !g.is_empty()).await;
    let p = &got[0].body;
    assert_eq!(p["event"], "success");
    assert_eq!(p["job"], "fine");
    assert_eq!(p["run"]["id"], id);
    assert_eq!(p["run"]["state"], "succeeded");
    assert_eq!(p["run"]["exit_code"], 0);
    assert_eq!(p["run"]["attempt"], 1);
    for f in ["scheduled_at", "started_at", "finished_at"] {
        // The store keeps milliseconds; the event carries the scheduler's own instant.
        let diff = ts(&p["run"][f]).duration_since(ts(&run[f])).abs();
        assert!(diff.as_millis() < 1, "{f}: {} vs {}", p["run"][f], run[f]);
    }
    assert_eq!(p["log_tail"], "all good\n");
    assert_eq!(p["log_truncated"], false);
    assert!(ts(&p["sent_at"]) >= ts(&run["finished_at"]));
    assert_eq!(got[0].delivery, format!("{id}-1-success"));

    // Failure after a retry: a job webhook asks for retries too; the global one gets
    // retries_exhausted and failure, each with the last 4 KiB of a longer log.
    let job_hook = json!([{"url": rx.url("hook/job"), "on": ["retry", "retries_exhausted", "failure"]}]);
    s.create(json!({
        "name": "broken", "schedule": "@yearly", "command": "seq 1 3000; echo attempt-$TUG_ATTEMPT-done; exit 3",
        "retries": {"count": 1, "initial_delay": "300ms"}, "webhooks": job_hook,
    }))
    .await;
    let id = s.post("/jobs/broken/run").await.1["id"].as_u64().unwrap();
    let run = s.wait_run(id, 10).await;
    assert_eq!((state(&run), run["attempt"].as_u64()), ("failed", Some(2)));
    let global = rx.wait("hook/global", 5, |g| g.len() >= 3).await;
    let global: Vec<_> = global.into_iter().filter(|r| r.body["job"] == "broken").collect();
    let mut names = events(&global);
    names.sort();
    assert_eq!(names, ["failure", "retries_exhausted"], "the global hook did not ask for retry");
    for r in &global {
        let p = &r.body;
        assert_eq!(p["run"]["state"], "failed");
        assert_eq!(p["run"]["exit_code"], 3);
        assert_eq!(p["run"]["attempt"], 2);
        assert_eq!(p["log_truncated"], true);
        let tail = p["log_tail"].as_str().unwrap();
        assert!(tail.len() <= 4096 && tail.len() > 3000, "tail of {} bytes", tail.len());
        assert!(tail.ends_with("attempt-2-done\n"), "{tail:?}");
    }
    let job = rx.wait("hook/job", 5, |g| g.len() >= 3).await;
    // Each event is delivered on its own, so they may arrive in any order.
    let mut names = events(&job);
    names.sort();
    assert_eq!(names, ["failure", "retries_exhausted", "retry"]);
    let retry = job.iter().find(|r| r.body["event"] == "retry").unwrap();
    assert_eq!(retry.delivery, format!("{id}-2-retry"));
    let retry = &retry.body;
    assert_eq!(retry["run"]["state"], "pending");
    assert_eq!(retry["run"]["attempt"], 2, "a retry event names the attempt that comes next");
    assert!(retry["log_tail"].as_str().unwrap().ends_with("attempt-1-done\n"));

    // Missed: fires that fall in a pause are recorded as skipped misfires.
    s.create(json!({"name": "ticker", "schedule": "* * * * * *", "command": "true", "epsilon": "1s"})).await;
    s.wait_runs("ticker", 5, |r| count(r, "succeeded") >= 1).await;
    assert_eq!(s.post("/jobs/ticker/pause").await.0, 200);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(s.post("/jobs/ticker/resume").await.0, 200);
    let got = rx.wait("hook/global", 5, |g| g.iter().any(|r| r.body["event"] == "missed")).await;
    let missed = got.iter().find(|r| r.body["event"] == "missed").unwrap();
    let p = &missed.body;
    assert_eq!(p["job"], "ticker");
    assert_eq!(p["run"]["state"], "skipped");
    assert!(p["run"]["reason"].as_str().unwrap().contains("missed"), "{p}");
    assert_eq!(p["log_tail"], Value::Null, "a skipped fire has no log");
    let ticker_runs = s.runs("ticker").await;
    let skipped = ticker_runs.iter().find(|r| r["id"] == p["run"]["id"]).expect("the missed run is in the history");
    assert_eq!(skipped["trigger"], "misfire");

    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_slow_webhooks_do_not_delay_fires_and_failures_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    // A port nobody listens on: bind one, then let it go.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/dead", l.local_addr().unwrap())
    };
    let on = [NotifyOn::Success, NotifyOn::Failure];
    let hooks = vec![
        hook(refused, &on),
        hook(rx.url("slow/s"), &on),
        hook(rx.url("flaky/f"), &on),
        hook(rx.url("hook/good"), &on),
    ];
    let mut s = start(dir.path(), hooks).await;
    s.create(json!({"name": "tick", "schedule": "* * * * * *", "command": "true"})).await;
    let runs = s.wait_runs("tick", 8, |r| count(r, "succeeded") >= 4).await;

    // Fires went out on time: each run started well within a second of its instant, and the
    // dispatcher's lateness histogram has every fire under ~200 ms.
    for r in runs.iter().filter(|r| state(r) == "succeeded") {
        let late = ts(&r["started_at"]).duration_since(ts(&r["scheduled_at"]));
        assert!(late.as_millis() < 500, "run {} started {late} late", r["id"]);
    }
    let metrics = s.http.get(format!("{}/metrics", s.base.trim_end_matches("/api/v1"))).send().await.unwrap().text().await.unwrap();
    let sample = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{metrics}"));
        line.rsplit_once(' ').unwrap().1.parse().unwrap()
    };
    let fires = sample("tug_fire_lateness_seconds_count");
    assert!(fires >= 4.0);
    let bucket = metrics
        .lines()
        .filter(|l| l.starts_with("tug_fire_lateness_seconds_bucket"))
        .find(|l| l.contains("le=\"0.2048\""))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .expect("a bucket at 204.8 ms");
    assert_eq!(bucket, fires, "some fires were late:\n{metrics}");

    // The good receiver heard of each run promptly, whatever the others did.
    let good = rx.wait("hook/good", 3, |g| g.len() >= 4).await;
    for r in &good {
        let finished = ts(&r.body["run"]["finished_at"]);
        let lag = r.at.duration_since(finished);
        assert!(lag.as_millis() < 500, "run {} delivered {lag} after it finished", r.body["run"]["id"]);
    }
    // The flaky receiver got each delivery three times (503, 503, 200), with the same id.
    let flaky = rx.wait("flaky/f", 3, |g| g.len() >= 6).await;
    let first = &flaky[0].delivery;
    let same: Vec<_> = flaky.iter().filter(|r| &r.delivery == first).collect();
    assert_eq!(same.len(), 3, "{first}: {same:?}");
    assert!(same[1].at > same[0].at && same[2].at > same[1].at);
    // The slow receiver was tried again after each timeout.
    rx.wait("slow/s", 3, |g| g.iter().filter(|r| &r.delivery == first).count() >= 2).await;

    // Counted: retries happened, the flaky ones got through, the dead and slow ones failed
    // (3 attempts of 300 ms each for the slow one: about a second after its run).
    let value = |m: &str, series: &str| -> f64 {
        m.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit_once(' ')).map_or(0.0, |(_, v)| v.parse().unwrap())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let m = s.http.get(format!("{}/metrics", s.base.trim_end_matches("/api/v1"))).send().await.unwrap().text().await.unwrap();
        let ok = value(&m, "tug_webhook_deliveries_total{result=\"ok\"}");
        let failed = value(&m, "tug_webhook_deliveries_total{result=\"failed\"}");
        // Per run: good + flaky succeed, dead + slow fail; 2 retries each for flaky, dead, slow.
        if ok >= 8.0 && failed >= 8.0 {
            assert!(value(&m, "tug_webhook_retries_total") >= 24.0, "{m}");
            assert_eq!(value(&m, "tug_webhook_deliveries_total{result=\"dropped\"}"), 0.0, "{m}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "deliveries not counted:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = tokio::time::Instant::now();
    s.stop().await;
    assert!(stop.elapsed() < Duration::from_secs(3), "shutdown waited on the slow receiver: {:?}", stop.elapsed());
}

#[tokio::test]
async fn a_bad_global_webhook_url_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.webhooks = vec![hook("ftp://example.com/x".into(), &[NotifyOn::Failure])];
    let clock = Arc::new(tug_server::clock::SystemClock);
    let err = Embedded::start(config, Some(common::quick_agent()), clock, None).await.err().expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("ftp://example.com/x") && msg.contains("http://"), "{msg}");
}

fn event(id: u64, on: NotifyOn, webhooks: Vec<Webhook>) -> tug_server::scheduler::events::RunEvent {
    use tug_core::run::{Run, RunState, Trigger};
    let now = Timestamp::now();
    let run = Run {
        id,
        job: format!("job{id}"),
        scheduled_at: now,
        trigger: Trigger::Schedule,
        state: RunState::Failed,
        attempt: 1,
        created_at: now,
        started_at: Some(now),
        finished_at: Some(now),
        exit_code: Some(1),
        signal: None,
        reason: Some("exit code 1".into()),
        agent: Some("local".into()),
        retry_at: None,
        late_report: None,
    };
    tug_server::scheduler::events::RunEvent { event: on, run, webhooks }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_is_bounded_per_endpoint_and_drops_are_counted() {
    use tug_server::metrics::Metrics;
    use tug_server::notify::{DeliveryConfig, Notifier};

    // Two receivers: limits are per endpoint (scheme, host, port).
    let rx = Receiver::start().await;
    let rx_slow = Receiver::start().await;
    let metrics = Arc::new(Metrics::new());
    let cfg = DeliveryConfig {
        max_pending: 8,
        max_pending_per_endpoint: 2,
        timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_millis(100),
        ..DeliveryConfig::default()
    };
    let slow = vec![hook(rx_slow.url("slow/x"), &[NotifyOn::Failure])];
    let logs = tug_server::logs::RunLogs::default();
    let clock = Arc::new(tug_server::clock::SystemClock);
    let notifier = Notifier::new(slow, cfg, logs, clock, metrics.clone()).unwrap();
    let (tx, events) = tokio::sync::mpsc::channel(100);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(notifier.run(events, async move {
        let _ = stop_rx.await;
    }));

    // Five events for the slow global hook: two go out (and hang), three are dropped. A job's
    // own hook on another endpoint gets every one, promptly: the slow one does not use its budget.
    let good = vec![hook(rx.url("hook/good"), &[NotifyOn::Failure])];
    for id in 1..=5 {
        tx.send(event(id, NotifyOn::Failure, good.clone())).await.unwrap();
        rx.wait("hook/good", 1, |g| g.len() == id as usize).await;
    }
    let got = rx.got("hook/good");
    let mut ids: Vec<_> = got.iter().map(|r| r.body["run"]["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    rx_slow.wait("slow/x", 3, |g| g.len() == 2).await;
    // The counts follow the answers the notifier reads, a moment after the receiver has them.
    let expected = [
        "tug_webhook_deliveries_total{result=\"dropped\"} 3",
        "tug_webhook_deliveries_total{result=\"ok\"} 5",
        "tug_webhook_pending 2",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let text = metrics.encode();
        if expected.iter().all(|e| text.contains(e)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Events that ask for nothing cost nothing.
    tx.send(event(6, NotifyOn::Success, good)).await.unwrap();

    // Shutdown abandons the two hanging deliveries after the grace, and counts them.
    let started = tokio::time::Instant::now();
    stop_tx.send(()).unwrap();
    task.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    let text = metrics.encode();
    assert!(text.contains("tug_webhook_deliveries_total{result=\"dropped\"} 5"), "{text}");
    assert_eq!(rx.got("hook/good").len(), 5);
}
