//! `tug bench launch`: one trivial docker job launched three ways: warm through the in-container
//! executor, warm through docker exec, and a container per run.
// Benchmarks measure real elapsed time and never run under paused tokio time.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use jiff::Timestamp;
use tug_core::JobSpec;

use super::common::percentile;
use crate::cmd::print_json;
use crate::table::{self, Table};

/// Arguments of `tug bench launch`.
#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Runs per measurement for the warm modes (latency at concurrency 1, and again at each of
    /// 1, 2, 4 and 8 concurrent runs for launches/s).
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Runs per measurement through docker exec (dockerd serves a few dozen per second).
    #[arg(long, default_value_t = 200)]
    exec_runs: usize,
    /// Runs per measurement for per-run containers (each costs a container).
    #[arg(long, default_value_t = 40)]
    per_run_runs: usize,
    /// The image (must be present locally and have `true`).
    #[arg(long, env = "TUG_BENCH_IMAGE", default_value = "tugboat-test-busybox:1")]
    image: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}


/// The three ways `tug bench launch` runs its job.
const LAUNCH_MODES: [(&str, &str); 3] =
    [("executor", "warm, in-container executor"), ("exec", "warm, docker exec"), ("per_run", "container per run")];

/// Concurrency levels for launches/s.
const CONCURRENCY: [usize; 4] = [1, 2, 4, 8];

/// What one mode measured.
struct LaunchResult {
    started_ms: Vec<f64>,
    finished_ms: Vec<f64>,
    per_s: Vec<(usize, f64)>,
    containers: u64,
    runs: usize,
}

/// `runs`: per measurement, for the executor, exec and per-run modes.
/// Runs the benchmark.
pub(super) async fn run(a: LaunchArgs) -> anyhow::Result<()> {
    launch([a.runs, a.exec_runs, a.per_run_runs], &a.image, a.json).await
}

async fn launch(runs: [usize; 3], image: &str, json: bool) -> anyhow::Result<()> {
    use tug_agent::runtime::docker::{DockerConfig, DockerRuntime};
    anyhow::ensure!(runs.iter().all(|n| *n > 0), "--runs, --exec-runs and --per-run-runs must be at least 1");
    let state = tempfile::Builder::new().prefix("tugb").tempdir_in("/tmp").context("creating a state dir")?;
    let logs_dir = tempfile::tempdir().context("creating a log dir")?;
    let logs = tug_logs::LogFiles::new(logs_dir.path().join("logs"));
    let mut results = Vec::new();
    for ((mode, label), n) in LAUNCH_MODES.into_iter().zip(runs) {
        let mut config = DockerConfig::new(format!("bench-{mode}-{}", std::process::id()), state.path().join(mode));
        if mode == "executor" {
            anyhow::ensure!(config.dwait.is_some(), "no static dwait found: set TUG_DWAIT or put dwait next to tug (see scripts/test)");
        }
        config.force_exec = mode == "exec";
        // Per-run containers are removed inside the measured run, as a 1:1 system must.
        config.remove_delay = Duration::ZERO;
        let rt = DockerRuntime::connect(config).await.context("the launch bench needs Docker")?;
        if !json {
            eprintln!("{label}: {n} runs, then {n} at each of 1, 2, 4, 8 concurrent ...");
        }
        let r = launch_mode(&rt, &logs, mode, image, n).await;
        rt.remove_all().await;
        results.push((mode, label, r?));
    }
    let ms2 = |v: f64| (v * 100.0).round() / 100.0;
    if json {
        let mut out = serde_json::Map::new();
        for (mode, _, r) in &results {
            let by_c: serde_json::Map<String, serde_json::Value> =
                r.per_s.iter().map(|(c, v)| (c.to_string(), serde_json::json!(v.round()))).collect();
            out.insert(
                mode.to_string(),
                serde_json::json!({
                    "p50_ms": ms2(percentile(&r.started_ms, 0.5)),
                    "p99_ms": ms2(percentile(&r.started_ms, 0.99)),
                    "finished_p50_ms": ms2(percentile(&r.finished_ms, 0.5)),
                    "finished_p99_ms": ms2(percentile(&r.finished_ms, 0.99)),
                    "launches_per_s": r.per_s.iter().map(|(_, v)| *v).fold(0.0, f64::max).round(),
                    "launches_per_s_by_concurrency": by_c,
                    "containers_created": r.containers,
                    "runs": r.runs,
                }),
            );
        }
        return print_json(&serde_json::Value::Object(out));
    }
    let mut header = vec!["MODE", "START P50", "START P99", "DONE P50", "DONE P99"];
    let cols: Vec<String> = CONCURRENCY.iter().map(|c| format!("/S AT {c}")).collect();
    header.extend(cols.iter().map(String::as_str));
    header.extend(["RUNS", "CONTAINERS"]);
    let mut t = Table::new(&header);
    for (_, label, r) in &results {
        let mut row = vec![
            label.to_string(),
            format!("{:.2} ms", percentile(&r.started_ms, 0.5)),
            format!("{:.2} ms", percentile(&r.started_ms, 0.99)),
            format!("{:.2} ms", percentile(&r.finished_ms, 0.5)),
            format!("{:.2} ms", percentile(&r.finished_ms, 0.99)),
        ];
        row.extend(r.per_s.iter().map(|(_, v)| format!("{v:.0}")));
        row.extend([r.runs.to_string(), r.containers.to_string()]);
        t.row(row);
    }
    table::print(&t);
    let best = |r: &LaunchResult| r.per_s.iter().map(|(_, v)| *v).fold(0.0, f64::max);
    let base = &results[0].2;
    for (_, label, r) in &results[1..] {
        println!(
            "executor vs {label}: {:.0}x faster to start (p50), {:.1}x the launches/s",
            percentile(&r.started_ms, 0.5) / percentile(&base.started_ms, 0.5).max(1e-6),
            best(base) / best(r).max(1e-6),
        );
    }
    Ok(())
}

/// Measures one mode: `n` sequential runs for latency, then `n` runs at each concurrency.
async fn launch_mode(
    rt: &tug_agent::runtime::docker::DockerRuntime,
    logs: &tug_logs::LogFiles,
    mode: &'static str,
    image: &str,
    n: usize,
) -> anyhow::Result<LaunchResult> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tug_agent::runtime::{RunContext, Runtime};
    static RUN_ID: AtomicU64 = AtomicU64::new(1);
    let spec = serde_json::json!({
        "name": format!("bench-launch-{mode}"),
        "schedule": "R/2026-01-01T00:00:00Z/PT1S",
        "command": ["true"],
        "runtime": "docker",
        "docker": { "image": image, "mode": if mode == "per_run" { "per-run" } else { "warm" }, "pull": "never" },
    });
    let job = JobSpec::from_json(&spec.to_string()).context("bench job spec")?;
    let task = tug_core::protocol::Task::of(&job);
    // One attempt: (fire → started, fire → finished), in ms.
    let one = move |rt: tug_agent::runtime::docker::DockerRuntime, logs: tug_logs::LogFiles, task: tug_core::protocol::Task| async move {
        let launch = tug_core::protocol::Launch {
            run_id: RUN_ID.fetch_add(1, Ordering::Relaxed),
            job: format!("bench-launch-{mode}"),
            scheduled_at: Timestamp::now(),
            attempt: 1,
            epoch: 1,
            task,
            health: None,
        };
        let (_kill_tx, kill) = tokio::sync::watch::channel(None);
        let (started, started_rx) = tokio::sync::oneshot::channel();
        let ctx = RunContext { launch, logs, log_limit: 1 << 16, kill, grace: Duration::from_secs(1), started };
        let fire = StdInstant::now();
        let run = rt.run(ctx);
        tokio::pin!(run);
        let mut started_rx = Some(started_rx);
        let mut started_at = None;
        let outcome = loop {
            tokio::select! {
                r = async { started_rx.as_mut().expect("guarded").await }, if started_rx.is_some() => {
                    started_rx = None;
                    if r.is_ok() { started_at = Some(fire.elapsed()); }
                }
                o = &mut run => break o,
            }
        };
        let done = fire.elapsed();
        anyhow::ensure!(outcome.state == tug_core::run::RunState::Succeeded, "a bench run failed: {:?}", outcome.reason);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok::<_, anyhow::Error>((ms(started_at.unwrap_or(done)), ms(done)))
    };
    // Warm-up (creates the warm container; not measured).
    one(rt.clone(), logs.clone(), task.clone()).await?;
    let mut started_ms = Vec::with_capacity(n);
    let mut finished_ms = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, f) = one(rt.clone(), logs.clone(), task.clone()).await?;
        started_ms.push(s);
        finished_ms.push(f);
    }
    started_ms.sort_by(f64::total_cmp);
    finished_ms.sort_by(f64::total_cmp);
    let mut per_s = Vec::new();
    for c in CONCURRENCY {
        let next = Arc::new(AtomicU64::new(0));
        let t0 = StdInstant::now();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..c {
            let (rt, logs, task, next) = (rt.clone(), logs.clone(), task.clone(), next.clone());
            workers.spawn(async move {
                while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                    one(rt.clone(), logs.clone(), task.clone()).await?;
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(r) = workers.join_next().await {
            r.context("bench worker")??;
        }
        per_s.push((c, n as f64 / t0.elapsed().as_secs_f64()));
    }
    Ok(LaunchResult { started_ms, finished_ms, per_s, containers: rt.containers_created(), runs: 1 + n * (1 + CONCURRENCY.len()) })
}
