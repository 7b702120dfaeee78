//! The schema of `pools` and `routes`: named backend pools with their own
//! strategy, health checks, timeouts and retries, and the routes that send
//! requests to them by host, path, method and header.
//!
//! A config without either keeps the top-level `backends`, `balancing` and
//! `health_check` as the pool `default`, and behaves as before they
//! existed.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use super::{duration, BackendConfig, PassiveConfig};
use crate::balancer::{Protocol, StrategyName};

pub use crate::routing::DEFAULT_POOL;

/// One of `pools`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Its backends, as the top-level list writes them.
    pub backends: Vec<BackendConfig>,
    /// How a backend is chosen (`balancing.strategy` when absent).
    pub strategy: Option<StrategyName>,
    /// Overrides of the top-level `health_check` keys.
    pub health_check: HealthCheckOverrides,
    /// Overrides of the top-level `proxy` timeouts.
    pub proxy: ProxyOverrides,
    /// Which failed attempts are tried again, and how often.
    pub retries: RetriesConfig,
    /// The HTTP version its backends are spoken to in (`proxy.protocol`
    /// when absent).
    pub protocol: Option<Protocol>,
    /// Requests in flight per backend at most (0: unlimited).
    pub max_connections: u32,
    /// Waiting for a free slot when every backend is at
    /// `max_connections`.
    pub queue: super::QueueConfig,
    /// Backends found in DNS instead of (or besides) `backends`.
    pub discovery: Option<super::DiscoveryConfig>,
    // Backend selection (schema/selection.rs).
    /// `strategy: hash`: what is hashed (`client` when absent).
    pub hash_key: Option<String>,
    /// `strategy: hash`: percent of the mean in-flight load a backend may
    /// carry (0 or absent: no bound).
    pub hash_balance_factor: Option<u32>,
    /// Pins a client to the backend that first answered it, by cookie.
    pub sticky: Option<super::StickyConfig>,
    /// A backend that joins or returns ramps up to its full share over
    /// this.
    #[serde(deserialize_with = "optional_duration")]
    pub slow_start: Option<Duration>,
}

/// `pools.NAME.health_check`: each key absent takes the top-level value.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckOverrides {
    /// Path requested on every backend of the pool.
    pub path: Option<String>,
    /// Time between two checks of a backend.
    #[serde(deserialize_with = "optional_duration")]
    pub interval: Option<Duration>,
    /// Time allowed for one check.
    #[serde(deserialize_with = "optional_duration")]
    pub timeout: Option<Duration>,
    /// Consecutive failures that take a backend out of the pool.
    pub unhealthy_threshold: Option<NonZeroU32>,
    /// Consecutive successes that bring it back.
    pub healthy_threshold: Option<NonZeroU32>,
    /// Outlier ejection on answers (a whole `passive` block).
    pub passive: Option<PassiveConfig>,
    /// Check with the gRPC health protocol instead of `GET path`.
    pub grpc: Option<bool>,
    /// The service named in the gRPC check.
    pub grpc_service: Option<String>,
}

/// `pools.NAME.proxy`: each key absent takes the top-level value.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyOverrides {
    /// Time allowed to open a connection to a backend of the pool.
    #[serde(deserialize_with = "optional_duration")]
    pub connect_timeout: Option<Duration>,
    /// Time allowed for a backend to answer with response headers.
    #[serde(deserialize_with = "optional_duration")]
    pub request_timeout: Option<Duration>,
    /// Longest pause in a response body from a backend.
    #[serde(deserialize_with = "optional_duration")]
    pub backend_body_timeout: Option<Duration>,
    /// An upgraded tunnel idle this long is closed.
    #[serde(deserialize_with = "optional_duration")]
    pub upgrade_idle_timeout: Option<Duration>,
    /// Idle keep-alive connections kept per backend and proxy thread.
    pub backend_idle_connections: Option<usize>,
}

/// What makes a failed attempt worth another (`retries.on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// No connection could be made (nothing was sent).
    ConnectFailure,
    /// The connection broke before a response came.
    Reset,
    /// The backend answered 502.
    #[serde(rename = "502")]
    BadGateway,
    /// The backend answered 503.
    #[serde(rename = "503")]
    Unavailable,
    /// No response headers within `request_timeout`.
    #[serde(rename = "504")]
    Timeout,
}

/// `pools.NAME.retries`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetriesConfig {
    /// Retries after the first try, each on another backend (0: none).
    pub attempts: u32,
    /// Which failures are retried.
    pub on: Vec<RetryOn>,
    /// Retries at most this share (percent) of the pool's requests over
    /// the last 10 s; absent: no budget.
    pub budget_percent: Option<u32>,
}

impl Default for RetriesConfig {
    /// One retry when no connection could be made or the connection broke
    /// before any response came: what tollgate did before pools (a
    /// keep-alive connection a stopping backend closes is the common case
    /// of the second).
    fn default() -> Self {
        Self {
            attempts: 1,
            on: vec![RetryOn::ConnectFailure, RetryOn::Reset],
            budget_percent: None,
        }
    }
}

/// One of `routes`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `[a-z0-9_-]+`, unique: in metrics, logs and the admin API.
    pub name: String,
    /// Which requests take it.
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    /// Where they go.
    pub pool: String,
    /// A new beginning for the matched path.
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    /// Request headers set or removed before forwarding.
    #[serde(default)]
    pub request_headers: HeaderEdits,
    /// Response headers set or removed before answering.
    #[serde(default)]
    pub response_headers: HeaderEdits,
}

/// `routes[i].match`; absent keys match everything.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteMatch {
    /// `Host` names (port ignored, any case); `*.example.com` matches one
    /// or more labels before `example.com`.
    pub hosts: Vec<String>,
    /// Paths equal to it or below it, on segment boundaries.
    pub path_prefix: Option<String>,
    /// This path only.
    pub path_exact: Option<String>,
    /// Compare paths without regard to ASCII case.
    pub ignore_case: bool,
    /// Methods; empty: every method (`GET` takes `HEAD` too).
    pub methods: Vec<String>,
    /// Header values required: an exact value, or `"*"` for present.
    pub headers: BTreeMap<String, String>,
}

/// `routes[i].rewrite`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched `path_prefix` (or the whole `path_exact`).
    pub prefix: String,
}

/// `routes[i].request_headers`, `routes[i].response_headers`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderEdits {
    /// Headers set to these values (replacing any the message had).
    pub set: BTreeMap<String, String>,
    /// Headers removed.
    pub remove: Vec<String>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}
