//! Metrics: names, recording helpers, and the Prometheus exporter behind
//! `GET /metrics` on the admin listener.
//!
//! Counters and histograms are recorded where things happen, through the
//! `metrics` facade; gauges that describe current state (backend health,
//! in-flight requests, tracked clients) are read from the pool and the
//! registry when `/metrics` is scraped, so they cost nothing per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::shutdown::Ticks;

/// Requests answered, by `status` class (`2xx`...) and `backend`
/// (`none` when no backend was involved).
pub const REQUESTS: &str = "tollgate_requests_total";
/// Requests refused with 429.
pub const RATE_LIMITED: &str = "tollgate_rate_limited_total";
/// Time from request to response headers, seconds.
pub const REQUEST_DURATION: &str = "tollgate_request_duration_seconds";
/// 1 if the backend is in the pool, else 0.
pub const BACKEND_HEALTHY: &str = "tollgate_backend_healthy";
/// Requests in flight per backend.
pub const BACKEND_IN_FLIGHT: &str = "tollgate_backend_in_flight";
/// Clients with a bucket.
pub const CLIENTS_TRACKED: &str = "tollgate_clients_tracked";
/// Clients pinned by the client table.
pub const CLIENTS_PINNED: &str = "tollgate_clients_pinned";
/// Connections opened to each backend (a pool that works keeps this low).
pub const BACKEND_CONNECTIONS: &str = "tollgate_backend_connections_opened_total";
/// Times each backend was ejected for consecutive 5xx answers
/// (`health_check.passive`).
pub const BACKEND_EJECTIONS: &str = "tollgate_backend_ejections_total";
/// Checks Redis was asked and failed (error or timeout); the checks skipped
/// in the pause after a failure are not among them.
pub const SHARED_LIMITER_FAILURES: &str = "tollgate_shared_limiter_failures_total";
/// Requests the failure policy decided because the shared limiter gave no
/// answer (failed, timed out or paused), by `policy` (`local`, `reject`).
pub const SHARED_LIMITER_FALLBACKS: &str = "tollgate_shared_limiter_fallbacks_total";
/// Script calls sent to Redis for shared checks and leases, by `mode`.
pub const SHARED_LIMITER_CALLS: &str = "tollgate_shared_limiter_calls_total";
/// Tokens Redis leased to this replica (`mode: lease`).
pub const SHARED_LIMITER_LEASED: &str = "tollgate_shared_limiter_leased_tokens_total";
/// Leased tokens given back unspent (idle leases, shutdown).
pub const SHARED_LIMITER_RETURNED: &str = "tollgate_shared_limiter_returned_tokens_total";
/// Requests refused without asking Redis, because it had said the client's
/// bucket was empty until later (`mode: lease`).
pub const SHARED_LIMITER_LOCAL_REFUSALS: &str = "tollgate_shared_limiter_local_refusals_total";
/// Script calls tried a second time on a fresh connection because the
/// first found its connection broken (a Redis restart).
pub const SHARED_LIMITER_RETRIES: &str = "tollgate_shared_limiter_retries_total";
/// Live replicas this one counts (heartbeats in Redis): while Redis is away
/// it admits capacity and rate divided by this.
pub const SHARED_LIMITER_REPLICAS: &str = "tollgate_shared_limiter_replicas";
/// Exchanges cut because one side paused longer than its idle timeout,
/// by `direction`: `client_body` (request body from the client),
/// `send` (client not taking the response), `backend_body` (response body
/// from the backend), `h2_idle` (HTTP/2 connection with no request).
pub const IDLE_TIMEOUTS: &str = "tollgate_idle_timeouts_total";
/// Connections closed before their first request because of the PROXY
/// protocol, by `reason`: `untrusted` (peer outside
/// `rate_limit.trusted_proxies`), `missing` (no PROXY signature),
/// `malformed` (a bad header, or the connection ended inside it),
/// `timeout` (no complete header within `server.header_read_timeout`).
pub const PROXY_PROTOCOL_REFUSED: &str = "tollgate_proxy_protocol_refused_total";
/// TLS handshakes on the TLS listener that failed, by `reason`:
/// `timeout`, `closed`, `not_tls`, `protocol_version`,
/// `no_application_protocol`, `certificate_rejected`, `other`.
pub const TLS_HANDSHAKE_FAILURES: &str = "tollgate_tls_handshake_failures_total";
/// Config reloads (SIGHUP, `POST /reload`), by `result`: `applied`,
/// `invalid` (the file did not validate), `failed` (a certificate could
/// not be read, the reload was interrupted).
pub const CONFIG_RELOADS: &str = "tollgate_config_reloads_total";
/// Access log lines dropped because the writer was behind
/// (`log.access: true`).
pub const ACCESS_LOG_DROPPED: &str = "tollgate_access_log_dropped_total";
/// Duration of one refill tick, seconds.
pub const REFILL_SWEEP: &str = "tollgate_refill_sweep_seconds";
/// Duration of one bucket snapshot, seconds.
pub const SNAPSHOT: &str = "tollgate_snapshot_seconds";
/// Gauge: upgraded (WebSocket) connections open now, tunnelled to a backend.
pub const UPGRADED_CONNECTIONS: &str = "tollgate_upgraded_connections";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its
/// handle; `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            // Shown from the start, not only once a tunnel has opened.
            metrics::gauge!(UPGRADED_CONNECTIONS).set(0.0);
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "Requests answered, by status class and backend");
    metrics::describe_counter!(
        RATE_LIMITED,
        "Requests refused with 429 by policy (client or a rule's name); dry_run=true: refusals a dry run did not enforce"
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time to response headers"
    );
    metrics::describe_gauge!(BACKEND_HEALTHY, "1 if the backend is in the pool");
    metrics::describe_gauge!(BACKEND_IN_FLIGHT, "Requests in flight per backend");
    metrics::describe_counter!(BACKEND_CONNECTIONS, "Connections opened to each backend");
    metrics::describe_counter!(
        BACKEND_EJECTIONS,
        "Times each backend was ejected for consecutive 5xx answers"
    );
    metrics::describe_counter!(
        SHARED_LIMITER_FAILURES,
        "Checks Redis was asked and failed or timed out (not those skipped in the pause after a failure)"
    );
    metrics::describe_counter!(
        SHARED_LIMITER_FALLBACKS,
        "Requests decided by rate_limit.shared.on_failure because the shared limiter gave no answer"
    );
    metrics::describe_counter!(
        SHARED_LIMITER_CALLS,
        "Script calls sent to Redis for shared checks and leases, by mode"
    );
    metrics::describe_counter!(SHARED_LIMITER_LEASED, "Tokens Redis leased to this replica");
    metrics::describe_counter!(
        SHARED_LIMITER_RETURNED,
        "Leased tokens given back to Redis unspent"
    );
    metrics::describe_counter!(
        SHARED_LIMITER_RETRIES,
        "Script calls tried again on a fresh connection after finding theirs broken"
    );
    metrics::describe_gauge!(
        SHARED_LIMITER_REPLICAS,
        "Live replicas counted from heartbeats; while Redis is away each admits its share of a limit"
    );
    metrics::describe_counter!(
        SHARED_LIMITER_LOCAL_REFUSALS,
        "Requests refused without asking Redis, which had said the bucket was empty until later"
    );
    metrics::describe_counter!(
        IDLE_TIMEOUTS,
        "Exchanges cut after an idle timeout, by direction"
    );
    metrics::describe_counter!(
        PROXY_PROTOCOL_REFUSED,
        "Connections closed for want of a trusted, well-formed PROXY header, by reason"
    );
    metrics::describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, by reason"
    );
    metrics::describe_gauge!(
        UPGRADED_CONNECTIONS,
        "Upgraded (WebSocket) connections open, tunnelled to a backend"
    );
    metrics::describe_counter!(CONFIG_RELOADS, "Config reloads, by result");
    metrics::describe_counter!(
        ACCESS_LOG_DROPPED,
        "Access log lines dropped because the writer was behind"
    );
    metrics::describe_gauge!(CLIENTS_TRACKED, "Clients with a token bucket");
    metrics::describe_gauge!(CLIENTS_PINNED, "Clients in the client table");
    metrics::describe_histogram!(
        REFILL_SWEEP,
        metrics::Unit::Seconds,
        "Duration of one refill tick"
    );
    metrics::describe_histogram!(
        SNAPSHOT,
        metrics::Unit::Seconds,
        "Duration of one bucket snapshot"
    );
}

/// Counters of one backend (or of "no backend"), one per status class,
/// registered once so that a request only bumps an atomic.
#[derive(Debug)]
pub struct RequestCounters([metrics::Counter; 5]);

impl RequestCounters {
    /// Registers the counters labelled with `backend`.
    pub fn new(backend: &str) -> Self {
        Self(["1xx", "2xx", "3xx", "4xx", "5xx"].map(
            |class| metrics::counter!(REQUESTS, "status" => class, "backend" => backend.to_owned()),
        ))
    }

    fn get(&self, status: u16) -> &metrics::Counter {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        &self.0[i]
    }
}

struct Hot {
    no_backend: RequestCounters,
    duration: metrics::Histogram,
    /// Refusals by the client's own bucket: the common 429, kept at hand.
    client_limited: metrics::Counter,
}

static HOT: OnceLock<Hot> = OnceLock::new();

fn hot() -> &'static Hot {
    HOT.get_or_init(|| Hot {
        no_backend: RequestCounters::new("none"),
        duration: metrics::histogram!(REQUEST_DURATION),
        client_limited: metrics::counter!(RATE_LIMITED, "policy" => "client", "dry_run" => "false"),
    })
}

/// Records one answered request. Handles are registered on first use;
/// call [`install`] before serving so they reach the exporter.
pub fn request(status: u16, backend: Option<&RequestCounters>, took: Duration) {
    let hot = hot();
    let counters = backend.unwrap_or(&hot.no_backend);
    counters.get(status).increment(1);
    hot.duration.record(took.as_secs_f64());
}

/// Counts one refusal by `policy` (`client` or a rule's name); with
/// `dry_run`, one that was not enforced.
pub fn rate_limited(policy: &str, dry_run: bool) {
    if policy == "client" && !dry_run {
        hot().client_limited.increment(1);
        return;
    }
    metrics::counter!(
        RATE_LIMITED,
        "policy" => policy.to_owned(),
        "dry_run" => if dry_run { "true" } else { "false" }
    )
    .increment(1);
}

/// Counts one exchange cut by an idle timeout.
pub fn idle_timeout(direction: &'static str) {
    metrics::counter!(IDLE_TIMEOUTS, "direction" => direction).increment(1);
}

/// Counts one connection closed for want of a trusted, well-formed
/// PROXY header (`reason`: see [`PROXY_PROTOCOL_REFUSED`]).
pub fn proxy_protocol_refused(reason: &'static str) {
    metrics::counter!(PROXY_PROTOCOL_REFUSED, "reason" => reason).increment(1);
}

/// Counts one failed TLS handshake; `reason` is one of the fixed set
/// documented on [`TLS_HANDSHAKE_FAILURES`].
pub fn tls_handshake_failure(reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

/// One open tunnel in [`UPGRADED_CONNECTIONS`], from `new` to drop: moved
/// with the tunnel rather than counted at scrape time, since tunnels live
/// in the connection tasks of every proxy thread.
#[derive(Debug)]
pub struct OpenTunnel(metrics::Gauge);

impl OpenTunnel {
    /// Counts one more tunnel open.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let gauge = metrics::gauge!(UPGRADED_CONNECTIONS);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Counts one config reload; `result` is one of those documented on
/// [`CONFIG_RELOADS`].
pub fn config_reload(result: &'static str) {
    metrics::counter!(CONFIG_RELOADS, "result" => result).increment(1);
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every `every` until
/// `stop` completes.
///
/// The exporter queues every sample until someone renders or runs upkeep;
/// without this, a balancer nobody scrapes grew by about 20 bytes per
/// request (13-14 MB per 670k requests measured with wrk).
pub async fn upkeep(
    handle: PrometheusHandle,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let mut ticks = Ticks::every(every, tokio::time::MissedTickBehavior::Delay, stop);
    while ticks.next().await {
        handle.run_upkeep();
    }
}

/// One backend's state at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct BackendGauge<'a> {
    /// Its label (its name).
    pub label: &'a str,
    /// Whether it is in the pool.
    pub healthy: bool,
    /// Requests in flight to it.
    pub in_flight: usize,
}

/// What the state gauges show, read by the caller when `/metrics` is
/// scraped (so they cost nothing per request).
#[derive(Debug, Clone, Default)]
pub struct StateGauges<'a> {
    /// Every configured backend.
    pub backends: Vec<BackendGauge<'a>>,
    /// Clients with a bucket.
    pub clients_tracked: usize,
    /// Clients pinned by the client table.
    pub clients_pinned: usize,
}

/// The Prometheus text for a scrape, with the state gauges set from
/// `state` first.
pub fn render(handle: &PrometheusHandle, state: &StateGauges<'_>) -> String {
    for b in &state.backends {
        metrics::gauge!(BACKEND_HEALTHY, "backend" => b.label.to_owned())
            .set(f64::from(u8::from(b.healthy)));
        metrics::gauge!(BACKEND_IN_FLIGHT, "backend" => b.label.to_owned()).set(b.in_flight as f64);
    }
    metrics::gauge!(CLIENTS_TRACKED).set(state.clients_tracked as f64);
    metrics::gauge!(CLIENTS_PINNED).set(state.clients_pinned as f64);
    handle.render()
}

/// Counts a request the shared limiter's failure policy (`local` or
/// `reject`) decided.
pub fn shared_fallback(policy: &'static str) {
    metrics::counter!(SHARED_LIMITER_FALLBACKS, "policy" => policy).increment(1);
}

/// At most one log line per quiet period for a condition that, once it
/// starts, repeats many times a second (accept failures, skipped checks).
#[derive(Debug)]
pub struct Throttle {
    /// Milliseconds since [`epoch`] of the last line, plus one (0: never).
    last: AtomicU64,
    /// Occurrences since the last line.
    since: AtomicU64,
}

/// Shortest gap between two lines about the same condition.
pub const QUIET_PERIOD: Duration = Duration::from_secs(10);

fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new()
    }
}

impl Throttle {
    /// A throttle that has not logged yet.
    pub const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    /// Counts one occurrence and calls `log` with the number of
    /// occurrences not logged before it, unless a line was written within
    /// the quiet period.
    pub fn note(&self, log: impl FnOnce(u64)) {
        let now = u64::try_from(epoch().elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let since = self.since.fetch_add(1, Ordering::Relaxed);
        let last = self.last.load(Ordering::Relaxed);
        let quiet = u64::try_from(QUIET_PERIOD.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < quiet {
            return;
        }
        // One thread wins the line; the others count.
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.since.fetch_sub(since + 1, Ordering::Relaxed);
            log(since);
        }
    }
}
