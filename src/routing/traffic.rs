//! A pool's traffic control as the request path uses it: what a hash
//! strategy hashes (`hash_key`), its load bound (`hash_balance_factor`),
//! sticky sessions (`sticky`) and slow start (`slow_start`), resolved
//! from the config, and the strategy object they imply.
//!
//! The balancing itself is in [`crate::balancer`] (`hash`, `sticky`,
//! `slow_start`, `least_time`); reading the key and the cookie off a
//! request is the proxy's (`proxy::affinity`).

use std::time::Duration;

use http::HeaderName;

use crate::balancer::{strategy_for, Hash, Sticky, Strategy, StrategyName};

/// What `strategy: hash` hashes (`hash_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HashKey {
    /// The client's identity as the rate limiter sees it: its API key, else
    /// its address (through trusted proxies).
    #[default]
    Client,
    /// The client's address (through trusted proxies).
    Ip,
    /// A request header's value (`header:NAME`).
    Header(HeaderName),
    /// A request cookie's value (`cookie:NAME`).
    Cookie(String),
    /// The normalized path, before any rewrite (no query).
    Path,
}

impl HashKey {
    /// Parses `client`, `ip`, `path`, `header:NAME` or `cookie:NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None => match s {
                "client" => Ok(Self::Client),
                "ip" => Ok(Self::Ip),
                "path" => Ok(Self::Path),
                _ => Err(format!(
                    "{s:?}: use client, ip, path, header:NAME or cookie:NAME"
                )),
            },
            Some(("header", name)) => HeaderName::try_from(name)
                .map(Self::Header)
                .map_err(|_| format!("{name:?} is not a header name")),
            Some(("cookie", name)) if is_cookie_name(name) => Ok(Self::Cookie(name.to_owned())),
            Some(("cookie", name)) => Err(format!("{name:?} is not a cookie name")),
            Some(_) => Err(format!(
                "{s:?}: use client, ip, path, header:NAME or cookie:NAME"
            )),
        }
    }
}

/// Whether `name` is a cookie name (an RFC 6265 token).
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `pools.NAME.sticky`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickySpec {
    /// The cookie's name.
    pub cookie: String,
    /// How long the client keeps it (`Max-Age`).
    pub ttl: Duration,
    /// The key of its tokens; `None`: this process's random one.
    pub secret: Option<String>,
}

/// A pool's traffic-control keys, resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrafficSpec {
    /// What `strategy: hash` hashes.
    pub hash_key: HashKey,
    /// `strategy: hash`: percent of the mean load a backend may carry
    /// (0: no bound).
    pub hash_balance_factor: u32,
    /// Sticky sessions, if on.
    pub sticky: Option<StickySpec>,
    /// Ramp-up of a backend that joins or returns (zero: none).
    pub slow_start: Duration,
}

impl TrafficSpec {
    /// The strategy object for `name` under these settings.
    pub fn strategy(&self, name: StrategyName) -> Box<dyn Strategy> {
        match name {
            StrategyName::Hash => Box::new(Hash::new(self.hash_balance_factor)),
            other => strategy_for(other),
        }
    }
}

/// What the request path needs of a pool's traffic control.
#[derive(Debug, Default)]
pub struct Traffic {
    /// What is hashed, when the strategy is `hash`.
    pub hash_key: Option<HashKey>,
    /// Its sticky-session cookie, if on.
    pub sticky: Option<Sticky>,
}

impl Traffic {
    /// For pool `pool` with strategy `strategy` and these settings.
    pub fn new(pool: &str, strategy: StrategyName, spec: &TrafficSpec) -> Self {
        Self {
            hash_key: (strategy == StrategyName::Hash).then(|| spec.hash_key.clone()),
            sticky: spec.sticky.as_ref().map(|s| {
                Sticky::new(
                    pool,
                    &s.cookie,
                    s.ttl,
                    s.secret.as_deref().map(str::as_bytes),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse() {
        assert_eq!(HashKey::parse("client"), Ok(HashKey::Client));
        assert_eq!(HashKey::parse("ip"), Ok(HashKey::Ip));
        assert_eq!(HashKey::parse("path"), Ok(HashKey::Path));
        assert_eq!(
            HashKey::parse("header:X-User"),
            Ok(HashKey::Header(HeaderName::from_static("x-user")))
        );
        assert_eq!(
            HashKey::parse("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        for bad in [
            "",
            "host",
            "header:",
            "header:a b",
            "cookie:",
            "cookie:a;b",
            "query:x",
        ] {
            assert!(HashKey::parse(bad).is_err(), "{bad}");
        }
    }
}
