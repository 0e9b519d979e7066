//! The one source of wall-clock time. The scheduler never calls `Timestamp::now()` itself, so
//! tests can run hours of schedule in milliseconds with tokio's paused time.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use tokio::time::Instant;

/// Reads the current instant.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now(&self) -> Timestamp;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Wall time that advances with tokio's clock: `start + (Instant::now() - anchor)`. Under
/// `tokio::time::pause()` it stands still until the test advances it.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start: Timestamp,
    anchor: Instant,
}

impl TokioClock {
    /// A clock that reads `start` now.
    pub fn starting_at(start: Timestamp) -> TokioClock {
        TokioClock { start, anchor: Instant::now() }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        let elapsed = SignedDuration::try_from(Instant::now() - self.anchor).unwrap_or(SignedDuration::MAX);
        self.start.saturating_add(elapsed).unwrap_or(Timestamp::MAX)
    }
}

/// The tokio instant at which `clock` will read `at` (now, if `at` has passed).
pub fn instant_at(clock: &dyn Clock, at: Timestamp) -> Instant {
    let wait = at.duration_since(clock.now());
    let now = Instant::now();
    match std::time::Duration::try_from(wait) {
        Ok(d) => now + d,
        Err(_) => now,
    }
}
