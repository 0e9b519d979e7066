//! What the server's tests share: a real server (SQLite in a temp dir, the process runtime, the
//! API on 127.0.0.1:0), and servers for paused tokio time (an in-memory store, a clock that
//! follows tokio's).

#![allow(dead_code, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tug_agent::runtime::process::ProcessRuntime;
use tug_agent::runtime::SharedRuntime;
use tug_agent::AgentConfig;
use tug_server::embedded::LocalAgent;
use tug_server::clock::{SharedClock, TokioClock};
use tug_server::embedded::{Embedded, EmbeddedConfig};
use tug_store::Store;

/// Where paused-time tests start their clocks.
pub const START: &str = "2026-06-01T00:00:00Z";

/// A clock that follows tokio's (paused) time, reading `at` now.
pub fn clock_at(at: &str) -> SharedClock {
    Arc::new(TokioClock::starting_at(at.parse().expect("a timestamp")))
}

/// A server for paused time: on `store` (an in-memory one: SQLite's thread would look idle to
/// tokio, which would jump the clock), no API, its local agent running on `runtime`.
pub async fn paused_server(store: Arc<dyn Store>, dir: &std::path::Path, runtime: SharedRuntime, clock: SharedClock) -> Embedded {
    Embedded::start_with_store(EmbeddedConfig::new(dir), store, Some(tug::local::local_agent(AgentConfig::default(), runtime)), clock, None).await.unwrap()
}

/// Like [`paused_server`], with its local agent drained: runs go to the agents the test adds.
pub async fn paused_server_for_agents(store: Arc<dyn Store>, dir: &std::path::Path, clock: SharedClock) -> Embedded {
    let server = paused_server(store, dir, Arc::new(tug_agent::runtime::noop::NoopRuntime), clock).await;
    server.scheduler.drain("local", true).await.unwrap();
    server
}

/// The local agent on the process runtime, stopping runs with a short grace.
pub fn quick_agent() -> LocalAgent {
    let config = AgentConfig { grace: Duration::from_millis(500), ..AgentConfig::default() };
    tug::local::local_agent(config, Arc::new(ProcessRuntime::new()))
}

pub struct TestServer {
    pub base: String,
    pub server: Option<Embedded>,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start(dir: &std::path::Path) -> TestServer {
        Self::start_with_clock(dir, Arc::new(tug_server::clock::SystemClock)).await
    }

    pub async fn start_with_clock(dir: &std::path::Path, clock: SharedClock) -> TestServer {
        Self::start_with(dir, clock, |_| {}).await
    }

    /// A server whose settings `tweak` adjusts first.
    pub async fn start_with(dir: &std::path::Path, clock: SharedClock, tweak: impl FnOnce(&mut EmbeddedConfig)) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = EmbeddedConfig::new(dir);
        tweak(&mut config);
        let server = Embedded::start(config, Some(quick_agent()), clock, Some(listener)).await.unwrap();
        TestServer { base: format!("http://{addr}/api/v1"), server: Some(server), http: tug::http() }
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// Sends a request; returns the status and the JSON body (Null when empty).
    pub async fn req(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, v)
    }

    pub async fn get(&self, path: &str) -> Value {
        let (s, v) = self.req(reqwest::Method::GET, path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        self.req(reqwest::Method::POST, path, None).await
    }

    pub async fn create(&self, job: Value) -> Value {
        let (s, v) = self.req(reqwest::Method::POST, "/jobs", Some(job.clone())).await;
        assert_eq!(s, 201, "create {job}: {v}");
        v
    }

    pub async fn runs(&self, job: &str) -> Vec<Value> {
        self.get(&format!("/jobs/{job}/runs?limit=1000")).await["items"].as_array().unwrap().clone()
    }

    pub async fn log(&self, run: u64) -> String {
        self.http.get(format!("{}/runs/{run}/log", self.base)).send().await.unwrap().text().await.unwrap()
    }

    /// Polls until `pred` holds for the job's runs (newest first), or panics after `secs`.
    pub async fn wait_runs(&self, job: &str, secs: u64, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let runs = self.runs(job).await;
            if pred(&runs) {
                return runs;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting on runs of {job}: {}", serde_json::to_string_pretty(&runs).unwrap());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for run `id` to reach a final state and returns it.
    pub async fn wait_run(&self, id: u64, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let run = self.get(&format!("/runs/{id}")).await;
            let st = run["state"].as_str().unwrap();
            if !["pending", "starting", "running"].contains(&st) {
                return run;
            }
            assert!(tokio::time::Instant::now() < deadline, "run {id} did not finish: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn state(r: &Value) -> &str {
    r["state"].as_str().unwrap()
}

pub fn count(runs: &[Value], st: &str) -> usize {
    runs.iter().filter(|r| state(r) == st).count()
}

/// A job that only runs when asked.
pub fn manual_job(name: &str, command: &str) -> Value {
    json!({ "name": name, "schedule": "@yearly", "command": command })
}

/// Sends a request and checks that it is refused with `status`, `code` and a message containing
/// `needle`.
pub async fn expect(s: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>, status: u16, code: &str, needle: &str) {
    let (st, v) = s.req(method, path, body).await;
    assert_eq!(st, status, "{path}: {v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "message {msg:?} should contain {needle:?}");
}

/// Waits until `GET /services/{name}` satisfies `pred`; returns it.
pub async fn wait_service(s: &TestServer, name: &str, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let v = s.get(&format!("/services/{name}")).await;
        if pred(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "service {name}: {what} within {secs}s; it is now {}", v["status"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
