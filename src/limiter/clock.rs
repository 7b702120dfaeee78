//! Time sources for the refill clock.
//!
//! The limiter never reads time on the request path: only the refill tick
//! asks a [`Clock`] how much time has passed. Tests swap in a [`FakeClock`]
//! and move time by hand; production uses [`MonotonicClock`], which is
//! tokio's clock, so paused-time tokio tests drive it too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic source of elapsed time since an arbitrary origin.
pub trait Clock: Send + Sync + 'static {
    /// Time elapsed since this clock's origin. Never decreases.
    fn elapsed(&self) -> Duration;
}

/// The process's monotonic clock (tokio's, so it follows paused test time).
#[derive(Debug)]
pub struct MonotonicClock {
    origin: tokio::time::Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct FakeClock {
    nanos: AtomicU64,
}

impl FakeClock {
    /// A fake clock at its origin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn elapsed(&self) -> Duration {
        (**self).elapsed()
    }
}
