//! Random: a healthy backend chosen uniformly.

use std::sync::Arc;

use rand::Rng;

use super::{Backend, Strategy};

/// Picks a healthy backend uniformly at random, with the thread-local
/// generator (no shared state between requests).
#[derive(Debug, Default, Clone, Copy)]
pub struct Random;

impl Strategy for Random {
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        rand::rng().random_range(0..healthy.len())
    }
}
