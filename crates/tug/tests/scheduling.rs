//! End-to-end scheduling through the HTTP API with real processes and SQLite.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_second_job_runs_repeatedly_with_output_in_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({"name": "tick", "schedule": "* * * * * *", "command": "echo tick-$TUG_RUN_ID"})).await;
    let runs = s.wait_runs("tick", 8, |r| count(r, "succeeded") >= 3).await;
    let ok: Vec<_> = runs.iter().filter(|r| state(r) == "succeeded").collect();
    for r in &ok {
        let id = r["id"].as_u64().unwrap();
        assert_eq!(s.log(id).await.trim(), format!("tick-{id}"));
        assert_eq!(r["trigger"], "schedule");
        assert_eq!(r["exit_code"], 0);
    }
    // Fires are one second apart on whole seconds.
    let mut at: Vec<jiff::Timestamp> = ok.iter().map(|r| r["scheduled_at"].as_str().unwrap().parse().unwrap()).collect();
    at.sort();
    for w in at.windows(2) {
        assert_eq!(w[1].as_millisecond() % 1000, 0);
        assert!(w[1] > w[0]);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_runs_are_retried_with_backoff_and_attempts_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({
        "name": "flaky", "schedule": "@yearly", "command": "echo try-$TUG_ATTEMPT; exit 3",
        "retries": {"count": 2, "initial_delay": "100ms", "max_delay": "1s"}
    }))
    .await;
    let (st, run) = s.post("/jobs/flaky/run").await;
    assert_eq!(st, 201, "{run}");
    let id = run["id"].as_u64().unwrap();
    let done = s.wait_run(id, 10).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["attempt"], 3);
    assert_eq!(done["exit_code"], 3);
    let attempts = done["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts.iter().all(|a| a["state"] == "failed"));
    let log = s.log(id).await;
    for n in 1..=3 {
        assert!(log.contains(&format!("try-{n}")), "{log}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_succeeds_on_a_later_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let marker = dir.path().join("second");
    let cmd = format!("if [ -e {m} ]; then echo ok; else touch {m}; exit 1; fi", m = marker.display());
    s.create(json!({"name": "second", "schedule": "@yearly", "command": cmd, "retries": {"count": 3, "initial_delay": "50ms"}})).await;
    let id = s.post("/jobs/second/run").await.1["id"].as_u64().unwrap();
    let done = s.wait_run(id, 10).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["attempt"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({"name": "slow", "schedule": "@yearly", "command": "sleep 30", "timeout": "300ms"})).await;
    let id = s.post("/jobs/slow/run").await.1["id"].as_u64().unwrap();
    let done = s.wait_run(id, 10).await;
    assert_eq!(done["state"], "timed_out", "{done}");
    assert!(done["reason"].as_str().unwrap().contains("timed out"), "{done}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_stops_a_running_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(manual_job("long", "echo started; sleep 30")).await;
    let id = s.post("/jobs/long/run").await.1["id"].as_u64().unwrap();
    s.wait_runs("long", 5, |r| r.first().is_some_and(|r| state(r) == "running")).await;
    let (st, _) = s.post(&format!("/runs/{id}/kill")).await;
    assert_eq!(st, 202);
    let done = s.wait_run(id, 5).await;
    assert_eq!(done["state"], "killed", "{done}");
    // Killing it again says it already finished.
    let (st, body) = s.post(&format!("/runs/{id}/kill")).await;
    assert_eq!(st, 409);
    assert!(body["error"]["message"].as_str().unwrap().contains("already finished"), "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbid_skips_fires_while_a_run_is_active() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({"name": "busy", "schedule": "* * * * * *", "command": "sleep 2.5", "concurrency": "forbid"})).await;
    let runs = s.wait_runs("busy", 10, |r| count(r, "skipped") >= 2 && count(r, "succeeded") >= 1).await;
    let skipped = runs.iter().find(|r| state(r) == "skipped").unwrap();
    assert!(skipped["reason"].as_str().unwrap().contains("concurrency: forbid"), "{skipped}");
    // Never two at once: at most one run is active at any time.
    assert!(runs.iter().filter(|r| ["starting", "running"].contains(&state(r))).count() <= 1);
    // A manual run is refused while one is active, with what to do.
    s.wait_runs("busy", 5, |r| r.iter().any(|r| state(r) == "running")).await;
    let (st, body) = s.post("/jobs/busy/run").await;
    assert_eq!(st, 409, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("kill that run first"), "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_kills_the_active_run_for_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({"name": "fresh", "schedule": "* * * * * *", "command": "sleep 30", "concurrency": "replace"})).await;
    let runs = s.wait_runs("fresh", 10, |r| count(r, "killed") >= 2).await;
    assert!(runs.iter().filter(|r| ["starting", "running"].contains(&state(r))).count() <= 1);
    let killed = runs.iter().find(|r| state(r) == "killed").unwrap();
    assert!(killed["reason"].as_str().unwrap().contains("replaced"), "{killed}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependent_job_runs_after_all_parents_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(manual_job("extract", "echo e")).await;
    s.create(manual_job("fetch", "echo f")).await;
    s.create(json!({"name": "load", "parents": ["extract", "fetch"], "command": "echo loaded"})).await;
    s.post("/jobs/extract/run").await;
    s.wait_runs("extract", 5, |r| count(r, "succeeded") == 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(s.runs("load").await.is_empty(), "load must wait for fetch too");
    s.post("/jobs/fetch/run").await;
    let runs = s.wait_runs("load", 5, |r| count(r, "succeeded") == 1).await;
    assert_eq!(runs[0]["trigger"], "dependency");
    assert_eq!(s.log(runs[0]["id"].as_u64().unwrap()).await.trim(), "loaded");
    // Another success of one parent alone does not fire it again.
    s.post("/jobs/fetch/run").await;
    s.wait_runs("fetch", 5, |r| count(r, "succeeded") == 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(s.runs("load").await.len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_and_missing_binary_fail_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({"name": "nobin", "schedule": "@yearly", "command": ["/no/such/binary", "x"]})).await;
    let id = s.post("/jobs/nobin/run").await.1["id"].as_u64().unwrap();
    let done = s.wait_run(id, 5).await;
    assert_eq!(done["state"], "failed");
    assert!(done["reason"].as_str().unwrap().contains("cannot start"), "{done}");
    s.stop().await;
}
