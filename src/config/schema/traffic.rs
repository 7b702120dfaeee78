//! The schema of a pool's traffic control beyond choosing a backend:
//! `max_connections` with its `queue`, and `discovery` (backends found in
//! DNS). Kept apart from `pools` so each concern reads on its own.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `pools.NAME.queue`: requests waiting for a free backend slot when
/// every backend is at `max_connections`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests that may wait at once (0: none wait, a busy pool refuses).
    pub size: u32,
    /// Longest wait for a slot; then 503.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            size: 1000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// `pools.NAME.discovery`: the pool's backends are what a DNS name
/// resolves to, looked up again every `interval`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `host:port`: one backend per A/AAAA address, on that port.
    #[serde(default)]
    pub dns: Option<String>,
    /// `_service._proto.name`: one backend per SRV target and port, the
    /// record's weight as the backend's.
    #[serde(default)]
    pub dns_srv: Option<String>,
    /// `http` or `https` for the backends found.
    #[serde(default)]
    pub scheme: DiscoveryScheme,
    /// Time between lookups (shorter when the records' TTL is).
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// DNS servers asked (UDP, then TCP); empty: the system's.
    #[serde(default)]
    pub resolvers: Vec<SocketAddr>,
}

fn default_interval() -> Duration {
    Duration::from_secs(10)
}

/// `discovery.scheme`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryScheme {
    /// `http://address:port`.
    #[default]
    Http,
    /// `https://address:port` (the certificate must name the address).
    Https,
}
