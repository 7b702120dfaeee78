//! Validated per-client limits.
//!
//! A [`Limits`] value can only be built through [`Limits::new`], which
//! rejects anything the bucket arithmetic cannot honour exactly, so every
//! other part of tollgate may assume the limits it holds are sane.

use std::num::NonZeroU32;
use std::time::Duration;

use super::units::{fill_time, UNITS_PER_SEC};

/// Largest accepted `rate_per_sec`: one token per nanosecond.
pub const MAX_RATE_PER_SEC: f64 = 1e9;

/// Largest accepted time to fill an empty bucket (`capacity / rate_per_sec`),
/// about nine years. The refill clock is a 64-bit count of 1/16 ns, and a
/// bucket's deficit must fit beside the process uptime in it.
pub const MAX_FILL_SECS: u64 = (1u64 << 62) / UNITS_PER_SEC;

/// Why a pair of limits was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitsError {
    /// Capacity below one token: such a bucket could never admit anything.
    #[error("capacity must be an integer >= 1 (got {0})")]
    ZeroCapacity(u64),
    /// Capacity above `u32::MAX`.
    #[error("capacity must be at most {max} (got {got})", max = u32::MAX)]
    CapacityTooLarge {
        /// The refused capacity.
        got: u64,
    },
    /// Rate that is NaN, infinite or negative.
    #[error("rate_per_sec must be a finite number >= 0 (got {0})")]
    InvalidRate(f64),
    /// Rate above [`MAX_RATE_PER_SEC`].
    #[error("rate_per_sec must be at most {MAX_RATE_PER_SEC} (got {0})")]
    RateTooLarge(f64),
    /// `capacity / rate_per_sec` above [`MAX_FILL_SECS`].
    #[error(
        "capacity / rate_per_sec must be at most {MAX_FILL_SECS} seconds \
         (got capacity {capacity} at {rate} tokens/s)"
    )]
    FillTooSlow {
        /// The refused capacity.
        capacity: u32,
        /// The refused rate.
        rate: f64,
    },
}

/// Capacity (maximum burst) and refill rate of one token bucket.
///
/// `rate_per_sec` may be fractional (`0.5` is one token every two seconds)
/// or zero (a fixed allowance that never refills).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    capacity: NonZeroU32,
    rate_per_sec: f64,
    /// Refill-clock units (1/16 ns) per token, rounded up so that rounding
    /// can only ever admit less, never more; 0 when the rate is zero.
    emission: u64,
}

impl Limits {
    /// Validates and builds limits.
    pub fn new(capacity: u64, rate_per_sec: f64) -> Result<Self, LimitsError> {
        let cap =
            u32::try_from(capacity).map_err(|_| LimitsError::CapacityTooLarge { got: capacity })?;
        let capacity = NonZeroU32::new(cap).ok_or(LimitsError::ZeroCapacity(capacity))?;
        if !rate_per_sec.is_finite() || rate_per_sec < 0.0 {
            return Err(LimitsError::InvalidRate(rate_per_sec));
        }
        if rate_per_sec > MAX_RATE_PER_SEC {
            return Err(LimitsError::RateTooLarge(rate_per_sec));
        }
        let emission = if rate_per_sec == 0.0 {
            0
        } else {
            let fill_secs = f64::from(cap) / rate_per_sec;
            if fill_secs > MAX_FILL_SECS as f64 {
                return Err(LimitsError::FillTooSlow {
                    capacity: cap,
                    rate: rate_per_sec,
                });
            }
            // At most 1e9 tokens/s keeps this >= 16 units.
            ((UNITS_PER_SEC as f64) / rate_per_sec).ceil() as u64
        };
        Ok(Self {
            capacity,
            rate_per_sec,
            emission,
        })
    }

    /// Maximum burst, in tokens.
    pub fn capacity(&self) -> u32 {
        self.capacity.get()
    }

    /// Refill speed, in tokens per second.
    pub fn rate_per_sec(&self) -> f64 {
        self.rate_per_sec
    }

    /// Time to refill an empty bucket; `None` when the rate is zero.
    pub fn fill_time(&self) -> Option<Duration> {
        fill_time(self.capacity(), self.emission)
    }

    pub(crate) fn emission(&self) -> u64 {
        self.emission
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_cannot_be_honoured() {
        assert_eq!(Limits::new(0, 1.0), Err(LimitsError::ZeroCapacity(0)));
        assert!(matches!(
            Limits::new(u64::from(u32::MAX) + 1, 1.0),
            Err(LimitsError::CapacityTooLarge { .. })
        ));
        assert!(matches!(
            Limits::new(1, -0.1),
            Err(LimitsError::InvalidRate(_))
        ));
        assert!(matches!(
            Limits::new(1, f64::NAN),
            Err(LimitsError::InvalidRate(_))
        ));
        assert!(matches!(
            Limits::new(1, f64::INFINITY),
            Err(LimitsError::InvalidRate(_))
        ));
        assert!(matches!(
            Limits::new(1, 2e9),
            Err(LimitsError::RateTooLarge(_))
        ));
        assert!(matches!(
            Limits::new(1_000_000, 1e-6),
            Err(LimitsError::FillTooSlow { .. })
        ));
    }

    #[test]
    fn accepts_fractional_and_zero_rates() {
        let half = Limits::new(1, 0.5).expect("valid");
        assert_eq!(half.fill_time(), Some(Duration::from_secs(2)));
        let tiny = Limits::new(1, 0.001).expect("valid");
        assert_eq!(tiny.fill_time(), Some(Duration::from_secs(1000)));
        let fixed = Limits::new(5, 0.0).expect("valid");
        assert_eq!(fixed.fill_time(), None);
        assert_eq!(fixed.capacity(), 5);
    }

    #[test]
    fn emission_rounds_towards_admitting_less() {
        let l = Limits::new(1, 3.0).expect("valid");
        // 16e9 / 3 = 5_333_333_333.33.. units per token
        assert_eq!(l.emission(), 5_333_333_334);
    }
}
