//! The token-bucket engine on its own, on a fake clock: behaviour,
//! property tests of its invariants, and multi-threaded stress.

#[path = "../support"]
mod support {
    pub mod limiter;
    pub use limiter::*;
}

mod engine;
mod props;
mod rate_units;
mod stress;
