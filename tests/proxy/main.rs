//! The request path, in process: demo and raw backends behind a balancer,
//! weights, drain and ejection,
//! end to end, strict HTTP and hostile clients at the front door, backend
//! connection reuse, https backends, health checks, PROXY protocol on
//! incoming connections, IPv6 clients limited by network, limits shared
//! through Redis (exact and leased; one server, a Redis Cluster,
//! Sentinel), limit rules and dry-run, the TLS
//! listener,
//! bodies streamed both ways, WebSocket tunnels, config reloads, the access log with its request
//! ids, HTTP/2 and gRPC to backends, and per-pool traffic control
//! (hashing, sticky sessions, least_time).

#[path = "../support"]
mod support {
    pub mod grpc;
    pub mod h2c;
    pub mod metrics;
    pub mod net;
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
mod end_to_end;
mod front_door;
mod grpc;
mod health;
mod https_backend;
mod ipv6;
mod lease;
mod path;
mod proxy_protocol;
mod reload;
mod routing;
mod rules;
mod shared;
mod streaming;
mod strict;
mod tls;
mod topologies;
mod traffic;
mod upgrade;
mod upstream;
