//! One upstream server: its address, name, weight, and the state that
//! decides whether it gets new requests.
//!
//! A backend's state is four independent facts, each owned by one party:
//! `healthy` (active health checks and failed connects), `draining` (the
//! operator, through the admin API), `ejected` (passive checks on answers:
//! consecutive 5xx) and `removed` (a reload dropped it). It gets new
//! requests only when it is healthy, not draining, not ejected and not
//! removed. What `/backends` shows as `state` is one word, by this
//! precedence: `draining` (the operator's decision comes first, and
//! `healthy` is shown beside it), then `unhealthy`, then `ejected`, then
//! `active`.

use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Deserializer};

use super::BackendUrl;
use crate::telemetry::{Metrics, RequestCounters};

/// A backend's share of requests relative to the others: 1 to
/// [`Weight::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(NonZeroU16);

impl Weight {
    /// The largest weight accepted (as nginx's `weight=`: a ratio, not a
    /// count, so a small range is plenty).
    pub const MAX: u16 = 1000;
    /// The default weight.
    pub const ONE: Self = Self(NonZeroU16::MIN);

    /// `n` as a weight, if it is within 1..=[`Weight::MAX`].
    pub fn new(n: u64) -> Option<Self> {
        u16::try_from(n)
            .ok()
            .filter(|n| *n <= Self::MAX)
            .and_then(NonZeroU16::new)
            .map(Self)
    }

    /// The weight as a number.
    pub fn get(self) -> u32 {
        u32::from(self.0.get())
    }
}

impl Default for Weight {
    fn default() -> Self {
        Self::ONE
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u64::try_from(n).ok().and_then(Self::new).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{n}: a weight is a whole number from 1 to {}",
                Self::MAX
            ))
        })
    }
}

/// What `/backends` shows as a backend's `state` (see the module
/// documentation for the precedence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(description = "Whether a backend gets new requests: only when active.")]
pub enum State {
    /// In rotation.
    Active,
    /// Taken out by the operator: in-flight requests finish, no new ones.
    Draining,
    /// Taken out for `health_check.passive.ejection_time` after
    /// consecutive 5xx answers.
    Ejected,
    /// Failing its active health checks.
    Unhealthy,
}

impl State {
    /// Its name, as in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
            Self::Ejected => "ejected",
            Self::Unhealthy => "unhealthy",
        }
    }
}

/// A backend's name and the request counters labelled with it; replaced
/// whole when a reload renames the backend, so the counters always carry
/// the current name.
#[derive(Debug)]
pub(super) struct Named {
    pub(super) name: Arc<str>,
    counters: OnceLock<RequestCounters>,
}

impl Named {
    pub(super) fn new(name: Arc<str>) -> Self {
        Self {
            name,
            counters: OnceLock::new(),
        }
    }
}

/// One upstream server.
#[derive(Debug)]
pub struct Backend {
    url: BackendUrl,
    pub(super) named: ArcSwap<Named>,
    pub(super) weight: AtomicU32,
    in_flight: AtomicUsize,
    pub(super) healthy: AtomicBool,
    pub(super) draining: AtomicBool,
    pub(super) removed: AtomicBool,
    /// When the ejection ends, in its pool's `now_ms`; 0: not ejected.
    pub(super) ejected_until: AtomicU64,
    pub(super) successes: AtomicU32,
    pub(super) failures: AtomicU32,
    /// Consecutive 5xx answers (passive ejection).
    pub(super) answers_5xx: AtomicU32,
    /// Smooth weighted round robin's running weight; only changed under
    /// that strategy's lock.
    pub(super) swrr_current: AtomicI64,
    /// Peak-EWMA response time (least_time).
    pub(super) latency: super::PeakEwma,
}

/// The name a backend gets when none is configured: `host:port`.
pub fn default_name(url: &BackendUrl) -> String {
    url.authority.as_str().to_owned()
}

impl Backend {
    /// A backend named `host:port` with weight 1, healthy until told
    /// otherwise.
    pub fn new(url: BackendUrl) -> Self {
        let name = default_name(&url);
        Self::named(url, name.into(), Weight::ONE)
    }

    /// A backend with this name and weight, healthy until told otherwise.
    pub fn named(url: BackendUrl, name: Arc<str>, weight: Weight) -> Self {
        Self {
            url,
            named: ArcSwap::from_pointee(Named::new(name)),
            weight: AtomicU32::new(weight.get()),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            answers_5xx: AtomicU32::new(0),
            swrr_current: AtomicI64::new(0),
            latency: super::PeakEwma::default(),
        }
    }

    /// Its base URL.
    pub fn url(&self) -> &BackendUrl {
        &self.url
    }

    /// Its name (`backends[].name`, default `host:port`): what the admin
    /// API, metrics and logs call it.
    pub fn name(&self) -> Arc<str> {
        self.named.load().name.clone()
    }

    /// Its metric and log label: its name.
    pub fn label(&self) -> Arc<str> {
        self.name()
    }

    /// Its weight (1..=1000).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Calls `f` with its request counters, labelled with its current
    /// name (registered in `metrics` on first use).
    pub fn with_request_counters<R>(
        &self,
        metrics: &Metrics,
        f: impl FnOnce(&RequestCounters) -> R,
    ) -> R {
        let named = self.named.load();
        f(named
            .counters
            .get_or_init(|| metrics.request_counters(&named.name)))
    }

    /// Requests currently being forwarded to it (bodies included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether its active health checks pass (`healthy` in `/backends`);
    /// see [`Backend::takes_requests`] for whether it gets requests.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the operator is draining it.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether it is ejected for consecutive 5xx answers.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) != 0
    }

    /// Whether a reload removed it from the pool (its in-flight requests
    /// may still be running).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Whether it gets new requests: healthy, and not draining, ejected or
    /// removed.
    pub fn takes_requests(&self) -> bool {
        self.is_healthy() && !self.is_draining() && !self.is_ejected() && !self.is_removed()
    }

    /// Its state in one word, by the precedence in the module docs.
    pub fn state(&self) -> State {
        if self.is_draining() {
            State::Draining
        } else if !self.is_healthy() {
            State::Unhealthy
        } else if self.is_ejected() {
            State::Ejected
        } else {
            State::Active
        }
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
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone(), None)
    }

    /// Counts one request in flight if fewer than `max` are; the guard
    /// hands its slot to `gate`'s waiters when dropped.
    pub(super) fn try_start_request(
        self: &Arc<Self>,
        max: usize,
        gate: &Arc<super::queue::Gate>,
    ) -> Option<InFlight> {
        self.in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(InFlight(self.clone(), Some(gate.clone())))
    }
}

/// Keeps a request counted in its backend's in-flight total. It holds the
/// backend, so a backend removed by a reload stays valid until its last
/// request ends; in a pool with `max_connections` it is the request's
/// slot, and holds the pool's queue to hand the slot on.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>, Option<Arc<super::queue::Gate>>);

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // SeqCst: the queue's hand-over order (see `queue`).
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(gate) = &self.1 {
            gate.released(&self.0);
        }
    }
}
