//! Power of two choices: two backends at random, the less loaded wins.

use std::sync::Arc;

use super::random::by_weight;
use super::{lighter, Backend, Strategy};

/// Draws two distinct backends at random by weight and sends the request
/// to the one with fewer requests in flight per unit of weight (on a tie
/// the heavier, then the first drawn). Nearly as good as least connections at avoiding a slow
/// backend, without looking at every backend and without every request
/// of a burst piling onto the one that was least loaded a moment ago.
#[derive(Debug, Default, Clone, Copy)]
pub struct PowerOfTwo;

impl Strategy for PowerOfTwo {
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        better_of_two(healthy, lighter)
    }
}

/// Draws two distinct backends at random by weight and returns the
/// second's index if `second_wins(second, first)`, else the first's: the
/// draw every two-choice strategy shares, each with its own comparison.
pub(super) fn better_of_two(
    healthy: &[Arc<Backend>],
    second_wins: impl Fn(&Backend, &Backend) -> bool,
) -> usize {
    if healthy.len() < 2 {
        return 0;
    }
    let mut rng = rand::rng();
    let a = by_weight(healthy, &mut rng, None);
    let b = by_weight(healthy, &mut rng, Some(a));
    match (healthy.get(a), healthy.get(b)) {
        (Some(first), Some(second)) if second_wins(second, first) => b,
        _ => a,
    }
}
