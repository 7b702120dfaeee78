//! The token-bucket engine: per-client buckets, their registry and the
//! periodic refill.
//!
//! - [`Limits`]: validated capacity and rate; invalid limits cannot exist.
//! - [`Registry`]: client key → bucket for millions of clients, lock-free
//!   token accounting under sharded read locks; [`Registry::check`]
//!   returns a [`Decision`] carrying what the rate-limit headers need.
//! - [`refill`]: the `tokio::time::interval` task that drives
//!   [`Registry::refill`] (the counterpart of Go's `time.Ticker`).
//! - [`Clock`]: where the refill tick reads time; [`FakeClock`] in tests.
//!
//! How a bucket is represented, and why one tick refills every bucket in
//! constant time, is explained in the `bucket` module's source.

mod bucket;
mod clock;
mod key;
mod limits;
#[cfg(all(test, tollgate_loom))]
mod loom_tests;
pub mod refill;
mod registry;

pub use clock::{Clock, FakeClock, MonotonicClock};
pub use key::{ApiKey, ClientKey, KeyError, MAX_API_KEY_LEN};
pub use limits::{Limits, LimitsError, MAX_FILL_SECS, MAX_RATE_PER_SEC};
pub use registry::{
    BucketView, Decision, RefillReport, Registry, RegistryConfig, RegistryError, MAX_CLIENTS,
    MAX_PINNED, SCAN_PER_TICK,
};
