//! The agent's side of its run logs, which stay in its data dir (`tug_logs`): it answers the
//! server's reads (`LogRequest` → `LogChunk`) and removals (`RemoveLogs`, sent when the server
//! prunes or deletes runs; idempotent).

use tug_logs::LogFiles;
use tug_proto::{LogChunk, LogRequest, RemoveLogs};

/// The most bytes one answer carries.
const MAX_CHUNK: usize = 1 << 20;

/// Up to `max` bytes of the run's log from `offset`, or its last `max` bytes for a tail read.
pub async fn answer(logs: &LogFiles, req: LogRequest) -> LogChunk {
    let max = (req.max as usize).min(MAX_CHUNK);
    let read = if req.tail {
        logs.tail(req.run_id, max).await
    } else {
        logs.read(req.run_id, req.offset, max).await.map(|data| (req.offset, data))
    };
    let chunk = LogChunk { request: req.request, ..LogChunk::default() };
    match read {
        Ok((offset, data)) => LogChunk { data, offset, ..chunk },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LogChunk { missing: true, ..chunk },
        Err(e) => LogChunk { error: format!("reading {}: {e}", logs.path(req.run_id).display()), ..chunk },
    }
}

/// Deletes the logs of runs the server no longer has; a log already gone is fine.
pub async fn remove(logs: &LogFiles, req: RemoveLogs) {
    // Failures are logged by `remove`; the age-based sweep tries again later.
    let _ = logs.remove(&req.run_ids).await;
}
