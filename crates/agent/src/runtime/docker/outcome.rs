//! How docker attempts end, in the same words the process runtime uses, and the run log helpers
//! every path shares.

use std::time::Duration;

use tug_core::protocol::{KillReason, Launch};
use tug_core::run::RunState;
use tug_logs::LogWriter;

pub(crate) use crate::runtime::ending::{Stop, signal_name, why_stopped};
use crate::runtime::ending::stopped;
use crate::runtime::Outcome;

/// The outcome of a run that ended with `code`/`signal`, stopped or not.
pub(crate) fn ended(
    code: Option<i32>,
    signal: Option<i32>,
    oom: bool,
    mem: Option<u64>,
    stop: Option<Stop>,
    launch: &Launch,
    grace: Duration,
) -> Outcome {
    let (state, reason) = match (stop, code, signal) {
        _ if oom => (
            RunState::Failed,
            Some(match mem {
                Some(m) => format!("OOM-killed: the run exceeded its memory limit of {}", tug_core::bytesize::ByteSize(m)),
                None => "OOM-killed: the container ran out of memory".to_string(),
            }),
        ),
        (Some(stop), _, _) => stopped(stop, launch, grace),
        (None, Some(0), _) => (RunState::Succeeded, None),
        (None, Some(c), _) => (RunState::Failed, Some(format!("exit code {c}"))),
        (None, None, Some(sig)) => (RunState::Failed, Some(format!("killed by signal {} ({sig})", signal_name(sig)))),
        (None, None, None) => (RunState::Failed, Some("ended without an exit status".into())),
    };
    Outcome { state, exit_code: code, signal, reason }
}

/// The run log, which may be absent (could not be opened, or stopped taking writes).
pub(crate) struct Log(pub Option<LogWriter>);

impl Log {
    /// Opens the run's log; on failure the run goes on and its output is discarded.
    pub async fn open(ctx_logs: &tug_logs::LogFiles, run_id: tug_core::run::RunId, limit: u64) -> Log {
        match ctx_logs.writer(run_id, limit).await {
            Ok(w) => Log(Some(w)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the run log; the command runs but its output is discarded");
                Log(None)
            }
        }
    }

    /// Appends output.
    pub async fn write(&mut self, chunk: &[u8]) {
        if let Some(w) = self.0.as_mut()
            && let Err(e) = w.write(chunk).await
        {
            tracing::warn!(error = %e, "cannot write the run log; further output is discarded");
            self.0 = None;
        }
    }

    /// Bytes in the log file (0 without a log).
    pub fn len(&self) -> u64 {
        self.0.as_ref().map_or(0, LogWriter::len)
    }

    /// Appends a line of Tugboat's own.
    pub async fn line(&mut self, text: &str) {
        if let Some(w) = self.0.as_mut()
            && let Err(e) = w.line(text).await
        {
            tracing::warn!(error = %e, "cannot write the run log; further output is discarded");
            self.0 = None;
        }
    }

    /// Notes why a stopped or failed run ended, closes the log and returns `outcome`.
    pub async fn finish(mut self, outcome: Outcome, note: bool) -> Outcome {
        if note && let Some(r) = &outcome.reason {
            self.line(r).await;
        }
        if let Some(w) = self.0
            && let Err(e) = w.finish().await
        {
            tracing::warn!(error = %e, "cannot finish the run log");
        }
        outcome
    }
}

/// Resolves when the kill watch holds a reason; pending forever if the sender is gone.
pub(crate) async fn kill_requested(kill: &mut tokio::sync::watch::Receiver<Option<KillReason>>) -> KillReason {
    loop {
        if let Some(r) = *kill.borrow_and_update() {
            return r;
        }
        if kill.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Sleeps until `at`, or forever when there is no deadline.
pub(crate) async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
