//! A group of three `tug server` processes on real etcd, with an agent that knows all three and
//! jobs firing every second: the leader is killed with SIGKILL, and paused (SIGSTOP) for longer
//! than its lease and resumed. After each fault a new leader fires within 3 s, no run key is
//! launched twice (counted by the runs themselves on the agent's host), and every scheduled
//! second of every job has a run (or a skip with its reason).

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::time::Instant;
use tug_store::testing::EtcdCluster;

const TUG: &str = env!("CARGO_BIN_EXE_tug");
/// The leader's lease in these tests.
const TTL: &str = "2s";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Server {
    name: String,
    api: String,
    agent: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    fn spawn(&mut self, log: &std::path::Path) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = Command::new(TUG).args(&self.args).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        self.child = Some(child);
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The agents' join token in these groups.
const JOIN_TOKEN: &str = "group-join-secret";

struct Group {
    dir: tempfile::TempDir,
    servers: Vec<Server>,
    agent: Option<Child>,
    http: reqwest::Client,
    /// The admin token's file, when the servers need tokens.
    token_file: Option<std::path::PathBuf>,
    _etcd: EtcdCluster,
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        // A failed test's logs outlive its temporary directory.
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!("tug-group-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                if entry.path().is_file() {
                    let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
                }
            }
            eprintln!("logs kept in {}", keep.display());
        }
    }
}

impl Group {
    /// Three servers (`ha-s0..2`) on one etcd with keys under `/PREFIX`, and one agent.
    fn start(prefix: &str) -> Group {
        Group::start_with(prefix, false)
    }

    /// [`Group::start`]; with `auth`, the API needs tokens, and the first leader writes an admin
    /// token to [`Group::token`]'s file.
    fn start_with(prefix: &str, auth: bool) -> Group {
        let etcd = EtcdCluster::start(1);
        let dir = tempfile::tempdir().unwrap();
        let token_file = auth.then(|| dir.path().join("admin.token"));
        let mut servers = Vec::new();
        for i in 0..3 {
            let (api, agent) = (free_port(), free_port());
            let name = format!("{prefix}-s{i}");
            let args: Vec<String> = [
                "server", "--store", &etcd.url(prefix), "--name", &name, "--lease-ttl", TTL,
                "--listen", &format!("127.0.0.1:{api}"), "--agent-listen", &format!("127.0.0.1:{agent}"),
                "--data-dir", &dir.path().join(&name).to_string_lossy(), "--log", "info", "--join-token", JOIN_TOKEN,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut args = args;
            if let Some(file) = &token_file {
                args.extend(["--init-token-file".to_string(), file.to_string_lossy().into_owned()]);
            }
            let mut s = Server { name, api: format!("http://127.0.0.1:{api}"), agent: format!("http://127.0.0.1:{agent}"), args, child: None };
            s.spawn(&dir.path().join(format!("{}.log", s.name)));
            servers.push(s);
        }
        let agents: Vec<&str> = servers.iter().map(|s| s.agent.as_str()).collect();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let agent = Command::new(TUG)
            .args(["agent", "run", "--server", &agents.join(","), "--name", &format!("{prefix}-agent"), "--join-token", JOIN_TOKEN])
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Group { dir, servers, agent: Some(agent), http: tug::http(), token_file, _etcd: etcd }
    }

    /// The admin token, once the first leader has written it (empty without auth).
    fn token(&self) -> String {
        self.token_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()).map(|t| t.trim().to_owned()).unwrap_or_default()
    }

    /// A GET of `path` on server `i`, with the admin token when there is one.
    fn get(&self, i: usize, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(format!("{}{path}", self.servers[i].api));
        match self.token() {
            t if t.is_empty() => req,
            t => req.bearer_auth(t),
        }
    }

    /// `GET /api/v1/cluster` of server `i`.
    async fn cluster(&self, i: usize) -> Option<Value> {
        let resp = self.get(i, "/api/v1/cluster").send().await.ok()?;
        resp.status().is_success().then_some(())?;
        resp.json().await.ok()
    }

    /// The leader, as the live server `ask` sees it, once it is one of `among`.
    async fn leader(&self, ask: usize, not: Option<&str>, within: Duration) -> (usize, Duration) {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(c) = self.cluster(ask).await
                && let Some(name) = c["leader"].as_str()
                && Some(name) != not
                && let Some(i) = self.servers.iter().position(|s| s.name == name)
                // Elected, and serving: its own API says it leads.
                && self.cluster(i).await.is_some_and(|own| own["role"] == "leader")
            {
                return (i, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new leader within {within:?}; logs in {}", self.dir.path().display());
    }

    /// The runs of `job` (newest first), through any server.
    async fn runs(&self, via: usize, job: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/jobs/{job}/runs?limit=1000", self.servers[via].api);
        let page: Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
        page["items"].as_array().cloned().unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_faults_lose_no_fire_and_launch_nothing_twice() {
    let g = Group::start("ha");
    let (mut leader, _) = g.leader(0, None, Duration::from_secs(20)).await;
    let launches = g.dir.path().join("launches");
    let ends = g.dir.path().join("ends");
    let follower = (leader + 1) % 3;
    // Jobs are added through a follower: it passes the write to the leader.
    for j in 0..3 {
        let job = serde_json::json!({
            "name": format!("ha-job-{j}"),
            "schedule": "* * * * * *",
            "command": format!(
                "echo \"$TUG_JOB $TUG_SCHEDULED_AT\" >> {}; sleep 0.{j}; echo \"$TUG_JOB $TUG_SCHEDULED_AT $(date +%s.%N)\" >> {}",
                launches.display(),
                ends.display()
            ),
        });
        let resp = g.http.post(format!("{}/api/v1/jobs", g.servers[follower].api)).json(&job).send().await.unwrap();
        assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut failovers = Vec::new();
    let mut g = g;
    // Killed twice, then paused past its lease.
    for fault in ["kill", "kill", "stop"] {
        let old = leader;
        let ask = (old + 1) % 3;
        let name = g.servers[old].name.clone();
        match fault {
            "kill" => {
                let mut c = g.servers[old].child.take().unwrap();
                c.kill().unwrap();
                c.wait().unwrap();
            }
            _ => kill(g.servers[old].pid(), Signal::SIGSTOP).unwrap(),
        }
        let (new, took) = g.leader(ask, Some(&name), Duration::from_secs(15)).await;
        failovers.push(took);
        leader = new;
        if fault == "kill" {
            let log = g.dir.path().join(format!("{name}.log"));
            g.servers[old].spawn(&log);
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            kill(g.servers[old].pid(), Signal::SIGCONT).unwrap();
            // Resumed, it finds its lease gone and follows.
            let started = Instant::now();
            loop {
                if g.cluster(old).await.is_some_and(|c| c["role"] == "follower" && c["leader"] != name.as_str()) {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(10), "the resumed old leader did not step down");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // Let the last runs end and be reported.
    tokio::time::sleep(Duration::from_secs(2)).await;

    for took in &failovers {
        assert!(*took <= Duration::from_secs(3), "failover took {took:?} (all: {failovers:?})");
    }
    // Launches as the runs themselves recorded them: no key twice.
    let text = std::fs::read_to_string(&launches).unwrap();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        assert!(seen.insert(line.to_owned()), "run key launched twice: {line}\nlogs in {}", g.dir.path().display());
    }
    // Every second of every job, from its first run to a few seconds ago, has a run.
    for j in 0..3 {
        let job = format!("ha-job-{j}");
        let runs = g.runs(leader, &job).await;
        let mut by_second: BTreeMap<i64, Value> = BTreeMap::new();
        for r in runs.iter().filter(|r| r["trigger"] == "schedule") {
            let at: jiff::Timestamp = r["scheduled_at"].as_str().unwrap().parse().unwrap();
            assert!(by_second.insert(at.as_second(), r.clone()).is_none(), "two runs of {job} at {at}");
        }
        let (first, last) = (*by_second.keys().next().unwrap(), *by_second.keys().last().unwrap());
        for s in first..=last - 3 {
            let run = by_second.get(&s).unwrap_or_else(|| panic!("{job}: no run for second {s}; logs in {}", g.dir.path().display()));
            if run["state"] == "skipped" {
                assert!(run["reason"].as_str().is_some_and(|r| !r.is_empty()), "a skip says why: {run}");
            }
        }
        let launched = text.lines().filter(|l| l.starts_with(&format!("{job} "))).count();
        assert!(launched >= 10, "{job} ran {launched} times");
        // A fire skipped by `forbid` because a run was still active: the run really was (its
        // end, as it wrote it, after the decision, give or take a second for its report). A new
        // leader waits for the agents to report the runs that ended meanwhile.
        for skip in runs.iter().filter(|r| r["state"] == "skipped") {
            let reason = skip["reason"].as_str().unwrap_or_default();
            let Some(ids) = reason.strip_prefix("skipped: run ").and_then(|r| r.split(" still active").next()) else { continue };
            let decided: jiff::Timestamp = skip["created_at"].as_str().unwrap().parse().unwrap();
            for id in ids.split(", ") {
                let active: Value = g.http.get(format!("{}/api/v1/runs/{id}", g.servers[leader].api)).send().await.unwrap().json().await.unwrap();
                let key = format!("{} {} ", active["job"].as_str().unwrap(), active["scheduled_at"].as_str().unwrap());
                let end = std::fs::read_to_string(&ends).unwrap().lines().find_map(|l| l.strip_prefix(&key).map(|t| t.parse::<f64>().unwrap()));
                if let Some(end) = end {
                    let decided = decided.as_millisecond() as f64 / 1000.0;
                    assert!(end + 1.0 > decided, "{job}: the fire at {} was skipped as run {id} was active, but it had ended {:.1}s before; logs in {}", skip["scheduled_at"], decided - end, g.dir.path().display());
                }
            }
        }
    }
    eprintln!("failovers: {failovers:?}");
}

/// `tug cluster` from a follower and from the leader shows the same group; the follower passes
/// other requests to the leader; the leader's metrics say it leads.
/// Polls `GET path` on server `i` until `pred` holds of its JSON; returns it.
async fn wait_json(g: &Group, i: usize, path: &str, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let got = match g.get(i, path).send().await {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
            _ => None,
        };
        if let Some(v) = &got
            && pred(v)
        {
            return v.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(secs), "{path}: {what} within {secs}s; it is {got:?}; logs in {}", g.dir.path().display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_carries_on_with_a_release_in_its_bake() {
    let mut g = Group::start("relha");
    let (leader, _) = g.leader(0, None, Duration::from_secs(20)).await;
    let api = g.servers[leader].api.clone();
    let spec = serde_json::json!({"name": "web", "replicas": 2, "command": "exec sleep 1000", "stop_grace": "1s"});
    let r = g.http.post(format!("{api}/api/v1/services")).json(&spec).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    wait_json(&g, leader, "/api/v1/services/web", 30, "2 healthy", |v| v["status"]["healthy"] == 2).await;
    let body = serde_json::json!({"env": {"V": "2"}, "smoke": 1, "bake": "4s", "batch": 1});
    let r = g.http.post(format!("{api}/api/v1/services/web/releases")).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/releases/{id}");
    wait_json(&g, leader, &path, 30, "baking", |v| v["state"] == "baking").await;

    // The leader is killed in the bake; the next one has the release where it was, and ends it.
    let old = g.servers[leader].name.clone();
    g.servers[leader].child.as_mut().unwrap().kill().unwrap();
    let ask = (leader + 1) % 3;
    let (next, _) = g.leader(ask, Some(&old), Duration::from_secs(20)).await;
    let shown = wait_json(&g, next, &path, 10, "shown by the new leader", |_| true).await;
    assert_ne!(shown["state"], "pending", "{shown}");
    let history: Vec<&str> = shown["history"].as_array().unwrap().iter().filter_map(|h| h["what"].as_str()).collect();
    assert!(history.iter().any(|h| h.starts_with("picked up by a server that started")), "{shown}");
    let done = wait_json(&g, next, &path, 60, "ended", |v| v["state"] == "succeeded" || v["state"] == "failed").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let svc = wait_json(&g, next, "/api/v1/services/web", 30, "2 healthy on the new spec", |v| v["status"]["healthy"] == 2).await;
    assert_eq!(svc["spec"]["env"]["V"], "2", "{svc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_shows_the_group() {
    let g = Group::start("show");
    let (leader, _) = g.leader(0, None, Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let cli = |i: usize, json: bool| {
        let mut c = Command::new(TUG);
        c.args(["cluster", "--server", &g.servers[i].api]);
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = cli(follower, false);
    assert!(table.contains(&format!("leader: {}", g.servers[leader].name)), "{table}");
    assert!(table.contains("(follower)"), "{table}");
    for s in &g.servers {
        assert!(table.contains(&s.name) && table.contains(&s.api), "{table}");
    }
    let from_leader: Value = serde_json::from_str(&cli(leader, true)).unwrap();
    let from_follower: Value = serde_json::from_str(&cli(follower, true)).unwrap();
    assert_eq!(from_leader["role"], "leader");
    assert_eq!((from_leader["leader"].clone(), from_leader["term"].clone()), (from_follower["leader"].clone(), from_follower["term"].clone()));
    assert!(from_leader["epoch"].as_u64().unwrap() >= 1);
    assert_eq!(from_leader["members"].as_array().unwrap().len(), 3);

    // A read through the follower is the leader's answer.
    let resp = g.http.get(format!("{}/api/v1/agents", g.servers[follower].api)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tug-leader"], g.servers[leader].name.as_str());
    let metrics = g.http.get(format!("{}/metrics", g.servers[leader].api)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tug_leader 1"), "{metrics}");
    assert!(metrics.contains("tug_store_fenced_writes_total 0"), "{metrics}");

    // The UI and the event stream through the follower are the leader's, the stream streamed.
    let page = g.http.get(format!("{}/", g.servers[follower].api)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["x-tug-leader"], g.servers[leader].name.as_str());
    assert!(page.text().await.unwrap().contains("<html"), "the follower's UI page is not HTML");
    let mut events = g.http.get(format!("{}/api/v1/events", g.servers[follower].api)).send().await.unwrap();
    assert_eq!(events.status(), 200);
    assert!(events.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let job = serde_json::json!({"name": "show-events", "schedule": "@yearly", "command": "true"});
    let resp = g.http.post(format!("{}/api/v1/jobs", g.servers[follower].api)).json(&job).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let mut seen = String::new();
    let streamed = tokio::time::timeout(Duration::from_secs(5), async {
        while !seen.contains("show-events") {
            let Some(chunk) = events.chunk().await.unwrap() else { break };
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(streamed.is_ok() && seen.contains("show-events"), "no event of the new job through the follower: {seen}");

    // An agent with the wrong join token is refused by a follower as by the leader, before it
    // is told where the leader is.
    let out = Command::new(TUG)
        .args(["agent", "run", "--noop", "--server", &g.servers[follower].agent, "--name", "intruder", "--join-token", "guess"])
        .arg("--data-dir")
        .arg(g.dir.path().join("intruder"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("join token refused: it does not match the server's"), "{err}");
    assert!(!err.contains("not the leader"), "the follower named the leader to an agent it refuses: {err}");
}

/// A follower answers reads of jobs and runs from etcd itself (so they work while the leader is
/// stalled), behind the same gate as the leader (`/api/v1/cluster` too); a write through it is
/// audited by the leader with the follower's name and the client's address, which a client
/// cannot forge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_answer_reads_behind_the_gate_and_writes_are_audited_with_their_path() {
    let g = Group::start_with("reads", true);
    // The first leader makes the token; until then nothing answers without one.
    let started = Instant::now();
    while g.token().is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "no admin token written; logs in {}", g.dir.path().display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (leader, _) = g.leader(0, None, Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let fname = g.servers[follower].name.clone();
    let api = |i: usize| g.servers[i].api.clone();

    // Without a token the follower's own answers are refused, as the leader's are.
    for path in ["/api/v1/cluster", "/api/v1/jobs"] {
        let resp = g.http.get(format!("{}{path}", api(follower))).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("this server needs a token"), "{path}: {text}");
    }
    let bad = g.http.get(format!("{}/api/v1/cluster", api(follower))).bearer_auth("tug_nope_nope").send().await.unwrap();
    assert_eq!(bad.status(), 401);
    let resp = g.get(follower, "/api/v1/cluster").send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    // A token made on the leader works on the follower at once, and stops working there as soon
    // as the leader has revoked it.
    let made: Value = g
        .http
        .post(format!("{}/api/v1/tokens", api(leader)))
        .bearer_auth(g.token())
        .json(&serde_json::json!({"name": "short-lived", "role": "read"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (id, short) = (made["id"].as_str().unwrap(), made["token"].as_str().unwrap());
    let read = || g.http.get(format!("{}/api/v1/jobs", api(follower))).bearer_auth(short).send();
    assert_eq!(read().await.unwrap().status(), 200);
    let revoked = g.http.delete(format!("{}/api/v1/tokens/{id}", api(leader))).bearer_auth(g.token()).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    let resp = read().await.unwrap();
    assert_eq!(resp.status(), 401, "a token revoked on the leader still works on the follower: {}", resp.text().await.unwrap());

    // A write through the follower reaches the leader, which audits where it came from.
    let job = serde_json::json!({"name": "reads-job", "schedule": "@yearly", "command": "true"});
    let resp = g.http.post(format!("{}/api/v1/jobs", api(follower))).bearer_auth(g.token()).json(&job).send().await.unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    // A client that names a follower itself is not believed.
    let forged = serde_json::json!({"name": "reads-forged", "schedule": "@yearly", "command": "true"});
    let resp = g
        .http
        .post(format!("{}/api/v1/jobs", api(leader)))
        .bearer_auth(g.token())
        .header("x-tug-via", "nobody")
        .header("x-tug-client", "203.0.113.9:1")
        .header("x-tug-proxy-secret", "guessed")
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let audit: Value = g.get(leader, "/api/v1/audit").send().await.unwrap().json().await.unwrap();
    let entries = audit["items"].as_array().unwrap();
    let of = |job: &str| entries.iter().find(|e| e["job"] == job && e["method"] == "POST").cloned().unwrap_or_else(|| panic!("no audit entry for {job}: {audit}"));
    let through = of("reads-job");
    let remote = through["remote"].as_str().unwrap();
    assert!(remote.starts_with("127.0.0.1:") && remote.ends_with(&format!(" via {fname}")), "{through}");
    let direct = of("reads-forged");
    assert!(!direct["remote"].as_str().unwrap().contains("via"), "{direct}");

    // Reads are the follower's own answers: they go on while the leader is stopped.
    let resp = g.get(follower, "/api/v1/jobs/reads-job").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-tug-leader").is_none(), "the follower passed a read on");
    kill(g.servers[leader].pid(), Signal::SIGSTOP).unwrap();
    let read = async {
        let job: Value = g.get(follower, "/api/v1/jobs/reads-job").send().await.unwrap().json().await.unwrap();
        let runs = g.get(follower, "/api/v1/jobs/reads-job/runs").send().await.unwrap().status();
        let missing = g.get(follower, "/api/v1/jobs/reads-nope").send().await.unwrap().status();
        (job, runs, missing)
    };
    let answered = tokio::time::timeout(Duration::from_secs(2), read).await;
    kill(g.servers[leader].pid(), Signal::SIGCONT).unwrap();
    let (job, runs, missing) = answered.expect("the follower's reads waited for the stopped leader");
    assert_eq!(job["spec"]["name"], "reads-job");
    assert_eq!((runs, missing), (reqwest::StatusCode::OK, reqwest::StatusCode::NOT_FOUND));
}

/// A store the server cannot use is refused before it starts, saying what to give.
#[test]
fn bad_store_urls_are_refused() {
    for (store, says) in [
        ("mysql://db", "give sqlite, or etcd://HOST:PORT"),
        ("etcd://h1", "give HOST:PORT"),
        ("etcd://h1:2379?fast=1", "unknown option"),
    ] {
        let out = Command::new(TUG).args(["server", "--store", store]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{store}: {err}");
    }
}

/// A group over TLS with one CA (`tug certs init`): an agent given only the CA and the join token,
/// pointed at a follower (and not the leader): the follower signs its certificate (it holds the CA
/// key as the leader does) and sends it to the leader's https agent endpoint, where it joins over
/// mTLS; a write through the follower reaches the leader over https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_follower_signs_agents_certificates_and_passes_agents_and_writes_to_the_leader() {
    let etcd = EtcdCluster::start(1);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let made = Command::new(TUG).args(["certs", "init"]).arg(&certs).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let cert = |f: &str| certs.join(f).to_string_lossy().into_owned();
    let mut servers = Vec::new();
    for i in 0..3 {
        let (api, agent) = (free_port(), free_port());
        let name = format!("tlsg-s{i}");
        let args: Vec<String> = [
            "server", "--store", &etcd.url("tlsg"), "--name", &name, "--lease-ttl", TTL,
            "--listen", &format!("127.0.0.1:{api}"), "--agent-listen", &format!("127.0.0.1:{agent}"),
            "--data-dir", &dir.path().join(&name).to_string_lossy(), "--log", "info", "--join-token", JOIN_TOKEN,
            "--tls-cert", &cert("server.pem"), "--tls-key", &cert("server-key.pem"),
            "--agent-ca", &cert("ca.pem"), "--agent-ca-key", &cert("ca-key.pem"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut s = Server { name, api: format!("https://127.0.0.1:{api}"), agent: format!("https://127.0.0.1:{agent}"), args, child: None };
        s.spawn(&dir.path().join(format!("{}.log", s.name)));
        servers.push(s);
    }
    let tls = tug_tls::ClientTls::new(Some(&certs.join("ca.pem")), None).unwrap();
    let http = reqwest::Client::builder().tls_backend_preconfigured(tls.for_http().unwrap()).build().unwrap();
    let get = |i: usize, path: &str| http.get(format!("{}{path}", servers[i].api)).send();
    // The leader, by its own API.
    let started = Instant::now();
    let leader = loop {
        let mut found = None;
        for i in 0..3 {
            if let Ok(r) = get(i, "/api/v1/cluster").await
                && let Ok(c) = r.json::<Value>().await
                && c["role"] == "leader"
            {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no leader; logs in {}", dir.path().display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = (leader + 1) % 3;
    let agent_dir = dir.path().join("agent");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = Command::new(TUG)
        .args(["agent", "run", "--noop", "--name", "tlsg-agent", "--join-token", JOIN_TOKEN, "--ca", &cert("ca.pem")])
        .arg("--server")
        .arg(format!("{},{}", servers[follower].agent, servers[(leader + 2) % 3].agent))
        .arg("--data-dir")
        .arg(&agent_dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let agents: Value = match get(leader, "/api/v1/agents").await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if agents.as_array().into_iter().flatten().any(|a| a["name"] == "tlsg-agent" && a["state"] == "up") {
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = agent.kill();
            let text = std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
            panic!("the agent did not join the leader: {agents}\n{text}\nlogs in {}", dir.path().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let follower_log = std::fs::read_to_string(dir.path().join(format!("{}.log", servers[follower].name))).unwrap();
    assert!(
        follower_log.lines().any(|l| l.contains("agent certificate issued against the join token") && l.contains("tlsg-agent")),
        "the follower signed the certificate:\n{follower_log}"
    );
    assert!(agent_dir.join("tls").join("agent.pem").exists());
    // A write through the follower reaches the leader over https, trusting the group's CA.
    let job = serde_json::json!({"name": "through-follower", "schedule": "@yearly", "command": "true"});
    let resp = http.post(format!("{}/api/v1/jobs", servers[follower].api)).json(&job).send().await.unwrap();
    let status = resp.status();
    assert_eq!(status, 201, "{}", resp.text().await.unwrap_or_default());
}
