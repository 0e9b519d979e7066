//! The process runtime: runs a task's command as a child of the agent in its own process group,
//! copies its stdout and stderr into the run log, and stops the whole group when asked.
//!
//! After the spawn, an attempt goes through three phases, copying output to the log all along:
//!
//! ```text
//! spawn ──> wait for the leader ──> stop the group ──────────> drain the pipes ──> Outcome
//!           on kill: SIGTERM the    only after a kill: wait    until end of file, at
//!           group; SIGKILL it       until no member is alive;  most DRAIN_AFTER_EXIT
//!           after the grace period  SIGKILL them after grace
//! ```
//!
//! The attempt's fate is the fate of the *leader* (the process we spawned). When it exits on its
//! own, members of its group that it left running in the background are not touched: `cmd &` in a
//! cron job is a common way to start something long-lived. Such a straggler may still hold the
//! output pipes open, so after the leader exits the runtime reads until end of file for at most
//! [`DRAIN_AFTER_EXIT`]; if the pipes are still open then, the attempt is reported finished and a
//! background task keeps copying the stragglers' output into the log until they close it. Closing
//! our end instead would kill them with SIGPIPE on their next write. When the attempt is stopped
//! (kill, timeout, replace, shutdown), nothing of the group survives: SIGTERM, then SIGKILL after
//! the grace period.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;
use tug_core::protocol::{KillReason, Launch};
use tug_core::run::{RunId, RunState};
use tug_logs::LogWriter;

use super::ending::{Stop, signal_name, stopped, why_stopped};
use super::{Outcome, RunContext, Runtime};

/// How long output is still read after the leader exited, when something else keeps the pipes
/// open. Ordinary commands reach end of file at once and never wait here.
pub const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);

/// How often a stopping group is checked for live members.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// How long to wait for a SIGKILLed group to vanish before giving up on it (a process stuck in
/// uninterruptible sleep cannot die until its I/O completes).
const AFTER_SIGKILL: Duration = Duration::from_secs(2);

/// Size of each pipe's read buffer.
const CHUNK: usize = 16 * 1024;

/// Runs tasks as local processes, each in its own process group.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessRuntime;

impl ProcessRuntime {
    /// A process runtime.
    pub fn new() -> ProcessRuntime {
        ProcessRuntime
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let span = tracing::info_span!(
            "process",
            job = %ctx.launch.job,
            run = ctx.launch.run_id,
            attempt = ctx.launch.attempt
        );
        // Output of background processes still holding the pipes goes on being copied by the
        // detached tail task.
        run_attempt(ctx).instrument(span).await.0
    }
}

/// Runs one attempt like [`ProcessRuntime::run`], and also returns the task that copies the output
/// of background processes still holding the pipes after the leader exited (if any), so that a
/// caller about to exit (the shim) can wait for it.
pub(crate) async fn run_attempt(ctx: RunContext) -> (Outcome, Option<tokio::task::JoinHandle<()>>) {
    let RunContext { launch, logs, log_limit, mut kill, grace, started } = ctx;
    let run_id = launch.run_id;
    let log = match logs.writer(run_id, log_limit).await {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the run log; the command runs but its output is discarded");
            None
        }
    };

    let early_kill = *kill.borrow();
    if let Some(reason) = early_kill {
        let outcome = Outcome {
            state: reason.final_state(),
            exit_code: None,
            signal: None,
            reason: Some(format!("{} before it started", why_stopped(reason, &launch))),
        };
        return (finish_without_process(log, outcome).await, None);
    }

    let mut command = match prepare(&launch).await {
        Ok(c) => c,
        Err(reason) => return (finish_without_process(log, Outcome::failed_to_start(reason)).await, None),
    };
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("cannot start {}: {e}", describe_start(&launch));
            return (finish_without_process(log, Outcome::failed_to_start(reason)).await, None);
        }
    };
    let (pid, pgid) = match child.id().and_then(|p| Some((p, Pid::from_raw(i32::try_from(p).ok()?)))) {
        Some(ids) => ids,
        // A freshly spawned child always has an id; this only guards the conversion.
        None => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let reason = format!("cannot start {}: the process has no usable id", describe_start(&launch));
            return (finish_without_process(log, Outcome::failed_to_start(reason)).await, None);
        }
    };
    tracing::debug!(pid, "started");
    // The agent may have stopped listening (shutdown); the run goes on regardless.
    let _ = started.send(Some(pid));

    let guard = GroupGuard { pgid, armed: true };
    let mut capture = Capture::new(child.stdout.take(), child.stderr.take(), log, run_id);
    // A service's stop signal, TERM otherwise.
    let first = Signal::try_from(launch.task.stop_signal_number()).unwrap_or(Signal::SIGTERM);
    let (status, mut stop) = wait_for_leader(&mut child, &mut capture, &mut kill, (first, grace), pgid).await;
    if let Some(stop) = stop.as_mut() {
        stop_group(pgid, stop, &mut capture).await;
    }
    guard.disarm();

    let outcome = outcome_of(status, stop, &launch, grace);
    if stop.is_some()
        && let Some(reason) = &outcome.reason
    {
        capture.note(reason).await;
    }
    capture.drain(DRAIN_AFTER_EXIT).await;
    if capture.is_open() {
        tracing::info!(
            "the command exited but background processes still hold its output open; \
             their output keeps going to the log until they close it"
        );
        let tail = tokio::spawn(capture.copy_to_end().in_current_span());
        tracing::debug!(state = %outcome.state, reason = outcome.reason.as_deref().unwrap_or(""), "finished");
        return (outcome, Some(tail));
    }
    capture.close().await;
    tracing::debug!(state = %outcome.state, reason = outcome.reason.as_deref().unwrap_or(""), "finished");
    (outcome, None)
}

/// Records why nothing ran in the log (so `tug logs` shows it) and returns `outcome`.
pub(crate) async fn finish_without_process(log: Option<LogWriter>, outcome: Outcome) -> Outcome {
    if let Some(mut log) = log {
        let written = match &outcome.reason {
            Some(reason) => log.line(reason).await,
            None => Ok(()),
        };
        if let Err(e) = written.and(log.finish().await) {
            tracing::warn!(error = %e, "cannot write the run log");
        }
    }
    outcome
}

/// "`prog`" or "`prog` as user bob", for start errors.
fn describe_start(launch: &Launch) -> String {
    let argv = launch.task.command.argv();
    let program = argv.first().map(String::as_str).unwrap_or("");
    match &launch.task.user {
        Some(user) => format!("`{program}` as user {user}"),
        None => format!("`{program}`"),
    }
}

/// Builds the command: argv, process group, stdio, workdir, user and environment. Problems that
/// can be told apart before spawning (empty command, missing workdir, unknown user) come back as
/// the reason the attempt failed to start.
async fn prepare(launch: &Launch) -> Result<Command, String> {
    let task = &launch.task;
    let argv = task.command.argv();
    let (program, args) = match argv.split_first() {
        Some((p, rest)) if !p.is_empty() => (p, rest),
        _ => return Err("cannot start: the command is empty".into()),
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        // Its own group, so that a stop reaches everything the command started.
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());

    if let Some(dir) = &task.workdir {
        // Spawning in a missing directory fails with the same ENOENT as a missing program; check
        // first so the reason names the right culprit.
        match tokio::fs::metadata(dir).await {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("cannot start `{program}`: workdir {dir:?} is not a directory")),
            Err(e) => return Err(format!("cannot start `{program}`: workdir {dir:?}: {e}")),
        }
        cmd.current_dir(dir);
    }

    if let Some(user) = &task.user {
        let spec = user.clone();
        let account = tokio::task::spawn_blocking(move || Account::lookup(&spec))
            .await
            .map_err(|e| format!("cannot start `{program}`: looking up user {user:?} failed: {e}"))?
            .map_err(|why| format!("cannot start `{program}`: {why}"))?;
        account.apply(&mut cmd);
    }

    // The job's own variables may override the inherited ones, but not Tugboat's.
    cmd.envs(&task.env)
        .env("TUG_JOB", &launch.job)
        .env("TUG_RUN_ID", launch.run_id.to_string())
        .env("TUG_ATTEMPT", launch.attempt.to_string())
        .env("TUG_SCHEDULED_AT", launch.scheduled_at.to_string());
    Ok(cmd)
}

/// The user a task runs as.
#[derive(Debug)]
struct Account {
    uid: Uid,
    gid: Gid,
    /// Name and home directory, when the user database knows the uid.
    entry: Option<(String, PathBuf)>,
}

impl Account {
    /// Resolves a user name or a numeric uid. A uid the user database does not know is allowed
    /// (as in `docker run --user 1234`) and runs with the group id of the same number. Blocking:
    /// the lookup may go through NSS.
    fn lookup(spec: &str) -> Result<Account, String> {
        let from = |u: User| Account { uid: u.uid, gid: u.gid, entry: Some((u.name, u.dir)) };
        if let Ok(n) = spec.parse::<u32>() {
            return match User::from_uid(Uid::from_raw(n)) {
                Ok(Some(u)) => Ok(from(u)),
                Ok(None) => Ok(Account { uid: Uid::from_raw(n), gid: Gid::from_raw(n), entry: None }),
                Err(e) => Err(format!("cannot look up uid {n}: {e}")),
            };
        }
        match User::from_name(spec) {
            Ok(Some(u)) => Ok(from(u)),
            Ok(None) => Err(format!("unknown user {spec:?}: no such name in the user database (give a name or a uid)")),
            Err(e) => Err(format!("cannot look up user {spec:?}: {e}")),
        }
    }

    /// Switches the command to this user, touching only the ids that differ from the agent's own
    /// (so an unprivileged agent may name itself). When the uid changes, the standard library
    /// also drops the supplementary groups (it calls `setgroups(0)` when it may). Setting the
    /// target user's supplementary groups would need `initgroups` in a `pre_exec` hook, which is
    /// unsafe code; the command runs with the user's primary group only.
    fn apply(&self, cmd: &mut Command) {
        if self.gid != nix::unistd::getegid() {
            cmd.gid(self.gid.as_raw());
        }
        if self.uid != nix::unistd::geteuid() {
            cmd.uid(self.uid.as_raw());
            // Like cron: the environment describes the user the command runs as.
            if let Some((name, home)) = &self.entry {
                cmd.env("USER", name).env("LOGNAME", name).env("HOME", home);
            }
        }
    }
}

/// Waits for the leader to exit while copying output. When a stop is requested, sends the group
/// `first` (SIGTERM unless the task says otherwise) and SIGKILLs it if the leader is still there
/// when the grace period is over.
async fn wait_for_leader(
    child: &mut Child,
    capture: &mut Capture,
    kill: &mut watch::Receiver<Option<KillReason>>,
    (first, grace): (Signal, Duration),
    pgid: Pid,
) -> (io::Result<ExitStatus>, Option<Stop>) {
    let mut stop: Option<Stop> = None;
    loop {
        let sigkill_at = stop.filter(|s| !s.sigkilled).map(|s| s.deadline);
        tokio::select! {
            status = child.wait() => return (status, stop),
            reason = kill_requested(kill), if stop.is_none() => {
                tracing::info!(?reason, %first, "stopping: signalling the process group");
                signal_group(pgid, first);
                stop = Some(Stop { reason, deadline: Instant::now() + grace, sigkilled: false });
            }
            () = sleep_until_opt(sigkill_at), if sigkill_at.is_some() => {
                tracing::info!(?grace, "still running after the grace period: SIGKILL to the process group");
                signal_group(pgid, Signal::SIGKILL);
                if let Some(s) = stop.as_mut() {
                    s.sigkilled = true;
                }
            }
            (stream, read) = capture.read(), if capture.is_open() => capture.store(stream, read).await,
        }
    }
}

/// After a stopped leader is gone: waits until no member of its group is alive, SIGKILLing them
/// at the deadline, so that nothing of a stopped attempt survives.
async fn stop_group(pgid: Pid, stop: &mut Stop, capture: &mut Capture) {
    loop {
        reap_group(pgid);
        if !group_alive(pgid).await {
            // Members that died since the reap above are zombies now; take ours too.
            reap_group(pgid);
            return;
        }
        let now = Instant::now();
        if !stop.sigkilled && now >= stop.deadline {
            tracing::info!("group members still running after the grace period: SIGKILL to the process group");
            signal_group(pgid, Signal::SIGKILL);
            stop.sigkilled = true;
            stop.deadline = now;
        } else if stop.sigkilled && now >= stop.deadline + AFTER_SIGKILL {
            tracing::warn!(pgid = pgid.as_raw(), "process group survives SIGKILL (uninterruptible sleep?); giving up on it");
            return;
        }
        let tick = tokio::time::sleep(GROUP_POLL);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                () = &mut tick => break,
                (stream, read) = capture.read(), if capture.is_open() => capture.store(stream, read).await,
            }
        }
    }
}

/// Resolves once `kill` holds a reason; never, if the sender is gone without one.
pub(crate) async fn kill_requested(kill: &mut watch::Receiver<Option<KillReason>>) -> KillReason {
    let reason = match kill.wait_for(Option::is_some).await {
        Ok(r) => *r,
        Err(_) => None,
    };
    match reason {
        Some(r) => r,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends `signal` to every process of the group. A group that is already gone is fine.
fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw(), %signal, error = %e, "cannot signal the process group"),
    }
}

/// Reaps members of the group that are our own children. Only a leader's descendants whose parent
/// died are, and only when the agent is their reaper (it runs as PID 1 in a container, or is a
/// child subreaper); otherwise there is nothing to do. Called only after the leader itself was
/// reaped through tokio, so its status is never taken from under tokio.
fn reap_group(pgid: Pid) {
    let members = Pid::from_raw(-pgid.as_raw());
    while let Ok(status) = waitpid(members, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Whether any process of the group is still alive. Zombies do not count: under an init that
/// does not reap orphans (common in containers) killed members linger as zombies, and waiting for
/// them would turn every stop into a full grace period followed by a pointless SIGKILL.
async fn group_alive(pgid: Pid) -> bool {
    if killpg(pgid, None) == Err(Errno::ESRCH) {
        return false;
    }
    let raw = pgid.as_raw();
    // When /proc cannot tell (not Linux, or another PID namespace's /proc), trust kill(2).
    tokio::task::spawn_blocking(move || live_member_in_proc(raw)).await.ok().flatten().unwrap_or(true)
}

/// Scans /proc for a process of group `pgid` that is not a zombie. `None` when /proc shows no
/// process of the group at all, i.e. it cannot be trusted.
fn live_member_in_proc(pgid: i32) -> Option<bool> {
    let mut seen = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().filter(|s| s.bytes().all(|b| b.is_ascii_digit())) else {
            continue;
        };
        // A process that exits during the scan simply has no stat any more.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ..."; comm may itself contain spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|p| p.parse::<i32>().ok());
        if pgrp == Some(pgid) {
            seen = true;
            if !matches!(state, Some("Z" | "X")) {
                return Some(true);
            }
        }
    }
    seen.then_some(false)
}

/// SIGKILLs the group if the attempt is abandoned (its future dropped) before the leader was
/// reaped, so a cancelled run leaves nothing behind.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl GroupGuard {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Builds the outcome from the leader's exit status and the stop, if there was one.
fn outcome_of(status: io::Result<ExitStatus>, stop: Option<Stop>, launch: &Launch, grace: Duration) -> Outcome {
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                state: stop.map_or(RunState::Failed, |s| s.reason.final_state()),
                exit_code: None,
                signal: None,
                reason: Some(format!("lost track of the process: {e}")),
            };
        }
    };
    let (exit_code, signal) = (status.code(), status.signal());
    let (state, reason) = match (stop, exit_code, signal) {
        (Some(stop), _, _) => stopped(stop, launch, grace),
        (None, Some(0), _) => (RunState::Succeeded, None),
        (None, Some(code), _) => (RunState::Failed, Some(format!("exit code {code}"))),
        (None, None, Some(sig)) => {
            let core = if status.core_dumped() { ", core dumped" } else { "" };
            (RunState::Failed, Some(format!("killed by signal {} ({sig}){core}", signal_name(sig))))
        }
        (None, None, None) => (RunState::Failed, Some(format!("ended with status {status}"))),
    };
    Outcome { state, exit_code, signal, reason }
}

/// Which pipe a chunk came from.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// The child's output pipes and the log they are copied into. Chunks are written in the order
/// they arrive, stdout and stderr interleaved, without line buffering.
struct Capture {
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// `None` when the log could not be opened or stopped taking writes; output is then read and
    /// dropped, so the command never blocks on a full pipe.
    log: Option<LogWriter>,
    run_id: RunId,
    out_buf: Box<[u8]>,
    err_buf: Box<[u8]>,
}

impl Capture {
    fn new(stdout: Option<ChildStdout>, stderr: Option<ChildStderr>, log: Option<LogWriter>, run_id: RunId) -> Capture {
        Capture {
            stdout,
            stderr,
            log,
            run_id,
            out_buf: vec![0; CHUNK].into_boxed_slice(),
            err_buf: vec![0; CHUNK].into_boxed_slice(),
        }
    }

    /// True while either pipe may still deliver output.
    fn is_open(&self) -> bool {
        self.stdout.is_some() || self.stderr.is_some()
    }

    /// The next read from either pipe. Cancel-safe: nothing is consumed unless it resolves, so it
    /// can race other events in `select!`. Pending forever once both pipes are closed.
    async fn read(&mut self) -> (Stream, io::Result<usize>) {
        async fn read_from<R: AsyncRead + Unpin>(pipe: Option<&mut R>, buf: &mut [u8]) -> io::Result<usize> {
            match pipe {
                Some(p) => p.read(buf).await,
                None => std::future::pending().await,
            }
        }
        let Capture { stdout, stderr, out_buf, err_buf, .. } = self;
        tokio::select! {
            r = read_from(stdout.as_mut(), out_buf) => (Stream::Stdout, r),
            r = read_from(stderr.as_mut(), err_buf) => (Stream::Stderr, r),
        }
    }

    /// Handles what [`Capture::read`] returned: writes a chunk, or closes the pipe at end of file.
    async fn store(&mut self, stream: Stream, read: io::Result<usize>) {
        let n = match read {
            Ok(0) => 0,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(?stream, error = %e, "cannot read the command's output; no more is captured from it");
                0
            }
        };
        if n == 0 {
            match stream {
                Stream::Stdout => self.stdout = None,
                Stream::Stderr => self.stderr = None,
            }
            return;
        }
        let chunk = match stream {
            Stream::Stdout => &self.out_buf[..n],
            Stream::Stderr => &self.err_buf[..n],
        };
        if let Some(log) = self.log.as_mut()
            && let Err(e) = log.write(chunk).await
        {
            tracing::warn!(run = self.run_id, error = %e, "cannot write the run log; further output is discarded");
            self.log = None;
        }
    }

    /// Appends a line of Tugboat's own to the log (why the attempt was stopped).
    async fn note(&mut self, text: &str) {
        if let Some(log) = self.log.as_mut()
            && let Err(e) = log.line(text).await
        {
            tracing::warn!(run = self.run_id, error = %e, "cannot write the run log; further output is discarded");
            self.log = None;
        }
    }

    /// Reads until both pipes are closed or `limit` has passed, whichever comes first.
    async fn drain(&mut self, limit: Duration) {
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        while self.is_open() {
            tokio::select! {
                () = &mut deadline => break,
                (stream, read) = self.read() => self.store(stream, read).await,
            }
        }
        if self.is_open()
            && let Some(log) = self.log.as_mut()
            && let Err(e) = log.flush().await
        {
            tracing::warn!(run = self.run_id, error = %e, "cannot flush the run log");
        }
    }

    /// Copies until both pipes are closed, then closes the log.
    async fn copy_to_end(mut self) {
        while self.is_open() {
            let (stream, read) = self.read().await;
            self.store(stream, read).await;
        }
        self.close().await;
    }

    /// Flushes and closes the log.
    async fn close(self) {
        if let Some(log) = self.log
            && let Err(e) = log.finish().await
        {
            tracing::warn!(run = self.run_id, error = %e, "cannot finish the run log");
        }
    }
}
