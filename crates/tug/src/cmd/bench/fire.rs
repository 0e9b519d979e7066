//! `tug bench fire`: jobs firing every second through the real scheduler and SQLite store, with a
//! no-op runtime; with `--subscribers`, that many clients follow the event stream meanwhile.
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
use tug_store::etcd::{EtcdConfig, EtcdStore};
use tug_store::sqlite::SqliteStore;
use tug_store::Store;

use super::common::{Subscribers, rss_bytes};
use crate::cmd::print_json;
use crate::table::{self, Table};

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
    /// The store: SQLite in the data dir (default), or `etcd://HOST:PORT[,...][/PREFIX][?max-txn-ops=N]`
    /// (an empty prefix: the benchmark's jobs are added to it).
    #[arg(long, default_value = "sqlite")]
    store: String,
    /// Clients following the event stream (`/api/v1/events`, every kind) while the jobs fire:
    /// what it costs the scheduler, and how many events reach them.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}


/// Runs the benchmark.
pub(super) async fn run(a: FireArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.jobs > 0 && a.seconds > 0, "--jobs and --seconds must be at least 1");
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
        url => {
            let config = EtcdConfig::parse(url).map_err(anyhow::Error::msg)?;
            Arc::new(EtcdStore::connect(config).await?)
        }
    };
    let specs: Vec<JobSpec> = (0..a.jobs).map(|i| bench_job(i, a.jobs, a.burst)).collect();
    store.create_jobs(&specs, Timestamp::now()).await?;
    let load_s = t0.elapsed().as_secs_f64();
    let rss0 = rss_bytes();
    let t1 = StdInstant::now();
    let mut config = EmbeddedConfig::new(&dir);
    config.keep_runs = 1_000_000;
    let agent = Some(tug::local::local_agent(Default::default(), Arc::new(NoopRuntime)));
    let listener = match a.subscribers {
        0 => None,
        _ => Some(tokio::net::TcpListener::bind("127.0.0.1:0").await?),
    };
    let base = listener.as_ref().map(|l| l.local_addr().map(|a| format!("http://{a}"))).transpose()?;
    let server = Embedded::start_with_store(config, store, agent, Arc::new(SystemClock), listener).await?;
    let subscribers = base.map(|b| Subscribers::start(&reqwest::Client::new(), &format!("{b}/api/v1/events"), a.subscribers));
    let start_s = t1.elapsed().as_secs_f64();
    let bytes_per_job = rss_bytes().saturating_sub(rss0) / a.jobs as u64;
    if progress {
        eprintln!("stored in {load_s:.1}s, scheduler loaded in {start_s:.1}s; warming up 2s, then measuring {}s ...", a.seconds);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.scheduler.take_stats().await?;
    let t2 = StdInstant::now();
    let (published0, received0, lagged0) = (server.events.latest(), subscribers.as_ref().map_or(0, Subscribers::received), subscribers.as_ref().map_or(0, Subscribers::lagged));
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let stats = server.scheduler.take_stats().await?;
    let elapsed = t2.elapsed().as_secs_f64();
    let published = (server.events.latest() - published0) as f64 / elapsed;
    let delivered = subscribers.as_ref().map_or(0, Subscribers::received).saturating_sub(received0) as f64 / elapsed;
    let lagged = subscribers.as_ref().map_or(0, Subscribers::lagged).saturating_sub(lagged0);
    drop(subscribers);
    server.shutdown().await;
    let fires_per_s = stats.fires as f64 / elapsed;
    let ms = |us: u64| us as f64 / 1000.0;
    let result = serde_json::json!({
        "jobs": a.jobs,
        "store": if a.store == "sqlite" { "sqlite" } else { "etcd" },
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
        "subscribers": a.subscribers,
        "events_published_per_s": published.round(),
        "events_delivered_per_s": delivered.round(),
        "delivered_per_subscriber_per_s": (delivered / a.subscribers.max(1) as f64).round(),
        "lagged_notices": lagged,
    });
    if a.json {
        return print_json(&result);
    }
    let mut t = Table::new(&["METRIC", "VALUE"]);
    let rows = [
        ("jobs", format!("{} ({}, {})", a.jobs, result["mode"].as_str().unwrap_or("?"), result["store"].as_str().unwrap_or("?"))),
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
    if a.subscribers > 0 {
        t.row(vec!["event subscribers".into(), a.subscribers.to_string()]);
        t.row(vec!["events published/s".into(), format!("{published:.0}")]);
        t.row(vec!["events delivered/s".into(), format!("{delivered:.0} ({:.0} per subscriber)", delivered / a.subscribers as f64)]);
        t.row(vec!["lagged notices".into(), lagged.to_string()]);
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
