//! The schema of `telemetry`: where spans go (`telemetry.otlp`). The W3C
//! trace context is passed to backends whatever this section says; only
//! the export of spans is configured here.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

/// `telemetry`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Span export over OTLP/HTTP; `None`: no spans are recorded.
    pub otlp: Option<OtlpConfig>,
}

/// `telemetry.otlp`: spans exported over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's base URL (`http://collector:4318`); spans go to
    /// `{endpoint}/v1/traces`, as with `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    /// Share of new traces recorded, 0 to 1; a trusted peer's sampled
    /// flag decides for the traces it continues.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Most spans waiting for export; past it spans are dropped (and
    /// counted), so a collector that is down costs bounded memory.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: NonZeroUsize,
    /// Longest a finished span waits before its batch is posted (a full
    /// batch goes at once).
    #[serde(default = "default_batch_delay", deserialize_with = "duration")]
    pub batch_delay: Duration,
    /// Longest one export (one batch, retries included) may take.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_sample_ratio() -> f64 {
    0.01
}

fn default_service_name() -> String {
    "tollgate".into()
}

fn default_max_queue_size() -> NonZeroUsize {
    NonZeroUsize::new(2048).unwrap_or(NonZeroUsize::MIN)
}

fn default_batch_delay() -> Duration {
    Duration::from_secs(5)
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
