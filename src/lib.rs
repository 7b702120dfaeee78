//! tollgate: a Layer-7 HTTP load balancer with per-client token-bucket
//! rate limiting built in.
//!
//! The crate is a library with a thin binary (`src/main.rs`). Modules, one
//! concern each:
//!
//! - [`limiter`]: token buckets, their registry and the periodic refill.

#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod limiter;
mod sync;
