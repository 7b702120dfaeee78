//! One lookup: the DNS answer for a pool's name as backend specs, and how
//! long it may be trusted (the smallest TTL in it).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use super::{DiscoverySpec, Lookup};
use crate::balancer::{default_name, BackendSpec, BackendUrl, Weight};

/// Why a lookup gave no backends.
#[derive(Debug, thiserror::Error)]
pub(super) enum LookupError {
    /// The resolver could not be set up (no usable `/etc/resolv.conf`).
    #[error("no resolver: {0}")]
    Setup(String),
    /// The query failed: timeout, SERVFAIL, NXDOMAIN...
    #[error("lookup of {name} failed: {reason}")]
    Failed {
        /// The name asked.
        name: String,
        /// The resolver's reason.
        reason: String,
    },
}

/// What a lookup found.
#[derive(Debug)]
pub(super) struct Found {
    /// One spec per address (and port), in answer order, without repeats.
    pub(super) backends: Vec<BackendSpec>,
    /// The smallest TTL of the records used.
    pub(super) ttl: Option<Duration>,
}

/// The resolver `spec` asks: its `resolvers` (UDP, then TCP), or the
/// system's configuration.
pub(super) fn resolver(spec: &DiscoverySpec) -> Result<TokioResolver, LookupError> {
    let setup = |e: &dyn std::fmt::Display| LookupError::Setup(e.to_string());
    let mut builder = if spec.resolvers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| setup(&e))?
    } else {
        let servers = spec
            .resolvers
            .iter()
            .map(|addr| {
                let on_port = |mut c: ConnectionConfig| {
                    c.port = addr.port();
                    c
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        on_port(ConnectionConfig::udp()),
                        on_port(ConnectionConfig::tcp()),
                    ],
                )
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    builder.options_mut().cache_size = 0;
    builder.build().map_err(|e| setup(&e))
}

/// Looks `spec`'s name up once.
pub(super) async fn lookup(
    resolver: &TokioResolver,
    spec: &DiscoverySpec,
) -> Result<Found, LookupError> {
    // Every lookup asks the server: the loop's own timer is the cache.
    resolver.clear_cache();
    match &spec.lookup {
        Lookup::Address { name, port } => {
            let mut found = Found {
                backends: Vec::new(),
                ttl: None,
            };
            addresses(resolver, name, &mut found, |ip| {
                backend(spec.https, SocketAddr::new(ip, *port), Weight::ONE)
            })
            .await?;
            Ok(found)
        }
        Lookup::Service { name } => {
            let mut found = Found {
                backends: Vec::new(),
                ttl: None,
            };
            let answer = match resolver.srv_lookup(name.as_str()).await {
                Ok(answer) => answer,
                // An answer without records: empty, not failed.
                Err(e) if e.is_no_records_found() => return Ok(found),
                Err(e) => return Err(failed(name, &e)),
            };
            for record in answer.answers() {
                shorten(&mut found.ttl, record);
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                // SRV weight 0 means "rarely, when others have none"
                // (RFC 2782); as a load balancer weight it is the least.
                let weight = Weight::new(u64::from(srv.weight)).unwrap_or(Weight::ONE);
                let target = srv.target.to_string();
                let port = srv.port;
                addresses(resolver, &target, &mut found, |ip| {
                    backend(spec.https, SocketAddr::new(ip, port), weight)
                })
                .await?;
            }
            Ok(found)
        }
    }
}

/// The A/AAAA records of `name`, each made a backend by `make`, added to
/// `found` (its TTL shortened to theirs).
async fn addresses(
    resolver: &TokioResolver,
    name: &str,
    found: &mut Found,
    make: impl Fn(IpAddr) -> Option<BackendSpec>,
) -> Result<(), LookupError> {
    let answer = match resolver.lookup_ip(name).await {
        Ok(answer) => answer,
        Err(e) if e.is_no_records_found() => return Ok(()),
        Err(e) => return Err(failed(name, &e)),
    };
    for record in answer.as_lookup().answers() {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(a) => IpAddr::V6(a.0),
            _ => continue,
        };
        shorten(&mut found.ttl, record);
        if let Some(spec) = make(ip) {
            if !found.backends.iter().any(|b| b.url == spec.url) {
                found.backends.push(spec);
            }
        }
    }
    Ok(())
}

fn shorten(ttl: &mut Option<Duration>, record: &Record) {
    if matches!(
        record.record_type(),
        RecordType::A | RecordType::AAAA | RecordType::SRV
    ) {
        let t = Duration::from_secs(u64::from(record.ttl));
        *ttl = Some(ttl.map_or(t, |old| old.min(t)));
    }
}

fn failed(name: &str, e: &dyn std::fmt::Display) -> LookupError {
    LookupError::Failed {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

/// The backend at `addr`, named `address:port` as a configured one is
/// (an address and a port always make a URL; were it not so, the record
/// would be skipped rather than guessed at).
fn backend(https: bool, addr: SocketAddr, weight: Weight) -> Option<BackendSpec> {
    let scheme = if https { "https" } else { "http" };
    let url = BackendUrl::parse(&format!("{scheme}://{addr}")).ok()?;
    Some(BackendSpec {
        name: default_name(&url).into(),
        url,
        weight,
    })
}
