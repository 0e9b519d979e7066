//! Temporary: where does the time of a 100k fire batch go?
#![allow(clippy::disallowed_types)]
use rusqlite::{params, Connection};
use std::time::Instant as StdInstant;

fn setup(indexes: bool) -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.pragma_update(None, "cache_size", -65536).unwrap();
    conn.execute_batch("CREATE TABLE jobs (name TEXT PRIMARY KEY NOT NULL, spec TEXT);
      CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, job TEXT NOT NULL, scheduled_at INTEGER NOT NULL, trigger TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL, created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER, exit_code INTEGER, signal INTEGER, reason TEXT, agent TEXT, retry_at INTEGER, UNIQUE (job, scheduled_at));").unwrap();
    if indexes {
        conn.execute_batch("CREATE INDEX runs_active ON runs (state) WHERE state IN ('pending', 'starting', 'running'); CREATE INDEX runs_by_job ON runs (job, id);").unwrap();
    }
    for j in 0..1000 { conn.execute("INSERT INTO jobs VALUES (?1, '{}')", [format!("bench-{j:04}")]).unwrap(); }
    conn
}

#[test]
fn profile() {
    let names: Vec<String> = (0..1000).map(|j| format!("bench-{j:04}")).collect();
    for indexes in [false, true] {
        // One row per statement.
        let conn = setup(indexes);
        let t0 = StdInstant::now();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare_cached("INSERT OR IGNORE INTO runs (job, scheduled_at, trigger, state, attempt, created_at, reason, agent) SELECT ?1, ?2, ?3, ?4, 1, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM jobs WHERE name = ?1)").unwrap();
            for i in 0..100_000usize {
                st.execute(params![names[i % 1000], (i / 1000) as i64, "schedule", "pending", 5i64, None::<String>, None::<String>]).unwrap();
            }
        }
        tx.commit().unwrap();
        println!("indexes {indexes}: single-row      {:>4} ms", t0.elapsed().as_millis());

        // Sorted by key first.
        let conn = setup(indexes);
        let mut order: Vec<usize> = (0..100_000).collect();
        order.sort_by_key(|&i| (&names[i % 1000], i / 1000));
        let t0 = StdInstant::now();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare_cached("INSERT OR IGNORE INTO runs (job, scheduled_at, trigger, state, attempt, created_at, reason, agent) SELECT ?1, ?2, ?3, ?4, 1, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM jobs WHERE name = ?1)").unwrap();
            for &i in &order {
                st.execute(params![names[i % 1000], (i / 1000) as i64, "schedule", "pending", 5i64, None::<String>, None::<String>]).unwrap();
            }
        }
        tx.commit().unwrap();
        println!("indexes {indexes}: sorted          {:>4} ms", t0.elapsed().as_millis());

        // Raw statement API: bind + raw_execute.
        let conn = setup(indexes);
        let t0 = StdInstant::now();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare_cached("INSERT OR IGNORE INTO runs (job, scheduled_at, trigger, state, attempt, created_at, reason, agent) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7)").unwrap();
            for i in 0..100_000usize {
                st.raw_bind_parameter(1, &names[i % 1000]).unwrap();
                st.raw_bind_parameter(2, (i / 1000) as i64).unwrap();
                st.raw_bind_parameter(3, "schedule").unwrap();
                st.raw_bind_parameter(4, "pending").unwrap();
                st.raw_bind_parameter(5, 5i64).unwrap();
                st.raw_execute().unwrap();
            }
        }
        tx.commit().unwrap();
        println!("indexes {indexes}: raw no-exists   {:>4} ms", t0.elapsed().as_millis());

        // Minimal: an integer-only table without indexes.
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a INTEGER PRIMARY KEY, b INTEGER)").unwrap();
        let t0 = StdInstant::now();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare_cached("INSERT INTO t (b) VALUES (?1)").unwrap();
            for i in 0..100_000i64 { st.execute([i]).unwrap(); }
        }
        tx.commit().unwrap();
        println!("indexes {indexes}: minimal         {:>4} ms", t0.elapsed().as_millis());
    }
}
