//! Restarts: nothing is launched twice, and the misfire policy covers the downtime.
//!
//! The clock is a `TokioClock` started at a chosen wall time, so "an hour of downtime" is a
//! second boot whose clock starts an hour later, with no waiting.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use common::*;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tug_server::clock::TokioClock;

fn keys(runs: &[serde_json::Value]) -> Vec<String> {
    runs.iter().map(|r| r["scheduled_at"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_launches_no_key_twice_and_applies_misfire_policies() {
    let dir = tempfile::tempdir().unwrap();
    let t0: Timestamp = "2026-06-01T12:00:00.5Z".parse().unwrap();
    let mut s = TestServer::start_with_clock(dir.path(), Arc::new(TokioClock::starting_at(t0))).await;
    for (name, policy) in [("skipper", "skip"), ("once", "run_once"), ("all", "run_all")] {
        s.create(json!({"name": name, "schedule": "*/2 * * * * *", "command": "true", "misfire": policy, "epsilon": "1s"})).await;
    }
    for name in ["skipper", "once", "all"] {
        s.wait_runs(name, 10, |r| count(r, "succeeded") >= 2).await;
    }
    s.stop().await;

    // Down for a minute: about 30 fires of each job are missed.
    let t1 = t0.checked_add(SignedDuration::from_secs(61)).unwrap();
    let mut s = TestServer::start_with_clock(dir.path(), Arc::new(TokioClock::starting_at(t1))).await;
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    s.stop().await;

    let mut s = TestServer::start_with_clock(dir.path(), Arc::new(TokioClock::starting_at(t1))).await;
    for name in ["skipper", "once", "all"] {
        let runs = s.runs(name).await;
        let k = keys(&runs);
        let unique: HashSet<_> = k.iter().collect();
        assert_eq!(unique.len(), k.len(), "{name}: a run key appears twice: {k:?}");
        let misfire_runs: Vec<_> = runs.iter().filter(|r| r["trigger"] == "misfire").collect();
        let ran = misfire_runs.iter().filter(|r| state(r) != "skipped").count();
        let skipped = misfire_runs.iter().filter(|r| state(r) == "skipped").count();
        match name {
            "skipper" => assert_eq!((ran, skipped), (0, 10), "{name}: {runs:#?}"),
            "once" => assert_eq!((ran, skipped), (1, 10), "{name}"),
            "all" => assert!((27..=30).contains(&ran) && skipped == 0, "{name}: ran {ran} skipped {skipped}"),
            _ => unreachable!(),
        }
        if name == "skipper" {
            let first = runs.iter().rfind(|r| state(r) == "skipped").unwrap();
            assert!(first["reason"].as_str().unwrap().contains("earlier missed fires not recorded"), "{first}");
        }
        // After the gap the schedule continues on time.
        assert!(runs.iter().any(|r| r["trigger"] == "schedule" && r["scheduled_at"].as_str().unwrap() > "2026-06-01T12:01"));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_active_at_shutdown_is_recorded_and_pending_retries_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(manual_job("sleepy", "sleep 30")).await;
    let id = s.post("/jobs/sleepy/run").await.1["id"].as_u64().unwrap();
    s.wait_runs("sleepy", 5, |r| r.first().is_some_and(|r| state(r) == "running")).await;
    s.stop().await; // graceful: the agent stops the run and the scheduler records it
    let mut s = TestServer::start(dir.path()).await;
    let run = s.get(&format!("/runs/{id}")).await;
    assert_eq!(run["state"], "killed", "{run}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_then_resume_applies_the_misfire_policy_to_the_pause() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({"name": "p", "schedule": "* * * * * *", "command": "true", "misfire": "run_once", "epsilon": "0s"})).await;
    s.wait_runs("p", 5, |r| count(r, "succeeded") >= 1).await;
    let (st, v) = s.post("/jobs/p/pause").await;
    assert_eq!(st, 200);
    assert_eq!(v["spec"]["paused"], true);
    assert!(v["next_fire"].is_null());
    let before = s.runs("p").await.len();
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    assert_eq!(s.runs("p").await.len(), before, "a paused job must not fire");
    s.post("/jobs/p/resume").await;
    // Only runs after the pause count: on a busy machine a fire before it may be late too.
    let runs = s.wait_runs("p", 5, |r| r[..r.len() - before].iter().any(|r| r["trigger"] == "misfire" && state(r) != "skipped")).await;
    let after = &runs[..runs.len() - before];
    assert!(after.iter().any(|r| r["trigger"] == "misfire" && state(r) == "skipped"), "{runs:#?}");
    s.stop().await;
}
