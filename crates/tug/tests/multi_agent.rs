//! `tug server` with two `tug agent run` processes on 127.0.0.1: placement by resources, a
//! `kill -9`ed agent's run lost and retried on the other agent, and a wrong join token refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const TUG: &str = env!("CARGO_BIN_EXE_tug");
const TOKEN: &str = "multi-agent-test-token";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process with its output in a file; SIGTERMed (then killed) on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(args: &[&str], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(TUG)
            .args(args)
            .env_remove("TUG_JOIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent(dir: &Path, agent_url: &str, name: &str, cpus: &str, token: &str) -> Proc {
    let data = dir.join(name);
    Proc::spawn(
        &[
            "agent",
            "run",
            "--server",
            agent_url,
            "--name",
            name,
            "--resources",
            &format!("cpus={cpus},mem=1GiB,disk=1GiB"),
            "--join-token",
            token,
            "--data-dir",
            data.to_str().unwrap(),
            "--log",
            "info",
        ],
        dir.join(format!("{name}.log")),
    )
}

async fn get(api: &str, path: &str) -> Value {
    reqwest::get(format!("{api}/api/v1{path}")).await.unwrap().json().await.unwrap()
}

async fn post(api: &str, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new().post(format!("{api}/api/v1{path}")).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {path}: {status} {v}");
    v
}

/// Polls `f` every 200 ms until it returns Some, or panics after `limit` with `what`.
async fn until<T, F: Future<Output = Option<T>>>(limit: Duration, what: impl Fn() -> String, mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {}", what());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn runs(api: &str, job: &str) -> Vec<Value> {
    get(api, &format!("/jobs/{job}/runs")).await["items"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_agents_place_lose_retry_and_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let (api_port, agent_port) = (free_port(), free_port());
    let api = format!("http://127.0.0.1:{api_port}");
    let agent_url = format!("http://127.0.0.1:{agent_port}");
    let server = Proc::spawn(
        &[
            "server",
            "--listen",
            &format!("127.0.0.1:{api_port}"),
            "--agent-listen",
            &format!("127.0.0.1:{agent_port}"),
            "--join-token",
            TOKEN,
            "--data-dir",
            dir.path().join("server").to_str().unwrap(),
        ],
        dir.path().join("server.log"),
    );
    until(Duration::from_secs(10), || format!("server listening\n{}", server.output()), || async {
        (std::net::TcpStream::connect(("127.0.0.1", agent_port)).is_ok()
            && std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok())
        .then_some(())
    })
    .await;

    // A wrong join token: refused with a clear message, and the agent exits non-zero.
    let mut bad = agent(dir.path(), &agent_url, "intruder", "1", "wrong-token");
    let status = until(Duration::from_secs(10), || "the refused agent to exit".into(), || {
        let s = bad.child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(!status.success(), "a refused agent exits non-zero");
    assert!(bad.output().contains("join token refused"), "refusal is explained:\n{}", bad.output());

    let big = agent(dir.path(), &agent_url, "big", "4", TOKEN);
    let small = agent(dir.path(), &agent_url, "small", "1", TOKEN);
    let logs = || format!("server:\n{}\nbig:\n{}\nsmall:\n{}", server.output(), big.output(), small.output());
    until(Duration::from_secs(15), || format!("both agents up\n{}", logs()), || async {
        let agents = get(&api, "/agents").await;
        let up = |n: &str| agents.as_array().into_iter().flatten().any(|a| a["name"] == n && a["state"] == "up");
        (up("big") && up("small")).then_some(())
    })
    .await;
    let intruder_listed = get(&api, "/agents").await.as_array().unwrap().iter().any(|a| a["name"] == "intruder");
    assert!(!intruder_listed, "a refused agent is not registered");

    // Two cpus: only `big` can run it.
    post(&api, "/jobs", json!({"name": "heavy", "schedule": "@yearly", "command": ["true"], "resources": {"cpus": 2}})).await;
    post(&api, "/jobs/heavy/run", json!({})).await;
    let run = until(Duration::from_secs(10), || format!("heavy to finish\n{}", logs()), || async {
        runs(&api, "heavy").await.into_iter().find(|r| r["state"] == "succeeded")
    })
    .await;
    assert_eq!(run["agent"], "big", "{run}");

    // A long run; kill -9 its agent: it is lost and retried on the other one.
    post(
        &api,
        "/jobs",
        json!({"name": "long", "schedule": "@yearly", "command": ["sleep", "20"], "resources": {"cpus": 0.5},
               "retries": {"count": 1, "initial_delay": "1s", "max_delay": "1s"}}),
    )
    .await;
    post(&api, "/jobs/long/run", json!({})).await;
    let first = until(Duration::from_secs(10), || format!("long to run\n{}", logs()), || async {
        runs(&api, "long").await.into_iter().find(|r| r["state"] == "running")
    })
    .await;
    let (victim, survivor) = if first["agent"] == "big" { (&big, "small") } else { (&small, "big") };
    nix::sys::signal::kill(victim.pid(), nix::sys::signal::Signal::SIGKILL).unwrap();
    let killed_at = tokio::time::Instant::now();
    // Agent timeout (10 s) + the retry delay + slack.
    let retried = until(Duration::from_secs(18), || format!("long retried on {survivor}\n{}", logs()), || async {
        runs(&api, "long").await.into_iter().find(|r| r["state"] == "running" && r["agent"] == survivor && r["attempt"] == 2)
    })
    .await;
    assert_eq!(retried["id"], first["id"], "the same run is retried: {retried}");
    assert!(killed_at.elapsed() >= Duration::from_secs(5), "retried only after the agent timeout");
    drop(bad);
}
