//! The live set of backend pools: each pool with its health checker,
//! created, changed and removed as the config says, and what the request
//! path needs of one (timeouts, retry policy).
//!
//! A pool that a reload keeps is the same [`Pool`]: its backends keep
//! their health, counters, drain state and pooled connections, and
//! requests in flight on it finish there. A new pool's backends are
//! checked once before it takes requests, as at start-up; a removed pool's
//! checker stops and its backends are marked removed, so idle connections
//! to them close.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::balancer::{
    strategy_for, BackendSpec, Limits, PassiveSettings, Pool, Protocol, StrategyName, Thresholds,
};
use crate::discovery::{Discovered, DiscoverySpec, Membership};
use crate::health::{CheckSpec, Checker};
use crate::routing::traffic::{Traffic, TrafficSpec};
use crate::shutdown::{self, Signal, Trigger};
use crate::telemetry::Metrics;

/// What a failed attempt must be for another to be made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// No connection could be made.
    pub connect_failure: bool,
    /// The connection broke before a response came.
    pub reset: bool,
    /// The backend answered 502.
    pub bad_gateway: bool,
    /// The backend answered 503.
    pub unavailable: bool,
    /// No response headers within the request timeout.
    pub timeout: bool,
}

/// `pools.NAME.retries`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Retries after the first try, each on another backend.
    pub attempts: u32,
    /// Which failures are retried.
    pub on: RetryOn,
    /// Retries at most this percent of the pool's requests over 10 s.
    pub budget_percent: Option<u32>,
}

impl Default for Retries {
    /// One retry of a connect failure or a connection that broke before a
    /// response: the behaviour before pools.
    fn default() -> Self {
        Self {
            attempts: 1,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                ..RetryOn::default()
            },
            budget_percent: None,
        }
    }
}

/// A pool's upstream timeouts (top-level `proxy`, then its overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// For response headers.
    pub request: Duration,
    /// Longest pause in a response body.
    pub backend_body: Duration,
    /// An idle upgraded tunnel is closed after this.
    pub upgrade_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(30),
            backend_body: Duration::from_secs(60),
            upgrade_idle: Duration::from_secs(600),
        }
    }
}

/// A pool's active health checks, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// Path requested.
    pub path: String,
    /// Between rounds.
    pub interval: Duration,
    /// For one check.
    pub timeout: Duration,
    /// Flips.
    pub thresholds: Thresholds,
    /// Outlier ejection.
    pub passive: PassiveSettings,
    /// The pool's protocol, which checks speak too.
    pub protocol: Protocol,
    /// `Some(service)`: checked with `grpc.health.v1.Health/Check` for
    /// that service (empty: the server) instead of `GET path`.
    pub grpc: Option<String>,
}

impl HealthSpec {
    /// What one check of the pool asks.
    fn check(&self) -> CheckSpec {
        CheckSpec {
            path: self.path.clone(),
            timeout: self.timeout,
            protocol: self.protocol,
            grpc: self.grpc.clone(),
        }
    }
}

/// One pool as the config describes it, resolved against the top level.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// `default` for the top-level backends.
    pub name: String,
    /// Its backends.
    pub backends: Vec<BackendSpec>,
    /// How one is chosen.
    pub strategy: StrategyName,
    /// Its checks.
    pub health: HealthSpec,
    /// Its timeouts.
    pub timeouts: Timeouts,
    /// Its retries.
    pub retries: Retries,
    /// How its backends are spoken to.
    pub protocol: Protocol,
    /// `max_connections` and `queue`.
    pub limits: Limits,
    /// Backends found in DNS besides `backends`.
    pub discovery: Option<DiscoverySpec>,
    /// Hashing, sticky sessions, slow start.
    pub traffic: TrafficSpec,
    /// Idle keep-alive connections kept per backend and proxy thread.
    pub idle_connections: usize,
}

/// What a request needs of its pool, swapped with the routes.
#[derive(Debug)]
pub struct PoolUse {
    /// Its name.
    pub name: Arc<str>,
    /// The pool (the same object as long as a reload keeps the name).
    pub pool: Arc<Pool>,
    /// How a backend is chosen (what the admin API shows; the pool holds
    /// the strategy itself).
    pub strategy: StrategyName,
    /// Its timeouts.
    pub timeouts: Timeouts,
    /// Its retry policy.
    pub retries: Retries,
    /// How its backends are spoken to.
    pub protocol: Protocol,
    /// Its hash key and sticky sessions.
    pub traffic: Traffic,
    /// Idle keep-alive connections kept per backend and proxy thread
    /// (`proxy.backend_idle_connections`).
    pub idle_connections: usize,
}

impl PoolUse {
    /// An empty pool of this name with default settings (tests, and the
    /// request path of a balancer without a default pool).
    pub fn detached(name: &str) -> Self {
        Self {
            name: name.into(),
            pool: Arc::new(Pool::new([], strategy_for(StrategyName::RoundRobin))),
            strategy: StrategyName::RoundRobin,
            timeouts: Timeouts::default(),
            retries: Retries::default(),
            protocol: Protocol::Http1,
            traffic: Traffic::default(),
            idle_connections: crate::config::DEFAULT_BACKEND_IDLE_CONNECTIONS,
        }
    }
}

/// One pool of the set, with its checker.
#[derive(Debug)]
struct Managed {
    pool: Arc<Pool>,
    checker: Checker,
    strategy: StrategyName,
    health: HealthSpec,
    /// Stops its checker when the pool is removed.
    stop: Trigger,
    /// Its configured and discovered backends.
    membership: Arc<Membership>,
    /// Its DNS discovery, and what stops that.
    discovery: Option<(DiscoverySpec, Trigger)>,
    /// Its traffic-control settings (a new balance factor is a new
    /// strategy object).
    traffic: TrafficSpec,
}

/// Pools a reload took out of the set, still serving the requests that
/// were routed to them before it.
#[must_use = "retired pools keep their checkers running until stopped"]
pub struct Retired(Vec<Managed>);

impl Retired {
    /// Nothing was taken out.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Stops them: their checkers end and their backends are marked
    /// removed (no new requests; idle connections to them close; requests
    /// in flight finish).
    pub async fn stop(self) {
        for m in self.0 {
            m.stop.fire();
            if let Some((_, stop)) = &m.discovery {
                stop.fire();
            }
            m.checker.replace_backends(Vec::new()).await;
        }
    }
}

/// Every pool, by name, and what they share.
#[derive(Debug)]
pub struct PoolSet {
    pools: Mutex<BTreeMap<String, Managed>>,
    tls: Arc<rustls::ClientConfig>,
    metrics: Metrics,
    /// The process's shutdown: every checker stops with it.
    shutdown: Signal,
    /// Where the pools record transitions (the status page's events).
    events: Arc<crate::events::Events>,
}

impl PoolSet {
    /// An empty set; checkers verify `https://` backends with `tls` and
    /// stop at `shutdown`.
    pub fn new(tls: Arc<rustls::ClientConfig>, metrics: Metrics, shutdown: Signal) -> Self {
        Self {
            pools: Mutex::new(BTreeMap::new()),
            tls,
            metrics,
            shutdown,
            events: Arc::new(crate::events::Events::new()),
        }
    }

    /// Where every pool records its transitions.
    pub fn events(&self) -> &Arc<crate::events::Events> {
        &self.events
    }

    /// The pool named `name`, if there is one.
    pub fn get(&self, name: &str) -> Option<Arc<Pool>> {
        self.lock().get(name).map(|m| m.pool.clone())
    }

    /// Every pool, by name.
    pub fn all(&self) -> Vec<(String, Arc<Pool>)> {
        self.lock()
            .iter()
            .map(|(n, m)| (n.clone(), m.pool.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Managed>> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the set have what `specs` say: new pools built and checked
    /// once before this returns, kept ones changed in place (new backends
    /// checked first). Pools `specs` no longer name stay until
    /// [`PoolSet::detach`]: requests on the routes in force still pick from
    /// them until the new routes replace those (see [`PoolSet::detach`]). `labelled`: `pools` or
    /// `routes` are configured, so backend metrics carry `pool`. Returns
    /// the pools by name. Reloads run one at a time, so nothing else
    /// changes the set meanwhile; the request path never takes this lock.
    pub async fn apply(&self, specs: &[PoolSpec], labelled: bool) -> BTreeMap<String, Arc<Pool>> {
        for spec in specs {
            let existing = self.lock().get(&spec.name).map(|m| {
                let strategy = (m.strategy, m.traffic.hash_balance_factor);
                (
                    m.checker.clone(),
                    strategy,
                    m.health.clone(),
                    m.membership.clone(),
                )
            });
            match existing {
                Some((checker, strategy, health, membership)) => {
                    self.change(spec, &checker, strategy, &health).await;
                    self.rediscover(spec, &checker, &membership).await;
                }
                None => self.add(spec).await,
            }
        }
        self.lock()
            .iter()
            .map(|(n, m)| {
                m.pool.set_labelled(labelled);
                (n.clone(), m.pool.clone())
            })
            .collect()
    }

    /// Takes the pools `specs` do not name out of the set, so that no
    /// lookup finds them and a later reload that names one again builds
    /// it afresh. They keep serving (and being checked) until
    /// [`Retired::stop`]: requests routed before the swap still pick from
    /// them.
    pub fn detach(&self, specs: &[PoolSpec]) -> Retired {
        let mut pools = self.lock();
        let names: Vec<String> = pools
            .keys()
            .filter(|n| !specs.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        Retired(names.iter().filter_map(|n| pools.remove(n)).collect())
    }

    /// A new pool: built, its backends checked once, its checker started.
    async fn add(&self, spec: &PoolSpec) {
        let h = &spec.health;
        let pool = Arc::new(
            Pool::of(
                spec.backends.iter().cloned(),
                spec.traffic.strategy(spec.strategy),
            )
            .with_slow_start(spec.traffic.slow_start)
            .named(&spec.name)
            .with_events(self.events.clone())
            .with_thresholds(h.thresholds)
            .with_passive(h.passive)
            .with_metrics(self.metrics.clone()),
        );
        pool.set_limits(spec.limits);
        pool.set_retry_budget(spec.retries.budget_percent);
        let checker = Checker::with_spec(pool.clone(), &h.check(), &self.tls);
        checker.initial_round().await;
        let (stop, stopped) = shutdown::channel();
        let (run, global, interval) = (checker.clone(), self.shutdown.clone(), h.interval);
        tokio::spawn(async move {
            tokio::select! {
                () = run.run(interval, stopped) => {}
                () = global.wait() => {}
            }
        });
        let membership = Arc::new(Membership::new(spec.backends.clone()));
        let discovery = self.discover(spec, &checker, &membership);
        self.lock().insert(
            spec.name.clone(),
            Managed {
                pool,
                checker,
                strategy: spec.strategy,
                health: h.clone(),
                stop,
                membership,
                discovery,
                traffic: spec.traffic.clone(),
            },
        );
    }

    /// Starts `spec`'s DNS discovery, if it has one.
    fn discover(
        &self,
        spec: &PoolSpec,
        checker: &Checker,
        membership: &Arc<Membership>,
    ) -> Option<(DiscoverySpec, Trigger)> {
        let d = spec.discovery.clone()?;
        let (stop, stopped) = shutdown::channel();
        let on = Discovered {
            pool: Arc::from(spec.name.as_str()),
            membership: membership.clone(),
            checker: checker.clone(),
            metrics: self.metrics.clone(),
        };
        crate::discovery::spawn(d.clone(), on, stopped, self.shutdown.clone());
        Some((d, stop))
    }

    /// A kept pool whose `discovery` changed: the old lookups stop, the
    /// new ones start (without any, the discovered backends go).
    async fn rediscover(&self, spec: &PoolSpec, checker: &Checker, membership: &Arc<Membership>) {
        let old = self
            .lock()
            .get(&spec.name)
            .and_then(|m| m.discovery.as_ref().map(|(d, _)| d.clone()));
        if old == spec.discovery {
            return;
        }
        let new = self.discover(spec, checker, membership);
        if new.is_none() {
            membership.clear_discovered(checker).await;
        }
        if let Some(m) = self.lock().get_mut(&spec.name) {
            if let Some((_, stop)) = std::mem::replace(&mut m.discovery, new) {
                stop.fire();
            }
        }
    }

    /// A kept pool: backends replaced (kept ones keep their state), then
    /// the strategy and health settings if they changed.
    async fn change(
        &self,
        spec: &PoolSpec,
        checker: &Checker,
        (strategy, balance_factor): (StrategyName, u32),
        health: &HealthSpec,
    ) {
        let membership = self.lock().get(&spec.name).map(|m| m.membership.clone());
        let replaced = match membership {
            Some(m) => m.set_configured(checker, spec.backends.clone()).await,
            None => checker.replace_backends(spec.backends.clone()).await,
        };
        if !(replaced.added.is_empty()
            && replaced.removed.is_empty()
            && replaced.changed.is_empty())
        {
            tracing::info!(
                pool = %spec.name,
                added = ?replaced.added,
                removed = ?replaced.removed,
                changed = ?replaced.changed,
                "backend set replaced"
            );
        }
        let Some(pool) = self.get(&spec.name) else {
            return;
        };
        if (strategy, balance_factor) != (spec.strategy, spec.traffic.hash_balance_factor) {
            pool.set_strategy(spec.traffic.strategy(spec.strategy));
        }
        pool.set_limits(spec.limits);
        pool.set_retry_budget(spec.retries.budget_percent);
        pool.set_slow_start(spec.traffic.slow_start);
        let h = &spec.health;
        if health != h {
            checker.reconfigure(&h.check(), h.interval);
            pool.set_thresholds(h.thresholds);
            pool.set_passive(h.passive);
        }
        if let Some(m) = self.lock().get_mut(&spec.name) {
            m.strategy = spec.strategy;
            m.health = h.clone();
            m.traffic = spec.traffic.clone();
        }
    }
}
