//! Least connections: the backend with the fewest requests in flight per
//! unit of weight.

use std::sync::Arc;

use super::{lighter, Backend, Strategy};

/// Sends each request to the backend with the fewest requests in flight
/// divided by its weight (so a backend of weight 3 carries three times the
/// load of one of weight 1), so slow backends receive less new work. Ties
/// go to the heavier backend, then the first in configuration order.
/// In-flight counts are kept by [`InFlight`](super::InFlight) guards,
/// which cannot leak.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConnections;

impl Strategy for LeastConnections {
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        let mut best = 0;
        for (i, b) in healthy.iter().enumerate().skip(1) {
            if healthy.get(best).is_some_and(|current| lighter(b, current)) {
                best = i;
            }
        }
        best
    }
}
