//! The schema of how a pool chooses among its backends beyond the
//! strategy: `hash_key`, `hash_balance_factor`, `sticky` and `slow_start`
//! (the fields sit at the end of [`super::PoolConfig`]; their own types are
//! here). Limits, queue and discovery are in `traffic.rs`.

use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `pools.NAME.sticky`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// The cookie's name.
    pub cookie: String,
    /// How long the client keeps the cookie (default 1h).
    #[serde(deserialize_with = "duration", default = "default_ttl")]
    pub ttl: Duration,
    /// The key of the cookie's tokens, at least 16 characters, so replicas
    /// and restarts agree (default: a random key per process).
    #[serde(default)]
    pub secret: Option<String>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}
