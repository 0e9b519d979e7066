//! `tug bench agents`: a real `tug server` and N `tug agent run --noop` processes on 127.0.0.1, J
//! jobs firing every second through the API, launches measured end to end.
// Benchmarks measure real elapsed time and never run under paused tokio time.
#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use jiff::Timestamp;

use tug_server::prom::Exposition;

use super::common::{Children, percentile};
use crate::cmd::print_json;
use crate::table::{self, Table};

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
    /// Spread the jobs' fires evenly over each second (job i of N at i/N s) instead of all on the
    /// same instant: a steady load rather than the top-of-the-second herd.
    #[arg(long)]
    spread: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Polls until `ready` or `limit` passes.
pub(super) async fn wait_for<F: Future<Output = bool>>(limit: Duration, mut ready: impl FnMut() -> F) -> bool {
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

async fn metrics_now(http: &reqwest::Client, api: &str) -> anyhow::Result<Exposition> {
    let text = http.get(format!("{api}/metrics")).send().await?.error_for_status()?.text().await?;
    Ok(Exposition::parse(&text, true)?)
}

fn free_local_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs the benchmark.
pub(super) async fn run(a: AgentsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.agents > 0 && a.jobs > 0 && a.seconds > 0, "--agents, --jobs and --seconds must be at least 1");
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let mut children = Children::new(tmp.path());
    tokio::select! {
        r = agents_bench(&a, tmp.path(), &mut children) => r,
        () = crate::cmd::shutdown_signal() => anyhow::bail!("interrupted; stopped the server and agents"),
    }
}

/// Starts a `tug server` and `agents` no-op agent processes on 127.0.0.1 and waits until every
/// agent is up; returns the API's URL and the seconds the agents took to join.
pub(super) async fn start_noop_cluster(
    agents: usize,
    server_args: &[String],
    dir: &std::path::Path,
    children: &mut Children,
    quiet: bool,
) -> anyhow::Result<(String, f64)> {
    let progress = |msg: String| {
        if !quiet {
            eprintln!("{msg}");
        }
    };
    let http = reqwest::Client::new();
    let (api_port, agent_port) = (free_local_port()?, free_local_port()?);
    let api = format!("http://127.0.0.1:{api_port}");
    let token = format!("bench-{}", std::process::id());
    let s = |v: &str| v.to_string();
    let mut args = vec![
        s("server"),
        s("--listen"),
        format!("127.0.0.1:{api_port}"),
        s("--agent-listen"),
        format!("127.0.0.1:{agent_port}"),
        s("--join-token"),
        token.clone(),
        s("--data-dir"),
        dir.join("server").display().to_string(),
        s("--log"),
        s("warn"),
    ];
    args.extend_from_slice(server_args);
    children.spawn(&args, "server")?;
    let listening = wait_for(Duration::from_secs(20), || async {
        std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok() && std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_ok()
    })
    .await;
    anyhow::ensure!(listening, "tug server did not start listening within 20s:\n{}", children.tail("server"));

    let t_agents = StdInstant::now();
    for i in 0..agents {
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
        if (i + 1).is_multiple_of(10) || i + 1 == agents {
            progress(format!("started {}/{} agents", i + 1, agents));
        }
    }
    let mut last = usize::MAX;
    let deadline = StdInstant::now() + Duration::from_secs(60 + agents as u64 / 5);
    let all_up = loop {
        let up = agents_up(&http, &api).await;
        if up != last {
            progress(format!("{up}/{agents} agents up"));
        }
        last = up;
        if up >= agents || StdInstant::now() >= deadline {
            break up >= agents;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    anyhow::ensure!(
        all_up,
        "only {last} of {agents} agents joined within the time limit; the first agent's log:\n{}",
        children.tail("bench-agent-000")
    );
    Ok((api, t_agents.elapsed().as_secs_f64()))
}

async fn agents_bench(a: &AgentsArgs, dir: &std::path::Path, children: &mut Children) -> anyhow::Result<()> {
    use futures::StreamExt;
    let progress = |msg: String| eprintln!("{msg}");
    let http = reqwest::Client::new();
    // Keep every run of the window (and the warm-up) for the per-agent count.
    let keep_runs = (a.warmup + a.seconds + 120).to_string();
    let (api, agents_start_s) =
        start_noop_cluster(a.agents, &["--keep-runs".to_string(), keep_runs], dir, children, a.json).await?;

    let t_jobs = StdInstant::now();
    let mut created = 0usize;
    let mut posts = futures::stream::iter(0..a.jobs)
        .map(|i| {
            let (http, api) = (&http, &api);
            async move {
                let schedule = match a.spread {
                    // An ISO repeat from a start i/N into a second: cron has whole seconds only.
                    true => {
                        let start = Timestamp::from_second(1_767_225_600).expect("2026-01-01 is a valid instant")
                            + jiff::SignedDuration::from_millis((i * 1000 / a.jobs) as i64);
                        format!("R/{}/PT1S", start.strftime("%Y-%m-%dT%H:%M:%S.%3fZ"))
                    }
                    false => "* * * * * *".to_string(),
                };
                let spec = serde_json::json!({
                    "name": format!("bench-{i:07}"),
                    "schedule": schedule,
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
    let (cpu_agents0, cpu_server0) = (children.cpu_seconds("bench-agent-"), children.cpu_seconds("server"));
    let (w0, t0) = (Timestamp::now(), StdInstant::now());
    tokio::time::sleep(Duration::from_secs(a.seconds)).await;
    let m1 = metrics_now(&http, &api).await?;
    let (w1, elapsed) = (Timestamp::now(), t0.elapsed().as_secs_f64());
    // CPU seconds per second of the window: 1.0 is one core busy.
    let agents_cpu = (children.cpu_seconds("bench-agent-") - cpu_agents0) / elapsed;
    let server_cpu = (children.cpu_seconds("server") - cpu_server0) / elapsed;
    let delta = |name: &str, labels: &[(&str, &str)]| m1.sum(name, labels) - m0.sum(name, labels);
    let finished = delta("tug_runs_finished_total", &[]);
    let succeeded = delta("tug_runs_finished_total", &[("state", "succeeded")]);
    let fires = delta("tug_fires_total", &[]);
    let misfires = delta("tug_misfires_total", &[]);
    let lateness_ms = |q| m1.quantile_since(&m0, "tug_fire_lateness_seconds", q).map(|s| s * 1000.0);
    let (lat_p50, lat_p99) = (lateness_ms(0.5), lateness_ms(0.99));

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
        "fires": if a.spread { "spread" } else { "same instant" },
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
        "agents_cpu_cores": (agents_cpu * 1000.0).round() / 1000.0,
        "server_cpu_cores": (server_cpu * 1000.0).round() / 1000.0,
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
        (
            if a.spread { "jobs (every second, spread over it)" } else { "jobs (every second, same instant)" },
            format!("{}, {} (created in {jobs_create_s:.1} s)", a.jobs, a.placement),
        ),
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
        ("CPU of all agents (cores)", format!("{agents_cpu:.3} ({:.1} ms per second per agent)", agents_cpu * 1000.0 / a.agents as f64)),
        ("CPU of the server (cores)", format!("{server_cpu:.3}")),
        ("runs per agent min / max", format!("{min_per_agent} / {max_per_agent} ({} agents got runs)", per_agent.len())),
    ];
    for (k, v) in rows {
        t.row(vec![k.into(), v]);
    }
    table::print(&t);
    Ok(())
}
