//! A runtime that starts nothing: the benchmark's stand-in for a process, so that what is
//! measured is the scheduler and the store. A job's run succeeds at once; a service replica's
//! runs until it is stopped, as a replica would.

use super::{Outcome, RunContext, Runtime};
use tug_core::run::RunState;

/// Succeeds every job run immediately; holds every replica until it is stopped.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRuntime;

#[async_trait::async_trait]
impl Runtime for NoopRuntime {
    fn name(&self) -> &'static str {
        "noop"
    }

    async fn run(&self, mut ctx: RunContext) -> Outcome {
        let _ = ctx.started.send(None);
        if tug_core::service::is_replica_run(ctx.launch.run_id) {
            let reason = ctx.kill.wait_for(|k| k.is_some()).await.ok().and_then(|k| *k);
            let state = reason.map_or(RunState::Killed, |r| r.final_state());
            return Outcome { state, exit_code: None, signal: None, reason: Some("stopped".into()) };
        }
        Outcome { state: RunState::Succeeded, exit_code: Some(0), signal: None, reason: None }
    }
}
