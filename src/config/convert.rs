//! Turning a valid config into the settings of the running parts.
//! Start-up uses these, and a reload runs them again on a new config.

use std::num::NonZeroU32;

use super::schema::*;
use crate::limiter::rules::{RuleKey, RuleSpec};
use crate::proxy::path::EscapedSlashes;
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
        let mut methods = Vec::new();
        for m in &self.matcher.methods {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => wrong.push(("match.methods", format!("{m:?} is not an HTTP method"))),
            }
        }
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
