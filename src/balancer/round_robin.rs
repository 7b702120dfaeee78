//! Round robin: each healthy backend in turn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Backend, Strategy};

/// Hands requests to the healthy backends in turn, so each gets an equal
/// share. One shared counter: a relaxed `fetch_add` per request.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % healthy.len()
    }
}
