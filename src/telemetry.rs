//! Metrics: names, recording helpers, and the Prometheus exporter behind
//! `GET /metrics` on the admin listener.
//!
//! A [`Metrics`] is one Prometheus registry, made by each started
//! tollgate and handed to the parts that count (as linkerd2-proxy passes
//! its metrics in), not a process-wide recorder: two balancers in one
//! process (the tests) each count their own, and what a request bumps is
//! a handle registered once, not a name and labels looked up per request.
//! Counters and histograms are recorded where things happen; gauges that
//! describe current state (backend health, in-flight requests, tracked
//! clients) are read from the pool and the registry when `/metrics` is
//! scraped, so they cost nothing per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::shutdown::Ticks;

/// Requests answered, by `status` class (`2xx`...) and `backend`
/// (`none` when no backend was involved).
pub const REQUESTS: &str = "tollgate_requests_total";
/// Spans lost before reaching the collector, by `reason`: `queue_full`
/// (more waiting than `telemetry.otlp.max_queue_size`) or
/// `export_failed` (the collector refused, failed or timed out).
pub const TRACE_SPANS_DROPPED: &str = "tollgate_trace_spans_dropped_total";
/// Spans the collector accepted.
pub const TRACE_SPANS_EXPORTED: &str = "tollgate_trace_spans_exported_total";
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
/// Requests sent again to another backend of their pool, by `pool` and
/// `reason` (`connect_failure`, `reset`, `502`, `503`, `504`).
pub const RETRIES: &str = "tollgate_retries_total";
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

/// Requests waiting for a free slot of a pool with `max_connections`,
/// by `pool`.
pub const QUEUE_DEPTH: &str = "tollgate_queue_depth";
/// Time a request waited for a free slot, seconds, by `pool` (those that
/// got one and those that timed out).
pub const QUEUE_WAIT: &str = "tollgate_queue_wait_seconds";
/// DNS discovery lookups, by `pool` and `result`: `changed` (the backend
/// set was replaced), `unchanged`, `empty` and `failed` (both keep the
/// last known set).
pub const DISCOVERY_UPDATES: &str = "tollgate_discovery_updates_total";
/// Buckets of every `_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// `store.notify` notifications handled, by `result`: `applied` (the
/// announced row was read and now runs), `failed` (it could not be read;
/// the next reload applies it).
pub const STORE_NOTIFICATIONS: &str = "tollgate_store_notifications_total";
/// Times the `store.notify` listening connection was made again after it
/// was lost (each followed by a read of the whole client table).
pub const STORE_LISTENER_RECONNECTS: &str = "tollgate_store_listener_reconnects_total";

/// One Prometheus registry and the handles the request path bumps, shared
/// by every part of one running tollgate (cheap to clone).
#[derive(Clone)]
pub struct Metrics(Arc<Registry>);

struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    no_backend: RequestCounters,
    duration: metrics::Histogram,
    /// Refusals by the client's own bucket: the common 429, kept at hand.
    client_limited: metrics::Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a handle is registered from (the exporter ignores it).
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Metrics {
    /// A new, empty registry with every family described.
    pub fn new() -> Self {
        // Setting buckets fails only on an empty list.
        let recorder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        describe(&recorder);
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &METADATA)
        };
        let client_limited = counter(RATE_LIMITED, &[("policy", "client"), ("dry_run", "false")]);
        let no_backend = RequestCounters::register(&recorder, "none");
        let duration = recorder.register_histogram(&key(REQUEST_DURATION, &[]), &METADATA);
        // Shown from the start, not only once a tunnel has opened.
        recorder
            .register_gauge(&key(UPGRADED_CONNECTIONS, &[]), &METADATA)
            .set(0.0);
        Self(Arc::new(Registry {
            recorder,
            handle,
            no_backend,
            duration,
            client_limited,
        }))
    }

    /// The counter `name` with these labels (registered on first use,
    /// the same handle after).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Counter {
        self.0
            .recorder
            .register_counter(&owned_key(name, labels), &METADATA)
    }

    /// The gauge `name` with these labels.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Gauge {
        self.0
            .recorder
            .register_gauge(&owned_key(name, labels), &METADATA)
    }

    /// The histogram `name` (no labels).
    pub fn histogram(&self, name: &'static str) -> metrics::Histogram {
        self.0
            .recorder
            .register_histogram(&key(name, &[]), &METADATA)
    }

    /// The histogram `name` with these labels.
    pub fn histogram_with(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
    ) -> metrics::Histogram {
        self.0
            .recorder
            .register_histogram(&owned_key(name, labels), &METADATA)
    }

    /// The counters of requests answered by `backend`, one per status
    /// class.
    pub fn request_counters(&self, backend: &str) -> RequestCounters {
        RequestCounters::register(&self.0.recorder, backend)
    }

    /// The counters of requests answered by `backend` of `pool` that took
    /// `route` (empty: none), one per status class.
    pub fn labelled_request_counters(
        &self,
        backend: &str,
        pool: &str,
        route: &str,
    ) -> RequestCounters {
        RequestCounters::register_with(
            &self.0.recorder,
            &[("backend", backend), ("pool", pool), ("route", route)],
        )
    }

    /// Records one answered request.
    pub fn request(&self, status: u16, backend: Option<&RequestCounters>, took: Duration) {
        let counters = backend.unwrap_or(&self.0.no_backend);
        counters.get(status).increment(1);
        self.0.duration.record(took.as_secs_f64());
    }

    /// Counts one refusal by `policy` (`client` or a rule's name); with
    /// `dry_run`, one that was not enforced. `place`: the route and pool
    /// of the request, when pools or routes are configured.
    pub fn rate_limited(&self, policy: &str, dry_run: bool, place: Option<(&str, &str)>) {
        let dry_run = if dry_run { "true" } else { "false" };
        match place {
            None if policy == "client" && dry_run == "false" => self.0.client_limited.increment(1),
            None => self
                .counter(RATE_LIMITED, &[("policy", policy), ("dry_run", dry_run)])
                .increment(1),
            Some((route, pool)) => self
                .counter(
                    RATE_LIMITED,
                    &[
                        ("policy", policy),
                        ("dry_run", dry_run),
                        ("route", route),
                        ("pool", pool),
                    ],
                )
                .increment(1),
        }
    }

    /// The counter of exchanges cut by an idle timeout in `direction`
    /// (see [`IDLE_TIMEOUTS`]).
    pub fn idle_timeouts(&self, direction: &'static str) -> metrics::Counter {
        self.counter(IDLE_TIMEOUTS, &[("direction", direction)])
    }

    /// Counts one exchange cut by an idle timeout.
    pub fn idle_timeout(&self, direction: &'static str) {
        self.idle_timeouts(direction).increment(1);
    }

    /// Counts one connection closed for want of a trusted, well-formed
    /// PROXY header (`reason`: see [`PROXY_PROTOCOL_REFUSED`]).
    pub fn proxy_protocol_refused(&self, reason: &'static str) {
        self.counter(PROXY_PROTOCOL_REFUSED, &[("reason", reason)])
            .increment(1);
    }

    /// Counts one failed TLS handshake; `reason` is one of the fixed set
    /// documented on [`TLS_HANDSHAKE_FAILURES`].
    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.counter(TLS_HANDSHAKE_FAILURES, &[("reason", reason)])
            .increment(1);
    }

    /// One more tunnel open, until the returned guard is dropped.
    pub fn open_tunnel(&self) -> OpenTunnel {
        let gauge = self.gauge(UPGRADED_CONNECTIONS, &[]);
        gauge.increment(1.0);
        OpenTunnel(gauge)
    }

    /// Counts one config reload; `result` is one of those documented on
    /// [`CONFIG_RELOADS`].
    pub fn config_reload(&self, result: &'static str) {
        self.counter(CONFIG_RELOADS, &[("result", result)])
            .increment(1);
    }

    /// Counts a request the shared limiter's failure policy (`local` or
    /// `reject`) decided.
    pub fn shared_fallback(&self, policy: &'static str) {
        self.counter(SHARED_LIMITER_FALLBACKS, &[("policy", policy)])
            .increment(1);
    }

    /// Folds recorded histogram samples into their buckets.
    pub fn run_upkeep(&self) {
        self.0.handle.run_upkeep();
    }

    /// The Prometheus text of everything recorded so far.
    pub fn render_text(&self) -> String {
        self.0.handle.render()
    }

    /// The Prometheus text for a scrape, with the state gauges set from
    /// `state` first.
    pub fn render(&self, state: &StateGauges<'_>) -> String {
        for b in &state.backends {
            let labels: &[(&'static str, &str)] = match b.pool {
                Some(pool) => &[("backend", b.label), ("pool", pool)],
                None => &[("backend", b.label)],
            };
            self.gauge(BACKEND_HEALTHY, labels)
                .set(f64::from(u8::from(b.healthy)));
            self.gauge(BACKEND_IN_FLIGHT, labels)
                .set(b.in_flight as f64);
        }
        self.gauge(CLIENTS_TRACKED, &[])
            .set(state.clients_tracked as f64);
        self.gauge(CLIENTS_PINNED, &[])
            .set(state.clients_pinned as f64);
        self.render_text()
    }

    /// Folds recorded histogram samples into their buckets every `every`
    /// until `stop` completes.
    ///
    /// The exporter queues every sample until someone renders or runs
    /// upkeep; without this, a balancer nobody scrapes grew by about 20
    /// bytes per request (13-14 MB per 670k requests measured with wrk).
    pub async fn upkeep(
        self,
        every: Duration,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let mut ticks = Ticks::every(every, tokio::time::MissedTickBehavior::Delay, stop);
        while ticks.next().await {
            self.run_upkeep();
        }
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|&(k, v)| Label::from_static_parts(k, v))
            .collect::<Vec<_>>(),
    )
}

fn owned_key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    Key::from_parts(
        name,
        labels
            .iter()
            .map(|&(k, v)| Label::new(k, v.to_owned()))
            .collect::<Vec<_>>(),
    )
}

fn describe(r: &PrometheusRecorder) {
    let counter =
        |name: &'static str, text: &'static str| r.describe_counter(name.into(), None, text.into());
    let gauge =
        |name: &'static str, text: &'static str| r.describe_gauge(name.into(), None, text.into());
    let seconds = |name: &'static str, text: &'static str| {
        r.describe_histogram(name.into(), Some(metrics::Unit::Seconds), text.into())
    };
    counter(REQUESTS, "Requests answered, by status class and backend");
    counter(
        TRACE_SPANS_DROPPED,
        "Sampled spans that never reached the collector, by reason (queue_full, export_failed)",
    );
    counter(TRACE_SPANS_EXPORTED, "Spans the OTLP collector accepted");
    counter(
        RATE_LIMITED,
        "Requests refused with 429 by policy (client or a rule's name); dry_run=true: refusals a dry run did not enforce"
    );
    seconds(REQUEST_DURATION, "Time to response headers");
    gauge(
        QUEUE_DEPTH,
        "Requests waiting for a free slot of a pool with max_connections",
    );
    seconds(QUEUE_WAIT, "Time requests waited for a free slot, by pool");
    counter(
        DISCOVERY_UPDATES,
        "DNS discovery lookups by pool and result (changed, unchanged, empty, failed)",
    );
    gauge(BACKEND_HEALTHY, "1 if the backend is in the pool");
    gauge(BACKEND_IN_FLIGHT, "Requests in flight per backend");
    counter(BACKEND_CONNECTIONS, "Connections opened to each backend");
    counter(
        BACKEND_EJECTIONS,
        "Times each backend was ejected for consecutive 5xx answers",
    );
    counter(
        SHARED_LIMITER_FAILURES,
        "Checks Redis was asked and failed or timed out (not those skipped in the pause after a failure)"
    );
    counter(
        SHARED_LIMITER_FALLBACKS,
        "Requests decided by rate_limit.shared.on_failure because the shared limiter gave no answer"
    );
    counter(
        SHARED_LIMITER_CALLS,
        "Script calls sent to Redis for shared checks and leases, by mode",
    );
    counter(SHARED_LIMITER_LEASED, "Tokens Redis leased to this replica");
    counter(
        SHARED_LIMITER_RETURNED,
        "Leased tokens given back to Redis unspent",
    );
    counter(
        RETRIES,
        "Requests sent again to another backend of their pool, by pool and reason",
    );
    counter(
        SHARED_LIMITER_RETRIES,
        "Script calls tried again on a fresh connection after finding theirs broken",
    );
    gauge(
        SHARED_LIMITER_REPLICAS,
        "Live replicas counted from heartbeats; while Redis is away each admits its share of a limit",
    );
    counter(
        SHARED_LIMITER_LOCAL_REFUSALS,
        "Requests refused without asking Redis, which had said the bucket was empty until later",
    );
    counter(
        IDLE_TIMEOUTS,
        "Exchanges cut after an idle timeout, by direction",
    );
    counter(
        PROXY_PROTOCOL_REFUSED,
        "Connections closed for want of a trusted, well-formed PROXY header, by reason",
    );
    counter(
        TLS_HANDSHAKE_FAILURES,
        "TLS handshakes that failed, by reason",
    );
    gauge(
        UPGRADED_CONNECTIONS,
        "Upgraded (WebSocket) connections open, tunnelled to a backend",
    );
    counter(CONFIG_RELOADS, "Config reloads, by result");
    counter(
        STORE_NOTIFICATIONS,
        "store.notify notifications handled, by result (applied, failed)",
    );
    counter(
        STORE_LISTENER_RECONNECTS,
        "Times the store.notify listening connection was made again",
    );
    counter(
        ACCESS_LOG_DROPPED,
        "Access log lines dropped because the writer was behind",
    );
    gauge(CLIENTS_TRACKED, "Clients with a token bucket");
    gauge(CLIENTS_PINNED, "Clients in the client table");
    seconds(REFILL_SWEEP, "Duration of one refill tick");
    seconds(SNAPSHOT, "Duration of one bucket snapshot");
}

/// Counters of one backend (or of "no backend"), one per status class,
/// registered once so that a request only bumps an atomic.
#[derive(Debug)]
pub struct RequestCounters([metrics::Counter; 5]);

impl RequestCounters {
    fn register(recorder: &PrometheusRecorder, backend: &str) -> Self {
        Self::register_with(recorder, &[("backend", backend)])
    }

    fn register_with(recorder: &PrometheusRecorder, labels: &[(&'static str, &str)]) -> Self {
        Self(["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            let mut all = vec![Label::from_static_parts("status", class)];
            all.extend(labels.iter().map(|&(k, v)| Label::new(k, v.to_owned())));
            recorder.register_counter(&Key::from_parts(REQUESTS, all), &METADATA)
        }))
    }

    fn get(&self, status: u16) -> &metrics::Counter {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        &self.0[i]
    }
}

/// One open tunnel in [`UPGRADED_CONNECTIONS`], from `new` to drop: moved
/// with the tunnel rather than counted at scrape time, since tunnels live
/// in the connection tasks of every proxy thread.
#[derive(Debug)]
pub struct OpenTunnel(metrics::Gauge);

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// One backend's state at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct BackendGauge<'a> {
    /// Its label (its name).
    pub label: &'a str,
    /// Its pool's name, when backend metrics carry a `pool` label (pools
    /// or routes are configured).
    pub pool: Option<&'a str>,
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
