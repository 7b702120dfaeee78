//! Least connections: the backend with the fewest requests in flight.

use std::sync::Arc;

use super::{Backend, Strategy};

/// Sends each request to the healthy backend with the fewest requests in
/// flight (ties go to the first in configuration order), so slow backends
/// receive less new work. In-flight counts are kept by
/// [`InFlight`](super::InFlight) guards, which cannot leak.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastConnections;

impl Strategy for LeastConnections {
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        healthy
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| b.in_flight())
            .map_or(0, |(i, _)| i)
    }
}
