//! Simulated hosts for multi-host tests: a Linux bridge in the root network namespace, and per
//! host a network namespace joined to it by a veth pair. `tug server` runs in the root namespace
//! and listens for agents on the bridge's address; each `tug agent run` runs inside its host's
//! namespace (`ip netns exec`), so cutting a host's link is a real, silent network partition.
//!
//! Names carry the test process's id and a per-process counter, so tests running in parallel (in
//! one binary or several) never share a bridge, namespace or subnet. Everything is torn down on
//! drop, panics included; leftovers of test processes that were killed are swept at start-up.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

/// The `tug` binary under test.
pub const TUG: &str = env!("CARGO_BIN_EXE_tug");

/// Prefix of every namespace, bridge and veth these tests create (`ip` names are at most 15
/// bytes: the prefix, the pid in hex, the counter and the host index fit).
const PREFIX: &str = "tg";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip args`, panicking with its error output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run `ip {}`: {e}; multi-host tests need iproute2 (apt-get install iproute2)", args.join(" "))
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {}; multi-host tests need root (CAP_NET_ADMIN) and network namespaces",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `ip args` and returns its output, ignoring failures (for teardown and sweeping).
fn ip_quiet(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid (hex) in one of our names, `tg<b|h|n><pid hex>x...`.
fn owner_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = rest.get(1..)?;
    let hex = rest.split('x').next()?;
    u32::from_str_radix(hex, 16).ok()
}

/// Deletes namespaces and links left behind by test processes that no longer exist.
fn sweep() {
    for line in ip_quiet(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(&format!("{PREFIX}n")) && owner_of(name).is_some_and(|p| !pid_alive(p)) {
            kill_netns_pids(name);
            ip_quiet(&["netns", "del", name]);
        }
    }
    for line in ip_quiet(&["-o", "link", "show"]).lines() {
        // "12: tgb1a2bx0@...: <...>" or "12: tgb1a2bx0: <...>"
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        if (name.starts_with(&format!("{PREFIX}b")) || name.starts_with(&format!("{PREFIX}h")))
            && owner_of(name).is_some_and(|p| !pid_alive(p))
        {
            ip_quiet(&["link", "del", name]);
        }
    }
}

fn kill_netns_pids(ns: &str) {
    for pid in ip_quiet(&["netns", "pids", ns]).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// A /24 on no interface and in no route of this machine, chosen from the pid and `n`.
fn free_subnet(n: u32) -> (u8, u8) {
    let taken = ip_quiet(&["-4", "-o", "addr", "show"]) + "\n" + &ip_quiet(&["-4", "route", "show"]);
    let taken: Vec<&str> = taken.split_whitespace().filter(|w| w.starts_with("10.")).collect();
    let start = (std::process::id().wrapping_mul(7919).wrapping_add(n.wrapping_mul(131))) % (200 * 250);
    for k in 0..(200 * 250) {
        let v = (start + k) % (200 * 250);
        let (x, y) = (50 + (v / 250) as u8, (v % 250) as u8 + 1);
        let prefix = format!("10.{x}.{y}.");
        if !taken.iter().any(|w| w.starts_with(&prefix)) {
            return (x, y);
        }
    }
    panic!("no free 10.x.y.0/24 subnet for the test bridge");
}

/// A bridge and its hosts. Dropping it kills every process in the hosts' namespaces and deletes
/// the namespaces, veths and bridge.
pub struct Net {
    /// The bridge's name.
    pub bridge: String,
    /// `10.X.Y`: the subnet's first three octets.
    prefix: String,
    hosts: Vec<Host>,
    id: String,
}

/// One simulated host: a namespace and the veth pair joining it to the bridge.
pub struct Host {
    /// The network namespace.
    pub ns: String,
    /// The veth end on the bridge (root namespace): set it down to cut the host's link.
    pub link: String,
    /// The host's address.
    pub addr: String,
}

impl Net {
    /// Creates the bridge with address `10.X.Y.1/24` and `hosts` namespaces `10.X.Y.2..`.
    /// Panics, with what is wrong, when not root or when `ip` fails.
    pub fn new(hosts: usize) -> Net {
        assert!(
            nix::unistd::geteuid().is_root(),
            "multi-host tests need root: they create network namespaces, veth pairs and a bridge \
             (run `cargo test` as root, as CI does with ./scripts/test)"
        );
        sweep();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}x{n}", std::process::id());
        let (x, y) = free_subnet(n);
        let mut net = Net { bridge: format!("{PREFIX}b{id}"), prefix: format!("10.{x}.{y}"), hosts: Vec::new(), id };
        assert!(net.bridge.len() <= 15, "interface name {} is too long", net.bridge);
        ip(&["link", "add", &net.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}/24", net.server_addr()), "dev", &net.bridge]);
        ip(&["link", "set", &net.bridge, "up"]);
        // Host-to-host traffic crosses the bridge. Where bridged packets go through iptables
        // (br_netfilter, loaded by Docker) and FORWARD drops by default (Docker's policy), let this
        // bridge's own traffic through, as a real switch would.
        forward_rule("-I", &net.bridge);
        for i in 0..hosts {
            net.add_host(i);
        }
        net
    }

    fn add_host(&mut self, i: usize) {
        let host = Host {
            ns: format!("{PREFIX}n{}h{i}", self.id),
            link: format!("{PREFIX}h{}h{i}", self.id),
            addr: format!("{}.{}", self.prefix, i + 2),
        };
        let peer = format!("{PREFIX}p{}h{i}", self.id);
        assert!(host.link.len() <= 15 && peer.len() <= 15, "interface name {} is too long", host.link);
        // Pushed first so that a failure below still tears down what exists.
        let (ns, link) = (host.ns.clone(), host.link.clone());
        let addr = host.addr.clone();
        self.hosts.push(host);
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["link", "set", &link, "master", &self.bridge]);
        ip(&["link", "set", &link, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &peer]);
        ip(&["-n", &ns, "link", "set", &peer, "up"]);
    }

    /// The server's address on the bridge.
    pub fn server_addr(&self) -> String {
        format!("{}.1", self.prefix)
    }

    /// Host `i`.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Cuts host `i`'s link (packets are silently dropped) or restores it.
    pub fn set_link(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.hosts[i].link, if up { "up" } else { "down" }]);
    }

    /// A free TCP port on the bridge's address.
    pub fn free_port(&self) -> u16 {
        std::net::TcpListener::bind((self.server_addr().as_str(), 0)).unwrap().local_addr().unwrap().port()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            kill_netns_pids(&h.ns);
        }
        for h in &self.hosts {
            ip_quiet(&["link", "del", &h.link]);
            ip_quiet(&["netns", "del", &h.ns]);
        }
        forward_rule("-D", &self.bridge);
        ip_quiet(&["link", "del", &self.bridge]);
    }
}

/// Inserts (`-I`) or deletes (`-D`) the rule that accepts forwarding within `bridge`; nothing when
/// there is no iptables.
fn forward_rule(op: &str, bridge: &str) {
    let _ = Command::new("iptables")
        .args([op, "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A child process with its output (stdout and stderr) in a file; SIGKILLed
/// on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args`, output to `log` (appended, so a restart keeps the earlier output).
    pub fn spawn(program: &str, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .env_remove("TUG_JOIN_TOKEN")
            .env_remove("TUG_SERVER")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Proc { child, log }
    }

    /// Its pid.
    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// `kill -9`, and reaps it.
    pub fn kill9(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// What it wrote so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The arguments of `tug agent run` for one agent.
pub struct AgentArgs<'a> {
    /// `--name`.
    pub name: &'a str,
    /// `--attributes`, e.g. `rack=a`.
    pub attributes: &'a str,
    /// `cpus=` of `--resources`.
    pub cpus: &'a str,
    /// `--join-token`.
    pub token: &'a str,
}

/// A server in the root namespace and agents in their hosts' namespaces.
pub struct Cluster {
    /// Agents by host index (`None` while stopped).
    pub agents: Vec<Option<Proc>>,
    /// The server (`None` while stopped).
    pub server: Option<Proc>,
    /// The bridge and hosts.
    pub net: Net,
    /// The API's URL (on 127.0.0.1).
    pub api: String,
    /// The URL agents join (on the bridge), https: agents join over mTLS.
    pub agent_url: String,
    /// `tug certs init`'s directory: the CA, the server's certificate and each agent's.
    pub certs: PathBuf,
    api_port: u16,
    agent_port: u16,
    server_args: Vec<String>,
    /// Data dirs and logs.
    pub dir: tempfile::TempDir,
}

/// The join token of the test cluster.
pub const TOKEN: &str = "multi-host-test-token";

impl Cluster {
    /// Creates `hosts` hosts and starts the server (with `server_extra` arguments, where
    /// `{certs}` is [`Cluster::certs`]), waiting until it listens. Agents are started with [`Cluster::start_agent`].
    pub async fn new(hosts: usize, server_extra: &[&str]) -> Cluster {
        let net = Net::new(hosts);
        let dir = tempfile::tempdir().unwrap();
        let api_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let agent_port = net.free_port();
        let agent_listen = format!("{}:{agent_port}", net.server_addr());
        // The agent stream runs over mTLS: a server certificate for the bridge address, and a
        // client certificate per agent (made as each starts).
        let certs = dir.path().join("certs");
        let made = std::process::Command::new(TUG)
            .args(["certs", "init", certs.to_str().unwrap(), "--name", &net.server_addr()])
            .output()
            .unwrap();
        assert!(made.status.success(), "tug certs init: {}", String::from_utf8_lossy(&made.stderr));
        let cert = |name: &str| certs.join(name).to_str().unwrap().to_owned();
        let mut server_args: Vec<String> = [
            "server",
            "--listen",
            &format!("127.0.0.1:{api_port}"),
            "--agent-listen",
            &agent_listen,
            "--join-token",
            TOKEN,
            "--data-dir",
            dir.path().join("server").to_str().unwrap(),
            "--tls-cert",
            &cert("server.pem"),
            "--tls-key",
            &cert("server-key.pem"),
            "--agent-ca",
            &cert("ca.pem"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // `{certs}` in an argument stands for that directory (e.g. `{certs}/ca-key.pem`).
        server_args.extend(server_extra.iter().map(|s| s.replace("{certs}", certs.to_str().unwrap())));
        let mut c = Cluster {
            agents: (0..hosts).map(|_| None).collect(),
            server: None,
            api: format!("https://127.0.0.1:{api_port}"),
            agent_url: format!("https://{agent_listen}"),
            certs,
            net,
            api_port,
            agent_port,
            server_args,
            dir,
        };
        c.start_server().await;
        c
    }

    /// An HTTP client that trusts the cluster's CA (the API is served over https).
    pub fn http(&self) -> reqwest::Client {
        let tls = tug_tls::ClientTls::new(Some(&self.certs.join("ca.pem")), None).unwrap();
        reqwest::Client::builder().tls_backend_preconfigured(tls.for_http().unwrap()).build().unwrap()
    }

    /// Starts the server (again, on the same ports and data dir) and waits until it listens.
    pub async fn start_server(&mut self) {
        let server = Proc::spawn(TUG, &self.server_args, self.dir.path().join("server.log"));
        self.server = Some(server);
        let (api_port, agent_port, addr) = (self.api_port, self.agent_port, self.net.server_addr());
        until(Duration::from_secs(15), || format!("the server to listen\n{}", self.logs()), || {
            let up = std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok()
                && std::net::TcpStream::connect((addr.as_str(), agent_port)).is_ok();
            async move { up.then_some(()) }
        })
        .await;
    }

    /// Stops the server and starts it again with `extra` arguments added.
    pub async fn restart_server_with(&mut self, extra: &[String]) {
        self.kill_server();
        self.server_args.extend_from_slice(extra);
        self.start_server().await;
    }

    /// Gives the server's `flag` the value `value` from its next start.
    pub fn set_server_arg(&mut self, flag: &str, value: &str) {
        let i = self.server_args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("the server has no {flag}"));
        self.server_args[i + 1] = value.to_owned();
    }

    /// `kill -9` of the server.
    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.kill9();
        }
    }

    /// Starts an agent on host `i` (its data dir and log are named after the agent).
    pub fn start_agent(&mut self, i: usize, a: &AgentArgs) {
        self.start_agent_with(i, a, &[]);
    }

    /// Starts an agent on host `i` with `extra` arguments of `tug agent run`, joining over mTLS
    /// with a certificate for its name.
    pub fn start_agent_with(&mut self, i: usize, a: &AgentArgs, extra: &[String]) {
        let tls = self.agent_tls(a.name);
        self.start_agent_tls(i, a, &tls, extra);
    }

    /// The TLS arguments of an agent named `name`: the CA, and its own certificate (made now if
    /// it has none yet).
    pub fn agent_tls(&self, name: &str) -> Vec<String> {
        let cert = self.certs.join(format!("agent-{name}.pem"));
        if !cert.exists() {
            let made = std::process::Command::new(TUG).args(["certs", "agent", self.certs.to_str().unwrap(), name]).output().unwrap();
            assert!(made.status.success(), "tug certs agent: {}", String::from_utf8_lossy(&made.stderr));
        }
        let key = self.certs.join(format!("agent-{name}-key.pem"));
        ["--ca", self.certs.join("ca.pem").to_str().unwrap(), "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The TLS arguments of an agent that gets its certificate from the server: the CA only.
    pub fn agent_ca_only(&self) -> Vec<String> {
        vec!["--ca".to_string(), self.certs.join("ca.pem").to_str().unwrap().to_owned()]
    }

    /// The data dir of the agent named `name`.
    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("agents").join(name)
    }

    /// Starts an agent on host `i` with `tls` (see [`Cluster::agent_tls`]) and `extra` arguments.
    pub fn start_agent_tls(&mut self, i: usize, a: &AgentArgs, tls: &[String], extra: &[String]) {
        let data = self.dir.path().join("agents").join(a.name);
        let mut args: Vec<String> = ["netns", "exec", &self.net.host(i).ns, TUG, "agent", "run"].iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "--server",
                &self.agent_url,
                "--name",
                a.name,
                "--resources",
                &format!("cpus={},mem=1GiB,disk=1GiB", a.cpus),
                "--join-token",
                a.token,
                "--data-dir",
                data.to_str().unwrap(),
                "--log",
                "info",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        if !a.attributes.is_empty() {
            args.extend(["--attributes".to_string(), a.attributes.to_string()]);
        }
        args.extend(tls.iter().cloned());
        args.extend(extra.iter().cloned());
        // `ip netns exec` execs the command, so the pid is the agent's.
        self.agents[i] = Some(Proc::spawn("ip", &args, self.dir.path().join(format!("{}.log", a.name))));
    }

    /// Stops host `i`'s agent as an operator would (SIGTERM) and waits until it has exited: it
    /// leaves its runs going and tells the server it will be back.
    pub fn stop_agent(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            let _ = nix::sys::signal::kill(a.pid(), nix::sys::signal::Signal::SIGTERM);
            let _ = a.child.wait();
        }
    }

    /// `kill -9` of host `i`'s agent process only (not the runs it started).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut a) = self.agents[i].take() {
            a.kill9();
        }
    }

    /// The server's and agents' output, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(rd) = std::fs::read_dir(self.dir.path()) {
            let mut logs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "log")).collect();
            logs.sort();
            for p in logs {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                // The tail is what explains a failure; whole logs drown the message.
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                s.push_str(&format!("--- {} (last {} lines)\n", p.file_name().unwrap().to_string_lossy(), tail.len()));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Waits until every named agent is `up` at the server.
    pub async fn wait_agents_up(&self, names: &[&str]) {
        until(Duration::from_secs(20), || format!("agents {names:?} up\n{}", self.logs()), || async {
            let agents = self.get("/agents").await;
            let up = |n: &str| agents.as_array().into_iter().flatten().any(|a| a["name"] == n && a["state"] == "up");
            names.iter().all(|n| up(n)).then_some(())
        })
        .await;
    }

    /// GET of an API path under /api/v1 (Null when the server does not answer).
    pub async fn get(&self, path: &str) -> Value {
        match self.http().get(format!("{}/api/v1{path}", self.api)).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// GET of an API path under /api/v1 as text, with its status.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self.http().get(format!("{}/api/v1{path}", self.api)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// POST of JSON to an API path under /api/v1; panics unless it succeeds.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let r = self.http().post(format!("{}/api/v1{path}", self.api)).json(&body).send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {v}");
        v
    }

    /// Creates a job that runs only when asked (`@yearly`) and runs it now.
    pub async fn create_and_run(&self, spec: Value) {
        let name = spec["name"].as_str().unwrap().to_string();
        self.post("/jobs", spec).await;
        self.post(&format!("/jobs/{name}/run"), serde_json::json!({})).await;
    }

    /// The runs of a job, newest first.
    pub async fn runs(&self, job: &str) -> Vec<Value> {
        self.get(&format!("/jobs/{job}/runs")).await["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits up to `limit` for a run of `job` that satisfies `pred`.
    pub async fn wait_run(&self, job: &str, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        until(limit, || format!("{what}; runs of {job}: {:?}\n{}", self.runs_now(job), self.logs()), || async {
            self.runs(job).await.into_iter().find(|r| pred(r))
        })
        .await
    }

    /// The runs of a job, from a blocking context (failure messages).
    fn runs_now(&self, job: &str) -> String {
        let url = format!("{}/api/v1/jobs/{job}/runs", self.api);
        let http = self.http();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async { http.get(url).send().await.ok()?.text().await.ok() })
        })
        .join()
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    /// A path in the cluster's temporary directory (e.g. for marker files).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Polls `f` every 100 ms until it returns Some, or panics after `limit` with `what`.
pub async fn until<T, F: Future<Output = Option<T>>>(limit: Duration, what: impl Fn() -> String, mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {}", what());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lines of a marker file (none when it does not exist).
pub fn marker_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}
