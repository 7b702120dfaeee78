//! tollgate: a Layer-7 HTTP load balancer with per-client token-bucket
//! rate limiting built in.
//!
//! The crate is a library with a thin binary (`src/main.rs`). Modules, one
//! concern each:
//!
//! - [`config`]: `config.yaml`, defaults and validation.
//! - [`limiter`]: token buckets, their registry and the periodic refill.
//! - [`balancer`]: the backend pool and one file per balancing strategy.
//! - [`proxy`]: the request path (identify, limit, balance, forward) and
//!   the connection server with graceful drain.
//! - [`routing`]: routes and pools: which pool a request goes to, the
//!   live pools with their health checkers.
//! - [`health`]: active health checks (passive ones are in [`proxy`]).
//! - [`grpc`]: the little of gRPC tollgate reads and writes itself.
//! - [`error`]: errors a client sees, turned into JSON responses.
//! - [`body`]: the one body type of every request and response.
//! - [`escape`]: control characters made visible for terminals and logs.
//! - [`shutdown`]: signals and the in-process shutdown trigger.
//! - [`reload`]: what SIGHUP and `POST /reload` re-read (the config file,
//!   the TLS certificates) and how each change is applied in place.
//! - [`logging`]: the log output, and switching its level and format.
//! - [`tls`]: the TLS listener's certificates and handshakes, and the
//!   verification of `https://` backends.
//! - [`demo`]: the demo backend.
//! - [`discovery`]: pools whose backends are found in DNS.
//! - [`store`]: the client table and bucket snapshots (SQLite via sqlx).
//! - [`admin`]: the admin API (axum).
//! - [`telemetry`]: Prometheus metrics; [`trace`]: W3C trace context to
//!   backends and OpenTelemetry spans (`telemetry.otlp`).
//! - [`status`]: the status page's numbers, sampled once a second;
//!   [`events`]: the recent transitions and reloads it lists.
//! - [`access_log`]: one line per request, written off the request path.
//! - [`memory`]: freed memory handed back to the OS after a burst.
//! - [`redact`]: passwords out of every URL and error text that is shown.
//! - [`app`]: wiring everything together; [`cli`]: the commands;
//!   [`probe`]: `tollgate health`, the container health check's probe.

#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod balancer;
pub mod body;
pub mod cli;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod escape;
pub mod events;
pub mod grpc;
pub mod health;
pub mod limiter;
pub mod logging;
pub mod memory;
pub mod probe;
pub mod proxy;
pub mod redact;
pub mod reload;
pub mod routing;
pub mod shutdown;
pub mod status;
pub mod store;
mod sync;
pub mod telemetry;
pub mod tls;
pub mod trace;
