//! Routes and pools: which pool a request goes to, and what changes on
//! the way.
//!
//! A [`Routing`] is compiled once per config and swapped whole with the
//! rest of the request path's settings, so a request runs on one version
//! of the routes and pools from start to end, and a reload never leaves
//! a route pointing at a pool that is not there. Routes are tried in
//! order and the first that matches wins (nginx's `location` order is
//! different; HAProxy's `use_backend` and Envoy's route list are the
//! same). Matching does not scan every route: a trie of path segments
//! ([`trie`]) gives the routes whose path condition a request meets in
//! one walk down its path, and only those are checked for host, method
//! and headers, in route order.
//!
//! - [`hosts`]: host names and `*.` wildcards.
//! - [`trie`]: paths to candidate routes.
//! - [`route`]: one route: its conditions, rewrite and header edits.
//! - [`pools`]: the live pools with their health checkers, and what a
//!   request needs of one.

pub mod hosts;
pub mod pools;
pub mod route;
pub mod traffic;
pub mod trie;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use http::{HeaderMap, HeaderName, Method};

use hosts::{request_host, HostPattern};
use pools::PoolUse;
use route::{Route, RouteStats};
use trie::{PathRule, Trie};

pub use route::Edits;

/// The name of the pool made of the top-level `backends`.
pub const DEFAULT_POOL: &str = "default";

/// Where a request goes.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The route it took; `None` when it went to the default pool for
    /// want of one (or no routes are configured).
    pub route: Option<&'a Route>,
    /// The pool it goes to.
    pub pool: &'a PoolUse,
}

/// Why a request has no target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route matches and there is no default pool: 404.
    NoRoute,
    /// A header a route matches on was sent twice: 400.
    DoubledHeader,
}

/// One route as the config compiles it, before it is given its pool.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Its name.
    pub name: String,
    /// Hosts; empty: every host.
    pub hosts: Vec<HostPattern>,
    /// Its path condition (normalized form).
    pub path: PathRule,
    /// Compare paths folded to lower case.
    pub ignore_case: bool,
    /// Methods; empty: every method.
    pub methods: Vec<Method>,
    /// Required headers (`None`: present).
    pub headers: Vec<(HeaderName, Option<http::HeaderValue>)>,
    /// The replacement of the matched prefix (or exact path).
    pub rewrite: Option<String>,
    /// The pool's name.
    pub pool: String,
    /// Request header edits.
    pub request_headers: Edits,
    /// Response header edits.
    pub response_headers: Edits,
}

/// The counts of every route by name, kept across reloads.
#[derive(Debug, Default)]
pub struct StatsByRoute(Mutex<HashMap<String, Arc<RouteStats>>>);

impl StatsByRoute {
    /// The counts of route `name` (new at zero if it had none).
    pub fn of(&self, name: &str) -> Arc<RouteStats> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

/// Reads the routing in force. A reload swaps it whole, so a part that
/// lives across reloads (the admin API, the status sampler) asks for it
/// each time it needs it rather than keeping a copy that would go stale.
pub trait InForce: Send + Sync + std::fmt::Debug {
    /// The routes and pools in force now.
    fn current(&self) -> Arc<Routing>;
}

/// The routes and pools in force.
#[derive(Debug)]
pub struct Routing {
    routes: Vec<Route>,
    trie: Trie,
    /// Routes that ignore case, by their folded path; `None`: there are
    /// none, and no path is folded.
    folded: Option<Trie>,
    /// Headers some route matches on: each must come at most once.
    matched_headers: Vec<HeaderName>,
    /// Whether some route names hosts (else the host is not looked at).
    hosts_matter: bool,
    /// Where a request no route takes goes: the default pool, unless
    /// routes are configured and it has no backends.
    fallback: Option<Arc<PoolUse>>,
    /// Every pool, by name.
    pools: BTreeMap<String, Arc<PoolUse>>,
    /// Whether `pools` or `routes` are configured: then metrics and log
    /// lines carry `route` and `pool`.
    labelled: bool,
}

impl Routing {
    /// Only the default pool: a config without routes or pools.
    pub fn single(default: Arc<PoolUse>) -> Self {
        Self {
            routes: Vec::new(),
            trie: Trie::default(),
            folded: None,
            matched_headers: Vec::new(),
            hosts_matter: false,
            pools: BTreeMap::from([(default.name.to_string(), default.clone())]),
            fallback: Some(default),
            labelled: false,
        }
    }

    /// Compiles `specs` over `pools` (each route's pool is there: the
    /// config was validated). `labelled`: pools or routes are configured.
    pub fn compile(
        specs: Vec<RouteSpec>,
        pools: BTreeMap<String, Arc<PoolUse>>,
        stats: &StatsByRoute,
        labelled: bool,
    ) -> Self {
        let mut trie = Trie::default();
        let mut folded: Option<Trie> = None;
        let mut matched_headers: Vec<HeaderName> = Vec::new();
        let mut routes = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            if spec.ignore_case {
                folded
                    .get_or_insert_with(Trie::default)
                    .insert(i, &fold(&spec.path));
            } else {
                trie.insert(i, &spec.path);
            }
            for (name, _) in &spec.headers {
                if !matched_headers.contains(name) {
                    matched_headers.push(name.clone());
                }
            }
            let rewrite = spec.rewrite.map(|to| match &spec.path {
                PathRule::Prefix(p) | PathRule::Exact(p) => (p.clone(), to),
                PathRule::Any => (String::new(), to),
            });
            let pool = pools
                .get(&spec.pool)
                .cloned()
                .unwrap_or_else(|| Arc::new(PoolUse::detached(&spec.pool)));
            routes.push(Route {
                stats: stats.of(&spec.name),
                name: spec.name.into(),
                path: spec.path,
                ignore_case: spec.ignore_case,
                hosts: spec.hosts,
                methods: spec.methods,
                headers: spec.headers,
                rewrite,
                pool,
                request_headers: spec.request_headers,
                response_headers: spec.response_headers,
            });
        }
        let fallback = pools
            .get(DEFAULT_POOL)
            .filter(|p| routes.is_empty() || !p.pool.backends().is_empty())
            .cloned();
        Self {
            hosts_matter: routes.iter().any(|r| !r.hosts.is_empty()),
            routes,
            trie,
            folded,
            matched_headers,
            fallback,
            pools,
            labelled,
        }
    }

    /// Whether metrics and log lines name the route and the pool.
    pub fn labelled(&self) -> bool {
        self.labelled
    }

    /// The routes, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Every pool, by name.
    pub fn pools(&self) -> &BTreeMap<String, Arc<PoolUse>> {
        &self.pools
    }

    /// Every pool, [`DEFAULT_POOL`] first, then the others by name: the
    /// order the admin API and the status page list them in. The default
    /// pool is left out when it has no backends (routes are configured
    /// and the top-level `backends` is empty): nothing was configured
    /// there, and no request goes there.
    pub fn pools_in_order(&self) -> impl Iterator<Item = &Arc<PoolUse>> {
        let default = self
            .pools
            .get(DEFAULT_POOL)
            .filter(|p| !p.pool.backends().is_empty());
        default.into_iter().chain(
            self.pools
                .iter()
                .filter(|(name, _)| name.as_str() != DEFAULT_POOL)
                .map(|(_, p)| p),
        )
    }

    /// The default pool, if requests can reach it.
    pub fn fallback(&self) -> Option<&Arc<PoolUse>> {
        self.fallback.as_ref()
    }

    /// Where a request with this `Host` value, method, normalized path and
    /// headers goes.
    pub fn target(
        &self,
        host: Option<&[u8]>,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Target<'_>, Miss> {
        if self.routes.is_empty() {
            return self.fallback_target();
        }
        if self
            .matched_headers
            .iter()
            .any(|n| headers.get_all(n).iter().nth(1).is_some())
        {
            return Err(Miss::DoubledHeader);
        }
        let host = host.filter(|_| self.hosts_matter).and_then(request_host);
        // The first route (lowest index) whose conditions all hold.
        let mut first: Option<usize> = None;
        let mut consider = |i: usize| {
            if first.is_none_or(|f| i < f) && self.routes[i].admits(host, method, headers) {
                first = Some(i);
            }
        };
        self.trie.candidates(path, &mut consider);
        if let Some(folded) = &self.folded {
            folded.candidates(&path.to_ascii_lowercase(), &mut consider);
        }
        match first.map(|i| &self.routes[i]) {
            Some(route) => Ok(Target {
                route: Some(route),
                pool: &route.pool,
            }),
            None => self.fallback_target(),
        }
    }

    fn fallback_target(&self) -> Result<Target<'_>, Miss> {
        self.fallback
            .as_deref()
            .map(|pool| Target { route: None, pool })
            .ok_or(Miss::NoRoute)
    }
}

/// `rule` with its path in lower case.
fn fold(rule: &PathRule) -> PathRule {
    match rule {
        PathRule::Any => PathRule::Any,
        PathRule::Prefix(p) => PathRule::Prefix(p.to_ascii_lowercase()),
        PathRule::Exact(p) => PathRule::Exact(p.to_ascii_lowercase()),
    }
}
