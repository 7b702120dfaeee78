//! Span export over OTLP/HTTP (protobuf) with the official
//! OpenTelemetry crates: the SDK's tracer and head sampler, its batch
//! span processor on the tokio runtime, and the OTLP exporter posting
//! through our own HTTP client ([`client`]). The queue in front of the
//! exporter is bounded and its drops counted ([`queue`]).
//!
//! Sampling is decided once per trace, at its head: a trace a trusted
//! peer continues keeps that peer's sampled flag (parent-based), a new
//! one is recorded with probability `sample_ratio` (by its trace id, so
//! every replica decides the same for the same trace). Unsampled spans
//! still get ids, which the backend sees; they are never recorded.

mod client;
mod queue;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::OtlpConfig;
use crate::telemetry::Metrics;

/// Why span export could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// `telemetry.otlp.endpoint` is not a collector URL.
    #[error("telemetry.otlp.endpoint: {0}")]
    Endpoint(String),
    /// The HTTP client could not be built.
    #[error("OTLP HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The exporter refused its settings.
    #[error("OTLP exporter: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// Where spans go: the tracer the request path starts spans with, and
/// the provider behind it (its batch processor and exporter).
#[derive(Debug)]
pub struct Otlp {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

/// Largest batch posted at once (the SDK's default), or the whole queue
/// when that is smaller.
const MAX_BATCH: usize = 512;

impl Otlp {
    /// Starts the batch processor on the current tokio runtime; spans
    /// are posted to `{endpoint}/v1/traces`, `https://` collectors
    /// verified with `tls`; drops and exports counted in `metrics`.
    pub fn start(
        config: &OtlpConfig,
        tls: &Arc<rustls::ClientConfig>,
        metrics: &Metrics,
    ) -> Result<Self, OtlpError> {
        let url = traces_url(&config.endpoint).map_err(OtlpError::Endpoint)?;
        let client = client::Client::new(tls, config.timeout).map_err(OtlpError::Client)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(config.timeout)
            .build()
            .map_err(OtlpError::Exporter)?;
        let bound = config.max_queue_size.get();
        let pipeline = queue::Pipeline::new(bound, metrics);
        let exporter = queue::Counting {
            inner: exporter,
            pipeline: pipeline.clone(),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(bound + queue::SLACK)
            .with_max_export_batch_size(bound.min(MAX_BATCH))
            .with_scheduled_delay(config.batch_delay)
            .with_max_export_timeout(config.timeout)
            .build();
        let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(queue::Gate {
                inner: processor,
                pipeline,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("tollgate");
        Ok(Self { tracer, provider })
    }

    /// The tracer spans are started with.
    pub(super) fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Exports the spans still queued and stops, for at most `within`.
    /// The SDK waits for its worker by blocking the calling thread, so
    /// that happens on a thread of its own, never on a runtime's.
    pub async fn shutdown(&self, within: Duration) {
        let provider = self.provider.clone();
        let (done, stopped) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("otlp-stop".into())
            .spawn(move || {
                let _ = done.send(provider.shutdown_with_timeout(within));
            });
        match (spawned, tokio::time::timeout(within, stopped).await) {
            (Ok(_), Ok(Ok(Ok(())))) => {}
            (Ok(_), Ok(Ok(Err(e)))) => {
                tracing::warn!(error = %e, "spans still queued at exit may not have been exported")
            }
            _ => tracing::warn!("spans still queued at exit were not exported"),
        }
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        // The provider's last handle shuts it down, and that blocks until
        // the worker task answers: on a single-threaded runtime, dropped
        // on that runtime's thread, it would wait forever. Handing the
        // last handles to a thread of their own keeps any thread from
        // blocking on it.
        let provider = self.provider.clone();
        let tracer = self.tracer.clone();
        let _ = std::thread::Builder::new()
            .name("otlp-drop".into())
            .spawn(move || {
                let _ = provider.shutdown_with_timeout(Duration::from_secs(1));
                drop(tracer);
            });
    }
}

/// `{endpoint}/v1/traces` for a collector base URL (`http://h:4318`,
/// `https://h/otel/`), or why `endpoint` is not one.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{endpoint:?}: expected http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{endpoint:?} names no host"));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{endpoint:?}: a base URL has no query (spans go to its /v1/traces)"
        ));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_url_is_the_base_url_and_the_signal_path() {
        assert_eq!(
            traces_url("http://c:4318").as_deref(),
            Ok("http://c:4318/v1/traces")
        );
        assert_eq!(
            traces_url("https://c/otel/").as_deref(),
            Ok("https://c/otel/v1/traces")
        );
        for bad in ["c:4318", "ftp://c", "http://c/?x=1", "not a url"] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
