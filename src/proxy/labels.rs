//! Request counters labelled with their route and pool, cached per proxy
//! thread.
//!
//! With `pools` or `routes` configured, `tollgate_requests_total` carries
//! `route` and `pool` besides `backend` and `status`. Registering a
//! counter means hashing its name and labels in the registry; doing that
//! per request would cost more than the rest of the accounting. Each
//! proxy thread keeps the handles it has used, by route and backend, in a
//! map only it locks (so the lock is never contended), and drops them
//! when the routing changes. The map holds the routing and the backends
//! it was built for, so no address it is keyed by can be reused meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::balancer::Backend;
use crate::routing::{Routing, Target};
use crate::telemetry::{Metrics, RequestCounters};

/// One thread's handles.
#[derive(Debug, Default)]
pub(super) struct LabelledCounters(Mutex<Cache>);

#[derive(Debug, Default)]
struct Cache {
    /// The routing the handles were made for.
    routing: Option<Arc<Routing>>,
    /// By (route key, backend address).
    counters: HashMap<(usize, usize), Arc<RequestCounters>>,
    /// The backends keyed by address, kept alive with the map.
    backends: Vec<Arc<Backend>>,
}

/// The route part of a key: the route's address, 1 for a request that went
/// to the default pool without a route, 0 for one that went nowhere.
fn route_key(target: Option<Target<'_>>) -> usize {
    match target {
        None => 0,
        Some(Target { route: None, .. }) => 1,
        Some(Target { route: Some(r), .. }) => std::ptr::from_ref(r) as usize,
    }
}

impl LabelledCounters {
    /// The counters of requests that took `target` (`None`: refused
    /// before a route was found) and were answered by `backend`.
    pub(super) fn get(
        &self,
        metrics: &Metrics,
        routing: &Arc<Routing>,
        target: Option<Target<'_>>,
        backend: Option<&Arc<Backend>>,
    ) -> Arc<RequestCounters> {
        let key = (
            route_key(target),
            backend.map_or(0, |b| Arc::as_ptr(b) as usize),
        );
        let mut cache = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !cache
            .routing
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, routing))
        {
            *cache = Cache {
                routing: Some(routing.clone()),
                ..Cache::default()
            };
        }
        if let Some(c) = cache.counters.get(&key) {
            return c.clone();
        }
        let route = target.and_then(|t| t.route).map_or("", |r| &*r.name);
        let pool = target.map_or("", |t| &*t.pool.name);
        let name = backend.map_or_else(|| Arc::from("none"), |b| b.label());
        let counters = Arc::new(metrics.labelled_request_counters(&name, pool, route));
        if let Some(b) = backend {
            cache.backends.push(b.clone());
        }
        cache.counters.insert(key, counters.clone());
        counters
    }
}
