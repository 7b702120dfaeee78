//! Registries on a fake clock, for the tests of the limiter engine.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tollgate::limiter::{FakeClock, Limits, Registry, RegistryConfig};

/// Default refill tick used by limiter tests.
pub const TICK: Duration = Duration::from_millis(100);

/// A registry on a fake clock with the given default limits.
pub fn registry(capacity: u64, rate: f64) -> (Registry, Arc<FakeClock>) {
    registry_with(capacity, rate, 1_000_000, Duration::from_secs(600))
}

/// A registry on a fake clock with everything chosen by the caller.
pub fn registry_with(
    capacity: u64,
    rate: f64,
    max_clients: usize,
    idle_timeout: Duration,
) -> (Registry, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::new());
    let config = RegistryConfig {
        default_limits: Limits::new(capacity, rate).expect("test limits are valid"),
        max_clients: NonZeroUsize::new(max_clients).expect("max_clients > 0"),
        idle_timeout,
        refill_interval: TICK,
    };
    (Registry::with_clock(config, clock.clone()), clock)
}

/// Moves the fake clock by `by` and runs one refill tick.
pub fn tick(registry: &Registry, clock: &FakeClock, by: Duration) {
    clock.advance(by);
    registry.refill();
}
