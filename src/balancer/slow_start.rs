//! Slow start (`slow_start`): a backend that starts taking requests again
//! — added by a reload or discovery, back from failed health checks, an
//! ejection or a drain — gets a share that grows from
//! [`MIN_SHARE`] of what the strategy would give it to all of it over the
//! pool's duration, as HAProxy's `slowstart` and Envoy's slow start mode
//! do, so a cold cache or JIT is not hit with a full share at once.
//!
//! It works for every strategy the same way, after the strategy has
//! chosen: a pick of a ramping backend stands with probability equal to
//! its current share and is otherwise made again without it (along the
//! key's walk under `hash`, else at random by weight). With
//! strategies that spread by weight (round robin, random, hash, p2c when
//! loads are equal) that scales its weight; with strategies that chase the
//! least loaded, it caps how often the idle newcomer wins. Backends that
//! are there when the pool is created (start-up) do not ramp.
//!
//! The ramps live in the pool's published snapshot, found when it is
//! rebuilt, so a pick with nothing ramping pays one empty-slice check.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use super::{Backend, Members, Pool};

/// The share a backend starts its ramp with (Envoy's default
/// `min_weight_percent` is 10 as well).
pub const MIN_SHARE: f64 = 0.1;

/// One backend ramping up since a moment.
#[derive(Debug, Clone)]
pub(super) struct Ramp {
    backend: Arc<Backend>,
    since: Instant,
}

impl Pool {
    /// Ramps backends that start taking requests over `duration` from now
    /// on (zero: no ramp).
    pub fn set_slow_start(&self, duration: Duration) {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.slow_start_ms.store(ms, Ordering::Relaxed);
    }

    /// The same pool, with this slow start.
    pub fn with_slow_start(self, duration: Duration) -> Self {
        self.set_slow_start(duration);
        self
    }

    /// The slow start duration.
    pub fn slow_start(&self) -> Duration {
        Duration::from_millis(self.slow_start_ms.load(Ordering::Relaxed))
    }

    /// The share of its strategy's picks `backend` gets now: below 1 while
    /// it ramps up.
    pub fn ramp_share(&self, backend: &Arc<Backend>) -> f64 {
        let m = self.members.load();
        share_of(&m.ramps, backend, Instant::now(), self.slow_start())
    }
}

/// The ramps of the snapshot that follows `previous`, whose backends that
/// take requests are `eligible`: unfinished ramps of backends still
/// eligible, and one from `now` for each backend that was not eligible
/// before.
pub(super) fn next(
    previous: &Members,
    eligible: &[Arc<Backend>],
    duration: Duration,
    now: Instant,
) -> Vec<Ramp> {
    if duration.is_zero() {
        return Vec::new();
    }
    eligible
        .iter()
        .filter_map(|b| {
            let before = previous.eligible.iter().any(|p| Arc::ptr_eq(p, b));
            if !before {
                return Some(Ramp {
                    backend: b.clone(),
                    since: now,
                });
            }
            previous
                .ramps
                .iter()
                .find(|r| Arc::ptr_eq(&r.backend, b) && now.duration_since(r.since) < duration)
                .cloned()
        })
        .collect()
}

/// `backend`'s share at `now` under `ramps`.
fn share_of(ramps: &[Ramp], backend: &Arc<Backend>, now: Instant, duration: Duration) -> f64 {
    let Some(r) = ramps.iter().find(|r| Arc::ptr_eq(&r.backend, backend)) else {
        return 1.0;
    };
    if duration.is_zero() {
        return 1.0;
    }
    let done = now.duration_since(r.since).as_secs_f64() / duration.as_secs_f64();
    (MIN_SHARE + (1.0 - MIN_SHARE) * done).min(1.0)
}

/// The pick that stands, given the strategy chose `picked` (an index into
/// `candidates`): it, or, if it is ramping and loses the draw, the
/// strategy's choice among the others (`again`, given them).
pub(super) fn admit(
    m: &Members,
    candidates: &[Arc<Backend>],
    picked: usize,
    duration: Duration,
    again: impl FnOnce(&[Arc<Backend>]) -> usize,
) -> usize {
    let Some(b) = candidates.get(picked) else {
        return picked;
    };
    let share = share_of(&m.ramps, b, Instant::now(), duration);
    if share >= 1.0 || rand::rng().random::<f64>() < share {
        return picked;
    }
    let others: Vec<Arc<Backend>> = candidates
        .iter()
        .filter(|c| !Arc::ptr_eq(c, b))
        .cloned()
        .collect();
    if others.is_empty() {
        return picked;
    }
    let j = again(&others);
    others
        .get(j)
        .and_then(|o| candidates.iter().position(|c| Arc::ptr_eq(c, o)))
        .unwrap_or(picked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{strategy_for, BackendSpec, BackendUrl, StrategyName, Weight};

    fn pool(n: u16, strategy: StrategyName) -> Pool {
        let specs = (0..n).filter_map(|i| {
            Some(BackendSpec {
                url: BackendUrl::parse(&format!("http://10.0.0.{i}:8080")).ok()?,
                name: format!("b{i}").into(),
                weight: Weight::ONE,
            })
        });
        Pool::of(specs, strategy_for(strategy)).with_slow_start(Duration::from_secs(100))
    }

    /// `name`'s share of `n` picks; keyed (as the request path does it)
    /// only under `hash`.
    fn share(p: &Pool, name: &str, n: u32, hashing: bool) -> f64 {
        let hits = (0..n)
            .filter_map(|i| {
                p.pick_for(hashing.then(|| crate::balancer::key_hash(&i.to_le_bytes())))
            })
            .filter(|b| &*b.name() == name)
            .count();
        hits as f64 / f64::from(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_returning_backend_ramps_from_a_tenth_to_its_full_share() {
        for strategy in [
            StrategyName::RoundRobin,
            StrategyName::Random,
            StrategyName::Hash,
        ] {
            let p = pool(4, strategy);
            let hashing = strategy == StrategyName::Hash;
            let share = |p: &Pool, name: &str, n: u32| share(p, name, n, hashing);
            let b0 = p.backends()[0].clone();
            assert!(
                (share(&p, "b0", 20_000) - 0.25).abs() < 0.02,
                "no ramp at start"
            );
            p.set_healthy(&b0, false);
            p.set_healthy(&b0, true);
            let at = |s: f64| s * 0.25;
            let now = share(&p, "b0", 20_000);
            assert!(
                (now - at(MIN_SHARE)).abs() < 0.015,
                "{strategy:?} at 0 %: {now}"
            );
            tokio::time::advance(Duration::from_secs(50)).await;
            let half = share(&p, "b0", 20_000);
            assert!(
                (half - at(0.55)).abs() < 0.02,
                "{strategy:?} at 50 %: {half}"
            );
            assert!((p.ramp_share(&b0) - 0.55).abs() < 1e-9);
            tokio::time::advance(Duration::from_secs(50)).await;
            let full = share(&p, "b0", 20_000);
            assert!((full - 0.25).abs() < 0.02, "{strategy:?} at 100 %: {full}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn added_backends_ramp_and_no_slow_start_means_no_ramp() {
        let p = pool(2, StrategyName::Random);
        let mut specs: Vec<BackendSpec> = Vec::new();
        for b in p.backends().iter() {
            specs.push(BackendSpec {
                url: b.url().clone(),
                name: b.name(),
                weight: Weight::ONE,
            });
        }
        let mut grown = specs.clone();
        grown.push(BackendSpec {
            url: BackendUrl::parse("http://10.0.0.9:8080").expect("url"),
            name: "new".into(),
            weight: Weight::ONE,
        });
        p.replace(grown.clone());
        let new = p.find("new").expect("added");
        assert!((p.ramp_share(&new) - MIN_SHARE).abs() < 1e-9);
        assert_eq!(
            p.ramp_share(&p.backends()[0]),
            1.0,
            "kept backends do not ramp"
        );
        let off = pool(2, StrategyName::Random).with_slow_start(Duration::ZERO);
        off.replace(grown);
        let new = off.find("new").expect("added");
        assert_eq!(off.ramp_share(&new), 1.0);
        let s = share(&off, "new", 30_000, false);
        assert!((s - 1.0 / 3.0).abs() < 0.02, "{s}");
    }
}
