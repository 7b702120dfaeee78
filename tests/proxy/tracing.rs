//! W3C trace context and OpenTelemetry spans: the backend always gets a
//! `traceparent` whose parent is the attempt; a trusted peer's trace is
//! continued, anyone else's is not; with `telemetry.otlp` the collector
//! stand-in (tests/support/otlp.rs) receives a server span per request
//! and a client span per attempt, linked by their ids; sampling at 0
//! sends nothing; a collector that is down costs dropped, counted spans,
//! not requests.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tollgate::config::{Config, OtlpConfig};

use crate::support::otlp::{Collector, Received};
use crate::support::{self, metrics};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

fn incoming(flags: &str) -> String {
    format!("00-{TRACE}-{CALLER}-{flags}")
}

fn otlp(endpoint: String, sample_ratio: f64) -> OtlpConfig {
    OtlpConfig {
        endpoint,
        sample_ratio,
        service_name: "tollgate-test".into(),
        max_queue_size: std::num::NonZeroUsize::new(2048).expect("nonzero"),
        batch_delay: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
    }
}

fn trusting_loopback(mut c: Config) -> Config {
    c.rate_limit.trusted_proxies = vec!["127.0.0.1/32".parse().expect("net")];
    c
}

/// The headers the demo backend saw for one `GET /headers` carrying
/// `headers`.
async fn seen_by_backend(addr: SocketAddr, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = support::client().get(support::url(addr, "/headers"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    assert_eq!(resp.status(), 200);
    resp.json().await.expect("json")
}

/// `(trace id, parent id, flags)` of a `traceparent`.
fn fields(tp: &serde_json::Value) -> (String, String, String) {
    let tp = tp.as_str().expect("the backend got a traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], "00", "{tp}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn backends_get_a_traceparent_without_span_export() {
    let b = support::backend("b0").await;
    // Untrusted (no trusted_proxies): the client's trace is not continued.
    let lb = support::balancer(&support::config(&[b.addr])).await;
    let seen = seen_by_backend(
        lb.proxy_addr(),
        &[("traceparent", &incoming("01")), ("tracestate", "v=1")],
    )
    .await;
    let (trace, parent, flags) = fields(&seen["traceparent"]);
    assert_ne!(trace, TRACE, "an untrusted client chose the trace");
    assert_ne!(parent, CALLER);
    assert_eq!(flags, "00", "nothing records a trace tollgate started");
    assert!(seen.get("tracestate").is_none(), "{seen}");
    // Without any traceparent: one is made up all the same.
    let fresh = seen_by_backend(lb.proxy_addr(), &[]).await;
    let (other, _, _) = fields(&fresh["traceparent"]);
    assert_ne!(other, trace, "each request starts its own trace");
    lb.shutdown().await;

    // Trusted: the caller's trace, flags and tracestate go on; the
    // parent is tollgate's attempt, new for each request.
    let lb = support::balancer(&trusting_loopback(support::config(&[b.addr]))).await;
    let mut parents = Vec::new();
    for _ in 0..2 {
        let seen = seen_by_backend(
            lb.proxy_addr(),
            &[("traceparent", &incoming("01")), ("tracestate", "v=1")],
        )
        .await;
        let (trace, parent, flags) = fields(&seen["traceparent"]);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
        assert_ne!(parent, CALLER, "the backend's parent is tollgate's span");
        assert_eq!(seen["tracestate"], "v=1");
        parents.push(parent);
    }
    assert_ne!(parents[0], parents[1]);
    // A malformed traceparent from a trusted peer starts a new trace.
    let seen = seen_by_backend(lb.proxy_addr(), &[("traceparent", "00-XYZ-01")]).await;
    assert_ne!(fields(&seen["traceparent"]).0, TRACE);
    lb.shutdown().await;
    b.stop().await;
}

/// The spans of `trace` once `n` of them arrived.
async fn spans_of(collector: &Collector, trace: &[u8], n: usize) -> Vec<Received> {
    let mut got = Vec::new();
    support::eventually("spans at the collector", || {
        got = collector
            .spans()
            .into_iter()
            .filter(|s| s.span.trace_id == trace)
            .collect();
        got.len() >= n
    })
    .await;
    got
}

fn one_of_kind(spans: &[Received], kind: SpanKind) -> &Received {
    let of_kind: Vec<&Received> = spans
        .iter()
        .filter(|s| s.span.kind == kind as i32)
        .collect();
    assert_eq!(of_kind.len(), 1, "{kind:?} spans: {spans:?}");
    of_kind[0]
}

#[tokio::test]
async fn a_trusted_callers_request_is_a_server_span_over_a_client_span_the_backend_sees() {
    let b = support::backend("b0").await;
    let collector = Collector::start().await;
    let mut c = trusting_loopback(support::config(&[b.addr]));
    // Ratio 0: only the caller's sampled flag can have it recorded.
    c.telemetry.otlp = Some(otlp(collector.endpoint(), 0.0));
    let lb = support::balancer(&c).await;
    let seen = seen_by_backend(lb.proxy_addr(), &[("traceparent", &incoming("01"))]).await;
    let (trace, parent, flags) = fields(&seen["traceparent"]);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let spans = spans_of(&collector, &trace_bytes, 2).await;
    let server = one_of_kind(&spans, SpanKind::Server);
    let client = one_of_kind(&spans, SpanKind::Client);
    assert_eq!(
        hex(&server.span.parent_span_id),
        CALLER,
        "the caller is the server span's parent"
    );
    assert_eq!(
        client.span.parent_span_id, server.span.span_id,
        "the attempt is under the request"
    );
    assert_eq!(
        hex(&client.span.span_id),
        parent,
        "the backend's parent is the attempt"
    );
    assert_eq!(server.service.as_deref(), Some("tollgate-test"));
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(server.attr("tollgate.decision").as_deref(), Some("allowed"));
    assert_eq!(server.attr("tollgate.pool").as_deref(), Some("default"));
    assert_eq!(server.attr("tollgate.client").as_deref(), Some("127.0.0.1"));
    assert!(client.attr("tollgate.backend").is_some(), "{client:?}");
    assert_eq!(client.attr("server.address"), Some(b.addr.to_string()));
    assert!(collector
        .posts()
        .iter()
        .all(|p| p == "POST /v1/traces application/x-protobuf"));
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn an_untrusted_callers_trace_is_not_continued_in_the_spans() {
    let b = support::backend("b0").await;
    let collector = Collector::start().await;
    let mut c = support::config(&[b.addr]);
    c.telemetry.otlp = Some(otlp(collector.endpoint(), 1.0));
    let lb = support::balancer(&c).await;
    let seen = seen_by_backend(lb.proxy_addr(), &[("traceparent", &incoming("01"))]).await;
    let (trace, parent, flags) = fields(&seen["traceparent"]);
    assert_ne!(trace, TRACE);
    assert_eq!(flags, "01", "ratio 1 records every new trace");
    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).expect("hex"))
        .collect();
    let spans = spans_of(&collector, &trace_bytes, 2).await;
    let server = one_of_kind(&spans, SpanKind::Server);
    let client = one_of_kind(&spans, SpanKind::Client);
    assert!(
        server.span.parent_span_id.is_empty(),
        "a new trace has a root span"
    );
    assert_eq!(client.span.parent_span_id, server.span.span_id);
    assert_eq!(hex(&client.span.span_id), parent);
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn sampling_at_zero_exports_nothing_and_still_passes_the_context_on() {
    let b = support::backend("b0").await;
    let collector = Collector::start().await;
    let mut c = support::config(&[b.addr]);
    c.telemetry.otlp = Some(otlp(collector.endpoint(), 0.0));
    let lb = support::balancer(&c).await;
    let admin = lb.admin_addr();
    let mut traces = Vec::new();
    for _ in 0..20 {
        let seen = seen_by_backend(lb.proxy_addr(), &[]).await;
        let (trace, _, flags) = fields(&seen["traceparent"]);
        assert_eq!(flags, "00");
        traces.push(trace);
    }
    traces.dedup();
    assert_eq!(traces.len(), 20, "a new trace for each request");
    let m = metrics::parse(&metrics::scrape(&support::client(), admin).await);
    // Shutdown exports whatever is queued: after it, nothing can come.
    lb.shutdown().await;
    assert!(collector.spans().is_empty(), "{:?}", collector.spans());
    assert_eq!(m.get("tollgate_trace_spans_exported_total"), Some(&0.0));
    b.stop().await;
}

#[tokio::test]
async fn a_collector_that_is_down_costs_counted_spans_not_requests() {
    let b = support::backend("b0").await;
    let mut c = support::config(&[b.addr]);
    // A collector that takes connections (the kernel completes them into
    // the backlog) and never answers: each export waits out its timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut o = otlp(
        format!("http://{}", silent.local_addr().expect("addr")),
        1.0,
    );
    o.max_queue_size = std::num::NonZeroUsize::new(4).expect("nonzero");
    o.timeout = Duration::from_millis(200);
    c.telemetry.otlp = Some(o);
    let lb = support::balancer(&c).await;
    let (admin, client) = (lb.admin_addr(), support::client());
    for _ in 0..50 {
        assert_eq!(
            support::get_status(&client, lb.proxy_addr(), "/").await,
            200
        );
    }
    let full = r#"tollgate_trace_spans_dropped_total{reason="queue_full"}"#;
    let failed = r#"tollgate_trace_spans_dropped_total{reason="export_failed"}"#;
    // 50 requests are 100 spans: the queue (4) takes a few, which time
    // out in export; the rest are dropped at once. Each is counted once.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics::scrape(&client, admin).await;
        let m = metrics::parse(&text);
        let got = |k: &str| m.get(k).copied().unwrap_or(0.0);
        if got(full) + got(failed) >= 100.0 {
            assert!(got(full) > 0.0 && got(failed) > 0.0, "{text}");
            assert_eq!(got(full) + got(failed), 100.0, "{text}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "drops not counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lb.shutdown().await;
    drop(silent);
    b.stop().await;
}
