//! The docker runtime against the real Docker Engine: warm containers through the in-container
//! executor (output, exit codes, process-group kills, one container for many runs), per-run
//! containers, lifecycle (spec change, max_runs, idle removal, adoption, dead containers), the
//! memory limit, and a missing image; a durable agent's docker runs outliving the agent and
//! re-attached by the next one, with their whole log or a marker where output was dropped.
//!
//! Needs a Docker daemon, the static dwait binary and the busybox test image; `scripts/test`
//! provides the last two (and each is also built here when missing). When no daemon is
//! reachable, every test prints a loud SKIP and passes.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use tempfile::TempDir;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tug_agent::runtime::docker::spec::label;
use tug_agent::runtime::docker::{ContainerError, DockerConfig, DockerError, DockerRuntime, LazyDocker};
use tug_agent::runtime::process::ProcessRuntime;
use tug_agent::runtime::{Dispatch, Outcome, RunContext, Runtime, RuntimeError};
use tug_core::bytesize::ByteSize;
use tug_core::job::{Command, ContainerMode, DockerSpec, PullPolicy, RuntimeKind};
use tug_core::protocol::{KillReason, Launch, Task};
use tug_core::run::{RunId, RunState};
use tug_logs::LogFiles;

const GRACE: Duration = Duration::from_millis(500);

fn image() -> String {
    std::env::var("TUG_TEST_IMAGE").unwrap_or_else(|_| "tugboat-test-busybox:1".into())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds (once) what the tests need: the static dwait and the test image. Panics when they
/// cannot be made while Docker is up: that is a broken environment, not a reason to skip.
fn prerequisites() -> PathBuf {
    static DWAIT: OnceLock<PathBuf> = OnceLock::new();
    DWAIT
        .get_or_init(|| {
            let dwait = match std::env::var_os("TUG_DWAIT") {
                Some(p) => PathBuf::from(p),
                None => {
                    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                    let rustc = std::process::Command::new("rustc").arg("-vV").output().expect("rustc -vV");
                    let host = String::from_utf8_lossy(&rustc.stdout)
                        .lines()
                        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
                        .expect("rustc names its host");
                    let st = std::process::Command::new(cargo)
                        .args(["build", "-q", "-p", "dwait", "--release", "--target", &host])
                        .env("RUSTFLAGS", "-C target-feature=+crt-static")
                        .current_dir(workspace())
                        .status()
                        .expect("running cargo to build dwait");
                    assert!(st.success(), "building the static dwait failed");
                    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from);
                    target.join(format!("{host}/release/dwait"))
                }
            };
            tug_agent::runtime::docker::spec::check_static(&dwait).expect("dwait must be static");
            let present = std::process::Command::new("docker").args(["image", "inspect", &image()]).output().is_ok_and(|o| o.status.success());
            if !present {
                let script = r#"set -e; root=$(mktemp -d); mkdir -p "$root/bin" "$root/etc" "$root/tmp"
                    cp "$(readlink -f /bin/busybox)" "$root/bin/busybox"
                    for a in $("$root/bin/busybox" --list); do [ -e "$root/bin/$a" ] || ln -s busybox "$root/bin/$a"; done
                    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$root/etc/passwd"
                    tar -C "$root" -c . | docker import --change 'ENV PATH=/bin' - "$1" >/dev/null; rm -rf "$root""#;
                let st = std::process::Command::new("bash").args(["-c", script, "build-image", &image()]).status().expect("bash");
                assert!(st.success(), "building the test image {} failed (is busybox-static installed? scripts/test installs it)", image());
            }
            dwait
        })
        .clone()
}

/// One test's runtime, with its own agent name (so its containers are its own) and state dir.
struct Env {
    rt: DockerRuntime,
    config: DockerConfig,
    _state: TempDir,
    _logs_dir: TempDir,
    logs: LogFiles,
}

impl Env {
    async fn new(test: &str) -> Option<Env> {
        Env::with(test, |_| {}).await
    }

    async fn with(test: &str, tweak: impl FnOnce(&mut DockerConfig)) -> Option<Env> {
        let state = tempfile::Builder::new().prefix("tug").tempdir_in("/tmp").expect("tempdir");
        let mut config = DockerConfig::new(format!("test-{test}-{}", std::process::id()), state.path());
        config.sweep_every = Duration::from_millis(100);
        let probe = DockerRuntime::connect(config.clone()).await;
        if let Err(e) = probe {
            eprintln!("\n!!!!!!!! SKIPPED docker test {test}: {e} !!!!!!!!\n");
            return None;
        }
        drop(probe);
        config.dwait = Some(prerequisites());
        tweak(&mut config);
        let rt = DockerRuntime::connect(config.clone()).await.expect("connect");
        let logs_dir = tempfile::tempdir().expect("tempdir");
        let logs = LogFiles::new(logs_dir.path().join("logs"));
        Some(Env { rt, config, _state: state, _logs_dir: logs_dir, logs })
    }

    fn start(&self, launch: Launch) -> (JoinHandle<Outcome>, oneshot::Receiver<Option<u32>>, watch::Sender<Option<KillReason>>) {
        let (kill_tx, kill) = watch::channel(None);
        let (started, started_rx) = oneshot::channel();
        let ctx = RunContext { launch, logs: self.logs.clone(), log_limit: 1 << 20, kill, grace: GRACE, started };
        let rt = self.rt.clone();
        (tokio::spawn(async move { rt.run(ctx).await }), started_rx, kill_tx)
    }

    async fn run(&self, launch: Launch) -> Outcome {
        let (h, _s, _k) = self.start(launch);
        h.await.expect("runtime task")
    }

    async fn log(&self, run_id: RunId) -> String {
        let bytes = self.logs.read(run_id, 0, 1 << 20).await.unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// This agent's containers: (id, labels).
    async fn containers(&self) -> Vec<(String, HashMap<String, String>)> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{}={}", label::AGENT, self.config.agent)])]);
        let opts = bollard::query_parameters::ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let list = self.rt.docker().list_containers(Some(opts)).await.expect("list containers");
        list.into_iter().map(|c| (c.id.unwrap_or_default(), c.labels.unwrap_or_default())).collect()
    }

    /// Waits until this agent has `n` containers.
    async fn expect_containers(&self, n: usize) -> Vec<(String, HashMap<String, String>)> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.containers().await;
            if c.len() == n {
                return c;
            }
            assert!(tokio::time::Instant::now() < deadline, "expected {n} containers, found {}", c.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn cleanup(self) {
        self.rt.remove_all().await;
    }
}

impl Drop for Env {
    /// Best effort when a test failed before `cleanup`: leave no container behind.
    fn drop(&mut self) {
        let filter = format!("label={}={}", label::AGENT, self.config.agent);
        if let Ok(out) = std::process::Command::new("docker").args(["ps", "-aq", "--filter", &filter]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker").args(["rm", "-f"]).args(&ids).output();
            }
        }
    }
}

fn next_run_id() -> RunId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn docker_spec() -> DockerSpec {
    DockerSpec {
        image: image(),
        entrypoint: None,
        pull: PullPolicy::IfNotPresent,
        mode: ContainerMode::Warm,
        volumes: Vec::new(),
        network: None,
        max_runs: None,
        max_age: None,
        idle_timeout: None,
        prewarm: None,
    }
}

fn launch(job: &str, script: &str, tweak: impl FnOnce(&mut Task)) -> Launch {
    let mut task = Task {
        runtime: RuntimeKind::Docker,
        docker: Some(docker_spec()),
        resources: Default::default(),
        command: Command::Shell(script.into()),
        env: BTreeMap::new(),
        workdir: None,
        user: None,
        timeout: None,
        network: None,
        stop_signal: None,
        stop_grace: None,
    };
    tweak(&mut task);
    Launch {
        run_id: next_run_id(),
        job: job.into(),
        scheduled_at: Timestamp::from_second(1_700_000_000).expect("valid timestamp"),
        attempt: 1,
        epoch: 1,
        task,
        health: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_hundred_runs_share_one_container_with_right_output_and_exit_codes() {
    let Some(env) = Env::new("hundred").await else { return };
    for i in 0..100 {
        let l = launch("hundred", &format!("echo out-{i} $TUG_JOB; echo err-{i} >&2; exit $(({i} % 3))"), |_| {});
        let id = l.run_id;
        let o = env.run(l).await;
        let code = i % 3;
        assert_eq!(o.exit_code, Some(code), "run {i}: {o:?}");
        if code == 0 {
            assert_eq!(o.state, RunState::Succeeded, "{o:?}");
        } else {
            assert_eq!((o.state, o.reason.as_deref()), (RunState::Failed, Some(format!("exit code {code}").as_str())));
        }
        let log = env.log(id).await;
        assert!(log.contains(&format!("out-{i} hundred\n")) && log.contains(&format!("err-{i}\n")), "run {i} log: {log:?}");
    }
    assert_eq!(env.rt.containers_created(), 1);
    assert_eq!(env.rt.warm_containers(), 1, "what heartbeats report");
    let c = env.expect_containers(1).await;
    assert_eq!(c[0].1.get(label::JOB).map(String::as_str), Some("hundred"));
    assert_eq!(c[0].1.get(label::MODE).map(String::as_str), Some("warm"));
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_env_workdir_user_and_start_errors() {
    let Some(env) = Env::new("details").await else { return };
    let l = launch("details", "echo $FOO $TUG_RUN_ID $(pwd) $(id -u)", |t| {
        t.env.insert("FOO".into(), "bar".into());
        t.workdir = Some("/tmp".into());
        t.user = Some("nobody".into());
    });
    let id = l.run_id;
    let o = env.run(l).await;
    assert_eq!(o.state, RunState::Succeeded, "{o:?}");
    assert_eq!(env.log(id).await, format!("bar {id} /tmp 65534\n"));

    let o = env.run(launch("details", "", |t| t.command = Command::Argv(vec!["/no/such/program".into()]))).await;
    assert_eq!(o.state, RunState::Failed);
    assert!(o.reason.as_deref().unwrap_or("").contains("cannot start `/no/such/program`"), "{o:?}");
    let o = env.run(launch("details", "true", |t| t.workdir = Some("/nope".into()))).await;
    assert!(o.reason.as_deref().unwrap_or("").contains("workdir \"/nope\""), "{o:?}");
    // Killed by a signal.
    let o = env.run(launch("details", "kill -SEGV $$", |_| {})).await;
    assert_eq!((o.state, o.signal), (RunState::Failed, Some(11)), "{o:?}");
    assert_eq!(env.rt.containers_created(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_timeout_kills_the_process_group_inside_the_container() {
    let Some(env) = Env::new("timeout").await else { return };
    // A background child and a leader that ignores SIGTERM: only SIGKILL of the group ends both.
    let l = launch("timeout", "sleep 1000 & trap '' TERM; echo ready; sleep 999; sleep 999", |t| {
        t.timeout = Some(tug_core::duration::Duration::from_secs(1));
    });
    let id = l.run_id;
    let (h, started, kill) = env.start(l);
    let pid = started.await.expect("started");
    assert!(pid.is_some_and(|p| p > 1), "pid inside the container: {pid:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill.send(Some(KillReason::Timeout)).expect("kill");
    let o = h.await.expect("runtime task");
    assert_eq!(o.state, RunState::TimedOut, "{o:?}");
    let reason = o.reason.unwrap_or_default();
    assert!(reason.contains("timed out after 1s") && reason.contains("SIGKILL"), "{reason}");
    assert!(env.log(id).await.starts_with("ready\n"));
    // Nothing of the group is left in the container.
    let l = launch("timeout", "ps -o pid,args | grep -v grep | grep -c 'sleep 99' || true", |_| {});
    let id = l.run_id;
    assert_eq!(env.run(l).await.state, RunState::Succeeded);
    assert_eq!(env.log(id).await.trim(), "0", "sleepers survived the kill");

    // A background child of a run that ended on its own is left running (as with the process
    // runtime), and dwait, as PID 1, reaps it when it exits: no zombie stays behind.
    let l = launch("timeout", "sleep 0.3 & echo left", |_| {});
    let id = l.run_id;
    assert_eq!(env.run(l).await.state, RunState::Succeeded);
    assert_eq!(env.log(id).await, "left\n");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let l = launch("timeout", "ps -o stat,args | grep -v grep | grep -c '^Z' || true", |_| {});
    let id = l.run_id;
    assert_eq!(env.run(l).await.state, RunState::Succeeded);
    assert_eq!(env.log(id).await.trim(), "0", "zombies in the container");

    // A plain kill: SIGTERM is enough.
    let (h, started, kill) = env.start(launch("timeout", "sleep 1000", |_| {}));
    started.await.expect("started");
    kill.send(Some(KillReason::Requested)).expect("kill");
    let o = h.await.expect("runtime task");
    assert_eq!((o.state, o.reason.as_deref()), (RunState::Killed, Some("killed on request (SIGTERM)")));
    assert_eq!(env.rt.containers_created(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_concurrent_runs_share_one_container() {
    let Some(env) = Env::new("concurrent").await else { return };
    let handles: Vec<_> = (0..8).map(|i| env.start(launch("concurrent", &format!("sleep 0.2; echo {i}"), |_| {})).0).collect();
    for h in handles {
        assert_eq!(h.await.expect("task").state, RunState::Succeeded);
    }
    assert_eq!(env.rt.containers_created(), 1);
    env.expect_containers(1).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_spec_change_replaces_and_max_runs_recycles() {
    let Some(env) = Env::new("lifecycle").await else { return };
    assert_eq!(env.run(launch("lifecycle", "true", |_| {})).await.state, RunState::Succeeded);
    // Per-run settings (env) do not replace the container.
    assert_eq!(env.run(launch("lifecycle", "true", |t| { t.env.insert("A".into(), "b".into()); })).await.state, RunState::Succeeded);
    assert_eq!(env.rt.containers_created(), 1);
    let before = env.expect_containers(1).await;
    // A container setting does.
    assert_eq!(env.run(launch("lifecycle", "true", |t| t.resources.cpus = Some(0.5))).await.state, RunState::Succeeded);
    assert_eq!(env.rt.containers_created(), 2);
    let after = env.expect_containers(1).await;
    assert_ne!(before[0].0, after[0].0, "the old container must be removed");

    // max_runs = 3: seven runs use three containers; only the last remains.
    let recycle = |t: &mut Task| {
        t.docker.as_mut().expect("docker").max_runs = Some(3);
    };
    for _ in 0..7 {
        assert_eq!(env.run(launch("recycle", "true", recycle)).await.state, RunState::Succeeded);
    }
    assert_eq!(env.rt.containers_created(), 2 + 3);
    env.expect_containers(2).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_max_age_recycles_and_volumes_are_mounted() {
    let Some(env) = Env::new("age").await else { return };
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::write(data.path().join("in"), "from the host\n").expect("write");
    let vol = format!("{}:/data", data.path().display());
    let aged = |t: &mut Task| {
        let d = t.docker.as_mut().expect("docker");
        d.max_age = Some(tug_core::duration::Duration::from_secs(1));
        d.volumes = vec![vol.clone()];
    };
    let l = launch("age", "cat /data/in; echo out > /data/out", aged);
    let id = l.run_id;
    assert_eq!(env.run(l).await.state, RunState::Succeeded);
    assert_eq!(env.log(id).await, "from the host\n");
    assert_eq!(std::fs::read_to_string(data.path().join("out")).expect("written by the run"), "out\n");
    assert_eq!(env.run(launch("age", "true", aged)).await.state, RunState::Succeeded);
    assert_eq!(env.rt.containers_created(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(env.run(launch("age", "true", aged)).await.state, RunState::Succeeded);
    assert_eq!(env.rt.containers_created(), 2);
    env.expect_containers(1).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_idle_container_is_removed_and_dead_one_recreated() {
    let Some(env) = Env::new("idle").await else { return };
    let idle = |t: &mut Task| t.docker.as_mut().expect("docker").idle_timeout = Some(tug_core::duration::Duration::from_secs(1));
    assert_eq!(env.run(launch("idle", "true", idle)).await.state, RunState::Succeeded);
    env.expect_containers(1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.expect_containers(0).await;
    // The next run creates a new one.
    assert_eq!(env.run(launch("idle", "true", idle)).await.state, RunState::Succeeded);
    assert_eq!(env.rt.containers_created(), 2);

    // A container that dies between runs is recreated by the next run.
    assert_eq!(env.run(launch("dies", "true", |_| {})).await.state, RunState::Succeeded);
    let dead = env.containers().await.into_iter().find(|c| c.1.get(label::JOB).map(String::as_str) == Some("dies")).expect("container").0;
    env.rt.docker().kill_container(&dead, None::<bollard::query_parameters::KillContainerOptions>).await.expect("docker kill");
    let l = launch("dies", "echo alive", |_| {});
    let id = l.run_id;
    let o = env.run(l).await;
    assert_eq!(o.state, RunState::Succeeded, "{o:?}");
    assert_eq!(env.log(id).await, "alive\n");
    assert_eq!(env.rt.containers_created(), 4);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prewarm_creates_the_container_before_the_first_run() {
    let Some(env) = Env::new("prewarm").await else { return };
    let task = launch("prewarm", "true", |_| {}).task;
    env.rt.prewarm("prewarm", &task).await.expect("prewarm");
    assert_eq!(env.rt.containers_created(), 1);
    env.expect_containers(1).await;
    // The first run finds it warm; a second prewarm is a no-op.
    assert_eq!(env.run(launch("prewarm", "true", |_| {})).await.state, RunState::Succeeded);
    assert_eq!(env.rt.containers_created(), 1);
    env.rt.prewarm("prewarm", &task).await.expect("prewarm");
    assert_eq!(env.rt.containers_created(), 1);
    // max_runs counts runs, not prewarms.
    let once = |t: &mut Task| t.docker.as_mut().expect("docker").max_runs = Some(1);
    env.rt.prewarm("prewarm-once", &launch("prewarm-once", "true", once).task).await.expect("prewarm");
    assert_eq!(env.run(launch("prewarm-once", "true", once)).await.state, RunState::Succeeded);
    assert_eq!(env.rt.containers_created(), 2);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_adopts_the_warm_container() {
    let Some(env) = Env::new("adopt").await else { return };
    assert_eq!(env.run(launch("adopt", "true", |_| {})).await.state, RunState::Succeeded);
    let first = env.expect_containers(1).await;
    // A second runtime for the same agent (the restarted agent) adopts it.
    let again = DockerRuntime::connect(env.config.clone()).await.expect("connect");
    let (kill_tx, kill) = watch::channel(None);
    let (started, _s) = oneshot::channel();
    let l = launch("adopt", "echo adopted", |_| {});
    let id = l.run_id;
    let ctx = RunContext { launch: l, logs: env.logs.clone(), log_limit: 1 << 20, kill, grace: GRACE, started };
    let o = again.run(ctx).await;
    drop(kill_tx);
    assert_eq!(o.state, RunState::Succeeded, "{o:?}");
    assert_eq!(env.log(id).await, "adopted\n");
    assert_eq!(again.containers_created(), 0, "the restarted agent must not create a second container");
    assert_eq!(env.expect_containers(1).await[0].0, first[0].0);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_warm_removes_this_runtimes_warm_containers() {
    let Some(env) = Env::new("rmwarm").await else { return };
    assert_eq!(env.run(launch("rmwarm", "true", |_| {})).await.state, RunState::Succeeded);
    env.expect_containers(1).await;
    assert_eq!(env.rt.warm_containers(), 1);
    env.rt.remove_warm().await;
    assert_eq!(env.rt.warm_containers(), 0);
    env.expect_containers(0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_run_creates_and_removes_one_container_per_run() {
    let Some(env) = Env::with("perrun", |c| c.remove_delay = Duration::from_millis(1500)).await else { return };
    let per_run = |t: &mut Task| t.docker.as_mut().expect("docker").mode = ContainerMode::PerRun;
    for i in 0..3 {
        let l = launch("perrun", &format!("echo run-{i}; echo e >&2; exit {i}"), per_run);
        let id = l.run_id;
        let o = env.run(l).await;
        assert_eq!(o.exit_code, Some(i), "{o:?}");
        // Docker multiplexes the two streams; their relative order is not kept.
        let mut lines: Vec<String> = env.log(id).await.lines().take(2).map(str::to_string).collect();
        lines.sort();
        assert_eq!(lines, vec!["e".to_string(), format!("run-{i}")]);
        if i == 0 {
            // Kept for `remove_delay` after the run, then removed.
            let c = env.containers().await;
            assert_eq!(c.len(), 1);
            assert_eq!(c[0].1.get(label::MODE).map(String::as_str), Some("per-run"));
        }
    }
    env.expect_containers(0).await;
    assert_eq!(env.rt.containers_created(), 3);
    // A per-run container is stopped on timeout.
    let l = launch("perrun", "sleep 1000", per_run);
    let (h, started, kill) = env.start(l);
    started.await.expect("started");
    kill.send(Some(KillReason::Timeout)).expect("kill");
    let o = h.await.expect("task");
    assert_eq!(o.state, RunState::TimedOut, "{o:?}");
    env.expect_containers(0).await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_holds_and_the_run_says_oom() {
    let Some(env) = Env::new("oom").await else { return };
    let mem = |t: &mut Task| t.resources.mem = Some(ByteSize(32 << 20));
    // dd allocates (and touches) a 100 MiB buffer: past the 32 MiB limit.
    let o = env.run(launch("oom", "dd if=/dev/zero of=/dev/null bs=100M count=1", mem)).await;
    assert_eq!((o.state, o.signal), (RunState::Failed, Some(9)), "{o:?}");
    assert!(o.reason.as_deref().unwrap_or("").contains("OOM-killed"), "{o:?}");
    // The container survives and runs the next run.
    assert_eq!(env.run(launch("oom", "dd if=/dev/zero of=/dev/null bs=1M count=1", mem)).await.state, RunState::Succeeded);
    assert_eq!(env.rt.containers_created(), 1);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_fails_the_run_and_the_runtime_stays_healthy() {
    let Some(env) = Env::new("noimage").await else { return };
    let l = launch("noimage", "true", |t| t.docker.as_mut().expect("docker").image = "tugboat-test-absent:nope".into());
    let id = l.run_id;
    let o = env.run(l).await;
    assert_eq!(o.state, RunState::Failed);
    let reason = o.reason.unwrap_or_default();
    assert!(reason.starts_with("image tugboat-test-absent:nope is not on this host and pulling it failed: "), "{reason}");
    assert!(reason.contains("docker import - tugboat-test-absent:nope"), "says how to load it without a registry: {reason}");
    assert!(env.log(id).await.contains("is not on this host"));
    let never = |t: &mut Task| {
        let d = t.docker.as_mut().expect("docker");
        d.image = "tugboat-test-absent:nope".into();
        d.pull = PullPolicy::Never;
    };
    let reason = env.run(launch("noimage", "true", never)).await.reason.unwrap_or_default();
    assert!(reason.contains("pull = \"never\"") && reason.contains("docker load"), "{reason}");
    // A pre-warm fails the same way, with the error typed.
    let err = env.rt.prewarm("noimage", &launch("noimage", "true", never).task).await.unwrap_err();
    let missing = matches!(&err, RuntimeError::Container(ContainerError::ImageMissing { image }) if image == "tugboat-test-absent:nope");
    assert!(missing, "{err:?}");
    assert_eq!(env.run(launch("ok", "true", |_| {})).await.state, RunState::Succeeded);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_fallback_runs_without_the_executor() {
    let Some(env) = Env::with("exec", |c| c.dwait = None).await else { return };
    let l = launch("exec", "echo via-exec; exit 4", |_| {});
    let id = l.run_id;
    let o = env.run(l).await;
    assert_eq!((o.state, o.exit_code), (RunState::Failed, Some(4)), "{o:?}");
    let log = env.log(id).await;
    assert!(log.contains("docker exec") && log.contains("via-exec\n"), "{log:?}");
    let c = env.expect_containers(1).await;
    assert_eq!(c[0].1.get(label::PATH).map(String::as_str), Some("exec"));
    env.cleanup().await;
}

#[tokio::test]
async fn lazy_docker_reports_an_unreachable_daemon_per_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogFiles::new(dir.path().join("logs"));
    let mut config = DockerConfig::new("lazy", dir.path().join("state"));
    config.socket = dir.path().join("no-docker.sock").display().to_string();
    let rt = LazyDocker::new(config);
    for _ in 0..2 {
        let l = launch("lazy", "true", |_| {});
        let id = l.run_id;
        let (_k, kill) = watch::channel(None);
        let (started, _s) = oneshot::channel();
        let o = rt.run(RunContext { launch: l, logs: logs.clone(), log_limit: 1 << 20, kill, grace: GRACE, started }).await;
        assert_eq!(o.state, RunState::Failed);
        let reason = o.reason.unwrap_or_default();
        assert!(reason.starts_with("cannot start: cannot reach the Docker daemon at ") && reason.contains("start Docker"), "{reason}");
        let log = String::from_utf8_lossy(&logs.read(id, 0, 1 << 20).await.unwrap_or_default()).into_owned();
        assert!(log.contains("cannot reach the Docker daemon"), "{log:?}");
    }
}

#[tokio::test]
async fn dispatch_without_docker_fails_docker_runs_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = LogFiles::new(dir.path().join("logs"));
    let no_answer = DockerError::NoAnswer { socket: "/nope".into(), waited: Duration::from_secs(5) };
    let rt = Dispatch::new(std::sync::Arc::new(ProcessRuntime), Err(no_answer));
    let run = |l: Launch| {
        let (_k, kill) = watch::channel(None);
        let (started, _s) = oneshot::channel();
        RunContext { launch: l, logs: logs.clone(), log_limit: 1 << 20, kill, grace: GRACE, started }
    };
    let o = rt.run(run(launch("d", "true", |_| {}))).await;
    assert_eq!(o.state, RunState::Failed);
    let reason = o.reason.unwrap_or_default();
    assert!(reason.contains("docker runtime is unavailable: cannot reach the Docker daemon at /nope") && reason.contains("docker info"), "{reason}");
    let o = rt.run(run(launch("p", "exit 0", |t| { t.runtime = RuntimeKind::Process; t.docker = None; }))).await;
    assert_eq!(o.state, RunState::Succeeded);
}

/// A durable agent (checkpoints in the runtime's `checkpoints` dir) over `rt`, serving: its
/// command sender, its updates, and what stops it (leaving its runs going).
async fn durable_agent(
    env: &Env,
    rt: DockerRuntime,
) -> (tokio::sync::mpsc::Sender<tug_core::protocol::ToAgent>, tokio::sync::mpsc::Receiver<tug_core::protocol::ToServer>, oneshot::Sender<()>, JoinHandle<()>) {
    let dir = env.config.checkpoints.clone().expect("checkpoints on");
    let config = tug_agent::AgentConfig {
        name: env.config.agent.clone(),
        grace: GRACE,
        durable: Some(tug_agent::Durability { dir, shim: PathBuf::from("/nonexistent/tug"), detach_on_stop: true }),
        ..tug_agent::AgentConfig::default()
    };
    let (updates_tx, updates) = tokio::sync::mpsc::channel(64);
    let agent = tug_agent::Agent::new(config, std::sync::Arc::new(rt), env.logs.clone(), updates_tx);
    let (commands, commands_rx) = tokio::sync::mpsc::channel(16);
    let (stop, stop_rx) = oneshot::channel::<()>();
    let serve = tokio::spawn(agent.serve(commands_rx, async {
        let _ = stop_rx.await;
    }));
    (commands, updates, stop, serve)
}

fn with_checkpoints(buffer: u64) -> impl FnOnce(&mut DockerConfig) {
    move |c| {
        c.checkpoints = Some(c.state_dir.join("runs"));
        c.detached_buffer = buffer;
    }
}

/// Waits until the run's log contains `text`.
async fn log_has(env: &Env, run_id: RunId, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !env.log(run_id).await.contains(text) {
        assert!(tokio::time::Instant::now() < deadline, "the log never showed {text:?}: {:?}", env.log(run_id).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_run_outlives_its_agent_and_the_next_agent_finishes_it_once_with_its_whole_log() {
    let Some(env) = Env::with("reattach", with_checkpoints(1 << 20)).await else { return };
    let (commands, mut updates, stop, serve) = durable_agent(&env, env.rt.clone()).await;
    let l = launch("reattach", "echo before; sleep 2; echo after; exit 3", |_| {});
    let id = l.run_id;
    commands.send(tug_core::protocol::ToAgent::Launch(Box::new(l))).await.unwrap();
    assert_eq!(common::next_update(&mut updates, Duration::from_secs(20)).await.state, RunState::Running);
    log_has(&env, id, "before\n").await;

    // The agent stops, leaving the run going, and says it will be back.
    stop.send(()).unwrap();
    serve.await.unwrap();
    let notices: Vec<_> = std::iter::from_fn(|| updates.try_recv().ok()).collect();
    assert!(notices.iter().any(|m| matches!(m, tug_core::protocol::ToServer::BackSoon { .. })), "{notices:?}");
    assert!(notices.iter().all(|m| !matches!(m, tug_core::protocol::ToServer::Status(_))), "no final update from the stopped agent: {notices:?}");

    // The next agent adopts the container and re-attaches the run.
    let again = DockerRuntime::connect(env.config.clone()).await.expect("connect");
    let (_commands, mut updates, _stop, _serve) = durable_agent(&env, again.clone()).await;
    let mut seen = Vec::new();
    loop {
        let u = common::next_update(&mut updates, Duration::from_secs(20)).await;
        seen.push(u.state);
        if u.state.is_terminal() {
            assert_eq!((u.state, u.exit_code), (RunState::Failed, Some(3)), "{u:?}");
            break;
        }
    }
    assert_eq!(seen, vec![RunState::Running, RunState::Failed], "running again, then its end, once");
    assert_eq!(env.log(id).await, "before\nafter\nexit code 3\n", "the whole log, nothing twice");
    assert_eq!(again.containers_created(), 0, "the run went on in the same container");
    let ckpt = env.config.checkpoints.as_ref().unwrap().join(format!("{id}-1"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ckpt.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the delivered run's checkpoint is removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_buffer_while_no_agent_is_attached_leaves_a_marker_in_the_log() {
    let Some(env) = Env::with("overflow", with_checkpoints(1000)).await else { return };
    let (commands, mut updates, stop, serve) = durable_agent(&env, env.rt.clone()).await;
    let script = "echo start; sleep 2; i=0; while [ $i -lt 300 ]; do echo line-$i-xxxxxxxxxx; i=$((i+1)); done; echo end";
    let l = launch("overflow", script, |_| {});
    let id = l.run_id;
    commands.send(tug_core::protocol::ToAgent::Launch(Box::new(l))).await.unwrap();
    assert_eq!(common::next_update(&mut updates, Duration::from_secs(20)).await.state, RunState::Running);
    log_has(&env, id, "start\n").await;
    stop.send(()).unwrap();
    serve.await.unwrap();
    // All of the output comes while no agent is attached.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let again = DockerRuntime::connect(env.config.clone()).await.expect("connect");
    let (_commands, mut updates, _stop, _serve) = durable_agent(&env, again).await;
    let u = loop {
        let u = common::next_update(&mut updates, Duration::from_secs(20)).await;
        if u.state.is_terminal() {
            break u;
        }
    };
    assert_eq!(u.state, RunState::Succeeded, "{u:?}");
    let log = env.log(id).await;
    assert!(log.starts_with("start\n[tug: "), "{log}");
    assert!(log.contains("bytes of output were dropped while no agent was attached; dwait keeps the last 1000 bytes]"), "{log}");
    assert!(!log.contains("line-0-"), "the oldest output is the part dropped: {log}");
    assert!(log.ends_with("line-299-xxxxxxxxxx\nend\n"), "the latest output is kept: {log}");
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_run_containers_outlive_their_agent_and_the_next_agent_reports_their_real_end() {
    let Some(env) = Env::with("prreattach", with_checkpoints(1 << 20)).await else { return };
    let per_run = |t: &mut Task| t.docker.as_mut().expect("docker").mode = ContainerMode::PerRun;
    let (commands, mut updates, stop, serve) = durable_agent(&env, env.rt.clone()).await;
    // Still going when the next agent starts; ending while no agent runs; removed meanwhile;
    // timing out under the next agent, its timeout counted from the first start.
    let going = launch("prr", "echo before; sleep 4; echo after; exit 3", per_run);
    let ending = launch("prr", "echo one; sleep 1; echo two >&2; exit 4", per_run);
    let removed = launch("prr", "echo doomed; sleep 100", per_run);
    let slow = launch("prr", "echo slow; sleep 100", |t| {
        per_run(t);
        t.timeout = Some(tug_core::Duration::from_secs(6));
    });
    let ids = [going.run_id, ending.run_id, removed.run_id, slow.run_id];
    let launched = tokio::time::Instant::now();
    for l in [going, ending, removed, slow] {
        commands.send(tug_core::protocol::ToAgent::Launch(Box::new(l))).await.unwrap();
    }
    for _ in 0..4 {
        assert_eq!(common::next_update(&mut updates, Duration::from_secs(30)).await.state, RunState::Running);
    }
    for (id, text) in ids.iter().zip(["before\n", "one\n", "doomed\n"]) {
        log_has(&env, *id, text).await;
    }

    // The agent stops, leaving the containers running, each labelled with its attempt.
    stop.send(()).unwrap();
    serve.await.unwrap();
    assert!(common::queued_updates(&mut updates).is_empty(), "no final update from the stopped agent");
    let containers = env.expect_containers(4).await;
    let doomed = containers
        .iter()
        .find(|(_, l)| l.get(label::RUN).map(String::as_str) == Some(format!("{}-1", ids[2]).as_str()))
        .map(|(id, _)| id.clone())
        .expect("the run's container carries its attempt");
    let rm = std::process::Command::new("docker").args(["rm", "-f", &doomed]).output().expect("docker rm");
    assert!(rm.status.success(), "{rm:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The next agent keeps both containers when it adopts, and follows each to its end.
    let again = DockerRuntime::connect(env.config.clone()).await.expect("connect");
    let (_commands, mut updates, _stop, _serve) = durable_agent(&env, again.clone()).await;
    let mut seen: HashMap<RunId, Vec<tug_core::protocol::StatusUpdate>> = HashMap::new();
    while seen.values().filter(|u| u.last().is_some_and(|u| u.state.is_terminal())).count() < 4 {
        let u = common::next_update(&mut updates, Duration::from_secs(30)).await;
        seen.entry(u.run_id).or_default().push(u);
    }
    let states = |id: &RunId| seen[id].iter().map(|u| u.state).collect::<Vec<_>>();
    let last = |id: &RunId| seen[id].last().cloned().expect("updates");
    assert_eq!(states(&ids[0]), vec![RunState::Running, RunState::Failed], "running again, then its end, once");
    assert_eq!(last(&ids[0]).exit_code, Some(3), "{:?}", last(&ids[0]));
    assert_eq!(env.log(ids[0]).await, "before\nafter\nexit code 3\n", "the whole log, nothing twice");
    assert_eq!((last(&ids[1]).state, last(&ids[1]).exit_code), (RunState::Failed, Some(4)), "the real exit status: {:?}", seen[&ids[1]]);
    assert_eq!(env.log(ids[1]).await, "one\ntwo\nexit code 4\n", "output written while no agent ran is in the log");
    let lost = last(&ids[2]);
    assert_eq!(lost.state, RunState::Lost, "{lost:?}");
    let why = lost.reason.unwrap_or_default();
    assert!(why.starts_with("the agent restarted and the run's container tug-prr-") && why.ends_with(" is gone; its exit status is unknown"), "{why}");
    let timed_out = last(&ids[3]);
    assert_eq!(timed_out.state, RunState::TimedOut, "{timed_out:?}");
    assert!(launched.elapsed() < Duration::from_secs(20), "the timeout counts from the first start: {:?}", launched.elapsed());
    assert_eq!(env.log(ids[3]).await.lines().next(), Some("slow"));
    assert_eq!(again.containers_created(), 0, "the runs went on in their own containers");
    for id in ids {
        let ckpt = env.config.checkpoints.as_ref().unwrap().join(format!("{id}-1"));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ckpt.exists() {
            assert!(tokio::time::Instant::now() < deadline, "the delivered run's checkpoint is removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_run_container_without_a_run_to_re_attach_is_removed_on_adoption() {
    let Some(env) = Env::with("prleft", with_checkpoints(1 << 20)).await else { return };
    let per_run = |t: &mut Task| t.docker.as_mut().expect("docker").mode = ContainerMode::PerRun;
    let l = launch("prleft", "echo done", per_run);
    let id = l.run_id;
    assert_eq!(env.run(l).await.state, RunState::Succeeded);
    // Its outcome is recorded: kept only for `remove_delay`, and a restart removes it.
    let ckpt = env.config.checkpoints.as_ref().unwrap().join(format!("{id}-1"));
    assert!(ckpt.join("outcome.json").exists(), "the outcome is checkpointed before the container goes");
    env.expect_containers(1).await;
    let _again = DockerRuntime::connect(env.config.clone()).await.expect("connect");
    env.expect_containers(0).await;
    env.cleanup().await;
}
