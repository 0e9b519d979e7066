//! Moves WAL checkpoints off the write path. SQLite's automatic checkpoint runs inside the commit
//! that crosses its threshold, so a large fire batch would also pay for copying the previous
//! batches into the database file. A thread with its own connection runs a `PASSIVE` checkpoint
//! every [`INTERVAL`] instead: it never waits for the writer and runs on another core.
//!
//! The writer keeps an automatic checkpoint at a high threshold as a safety valve, for a store so
//! busy that a passive checkpoint never catches up.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

use super::codec::Context;
use crate::{Result, StoreError};

/// How often the checkpointer runs.
pub(super) const INTERVAL: Duration = Duration::from_millis(200);

/// WAL pages (4 KiB each) after which the writer checkpoints itself: the safety valve.
pub(super) const WRITER_THRESHOLD_PAGES: i64 = 64 * 1024;

/// The background checkpointer. Dropping it stops and joins the thread, which closes its connection.
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (already in WAL mode).
    pub(super) fn spawn(path: &Path) -> Result<Checkpointer> {
        let conn = Connection::open(path).ctx("opening the checkpoint connection")?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tug-sqlite-ckpt".into())
            .spawn(move || {
                // A full disk fails every round: said once per interval, not five times a second.
                let mut failures = super::throttle::Throttle::default();
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    // Columns: busy flag, frames in the WAL, frames copied into the database.
                    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    match result {
                        Ok((frames, copied)) => {
                            if failures.ok() {
                                tracing::warn!("checkpointing the WAL works again");
                            }
                            if frames > 0 {
                                tracing::trace!(frames, copied, "checkpointed the WAL");
                            }
                        }
                        Err(e) => {
                            if let Some(unlogged) = failures.failed() {
                                tracing::warn!(error = %e, failed_since_last_report = unlogged, "checkpointing the WAL failed; will retry");
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Backend { what: "starting the SQLite checkpoint thread".into(), source: Arc::new(e) })?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
