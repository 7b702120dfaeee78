//! A refill rate written as a whole number of tokens per unit of time:
//! `1000/day`, `30/min`.
//!
//! Quotas are usually stated this way, and `1000/day` as `rate_per_sec`
//! would be `0.011574074…`, which no decimal (nor `f64`) holds exactly.
//! Keeping the integer count and the unit lets the bucket compute its
//! emission interval with integer arithmetic (see `Limits::with_rate`),
//! and lets the config, the client table and the admin API show the rate
//! back the way the operator wrote it.
//!
//! [`Rate::from_str`] is the one parser of such text: the config, the
//! admin API's bodies, the command line and the rows read from the client
//! table all go through it, so `10 / s` or `-0/s` gets the same answer
//! (refused, with the same message) wherever it is written. A rate is a
//! token like a duration: no whitespace anywhere in it (YAML already
//! drops the blanks around a plain value), which is also what the
//! OpenAPI document's pattern says.

use std::fmt;
use std::str::FromStr;

/// Largest accepted rate: one token per nanosecond (as `rate_per_sec`).
const MAX_PER_SEC: u64 = 1_000_000_000;

/// The unit of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateUnit {
    /// `s`
    Second,
    /// `min`
    Minute,
    /// `hour`
    Hour,
    /// `day` (86,400 seconds: the refill clock knows no calendar).
    Day,
}

impl RateUnit {
    /// Its length in seconds.
    pub const fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
        }
    }

    /// How it is written after the `/`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Second => "s",
            Self::Minute => "min",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "s" => Self::Second,
            "min" => Self::Minute,
            "hour" => Self::Hour,
            "day" => Self::Day,
            _ => return None,
        })
    }
}

/// Why a string is not a rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Whitespace in or around it.
    #[error("{0:?}: a rate has no spaces in it: write N/unit, e.g. 1000/day")]
    Space(String),
    /// No `/`, or nothing on one side of it.
    #[error("{0:?} is not a rate: write N/unit, e.g. 1000/day (units: s, min, hour, day)")]
    Shape(String),
    /// The count is not a whole number.
    #[error(
        "{0:?}: the count must be a whole number >= 0 \
         (for a fractional rate write rate_per_sec instead)"
    )]
    Count(String),
    /// The unit is not one of the four.
    #[error("{rate:?}: unknown unit {unit:?} (units: s, min, hour, day)")]
    Unit {
        /// The rate as written.
        rate: String,
        /// The unit as written.
        unit: String,
    },
    /// More than one token per nanosecond.
    #[error("{0}: a rate must be at most {MAX_PER_SEC}/s")]
    TooLarge(Rate),
}

/// `count` tokens every `unit`; `0/…` is a rate of zero (a fixed
/// allowance that never refills), as `rate_per_sec: 0` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u64,
    unit: RateUnit,
}

impl Rate {
    /// `count` tokens per `unit`, at most one token per nanosecond.
    pub fn new(count: u64, unit: RateUnit) -> Result<Self, RateError> {
        let rate = Self { count, unit };
        if u128::from(count) > u128::from(MAX_PER_SEC) * u128::from(unit.seconds()) {
            return Err(RateError::TooLarge(rate));
        }
        Ok(rate)
    }

    /// Tokens per unit.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The unit.
    pub fn unit(&self) -> RateUnit {
        self.unit
    }

    /// Tokens per second, as near as an `f64` gets (for display and for
    /// the parts that work in `rate_per_sec`; the bucket does not use it).
    pub fn per_sec(&self) -> f64 {
        self.count as f64 / self.unit.seconds() as f64
    }
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, RateError> {
        let text = s;
        if text.chars().any(char::is_whitespace) {
            return Err(RateError::Space(text.to_owned()));
        }
        let (count, unit) = text
            .split_once('/')
            .filter(|(c, u)| !c.is_empty() && !u.is_empty())
            .ok_or_else(|| RateError::Shape(text.to_owned()))?;
        // `u64::from_str` takes a leading `+`; a count is digits only.
        let count = count
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| count.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| RateError::Count(text.to_owned()))?;
        let unit = RateUnit::parse(unit).ok_or_else(|| RateError::Unit {
            rate: text.to_owned(),
            unit: unit.to_owned(),
        })?;
        Self::new(count, unit)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.unit.as_str())
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate written N/unit, e.g. \"1000/day\" (units: s, min, hour, day)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Rate, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_units_and_writes_them_back() {
        for (text, count, secs) in [
            ("1000/day", 1000, 86_400),
            ("30/min", 30, 60),
            ("5/hour", 5, 3600),
            ("2/s", 2, 1),
            ("0/day", 0, 86_400),
        ] {
            let r: Rate = text.parse().expect(text);
            assert_eq!((r.count(), r.unit().seconds()), (count, secs));
            assert_eq!(r.to_string(), text);
        }
    }

    #[test]
    fn refuses_what_is_not_a_rate() {
        assert!(matches!("abc".parse::<Rate>(), Err(RateError::Shape(_))));
        assert!(matches!("/day".parse::<Rate>(), Err(RateError::Shape(_))));
        assert!(matches!("5/".parse::<Rate>(), Err(RateError::Shape(_))));
        assert!(matches!("1.5/s".parse::<Rate>(), Err(RateError::Count(_))));
        assert!(matches!("-1/s".parse::<Rate>(), Err(RateError::Count(_))));
        assert!(matches!("+1/s".parse::<Rate>(), Err(RateError::Count(_))));
        assert!(matches!("-0/s".parse::<Rate>(), Err(RateError::Count(_))));
        for spaced in ["10 / s", " 10/s", "10/s ", "10 /s", "10/\ts"] {
            let e = spaced.parse::<Rate>().expect_err(spaced);
            assert!(matches!(e, RateError::Space(_)), "{spaced:?}: {e}");
            assert!(e.to_string().contains("no spaces"), "{e}");
        }
        let week = "5/week".parse::<Rate>().expect_err("no weeks");
        assert!(matches!(&week, RateError::Unit { unit, .. } if unit == "week"));
        assert!(week.to_string().contains("s, min, hour, day"), "{week}");
        assert!(matches!(
            "1000000001/s".parse::<Rate>(),
            Err(RateError::TooLarge(_))
        ));
        assert!("86400000000000/day".parse::<Rate>().is_ok());
        assert!("86400000000001/day".parse::<Rate>().is_err());
    }
}
