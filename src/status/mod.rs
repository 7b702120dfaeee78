//! The operator's view: what the status page (`GET /` on the admin
//! listener) shows, gathered once a second by a sampler task and served
//! as one JSON document at `GET /status`.
//!
//! The numbers come from the counters `/metrics` exports, nothing counted
//! twice: every second the sampler renders the Prometheus registry (the
//! same text a scrape gets) and keeps the difference from the previous
//! second in a ring of [`WINDOW`] samples:
//!
//! - requests/s: `tollgate_requests_total`, all labels;
//! - refused/s: `tollgate_rate_limited_total{dry_run="false"}`, every
//!   policy (dry-run refusals are shown apart);
//! - per backend: `tollgate_requests_total{backend=NAME}` (with
//!   `pool=POOL` when pools or routes are configured: names are unique
//!   within a pool only), and its error rate from the `status="5xx"`
//!   series;
//! - per route: its requests and 429s, from the counts the route keeps
//!   ([`crate::routing::route::RouteStats`], which the admin API's
//!   `/routes` shows too), read at the same moment as the registry;
//! - p50 and p99: from that second's increase of each bucket of
//!   `tollgate_request_duration_seconds` (time to response headers, every
//!   answer, 429s included), interpolated linearly inside the bucket the
//!   quantile falls in, as Prometheus's `histogram_quantile()` does. The
//!   true value lies in that bucket (bounds 0.1, 0.25, 0.5, 1, 2.5, 5,
//!   10, 25 ms...); past the last finite bound (30 s) it is shown as 30 s.
//!
//! The registry is the process's, so the totals are the process's: one
//! tollgate per process in production (tests run several). The backends
//! of every pool (state, in-flight) and the routes are those of the
//! routing in force when the document is served; a route or a pool a
//! reload added shows from then on.
//!
//! The "refused most" list is the one figure `/metrics` cannot give (no
//! per-client label, on purpose): the request path counts each 429 by
//! client in [`refusals::Refusals`], the sampler takes those counts every
//! second and keeps that second's [`TOP_PER_SECOND`] most refused; the
//! list is their sum over the window. It is exact for a client that was
//! among the most refused in each second it was refused, which the
//! clients worth listing are; any other is under-counted, never
//! over-counted.

pub mod refusals;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use utoipa::ToSchema;

use crate::balancer::State;
use crate::events::{unix_ms, Event, Events};
use crate::limiter::Registry;
use crate::routing::InForce;
use crate::shutdown::Ticks;
use crate::telemetry;
use refusals::Refusals;

/// Seconds of history kept (and shown as sparklines).
pub const WINDOW: usize = 60;
/// How often the sampler reads the counters.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Clients kept per second for the "refused most" list.
pub const TOP_PER_SECOND: usize = 64;
/// Clients listed as refused most.
pub const TOP: usize = 10;
/// Seconds a backend's error rate is taken over, so one odd answer does
/// not flash.
pub const ERROR_WINDOW: usize = 10;

/// What the sampler keeps and `GET /status` reads.
#[derive(Debug)]
pub struct Board {
    refusals: Arc<Refusals>,
    events: Arc<Events>,
    routing: Arc<dyn InForce>,
    registry: Arc<Registry>,
    ring: Mutex<Ring>,
}

/// The last [`WINDOW`] samples, and the totals the next one is taken from.
#[derive(Debug, Default)]
struct Ring {
    samples: VecDeque<Sample>,
    last: Option<Totals>,
    metrics: bool,
}

/// One second's increases.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    /// Length of the second, measured (a late tick is longer).
    secs: f64,
    requests: u64,
    refused: u64,
    dry_run_refused: u64,
    p50: Option<f64>,
    p99: Option<f64>,
    /// Answers by (pool, backend name): (all, 5xx).
    backends: HashMap<(String, String), (u64, u64)>,
    /// Requests by route name: (all, refused with 429).
    routes: HashMap<String, (u64, u64)>,
    /// The second's most refused clients, most first.
    top: Vec<(String, u64)>,
    /// Refusals not attributed to a client (bounded memory).
    unattributed: u64,
}

/// Counter values read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    requests: u64,
    refused: u64,
    dry_run_refused: u64,
    /// Cumulative bucket counts of the duration histogram: (upper bound
    /// in seconds, count); `+Inf` last.
    buckets: Vec<(f64, u64)>,
    backends: HashMap<(String, String), (u64, u64)>,
    /// Every route's counts (requests, refused).
    routes: HashMap<String, (u64, u64)>,
}

impl Board {
    /// A board over these parts: `routing` gives the routes and pools in
    /// force whenever asked, `events` is where the pools and the reloader
    /// record transitions, `refusals` the one the proxy counts into.
    pub fn new(
        routing: Arc<dyn InForce>,
        events: Arc<Events>,
        registry: Arc<Registry>,
        refusals: Arc<Refusals>,
    ) -> Self {
        Self {
            events,
            refusals,
            routing,
            registry,
            ring: Mutex::new(Ring::default()),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Plain data; a panic mid-update leaves a usable ring.
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one sample: the increase of every counter since the last
    /// call (the first call only sets the base), and the refusals counted
    /// since.
    fn sample(&self, totals: Option<Totals>, secs: f64) {
        let (counts, unattributed) = self.refusals.take();
        let mut top: Vec<(String, u64)> = counts
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        top.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_PER_SECOND);
        let routes = self.route_totals();
        let mut ring = self.ring();
        ring.metrics = totals.is_some();
        let mut now = totals.unwrap_or_default();
        now.routes = routes;
        let Some(last) = ring.last.replace(now.clone()) else {
            return;
        };
        let d = |now: u64, then: u64| now.saturating_sub(then);
        let buckets: Vec<(f64, u64)> = now
            .buckets
            .iter()
            .map(|&(le, n)| {
                let then = last
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0, |b| b.1);
                (le, d(n, then))
            })
            .collect();
        let backends = increase(&now.backends, &last.backends);
        let routes = increase(&now.routes, &last.routes);
        if ring.samples.len() == WINDOW {
            ring.samples.pop_front();
        }
        ring.samples.push_back(Sample {
            at_ms: unix_ms(SystemTime::now()),
            secs,
            requests: d(now.requests, last.requests),
            refused: d(now.refused, last.refused),
            dry_run_refused: d(now.dry_run_refused, last.dry_run_refused),
            p50: quantile(&buckets, 0.5),
            p99: quantile(&buckets, 0.99),
            backends,
            routes,
            top,
            unattributed,
        });
    }

    /// Every route's counts now, by name.
    fn route_totals(&self) -> HashMap<String, (u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.routing
            .current()
            .routes()
            .iter()
            .map(|r| {
                let counts = (
                    r.stats.requests.load(Relaxed),
                    r.stats.limited.load(Relaxed),
                );
                (r.name.to_string(), counts)
            })
            .collect()
    }

    /// The document `GET /status` serves.
    pub fn document(&self) -> StatusDocument {
        let ring = self.ring();
        let samples = &ring.samples;
        let latest = samples.back();
        let rate = |f: fn(&Sample) -> u64| latest.map_or(0.0, |s| per_sec(f(s), s));
        let now = Rates {
            requests_per_sec: rate(|s| s.requests),
            refused_per_sec: rate(|s| s.refused),
            dry_run_refused_per_sec: rate(|s| s.dry_run_refused),
            p50_ms: latest.and_then(|s| s.p50).map(ms),
            p99_ms: latest.and_then(|s| s.p99).map(ms),
        };
        let series = Series {
            at_ms: samples.iter().map(|s| s.at_ms).collect(),
            requests_per_sec: samples.iter().map(|s| per_sec(s.requests, s)).collect(),
            refused_per_sec: samples.iter().map(|s| per_sec(s.refused, s)).collect(),
            p50_ms: samples.iter().map(|s| s.p50.map(ms)).collect(),
            p99_ms: samples.iter().map(|s| s.p99.map(ms)).collect(),
        };
        let routing = self.routing.current();
        let backends = backend_statuses(&routing, samples);
        let queues = queue_statuses(&routing);
        let routes = route_statuses(&routing, samples);
        let mut refused: HashMap<&str, u64> = HashMap::new();
        for s in samples {
            for (client, n) in &s.top {
                *refused.entry(client).or_default() += n;
            }
        }
        let mut top_refused: Vec<RefusedClient> = refused
            .into_iter()
            .map(|(client, refused)| RefusedClient {
                client: client.to_owned(),
                refused,
            })
            .collect();
        top_refused.sort_unstable_by(|a, b| {
            b.refused
                .cmp(&a.refused)
                .then_with(|| a.client.cmp(&b.client))
        });
        top_refused.truncate(TOP);
        StatusDocument {
            generated_at_ms: unix_ms(SystemTime::now()),
            interval_ms: u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX),
            metrics: ring.metrics,
            now,
            series,
            backends,
            queues,
            routes,
            top_refused,
            unattributed_refusals: samples.iter().map(|s| s.unattributed).sum(),
            clients_tracked: self.registry.len(),
            clients_pinned: self.registry.pinned_len(),
            events: self.events.newest_first(),
        }
    }
}

fn ms(secs: f64) -> f64 {
    secs * 1000.0
}

/// `n` over the length of the second `s` was.
fn per_sec(n: u64, s: &Sample) -> f64 {
    if s.secs > 0.0 {
        n as f64 / s.secs
    } else {
        0.0
    }
}

/// The increase of each count of `now` since `last` (a count `last` did
/// not have increased from 0).
fn increase<K: Clone + Eq + std::hash::Hash>(
    now: &HashMap<K, (u64, u64)>,
    last: &HashMap<K, (u64, u64)>,
) -> HashMap<K, (u64, u64)> {
    now.iter()
        .map(|(k, &(x, y))| {
            let (a, b) = last.get(k).copied().unwrap_or((0, 0));
            (k.clone(), (x.saturating_sub(a), y.saturating_sub(b)))
        })
        .collect()
}

/// Every backend of every pool in `routing` (the default pool first, then
/// the others by name) with its load over `samples`.
fn backend_statuses(
    routing: &crate::routing::Routing,
    samples: &VecDeque<Sample>,
) -> Vec<BackendStatus> {
    let latest = samples.back();
    let mut out = Vec::new();
    for p in routing.pools_in_order() {
        for b in p.pool.backends().iter() {
            let key = (p.name.to_string(), b.name().to_string());
            let of = |s: &Sample| s.backends.get(&key).copied().unwrap_or((0, 0));
            let recent = samples.iter().rev().take(ERROR_WINDOW).map(of);
            let (all, errors) = recent.fold((0, 0), |(a, e), (x, y)| (a + x, e + y));
            out.push(BackendStatus {
                url: b.url().to_string(),
                weight: b.weight(),
                state: b.state(),
                healthy: b.is_healthy(),
                in_flight: b.in_flight(),
                requests_per_sec: latest.map_or(0.0, |s| per_sec(of(s).0, s)),
                error_rate: (all > 0).then(|| errors as f64 / all as f64),
                requests_per_sec_series: samples.iter().map(|s| per_sec(of(s).0, s)).collect(),
                name: key.1,
                pool: key.0,
            });
        }
    }
    out
}

/// The queue of every pool of `routing` with `max_connections`.
fn queue_statuses(routing: &crate::routing::Routing) -> Vec<QueueStatus> {
    routing
        .pools_in_order()
        .filter_map(|p| {
            let q = p.pool.queue_stats();
            (q.max_connections > 0).then(|| QueueStatus {
                pool: p.name.to_string(),
                max_connections: q.max_connections,
                depth: q.depth,
                served: q.served,
                refused: q.refused,
                mean_wait_ms: ms(q.mean_wait_secs),
                max_wait_ms: ms(q.max_wait_secs),
            })
        })
        .collect()
}

/// Every route of `routing`, in order, with its rates over `samples`.
fn route_statuses(
    routing: &crate::routing::Routing,
    samples: &VecDeque<Sample>,
) -> Vec<RouteStatus> {
    let latest = samples.back();
    routing
        .routes()
        .iter()
        .map(|r| {
            let name = r.name.to_string();
            let of = |s: &Sample| s.routes.get(&name).copied().unwrap_or((0, 0));
            RouteStatus {
                pool: r.pool.name.to_string(),
                requests_per_sec: latest.map_or(0.0, |s| per_sec(of(s).0, s)),
                refused_per_sec: latest.map_or(0.0, |s| per_sec(of(s).1, s)),
                requests_per_sec_series: samples.iter().map(|s| per_sec(of(s).0, s)).collect(),
                refused_per_sec_series: samples.iter().map(|s| per_sec(of(s).1, s)).collect(),
                name,
            }
        })
        .collect()
}

/// The `q` quantile of a histogram given as cumulative (upper bound,
/// count) buckets, `+Inf` last: linear inside the bucket it falls in, as
/// Prometheus's `histogram_quantile()`; `None` without observations.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = (0.0, 0u64);
    for &(le, n) in buckets {
        if n as f64 >= rank {
            if le.is_infinite() {
                return Some(below.0);
            }
            let inside = (n - below.1) as f64;
            let share = if inside > 0.0 {
                (rank - below.1 as f64) / inside
            } else {
                1.0
            };
            return Some(below.0 + (le - below.0) * share);
        }
        below = (le, n);
    }
    Some(below.0)
}

/// Samples `board` every [`INTERVAL`] from the counters in `metrics`
/// (`None`: none, as for an embedding program that has no metrics; then
/// only the backends, refusals and events are shown) until `stop`
/// completes.
pub async fn run(
    board: Arc<Board>,
    metrics: Option<telemetry::Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let read = |m: &telemetry::Metrics| parse(&m.render_text());
    board.sample(metrics.as_ref().map(read), 0.0);
    let mut last = Instant::now();
    let mut ticks = Ticks::every(INTERVAL, MissedTickBehavior::Delay, stop);
    while ticks.next().await {
        let totals = metrics.as_ref().map(read);
        let now = Instant::now();
        board.sample(totals, now.duration_since(last).as_secs_f64());
        last = now;
    }
}

/// The counters the board needs, from Prometheus text.
fn parse(text: &str) -> Totals {
    let requests = telemetry::REQUESTS;
    let limited = telemetry::RATE_LIMITED;
    let bucket = format!("{}_bucket", telemetry::REQUEST_DURATION);
    let mut t = Totals::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels, value)) = split_sample(line) else {
            continue;
        };
        // Counters are whole numbers, written as such.
        let n = value as u64;
        if name == requests {
            t.requests += n;
            if let Some(backend) = label(&labels, "backend").filter(|b| *b != "none") {
                // No `pool` label: pools and routes are not configured,
                // and every backend is the default pool's.
                let pool = label(&labels, "pool").unwrap_or(crate::routing::DEFAULT_POOL);
                let key = (pool.to_owned(), backend.to_owned());
                let e = t.backends.entry(key).or_default();
                e.0 += n;
                if label(&labels, "status") == Some("5xx") {
                    e.1 += n;
                }
            }
        } else if name == limited {
            match label(&labels, "dry_run") {
                Some("true") => t.dry_run_refused += n,
                _ => t.refused += n,
            }
        } else if name == bucket {
            let le = match label(&labels, "le") {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                None => continue,
            };
            t.buckets.push((le, n));
        }
    }
    t.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    t
}

/// A sample's labels: (name, value), in order.
type Labels = Vec<(String, String)>;

fn label<'a>(labels: &'a [(String, String)], name: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `name{k="v",...} value` (or `name value`) as its parts; label values
/// unescaped (`\\`, `\"`, `\n`).
fn split_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some((name, Vec::new(), value.trim().parse().ok()?));
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.char_indices();
    let end = loop {
        let mut key = String::new();
        let start = loop {
            match chars.next()? {
                (i, '}') if key.is_empty() => break Some(i),
                (_, '=') => break None,
                (_, ',') if key.is_empty() => {}
                (_, c) => key.push(c),
            }
        };
        if let Some(i) = start {
            break i;
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                c => value.push(c),
            }
        }
        labels.push((key, value));
    };
    let value = rest[end + 1..].trim().parse().ok()?;
    Some((name, labels, value))
}

/// The document of `GET /status`: everything the status page shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusDocument {
    /// When this document was made, milliseconds since the Unix epoch.
    #[schema(format = Int64, minimum = 0)]
    pub generated_at_ms: u64,
    /// The sampling period, milliseconds (one sample per second).
    #[schema(format = Int64, minimum = 0)]
    pub interval_ms: u64,
    /// Whether the rates are known: false when another metrics recorder
    /// was installed before tollgate's (then every rate is 0).
    pub metrics: bool,
    /// The last complete second.
    pub now: Rates,
    /// The last 60 seconds, oldest first (one entry per second).
    pub series: Series,
    /// Every backend, pool by pool (the default pool first, then the
    /// others by name), each pool's in configuration order.
    pub backends: Vec<BackendStatus>,
    /// The queue of each pool with `max_connections`, in the order of
    /// `backends`' pools.
    pub queues: Vec<QueueStatus>,
    /// Every route, in the order they are tried; empty without `routes`.
    pub routes: Vec<RouteStatus>,
    /// The clients refused most (429) in the last 60 seconds, most first;
    /// at most 10.
    pub top_refused: Vec<RefusedClient>,
    /// Refusals in the last 60 seconds not attributed to a client: more
    /// distinct clients were refused in one second than are tracked.
    #[schema(format = Int64, minimum = 0)]
    pub unattributed_refusals: u64,
    /// Clients with a token bucket.
    pub clients_tracked: usize,
    /// Clients in the client table.
    pub clients_pinned: usize,
    /// Health transitions, ejections, drains and reloads, newest first
    /// (the last 50).
    pub events: Vec<Event>,
}

/// Rates over one second.
#[derive(Debug, Serialize, ToSchema)]
pub struct Rates {
    /// Requests answered per second (every status, 429s included).
    pub requests_per_sec: f64,
    /// Requests refused with 429 by the limiter per second.
    pub refused_per_sec: f64,
    /// Refusals a dry run counted but did not enforce, per second.
    pub dry_run_refused_per_sec: f64,
    /// Median time to response headers, milliseconds, estimated from the
    /// histogram buckets; null when no request was answered.
    #[schema(required = true)]
    pub p50_ms: Option<f64>,
    /// 99th percentile, likewise.
    #[schema(required = true)]
    pub p99_ms: Option<f64>,
}

/// The last seconds, one entry per second, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    /// When each second ended, milliseconds since the Unix epoch.
    pub at_ms: Vec<u64>,
    /// Requests answered per second.
    pub requests_per_sec: Vec<f64>,
    /// Requests refused with 429 per second.
    pub refused_per_sec: Vec<f64>,
    /// Median latency, milliseconds (null: no request that second).
    pub p50_ms: Vec<Option<f64>>,
    /// 99th percentile latency, milliseconds (null: no request).
    pub p99_ms: Vec<Option<f64>>,
}

/// One backend: its state now and its load.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackendStatus {
    /// `backends[].name` (unique within its pool).
    pub name: String,
    /// Its pool (`default`: the top-level `backends`).
    pub pool: String,
    /// Its URL.
    pub url: String,
    /// Its weight.
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: u32,
    /// Whether it gets new requests (as in `GET /backends`).
    pub state: State,
    /// Its active health checks pass.
    pub healthy: bool,
    /// Requests being forwarded to it now.
    pub in_flight: usize,
    /// Answers it gave in the last complete second.
    pub requests_per_sec: f64,
    /// Share of its answers that were 5xx over the last 10 seconds, 0 to
    /// 1; null when it answered nothing.
    #[schema(required = true)]
    pub error_rate: Option<f64>,
    /// Its answers per second over the last 60 seconds, oldest first.
    pub requests_per_sec_series: Vec<f64>,
}

/// A pool's wait for a free backend slot (`max_connections`, `queue`).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStatus {
    /// The pool.
    pub pool: String,
    /// Requests in flight per backend at most.
    pub max_connections: usize,
    /// Requests waiting now.
    pub depth: usize,
    /// Requests that waited and got a slot, since start.
    #[schema(format = Int64, minimum = 0)]
    pub served: u64,
    /// Requests refused with 503 (queue full or queue timeout), since start.
    #[schema(format = Int64, minimum = 0)]
    pub refused: u64,
    /// Mean wait of those that got a slot, milliseconds.
    pub mean_wait_ms: f64,
    /// Longest wait of one that got a slot, milliseconds.
    pub max_wait_ms: f64,
}

/// One route: its requests and refusals.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteStatus {
    /// `routes[].name`.
    pub name: String,
    /// The pool it sends to.
    pub pool: String,
    /// Requests that took it in the last complete second.
    pub requests_per_sec: f64,
    /// Of those, refused with 429 (enforced, not dry-run).
    pub refused_per_sec: f64,
    /// Its requests per second over the last 60 seconds, oldest first.
    pub requests_per_sec_series: Vec<f64>,
    /// Its refusals per second over the last 60 seconds, oldest first.
    pub refused_per_sec_series: Vec<f64>,
}

/// A client and how often it was refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct RefusedClient {
    /// Its API key (a client in the table) or address.
    pub client: String,
    /// Requests refused with 429 in the last 60 seconds.
    #[schema(format = Int64, minimum = 0)]
    pub refused: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exporter_text() {
        let text = "# TYPE tollgate_requests_total counter\n\
            tollgate_requests_total{status=\"2xx\",backend=\"b0\"} 7\n\
            tollgate_requests_total{status=\"5xx\",backend=\"b0\"} 3\n\
            tollgate_requests_total{status=\"4xx\",backend=\"none\"} 5\n\
            tollgate_rate_limited_total{policy=\"client\",dry_run=\"false\"} 4\n\
            tollgate_rate_limited_total{policy=\"search\",dry_run=\"true\"} 2\n\
            tollgate_request_duration_seconds_bucket{le=\"0.001\"} 10\n\
            tollgate_request_duration_seconds_bucket{le=\"+Inf\"} 15\n\
            tollgate_request_duration_seconds_sum 0.5\n\
            tollgate_other{name=\"a\\\"b\"} 1\n";
        let t = parse(text);
        assert_eq!(t.requests, 15);
        assert_eq!(t.refused, 4);
        assert_eq!(t.dry_run_refused, 2);
        assert_eq!(
            t.backends.get(&("default".into(), "b0".into())),
            Some(&(10, 3))
        );
        // With pools, a name is a pool's: two pools' b0 are two backends.
        let text =
            "tollgate_requests_total{status=\"2xx\",backend=\"b0\",pool=\"api\",route=\"r\"} 4\n\
            tollgate_requests_total{status=\"2xx\",backend=\"b0\",pool=\"web\",route=\"\"} 2\n";
        let routed = parse(text);
        assert_eq!(
            routed.backends.get(&("api".into(), "b0".into())),
            Some(&(4, 0))
        );
        assert_eq!(
            routed.backends.get(&("web".into(), "b0".into())),
            Some(&(2, 0))
        );
        assert_eq!(t.buckets, vec![(0.001, 10), (f64::INFINITY, 15)]);
        let (_, labels, v) = split_sample("x{name=\"a\\\"b\",c=\"d\"} 2").expect("sample");
        assert_eq!(labels[0].1, "a\"b");
        assert_eq!(labels[1], ("c".into(), "d".into()));
        assert_eq!(v, 2.0);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        // 100 observations: 50 up to 1 ms, 49 in (1, 2] ms, 1 in (2, 4] ms.
        let b = [(0.001, 50), (0.002, 99), (0.004, 100), (f64::INFINITY, 100)];
        assert_eq!(quantile(&b, 0.5), Some(0.001));
        let p99 = quantile(&b, 0.99).expect("p99");
        assert!((p99 - 0.002).abs() < 1e-12, "{p99}");
        assert_eq!(quantile(&[(0.001, 0), (f64::INFINITY, 0)], 0.5), None);
        // Past the last finite bound: that bound.
        assert_eq!(
            quantile(&[(0.001, 0), (f64::INFINITY, 3)], 0.5),
            Some(0.001)
        );
    }
}
