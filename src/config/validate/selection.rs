//! How a pool chooses among its backends: `hash_key` and
//! `hash_balance_factor` only with `strategy: hash`, a usable sticky
//! cookie, a bounded slow start. Limits, queue and discovery are checked in
//! `traffic.rs`.

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::schema::Config;
    use crate::routing::traffic::{HashKey, StickySpec};

    fn pool(keys: &str) -> String {
        format!("pools:\n  api:\n    backends: [{{url: http://127.0.0.1:9001}}]\n{keys}routes:\n  - {{name: all, pool: api}}\n")
    }

    fn problems(keys: &str) -> Vec<String> {
        match Config::parse(&pool(keys)) {
            Ok(_) => Vec::new(),
            Err(p) => p.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn traffic_keys_resolve_and_their_problems_name_the_field() {
        let c = Config::parse(&pool(
            "    strategy: hash\n    hash_key: header:X-User\n    hash_balance_factor: 125\n    sticky: {cookie: tg_api, ttl: 30m, secret: 0123456789abcdef}\n    slow_start: 30s\n",
        ))
        .unwrap_or_else(|p| panic!("{p:?}"));
        let spec = c
            .pool_specs()
            .into_iter()
            .find(|s| s.name == "api")
            .expect("api");
        let t = &spec.traffic;
        assert_eq!(t.hash_key, HashKey::parse("header:x-user").expect("key"));
        assert_eq!(t.hash_balance_factor, 125);
        assert_eq!(
            t.sticky,
            Some(StickySpec {
                cookie: "tg_api".into(),
                ttl: Duration::from_secs(1800),
                secret: Some("0123456789abcdef".into()),
            })
        );
        assert_eq!(t.slow_start, Duration::from_secs(30));
        // Absent: today's behaviour.
        let plain = Config::parse(&pool("")).expect("valid");
        let spec = plain
            .pool_specs()
            .into_iter()
            .find(|s| s.name == "api")
            .expect("api");
        assert_eq!(spec.traffic, Default::default());

        let cases = [
            (
                "    hash_key: ip\n",
                "pools.api.hash_key: only strategy: hash",
            ),
            (
                "    strategy: hash\n    hash_key: host\n",
                "pools.api.hash_key: \"host\": use client",
            ),
            (
                "    strategy: hash\n    hash_key: \"header:a b\"\n",
                "pools.api.hash_key: \"a b\" is not a header name",
            ),
            (
                "    strategy: hash\n    hash_balance_factor: 99\n",
                "pools.api.hash_balance_factor: 99: 0 (no bound)",
            ),
            (
                "    hash_balance_factor: 125\n",
                "pools.api.hash_balance_factor: only strategy: hash",
            ),
            (
                "    sticky: {cookie: \"a;b\"}\n",
                "pools.api.sticky.cookie: \"a;b\" is not a cookie name",
            ),
            (
                "    sticky: {cookie: tg, ttl: 500ms}\n",
                "pools.api.sticky.ttl: must be at least 1s",
            ),
            (
                "    sticky: {cookie: tg, secret: short}\n",
                "pools.api.sticky.secret: at least 16",
            ),
            (
                "    sticky: {cookie: tg, ttl: 1h, extra: 1}\n",
                "pools.api.sticky",
            ),
            ("    slow_start: 2h\n", "pools.api.slow_start: at most 1h"),
        ];
        for (keys, want) in cases {
            let got = problems(keys);
            assert!(got.iter().any(|p| p.starts_with(want)), "{keys}: {got:?}");
        }
    }
}
