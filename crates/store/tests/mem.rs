//! The in-memory store: the conformance checks, plus a side-by-side run against SQLite for what the
//! checks leave implicit (sub-millisecond timestamps, error precedence, keys freed by pruning).

#[macro_use]
mod conformance;

use std::fmt::Debug;

use jiff::{SignedDuration, Timestamp};
use tug_core::run::{Attempt, NewRun, Run, RunState, Trigger};
use tug_store::mem::MemStore;
use tug_store::sqlite::SqliteStore;
use tug_store::{FireBatch, JobQuery, RunQuery, Store};

use conformance::{finished, fire, spec, t};

conformance_tests!(Box::new(MemStore::new()));

#[tokio::test]
async fn all_checks_share_one_store() {
    conformance::all(&MemStore::new()).await;
}

/// Two stores fed the same calls, each answer compared (errors by their message).
struct Twins {
    mem: MemStore,
    sqlite: SqliteStore,
}

impl Twins {
    /// Calls `op` on both stores and asserts that they answer alike; returns the answer.
    async fn same<T, F>(&self, what: &str, op: F) -> Result<T, String>
    where
        T: PartialEq + Debug,
        F: AsyncFn(&dyn Store) -> tug_store::Result<T>,
    {
        let mem = op(&self.mem).await.map_err(|e| e.to_string());
        let sqlite = op(&self.sqlite).await.map_err(|e| e.to_string());
        assert_eq!(mem, sqlite, "{what}: the in-memory store (left) and SQLite (right) disagree");
        mem
    }
}

/// An instant with sub-millisecond digits, which both stores must drop the same way.
fn fine(secs: i64, micros: i64) -> Timestamp {
    t(secs) + SignedDuration::from_micros(micros)
}

/// The same script on both stores, compared call by call.
#[tokio::test]
async fn agrees_with_sqlite() {
    let s = Twins { mem: MemStore::new(), sqlite: SqliteStore::open_in_memory().unwrap() };
    s.same("create", async |st| st.create_job(&spec("tw"), fine(0, 1_500)).await).await.unwrap();
    s.same("create other", async |st| st.create_job(&spec("tw-b"), fine(0, 999)).await).await.unwrap();
    // A name given twice in one import refuses the whole import.
    let import = [spec("tw-c"), spec("tw-d"), spec("tw-c")];
    s.same("import twice", async |st| st.create_jobs(&import, t(0)).await).await.unwrap_err();
    s.same("import", async |st| st.create_jobs(&import[..2], fine(1, 1)).await).await.unwrap();

    // Keys compare by millisecond: the second and third fire are the same key.
    let runs = s
        .same("fires", async |st| {
            let batch = FireBatch {
                runs: vec![
                    fire("tw", fine(60, 123), Trigger::Schedule),
                    fire("tw", fine(60, 456), Trigger::Schedule),
                    fire("tw", fine(120, 1), Trigger::Misfire),
                    NewRun { state: RunState::Skipped, ..fire("tw", t(180), Trigger::Schedule) },
                    fire("tw-b", t(60), Trigger::Manual),
                    fire("gone", t(60), Trigger::Schedule),
                ],
                cursors: vec![("tw".into(), fine(30, 7)), ("gone".into(), t(999))],
            };
            st.commit_fires(batch, fine(200, 999)).await
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 4);
    let dup = s.same("duplicates only", async |st| commit_fires(st, fire("tw", t(60), Trigger::Manual)).await).await;
    assert_eq!(dup.unwrap(), vec![]);

    let first = Run { retry_at: Some(fine(300, 5)), ..finished(&runs[0], RunState::Failed, fine(65, 777)) };
    let attempt = Attempt {
        run_id: runs[0].id,
        attempt: 1,
        state: RunState::Failed,
        started_at: Some(fine(61, 1)),
        finished_at: Some(fine(62, 2)),
        exit_code: Some(1),
        signal: None,
        reason: Some("exit code 1".into()),
    };
    let second = finished(&runs[1], RunState::Succeeded, fine(125, 3));
    s.same("save", async |st| st.save_runs(&[first.clone(), second.clone()], std::slice::from_ref(&attempt)).await)
        .await
        .unwrap();
    for run in &runs {
        s.same("get run", async |st| st.get_run(run.id).await).await.unwrap();
    }
    s.same("attempts", async |st| st.attempts(runs[0].id).await).await.unwrap();
    s.same("get job", async |st| st.get_job("tw").await).await.unwrap();
    s.same("load", async |st| st.load_jobs().await).await.unwrap();

    // Error precedence: a bad cursor is reported before an unknown job.
    let bad = RunQuery { cursor: Some("x".into()), ..Default::default() };
    s.same("bad cursor, unknown job", async |st| st.list_runs("nope", &bad).await).await.unwrap_err();
    let huge = RunQuery { cursor: Some(u64::MAX.to_string()), ..Default::default() };
    s.same("huge cursor", async |st| st.list_runs("tw", &huge).await).await.unwrap();
    let plus = RunQuery { cursor: Some(format!("+{}", runs[2].id)), ..Default::default() };
    s.same("signed cursor", async |st| st.list_runs("tw", &plus).await).await.unwrap();
    for label in ["", "=", "team", "team="] {
        let q = JobQuery { label: Some(label.into()), q: Some(String::new()), ..Default::default() };
        s.same(&format!("label {label:?}"), async |st| st.list_jobs(&q).await).await.unwrap();
    }

    // Pruning frees the pruned keys, while the cursor stays put so the scheduler does not refire.
    s.same("prune", async |st| st.prune_runs("tw", 0).await).await.unwrap();
    s.same("job after prune", async |st| st.get_job("tw").await).await.unwrap();
    let again = s.same("refire", async |st| commit_fires(st, fire("tw", t(60), Trigger::Schedule)).await).await;
    assert_eq!(again.unwrap().len(), 1);
    s.same("stale version", async |st| st.update_job(&spec("tw"), Some(7), t(400)).await).await.unwrap_err();
    s.same("update", async |st| st.update_job(&spec("tw"), Some(1), fine(400, 42)).await).await.unwrap();
    s.same("delete", async |st| st.delete_job("tw").await).await.unwrap();
    s.same("active", async |st| st.active_runs().await).await.unwrap();
    s.same("recreate", async |st| st.create_job(&spec("tw"), t(500)).await).await.unwrap();
    let fresh = s.same("new ids", async |st| commit_fires(st, fire("tw", t(60), Trigger::Schedule)).await).await;
    assert!(fresh.unwrap()[0].id > runs[3].id, "ids are never reused");
}

/// One fire, committed at its own instant.
async fn commit_fires(store: &dyn Store, run: NewRun) -> tug_store::Result<Vec<Run>> {
    let now = run.scheduled_at;
    store.commit_fires(FireBatch { runs: vec![run], cursors: vec![] }, now).await
}
