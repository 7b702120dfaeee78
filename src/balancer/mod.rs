//! The backend pool and how a backend is chosen for a request.
//!
//! [`Pool`] owns every configured [`Backend`] and publishes the list of
//! healthy ones through an `ArcSwap`: a request reads the current list with
//! one atomic load and never waits for a health change, and a health change
//! swaps in a whole new list. Choosing among the healthy backends is the
//! job of a [`Strategy`], one small type per file, so a new strategy is one
//! new file and one line in [`strategy_for`].

mod least_connections;
mod random;
mod round_robin;
mod url;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;

pub use least_connections::LeastConnections;
pub use random::Random;
pub use round_robin::RoundRobin;

pub use url::{BackendUrl, Scheme};

/// Picks one backend among the healthy ones.
pub trait Strategy: Send + Sync + fmt::Debug + 'static {
    /// Chooses from `healthy`, which is never empty. Returns an index into it.
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize;
}

/// Names of the balancing strategies (`balancing.strategy`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    /// Each healthy backend in turn.
    #[default]
    RoundRobin,
    /// The healthy backend with the fewest requests in flight.
    LeastConnections,
    /// A healthy backend chosen uniformly at random.
    Random,
}

/// The strategy configured under `balancing.strategy`.
pub fn strategy_for(name: StrategyName) -> Box<dyn Strategy> {
    match name {
        StrategyName::RoundRobin => Box::new(RoundRobin::default()),
        StrategyName::LeastConnections => Box::new(LeastConnections),
        StrategyName::Random => Box::new(Random),
    }
}

/// One upstream server.
#[derive(Debug)]
pub struct Backend {
    url: BackendUrl,
    label: String,
    counters: std::sync::OnceLock<crate::telemetry::RequestCounters>,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    successes: AtomicU32,
    failures: AtomicU32,
}

impl Backend {
    /// A backend, healthy until told otherwise.
    pub fn new(url: BackendUrl) -> Self {
        Self {
            label: url.to_string(),
            counters: std::sync::OnceLock::new(),
            url,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> &BackendUrl {
        &self.url
    }

    /// Its URL as text (log and metric label).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its request counters (registered on first use).
    pub fn request_counters(&self) -> &crate::telemetry::RequestCounters {
        self.counters
            .get_or_init(|| crate::telemetry::RequestCounters::new(&self.label))
    }

    /// Requests currently being forwarded to it (bodies included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether it is in the pool of healthy backends.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Consecutive successful health results (0 after any failure).
    pub fn consecutive_successes(&self) -> u32 {
        self.successes.load(Ordering::Relaxed)
    }

    /// Consecutive failed health results, active or passive (0 after any
    /// success).
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Counts one request as in flight until the guard is dropped, which
    /// happens on every path out, errors and cancellation included.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// Keeps a request counted in its backend's in-flight total.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
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
                backend = %backend.url(),
                failures = backend.consecutive_failures(),
                by,
                "backend evicted from the pool"
            ),
            Self::Restored => tracing::info!(
                backend = %backend.url(),
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

/// Every configured backend, and the healthy ones.
#[derive(Debug)]
pub struct Pool {
    all: Vec<Arc<Backend>>,
    healthy: ArcSwap<Vec<Arc<Backend>>>,
    strategy: Box<dyn Strategy>,
    /// [`Thresholds`], changed in place by a config reload.
    unhealthy_after: AtomicU32,
    healthy_after: AtomicU32,
}

impl Pool {
    /// A pool of `urls`, all healthy, using `strategy`.
    pub fn new(urls: impl IntoIterator<Item = BackendUrl>, strategy: Box<dyn Strategy>) -> Self {
        let all: Vec<Arc<Backend>> = urls
            .into_iter()
            .map(|u| Arc::new(Backend::new(u)))
            .collect();
        Self {
            healthy: ArcSwap::from_pointee(all.clone()),
            all,
            strategy,
            unhealthy_after: AtomicU32::new(Thresholds::default().unhealthy),
            healthy_after: AtomicU32::new(Thresholds::default().healthy),
        }
    }

    /// The same pool with these health thresholds.
    pub fn with_thresholds(self, thresholds: Thresholds) -> Self {
        self.set_thresholds(thresholds);
        self
    }

    /// Health results needed to flip a backend from the next one on
    /// (config reload); counts so far are kept.
    pub fn set_thresholds(&self, thresholds: Thresholds) {
        self.unhealthy_after
            .store(thresholds.unhealthy, Ordering::Relaxed);
        self.healthy_after
            .store(thresholds.healthy, Ordering::Relaxed);
    }

    /// Records one health result (an active check, or a failed proxy
    /// attempt) and flips the backend after enough consecutive results.
    /// Returns the transition, if this result caused one; each transition
    /// is returned once, so it is logged once.
    pub fn record(&self, backend: &Backend, ok: bool) -> Option<Transition> {
        if ok {
            backend.failures.store(0, Ordering::Relaxed);
            let n = backend
                .successes
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            (n >= self.healthy_after.load(Ordering::Relaxed) && self.set_healthy(backend, true))
                .then_some(Transition::Restored)
        } else {
            backend.successes.store(0, Ordering::Relaxed);
            let n = backend
                .failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            (n >= self.unhealthy_after.load(Ordering::Relaxed) && self.set_healthy(backend, false))
                .then_some(Transition::Evicted)
        }
    }

    /// Sets a backend's health from the first check round alone, so a
    /// backend dead at start-up never gets traffic.
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

    /// Every backend, healthy or not, in configuration order.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.all
    }

    /// Chooses a healthy backend, or `None` when there is none.
    pub fn pick(&self) -> Option<Arc<Backend>> {
        let healthy = self.healthy.load();
        if healthy.is_empty() {
            return None;
        }
        let i = self.strategy.pick(&healthy);
        healthy.get(i).cloned()
    }

    /// Chooses a healthy backend other than `not`, if there is one.
    pub fn pick_other(&self, not: &Backend) -> Option<Arc<Backend>> {
        let healthy = self.healthy.load();
        let others: Vec<Arc<Backend>> = healthy
            .iter()
            .filter(|b| !std::ptr::eq(b.as_ref(), not))
            .cloned()
            .collect();
        if others.is_empty() {
            return None;
        }
        let i = self.strategy.pick(&others);
        others.get(i).cloned()
    }

    /// Marks `backend` healthy or not; returns whether that changed
    /// anything. The healthy list is rebuilt and swapped in whole.
    pub fn set_healthy(&self, backend: &Backend, healthy: bool) -> bool {
        if backend.healthy.swap(healthy, Ordering::AcqRel) == healthy {
            return false;
        }
        let list: Vec<Arc<Backend>> = self
            .all
            .iter()
            .filter(|b| b.is_healthy())
            .cloned()
            .collect();
        self.healthy.store(Arc::new(list));
        true
    }

    /// Number of healthy backends.
    pub fn healthy_count(&self) -> usize {
        self.healthy.load().len()
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
