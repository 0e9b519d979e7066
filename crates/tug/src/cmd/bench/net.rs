//! `tug bench net`: how fast a container gets its network. N "containers" (the real static `dwait`
//! in a network namespace of its own, as in a warm container) ask the real `dresponse` at once;
//! each is plumbed into a VXLAN pool on a host that is a network namespace. Measured: each
//! container's network-ready time as its dwait saw it (asked → answered, before the application
//! would start), and containers plumbed per second. Beside it, in the same run, the time Docker
//! takes to create and start a container on its own bridge network less the same with none.
// Benchmarks measure real elapsed time and never run under paused tokio time.
#![allow(clippy::disallowed_types)]

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use anyhow::{Context, bail};
use async_trait::async_trait;
use tug_agent::net::{Claims, NetAgent, Owner, serve};
use tug_net::plumb::{HostNet, Plumber};
use tug_net::{Claim, Mac, PoolSpec};

use super::common::percentile;
use crate::cmd::print_json;
use crate::table::{self, Table};

/// Arguments of `tug bench net`.
#[derive(clap::Args)]
pub struct NetArgs {
    /// Containers plumbed one at a time (latency), then as many all at once (per second).
    #[arg(long, default_value_t = 100)]
    containers: usize,
    /// Containers created on Docker's bridge network (and again with none) for comparison;
    /// 0 skips Docker.
    #[arg(long, default_value_t = 20)]
    docker: usize,
    /// The image for the Docker comparison (must be present locally and have `sleep`).
    #[arg(long, env = "TUG_BENCH_IMAGE", default_value = "tugboat-test-busybox:1")]
    image: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Addresses handed out in this process: the server's choice (`tug_net::claim::choose`) without
/// the server round trip, which the agent stream adds on top.
struct LocalClaims {
    pool: PoolSpec,
    taken: Mutex<HashSet<Ipv4Addr>>,
}

#[async_trait]
impl Claims for LocalClaims {
    async fn claim(&self, _pool: &str, instance: &str) -> Result<(PoolSpec, Claim), String> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let ip = tug_net::claim::choose(&self.pool, instance, &taken).map_err(|e| e.to_string())?;
        taken.insert(ip);
        let claim = Claim { pool: self.pool.name.clone(), name: instance.into(), ip, mac: Mac::for_ip(ip), agent: None };
        Ok((self.pool.clone(), claim))
    }
    async fn release(&self, _pool: &str, _instance: &str) -> Result<(), String> {
        Ok(())
    }
}

/// A network namespace, deleted (with everything plumbed into it) on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs the benchmark.
pub(super) async fn run(a: NetArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tug bench net needs root: it creates network namespaces and veth pairs");
    }
    let dwait = tug_agent::runtime::docker::find_dwait()
        .context("no dwait binary: set TUG_DWAIT or put dwait next to tug (scripts/test builds it)")?;
    let host = Netns(format!("tugbn{}", std::process::id()));
    let st = Command::new("ip").args(["netns", "add", &host.0]).status()?;
    anyhow::ensure!(st.success(), "ip netns add {} failed", host.0);
    let pool: PoolSpec = serde_json::from_value(serde_json::json!({
        "name": "bench", "cidr": "10.250.0.0/16", "segment": {"kind": "vxlan", "id": 4250}, "gateway": "10.250.0.1"
    }))?;
    let claims = Arc::new(LocalClaims { pool, taken: Mutex::new(HashSet::new()) });
    let plumber = Plumber::new(HostNet {
        netns: Some(format!("/run/netns/{}", host.0).into()),
        vtep: Some(Ipv4Addr::new(192, 168, 250, 1)),
        ..HostNet::default()
    });
    let net = Arc::new(NetAgent::new(claims, plumber));
    let dir = tempfile::tempdir()?;
    let net_dir = dir.path().join("net");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let (net, d) = (net.clone(), net_dir.clone());
        async move { serve(&d, net, async { let _ = stop_rx.await; }).await }
    });
    while !net_dir.join("dresponse.sock").exists() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // One at a time: the latency a container sees. Then all at once: what a host plumbs per second.
    let (mut ready_ms, _) = ask_all(&net, &dwait, dir.path(), 0, a.containers, 1).await?;
    let (_, wall) = ask_all(&net, &dwait, dir.path(), a.containers, a.containers, a.containers).await?;
    let _ = stop_tx.send(());
    let _ = server.await;
    ready_ms.sort_by(f64::total_cmp);
    let plumbed_per_s = a.containers as f64 / wall;

    let docker = if a.docker > 0 { Some((docker_start_ms(&a.image, "none", a.docker)?, docker_start_ms(&a.image, "bridge", a.docker)?)) } else { None };

    let p = |v: &[f64], q| percentile(v, q);
    if a.json {
        return print_json(&serde_json::json!({
            "containers": a.containers,
            "network_ready_ms": {"p50": p(&ready_ms, 0.5), "p99": p(&ready_ms, 0.99), "max": p(&ready_ms, 1.0)},
            "plumbed_per_s": plumbed_per_s,
            "docker": docker.as_ref().map(|(none, bridge)| serde_json::json!({
                "containers": a.docker,
                "start_none_ms": {"p50": p(none, 0.5), "p99": p(none, 0.99)},
                "start_bridge_ms": {"p50": p(bridge, 0.5), "p99": p(bridge, 0.99)},
            })),
        }));
    }
    let mut t = Table::new(&["WHAT", "N", "P50 MS", "P99 MS", "PER S"]);
    t.row(vec![
        "tug: dwait asks -> network ready, one at a time; plumbed/s all at once".into(),
        a.containers.to_string(),
        format!("{:.2}", p(&ready_ms, 0.5)),
        format!("{:.2}", p(&ready_ms, 0.99)),
        format!("{plumbed_per_s:.0}"),
    ]);
    if let Some((none, bridge)) = &docker {
        for (what, v) in [("docker: create + start, --network none", none), ("docker: create + start, --network bridge", bridge)] {
            t.row(vec![
                what.into(),
                a.docker.to_string(),
                format!("{:.1}", p(v, 0.5)),
                format!("{:.1}", p(v, 0.99)),
                format!("{:.1}", 1000.0 / p(v, 0.5).max(f64::MIN_POSITIVE)),
            ]);
        }
        t.row(vec![
            "docker's bridge network (bridge less none, p50)".into(),
            a.docker.to_string(),
            format!("{:.1}", p(bridge, 0.5) - p(none, 0.5)),
            "-".into(),
            "-".into(),
        ]);
    }
    table::print(&t);
    Ok(())
}

/// Starts containers `first..first + n` (dwait in a namespace of its own), `at_once` at a time;
/// returns each one's network-ready time as its dwait measured it, and the seconds from letting
/// each batch go to its last one ready, summed.
async fn ask_all(net: &NetAgent, dwait: &std::path::Path, dir: &std::path::Path, first: usize, n: usize, at_once: usize) -> anyhow::Result<(Vec<f64>, f64)> {
    let net_dir = dir.join("net");
    let mut wall = 0.0;
    let mut ready_ms = Vec::new();
    let mut next = first;
    while next < first + n {
        let batch: Vec<usize> = (next..(next + at_once).min(first + n)).collect();
        next += batch.len();
        let (mut children, mut gates) = (Vec::new(), Vec::new());
        for i in batch {
            // Held at a gate (a shell reading a line, then exec'ing unshare, which execs dwait:
            // one pid) until dresponse knows the pid as the instance's owner, as the docker
            // runtime names a container before starting it.
            let mut child = Command::new("sh")
                .args(["-c", "read _ && exec unshare -n \"$0\" \"$@\""])
                .arg(dwait)
                .arg("serve")
                .arg(dir.join(format!("c{i}.sock")))
                .env("TUG_NET_POOL", "bench")
                .env("TUG_NET_INSTANCE", format!("job/bench{i}/0"))
                .env("TUG_NET_SOCKET", net_dir.join("dresponse.sock"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting dwait under unshare")?;
            net.expect(&format!("job/bench{i}/0"), Owner::Process(child.id()));
            let gate = child.stdin.take().context("the gate's stdin")?;
            gates.push(gate);
            children.push(child);
        }
        let start = StdInstant::now();
        for mut gate in gates {
            std::io::Write::write_all(&mut gate, b"go\n").context("opening a container's gate")?;
        }
        for child in &mut children {
            let stderr = child.stderr.take().context("dwait's stderr")?;
            let line = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut line);
                line
            })
            .await?;
            let ms = line
                .rsplit_once(" in ")
                .and_then(|(_, t)| t.trim().strip_suffix(" ms"))
                .and_then(|t| t.parse::<f64>().ok())
                .with_context(|| format!("dwait did not get its network: {line}"))?;
            ready_ms.push(ms);
        }
        wall += start.elapsed().as_secs_f64();
        for mut c in children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    Ok((ready_ms, wall))
}

/// Milliseconds to create and start each of `n` containers on `network`, one after another,
/// sorted; the containers are removed afterwards.
fn docker_start_ms(image: &str, network: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..n {
        let t = StdInstant::now();
        let o = Command::new("docker").args(["run", "-d", "--network", network, image, "sleep", "60"]).output()?;
        anyhow::ensure!(o.status.success(), "docker run failed: {}", String::from_utf8_lossy(&o.stderr).trim());
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        ids.push(String::from_utf8_lossy(&o.stdout).trim().to_owned());
    }
    let _ = Command::new("docker").args(["rm", "-f"]).args(&ids).stdout(Stdio::null()).status();
    out.sort_by(f64::total_cmp);
    Ok(out)
}
