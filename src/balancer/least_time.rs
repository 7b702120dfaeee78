//! Least time (`strategy: least_time`): power of two choices scored by a
//! peak EWMA of each backend's response time times its requests in flight
//! plus one, as Finagle's and Linkerd's peak-EWMA balancer and Traefik's
//! `leasttime` do. A slow backend gets less traffic without being ejected,
//! even one request at a time, where counting requests in flight (p2c,
//! least connections) sees nothing until requests pile up.
//!
//! The average is of the time to response headers, kept on the backend
//! ([`PeakEwma`]) and fed by the request path. "Peak": a response slower
//! than the average replaces it at once, so a backend that turns slow is
//! avoided at once; faster ones pull it down with a time constant of
//! [`DECAY`]. Reading it decays it towards zero by the same constant, so a
//! backend avoided for being slow is tried again after a while and its
//! average relearned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{Backend, Strategy};

/// The EWMA's time constant (Finagle's and Linkerd's default).
pub(super) const DECAY: Duration = Duration::from_secs(10);

/// The score of a backend with requests in flight and no measurement yet:
/// above any measured one (Finagle's `Penalty`), so the first requests do
/// not all pile onto a backend that has not answered once.
const PENALTY_NS: f64 = 1.0e15;

/// A decaying average of response times that jumps up to any slower one.
#[derive(Debug, Default)]
pub struct PeakEwma {
    /// The average, in nanoseconds (`f64` bits), as of `stamp_ns`.
    cost: AtomicU64,
    /// When it was last updated, on [`now_ns`]'s clock.
    stamp_ns: AtomicU64,
}

impl PeakEwma {
    /// Takes in one response time seen at `now_ns`.
    pub fn observe_at(&self, rtt: Duration, now_ns: u64) {
        let rtt = rtt.as_nanos() as f64;
        let raw = f64::from_bits(self.cost.load(Ordering::Relaxed));
        let w = decay(now_ns.saturating_sub(self.stamp_ns.load(Ordering::Relaxed)));
        // `raw · w` is the average decayed to now (what `cost_at` reads).
        let next = if rtt > raw * w {
            rtt
        } else {
            raw * w + rtt * (1.0 - w)
        };
        // Two answers at once may lose one update: the average is a
        // heuristic, and a lock here would be on every request.
        self.cost.store(next.to_bits(), Ordering::Relaxed);
        self.stamp_ns.store(now_ns, Ordering::Relaxed);
    }

    /// The average at `now_ns`, in nanoseconds, decayed towards zero since
    /// its last update.
    pub fn cost_at(&self, now_ns: u64) -> f64 {
        let cost = f64::from_bits(self.cost.load(Ordering::Relaxed));
        let since = now_ns.saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
        cost * decay(since)
    }
}

/// The weight left to an old average after `elapsed_ns`.
fn decay(elapsed_ns: u64) -> f64 {
    (-(elapsed_ns as f64) / DECAY.as_nanos() as f64).exp()
}

/// Nanoseconds on the clock the averages are kept on (tokio's, so a test
/// with a paused clock controls it).
pub(super) fn now_ns() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    u64::try_from(tokio::time::Instant::now().duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

impl Backend {
    /// Takes in the time it took to send response headers (least_time).
    pub fn observe_response_time(&self, took: Duration) {
        self.latency.observe_at(took, now_ns());
    }

    /// Its peak-EWMA response time now.
    pub fn response_time(&self) -> Duration {
        Duration::from_nanos(self.latency.cost_at(now_ns()) as u64)
    }

    /// What least_time minimises: the average response time times the
    /// requests in flight plus one, per unit of weight.
    fn least_time_score(&self, now_ns: u64) -> f64 {
        let cost = self.latency.cost_at(now_ns);
        let pending = self.in_flight() as f64;
        let score = if cost == 0.0 && pending > 0.0 {
            PENALTY_NS + pending
        } else {
            cost * (pending + 1.0)
        };
        score / f64::from(self.weight().max(1))
    }
}

/// Two backends drawn at random by weight; the lower score wins (the
/// first drawn on a tie).
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastTime;

impl Strategy for LeastTime {
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        let now = now_ns();
        super::p2c::better_of_two(healthy, |second, first| {
            second.least_time_score(now) < first.least_time_score(now)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_slower_answer_is_taken_at_once_and_faster_ones_pull_it_down() {
        let e = PeakEwma::default();
        e.observe_at(Duration::from_millis(1), 0);
        assert!((e.cost_at(0) - 1e6).abs() < 1.0);
        e.observe_at(Duration::from_millis(50), 10 * MS);
        assert!((e.cost_at(10 * MS) - 50e6).abs() < 1.0, "the peak, at once");
        // One fast answer a second later moves it by 1 - e^(-0.1).
        e.observe_at(Duration::from_millis(1), 1010 * MS);
        let expected = 50e6 * (-0.1f64).exp() + 1e6 * (1.0 - (-0.1f64).exp());
        assert!(
            (e.cost_at(1010 * MS) - expected).abs() < 1e3,
            "{}",
            e.cost_at(1010 * MS)
        );
    }

    #[test]
    fn an_idle_average_decays_towards_zero() {
        let e = PeakEwma::default();
        e.observe_at(Duration::from_millis(50), 0);
        let later = e.cost_at(10_000 * MS);
        assert!((later / 50e6 - (-1.0f64).exp()).abs() < 1e-9, "{later}");
        assert!(e.cost_at(200_000 * MS) < 1.0);
    }
}
