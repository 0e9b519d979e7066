//! `tug bench scale`: a real `tug server` and N `tug agent run --noop` processes on 127.0.0.1
//! (as `tug bench agents`), one service scaled from 0 to R replicas and back through the scale
//! API; the time from the call to all placed, started and healthy, read from the operation.
// Benchmarks measure real elapsed time and never run under paused tokio time.
#![allow(clippy::disallowed_types)]

use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use serde_json::{Value, json};

use super::agents::start_noop_cluster;
use super::common::Children;
use crate::cmd::print_json;
use crate::table::{self, Table};

/// Arguments of `tug bench scale`.
#[derive(clap::Args)]
pub struct ScaleArgs {
    /// Number of `tug agent run --noop` processes.
    #[arg(long, default_value_t = 50)]
    agents: usize,
    /// Replicas to scale the service to (and back to 0 from).
    #[arg(long, default_value_t = 1000)]
    replicas: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// When each count of an operation first reached its target, in seconds from the call.
#[derive(Default)]
struct Milestones {
    placed: Option<f64>,
    started: Option<f64>,
    healthy: Option<f64>,
    done: Option<f64>,
}

/// Scales `service` to `to` and polls its operation until it ends.
async fn scale(http: &reqwest::Client, api: &str, service: &str, to: u32) -> anyhow::Result<(Milestones, Value)> {
    let t0 = StdInstant::now();
    let r = http.post(format!("{api}/api/v1/services/{service}/scale")).json(&json!({"replicas": to})).send().await?;
    let answered = t0.elapsed().as_secs_f64();
    let status = r.status();
    let op: Value = r.json().await.context("reading the scale answer")?;
    anyhow::ensure!(status.as_u16() == 202, "scale answered {status}: {op}");
    let id = op["id"].as_str().context("an operation id")?.to_string();
    let mut m = Milestones::default();
    let deadline = t0 + Duration::from_secs(300);
    loop {
        let op: Value = http.get(format!("{api}/api/v1/operations/{id}")).send().await?.error_for_status()?.json().await?;
        let now = t0.elapsed().as_secs_f64();
        let n = |k: &str| op[k].as_u64().unwrap_or(0);
        let to = u64::from(to);
        // Scaling in, "placed" means no more than the target remain placed.
        let reached = |v: u64| if to == 0 { v == 0 } else { v >= to };
        if m.placed.is_none() && reached(n("placed")) {
            m.placed = Some(now);
        }
        if m.started.is_none() && reached(n("started")) {
            m.started = Some(now);
        }
        if m.healthy.is_none() && reached(n("healthy")) && n("replicas") == to {
            m.healthy = Some(now);
        }
        if op["state"] != "running" {
            m.done = Some(now);
            anyhow::ensure!(op["state"] == "succeeded", "operation {id} ended {}", op["state"]);
            let mut op = op;
            op["answered_ms"] = json!((answered * 1000.0).round());
            return Ok((m, op));
        }
        anyhow::ensure!(StdInstant::now() < deadline, "operation {id} still running after 300 s: {op}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the benchmark.
pub(super) async fn run(a: ScaleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.agents > 0 && a.replicas > 0, "--agents and --replicas must be at least 1");
    anyhow::ensure!(a.replicas <= 10_000, "--replicas is at most 10000 (a service's limit)");
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let mut children = Children::new(tmp.path());
    tokio::select! {
        r = bench(&a, tmp.path(), &mut children) => r,
        () = crate::cmd::shutdown_signal() => anyhow::bail!("interrupted; stopped the server and agents"),
    }
}

async fn bench(a: &ScaleArgs, dir: &std::path::Path, children: &mut Children) -> anyhow::Result<()> {
    let (api, agents_start_s) = start_noop_cluster(a.agents, &[], dir, children, a.json).await?;
    let http = reqwest::Client::new();
    let spec = json!({"name": "bench-scale", "replicas": 0, "command": ["true"], "resources": {"cpus": 0.01}});
    let r = http.post(format!("{api}/api/v1/services")).json(&spec).send().await?;
    anyhow::ensure!(r.status().is_success(), "creating the service: {}", r.text().await.unwrap_or_default());
    if !a.json {
        eprintln!("scaling bench-scale from 0 to {} replicas over {} agents ...", a.replicas, a.agents);
    }
    let (out, op_out) = scale(&http, &api, "bench-scale", a.replicas).await?;
    let per_agent: Vec<u64> =
        op_out["agents"].as_object().into_iter().flatten().map(|(_, p)| p["healthy"].as_u64().unwrap_or(0)).collect();
    let (min, max) = (per_agent.iter().copied().min().unwrap_or(0), per_agent.iter().copied().max().unwrap_or(0));
    if !a.json {
        eprintln!("scaling back to 0 ...");
    }
    let (back, _) = scale(&http, &api, "bench-scale", 0).await?;
    let ms = |v: Option<f64>| v.map(|s| (s * 10_000.0).round() / 10.0);
    let result = json!({
        "agents": a.agents,
        "replicas": a.replicas,
        "agents_start_s": (agents_start_s * 10.0).round() / 10.0,
        "scale_call_ms": op_out["answered_ms"],
        "out_placed_ms": ms(out.placed),
        "out_started_ms": ms(out.started),
        "out_healthy_ms": ms(out.healthy),
        "out_operation_ms": op_out["elapsed_ms"],
        "replicas_per_s": out.healthy.map(|s| (f64::from(a.replicas) / s).round()),
        "per_agent_min": min,
        "per_agent_max": max,
        "agents_with_replicas": per_agent.len(),
        "in_stopped_ms": ms(back.done),
    });
    if a.json {
        return print_json(&result);
    }
    let show = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.0} ms", s * 1000.0));
    let mut t = Table::new(&["METRIC", "VALUE"]);
    let rows = [
        ("agents (noop processes)", format!("{} (all up in {agents_start_s:.1} s)", a.agents)),
        ("replicas (no health check: running is healthy)", a.replicas.to_string()),
        ("scale call answered", format!("{} ms", op_out["answered_ms"])),
        ("call → all placed", show(out.placed)),
        ("call → all started", show(out.started)),
        ("call → all healthy", show(out.healthy)),
        ("operation's own time (server)", format!("{} ms", op_out["elapsed_ms"])),
        ("replicas healthy per second", out.healthy.map_or("-".into(), |s| format!("{:.0}", f64::from(a.replicas) / s))),
        ("replicas per agent min / max", format!("{min} / {max} ({} agents)", per_agent.len())),
        ("scale to 0: call → all stopped", show(back.done)),
    ];
    for (k, v) in rows {
        t.row(vec![k.into(), v]);
    }
    table::print(&t);
    Ok(())
}
