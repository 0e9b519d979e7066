//! `dresponse` and `dwait` against the real kernel: a "container" is the real `dwait` binary in a
//! network namespace of its own (`unshare -n`), the host a network namespace with a VXLAN pool.
//! Addresses come from a fixed table behind the `Claims` trait (the server's side has its own
//! tests). Needs root; skipped without it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tug_agent::net::{Claims, NetAgent, Owner, serve};
use tug_net::plumb::{HostNet, Plumber};
use tug_net::{Claim, Mac, PoolSpec};

fn unique() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The dwait binary: `TUG_DWAIT`, or the workspace's debug build.
fn dwait() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TUG_DWAIT") {
        return Some(p.into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let p = target.join("debug/dwait");
    p.exists().then_some(p)
}

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("tugdr{}", unique());
        assert!(Command::new("ip").args(["netns", "add", &name]).status().unwrap().success());
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// One pool, one address per instance, counted.
struct Table {
    pool: PoolSpec,
    claims: AtomicU32,
}

#[async_trait]
impl Claims for Table {
    async fn claim(&self, pool: &str, instance: &str) -> Result<(PoolSpec, Claim), String> {
        if pool != self.pool.name {
            return Err(format!("network pool {pool:?} not found"));
        }
        self.claims.fetch_add(1, Ordering::SeqCst);
        let ip = Ipv4Addr::new(10, 95, 0, 20);
        Ok((self.pool.clone(), Claim { pool: pool.into(), name: instance.into(), ip, mac: Mac::for_ip(ip), agent: Some("h".into()) }))
    }
    async fn release(&self, _pool: &str, _instance: &str) -> Result<(), String> {
        Ok(())
    }
}

fn table() -> Arc<Table> {
    let pool = serde_json::from_value(serde_json::json!({
        "name": "blue", "cidr": "10.95.0.0/24", "segment": {"kind": "vxlan", "id": 9500}, "gateway": "10.95.0.1"
    }))
    .unwrap();
    Arc::new(Table { pool, claims: AtomicU32::new(0) })
}

/// dwait as a container's PID 1 would run it, in a namespace of its own, held at the gate until
/// [`start`] (so its pid can be named the instance's owner before it asks, as the docker runtime
/// names a container before starting it): a shell that reads a line, then execs unshare, which
/// execs dwait, all as one pid.
fn container(dwait: &PathBuf, dir: &std::path::Path, pool: &str, timeout: u32) -> Child {
    Command::new("sh")
        .args(["-c", "read _ && exec unshare -n \"$0\" \"$@\""])
        .arg(dwait)
        .arg("serve")
        .arg(dir.join("dwait.sock"))
        .env("TUG_NET_POOL", pool)
        .env("TUG_NET_INSTANCE", "job/web/0")
        .env("TUG_NET_SOCKET", dir.join("net/dresponse.sock"))
        .env("TUG_NET_TIMEOUT", timeout.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Lets a gated container go.
fn start(c: &mut Child) {
    use std::io::Write;
    c.stdin.take().unwrap().write_all(b"go\n").unwrap();
}

async fn wait_for(path: PathBuf) -> bool {
    for _ in 0..500 {
        if path.exists() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn setup() -> Option<(PathBuf, Netns, tempfile::TempDir)> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: plumbing needs root");
        return None;
    }
    let Some(dwait) = dwait() else {
        eprintln!("skipped: no dwait binary (cargo build -p dwait, or set TUG_DWAIT)");
        return None;
    };
    Some((dwait, Netns::new(), tempfile::tempdir().unwrap()))
}

fn plumber(host: &Netns) -> Plumber {
    Plumber::new(HostNet {
        netns: Some(format!("/run/netns/{}", host.0).into()),
        vtep: Some("192.168.95.1".parse().unwrap()),
        ..HostNet::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dwait_starts_serving_only_once_its_network_is_plumbed_and_survives_a_dresponse_restart() {
    let Some((dwait, host, dir)) = setup() else { return };
    let claims = table();
    let net = Arc::new(NetAgent::new(claims.clone(), plumber(&host)));
    // dwait starts first and waits: no dresponse yet.
    let mut c = container(&dwait, dir.path(), "blue", 30);
    let owner = Owner::Process(c.id());
    net.expect("job/web/0", owner.clone());
    start(&mut c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!dir.path().join("dwait.sock").exists(), "dwait must not serve before its network is ready");
    // A dresponse that dies mid-answer: it accepts and closes. dwait retries.
    std::fs::create_dir_all(dir.path().join("net")).unwrap();
    {
        let l = tokio::net::UnixListener::bind(dir.path().join("net/dresponse.sock")).unwrap();
        let (s, _) = tokio::time::timeout(Duration::from_secs(5), l.accept()).await.unwrap().unwrap();
        drop(s);
    }
    assert!(c.try_wait().unwrap().is_none(), "a dresponse restart must not end dwait");
    // The real one.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let (net, d) = (net.clone(), dir.path().join("net"));
        async move { serve(&d, net, async { let _ = stop_rx.await; }).await }
    });
    assert!(wait_for(dir.path().join("dwait.sock")).await, "dwait serves once its network is ready");
    assert_eq!(claims.claims.load(Ordering::SeqCst), 1);
    let pid = c.id().to_string();
    let addr = Command::new("nsenter").args(["-t", &pid, "-n", "ip", "-o", "addr", "show", "eth0"]).output().unwrap();
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(addr.contains("10.95.0.20/24"), "{addr}");
    assert_eq!(net.address("job/web/0"), Some(Ipv4Addr::new(10, 95, 0, 20)));

    // A container that replaced it does not tear its network down; teardown by its owner
    // leaves no veth.
    net.teardown("job/web/0", &Owner::Process(1)).await.unwrap();
    assert_eq!(net.address("job/web/0"), Some(Ipv4Addr::new(10, 95, 0, 20)));
    net.teardown("job/web/0", &owner).await.unwrap();
    assert_eq!(net.address("job/web/0"), None);
    let links = Command::new("ip").args(["-n", &host.0, "-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("tv0a5f0014"));
    let _ = c.kill();
    let _ = c.wait();
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dwait_says_why_when_its_network_never_comes_or_is_refused() {
    let Some((dwait, host, dir)) = setup() else { return };
    // Nobody answers: a timeout that says where to look.
    let mut c = container(&dwait, dir.path(), "blue", 1);
    start(&mut c);
    let out = c.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the network of job/web/0 (pool \"blue\") was not ready within 1s") && err.contains("check the agent's log (dresponse)"),
        "{err}"
    );
    // A refusal is final and says why.
    let net = Arc::new(NetAgent::new(table(), plumber(&host)));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let (d, net) = (dir.path().join("net"), net.clone());
        async move { serve(&d, net, async { let _ = stop_rx.await; }).await }
    });
    assert!(wait_for(dir.path().join("net/dresponse.sock")).await);
    let mut c = container(&dwait, dir.path(), "ghost", 10);
    let ghost = Owner::Process(c.id());
    net.expect("job/web/0", ghost.clone());
    start(&mut c);
    let out = c.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the network of job/web/0 was refused: network pool \"ghost\" not found"), "{err}");
    // A container may ask only for its own network: another process naming the instance (to
    // take its address) is refused, and so is an instance no container was started for.
    let mut impostor = container(&dwait, dir.path(), "blue", 10);
    let pid = impostor.id();
    start(&mut impostor);
    let out = impostor.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("the network of job/web/0 was refused: process {pid} asked for the network of job/web/0, which belongs to process")),
        "{err}"
    );
    net.teardown("job/web/0", &ghost).await.unwrap();
    let mut stranger = container(&dwait, dir.path(), "blue", 10);
    let pid = stranger.id();
    start(&mut stranger);
    let out = stranger.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the network of job/web/0 was refused: no container of job/web/0 was started on this host, so process {pid} cannot have its network"
        )),
        "{err}"
    );
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
