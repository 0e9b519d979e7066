//! Faults under load in a group of three `tug server` processes on a 3-member etcd, with three
//! agents and 50 jobs firing every second whose runs take 0–3 s: an etcd member is killed (the
//! raft leader); the group's leader is cut off from the network (each server runs in its own
//! network namespace, joined by a veth pair to a bridge that etcd and the agents are on); an
//! agent is killed and restarted while its runs of both runtimes are in flight (process runs
//! under their supervisor, and a docker run in its warm container under dwait).
//!
//! After each fault: no run key was launched twice (each run appends its key to a file on the
//! agents' host, so this counts launches, not store records), every scheduled second of every job
//! has a run (or a skip with its reason), and every job created through a follower during the
//! fault and acknowledged exists afterwards.
//!
//! The tests take one lock so that they run one at a time: each one alone loads this machine
//! (about 50 launches a second), and failover times are asserted. Needs root (namespaces) and etcd.

mod hosts;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use hosts::{Net, Proc};
use serde_json::{Value, json};
use tokio::time::Instant;
use tug_store::testing::EtcdCluster;

const TUG: &str = env!("CARGO_BIN_EXE_tug");
/// The leader's lease in these tests.
const TTL: &str = "2s";
/// Jobs firing every second.
const JOBS: usize = 50;

/// One fault test at a time (see the module doc).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

struct Server {
    name: String,
    api: String,
    agent: String,
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Server {
    fn spawn(&mut self) {
        let (program, args) = self.args.split_first().unwrap();
        self.proc = Some(Proc::spawn(program, args, self.log.clone()));
    }
}

struct Agent {
    args: Vec<String>,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Agent {
    fn spawn(&mut self) {
        self.proc = Some(Proc::spawn(TUG, &self.args, self.log.clone()));
    }
}

/// Three servers, three agents, etcd; with `netns`, each server in its own namespace.
struct Fleet {
    prefix: String,
    servers: Vec<Server>,
    agents: Vec<Agent>,
    http: reqwest::Client,
    etcd: EtcdCluster,
    net: Option<Net>,
    dir: tempfile::TempDir,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Agents first: their runs' output goes to files in `dir`.
        self.agents.clear();
        self.servers.clear();
        // A failed test's logs outlive its temporary directory.
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!("tug-faults-{}-{}", self.prefix, std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") || entry.file_name() == "launches" {
                    let _ = std::fs::copy(entry.path(), keep.join(entry.file_name()));
                }
            }
            eprintln!("logs of {} kept in {}", self.prefix, keep.display());
        }
    }
}

impl Fleet {
    fn start(prefix: &str, netns: bool) -> Fleet {
        let net = netns.then(|| Net::new(3));
        let etcd = match &net {
            Some(n) => EtcdCluster::start_on(3, &n.server_addr()),
            None => EtcdCluster::start(3),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        for i in 0..3 {
            let name = format!("{prefix}-s{i}");
            // In its own namespace a server has the ports to itself.
            let (mut args, addr, api, agent) = match &net {
                Some(n) => (strings(&["ip", "netns", "exec", &n.host(i).ns, TUG]), n.host(i).addr.clone(), 4400, 4401),
                None => (vec![TUG.to_string()], "127.0.0.1".to_string(), free_port(), free_port()),
            };
            args.extend(strings(&[
                "server", "--store", &etcd.url(prefix), "--name", &name, "--lease-ttl", TTL,
                "--listen", &format!("{addr}:{api}"), "--agent-listen", &format!("{addr}:{agent}"),
                "--data-dir", &dir.path().join(&name).to_string_lossy(), "--log", "info", "--insecure",
            ]));
            let log = dir.path().join(format!("{name}.log"));
            let mut s = Server { name, api: format!("http://{addr}:{api}"), agent: format!("http://{addr}:{agent}"), args, log, proc: None };
            s.spawn();
            servers.push(s);
        }
        let endpoints: Vec<&str> = servers.iter().map(|s| s.agent.as_str()).collect();
        let mut agents = Vec::new();
        for i in 0..3 {
            let name = format!("{prefix}-a{i}");
            let args = strings(&[
                "agent", "run", "--server", &endpoints.join(","), "--name", &name, "--log", "info",
                "--data-dir", &dir.path().join(&name).to_string_lossy(), "--attributes", &format!("host={name}"),
            ]);
            let mut a = Agent { args, log: dir.path().join(format!("{name}.log")), proc: None };
            a.spawn();
            agents.push(a);
        }
        tug_tls::provider();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
        Fleet { prefix: prefix.to_owned(), servers, agents, http, etcd, net, dir }
    }

    fn launches(&self) -> PathBuf {
        self.dir.path().join("launches")
    }

    /// `GET /api/v1/cluster` of server `i`.
    async fn cluster(&self, i: usize) -> Option<Value> {
        let resp = self.http.get(format!("{}/api/v1/cluster", self.servers[i].api)).send().await.ok()?;
        resp.status().is_success().then_some(())?;
        resp.json().await.ok()
    }

    /// The leader, as the live server `ask` sees it, once it is not `not` and its own API says it
    /// leads; and how long that took.
    async fn leader(&self, ask: usize, not: Option<usize>, within: Duration) -> (usize, Duration) {
        let started = Instant::now();
        while started.elapsed() < within {
            if let Some(c) = self.cluster(ask).await
                && let Some(name) = c["leader"].as_str()
                && let Some(i) = self.servers.iter().position(|s| s.name == name)
                && Some(i) != not
                && self.cluster(i).await.is_some_and(|own| own["role"] == "leader")
            {
                return (i, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no new leader within {within:?}; logs in {}", self.dir.path().display());
    }

    /// A job firing every second whose runs append their key to the launches file, then take
    /// `n % 4` seconds.
    fn job(&self, name: &str, n: usize) -> Value {
        json!({
            "name": name,
            "schedule": "* * * * * *",
            "concurrency": "allow",
            "command": format!("echo \"$TUG_JOB $TUG_SCHEDULED_AT\" >> {}; sleep {}", self.launches().display(), n % 4),
        })
    }

    /// Creates a job through server `via`; whether the server acknowledged it (201).
    async fn create(&self, via: usize, job: &Value) -> bool {
        let url = format!("{}/api/v1/jobs", self.servers[via].api);
        matches!(self.http.post(url).json(job).send().await, Ok(r) if r.status() == 201)
    }

    /// Creates the load's jobs through follower `via` (retrying refusals: none is acknowledged
    /// twice, as a name is unique).
    async fn add_load(&self, via: usize) -> Vec<String> {
        let mut names = Vec::new();
        for n in 0..JOBS {
            let name = format!("{}-job-{n}", self.prefix);
            let job = self.job(&name, n);
            let started = Instant::now();
            while !self.create(via, &job).await {
                assert!(started.elapsed() < Duration::from_secs(20), "could not create {name}; logs in {}", self.dir.path().display());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            names.push(name);
        }
        names
    }

    /// Keeps creating jobs through `via` for `during`, one every 300 ms; returns the names of
    /// those acknowledged. They fire once a year: only their existence is checked.
    async fn writes_during(&self, via: usize, during: Duration, tag: &str) -> Vec<String> {
        let started = Instant::now();
        let mut acked = Vec::new();
        let mut n = 0;
        while started.elapsed() < during {
            let name = format!("{}-{tag}-{n}", self.prefix);
            n += 1;
            let job = json!({"name": name, "schedule": "@yearly", "command": "true"});
            if self.create(via, &job).await {
                acked.push(name);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        acked
    }

    /// Creates, through `via`, a job pinned to agent `agent` that runs only when asked, and runs
    /// it now: it appends its run key to the launches file (mounted at /out for a docker job),
    /// prints "before", sleeps `secs`, prints "after" and exits with `exit`.
    async fn long_run(&self, via: usize, name: &str, agent: usize, docker: Option<&str>, secs: u32, exit: i32) {
        let out = if docker.is_some() { "/out/launches".to_string() } else { self.launches().display().to_string() };
        let mut job = json!({
            "name": name,
            "schedule": "@yearly",
            "command": ["sh", "-c", format!("echo \"$TUG_JOB $TUG_SCHEDULED_AT\" >> {out}; echo before; sleep {secs}; echo after; exit {exit}")],
            "constraints": [["host", "EQUALS", format!("{}-a{agent}", self.prefix)]],
        });
        if let Some(image) = docker {
            job["runtime"] = json!("docker");
            job["docker"] = json!({"image": image, "pull": "never", "volumes": [format!("{}:/out", self.dir.path().display())]});
        }
        let started = Instant::now();
        while !self.create(via, &job).await {
            assert!(started.elapsed() < Duration::from_secs(20), "could not create {name}; logs in {}", self.dir.path().display());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let url = format!("{}/api/v1/jobs/{name}/run", self.servers[via].api);
        let resp = self.http.post(url).json(&json!({})).send().await.unwrap();
        assert!(resp.status().is_success(), "running {name}: {}", resp.status());
    }

    /// Waits until the newest run of `job` satisfies `pred`, through `via`; returns it.
    async fn wait_run(&self, via: usize, job: &str, within: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            if let Some(r) = self.runs(via, job).await.into_iter().next().filter(|r| pred(r)) {
                return r;
            }
            assert!(started.elapsed() < within, "{job}: {what} within {within:?}; logs in {}", self.dir.path().display());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The runs of `job` (newest first), through server `via`.
    async fn runs(&self, via: usize, job: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/jobs/{job}/runs?limit=1000", self.servers[via].api);
        let page: Value = self.http.get(url).send().await.unwrap().json().await.unwrap();
        page["items"].as_array().cloned().unwrap_or_default()
    }

    /// The checks every fault ends with, through server `via`: no launch twice, no fire missing,
    /// every acknowledged job there.
    async fn check(&self, via: usize, jobs: &[String], acked: &[String]) {
        let logs = self.dir.path().display();
        let text = std::fs::read_to_string(self.launches()).unwrap();
        let mut seen = BTreeSet::new();
        for line in text.lines() {
            assert!(seen.insert(line.to_owned()), "run key launched twice: {line}\nlogs in {logs}");
        }
        let mut launched = 0;
        for job in jobs {
            let runs = self.runs(via, job).await;
            let mut by_second: BTreeMap<i64, Value> = BTreeMap::new();
            for r in runs.iter().filter(|r| r["trigger"] == "schedule") {
                let at: jiff::Timestamp = r["scheduled_at"].as_str().unwrap().parse().unwrap();
                assert!(by_second.insert(at.as_second(), r.clone()).is_none(), "two runs of {job} at {at}; logs in {logs}");
            }
            let (first, last) = (*by_second.keys().next().unwrap(), *by_second.keys().last().unwrap());
            assert!(last - first >= 15, "{job} fired over {}s only; logs in {logs}", last - first);
            for s in first..=last - 3 {
                let run = by_second.get(&s).unwrap_or_else(|| panic!("{job}: no run for second {s}; logs in {logs}"));
                if run["state"] == "skipped" {
                    assert!(run["reason"].as_str().is_some_and(|r| !r.is_empty()), "a skip says why: {run}");
                }
            }
            launched += text.lines().filter(|l| l.starts_with(&format!("{job} "))).count();
        }
        assert!(launched >= jobs.len() * 10, "{launched} launches of {} jobs; logs in {logs}", jobs.len());
        for name in acked {
            let resp = self.http.get(format!("{}/api/v1/jobs/{name}", self.servers[via].api)).send().await.unwrap();
            assert_eq!(resp.status(), 200, "job {name} was acknowledged during the fault but is gone; logs in {logs}");
        }
        eprintln!("{}: {launched} launches, {} jobs acknowledged during the fault", self.prefix, acked.len());
    }
}

/// The instant of the last line of the log at `path` that contains `what` (tracing's lines
/// start with an RFC 3339 time).
fn logged_at(path: &std::path::Path, what: &str) -> Option<jiff::Timestamp> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rfind(|l| l.contains(what))?;
    line.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_member_killed_under_load_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut f = Fleet::start("etcdkill", false);
    let (leader, _) = f.leader(0, None, Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let jobs = f.add_load(follower).await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    // The raft leader is the member whose loss hurts most: etcd elects another meanwhile.
    let member = f.etcd.leader().expect("etcd has a leader");
    f.etcd.kill(member);
    let acked = f.writes_during(follower, Duration::from_secs(6), "during").await;
    f.etcd.restart(member);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // Whoever leads now (the group may have changed leaders) answers the checks.
    let (leader, _) = f.leader(follower, None, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    f.check(leader, &jobs, &acked).await;
    // A campaign broken by the lost member went on with the same lease: every server holds one
    // election key, not one per campaign attempt.
    let cluster = f.cluster(leader).await.expect("the leader answers");
    let names: Vec<&str> = cluster["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!((names.len(), unique.len()), (3, 3), "members: {names:?}; logs in {}", f.dir.path().display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_stops_firing_and_another_takes_over() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Fleet::start("netcut", true);
    let (old, _) = f.leader(0, None, Duration::from_secs(20)).await;
    let ask = (old + 1) % 3;
    let jobs = f.add_load(ask).await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    let net = f.net.as_ref().unwrap();
    let cut = Instant::now();
    let cut_at = jiff::Timestamp::now();
    net.set_link(old, false);
    let writes = f.writes_during(ask, Duration::from_secs(6), "during");
    let leader = f.leader(ask, Some(old), Duration::from_secs(10));
    let (acked, (new, took)) = tokio::join!(writes, leader);
    eprintln!("after the cut a new leader took over in {took:?} ({:?} since the cut)", cut.elapsed());
    // The old leader stopped firing by itself, before the new one started leading (its lease
    // could not have expired any earlier).
    let stepped_down = logged_at(&f.servers[old].log, "steps down")
        .unwrap_or_else(|| panic!("the cut-off leader did not step down; logs in {}", f.dir.path().display()));
    let elected = logged_at(&f.servers[new].log, "elected leader").unwrap();
    let elected_after = elected.duration_since(cut_at).as_secs_f64();
    eprintln!(
        "the old leader stepped down {:.2}s after the cut; the new one was elected after {elected_after:.2}s",
        stepped_down.duration_since(cut_at).as_secs_f64(),
    );
    assert!(stepped_down < elected, "the old leader stepped down at {stepped_down}, after the new one was elected at {elected}");
    // Elected within 3 s of the cut (the lease's 2 s, etcd's expiry check, the campaign), and
    // serving within a second more (it recovers the runs in flight from the store first).
    assert!(elected_after <= 3.0, "the new leader was elected {elected_after:.2}s after the cut");
    assert!(took <= Duration::from_secs(4), "the new leader served {took:?} after the cut; logs in {}", f.dir.path().display());

    // Back on the network, it follows.
    tokio::time::sleep(Duration::from_secs(3)).await;
    net.set_link(old, true);
    let started = Instant::now();
    while !f.cluster(old).await.is_some_and(|c| c["role"] == "follower" && c["leader"] == f.servers[new].name.as_str()) {
        assert!(started.elapsed() < Duration::from_secs(15), "the old leader does not follow after the link is back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    f.check(new, &jobs, &acked).await;
}

/// The docker test image, when Docker, the image and the static dwait (`TUG_DWAIT`) are here
/// (scripts/test provides them).
fn docker_test_image() -> Option<String> {
    let image = std::env::var("TUG_TEST_IMAGE").unwrap_or_else(|_| "tugboat-test-busybox:1".into());
    let present = std::process::Command::new("docker").args(["image", "inspect", &image]).output().is_ok_and(|o| o.status.success());
    (present && std::env::var_os("TUG_DWAIT").is_some()).then_some(image)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restarted_with_runs_of_both_runtimes_in_flight_launches_none_twice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let docker = docker_test_image();
    if docker.is_none() {
        eprintln!("\n!!!!!!!! no Docker, test image or TUG_DWAIT (scripts/test provides them): only process runs are restarted across !!!!!!!!\n");
    }
    let mut f = Fleet::start("agentrs", false);
    let (leader, _) = f.leader(0, None, Duration::from_secs(20)).await;
    let follower = (leader + 1) % 3;
    let jobs = f.add_load(follower).await;
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Besides the load's, a long run of each runtime on the agent about to restart, each ending
    // with its own exit status.
    let proc_job = format!("{}-long-process", f.prefix);
    let dock_job = format!("{}-long-docker", f.prefix);
    // The job, its exit status, and its whole log: a docker run that fails ends its log with the
    // reason.
    let mut long = vec![(proc_job.clone(), 4, "before\nafter\n")];
    f.long_run(follower, &proc_job, 0, None, 8, 4).await;
    if let Some(image) = &docker {
        f.long_run(follower, &dock_job, 0, Some(image), 8, 3).await;
        long.push((dock_job.clone(), 3, "before\nafter\nexit code 3\n"));
    }
    let mut first = BTreeMap::new();
    for (job, _, _) in &long {
        let r = f.wait_run(follower, job, Duration::from_secs(30), "a running run", |r| r["state"] == "running").await;
        first.insert(job.clone(), r);
    }

    // Its runs (0–8 s long) go on while it is down: process runs in their own process groups under
    // their supervisor, the docker run in its container under dwait.
    f.agents[0].proc.as_mut().unwrap().kill9();
    f.agents[0].proc = None;
    let acked = f.writes_during(follower, Duration::from_secs(1), "during").await;
    f.agents[0].spawn();
    // Long enough that every job has fired over the 15 s the check asks for, counting from the
    // last job created (creating 50 jobs through a follower takes a while on a busy machine).
    tokio::time::sleep(Duration::from_secs(11)).await;
    f.check(leader, &jobs, &acked).await;
    // Runs of the restarted agent that had started were re-attached, not given up. (One it was
    // killed while launching, before it recorded the launch, never started: the server sent it
    // again.)
    for job in &jobs {
        for r in f.runs(leader, job).await {
            let started = !r["started_at"].is_null();
            assert!(!(started && r["state"] == "lost"), "{job}: a started run was lost across the agent's restart: {r}");
        }
    }
    // The long runs ended once, on their first attempt, with their own exit status and their
    // whole output: re-attached, not relaunched nor given up.
    let launches = std::fs::read_to_string(f.launches()).unwrap();
    for (job, exit, output) in &long {
        let done = f.wait_run(leader, job, Duration::from_secs(20), "an ended run", |r| r["finished_at"].is_string()).await;
        let runs = f.runs(leader, job).await;
        let logs = f.dir.path().display();
        assert_eq!(runs.len(), 1, "{job}: one run: {runs:?}; logs in {logs}");
        assert_eq!(done["id"], first[job]["id"]);
        assert_eq!(
            (done["state"].as_str(), done["exit_code"].as_i64(), done["attempt"].as_u64()),
            (Some("failed"), Some(i64::from(*exit)), Some(1)),
            "{job}: {done}; logs in {logs}"
        );
        assert_eq!(launches.lines().filter(|l| l.starts_with(&format!("{job} "))).count(), 1, "{job} launched once; logs in {logs}");
        let url = format!("{}/api/v1/runs/{}/log", f.servers[leader].api, done["id"]);
        let log = f.http.get(url).send().await.unwrap().text().await.unwrap();
        assert_eq!(log, *output, "{job}: the whole output, once; logs in {logs}");
    }
    if docker.is_some() {
        let filter = format!("label=tugboat.job={dock_job}");
        if let Ok(out) = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&ids).output();
            }
        }
    }
}
