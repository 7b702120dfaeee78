//! The request path, in process: demo and raw backends behind a balancer,
//! weights, drain and ejection,
//! end to end, strict HTTP and hostile clients at the front door, backend
//! connection reuse, https backends, health checks, PROXY protocol on
//! incoming connections, IPv6 clients limited by network, limits shared
//! through Redis (exact and leased; one server, a Redis Cluster,
//! Sentinel), limit rules and dry-run, the TLS
//! listener,
//! bodies streamed both ways, WebSocket tunnels, config reloads, the access log with its request
//! ids, HTTP/2 and gRPC to backends, per-pool traffic control (hashing,
//! sticky sessions, slow start, least_time, connection limits with a
//! queue, retry budgets, DNS discovery), trace context and spans, and
//! HTTP/3 at the front door.

#[path = "../support"]
mod support {
    pub mod dns;
    pub mod fifo;
    pub mod grpc;
    pub mod h2c;
    pub mod metrics;
    pub mod net;
    pub mod otlp;
    pub use net::*;
    pub mod raw;
    pub mod redis_cluster;
    pub mod tls;
    pub mod tls_backend;
    pub mod wait;
    pub use wait::*;
}

mod access_log;
mod balancing;
mod discovery;
mod end_to_end;
mod front_door;
mod grpc;
mod health;
mod http3;
mod https_backend;
mod ipv6;
mod lease;
mod path;
mod proxy_protocol;
mod reload;
mod routing;
mod rules;
mod selection;
mod shared;
mod streaming;
mod strict;
mod tls;
mod topologies;
mod tracing;
mod traffic;
mod upgrade;
mod upstream;
