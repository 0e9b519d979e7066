//! Durable process runs against real processes and the real shim (`tug-shim`, the same code as
//! `tug agent shim`): runs survive the agent, a new agent on the same data dir re-attaches them
//! or reports how they ended, and the agent's filters (leader epoch, attempt of a kill) hold.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tug_agent::checkpoint::{Checkpoint, LaunchRecord, ShimRecord};
use tug_agent::runtime::shim::ShimRuntime;
use tug_agent::runtime::SharedRuntime;
use tug_agent::{Agent, AgentConfig, Durability};
use tug_core::job::{Command, RuntimeKind};
use tug_core::protocol::{HeldRun, KillReason, Launch, StatusUpdate, Task, ToAgent, ToServer};
use tug_core::run::{RunId, RunState};
use tug_logs::LogFiles;

const GRACE: Duration = Duration::from_millis(300);

/// An agent's data dir: run logs and checkpoints.
struct Node {
    dir: TempDir,
    logs: LogFiles,
    durability: Durability,
}

/// An agent serving over channels on a [`Node`].
struct Serving {
    agent: Arc<Agent>,
    commands: mpsc::Sender<ToAgent>,
    updates: mpsc::Receiver<ToServer>,
    stop: oneshot::Sender<()>,
    serve: JoinHandle<()>,
}

impl Node {
    fn new() -> Node {
        Node::at(tempfile::tempdir().expect("tempdir"))
    }

    /// A node whose data dir is `dir`.
    fn at(dir: TempDir) -> Node {
        let logs = LogFiles::new(dir.path().join("logs"));
        let durability = Durability {
            dir: dir.path().join("runs"),
            shim: PathBuf::from(env!("CARGO_BIN_EXE_tug-shim")),
            detach_on_stop: true,
        };
        Node { dir, logs, durability }
    }

    /// A new agent on this node's data dir (as after a restart), recovered but not serving yet.
    async fn agent(&self) -> (Arc<Agent>, mpsc::Receiver<ToServer>) {
        let (updates_tx, updates) = mpsc::channel(64);
        let config = AgentConfig {
            name: "durable".into(),
            log_limit: 1 << 20,
            grace: GRACE,
            durable: Some(self.durability.clone()),
            ..AgentConfig::default()
        };
        let runtime: SharedRuntime = Arc::new(ShimRuntime::new(&self.durability));
        let agent = Agent::new(config, runtime, self.logs.clone(), updates_tx);
        agent.recover().await;
        (agent, updates)
    }

    fn serve(agent: Arc<Agent>, updates: mpsc::Receiver<ToServer>) -> Serving {
        let (commands, commands_rx) = mpsc::channel(16);
        let (stop, stop_rx) = oneshot::channel::<()>();
        let serve = tokio::spawn(Arc::clone(&agent).serve(commands_rx, async {
            let _ = stop_rx.await;
        }));
        Serving { agent, commands, updates, stop, serve }
    }

    async fn start(&self) -> Serving {
        let (agent, updates) = self.agent().await;
        Node::serve(agent, updates)
    }

    fn checkpoint(&self, l: &Launch) -> Checkpoint {
        Checkpoint::new(&self.durability.dir, l.run_id, l.attempt)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn log(&self, run_id: RunId) -> String {
        let bytes = self.logs.read(run_id, 0, 1 << 20).await.unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Serving {
    async fn send(&self, msg: ToAgent) {
        self.commands.send(msg).await.expect("agent is serving");
    }

    /// The next status update (heartbeats and held runs skipped).
    async fn next(&mut self) -> StatusUpdate {
        common::next_update(&mut self.updates, Duration::from_secs(10)).await
    }

    /// Stops serving the way a stopping `tug agent run` does: runs are left going.
    async fn detach(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.serve).await.expect("serve stops").expect("serve task");
    }

    /// Stops serving; returns the status updates not yet received.
    async fn close(mut self) -> Vec<StatusUpdate> {
        drop(self.commands);
        tokio::time::timeout(Duration::from_secs(10), self.serve).await.expect("serve stops").expect("serve task");
        common::queued_updates(&mut self.updates)
    }
}

fn next_run_id() -> RunId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn sh(script: &str) -> Launch {
    Launch {
        run_id: next_run_id(),
        job: "durable-job".into(),
        scheduled_at: Timestamp::from_second(1_700_000_000).expect("valid timestamp"),
        attempt: 2,
        epoch: 1,
        task: Task {
            runtime: RuntimeKind::Process,
            docker: None,
            resources: Default::default(),
            command: Command::Shell(script.into()),
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            timeout: None,
            network: None,
            stop_signal: None,
            stop_grace: None,
        },
        health: None,
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_file(path: &Path) {
    wait_until(&format!("{} appears", path.display()), || path.exists()).await;
}

#[tokio::test]
async fn a_durable_run_reports_its_exit_code_and_log_and_drops_its_checkpoint() {
    let node = Node::new();
    let mut a = node.start().await;
    let l = sh("echo to-stdout; echo to-stderr >&2; exit 3");
    let (id, ckpt) = (l.run_id, node.checkpoint(&l));
    a.send(ToAgent::Launch(Box::new(l))).await;
    let running = a.next().await;
    assert_eq!((running.run_id, running.attempt, running.state), (id, 2, RunState::Running));
    let done = a.next().await;
    assert_eq!((done.state, done.exit_code, done.signal), (RunState::Failed, Some(3), None));
    assert_eq!(done.reason.as_deref(), Some("exit code 3"));
    let log = node.log(id).await;
    // Two pipes: their order in the log is the order the shim read them in.
    for needle in ["to-stdout\n", "to-stderr\n"] {
        assert!(log.contains(needle), "{needle:?} missing from {log:?}");
    }
    // In process, a final update is delivered once it is on the channel.
    wait_until("the checkpoint is removed", || !ckpt.dir().exists()).await;
    assert!(a.agent.held().is_empty());
    assert!(a.close().await.is_empty());
}

#[tokio::test]
async fn a_durable_run_that_cannot_start_says_why() {
    let node = Node::new();
    let mut a = node.start().await;
    let mut l = sh("true");
    l.task.command = Command::Argv(vec!["/no/such/binary".into()]);
    let id = l.run_id;
    a.send(ToAgent::Launch(Box::new(l))).await;
    let done = a.next().await;
    assert_eq!(done.state, RunState::Failed, "no running update first: {done:?}");
    let reason = "cannot start `/no/such/binary`: No such file or directory (os error 2)";
    assert_eq!(done.reason.as_deref(), Some(reason));
    assert!(node.log(id).await.contains(reason));
    assert!(a.close().await.is_empty());
}

#[tokio::test]
async fn killing_a_durable_run_stops_it_as_a_plain_run_would() {
    let node = Node::new();
    let mut a = node.start().await;

    let l = sh("sleep 1000");
    let id = l.run_id;
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    a.send(ToAgent::Kill { run_id: id, attempt: None, reason: KillReason::Requested }).await;
    let done = a.next().await;
    assert_eq!((done.state, done.signal), (RunState::Killed, Some(Signal::SIGTERM as i32)));
    assert_eq!(done.reason.as_deref(), Some("killed on request (SIGTERM)"));

    let ready = node.path("ready");
    let l = sh(&format!("trap '' TERM; touch {}; sleep 1000", ready.display()));
    let id = l.run_id;
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    wait_for_file(&ready).await;
    let begin = Instant::now();
    a.send(ToAgent::Kill { run_id: id, attempt: Some(2), reason: KillReason::Requested }).await;
    let done = a.next().await;
    assert!(begin.elapsed() >= GRACE);
    assert_eq!((done.state, done.signal), (RunState::Killed, Some(Signal::SIGKILL as i32)));
    let reason = "killed on request; stopped with SIGKILL after 300ms grace";
    assert_eq!(done.reason.as_deref(), Some(reason));
    assert!(node.log(id).await.contains(reason), "the log says why the run stopped");
    assert!(a.close().await.is_empty());
}

#[tokio::test]
async fn a_durable_run_times_out() {
    let node = Node::new();
    let mut a = node.start().await;
    let mut l = sh("sleep 1000");
    l.task.timeout = Some(tug_core::duration::Duration::from_millis(200));
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    let done = a.next().await;
    assert_eq!(done.state, RunState::TimedOut, "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("timed out after 200ms (SIGTERM)"));
    assert!(a.close().await.is_empty());
}

#[tokio::test]
async fn a_run_outlives_its_agent_and_the_next_agent_reports_its_end_once() {
    let node = Node::new();
    let mut a = node.start().await;
    let (ready, go) = (node.path("ready"), node.path("go"));
    let l = sh(&format!(
        "echo before; touch {}; while [ ! -e {} ]; do sleep 0.05; done; echo after; exit 7",
        ready.display(),
        go.display()
    ));
    let (id, ckpt) = (l.run_id, node.checkpoint(&l));
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    wait_for_file(&ready).await;
    let mut old_updates = {
        let Serving { stop, serve, updates, .. } = a;
        let _ = stop.send(());
        tokio::time::timeout(Duration::from_secs(10), serve).await.expect("serve stops").expect("serve task");
        updates
    };
    assert!(ckpt.dir().exists(), "the checkpoint stays while the run goes on");

    let (agent, updates) = node.agent().await;
    assert_eq!(agent.held(), vec![HeldRun { run_id: id, attempt: 2, finished: false, replica: None }]);
    assert_eq!(agent.inflight(), 1);
    let mut b = Node::serve(agent, updates);
    // Running again, for a server that never heard it started.
    assert_eq!(b.next().await.state, RunState::Running);
    std::fs::write(&go, "").expect("touch go");
    let done = b.next().await;
    assert_eq!((done.run_id, done.attempt, done.state, done.exit_code), (id, 2, RunState::Failed, Some(7)));
    assert_eq!(node.log(id).await, "before\nafter\n");
    wait_until("the checkpoint is removed", || !ckpt.dir().exists()).await;
    assert!(b.close().await.is_empty(), "the end is reported once");
    while let Ok(msg) = old_updates.try_recv() {
        assert!(!matches!(msg, ToServer::Status(_)), "the stopped agent reported {msg:?}");
    }
}

#[tokio::test]
async fn a_run_that_ended_while_no_agent_ran_is_reported_with_its_exit_code() {
    let node = Node::new();
    let mut a = node.start().await;
    let (ready, go) = (node.path("ready"), node.path("go"));
    let l = sh(&format!("touch {}; while [ ! -e {} ]; do sleep 0.05; done; exit 5", ready.display(), go.display()));
    let (id, ckpt) = (l.run_id, node.checkpoint(&l));
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    wait_for_file(&ready).await;
    a.detach().await;
    std::fs::write(&go, "").expect("touch go");
    wait_for_file(&ckpt.dir().join("outcome.json")).await;

    let (agent, updates) = node.agent().await;
    assert_eq!(agent.held(), vec![HeldRun { run_id: id, attempt: 2, finished: true, replica: None }]);
    let mut b = Node::serve(agent, updates);
    // The in-process agent says what it holds before anything else.
    let first = tokio::time::timeout(Duration::from_secs(10), b.updates.recv()).await.expect("held runs in time");
    assert_eq!(
        first,
        Some(ToServer::Held { agent: "durable".into(), runs: vec![HeldRun { run_id: id, attempt: 2, finished: true, replica: None }] })
    );
    let done = b.next().await;
    assert_eq!((done.run_id, done.state, done.exit_code), (id, RunState::Failed, Some(5)));
    assert_eq!(done.reason.as_deref(), Some("exit code 5"));
    wait_until("the checkpoint is removed", || !ckpt.dir().exists()).await;
    assert!(b.agent.held().is_empty());
    assert!(b.close().await.is_empty());
}

#[tokio::test]
async fn a_checkpoint_whose_shim_is_gone_is_reported_lost() {
    let node = Node::new();
    let l = sh("sleep 1000");
    let (id, ckpt) = (l.run_id, node.checkpoint(&l));
    let record = LaunchRecord {
        launch: l,
        log_dir: node.logs.dir().to_path_buf(),
        log_limit: 1 << 20,
        grace: GRACE,
        launched_at: Timestamp::now(),
    };
    ckpt.write_launch(&record).await.expect("write launch");
    // A pid that exists (this test) but with another start time: a reused pid, not the shim.
    let shim = ShimRecord { pid: std::process::id(), start_time: 1, child_pid: None };
    ckpt.write_shim(&shim).await.expect("write shim");

    let mut a = node.start().await;
    let done = a.next().await;
    assert_eq!((done.run_id, done.attempt, done.state), (id, 2, RunState::Lost));
    assert_eq!(done.reason.as_deref(), Some("the agent restarted and the run's process is gone; its exit status is unknown"));
    wait_until("the checkpoint is removed", || !ckpt.dir().exists()).await;
    assert!(a.close().await.is_empty());
}

#[tokio::test]
async fn a_launch_from_an_older_epoch_is_ignored() {
    let node = Node::new();
    let mut a = node.start().await;
    a.agent.observe_epoch(5);
    let mut old = sh("echo old");
    old.epoch = 4;
    let mut new = sh("echo new");
    new.epoch = 5;
    let (old_id, new_id) = (old.run_id, new.run_id);
    a.send(ToAgent::Launch(Box::new(old))).await;
    a.send(ToAgent::Launch(Box::new(new))).await;
    let states = [a.next().await, a.next().await].map(|u| (u.run_id, u.state));
    assert_eq!(states, [(new_id, RunState::Running), (new_id, RunState::Succeeded)]);
    assert!(a.close().await.is_empty());
    assert_eq!(node.log(old_id).await, "", "the old launch did not run");
}

#[tokio::test]
async fn a_kill_for_another_attempt_is_ignored_and_drain_is_noted() {
    let node = Node::new();
    let mut a = node.start().await;
    let l = sh("sleep 1000");
    let id = l.run_id;
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    a.send(ToAgent::Kill { run_id: id, attempt: Some(1), reason: KillReason::Replaced }).await;
    a.send(ToAgent::Drain { draining: true }).await;
    wait_until("drain is noted", || a.agent.draining()).await;
    assert_eq!(a.agent.held(), vec![HeldRun { run_id: id, attempt: 2, finished: false, replica: None }], "still running");
    // Had the first kill counted, its reason would have won.
    a.send(ToAgent::Kill { run_id: id, attempt: Some(2), reason: KillReason::Requested }).await;
    let done = a.next().await;
    assert_eq!(done.state, RunState::Killed);
    assert_eq!(done.reason.as_deref(), Some("killed on request (SIGTERM)"));
    assert!(a.close().await.is_empty());
}

#[tokio::test]
async fn a_re_attached_run_keeps_its_timeout_from_the_first_start() {
    let node = Node::new();
    let mut a = node.start().await;
    let ready = node.path("ready");
    let mut l = sh(&format!("touch {}; sleep 1000", ready.display()));
    l.task.timeout = Some(tug_core::duration::Duration::from_millis(800));
    let id = l.run_id;
    let begin = Instant::now();
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    wait_for_file(&ready).await;
    a.detach().await;

    let mut b = node.start().await;
    assert_eq!(b.next().await.state, RunState::Running);
    let done = b.next().await;
    assert_eq!((done.run_id, done.state), (id, RunState::TimedOut), "{done:?}");
    assert_eq!(done.reason.as_deref(), Some("timed out after 800ms (SIGTERM)"));
    assert!(begin.elapsed() < Duration::from_secs(5), "the timeout counts from the first start");
    assert!(b.close().await.is_empty());
}

#[tokio::test]
async fn a_run_goes_on_when_the_disk_fills_and_its_log_is_cut_with_a_marker() {
    // The agent's data dir (checkpoints, the shim's own log, the run's log) on a small tmpfs.
    let Some(disk) = tug_store::testing::Tmpfs::mount("2m") else { return };
    let data = tempfile::Builder::new().tempdir_in(disk.path()).expect("a data dir on the tmpfs");
    let node = Node::at(data);
    let flags = tempfile::tempdir().expect("tempdir");
    let (full, room) = (flags.path().join("full"), flags.path().join("room"));
    let mut a = node.start().await;
    // Output before the disk is full and while it is, then more once there is room; a clean exit.
    let l = sh(&format!(
        "echo before; while [ ! -e {full} ]; do sleep 0.02; done; \
         i=0; while [ $i -lt 2000 ]; do echo 'output that finds the disk full, line after line'; i=$((i+1)); done; \
         echo full-done >&2; while [ ! -e {room} ]; do sleep 0.02; done; echo after; exit 0",
        full = full.display(),
        room = room.display()
    ));
    let id = l.run_id;
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    // The first line is in the log before the disk fills (on a busy machine the shim may not
    // have written it yet).
    let begin = Instant::now();
    while !node.log(id).await.starts_with("before\n") {
        assert!(begin.elapsed() < Duration::from_secs(10), "the first line never reached the log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disk.fill("filler");
    std::fs::write(&full, "").unwrap();
    // The command writes while nothing fits, then waits; give the shim time to meet the full disk.
    tokio::time::sleep(Duration::from_millis(500)).await;
    disk.free("filler");
    std::fs::write(&room, "").unwrap();
    let done = a.next().await;
    assert_eq!(
        (done.state, done.exit_code, done.signal),
        (RunState::Succeeded, Some(0), None),
        "the run went on to its own end (not SIGPIPE, not a supervisor that died): {done:?}"
    );
    let log = node.log(id).await;
    assert!(log.starts_with("before\n"), "{log:.300}");
    assert!(log.contains("[tug: the disk is full; ") && log.contains(" bytes of output dropped]"), "a marker says what was dropped: {}", &log[log.len().saturating_sub(400)..]);
    assert!(log.trim_end().ends_with("bytes of output dropped]"), "the log is cut where the disk filled, its rest counted: {}", &log[log.len().saturating_sub(400)..]);
    assert!(a.close().await.is_empty());
}
