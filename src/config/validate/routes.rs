//! `pools` and `routes`: names, backends, a pool for every route, no
//! route hidden behind an earlier one, no pool that no route reaches.

use std::time::Duration;

use super::{check_backend_list, check_passive, Add};
use crate::config::schema::{Config, DEFAULT_POOL};
use crate::routing::trie::PathRule;
use crate::routing::RouteSpec;

/// Retries of one request at most: each is another backend's time.
const MAX_RETRIES: u32 = 10;

/// Whether `name` is usable as a pool or route name: it goes into metric
/// labels, URL paths and log lines.
fn name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    (!ok).then(|| format!("{name:?}: use [a-z0-9_-]+, at most 64 characters"))
}

impl Config {
    /// `pools`: names, backends, overrides.
    pub(super) fn check_pools(&self, add: &mut Add<'_>) {
        for (name, pool) in &self.pools {
            let at = format!("pools.{name}");
            if let Some(p) = name_problem(name) {
                add(&at, p);
            }
            if name == DEFAULT_POOL {
                add(
                    &at,
                    "`default` is the top-level backends list: write its backends there".into(),
                );
            }
            if pool.backends.is_empty() && pool.discovery.is_none() {
                add(
                    &format!("{at}.backends"),
                    "at least one backend is required (or `discovery`)".into(),
                );
            }
            check_backend_list(&pool.backends, &format!("{at}.backends"), add);
            let strategy = pool.strategy.unwrap_or(self.balancing.strategy);
            super::selection::check(pool, strategy, &at, add);
            let hc = &pool.health_check;
            if let Some(p) = &hc.passive {
                check_passive(p, &format!("{at}.health_check.passive"), add);
            }
            if hc.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
                add(
                    &format!("{at}.health_check.path"),
                    "must start with /".into(),
                );
            }
            let protocol = pool.protocol.unwrap_or(self.proxy.protocol);
            let grpc = hc.grpc.unwrap_or(self.health_check.grpc);
            if let Some(p) = super::grpc_check_problem(grpc, protocol) {
                add(&format!("{at}.health_check.grpc"), p);
            }
            let px = &pool.proxy;
            let durations: [(&str, Option<Duration>); 6] = [
                ("health_check.interval", hc.interval),
                ("health_check.timeout", hc.timeout),
                ("proxy.connect_timeout", px.connect_timeout),
                ("proxy.request_timeout", px.request_timeout),
                ("proxy.backend_body_timeout", px.backend_body_timeout),
                ("proxy.upgrade_idle_timeout", px.upgrade_idle_timeout),
            ];
            for (field, d) in durations {
                if d.is_some_and(|d| d.is_zero()) {
                    add(&format!("{at}.{field}"), "must be greater than 0".into());
                }
            }
            super::traffic::check_pool_traffic(pool, &at, add);
            if let Some(p) = px
                .backend_idle_connections
                .and_then(super::idle_connections_problem)
            {
                add(&format!("{at}.proxy.backend_idle_connections"), p);
            }
            if pool.retries.attempts > MAX_RETRIES {
                add(
                    &format!("{at}.retries.attempts"),
                    format!("{}: at most {MAX_RETRIES}", pool.retries.attempts),
                );
            }
        }
    }

    /// `routes`: names, their pools, shadowed routes, and pools no route
    /// reaches.
    pub(super) fn check_routes(&self, add: &mut Add<'_>) {
        let mut compiled: Vec<(usize, RouteSpec)> = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if let Some(p) = name_problem(&route.name) {
                add(&format!("{at}.name"), p);
            }
            if let Some(j) = self.routes[..i].iter().position(|r| r.name == route.name) {
                add(
                    &format!("{at}.name"),
                    format!(
                        "{:?} is already the name of routes[{j}]; names are unique",
                        route.name
                    ),
                );
            }
            self.check_route_pool(&route.pool, &format!("{at}.pool"), add);
            match route.spec() {
                Ok(spec) => compiled.push((i, spec)),
                Err(wrong) => {
                    for (field, reason) in wrong {
                        add(&format!("{at}.{field}"), reason);
                    }
                }
            }
        }
        for (k, (j, later)) in compiled.iter().enumerate() {
            if let Some((i, earlier)) = compiled[..k].iter().find(|(_, e)| covers(e, later)) {
                add(
                    &format!("routes[{j}]"),
                    format!(
                        "{:?} is never taken: routes[{i}] ({:?}) comes first and matches every request it matches",
                        later.name, earlier.name
                    ),
                );
            }
        }
        for (i, rule) in self.rate_limit.rules.iter().enumerate() {
            for name in &rule.matcher.routes {
                if !self.routes.iter().any(|r| &r.name == name) {
                    add(
                        &format!("rate_limit.rules[{i}].match.routes"),
                        format!("{name:?} is not a route"),
                    );
                }
            }
        }
        if !self.routes.is_empty() {
            for name in self.pools.keys() {
                if !self.routes.iter().any(|r| &r.pool == name) {
                    add(
                        &format!("pools.{name}"),
                        "no route sends requests to this pool".into(),
                    );
                }
            }
        }
    }

    /// A route's pool must exist, and `default` must have backends.
    fn check_route_pool(&self, pool: &str, field: &str, add: &mut Add<'_>) {
        if pool == DEFAULT_POOL {
            if self.backends.is_empty() {
                add(
                    field,
                    "the default pool (top-level backends) is empty".into(),
                );
            }
        } else if !self.pools.contains_key(pool) {
            let known: Vec<&str> = std::iter::once(DEFAULT_POOL)
                .chain(self.pools.keys().map(String::as_str))
                .collect();
            add(
                field,
                format!("{pool:?} is not a pool (pools: {})", known.join(", ")),
            );
        }
    }
}

/// Whether route `a` takes every request route `b` would take.
fn covers(a: &RouteSpec, b: &RouteSpec) -> bool {
    let hosts = a.hosts.is_empty()
        || (!b.hosts.is_empty()
            && b.hosts
                .iter()
                .all(|hb| a.hosts.iter().any(|ha| hb.covered_by(ha))));
    let methods = a.methods.is_empty()
        || (!b.methods.is_empty()
            && b.methods.iter().all(|m| {
                a.methods.contains(m)
                    || (*m == http::Method::HEAD && a.methods.contains(&http::Method::GET))
            }));
    let headers = a.headers.iter().all(|(name, want)| {
        b.headers
            .iter()
            .any(|(n, v)| n == name && (want.is_none() || v == want))
    });
    hosts && methods && headers && path_covers(a, b)
}

/// Whether `a`'s path condition takes every path `b`'s takes.
fn path_covers(a: &RouteSpec, b: &RouteSpec) -> bool {
    // A case-sensitive route does not take every case a folding one does.
    if b.ignore_case && !a.ignore_case {
        return matches!(a.path, PathRule::Any);
    }
    let fold = |p: &str| {
        if a.ignore_case {
            p.to_ascii_lowercase()
        } else {
            p.to_owned()
        }
    };
    match (&a.path, &b.path) {
        (PathRule::Any, _) => true,
        (_, PathRule::Any) => false,
        (PathRule::Exact(pa), PathRule::Exact(pb)) => fold(pa) == fold(pb),
        (PathRule::Exact(_), PathRule::Prefix(_)) => false,
        (PathRule::Prefix(pa), PathRule::Prefix(pb) | PathRule::Exact(pb)) => {
            let (pa, pb) = (fold(pa), fold(pb));
            pa == "/"
                || (pb.starts_with(&pa)
                    && (pa.ends_with('/')
                        || pb.len() == pa.len()
                        || pb.as_bytes()[pa.len()] == b'/'))
        }
    }
}
