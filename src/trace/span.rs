//! One request's trace on the request path.
//!
//! With span export on, a request is one server span (route, pool,
//! client, decision, status), and each attempt at a backend one client
//! span under it, whose id is the parent the backend sees. Without it,
//! the request keeps only its trace id and flags, and each attempt gets
//! a fresh span id that nobody records: the backend's spans still join
//! the caller's trace. The spans end when the response headers are
//! known; the time a body takes to stream is not in them.
//!
//! Attributes are built only for spans that are recorded: an unsampled
//! request pays for its ids and nothing else.

use std::borrow::Cow;

use http::{HeaderValue, Method, StatusCode};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SdkTracer;

use super::context::{self, Incoming};
use crate::balancer::Backend;
use crate::limiter::ClientKey;

/// The trace of one request.
#[derive(Debug)]
pub struct RequestTrace<'a> {
    trace_id: [u8; 16],
    flags: u8,
    /// The trusted caller's `tracestate`, passed on with every attempt.
    state: Option<HeaderValue>,
    /// With span export: the tracer, and the server span in the context
    /// its client spans start from.
    recorded: Option<(&'a SdkTracer, Context)>,
}

/// What a finished request's server span records.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The status the client got (a gRPC refusal's HTTP meaning).
    pub status: StatusCode,
    /// The client the limiter charged, if it identified one.
    pub client: Option<&'a ClientKey>,
    /// What became of the request: `allowed`, `limited`, `rejected`.
    pub decision: &'static str,
}

impl<'a> RequestTrace<'a> {
    /// Ids only: the caller's trace continued, or a new one (not sampled:
    /// nothing records it).
    pub(super) fn plain(incoming: Option<Incoming>) -> Self {
        let (trace_id, flags, state) = match incoming {
            Some(i) => (i.trace_id, i.flags, i.state),
            None => (context::new_trace_id(), 0, None),
        };
        Self {
            trace_id,
            flags,
            state,
            recorded: None,
        }
    }

    /// A server span, the caller's span its parent when there is one.
    pub(super) fn recorded(
        tracer: &'a SdkTracer,
        incoming: Option<Incoming>,
        method: &Method,
    ) -> Self {
        let (parent, state) = match incoming {
            Some(i) => {
                let vendors = i
                    .state
                    .as_ref()
                    .and_then(|s| s.to_str().ok())
                    .and_then(|s| s.parse::<TraceState>().ok())
                    .unwrap_or_default();
                let remote = SpanContext::new(
                    TraceId::from_bytes(i.trace_id),
                    SpanId::from_bytes(i.parent_id),
                    TraceFlags::new(i.flags),
                    true,
                    vendors,
                );
                (Context::new().with_remote_span_context(remote), i.state)
            }
            None => (Context::new(), None),
        };
        let mut span = tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server)
            .start_with_context(tracer, &parent);
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.request.method", method_name(method)));
        }
        Self::with_span(tracer, &parent, span, state)
    }

    fn with_span(
        tracer: &'a SdkTracer,
        parent: &Context,
        span: opentelemetry_sdk::trace::Span,
        state: Option<HeaderValue>,
    ) -> Self {
        let ids = span.span_context();
        Self {
            trace_id: ids.trace_id().to_bytes(),
            flags: ids.trace_flags().to_u8(),
            state,
            recorded: Some((tracer, parent.with_span(span))),
        }
    }

    /// The trace id (the caller's, or a new one).
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// Whether the request's spans are recorded.
    pub fn is_recording(&self) -> bool {
        self.recorded
            .as_ref()
            .is_some_and(|(_, cx)| cx.span().is_recording())
    }

    /// The route and pool the request goes to.
    pub fn place(&self, route: Option<&str>, pool: &str) {
        self.record(|| {
            let mut kv = vec![KeyValue::new("tollgate.pool", pool.to_owned())];
            if let Some(r) = route {
                kv.push(KeyValue::new("tollgate.route", r.to_owned()));
            }
            kv
        });
    }

    /// Ends the server span with what became of the request.
    pub fn finish(self, finished: Finished<'_>) {
        let Some((_, cx)) = &self.recorded else {
            return;
        };
        let span = cx.span();
        if span.is_recording() {
            let code = finished.status.as_u16();
            let mut kv = vec![
                KeyValue::new("http.response.status_code", i64::from(code)),
                KeyValue::new("tollgate.decision", finished.decision),
            ];
            if let Some(client) = finished.client {
                kv.push(KeyValue::new("tollgate.client", client_label(client)));
            }
            span.set_attributes(kv);
            // A server span is in error for 5xx only: a 4xx is the
            // client's, the server did its job.
            if finished.status.is_server_error() {
                span.set_status(Status::error(Cow::Borrowed("")));
            }
        }
        span.end();
    }

    /// The trace of one attempt at `backend`.
    pub fn attempt(&self, method: &Method, backend: &Backend) -> AttemptTrace {
        let Some((tracer, cx)) = &self.recorded else {
            let header = context::traceparent(&self.trace_id, &context::new_span_id(), self.flags);
            return AttemptTrace { header, span: None };
        };
        let mut builder = tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Client);
        if cx.span().is_recording() {
            builder = builder.with_attributes([
                KeyValue::new("http.request.method", method_name(method)),
                KeyValue::new("server.address", backend.url().authority.to_string()),
                KeyValue::new("tollgate.backend", backend.name().to_string()),
            ]);
        }
        let span = builder.start_with_context(*tracer, cx);
        let ids = span.span_context();
        let header = context::traceparent(
            &ids.trace_id().to_bytes(),
            &ids.span_id().to_bytes(),
            ids.trace_flags().to_u8(),
        );
        AttemptTrace {
            header,
            span: Some(span),
        }
    }

    /// The caller's `tracestate`, passed on to the backend as it came.
    pub fn state(&self) -> Option<&HeaderValue> {
        self.state.as_ref()
    }

    fn record(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some((_, cx)) = &self.recorded {
            let span = cx.span();
            if span.is_recording() {
                span.set_attributes(attributes());
            }
        }
    }
}

/// One attempt at a backend: the `traceparent` it sends, and its client
/// span when spans are exported.
#[derive(Debug)]
pub struct AttemptTrace {
    header: HeaderValue,
    span: Option<opentelemetry_sdk::trace::Span>,
}

impl AttemptTrace {
    /// `traceparent` for the backend: this attempt is its parent.
    pub fn traceparent(&self) -> &HeaderValue {
        &self.header
    }

    /// The backend answered with `status`.
    pub fn answered(self, status: StatusCode) {
        if let Some(mut span) = self.span {
            if span.is_recording() {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                if status.is_server_error() {
                    span.set_status(Status::error(Cow::Borrowed("")));
                }
            }
            span.end();
        }
    }

    /// No answer: `what` went wrong (`connect`, `timeout`, ...).
    pub fn failed(self, what: &'static str) {
        if let Some(mut span) = self.span {
            if span.is_recording() {
                span.set_attribute(KeyValue::new("error.type", what));
                span.set_status(Status::error(Cow::Borrowed(what)));
            }
            span.end();
        }
    }
}

/// The method as a span name and attribute; one outside the standard
/// set is `_OTHER`, as the HTTP semantic conventions ask (a client's
/// invented methods must not make span names without bound).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// The client as a span shows it: an address as it is, an API key never
/// (a trace store is read by more people than the client table) but as
/// `key:` and the first 8 bytes of its SHA-256, enough to tell clients
/// apart and to match a known key.
pub fn client_label(client: &ClientKey) -> String {
    use sha2::Digest;
    match client {
        ClientKey::Api(key) => {
            let digest = sha2::Sha256::digest(key.as_str().as_bytes());
            let mut out = String::with_capacity(4 + 16);
            out.push_str("key:");
            for b in &digest[..8] {
                out.push_str(&format!("{b:02x}"));
            }
            out
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_shown_hashed_and_an_address_as_it_is() {
        let key = ClientKey::api("secret-key-1").expect("key");
        let label = client_label(&key);
        assert!(label.starts_with("key:") && label.len() == 20, "{label}");
        assert!(!label.contains("secret"));
        assert_eq!(
            label,
            client_label(&ClientKey::api("secret-key-1").expect("key"))
        );
        let ip = ClientKey::Ip("10.0.0.1".parse().expect("ip"));
        assert_eq!(client_label(&ip), "10.0.0.1");
    }

    #[test]
    fn without_export_each_attempt_has_its_own_parent_id_in_the_callers_trace() {
        let incoming = Incoming {
            trace_id: [7; 16],
            parent_id: [9; 8],
            flags: 1,
            state: Some(HeaderValue::from_static("a=1")),
        };
        let trace = RequestTrace::plain(Some(incoming));
        let backend = Backend::new(crate::balancer::BackendUrl::parse("http://b:1").expect("url"));
        let one = trace.attempt(&Method::GET, &backend);
        let two = trace.attempt(&Method::GET, &backend);
        let (one, two) = (
            one.traceparent().to_str().expect("text"),
            two.traceparent().to_str().expect("text"),
        );
        assert!(
            one.starts_with("00-07070707070707070707070707070707-"),
            "{one}"
        );
        assert!(one.ends_with("-01"), "{one}");
        assert_ne!(one, two, "each attempt is a span of its own");
        assert!(
            !one.contains("0909090909090909"),
            "the caller's span is not the backend's parent"
        );
        assert_eq!(trace.state(), Some(&HeaderValue::from_static("a=1")));
    }
}
