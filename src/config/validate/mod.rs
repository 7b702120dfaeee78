//! Rules that involve more than one field, one function per section, so
//! a new section adds one function. Field-local rules are enforced while
//! parsing ([`super::schema`]).

use std::time::Duration;

mod routes;
mod selection;
mod traffic;

use super::load::{Files, Problem};
use super::schema::{BackendConfig, Config, PassiveConfig};
use crate::tls::server::{CertificatePaths, PairFile};

/// Bounds of `server.max_header_bytes`: below 1 KiB ordinary browser
/// requests fail; above 1 MiB the limit no longer protects memory.
pub const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=1024 * 1024;

/// Longest backend name accepted.
pub const MAX_BACKEND_NAME: usize = 128;

/// Why `name` cannot be a backend name, if it cannot: it goes into URL
/// paths (`/backends/{name}/drain`), metric labels and log lines.
fn backend_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_BACKEND_NAME {
        return Some(format!(
            "{name:?}: a name is 1 to {MAX_BACKEND_NAME} characters"
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    (!name.chars().all(allowed))
        .then(|| format!("{name:?}: a name is made of letters, digits and - _ . : only"))
}

/// Why a pool speaking `protocol` cannot be checked with gRPC, if it is
/// (`grpc`) and cannot: gRPC runs over HTTP/2 only.
fn grpc_check_problem(grpc: bool, protocol: crate::balancer::Protocol) -> Option<String> {
    (grpc && protocol != crate::balancer::Protocol::Http2).then(|| {
        format!(
            "gRPC health checks need protocol: http2, and this pool speaks {}",
            protocol.as_str()
        )
    })
}

/// Most spans `telemetry.otlp.max_queue_size` may hold: a span is a few
/// hundred bytes, so this bounds the queue at some tens of megabytes.
const MAX_SPAN_QUEUE: usize = 100_000;

/// Collects problems with their field paths.
pub(super) type Add<'a> = dyn FnMut(&str, String) + 'a;

impl Config {
    /// Rules that involve more than one field, section by section.
    pub(super) fn check(&self, problems: &mut Vec<Problem>, files: Files) {
        let mut push = |field: &str, reason: String| {
            problems.push(Problem {
                field: field.into(),
                reason,
            })
        };
        let add: &mut Add<'_> = &mut push;
        self.check_backends(add);
        self.check_admin(add);
        self.check_server(add);
        self.check_tls(add, files);
        self.check_http3(add);
        self.check_health(add);
        self.check_timeouts(add);
        self.check_proxy(add);
        self.check_rate_limit(add);
        self.check_store(add);
        self.check_pools(add);
        self.check_routes(add);
        self.check_telemetry(add);
    }

    /// `admin`: a token where the listener is reachable from elsewhere, a
    /// token worth the name, an address of its own, host names in
    /// `allowed_hosts` (each checked as the admin API will compare it).
    fn check_admin(&self, add: &mut Add<'_>) {
        for (i, host) in self.admin.allowed_hosts.iter().enumerate() {
            if let Err(reason) = crate::admin::guard::allowed_host_entry(host) {
                add(&format!("admin.allowed_hosts[{i}]"), reason);
            }
        }
        if !self.admin.listen.ip().is_loopback() && self.admin.token.is_none() {
            add(
                "admin.token",
                format!(
                    "required because admin.listen ({}) is not a loopback address: \
                     anyone who can reach it could change client limits",
                    self.admin.listen
                ),
            );
        }
        if let Some(token) = &self.admin.token {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                add(
                    "admin.token",
                    "must be at least 16 printable ASCII characters without spaces".into(),
                );
            }
        }
        if self.server.listen == Some(self.admin.listen) && self.admin.listen.port() != 0 {
            add(
                "admin.listen",
                format!("same address as server.listen ({})", self.admin.listen),
            );
        }
    }

    /// `server`: header limits, and PROXY protocol only behind trusted
    /// proxies.
    fn check_server(&self, add: &mut Add<'_>) {
        if self.server.proxy_protocol && self.rate_limit.trusted_proxies.is_empty() {
            add(
                "server.proxy_protocol",
                "true, but rate_limit.trusted_proxies is empty: PROXY headers are \
                 believed only from trusted proxies, so every connection would be closed"
                    .into(),
            );
        }
        if !MAX_HEADER_BYTES_RANGE.contains(&self.server.max_header_bytes) {
            add(
                "server.max_header_bytes",
                format!(
                    "must be between {} and {}",
                    MAX_HEADER_BYTES_RANGE.start(),
                    MAX_HEADER_BYTES_RANGE.end()
                ),
            );
        }
    }

    /// `health_check`: a path the backends can be asked for; gRPC checks
    /// only where the default pool speaks HTTP/2.
    fn check_health(&self, add: &mut Add<'_>) {
        if !self.health_check.path.starts_with('/') {
            add(
                "health_check.path",
                format!("{:?} must start with /", self.health_check.path),
            );
        }
        if !self.backends.is_empty() {
            if let Some(p) = grpc_check_problem(self.health_check.grpc, self.proxy.protocol) {
                add("health_check.grpc", p);
            }
        }
    }

    /// Every duration that bounds a wait must be greater than zero.
    fn check_timeouts(&self, add: &mut Add<'_>) {
        let (s, p, h, r, st, a) = (
            &self.server,
            &self.proxy,
            &self.health_check,
            &self.rate_limit,
            &self.store,
            &self.admin,
        );
        let timeouts: [(&str, Duration); 16] = [
            ("server.header_read_timeout", s.header_read_timeout),
            ("server.client_body_timeout", s.client_body_timeout),
            ("server.send_timeout", s.send_timeout),
            ("proxy.connect_timeout", p.connect_timeout),
            ("proxy.request_timeout", p.request_timeout),
            ("proxy.backend_body_timeout", p.backend_body_timeout),
            ("proxy.upgrade_idle_timeout", p.upgrade_idle_timeout),
            ("health_check.interval", h.interval),
            ("health_check.timeout", h.timeout),
            ("rate_limit.refill_interval", r.refill_interval),
            ("store.snapshot_interval", st.snapshot_interval),
            ("store.reload_interval", st.reload_interval),
            ("store.timeout", st.timeout),
            ("admin.header_read_timeout", a.header_read_timeout),
            ("admin.body_read_timeout", a.body_read_timeout),
            ("rate_limit.shared.timeout", r.shared.timeout),
        ];
        for (field, d) in timeouts {
            if d.is_zero() {
                add(field, "must be greater than 0".into());
            }
        }
    }

    /// `proxy`: a CA file that loads, a bounded idle pool.
    fn check_proxy(&self, add: &mut Add<'_>) {
        if let Some(p) = idle_connections_problem(self.proxy.backend_idle_connections) {
            add("proxy.backend_idle_connections", p);
        }
        if let Some(path) = &self.proxy.ca_file {
            // The same reading start-up does, so `check` passing means the
            // file will load.
            if let Err(e) = crate::tls::client::check_ca_file(path) {
                add("proxy.ca_file", e.to_string());
            }
        }
    }

    /// `rate_limit`: rules, the Redis URL, an API key header that is
    /// forwarded, and the client bound.
    fn check_rate_limit(&self, add: &mut Add<'_>) {
        let rl = &self.rate_limit;
        let mut names = std::collections::HashSet::new();
        for (i, rule) in rl.rules.iter().enumerate() {
            if let Err(wrong) = rule.spec() {
                for (field, reason) in wrong {
                    add(&format!("rate_limit.rules[{i}].{field}"), reason);
                }
            }
            if !names.insert(rule.name.as_str()) {
                add(
                    &format!("rate_limit.rules[{i}].name"),
                    format!(
                        "{:?} names an earlier rule too: names are unique",
                        rule.name
                    ),
                );
            }
        }
        if let Some(url) = &rl.shared.redis_url {
            check_redis_url(url, &rl.shared.key_prefix, add);
        }
        if !self.proxy.allow_underscores_in_headers && rl.api_key_header.0.as_str().contains('_') {
            add(
                "rate_limit.api_key_header",
                format!(
                    "{} contains '_', and such headers are dropped; \
                     set proxy.allow_underscores_in_headers: true or use '-'",
                    rl.api_key_header.0
                ),
            );
        }
        if rl.max_clients.get() > crate::limiter::MAX_CLIENTS {
            add(
                "rate_limit.max_clients",
                format!("must be at most {}", crate::limiter::MAX_CLIENTS),
            );
        }
    }

    /// `telemetry.otlp`: a collector URL the exporter can post to, a
    /// ratio, a name, a timeout.
    fn check_telemetry(&self, add: &mut Add<'_>) {
        let Some(otlp) = &self.telemetry.otlp else {
            return;
        };
        if let Err(reason) = crate::trace::otlp::traces_url(&otlp.endpoint) {
            add("telemetry.otlp.endpoint", reason);
        }
        if !(0.0..=1.0).contains(&otlp.sample_ratio) {
            add(
                "telemetry.otlp.sample_ratio",
                format!("{} is not between 0 and 1", otlp.sample_ratio),
            );
        }
        if otlp.service_name.trim().is_empty() {
            add("telemetry.otlp.service_name", "must not be empty".into());
        }
        if otlp.max_queue_size.get() > MAX_SPAN_QUEUE {
            add(
                "telemetry.otlp.max_queue_size",
                format!("must be at most {MAX_SPAN_QUEUE}"),
            );
        }
        if otlp.timeout.is_zero() {
            add("telemetry.otlp.timeout", "must be more than 0".into());
        }
        if otlp.batch_delay.is_zero() {
            add("telemetry.otlp.batch_delay", "must be more than 0".into());
        }
    }

    /// `store`: a database tollgate can use.
    fn check_store(&self, add: &mut Add<'_>) {
        if !crate::store::is_supported(&self.store.url) {
            add(
                "store.url",
                format!(
                    "{:?} is not a supported database URL (sqlite://FILE or postgres://USER@HOST/DB)",
                    crate::redact::url(&self.store.url)
                ),
            );
        }
    }

    /// `backends` (URLs and names unique, names usable) and
    /// `health_check.passive`.
    fn check_backends(&self, add: &mut Add<'_>) {
        // With routes, requests no route takes may have nowhere to go (a
        // 404): the top-level list may be empty.
        if self.backends.is_empty() && self.routes.is_empty() {
            add(
                "backends",
                "at least one backend is required (or routes to pools)".into(),
            );
        }
        check_backend_list(&self.backends, "backends", add);
        check_passive(&self.health_check.passive, "health_check.passive", add);
    }

    /// `server.listen`, `server.tls`: a listener at all, distinct
    /// addresses, and certificate files a start can load.
    fn check_tls(&self, add: &mut Add<'_>, files: Files) {
        let Some(tls) = &self.server.tls else {
            if self.server.listen.is_none() {
                add(
                    "server.tls.listen",
                    "required when server.listen is null: there would be no listener".into(),
                );
            }
            return;
        };
        if tls.listen.port() != 0 {
            if Some(tls.listen) == self.server.listen {
                add(
                    "server.tls.listen",
                    format!("same address as server.listen ({})", tls.listen),
                );
            }
            if tls.listen == self.admin.listen {
                add(
                    "server.tls.listen",
                    format!("same address as admin.listen ({})", tls.listen),
                );
            }
        }
        if tls.certificates.is_empty() {
            add(
                "server.tls.certificates",
                "at least one certificate is required (the first is the default)".into(),
            );
        }
        if files == Files::Skip {
            return;
        }
        for (i, pair) in tls.certificates.iter().enumerate() {
            let paths = CertificatePaths::from(pair);
            if let Err(e) = crate::tls::server::check_pair(&paths) {
                let file = match e.file() {
                    Some(PairFile::Cert) => ".cert",
                    Some(PairFile::Key) => ".key",
                    None => "",
                };
                add(
                    &format!("server.tls.certificates[{i}]{file}"),
                    e.to_string(),
                );
            }
        }
    }

    /// `server.http3`: the QUIC listener serves the TLS listener's
    /// certificates, so it needs one; its UDP port may equal the TLS
    /// listener's TCP port (the usual setup: `Alt-Svc: h3=":443"`).
    fn check_http3(&self, add: &mut Add<'_>) {
        if self.server.http3.is_some() && self.server.tls.is_none() {
            add(
                "server.http3",
                "requires server.tls: HTTP/3 serves the TLS listener's certificates \
                 and is advertised on its responses"
                    .into(),
            );
        }
    }
}

/// `rate_limit.shared.redis_url`: read by the same parser `serve` uses,
/// so `check` passing means `serve` can use the URL. Quoted with its
/// password masked. On a cluster the key prefix may hold no brace: Redis
/// would take the hash tag from the prefix, and a client's buckets would
/// no longer share a slot.
fn check_redis_url(url: &str, prefix: &str, add: &mut Add<'_>) {
    match crate::limiter::shared::RedisTarget::parse(url) {
        Err(e) => add(
            "rate_limit.shared.redis_url",
            format!("{:?}: {e}", crate::redact::url(url)),
        ),
        Ok(target) if target.is_cluster() && prefix.contains(['{', '}']) => add(
            "rate_limit.shared.key_prefix",
            format!(
                "{prefix:?} holds a brace: on a Redis Cluster the key names' \
                 hash tags ({{...}}) are tollgate's, one per client"
            ),
        ),
        Ok(_) => {}
    }
}

/// One backend list (the top-level one or a pool's): URLs and names
/// unique, names usable; `field` is where the list is written.
pub(super) fn check_backend_list(backends: &[BackendConfig], field: &str, add: &mut Add<'_>) {
    for (i, a) in backends.iter().enumerate() {
        if backends[..i].iter().any(|b| b.url == a.url) {
            add(
                &format!("{field}[{i}].url"),
                format!("{} is listed twice", a.url),
            );
        }
        if let Some(reason) = a.name.as_deref().and_then(backend_name_problem) {
            add(&format!("{field}[{i}].name"), reason);
            continue;
        }
        let name = a.name();
        if let Some(j) = backends[..i].iter().position(|b| b.name() == name) {
            add(
                &format!("{field}[{i}].name"),
                format!("{name:?} is already the name of {field}[{j}]; names are unique in a pool"),
            );
        }
    }
}

/// A `passive` block: a percentage, and an ejection that ends.
pub(super) fn check_passive(passive: &PassiveConfig, field: &str, add: &mut Add<'_>) {
    if passive.max_ejected_percent > 100 {
        add(
            &format!("{field}.max_ejected_percent"),
            format!("{}: a percentage is 0 to 100", passive.max_ejected_percent),
        );
    }
    if passive.consecutive_5xx > 0 && passive.ejection_time.is_zero() {
        add(
            &format!("{field}.ejection_time"),
            "must be greater than 0 when consecutive_5xx is set".into(),
        );
    }
}

/// What is wrong with a `backend_idle_connections` of `n`, if anything.
fn idle_connections_problem(n: usize) -> Option<String> {
    (n > super::MAX_BACKEND_IDLE_CONNECTIONS).then(|| {
        format!(
            "{n}: at most {} idle connections per backend and thread",
            super::MAX_BACKEND_IDLE_CONNECTIONS
        )
    })
}
