//! The clock the server's rate limits run on: real monotonic time that a test can move forward.
//!
//! [`Clock::advance`] adds to every copy of a clock at once, so a test that holds the server's
//! clock ([`crate::server::Application::clock`]) can let a rate limit refill in an instant
//! instead of sleeping for its `Retry-After`. The server itself never advances it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Monotonic time since the clock was made, plus whatever was skipped with [`Clock::advance`].
/// Cloning gives another handle on the same clock.
#[derive(Debug, Clone)]
pub struct Clock {
    origin: Instant,
    /// Nanoseconds skipped, shared by every copy.
    skipped: Arc<AtomicU64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            skipped: Arc::default(),
        }
    }
}

impl Clock {
    /// Time since the clock was made, skips included.
    pub fn elapsed(&self) -> Duration {
        self.origin.elapsed() + Duration::from_nanos(self.skipped.load(Ordering::Acquire))
    }

    /// Moves this clock, and every copy of it, forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.skipped.fetch_add(nanos, Ordering::AcqRel);
    }
}

impl governor::clock::Clock for Clock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_copy() {
        let clock = Clock::default();
        let copy = clock.clone();
        let before = copy.elapsed();
        clock.advance(Duration::from_secs(60));
        assert!(copy.elapsed() >= before + Duration::from_secs(60));
    }
}
