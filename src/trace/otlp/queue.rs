//! The bound on spans waiting for export, and the counts of what became
//! of them.
//!
//! The SDK's batch span processor drops spans when its queue is full,
//! but keeps that count to itself (it logs it once, at shutdown), and a
//! batch that fails to export is gone without a count at all. So the
//! processor is wrapped twice: [`Gate`] in front of it admits a sampled
//! span only while fewer than `max_queue_size` are waiting (else drops
//! and counts it), and [`Counting`] around the exporter frees their
//! places when a batch leaves for the collector and counts the batch as
//! exported or failed. The processor's own queue is made larger than the
//! gate's bound, so it never drops a span the gate let through, and
//! every span lost is counted once, here.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

use crate::telemetry::Metrics;

/// Room the processor's own queue has beyond the gate's bound, for the
/// flush and shutdown messages that travel in it too.
pub(super) const SLACK: usize = 64;

/// Spans between the gate and the exporter, and the counters.
#[derive(Debug)]
pub(super) struct Pipeline {
    waiting: AtomicUsize,
    bound: usize,
    full: metrics::Counter,
    failed: metrics::Counter,
    exported: metrics::Counter,
}

impl Pipeline {
    /// At most `bound` spans waiting, counted in `metrics`.
    pub(super) fn new(bound: usize, metrics: &Metrics) -> Arc<Self> {
        use crate::telemetry::{TRACE_SPANS_DROPPED, TRACE_SPANS_EXPORTED};
        Arc::new(Self {
            waiting: AtomicUsize::new(0),
            bound,
            full: metrics.counter(TRACE_SPANS_DROPPED, &[("reason", "queue_full")]),
            failed: metrics.counter(TRACE_SPANS_DROPPED, &[("reason", "export_failed")]),
            exported: metrics.counter(TRACE_SPANS_EXPORTED, &[]),
        })
    }

    /// Takes a place for one span, if one is free.
    fn admit(&self) -> bool {
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.bound).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            self.full.increment(1);
        }
        taken
    }

    /// Frees the places of `n` spans that left for the collector.
    fn left(&self, n: usize) {
        // Saturating: spans the gate did not admit (none should reach
        // the exporter any other way) must not wrap the count.
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(w.saturating_sub(n))
            });
    }
}

/// The span processor in front of the SDK's batch processor.
#[derive(Debug)]
pub(super) struct Gate<P> {
    pub(super) inner: P,
    pub(super) pipeline: Arc<Pipeline>,
}

impl<P: SpanProcessor> SpanProcessor for Gate<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Unsampled spans are not exported (the batch processor skips
        // them too): they take no place.
        if span.span_context.is_sampled() && self.pipeline.admit() {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting each batch as exported or failed.
#[derive(Debug)]
pub(super) struct Counting<E> {
    pub(super) inner: E,
    pub(super) pipeline: Arc<Pipeline>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let n = batch.len();
        self.pipeline.left(n);
        let mut outcome = Outcome {
            pipeline: &self.pipeline,
            spans: n,
            settled: false,
        };
        async move {
            let result = self.inner.export(batch).await;
            outcome.settle(result.is_ok());
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// One batch's fate. The processor drops an export that outlives its
/// timeout without an answer: that batch counts as failed.
struct Outcome<'a> {
    pipeline: &'a Pipeline,
    spans: usize,
    settled: bool,
}

impl Outcome<'_> {
    fn settle(&mut self, exported: bool) {
        let n = self.spans as u64;
        if exported {
            self.pipeline.exported.increment(n);
        } else {
            self.pipeline.failed.increment(n);
        }
        self.settled = true;
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_up_to_its_bound_and_counts_the_rest() {
        let metrics = Metrics::new();
        let p = Pipeline::new(2, &metrics);
        assert!(p.admit());
        assert!(p.admit());
        assert!(!p.admit(), "a third span waits beyond the bound");
        p.left(2);
        assert!(p.admit(), "places freed by an export are taken again");
        let text = metrics.render_text();
        assert!(
            text.contains(r#"tollgate_trace_spans_dropped_total{reason="queue_full"} 1"#),
            "{text}"
        );
    }
}
