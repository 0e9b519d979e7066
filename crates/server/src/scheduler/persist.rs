//! The persister: writes run changes in the order the scheduler makes them, merging whatever
//! queued up into one store transaction, so the scheduler loop never waits on a status write
//! unless it needs it durable (a run written `starting` before its launch is sent).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tug_core::run::{Attempt, Run, RunId};
use tug_store::{Store, StoreError};

use crate::stream::{EventBus, RunAnnouncer};

/// Most queued batches merged into one transaction.
const MAX_MERGE: usize = 64;

/// Merging stops once this many runs are collected: a longer transaction would hold the store
/// and delay the next fire commit queued behind it.
const MAX_MERGED_RUNS: usize = 1024;

/// What a write queued after the persister stopped (the scheduler is shutting down) gets.
const STOPPED: StoreError = StoreError::Stopped("the scheduler's run writer has stopped");

struct Batch {
    runs: Vec<Run>,
    attempts: Vec<Attempt>,
    done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// Handle to the persister task.
pub(crate) struct Persister {
    tx: mpsc::Sender<Batch>,
}

impl Persister {
    /// Starts the task; it ends once the handle is dropped and the queue is written. Each run
    /// change is published on `bus` once its write is durable.
    pub(crate) fn start(store: Arc<dyn Store>, bus: Option<EventBus>) -> (Persister, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        (Persister { tx }, tokio::spawn(run(store, rx, bus)))
    }

    /// Queues a write and returns at once; the receiver says when it is durable.
    pub(crate) async fn save(&self, runs: Vec<Run>, attempts: Vec<Attempt>) -> oneshot::Receiver<Result<(), StoreError>> {
        let (done, rx) = oneshot::channel();
        let batch = Batch { runs, attempts, done: Some(done) };
        if let Err(mpsc::error::SendError(b)) = self.tx.send(batch).await
            && let Some(done) = b.done
        {
            let _ = done.send(Err(STOPPED));
        }
        rx
    }
}

impl Persister {
    /// Waits until everything queued so far is written.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        self.save(Vec::new(), Vec::new()).await.await.unwrap_or(Err(STOPPED))
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Batch>, bus: Option<EventBus>) {
    let mut queued = Vec::new();
    let mut announcer = RunAnnouncer::default();
    // When a failed write was last logged, and how many failed since.
    let (mut reported, mut failed): (Option<tokio::time::Instant>, u64) = (None, 0);
    while rx.recv_many(&mut queued, 1).await > 0 {
        let mut n = queued[0].runs.len();
        while n < MAX_MERGED_RUNS && queued.len() < MAX_MERGE {
            match rx.try_recv() {
                Ok(b) => {
                    n += b.runs.len();
                    queued.push(b);
                }
                Err(_) => break,
            }
        }
        let mut all: Vec<Run> = Vec::new();
        let mut attempts = Vec::new();
        let mut waiters = Vec::new();
        for b in queued.drain(..) {
            all.extend(b.runs);
            attempts.extend(b.attempts);
            waiters.extend(b.done);
        }
        // Later changes of a run replace earlier ones in the write (one transaction, so their
        // order in it does not matter); attempts are all kept, in order. The stream gets every
        // change, in order, moved rather than copied.
        let mut last: HashMap<RunId, usize> = HashMap::with_capacity(all.len());
        for (i, r) in all.iter().enumerate() {
            last.insert(r.id, i);
        }
        let result = if last.len() == all.len() {
            store.save_runs(&all, &attempts).await
        } else {
            let runs: Vec<Run> = all.iter().enumerate().filter(|(i, r)| last[&r.id] == *i).map(|(_, r)| r.clone()).collect();
            store.save_runs(&runs, &attempts).await
        };
        if let Err(e) = &result {
            // A full disk fails every write: once per interval in the log, not once per batch.
            let now = tokio::time::Instant::now();
            if reported.is_none_or(|at| now.duration_since(at) >= super::outage::REPORT_EVERY) {
                tracing::error!(error = %e, runs = last.len(), failed_since_last_report = failed, "saving run changes failed");
                reported = Some(now);
                failed = 0;
            } else {
                failed += 1;
            }
        } else {
            if reported.take().is_some() {
                tracing::warn!("saving run changes works again");
            }
            if let Some(bus) = &bus {
                announcer.announce(bus, all);
            }
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}
