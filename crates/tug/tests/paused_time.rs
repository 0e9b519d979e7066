//! The scheduler under tokio's paused time: hours or days of schedule in milliseconds.
//!
//! Each test runs the embedded server on the in-memory store (no SQLite thread, so tokio's
//! auto-advance never jumps the clock while a store call is in flight), a [`TokioClock`] that
//! reads simulated wall time, and a [`Scripted`] runtime whose runs last a set simulated time and
//! succeed or fail by job name. A test sleeps until a simulated instant; tokio fires every timer
//! on the way in order, so the scheduler sees time pass exactly as it would for real.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use serde_json::{Value, json};
use tempfile::TempDir;
use tug_agent::runtime::noop::NoopRuntime;
use tug_agent::runtime::{Outcome, RunContext, Runtime};
use tug_core::JobSpec;
use tug_core::run::{Run, RunState, Trigger};
use tug_server::clock::{Clock, TokioClock};
use tug_server::embedded::{Embedded, EmbeddedConfig};
use tug_server::scheduler::SchedulerHandle;
use tug_store::mem::MemStore;
use tug_store::{RunQuery, Store};

// ---------------------------------------------------------------------------------------------
// A scripted runtime
// ---------------------------------------------------------------------------------------------

/// How the runs of one job behave.
#[derive(Debug, Clone, Copy)]
struct Script {
    /// How long each attempt runs, in tokio (simulated) time.
    lasts: Duration,
    /// Whether an attempt that runs to its end succeeds (exit 0) or fails (exit 1).
    succeeds: bool,
}

/// A runtime that starts nothing: each attempt sleeps for its job's [`Script`] with tokio time,
/// then succeeds or fails; a kill (timeout, replace, request) ends it at once in the state the
/// kill's reason calls for. Jobs without a script succeed as soon as they have started. It also
/// counts the attempts of each job in flight and remembers the peak.
#[derive(Debug, Default)]
struct Scripted {
    scripts: HashMap<String, Script>,
    /// Per job: attempts in flight now, and the most at once.
    inflight: Mutex<HashMap<String, (usize, usize)>>,
}

impl Scripted {
    /// Gives `job` a script.
    fn with(mut self, job: &str, lasts: Duration, succeeds: bool) -> Scripted {
        self.scripts.insert(job.to_string(), Script { lasts, succeeds });
        self
    }

    /// The most attempts of `job` that were in flight at once.
    fn peak(&self, job: &str) -> usize {
        self.inflight.lock().unwrap().get(job).map_or(0, |&(_, peak)| peak)
    }

    fn enter(&self, job: &str) {
        let mut inflight = self.inflight.lock().unwrap();
        let (now, peak) = inflight.entry(job.to_string()).or_default();
        *now += 1;
        *peak = (*peak).max(*now);
    }

    fn leave(&self, job: &str) {
        if let Some((now, _)) = self.inflight.lock().unwrap().get_mut(job) {
            *now -= 1;
        }
    }
}

#[async_trait::async_trait]
impl Runtime for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    async fn run(&self, mut ctx: RunContext) -> Outcome {
        let job = ctx.launch.job.clone();
        let script = self.scripts.get(&job).copied().unwrap_or(Script { lasts: Duration::ZERO, succeeds: true });
        let _ = ctx.started.send(None);
        // Like a process, which cannot exit in the poll that spawned it, let the agent see the
        // start before the end (see `noop_runs_have_a_start_time` for what happens otherwise).
        tokio::task::yield_now().await;
        self.enter(&job);
        let outcome = tokio::select! {
            () = tokio::time::sleep(script.lasts) => match script.succeeds {
                true => Outcome { state: RunState::Succeeded, exit_code: Some(0), signal: None, reason: None },
                false => Outcome {
                    state: RunState::Failed,
                    exit_code: Some(1),
                    signal: None,
                    reason: Some("exit code 1".into()),
                },
            },
            Ok(reason) = ctx.kill.wait_for(Option::is_some) => {
                let reason = reason.expect("waited for a reason");
                Outcome {
                    state: reason.final_state(),
                    exit_code: None,
                    signal: None,
                    reason: Some(format!("stopped: {reason:?}")),
                }
            }
        };
        self.leave(&job);
        outcome
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation
// ---------------------------------------------------------------------------------------------

/// An embedded server on simulated time.
struct Sim {
    server: Embedded,
    runtime: Arc<Scripted>,
    clock: TokioClock,
    _logs: TempDir,
}

impl Sim {
    /// Starts a server whose wall clock reads `start` (an RFC 3339 instant) now.
    async fn start(start: &str, runtime: Scripted) -> Sim {
        let logs = tempfile::tempdir().unwrap();
        let mut config = EmbeddedConfig::new(logs.path());
        // Keep every run, so the tests see the whole history.
        config.keep_runs = 1_000_000;
        let clock = TokioClock::starting_at(ts(start));
        let runtime = Arc::new(runtime);
        let store = Arc::new(MemStore::new());
        let server = Embedded::start_with_store(config, store, Some(tug::local::local_agent(Default::default(), runtime.clone())), Arc::new(clock), None).await.unwrap();
        Sim { server, runtime, clock, _logs: logs }
    }

    fn scheduler(&self) -> &SchedulerHandle {
        &self.server.scheduler
    }

    fn store(&self) -> &dyn Store {
        &*self.server.store
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Creates a job from its JSON spec.
    async fn create(&self, spec: Value) {
        let spec = JobSpec::from_json(&spec.to_string()).unwrap();
        self.scheduler().create_job(spec).await.unwrap();
    }

    /// Lets simulated time run until `at` (RFC 3339), firing everything due on the way.
    async fn run_until(&self, at: &str) {
        let wait = ts(at).duration_since(self.now());
        assert!(!wait.is_negative(), "{at} is in the past (now {})", self.now());
        tokio::time::sleep(wait.unsigned_abs()).await;
    }

    /// Lets simulated time run for `d`.
    async fn run_for(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Every run of `job`, oldest first.
    async fn runs(&self, job: &str) -> Vec<Run> {
        let mut query = RunQuery { limit: 1000, ..RunQuery::default() };
        let mut runs = Vec::new();
        loop {
            let page = self.store().list_runs(job, &query).await.unwrap();
            runs.extend(page.items);
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        runs.reverse();
        runs
    }

    /// The run keys (scheduled instants) of `job`, oldest first.
    async fn keys(&self, job: &str) -> Vec<Timestamp> {
        self.runs(job).await.iter().map(|r| r.scheduled_at).collect()
    }

    async fn stop(self) {
        self.server.shutdown().await;
    }
}

/// An RFC 3339 instant.
fn ts(s: &str) -> Timestamp {
    s.parse().unwrap_or_else(|e| panic!("bad instant {s:?}: {e}"))
}

fn minutes(n: i64) -> SignedDuration {
    SignedDuration::from_mins(n)
}

/// `count` instants `step` apart from `first`.
fn grid(first: &str, step: SignedDuration, count: usize) -> Vec<Timestamp> {
    std::iter::successors(Some(ts(first)), |t| Some(*t + step)).take(count).collect()
}

// ---------------------------------------------------------------------------------------------
// Cron grids
// ---------------------------------------------------------------------------------------------

/// Two days of an hourly and a quarter-hourly job: every fire once, at its exact instant.
#[tokio::test(start_paused = true)]
async fn hourly_and_quarter_hourly_jobs_over_48_hours() {
    let sim = Sim::start("2026-01-05T00:20:00Z", Scripted::default()).await;
    sim.create(json!({"name": "hourly", "schedule": "@hourly", "command": "true"})).await;
    sim.create(json!({"name": "quarter", "schedule": "0 */15 * * * *", "command": "true"})).await;
    sim.run_for(Duration::from_secs(48 * 3600)).await;

    let hourly = sim.runs("hourly").await;
    let keys: Vec<Timestamp> = hourly.iter().map(|r| r.scheduled_at).collect();
    assert_eq!(keys, grid("2026-01-05T01:00:00Z", minutes(60), 48));
    let quarter = sim.runs("quarter").await;
    let keys: Vec<Timestamp> = quarter.iter().map(|r| r.scheduled_at).collect();
    assert_eq!(keys, grid("2026-01-05T00:30:00Z", minutes(15), 192));
    for run in hourly.iter().chain(&quarter) {
        assert_eq!((run.trigger, run.state), (Trigger::Schedule, RunState::Succeeded), "{run:?}");
        // Dispatched at the instant itself: paused time leaves no lateness to hide behind.
        assert_eq!(run.started_at, Some(run.scheduled_at), "{run:?}");
        assert_eq!(run.finished_at, Some(run.scheduled_at), "{run:?}");
    }
    let stats = sim.scheduler().stats().await.unwrap();
    assert_eq!((stats.fires, stats.dispatched, stats.misfires), (240, 240, 0));
    assert_eq!(stats.lateness_max_us, 0);
    sim.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Daylight saving time
// ---------------------------------------------------------------------------------------------

const NEW_YORK: &str = "America/New_York";

/// The local date and time of each instant in New York, as `YYYY-MM-DDTHH:MM±HH:MM`.
fn local(keys: &[Timestamp]) -> Vec<String> {
    let tz = TimeZone::get(NEW_YORK).unwrap();
    keys.iter().map(|t| Zoned::new(*t, tz.clone()).strftime("%Y-%m-%dT%H:%M%:z").to_string()).collect()
}

/// The entries of `local` on local date `day`.
fn on_day<'a>(local: &'a [String], day: &str) -> Vec<&'a str> {
    local.iter().map(String::as_str).filter(|l| l.starts_with(day)).collect()
}

/// 2026-03-08, 02:00 EST → 03:00 EDT: a fixed-time job in the gap runs once at the end of the gap;
/// a wildcard job has no fires in the skipped hour.
#[tokio::test(start_paused = true)]
async fn spring_forward_in_new_york() {
    let sim = Sim::start("2026-03-07T12:00:00-05:00", Scripted::default()).await;
    sim.create(json!({"name": "nightly", "schedule": "30 2 * * *", "tz": NEW_YORK, "command": "true"})).await;
    sim.create(json!({"name": "half", "schedule": "*/30 * * * *", "tz": NEW_YORK, "command": "true"})).await;
    sim.run_until("2026-03-09T12:10:00-04:00").await;

    let nightly = sim.keys("nightly").await;
    assert_eq!(nightly, [ts("2026-03-08T03:00:00-04:00"), ts("2026-03-09T02:30:00-04:00")]);
    assert_eq!(local(&nightly), ["2026-03-08T03:00-04:00", "2026-03-09T02:30-04:00"]);

    let half = sim.keys("half").await;
    // The clocks skip an hour but absolute time does not: the fires are 30 minutes apart throughout.
    assert_eq!(half, grid("2026-03-07T17:30:00Z", minutes(30), 94));
    let half = local(&half);
    let day = on_day(&half, "2026-03-08");
    assert_eq!(day.len(), 46, "48 half hours minus the two in the gap: {day:#?}");
    assert_eq!(
        &day[2..6],
        ["2026-03-08T01:00-05:00", "2026-03-08T01:30-05:00", "2026-03-08T03:00-04:00", "2026-03-08T03:30-04:00"]
    );
    assert!(!day.iter().any(|l| l.contains("T02:")), "no fires in the skipped hour: {day:#?}");
    sim.stop().await;
}

/// 2026-11-01, 02:00 EDT → 01:00 EST: a fixed-time job in the fold runs once (at the first 01:30);
/// a wildcard job runs the repeated hour twice.
#[tokio::test(start_paused = true)]
async fn fall_back_in_new_york() {
    let sim = Sim::start("2026-10-31T12:00:00-04:00", Scripted::default()).await;
    sim.create(json!({"name": "nightly", "schedule": "30 1 * * *", "tz": NEW_YORK, "command": "true"})).await;
    sim.create(json!({"name": "half", "schedule": "*/30 * * * *", "tz": NEW_YORK, "command": "true"})).await;
    sim.run_until("2026-11-02T12:10:00-05:00").await;

    let nightly = sim.keys("nightly").await;
    assert_eq!(nightly, [ts("2026-11-01T01:30:00-04:00"), ts("2026-11-02T01:30:00-05:00")]);

    let half = sim.keys("half").await;
    assert_eq!(half, grid("2026-10-31T16:30:00Z", minutes(30), 98));
    let half = local(&half);
    let day = on_day(&half, "2026-11-01");
    assert_eq!(day.len(), 50, "48 half hours plus the two repeated: {day:#?}");
    assert_eq!(
        &day[2..7],
        [
            "2026-11-01T01:00-04:00",
            "2026-11-01T01:30-04:00",
            "2026-11-01T01:00-05:00",
            "2026-11-01T01:30-05:00",
            "2026-11-01T02:00-05:00",
        ]
    );
    sim.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Retries and timeouts
// ---------------------------------------------------------------------------------------------

/// A job that always fails, retried 3 times from 1 minute doubling up to 3: attempts start at t,
/// t+1m, t+1m+2m and t+3m+3m (capped), each recorded.
#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_up_to_the_cap() {
    let runtime = Scripted::default().with("flaky", Duration::ZERO, false);
    let sim = Sim::start("2026-01-05T23:50:00Z", runtime).await;
    sim.create(json!({
        "name": "flaky", "schedule": "@daily", "command": "false",
        "retries": {"count": 3, "initial_delay": "1m", "max_delay": "3m"},
    }))
    .await;
    sim.run_until("2026-01-06T01:00:00Z").await;

    let t = ts("2026-01-06T00:00:00Z");
    let runs = sim.runs("flaky").await;
    assert_eq!(runs.len(), 1, "retries are attempts of one run: {runs:#?}");
    let run = &runs[0];
    assert_eq!((run.scheduled_at, run.state, run.attempt), (t, RunState::Failed, 4));
    assert_eq!((run.started_at, run.finished_at), (Some(t + minutes(6)), Some(t + minutes(6))));
    assert_eq!(run.retry_at, None);

    let attempts = sim.store().attempts(run.id).await.unwrap();
    let starts: Vec<_> = attempts.iter().map(|a| (a.attempt, a.state, a.started_at)).collect();
    assert_eq!(
        starts,
        [
            (1, RunState::Failed, Some(t)),
            (2, RunState::Failed, Some(t + minutes(1))),
            (3, RunState::Failed, Some(t + minutes(3))),
        ]
    );
    assert!(attempts.iter().all(|a| a.finished_at == a.started_at && a.exit_code == Some(1)), "{attempts:#?}");
    let stats = sim.scheduler().stats().await.unwrap();
    assert_eq!(stats.retries, 3);
    assert_eq!(stats.finished.get("failed"), Some(&1));
    sim.stop().await;
}

/// A run that would take an hour, with a 10-minute timeout, is stopped by the agent after 10
/// simulated minutes and ends `timed_out`.
#[tokio::test(start_paused = true)]
async fn timeout_stops_a_run_after_its_limit() {
    let runtime = Scripted::default().with("slow", Duration::from_secs(3600), true);
    let sim = Sim::start("2026-01-05T09:00:00Z", runtime).await;
    sim.create(json!({"name": "slow", "schedule": "@yearly", "command": "sleep 3600", "timeout": "10m"})).await;
    let run = sim.scheduler().run_now("slow").await.unwrap();
    assert_eq!((run.trigger, run.state), (Trigger::Manual, RunState::Starting));

    sim.run_for(Duration::from_secs(9 * 60 + 59)).await;
    let still = sim.store().get_run(run.id).await.unwrap();
    assert_eq!(still.state, RunState::Running, "not yet: {still:?}");

    sim.run_for(Duration::from_secs(60 * 60)).await;
    let done = sim.store().get_run(run.id).await.unwrap();
    let start = ts("2026-01-05T09:00:00Z");
    assert_eq!(done.state, RunState::TimedOut, "{done:?}");
    assert_eq!((done.started_at, done.finished_at), (Some(start), Some(start + minutes(10))));
    assert_eq!(done.reason.as_deref(), Some("stopped: Timeout"));
    sim.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency policies
// ---------------------------------------------------------------------------------------------

/// Ten minutes of an every-minute job whose runs last 90 s, under `policy`: its runs, oldest
/// first, and the most that ran at once.
async fn ninety_second_runs(policy: &str) -> (Vec<Run>, usize) {
    let runtime = Scripted::default().with("busy", Duration::from_secs(90), true);
    let sim = Sim::start("2026-01-05T00:00:30Z", runtime).await;
    sim.create(json!({"name": "busy", "schedule": "* * * * *", "command": "true", "concurrency": policy})).await;
    sim.run_until("2026-01-05T00:10:45Z").await;
    let runs = sim.runs("busy").await;
    let peak = sim.runtime.peak("busy");
    sim.stop().await;
    (runs, peak)
}

/// `forbid`: the fire that finds the previous run still going is skipped, so every other one runs.
#[tokio::test(start_paused = true)]
async fn forbid_skips_every_other_fire_of_a_long_run() {
    let (runs, peak) = ninety_second_runs("forbid").await;
    let keys: Vec<_> = runs.iter().map(|r| r.scheduled_at).collect();
    assert_eq!(keys, grid("2026-01-05T00:01:00Z", minutes(1), 10));
    for (i, run) in runs.iter().enumerate() {
        if i % 2 == 0 {
            assert_eq!(run.state, RunState::Succeeded, "{run:?}");
            assert_eq!(run.finished_at, Some(run.scheduled_at + SignedDuration::from_secs(90)));
        } else {
            assert_eq!(run.state, RunState::Skipped, "{run:?}");
            let reason = run.reason.as_deref().unwrap_or_default();
            assert!(reason.contains(&format!("run {} still active", runs[i - 1].id)), "{reason}");
        }
    }
    assert_eq!(peak, 1);
}

/// `allow`: every fire runs, each overlapping the one before.
#[tokio::test(start_paused = true)]
async fn allow_overlaps_runs() {
    let (runs, peak) = ninety_second_runs("allow").await;
    let keys: Vec<_> = runs.iter().map(|r| r.scheduled_at).collect();
    assert_eq!(keys, grid("2026-01-05T00:01:00Z", minutes(1), 10));
    let (done, last) = runs.split_at(9);
    for run in done {
        assert_eq!(run.state, RunState::Succeeded, "{run:?}");
        assert_eq!(run.started_at, Some(run.scheduled_at), "{run:?}");
        assert_eq!(run.finished_at, Some(run.scheduled_at + SignedDuration::from_secs(90)), "{run:?}");
    }
    assert_eq!(last[0].state, RunState::Running, "the 00:10 run ends at 00:11:30: {:?}", last[0]);
    for pair in runs.windows(2) {
        assert!(pair[1].started_at < pair[0].finished_at, "overlap: {pair:#?}");
    }
    assert_eq!(peak, 2);
}

// ---------------------------------------------------------------------------------------------
// ISO 8601 repeating intervals
// ---------------------------------------------------------------------------------------------

/// `R5/…/PT10M` fires exactly five times and then has no timer; `R0/…` never fires.
#[tokio::test(start_paused = true)]
async fn iso_repetitions_are_counted() {
    let sim = Sim::start("2026-01-05T00:00:00Z", Scripted::default()).await;
    sim.create(json!({"name": "five", "schedule": "R5/2026-01-05T01:00:00Z/PT10M", "command": "true"})).await;
    sim.create(json!({"name": "none", "schedule": "R0/2026-01-05T01:00:00Z/PT10M", "command": "true"})).await;
    assert_eq!(sim.scheduler().stats().await.unwrap().scheduled, 1, "R0 has no timer");
    sim.run_until("2026-01-06T00:00:00Z").await;

    let five = sim.runs("five").await;
    assert_eq!(five.iter().map(|r| r.scheduled_at).collect::<Vec<_>>(), grid("2026-01-05T01:00:00Z", minutes(10), 5));
    assert!(five.iter().all(|r| r.state == RunState::Succeeded), "{five:#?}");
    assert_eq!(sim.runs("none").await, []);
    let stats = sim.scheduler().stats().await.unwrap();
    assert_eq!((stats.fires, stats.scheduled), (5, 0), "exhausted schedules leave no timer");
    sim.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Known bugs
// ---------------------------------------------------------------------------------------------

/// Simulated time should cost next to no real time: an hour of an every-minute job (60 fires) in
/// well under a second of CPU.
#[tokio::test(start_paused = true)]
async fn simulated_hours_cost_little_real_time() {
    let sim = Sim::start("2026-01-05T00:00:30Z", Scripted::default()).await;
    sim.create(json!({"name": "minutely", "schedule": "* * * * *", "command": "true"})).await;
    // The CPU time of this thread (tokio's clock is paused, and the in-memory store and the
    // current-thread runtime keep all the work here). Wall-clock time would also count the time
    // other processes hold the cores, which on a busy machine is most of it.
    let cpu = thread_cpu_time();
    sim.run_for(Duration::from_secs(3600)).await;
    let took = thread_cpu_time() - cpu;
    assert_eq!(sim.runs("minutely").await.len(), 60);
    assert!(took < Duration::from_millis(500), "an hour of schedule took {took:?} of CPU time");
    sim.stop().await;
}

/// User plus system CPU time of the calling thread, from `/proc/thread-self/stat` (in clock
/// ticks of 10 ms).
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest.split(' ').skip(11).take(2).map(|f| f.parse().unwrap()).collect();
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().unwrap() as u64;
    Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks)
}

/// A run records when it started, even when the runtime finishes in the poll that started it.
#[tokio::test(start_paused = true)]
async fn noop_runs_have_a_start_time() {
    let logs = tempfile::tempdir().unwrap();
    let clock = TokioClock::starting_at(ts("2026-01-05T09:00:00Z"));
    let server = Embedded::start_with_store(
        EmbeddedConfig::new(logs.path()),
        Arc::new(MemStore::new()),
        Some(tug::local::local_agent(Default::default(), Arc::new(NoopRuntime))),
        Arc::new(clock),
        None,
    )
    .await
    .unwrap();
    let spec = json!({"name": "instant", "schedule": "@yearly", "command": "true"});
    server.scheduler.create_job(JobSpec::from_json(&spec.to_string()).unwrap()).await.unwrap();
    let run = server.scheduler.run_now("instant").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = server.store.get_run(run.id).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.started_at, Some(ts("2026-01-05T09:00:00Z")), "{done:?}");
    server.shutdown().await;
}
