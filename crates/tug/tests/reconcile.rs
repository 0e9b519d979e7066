//! Reconciliation between the server and its agents: an agent whose link was cut comes back and
//! has its given-up attempts stopped; an agent that re-registers says what it holds and the
//! server re-sends lost launches and gives up runs the agent no longer has; after a server
//! restart, running runs are rebuilt from the agents' reports instead of being launched again.
//!
//! The agents here are driven by hand (the test sends their heartbeats, reports and `Held`), so
//! each message the server sends back can be checked. Paused tokio time and the in-memory store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use tokio::sync::mpsc;
use tug_core::placement::Capacity;
use tug_core::protocol::{HeldRun, KillReason, Launch, StatusUpdate, ToAgent, ToServer};
use tug_core::run::{Run, RunId, RunState};
use tug_core::JobSpec;
use tug_server::embedded::Embedded;
use tug_server::scheduler::agents::Registration;
use tug_server::scheduler::FromAgent;
use tug_store::mem::MemStore;
use tug_store::{RunQuery, Store};

/// A server whose runs go to the hand-driven agents.
async fn server(store: Arc<dyn Store>, dir: &std::path::Path) -> Embedded {
    common::paused_server_for_agents(store, dir, common::clock_at(common::START)).await
}

/// An agent driven by the test.
struct Hand {
    name: String,
    rx: mpsc::Receiver<ToAgent>,
    updates: mpsc::Sender<FromAgent>,
    beats: Option<tokio::task::JoinHandle<()>>,
    seq: u64,
    /// Where the server acknowledges this agent's status updates, by seq.
    acks: (mpsc::UnboundedSender<u64>, mpsc::UnboundedReceiver<u64>),
}

impl Hand {
    /// Registers (or registers again, on a fresh channel) and starts heartbeats.
    async fn join(server: &Embedded, name: &str) -> Hand {
        let (tx, rx) = mpsc::channel(1024);
        let resources = Capacity { cpus: 4.0, mem: 8 << 30, disk: 100 << 30 };
        let reg = Registration { name: name.into(), tx, resources, attributes: Default::default() };
        server.scheduler.register_agent(reg).await.unwrap();
        let acks = mpsc::unbounded_channel();
        let mut hand = Hand { name: name.into(), rx, updates: server.updates_sender(), beats: None, seq: 0, acks };
        hand.resume();
        hand
    }

    /// Heartbeats every 2 s from now on.
    fn resume(&mut self) {
        let (updates, agent) = (self.updates.clone(), self.name.clone());
        self.beats = Some(tokio::spawn(async move {
            loop {
                if updates.send(ToServer::Heartbeat { agent: agent.clone(), warm_containers: 0 }.into()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }));
    }

    /// Goes silent (a cut link, a dead host).
    fn cut(&mut self) {
        if let Some(b) = self.beats.take() {
            b.abort();
        }
    }

    async fn held(&self, runs: &[(RunId, u32)]) {
        let runs = runs.iter().map(|&(run_id, attempt)| HeldRun { run_id, attempt, finished: false, replica: None }).collect();
        self.updates.send(ToServer::Held { agent: self.name.clone(), runs }.into()).await.unwrap();
    }

    /// Says it holds service replicas: `(run, attempt, "service/NAME/INDEX")`.
    async fn held_replicas(&self, runs: &[(RunId, u32, &str)]) {
        let runs = runs.iter().map(|&(run_id, attempt, name)| HeldRun { run_id, attempt, finished: false, replica: Some(name.into()) }).collect();
        self.updates.send(ToServer::Held { agent: self.name.clone(), runs }.into()).await.unwrap();
    }

    async fn report(&mut self, run_id: RunId, attempt: u32, state: RunState) {
        let exit_code = (state == RunState::Succeeded).then_some(0);
        self.report_exit(run_id, attempt, state, exit_code).await;
    }

    /// Reports a state with an exit code; returns the update's seq.
    async fn report_exit(&mut self, run_id: RunId, attempt: u32, state: RunState, exit_code: Option<i32>) -> u64 {
        self.seq += 1;
        let u = StatusUpdate { seq: self.seq, run_id, attempt, state, at: Timestamp::now(), exit_code, signal: None, reason: None };
        self.resend(u).await;
        self.seq
    }

    /// Sends an update as it is (after a reconnect, one the server never acknowledged).
    async fn resend(&self, u: StatusUpdate) {
        let report = FromAgent { msg: ToServer::Status(u), acks: Some(self.acks.0.clone()) };
        self.updates.send(report).await.unwrap();
    }

    /// The seqs acknowledged so far.
    fn acked(&mut self) -> Vec<u64> {
        std::iter::from_fn(|| self.acks.1.try_recv().ok()).collect()
    }

    /// The next launch or kill (drain notices and pre-warm hints skipped), within 5 s.
    async fn next(&mut self) -> ToAgent {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.rx.recv()).await;
            match msg.expect("a message within 5s").expect("channel open") {
                ToAgent::Drain { .. } | ToAgent::Prewarm { .. } => continue,
                m => return m,
            }
        }
    }

    async fn launch(&mut self) -> Launch {
        match self.next().await {
            ToAgent::Launch(l) => *l,
            other => panic!("expected a launch, got {other:?}"),
        }
    }

    /// Nothing but heartbeat-free chatter arrives for a second.
    async fn quiet(&mut self) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(m) = self.rx.try_recv() {
            assert!(matches!(m, ToAgent::Drain { .. } | ToAgent::Prewarm { .. }), "unexpected message: {m:?}");
        }
    }
}

impl Drop for Hand {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn job(server: &Embedded, name: &str) {
    let spec = json!({"name": name, "schedule": "@yearly", "command": "true", "resources": {"cpus": 1},
                      "retries": {"count": 1, "initial_delay": "1s"}});
    server.scheduler.create_job(JobSpec::from_json(&spec.to_string()).unwrap()).await.unwrap();
}

async fn runs(server: &Embedded, job: &str) -> Vec<Run> {
    server.store.list_runs(job, &RunQuery { limit: 100, ..Default::default() }).await.unwrap().items
}

#[tokio::test(start_paused = true)]
async fn an_agent_back_from_a_cut_link_has_its_replaced_attempt_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(Arc::new(MemStore::new()), dir.path()).await;
    let mut x = Hand::join(&server, "x").await;
    job(&server, "long").await;
    let run = server.scheduler.run_now("long").await.unwrap();
    let l = x.launch().await;
    assert_eq!((l.run_id, l.attempt), (run.id, 1));
    x.report(run.id, 1, RunState::Running).await;
    let mut y = Hand::join(&server, "y").await;

    x.cut();
    // Lost after the 10 s agent timeout; retried 1 s later on the only agent left.
    tokio::time::sleep(Duration::from_secs(13)).await;
    let l2 = y.launch().await;
    assert_eq!((l2.run_id, l2.attempt), (run.id, 2));
    y.report(run.id, 2, RunState::Running).await;

    // The link comes back (the old stream survived): the stale attempt is stopped, only it.
    x.resume();
    match x.next().await {
        ToAgent::Kill { run_id, attempt, reason } => {
            assert_eq!((run_id, attempt, reason), (run.id, Some(1), KillReason::Superseded));
        }
        other => panic!("expected a kill of attempt 1, got {other:?}"),
    }
    // Its report of that attempt changes nothing; attempt 2 decides the run.
    x.report(run.id, 1, RunState::Killed).await;
    y.report(run.id, 2, RunState::Succeeded).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = runs(&server, "long").await;
    assert_eq!(all.len(), 1, "{all:?}");
    let r = &all[0];
    assert_eq!((r.state, r.attempt, r.agent.as_deref()), (RunState::Succeeded, 2, Some("y")), "{r:?}");
    let attempts = server.store.attempts(r.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, RunState::Lost);
    let x_view = server.scheduler.agents().await.unwrap().into_iter().find(|a| a.name == "x").unwrap();
    assert_eq!(serde_json::to_value(x_view.state).unwrap(), "up");
}

#[tokio::test(start_paused = true)]
async fn a_reregistering_agent_gets_lost_launches_again_and_loses_runs_it_no_longer_has() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(Arc::new(MemStore::new()), dir.path()).await;
    let mut x = Hand::join(&server, "x").await;
    job(&server, "ran").await;
    job(&server, "sent").await;
    let ran = server.scheduler.run_now("ran").await.unwrap();
    x.launch().await;
    x.report(ran.id, 1, RunState::Running).await;
    let sent = server.scheduler.run_now("sent").await.unwrap();
    // This launch goes into a stream that is about to break: the agent never gets it.
    x.launch().await;

    // The agent restarts without either run and registers again, holding nothing but an attempt
    // the server never gave it.
    let mut x = Hand::join(&server, "x").await;
    x.held(&[(999, 1)]).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(x.next().await);
    }
    assert!(
        got.iter().any(|m| matches!(m, ToAgent::Kill { run_id: 999, attempt: Some(1), reason: KillReason::Superseded })),
        "an attempt the server does not know is stopped: {got:?}"
    );
    let relaunched = got.iter().find_map(|m| match m {
        ToAgent::Launch(l) => Some((l.run_id, l.attempt)),
        _ => None,
    });
    assert_eq!(relaunched, Some((sent.id, 1)), "the starting run's launch is sent again, same attempt: {got:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = server.store.get_run(ran.id).await.unwrap();
    // Retried (1 retry allowed): pending now, with the lost attempt recorded and explained.
    assert_eq!((r.state, r.attempt), (RunState::Pending, 2), "{r:?}");
    let attempts = server.store.attempts(ran.id).await.unwrap();
    assert_eq!(attempts[0].state, RunState::Lost);
    assert!(attempts[0].reason.as_deref().unwrap().contains("agent x came back without this run"), "{attempts:?}");
}

#[tokio::test(start_paused = true)]
async fn after_a_server_restart_a_run_its_agent_still_holds_goes_on_and_is_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let first = server(store.clone(), dir.path()).await;
    let mut x = Hand::join(&first, "x").await;
    job(&first, "steady").await;
    job(&first, "starting").await;
    let run = first.scheduler.run_now("steady").await.unwrap();
    let l = x.launch().await;
    assert_eq!(l.epoch, 1);
    x.report(run.id, 1, RunState::Running).await;
    let waiting = first.scheduler.run_now("starting").await.unwrap();
    x.launch().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    x.cut();
    x.updates = mpsc::channel(1).0; // let go of the old server
    drop(x);
    first.shutdown().await;

    let second = server(store.clone(), dir.path()).await;
    let agents = second.scheduler.agents().await.unwrap();
    let x_view = agents.iter().find(|a| a.name == "x").expect("the agent of recovered runs is known");
    assert_eq!(serde_json::to_value(x_view.state).unwrap(), "awaited");
    assert_eq!(x_view.runs, 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut x = Hand::join(&second, "x").await;
    x.held(&[(run.id, 1), (waiting.id, 1)]).await;
    x.quiet().await;
    assert_eq!(second.store.get_run(run.id).await.unwrap().state, RunState::Running);
    x.report(waiting.id, 1, RunState::Running).await;
    x.report(run.id, 1, RunState::Succeeded).await;
    x.report(waiting.id, 1, RunState::Succeeded).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    for (job, id) in [("steady", run.id), ("starting", waiting.id)] {
        let all = runs(&second, job).await;
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!((all[0].id, all[0].state, all[0].attempt), (id, RunState::Succeeded, 1), "{all:?}");
        assert!(second.store.attempts(id).await.unwrap().is_empty());
    }
    // Launches from the restarted server carry the next epoch.
    let again = second.scheduler.run_now("steady").await.unwrap();
    let l = x.launch().await;
    assert_eq!((l.run_id, l.epoch), (again.id, 2));
}

#[tokio::test(start_paused = true)]
async fn after_a_server_restart_runs_of_an_agent_that_never_returns_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let first = server(store.clone(), dir.path()).await;
    let mut x = Hand::join(&first, "x").await;
    job(&first, "orphan").await;
    let run = first.scheduler.run_now("orphan").await.unwrap();
    x.launch().await;
    x.report(run.id, 1, RunState::Running).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    x.cut();
    x.updates = mpsc::channel(1).0;
    drop(x);
    first.shutdown().await;

    let second = server(store.clone(), dir.path()).await;
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(second.store.get_run(run.id).await.unwrap().state, RunState::Running, "awaited until the timeout");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let attempts = second.store.attempts(run.id).await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].state, RunState::Lost);
    assert!(
        attempts[0].reason.as_deref().unwrap().contains("agent x did not reconnect within 10s of the server's restart"),
        "{attempts:?}"
    );
    let x_view = second.scheduler.agents().await.unwrap().into_iter().find(|a| a.name == "x").unwrap();
    assert_eq!(serde_json::to_value(x_view.state).unwrap(), "lost");
    // Its one retry waits for an agent (the only other one is drained): lost once, not twice.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let r = second.store.get_run(run.id).await.unwrap();
    assert_eq!((r.state, r.attempt), (RunState::Pending, 2), "{r:?}");
    assert_eq!(second.store.attempts(run.id).await.unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_report_warm_containers_to_the_agent_list_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(Arc::new(MemStore::new()), dir.path()).await;
    let mut x = Hand::join(&server, "x").await;
    let mut y = Hand::join(&server, "y").await;
    // Their own heartbeats (which say 0) stop, so only these count.
    x.cut();
    y.cut();
    for (hand, warm) in [(&x, 3), (&y, 2)] {
        hand.updates.send(ToServer::Heartbeat { agent: hand.name.clone(), warm_containers: warm }.into()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let agents = server.scheduler.agents().await.unwrap();
    let warm = |n: &str| agents.iter().find(|a| a.name == n).unwrap().warm_containers;
    assert_eq!((warm("x"), warm("y")), (3, 2));
    assert_eq!(server.metrics.warm_containers.get(), 5);
}

/// A store whose run writes can be made to hang, as a disk that stops answering would.
struct Stalling {
    inner: Arc<dyn Store>,
    stalled: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Store for Stalling {
    async fn create_job(&self, spec: &JobSpec, now: Timestamp) -> tug_store::Result<tug_store::JobRecord> {
        self.inner.create_job(spec, now).await
    }
    async fn update_job(&self, spec: &JobSpec, v: Option<u64>, now: Timestamp) -> tug_store::Result<tug_store::JobRecord> {
        self.inner.update_job(spec, v, now).await
    }
    async fn get_job(&self, name: &str) -> tug_store::Result<tug_store::JobRecord> {
        self.inner.get_job(name).await
    }
    async fn delete_job(&self, name: &str) -> tug_store::Result<Vec<tug_store::RemovedRun>> {
        self.inner.delete_job(name).await
    }
    async fn list_jobs(&self, q: &tug_store::JobQuery) -> tug_store::Result<tug_store::Page<tug_store::JobRecord>> {
        self.inner.list_jobs(q).await
    }
    async fn load_jobs(&self) -> tug_store::Result<Vec<tug_store::JobRecord>> {
        self.inner.load_jobs().await
    }
    async fn commit_fires(&self, batch: tug_store::FireBatch, now: Timestamp) -> tug_store::Result<Vec<Run>> {
        self.inner.commit_fires(batch, now).await
    }
    async fn save_runs(&self, runs: &[Run], attempts: &[tug_core::run::Attempt]) -> tug_store::Result<()> {
        if self.stalled.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.save_runs(runs, attempts).await
    }
    async fn get_run(&self, id: RunId) -> tug_store::Result<Run> {
        self.inner.get_run(id).await
    }
    async fn list_runs(&self, job: &str, q: &RunQuery) -> tug_store::Result<tug_store::Page<Run>> {
        self.inner.list_runs(job, q).await
    }
    async fn active_runs(&self) -> tug_store::Result<Vec<Run>> {
        self.inner.active_runs().await
    }
    async fn attempts(&self, id: RunId) -> tug_store::Result<Vec<tug_core::run::Attempt>> {
        self.inner.attempts(id).await
    }
    async fn prune_runs(&self, job: &str, keep: u32) -> tug_store::Result<Vec<tug_store::RemovedRun>> {
        self.inner.prune_runs(job, keep).await
    }
    async fn run_totals(&self, job: Option<&str>) -> tug_store::Result<Vec<(String, tug_store::RunTotals)>> {
        self.inner.run_totals(job).await
    }
    async fn next_epoch(&self) -> tug_store::Result<u64> {
        self.inner.next_epoch().await
    }
    async fn create_pool(&self, spec: &tug_store::PoolSpec, now: Timestamp) -> tug_store::Result<tug_store::PoolRecord> {
        self.inner.create_pool(spec, now).await
    }
    async fn get_pool(&self, name: &str) -> tug_store::Result<tug_store::PoolRecord> {
        self.inner.get_pool(name).await
    }
    async fn list_pools(&self) -> tug_store::Result<Vec<tug_store::PoolRecord>> {
        self.inner.list_pools().await
    }
    async fn delete_pool(&self, name: &str) -> tug_store::Result<()> {
        self.inner.delete_pool(name).await
    }
    async fn list_claims(&self, pool: Option<&str>) -> tug_store::Result<Vec<tug_store::Claim>> {
        self.inner.list_claims(pool).await
    }
    async fn put_claim(&self, claim: &tug_store::Claim) -> tug_store::Result<()> {
        self.inner.put_claim(claim).await
    }
    async fn remove_claim(&self, pool: &str, name: &str) -> tug_store::Result<Option<tug_store::Claim>> {
        self.inner.remove_claim(pool, name).await
    }
    async fn create_service(&self, spec: &tug_core::ServiceSpec, now: Timestamp) -> tug_store::Result<tug_store::ServiceRecord> {
        self.inner.create_service(spec, now).await
    }
    async fn update_service(&self, spec: &tug_core::ServiceSpec, now: Timestamp) -> tug_store::Result<tug_store::ServiceRecord> {
        self.inner.update_service(spec, now).await
    }
    async fn get_service(&self, name: &str) -> tug_store::Result<tug_store::ServiceRecord> {
        self.inner.get_service(name).await
    }
    async fn list_services(&self) -> tug_store::Result<Vec<tug_store::ServiceRecord>> {
        self.inner.list_services().await
    }
    async fn delete_service(&self, name: &str) -> tug_store::Result<()> {
        self.inner.delete_service(name).await
    }
    async fn put_progress(&self, record: &tug_store::ProgressRecord) -> tug_store::Result<()> {
        self.inner.put_progress(record).await
    }
    async fn list_progress(&self, kind: tug_store::ProgressKind) -> tug_store::Result<Vec<tug_store::ProgressRecord>> {
        self.inner.list_progress(kind).await
    }
    async fn delete_progress(&self, kind: tug_store::ProgressKind, ids: &[u64]) -> tug_store::Result<()> {
        self.inner.delete_progress(kind, ids).await
    }
    async fn create_token(&self, token: &tug_store::TokenRecord) -> tug_store::Result<()> {
        self.inner.create_token(token).await
    }
    async fn list_tokens(&self) -> tug_store::Result<Vec<tug_store::TokenRecord>> {
        self.inner.list_tokens().await
    }
    async fn revoke_token(&self, id: &str, now: Timestamp) -> tug_store::Result<tug_store::TokenRecord> {
        self.inner.revoke_token(id, now).await
    }
    async fn append_audit(&self, entry: &tug_store::AuditEntry) -> tug_store::Result<u64> {
        self.inner.append_audit(entry).await
    }
    async fn list_audit(&self, q: &tug_store::AuditQuery) -> tug_store::Result<tug_store::Page<tug_store::AuditEntry>> {
        self.inner.list_audit(q).await
    }
    async fn prune_audit(&self, before: Timestamp) -> tug_store::Result<u64> {
        self.inner.prune_audit(before).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_final_update_is_acknowledged_only_once_written_so_a_crash_before_the_write_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let stalling = Arc::new(Stalling { inner: store.clone(), stalled: false.into() });
    let first = server(stalling.clone(), dir.path()).await;
    let mut x = Hand::join(&first, "x").await;
    let spec = json!({"name": "once", "schedule": "@yearly", "command": "true", "resources": {"cpus": 1}});
    first.scheduler.create_job(JobSpec::from_json(&spec.to_string()).unwrap()).await.unwrap();
    let run = first.scheduler.run_now("once").await.unwrap();
    x.launch().await;
    let running = x.report_exit(run.id, 1, RunState::Running, None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(x.acked(), [running], "a written update is acknowledged");

    // The disk stops answering; the run fails with exit code 3.
    stalling.stalled.store(true, std::sync::atomic::Ordering::SeqCst);
    let seq = x.report_exit(run.id, 1, RunState::Failed, Some(3)).await;
    let last = StatusUpdate { seq, run_id: run.id, attempt: 1, state: RunState::Failed, at: Timestamp::now(), exit_code: Some(3), signal: None, reason: None };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(x.acked(), Vec::<u64>::new(), "nothing is acknowledged before its write returns");
    // The server dies with the write still hanging: the store says the run is running.
    first.abort();
    x.cut();
    assert_eq!(store.get_run(run.id).await.unwrap().state, RunState::Running);

    // Restarted on the same data, the agent comes back holding the finished attempt and sends
    // its unacknowledged update again.
    let second = server(store.clone(), dir.path()).await;
    let mut x2 = Hand::join(&second, "x").await;
    x2.acks = std::mem::replace(&mut x.acks, mpsc::unbounded_channel());
    let held = vec![HeldRun { run_id: run.id, attempt: 1, finished: true, replica: None }];
    x2.updates.send(ToServer::Held { agent: "x".into(), runs: held }.into()).await.unwrap();
    x2.resend(last).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(x2.acked(), [seq]);
    // Past the agent timeout too: the run was not lost, not launched again, and has the agent's result.
    tokio::time::sleep(Duration::from_secs(20)).await;
    x2.quiet().await;
    let all = runs(&second, "once").await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!((all[0].state, all[0].exit_code, all[0].attempt), (RunState::Failed, Some(3), 1), "{all:?}");
    assert!(second.store.attempts(run.id).await.unwrap().is_empty(), "no attempt was given up");
}

fn state_of(agents: &[tug_server::scheduler::agents::AgentView], name: &str) -> serde_json::Value {
    serde_json::to_value(agents.iter().find(|a| a.name == name).unwrap().state).unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_says_it_is_restarting_keeps_its_runs_until_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(Arc::new(MemStore::new()), dir.path()).await;
    let mut x = Hand::join(&server, "x").await;
    job(&server, "kept").await;
    let run = server.scheduler.run_now("kept").await.unwrap();
    x.launch().await;
    x.report(run.id, 1, RunState::Running).await;
    let mut y = Hand::join(&server, "y").await;

    // x restarts, leaving the run going: a minute's notice, three times the agent timeout.
    x.updates.send(ToServer::BackSoon { agent: "x".into(), within: Duration::from_secs(60) }.into()).await.unwrap();
    x.cut();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(server.store.get_run(run.id).await.unwrap().state, RunState::Running, "not lost while x restarts");
    assert_eq!(state_of(&server.scheduler.agents().await.unwrap(), "x"), "restarting");
    y.quiet().await;

    // Back: it holds the run, which then ends here, once.
    let mut x = Hand::join(&server, "x").await;
    x.held(&[(run.id, 1)]).await;
    x.report(run.id, 1, RunState::Succeeded).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = server.store.get_run(run.id).await.unwrap();
    assert_eq!((r.state, r.attempt, r.agent.as_deref()), (RunState::Succeeded, 1, Some("x")), "{r:?}");
    assert!(server.store.attempts(run.id).await.unwrap().is_empty());
    assert_eq!(state_of(&server.scheduler.agents().await.unwrap(), "x"), "up");
}

#[tokio::test(start_paused = true)]
async fn a_restarting_agent_not_back_by_its_deadline_is_lost_with_its_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(Arc::new(MemStore::new()), dir.path()).await;
    let mut x = Hand::join(&server, "x").await;
    job(&server, "waited").await;
    let run = server.scheduler.run_now("waited").await.unwrap();
    x.launch().await;
    x.report(run.id, 1, RunState::Running).await;
    x.updates.send(ToServer::BackSoon { agent: "x".into(), within: Duration::from_secs(20) }.into()).await.unwrap();
    x.cut();
    tokio::time::sleep(Duration::from_secs(18)).await;
    assert_eq!(server.store.get_run(run.id).await.unwrap().state, RunState::Running);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = server.store.attempts(run.id).await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].state, RunState::Lost);
    assert!(
        attempts[0].reason.as_deref().unwrap().contains("agent x said it was restarting and was not back by the time it gave"),
        "{attempts:?}"
    );
    assert_eq!(state_of(&server.scheduler.agents().await.unwrap(), "x"), "lost");
}

#[tokio::test(start_paused = true)]
async fn a_late_report_of_an_attempt_given_up_is_attached_and_the_run_keeps_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(Arc::new(MemStore::new()), dir.path()).await;
    let mut x = Hand::join(&server, "x").await;
    // No retries: the lost attempt is the run's last.
    let spec = json!({"name": "final", "schedule": "@yearly", "command": "true", "resources": {"cpus": 1}});
    server.scheduler.create_job(JobSpec::from_json(&spec.to_string()).unwrap()).await.unwrap();
    job(&server, "retried").await;
    let last = server.scheduler.run_now("final").await.unwrap();
    x.launch().await;
    let retried = server.scheduler.run_now("retried").await.unwrap();
    x.launch().await;
    x.report(last.id, 1, RunState::Running).await;
    x.report(retried.id, 1, RunState::Running).await;
    let mut y = Hand::join(&server, "y").await;

    x.cut();
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(server.store.get_run(last.id).await.unwrap().state, RunState::Lost);
    let l2 = y.launch().await;
    assert_eq!((l2.run_id, l2.attempt), (retried.id, 2));
    y.report(retried.id, 2, RunState::Running).await;
    y.report(retried.id, 2, RunState::Failed).await;

    // x was only cut off: both attempts finished there, and it says so now.
    x.resume();
    let s1 = x.report_exit(last.id, 1, RunState::Succeeded, Some(0)).await;
    let s2 = x.report_exit(retried.id, 1, RunState::Succeeded, Some(0)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = x.acked();
    assert!(acked.contains(&s1) && acked.contains(&s2), "late reports are acknowledged once written: {acked:?}");

    let r = server.store.get_run(last.id).await.unwrap();
    assert_eq!((r.state, r.attempt), (RunState::Lost, 1), "the final state stays: {r:?}");
    let late = r.late_report.expect("the late report is kept");
    assert_eq!((late.attempt, late.state, late.exit_code), (1, RunState::Succeeded, Some(0)));
    let r = server.store.get_run(retried.id).await.unwrap();
    assert_eq!((r.state, r.attempt), (RunState::Failed, 2), "{r:?}");
    let late = r.late_report.expect("the late report of attempt 1 is kept");
    assert_eq!((late.attempt, late.state), (1, RunState::Succeeded));

    // Sent again (its ack lost): still one report, unchanged.
    x.resend(StatusUpdate { seq: s1, run_id: last.id, attempt: 1, state: RunState::Succeeded, at: Timestamp::now(), exit_code: Some(0), signal: None, reason: None }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(server.store.get_run(last.id).await.unwrap().late_report.unwrap().attempt, 1);
    // And the API shows it with the run.
    let shown = serde_json::to_value(server.store.get_run(last.id).await.unwrap()).unwrap();
    assert_eq!(shown["late_report"]["state"], "succeeded", "{shown}");
}

/// A service of `replicas` (no health check) on a server whose runs go to hand-driven agents.
async fn service(server: &Embedded, name: &str, replicas: i64) {
    let spec = tug_core::ServiceSpec::from_json(&json!({"name": name, "replicas": replicas, "command": "serve"}).to_string()).unwrap();
    server.scheduler.create_service(spec.validate().unwrap()).await.unwrap();
}

/// `(run, attempt, state)` of each replica, by index.
async fn replicas(server: &Embedded, name: &str) -> Vec<(RunId, u32, String)> {
    let st = server.scheduler.service_status(name).await.unwrap().unwrap();
    st.list.iter().map(|r| (r.run_id, r.attempt, serde_json::to_value(r.state).unwrap()["state"].as_str().unwrap().to_owned())).collect()
}

#[tokio::test(start_paused = true)]
async fn replicas_placed_as_an_agent_joins_are_not_lost_by_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(Arc::new(MemStore::new()), dir.path()).await;
    // No agent takes them yet: they wait, unplaced.
    service(&server, "joins", 2).await;
    let mut x = Hand::join(&server, "x").await;
    // Placed as the agent joined, before its report (made at registration, without them).
    let (a, b) = (x.launch().await, x.launch().await);
    assert_eq!((a.attempt, b.attempt), (1, 1));
    x.report(a.run_id, 1, RunState::Running).await;
    x.held(&[]).await;
    x.report(b.run_id, 1, RunState::Running).await;
    x.quiet().await;
    let all = replicas(&server, "joins").await;
    assert_eq!(all, vec![(a.run_id, 1, "healthy".into()), (b.run_id, 1, "healthy".into())]);
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn after_a_server_restart_replicas_an_agent_still_runs_are_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let first = server(store.clone(), dir.path()).await;
    let mut x = Hand::join(&first, "x").await;
    service(&first, "kept", 2).await;
    let (a, b) = (x.launch().await, x.launch().await);
    x.report(a.run_id, 1, RunState::Running).await;
    x.report(b.run_id, 1, RunState::Running).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    x.cut();
    x.updates = mpsc::channel(1).0; // let go of the old server
    drop(x);
    first.abort();

    let second = server(store.clone(), dir.path()).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut x = Hand::join(&second, "x").await;
    // It still runs both, and one of a service that is gone.
    x.held_replicas(&[(a.run_id, 1, &a.job), (b.run_id, 1, &b.job), (a.run_id + 100, 3, "service/gone/0")]).await;
    match x.next().await {
        ToAgent::Kill { run_id, attempt, reason } => assert_eq!((run_id, attempt, reason), (a.run_id + 100, Some(3), KillReason::Superseded)),
        other => panic!("expected the stale replica stopped, got {other:?}"),
    }
    // Past the wait for agents' reports: nothing is started afresh.
    tokio::time::sleep(Duration::from_secs(15)).await;
    x.quiet().await;
    let all = replicas(&second, "kept").await;
    assert_eq!(all, vec![(a.run_id, 1, "healthy".into()), (b.run_id, 1, "healthy".into())], "adopted as they run");
    // An adopted replica is the controller's like any: when it exits, it restarts.
    x.report(b.run_id, 1, RunState::Failed).await;
    let l = x.launch().await;
    assert_eq!((l.run_id, l.attempt, l.job.as_str()), (b.run_id, 2, "service/kept/1"));
    second.abort();
}

#[tokio::test(start_paused = true)]
async fn after_a_server_restart_replicas_no_agent_reports_start_afresh_after_the_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    let first = server(store.clone(), dir.path()).await;
    service(&first, "anew", 1).await;
    first.abort();
    let second = server(store.clone(), dir.path()).await;
    let mut x = Hand::join(&second, "x").await;
    x.held(&[]).await;
    x.quiet().await;
    let all = replicas(&second, "anew").await;
    assert_eq!((all[0].1, all[0].2.as_str()), (0, "unplaced"), "waits for the agent timeout first");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let l = x.launch().await;
    assert_eq!((l.attempt, l.job.as_str()), (1, "service/anew/0"));
    second.abort();
}
