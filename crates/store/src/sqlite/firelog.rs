//! The fire log: how run writes become durable without paying for the run tables' pages each time.
//!
//! A tick's fires and a batch of run changes each become one [`Record`] appended to a second
//! SQLite file beside the database (`tug.db.firelog`, WAL, `synchronous = FULL`): one small
//! transaction, a few pages and one fsync, committed before the call returns (so before any launch
//! leaves the server). The runs, attempts and cursors it holds wait in memory (the [`Overlay`])
//! and are *materialized* into the database's tables behind it, in one large transaction sorted by
//! job, once a second or every [`MATERIALIZE_RUNS`] runs, and before anything reads runs or jobs.
//! A run that finished before its batch was written is written once, in its final state.
//!
//! ```text
//!  commit_fires ─┐                  ┌──────── log thread ────────┐
//!  save_runs ────┴─► channel ─────► │ check keys, assign ids,     │ ─► tug.db.firelog (append, fsync)
//!                                   │ group-commit, fill overlay  │
//!                                   └─────────────┬───────────────┘
//!                                          overlay (in memory)
//!  reads, other writes ─► worker thread ─► materialize ─► tug.db: runs, attempts, jobs,
//!                                                         counters.firelog_applied = last seq
//! ```
//!
//! Crash safety: materialization records the last sequence number it applied in the same
//! transaction (`counters.firelog_applied`), so at open the records after it are replayed and
//! materialized before anything else runs; records up to it are deleted lazily. A record is
//! all-or-nothing (one SQLite transaction), so a crash mid-append loses only a tick nobody was
//! told about.
//!
//! Keys: a fire whose key `(job, scheduled_at)` exists is not created. The log thread checks the
//! overlay, then the database through its own read-only connection (WAL readers never wait for the
//! writer), skipping the lookup when the instant is later than any key the job has in the database.

// The log and materialization run on the store's own threads in real time, like the WAL
// checkpointer: a paused tokio clock in a test must not stop them.
#![allow(clippy::disallowed_types)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;
use tug_core::run::{Attempt, NewRun, Run, RunId};

use super::codec::{Context, ms, stored};
use super::record::Record;
use super::{runs, write_tx};
use crate::{FireBatch, Result, StoreError};

/// Materialize once the oldest waiting change is this old.
pub(super) const MATERIALIZE_AFTER: Duration = Duration::from_secs(1);

/// Materialize once this many runs wait, whatever their age.
pub(super) const MATERIALIZE_RUNS: usize = 200_000;

/// Most requests written in one log transaction.
const MAX_GROUP: usize = 256;

/// The counter that holds the last record applied to the tables.
const APPLIED: &str = "firelog_applied";

/// Run changes that are durable in the log and not yet in the database's tables.
#[derive(Default)]
pub(super) struct Overlay {
    runs: HashMap<RunId, Waiting>,
    /// Keys of the created runs among them.
    keys: HashSet<(String, i64)>,
    attempts: Vec<(u64, Attempt)>,
    /// Explicit cursors: job → (milliseconds, seq of the last record that moved it).
    cursors: HashMap<String, (i64, u64)>,
    /// The last record in the overlay.
    durable: u64,
    /// The last record in the tables.
    applied: u64,
    /// When the oldest waiting change arrived.
    oldest: Option<Instant>,
}

/// A run's latest state, waiting to be written.
struct Waiting {
    run: Run,
    /// Not in the tables yet: it is inserted, not updated.
    created: bool,
    /// The last record that changed it.
    seq: u64,
}

impl Overlay {
    /// Takes in a record that is durable in the log.
    fn apply(&mut self, seq: u64, record: Record) {
        for run in record.created {
            self.keys.insert((run.job.clone(), ms(run.scheduled_at)));
            self.runs.insert(run.id, Waiting { run, created: true, seq });
        }
        for run in record.changed {
            match self.runs.get_mut(&run.id) {
                Some(w) => {
                    w.run = run;
                    w.seq = seq;
                }
                None => {
                    self.runs.insert(run.id, Waiting { run, created: false, seq });
                }
            }
        }
        self.attempts.extend(record.attempts.into_iter().map(|a| (seq, a)));
        for (job, at) in record.cursors {
            let c = self.cursors.entry(job).or_insert((at, seq));
            *c = (c.0.max(at), seq);
        }
        self.durable = self.durable.max(seq);
        self.oldest.get_or_insert_with(Instant::now);
    }

    fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.attempts.is_empty() && self.cursors.is_empty()
    }

    /// Whether enough waits, or has waited long enough, to be materialized now.
    pub(super) fn due(&self) -> bool {
        !self.is_empty()
            && (self.runs.len() >= MATERIALIZE_RUNS || self.oldest.is_some_and(|t| t.elapsed() >= MATERIALIZE_AFTER))
    }

    /// The runs of `job` waiting to be written, in their latest state (`true`: not in the tables).
    pub(super) fn runs_of(&self, job: &str) -> Vec<(bool, Run)> {
        self.runs.values().filter(|w| w.run.job == job).map(|w| (w.created, w.run.clone())).collect()
    }

    /// Runs waiting to be written (for tests and the idle check).
    pub(super) fn waiting(&self) -> usize {
        self.runs.len()
    }
}

pub(super) fn lock(overlay: &Mutex<Overlay>) -> MutexGuard<'_, Overlay> {
    // Every critical section leaves the overlay consistent, so a panic elsewhere cannot poison it.
    overlay.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes everything waiting in `overlay` into the tables in one transaction, sorted by job so
/// each page of the per-job index is visited once; then forgets what it wrote (changes that arrived
/// meanwhile stay for the next round).
pub(super) fn materialize(conn: &mut Connection, overlay: &Mutex<Overlay>) -> Result<()> {
    let (upto, mut waiting, attempts, cursors) = {
        let o = lock(overlay);
        if o.is_empty() {
            return Ok(());
        }
        let runs: Vec<(bool, Run)> = o.runs.values().map(|w| (w.created, w.run.clone())).collect();
        let attempts: Vec<Attempt> = o.attempts.iter().map(|(_, a)| a.clone()).collect();
        let cursors: Vec<(String, i64)> = o.cursors.iter().map(|(j, (at, _))| (j.clone(), *at)).collect();
        (o.durable, runs, attempts, cursors)
    };
    waiting.sort_unstable_by(|(_, a), (_, b)| (&a.job, a.id).cmp(&(&b.job, b.id)));
    let tx = write_tx(conn)?;
    let mut top: Option<RunId> = None;
    for (created, run) in &waiting {
        if *created {
            runs::insert_logged(&tx, run)?;
            top = top.max(Some(run.id));
        } else {
            // A run deleted since (pruned, or with its job) stays deleted.
            runs::update(&tx, run)?;
        }
    }
    for a in &attempts {
        runs::insert_attempt(&tx, a)?;
    }
    for (job, at) in &cursors {
        runs::advance_cursor(&tx, job, *at)?;
    }
    if let Some(top) = top {
        // Ids handed out are never reused, even one whose run was dropped with its job.
        let top = top as i64;
        let moved = tx
            .execute("UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'runs'", [top])
            .ctx("keeping the run id sequence")?;
        if moved == 0 {
            tx.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', ?1)", [top])
                .ctx("keeping the run id sequence")?;
        }
    }
    set_applied(&tx, upto)?;
    crash_point("materialize", waiting.len());
    tx.commit().ctx("materializing the fire log")?;

    let mut o = lock(overlay);
    for (_, run) in &waiting {
        let Some(w) = o.runs.get_mut(&run.id) else { continue };
        let was_created = w.created;
        if w.seq <= upto {
            o.runs.remove(&run.id);
        } else {
            // Changed again meanwhile: written again next round, now as an update.
            w.created = false;
        }
        if was_created {
            o.keys.remove(&(run.job.clone(), ms(run.scheduled_at)));
        }
    }
    o.attempts.retain(|(seq, _)| *seq > upto);
    o.cursors.retain(|_, (_, seq)| *seq > upto);
    o.applied = o.applied.max(upto);
    o.oldest = if o.is_empty() { None } else { Some(Instant::now()) };
    Ok(())
}

/// Where the crash tests stop the process, from `TUG_TEST_CRASH`: `append:N` kills it (SIGKILL,
/// as `kill -9` would) inside the first fire-log append of at least N runs, before it commits;
/// `materialize:N` inside the first materialization of at least N runs, before it commits.
fn crash_point(stage: &str, runs: usize) {
    static POINT: std::sync::LazyLock<Option<(String, usize)>> = std::sync::LazyLock::new(|| {
        let v = std::env::var("TUG_TEST_CRASH").ok()?;
        let (stage, n) = v.split_once(':')?;
        Some((stage.to_owned(), n.parse().ok()?))
    });
    if let Some((at, n)) = POINT.as_ref()
        && at == stage
        && runs >= *n
    {
        eprintln!("TUG_TEST_CRASH: killing the process in the middle of a fire-log {stage} of {runs} runs");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

fn set_applied(conn: &Connection, seq: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO counters (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .and_then(|mut s| s.execute(params![APPLIED, seq as i64]))
    .ctx("recording how far the fire log is applied")?;
    Ok(())
}

/// The fire log file beside the database at `db`.
pub(super) fn path_for(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".firelog");
    PathBuf::from(p)
}

/// A request to the log thread.
enum Request {
    Fires(FireBatch, Timestamp, oneshot::Sender<Result<Vec<Run>>>),
    Save(Vec<Run>, Vec<Attempt>, oneshot::Sender<Result<()>>),
}

/// The handle on the log thread. Dropping it lets the thread finish what is queued and exit.
pub(super) struct FireLog {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
    /// What the log holds that the tables do not yet.
    pub(super) overlay: Arc<Mutex<Overlay>>,
    /// Bumped by every job deletion: the log thread forgets which jobs it knows exist.
    pub(super) deletions: Arc<AtomicU64>,
}

impl FireLog {
    /// Opens (or creates) the log of the database at `db` whose writer connection is `main`,
    /// replays what it holds beyond what the tables have, and starts the log thread.
    pub(super) fn open(db: &Path, main: &mut Connection) -> Result<FireLog> {
        let path = path_for(db);
        let what = format!("opening the fire log {}", path.display());
        super::SqliteStore::owner_only(&path)?;
        let log = Connection::open(&path).ctx(&what)?;
        let mode: String = log.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).ctx(&what)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path, mode });
        }
        log.pragma_update(None, "synchronous", "FULL").ctx(&what)?;
        log.busy_timeout(super::BUSY_TIMEOUT).ctx(&what)?;
        log.execute_batch("CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)")
            .ctx(&what)?;

        let applied: u64 = main
            .query_row("SELECT value FROM counters WHERE name = ?1", [APPLIED], |r| r.get::<_, i64>(0))
            .optional()
            .ctx("reading how far the fire log is applied")?
            .unwrap_or(0) as u64;
        let overlay = Arc::new(Mutex::new(Overlay { applied, ..Overlay::default() }));
        let last = replay(&log, &path, applied, &overlay)?;
        let replayed = lock(&overlay).waiting();
        materialize(main, &overlay)?;
        if last > applied {
            tracing::info!(records = last - applied, runs = replayed, "replayed the fire log");
        }
        log.execute("DELETE FROM log WHERE seq <= ?1", [last.max(applied) as i64]).ctx(&what)?;

        let next_id = main
            .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'runs'", [], |r| r.get::<_, i64>(0))
            .optional()
            .ctx("reading the run id sequence")?
            .unwrap_or(0) as u64
            + 1;
        let read = Connection::open(db).ctx("opening the fire log's read connection")?;
        read.busy_timeout(super::BUSY_TIMEOUT).ctx(&what)?;
        read.pragma_update(None, "query_only", true).ctx(&what)?;
        read.set_prepared_statement_cache_capacity(16);

        let deletions = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            log,
            read,
            overlay: overlay.clone(),
            deletions: deletions.clone(),
            seen_deletions: 0,
            next_seq: last.max(applied) + 1,
            next_id,
            deleted_upto: last.max(applied),
            jobs: HashMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("tug-firelog".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP
                        && let Ok(r) = rx.try_recv()
                    {
                        group.push(r);
                    }
                    writer.write(group);
                }
            })
            .map_err(|e| StoreError::Backend { what: "starting the fire log thread".into(), source: Arc::new(e) })?;
        Ok(FireLog { tx: Some(tx), thread: Some(thread), overlay, deletions })
    }

    /// Logs a tick's fires; returns the runs created, durable when it returns.
    pub(super) async fn commit_fires(&self, batch: FireBatch, now: Timestamp) -> Result<Vec<Run>> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Fires(batch, now, reply))?;
        answer.await.map_err(|_| StoreError::Stopped("the fire log thread has stopped"))?
    }

    /// Logs run changes and attempts; durable when it returns.
    pub(super) async fn save_runs(&self, runs: Vec<Run>, attempts: Vec<Attempt>) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Save(runs, attempts, reply))?;
        answer.await.map_err(|_| StoreError::Stopped("the fire log thread has stopped"))?
    }

    fn send(&self, r: Request) -> Result<()> {
        self.tx
            .as_ref()
            .expect("the sender lives until drop")
            .send(r)
            .map_err(|_| StoreError::Stopped("the fire log thread has stopped"))
    }
}

impl Drop for FireLog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Feeds the records after `applied` into `overlay`, in order; returns the last sequence number
/// the log holds (`applied` when none is newer).
fn replay(log: &Connection, path: &Path, applied: u64, overlay: &Mutex<Overlay>) -> Result<u64> {
    let what = "replaying the fire log";
    let mut stmt = log.prepare("SELECT seq, body FROM log WHERE seq > ?1 ORDER BY seq").ctx(what)?;
    let mut rows = stmt.query([applied as i64]).ctx(what)?;
    let mut last = applied;
    let mut o = lock(overlay);
    while let Some(row) = rows.next().ctx(what)? {
        let seq = row.get::<_, i64>(0).ctx(what)? as u64;
        let body = row.get_ref(1).ctx(what)?.as_blob().map_err(|e| corrupt(path, seq, &e.to_string()))?;
        let record = Record::decode(body).map_err(|e| corrupt(path, seq, &e))?;
        o.apply(seq, record);
        last = seq;
    }
    Ok(last)
}

fn corrupt(path: &Path, seq: u64, why: &str) -> StoreError {
    StoreError::Corrupt {
        what: format!(
            "reading record {seq} of the fire log {}: {why}; restore the data directory from a backup",
            path.display()
        ),
        source: Arc::new(std::io::Error::other(why.to_owned())),
    }
}

/// The log thread's state.
struct Writer {
    log: Connection,
    /// Reads the database (keys, jobs, runs) for the checks; never writes.
    read: Connection,
    overlay: Arc<Mutex<Overlay>>,
    deletions: Arc<AtomicU64>,
    seen_deletions: u64,
    next_seq: u64,
    next_id: RunId,
    /// Log records up to this one are deleted.
    deleted_upto: u64,
    /// Jobs seen: the latest key each has in the tables or was given here (an upper bound), and
    /// whether it was known to exist as of the last deletion.
    jobs: HashMap<String, JobSeen>,
}

struct JobSeen {
    /// No key of the job in the tables is later than this.
    max_key: i64,
    /// The value of `deletions` when the job was last seen to exist (`u64::MAX`: never).
    exists_as_of: u64,
}

/// What one request comes to, before its record is durable.
enum Planned {
    Fires(Record, oneshot::Sender<Result<Vec<Run>>>),
    Save(Record, oneshot::Sender<Result<()>>),
    Refused(Request, StoreError),
}

impl Writer {
    /// Checks, logs in one transaction and acknowledges a group of requests.
    fn write(&mut self, group: Vec<Request>) {
        let deletions = self.deletions.load(Ordering::Acquire);
        let (seq0, id0) = (self.next_seq, self.next_id);
        let planned = self.plan(group, deletions);
        self.seen_deletions = deletions;
        let records: Vec<(u64, &Record)> = planned
            .iter()
            .filter_map(|p| match p {
                Planned::Fires(r, _) | Planned::Save(r, _) => Some(r),
                Planned::Refused(..) => None,
            })
            .map(|r| {
                let seq = self.next_seq;
                self.next_seq += 1;
                (seq, r)
            })
            .collect();
        let written = if records.is_empty() { Ok(()) } else { self.append(&records) };
        if let Err(e) = written {
            self.next_seq = seq0;
            self.next_id = id0;
            for p in planned {
                match p {
                    Planned::Fires(_, reply) => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    Planned::Save(_, reply) => {
                        let _ = reply.send(Err(e.clone()));
                    }
                    Planned::Refused(r, err) => refuse(r, err),
                }
            }
            return;
        }
        let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
        let mut seqs = seqs.into_iter();
        let mut replies = Vec::with_capacity(planned.len());
        {
            let mut o = lock(&self.overlay);
            for p in planned {
                match p {
                    Planned::Fires(record, reply) => {
                        let created = record.created.clone();
                        o.apply(seqs.next().expect("a seq per record"), record);
                        replies.push(Reply::Fires(reply, created));
                    }
                    Planned::Save(record, reply) => {
                        o.apply(seqs.next().expect("a seq per record"), record);
                        replies.push(Reply::Save(reply));
                    }
                    Planned::Refused(r, err) => replies.push(Reply::Refused(r, err)),
                }
            }
        }
        for r in replies {
            match r {
                Reply::Fires(reply, created) => {
                    let _ = reply.send(Ok(created));
                }
                Reply::Save(reply) => {
                    let _ = reply.send(Ok(()));
                }
                Reply::Refused(r, err) => refuse(r, err),
            }
        }
    }

    /// Appends the records (and deletes the ones the tables have) in one transaction.
    fn append(&mut self, records: &[(u64, &Record)]) -> Result<()> {
        let applied = lock(&self.overlay).applied;
        let tx = self.log.transaction().ctx("appending to the fire log")?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO log (seq, body) VALUES (?1, ?2)").ctx("appending to the fire log")?;
            for (seq, record) in records {
                insert.execute(params![*seq as i64, record.encode()]).ctx("appending to the fire log")?;
            }
        }
        if applied > self.deleted_upto {
            tx.execute("DELETE FROM log WHERE seq <= ?1", [applied as i64]).ctx("trimming the fire log")?;
        }
        crash_point("append", records.iter().map(|(_, r)| r.created.len() + r.changed.len()).sum());
        tx.commit().ctx("committing to the fire log")?;
        self.deleted_upto = self.deleted_upto.max(applied);
        Ok(())
    }

    /// Checks each request against the overlay and the tables and turns it into a record. A
    /// request whose check cannot read the tables is refused with that error.
    fn plan(&mut self, group: Vec<Request>, deletions: u64) -> Vec<Planned> {
        // The overlay is locked before the read transaction starts: a materialization that
        // removed runs from it had committed them already, so the read sees them.
        let overlay = self.overlay.clone();
        let o = lock(&overlay);
        let began = self.read.execute_batch("BEGIN").ctx("reading the database for the fire log");
        let mut planned = Vec::with_capacity(group.len());
        let mut taken: HashSet<(String, i64)> = HashSet::new();
        for req in group {
            if let Err(e) = &began {
                planned.push(Planned::Refused(req, e.clone()));
                continue;
            }
            planned.push(match req {
                Request::Fires(batch, now, reply) => match self.plan_fires(&o, &mut taken, &batch, now, deletions) {
                    Ok(record) => Planned::Fires(record, reply),
                    Err(e) => Planned::Refused(Request::Fires(batch, now, reply), e),
                },
                Request::Save(runs, attempts, reply) => match self.missing_run(&o, &runs, &attempts) {
                    Ok(None) => Planned::Save(Record { changed: runs, attempts, ..Record::default() }, reply),
                    Ok(Some(id)) => Planned::Refused(Request::Save(runs, attempts, reply), StoreError::RunNotFound(id)),
                    Err(e) => Planned::Refused(Request::Save(runs, attempts, reply), e),
                },
            });
        }
        if began.is_ok() {
            let _ = self.read.execute_batch("COMMIT");
        }
        planned
    }

    fn plan_fires(
        &mut self,
        o: &Overlay,
        taken: &mut HashSet<(String, i64)>,
        batch: &FireBatch,
        now: Timestamp,
        deletions: u64,
    ) -> Result<Record> {
        let created_at = stored(now);
        let mut created = Vec::with_capacity(batch.runs.len());
        let mut keys = Vec::with_capacity(batch.runs.len());
        for run in &batch.runs {
            let at = ms(run.scheduled_at);
            match self.check(o, taken, &run.job, at, deletions) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    // A refused batch takes no key.
                    for k in &keys {
                        taken.remove(k);
                    }
                    return Err(e);
                }
            }
            let key = (run.job.clone(), at);
            taken.insert(key.clone());
            keys.push(key);
            let new = NewRun { scheduled_at: stored(run.scheduled_at), ..run.clone() };
            created.push(new.into_run(0, created_at));
        }
        // Ids only once the whole batch is checked, so a refused batch takes none.
        for run in &mut created {
            run.id = self.next_id;
            self.next_id += 1;
        }
        let cursors = batch.cursors.iter().map(|(j, at)| (j.clone(), ms(*at))).collect();
        Ok(Record { created, cursors, ..Record::default() })
    }

    /// Whether a fire of `job` at `at` may create a run: the job exists and the key is free.
    fn check(&mut self, o: &Overlay, taken: &HashSet<(String, i64)>, job: &str, at: i64, deletions: u64) -> Result<bool> {
        let key = (job.to_owned(), at);
        if taken.contains(&key) || o.keys.contains(&key) {
            return Ok(false);
        }
        let seen = match self.jobs.get_mut(job) {
            Some(s) => s,
            None => {
                let max_key = self
                    .read
                    .prepare_cached("SELECT max(scheduled_at) FROM runs WHERE job = ?1")
                    .and_then(|mut s| s.query_row([job], |r| r.get::<_, Option<i64>>(0)))
                    .ctx("reading a job's latest run key")?
                    .unwrap_or(i64::MIN);
                self.jobs.entry(key.0.clone()).or_insert(JobSeen { max_key, exists_as_of: u64::MAX })
            }
        };
        if seen.exists_as_of != deletions {
            let exists = self
                .read
                .prepare_cached("SELECT 1 FROM jobs WHERE name = ?1")
                .and_then(|mut s| s.exists([job]))
                .ctx("looking up a job")?;
            if !exists {
                return Ok(false);
            }
            seen.exists_as_of = deletions;
        }
        let later = at > seen.max_key;
        seen.max_key = seen.max_key.max(at);
        if later {
            return Ok(true);
        }
        let exists = self
            .read
            .prepare_cached("SELECT 1 FROM runs WHERE scheduled_at = ?1 AND job = ?2")
            .and_then(|mut s| s.exists(params![at, job]))
            .ctx("looking up a run key")?;
        Ok(!exists)
    }

    /// The first run id of a save that names no run (in the overlay, the tables or the save).
    fn missing_run(&mut self, o: &Overlay, runs: &[Run], attempts: &[Attempt]) -> Result<Option<RunId>> {
        let ids = runs.iter().map(|r| r.id).chain(attempts.iter().map(|a| a.run_id));
        let mut known: HashSet<RunId> = HashSet::new();
        for id in ids {
            if known.contains(&id) || o.runs.contains_key(&id) {
                continue;
            }
            let Ok(sql) = i64::try_from(id) else { return Ok(Some(id)) };
            let exists = self
                .read
                .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")
                .and_then(|mut s| s.exists([sql]))
                .ctx("looking up a run")?;
            if !exists {
                return Ok(Some(id));
            }
            known.insert(id);
        }
        Ok(None)
    }
}

enum Reply {
    Fires(oneshot::Sender<Result<Vec<Run>>>, Vec<Run>),
    Save(oneshot::Sender<Result<()>>),
    Refused(Request, StoreError),
}

fn refuse(r: Request, e: StoreError) {
    match r {
        Request::Fires(_, _, reply) => {
            let _ = reply.send(Err(e));
        }
        Request::Save(_, _, reply) => {
            let _ = reply.send(Err(e));
        }
    }
}
