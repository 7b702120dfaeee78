//! The token-bucket engine: per-client buckets, their registry and the
//! periodic refill.
//!
//! - [`Limits`]: validated capacity and rate; invalid limits cannot exist.
//!   [`Rate`]: a rate written as `N/unit` (`1000/day`), kept exact.
//! - [`Registry`]: client key → bucket for millions of clients, lock-free
//!   token accounting under sharded read locks; [`Registry::check`]
//!   returns a [`Decision`] carrying what the rate-limit headers need.
//! - [`refill`]: the `tokio::time::interval` task that drives
//!   [`Registry::refill`] (the counterpart of Go's `time.Ticker`).
//! - [`Clock`]: where the refill tick reads time; [`FakeClock`] in tests.
//!
//! How a bucket is represented, and why one tick refills every bucket in
//! constant time, is explained in the `bucket` module's source.
//!
//! ```
//! use std::num::NonZeroUsize;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tollgate::limiter::{ClientKey, FakeClock, Limits, Registry, RegistryConfig};
//!
//! let clock = Arc::new(FakeClock::new());
//! let registry = Registry::with_clock(
//!     RegistryConfig {
//!         default_limits: Limits::new(2, 1.0).unwrap(), // burst 2, then 1/s
//!         max_clients: NonZeroUsize::new(1000).unwrap(),
//!         idle_timeout: Duration::from_secs(600),
//!         refill_interval: Duration::from_millis(100),
//!     },
//!     clock.clone(),
//! );
//! let client = ClientKey::api("user1").unwrap();
//! assert!(registry.check(&client).unwrap().allowed());
//! assert!(registry.check(&client).unwrap().allowed());
//! let denied = registry.check(&client).unwrap();
//! assert!(!denied.allowed());
//! assert_eq!(denied.reset_after(), Some(Duration::from_secs(1)));
//!
//! // What the refill task does every tick:
//! clock.advance(Duration::from_secs(1));
//! registry.refill();
//! assert!(registry.check(&client).unwrap().allowed());
//! ```

mod bucket;
mod clock;
mod key;
mod limits;
#[cfg(all(test, tollgate_loom))]
mod loom_tests;
mod rate;
pub mod refill;
mod registry;
mod rule_paths;
pub mod rules;
pub mod shared;
mod units;

pub use clock::{Clock, FakeClock, MonotonicClock};
pub use key::{ApiKey, ClientKey, KeyError, MAX_API_KEY_LEN};
pub use limits::{check_rate_per_sec, Limits, LimitsError, MAX_FILL_SECS, MAX_RATE_PER_SEC};
pub use rate::{Rate, RateError, RateUnit};
pub use registry::{
    BucketView, Decision, RefillReport, Registry, RegistryConfig, RegistryError, MAX_CLIENTS,
    MAX_PINNED, SCAN_PER_TICK,
};
