//! A pool's traffic-control keys: `hash_key` and `hash_balance_factor`
//! only with `strategy: hash`, a usable sticky cookie, a bounded slow
//! start.

use std::time::Duration;

use super::Add;
use crate::balancer::StrategyName;
use crate::config::schema::PoolConfig;
use crate::routing::traffic::{is_cookie_name, HashKey};

/// Largest `hash_balance_factor`: 10x the mean is no bound any more.
const MAX_BALANCE_FACTOR: u32 = 1000;

/// Longest `slow_start`: a ramp is minutes, not hours.
const MAX_SLOW_START: Duration = Duration::from_secs(3600);

/// Shortest `sticky.secret`, in bytes.
const MIN_SECRET: usize = 16;

/// Checks `pool` (at `at`), whose strategy is `strategy`.
pub(super) fn check(pool: &PoolConfig, strategy: StrategyName, at: &str, add: &mut Add<'_>) {
    let hashing = strategy == StrategyName::Hash;
    if let Some(key) = &pool.hash_key {
        if !hashing {
            add(
                &format!("{at}.hash_key"),
                "only strategy: hash uses a hash key".into(),
            );
        }
        if let Err(e) = HashKey::parse(key) {
            add(&format!("{at}.hash_key"), e);
        }
    }
    if let Some(f) = pool.hash_balance_factor {
        if !hashing {
            add(
                &format!("{at}.hash_balance_factor"),
                "only strategy: hash has a balance factor".into(),
            );
        }
        if f != 0 && !(100..=MAX_BALANCE_FACTOR).contains(&f) {
            add(
                &format!("{at}.hash_balance_factor"),
                format!(
                    "{f}: 0 (no bound) or a percent of the mean load from 100 to {MAX_BALANCE_FACTOR} (e.g. 125)"
                ),
            );
        }
    }
    if let Some(s) = &pool.sticky {
        if !is_cookie_name(&s.cookie) {
            add(
                &format!("{at}.sticky.cookie"),
                format!("{:?} is not a cookie name", s.cookie),
            );
        }
        if s.ttl.as_secs() == 0 {
            add(
                &format!("{at}.sticky.ttl"),
                "must be at least 1s (it is the cookie's Max-Age)".into(),
            );
        }
        if s.secret.as_ref().is_some_and(|k| k.len() < MIN_SECRET) {
            add(
                &format!("{at}.sticky.secret"),
                format!("at least {MIN_SECRET} characters"),
            );
        }
    }
    if pool.slow_start.is_some_and(|d| d > MAX_SLOW_START) {
        add(&format!("{at}.slow_start"), "at most 1h".into());
    }
}
