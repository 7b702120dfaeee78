//! The backend pool and how a backend is chosen for a request.
//!
//! [`Pool`] owns every configured [`Backend`] and publishes them, with the
//! ones that take requests and the strategy, as one immutable snapshot
//! through an `ArcSwap`: a request reads it with one atomic load and never
//! waits, and every change (health, drain, ejection, a reload's new
//! backend set or strategy) builds a new snapshot and swaps it in whole.
//! Changes are serialised by one mutex that the request path never takes.
//! Choosing among the backends that take requests is the job of a
//! [`Strategy`], one small type per file, so a new strategy is one new
//! file and one line in [`strategy_for`]. Every strategy honours weights.
//! What applies across strategies lives beside them: slow start
//! ([`slow_start`]) filters any strategy's pick, and a request's affinity
//! key reaches the strategy through [`Strategy::pick_keyed`].

mod backend;
mod hash;
mod least_connections;
mod least_time;
mod p2c;
mod passive;
mod protocol;
mod queue;
mod random;
mod replace;
mod retry_budget;
mod round_robin;
mod slow_start;
mod sticky;
mod url;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::events::{EventKind, Events};

pub use backend::{default_name, Backend, InFlight, State, Weight};
pub use hash::{key_hash, Hash};
pub use least_connections::LeastConnections;
pub use least_time::{LeastTime, PeakEwma};
pub use p2c::PowerOfTwo;
pub use passive::PassiveSettings;
pub use protocol::Protocol;
pub use queue::{Limits, QueueStats, Refused};
pub use random::Random;
pub use replace::{removals, BackendSpec, Replaced, Replacement};
pub use round_robin::RoundRobin;
pub use slow_start::MIN_SHARE;
pub(crate) use sticky::cookie_value;
pub use sticky::{Sticky, StickyToken};

pub use url::{BackendUrl, Scheme};

/// Picks one backend among the ones that take requests.
pub trait Strategy: Send + Sync + fmt::Debug + 'static {
    /// Chooses from `healthy`, which is never empty. Returns an index into it.
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize;

    /// Chooses for a request with an affinity key (`strategy: hash`) from
    /// `healthy`, never empty; `all` is every configured backend, so a
    /// key can keep its backend while others come and go. Strategies that
    /// have no use for a key pick as [`Strategy::pick`] does.
    fn pick_keyed(
        &self,
        all: &Arc<Vec<Arc<Backend>>>,
        healthy: &[Arc<Backend>],
        key: u64,
    ) -> usize {
        let _ = (all, key);
        self.pick(healthy)
    }
}

/// Names of the balancing strategies (`balancing.strategy`).
#[derive(
    Debug, Clone, Copy, Default, Deserialize, serde::Serialize, utoipa::ToSchema, PartialEq, Eq,
)]
#[serde(rename_all = "snake_case")]
#[schema(as = Strategy, description = "How a pool chooses a backend (`strategy`).")]
pub enum StrategyName {
    /// Smooth weighted round robin (each backend in turn when the weights
    /// are equal).
    #[default]
    RoundRobin,
    /// The backend with the fewest requests in flight per unit of weight.
    LeastConnections,
    /// A backend chosen at random, in proportion to its weight.
    Random,
    /// Power of two choices: two backends at random by weight, the one
    /// with fewer requests in flight (per unit of weight) wins.
    #[serde(rename = "p2c")]
    P2c,
    /// Consistent hashing of a request key (`hash_key`), with an optional
    /// load bound (`hash_balance_factor`).
    Hash,
    /// Power of two choices by peak EWMA of response time times requests
    /// in flight: slow backends get less traffic.
    LeastTime,
}

/// The strategy configured under `balancing.strategy`.
pub fn strategy_for(name: StrategyName) -> Box<dyn Strategy> {
    match name {
        StrategyName::RoundRobin => Box::new(RoundRobin::default()),
        StrategyName::LeastConnections => Box::new(LeastConnections),
        StrategyName::Random => Box::new(Random),
        StrategyName::P2c => Box::new(PowerOfTwo),
        StrategyName::Hash => Box::new(Hash::new(0)),
        StrategyName::LeastTime => Box::new(LeastTime),
    }
}

/// Whether `a` is less loaded than `b`: fewer requests in flight per unit
/// of weight (compared cross-multiplied, no division), the heavier one
/// on a tie.
fn lighter(a: &Backend, b: &Backend) -> bool {
    let (wa, wb) = (u128::from(a.weight()), u128::from(b.weight()));
    let la = a.in_flight() as u128 * wb;
    let lb = b.in_flight() as u128 * wa;
    la < lb || (la == lb && wa > wb)
}

/// A backend's move in or out of the healthy pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Taken out after `unhealthy_threshold` consecutive failures.
    Evicted,
    /// Brought back after `healthy_threshold` consecutive successes.
    Restored,
}

impl Transition {
    /// Logs it (warn on eviction, info on restore); `by` names what saw
    /// the result (active check, passive check).
    pub fn log(self, backend: &Backend, by: &str) {
        match self {
            Self::Evicted => tracing::warn!(
                backend = %backend.name(),
                url = %backend.url(),
                failures = backend.consecutive_failures(),
                by,
                "backend evicted from the pool"
            ),
            Self::Restored => tracing::info!(
                backend = %backend.name(),
                url = %backend.url(),
                successes = backend.consecutive_successes(),
                "backend restored to the pool"
            ),
        }
    }
}

/// How many consecutive results flip a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Failures that evict a healthy backend.
    pub unhealthy: u32,
    /// Successes that restore an evicted backend.
    pub healthy: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            unhealthy: 2,
            healthy: 2,
        }
    }
}

/// One published state of the pool.
#[derive(Debug)]
struct Members {
    /// Every backend, in configuration order.
    all: Arc<Vec<Arc<Backend>>>,
    /// The ones that take requests ([`Backend::takes_requests`]).
    eligible: Vec<Arc<Backend>>,
    strategy: Arc<dyn Strategy>,
    /// Eligible backends still in their slow start.
    ramps: Vec<slow_start::Ramp>,
}

/// Every configured backend, and the ones that take requests.
#[derive(Debug)]
pub struct Pool {
    members: ArcSwap<Members>,
    /// Serialises changes, so two never publish over one another.
    changes: Mutex<()>,
    unhealthy_threshold: AtomicU32,
    healthy_threshold: AtomicU32,
    passive: passive::Settings,
    /// Zero of the ejection clock.
    epoch: tokio::time::Instant,
    /// Health transitions, ejections and drains, for the status page.
    events: Arc<Events>,
    /// Where ejections are counted.
    metrics: crate::telemetry::Metrics,
    /// Its name (`default` for the top-level backends): in metrics, logs
    /// and the admin API.
    name: Arc<str>,
    /// Whether its backends' metrics carry a `pool` label: only when
    /// `pools` or `routes` are configured, so a config without them
    /// exports exactly the series it always did.
    labelled: AtomicBool,
    /// `max_connections` and the queue for a free slot.
    gate: Arc<queue::Gate>,
    /// `retries.budget_percent` and its window.
    budget: retry_budget::RetryBudget,
    /// `slow_start`, in milliseconds (0: none).
    slow_start_ms: AtomicU64,
}

impl Pool {
    /// A pool of `urls`, each named `host:port` with weight 1, all healthy,
    /// using `strategy`.
    pub fn new(urls: impl IntoIterator<Item = BackendUrl>, strategy: Box<dyn Strategy>) -> Self {
        Self::of(urls.into_iter().map(BackendSpec::from), strategy)
    }

    /// A pool of these backends, all healthy, using `strategy`.
    pub fn of(specs: impl IntoIterator<Item = BackendSpec>, strategy: Box<dyn Strategy>) -> Self {
        let all: Vec<Arc<Backend>> = specs
            .into_iter()
            .map(|s| Arc::new(Backend::named(s.url, s.name, s.weight)))
            .collect();
        let defaults = Thresholds::default();
        Self {
            members: ArcSwap::from_pointee(Members {
                eligible: all.clone(),
                all: Arc::new(all),
                strategy: Arc::from(strategy),
                ramps: Vec::new(),
            }),
            changes: Mutex::new(()),
            unhealthy_threshold: AtomicU32::new(defaults.unhealthy),
            healthy_threshold: AtomicU32::new(defaults.healthy),
            passive: passive::Settings::default(),
            epoch: tokio::time::Instant::now(),
            events: Arc::new(Events::new()),
            metrics: crate::telemetry::Metrics::default(),
            name: Arc::from("default"),
            labelled: AtomicBool::new(false),
            gate: Arc::new(queue::Gate::new(queue::Limits::default())),
            budget: retry_budget::RetryBudget::default(),
            slow_start_ms: AtomicU64::new(0),
        }
    }

    /// Where the pool records its backends' transitions (the status
    /// page's event list; the reloader writes there too).
    pub fn events(&self) -> &Arc<Events> {
        &self.events
    }

    /// The same pool, named `name`.
    pub fn named(mut self, name: &str) -> Self {
        self.name = Arc::from(name);
        self
    }

    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Labels its backends' metrics with its name (`pool`) from now on,
    /// or stops doing so.
    pub fn set_labelled(&self, labelled: bool) {
        self.labelled.store(labelled, Ordering::Relaxed);
    }

    /// The `pool` label of its backends' metrics, if they carry one.
    pub fn metric_label(&self) -> Option<&str> {
        self.labelled.load(Ordering::Relaxed).then_some(&*self.name)
    }

    /// The same pool, recording its transitions in `events` (shared by
    /// every pool, for the status page).
    pub fn with_events(mut self, events: Arc<Events>) -> Self {
        self.events = events;
        self
    }

    /// The same pool, counting its ejections in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::telemetry::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The same pool with these health thresholds.
    pub fn with_thresholds(self, thresholds: Thresholds) -> Self {
        self.set_thresholds(thresholds);
        self
    }

    /// Uses these health thresholds from the next result on.
    pub fn set_thresholds(&self, thresholds: Thresholds) {
        self.unhealthy_threshold
            .store(thresholds.unhealthy, Ordering::Relaxed);
        self.healthy_threshold
            .store(thresholds.healthy, Ordering::Relaxed);
    }

    /// The health thresholds in use.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            unhealthy: self.unhealthy_threshold.load(Ordering::Relaxed),
            healthy: self.healthy_threshold.load(Ordering::Relaxed),
        }
    }

    /// Records one health result (an active check, or a failed proxy
    /// attempt) and flips the backend after enough consecutive results.
    /// Returns the transition, if this result caused one; each transition
    /// is returned once, so it is logged once.
    pub fn record(&self, backend: &Backend, ok: bool) -> Option<Transition> {
        let t = self.thresholds();
        if ok {
            backend.failures.store(0, Ordering::Relaxed);
            let n = backend
                .successes
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            (n >= t.healthy && self.set_healthy(backend, true)).then_some(Transition::Restored)
        } else {
            backend.successes.store(0, Ordering::Relaxed);
            let n = backend
                .failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            (n >= t.unhealthy && self.set_healthy(backend, false)).then_some(Transition::Evicted)
        }
    }

    /// Sets a backend's health from the first check round alone, so a
    /// backend dead at start-up (or when a reload adds it) never gets
    /// traffic.
    pub fn record_initial(&self, backend: &Backend, ok: bool) {
        let (hit, miss) = if ok {
            (&backend.successes, &backend.failures)
        } else {
            (&backend.failures, &backend.successes)
        };
        hit.store(1, Ordering::Relaxed);
        miss.store(0, Ordering::Relaxed);
        self.set_healthy(backend, ok);
    }

    /// Every backend in the pool, whatever its state, in configuration
    /// order (a removed backend is no longer listed).
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.members.load().all.clone()
    }

    /// The backend named `name`.
    pub fn find(&self, name: &str) -> Option<Arc<Backend>> {
        self.members
            .load()
            .all
            .iter()
            .find(|b| &*b.name() == name)
            .cloned()
    }

    /// Chooses a backend that takes requests, or `None` when there is none.
    pub fn pick(&self) -> Option<Arc<Backend>> {
        self.pick_for(None)
    }

    /// Chooses a backend that takes requests for a request with this
    /// affinity key (`strategy: hash`), or `None` when there is none.
    pub fn pick_for(&self, key: Option<u64>) -> Option<Arc<Backend>> {
        let m = self.members.load();
        let i = self.choose(&m, &m.eligible, key)?;
        m.eligible.get(i).cloned()
    }

    /// The strategy's choice among `candidates` (an index into them),
    /// through slow start.
    fn choose(&self, m: &Members, candidates: &[Arc<Backend>], key: Option<u64>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let i = match key {
            Some(k) => m.strategy.pick_keyed(&m.all, candidates, k),
            None => m.strategy.pick(candidates),
        };
        if m.ramps.is_empty() {
            return Some(i);
        }
        // A pick given up goes on along the key's walk, or at random by
        // weight: asking a stateful strategy (round robin) again would
        // shift its rotation and skew every share.
        let again = |c: &[Arc<Backend>]| match key {
            Some(k) => m.strategy.pick_keyed(&m.all, c, k),
            None => random::by_weight(c, &mut rand::rng(), None),
        };
        Some(slow_start::admit(
            m,
            candidates,
            i,
            self.slow_start(),
            again,
        ))
    }

    /// Chooses a backend that takes requests other than `not`, if there
    /// is one.
    pub fn pick_other(&self, not: &Arc<Backend>) -> Option<Arc<Backend>> {
        self.pick_excluding(std::slice::from_ref(not))
    }

    /// Chooses a backend that takes requests and is none of `tried`, if
    /// there is one (a retry goes to a backend not tried yet).
    pub fn pick_excluding(&self, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        self.pick_excluding_for(tried, None)
    }

    /// [`Pool::pick_excluding`] for a request with this affinity key.
    pub fn pick_excluding_for(
        &self,
        tried: &[Arc<Backend>],
        key: Option<u64>,
    ) -> Option<Arc<Backend>> {
        let m = self.members.load();
        let others: Vec<Arc<Backend>> = m
            .eligible
            .iter()
            .filter(|b| !tried.iter().any(|t| Arc::ptr_eq(t, b)))
            .cloned()
            .collect();
        let i = self.choose(&m, &others, key)?;
        others.get(i).cloned()
    }

    /// Marks `backend` healthy or not; returns whether that changed
    /// anything. The published state is rebuilt and swapped in whole.
    pub fn set_healthy(&self, backend: &Backend, healthy: bool) -> bool {
        if backend.healthy.swap(healthy, Ordering::AcqRel) == healthy {
            return false;
        }
        self.republish(&self.lock());
        let name = backend.name();
        if healthy {
            let n = backend.consecutive_successes();
            self.events.push(
                EventKind::Healthy,
                Some(&name),
                format!("back in the pool after {n} successful health result(s) in a row"),
            );
        } else {
            let n = backend.consecutive_failures();
            self.events.push(
                EventKind::Unhealthy,
                Some(&name),
                format!("out of the pool after {n} failed health result(s) in a row"),
            );
        }
        true
    }

    /// Takes the backend named `name` out of rotation: no new requests,
    /// in-flight ones finish, health checks go on. `None` for an unknown
    /// name.
    pub fn drain(&self, name: &str) -> Option<Arc<Backend>> {
        self.set_draining(name, true)
    }

    /// Puts the backend named `name` back in rotation (if its health
    /// allows). `None` for an unknown name.
    pub fn enable(&self, name: &str) -> Option<Arc<Backend>> {
        self.set_draining(name, false)
    }

    fn set_draining(&self, name: &str, draining: bool) -> Option<Arc<Backend>> {
        let changes = self.lock();
        let backend = self.find(name)?;
        if backend.draining.swap(draining, Ordering::AcqRel) != draining {
            self.republish(&changes);
            let (kind, message) = if draining {
                (
                    EventKind::Draining,
                    "drained by the operator: no new requests",
                )
            } else {
                (
                    EventKind::Enabled,
                    "enabled by the operator: back in rotation",
                )
            };
            self.events.push(kind, Some(&backend.name()), message);
            tracing::info!(
                backend = %backend.name(),
                in_flight = backend.in_flight(),
                "{}",
                if draining {
                    "backend draining: no new requests"
                } else {
                    "backend enabled: back in rotation"
                }
            );
        }
        Some(backend)
    }

    /// Uses `strategy` from the next request on.
    pub fn set_strategy(&self, strategy: Box<dyn Strategy>) {
        let _changes = self.lock();
        let m = self.members.load();
        self.members.store(Arc::new(Members {
            all: m.all.clone(),
            eligible: m.eligible.clone(),
            strategy: Arc::from(strategy),
            ramps: m.ramps.clone(),
        }));
    }

    /// Number of backends that take requests.
    pub fn healthy_count(&self) -> usize {
        self.members.load().eligible.len()
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is nothing; a panic while it was held leaves no
        // half-made state behind (snapshots are swapped in whole).
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes a new snapshot from the backends' current flags; called
    /// with the change lock held, so the last publisher saw every flag.
    fn republish(&self, _changes: &MutexGuard<'_, ()>) {
        let m = self.members.load();
        let eligible: Vec<Arc<Backend>> = m
            .all
            .iter()
            .filter(|b| b.takes_requests())
            .cloned()
            .collect();
        let ramps = slow_start::next(
            &m,
            &eligible,
            self.slow_start(),
            tokio::time::Instant::now(),
        );
        self.members.store(Arc::new(Members {
            all: m.all.clone(),
            eligible,
            strategy: m.strategy.clone(),
            ramps,
        }));
        self.dispatch_waiting();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16, strategy: StrategyName) -> Pool {
        let urls = (0..n)
            .filter_map(|i| BackendUrl::parse(&format!("http://127.0.0.1:{}", 9000 + i)).ok());
        Pool::new(urls, strategy_for(strategy))
    }

    #[test]
    fn round_robin_takes_turns() {
        let p = pool(3, StrategyName::RoundRobin);
        let picks: Vec<u16> = (0..6)
            .filter_map(|_| p.pick())
            .filter_map(|b| b.url().authority.port_u16())
            .collect();
        assert_eq!(picks, vec![9000, 9001, 9002, 9000, 9001, 9002]);
    }

    #[test]
    fn least_connections_avoids_busy_backends() {
        let p = pool(3, StrategyName::LeastConnections);
        let busy: Vec<InFlight> = p.backends()[..2]
            .iter()
            .map(|b| b.start_request())
            .collect();
        for _ in 0..5 {
            let b = p.pick().expect("healthy");
            assert_eq!(b.url().authority.port_u16(), Some(9002));
        }
        drop(busy);
        assert!(p.backends().iter().all(|b| b.in_flight() == 0));
    }

    #[test]
    fn random_reaches_every_backend() {
        let p = pool(3, StrategyName::Random);
        let mut seen = [0usize; 3];
        for _ in 0..300 {
            let port = p
                .pick()
                .and_then(|b| b.url().authority.port_u16())
                .expect("port");
            seen[usize::from(port - 9000)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn unhealthy_backends_are_skipped_and_none_means_none() {
        let p = pool(2, StrategyName::RoundRobin);
        let first = p.backends()[0].clone();
        assert!(p.set_healthy(&first, false));
        assert!(!p.set_healthy(&first, false), "no change, no swap");
        for _ in 0..4 {
            assert_eq!(
                p.pick().and_then(|b| b.url().authority.port_u16()),
                Some(9001)
            );
        }
        assert!(p.pick_other(&p.backends()[1]).is_none());
        let second = p.backends()[1].clone();
        p.set_healthy(&second, false);
        assert!(p.pick().is_none());
        p.set_healthy(&first, true);
        assert_eq!(p.healthy_count(), 1);
    }

    /// A pool of backends on ports 9000.. with these weights.
    fn weighted(weights: &[u16], strategy: StrategyName) -> Pool {
        let specs = weights.iter().zip(9000u16..).filter_map(|(w, port)| {
            let url = BackendUrl::parse(&format!("http://127.0.0.1:{port}")).ok()?;
            Some(BackendSpec {
                name: format!("b{}", port - 9000).into(),
                url,
                weight: Weight::new(u64::from(*w))?,
            })
        });
        Pool::of(specs, strategy_for(strategy))
    }

    fn name_of(b: &Backend) -> String {
        b.name().to_string()
    }

    #[test]
    fn weights_are_checked() {
        assert!(Weight::new(0).is_none());
        assert!(Weight::new(1001).is_none());
        assert_eq!(Weight::new(1000).map(Weight::get), Some(1000));
        assert_eq!(Weight::default().get(), 1);
    }

    #[test]
    fn smooth_round_robin_splits_by_weight_without_bursts() {
        let p = weighted(&[1, 3], StrategyName::RoundRobin);
        let picks: Vec<String> = (0..4000)
            .filter_map(|_| p.pick())
            .map(|b| name_of(&b))
            .collect();
        assert_eq!(picks[..8], ["b1", "b0", "b1", "b1", "b1", "b0", "b1", "b1"]);
        let heavy = picks.iter().filter(|n| *n == "b1").count();
        assert_eq!(heavy, 3000, "exactly 3 in 4");
        let longest = picks
            .split(|n| n == "b0")
            .map(<[String]>::len)
            .max()
            .unwrap_or(0);
        assert!(
            longest <= 3,
            "a run of {longest} picks of the weight-3 backend"
        );
    }

    #[test]
    fn weighted_random_splits_by_weight() {
        let p = weighted(&[1, 3], StrategyName::Random);
        let n = 40_000;
        let heavy = (0..n)
            .filter_map(|_| p.pick())
            .filter(|b| &*b.name() == "b1")
            .count();
        let share = heavy as f64 / f64::from(n);
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    #[test]
    fn least_connections_divides_in_flight_by_weight() {
        let p = weighted(&[1, 3], StrategyName::LeastConnections);
        let all = p.backends();
        let (light, heavy) = (all[0].clone(), all[1].clone());
        let mut guards = vec![light.start_request()];
        guards.extend((0..2).map(|_| heavy.start_request()));
        // 1/1 against 2/3: the heavy one is less loaded.
        assert_eq!(p.pick().map(|b| name_of(&b)).as_deref(), Some("b1"));
        guards.push(heavy.start_request());
        // 1/1 against 3/3: a tie goes to the heavier backend.
        assert_eq!(p.pick().map(|b| name_of(&b)).as_deref(), Some("b1"));
        guards.push(heavy.start_request());
        // 1/1 against 4/3.
        assert_eq!(p.pick().map(|b| name_of(&b)).as_deref(), Some("b0"));
    }

    #[test]
    fn p2c_never_picks_the_busier_of_two_and_honours_weights() {
        let p = weighted(&[1, 1, 1], StrategyName::P2c);
        let busy = p.backends()[1].clone();
        let _load: Vec<InFlight> = (0..5).map(|_| busy.start_request()).collect();
        // Two distinct draws: the busy one always meets a lighter one.
        for _ in 0..500 {
            assert_ne!(p.pick().map(|b| name_of(&b)).as_deref(), Some("b1"));
        }
        // Idle backends, weights 1:3: the draws are by weight, so the heavy
        // one is drawn in nearly every pair and wins every tie.
        let p = weighted(&[1, 3], StrategyName::P2c);
        let heavy = (0..1000)
            .filter_map(|_| p.pick())
            .filter(|b| &*b.name() == "b1")
            .count();
        assert_eq!(heavy, 1000, "two distinct draws of two: always both");
        let one = weighted(&[5], StrategyName::P2c);
        assert!(one.pick().is_some());
    }

    #[test]
    fn a_drained_backend_gets_no_new_requests_and_keeps_its_health() {
        let p = weighted(&[1, 1], StrategyName::RoundRobin);
        let b0 = p.backends()[0].clone();
        let running = b0.start_request();
        assert!(p.find("nope").is_none());
        assert!(p.drain("nope").is_none());
        let drained = p.drain("b0").expect("known");
        assert!(Arc::ptr_eq(&drained, &b0));
        assert_eq!(b0.state(), State::Draining);
        assert!(b0.is_healthy());
        for _ in 0..10 {
            assert_eq!(p.pick().map(|b| name_of(&b)).as_deref(), Some("b1"));
        }
        assert_eq!(b0.in_flight(), 1, "in-flight requests go on");
        drop(running);
        assert_eq!(b0.in_flight(), 0);
        // Health results still count while draining.
        assert!(p.set_healthy(&b0, false));
        assert_eq!(b0.state(), State::Draining, "draining shows first");
        p.enable("b0");
        assert_eq!(b0.state(), State::Unhealthy);
        assert_eq!(p.healthy_count(), 1);
        p.set_healthy(&b0, true);
        assert_eq!(b0.state(), State::Active);
        assert_eq!(p.healthy_count(), 2);
    }

    #[test]
    fn replacing_the_set_keeps_kept_backends_and_retires_removed_ones() {
        let p = weighted(&[1, 1, 1], StrategyName::RoundRobin);
        let old = p.backends();
        let (b0, b1, b2) = (old[0].clone(), old[1].clone(), old[2].clone());
        p.drain("b0");
        assert!(p.set_healthy(&b1, false));
        let on_removed = b2.start_request();
        let before = removals();
        let spec = |port: u16, name: &str, w: u64| BackendSpec {
            url: BackendUrl::parse(&format!("http://127.0.0.1:{port}")).expect("url"),
            name: name.into(),
            weight: Weight::new(w).expect("weight"),
        };
        let report = p.replace(vec![
            spec(9000, "b0", 1),
            spec(9001, "renamed", 4),
            spec(9100, "new", 1),
        ]);
        assert_eq!(report.added, vec![Arc::<str>::from("new")]);
        assert_eq!(report.removed, vec![Arc::<str>::from("b2")]);
        assert_eq!(report.changed, vec![Arc::<str>::from("renamed")]);
        assert!(removals() > before);

        let now = p.backends();
        assert_eq!(now.len(), 3);
        assert!(Arc::ptr_eq(&now[0], &b0), "kept: the same backend");
        assert!(Arc::ptr_eq(&now[1], &b1));
        assert_eq!(b0.state(), State::Draining, "drain survives");
        assert_eq!(b1.state(), State::Unhealthy, "health survives");
        assert_eq!((&*b1.name(), b1.weight()), ("renamed", 4));
        assert!(p.find("renamed").is_some() && p.find("b1").is_none());
        assert!(b2.is_removed() && p.find("b2").is_none());
        for _ in 0..20 {
            assert_eq!(p.pick().map(|b| name_of(&b)).as_deref(), Some("new"));
        }
        assert_eq!(b2.in_flight(), 1, "the removed backend's request goes on");
        drop(on_removed);
        assert_eq!(b2.in_flight(), 0);
        assert!(p
            .replace(vec![
                spec(9000, "b0", 1),
                spec(9001, "renamed", 4),
                spec(9100, "new", 1)
            ])
            .is_empty());
    }

    #[test]
    fn a_plan_is_matched_against_the_pool_at_commit() {
        let p = weighted(&[1], StrategyName::RoundRobin);
        let b0 = p.backends()[0].clone();
        let specs = vec![BackendSpec::from(b0.url().clone())];
        let plan = p.plan(specs);
        assert!(plan.added().is_empty());
        p.replace(Vec::new());
        // b0 left between plan and commit: it comes back as a new backend.
        let report = p.commit(plan);
        assert_eq!(report.added.len(), 1);
        assert!(!Arc::ptr_eq(&p.backends()[0], &b0));
    }

    #[test]
    fn the_strategy_can_be_replaced() {
        let p = weighted(&[1, 1], StrategyName::LeastConnections);
        let _busy = p.backends()[0].start_request();
        assert_eq!(p.pick().map(|b| name_of(&b)).as_deref(), Some("b1"));
        p.set_strategy(strategy_for(StrategyName::RoundRobin));
        let names: Vec<String> = (0..4)
            .filter_map(|_| p.pick())
            .map(|b| name_of(&b))
            .collect();
        assert_eq!(names.iter().filter(|n| *n == "b0").count(), 2);
    }

    fn ejecting(n: usize, percent: u8) -> Arc<Pool> {
        Arc::new(
            weighted(&vec![1; n], StrategyName::RoundRobin).with_passive(PassiveSettings {
                consecutive_5xx: 3,
                ejection_time: std::time::Duration::from_secs(10),
                max_ejected_percent: percent,
            }),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_until_the_ejection_time_is_up() {
        use http::StatusCode;
        let p = ejecting(2, 50);
        let b0 = p.backends()[0].clone();
        for _ in 0..2 {
            p.record_answer(&b0, StatusCode::INTERNAL_SERVER_ERROR);
        }
        p.record_answer(&b0, StatusCode::OK);
        for _ in 0..2 {
            p.record_answer(&b0, StatusCode::BAD_GATEWAY);
        }
        assert_eq!(b0.state(), State::Active, "a success in between resets");
        p.record_answer(&b0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(b0.state(), State::Ejected);
        assert!(b0.is_healthy());
        for _ in 0..10 {
            assert_eq!(p.pick().map(|b| name_of(&b)).as_deref(), Some("b1"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(9_900)).await;
        assert_eq!(b0.state(), State::Ejected);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(b0.state(), State::Active, "the timer ended it");
        assert_eq!(p.healthy_count(), 2);
        // It starts from zero 5xx.
        p.record_answer(&b0, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(b0.state(), State::Active);
    }

    #[test]
    fn ejection_respects_max_ejected_percent_and_can_be_off() {
        use http::StatusCode;
        let fail = |p: &Arc<Pool>, b: &Backend| {
            for _ in 0..5 {
                p.record_answer(b, StatusCode::INTERNAL_SERVER_ERROR);
            }
        };
        let p = ejecting(2, 50);
        let all = p.backends();
        fail(&p, &all[0]);
        fail(&p, &all[1]);
        assert!(all[0].is_ejected());
        assert!(!all[1].is_ejected(), "1 of 2 at 50 %");
        assert_eq!(p.healthy_count(), 1);

        let p = ejecting(1, 50);
        fail(&p, &p.backends()[0]);
        assert!(
            !p.backends()[0].is_ejected(),
            "a pool of one keeps its backend"
        );

        let p = ejecting(4, 100);
        for b in p.backends().iter() {
            fail(&p, b);
        }
        assert!(p.pick().is_none(), "100 % allows all");

        let p = ejecting(2, 50);
        p.set_passive(PassiveSettings::default());
        fail(&p, &p.backends()[0]);
        assert!(!p.backends()[0].is_ejected(), "consecutive_5xx 0 is off");
    }

    #[test]
    fn in_flight_guard_survives_cancellation() {
        let p = pool(1, StrategyName::LeastConnections);
        let b = p.pick().expect("healthy");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let fut = async {
                let _g = b.start_request();
                std::future::pending::<()>().await;
            };
            // The future is dropped mid-request: the count must come back.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(1), fut).await;
        });
        assert_eq!(b.in_flight(), 0);
    }
}
