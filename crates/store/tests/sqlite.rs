//! The SQLite store: the conformance checks on a real database file, plus what is particular to
//! SQLite (durability across reopen, schema versioning, WAL, concurrent callers).

#[macro_use]
mod conformance;

use std::path::Path;

use tempfile::TempDir;
use tug_core::run::{RunState, Trigger};
use tug_store::sqlite::SqliteStore;
use tug_store::testing::Tmpfs;
use tug_store::{ErrorKind, FireBatch, RunQuery, Store, StoreError};

use conformance::{commit, finished, fire, spec, t};

/// A store on a fresh file; keep the directory alive as long as the store.
fn file_store() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("tug.db")).unwrap();
    (dir, store)
}

/// A store on a fresh file that keeps its directory alive.
struct FileStore(#[allow(dead_code)] TempDir, SqliteStore);

impl std::ops::Deref for FileStore {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        &self.1
    }
}

conformance_tests!({
    let (dir, store) = file_store();
    FileStore(dir, store)
});

#[tokio::test]
async fn all_checks_share_one_store() {
    let (_dir, store) = file_store();
    conformance::all(&store).await;
}

#[tokio::test]
async fn all_checks_in_memory() {
    let store = SqliteStore::open_in_memory().unwrap();
    assert_eq!(store.path(), None);
    conformance::all(&store).await;
}

#[tokio::test]
async fn data_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/tug.db");
    let (job, runs) = {
        let store = SqliteStore::open(&path).unwrap();
        store.create_job(&spec("durable"), t(0)).await.unwrap();
        let runs = commit(
            &store,
            vec![fire("durable", t(60), Trigger::Schedule), fire("durable", t(120), Trigger::Misfire)],
            t(120),
        )
        .await;
        store.save_runs(&[finished(&runs[0], RunState::Succeeded, t(65))], &[]).await.unwrap();
        store
            .commit_fires(FireBatch { runs: vec![], cursors: vec![("durable".into(), t(180))] }, t(180))
            .await
            .unwrap();
        (store.get_job("durable").await.unwrap(), store.list_runs("durable", &RunQuery::default()).await.unwrap())
    };
    assert_eq!(job.fire_cursor, Some(t(180)));

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.get_job("durable").await.unwrap(), job);
    assert_eq!(store.list_runs("durable", &RunQuery::default()).await.unwrap(), runs);
    assert_eq!(store.load_jobs().await.unwrap(), vec![job]);
    // The keys are still taken after the reopen.
    assert!(commit(&store, vec![fire("durable", t(60), Trigger::Schedule)], t(200)).await.is_empty());
}

/// A page of runs read while the fire log still holds them is the page read once they are in the
/// tables: new runs, changed runs, pages and their cursors.
#[tokio::test]
async fn runs_read_before_and_after_they_reach_the_tables_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tug.db");
    let store = SqliteStore::open(&path).unwrap();
    store.create_job(&spec("paged"), t(0)).await.unwrap();
    let old = commit(&store, (0..60).map(|i| fire("paged", t(i), Trigger::Schedule)).collect(), t(60)).await;
    drop(store);
    // In the tables now; 60 more only in the fire log, and some of both kinds changed there.
    let store = SqliteStore::open(&path).unwrap();
    let new = commit(&store, (60..120).map(|i| fire("paged", t(i), Trigger::Schedule)).collect(), t(120)).await;
    let done: Vec<_> = old.iter().chain(&new).step_by(7).map(|r| finished(r, RunState::Succeeded, t(130))).collect();
    store.save_runs(&done, &[]).await.unwrap();
    let pages = |store: SqliteStore| async move {
        let mut pages = Vec::new();
        let mut query = RunQuery { limit: 25, ..RunQuery::default() };
        loop {
            let page = store.list_runs("paged", &query).await.unwrap();
            let next = page.next_cursor.clone();
            pages.push(page);
            match next {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        (store, pages)
    };
    let (store, held) = pages(store).await;
    drop(store);
    let (_store, written) = pages(SqliteStore::open(&path).unwrap()).await;
    assert_eq!(held, written);
    assert_eq!(held.iter().map(|p| p.items.len()).sum::<usize>(), 120);
    assert_eq!(held[0].items[0].id, new.last().unwrap().id);
    let succeeded = held.iter().flat_map(|p| &p.items).filter(|r| r.state == RunState::Succeeded).count();
    assert_eq!(succeeded, done.len());
}

#[tokio::test]
async fn epochs_keep_increasing_across_a_reopen() {
    let (dir, store) = file_store();
    assert_eq!(store.next_epoch().await.unwrap(), 1);
    assert_eq!(store.next_epoch().await.unwrap(), 2);
    drop(store);
    let store = SqliteStore::open(&dir.path().join("tug.db")).unwrap();
    assert_eq!(store.next_epoch().await.unwrap(), 3);
}

#[tokio::test]
async fn schema_is_versioned_and_in_wal_mode() {
    let (dir, store) = file_store();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("tug.db")).unwrap();
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(version, SqliteStore::schema_version());
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tug.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(&err, StoreError::NewerSchema { found: 99, path: p, .. } if *p == path), "{err:?}");
    assert!(err.to_string().contains("schema version 99") && err.to_string().contains("upgrade tug"), "{err}");
}

#[tokio::test]
async fn an_unopenable_path_or_a_foreign_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a directory").unwrap();
    let err = SqliteStore::open(&file.join("tug.db")).unwrap_err();
    assert!(matches!(&err, StoreError::Backend { what, .. } if what == "creating the database directory"), "{err:?}");
    assert!(err.cause().is_some_and(|c| c.downcast_ref::<std::io::Error>().is_some()), "the I/O error is kept: {err:?}");
    std::fs::write(dir.path().join("junk.db"), vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(&dir.path().join("junk.db")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err:?}");
    let text = err.to_string();
    assert!(text.contains("junk.db") && text.contains("not a Tugboat database") && text.contains("backup"), "{text}");
}

#[tokio::test]
async fn a_locked_database_is_unavailable_until_the_lock_goes() {
    let (dir, store) = file_store();
    store.create_job(&spec("locked"), t(0)).await.unwrap();
    // Another process holds the write lock past the store's busy timeout.
    let other = rusqlite::Connection::open(dir.path().join("tug.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = store.create_job(&spec("blocked"), t(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert!(err.to_string().contains("busy") && err.to_string().contains("retry"), "{err}");
    other.execute_batch("ROLLBACK").unwrap();
    store.create_job(&spec("blocked"), t(1)).await.unwrap();
}

/// The real thing: SQLite on a file system with no space left.
#[tokio::test]
async fn a_full_disk_says_which_directory_is_full_and_writes_resume_once_freed() {
    let Some(disk) = Tmpfs::mount("1m") else { return };
    let store = SqliteStore::open(&disk.path().join("tug.db")).unwrap();
    store.create_job(&spec("before"), t(0)).await.unwrap();
    disk.fill("filler");
    // The WAL may hold a little room already; a few writes use it up.
    let mut err = None;
    for i in 0..10_000 {
        let mut s = spec(&format!("full-{i}"));
        s.description = "x".repeat(2000);
        if let Err(e) = store.create_job(&s, t(1)).await {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("writes fail once the disk is full");
    assert_eq!(err.kind(), ErrorKind::StorageFull, "{err:?}");
    assert!(matches!(&err, StoreError::StorageFull { dir, .. } if dir == disk.path()), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&disk.path().display().to_string()) && text.contains("free space"), "{text}");
    assert!(err.cause().is_some_and(|c| c.downcast_ref::<rusqlite::Error>().is_some()), "the SQLite error is kept: {err:?}");
    // Reads still work; once space is freed, so do writes.
    assert_eq!(store.get_job("before").await.unwrap().spec.name, "before");
    disk.free("filler");
    store.create_job(&spec("after"), t(2)).await.unwrap();
    drop(store);
}

/// The hot path: one tick of 100,000 fires in one batch. Prints the time; asserts only the outcome.
/// For release-mode figures: `cargo test -p tug-store --release --test sqlite -- --nocapture hundred_thousand`.
#[tokio::test]
async fn hundred_thousand_fires_in_one_batch() {
    let (dir, store) = file_store();
    const JOBS: usize = 1_000;
    const FIRES: usize = 100_000;
    for j in 0..JOBS {
        store.create_job(&spec(&format!("bench-{j:04}")), t(0)).await.unwrap();
    }
    let batch = |tick: i64| FireBatch {
        runs: (0..FIRES)
            .map(|i| fire(&format!("bench-{:04}", i % JOBS), t(tick * 1000 + (i / JOBS) as i64), Trigger::Schedule))
            .collect(),
        cursors: vec![],
    };
    for tick in 0..3 {
        let b = batch(tick);
        let start = tokio::time::Instant::now();
        let created = store.commit_fires(b, t(tick * 1000)).await.unwrap();
        let took = start.elapsed();
        assert_eq!(created.len(), FIRES);
        println!(
            "commit_fires: {FIRES} new runs in {took:?} (tick {tick}, {} in the table before)",
            tick as usize * FIRES
        );
    }
    let start = tokio::time::Instant::now();
    let again = store.commit_fires(batch(0), t(0)).await.unwrap();
    println!("commit_fires: {FIRES} duplicate keys in {:?}", start.elapsed());
    assert!(again.is_empty());
    report_size(dir.path());
}

fn report_size(dir: &Path) {
    let size = |name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len()).unwrap_or(0);
    println!("database {} KiB, WAL {} KiB", size("tug.db") / 1024, size("tug.db-wal") / 1024);
}

/// Counts rows of the database file's `runs` table directly, without the store (which writes its
/// fire log into the tables before every read).
fn rows_in_tables(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("SELECT count(*) FROM runs", [], |r| r.get(0)).unwrap()
}

/// A crash while the acknowledged fires, changes, attempts and cursors may still be only in the
/// fire log: the reopen replays them, and each run is there once, in its latest state, its key
/// still taken and its id not handed out again.
#[tokio::test]
async fn acknowledged_writes_survive_a_crash_before_they_reach_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tug.db");
    let (runs, done, attempt) = {
        let store = SqliteStore::open(&path).unwrap();
        store.create_job(&spec("logged"), t(0)).await.unwrap();
        let runs = commit(
            &store,
            vec![fire("logged", t(60), Trigger::Schedule), fire("logged", t(120), Trigger::Schedule)],
            t(120),
        )
        .await;
        let done = finished(&runs[0], RunState::Failed, t(65));
        let attempt = tug_core::run::Attempt {
            run_id: runs[0].id,
            attempt: 1,
            state: RunState::Failed,
            started_at: Some(t(60)),
            finished_at: Some(t(65)),
            exit_code: Some(3),
            signal: None,
            reason: Some("exit code 3".into()),
        };
        store.save_runs(std::slice::from_ref(&done), std::slice::from_ref(&attempt)).await.unwrap();
        store.commit_fires(FireBatch { runs: vec![], cursors: vec![("logged".into(), t(180))] }, t(180)).await.unwrap();
        store.close_as_if_crashed();
        (runs, done, attempt)
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(rows_in_tables(&path), 2, "the open replayed the fire log into the tables");
    let listed = store.list_runs("logged", &RunQuery::default()).await.unwrap().items;
    assert_eq!(listed, vec![runs[1].clone(), done.clone()]);
    assert_eq!(store.attempts(done.id).await.unwrap(), vec![attempt]);
    let job = store.get_job("logged").await.unwrap();
    assert_eq!(job.fire_cursor, Some(t(180)));
    assert_eq!(job.last_failure_at, Some(t(65)));
    assert!(commit(&store, vec![fire("logged", t(60), Trigger::Schedule)], t(300)).await.is_empty());
    let next = commit(&store, vec![fire("logged", t(300), Trigger::Schedule)], t(300)).await;
    assert!(next[0].id > runs[1].id, "run ids are never reused");
}

/// A crash after the fire log was written into the tables but before its records were trimmed:
/// the reopen does not apply them again (a pruned run stays pruned).
#[tokio::test]
async fn records_already_in_the_tables_are_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tug.db");
    let kept = {
        let store = SqliteStore::open(&path).unwrap();
        store.create_job(&spec("trim"), t(0)).await.unwrap();
        let runs = commit(
            &store,
            vec![fire("trim", t(60), Trigger::Schedule), fire("trim", t(120), Trigger::Schedule)],
            t(120),
        )
        .await;
        store.save_runs(&[finished(&runs[0], RunState::Succeeded, t(61))], &[]).await.unwrap();
        // The prune writes the log into the tables first, then deletes the finished run.
        assert_eq!(conformance::ids(&store.prune_runs("trim", 0).await.unwrap()), vec![runs[0].id]);
        store.close_as_if_crashed();
        runs[1].clone()
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.list_runs("trim", &RunQuery::default()).await.unwrap().items, vec![kept]);
    assert_eq!(rows_in_tables(&path), 1);
}

/// Without any read, what the fire log holds reaches the tables within about a second.
#[tokio::test]
async fn the_fire_log_reaches_the_tables_in_the_background() {
    let (dir, store) = file_store();
    let path = dir.path().join("tug.db");
    store.create_job(&spec("bg"), t(0)).await.unwrap();
    let runs = commit(&store, (0..100).map(|i| fire("bg", t(i), Trigger::Schedule)).collect(), t(100)).await;
    assert_eq!(runs.len(), 100);
    let waited = tokio::time::Instant::now();
    while rows_in_tables(&path) < 100 {
        assert!(waited.elapsed() < std::time::Duration::from_secs(10), "the fire log was not written into the tables");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(waited.elapsed() >= std::time::Duration::from_millis(500), "written before a second had passed");
}

/// A fire-log record the build cannot read stops the open with an error that says what to do.
#[tokio::test]
async fn a_damaged_fire_log_record_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tug.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store.create_job(&spec("dmg"), t(0)).await.unwrap();
        commit(&store, vec![fire("dmg", t(60), Trigger::Schedule)], t(60)).await;
        store.close_as_if_crashed();
    }
    let log = rusqlite::Connection::open(SqliteStore::fire_log_path(&path)).unwrap();
    log.execute("UPDATE log SET body = x'0102'", []).unwrap();
    drop(log);
    let e = SqliteStore::open(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    let text = e.to_string();
    assert!(text.contains("tug.db.firelog") && text.contains("restore the data directory from a backup"), "{text}");
}
