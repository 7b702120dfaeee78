//! Round robin: each backend in turn, in proportion to its weight.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::{Backend, Strategy};

/// Smooth weighted round robin, as nginx does it: on each pick every
/// backend's running weight grows by its weight, the largest wins and
/// loses the total. Weights 1:3 give `b a b b`, never a burst of the
/// heavy backend longer than its weight.
///
/// With equal weights (the usual case, and today's default) that is plain
/// rotation, so it is done as one: a relaxed `fetch_add` per request, no
/// lock. With unequal weights the running weights (kept on the backends)
/// change together under one small lock.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
    weighted: Mutex<()>,
}

impl Strategy for RoundRobin {
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        let first = healthy.first().map_or(1, |b| b.weight());
        if healthy.iter().all(|b| b.weight() == first) {
            return self.next.fetch_add(1, Ordering::Relaxed) % healthy.len();
        }
        let _turn = self.weighted.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0i64;
        let mut best = 0;
        let mut best_current = i64::MIN;
        for (i, b) in healthy.iter().enumerate() {
            let w = i64::from(b.weight());
            total += w;
            let current = b.swrr_current.fetch_add(w, Ordering::Relaxed) + w;
            if current > best_current {
                best = i;
                best_current = current;
            }
        }
        if let Some(b) = healthy.get(best) {
            b.swrr_current.fetch_sub(total, Ordering::Relaxed);
        }
        best
    }
}
