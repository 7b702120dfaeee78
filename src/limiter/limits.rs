//! Validated per-client limits.
//!
//! A [`Limits`] value can only be built through [`Limits::new`] (a rate in
//! tokens per second), [`Limits::with_rate`] (a [`Rate`] such as
//! `1000/day`) or [`Limits::from_parts`] (whichever of the two was
//! given), which reject anything the bucket arithmetic cannot honour
//! exactly, so every other part of tollgate may assume the limits it
//! holds are sane.

use std::num::NonZeroU32;
use std::time::Duration;

use super::rate::{Rate, RateError};
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
    /// Rate that is NaN or infinite.
    #[error("rate_per_sec must be a finite number >= 0 (got {0})")]
    InvalidRate(f64),
    /// Rate with a minus sign, `-0` included: every place a rate is
    /// written refuses it the same way (see [`check_rate_per_sec`]).
    #[error("rate_per_sec must not be negative (got {0}); 0 is a rate that never refills")]
    NegativeRate(f64),
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
    /// Both `rate_per_sec` and `rate` were given.
    #[error("rate_per_sec and rate are both given: give one of the two")]
    BothRates,
    /// `rate` is not a rate (a value read back from storage; a config or
    /// an admin request is refused while it is parsed).
    #[error("rate: {0}")]
    BadRate(#[source] RateError),
    /// Neither `rate_per_sec` nor `rate` was given.
    #[error(
        "a refill rate is required: rate_per_sec (tokens per second) or \
         rate (N/s, N/min, N/hour or N/day)"
    )]
    NoRate,
}

/// Capacity (maximum burst) and refill rate of one token bucket.
///
/// `rate_per_sec` may be fractional (`0.5` is one token every two seconds)
/// or zero (a fixed allowance that never refills). Limits built from a
/// [`Rate`] keep it, so it can be shown and stored as it was written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    capacity: NonZeroU32,
    rate_per_sec: f64,
    /// The rate as written, when it was given as `N/unit`.
    rate: Option<Rate>,
    /// Refill-clock units (1/16 ns) per token, rounded up so that rounding
    /// can only ever admit less, never more; 0 when the rate is zero.
    emission: u64,
}

impl Limits {
    /// Validates and builds limits from a rate in tokens per second.
    pub fn new(capacity: u64, rate_per_sec: f64) -> Result<Self, LimitsError> {
        let capacity = valid_capacity(capacity)?;
        let cap = capacity.get();
        let rate_per_sec = check_rate_per_sec(rate_per_sec)?;
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
            rate: None,
            emission,
        })
    }

    /// Validates and builds limits from a rate of `N/unit`. The emission
    /// interval is `unit / N`, computed in integers and rounded up once,
    /// so `1000/day` is exactly 86.4 s a token: no rounding of `N / unit`
    /// to a binary fraction comes in between.
    pub fn with_rate(capacity: u64, rate: Rate) -> Result<Self, LimitsError> {
        let capacity = valid_capacity(capacity)?;
        let cap = capacity.get();
        let count = u128::from(rate.count());
        let unit_secs = u128::from(rate.unit().seconds());
        let emission = if count == 0 {
            0
        } else {
            // fill time = cap · unit / count seconds.
            if u128::from(cap) * unit_secs > u128::from(MAX_FILL_SECS) * count {
                return Err(LimitsError::FillTooSlow {
                    capacity: cap,
                    rate: rate.per_sec(),
                });
            }
            // `Rate` allows at most one token per nanosecond, so this is at
            // least 16 units; at most a day (1.4e15 units) per token.
            let units = (u128::from(UNITS_PER_SEC) * unit_secs).div_ceil(count);
            u64::try_from(units).unwrap_or(u64::MAX)
        };
        Ok(Self {
            capacity,
            rate_per_sec: rate.per_sec(),
            rate: Some(rate),
            emission,
        })
    }

    /// Limits from whichever rate was given: exactly one of
    /// `rate_per_sec` and `rate` (config sections and admin API bodies
    /// accept either).
    pub fn from_parts(
        capacity: u64,
        rate_per_sec: Option<f64>,
        rate: Option<Rate>,
    ) -> Result<Self, LimitsError> {
        match (rate_per_sec, rate) {
            (Some(per_sec), None) => Self::new(capacity, per_sec),
            (None, Some(rate)) => Self::with_rate(capacity, rate),
            (Some(_), Some(_)) => Err(LimitsError::BothRates),
            (None, None) => Err(LimitsError::NoRate),
        }
    }

    /// Maximum burst, in tokens.
    pub fn capacity(&self) -> u32 {
        self.capacity.get()
    }

    /// Refill speed, in tokens per second (derived from [`Limits::rate`]
    /// when that was given, so only as exact as an `f64`).
    pub fn rate_per_sec(&self) -> f64 {
        self.rate_per_sec
    }

    /// The rate as written (`1000/day`), if the limits were given that way.
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Time to refill an empty bucket; `None` when the rate is zero.
    pub fn fill_time(&self) -> Option<Duration> {
        fill_time(self.capacity(), self.emission)
    }

    pub(crate) fn emission(&self) -> u64 {
        self.emission
    }
}

/// The one judge of a `rate_per_sec`, wherever it was written (config,
/// admin API body, command line, a client table row): finite, at most
/// [`MAX_RATE_PER_SEC`], and without a minus sign. `-0.0` compares equal
/// to `0.0`, so a plain `< 0.0` let it through here while other checks
/// refused it; the sign bit is what is tested.
pub fn check_rate_per_sec(rate_per_sec: f64) -> Result<f64, LimitsError> {
    if !rate_per_sec.is_finite() {
        return Err(LimitsError::InvalidRate(rate_per_sec));
    }
    if rate_per_sec.is_sign_negative() {
        return Err(LimitsError::NegativeRate(rate_per_sec));
    }
    if rate_per_sec > MAX_RATE_PER_SEC {
        return Err(LimitsError::RateTooLarge(rate_per_sec));
    }
    Ok(rate_per_sec)
}

fn valid_capacity(capacity: u64) -> Result<NonZeroU32, LimitsError> {
    let cap =
        u32::try_from(capacity).map_err(|_| LimitsError::CapacityTooLarge { got: capacity })?;
    NonZeroU32::new(cap).ok_or(LimitsError::ZeroCapacity(capacity))
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
            Err(LimitsError::NegativeRate(_))
        ));
        let zero = Limits::new(1, -0.0).expect_err("-0 is negative");
        assert!(matches!(zero, LimitsError::NegativeRate(_)));
        assert!(zero.to_string().contains("got -0"), "{zero}");
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

    fn rate(s: &str) -> Rate {
        s.parse().expect("valid rate")
    }

    #[test]
    fn a_rate_per_unit_is_exact() {
        let day = Limits::with_rate(1000, rate("1000/day")).expect("valid");
        // 86.4 s a token, in units of 1/16 ns.
        assert_eq!(day.emission(), 86_400 * UNITS_PER_SEC / 1000);
        assert_eq!(day.fill_time(), Some(Duration::from_secs(86_400)));
        assert_eq!(
            day.rate().map(|r| r.to_string()).as_deref(),
            Some("1000/day")
        );
        assert_eq!(day.capacity(), 1000);
        // Rounded up where unit / N is not a whole number of units.
        let seven = Limits::with_rate(1, rate("7/day")).expect("valid");
        assert_eq!(seven.emission(), (86_400 * UNITS_PER_SEC).div_ceil(7));
        // 0/unit is a fixed allowance, like rate_per_sec: 0.
        let fixed = Limits::with_rate(5, rate("0/day")).expect("valid");
        assert_eq!(fixed.fill_time(), None);
        assert_eq!(fixed.rate_per_sec(), 0.0);
        assert!(matches!(
            Limits::with_rate(u64::from(u32::MAX), rate("1/day")),
            Err(LimitsError::FillTooSlow { .. })
        ));
        assert_eq!(
            Limits::with_rate(0, rate("1/s")),
            Err(LimitsError::ZeroCapacity(0))
        );
    }

    #[test]
    fn exactly_one_rate_is_given() {
        assert_eq!(
            Limits::from_parts(1, Some(1.0), Some(rate("1/s"))),
            Err(LimitsError::BothRates)
        );
        assert_eq!(Limits::from_parts(1, None, None), Err(LimitsError::NoRate));
        assert_eq!(Limits::from_parts(1, Some(2.0), None), Limits::new(1, 2.0));
        assert_eq!(
            Limits::from_parts(1, None, Some(rate("2/s"))),
            Limits::with_rate(1, rate("2/s"))
        );
    }

    #[test]
    fn emission_rounds_towards_admitting_less() {
        let l = Limits::new(1, 3.0).expect("valid");
        // 16e9 / 3 = 5_333_333_333.33.. units per token
        assert_eq!(l.emission(), 5_333_333_334);
    }
}
