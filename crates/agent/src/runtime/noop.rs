//! A runtime that starts nothing and succeeds at once: the benchmark's stand-in for a process, so
//! that what is measured is the scheduler and the store.

use super::{Outcome, RunContext, Runtime};
use tug_core::run::RunState;

/// Succeeds every attempt immediately.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopRuntime;

#[async_trait::async_trait]
impl Runtime for NoopRuntime {
    fn name(&self) -> &'static str {
        "noop"
    }

    async fn run(&self, ctx: RunContext) -> Outcome {
        let _ = ctx.started.send(None);
        Outcome { state: RunState::Succeeded, exit_code: Some(0), signal: None, reason: None }
    }
}
