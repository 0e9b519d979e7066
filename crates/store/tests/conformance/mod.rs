//! Store conformance: the behaviour every [`Store`] implementation must show, written against
//! `&dyn Store` so the SQLite and etcd stores run the same checks.
//!
//! Each check uses its own job names, so all of them can share one store; checks of global
//! listings (`load_jobs`, `active_runs`) look only at their own jobs.

#![allow(dead_code)]

use std::collections::BTreeSet;

use jiff::Timestamp;
use tug_core::JobSpec;
use tug_core::run::{Attempt, LateReport, NewRun, Run, RunId, RunState, Trigger};
use tug_core::access::{Role, Scope};
use tug_store::{
    AuditEntry, AuditQuery, Claim, FireBatch, JobQuery, PoolSpec, RemovedRun, RunQuery, RunTotals, Store, StoreError,
    TokenRecord,
};

/// One `#[tokio::test]` per check, each on a fresh store from `$make` (anything that derefs to a
/// `Store`), so every implementation runs the same list.
#[allow(unused_macros)] // bench.rs includes this module without using it
macro_rules! conformance_tests {
    ($make:expr) => {
        conformance_tests!(@each $make;
            jobs_crud, bulk_create, commit_fires_is_idempotent, derived_fields, job_pagination,
            job_filters, run_pagination, save_runs_and_attempts, active_runs,
            prune_keeps_newest_and_active, prune_many_jobs, delete_cascades, run_totals_survive_pruning,
            epochs_increase, concurrent_commits_create_each_key_once, net_pools_and_claims, services, progress, tokens, audit_log);
    };
    (@each $make:expr; $($check:ident),*) => {$(
        #[tokio::test]
        async fn $check() {
            let store = $make;
            conformance::$check(&*store).await;
        }
    )*};
}

/// Runs every check on one store.
pub async fn all(store: &dyn Store) {
    jobs_crud(store).await;
    bulk_create(store).await;
    commit_fires_is_idempotent(store).await;
    derived_fields(store).await;
    job_pagination(store).await;
    job_filters(store).await;
    run_pagination(store).await;
    save_runs_and_attempts(store).await;
    active_runs(store).await;
    prune_keeps_newest_and_active(store).await;
    prune_many_jobs(store).await;
    delete_cascades(store).await;
    run_totals_survive_pruning(store).await;
    epochs_increase(store).await;
    concurrent_commits_create_each_key_once(store).await;
    net_pools_and_claims(store).await;
    services(store).await;
    progress(store).await;
    tokens(store).await;
    audit_log(store).await;
}

/// A scheduled job named `name`.
pub fn spec(name: &str) -> JobSpec {
    JobSpec::from_json(&format!(r#"{{"name":"{name}","command":"true","schedule":"* * * * *"}}"#)).unwrap()
}

/// An instant `secs` seconds after a fixed origin (whole milliseconds, as the store keeps them).
pub fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A pending fire.
pub fn fire(job: &str, at: Timestamp, trigger: Trigger) -> NewRun {
    NewRun { job: job.into(), scheduled_at: at, trigger, state: RunState::Pending, reason: None, agent: None }
}

/// Commits runs only.
pub async fn commit(store: &dyn Store, runs: Vec<NewRun>, now: Timestamp) -> Vec<Run> {
    store.commit_fires(FireBatch { runs, cursors: vec![] }, now).await.unwrap()
}

/// The ids of removed runs.
pub fn ids(removed: &[RemovedRun]) -> Vec<RunId> {
    removed.iter().map(|r| r.id).collect()
}

/// `run` moved to a terminal `state` that finished at `finished`.
pub fn finished(run: &Run, state: RunState, finished: Timestamp) -> Run {
    Run { state, started_at: Some(run.scheduled_at), finished_at: Some(finished), ..run.clone() }
}

/// Many jobs at once; a taken name is refused, and then none of them is created.
pub async fn bulk_create(store: &dyn Store) {
    let specs: Vec<JobSpec> = (0..3).map(|i| spec(&format!("bulk-{i}"))).collect();
    store.create_jobs(&specs, t(0)).await.unwrap();
    for s in &specs {
        assert_eq!(store.get_job(&s.name).await.unwrap().spec, *s);
    }
    let again = [spec("bulk-new"), spec("bulk-1")];
    assert!(matches!(store.create_jobs(&again, t(0)).await, Err(StoreError::JobExists(n)) if n == "bulk-1"));
    assert!(matches!(store.get_job("bulk-new").await, Err(StoreError::JobNotFound(_))), "all or nothing");
}

/// Callers committing overlapping fires at the same time: every key is created exactly once.
pub async fn concurrent_commits_create_each_key_once(store: &dyn Store) {
    store.create_job(&spec("race"), t(0)).await.unwrap();
    // Sixteen callers in flight at once, each firing the same 50 keys in a different order.
    let callers = (0..16).map(|caller| {
        let mut fires: Vec<_> = (0..50).map(|i| fire("race", t(i * 60), Trigger::Schedule)).collect();
        fires.rotate_left(caller * 3);
        async move { commit(store, fires, t(0)).await.len() }
    });
    let created: usize = futures::future::join_all(callers).await.into_iter().sum();
    assert_eq!(created, 50);
    let runs = store.list_runs("race", &RunQuery { limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(runs.items.len(), 50);
}

/// Pruning many jobs at once; a job that no longer exists is skipped.
pub async fn prune_many_jobs(store: &dyn Store) {
    for name in ["pm-a", "pm-b"] {
        store.create_job(&spec(name), t(0)).await.unwrap();
        let runs = commit(store, (1..=3).map(|i| fire(name, t(i), Trigger::Schedule)).collect(), t(10)).await;
        let done: Vec<Run> = runs.iter().map(|r| finished(r, RunState::Succeeded, t(20))).collect();
        store.save_runs(&done, &[]).await.unwrap();
    }
    let jobs = [("pm-a".to_string(), 1), ("pm-ghost".to_string(), 1), ("pm-b".to_string(), 2)];
    let deleted = store.prune_many(&jobs).await.unwrap();
    assert_eq!(deleted.len(), 2 + 1);
    for (name, keep) in [("pm-a", 1), ("pm-b", 2)] {
        let left = store.list_runs(name, &RunQuery::default()).await.unwrap().items;
        assert_eq!(left.len(), keep);
        assert_eq!(left[0].scheduled_at, t(3), "the newest run is kept");
    }
}

/// Create, read, update with and without compare-and-set, and the not-found errors.
pub async fn jobs_crud(store: &dyn Store) {
    let mut s = spec("crud");
    let created = store.create_job(&s, t(0)).await.unwrap();
    assert_eq!((created.version, created.created_at, created.updated_at), (1, t(0), t(0)));
    assert_eq!(created.spec, s);
    assert_eq!((created.fire_cursor, created.last_run_at), (None, None));
    assert_eq!(store.get_job("crud").await.unwrap(), created);

    let err = store.create_job(&s, t(1)).await.unwrap_err();
    assert!(matches!(err, StoreError::JobExists(ref n) if n == "crud"), "{err:?}");

    s.description = "changed".into();
    let v2 = store.update_job(&s, None, t(2)).await.unwrap();
    assert_eq!((v2.version, v2.created_at, v2.updated_at), (2, t(0), t(2)));
    assert_eq!(v2.spec.description, "changed");

    s.description = "stale".into();
    let err = store.update_job(&s, Some(1), t(3)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::VersionConflict { ref name, expected: 1, found: 2 } if name == "crud"),
        "{err:?}"
    );
    assert_eq!(store.get_job("crud").await.unwrap(), v2, "a refused update changes nothing");

    let v3 = store.update_job(&s, Some(2), t(4)).await.unwrap();
    assert_eq!((v3.version, v3.spec.description.as_str()), (3, "stale"));
    assert_eq!(store.get_job("crud").await.unwrap(), v3);

    let missing = spec("crud-missing");
    assert!(matches!(store.update_job(&missing, None, t(5)).await, Err(StoreError::JobNotFound(_))));
    assert!(matches!(store.get_job("crud-missing").await, Err(StoreError::JobNotFound(_))));
    assert!(matches!(store.delete_job("crud-missing").await, Err(StoreError::JobNotFound(_))));
    assert!(matches!(store.prune_runs("crud-missing", 1).await, Err(StoreError::JobNotFound(_))));
    assert!(matches!(store.list_runs("crud-missing", &RunQuery::default()).await, Err(StoreError::JobNotFound(_))));
    assert!(matches!(store.get_run(u64::MAX).await, Err(StoreError::RunNotFound(_))));
    assert!(matches!(store.attempts(u64::MAX - 1).await, Err(StoreError::RunNotFound(_))));
}

/// A run key is written once: duplicates in a batch, across batches, and fires of unknown jobs
/// create nothing.
pub async fn commit_fires_is_idempotent(store: &dyn Store) {
    store.create_job(&spec("idem"), t(0)).await.unwrap();
    let batch = FireBatch {
        runs: vec![
            fire("idem", t(60), Trigger::Schedule),
            fire("idem", t(120), Trigger::Schedule),
            fire("idem", t(60), Trigger::Manual), // same key as the first
            fire("idem-unknown-job", t(60), Trigger::Schedule),
            NewRun {
                reason: Some("skipped: busy".into()),
                state: RunState::Skipped,
                ..fire("idem", t(180), Trigger::Schedule)
            },
            NewRun { agent: Some("host-1".into()), state: RunState::Starting, ..fire("idem", t(240), Trigger::Manual) },
        ],
        cursors: vec![],
    };
    let created = store.commit_fires(batch.clone(), t(200)).await.unwrap();
    let keys: Vec<_> = created.iter().map(|r| (r.job.as_str(), r.scheduled_at, r.trigger, r.state)).collect();
    assert_eq!(
        keys,
        vec![
            ("idem", t(60), Trigger::Schedule, RunState::Pending),
            ("idem", t(120), Trigger::Schedule, RunState::Pending),
            ("idem", t(180), Trigger::Schedule, RunState::Skipped),
            ("idem", t(240), Trigger::Manual, RunState::Starting),
        ]
    );
    assert!(created.windows(2).all(|w| w[0].id < w[1].id), "ids increase in batch order");
    for run in &created {
        assert_eq!((run.attempt, run.created_at), (1, t(200)));
        assert_eq!((run.started_at, run.finished_at, run.retry_at), (None, None, None));
        assert_eq!(&store.get_run(run.id).await.unwrap(), run);
    }
    assert_eq!(created[2].reason.as_deref(), Some("skipped: busy"));
    assert_eq!((created[2].agent.as_deref(), created[3].agent.as_deref()), (None, Some("host-1")));

    let again = store.commit_fires(batch, t(300)).await.unwrap();
    assert!(again.is_empty(), "a second commit of the same keys creates nothing: {again:?}");
    let page = store.list_runs("idem", &RunQuery::default()).await.unwrap();
    assert_eq!(page.items.len(), 4);
    assert!(matches!(store.get_job("idem-unknown-job").await, Err(StoreError::JobNotFound(_))));
}

/// The fire cursor and the last run, success and failure times follow the runs and explicit
/// cursors, and agree across `get_job`, `list_jobs` and `load_jobs`.
pub async fn derived_fields(store: &dyn Store) {
    store.create_job(&spec("derived"), t(0)).await.unwrap();
    let cursor = |c: i64| FireBatch { runs: vec![], cursors: vec![("derived".into(), t(c))] };
    store.commit_fires(cursor(30), t(30)).await.unwrap();
    assert_eq!(store.get_job("derived").await.unwrap().fire_cursor, Some(t(30)));
    store.commit_fires(cursor(10), t(31)).await.unwrap();
    assert_eq!(store.get_job("derived").await.unwrap().fire_cursor, Some(t(30)), "cursors only move forward");

    let runs = commit(
        store,
        vec![
            fire("derived", t(60), Trigger::Schedule),
            fire("derived", t(120), Trigger::Misfire),
            fire("derived", t(500), Trigger::Manual), // not a schedule key: no cursor
            fire("derived", t(90), Trigger::Dependency),
        ],
        t(130),
    )
    .await;
    let job = store.get_job("derived").await.unwrap();
    assert_eq!(job.fire_cursor, Some(t(120)));
    assert_eq!(job.last_run_at, Some(t(500)));
    assert_eq!((job.last_success_at, job.last_failure_at), (None, None));
    assert_eq!(job.version, 1, "runs and cursors do not bump the version");

    // A skipped fire moves the cursor but is not a run that happened.
    let skipped = NewRun { state: RunState::Skipped, ..fire("derived", t(600), Trigger::Schedule) };
    commit(store, vec![skipped], t(600)).await;
    let job = store.get_job("derived").await.unwrap();
    assert_eq!((job.fire_cursor, job.last_run_at), (Some(t(600)), Some(t(500))));

    // An explicit cursor beyond every run wins.
    store.commit_fires(cursor(900), t(900)).await.unwrap();
    assert_eq!(store.get_job("derived").await.unwrap().fire_cursor, Some(t(900)));

    let done = [
        finished(&runs[0], RunState::Succeeded, t(70)),
        finished(&runs[1], RunState::Succeeded, t(125)),
        finished(&runs[2], RunState::TimedOut, t(510)),
        finished(&runs[3], RunState::Killed, t(900)), // neither success nor failure
    ];
    store.save_runs(&done, &[]).await.unwrap();
    let job = store.get_job("derived").await.unwrap();
    assert_eq!((job.last_success_at, job.last_failure_at), (Some(t(125)), Some(t(510))));

    let listed = store.list_jobs(&JobQuery { q: Some("derived".into()), ..Default::default() }).await.unwrap();
    assert_eq!(listed.items, vec![job.clone()]);
    let loaded = store.load_jobs().await.unwrap();
    assert_eq!(loaded.iter().find(|j| j.spec.name == "derived"), Some(&job));
    assert!(loaded.windows(2).all(|w| w[0].spec.name < w[1].spec.name), "load_jobs is ordered by name");
}

/// Walks a listing page by page and checks that every job appears exactly once, in order.
async fn walk_jobs(store: &dyn Store, mut query: JobQuery) -> Vec<String> {
    let mut names = Vec::new();
    loop {
        let page = store.list_jobs(&query).await.unwrap();
        assert!(page.items.len() <= query.limit.max(1));
        names.extend(page.items.into_iter().map(|j| j.spec.name));
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    let unique: BTreeSet<_> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "no job twice: {names:?}");
    assert!(names.windows(2).all(|w| w[0] < w[1]), "ordered by name: {names:?}");
    names
}

/// Job listing pages by name with opaque cursors.
pub async fn job_pagination(store: &dyn Store) {
    let mut expected = Vec::new();
    for i in (0..101).rev() {
        let name = format!("pg-{i:03}");
        store.create_job(&spec(&name), t(0)).await.unwrap();
        expected.push(name);
    }
    expected.sort();
    let pg = |limit| JobQuery { limit, q: Some("pg-".into()), ..Default::default() };
    for limit in [1, 7, 100, 101, 1000] {
        assert_eq!(walk_jobs(store, pg(limit)).await, expected, "limit {limit}");
    }
    let first = store.list_jobs(&pg(0)).await.unwrap();
    assert_eq!(first.items.len(), 100, "limit 0 means 100");
    assert!(first.next_cursor.is_some());
    let exact = store.list_jobs(&pg(101)).await.unwrap();
    assert_eq!((exact.items.len(), exact.next_cursor), (101, None), "no cursor on the last page");

    let all = walk_jobs(store, JobQuery { limit: 13, ..Default::default() }).await;
    assert!(expected.iter().all(|n| all.contains(n)));

    for bad in ["not a cursor!", "\u{0}", ""] {
        let q = JobQuery { cursor: Some(bad.into()), ..Default::default() };
        let err = store.list_jobs(&q).await.unwrap_err();
        assert!(matches!(err, StoreError::BadCursor(_)), "{bad:?}: {err:?}");
    }
}

/// `q` searches name, description and owner case-insensitively; `label` matches `k=v` or `k`.
pub async fn job_filters(store: &dyn Store) {
    let mut a = spec("flt-backup");
    a.description = "Nightly BACKUP of the Ünicode database".into();
    a.owner = "data-team@example.com".into();
    a.labels = [("team".into(), "data".into()), ("tier".into(), "1".into())].into();
    let mut b = spec("flt-report");
    b.description = "weekly report".into();
    b.owner = "Web-Team".into();
    b.labels = [("team".into(), "web".into())].into();
    let c = spec("flt-plain");
    for s in [&a, &b, &c] {
        store.create_job(s, t(0)).await.unwrap();
    }
    let names = |q: Option<&str>, label: Option<&str>| {
        let query = JobQuery { limit: 1, q: q.map(Into::into), label: label.map(Into::into), cursor: None };
        async move {
            let mut names = walk_jobs(store, query).await;
            names.retain(|n| n.starts_with("flt-"));
            names
        }
    };
    assert_eq!(names(Some("flt-"), None).await, ["flt-backup", "flt-plain", "flt-report"]);
    assert_eq!(names(Some("backup"), None).await, ["flt-backup"]);
    assert_eq!(names(Some("NIGHTLY"), None).await, ["flt-backup"]);
    assert_eq!(names(Some("ünicode"), None).await, ["flt-backup"], "case-insensitive beyond ASCII");
    assert_eq!(names(Some("-team"), None).await, ["flt-backup", "flt-report"], "owner");
    assert_eq!(names(Some("FLT-REP"), None).await, ["flt-report"], "name");
    assert_eq!(names(Some("no such text"), None).await, Vec::<String>::new());
    assert_eq!(names(None, Some("team")).await, ["flt-backup", "flt-report"]);
    assert_eq!(names(None, Some("team=data")).await, ["flt-backup"]);
    assert_eq!(names(None, Some("team=dat")).await, Vec::<String>::new(), "values match exactly");
    assert_eq!(names(None, Some("tier=1")).await, ["flt-backup"]);
    assert_eq!(names(None, Some("nolabel")).await, Vec::<String>::new());
    assert_eq!(names(Some("report"), Some("team=data")).await, Vec::<String>::new(), "filters combine");
    assert_eq!(names(Some("report"), Some("team=web")).await, ["flt-report"]);
}

/// A job's runs page newest first, optionally by state.
pub async fn run_pagination(store: &dyn Store) {
    store.create_job(&spec("rp"), t(0)).await.unwrap();
    store.create_job(&spec("rp-other"), t(0)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..23 {
        let runs = commit(
            store,
            vec![fire("rp", t(i * 60), Trigger::Schedule), fire("rp-other", t(i * 60), Trigger::Schedule)],
            t(i * 60),
        )
        .await;
        ids.push(runs[0].id);
        if i % 3 == 0 {
            store.save_runs(&[finished(&runs[0], RunState::Failed, t(i * 60 + 1))], &[]).await.unwrap();
        }
    }
    ids.reverse();
    let walk = |limit: usize, state: Option<RunState>| async move {
        let mut query = RunQuery { limit, state, cursor: None };
        let mut seen: Vec<RunId> = Vec::new();
        loop {
            let page = store.list_runs("rp", &query).await.unwrap();
            assert!(page.items.len() <= limit.max(1));
            assert!(page.items.iter().all(|r| r.job == "rp" && state.is_none_or(|s| r.state == s)));
            seen.extend(page.items.iter().map(|r| r.id));
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => break seen,
            }
        }
    };
    for limit in [1, 5, 23, 100] {
        assert_eq!(walk(limit, None).await, ids, "limit {limit}");
    }
    let failed: Vec<RunId> =
        ids.iter().copied().enumerate().filter(|(i, _)| (22 - i) % 3 == 0).map(|(_, id)| id).collect();
    assert_eq!(walk(2, Some(RunState::Failed)).await, failed);
    assert_eq!(walk(4, Some(RunState::Pending)).await.len(), 23 - failed.len());
    assert_eq!(walk(4, Some(RunState::Running)).await, Vec::<RunId>::new());

    let q = RunQuery { cursor: Some("yesterday".into()), ..Default::default() };
    assert!(matches!(store.list_runs("rp", &q).await, Err(StoreError::BadCursor(_))));
}

/// `save_runs` writes every mutable field (a late report too) and appends attempts, all or nothing.
pub async fn save_runs_and_attempts(store: &dyn Store) {
    store.create_job(&spec("save"), t(0)).await.unwrap();
    let runs =
        commit(store, vec![fire("save", t(60), Trigger::Schedule), fire("save", t(120), Trigger::Schedule)], t(60))
            .await;
    let first_try = Run {
        state: RunState::Pending,
        attempt: 2,
        started_at: Some(t(61)),
        finished_at: None,
        exit_code: Some(3),
        signal: Some(9),
        reason: Some("exit code 3; retrying".into()),
        agent: Some("host-1".into()),
        retry_at: Some(t(70)),
        // A report of an earlier attempt, given up as lost, that came late.
        late_report: Some(LateReport {
            attempt: 1,
            state: RunState::Succeeded,
            at: t(69),
            exit_code: Some(0),
            signal: None,
            reason: Some("reported after the agent came back".into()),
        }),
        ..runs[0].clone()
    };
    let attempt1 = Attempt {
        run_id: runs[0].id,
        attempt: 1,
        state: RunState::Failed,
        started_at: Some(t(61)),
        finished_at: Some(t(62)),
        exit_code: Some(3),
        signal: None,
        reason: Some("exit code 3".into()),
    };
    store.save_runs(std::slice::from_ref(&first_try), std::slice::from_ref(&attempt1)).await.unwrap();
    assert_eq!(store.get_run(runs[0].id).await.unwrap(), first_try);
    assert_eq!(store.attempts(runs[0].id).await.unwrap(), vec![attempt1.clone()]);
    // Saving the same attempt again is harmless.
    store.save_runs(&[], std::slice::from_ref(&attempt1)).await.unwrap();
    assert_eq!(store.attempts(runs[0].id).await.unwrap(), vec![attempt1.clone()]);
    assert_eq!(store.attempts(runs[1].id).await.unwrap(), vec![]);

    // The key, trigger and created_at are not the caller's to change.
    let tampered = Run {
        job: "other".into(),
        scheduled_at: t(999),
        trigger: Trigger::Manual,
        created_at: t(999),
        ..first_try.clone()
    };
    store.save_runs(&[tampered], &[]).await.unwrap();
    assert_eq!(store.get_run(runs[0].id).await.unwrap(), first_try);

    // An unknown id rolls back the whole call.
    let done = finished(&runs[1], RunState::Succeeded, t(130));
    let ghost = Run { id: runs[1].id + 1_000_000, ..done.clone() };
    let err = store.save_runs(&[done.clone(), ghost], &[]).await.unwrap_err();
    assert!(matches!(err, StoreError::RunNotFound(id) if id == runs[1].id + 1_000_000), "{err:?}");
    assert_eq!(store.get_run(runs[1].id).await.unwrap(), runs[1], "rolled back");
    let orphan = Attempt { run_id: runs[1].id + 1_000_000, ..attempt1.clone() };
    let err = store.save_runs(std::slice::from_ref(&done), &[orphan]).await.unwrap_err();
    assert!(matches!(err, StoreError::RunNotFound(_)), "{err:?}");
    assert_eq!(store.get_run(runs[1].id).await.unwrap(), runs[1], "rolled back");

    let attempt2 =
        Attempt { attempt: 2, state: RunState::Succeeded, exit_code: Some(0), reason: None, ..attempt1.clone() };
    store.save_runs(std::slice::from_ref(&done), std::slice::from_ref(&attempt2)).await.unwrap();
    assert_eq!(store.get_run(runs[1].id).await.unwrap(), done);
    assert_eq!(store.attempts(runs[0].id).await.unwrap(), vec![attempt1, attempt2], "oldest first");
}

/// `active_runs` returns exactly the pending, starting and running runs.
pub async fn active_runs(store: &dyn Store) {
    store.create_job(&spec("act"), t(0)).await.unwrap();
    let fires =
        RunState::ALL.iter().enumerate().map(|(i, _)| fire("act", t(i as i64 * 60), Trigger::Schedule)).collect();
    let runs = commit(store, fires, t(0)).await;
    let moved: Vec<Run> = runs.iter().zip(RunState::ALL).map(|(r, state)| Run { state, ..r.clone() }).collect();
    store.save_runs(&moved, &[]).await.unwrap();
    let active: Vec<Run> = store.active_runs().await.unwrap().into_iter().filter(|r| r.job == "act").collect();
    let expected: Vec<Run> = moved.into_iter().filter(|r| !r.state.is_terminal()).collect();
    assert_eq!(active, expected);
    assert_eq!(active.len(), 3);
}

/// Pruning keeps the newest terminal runs and every active one, and never moves the cursor back.
pub async fn prune_keeps_newest_and_active(store: &dyn Store) {
    store.create_job(&spec("prune"), t(0)).await.unwrap();
    // A backfill: the latest schedule key gets the lowest id, so pruning deletes it.
    let mut fires = vec![fire("prune", t(10_000), Trigger::Schedule)];
    fires.extend((1..=9).map(|i| fire("prune", t(i * 60), Trigger::Schedule)));
    let runs = commit(store, fires, t(10_000)).await;
    let states = [
        RunState::Succeeded, // id 0: the max key
        RunState::Pending,
        RunState::Failed,
        RunState::Running,
        RunState::Succeeded,
        RunState::Skipped,
        RunState::Starting,
        RunState::Killed,
        RunState::Succeeded,
        RunState::Lost,
    ];
    let saved: Vec<Run> = runs
        .iter()
        .zip(states)
        .map(|(r, s)| if s.is_terminal() { finished(r, s, r.scheduled_at) } else { Run { state: s, ..r.clone() } })
        .collect();
    store
        .save_runs(
            &saved,
            &[Attempt {
                run_id: runs[0].id,
                attempt: 1,
                state: RunState::Failed,
                started_at: None,
                finished_at: Some(t(10_001)),
                exit_code: Some(1),
                signal: None,
                reason: None,
            }],
        )
        .await
        .unwrap();
    let before = store.get_job("prune").await.unwrap();
    assert_eq!(before.fire_cursor, Some(t(10_000)));
    assert_eq!(before.last_success_at, Some(t(10_000)));

    let pruned = ids(&store.prune_runs("prune", 2).await.unwrap());
    // Terminal by id, newest first: 9 lost, 8 succeeded | 7 killed, 5 skipped, 4 succeeded, 2 failed, 0 succeeded.
    let expected: Vec<RunId> = [0, 2, 4, 5, 7].iter().map(|&i| runs[i].id).collect();
    assert_eq!(pruned, expected, "ascending ids of the deleted runs");
    for id in &pruned {
        assert!(matches!(store.get_run(*id).await, Err(StoreError::RunNotFound(_))));
        assert!(matches!(store.attempts(*id).await, Err(StoreError::RunNotFound(_))));
    }
    let left: BTreeSet<RunId> =
        store.list_runs("prune", &RunQuery::default()).await.unwrap().items.iter().map(|r| r.id).collect();
    let kept: BTreeSet<RunId> = [1, 3, 6, 8, 9].iter().map(|&i| runs[i].id).collect();
    assert_eq!(left, kept, "active runs and the newest two terminal ones stay");

    let after = store.get_job("prune").await.unwrap();
    assert_eq!(after.fire_cursor, before.fire_cursor, "pruning never moves the cursor back");
    assert_eq!(after.last_run_at, before.last_run_at);
    assert_eq!(after.last_success_at, before.last_success_at);
    assert_eq!(after.last_failure_at, before.last_failure_at);
    assert_eq!(store.prune_runs("prune", 2).await.unwrap(), Vec::new(), "nothing more to prune");

    let rest = ids(&store.prune_runs("prune", 0).await.unwrap());
    assert_eq!(rest, vec![runs[8].id, runs[9].id], "keep 0 deletes every terminal run");
    let left = store.list_runs("prune", &RunQuery::default()).await.unwrap().items;
    assert!(left.iter().all(|r| !r.state.is_terminal()) && left.len() == 3, "{left:?}");
    assert_eq!(store.get_job("prune").await.unwrap(), before, "the derived fields survive");
}

/// Deleting a job deletes its runs and attempts; a new job of the same name starts fresh and run
/// ids are never reused.
pub async fn delete_cascades(store: &dyn Store) {
    store.create_job(&spec("del"), t(0)).await.unwrap();
    let runs =
        commit(store, vec![fire("del", t(60), Trigger::Schedule), fire("del", t(120), Trigger::Schedule)], t(120))
            .await;
    let attempt = Attempt {
        run_id: runs[0].id,
        attempt: 1,
        state: RunState::Failed,
        started_at: None,
        finished_at: None,
        exit_code: None,
        signal: None,
        reason: None,
    };
    // The first run ran on an agent (which holds its log); the second never started.
    let ran = Run { agent: Some("agent-7".into()), ..finished(&runs[0], RunState::Failed, t(130)) };
    store.save_runs(&[ran], &[attempt]).await.unwrap();
    let deleted = store.delete_job("del").await.unwrap();
    let expected = vec![
        RemovedRun { id: runs[0].id, agent: Some("agent-7".into()) },
        RemovedRun { id: runs[1].id, agent: None },
    ];
    assert_eq!(deleted, expected, "the deleted runs, each with the agent that holds its log");
    assert!(matches!(store.get_job("del").await, Err(StoreError::JobNotFound(_))));
    for r in &runs {
        assert!(matches!(store.get_run(r.id).await, Err(StoreError::RunNotFound(_))));
        assert!(matches!(store.attempts(r.id).await, Err(StoreError::RunNotFound(_))));
    }
    assert!(store.active_runs().await.unwrap().iter().all(|r| r.job != "del"));
    assert!(store.load_jobs().await.unwrap().iter().all(|j| j.spec.name != "del"));

    let again = store.create_job(&spec("del"), t(200)).await.unwrap();
    assert_eq!((again.version, again.fire_cursor, again.last_run_at), (1, None, None));
    let new = commit(store, vec![fire("del", t(60), Trigger::Schedule)], t(200)).await;
    assert_eq!(new.len(), 1, "the old key is free again");
    assert!(new[0].id > runs[1].id, "run ids are never reused (they name log files)");
}

/// Run totals count succeeded and failed/timed-out/lost runs, keep counting what pruning deleted,
/// list every job (zeros included) by name, and are forgotten with the job.
pub async fn run_totals_survive_pruning(store: &dyn Store) {
    store.create_job(&spec("totals-a"), t(0)).await.unwrap();
    store.create_job(&spec("totals-b"), t(0)).await.unwrap();
    let fires = (1..=8).map(|i| fire("totals-a", t(i * 60), Trigger::Schedule)).collect();
    let runs = commit(store, fires, t(1_000)).await;
    let states = [
        RunState::Succeeded,
        RunState::Failed,
        RunState::Succeeded,
        RunState::TimedOut,
        RunState::Killed,
        RunState::Lost,
        RunState::Succeeded,
        RunState::Running,
    ];
    let saved: Vec<Run> = runs
        .iter()
        .zip(states)
        .map(|(r, s)| if s.is_terminal() { finished(r, s, r.scheduled_at) } else { Run { state: s, ..r.clone() } })
        .collect();
    store.save_runs(&saved, &[]).await.unwrap();
    let want = RunTotals { succeeded: 3, failed: 3 };
    assert_eq!(store.run_totals(Some("totals-a")).await.unwrap(), vec![("totals-a".to_string(), want)]);

    assert_eq!(store.prune_runs("totals-a", 1).await.unwrap().len(), 6);
    assert_eq!(store.run_totals(Some("totals-a")).await.unwrap(), vec![("totals-a".to_string(), want)], "after pruning");
    // A later run adds to the floor.
    let late = commit(store, vec![fire("totals-a", t(2_000), Trigger::Manual)], t(2_000)).await;
    store.save_runs(&[finished(&late[0], RunState::Failed, t(2_001))], &[]).await.unwrap();
    let want = RunTotals { succeeded: 3, failed: 4 };
    assert_eq!(store.run_totals(Some("totals-a")).await.unwrap()[0].1, want);

    let all: Vec<(String, RunTotals)> =
        store.run_totals(None).await.unwrap().into_iter().filter(|(n, _)| n.starts_with("totals-")).collect();
    assert_eq!(all, vec![("totals-a".to_string(), want), ("totals-b".to_string(), RunTotals::default())]);
    assert!(matches!(store.run_totals(Some("totals-ghost")).await, Err(StoreError::JobNotFound(n)) if n == "totals-ghost"));

    // Deleted and created again: counting starts afresh.
    store.delete_job("totals-a").await.unwrap();
    store.create_job(&spec("totals-a"), t(3_000)).await.unwrap();
    assert_eq!(store.run_totals(Some("totals-a")).await.unwrap()[0].1, RunTotals::default());
}

/// Each epoch is one more than the last, starting at 1.
pub async fn epochs_increase(store: &dyn Store) {
    assert_eq!(store.next_epoch().await.unwrap(), 1);
    assert_eq!(store.next_epoch().await.unwrap(), 2);
    assert_eq!(store.next_epoch().await.unwrap(), 3);
}

/// Services are created once, updated with their version going up, listed by name and deleted.
pub async fn services(store: &dyn Store) {
    let web = tug_core::ServiceSpec::new("svc-web", tug_core::job::Command::Shell("sleep 1000".into()), 3);
    let rec = store.create_service(&web, t(0)).await.unwrap();
    assert_eq!((rec.spec.clone(), rec.version, rec.created_at, rec.updated_at), (web.clone(), 1, t(0), t(0)));
    assert!(matches!(store.create_service(&web, t(1)).await, Err(StoreError::ServiceExists(n)) if n == "svc-web"));
    store.create_service(&tug_core::ServiceSpec { name: "svc-api".into(), ..web.clone() }, t(1)).await.unwrap();
    let bigger = tug_core::ServiceSpec { replicas: 20, ..web.clone() };
    let updated = store.update_service(&bigger, t(2)).await.unwrap();
    assert_eq!((updated.spec.replicas, updated.version, updated.created_at, updated.updated_at), (20, 2, t(0), t(2)));
    assert_eq!(store.get_service("svc-web").await.unwrap(), updated);
    let ghost = tug_core::ServiceSpec { name: "svc-ghost".into(), ..web.clone() };
    assert!(matches!(store.update_service(&ghost, t(3)).await, Err(StoreError::ServiceNotFound(n)) if n == "svc-ghost"));
    assert!(matches!(store.get_service("svc-ghost").await, Err(StoreError::ServiceNotFound(_))));
    let names = |list: Vec<tug_store::ServiceRecord>| -> Vec<String> {
        list.into_iter().map(|s| s.spec.name).filter(|n| n.starts_with("svc-")).collect()
    };
    assert_eq!(names(store.list_services().await.unwrap()), ["svc-api", "svc-web"]);
    store.delete_service("svc-api").await.unwrap();
    assert!(matches!(store.delete_service("svc-api").await, Err(StoreError::ServiceNotFound(_))));
    assert_eq!(names(store.list_services().await.unwrap()), ["svc-web"]);
    // A job may share a service's name: they are separate namespaces.
    store.create_job(&spec("svc-web"), t(4)).await.unwrap();
    assert_eq!(store.get_service("svc-web").await.unwrap().spec.replicas, 20);
}

/// Releases and scale operations are kept by kind and id, replaced whole, listed by id (as
/// numbers, not text) and deleted by id.
pub async fn progress(store: &dyn Store) {
    use tug_store::{ProgressKind, ProgressRecord};
    let rec = |kind, id, ended, stage: &str| ProgressRecord {
        kind,
        id,
        service: "svc-web".into(),
        ended,
        state: serde_json::json!({"stage": stage, "done": {"0": 2}}),
    };
    assert!(store.list_progress(ProgressKind::Release).await.unwrap().is_empty());
    for id in [10, 2, 9] {
        store.put_progress(&rec(ProgressKind::Release, id, false, "smoking")).await.unwrap();
    }
    store.put_progress(&rec(ProgressKind::Operation, 2, true, "succeeded")).await.unwrap();
    store.put_progress(&rec(ProgressKind::Release, 9, false, "baking")).await.unwrap();
    let releases = store.list_progress(ProgressKind::Release).await.unwrap();
    assert_eq!(releases.iter().map(|r| r.id).collect::<Vec<_>>(), [2, 9, 10], "by id, as numbers");
    assert_eq!(releases[1], rec(ProgressKind::Release, 9, false, "baking"), "replaced whole, read back as written");
    assert_eq!(store.list_progress(ProgressKind::Operation).await.unwrap(), [rec(ProgressKind::Operation, 2, true, "succeeded")]);
    store.delete_progress(ProgressKind::Release, &[2, 10, 77]).await.unwrap();
    assert_eq!(store.list_progress(ProgressKind::Release).await.unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), [9]);
    assert_eq!(store.list_progress(ProgressKind::Operation).await.unwrap().len(), 1, "another kind keeps its own ids");
}

/// A VLAN pool named `name` on `10.N.0.0/24`.
pub fn pool(name: &str, n: u8) -> PoolSpec {
    serde_json::from_value(serde_json::json!({
        "name": name, "cidr": format!("10.{n}.0.0/24"), "segment": {"kind": "vlan", "id": 100 + u16::from(n)},
        "gateway": format!("10.{n}.0.1"), "reserve": [format!("10.{n}.0.2-10.{n}.0.9")],
    }))
    .unwrap()
}

/// A claim of `pool` at `10.N.0.LAST`.
pub fn claim(pool: &str, name: &str, n: u8, last: u8, agent: Option<&str>) -> Claim {
    let ip = std::net::Ipv4Addr::new(10, n, 0, last);
    Claim { pool: pool.into(), name: name.into(), ip, mac: tug_net::Mac::for_ip(ip), agent: agent.map(Into::into) }
}

/// Pools are created once and kept as given; a claim holds its address alone, moves between
/// agents, and keeps its pool from being deleted.
pub async fn net_pools_and_claims(store: &dyn Store) {
    let (a, b) = (pool("net-a", 31), pool("net-b", 32));
    let rec = store.create_pool(&a, t(0)).await.unwrap();
    assert_eq!((rec.spec.clone(), rec.created_at), (a.clone(), t(0)));
    assert!(matches!(store.create_pool(&a, t(1)).await, Err(StoreError::PoolExists(n)) if n == "net-a"));
    store.create_pool(&b, t(1)).await.unwrap();
    assert_eq!(store.get_pool("net-a").await.unwrap(), rec);
    assert!(matches!(store.get_pool("net-ghost").await, Err(StoreError::PoolNotFound(n)) if n == "net-ghost"));
    let names: Vec<String> =
        store.list_pools().await.unwrap().into_iter().map(|p| p.spec.name).filter(|n| n.starts_with("net-")).collect();
    assert_eq!(names, ["net-a", "net-b"]);

    // Claims list by address, whatever order they were made in.
    let high = claim("net-a", "job/x/0", 31, 200, Some("h1"));
    let low = claim("net-a", "job/y/0", 31, 20, None);
    store.put_claim(&high).await.unwrap();
    store.put_claim(&low).await.unwrap();
    store.put_claim(&claim("net-b", "job/x/0", 32, 20, Some("h2"))).await.unwrap();
    assert_eq!(store.list_claims(Some("net-a")).await.unwrap(), vec![low.clone(), high.clone()]);
    let all: Vec<Claim> = store.list_claims(None).await.unwrap().into_iter().filter(|c| c.pool.starts_with("net-")).collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].pool, "net-b");
    assert!(matches!(store.list_claims(Some("net-ghost")).await, Err(StoreError::PoolNotFound(_))));

    // One address, one claim.
    let thief = claim("net-a", "job/z/0", 31, 200, Some("h3"));
    match store.put_claim(&thief).await {
        Err(StoreError::AddressTaken { pool, ip, holder }) => {
            assert_eq!((pool.as_str(), ip.as_str(), holder.as_str()), ("net-a", "10.31.0.200", "job/x/0"));
        }
        other => panic!("expected AddressTaken, got {other:?}"),
    }
    assert!(matches!(store.put_claim(&claim("net-ghost", "job/x/0", 31, 5, None)).await, Err(StoreError::PoolNotFound(_))));

    // A claim moves to another agent, and may change address (freeing the old one).
    let moved = Claim { agent: Some("h2".into()), ..high.clone() };
    store.put_claim(&moved).await.unwrap();
    let readdressed = claim("net-a", "job/y/0", 31, 21, Some("h1"));
    store.put_claim(&readdressed).await.unwrap();
    store.put_claim(&claim("net-a", "job/w/0", 31, 20, None)).await.unwrap();
    assert_eq!(
        store.list_claims(Some("net-a")).await.unwrap(),
        vec![claim("net-a", "job/w/0", 31, 20, None), readdressed.clone(), moved.clone()]
    );

    // A pool in use stays.
    match store.delete_pool("net-a").await {
        Err(StoreError::PoolInUse { pool, claims }) => assert_eq!((pool.as_str(), claims), ("net-a", 3)),
        other => panic!("expected PoolInUse, got {other:?}"),
    }
    assert_eq!(store.remove_claim("net-a", "job/x/0").await.unwrap(), Some(moved));
    assert_eq!(store.remove_claim("net-a", "job/x/0").await.unwrap(), None);
    store.remove_claim("net-a", "job/y/0").await.unwrap();
    store.remove_claim("net-a", "job/w/0").await.unwrap();
    store.delete_pool("net-a").await.unwrap();
    assert!(matches!(store.delete_pool("net-a").await, Err(StoreError::PoolNotFound(_))));
    assert!(matches!(store.get_pool("net-a").await, Err(StoreError::PoolNotFound(_))));
    // Its name can be taken again.
    store.create_pool(&a, t(5)).await.unwrap();
}

/// Tokens: created once per id, listed with their role and scope, revoked once (the first
/// instant is kept).
pub async fn tokens(store: &dyn Store) {
    let token = |id: &str, scope: Option<Scope>| TokenRecord {
        id: id.into(),
        name: format!("for {id}"),
        role: Role::Operate,
        scope,
        hash: format!("{id:0>64}"),
        created_at: t(1),
        expires_at: Some(t(100)),
        revoked_at: None,
    };
    let a = token("tk-a", Some("label:team=data".parse().unwrap()));
    let b = token("tk-b", None);
    store.create_token(&a).await.unwrap();
    store.create_token(&b).await.unwrap();
    assert!(matches!(store.create_token(&a).await, Err(StoreError::TokenExists(id)) if id == "tk-a"));
    let listed: Vec<TokenRecord> =
        store.list_tokens().await.unwrap().into_iter().filter(|t| t.id.starts_with("tk-")).collect();
    assert_eq!(listed, vec![a.clone(), b.clone()]);
    let revoked = store.revoke_token("tk-a", t(5)).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(t(5)));
    assert_eq!(store.revoke_token("tk-a", t(9)).await.unwrap().revoked_at, Some(t(5)));
    assert!(!revoked.live(t(6)) && b.live(t(6)) && !b.live(t(100)));
    assert!(matches!(store.revoke_token("tk-none", t(5)).await, Err(StoreError::TokenNotFound(_))));
}

/// The audit log: ids increase, filters by time and job, pages, prunes by age.
pub async fn audit_log(store: &dyn Store) {
    let entry = |at: i64, job: Option<&str>| AuditEntry {
        id: 0,
        at: t(at),
        actor: "tk-a".into(),
        remote: "127.0.0.1:5000".into(),
        method: "POST".into(),
        path: "/api/v1/jobs".into(),
        job: job.map(Into::into),
        status: 201,
    };
    let mut ids = Vec::new();
    for (at, job) in [(10, Some("au-a")), (20, Some("au-b")), (30, Some("au-a")), (40, None)] {
        ids.push(store.append_audit(&entry(at, job)).await.unwrap());
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let page = store.list_audit(&AuditQuery { job: Some("au-a".into()), ..Default::default() }).await.unwrap();
    assert_eq!(page.items.iter().map(|e| e.at).collect::<Vec<_>>(), vec![t(10), t(30)]);
    assert_eq!(page.items[0].id, ids[0]);
    assert_eq!(page.items[0], AuditEntry { id: ids[0], ..entry(10, Some("au-a")) });
    let since = store.list_audit(&AuditQuery { since: Some(t(20)), ..Default::default() }).await.unwrap();
    assert_eq!(since.items.iter().map(|e| e.id).collect::<Vec<_>>(), ids[1..].to_vec());
    let first = store.list_audit(&AuditQuery { since: Some(t(10)), limit: 3, ..Default::default() }).await.unwrap();
    assert_eq!(first.items.len(), 3);
    let rest = store
        .list_audit(&AuditQuery { since: Some(t(10)), limit: 3, cursor: first.next_cursor, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(rest.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[3]]);
    assert_eq!(rest.next_cursor, None);
    let bad = store.list_audit(&AuditQuery { cursor: Some("garbage".into()), ..Default::default() }).await;
    assert!(matches!(bad, Err(StoreError::BadCursor(_))));
    assert_eq!(store.prune_audit(t(25)).await.unwrap(), 2);
    let left = store.list_audit(&AuditQuery { since: Some(t(0)), ..Default::default() }).await.unwrap();
    assert_eq!(left.items.iter().map(|e| e.id).collect::<Vec<_>>(), ids[2..].to_vec());
}
