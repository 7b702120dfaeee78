//! Random: a backend chosen at random, in proportion to its weight.

use std::sync::Arc;

use rand::Rng;

use super::{Backend, Strategy};

/// Picks a backend at random with probability weight / total weight, with
/// the thread-local generator (no shared state between requests).
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Strategy for Random {
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        by_weight(healthy, &mut rand::rng(), None)
    }
}

/// An index into `candidates` drawn with probability weight / total,
/// never `skip`. With equal weights, one uniform draw.
pub(super) fn by_weight(
    candidates: &[Arc<Backend>],
    rng: &mut impl Rng,
    skip: Option<usize>,
) -> usize {
    let counted = || {
        candidates
            .iter()
            .enumerate()
            .filter(move |(i, _)| Some(*i) != skip)
    };
    let first = counted().next().map_or(1, |(_, b)| b.weight());
    if skip.is_none() && candidates.iter().all(|b| b.weight() == first) {
        return rng.random_range(0..candidates.len());
    }
    let total: u64 = counted().map(|(_, b)| u64::from(b.weight())).sum();
    if total == 0 {
        return 0;
    }
    let mut r = rng.random_range(0..total);
    let mut last = 0;
    for (i, b) in counted() {
        let w = u64::from(b.weight());
        if r < w {
            return i;
        }
        r -= w;
        last = i;
    }
    last
}
