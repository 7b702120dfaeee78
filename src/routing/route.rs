//! One route, compiled: what it matches besides the path (hosts, methods,
//! headers), the pool it sends to, and what it changes on the way (the
//! path's prefix, request and response headers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::hosts::HostPattern;
use super::pools::PoolUse;
use super::trie::PathRule;

/// What a route has been asked, kept by name across reloads so the counts
/// of a route that stays go on.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Requests that took the route.
    pub requests: AtomicU64,
    /// Of those, refused with 429.
    pub limited: AtomicU64,
}

impl RouteStats {
    /// Counts one request that took the route.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one of its requests refused with 429.
    pub fn limited(&self) {
        self.limited.fetch_add(1, Ordering::Relaxed);
    }
}

/// Headers set or removed on a message.
#[derive(Debug, Clone, Default)]
pub struct Edits {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl Edits {
    /// Edits that set `set` and remove `remove`.
    pub fn new(set: Vec<(HeaderName, HeaderValue)>, remove: Vec<HeaderName>) -> Self {
        Self { set, remove }
    }

    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    /// Removes, then sets (a set header replaces every value it had).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// A route, compiled from `routes[i]`.
#[derive(Debug)]
pub struct Route {
    /// Its name (metrics, logs, the admin API).
    pub name: Arc<str>,
    /// Its path condition, as written (the trie matches it; kept to be
    /// shown).
    pub(super) path: PathRule,
    /// Whether paths are compared without regard to ASCII case.
    pub(super) ignore_case: bool,
    /// Empty: every host.
    pub(super) hosts: Vec<HostPattern>,
    /// Empty: every method.
    pub(super) methods: Vec<Method>,
    /// Required headers: a value, or `None` for present.
    pub(super) headers: Vec<(HeaderName, Option<HeaderValue>)>,
    /// The matched prefix and its replacement, or the exact path and its
    /// replacement.
    pub(super) rewrite: Option<(String, String)>,
    /// Where its requests go.
    pub pool: Arc<PoolUse>,
    /// Set or removed on the request before it is forwarded.
    pub request_headers: Edits,
    /// Set or removed on every answer to its requests.
    pub response_headers: Edits,
    /// Its counts.
    pub stats: Arc<RouteStats>,
}

impl Route {
    /// Its path condition.
    pub fn path(&self) -> &PathRule {
        &self.path
    }

    /// Whether it compares paths without regard to ASCII case.
    pub fn ignore_case(&self) -> bool {
        self.ignore_case
    }

    /// The hosts it takes (empty: every host).
    pub fn hosts(&self) -> &[HostPattern] {
        &self.hosts
    }

    /// The methods it takes (empty: every method; `GET` takes `HEAD`).
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// The headers it requires: a value, or `None` for present.
    pub fn headers(&self) -> &[(HeaderName, Option<HeaderValue>)] {
        &self.headers
    }

    /// What replaces the start of a path it matched, if it rewrites.
    pub fn rewrite_to(&self) -> Option<&str> {
        self.rewrite.as_ref().map(|(_, to)| to.as_str())
    }

    /// Whether a request with this (normalized) host, method and headers
    /// takes the route, its path having matched already.
    pub(super) fn admits(&self, host: Option<&str>, method: &Method, headers: &HeaderMap) -> bool {
        let host_ok =
            self.hosts.is_empty() || host.is_some_and(|h| self.hosts.iter().any(|p| p.matches(h)));
        let method_ok = self.methods.is_empty()
            || self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET));
        host_ok
            && method_ok
            && self
                .headers
                .iter()
                .all(|(name, want)| match (headers.get(name), want) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(v), Some(w)) => v == w,
                })
    }

    /// The path the backend gets for `path`: the matched prefix replaced
    /// (`/api/x` → `/x` for `/api` → `/`, never `//x`); `None` when the
    /// route rewrites nothing.
    pub fn rewritten(&self, path: &str) -> Option<String> {
        let (from, to) = self.rewrite.as_ref()?;
        // The route matched, so `path` starts with `from` (in its case).
        let rest = path.get(from.len()..).unwrap_or("");
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        let mut out = String::with_capacity(to.len() + rest.len() + 1);
        out.push_str(to);
        if !rest.is_empty() || (path.ends_with('/') && !to.ends_with('/')) {
            if !out.ends_with('/') {
                out.push('/');
            }
            out.push_str(rest);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(from: &str, to: &str) -> Route {
        Route {
            name: "r".into(),
            path: PathRule::Prefix(from.into()),
            ignore_case: false,
            hosts: Vec::new(),
            methods: Vec::new(),
            headers: Vec::new(),
            rewrite: Some((from.into(), to.into())),
            pool: Arc::new(PoolUse::detached("p")),
            request_headers: Edits::default(),
            response_headers: Edits::default(),
            stats: Arc::default(),
        }
    }

    #[test]
    fn rewrite_replaces_the_prefix_and_never_doubles_a_slash() {
        let r = route("/api", "/");
        assert_eq!(r.rewritten("/api").as_deref(), Some("/"));
        assert_eq!(r.rewritten("/api/").as_deref(), Some("/"));
        assert_eq!(r.rewritten("/api/x").as_deref(), Some("/x"));
        assert_eq!(r.rewritten("/api/x/y/").as_deref(), Some("/x/y/"));
        let r = route("/api", "/v2");
        assert_eq!(r.rewritten("/api").as_deref(), Some("/v2"));
        assert_eq!(r.rewritten("/api/").as_deref(), Some("/v2/"));
        assert_eq!(r.rewritten("/api/x").as_deref(), Some("/v2/x"));
        let r = route("/api/", "/v2/");
        assert_eq!(r.rewritten("/api/x").as_deref(), Some("/v2/x"));
    }
}
