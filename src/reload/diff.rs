//! Which config keys a reload changes, and for each whether it can be
//! applied in place (and to which running part) or needs a restart.
//!
//! Every key of the config is listed here by its field path. A section
//! that differs in a key not listed (one added to the config later) is
//! reported whole as needing a restart, so a change is never silently
//! ignored.
//!
//! Besides the changed keys, a diff says what runs once the in-place
//! changes are made ([`Changes::running`]): the new value of every key
//! applied in place, the old one of every key only a restart applies.
//! The reloader keeps that, not the file it read, as the running config,
//! so the next reload of the same file still reports the restart it is
//! waiting for.

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
    /// `rate_limit.rules`: the proxy's rule set.
    Rules,
    /// `pools`, `routes`: the pools and the routing table.
    Routing,
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Change {
    /// Field path (`rate_limit.default`).
    pub(super) key: String,
    /// Where it is applied; `None`: only a restart applies it.
    pub(super) part: Option<Part>,
}

/// Every changed key, in config order, and the config that runs once
/// the in-place ones are made.
#[derive(Debug, Default)]
pub(super) struct Changes {
    pub(super) keys: Vec<Change>,
    /// The old config with the keys applied in place taken from the new.
    pub(super) running: Config,
}

impl Changes {
    /// Whether any change goes to `part`.
    pub(super) fn touches(&self, part: Part) -> bool {
        self.keys.iter().any(|c| c.part == Some(part))
    }

    fn note(&mut self, key: &str, part: Option<Part>) {
        self.keys.push(Change {
            key: key.to_owned(),
            part,
        });
    }

    /// Compares one section key by key: see [`Section`].
    fn section<'a, T: Clone + std::fmt::Debug>(
        &'a mut self,
        name: &'a str,
        old: &T,
        new: &T,
    ) -> Section<'a, T> {
        Section {
            changes: self,
            name,
            seen: old.clone(),
            new: new.clone(),
            running: old.clone(),
        }
    }
}

/// One section being compared. Each listed key is compared and then
/// copied from the new section into `seen`; at the end, a `seen` that
/// still differs from the new section means a key nobody listed changed
/// (one added to the config later), and the section is reported whole as
/// needing a restart. `running` starts as the old section and takes the
/// new value of each key applied in place.
struct Section<'a, T: std::fmt::Debug> {
    changes: &'a mut Changes,
    name: &'a str,
    seen: T,
    new: T,
    running: T,
}

impl<T: std::fmt::Debug> Section<'_, T> {
    /// The key `name.key`, reached by `field`, applied to `part` (`None`:
    /// by a restart).
    fn key<F: PartialEq + Clone>(
        &mut self,
        key: &str,
        field: impl Fn(&mut T) -> &mut F,
        part: Option<Part>,
    ) -> &mut Self {
        let new = field(&mut self.new).clone();
        let seen = field(&mut self.seen);
        if *seen != new {
            *seen = new.clone();
            if part.is_some() {
                *field(&mut self.running) = new;
            }
            let path = format!("{}.{key}", self.name);
            self.changes.note(&path, part);
        }
        self
    }

    /// Reports the section whole if an unlisted key changed (its old
    /// value keeps running), and returns the section as it now runs.
    fn rest(&mut self) -> T
    where
        T: Clone,
    {
        if format!("{:?}", self.seen) != format!("{:?}", self.new) {
            let name = self.name.to_owned();
            self.changes.note(&name, None);
        }
        self.running.clone()
    }
}

/// The keys that differ between `old` (running) and `new`, and what runs
/// once the in-place ones are applied.
pub(super) fn diff(old: &Config, new: &Config) -> Changes {
    use Part::*;
    let mut c = Changes::default();
    let mut running = old.clone();
    let restart = None;

    // TLS first: its keys are listed under `server.tls`, and the server
    // section below then takes the TLS listener as compared.
    let tls = match (&old.server.tls, &new.server.tls) {
        (Some(o), Some(n)) => Some(
            c.section("server.tls", o, n)
                .key("listen", |t| &mut t.listen, restart)
                .key("certificates", |t| &mut t.certificates, Some(Certificates))
                .key("min_version", |t| &mut t.min_version, restart)
                .key("alpn", |t| &mut t.alpn, restart)
                .rest(),
        ),
        (None, None) => None,
        // A TLS listener added or removed.
        _ => {
            c.note("server.tls", restart);
            old.server.tls.clone()
        }
    };
    let mut server_new = new.server.clone();
    server_new.tls.clone_from(&old.server.tls);
    running.server = c
        .section("server", &old.server, &server_new)
        .key("listen", |s| &mut s.listen, restart)
        .key("drain_timeout", |s| &mut s.drain_timeout, restart)
        .key(
            "header_read_timeout",
            |s| &mut s.header_read_timeout,
            restart,
        )
        .key("max_header_bytes", |s| &mut s.max_header_bytes, restart)
        .key("max_connections", |s| &mut s.max_connections, restart)
        .key(
            "client_body_timeout",
            |s| &mut s.client_body_timeout,
            Some(Proxy),
        )
        .key("send_timeout", |s| &mut s.send_timeout, restart)
        .key(
            "http2_max_concurrent_streams",
            |s| &mut s.http2_max_concurrent_streams,
            restart,
        )
        .key("proxy_protocol", |s| &mut s.proxy_protocol, restart)
        // A UDP socket and its thread: bound at start like the others.
        .key("http3", |s| &mut s.http3, restart)
        .rest();
    running.server.tls = tls;

    running.admin = c
        .section("admin", &old.admin, &new.admin)
        .key("listen", |a| &mut a.listen, restart)
        .key("token", |a| &mut a.token, restart)
        .key(
            "header_read_timeout",
            |a| &mut a.header_read_timeout,
            restart,
        )
        .key("body_read_timeout", |a| &mut a.body_read_timeout, restart)
        .key("allowed_hosts", |a| &mut a.allowed_hosts, restart)
        .rest();

    if old.backends != new.backends {
        c.note("backends", Some(Backends));
        running.backends.clone_from(&new.backends);
    }
    running.balancing = c
        .section("balancing", &old.balancing, &new.balancing)
        .key("strategy", |b| &mut b.strategy, Some(Backends))
        .rest();

    running.proxy = c
        .section("proxy", &old.proxy, &new.proxy)
        .key("connect_timeout", |p| &mut p.connect_timeout, Some(Proxy))
        .key("request_timeout", |p| &mut p.request_timeout, Some(Proxy))
        .key(
            "backend_body_timeout",
            |p| &mut p.backend_body_timeout,
            Some(Proxy),
        )
        .key(
            "allow_underscores_in_headers",
            |p| &mut p.allow_underscores_in_headers,
            Some(Proxy),
        )
        .key(
            "upgrade_idle_timeout",
            |p| &mut p.upgrade_idle_timeout,
            Some(Proxy),
        )
        .key("ca_file", |p| &mut p.ca_file, restart)
        .key("protocol", |p| &mut p.protocol, Some(Proxy))
        .key(
            "backend_idle_connections",
            |p| &mut p.backend_idle_connections,
            Some(Proxy),
        )
        .rest();

    running.health_check = c
        .section("health_check", &old.health_check, &new.health_check)
        .key("path", |h| &mut h.path, Some(Health))
        .key("interval", |h| &mut h.interval, Some(Health))
        .key("timeout", |h| &mut h.timeout, Some(Health))
        .key(
            "unhealthy_threshold",
            |h| &mut h.unhealthy_threshold,
            Some(Health),
        )
        .key(
            "healthy_threshold",
            |h| &mut h.healthy_threshold,
            Some(Health),
        )
        .key("passive", |h| &mut h.passive, Some(Backends))
        .key("grpc", |h| &mut h.grpc, Some(Health))
        .key("grpc_service", |h| &mut h.grpc_service, Some(Health))
        .rest();

    let (o, n) = (&old.rate_limit, &new.rate_limit);
    let shared = c
        .section("rate_limit.shared", &o.shared, &n.shared)
        .key("redis_url", |s| &mut s.redis_url, restart)
        .key("on_failure", |s| &mut s.on_failure, restart)
        .key("timeout", |s| &mut s.timeout, restart)
        .key("key_prefix", |s| &mut s.key_prefix, restart)
        .rest();
    // The Redis limiter is built at start only when limiting is on:
    // switching limiting with shared limits configured needs a restart.
    let enabled_part = if n.shared.redis_url.is_some() || o.shared.redis_url.is_some() {
        restart
    } else {
        Some(Proxy)
    };
    let mut rate_limit_new = n.clone();
    rate_limit_new.shared.clone_from(&o.shared);
    running.rate_limit = c
        .section("rate_limit", o, &rate_limit_new)
        .key("enabled", |r| &mut r.enabled, enabled_part)
        .key("api_key_header", |r| &mut r.api_key_header, Some(Proxy))
        .key("trusted_proxies", |r| &mut r.trusted_proxies, Some(Proxy))
        .key("ipv6_prefix", |r| &mut r.ipv6_prefix, Some(Proxy))
        .key("dry_run", |r| &mut r.dry_run, Some(Proxy))
        .key("rules", |r| &mut r.rules, Some(Rules))
        .key("default", |r| &mut r.default, Some(DefaultLimits))
        .key("refill_interval", |r| &mut r.refill_interval, restart)
        .key("max_clients", |r| &mut r.max_clients, restart)
        .key("idle_timeout", |r| &mut r.idle_timeout, restart)
        .rest();
    running.rate_limit.shared = shared;

    running.store = c
        .section("store", &old.store, &new.store)
        .key("url", |s| &mut s.url, restart)
        .key("snapshot_interval", |s| &mut s.snapshot_interval, restart)
        .key("reload_interval", |s| &mut s.reload_interval, restart)
        .key("timeout", |s| &mut s.timeout, restart)
        .key("notify", |s| &mut s.notify, restart)
        .rest();

    let names: std::collections::BTreeSet<&String> =
        old.pools.keys().chain(new.pools.keys()).collect();
    for name in names {
        if old.pools.get(name) != new.pools.get(name) {
            c.note(&format!("pools.{name}"), Some(Routing));
        }
    }
    running.pools.clone_from(&new.pools);
    if old.routes != new.routes {
        c.note("routes", Some(Routing));
        running.routes.clone_from(&new.routes);
    }

    running.log = c
        .section("log", &old.log, &new.log)
        .key("level", |l| &mut l.level, Some(Log))
        .key("format", |l| &mut l.format, Some(Log))
        .key("access", |l| &mut l.access, restart)
        .rest();

    // The exporter, its queue and the sampler are built at start.
    c.section("telemetry", &old.telemetry, &new.telemetry)
        .key("otlp", |t| &mut t.otlp, restart)
        .rest();
    c.running = running;
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
    fn span_export_changes_need_a_restart() {
        let on = "telemetry:\n  otlp: {endpoint: 'http://c:4318'}\n";
        let other = "telemetry:\n  otlp: {endpoint: 'http://c:4318', sample_ratio: 1}\n";
        assert_eq!(keys("", on), vec![("telemetry.otlp".to_owned(), None)]);
        assert_eq!(keys(on, other), vec![("telemetry.otlp".to_owned(), None)]);
        assert!(keys(on, on).is_empty());
    }

    #[test]
    fn http3_changes_need_a_restart() {
        let tls = "server:\n  tls:\n    certificates: [{cert: a.pem, key: a.key}]\n";
        let on = format!("{tls}  http3: {{listen: 127.0.0.1:8443}}\n");
        let restart = vec![("server.http3".to_owned(), None)];
        assert_eq!(keys(tls, &on), restart, "turned on");
        assert_eq!(keys(&on, tls), restart, "turned off");
        let longer = format!("{tls}  http3: {{listen: 127.0.0.1:8443, alt_svc_max_age: 1h}}\n");
        assert_eq!(keys(&on, &longer), restart, "another max age");
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

    #[test]
    fn what_runs_takes_only_the_keys_applied_in_place() {
        let old = Config::parse("server:\n  listen: 127.0.0.1:1\n").expect("old");
        let new = Config::parse(
            "server:\n  listen: 127.0.0.1:2\n  client_body_timeout: 7s\n\
             rate_limit:\n  default: {capacity: 5, rate_per_sec: 1}\n  max_clients: 9\n",
        )
        .expect("new");
        let changes = diff(&old, &new);
        let running = &changes.running;
        assert_eq!(running.server.listen, old.server.listen, "restart only");
        assert_eq!(running.rate_limit.max_clients, old.rate_limit.max_clients);
        assert_eq!(
            running.server.client_body_timeout,
            new.server.client_body_timeout
        );
        assert_eq!(running.rate_limit.default, new.rate_limit.default);
        // The same file again still differs from what runs.
        let again: Vec<String> = diff(running, &new)
            .keys
            .into_iter()
            .map(|c| c.key)
            .collect();
        assert_eq!(again, vec!["server.listen", "rate_limit.max_clients"]);
    }
}
