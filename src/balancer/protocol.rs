//! Which HTTP version a pool's backends are spoken to in
//! (`pools.NAME.protocol`, `proxy.protocol` for the default pool).
//!
//! It lives with the balancer because three parts read it and none of
//! them may depend on another: the config (to parse it), the health
//! checks (to check in the same protocol) and the request path (to pick
//! the connection pool).

use serde::Deserialize;

/// How requests reach a pool's backends.
#[derive(
    Debug, Clone, Copy, Default, Deserialize, serde::Serialize, utoipa::ToSchema, PartialEq, Eq,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1, one request at a time per connection (kept alive).
    #[default]
    Http1,
    /// HTTP/2: with prior knowledge (h2c) for `http://`, ALPN `h2` for
    /// `https://`; many requests share a few connections. What gRPC
    /// backends need.
    Http2,
}

impl Protocol {
    /// The version requests to such a backend are sent as.
    pub fn version(self) -> http::Version {
        match self {
            Self::Http1 => http::Version::HTTP_11,
            Self::Http2 => http::Version::HTTP_2,
        }
    }

    /// `http1` or `http2`, as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}
