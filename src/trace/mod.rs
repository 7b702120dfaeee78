//! Distributed tracing: the W3C trace context every request carries to
//! its backend, and the spans exported when `telemetry.otlp` is set.
//!
//! - [`context`]: `traceparent`/`tracestate`, read and written.
//! - [`span`]: one request's trace on the request path: its server span
//!   and a client span per attempt at a backend.
//! - [`otlp`]: the OpenTelemetry SDK and OTLP/HTTP exporter behind them.
//!
//! A `traceparent` is believed only from a trusted peer
//! (`rate_limit.trusted_proxies`, the trust that `X-Forwarded-For` gets):
//! anyone else could pin their requests into a trace of their choosing,
//! or force recording with the sampled flag. From other clients it is
//! dropped and a new trace starts. Either way the backend gets a
//! `traceparent` naming the attempt that reaches it as its parent.

pub mod context;
pub mod otlp;
pub mod span;

use std::sync::Arc;

use http::{HeaderMap, Method};

pub use span::{AttemptTrace, RequestTrace};

/// How requests are traced: always given a trace context, and recorded
/// when span export is on. Cloned into each proxy thread.
#[derive(Debug, Clone, Default)]
pub struct Tracing {
    otlp: Option<Arc<otlp::Otlp>>,
}

impl Tracing {
    /// Trace context for backends, no spans recorded (`telemetry.otlp`
    /// not set).
    pub fn context_only() -> Self {
        Self::default()
    }

    /// Spans recorded and exported through `otlp`.
    pub fn exporting(otlp: otlp::Otlp) -> Self {
        Self {
            otlp: Some(Arc::new(otlp)),
        }
    }

    /// The exporter, when spans are exported.
    pub fn otlp(&self) -> Option<&Arc<otlp::Otlp>> {
        self.otlp.as_ref()
    }

    /// Starts the trace of one request: the trace context in `headers`
    /// is continued when the peer is `trusted`, and taken out of them
    /// either way (each attempt writes its own).
    pub fn start(
        &self,
        headers: &mut HeaderMap,
        trusted: bool,
        method: &Method,
    ) -> RequestTrace<'_> {
        let incoming = if trusted {
            context::Incoming::read(headers)
        } else {
            None
        };
        context::strip(headers);
        match &self.otlp {
            None => RequestTrace::plain(incoming),
            Some(otlp) => RequestTrace::recorded(otlp.tracer(), incoming, method),
        }
    }
}
