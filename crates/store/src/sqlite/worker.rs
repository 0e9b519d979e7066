//! The thread that owns the SQLite connection. Async callers send it closures over a channel and
//! await the answer on a oneshot, so no SQLite call ever blocks the async runtime.
//!
//! One connection serves reads and writes in the order they arrive. That keeps transactions
//! trivially serialized; a reader pool on separate WAL connections can be added if reads queued
//! behind a large fire batch ever matter.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::codec::locate;
use crate::{Result, StoreError};

/// Work for the thread.
type Task = Box<dyn FnOnce(&mut Connection) + Send>;

/// Called on the thread after each task, every [`IDLE_TICK`] when there is none, and once more
/// (with `true`) before the connection closes: background work such as materializing the fire log.
pub(super) type Idle = Box<dyn FnMut(&mut Connection, bool) + Send>;

/// How often the idle hook runs when no task arrives.
const IDLE_TICK: Duration = Duration::from_millis(50);

/// A handle on the connection thread. Dropping it lets the thread finish the queued work, close
/// the connection (checkpointing the WAL) and exit; the drop waits for that.
pub(super) struct Worker {
    tasks: Option<mpsc::Sender<Task>>,
    thread: Option<JoinHandle<()>>,
    dir: Option<PathBuf>,
}

impl Worker {
    /// Starts the thread, which takes ownership of `conn`.
    /// Full disks are reported as full in `dir`, the database's directory (`None`: in memory).
    pub(super) fn spawn(mut conn: Connection, name: &str, dir: Option<PathBuf>, mut idle: Option<Idle>) -> Result<Worker> {
        let (tasks, queue) = mpsc::channel::<Task>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                loop {
                    let task = match &idle {
                        None => queue.recv().ok(),
                        Some(_) => match queue.recv_timeout(IDLE_TICK) {
                            Ok(task) => Some(task),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        },
                    };
                    match task {
                        Some(task) => run(task, &mut conn),
                        None if idle.is_none() => break,
                        None => {}
                    }
                    if let Some(idle) = idle.as_mut() {
                        idle(&mut conn, false);
                    }
                }
                if let Some(mut idle) = idle {
                    idle(&mut conn, true);
                }
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the SQLite database failed");
                }
            })
            .map_err(|e| StoreError::Backend { what: "starting the SQLite thread".into(), source: Arc::new(e) })?;
        Ok(Worker { tasks: Some(tasks), thread: Some(thread), dir })
    }

    /// Runs `f` on the connection thread and returns its result.
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let task: Task = Box::new(move |conn| {
            // The caller may have stopped waiting (its future was dropped); the work is done anyway.
            let _ = reply.send(f(conn));
        });
        self.tasks
            .as_ref()
            .expect("the sender lives until drop")
            .send(task)
            .map_err(|_| StoreError::Stopped("the SQLite thread has stopped"))?;
        let result = answer.await.map_err(|_| StoreError::Stopped("a SQLite operation panicked"))?;
        result.map_err(|e| self.locate(e))
    }

    /// Says where a full disk is: the database's directory.
    pub(super) fn locate(&self, e: StoreError) -> StoreError {
        locate(e, self.dir.as_deref())
    }
}

/// Runs one task. A bug in one closure must not take the store down with it: an open
/// transaction was rolled back when its guard unwound; the caller sees its reply channel close.
fn run(task: Task, conn: &mut Connection) {
    if catch_unwind(AssertUnwindSafe(|| task(conn))).is_err() {
        tracing::error!("a SQLite store operation panicked; the store carries on");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once the queue is drained.
        drop(self.tasks.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
