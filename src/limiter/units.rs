//! The refill clock's unit of time, shared by buckets and limits.
//!
//! Buckets count time in units of 1/16 ns so that the interval between two
//! tokens (`emission`) is an integer with negligible rounding; limits are
//! converted to that unit once, when they are built. Both sides need the
//! same conversions, so they live here rather than in either of them.

use std::time::Duration;

/// Refill-clock units per second (1/16 ns each): fine enough that rounding
/// `e` up costs under 0.01 % of the rate even at a million tokens per
/// second, coarse enough for 36 years of uptime in 64 bits.
pub(crate) const UNITS_PER_SEC: u64 = 16_000_000_000;
const UNITS_PER_NANO: u64 = UNITS_PER_SEC / 1_000_000_000;

/// `d` in units, saturating.
pub(crate) fn units(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().saturating_mul(u128::from(UNITS_PER_NANO))).unwrap_or(u64::MAX)
}

/// `units` as a duration, rounded up to whole nanoseconds.
pub(crate) fn duration(units: u64) -> Duration {
    Duration::from_nanos(units.div_ceil(UNITS_PER_NANO))
}

/// Time to fill from empty: `capacity` tokens `emission` units apart;
/// `None` at zero rate.
pub(crate) fn fill_time(capacity: u32, emission: u64) -> Option<Duration> {
    if emission == 0 {
        return None;
    }
    let units = u128::from(capacity) * u128::from(emission);
    let nanos = units.div_ceil(u128::from(UNITS_PER_NANO));
    Some(Duration::from_nanos(
        u64::try_from(nanos).unwrap_or(u64::MAX),
    ))
}
