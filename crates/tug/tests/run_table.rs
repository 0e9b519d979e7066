//! The run table's invariants (`scheduler/runs.rs`) hold after every step of random sequences of
//! fires, launches, status updates, kills, agent losses, reconnects and server crashes, and no
//! attempt of a run is ever launched on two agents.
//!
//! Agents here are models driven by the test: each takes its launches and kills from its channel,
//! reports when the test says so, resends what the server has not acknowledged when it
//! reconnects, and says what it holds. Paused tokio time and the in-memory store.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use proptest::prelude::*;
use serde_json::json;
use tokio::sync::mpsc;
use tug_core::JobSpec;
use tug_core::placement::Capacity;
use tug_core::protocol::{HeldRun, StatusUpdate, ToAgent, ToServer};
use tug_core::run::{RunId, RunState};
use tug_server::clock::{Clock, TokioClock};
use tug_server::embedded::Embedded;
use tug_server::scheduler::FromAgent;
use tug_server::scheduler::agents::Registration;
use tug_store::Store;
use tug_store::mem::MemStore;

/// The agents: name and cpus (runs need 1 cpu, so the cluster holds 3 at a time).
const AGENTS: [(&str, f64); 2] = [("a", 2.0), ("b", 1.0)];
const JOBS: [&str; 3] = ["allow", "forbid", "replace"];

#[derive(Debug, Clone)]
enum Op {
    /// A manual run of a job.
    Fire(usize),
    /// An agent reports one of its attempts running.
    Start(usize, usize),
    /// An agent reports one of its attempts ended (succeeded or failed).
    End(usize, usize, bool),
    /// A job is deleted (its active runs killed) and created again.
    Recreate(usize),
    /// A kill request for one of the active runs.
    Kill(usize),
    /// An agent goes silent (and is lost after the agent timeout).
    Cut(usize),
    /// An agent (re)connects: registers on a fresh channel, says what it holds, resends.
    Join(usize),
    /// Time passes (seconds), with heartbeats from the connected agents.
    Wait(u64),
    /// The server crashes and starts again on the same store; connected agents rejoin.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..JOBS.len()).prop_map(Op::Fire),
        3 => (0..AGENTS.len(), 0..4usize).prop_map(|(a, i)| Op::Start(a, i)),
        3 => (0..AGENTS.len(), 0..4usize, any::<bool>()).prop_map(|(a, i, ok)| Op::End(a, i, ok)),
        1 => (0..8usize).prop_map(Op::Kill),
        1 => (0..JOBS.len()).prop_map(Op::Recreate),
        1 => (0..AGENTS.len()).prop_map(Op::Cut),
        2 => (0..AGENTS.len()).prop_map(Op::Join),
        2 => (1..15u64).prop_map(Op::Wait),
        1 => Just(Op::Crash),
    ]
}

/// An agent as the test models it.
struct Model {
    name: &'static str,
    cpus: f64,
    rx: Option<mpsc::Receiver<ToAgent>>,
    connected: bool,
    /// Attempts it runs: run → (attempt, reported running).
    running: BTreeMap<RunId, (u32, bool)>,
    /// Final updates the server has not acknowledged, by seq.
    unacked: BTreeMap<u64, StatusUpdate>,
    seq: u64,
    acks: (mpsc::UnboundedSender<u64>, mpsc::UnboundedReceiver<u64>),
    /// Final updates of killed attempts, to send.
    outbox: Vec<StatusUpdate>,
}

struct World {
    store: Arc<dyn Store>,
    server: Option<Embedded>,
    clock: Arc<TokioClock>,
    agents: Vec<Model>,
    /// Every (run, attempt) launched, and where.
    launched: HashMap<(RunId, u32), &'static str>,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let clock = Arc::new(TokioClock::starting_at(common::START.parse::<Timestamp>().unwrap()));
        let agents = AGENTS
            .iter()
            .map(|&(name, cpus)| Model {
                name,
                cpus,
                rx: None,
                connected: false,
                running: BTreeMap::new(),
                unacked: BTreeMap::new(),
                seq: 0,
                acks: mpsc::unbounded_channel(),
                outbox: Vec::new(),
            })
            .collect();
        let mut w = World { store, server: None, clock, agents, launched: HashMap::new(), _dir: dir };
        w.boot().await;
        for j in 0..JOBS.len() {
            w.create(j).await;
        }
        for i in 0..w.agents.len() {
            w.join(i).await;
        }
        w
    }

    /// Creates job `j`: its name is its concurrency policy.
    async fn create(&self, j: usize) {
        let spec = json!({"name": JOBS[j], "schedule": "@yearly", "command": "true", "resources": {"cpus": 1},
                          "concurrency": JOBS[j], "retries": {"count": 1, "initial_delay": "2s"}});
        self.server().scheduler.create_job(JobSpec::from_json(&spec.to_string()).unwrap()).await.unwrap();
    }

    fn server(&self) -> &Embedded {
        self.server.as_ref().expect("a server is up")
    }

    async fn boot(&mut self) {
        // The new server's clock goes on from the old one's.
        self.clock = Arc::new(TokioClock::starting_at(self.clock.now()));
        // The in-process agent stays out of the way: runs go to the modelled agents.
        let server = common::paused_server_for_agents(self.store.clone(), self._dir.path(), self.clock.clone()).await;
        self.server = Some(server);
    }

    async fn send(&self, msg: ToServer, acked: Option<&mpsc::UnboundedSender<u64>>) {
        let report = FromAgent { msg, acks: acked.cloned() };
        let _ = self.server().updates_sender().send(report).await;
    }

    async fn join(&mut self, i: usize) {
        let (tx, rx) = mpsc::channel(4096);
        let a = &mut self.agents[i];
        let resources = Capacity { cpus: a.cpus, mem: 8 << 30, disk: 100 << 30 };
        let reg = Registration { name: a.name.into(), tx, resources, attributes: Default::default() };
        a.rx = Some(rx);
        a.connected = true;
        self.server().scheduler.register_agent(reg).await.unwrap();
        let a = &self.agents[i];
        let held = a
            .running
            .iter()
            .map(|(&run_id, &(attempt, _))| HeldRun { run_id, attempt, finished: false, replica: None })
            .chain(a.unacked.values().map(|u| HeldRun { run_id: u.run_id, attempt: u.attempt, finished: true, replica: None }))
            .collect();
        self.send(ToServer::Held { agent: a.name.into(), runs: held }, None).await;
        for u in a.unacked.values() {
            self.send(ToServer::Status(u.clone()), Some(&a.acks.0)).await;
        }
    }

    /// Takes what the server sent each agent and the acks it gave.
    fn pump(&mut self) -> Result<(), TestCaseError> {
        for a in &mut self.agents {
            while let Ok(seq) = a.acks.1.try_recv() {
                a.unacked.remove(&seq);
            }
            let Some(rx) = a.rx.as_mut() else { continue };
            while let Ok(msg) = rx.try_recv() {
                match msg {
                    ToAgent::Launch(l) => {
                        let key = (l.run_id, l.attempt);
                        let first = *self.launched.entry(key).or_insert(a.name);
                        prop_assert_eq!(first, a.name, "attempt {:?} launched on {} and on {}", key, first, a.name);
                        // An agent ignores an attempt it has seen (a launch sent again).
                        if a.running.get(&l.run_id).is_none_or(|(att, _)| *att != l.attempt)
                            && !a.unacked.values().any(|u| (u.run_id, u.attempt) == key)
                        {
                            a.running.insert(l.run_id, (l.attempt, false));
                        }
                    }
                    ToAgent::Kill { run_id, attempt, reason } => {
                        if let Some(&(att, _)) = a.running.get(&run_id)
                            && attempt.is_none_or(|x| x == att)
                        {
                            a.running.remove(&run_id);
                            a.seq += 1;
                            let u = update(a.seq, run_id, att, reason.final_state(), None);
                            a.unacked.insert(a.seq, u.clone());
                            a.outbox.push(u);
                        }
                    }
                    ToAgent::Drain { .. } | ToAgent::Prewarm { .. } => {}
                }
            }
        }
        Ok(())
    }

    /// Sends the final updates the kills above produced (an agent away resends them on joining).
    async fn flush_kills(&mut self) {
        for i in 0..self.agents.len() {
            let out = std::mem::take(&mut self.agents[i].outbox);
            if !self.agents[i].connected {
                continue;
            }
            let acks = self.agents[i].acks.0.clone();
            for u in out {
                self.send(ToServer::Status(u), Some(&acks)).await;
            }
        }
    }

    async fn beat(&self) {
        for a in self.agents.iter().filter(|a| a.connected) {
            self.send(ToServer::Heartbeat { agent: a.name.into(), warm_containers: 0 }, None).await;
        }
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Fire(j) => {
                let _ = self.server().scheduler.run_now(JOBS[j]).await;
            }
            Op::Start(i, pick) => {
                let a = &mut self.agents[i];
                let quiet: Vec<RunId> = a.running.iter().filter(|(_, (_, r))| !r).map(|(id, _)| *id).collect();
                if a.connected && !quiet.is_empty() {
                    let id = quiet[pick % quiet.len()];
                    let entry = a.running.get_mut(&id).expect("listed");
                    entry.1 = true;
                    a.seq += 1;
                    let u = update(a.seq, id, entry.0, RunState::Running, None);
                    let acks = a.acks.0.clone();
                    self.send(ToServer::Status(u), Some(&acks)).await;
                }
            }
            Op::End(i, pick, ok) => {
                let a = &mut self.agents[i];
                let ids: Vec<RunId> = a.running.keys().copied().collect();
                if a.connected && !ids.is_empty() {
                    let id = ids[pick % ids.len()];
                    let (attempt, _) = a.running.remove(&id).expect("listed");
                    a.seq += 1;
                    let (state, code) = if ok { (RunState::Succeeded, 0) } else { (RunState::Failed, 1) };
                    let u = update(a.seq, id, attempt, state, Some(code));
                    a.unacked.insert(a.seq, u.clone());
                    let acks = a.acks.0.clone();
                    self.send(ToServer::Status(u), Some(&acks)).await;
                }
            }
            Op::Kill(pick) => {
                let active = self.store.active_runs().await.unwrap();
                if !active.is_empty() {
                    let _ = self.server().scheduler.kill_run(active[pick % active.len()].id).await;
                }
            }
            Op::Recreate(j) => {
                self.server().scheduler.delete_job(JOBS[j]).await.unwrap();
                self.create(j).await;
            }
            Op::Cut(i) => {
                self.agents[i].connected = false;
                self.agents[i].rx = None;
            }
            Op::Join(i) => self.join(i).await,
            Op::Wait(secs) => {
                for _ in 0..secs {
                    self.beat().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    self.pump()?;
                    self.flush_kills().await;
                }
            }
            Op::Crash => {
                self.server.take().expect("a server is up").abort();
                tokio::time::sleep(Duration::from_millis(10)).await;
                for a in &mut self.agents {
                    a.rx = None;
                    // Acks of the dead server that never came are not coming.
                    while a.acks.1.try_recv().is_ok() {}
                }
                self.boot().await;
                for i in 0..self.agents.len() {
                    if self.agents[i].connected {
                        self.join(i).await;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.pump()?;
        self.flush_kills().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.pump()?;
        let check = self.server().scheduler.check_invariants().await.unwrap();
        prop_assert!(check.is_ok(), "after {:?}: {}", op, check.unwrap_err());
        Ok(())
    }
}

fn update(seq: u64, run_id: RunId, attempt: u32, state: RunState, exit_code: Option<i32>) -> StatusUpdate {
    StatusUpdate { seq, run_id, attempt, state, at: Timestamp::now(), exit_code, signal: None, reason: None }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_run_table_keeps_its_invariants(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let mut w = World::start().await;
            for op in &ops {
                w.step(op).await?;
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
}
