//! The process runtime against real processes: output capture, exit statuses, start failures,
//! environment, stopping a whole process group, and the agent loop on top (timeouts, duplicates).
//!
//! The test process makes itself a child subreaper so that the orphaned members of a killed group
//! are re-parented to it (and reaped by the runtime) rather than to an init that may never reap
//! them; otherwise "no process of the group remains" could not be checked with kill(2).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tug_agent::runtime::process::ProcessRuntime;
use tug_agent::runtime::{Outcome, RunContext, Runtime, SharedRuntime};
use tug_agent::{Agent, AgentConfig};
use tug_core::job::{Command, RuntimeKind};
use tug_core::protocol::{KillReason, Launch, StatusUpdate, Task, ToAgent, ToServer};
use tug_core::run::{RunId, RunState};
use tug_logs::LogFiles;

const GRACE: Duration = Duration::from_millis(300);

/// A temporary log directory and fresh run ids.
struct Harness {
    dir: TempDir,
    logs: LogFiles,
}

impl Harness {
    fn new() -> Harness {
        // Idempotent and process-wide; see the module comment.
        nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = LogFiles::new(dir.path().join("logs"));
        Harness { dir, logs }
    }

    /// Starts an attempt; returns its handle, the start report and the kill switch.
    fn start(
        &self,
        launch: Launch,
        log_limit: u64,
    ) -> (JoinHandle<Outcome>, oneshot::Receiver<Option<u32>>, watch::Sender<Option<KillReason>>) {
        let (kill_tx, kill) = watch::channel(None);
        let (started, started_rx) = oneshot::channel();
        let ctx = RunContext { launch, logs: self.logs.clone(), log_limit, kill, grace: GRACE, started };
        let handle = tokio::spawn(async move { ProcessRuntime.run(ctx).await });
        (handle, started_rx, kill_tx)
    }

    /// Runs an attempt to the end.
    async fn run(&self, launch: Launch) -> Outcome {
        let (handle, _started, _kill) = self.start(launch, 1 << 20);
        handle.await.expect("runtime task")
    }

    async fn log(&self, run_id: RunId) -> String {
        let bytes = self.logs.read(run_id, 0, 1 << 20).await.unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn next_run_id() -> RunId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn launch(command: Command) -> Launch {
    Launch {
        run_id: next_run_id(),
        job: "nightly-report".into(),
        scheduled_at: Timestamp::from_second(1_700_000_000).expect("valid timestamp"),
        attempt: 2,
        epoch: 1,
        task: Task {
            runtime: RuntimeKind::Process,
            docker: None,
            resources: Default::default(),
            command,
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

fn sh(script: &str) -> Launch {
    launch(Command::Shell(script.into()))
}

/// Waits for `path` to exist: the scripts touch a file once their children are started.
async fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pgid_of(pid: Option<u32>) -> Pid {
    Pid::from_raw(i32::try_from(pid.expect("a pid")).expect("pid fits"))
}

/// Asserts that no process of the group is left, zombies included.
fn assert_group_gone(pgid: Pid) {
    assert_eq!(killpg(pgid, None), Err(Errno::ESRCH), "process group {pgid} still has members");
}

/// Kills and reaps what a test deliberately left running.
fn clean_up_group(pgid: Pid) {
    let _ = killpg(pgid, Signal::SIGKILL);
    let deadline = std::time::Duration::from_secs(2);
    let start = Instant::now();
    while killpg(pgid, None).is_ok() && start.elapsed() < deadline {
        let _ = waitpid(Pid::from_raw(-pgid.as_raw()), Some(WaitPidFlag::WNOHANG));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn captures_stdout_and_stderr_in_the_log() {
    let h = Harness::new();
    let l = sh("echo to-stdout; echo to-stderr >&2; echo more-stdout");
    let id = l.run_id;
    let out = h.run(l).await;
    assert_eq!(out, Outcome { state: RunState::Succeeded, exit_code: Some(0), signal: None, reason: None });
    let log = h.log(id).await;
    for needle in ["to-stdout", "to-stderr", "more-stdout"] {
        assert!(log.contains(needle), "{needle} missing from {log:?}");
    }
}

#[tokio::test]
async fn nonzero_exit_fails_with_the_code() {
    let h = Harness::new();
    let out = h.run(sh("exit 3")).await;
    assert_eq!(out.state, RunState::Failed);
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.signal, None);
    assert_eq!(out.reason.as_deref(), Some("exit code 3"));
}

#[tokio::test]
async fn missing_binary_fails_to_start_and_says_so_in_the_log() {
    let h = Harness::new();
    let l = launch(Command::Argv(vec!["/no/such/binary".into(), "--flag".into()]));
    let id = l.run_id;
    let (handle, started, _kill) = h.start(l, 1 << 20);
    let out = handle.await.expect("runtime task");
    let reason = "cannot start `/no/such/binary`: No such file or directory (os error 2)";
    assert_eq!(out, Outcome::failed_to_start(reason));
    assert!(started.await.is_err(), "a command that never started must not report a start");
    assert!(h.log(id).await.contains(reason));
}

#[tokio::test]
async fn non_executable_file_fails_to_start() {
    let h = Harness::new();
    let script = h.dir.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write script");
    let out = h.run(launch(Command::Argv(vec![script.display().to_string()]))).await;
    assert_eq!(out.state, RunState::Failed);
    let reason = out.reason.unwrap_or_default();
    assert!(reason.starts_with("cannot start `") && reason.contains("Permission denied"), "{reason}");
}

#[tokio::test]
async fn missing_workdir_fails_to_start() {
    let h = Harness::new();
    let mut l = sh("pwd");
    l.task.workdir = Some("/no/such/dir".into());
    let id = l.run_id;
    let out = h.run(l).await;
    assert_eq!(out.state, RunState::Failed);
    assert_eq!(out.exit_code, None);
    let reason = out.reason.unwrap_or_default();
    assert_eq!(reason, "cannot start `/bin/sh`: workdir \"/no/such/dir\": No such file or directory (os error 2)");
    assert!(h.log(id).await.contains(&reason));
}

#[tokio::test]
async fn unknown_user_fails_to_start() {
    let h = Harness::new();
    let mut l = sh("true");
    l.task.user = Some("no-such-user-tug".into());
    let out = h.run(l).await;
    assert_eq!(out.state, RunState::Failed);
    let reason = out.reason.unwrap_or_default();
    assert!(reason.contains("unknown user \"no-such-user-tug\""), "{reason}");
}

#[tokio::test]
async fn runs_as_another_user_when_root() {
    let h = Harness::new();
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else { return };
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let mut l = sh("id -u; id -g; echo \"$USER\"");
    l.task.user = Some("nobody".into());
    let id = l.run_id;
    let out = h.run(l).await;
    assert_eq!(out.state, RunState::Succeeded, "{out:?}");
    let log = h.log(id).await;
    assert_eq!(log, format!("{}\n{}\nnobody\n", nobody.uid, nobody.gid));
}

#[tokio::test]
async fn env_and_workdir_are_applied() {
    let h = Harness::new();
    let work = h.dir.path().join("work");
    std::fs::create_dir(&work).expect("mkdir");
    let mut l = sh(r#"printf '%s\n' "$GREETING" "$TUG_JOB" "$TUG_RUN_ID" "$TUG_ATTEMPT" "$TUG_SCHEDULED_AT" "$PWD"
                    test -n "$PATH" && echo inherited"#);
    l.task.env.insert("GREETING".into(), "hello world".into());
    l.task.workdir = Some(work.display().to_string());
    let id = l.run_id;
    let out = h.run(l).await;
    assert_eq!(out.state, RunState::Succeeded, "{out:?}");
    let expected = format!("hello world\nnightly-report\n{id}\n2\n2023-11-14T22:13:20Z\n{}\ninherited\n", work.display());
    assert_eq!(h.log(id).await, expected);
}

#[tokio::test]
async fn kill_stops_the_whole_process_group_with_sigterm() {
    let h = Harness::new();
    let ready = h.dir.path().join("ready");
    let l = sh(&format!("sleep 1000 & sleep 1000 & touch {}; wait", ready.display()));
    let (handle, started, kill) = h.start(l, 1 << 20);
    let pgid = pgid_of(started.await.expect("started"));
    wait_for_file(&ready).await;
    kill.send_replace(Some(KillReason::Requested));
    let out = handle.await.expect("runtime task");
    assert_eq!(out.state, RunState::Killed);
    assert_eq!(out.signal, Some(Signal::SIGTERM as i32));
    assert_eq!(out.exit_code, None);
    // No "SIGKILL" in the reason: SIGTERM was enough, nobody waited out the grace period.
    assert_eq!(out.reason.as_deref(), Some("killed on request (SIGTERM)"));
    assert_group_gone(pgid);
}

#[tokio::test]
async fn a_leader_ignoring_sigterm_is_sigkilled_after_grace() {
    let h = Harness::new();
    let ready = h.dir.path().join("ready");
    let l = sh(&format!("trap '' TERM; touch {}; sleep 1000", ready.display()));
    let id = l.run_id;
    let (handle, started, kill) = h.start(l, 1 << 20);
    let pgid = pgid_of(started.await.expect("started"));
    wait_for_file(&ready).await;
    let begin = Instant::now();
    kill.send_replace(Some(KillReason::Requested));
    let out = handle.await.expect("runtime task");
    assert!(begin.elapsed() >= GRACE);
    assert_eq!(out.state, RunState::Killed);
    assert_eq!(out.signal, Some(Signal::SIGKILL as i32));
    let reason = "killed on request; stopped with SIGKILL after 300ms grace";
    assert_eq!(out.reason.as_deref(), Some(reason));
    assert_group_gone(pgid);
    assert!(h.log(id).await.contains(reason), "the log says why the run stopped");
}

#[tokio::test]
async fn a_child_ignoring_sigterm_is_sigkilled_after_grace() {
    let h = Harness::new();
    let ready = h.dir.path().join("ready");
    // The leader dies of SIGTERM at once; its child ignores it and must not survive.
    let l = sh(&format!("(trap '' TERM; exec sleep 1000) & touch {}; wait", ready.display()));
    let (handle, started, kill) = h.start(l, 1 << 20);
    let pgid = pgid_of(started.await.expect("started"));
    wait_for_file(&ready).await;
    let begin = Instant::now();
    kill.send_replace(Some(KillReason::Replaced));
    let out = handle.await.expect("runtime task");
    assert!(begin.elapsed() >= GRACE);
    assert_eq!(out.state, RunState::Killed);
    assert_eq!(out.signal, Some(Signal::SIGTERM as i32), "the leader's own status");
    assert_eq!(
        out.reason.as_deref(),
        Some("killed: replaced by a newer run; stopped with SIGKILL after 300ms grace")
    );
    assert_group_gone(pgid);
}

#[tokio::test]
async fn death_by_signal_is_reported() {
    let h = Harness::new();
    let out = h.run(sh("ulimit -c 0; kill -SEGV $$")).await;
    assert_eq!(out.state, RunState::Failed);
    assert_eq!(out.exit_code, None);
    assert_eq!(out.signal, Some(11));
    assert_eq!(out.reason.as_deref(), Some("killed by signal SIGSEGV (11)"));
}

#[tokio::test]
async fn a_background_child_holding_the_pipes_does_not_hang_the_run() {
    let h = Harness::new();
    let l = sh("echo early; (sleep 1; echo late) & exit 0");
    let id = l.run_id;
    let (handle, started, _kill) = h.start(l, 1 << 20);
    let pgid = pgid_of(started.await.expect("started"));
    let begin = Instant::now();
    let out = handle.await.expect("runtime task");
    assert!(begin.elapsed() < Duration::from_millis(900), "reported before the background child ended");
    assert_eq!(out.state, RunState::Succeeded);
    assert!(h.log(id).await.contains("early"));
    // The straggler's output still reaches the log: the pipes were not closed under it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !h.log(id).await.contains("late") {
        assert!(Instant::now() < deadline, "late output lost: {:?}", h.log(id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    clean_up_group(pgid);
}

#[tokio::test]
async fn long_output_is_truncated_with_a_marker() {
    let h = Harness::new();
    let l = sh("i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done");
    let id = l.run_id;
    let (handle, _started, _kill) = h.start(l, 100);
    let out = handle.await.expect("runtime task");
    assert_eq!(out.state, RunState::Succeeded);
    let log = h.log(id).await;
    assert!(log.starts_with("line-0\nline-1\n"), "{log:?}");
    assert!(log.contains("[tug: log truncated at 100 bytes;"), "{log:?}");
    assert!(!log.contains("line-199"));
}

/// An agent serving over channels, with a short grace period.
struct AgentHarness {
    h: Harness,
    commands: mpsc::Sender<ToAgent>,
    updates: mpsc::Receiver<ToServer>,
    serve: JoinHandle<()>,
}

impl AgentHarness {
    fn new() -> AgentHarness {
        let h = Harness::new();
        let (commands, commands_rx) = mpsc::channel(16);
        let (updates_tx, updates) = mpsc::channel(16);
        let config = AgentConfig { name: "test".into(), log_limit: 1 << 20, grace: GRACE, ..AgentConfig::default() };
        let runtime: SharedRuntime = Arc::new(ProcessRuntime);
        let agent = Agent::new(config, runtime, h.logs.clone(), updates_tx);
        let serve = tokio::spawn(agent.serve(commands_rx, std::future::pending()));
        AgentHarness { h, commands, updates, serve }
    }

    async fn send(&self, msg: ToAgent) {
        self.commands.send(msg).await.expect("agent is serving");
    }

    async fn next(&mut self) -> StatusUpdate {
        common::next_update(&mut self.updates, Duration::from_secs(5)).await
    }

    /// Stops serving; returns the updates not yet received and the logs.
    async fn close(mut self) -> (Vec<StatusUpdate>, Harness) {
        drop(self.commands);
        self.serve.await.expect("serve task");
        (common::queued_updates(&mut self.updates), self.h)
    }
}

#[tokio::test]
async fn agent_times_out_a_long_run() {
    let mut a = AgentHarness::new();
    let mut l = sh("sleep 1000");
    l.task.timeout = Some(tug_core::duration::Duration::from_millis(200));
    let id = l.run_id;
    a.send(ToAgent::Launch(Box::new(l))).await;
    let running = a.next().await;
    assert_eq!((running.run_id, running.state), (id, RunState::Running));
    let done = a.next().await;
    assert_eq!(done.state, RunState::TimedOut, "{done:?}");
    assert_eq!(done.signal, Some(Signal::SIGTERM as i32));
    assert_eq!(done.reason.as_deref(), Some("timed out after 200ms (SIGTERM)"));
    assert!(a.close().await.0.is_empty());
}

#[tokio::test]
async fn agent_kill_request_stops_the_run() {
    let mut a = AgentHarness::new();
    let l = sh("sleep 1000");
    let id = l.run_id;
    a.send(ToAgent::Launch(Box::new(l))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    a.send(ToAgent::Kill { run_id: id, attempt: None, reason: KillReason::Requested }).await;
    let done = a.next().await;
    assert_eq!(done.state, RunState::Killed);
    assert_eq!(done.reason.as_deref(), Some("killed on request (SIGTERM)"));
    assert!(a.close().await.0.is_empty());
}

#[tokio::test]
async fn agent_ignores_a_duplicate_launch() {
    let mut a = AgentHarness::new();
    let l = sh("echo once");
    let id = l.run_id;
    a.send(ToAgent::Launch(Box::new(l.clone()))).await;
    a.send(ToAgent::Launch(Box::new(l.clone()))).await;
    let states = [a.next().await, a.next().await].map(|u| (u.run_id, u.attempt, u.state));
    assert_eq!(states, [(id, 2, RunState::Running), (id, 2, RunState::Succeeded)]);
    // Still ignored after the first attempt finished.
    a.send(ToAgent::Launch(Box::new(l))).await;
    let (rest, h) = a.close().await;
    assert!(rest.is_empty(), "the duplicate launch ran: {rest:?}");
    assert_eq!(h.log(id).await, "once\n");
}

#[tokio::test]
async fn a_newer_attempt_of_a_run_stops_the_one_still_running() {
    let mut a = AgentHarness::new();
    let old = sh("sleep 1000");
    let id = old.run_id;
    let mut newer = old.clone();
    newer.attempt = old.attempt + 1;
    a.send(ToAgent::Launch(Box::new(old))).await;
    assert_eq!(a.next().await.state, RunState::Running);
    a.send(ToAgent::Launch(Box::new(newer))).await;
    let mut seen = [a.next().await, a.next().await];
    seen.sort_by_key(|u| u.attempt);
    let [ended, started] = seen;
    assert_eq!((ended.run_id, ended.attempt), (id, 2));
    assert!(ended.state.is_terminal(), "the superseded attempt is stopped: {ended:?}");
    assert_eq!((started.run_id, started.attempt, started.state), (id, 3, RunState::Running));
    // The newer attempt is the one a kill for the run reaches.
    a.send(ToAgent::Kill { run_id: id, attempt: None, reason: KillReason::Requested }).await;
    let done = a.next().await;
    assert_eq!((done.attempt, done.state), (3, RunState::Killed));
    assert!(a.close().await.0.is_empty());
}
