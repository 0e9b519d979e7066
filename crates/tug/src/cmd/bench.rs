//! `tug bench`: measurements printed as tables (or `--json`), never run as CI tests.
// Benchmarks measure real elapsed time and never run under paused tokio time.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use jiff::Timestamp;
use tug_agent::runtime::noop::NoopRuntime;
use tug_core::JobSpec;
use tug_server::clock::SystemClock;
use tug_server::embedded::{Embedded, EmbeddedConfig};
use tug_store::sqlite::SqliteStore;
use tug_store::Store;

use super::print_json;
use crate::table::{self, Table};

/// `tug bench` subcommands.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Fire N jobs every second through the real scheduler and SQLite store with a no-op runtime.
    #[command(after_help = "Examples:\n  tug bench fire --jobs 10000 --seconds 10\n  tug bench fire --jobs 100000 --seconds 10 --burst --json\n\nBy default fire instants are spread evenly over each second (steady load); --burst puts every\njob on the same instant, the top-of-the-minute herd.")]
    Fire(FireArgs),
    /// Launch one trivial docker job three ways: warm through the in-container executor, warm
    /// through docker exec, and a container per run.
    #[command(after_help = "Examples:\n  tug bench launch --runs 1000\n  tug bench launch --runs 10000 --exec-runs 100 --per-run-runs 20 --json\n\nNeeds a Docker daemon, the static dwait (TUG_DWAIT or next to tug) and a local image with\n`true` (default tugboat-test-busybox:1, built by scripts/test). \"fire\" is the moment the launch is\nhanded to the runtime; \"started\" when the process runs; \"finished\" when its outcome is known.")]
    Launch(LaunchArgs),
}

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

/// Arguments of `tug bench fire`.
#[derive(clap::Args)]
pub struct FireArgs {
    /// Number of jobs, each firing every second.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Seconds to measure (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// All jobs fire on the same instant instead of spread over the second.
    #[arg(long)]
    burst: bool,
    /// Where to put the database (a fresh temporary directory when absent).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Fire(a) => fire(a).await,
        BenchCommand::Launch(a) => launch([a.runs, a.exec_runs, a.per_run_runs], &a.image, a.json).await,
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

async fn fire(a: FireArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.jobs > 0 && a.seconds > 0, "--jobs and --seconds must be at least 1");
    let tmp = tempfile::tempdir().context("creating a temporary data dir")?;
    let dir = a.data_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let progress = !a.json;
    if progress {
        eprintln!("loading {} jobs into {} ...", a.jobs, dir.display());
    }
    let t0 = StdInstant::now();
    {
        let store = SqliteStore::open(&dir.join("tug.db"))?;
        let specs: Vec<JobSpec> = (0..a.jobs).map(|i| bench_job(i, a.jobs, a.burst)).collect();
        store.create_jobs(&specs, Timestamp::now()).await?;
    }
    let load_s = t0.elapsed().as_secs_f64();
    let rss0 = rss_bytes();
    let t1 = StdInstant::now();
    let mut config = EmbeddedConfig::new(&dir);
    config.keep_runs = 1_000_000;
    let server = Embedded::start(config, Arc::new(NoopRuntime), Arc::new(SystemClock), None).await?;
    let start_s = t1.elapsed().as_secs_f64();
    let bytes_per_job = rss_bytes().saturating_sub(rss0) / a.jobs as u64;
    if progress {
        eprintln!("stored in {load_s:.1}s, scheduler loaded in {start_s:.1}s; warming up 2s, then measuring {}s ...", a.seconds);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.scheduler.take_stats().await?;
    let t2 = StdInstant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let stats = server.scheduler.take_stats().await?;
    let elapsed = t2.elapsed().as_secs_f64();
    server.shutdown().await;
    let fires_per_s = stats.fires as f64 / elapsed;
    let ms = |us: u64| us as f64 / 1000.0;
    let result = serde_json::json!({
        "jobs": a.jobs,
        "mode": if a.burst { "burst" } else { "steady" },
        "seconds": a.seconds,
        "fires_per_s": fires_per_s.round(),
        "expected_fires_per_s": a.jobs,
        "p50_ms": ms(stats.lateness_p50_us),
        "p99_ms": ms(stats.lateness_p99_us),
        "max_ms": ms(stats.lateness_max_us),
        "bytes_per_job": bytes_per_job,
        "fire_commits_per_s": (stats.fire_commits as f64 / elapsed).round(),
        "misfires": stats.misfires,
        "dispatched": stats.dispatched,
        "scheduler_load_s": start_s,
    });
    if a.json {
        return print_json(&result);
    }
    let mut t = Table::new(&["METRIC", "VALUE"]);
    let rows = [
        ("jobs", format!("{} ({})", a.jobs, result["mode"].as_str().unwrap_or("?"))),
        ("durable fires/s", format!("{fires_per_s:.0} (load offers {})", a.jobs)),
        ("lateness p50", format!("{:.2} ms", ms(stats.lateness_p50_us))),
        ("lateness p99", format!("{:.2} ms", ms(stats.lateness_p99_us))),
        ("lateness max", format!("{:.2} ms", ms(stats.lateness_max_us))),
        ("memory per job", format!("{bytes_per_job} B")),
        ("fire transactions/s", format!("{:.0}", stats.fire_commits as f64 / elapsed)),
        ("misfires", stats.misfires.to_string()),
        ("scheduler start-up", format!("{start_s:.2} s")),
    ];
    for (k, v) in rows {
        t.row(vec![k.into(), v]);
    }
    table::print(&t);
    Ok(())
}

/// Job `i` of `n`: fires every second, at an offset of `i/n` of a second unless `burst`.
fn bench_job(i: usize, n: usize, burst: bool) -> JobSpec {
    let offset_ms = if burst { 0 } else { i * 1000 / n };
    let spec = serde_json::json!({
        "name": format!("bench-{i:07}"),
        "schedule": format!("R/2026-01-01T00:00:00.{offset_ms:03}Z/PT1S"),
        "command": "true",
        "concurrency": "allow",
    });
    JobSpec::from_json(&spec.to_string()).expect("bench job spec is valid")
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

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `runs`: per measurement, for the executor, exec and per-run modes.
async fn launch(runs: [usize; 3], image: &str, json: bool) -> anyhow::Result<()> {
    use tug_agent::runtime::docker::{DockerConfig, DockerRuntime};
    anyhow::ensure!(runs.iter().all(|n| *n > 0), "--runs, --exec-runs and --per-run-runs must be at least 1");
    let state = tempfile::Builder::new().prefix("tugb").tempdir_in("/tmp").context("creating a state dir")?;
    let logs_dir = tempfile::tempdir().context("creating a log dir")?;
    let logs = tug_store::logs::LogFiles::new(logs_dir.path().join("logs"));
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
    logs: &tug_store::logs::LogFiles,
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
    let one = move |rt: tug_agent::runtime::docker::DockerRuntime, logs: tug_store::logs::LogFiles, task: tug_core::protocol::Task| async move {
        let launch = tug_core::protocol::Launch {
            run_id: RUN_ID.fetch_add(1, Ordering::Relaxed),
            job: format!("bench-launch-{mode}"),
            scheduled_at: Timestamp::now(),
            attempt: 1,
            epoch: 1,
            task,
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
