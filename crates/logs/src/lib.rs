//! Run logs as files: `<dir>/<run id>.log`, appended to by every attempt of a run, capped in size,
//! and read back by offset so the API can stream a run's output while it is still going.
//!
//! The agent that runs the work owns these files: it writes them and answers reads of them over
//! its stream. A server reads them directly only when it shares the agent's data dir. This crate
//! pulls in no database, so an agent does not link one for its logs.
//!
//! Every write reaches the file before it returns (no buffering in the writer): a follower polling
//! [`LogFiles::read`] sees output as soon as the process produced it. Callers batch naturally by
//! passing whole pipe reads.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};

use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tug_core::run::RunId;

/// The directory of run logs. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFiles {
    dir: PathBuf,
}

impl LogFiles {
    /// Logs under `dir`, which is created on the first write.
    pub fn new(dir: impl Into<PathBuf>) -> LogFiles {
        LogFiles { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file of a run: `<dir>/<run_id>.log`.
    pub fn path(&self, run_id: RunId) -> PathBuf {
        self.dir.join(format!("{run_id}.log"))
    }

    /// Opens a run's log for appending, creating it if needed, so each attempt of a run adds to
    /// the same file. The writer keeps at most `limit_bytes` of output in the file, counting what
    /// earlier attempts wrote; see [`LogWriter`].
    pub async fn writer(&self, run_id: RunId, limit_bytes: u64) -> io::Result<LogWriter> {
        // Readable by the agent's user only: a run's output may hold secrets from its env.
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir).await?;
        let path = self.path(run_id);
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path).await?;
        let len = file.metadata().await?.len();
        let at_line_start = len == 0 || last_byte(&path, len).await? == Some(b'\n');
        Ok(LogWriter { file: Some(file), limit: limit_bytes, len, dropped: 0, unreported: 0, at_line_start, full: 0 })
    }

    /// Up to `max` bytes of a run's log from byte `offset`; empty at or past the end. Fails with
    /// [`io::ErrorKind::NotFound`] when the run has no log (yet).
    pub async fn read(&self, run_id: RunId, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        let mut file = File::open(self.path(run_id)).await?;
        let len = file.metadata().await?.len();
        if offset >= len || max == 0 {
            return Ok(Vec::new());
        }
        file.seek(SeekFrom::Start(offset)).await?;
        let mut buf = Vec::with_capacity((len - offset).min(max as u64) as usize);
        // The file may grow while we read; `take` keeps the answer within `max`.
        file.take(max as u64).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    /// The last (up to) `max` bytes of a run's log, and the offset they start at; fails with
    /// [`io::ErrorKind::NotFound`] when the run has no log.
    pub async fn tail(&self, run_id: RunId, max: usize) -> io::Result<(u64, Vec<u8>)> {
        let from = self.len(run_id).await?.saturating_sub(max as u64);
        Ok((from, self.read(run_id, from, max).await?))
    }

    /// The size of a run's log in bytes; [`io::ErrorKind::NotFound`] when it has none.
    pub async fn len(&self, run_id: RunId) -> io::Result<u64> {
        Ok(fs::metadata(self.path(run_id)).await?.len())
    }

    /// Deletes the logs of these runs; a run without a log is fine. Tries every file and returns
    /// the first other error.
    pub async fn remove(&self, run_ids: &[RunId]) -> io::Result<()> {
        let mut first_error = None;
        for &id in run_ids {
            match fs::remove_file(self.path(id)).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(run = id, error = %e, "removing a run log failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the logs not written to for longer than `age` (by modification time); returns how
    /// many. For agents, whose logs outlive the run records the server prunes. A missing
    /// directory holds nothing to remove.
    pub async fn remove_older_than(&self, age: std::time::Duration) -> io::Result<usize> {
        let mut entries = match fs::read_dir(&self.dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let Ok(modified) = entry.metadata().await.and_then(|m| m.modified()) else { continue };
            if now.duration_since(modified).is_ok_and(|d| d > age) && fs::remove_file(&path).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The last byte of a file of length `len > 0`.
async fn last_byte(path: &Path, len: u64) -> io::Result<Option<u8>> {
    let mut file = File::open(path).await?;
    file.seek(SeekFrom::Start(len - 1)).await?;
    let mut byte = [0u8; 1];
    Ok((file.read(&mut byte).await? == 1).then_some(byte[0]))
}

/// Appends one run's output to its log file, up to a size limit.
///
/// Output past the limit is dropped and counted. The count is reported in one marker line,
/// `[tug: log truncated at LIMIT bytes; N more bytes dropped]`, written by [`finish`](Self::finish)
/// or before the next [`line`](Self::line), so the log tells its story in order. The marker and
/// tug's own lines are written even past the limit (they are short), so a file can end a little
/// over it. Dropping a writer without `finish` still writes a pending marker, from a task on the
/// current tokio runtime, best effort.
#[derive(Debug)]
pub struct LogWriter {
    /// `None` once finished.
    file: Option<File>,
    limit: u64,
    /// Bytes in the file.
    len: u64,
    /// Output bytes dropped by this writer, in total.
    dropped: u64,
    /// Dropped bytes no marker has reported yet.
    unreported: u64,
    /// Whether the file ends with a newline (or is empty), so a marker or note starts a line.
    at_line_start: bool,
    /// Output bytes dropped because the disk was full (nothing more is written once it was).
    full: u64,
}

impl LogWriter {
    /// Appends process output, keeping what fits under the limit and counting the rest. The kept
    /// bytes are in the file when this returns.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let room = self.limit.saturating_sub(self.len);
        let keep = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        let (kept, rest) = bytes.split_at(keep);
        self.dropped += rest.len() as u64;
        self.unreported += rest.len() as u64;
        if !kept.is_empty() {
            self.put(kept).await?;
        }
        Ok(())
    }

    /// Appends one of tug's own notes ("--- attempt 2 ---") on a line of its own, after the marker
    /// for any output dropped so far. Notes are written even past the limit.
    pub async fn line(&mut self, text: &str) -> io::Result<()> {
        self.report_dropped().await?;
        let mut buf = Vec::with_capacity(text.len() + 2);
        if !self.at_line_start {
            buf.push(b'\n');
        }
        buf.extend_from_slice(text.trim_end_matches('\n').as_bytes());
        buf.push(b'\n');
        self.put(&buf).await
    }

    /// Waits until everything written has reached the file. Writes are already flushed one by one;
    /// this also surfaces a late error from the file.
    pub async fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush().await,
            None => Ok(()),
        }
    }

    /// Writes the truncation marker if output was dropped, flushes and closes the file.
    pub async fn finish(mut self) -> io::Result<()> {
        self.report_dropped().await?;
        if self.full > 0 {
            // Best effort: the disk may still be full.
            let lead = if self.at_line_start { "" } else { "\n" };
            let marker = format!("{lead}[tug: the disk is full; {} bytes of output dropped]\n", self.full);
            self.full = 0;
            if let Some(file) = self.file.as_mut() {
                let _ = file.write_all(marker.as_bytes()).await;
                let _ = file.flush().await;
            }
        }
        self.flush().await.or_else(ignore_full)?;
        self.file = None;
        Ok(())
    }

    /// The size of the file, in bytes, as this writer has written it.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Output bytes this writer dropped at the limit.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The marker for the bytes dropped since the last one, starting on a line of its own.
    fn marker(&self) -> Vec<u8> {
        let lead = if self.at_line_start { "" } else { "\n" };
        format!("{lead}[tug: log truncated at {} bytes; {} more bytes dropped]\n", self.limit, self.unreported)
            .into_bytes()
    }

    async fn report_dropped(&mut self) -> io::Result<()> {
        if self.unreported == 0 {
            return Ok(());
        }
        let marker = self.marker();
        self.unreported = 0;
        self.put(&marker).await
    }

    /// Appends `bytes`. On a full disk the run goes on: its output is dropped from then on,
    /// counted, and reported by a marker at [`finish`](Self::finish) if there is room by then.
    async fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.full > 0 {
            self.full += bytes.len() as u64;
            return Ok(());
        }
        let file = self.file.as_mut().ok_or_else(|| io::Error::other("log writer already finished"))?;
        // tokio's File completes writes in the background; flushing waits for this one.
        let written = async {
            file.write_all(bytes).await?;
            file.flush().await
        }
        .await;
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.at_line_start = bytes.last() == Some(&b'\n');
                Ok(())
            }
            Err(e) if is_full(&e) => {
                tracing::warn!(error = %e, "the disk holding run logs is full; dropping this run's further output");
                self.full = bytes.len() as u64;
                // Part of `bytes` may have reached the file: the marker starts a line of its own.
                self.at_line_start = false;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Output bytes dropped because the disk was full.
    pub fn dropped_full(&self) -> u64 {
        self.full
    }
}

/// True for the errors of a full disk (or quota).
fn is_full(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
}

fn ignore_full(e: io::Error) -> io::Result<()> {
    if is_full(&e) { Ok(()) } else { Err(e) }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if self.unreported == 0 {
            return;
        }
        let (Some(mut file), Ok(runtime)) = (self.file.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let marker = self.marker();
        runtime.spawn(async move {
            if let Err(e) = async {
                file.write_all(&marker).await?;
                file.flush().await
            }
            .await
            {
                tracing::warn!(error = %e, "writing a log truncation marker failed");
            }
        });
    }
}
