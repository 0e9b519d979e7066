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
    /// Start a real `tug server` and N `tug agent run --noop` processes on 127.0.0.1, load J
    /// jobs firing every second through the API, and measure launches end to end.
    #[command(after_help = "Examples:\n  tug bench agents\n  tug bench agents --agents 50 --jobs 5000 --seconds 20 --json\n\nEvery job is `* * * * * *` (all on the same instant of each second) and asks for 0.01 cpus, so\nall fit. No-op agents answer every launch at once: what is measured is the server, the store,\nthe agent protocol and the processes' scheduling on this machine.")]
    Agents(AgentsArgs),
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
        BenchCommand::Agents(a) => agents(a).await,
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

/// Arguments of `tug bench agents`.
#[derive(clap::Args)]
pub struct AgentsArgs {
    /// Number of `tug agent run --noop` processes.
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Number of jobs, each firing every second.
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    /// Seconds to measure, after the warm-up.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of warm-up once every job exists, not measured.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// The jobs' placement strategy: spread (runs over every agent) or binpack (the fullest
    /// agents first).
    #[arg(long, default_value = "spread", value_parser = ["spread", "binpack"])]
    placement: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Child processes, killed (and reaped) on drop, so an error or a panic leaves none behind.
struct Children {
    procs: Vec<std::process::Child>,
    logs: std::path::PathBuf,
}

impl Children {
    /// Starts `tug args` with its output in `logs/<log>.log`.
    fn spawn(&mut self, args: &[String], log: &str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("finding the tug binary")?;
        let path = self.logs.join(format!("{log}.log"));
        let out = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let child = std::process::Command::new(&exe)
            .args(args)
            .env_remove("TUG_JOIN_TOKEN")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
        self.procs.push(child);
        Ok(())
    }

    /// The last lines of a child's log, for error messages.
    fn tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.logs.join(format!("{log}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        // SIGKILL: everything they hold is in the benchmark's temporary directory.
        for c in &mut self.procs {
            let _ = c.kill();
        }
        for c in &mut self.procs {
            let _ = c.wait();
        }
    }
}

/// A counter or histogram sample per `name{labels}` from a Prometheus text page.
fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

/// The `q` quantile of the fire lateness histogram between two samples, in ms, interpolated
/// linearly inside its bucket (buckets double, so this is within a factor of 2).
fn histogram_quantile_ms(before: &std::collections::HashMap<String, f64>, after: &std::collections::HashMap<String, f64>, q: f64) -> Option<f64> {
    const PREFIX: &str = "tug_fire_lateness_seconds_bucket{le=\"";
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(PREFIX)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, cum) in buckets {
        if cum >= target {
            if le.is_infinite() {
                return Some(lo * 1000.0);
            }
            let share = if cum > below { (target - below) / (cum - below) } else { 1.0 };
            return Some((lo + (le - lo) * share) * 1000.0);
        }
        (lo, below) = (le, cum);
    }
    None
}

/// Polls until `ready` or `limit` passes.
async fn wait_for<F: Future<Output = bool>>(limit: Duration, mut ready: impl FnMut() -> F) -> bool {
    let deadline = StdInstant::now() + limit;
    while StdInstant::now() < deadline {
        if ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// How many agents the server sees `up`.
async fn agents_up(http: &reqwest::Client, api: &str) -> usize {
    let Ok(r) = http.get(format!("{api}/api/v1/agents")).send().await else { return 0 };
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v.as_array().into_iter().flatten().filter(|a| a["state"] == "up" && a["name"] != "local").count()
}

async fn metrics_now(http: &reqwest::Client, api: &str) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let text = http.get(format!("{api}/metrics")).send().await?.error_for_status()?.text().await?;
    Ok(parse_metrics(&text))
}

fn free_local_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn agents(a: AgentsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.agents > 0 && a.jobs > 0 && a.seconds > 0, "--agents, --jobs and --seconds must be at least 1");
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let mut children = Children { procs: Vec::new(), logs: tmp.path().to_path_buf() };
    tokio::select! {
        r = agents_bench(&a, tmp.path(), &mut children) => r,
        () = super::shutdown_signal() => anyhow::bail!("interrupted; stopped the server and agents"),
    }
}

async fn agents_bench(a: &AgentsArgs, dir: &std::path::Path, children: &mut Children) -> anyhow::Result<()> {
    use futures::StreamExt;
    let progress = |msg: String| eprintln!("{msg}");
    let http = reqwest::Client::new();
    let (api_port, agent_port) = (free_local_port()?, free_local_port()?);
    let api = format!("http://127.0.0.1:{api_port}");
    let token = format!("bench-{}", std::process::id());
    // Keep every run of the window (and the warm-up) for the per-agent count.
    let keep_runs = (a.warmup + a.seconds + 120).to_string();
    let s = |v: &str| v.to_string();
    children.spawn(
        &[
            s("server"),
            s("--listen"),
            format!("127.0.0.1:{api_port}"),
            s("--agent-listen"),
            format!("127.0.0.1:{agent_port}"),
            s("--join-token"),
            token.clone(),
            s("--data-dir"),
            dir.join("server").display().to_string(),
            s("--keep-runs"),
            keep_runs,
            s("--log"),
            s("warn"),
        ],
        "server",
    )?;
    let listening = wait_for(Duration::from_secs(20), || async {
        std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok() && std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_ok()
    })
    .await;
    anyhow::ensure!(listening, "tug server did not start listening within 20s:\n{}", children.tail("server"));

    let t_agents = StdInstant::now();
    for i in 0..a.agents {
        let name = format!("bench-agent-{i:03}");
        children.spawn(
            &[
                s("agent"),
                s("run"),
                s("--noop"),
                s("--server"),
                format!("http://127.0.0.1:{agent_port}"),
                s("--name"),
                name.clone(),
                s("--resources"),
                s("cpus=1000,mem=1000GiB,disk=1000GiB"),
                s("--join-token"),
                token.clone(),
                s("--data-dir"),
                dir.join("agents").join(&name).display().to_string(),
                s("--log"),
                s("warn"),
            ],
            &name,
        )?;
        if !a.json && ((i + 1).is_multiple_of(10) || i + 1 == a.agents) {
            progress(format!("started {}/{} agents", i + 1, a.agents));
        }
    }
    let mut last = usize::MAX;
    let deadline = StdInstant::now() + Duration::from_secs(60 + a.agents as u64 / 5);
    let all_up = loop {
        let up = agents_up(&http, &api).await;
        if up != last && !a.json {
            progress(format!("{up}/{} agents up", a.agents));
        }
        last = up;
        if up >= a.agents || StdInstant::now() >= deadline {
            break up >= a.agents;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    anyhow::ensure!(
        all_up,
        "only {last} of {} agents joined within the time limit; the first agent's log:\n{}",
        a.agents,
        children.tail("bench-agent-000")
    );
    let agents_start_s = t_agents.elapsed().as_secs_f64();

    let t_jobs = StdInstant::now();
    let mut created = 0usize;
    let mut posts = futures::stream::iter(0..a.jobs)
        .map(|i| {
            let (http, api) = (&http, &api);
            async move {
                let spec = serde_json::json!({
                    "name": format!("bench-{i:07}"),
                    "schedule": "* * * * * *",
                    "command": ["true"],
                    "resources": {"cpus": 0.01},
                    "concurrency": "allow",
                    "placement": a.placement,
                });
                let r = http.post(format!("{api}/api/v1/jobs")).json(&spec).send().await.context("creating a job")?;
                let status = r.status();
                anyhow::ensure!(status.is_success(), "creating job {i}: {status} {}", r.text().await.unwrap_or_default());
                Ok(())
            }
        })
        .buffer_unordered(16);
    while let Some(r) = posts.next().await {
        r?;
        created += 1;
        if !a.json && (created.is_multiple_of(500) || created == a.jobs) {
            progress(format!("created {created}/{} jobs", a.jobs));
        }
    }
    let jobs_create_s = t_jobs.elapsed().as_secs_f64();
    if !a.json {
        progress(format!("warming up {}s, then measuring {}s ...", a.warmup, a.seconds));
    }
    tokio::time::sleep(Duration::from_secs(a.warmup)).await;
    let m0 = metrics_now(&http, &api).await?;
    let (w0, t0) = (Timestamp::now(), StdInstant::now());
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let m1 = metrics_now(&http, &api).await?;
    let (w1, elapsed) = (Timestamp::now(), t0.elapsed().as_secs_f64());
    let delta = |k: &str| m1.get(k).copied().unwrap_or(0.0) - m0.get(k).copied().unwrap_or(0.0);
    let finished: f64 = m1.keys().filter(|k| k.starts_with("tug_runs_finished_total")).map(|k| delta(k)).sum();
    let succeeded = delta("tug_runs_finished_total{state=\"succeeded\"}");
    let fires = delta("tug_fires_total");
    let misfires = delta("tug_misfires_total");
    let lat_p50 = histogram_quantile_ms(&m0, &m1, 0.5);
    let lat_p99 = histogram_quantile_ms(&m0, &m1, 0.99);

    // Per run, from the records: which agent, and scheduled → started as the server saw it.
    if !a.json {
        progress(format!("reading the runs of {} jobs ...", a.jobs));
    }
    let mut per_agent: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut started_ms = Vec::new();
    let mut done_ms = Vec::new();
    let mut lists = futures::stream::iter(0..a.jobs)
        .map(|i| {
            let (http, api) = (&http, &api);
            async move {
                let url = format!("{api}/api/v1/jobs/bench-{i:07}/runs?limit=1000");
                let v: serde_json::Value = http.get(url).send().await?.error_for_status()?.json().await?;
                Ok::<_, anyhow::Error>(v["items"].as_array().cloned().unwrap_or_default())
            }
        })
        .buffer_unordered(16);
    let ts = |r: &serde_json::Value, k: &str| r[k].as_str().and_then(|s| s.parse::<Timestamp>().ok());
    while let Some(runs) = lists.next().await {
        for r in runs? {
            let Some(at) = ts(&r, "scheduled_at") else { continue };
            if at < w0 || at >= w1 {
                continue;
            }
            if let Some(agent) = r["agent"].as_str() {
                *per_agent.entry(agent.to_string()).or_default() += 1;
            }
            let ms = |t: Option<Timestamp>| t.map(|t| t.duration_since(at).as_secs_f64() * 1000.0);
            started_ms.extend(ms(ts(&r, "started_at")));
            done_ms.extend(ms(ts(&r, "finished_at")));
        }
    }
    started_ms.sort_by(f64::total_cmp);
    done_ms.sort_by(f64::total_cmp);
    let in_window: u64 = per_agent.values().sum();
    // Agents that got no run at all count as 0.
    let min_per_agent = if per_agent.len() < a.agents { 0 } else { per_agent.values().copied().min().unwrap_or(0) };
    let max_per_agent = per_agent.values().copied().max().unwrap_or(0);

    let r1 = |v: f64| (v * 10.0).round() / 10.0;
    let result = serde_json::json!({
        "agents": a.agents,
        "jobs": a.jobs,
        "placement": a.placement,
        "seconds": a.seconds,
        "offered_per_s": a.jobs,
        "fires_per_s": r1(fires / elapsed),
        "finished_per_s": r1(finished / elapsed),
        "succeeded_per_s": r1(succeeded / elapsed),
        "misfires": misfires,
        "fire_lateness_p50_ms": lat_p50.map(r1),
        "fire_lateness_p99_ms": lat_p99.map(r1),
        "started_p50_ms": r1(percentile(&started_ms, 0.5)),
        "started_p99_ms": r1(percentile(&started_ms, 0.99)),
        "started_max_ms": r1(started_ms.last().copied().unwrap_or(0.0)),
        "finished_p50_ms": r1(percentile(&done_ms, 0.5)),
        "finished_p99_ms": r1(percentile(&done_ms, 0.99)),
        "runs_in_window": in_window,
        "runs_per_agent_min": min_per_agent,
        "runs_per_agent_max": max_per_agent,
        "agents_with_runs": per_agent.len(),
        "runs_per_agent": per_agent,
        "agents_start_s": r1(agents_start_s),
        "jobs_create_s": r1(jobs_create_s),
    });
    if a.json {
        return print_json(&result);
    }
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    let mut t = Table::new(&["METRIC", "VALUE"]);
    let rows = [
        ("agents (noop processes)", format!("{} (all up in {agents_start_s:.1} s)", a.agents)),
        ("jobs (every second, same instant)", format!("{}, {} (created in {jobs_create_s:.1} s)", a.jobs, a.placement)),
        ("fires/s", format!("{:.0} (load offers {})", fires / elapsed, a.jobs)),
        ("runs finished/s (acknowledged)", format!("{:.0} ({:.0} succeeded/s)", finished / elapsed, succeeded / elapsed)),
        ("misfires", format!("{misfires:.0}")),
        ("fire lateness p50 (histogram)", opt(lat_p50)),
        ("fire lateness p99 (histogram)", opt(lat_p99)),
        ("scheduled → started p50", format!("{:.1} ms", percentile(&started_ms, 0.5))),
        ("scheduled → started p99", format!("{:.1} ms", percentile(&started_ms, 0.99))),
        ("scheduled → started max", format!("{:.1} ms", started_ms.last().copied().unwrap_or(0.0))),
        ("scheduled → finished p50", format!("{:.1} ms", percentile(&done_ms, 0.5))),
        ("scheduled → finished p99", format!("{:.1} ms", percentile(&done_ms, 0.99))),
        ("runs in window", in_window.to_string()),
        ("runs per agent min / max", format!("{min_per_agent} / {max_per_agent} ({} agents got runs)", per_agent.len())),
    ];
    for (k, v) in rows {
        t.row(vec![k.into(), v]);
    }
    table::print(&t);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate_inside_buckets() {
        let before = parse_metrics("tug_fire_lateness_seconds_bucket{le=\"0.001\"} 0\ntug_fire_lateness_seconds_bucket{le=\"+Inf\"} 0\n");
        let after = parse_metrics(
            "# TYPE x histogram\ntug_fire_lateness_seconds_bucket{le=\"0.001\"} 50\ntug_fire_lateness_seconds_bucket{le=\"0.002\"} 100\ntug_fire_lateness_seconds_bucket{le=\"+Inf\"} 100\n",
        );
        assert_eq!(histogram_quantile_ms(&before, &after, 0.5), Some(1.0));
        assert_eq!(histogram_quantile_ms(&before, &after, 0.75), Some(1.5));
        assert_eq!(histogram_quantile_ms(&before, &before, 0.5), None);
    }
}
