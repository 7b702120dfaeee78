//! Which config keys a reload changes, and for each whether it can be
//! applied in place (and to which running part) or needs a restart.
//!
//! Every key of the config is listed here by its field path. A section
//! that differs in a way no listed key explains (a key added later and
//! not listed yet) is reported whole as needing a restart, so a change is
//! never silently ignored.

use crate::config::Config;

/// The running part a change is applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    /// `rate_limit.default`: the registry.
    DefaultLimits,
    /// Identification, proxy timeouts, `rate_limit.enabled`: the proxy.
    Proxy,
    /// `health_check.*`: the checker and the pool's thresholds.
    Health,
    /// `log.*`: the log output.
    Log,
    /// `server.tls.certificates`: the TLS listener's certificates.
    Certificates,
    /// `backends`, `balancing.strategy`: the pool.
    Backends,
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    /// Field path (`rate_limit.default`).
    pub(super) key: String,
    /// Where it is applied; `None`: only a restart applies it.
    pub(super) part: Option<Part>,
}

/// Every changed key, in config order.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) keys: Vec<Change>,
}

impl Changes {
    /// Whether any change goes to `part`.
    pub(super) fn touches(&self, part: Part) -> bool {
        self.keys.iter().any(|c| c.part == Some(part))
    }

    fn note(&mut self, key: &str, changed: bool, part: Option<Part>) {
        if changed {
            self.keys.push(Change {
                key: key.to_owned(),
                part,
            });
        }
    }

    /// A section that differs though none of its listed keys did.
    fn rest_of(&mut self, section: &str, old: &impl std::fmt::Debug, new: &impl std::fmt::Debug) {
        let prefix = format!("{section}.");
        let explained = self
            .keys
            .iter()
            .any(|c| c.key == section || c.key.starts_with(&prefix));
        if !explained && format!("{old:?}") != format!("{new:?}") {
            self.note(section, true, None);
        }
    }
}

/// The keys that differ between `old` (running) and `new`.
pub(super) fn diff(old: &Config, new: &Config) -> Changes {
    use Part::*;
    let mut c = Changes::default();
    let restart = None;

    let (o, n) = (&old.server, &new.server);
    c.note("server.listen", o.listen != n.listen, restart);
    c.note(
        "server.drain_timeout",
        o.drain_timeout != n.drain_timeout,
        restart,
    );
    c.note(
        "server.header_read_timeout",
        o.header_read_timeout != n.header_read_timeout,
        restart,
    );
    c.note(
        "server.max_header_bytes",
        o.max_header_bytes != n.max_header_bytes,
        restart,
    );
    c.note(
        "server.max_connections",
        o.max_connections != n.max_connections,
        restart,
    );
    c.note(
        "server.client_body_timeout",
        o.client_body_timeout != n.client_body_timeout,
        Some(Proxy),
    );
    c.note(
        "server.send_timeout",
        o.send_timeout != n.send_timeout,
        restart,
    );
    c.note(
        "server.http2_max_concurrent_streams",
        o.http2_max_concurrent_streams != n.http2_max_concurrent_streams,
        restart,
    );
    c.note(
        "server.proxy_protocol",
        o.proxy_protocol != n.proxy_protocol,
        restart,
    );
    match (&o.tls, &n.tls) {
        (Some(ot), Some(nt)) => {
            c.note("server.tls.listen", ot.listen != nt.listen, restart);
            c.note(
                "server.tls.certificates",
                ot.certificates != nt.certificates,
                Some(Certificates),
            );
            c.note(
                "server.tls.min_version",
                ot.min_version != nt.min_version,
                restart,
            );
            c.note("server.tls.alpn", ot.alpn != nt.alpn, restart);
        }
        (None, None) => {}
        // A TLS listener added or removed.
        _ => c.note("server.tls", true, restart),
    }
    c.rest_of("server", o, n);

    let (o, n) = (&old.admin, &new.admin);
    c.note("admin.listen", o.listen != n.listen, restart);
    c.note("admin.token", o.token != n.token, restart);
    c.note(
        "admin.header_read_timeout",
        o.header_read_timeout != n.header_read_timeout,
        restart,
    );
    c.note(
        "admin.body_read_timeout",
        o.body_read_timeout != n.body_read_timeout,
        restart,
    );
    c.rest_of("admin", o, n);

    c.note("backends", old.backends != new.backends, Some(Backends));
    c.note(
        "balancing.strategy",
        old.balancing.strategy != new.balancing.strategy,
        Some(Backends),
    );
    c.rest_of("balancing", &old.balancing, &new.balancing);

    let (o, n) = (&old.proxy, &new.proxy);
    c.note(
        "proxy.connect_timeout",
        o.connect_timeout != n.connect_timeout,
        Some(Proxy),
    );
    c.note(
        "proxy.request_timeout",
        o.request_timeout != n.request_timeout,
        Some(Proxy),
    );
    c.note(
        "proxy.backend_body_timeout",
        o.backend_body_timeout != n.backend_body_timeout,
        Some(Proxy),
    );
    c.note(
        "proxy.allow_underscores_in_headers",
        o.allow_underscores_in_headers != n.allow_underscores_in_headers,
        Some(Proxy),
    );
    c.note("proxy.ca_file", o.ca_file != n.ca_file, restart);
    c.rest_of("proxy", o, n);

    let (o, n) = (&old.health_check, &new.health_check);
    c.note("health_check.path", o.path != n.path, Some(Health));
    c.note(
        "health_check.interval",
        o.interval != n.interval,
        Some(Health),
    );
    c.note("health_check.timeout", o.timeout != n.timeout, Some(Health));
    c.note(
        "health_check.unhealthy_threshold",
        o.unhealthy_threshold != n.unhealthy_threshold,
        Some(Health),
    );
    c.note(
        "health_check.healthy_threshold",
        o.healthy_threshold != n.healthy_threshold,
        Some(Health),
    );
    c.rest_of("health_check", o, n);

    let (o, n) = (&old.rate_limit, &new.rate_limit);
    // The Redis limiter is built at start only when limiting is on:
    // switching limiting with shared limits configured needs a restart.
    let enabled_part = if n.shared.redis_url.is_some() || o.shared.redis_url.is_some() {
        restart
    } else {
        Some(Proxy)
    };
    c.note("rate_limit.enabled", o.enabled != n.enabled, enabled_part);
    c.note(
        "rate_limit.api_key_header",
        o.api_key_header != n.api_key_header,
        Some(Proxy),
    );
    c.note(
        "rate_limit.trusted_proxies",
        o.trusted_proxies != n.trusted_proxies,
        Some(Proxy),
    );
    c.note(
        "rate_limit.default",
        o.default != n.default,
        Some(DefaultLimits),
    );
    c.note(
        "rate_limit.refill_interval",
        o.refill_interval != n.refill_interval,
        restart,
    );
    c.note(
        "rate_limit.max_clients",
        o.max_clients != n.max_clients,
        restart,
    );
    c.note(
        "rate_limit.idle_timeout",
        o.idle_timeout != n.idle_timeout,
        restart,
    );
    let (os, ns) = (&o.shared, &n.shared);
    c.note(
        "rate_limit.shared.redis_url",
        os.redis_url != ns.redis_url,
        restart,
    );
    c.note(
        "rate_limit.shared.on_failure",
        os.on_failure != ns.on_failure,
        restart,
    );
    c.note(
        "rate_limit.shared.timeout",
        os.timeout != ns.timeout,
        restart,
    );
    c.note(
        "rate_limit.shared.key_prefix",
        os.key_prefix != ns.key_prefix,
        restart,
    );
    c.rest_of("rate_limit", o, n);

    let (o, n) = (&old.store, &new.store);
    c.note("store.url", o.url != n.url, restart);
    c.note(
        "store.snapshot_interval",
        o.snapshot_interval != n.snapshot_interval,
        restart,
    );
    c.note(
        "store.reload_interval",
        o.reload_interval != n.reload_interval,
        restart,
    );
    c.note("store.timeout", o.timeout != n.timeout, restart);
    c.rest_of("store", o, n);

    let (o, n) = (&old.log, &new.log);
    c.note("log.level", o.level != n.level, Some(Log));
    c.note("log.format", o.format != n.format, Some(Log));
    c.rest_of("log", o, n);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(old: &str, new: &str) -> Vec<(String, Option<Part>)> {
        let old = Config::parse(old).expect("old");
        let new = Config::parse(new).expect("new");
        diff(&old, &new)
            .keys
            .into_iter()
            .map(|c| (c.key, c.part))
            .collect()
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let text = "rate_limit:\n  default: {capacity: 5, rate_per_sec: 1}\n";
        assert!(keys(text, text).is_empty());
    }

    #[test]
    fn each_key_says_where_it_goes() {
        let old = "";
        let new = "server:\n  listen: 127.0.0.1:1\nstore:\n  url: sqlite://other.db\n\
                   rate_limit:\n  api_key_header: X-Token\n  default: {capacity: 5, rate_per_sec: 1}\n\
                   proxy:\n  request_timeout: 1s\nlog:\n  level: debug\n\
                   balancing:\n  strategy: random\n";
        let found = keys(old, new);
        for expected in [
            ("server.listen", None),
            ("store.url", None),
            ("rate_limit.api_key_header", Some(Part::Proxy)),
            ("rate_limit.default", Some(Part::DefaultLimits)),
            ("proxy.request_timeout", Some(Part::Proxy)),
            ("log.level", Some(Part::Log)),
            ("balancing.strategy", Some(Part::Backends)),
        ] {
            assert!(
                found.contains(&(expected.0.to_owned(), expected.1)),
                "{expected:?} not in {found:?}"
            );
        }
        assert_eq!(found.len(), 7, "{found:?}");
    }

    #[test]
    fn enabling_limits_with_redis_needs_a_restart() {
        let shared = "rate_limit:\n  shared:\n    redis_url: redis://127.0.0.1:6379\n";
        let off = format!("{shared}  enabled: false\n");
        let found = keys(shared, &off);
        assert_eq!(found, vec![("rate_limit.enabled".to_owned(), None)]);
        let found = keys("", "rate_limit:\n  enabled: false\n");
        assert_eq!(
            found,
            vec![("rate_limit.enabled".to_owned(), Some(Part::Proxy))]
        );
    }
}
