//! `tug bench fire`: jobs firing every second (or every `--period`) through the real scheduler and
//! a store (SQLite, etcd, or in memory for the ceiling), with a no-op runtime; with
//! `--subscribers`, that many clients follow the event stream meanwhile.
// Benchmarks measure real elapsed time and never run under paused tokio time.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use jiff::Timestamp;
use tug_agent::runtime::noop::NoopRuntime;
use tug_core::JobSpec;
use tug_core::run::{NewRun, RunState, Trigger};
use tug_server::clock::SystemClock;
use tug_server::embedded::{Embedded, EmbeddedConfig};
use tug_store::etcd::{EtcdConfig, EtcdStore};
use tug_store::mem::MemStore;
use tug_store::sqlite::SqliteStore;
use tug_store::{FireBatch, Store};

use super::common::{Subscribers, rss_bytes};
use crate::cmd::print_json;
use crate::table::{self, Table};

/// Arguments of `tug bench fire`.
#[derive(clap::Args)]
pub struct FireArgs {
    /// Number of jobs, each firing every second (every `--period` when given).
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// How often each job fires, e.g. 1s or 60s; the jobs' instants are spread evenly over it
    /// unless --burst.
    #[arg(long, default_value = "1s", value_parser = parse_period)]
    period: tug_core::Duration,
    /// Retained runs to put in the store before the scheduler starts (finished manual runs spread
    /// over the jobs), for the start-up and history figures.
    #[arg(long, default_value_t = 0)]
    runs_in_store: u64,
    /// Seconds to measure (after a 2 s warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// All jobs fire on the same instant instead of spread over the second.
    #[arg(long)]
    burst: bool,
    /// Where to put the database (a fresh temporary directory when absent).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// The store: SQLite in the data dir (default), `memory` (the same scheduler over the
    /// in-memory store: nothing durable, the ceiling to compare against), or
    /// `etcd://HOST:PORT[,...][/PREFIX][?max-txn-ops=N]` (an empty prefix: the benchmark's jobs are
    /// added to it).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Clients following the event stream (`/api/v1/events`, every kind) while the jobs fire:
    /// what it costs the scheduler, and how many events reach them.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Read `GET /api/v1/jobs/{name}/runs?limit=50` of a random job every 10 ms while the jobs
    /// fire, and print its latency: the history figure, with `--runs-in-store`.
    #[arg(long)]
    history_reads: bool,
    /// After the window, stop the server and start it again on the same data dir, and print the
    /// time from opening the store to the first fire: the recovery figure, with `--runs-in-store`.
    #[arg(long)]
    recovery: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}


/// Runs the benchmark.
pub(super) async fn run(a: FireArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.jobs > 0 && a.seconds > 0, "--jobs and --seconds must be at least 1");
    let period_ms = u64::try_from(a.period.as_millis()).unwrap_or(0);
    anyhow::ensure!(
        period_ms >= 1000 && period_ms % 1000 == 0 && period_ms <= 3_600_000,
        "--period must be whole seconds from 1s to 1h (got {}); e.g. --period 60s",
        a.period
    );
    let tmp = tempfile::tempdir().context("creating a temporary data dir")?;
    let dir = a.data_dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let progress = !a.json;
    if progress {
        eprintln!("loading {} jobs into {} ...", a.jobs, dir.display());
    }
    let t0 = StdInstant::now();
    let store: Arc<dyn Store> = match a.store.as_str() {
        "sqlite" => Arc::new(SqliteStore::open(&dir.join("tug.db"))?),
        "memory" => Arc::new(MemStore::new()),
        url if url.starts_with("etcd://") => {
            let config = EtcdConfig::parse(url)?;
            Arc::new(EtcdStore::connect(config).await?)
        }
        other => anyhow::bail!("unknown --store {other:?}: use sqlite, memory or etcd://HOST:PORT[,...][/PREFIX]"),
    };
    let specs: Vec<JobSpec> = (0..a.jobs).map(|i| bench_job(i, a.jobs, a.burst, period_ms)).collect();
    for chunk in specs.chunks(100_000) {
        store.create_jobs(chunk, Timestamp::now()).await?;
    }
    let store = if a.runs_in_store == 0 {
        store
    } else if a.store == "sqlite" {
        // Straight into the tables (the fire path would take minutes for ten million).
        if progress {
            eprintln!("putting {} finished runs into the database ...", a.runs_in_store);
        }
        drop(store);
        let db = dir.join("tug.db");
        tug_store::sqlite::fill_finished_runs(&db, a.runs_in_store, Timestamp::now())?;
        Arc::new(SqliteStore::open(&db)?) as Arc<dyn Store>
    } else {
        if progress {
            eprintln!("putting {} finished runs into the store ...", a.runs_in_store);
        }
        fill_runs(&*store, &specs, a.runs_in_store).await?;
        store
    };
    anyhow::ensure!(!a.recovery || a.store == "sqlite", "--recovery restarts on the same data dir: only with --store sqlite");
    let load_s = t0.elapsed().as_secs_f64();
    let rss0 = rss_bytes();
    let t1 = StdInstant::now();
    let mut config = EmbeddedConfig::new(&dir);
    config.keep_runs = 1_000_000;
    let agent = Some(tug::local::local_agent(Default::default(), Arc::new(NoopRuntime)));
    let listener = match a.subscribers > 0 || a.history_reads {
        false => None,
        true => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
    };
    let base = listener.as_ref().map(|l| l.local_addr().map(|a| format!("http://{a}"))).transpose()?;
    let server = Embedded::start_with_store(config, store, agent, Arc::new(SystemClock), listener).await?;
    let subscribers = base
        .as_ref()
        .filter(|_| a.subscribers > 0)
        .map(|b| Subscribers::start(&reqwest::Client::new(), &format!("{b}/api/v1/events"), a.subscribers));
    let start_s = t1.elapsed().as_secs_f64();
    let bytes_per_job = rss_bytes().saturating_sub(rss0) / a.jobs as u64;
    if progress {
        eprintln!("stored in {load_s:.1}s, scheduler loaded in {start_s:.1}s; warming up 2s, then measuring {}s ...", a.seconds);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.scheduler.take_stats().await?;
    let t2 = StdInstant::now();
    let (published0, received0, lagged0) = (server.events.latest(), subscribers.as_ref().map_or(0, Subscribers::received), subscribers.as_ref().map_or(0, Subscribers::lagged));
    let reads = match (&base, a.history_reads) {
        (Some(b), true) => Some(tokio::spawn(history_reads(b.clone(), a.jobs, Duration::from_secs(a.seconds)))),
        _ => None,
    };
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let stats = server.scheduler.take_stats().await?;
    let reads = match reads {
        Some(t) => Some(t.await??),
        None => None,
    };
    let elapsed = t2.elapsed().as_secs_f64();
    let published = (server.events.latest() - published0) as f64 / elapsed;
    let delivered = subscribers.as_ref().map_or(0, Subscribers::received).saturating_sub(received0) as f64 / elapsed;
    let lagged = subscribers.as_ref().map_or(0, Subscribers::lagged).saturating_sub(lagged0);
    drop(subscribers);
    server.shutdown().await;
    let recovery = match a.recovery {
        true => Some(restart(&dir, &progress).await?),
        false => None,
    };
    let fires_per_s = stats.fires as f64 / elapsed;
    let offered_per_s = a.jobs as f64 * 1000.0 / period_ms as f64;
    let ms = |us: u64| us as f64 / 1000.0;
    let result = serde_json::json!({
        "jobs": a.jobs,
        "store": if a.store.starts_with("etcd://") { "etcd" } else { a.store.as_str() },
        "mode": if a.burst { "burst" } else { "steady" },
        "period_s": period_ms / 1000,
        "runs_in_store": a.runs_in_store,
        "seconds": a.seconds,
        "fires_per_s": fires_per_s.round(),
        "expected_fires_per_s": offered_per_s.round(),
        "p50_ms": ms(stats.lateness_p50_us),
        "p99_ms": ms(stats.lateness_p99_us),
        "max_ms": ms(stats.lateness_max_us),
        "bytes_per_job": bytes_per_job,
        "fire_commits_per_s": (stats.fire_commits as f64 / elapsed).round(),
        "misfires": stats.misfires,
        "dispatched": stats.dispatched,
        "scheduler_load_s": start_s,
        "subscribers": a.subscribers,
        "events_published_per_s": published.round(),
        "events_delivered_per_s": delivered.round(),
        "delivered_per_subscriber_per_s": (delivered / a.subscribers.max(1) as f64).round(),
        "lagged_notices": lagged,
        "history_reads": reads.as_ref().map(|r| r.len()),
        "history_p50_ms": reads.as_ref().map(|r| super::common::percentile(r, 0.5)),
        "history_p99_ms": reads.as_ref().map(|r| super::common::percentile(r, 0.99)),
        "recovery_open_s": recovery.map(|r| r.0),
        "recovery_first_fire_s": recovery.map(|r| r.1),
    });
    if a.json {
        return print_json(&result);
    }
    let mut t = Table::new(&["METRIC", "VALUE"]);
    let rows = [
        ("jobs", format!("{} ({}, {})", a.jobs, result["mode"].as_str().unwrap_or("?"), result["store"].as_str().unwrap_or("?"))),
        ("fires/s", format!("{fires_per_s:.0} (load offers {offered_per_s:.0})")),
        ("lateness p50", format!("{:.2} ms", ms(stats.lateness_p50_us))),
        ("lateness p99", format!("{:.2} ms", ms(stats.lateness_p99_us))),
        ("lateness max", format!("{:.2} ms", ms(stats.lateness_max_us))),
        ("memory per job", format!("{bytes_per_job} B")),
        ("fire transactions/s", format!("{:.0}", stats.fire_commits as f64 / elapsed)),
        ("misfires (late past epsilon)", stats.misfires.to_string()),
        ("scheduler start-up", format!("{start_s:.2} s")),
    ];
    for (k, v) in rows {
        t.row(vec![k.into(), v]);
    }
    if a.subscribers > 0 {
        t.row(vec!["event subscribers".into(), a.subscribers.to_string()]);
        t.row(vec!["events published/s".into(), format!("{published:.0}")]);
        t.row(vec!["events delivered/s".into(), format!("{delivered:.0} ({:.0} per subscriber)", delivered / a.subscribers as f64)]);
        t.row(vec!["lagged notices".into(), lagged.to_string()]);
    }
    if let Some(r) = &reads {
        let p = |q| super::common::percentile(r, q);
        t.row(vec!["history reads (runs?limit=50)".into(), format!("{} reads, p50 {:.2} ms, p99 {:.2} ms", r.len(), p(0.5), p(0.99))]);
    }
    if let Some((open, first)) = recovery {
        t.row(vec!["recovery: store opened".into(), format!("{open:.2} s")]);
        t.row(vec!["recovery: first fire".into(), format!("{first:.2} s after the open began")]);
    }
    table::print(&t);
    Ok(())
}

/// Reads a random job's latest 50 runs every 10 ms for `window`; the latencies in ms, sorted.
async fn history_reads(base: String, jobs: usize, window: Duration) -> anyhow::Result<Vec<f64>> {
    let http = reqwest::Client::new();
    let end = StdInstant::now() + window;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut took = Vec::new();
    // A small LCG: no dependency for picking jobs at random.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    while StdInstant::now() < end {
        tick.tick().await;
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let job = (x >> 33) as usize % jobs;
        let t = StdInstant::now();
        let r = http.get(format!("{base}/api/v1/jobs/bench-{job:07}/runs?limit=50")).send().await?.error_for_status()?;
        let body = r.bytes().await?;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(body.len() > 2, "an empty answer for job {job}");
    }
    took.sort_by(f64::total_cmp);
    Ok(took)
}

/// Starts the server again on `dir`: seconds to open the store (replaying its fire log), and from
/// the open to the first fire.
async fn restart(dir: &std::path::Path, progress: &bool) -> anyhow::Result<(f64, f64)> {
    if *progress {
        eprintln!("restarting on the same data dir ...");
    }
    let t = StdInstant::now();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("tug.db"))?);
    let open_s = t.elapsed().as_secs_f64();
    let mut config = EmbeddedConfig::new(dir);
    config.keep_runs = 1_000_000;
    let agent = Some(tug::local::local_agent(Default::default(), Arc::new(NoopRuntime)));
    let server = Embedded::start_with_store(config, store, agent, Arc::new(SystemClock), None).await?;
    loop {
        if server.scheduler.stats().await?.dispatched > 0 {
            break;
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(300), "no fire within 5 minutes of the restart");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first_s = t.elapsed().as_secs_f64();
    server.shutdown().await;
    Ok((open_s, first_s))
}

/// Job `i` of `n`: fires every `period_ms`, at an offset of `i/n` of the period unless `burst`.
fn bench_job(i: usize, n: usize, burst: bool, period_ms: u64) -> JobSpec {
    let offset_ms = if burst { 0 } else { (i as u64 * period_ms / n as u64) as i64 };
    let start = Timestamp::from_second(1_767_225_600).expect("2026-01-01 is a valid instant")
        + jiff::SignedDuration::from_millis(offset_ms);
    let spec = serde_json::json!({
        "name": format!("bench-{i:07}"),
        "schedule": format!("R/{}/PT{}S", start.strftime("%Y-%m-%dT%H:%M:%S.%3fZ"), period_ms / 1000),
        "command": "true",
        "concurrency": "allow",
    });
    JobSpec::from_json(&spec.to_string()).expect("bench job spec is valid")
}

fn parse_period(s: &str) -> Result<tug_core::Duration, String> {
    s.parse().map_err(|e| format!("{e}; e.g. 1s or 60s"))
}

/// Puts `n` finished manual runs into the store, round-robin over the jobs, scheduled in 2025 (so
/// they move no job's fire cursor), in batches of 10,000.
async fn fill_runs(store: &dyn Store, specs: &[JobSpec], n: u64) -> anyhow::Result<()> {
    let base = Timestamp::from_second(1_735_689_600).expect("2025-01-01 is a valid instant");
    let mut made = 0u64;
    while made < n {
        let take = (n - made).min(10_000);
        let runs: Vec<NewRun> = (made..made + take)
            .map(|k| {
                let job = &specs[(k % specs.len() as u64) as usize];
                let round = (k / specs.len() as u64) as i64;
                NewRun {
                    job: job.name.clone(),
                    scheduled_at: base + jiff::SignedDuration::from_millis(round),
                    trigger: Trigger::Manual,
                    state: RunState::Starting,
                    reason: None,
                    agent: Some("bench".into()),
                }
            })
            .collect();
        let now = Timestamp::now();
        let mut created = store.commit_fires(FireBatch { runs, cursors: Vec::new() }, now).await?;
        for r in &mut created {
            r.state = RunState::Succeeded;
            r.started_at = Some(now);
            r.finished_at = Some(now);
            r.exit_code = Some(0);
        }
        store.save_runs(&created, &[]).await?;
        made += take;
    }
    Ok(())
}
