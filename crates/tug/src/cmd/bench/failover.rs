//! `tug bench failover`: three etcd members, three `tug server`s on them, one agent and J jobs
//! firing every second; the leader is killed (SIGKILL) K times at random moments. Prints how long
//! each failover took (kill → a new leader answers as leader) and checks what the fault tests
//! check: no run key launched twice (counted by the runs on the agent's host), and no scheduled
//! second of any job without its run.
// Benchmarks measure real elapsed time and never run under paused tokio time.
#![allow(clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context;
use serde_json::Value;
use tug_store::testing::EtcdCluster;

use super::common::{Children, percentile};
use crate::cmd::print_json;
use crate::table::{self, Table};

/// Arguments of `tug bench failover`.
#[derive(clap::Args)]
pub struct FailoverArgs {
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Number of jobs, each firing every second.
    #[arg(long, default_value_t = 20)]
    jobs: usize,
    /// The servers' lease TTL.
    #[arg(long, default_value = "2s")]
    lease_ttl: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The member that `ask` names as leader once that member also says it leads, and how long it
/// took; `None` after `within`.
async fn leader(http: &reqwest::Client, apis: &[String], ask: usize, not: Option<&str>, within: Duration) -> Option<(usize, String, f64)> {
    let started = StdInstant::now();
    let get = |i: usize| {
        let url = format!("{}/api/v1/cluster", apis[i]);
        async move { http.get(url).send().await.ok()?.json::<Value>().await.ok() }
    };
    while started.elapsed() < within {
        if let Some(c) = get(ask).await
            && let Some(name) = c["leader"].as_str()
            && Some(name) != not
            && let Some(i) = c["members"].as_array().and_then(|m| m.iter().find(|m| m["name"] == name)).and_then(|m| {
                apis.iter().position(|a| Some(a.as_str()) == m["api"].as_str())
            })
            && get(i).await.is_some_and(|own| own["role"] == "leader")
        {
            return Some((i, name.to_owned(), started.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Runs the benchmark.
pub(super) async fn run(a: FailoverArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.kills > 0 && a.jobs > 0, "--kills and --jobs must be at least 1");
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let progress = !a.json;
    let etcd = EtcdCluster::start(3);
    let mut children = Children::new(tmp.path());
    let mut servers = Vec::new();
    for i in 0..3 {
        let (api, agent) = (free_port()?, free_port()?);
        let args: Vec<String> = [
            "server", "--store", &etcd.url("bench"), "--name", &format!("s{i}"), "--lease-ttl", &a.lease_ttl,
            "--listen", &format!("127.0.0.1:{api}"), "--agent-listen", &format!("127.0.0.1:{agent}"),
            "--data-dir", &tmp.path().join(format!("s{i}")).to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        children.spawn(&args, &format!("s{i}"))?;
        servers.push((format!("http://127.0.0.1:{api}"), format!("http://127.0.0.1:{agent}"), args));
    }
    let agents: Vec<&str> = servers.iter().map(|s| s.1.as_str()).collect();
    let agent_dir = tmp.path().join("agent");
    children.spawn(&["agent".into(), "run".into(), "--server".into(), agents.join(","), "--name".into(), "a1".into(), "--data-dir".into(), agent_dir.to_string_lossy().into()], "agent")?;
    let apis: Vec<String> = servers.iter().map(|s| s.0.clone()).collect();
    let http = reqwest::Client::new();
    let (mut current, _, _) = leader(&http, &apis, 0, None, Duration::from_secs(30)).await.context("no leader was elected")?;
    let launches = tmp.path().join("launches");
    for j in 0..a.jobs {
        let job = serde_json::json!({
            "name": format!("fo-{j:04}"), "schedule": "* * * * * *",
            "command": format!("echo \"$TUG_JOB $TUG_SCHEDULED_AT\" >> {}", launches.display()),
        });
        let resp = http.post(format!("{}/api/v1/jobs", apis[(current + 1) % 3])).json(&job).send().await?;
        anyhow::ensure!(resp.status().is_success(), "adding a job: {}", resp.text().await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut failovers = Vec::with_capacity(a.kills);
    for k in 0..a.kills {
        // A random moment within the second, so kills do not line up with ticks.
        let jitter = jiff::Timestamp::now().subsec_nanosecond().unsigned_abs() % 1_000_000_000;
        tokio::time::sleep(Duration::from_nanos(u64::from(jitter))).await;
        let old = current;
        children.kill(old);
        let (new, _, took) = leader(&http, &apis, (old + 1) % 3, Some(&format!("s{old}")), Duration::from_secs(30))
            .await
            .with_context(|| format!("no new leader after kill {}; {}", k + 1, children.tail(&format!("s{}", (old + 1) % 3))))?;
        failovers.push(took);
        if progress {
            eprintln!("kill {}/{}: s{old} killed, s{new} leads after {took:.2}s", k + 1, a.kills);
        }
        children.respawn(old, &servers[old].2, &format!("s{old}"))?;
        current = new;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let text = std::fs::read_to_string(&launches).unwrap_or_default();
    let mut seen = BTreeSet::new();
    let twice = text.lines().filter(|l| !seen.insert(*l)).count();
    let mut missing = 0;
    let mut skipped = 0;
    for j in 0..a.jobs {
        let url = format!("{}/api/v1/jobs/fo-{j:04}/runs?limit=1000", apis[current]);
        let page: Value = http.get(url).send().await?.json().await?;
        let mut seconds = BTreeMap::new();
        for r in page["items"].as_array().into_iter().flatten().filter(|r| r["trigger"] == "schedule") {
            let at: jiff::Timestamp = r["scheduled_at"].as_str().unwrap_or_default().parse()?;
            seconds.insert(at.as_second(), r["state"] == "skipped");
        }
        if let (Some(first), Some(last)) = (seconds.keys().next().copied(), seconds.keys().last().copied()) {
            missing += (first..=last).filter(|s| !seconds.contains_key(s)).count();
            skipped += seconds.values().filter(|s| **s).count();
        }
    }
    failovers.sort_by(f64::total_cmp);
    let result = serde_json::json!({
        "kills": a.kills,
        "jobs": a.jobs,
        "lease_ttl": a.lease_ttl,
        "failover_p50_s": percentile(&failovers, 0.5),
        "failover_p99_s": percentile(&failovers, 0.99),
        "failover_max_s": failovers.last().copied().unwrap_or(0.0),
        "launches": text.lines().count(),
        "launched_twice": twice,
        "seconds_missing": missing,
        "skipped_by_policy": skipped,
    });
    drop(children);
    drop(etcd);
    if a.json {
        print_json(&result)?;
    } else {
        let mut t = Table::new(&["METRIC", "VALUE"]);
        let rows = [
            ("leader kills", format!("{} ({} jobs every second, lease {})", a.kills, a.jobs, a.lease_ttl)),
            ("failover p50", format!("{:.2} s", percentile(&failovers, 0.5))),
            ("failover p99", format!("{:.2} s", percentile(&failovers, 0.99))),
            ("failover max", format!("{:.2} s", failovers.last().copied().unwrap_or(0.0))),
            ("launches", text.lines().count().to_string()),
            ("run keys launched twice", twice.to_string()),
            ("scheduled seconds without a run", missing.to_string()),
            ("runs skipped by policy", skipped.to_string()),
        ];
        for (k, v) in rows {
            t.row(vec![k.into(), v]);
        }
        table::print(&t);
    }
    anyhow::ensure!(twice == 0 && missing == 0, "{twice} run keys launched twice, {missing} seconds without a run");
    Ok(())
}
