//! Limit rules (`rate_limit.rules`): extra buckets a request must pass
//! besides its client's, chosen by path prefix and method, each keyed by
//! the client, its address or a header, with its own limits, cost and
//! dry-run flag.
//!
//! Each rule keeps its buckets in a [`Registry`] of its own, built like the
//! client registry (same `max_clients` bound, same eviction of idle full
//! buckets, same refill tick), so a rule's keys can never collide with
//! another rule's or a client's, and a rule's buckets keep their levels
//! across a reload that keeps the rule's name ([`RuleSet::replace`]).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, Method};

use super::rule_paths::RulePaths;
use super::{ClientKey, Limits, Registry, RegistryConfig};
use crate::routing::hosts::HostPattern;

/// What a rule's bucket is keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKey {
    /// The client's own key: its API key when it has a valid one in the
    /// client table, else its address.
    Client,
    /// The client's address (IPv6 grouped by `rate_limit.ipv6_prefix`).
    Ip,
    /// The value of a request header; a request without it is not matched.
    Header(HeaderName),
}

impl RuleKey {
    /// `client`, `ip` or `header:NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Self::Client),
            "ip" => Ok(Self::Ip),
            _ => match s.strip_prefix("header:") {
                Some(name) => HeaderName::from_bytes(name.as_bytes())
                    .map(Self::Header)
                    .map_err(|_| format!("{name:?} is not a valid header name")),
                None => Err(format!(
                    "{s:?}: expected client, ip or header:NAME (e.g. header:X-Tenant)"
                )),
            },
        }
    }
}

impl std::fmt::Display for RuleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client => f.write_str("client"),
            Self::Ip => f.write_str("ip"),
            Self::Header(name) => write!(f, "header:{name}"),
        }
    }
}

/// One rule as configured, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// `[a-z0-9_-]+`, unique: in metrics, logs and `RateLimit-Policy`.
    pub name: String,
    /// Requests whose (normalized) path starts with this.
    pub path_prefix: String,
    /// Compare the path without regard to ASCII case.
    pub ignore_case: bool,
    /// Routes whose requests it applies to; empty: every route (and
    /// requests that took none).
    pub routes: Vec<String>,
    /// Hosts whose requests it applies to; empty: every host.
    pub hosts: Vec<HostPattern>,
    /// Methods it applies to; empty: every method.
    pub methods: Vec<Method>,
    /// What its buckets are keyed by.
    pub key: RuleKey,
    /// Each bucket's limits.
    pub limits: Limits,
    /// Tokens one request takes (at most the capacity).
    pub cost: NonZeroU32,
    /// Decide and count, never refuse.
    pub dry_run: bool,
}

impl RuleSpec {
    /// Whether a request with this method and (normalized) path, on this
    /// route and host, is subject to the rule. A rule on `GET` takes
    /// `HEAD` too: a HEAD is a GET without the body, and a HEAD flood is a
    /// GET flood.
    pub fn matches(&self, method: &Method, path: &str, place: Place<'_>) -> bool {
        let route_ok = self.routes.is_empty()
            || place
                .route
                .is_some_and(|r| self.routes.iter().any(|n| n == r));
        let host_ok = self.hosts.is_empty()
            || place
                .host
                .is_some_and(|h| self.hosts.iter().any(|p| p.matches(h)));
        route_ok && host_ok && self.matches_request(method, path)
    }

    fn matches_request(&self, method: &Method, path: &str) -> bool {
        let prefix = self.path_prefix.as_bytes();
        let starts = if self.ignore_case {
            path.len() >= prefix.len()
                && path.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix)
        } else {
            path.as_bytes().starts_with(prefix)
        };
        starts
            && (self.methods.is_empty()
                || self.methods.contains(method)
                || (method == Method::HEAD && self.methods.contains(&Method::GET)))
    }
}

/// Where a request is, besides its method and path: what rules may also
/// match on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Place<'a> {
    /// The route it took.
    pub route: Option<&'a str>,
    /// Its host (normalized: no port, lower case).
    pub host: Option<&'a str>,
}

/// A rule with its buckets.
#[derive(Debug)]
pub struct Rule {
    /// What it is.
    pub spec: RuleSpec,
    /// Its name, shared by every answer it shapes.
    pub name: Arc<str>,
    /// Its buckets.
    pub registry: Arc<Registry>,
}

impl Rule {
    /// The bucket this request is charged to under the rule: `None` when
    /// the rule keys by a header the request does not carry. `client` is
    /// the request's client key, `ip` its (grouped) address key.
    pub fn key_of(
        &self,
        client: &ClientKey,
        ip: &ClientKey,
        headers: &HeaderMap,
    ) -> Option<Result<ClientKey, String>> {
        match &self.spec.key {
            RuleKey::Client => Some(Ok(client.clone())),
            RuleKey::Ip => Some(Ok(ip.clone())),
            RuleKey::Header(name) => {
                let mut values = headers.get_all(name).iter();
                let value = values.next()?;
                // Charged by one value while the backend may read the
                // other: refused, as two API keys are.
                if values.next().is_some() {
                    return Some(Err(format!("More than one {name} header")));
                }
                Some(
                    value
                        .to_str()
                        .map_err(|_| format!("{name}: not printable ASCII"))
                        .and_then(|v| ClientKey::api(v.trim()).map_err(|e| format!("{name}: {e}"))),
                )
            }
        }
    }
}

/// How each rule's registry is sized, as the client registry is.
#[derive(Debug, Clone, Copy)]
pub struct RuleBounds {
    /// `rate_limit.max_clients`.
    pub max_clients: std::num::NonZeroUsize,
    /// `rate_limit.idle_timeout`.
    pub idle_timeout: Duration,
    /// `rate_limit.refill_interval`.
    pub refill_interval: Duration,
}

/// Rules in order, with their prefixes indexed.
#[derive(Debug, Default)]
pub struct Rules {
    list: Vec<Arc<Rule>>,
    paths: RulePaths,
}

impl std::ops::Deref for Rules {
    type Target = [Arc<Rule>];

    fn deref(&self) -> &Self::Target {
        &self.list
    }
}

impl Rules {
    fn new(list: Vec<Arc<Rule>>) -> Self {
        let paths = RulePaths::new(
            list.iter()
                .map(|r| (r.spec.path_prefix.as_str(), r.spec.ignore_case)),
        );
        Self { list, paths }
    }

    /// The rules a request with this method and (normalized) path on
    /// `route` is subject to, in order. `host` is asked for (once) only
    /// if a rule whose prefix the path has names hosts.
    pub fn matching<'r, 'h>(
        &'r self,
        method: &Method,
        path: &str,
        route: Option<&str>,
        host: impl FnOnce() -> Option<&'h str>,
    ) -> Vec<&'r Arc<Rule>> {
        // Candidates by index: a bit each for the first 128 rules (no
        // allocation), a list past that; either way in rule order.
        let (mut first, mut rest) = (0u128, Vec::new());
        self.paths.candidates(path, |i| match i {
            0..128 => first |= 1 << i,
            _ => rest.push(i),
        });
        if first == 0 && rest.is_empty() {
            return Vec::new();
        }
        rest.sort_unstable();
        // The set bits, lowest first: one step per candidate, not 128.
        let bits = std::iter::from_fn(|| {
            let i = first.trailing_zeros() as usize;
            first &= first.checked_sub(1)?;
            Some(i)
        });
        let mut host = Some(host);
        let mut known: Option<&str> = None;
        bits.chain(rest)
            .map(|i| &self.list[i])
            .filter(|r| {
                if !r.spec.hosts.is_empty() {
                    if let Some(ask) = host.take() {
                        known = ask();
                    }
                }
                r.spec.matches(method, path, Place { route, host: known })
            })
            .collect()
    }
}

/// The rules in force, swapped whole by a reload.
#[derive(Debug)]
pub struct RuleSet {
    rules: ArcSwap<Rules>,
    bounds: RuleBounds,
}

impl RuleSet {
    /// Rules built from `specs`, each with an empty registry.
    pub fn new(specs: &[RuleSpec], bounds: RuleBounds) -> Self {
        let set = Self {
            rules: ArcSwap::from_pointee(Rules::default()),
            bounds,
        };
        set.replace(specs);
        set
    }

    /// The rules in force now, in order.
    pub fn current(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// Whether there are no rules (the request path skips them cheaply).
    pub fn is_empty(&self) -> bool {
        self.rules.load().is_empty()
    }

    /// Puts `specs` in force. A rule whose name was already in force keeps
    /// its buckets (moved to new limits, as the client registry does on a
    /// reload); a new name starts empty; a dropped one is forgotten.
    pub fn replace(&self, specs: &[RuleSpec]) {
        let old = self.rules.load_full();
        let rules = specs
            .iter()
            .map(|spec| {
                let registry = match old.iter().find(|r| r.spec.name == spec.name) {
                    Some(kept) => {
                        if kept.spec.limits != spec.limits {
                            kept.registry.set_default_limits(spec.limits);
                        }
                        kept.registry.clone()
                    }
                    None => Arc::new(Registry::new(RegistryConfig {
                        default_limits: spec.limits,
                        max_clients: self.bounds.max_clients,
                        idle_timeout: self.bounds.idle_timeout,
                        refill_interval: self.bounds.refill_interval,
                    })),
                };
                Arc::new(Rule {
                    spec: spec.clone(),
                    name: Arc::from(spec.name.as_str()),
                    registry,
                })
            })
            .collect();
        self.rules.store(Arc::new(Rules::new(rules)));
    }

    /// One refill tick for every rule's buckets.
    pub fn refill(&self) {
        for rule in self.rules.load().iter() {
            rule.registry.refill();
        }
    }

    /// Runs the refill tick for the rules until `shutdown`, as
    /// [`super::refill::run`] does for the client registry.
    pub async fn run_refill(
        self: Arc<Self>,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let mut ticks = crate::shutdown::Ticks::every(
            interval,
            tokio::time::MissedTickBehavior::Skip,
            shutdown,
        );
        while ticks.next().await {
            self.refill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, prefix: &str, methods: &[Method]) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            path_prefix: prefix.into(),
            ignore_case: false,
            routes: Vec::new(),
            hosts: Vec::new(),
            methods: methods.to_vec(),
            key: RuleKey::Client,
            limits: Limits::new(10, 1.0).expect("valid"),
            cost: NonZeroU32::MIN,
            dry_run: false,
        }
    }

    #[test]
    fn keys_parse_and_print_back() {
        for text in ["client", "ip", "header:x-tenant"] {
            assert_eq!(RuleKey::parse(text).expect(text).to_string(), text);
        }
        assert!(RuleKey::parse("header:bad name").is_err());
        assert!(RuleKey::parse("cookie:x").is_err());
    }

    #[test]
    fn a_rule_matches_by_prefix_and_method() {
        let search = spec("search", "/api/search", &[Method::GET]);
        assert!(search.matches(&Method::GET, "/api/search", Place::default()));
        assert!(search.matches(&Method::GET, "/api/search/deep", Place::default()));
        assert!(!search.matches(&Method::POST, "/api/search", Place::default()));
        assert!(!search.matches(&Method::GET, "/api/other", Place::default()));
        let any = spec("any", "/", &[]);
        assert!(any.matches(&Method::DELETE, "/x", Place::default()));
    }

    #[test]
    fn a_reload_keeps_the_buckets_of_rules_it_keeps() {
        let bounds = RuleBounds {
            max_clients: std::num::NonZeroUsize::new(100).expect("non-zero"),
            idle_timeout: Duration::from_secs(600),
            refill_interval: Duration::from_millis(100),
        };
        let set = RuleSet::new(&[spec("a", "/", &[]), spec("b", "/", &[])], bounds);
        let key = ClientKey::api("k").expect("key");
        let a = set.current()[0].registry.clone();
        assert!(a.check(&key).expect("room").allowed());
        set.replace(&[spec("a", "/", &[]), spec("c", "/", &[])]);
        let now = set.current();
        assert!(Arc::ptr_eq(&now[0].registry, &a), "a kept its buckets");
        assert_eq!(now[1].spec.name, "c");
        assert_eq!(a.tokens(&key), Some(9.0));
    }

    fn names(rules: &[&Arc<Rule>]) -> Vec<String> {
        rules.iter().map(|r| r.spec.name.clone()).collect()
    }

    #[test]
    fn matching_rules_come_in_rule_order_past_128_rules() {
        let bounds = RuleBounds {
            max_clients: std::num::NonZeroUsize::new(10).expect("non-zero"),
            idle_timeout: Duration::from_secs(600),
            refill_interval: Duration::from_millis(100),
        };
        let mut specs: Vec<RuleSpec> = (0..140)
            .map(|i| spec(&format!("r{i}"), &format!("/r{i}/"), &[]))
            .collect();
        specs[3] = spec("any", "", &[]);
        specs[130] = spec("late", "/r", &[Method::GET]);
        specs[135] = spec("post", "/r1", &[Method::POST]);
        specs[139] = spec("upper", "/R13", &[]);
        specs[139].ignore_case = true;
        let set = RuleSet::new(&specs, bounds);
        let rules = set.current();
        let found = rules.matching(&Method::GET, "/r137/x", None, || None);
        assert_eq!(names(&found), ["any", "late", "r137", "upper"]);
        let found = rules.matching(&Method::POST, "/r1/x", None, || None);
        assert_eq!(names(&found), ["r1", "any", "post"]);
    }

    #[test]
    fn the_host_is_asked_for_only_when_a_reached_rule_names_hosts() {
        let bounds = RuleBounds {
            max_clients: std::num::NonZeroUsize::new(10).expect("non-zero"),
            idle_timeout: Duration::from_secs(600),
            refill_interval: Duration::from_millis(100),
        };
        let mut hosted = spec("hosted", "/api", &[]);
        hosted.hosts = vec![HostPattern::parse("*.example.com").expect("pattern")];
        hosted.routes = vec!["api".into()];
        let set = RuleSet::new(&[spec("web", "/web", &[]), hosted], bounds);
        let rules = set.current();
        let mut asked = 0;
        let found = rules.matching(&Method::GET, "/web/x", Some("api"), || {
            asked += 1;
            Some("a.example.com")
        });
        assert_eq!((names(&found), asked), (vec!["web".to_owned()], 0));
        let found = rules.matching(&Method::GET, "/api/x", Some("api"), || {
            asked += 1;
            Some("a.example.com")
        });
        assert_eq!((names(&found), asked), (vec!["hosted".to_owned()], 1));
        let found = rules.matching(&Method::GET, "/api/x", Some("web"), || {
            Some("a.example.com")
        });
        assert!(found.is_empty(), "another route");
        let found = rules.matching(&Method::GET, "/api/x", Some("api"), || Some("example.org"));
        assert!(found.is_empty(), "another host");
    }
}
