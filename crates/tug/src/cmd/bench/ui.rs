//! `tug bench ui`: web UI page render times with many jobs in the store, and the event stream's
//! throughput to many subscribers while jobs fire.
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
use tug_store::Store;
use tug_store::sqlite::SqliteStore;

use super::common::{Subscribers, percentile};
use crate::cmd::print_json;
use crate::table::{self, Table};

/// Arguments of `tug bench ui`.
#[derive(clap::Args)]
pub struct UiArgs {
    /// Jobs in the store (named job-000000 ...; a few fire every second, the rest yearly).
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Of those, jobs firing every second while the event stream is measured.
    #[arg(long, default_value_t = 1000)]
    firing: usize,
    /// Requests per page measured.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Event stream subscribers.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Seconds the event stream is measured.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn job(i: usize, firing: bool) -> anyhow::Result<JobSpec> {
    let schedule = if firing { "* * * * * *" } else { "@yearly" };
    let labels = if i % 10 == 0 { r#", "labels": {"team": "ten"}"# } else { "" };
    Ok(JobSpec::from_json(&format!(r#"{{"name": "job-{i:06}", "schedule": "{schedule}", "command": "true"{labels}}}"#))?)
}

/// Runs the benchmark.
pub(super) async fn run(a: UiArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.jobs > 0 && a.requests > 0 && a.firing <= a.jobs, "--jobs and --requests must be at least 1, --firing at most --jobs");
    let tmp = tempfile::tempdir().context("creating a temporary data dir")?;
    let dir = tmp.path();
    let progress = !a.json;
    if progress {
        eprintln!("loading {} jobs ...", a.jobs);
    }
    {
        let store = SqliteStore::open(&dir.join("tug.db"))?;
        // The firing jobs are paused until the stream is measured.
        let specs: Vec<JobSpec> = (0..a.jobs)
            .map(|i| {
                let mut s = job(i, i < a.firing)?;
                s.paused = i < a.firing;
                Ok(s)
            })
            .collect::<anyhow::Result<_>>()?;
        store.create_jobs(&specs, Timestamp::now()).await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let mut config = EmbeddedConfig::new(dir);
    config.keep_runs = 10;
    let server = Embedded::start(config, Some(tug::local::local_agent(Default::default(), Arc::new(NoopRuntime))), Arc::new(SystemClock), Some(listener)).await?;
    let http = reqwest::Client::new();
    let deep = format!("job-{:06}", a.jobs * 9 / 10);
    // A cursor 90% of the way into the list by next fire: the yearly jobs all fire at the next
    // New Year, in the order the scheduler loaded them (the cursor's second part).
    let new_year = Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).first_of_year()?.start_of_day()?.checked_add(jiff::Span::new().years(1))?.timestamp();
    let deep_fire = format!("f{}.{}", new_year.as_millisecond(), a.jobs * 9 / 10);
    let pages = [
        ("jobs by next fire, first page", "/".to_string()),
        ("jobs by next fire, search", format!("/?q=job-{:04}", a.jobs / 200)),
        ("jobs by next fire, deep page", format!("/?cursor={deep_fire}")),
        ("jobs by name, first page", "/?sort=name".to_string()),
        ("jobs by name, deep page", format!("/?sort=name&cursor={deep}")),
        ("jobs, label + failing", "/?label=team%3Dten&state=failing".to_string()),
        ("one job", format!("/jobs/job-{:06}", a.jobs / 2)),
    ];
    let mut rows = Vec::new();
    for (name, path) in &pages {
        if progress {
            eprintln!("{name}: {} requests ...", a.requests);
        }
        let mut ms = Vec::with_capacity(a.requests);
        let mut bytes = 0;
        for _ in 0..a.requests {
            let t = StdInstant::now();
            let r = http.get(format!("{base}{path}")).send().await?;
            anyhow::ensure!(r.status().is_success(), "GET {path}: {}", r.status());
            bytes = r.bytes().await?.len();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        rows.push(serde_json::json!({"page": name, "path": path, "p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99), "bytes": bytes}));
    }

    // The event stream: subscribers count what they receive while the firing jobs run.
    if progress {
        eprintln!("event stream: {} subscribers, {} jobs firing every second, {}s ...", a.subscribers, a.firing, a.seconds);
    }
    let subscribers = Subscribers::start(&http, &format!("{base}/api/v1/events?kind=run"), a.subscribers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..a.firing {
        server.scheduler.set_paused(&format!("job-{i:06}"), false).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (published0, received0) = (server.events.latest(), subscribers.received());
    let t = StdInstant::now();
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let secs = t.elapsed().as_secs_f64();
    let published = (server.events.latest() - published0) as f64 / secs;
    let delivered = (subscribers.received() - received0) as f64 / secs;
    let stats = server.scheduler.take_stats().await?;
    drop(subscribers);
    server.shutdown().await;
    let stream = serde_json::json!({
        "subscribers": a.subscribers,
        "firing_jobs": a.firing,
        "fires": stats.fires,
        "events_published_per_s": published,
        "events_delivered_per_s": delivered,
        "delivered_per_subscriber_per_s": delivered / a.subscribers.max(1) as f64,
    });
    if a.json {
        return print_json(&serde_json::json!({"jobs": a.jobs, "pages": rows, "stream": stream}));
    }
    let mut t = Table::new(&["PAGE", "PATH", "P50 MS", "P99 MS", "BYTES"]);
    for r in &rows {
        t.row(vec![
            r["page"].as_str().unwrap_or_default().to_string(),
            r["path"].as_str().unwrap_or_default().to_string(),
            format!("{:.1}", r["p50_ms"].as_f64().unwrap_or(0.0)),
            format!("{:.1}", r["p99_ms"].as_f64().unwrap_or(0.0)),
            r["bytes"].to_string(),
        ]);
    }
    println!("{} jobs in the store", a.jobs);
    table::print(&t);
    println!();
    let mut t = Table::new(&["SUBSCRIBERS", "FIRING JOBS", "EVENTS PUBLISHED/S", "EVENTS DELIVERED/S", "PER SUBSCRIBER/S"]);
    t.row(vec![
        a.subscribers.to_string(),
        a.firing.to_string(),
        format!("{published:.0}"),
        format!("{delivered:.0}"),
        format!("{:.0}", delivered / a.subscribers.max(1) as f64),
    ]);
    table::print(&t);
    Ok(())
}
