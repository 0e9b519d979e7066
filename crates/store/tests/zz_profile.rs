//! Temporary: where does the time of a 100k fire batch go?
use rusqlite::{params, Connection};
use std::time::Instant as StdInstant;

#[allow(clippy::disallowed_types)]
fn variant(label: &str, autoinc: bool, by_job: bool, exists: bool, sync: &str, ckpt: bool) {
    let dir = tempfile::tempdir().unwrap();
    let conn = if sync == "MEM" { Connection::open_in_memory().unwrap() } else { Connection::open(dir.path().join("x.db")).unwrap() };
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)).unwrap();
    conn.pragma_update(None, "synchronous", sync).unwrap();
    conn.pragma_update(None, "cache_size", -65536).unwrap();
    if !ckpt { conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap(); }
    let ai = if autoinc { "AUTOINCREMENT" } else { "" };
    conn.execute_batch(&format!("CREATE TABLE jobs (name TEXT PRIMARY KEY NOT NULL, spec TEXT);
      CREATE TABLE runs (id INTEGER PRIMARY KEY {ai}, job TEXT NOT NULL, scheduled_at INTEGER NOT NULL, trigger TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL, created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER, exit_code INTEGER, signal INTEGER, reason TEXT, agent TEXT, retry_at INTEGER, UNIQUE (job, scheduled_at));
      CREATE INDEX runs_active ON runs (state) WHERE state IN ('pending', 'starting', 'running');")).unwrap();
    if by_job { conn.execute_batch("CREATE INDEX runs_by_job ON runs (job, id);").unwrap(); }
    for j in 0..1000 { conn.execute("INSERT INTO jobs VALUES (?1, '{}')", [format!("bench-{j:04}")]).unwrap(); }
    let names: Vec<String> = (0..1000).map(|j| format!("bench-{j:04}")).collect();
    let sql = if exists {
        "INSERT OR IGNORE INTO runs (job, scheduled_at, trigger, state, attempt, created_at, reason, agent) SELECT ?1, ?2, ?3, ?4, 1, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM jobs WHERE name = ?1)"
    } else {
        "INSERT OR IGNORE INTO runs (job, scheduled_at, trigger, state, attempt, created_at, reason, agent) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7)"
    };
    for tick in 0..3i64 {
        let t0 = StdInstant::now();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare_cached(sql).unwrap();
            for i in 0..100_000usize {
                let n = st.execute(params![names[i % 1000], tick * 1_000_000 + (i / 1000) as i64, "schedule", "pending", 5i64, None::<String>, None::<String>]).unwrap();
                assert_eq!(n, 1);
                let _ = tx.last_insert_rowid();
            }
        }
        let t1 = StdInstant::now();
        tx.commit().unwrap();
        let t2 = StdInstant::now();
        println!("{label:28} tick {tick}: inserts {:>4} ms, commit {:>4} ms", (t1 - t0).as_millis(), (t2 - t1).as_millis());
    }
}

#[test]
fn profile() {
    variant("bare mem", false, false, false, "MEM", false);
    variant("full mem", true, true, true, "MEM", false);
    variant("bare", false, false, false, "FULL", false);
    variant("full", true, true, true, "FULL", true);
}
