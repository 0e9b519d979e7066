//! Several agents in one process: placement by resources and constraints, runs that fit nowhere
//! wait and say why, and a silent agent's runs are lost and retried on another agent. Paused
//! tokio time and the in-memory store, so the agent timeout costs no real time.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tug_agent::runtime::{Outcome, RunContext, Runtime};
use tug_agent::{Agent, AgentConfig};
use tug_core::placement::Capacity;
use tug_core::run::{Run, RunState};
use tug_core::JobSpec;
use tug::local::serve_in_process;
use tug_server::embedded::Embedded;
use tug_server::scheduler::FromAgent;
use tug_server::scheduler::agents::Registration;
use tug_store::mem::MemStore;
use tug_logs::LogFiles;
use tug_store::{RunQuery, Store};

/// Runs last `secs` simulated seconds (from the command's first word), then succeed.
struct Sleeper;

#[async_trait::async_trait]
impl Runtime for Sleeper {
    fn name(&self) -> &'static str {
        "sleeper"
    }

    async fn run(&self, mut ctx: RunContext) -> Outcome {
        let secs: u64 = ctx.launch.task.command.display().parse().unwrap_or(0);
        let _ = ctx.started.send(None);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(secs)) => {
                Outcome { state: RunState::Succeeded, exit_code: Some(0), signal: None, reason: None }
            }
            _ = ctx.kill.wait_for(|k| k.is_some()) => Outcome::failed_to_start("killed"),
        }
    }
}

struct Cluster {
    server: Embedded,
    updates: mpsc::Sender<FromAgent>,
    agents: BTreeMap<String, tokio::task::JoinHandle<()>>,
    logs: LogFiles,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        // The in-process agent stays out of the way: these tests place on the agents they add.
        let server = common::paused_server_for_agents(store, dir.path(), common::clock_at(common::START)).await;
        let updates = server.updates_sender();
        let logs = LogFiles::new(dir.path().join("logs"));
        Cluster { server, updates, agents: BTreeMap::new(), logs, _dir: dir }
    }

    async fn add_agent(&mut self, name: &str, cpus: f64, attrs: &[(&str, &str)]) {
        let (tx, rx) = mpsc::channel(1024);
        let config = AgentConfig { name: name.into(), ..AgentConfig::default() };
        let (reports_tx, reports) = mpsc::channel(1024);
        let agent = Agent::with_acks(config, Arc::new(Sleeper), self.logs.clone(), reports_tx);
        let serving = serve_in_process(agent, rx, reports, self.updates.clone(), std::future::pending());
        self.agents.insert(name.into(), tokio::spawn(serving));
        let attributes = attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let resources = Capacity { cpus, mem: 8 << 30, disk: 100 << 30 };
        self.server.scheduler.register_agent(Registration { name: name.into(), tx, resources, attributes }).await.unwrap();
    }

    /// Kills an agent's task outright: no more heartbeats, no more updates.
    fn kill_agent(&mut self, name: &str) {
        self.agents.remove(name).unwrap().abort();
    }

    async fn job(&self, spec: serde_json::Value) {
        let spec = JobSpec::from_json(&spec.to_string()).unwrap();
        self.server.scheduler.create_job(spec).await.unwrap();
    }

    async fn runs(&self, job: &str) -> Vec<Run> {
        self.server.store.list_runs(job, &RunQuery { limit: 100, ..Default::default() }).await.unwrap().items
    }
}

#[tokio::test(start_paused = true)]
async fn runs_go_where_resources_and_constraints_allow() {
    let mut c = Cluster::start().await;
    c.add_agent("big", 8.0, &[("rack", "r1")]).await;
    c.add_agent("small", 1.0, &[("rack", "r2")]).await;
    c.job(json!({"name": "heavy", "schedule": "@yearly", "command": "60", "resources": {"cpus": 4}})).await;
    c.job(json!({"name": "pinned", "schedule": "@yearly", "command": "60", "constraints": [["rack", "EQUALS", "r2"]]})).await;
    c.job(json!({"name": "huge", "schedule": "@yearly", "command": "60", "resources": {"cpus": 64}})).await;
    for j in ["heavy", "pinned", "huge"] {
        c.server.scheduler.run_now(j).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(c.runs("heavy").await[0].agent.as_deref(), Some("big"));
    assert_eq!(c.runs("pinned").await[0].agent.as_deref(), Some("small"));
    let huge = &c.runs("huge").await[0];
    assert_eq!(huge.state, RunState::Pending);
    assert_eq!(
        huge.reason.as_deref(),
        Some("waiting for an agent: no agent has 64 cpus free; the most free is 4"),
        "the run says why it waits (big has 4 of 8 cpus left)"
    );
    // Room appears: a bigger agent joins and the waiting run starts there.
    c.add_agent("giant", 96.0, &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let huge = &c.runs("huge").await[0];
    assert_eq!((huge.state, huge.agent.as_deref()), (RunState::Running, Some("giant")));
    let agents = c.server.scheduler.agents().await.unwrap();
    let big = agents.iter().find(|a| a.name == "big").unwrap();
    assert_eq!(big.cpus, (8.0, 4.0));
}

#[tokio::test(start_paused = true)]
async fn a_silent_agent_is_lost_and_its_run_retried_elsewhere() {
    let mut c = Cluster::start().await;
    c.add_agent("a", 4.0, &[]).await;
    c.job(json!({"name": "long", "schedule": "@yearly", "command": "3600", "resources": {"cpus": 3},
                 "retries": {"count": 1, "initial_delay": "1s"}})).await;
    let run = c.server.scheduler.run_now("long").await.unwrap();
    assert_eq!(run.agent.as_deref(), Some("a"));
    c.add_agent("b", 4.0, &[]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    c.kill_agent("a");
    // The agent timeout is 10 s; the retry comes 1 s after the loss.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let runs = c.runs("long").await;
    assert_eq!(runs.len(), 1, "the same run is retried, not a new one");
    let r = &runs[0];
    assert_eq!((r.state, r.attempt, r.agent.as_deref()), (RunState::Running, 2, Some("b")), "{r:?}");
    let attempts = c.server.store.attempts(r.id).await.unwrap();
    assert_eq!(attempts[0].state, RunState::Lost);
    assert!(attempts[0].reason.as_deref().unwrap().contains("agent a stopped responding"), "{attempts:?}");
    let views = c.server.scheduler.agents().await.unwrap();
    let a = views.iter().find(|v| v.name == "a").unwrap();
    assert_eq!(serde_json::to_value(a.state).unwrap(), "lost");
}

/// Records when it was asked to pre-warm, in simulated seconds since the test began.
struct Prewarms {
    start: tokio::time::Instant,
    seen: std::sync::Mutex<Vec<(String, u64)>>,
}

#[async_trait::async_trait]
impl Runtime for Prewarms {
    fn name(&self) -> &'static str {
        "prewarms"
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let _ = ctx.started.send(None);
        Outcome { state: RunState::Succeeded, exit_code: Some(0), signal: None, reason: None }
    }

    async fn prewarm(&self, job: &str, _task: &tug_core::protocol::Task) -> Result<(), tug_agent::runtime::RuntimeError> {
        self.seen.lock().unwrap().push((job.to_string(), self.start.elapsed().as_secs()));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn docker_jobs_with_sparse_fires_are_prewarmed_before_each_fire() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = Arc::new(Prewarms { start: tokio::time::Instant::now(), seen: Default::default() });
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let server = common::paused_server(store, dir.path(), runtime.clone(), common::clock_at(common::START)).await;
    let docker = |name: &str, schedule: &str| {
        json!({"name": name, "schedule": schedule, "command": "true", "runtime": "docker",
               "docker": {"image": "busybox", "prewarm": "45s"}})
    };
    for (name, schedule) in [("every-5-min", "*/5 * * * *"), ("every-second", "* * * * * *")] {
        let spec = JobSpec::from_json(&docker(name, schedule).to_string()).unwrap();
        server.scheduler.create_job(spec).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(16 * 60)).await;
    let seen = runtime.seen.lock().unwrap().clone();
    let five: Vec<u64> = seen.iter().filter(|(j, _)| j == "every-5-min").map(|(_, t)| *t).collect();
    // Fires at 5, 10, 15 min; each hint 45 s before.
    assert_eq!(five, vec![300 - 45, 600 - 45, 900 - 45], "{seen:?}");
    assert!(seen.iter().all(|(j, _)| j != "every-second"), "a job that fires every second stays warm without hints");
}

/// Never reports a start (a launch the agent lost, as far as the server can tell).
struct Silent;

#[async_trait::async_trait]
impl Runtime for Silent {
    fn name(&self) -> &'static str {
        "silent"
    }

    async fn run(&self, mut ctx: RunContext) -> Outcome {
        let _ = ctx.kill.wait_for(|k| k.is_some()).await;
        Outcome::failed_to_start("killed before it started")
    }
}

#[tokio::test(start_paused = true)]
async fn a_launch_with_no_word_back_is_lost_after_the_launch_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let server = common::paused_server(store, dir.path(), Arc::new(Silent), common::clock_at(common::START)).await;
    let spec = JobSpec::from_json(&json!({"name": "quiet", "schedule": "@yearly", "command": "true"}).to_string()).unwrap();
    server.scheduler.create_job(spec).await.unwrap();
    let run = server.scheduler.run_now("quiet").await.unwrap();
    tokio::time::sleep(Duration::from_secs(299)).await;
    assert_eq!(server.store.get_run(run.id).await.unwrap().state, RunState::Starting);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = server.store.get_run(run.id).await.unwrap();
    assert_eq!(r.state, RunState::Lost, "{r:?}");
    assert!(r.reason.as_deref().unwrap().contains("no word from the agent"), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn a_docker_job_goes_back_to_the_agent_that_holds_its_warm_container() {
    let mut c = Cluster::start().await;
    c.add_agent("a", 4.0, &[]).await;
    c.add_agent("b", 16.0, &[]).await;
    // Bin-packing puts each run on the fullest agent that fits: the blocker on a, then the first
    // docker run on b, as a has no room left for it.
    c.job(json!({"name": "blocker", "schedule": "@yearly", "command": "3600", "resources": {"cpus": 3}})).await;
    let docker = json!({"name": "warm", "schedule": "@yearly", "command": "1", "resources": {"cpus": 2},
                        "runtime": "docker", "docker": {"image": "busybox"}});
    c.job(docker).await;
    c.job(json!({"name": "plain", "schedule": "@yearly", "command": "1", "resources": {"cpus": 2}})).await;
    let blocker = c.server.scheduler.run_now("blocker").await.unwrap();
    assert_eq!(blocker.agent.as_deref(), Some("a"));
    let first = c.server.scheduler.run_now("warm").await.unwrap();
    assert_eq!(first.agent.as_deref(), Some("b"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.server.scheduler.kill_run(blocker.id).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Now a fits and packs better, yet the docker job returns to its warm container on b; a job
    // without one goes to a.
    let second = c.server.scheduler.run_now("warm").await.unwrap();
    assert_eq!(second.agent.as_deref(), Some("b"), "{second:?}");
    let plain = c.server.scheduler.run_now("plain").await.unwrap();
    assert_eq!(plain.agent.as_deref(), Some("a"), "{plain:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lost_agents_replicas_move_with_their_indices() {
    let mut c = Cluster::start().await;
    c.add_agent("a", 4.0, &[]).await;
    c.add_agent("b", 4.0, &[]).await;
    let spec = tug_core::ServiceSpec::from_json(&json!({"name": "api", "replicas": 4, "command": "3600", "resources": {"cpus": 1}}).to_string()).unwrap();
    c.server.scheduler.create_service(spec.validate().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = c.server.scheduler.service_status("api").await.unwrap().unwrap();
    let on = |st: &tug_server::scheduler::ServiceStatus, agent: &str| -> Vec<u32> {
        st.list.iter().filter(|r| r.agent.as_deref() == Some(agent)).map(|r| r.index).collect()
    };
    // Spread: two replicas on each agent, all healthy (no health check: running is healthy).
    assert_eq!((on(&st, "a").len(), on(&st, "b").len(), st.healthy), (2, 2, 4), "{st:?}");
    let moved = on(&st, "a");
    c.kill_agent("a");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let st = c.server.scheduler.service_status("api").await.unwrap().unwrap();
    assert_eq!((on(&st, "b"), st.healthy), (vec![0, 1, 2, 3], 4), "{st:?}");
    for r in st.list.iter().filter(|r| moved.contains(&r.index)) {
        assert_eq!(r.attempt, 2, "{r:?}");
        assert!(r.reason.as_deref().unwrap().contains("agent a was lost"), "{r:?}");
    }
    let agents = c.server.scheduler.agents().await.unwrap();
    assert_eq!(agents.iter().find(|a| a.name == "b").unwrap().cpus, (4.0, 4.0), "b holds all four replicas' cpus");
    assert_eq!(c.server.scheduler.check_invariants().await.unwrap(), Ok(()));
}
