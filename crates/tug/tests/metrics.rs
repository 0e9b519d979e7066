//! `/metrics` on a real server, parsed from the text format and checked against runs we know of.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, count, manual_job, state};
use serde_json::json;
use tug_server::embedded::{Embedded, EmbeddedConfig};
use tug_server::prom::Exposition;

/// The one sample named `name` whose labels include `labels`; panics when there is none or
/// several.
fn value(m: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = m.find(name, labels).collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: expected one sample, found {found:?}");
    found[0].value
}

async fn scrape(s: &TestServer) -> Exposition {
    let root = s.base.trim_end_matches("/api/v1");
    let resp = s.http.get(format!("{root}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    Exposition::parse(&resp.text().await.unwrap(), true).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_known_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;

    let before = scrape(&s).await;
    assert_eq!(value(&before, "tug_fires_total", &[]), 0.0);
    assert_eq!(value(&before, "tug_agents", &[("state", "up")]), 1.0);
    assert_eq!(value(&before, "tug_warm_containers", &[]), 0.0);
    for result in ["ok", "failed", "dropped"] {
        assert_eq!(value(&before, "tug_webhook_deliveries_total", &[("result", result)]), 0.0);
    }
    assert!(!before.samples.iter().any(|s| s.name.starts_with("tug_job_")), "per-job metrics are opt-in");

    s.create(manual_job("good", "echo fine")).await;
    s.create(manual_job("bad", "exit 4")).await;
    s.create(json!({"name": "tick", "schedule": "* * * * * *", "command": "true"})).await;
    for job in ["good", "good", "good", "bad", "bad"] {
        let (st, run) = s.post(&format!("/jobs/{job}/run")).await;
        assert_eq!(st, 201, "{run}");
        s.wait_run(run["id"].as_u64().unwrap(), 10).await;
    }
    s.wait_runs("tick", 8, |r| count(r, "succeeded") >= 2).await;
    // Stop the schedule, then let what it started finish, so the numbers hold still.
    assert_eq!(s.post("/jobs/tick/pause").await.0, 200);
    let ticks = s.wait_runs("tick", 5, |r| r.iter().all(|r| !["pending", "starting", "running"].contains(&state(r)))).await;
    // A 404 from the fallback and a 404 from a route, to see both labelled.
    assert_eq!(s.req(reqwest::Method::GET, "/no/such/thing", None).await.0, 404);
    assert_eq!(s.req(reqwest::Method::GET, "/jobs/nope", None).await.0, 404);

    let m = scrape(&s).await;
    let tick_ok = count(&ticks, "succeeded") as f64;
    assert_eq!(value(&m, "tug_fires_total", &[]), ticks.len() as f64, "one fire per scheduled run");
    assert_eq!(value(&m, "tug_runs_finished_total", &[("state", "succeeded")]), 3.0 + tick_ok);
    assert_eq!(value(&m, "tug_runs_finished_total", &[("state", "failed")]), 2.0);
    assert_eq!(value(&m, "tug_run_duration_seconds_count", &[]), 5.0 + ticks.len() as f64);
    assert_eq!(value(&m, "tug_runs_in_flight", &[]), 0.0);
    assert_eq!(value(&m, "tug_jobs", &[]), 3.0);
    assert_eq!(m.sum("tug_misfires_total", &[]), 0.0);
    // Every dispatched scheduled fire was measured; the histogram is cumulative and consistent.
    let late_count = value(&m, "tug_fire_lateness_seconds_count", &[]);
    assert_eq!(late_count, ticks.len() as f64);
    assert_eq!(value(&m, "tug_fire_lateness_seconds_bucket", &[("le", "+Inf")]), late_count);
    let buckets: Vec<f64> = m.find("tug_fire_lateness_seconds_bucket", &[]).map(|s| s.value).collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "buckets not cumulative: {buckets:?}");
    assert_eq!(m.types["tug_fire_lateness_seconds"], "histogram");
    assert_eq!(m.types["tug_fires"], "counter");

    // API latency: by route pattern, not path, with method and status class.
    let api = "tug_api_request_duration_seconds_count";
    assert_eq!(value(&m, api, &[("route", "/api/v1/jobs"), ("method", "POST"), ("status", "2xx")]), 3.0);
    assert_eq!(value(&m, api, &[("route", "/api/v1/jobs/{name}/run"), ("method", "POST"), ("status", "2xx")]), 5.0);
    assert_eq!(value(&m, api, &[("route", "/api/v1/jobs/{name}"), ("method", "GET"), ("status", "4xx")]), 1.0);
    assert_eq!(value(&m, api, &[("route", "unmatched"), ("method", "GET"), ("status", "4xx")]), 1.0);
    assert!(value(&m, api, &[("route", "/metrics"), ("method", "GET"), ("status", "2xx")]) >= 1.0);
    assert!(value(&m, api, &[("route", "/api/v1/jobs/{name}/runs"), ("method", "GET"), ("status", "2xx")]) >= 1.0);
    assert!(
        !m.samples.iter().any(|s| s.labels.get("route").is_some_and(|r| r.contains("good") || r.contains("nope"))),
        "a job name leaked into a route label"
    );
    dashboard_queries_known_metrics(&m);
    s.stop().await;
}

/// deploy/grafana/tugboat.json is a Grafana dashboard on a Prometheus data source variable, and
/// every `tug_*` series its queries use is one the server exports.
fn dashboard_queries_known_metrics(m: &Exposition) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/grafana/tugboat.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let vars = d["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"));
    let exported: std::collections::BTreeSet<&str> = m.samples.iter().map(|s| s.name.as_str()).collect();
    let panels = d["panels"].as_array().unwrap();
    let mut queried = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("tug_") {
                let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(exported.contains(name.as_str()), "panel {:?} queries {name}, which /metrics does not export", p["title"]);
                queried += 1;
                rest = &rest[i + name.len()..];
            }
        }
    }
    assert!(queried >= 20, "the dashboard queries only {queried} series");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_job_metrics_are_opt_in_and_capped() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.per_job_metrics = true;
    config.per_job_metrics_limit = 2;
    let server = Embedded::start(config, Some(common::quick_agent()), Arc::new(tug_server::clock::SystemClock), Some(listener))
        .await
        .unwrap();
    let mut s = TestServer { base: format!("http://{addr}/api/v1"), server: Some(server), http: tug::http() };

    for (job, cmd) in [("a", "true"), ("b", "exit 1"), ("c", "true"), ("d", "true")] {
        s.create(manual_job(job, cmd)).await;
        let id = s.post(&format!("/jobs/{job}/run")).await.1["id"].as_u64().unwrap();
        s.wait_run(id, 10).await;
    }
    // The counter reads events from a queue; give it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = scrape(&s).await;
        if m.sum("tug_job_runs_finished_total", &[("job", "_other")]) >= 2.0 || tokio::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let name = "tug_job_runs_finished_total";
    assert_eq!(value(&m, name, &[("job", "a"), ("state", "succeeded")]), 1.0);
    assert_eq!(value(&m, name, &[("job", "b"), ("state", "failed")]), 1.0);
    assert_eq!(value(&m, name, &[("job", "_other"), ("state", "succeeded")]), 2.0);
    assert_eq!(m.find(name, &[("job", "c")]).count(), 0);
    s.stop().await;
}
