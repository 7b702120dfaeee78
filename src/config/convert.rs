//! Turning a valid config into the settings of the running parts.
//! Start-up uses these, and a reload runs them again on a new config.

use std::num::NonZeroU32;

use super::schema::RetryOn as ConfigRetryOn;
use super::schema::*;
use crate::balancer::{BackendSpec, PassiveSettings, Thresholds};
use crate::limiter::rules::{RuleKey, RuleSpec};
use crate::proxy::path::EscapedSlashes;
use crate::routing::hosts::HostPattern;
use crate::routing::pools::{HealthSpec, PoolSpec, Retries, RetryOn, Timeouts};
use crate::routing::traffic::{HashKey, StickySpec, TrafficSpec};
use crate::routing::trie::PathRule;
use crate::routing::{Edits, RouteSpec};
use crate::tls::server::{CertificatePaths, TlsSettings};

impl RuleConfig {
    /// The validated rule, or each thing wrong with it as (field under
    /// the rule, reason).
    pub fn spec(&self) -> Result<RuleSpec, Vec<(&'static str, String)>> {
        let mut wrong = Vec::new();
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            wrong.push((
                "name",
                format!(
                    "{:?}: use [a-z0-9_-]+ (it names the rule in metrics and headers)",
                    self.name
                ),
            ));
        } else if self.name == "tollgate" || self.name == "client" {
            wrong.push((
                "name",
                format!("{:?} is reserved for the client's own bucket", self.name),
            ));
        }
        let prefix = &self.matcher.path_prefix;
        if !prefix.starts_with('/')
            || prefix
                .bytes()
                .any(|b| b <= b' ' || b == 0x7f || b == b'?' || b == b'#')
        {
            wrong.push((
                "match.path_prefix",
                format!("{prefix:?}: must start with / and hold no spaces, controls, ? or #"),
            ));
        } else if let Some(problem) = normal_form_problem(prefix) {
            wrong.push(("match.path_prefix", problem));
        }
        let methods = methods(&self.matcher.methods).unwrap_or_else(|e| {
            wrong.push(("match.methods", e));
            Vec::new()
        });
        let hosts = host_patterns(&self.matcher.hosts, &mut wrong);
        let key = RuleKey::parse(&self.key)
            .map_err(|e| wrong.push(("key", e)))
            .ok();
        let capacity = u64::from(self.limits.capacity());
        let cost = match u32::try_from(self.cost).ok().and_then(NonZeroU32::new) {
            Some(cost) if u64::from(cost.get()) <= capacity => Some(cost),
            _ => {
                wrong.push((
                    "cost",
                    format!(
                        "{} must be between 1 and the capacity ({capacity}): a larger cost could never pass",
                        self.cost
                    ),
                ));
                None
            }
        };
        match (key, cost) {
            (Some(key), Some(cost)) if wrong.is_empty() => Ok(RuleSpec {
                name: self.name.clone(),
                path_prefix: prefix.clone(),
                ignore_case: self.matcher.ignore_case,
                routes: self.matcher.routes.clone(),
                hosts,
                methods,
                key,
                limits: self.limits,
                cost,
                dry_run: self.dry_run,
            }),
            _ => Err(wrong),
        }
    }
}

/// Why `prefix` is not a path in normal form, if it is not: requests are
/// matched on their normalized path ([`crate::proxy::path`]), which a
/// prefix such as `/a//b` or `/a/%62` could never start.
fn normal_form_problem(prefix: &str) -> Option<String> {
    match crate::proxy::path::normalize(prefix, EscapedSlashes::Keep) {
        Ok(normal) if normal == prefix => None,
        Ok(normal) => Some(format!(
            "{prefix:?}: requests are matched on their normalized path; write {normal:?}"
        )),
        Err(e) => Some(format!("{prefix:?}: {e}")),
    }
}

impl RateLimitConfig {
    /// The rules, validated (`Config::load` refused a config whose rules
    /// are not valid, so this only drops what it already reported).
    pub fn rule_specs(&self) -> Vec<RuleSpec> {
        self.rules.iter().filter_map(|r| r.spec().ok()).collect()
    }
}

impl From<&RateLimitConfig> for crate::limiter::RegistryConfig {
    fn from(rl: &RateLimitConfig) -> Self {
        Self {
            default_limits: rl.default,
            max_clients: rl.max_clients,
            idle_timeout: rl.idle_timeout,
            refill_interval: rl.refill_interval,
        }
    }
}

impl From<&RateLimitConfig> for crate::proxy::identity::Identifier {
    fn from(rl: &RateLimitConfig) -> Self {
        Self::new(rl.api_key_header.0.clone(), rl.trusted_proxies.clone())
            .with_ipv6_prefix(rl.ipv6_prefix)
    }
}

impl From<&HealthCheckConfig> for crate::balancer::Thresholds {
    fn from(hc: &HealthCheckConfig) -> Self {
        Self {
            unhealthy: hc.unhealthy_threshold.get(),
            healthy: hc.healthy_threshold.get(),
        }
    }
}

impl From<&PassiveConfig> for crate::balancer::PassiveSettings {
    fn from(p: &PassiveConfig) -> Self {
        Self {
            consecutive_5xx: p.consecutive_5xx,
            ejection_time: p.ejection_time,
            max_ejected_percent: p.max_ejected_percent,
        }
    }
}

impl From<&BackendConfig> for crate::balancer::BackendSpec {
    fn from(b: &BackendConfig) -> Self {
        Self {
            url: b.url.clone(),
            name: b.name().into(),
            weight: b.weight,
        }
    }
}

impl From<&Config> for crate::proxy::ProxySettings {
    fn from(c: &Config) -> Self {
        Self {
            connect_timeout: c.proxy.connect_timeout,
            request_timeout: c.proxy.request_timeout,
            backend_body_timeout: c.proxy.backend_body_timeout,
            client_body_timeout: c.server.client_body_timeout,
            allow_underscores_in_headers: c.proxy.allow_underscores_in_headers,
            upgrade_idle_timeout: c.proxy.upgrade_idle_timeout,
            escaped_slashes: c.proxy.escaped_slashes,
        }
    }
}

impl From<&CertificateConfig> for CertificatePaths {
    fn from(c: &CertificateConfig) -> Self {
        Self {
            cert: c.cert.clone(),
            key: c.key.clone(),
        }
    }
}

impl From<&TlsConfig> for TlsSettings {
    fn from(t: &TlsConfig) -> Self {
        Self {
            certificates: t.certificates.iter().map(CertificatePaths::from).collect(),
            min_version: t.min_version,
            alpn: t.alpn.clone(),
        }
    }
}

impl From<&ServerConfig> for crate::proxy::server::ServeOptions {
    fn from(s: &ServerConfig) -> Self {
        let budget = match s.max_connections {
            Some(n) => crate::proxy::server::ConnectionBudget::new(n),
            None => crate::proxy::server::ConnectionBudget::from_open_file_limit(),
        };
        Self {
            header_read_timeout: s.header_read_timeout,
            drain_timeout: s.drain_timeout,
            max_header_bytes: s.max_header_bytes,
            send_timeout: s.send_timeout,
            http2_max_concurrent_streams: s.http2_max_concurrent_streams.get(),
            budget: Some(budget),
            // Needs the trusted proxies too: see `From<&Config>`.
            proxy_protocol: None,
            // The running tollgate's own, set when it starts.
            metrics: crate::telemetry::Metrics::default(),
            // The proxy's, set when it starts.
            access_log: None,
            h2c: true,
            park_after: crate::proxy::server::PARK_AFTER,
        }
    }
}

impl From<&Config> for crate::proxy::server::ServeOptions {
    fn from(c: &Config) -> Self {
        Self {
            proxy_protocol: c.server.proxy_protocol.then(|| {
                crate::proxy::proxy_protocol::ProxyProtocol::new(
                    c.rate_limit.trusted_proxies.clone(),
                )
            }),
            ..Self::from(&c.server)
        }
    }
}

// ---------------------------------------------------------------------
// Pools and routes.

/// A pool's traffic-control keys, resolved (`Config::load` refused values
/// that do not parse, so a bad `hash_key` here is the default's).
fn traffic_spec(p: &PoolConfig) -> TrafficSpec {
    TrafficSpec {
        hash_key: p
            .hash_key
            .as_deref()
            .and_then(|k| HashKey::parse(k).ok())
            .unwrap_or_default(),
        hash_balance_factor: p.hash_balance_factor.unwrap_or(0),
        sticky: p.sticky.as_ref().map(|s| StickySpec {
            cookie: s.cookie.clone(),
            ttl: s.ttl,
            secret: s.secret.clone(),
        }),
        slow_start: p.slow_start.unwrap_or_default(),
    }
}

impl Config {
    /// Every pool, resolved against the top-level settings: `default`
    /// (the top-level `backends`, `balancing`, `health_check`, `proxy`)
    /// first, then each of `pools`.
    pub fn pool_specs(&self) -> Vec<PoolSpec> {
        let default = PoolConfig {
            backends: self.backends.clone(),
            ..PoolConfig::default()
        };
        std::iter::once((DEFAULT_POOL, &default))
            .chain(self.pools.iter().map(|(n, p)| (n.as_str(), p)))
            .map(|(name, p)| self.pool_spec(name, p))
            .collect()
    }

    fn pool_spec(&self, name: &str, p: &PoolConfig) -> PoolSpec {
        let (hc, o) = (&self.health_check, &p.health_check);
        let px = &self.proxy;
        let protocol = p.protocol.unwrap_or(px.protocol);
        PoolSpec {
            name: name.to_owned(),
            backends: p.backends.iter().map(BackendSpec::from).collect(),
            strategy: p.strategy.unwrap_or(self.balancing.strategy),
            health: HealthSpec {
                path: o.path.clone().unwrap_or_else(|| hc.path.clone()),
                interval: o.interval.unwrap_or(hc.interval),
                timeout: o.timeout.unwrap_or(hc.timeout),
                thresholds: Thresholds {
                    unhealthy: o
                        .unhealthy_threshold
                        .unwrap_or(hc.unhealthy_threshold)
                        .get(),
                    healthy: o.healthy_threshold.unwrap_or(hc.healthy_threshold).get(),
                },
                passive: PassiveSettings::from(o.passive.as_ref().unwrap_or(&hc.passive)),
                protocol,
                grpc: o.grpc.unwrap_or(hc.grpc).then(|| {
                    o.grpc_service
                        .clone()
                        .unwrap_or_else(|| hc.grpc_service.clone())
                }),
            },
            timeouts: Timeouts {
                connect: p.proxy.connect_timeout.unwrap_or(px.connect_timeout),
                request: p.proxy.request_timeout.unwrap_or(px.request_timeout),
                backend_body: p
                    .proxy
                    .backend_body_timeout
                    .unwrap_or(px.backend_body_timeout),
                upgrade_idle: p
                    .proxy
                    .upgrade_idle_timeout
                    .unwrap_or(px.upgrade_idle_timeout),
            },
            retries: Retries::from(&p.retries),
            protocol,
            limits: crate::balancer::Limits {
                max_connections: usize::try_from(p.max_connections).unwrap_or(usize::MAX),
                queue_size: usize::try_from(p.queue.size).unwrap_or(usize::MAX),
                queue_timeout: p.queue.timeout,
            },
            discovery: p.discovery.as_ref().and_then(discovery_spec),
            traffic: traffic_spec(p),
            idle_connections: p
                .proxy
                .backend_idle_connections
                .unwrap_or(px.backend_idle_connections),
        }
    }

    /// The routes, validated (`Config::load` refused a config whose
    /// routes are not valid, so this only drops what it already reported).
    pub fn route_specs(&self) -> Vec<RouteSpec> {
        self.routes.iter().filter_map(|r| r.spec().ok()).collect()
    }

    /// Whether pools or routes are configured (then metrics and the access
    /// log name them).
    pub fn is_routed(&self) -> bool {
        !self.pools.is_empty() || !self.routes.is_empty()
    }
}

/// `discovery`, validated (`Config::load` refused one that is not).
fn discovery_spec(d: &DiscoveryConfig) -> Option<crate::discovery::DiscoverySpec> {
    let lookup = match (&d.dns, &d.dns_srv) {
        (Some(dns), None) => crate::discovery::parse_dns(dns).ok()?,
        (None, Some(srv)) => crate::discovery::parse_srv(srv).ok()?,
        _ => return None,
    };
    Some(crate::discovery::DiscoverySpec {
        lookup,
        https: d.scheme == DiscoveryScheme::Https,
        interval: d.interval,
        resolvers: d.resolvers.clone(),
    })
}

impl From<&RetriesConfig> for Retries {
    fn from(r: &RetriesConfig) -> Self {
        let has = |what| r.on.contains(&what);
        Self {
            attempts: r.attempts,
            on: RetryOn {
                connect_failure: has(ConfigRetryOn::ConnectFailure),
                reset: has(ConfigRetryOn::Reset),
                bad_gateway: has(ConfigRetryOn::BadGateway),
                unavailable: has(ConfigRetryOn::Unavailable),
                timeout: has(ConfigRetryOn::Timeout),
            },
            budget_percent: r.budget_percent,
        }
    }
}

/// HTTP methods as a config writes them, in any case.
pub(super) fn methods(written: &[String]) -> Result<Vec<http::Method>, String> {
    written
        .iter()
        .map(|m| {
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("{m:?} is not an HTTP method"))
        })
        .collect()
}

impl RouteConfig {
    /// The compiled route, or each thing wrong with it as (field under the
    /// route, reason).
    pub fn spec(&self) -> Result<RouteSpec, Vec<(&'static str, String)>> {
        let mut wrong = Vec::new();
        let m = &self.matcher;
        let hosts = host_patterns(&m.hosts, &mut wrong);
        let path = match (&m.path_prefix, &m.path_exact) {
            (Some(_), Some(_)) => {
                wrong.push(("match", "path_prefix or path_exact, not both".into()));
                PathRule::Any
            }
            (Some(p), None) => path_rule(p, "match.path_prefix", &mut wrong, PathRule::Prefix),
            (None, Some(p)) => path_rule(p, "match.path_exact", &mut wrong, PathRule::Exact),
            (None, None) => PathRule::Any,
        };
        let methods = methods(&m.methods).unwrap_or_else(|e| {
            wrong.push(("match.methods", e));
            Vec::new()
        });
        let headers = route_headers(&m.headers, &mut wrong);
        let rewrite = self.rewrite.as_ref().map(|r| r.prefix.clone());
        if let Some(to) = &rewrite {
            if !to.starts_with('/') || normal_form_problem(to).is_some() {
                wrong.push((
                    "rewrite.prefix",
                    format!("{to:?}: a path in normal form, starting with /"),
                ));
            }
        }
        let request_headers = edits(&self.request_headers, "request_headers", &mut wrong);
        let response_headers = edits(&self.response_headers, "response_headers", &mut wrong);
        if !wrong.is_empty() {
            return Err(wrong);
        }
        Ok(RouteSpec {
            name: self.name.clone(),
            hosts,
            path,
            ignore_case: m.ignore_case,
            methods,
            headers,
            rewrite,
            pool: self.pool.clone(),
            request_headers,
            response_headers,
        })
    }
}

/// `match.hosts`, compiled.
fn host_patterns(written: &[String], wrong: &mut Vec<(&'static str, String)>) -> Vec<HostPattern> {
    written
        .iter()
        .filter_map(|h| {
            let p = HostPattern::parse(h);
            if p.is_none() {
                wrong.push((
                    "match.hosts",
                    format!("{h:?}: a host name, or *. and a name (the port is not written)"),
                ));
            }
            p
        })
        .collect()
}

/// A route's path condition, checked for normal form.
fn path_rule(
    p: &str,
    field: &'static str,
    wrong: &mut Vec<(&'static str, String)>,
    make: fn(String) -> PathRule,
) -> PathRule {
    if !p.starts_with('/') {
        wrong.push((field, format!("{p:?} must start with /")));
    } else if let Some(problem) = normal_form_problem(p) {
        wrong.push((field, problem));
    }
    make(p.to_owned())
}

/// `match.headers`: names and values a request must carry.
fn route_headers(
    written: &std::collections::BTreeMap<String, String>,
    wrong: &mut Vec<(&'static str, String)>,
) -> Vec<(http::HeaderName, Option<http::HeaderValue>)> {
    let mut out = Vec::new();
    for (name, value) in written {
        let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) else {
            wrong.push(("match.headers", format!("{name:?} is not a header name")));
            continue;
        };
        let value = match value.as_str() {
            "*" => None,
            v => match http::HeaderValue::from_str(v) {
                Ok(v) => Some(v),
                Err(_) => {
                    wrong.push((
                        "match.headers",
                        format!("{name}: {v:?} is not a header value"),
                    ));
                    continue;
                }
            },
        };
        out.push((name, value));
    }
    out
}

/// Header names a route may not set or remove: they frame the message or
/// decide who the client is, and tollgate sets them itself.
const PROTECTED_HEADERS: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "x-forwarded-for",
    "x-request-id",
    "trailer",
];

/// `request_headers` / `response_headers`.
fn edits(e: &HeaderEdits, field: &'static str, wrong: &mut Vec<(&'static str, String)>) -> Edits {
    let name = |n: &str, wrong: &mut Vec<(&'static str, String)>| match http::HeaderName::from_bytes(
        n.as_bytes(),
    ) {
        Ok(h) if PROTECTED_HEADERS.contains(&h.as_str()) => {
            wrong.push((
                field,
                format!("{n}: set by tollgate itself, not by a route"),
            ));
            None
        }
        Ok(h) => Some(h),
        Err(_) => {
            wrong.push((field, format!("{n:?} is not a header name")));
            None
        }
    };
    let mut set = Vec::new();
    for (n, v) in &e.set {
        let Some(h) = name(n, wrong) else { continue };
        match http::HeaderValue::from_str(v) {
            Ok(v) => set.push((h, v)),
            Err(_) => wrong.push((field, format!("{n}: {v:?} is not a header value"))),
        }
    }
    let remove = e.remove.iter().filter_map(|n| name(n, wrong)).collect();
    Edits::new(set, remove)
}
