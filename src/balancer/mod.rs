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

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use least_connections::LeastConnections;
pub use random::Random;
pub use round_robin::RoundRobin;

use crate::config::{BackendUrl, StrategyName};

/// Picks one backend among the healthy ones.
pub trait Strategy: Send + Sync + fmt::Debug + 'static {
    /// Chooses from `healthy`, which is never empty. Returns an index into it.
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize;
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
    in_flight: AtomicUsize,
    healthy: AtomicBool,
}

impl Backend {
    /// A backend, healthy until told otherwise.
    pub fn new(url: BackendUrl) -> Self {
        Self {
            url,
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> &BackendUrl {
        &self.url
    }

    /// Requests currently being forwarded to it (bodies included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether it is in the pool of healthy backends.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
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

/// Every configured backend, and the healthy ones.
#[derive(Debug)]
pub struct Pool {
    all: Vec<Arc<Backend>>,
    healthy: ArcSwap<Vec<Arc<Backend>>>,
    strategy: Box<dyn Strategy>,
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
        }
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
