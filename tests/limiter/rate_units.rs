//! Rates written `N/unit` are honoured exactly: a daily quota neither
//! gains nor loses a token over days of simulated time.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tollgate::limiter::{ClientKey, FakeClock, Limits, Rate, Registry, RegistryConfig};

use crate::support::{tick, TICK};

fn rate(s: &str) -> Rate {
    s.parse().expect("valid rate")
}

/// A registry on a fake clock whose default limits are `capacity` at `rate`.
fn registry(capacity: u64, rate: Rate) -> (Registry, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::new());
    let config = RegistryConfig {
        default_limits: Limits::with_rate(capacity, rate).expect("valid limits"),
        max_clients: NonZeroUsize::new(16).expect("nonzero"),
        idle_timeout: Duration::from_secs(600),
        refill_interval: TICK,
    };
    (Registry::with_clock(config, clock.clone()), clock)
}

/// Takes every token there is, as a client sending as fast as it is
/// allowed would; returns how many.
fn spend_all(registry: &Registry, key: &ClientKey) -> u64 {
    let mut taken = 0;
    while registry.check(key).expect("room").allowed() {
        taken += 1;
    }
    taken
}

/// 1000/day is one token every 86.4 s: the k-th refill token arrives at
/// exactly k · 86.4 s. A client spending as fast as allowed, checking at
/// every one-second tick, has its capacity at once and then the 1000th
/// token of each day at the tick that ends the day, not a tick later
/// (which a rate rounded towards fewer tokens would give) and not one
/// token more before it.
#[test]
fn a_daily_quota_gives_exactly_capacity_plus_one_day_per_day() {
    let (reg, clock) = registry(1000, rate("1000/day"));
    let key = ClientKey::api("daily").expect("key");
    let mut taken = spend_all(&reg, &key);
    assert_eq!(taken, 1000, "the full bucket at the start");
    for day in 1..=2u64 {
        for _ in 0..86_399 {
            tick(&reg, &clock, Duration::from_secs(1));
            taken += spend_all(&reg, &key);
        }
        // One second before the day ends: its 1000th token is not there.
        assert_eq!(
            taken,
            1000 + day * 1000 - 1,
            "1 s before the end of day {day}"
        );
        tick(&reg, &clock, Duration::from_secs(1));
        taken += spend_all(&reg, &key);
        assert_eq!(taken, 1000 + day * 1000, "at the end of day {day}");
    }
}

/// A rate whose emission interval is a whole number of refill-clock units
/// (1953125/hour: 29,491,200 units of 1/16 ns) but which an `f64`
/// `rate_per_sec` does not hold exactly: computed through the `f64`, the
/// interval rounds up to 29,491,201 units, and an empty bucket of one
/// hour's capacity is one token short after an hour. Computed from the
/// integers, it is full.
#[test]
fn a_rate_an_f64_would_round_keeps_every_token() {
    let hourly = rate("1953125/hour");
    let (reg, clock) = registry(1_953_125, hourly);
    let key = ClientKey::api("hourly").expect("key");
    reg.set_tokens(&key, 0.0).expect("room");
    tick(
        &reg,
        &clock,
        Duration::from_secs(3600) - Duration::from_nanos(1),
    );
    assert_eq!(spend_all(&reg, &key), 1_953_124, "1 ns before the hour");
    let (reg, clock) = registry(1_953_125, hourly);
    reg.set_tokens(&key, 0.0).expect("room");
    tick(&reg, &clock, Duration::from_secs(3600));
    assert_eq!(reg.tokens(&key), Some(1_953_125.0));
    assert_eq!(spend_all(&reg, &key), 1_953_125, "after exactly one hour");
}

/// Limits given as a rate and as the same rate per second admit the
/// same, where the per-second figure is exact (`30/min` = 0.5/s).
#[test]
fn a_rate_and_its_exact_rate_per_sec_agree() {
    let (a, clock_a) = registry(3, rate("30/min"));
    let (b, clock_b) = registry(3, rate("1/s"));
    b.set_default_limits(Limits::new(3, 0.5).expect("valid"));
    let key = ClientKey::api("k").expect("key");
    let (mut ta, mut tb) = (0, 0);
    for _ in 0..600 {
        ta += spend_all(&a, &key);
        tb += spend_all(&b, &key);
        tick(&a, &clock_a, TICK);
        tick(&b, &clock_b, TICK);
    }
    // 3 at once, then one every 2 s until the last check at 59.9 s.
    assert_eq!((ta, tb), (32, 32));
}
