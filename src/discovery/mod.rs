//! DNS discovery of a pool's backends (`pools.NAME.discovery`).
//!
//! A pool with `discovery` looks its name up every `interval` (sooner when
//! the answer's TTL is shorter) and makes its backend set what the answer
//! says, through the same path a reload's new backend list takes: added
//! backends are checked before they get traffic, removed ones drain. An
//! answer that fails or is empty keeps the last known set: a DNS outage
//! must not empty a pool whose backends are fine.
//!
//! [`resolve`] asks DNS (hickory-resolver) and turns the answer into
//! backend specs; [`run`] is the loop per pool; [`Membership`] is the one
//! place a pool's backend set is replaced, so a reload (the configured
//! backends) and a lookup (the discovered ones) never undo each other.

mod resolve;
mod run;

use std::net::SocketAddr;
use std::time::Duration;

use crate::balancer::BackendSpec;
use crate::balancer::Replaced;
use crate::health::Checker;

pub use run::{spawn, Discovered};

/// `pools.NAME.discovery`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverySpec {
    /// What is looked up.
    pub lookup: Lookup,
    /// `https` for `https://` backends.
    pub https: bool,
    /// Time between lookups (shorter when the TTL is).
    pub interval: Duration,
    /// DNS servers asked; empty: the system's.
    pub resolvers: Vec<SocketAddr>,
}

/// A pool's backend set: the configured backends and the discovered ones,
/// replaced together under one lock so a reload and a lookup are applied
/// one after the other.
#[derive(Debug)]
pub struct Membership {
    sets: tokio::sync::Mutex<(Vec<BackendSpec>, Vec<BackendSpec>)>,
}

impl Membership {
    /// A pool's set of these configured backends, none discovered yet.
    pub fn new(configured: Vec<BackendSpec>) -> Self {
        Self {
            sets: tokio::sync::Mutex::new((configured, Vec::new())),
        }
    }

    /// Forgets the discovered backends (the pool's `discovery` was
    /// removed): the configured ones alone remain.
    pub async fn clear_discovered(&self, checker: &Checker) {
        let mut sets = self.sets.lock().await;
        if !sets.1.is_empty() {
            sets.1.clear();
            checker.replace_backends(sets.0.clone()).await;
        }
    }

    /// A reload's configured backends, with the last discovered ones.
    pub async fn set_configured(
        &self,
        checker: &Checker,
        configured: Vec<BackendSpec>,
    ) -> Replaced {
        let mut sets = self.sets.lock().await;
        sets.0 = configured;
        checker.replace_backends(merged(&sets.0, &sets.1)).await
    }

    /// A lookup's backends, with the configured ones; `None` when they are
    /// the ones already in place.
    pub async fn set_discovered(
        &self,
        checker: &Checker,
        discovered: Vec<BackendSpec>,
    ) -> Option<Replaced> {
        let mut sets = self.sets.lock().await;
        if sets.1 == discovered {
            return None;
        }
        sets.1 = discovered;
        Some(checker.replace_backends(merged(&sets.0, &sets.1)).await)
    }
}

/// The configured backends, then the discovered ones not already listed.
fn merged(configured: &[BackendSpec], discovered: &[BackendSpec]) -> Vec<BackendSpec> {
    let mut all = configured.to_vec();
    for d in discovered {
        if !all.iter().any(|c| c.url == d.url) {
            all.push(d.clone());
        }
    }
    all
}

/// Where a discovered pool looks, as validated from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A and AAAA records of `name`, each address a backend on `port`.
    Address {
        /// The name looked up.
        name: String,
        /// The backends' port.
        port: u16,
    },
    /// SRV records of `name`: each target and port a backend, weighted
    /// by the record.
    Service {
        /// `_service._proto.name`.
        name: String,
    },
}

/// `host:port` as `discovery.dns` writes it.
pub fn parse_dns(text: &str) -> Result<Lookup, String> {
    let (name, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: write name:port"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?}: the port is a number from 1 to 65535"))?;
    check_name(name).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(Lookup::Address {
        name: name.to_owned(),
        port,
    })
}

/// `_service._proto.name` as `discovery.dns_srv` writes it.
pub fn parse_srv(text: &str) -> Result<Lookup, String> {
    let mut labels = text.trim_end_matches('.').split('.');
    let service = labels.next().unwrap_or("");
    let proto = labels.next().unwrap_or("");
    if !service.starts_with('_') || !proto.starts_with('_') || labels.next().is_none() {
        return Err(format!(
            "{text:?}: write _service._proto.name (e.g. _http._tcp.api.internal)"
        ));
    }
    check_name(text).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(Lookup::Service {
        name: text.to_owned(),
    })
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, each
/// 1 to 63 bytes, 253 in all.
fn check_name(name: &str) -> Result<(), String> {
    let name = name.trim_end_matches('.');
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("not a DNS name".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_and_bad_ones_refused() {
        assert_eq!(
            parse_dns("api.internal:8080"),
            Ok(Lookup::Address {
                name: "api.internal".into(),
                port: 8080
            })
        );
        assert!(parse_dns("api.internal").is_err());
        assert!(parse_dns("api.internal:0").is_err());
        assert!(parse_dns("bad name:80").is_err());
        assert!(parse_srv("_http._tcp.api.internal").is_ok());
        assert!(parse_srv("api.internal").is_err());
    }
}
