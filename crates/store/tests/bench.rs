//! Store figures at benchmark scale: 100,000 jobs firing every second. Ignored by default; run in
//! release mode and read the printed times:
//!
//! ```text
//! cargo test -p tug-store --release --test bench -- --ignored --nocapture
//! ```

#[macro_use]
mod conformance;

use std::time::Duration;

use tokio::time::Instant;
use tug_core::run::{Run, RunState, Trigger};
use tug_store::sqlite::SqliteStore;
use tug_store::{FireBatch, JobQuery, RunQuery, Store};

use conformance::{fire, spec, t};

const JOBS: usize = 100_000;
const TICKS: i64 = 10;

fn name(j: usize) -> String {
    format!("job-{j:06}")
}

/// Times `f` and prints the figure.
async fn timed<T>(what: &str, f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = f.await;
    let took = start.elapsed();
    println!("{what:48} {took:>12.1?}");
    (out, took)
}

#[tokio::test]
#[ignore = "takes a minute; run in release mode for figures"]
async fn hundred_thousand_jobs_every_second() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tug.db");
    // Creating 100,000 jobs one durable write at a time would take minutes of fsyncs; write them
    // in one transaction behind the store's back instead.
    drop(SqliteStore::open(&path).unwrap());
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO jobs (name, spec, search, version, created_at, updated_at) VALUES (?1, ?2, ?1, 1, 0, 0)")
                .unwrap();
            for j in 0..JOBS {
                let s = spec(&name(j));
                insert.execute((&s.name, serde_json::to_string(&s).unwrap())).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();

    let mut commit_total = Duration::ZERO;
    let mut worst = Duration::ZERO;
    for tick in 0..TICKS {
        let batch = FireBatch {
            runs: (0..JOBS).map(|j| fire(&name(j), t(tick), Trigger::Schedule)).collect(),
            cursors: vec![],
        };
        let (created, took) =
            timed(&format!("tick {tick}: commit_fires ({JOBS} runs)"), store.commit_fires(batch, t(tick))).await;
        let created = created.unwrap();
        assert_eq!(created.len(), JOBS);
        commit_total += took;
        worst = worst.max(took);
        let done: Vec<Run> = created
            .iter()
            .map(|r| Run {
                state: RunState::Succeeded,
                started_at: Some(t(tick)),
                finished_at: Some(t(tick)),
                exit_code: Some(0),
                ..r.clone()
            })
            .collect();
        timed(&format!("tick {tick}: save_runs ({JOBS} finished)"), store.save_runs(&done, &[])).await.0.unwrap();
    }
    println!("commit_fires: mean {:.1?}, worst {worst:.1?}", commit_total / TICKS as u32);

    let runs = JOBS as i64 * TICKS;
    let (jobs, _) = timed(&format!("load_jobs ({JOBS} jobs, {runs} runs)"), store.load_jobs()).await;
    let jobs = jobs.unwrap();
    assert_eq!(jobs.len(), JOBS);
    assert!(jobs.iter().all(|j| j.fire_cursor == Some(t(TICKS - 1)) && j.last_success_at == Some(t(TICKS - 1))));
    timed("list_jobs (first page of 100)", store.list_jobs(&JobQuery::default())).await.0.unwrap();
    let deep = JobQuery { cursor: Some(name(JOBS / 2)), limit: 1000, ..Default::default() };
    timed("list_jobs (page of 1000 mid-way)", store.list_jobs(&deep)).await.0.unwrap();
    let q = JobQuery { q: Some("099999".into()), ..Default::default() };
    let (page, _) = timed("list_jobs (q matching 1 of 100k)", store.list_jobs(&q)).await;
    assert_eq!(page.unwrap().items.len(), 1);
    timed("get_job", store.get_job(&name(4242))).await.0.unwrap();
    timed("list_runs (first page)", store.list_runs(&name(4242), &RunQuery::default())).await.0.unwrap();
    let (active, _) = timed("active_runs", store.active_runs()).await;
    assert!(active.unwrap().is_empty());
    let (pruned, _) = timed("prune_runs (one job, keep 3)", store.prune_runs(&name(4242), 3)).await;
    assert_eq!(pruned.unwrap().len(), TICKS as usize - 3);
    let size = |f: &str| std::fs::metadata(dir.path().join(f)).map(|m| m.len() / (1 << 20)).unwrap_or(0);
    println!("database {} MiB, WAL {} MiB", size("tug.db"), size("tug.db-wal"));
}
