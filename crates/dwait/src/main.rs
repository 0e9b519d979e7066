//! `dwait`: the entrypoint (PID 1) of Tugboat's warm containers. A networked container's dwait first
//! waits for its network (`dwait::net`, set up by `TUG_NET_*`). `dwait serve SOCKET` then listens on
//! SOCKET and runs each run an agent connection asks for (see [`dwait::protocol`]): in its own
//! process group, output streamed back, exit status reported, the group killed on request, and
//! every zombie in the container reaped (PID 1 inherits all orphans). A detachable run outlives
//! its agent's connection, its latest output buffered, until a restarted agent attaches again.
//!
//! Threads, not async: a run costs four short-lived threads (connection, stdout, stderr, control)
//! and the binary stays small and static.
//!
//! Reaping: one reaper thread waits for any child with `waitid(WNOWAIT)` (which does not consume
//! the status), then reaps it under the spawn lock. `Command::spawn` holds the same lock, because
//! when exec fails the standard library reaps the child itself and must find it still there.

// dwait has no async runtime and no paused-time tests: the std clock is the right one here.
#![allow(clippy::disallowed_types)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use dwait::protocol::{self, Attach, Exit, Request};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

/// How long output is still read after the leader exited, when something else holds the pipes.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(250);

/// Exit statuses of the runs' leaders, by pid, and the lock spawns hold.
struct Reaper {
    spawn: Mutex<()>,
    /// pid → status (None while still running). Only watched pids are recorded.
    exits: Mutex<HashMap<i32, Option<WaitStatus>>>,
    exited: Condvar,
    /// Set when a child was spawned, so an idle reaper wakes up.
    children: Mutex<bool>,
    spawned: Condvar,
}

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| Reaper {
        spawn: Mutex::new(()),
        exits: Mutex::new(HashMap::new()),
        exited: Condvar::new(),
        children: Mutex::new(false),
        spawned: Condvar::new(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reaps every child forever, recording the statuses of watched ones.
fn reap_forever() {
    let r = reaper();
    loop {
        match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(status) => {
                let Some(pid) = status.pid() else { continue };
                let _spawning = lock(&r.spawn);
                if let Ok(s) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    let mut exits = lock(&r.exits);
                    if let Some(slot) = exits.get_mut(&pid.as_raw()) {
                        *slot = Some(s);
                        r.exited.notify_all();
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => {
                // No children: sleep until a spawn (or a second, for orphans we never spawned,
                // which cannot exist without a spawn, but it costs nothing).
                let mut any = lock(&r.children);
                if !*any {
                    any = r.spawned.wait_timeout(any, Duration::from_secs(1)).map(|g| g.0).unwrap_or_else(|p| p.into_inner().0);
                }
                *any = false;
            }
        }
    }
}

fn wait_exit(pid: i32) -> WaitStatus {
    let r = reaper();
    let mut exits = lock(&r.exits);
    loop {
        if let Some(Some(s)) = exits.get(&pid) {
            let s = *s;
            exits.remove(&pid);
            return s;
        }
        exits = r.exited.wait(exits).unwrap_or_else(|p| p.into_inner());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let path = args.get(2).map_or("/.tug/run/dwait.sock", String::as_str);
            if let Err(e) = wait_for_network() {
                eprintln!("dwait: {e}");
                std::process::exit(1);
            }
            if let Err(e) = serve(path) {
                eprintln!("dwait: {e}");
                std::process::exit(1);
            }
        }
        Some("--version") => println!("dwait {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!("usage: dwait serve [SOCKET]   (Tugboat's in-container executor)");
            std::process::exit(2);
        }
    }
}

/// With `TUG_NET_POOL` set (a networked container), waits for `dresponse` to plumb it
/// (`dwait::net`): up to `TUG_NET_TIMEOUT` seconds (default 30).
fn wait_for_network() -> Result<(), String> {
    let Ok(pool) = std::env::var("TUG_NET_POOL") else { return Ok(()) };
    let instance = std::env::var("TUG_NET_INSTANCE").map_err(|_| "TUG_NET_POOL is set but TUG_NET_INSTANCE is not".to_string())?;
    let socket = std::env::var("TUG_NET_SOCKET").unwrap_or_else(|_| dwait::net::SOCKET_IN_CONTAINER.into());
    let secs = std::env::var("TUG_NET_TIMEOUT").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let ask = dwait::net::Ask { instance, pool };
    let asked = std::time::Instant::now();
    let ok = dwait::net::wait_for_network(std::path::Path::new(&socket), &ask, Duration::from_secs(secs))?;
    eprintln!(
        "dwait: network ready: {} {}/{} via {} in {:.2} ms",
        ask.instance,
        ok["ip"].as_str().unwrap_or("?"),
        ok["prefix"],
        ok["gateway"].as_str().unwrap_or("?"),
        asked.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

fn serve(path: &str) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    // Bind under a temporary name and rename, so the agent never connects to a half-made socket.
    let tmp = format!("{path}.tmp");
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {tmp}: {e}")))?;
    std::fs::rename(&tmp, path)?;
    std::thread::spawn(reap_forever);
    // As PID 1 without handlers, SIGTERM is ignored: the agent removes containers with SIGKILL.
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                std::thread::spawn(move || {
                    if let Err(e) = handle(stream) {
                        eprintln!("dwait: run failed: {e}");
                    }
                });
            }
            Err(e) => eprintln!("dwait: accept: {e}"),
        }
    }
    Ok(())
}

/// How long a finished detachable run is kept when no agent has said DONE.
const KEEP_FINISHED: Duration = Duration::from_secs(3600);
/// Output kept for a re-attach when the request names no buffer size.
const DEFAULT_BUFFER: u64 = 1 << 20;
/// The most output replayed in one frame on a re-attach.
const REPLAY_CHUNK: usize = 16 * 1024;

/// One run: its leader, and where its output goes.
struct Run {
    pid: i32,
    /// Set for a detachable run (see [`protocol`]).
    key: Option<String>,
    /// The leader has exited and its EXIT frame is (being) written: a connection closing now is
    /// not an abandoned run.
    finished: AtomicBool,
    /// A signal was sent to the group: nothing of it may outlive the leader.
    stopped: AtomicBool,
    out: Mutex<Out>,
}

/// A run's output side, under one lock so frames never interleave and a re-attach sees a
/// consistent buffer.
struct Out {
    /// The attached agent's connection (write side), if any.
    conn: Option<UnixStream>,
    /// Bumped by each attach, so a connection that ends detaches only itself.
    generation: u64,
    /// A detachable run's latest output, at most `cap` bytes.
    ring: VecDeque<u8>,
    cap: usize,
    /// Bytes of output so far.
    total: u64,
    exit: Option<Exit>,
    finished_at: Option<std::time::Instant>,
}

impl Out {
    /// Writes a frame to the attached agent; a failed write detaches it.
    fn send(&mut self, kind: u8, payload: &[u8]) {
        if let Some(c) = self.conn.as_mut()
            && c.write_all(&frame(kind, payload)).is_err()
        {
            self.conn = None;
        }
    }

    /// Records and forwards a chunk of output.
    fn output(&mut self, kind: u8, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.cap > 0 {
            self.ring.extend(bytes);
            let excess = self.ring.len().saturating_sub(self.cap);
            self.ring.drain(..excess);
        }
        self.send(kind, bytes);
    }
}

/// Detachable runs by key, until an agent has their exit (or [`KEEP_FINISHED`] passes).
fn detachable() -> &'static Mutex<HashMap<String, Arc<Run>>> {
    static RUNS: OnceLock<Mutex<HashMap<String, Arc<Run>>>> = OnceLock::new();
    RUNS.get_or_init(Default::default)
}

/// Serves one connection: a new run, or a re-attach to a detachable one.
fn handle(mut conn: UnixStream) -> io::Result<()> {
    let Some((kind, payload)) = protocol::read_frame(&mut conn)? else { return Ok(()) };
    match kind {
        protocol::REQUEST => start(conn, &payload),
        protocol::ATTACH => attach(conn, &payload),
        _ => protocol::write_frame(&mut conn, protocol::ERROR, b"expected a request or an attach frame"),
    }
}

/// Starts a run and follows it to its exit.
fn start(mut conn: UnixStream, payload: &[u8]) -> io::Result<()> {
    let req = match Request::decode(payload) {
        Ok(r) => r,
        Err(e) => return protocol::write_frame(&mut conn, protocol::ERROR, e.to_string().as_bytes()),
    };
    if let Some(key) = &req.key {
        let mut runs = lock(detachable());
        runs.retain(|_, r| lock(&r.out).finished_at.is_none_or(|t| t.elapsed() < KEEP_FINISHED));
        if runs.contains_key(key) {
            let why = format!("run {key} is already running here; attach to it instead of starting it again");
            return protocol::write_frame(&mut conn, protocol::ERROR, why.as_bytes());
        }
    }
    let mut cmd = match prepare(&req) {
        Ok(c) => c,
        Err(e) => return protocol::write_frame(&mut conn, protocol::ERROR, e.as_bytes()),
    };
    let oom_before = oom_kills();
    let r = reaper();
    let spawned = {
        let _spawning = lock(&r.spawn);
        let child = cmd.spawn();
        if let Ok(c) = &child {
            lock(&r.exits).insert(c.id() as i32, None);
        }
        child
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let program = req.argv.first().map_or("", String::as_str);
            let why = format!("cannot start `{program}`: {e}");
            return protocol::write_frame(&mut conn, protocol::ERROR, why.as_bytes());
        }
    };
    *lock(&r.children) = true;
    r.spawned.notify_all();
    let pid = child.id() as i32;
    let pgid = Pid::from_raw(pid);
    let cap = if req.key.is_some() { req.buffer.unwrap_or(DEFAULT_BUFFER) as usize } else { 0 };
    let run = Arc::new(Run {
        pid,
        key: req.key.clone(),
        finished: AtomicBool::new(false),
        stopped: AtomicBool::new(false),
        out: Mutex::new(Out {
            conn: Some(conn.try_clone()?),
            generation: 0,
            ring: VecDeque::new(),
            cap,
            total: 0,
            exit: None,
            finished_at: None,
        }),
    });
    if let Some(key) = &req.key {
        lock(detachable()).insert(key.clone(), run.clone());
    }
    lock(&run.out).send(protocol::STARTED, pid.to_string().as_bytes());

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut pumps = 0;
    if let Some(s) = child.stdout.take() {
        pumps += 1;
        pump(s, protocol::STDOUT, run.clone(), done_tx.clone());
    }
    if let Some(s) = child.stderr.take() {
        pumps += 1;
        pump(s, protocol::STDERR, run.clone(), done_tx.clone());
    }
    drop(done_tx);
    {
        let run = run.clone();
        std::thread::spawn(move || control(conn, run, 0));
    }

    let status = wait_exit(pid);
    if run.stopped.load(Ordering::SeqCst) {
        // A stopped run leaves nothing of its group behind.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + DRAIN_AFTER_EXIT;
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let mut exit = match status {
        WaitStatus::Exited(_, code) => Exit { code: Some(code), ..Exit::default() },
        WaitStatus::Signaled(_, sig, core) => Exit { signal: Some(sig as i32), core, ..Exit::default() },
        _ => Exit::default(),
    };
    exit.oom = exit.signal == Some(Signal::SIGKILL as i32) && oom_kills() > oom_before;
    // Before the EXIT frame: once the agent has it, it closes the connection, and that close
    // must not be taken for an abandoned run (stragglers of a finished run are left alone).
    run.finished.store(true, Ordering::SeqCst);
    let mut out = lock(&run.out);
    out.exit = Some(exit);
    out.finished_at = Some(std::time::Instant::now());
    out.send(protocol::EXIT, &exit.encode());
    Ok(())
}

/// Continues a detachable run on a new connection: what the agent missed, then the rest.
fn attach(mut conn: UnixStream, payload: &[u8]) -> io::Result<()> {
    let a = match Attach::decode(payload) {
        Ok(a) => a,
        Err(e) => return protocol::write_frame(&mut conn, protocol::ERROR, e.to_string().as_bytes()),
    };
    let Some(run) = lock(detachable()).get(&a.key).cloned() else {
        let why = format!("no run {} in this container: it never started here, or the container restarted", a.key);
        return protocol::write_frame(&mut conn, protocol::ERROR, why.as_bytes());
    };
    let generation = {
        let mut out = lock(&run.out);
        let mut w = conn.try_clone()?;
        w.write_all(&frame(protocol::STARTED, run.pid.to_string().as_bytes()))?;
        let kept_from = out.total - out.ring.len() as u64;
        if a.from < kept_from {
            let marker = format!(
                "[tug: {} bytes of output were dropped while no agent was attached; dwait keeps the last {} bytes]\n",
                kept_from - a.from,
                out.cap
            );
            w.write_all(&frame(protocol::STDOUT, marker.as_bytes()))?;
        }
        let skip = usize::try_from(a.from.saturating_sub(kept_from)).unwrap_or(usize::MAX).min(out.ring.len());
        for chunk in out.ring.make_contiguous()[skip..].chunks(REPLAY_CHUNK) {
            w.write_all(&frame(protocol::STDOUT, chunk))?;
        }
        if let Some(exit) = out.exit {
            w.write_all(&frame(protocol::EXIT, &exit.encode()))?;
        }
        out.generation += 1;
        out.conn = Some(w);
        out.generation
    };
    control(conn, run, generation);
    Ok(())
}

/// Reads what the agent sends on a run's connection: signals for the run's group, DONE. When the
/// connection ends before the exit, a plain run is killed; a detachable one goes on, detached.
fn control(mut conn: UnixStream, run: Arc<Run>, generation: u64) {
    let pgid = Pid::from_raw(run.pid);
    loop {
        match protocol::read_frame(&mut conn) {
            Ok(Some((protocol::SIGNAL, p))) => {
                let sig = std::str::from_utf8(&p).ok().and_then(|s| s.parse::<i32>().ok()).and_then(|n| Signal::try_from(n).ok());
                if let Some(sig) = sig
                    && !run.finished.load(Ordering::SeqCst)
                {
                    run.stopped.store(true, Ordering::SeqCst);
                    let _ = killpg(pgid, sig);
                }
            }
            Ok(Some((protocol::DONE, _))) => {
                if let Some(key) = &run.key {
                    let mut runs = lock(detachable());
                    if runs.get(key).is_some_and(|r| Arc::ptr_eq(r, &run)) {
                        runs.remove(key);
                    }
                }
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                let mut out = lock(&run.out);
                if out.generation == generation {
                    out.conn = None;
                }
                drop(out);
                // The agent went away: a plain run must not outlive its connection.
                if run.key.is_none() && !run.finished.load(Ordering::SeqCst) {
                    let _ = killpg(pgid, Signal::SIGKILL);
                }
                return;
            }
        }
    }
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = protocol::encode_header(kind, payload.len()).to_vec();
    v.extend_from_slice(payload);
    v
}

/// Copies a pipe into frames until end of file, then says so on `done`. With no agent attached
/// it keeps reading (into the buffer of a detachable run), so the run never blocks on a full pipe.
fn pump(mut pipe: impl Read + Send + 'static, kind: u8, run: Arc<Run>, done: mpsc::Sender<()>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => lock(&run.out).output(kind, &buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
}

/// The command of a request: its own process group, piped output, workdir, user, environment.
fn prepare(req: &Request) -> Result<Command, String> {
    let (program, args) = match req.argv.split_first() {
        Some((p, rest)) if !p.is_empty() => (p, rest),
        _ => return Err("cannot start: the command is empty".into()),
    };
    let mut cmd = Command::new(program);
    cmd.args(args).process_group(0).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = &req.workdir {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(format!("cannot start `{program}`: workdir {dir:?} is not a directory")),
            Err(e) => return Err(format!("cannot start `{program}`: workdir {dir:?}: {e}")),
        }
        cmd.current_dir(dir);
    }
    if let Some(user) = &req.user {
        let (uid, gid, home) = lookup_user(user).map_err(|e| format!("cannot start `{program}`: {e}"))?;
        cmd.uid(uid).gid(gid);
        if let Some((name, home)) = home {
            cmd.env("USER", &name).env("LOGNAME", &name).env("HOME", home);
        }
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    Ok(cmd)
}

/// `uid`, `uid:gid` or a name from the container's /etc/passwd.
#[allow(clippy::type_complexity)]
fn lookup_user(spec: &str) -> Result<(u32, u32, Option<(String, String)>), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| {
        f.len() >= 6 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user))
    });
    let (uid, mut gid, named) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => (
            f[2].parse::<u32>().map_err(|_| format!("bad uid for {user:?} in /etc/passwd"))?,
            f[3].parse::<u32>().unwrap_or(0),
            Some((f[0].to_string(), f[5].to_string())),
        ),
        (None, Ok(n)) => (n, n, None),
        (None, Err(_)) => return Err(format!("unknown user {user:?}: not in the container's /etc/passwd (give a uid)")),
    };
    if let Some(g) = group {
        gid = g.parse::<u32>().map_err(|_| format!("group {g:?} must be a number"))?;
    }
    Ok((uid, gid, named))
}

/// OOM kills counted by the container's memory cgroup (v2 `memory.events`, v1 `oom_control`).
fn oom_kills() -> u64 {
    for path in ["/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let n = text.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse::<u64>().ok()));
            if let Some(n) = n {
                return n;
            }
        }
    }
    0
}
