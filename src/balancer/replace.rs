//! Replacing the backend set of a running pool (a reload).
//!
//! A backend is the same backend across a reload when its URL is the same:
//! it keeps its `Arc`, in-flight count, health, drain and ejection state,
//! and takes the new name and weight. A new backend is checked once before
//! it joins, as at start-up: [`Pool::plan`] makes it, the caller probes it
//! (`health::Checker::replace_backends` does both), [`Pool::commit`]
//! publishes it; one that fails that check joins as `unhealthy` and comes
//! in after `healthy_threshold` good checks. A removed backend leaves the
//! published set at once, so it gets no new request; requests already on
//! it hold it ([`InFlight`](super::InFlight)) and finish, and the proxy
//! threads close its idle pooled connections when they next look at their
//! pools (see [`removals`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{default_name, Backend, BackendUrl, Members, Pool, Weight};

/// One backend as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Its URL: what makes it the same backend across reloads.
    pub url: BackendUrl,
    /// Its name.
    pub name: Arc<str>,
    /// Its weight.
    pub weight: Weight,
}

impl From<BackendUrl> for BackendSpec {
    fn from(url: BackendUrl) -> Self {
        Self {
            name: default_name(&url).into(),
            url,
            weight: Weight::ONE,
        }
    }
}

/// A new backend set made by [`Pool::plan`], to be published by
/// [`Pool::commit`].
#[derive(Debug)]
pub struct Replacement {
    specs: Vec<BackendSpec>,
    /// Backends for URLs the pool did not have when planned.
    added: Vec<Arc<Backend>>,
}

impl Replacement {
    /// The backends the plan adds, not yet in the pool: probe them before
    /// the commit.
    pub fn added(&self) -> &[Arc<Backend>] {
        &self.added
    }
}

/// What a replacement changed, by backend name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replaced {
    /// Backends that joined.
    pub added: Vec<Arc<str>>,
    /// Backends that left (their in-flight requests finish).
    pub removed: Vec<Arc<str>>,
    /// Kept backends whose name or weight changed (by their new name).
    pub changed: Vec<Arc<str>>,
}

impl Replaced {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Bumped whenever a backend leaves a pool. A backend connection pool that
/// sees a new value drops the idle connections of removed backends, so a
/// check per request is one relaxed load.
static REMOVALS: AtomicU64 = AtomicU64::new(0);

/// How many times a backend has left a pool in this process.
pub fn removals() -> u64 {
    REMOVALS.load(Ordering::Acquire)
}

impl Pool {
    /// Plans replacing the backend set by `specs` (URLs unique, as `check`
    /// ensures): makes the backends for new URLs, healthy until probed.
    pub fn plan(&self, specs: Vec<BackendSpec>) -> Replacement {
        let current = self.backends();
        let added = specs
            .iter()
            .filter(|s| !current.iter().any(|b| b.url() == &s.url))
            .map(|s| Arc::new(Backend::named(s.url.clone(), s.name.clone(), s.weight)))
            .collect();
        Replacement { specs, added }
    }

    /// Publishes `plan` in one swap. Matched against the pool as it is
    /// now, so a change made since the plan (another reload) is not lost.
    pub fn commit(&self, plan: Replacement) -> Replaced {
        let changes = self.lock();
        let current = self.backends();
        let mut report = Replaced::default();
        let mut all = Vec::with_capacity(plan.specs.len());
        for spec in &plan.specs {
            let kept = current.iter().find(|b| b.url() == &spec.url);
            let backend = match kept {
                Some(b) => {
                    let renamed = *b.name() != *spec.name;
                    let reweighted = b.weight() != spec.weight.get();
                    if renamed {
                        b.named
                            .store(Arc::new(super::backend::Named::new(spec.name.clone())));
                    }
                    if reweighted {
                        b.weight.store(spec.weight.get(), Ordering::Relaxed);
                    }
                    if renamed || reweighted {
                        report.changed.push(spec.name.clone());
                    }
                    b.clone()
                }
                None => {
                    let made = plan.added.iter().find(|b| b.url() == &spec.url);
                    let b = made.cloned().unwrap_or_else(|| {
                        Arc::new(Backend::named(
                            spec.url.clone(),
                            spec.name.clone(),
                            spec.weight,
                        ))
                    });
                    report.added.push(spec.name.clone());
                    b
                }
            };
            all.push(backend);
        }
        for gone in current
            .iter()
            .filter(|b| !plan.specs.iter().any(|s| &s.url == b.url()))
        {
            gone.removed.store(true, Ordering::Relaxed);
            report.removed.push(gone.name());
        }
        // One swap from the old set to the new one: a request sees either.
        let eligible: Vec<Arc<Backend>> =
            all.iter().filter(|b| b.takes_requests()).cloned().collect();
        let m = self.members.load();
        let ramps = super::slow_start::next(
            &m,
            &eligible,
            self.slow_start(),
            tokio::time::Instant::now(),
        );
        self.members.store(Arc::new(Members {
            all: Arc::new(all),
            eligible,
            strategy: m.strategy.clone(),
            ramps,
        }));
        drop(changes);
        // New backends' free slots go to requests already waiting.
        self.dispatch_waiting();
        if !report.removed.is_empty() {
            REMOVALS.fetch_add(1, Ordering::Release);
        }
        report
    }

    /// [`Pool::plan`] and [`Pool::commit`] at once: new backends join
    /// healthy, unprobed (tests, and callers that probe nothing).
    pub fn replace(&self, specs: Vec<BackendSpec>) -> Replaced {
        self.commit(self.plan(specs))
    }
}
