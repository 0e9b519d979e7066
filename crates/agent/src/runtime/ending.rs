//! How attempts end, in the same words for every runtime: the stop in progress, why it was asked
//! for, and the reason a stopped attempt records.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::time::Instant;
use tug_core::protocol::{KillReason, Launch};
use tug_core::run::RunState;

/// Why an attempt is being stopped, and how far the stopping has gone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stop {
    /// Why.
    pub reason: KillReason,
    /// When SIGKILL follows the SIGTERM.
    pub deadline: Instant,
    /// Whether SIGKILL was sent.
    pub sigkilled: bool,
}

/// Why a stop was asked for, in words.
pub(crate) fn why_stopped(reason: KillReason, launch: &Launch) -> String {
    match reason {
        KillReason::Requested => "killed on request".into(),
        KillReason::Replaced => "killed: replaced by a newer run".into(),
        KillReason::Shutdown => "killed: the agent is shutting down".into(),
        KillReason::Superseded => "killed: the server had given this attempt up as lost and moved on".into(),
        KillReason::Timeout => match launch.task.timeout {
            Some(t) => format!("timed out after {t}"),
            None => "timed out".into(),
        },
    }
}

/// The final state and reason of a stopped attempt: "timed out after 5s; stopped with SIGKILL
/// after 10s grace", or "killed on request (SIGTERM)".
pub(crate) fn stopped(stop: Stop, launch: &Launch, grace: Duration) -> (RunState, Option<String>) {
    let why = why_stopped(stop.reason, launch);
    let how = if stop.sigkilled {
        format!("{why}; stopped with SIGKILL after {} grace", tug_core::duration::Duration::from(grace))
    } else {
        format!("{why} (SIGTERM)")
    };
    (stop.reason.final_state(), Some(how))
}

/// "SIGSEGV" for 11; "signal 42" for numbers nix does not name.
pub(crate) fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}
