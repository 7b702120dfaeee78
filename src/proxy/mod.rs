//! The request path: check → identify → limit → balance → forward.
//!
//! [`Proxy::handle`] turns one client request into one response. A request
//! that breaks the strict HTTP rules ([`strict`]) is refused before it is
//! charged. Bodies stream both ways (nothing is buffered whole), hop-by-hop
//! headers are dropped in both directions, `X-Forwarded-*` are set, and
//! every answer past the limiter, forwarded or refused, carries the
//! client's rate-limit headers. Every request carries a W3C trace
//! context to its backend, and with span export on is a server span with
//! a client span per attempt ([`crate::trace`]). An HTTP/1.1 request asking to upgrade
//! (WebSocket) keeps its `Connection: upgrade` and `Upgrade`, and a 101 for
//! it opens a tunnel ([`tunnel`]).

mod admission;
mod affinity;
mod client_body;
mod forward;
mod h2_stall;
pub mod headers;
pub mod http3;
pub mod identity;
#[cfg(test)]
mod idle_tests;
mod labels;
mod park;
mod parser_refusal;
pub mod path;
pub mod proxy_protocol;
pub mod request_id;
pub mod server;
mod strict;
mod timeout;
mod transport;
pub mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{header, HeaderValue, Request, Response};

use crate::access_log::{AccessLog, Client, Place, Record};
use crate::balancer::{Backend, Pool};
use crate::error::ProxyError;
use crate::limiter::rules::RuleSet;
use crate::limiter::shared::{OnFailure, SharedLimiter};
use crate::limiter::Registry;
use crate::routing::pools::PoolUse;
use crate::routing::{Miss, Routing, Target};
use crate::status::refusals::Refusals;
use crate::telemetry::Metrics;
use crate::trace::{RequestTrace, Tracing};
use admission::Admission;
use identity::Identifier;
use labels::LabelledCounters;
use timeout::Direction;
use upstream::Upstreams;

pub use crate::body::{Body, BoxError};
pub use client_body::{ClientBody, SyncBody};

/// What the request path knows of the connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The client's address (the TCP peer, or the client a PROXY header
    /// named).
    pub peer: SocketAddr,
    /// Whether the connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// Whether `peer` may name other clients in `X-Forwarded-For` (when
    /// it is a trusted proxy). `false` on a PROXY protocol connection
    /// whose header named no client (v2 `LOCAL`, v1 `UNKNOWN`): `peer` is
    /// then the balancer in front itself, and what its request says in
    /// `X-Forwarded-For` is a client's claim it did not vouch for.
    pub forwarded_for: bool,
}

/// Proxy settings taken from the config.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Time to open a connection to a backend.
    pub connect_timeout: Duration,
    /// Time for a backend to send response headers.
    pub request_timeout: Duration,
    /// Longest pause in a response body from a backend.
    pub backend_body_timeout: Duration,
    /// Longest pause in a request body from a client.
    pub client_body_timeout: Duration,
    /// Forward header names containing `_` (otherwise they are dropped).
    pub allow_underscores_in_headers: bool,
    /// Longest an upgraded (WebSocket) tunnel stays open without a byte
    /// either way.
    pub upgrade_idle_timeout: Duration,
    /// `%2F` and `%5C` in a request path: refused, or kept as text.
    pub escaped_slashes: path::EscapedSlashes,
}

/// What a config reload can change on the request path, swapped whole:
/// a request reads it once, so it runs on one version from start to end,
/// and nothing on the request path waits on a lock for it.
#[derive(Debug)]
pub struct Live {
    identifier: Identifier,
    strict: strict::Rules,
    settings: ProxySettings,
    /// `rate_limit.enabled`.
    limiting: bool,
    /// `rate_limit.dry_run`: decide and count, never refuse.
    dry_run: bool,
    /// The routes and pools.
    routing: Arc<Routing>,
}

impl Live {
    /// Settings for requests from now on; `limiting`: whether requests
    /// are rate limited (`rate_limit.enabled`); `routing`: where they go.
    pub fn new(
        identifier: Identifier,
        settings: ProxySettings,
        limiting: bool,
        routing: Arc<Routing>,
    ) -> Self {
        Self {
            strict: strict::Rules {
                api_key_header: identifier.api_key_header().clone(),
                allow_underscores: settings.allow_underscores_in_headers,
            },
            identifier,
            settings,
            limiting,
            dry_run: false,
            routing,
        }
    }

    /// The routes and pools.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    /// The same settings, with `rate_limit.dry_run` as given.
    pub fn with_dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// Limits shared with other replicas, and what to do without them.
#[derive(Debug, Clone)]
pub struct SharedLimits {
    /// The Redis side.
    pub limiter: Arc<SharedLimiter>,
    /// What a request gets while Redis cannot answer.
    pub on_failure: OnFailure,
}

/// What the access log and the server span want to know of an answer
/// besides its status.
#[derive(Debug, Default)]
struct Outcome {
    /// What became of the request, for its span: `allowed` (admitted),
    /// `limited` (429) or `rejected` (refused otherwise).
    decision: &'static str,
    /// What admission learned: the client, what refused, the policies.
    admission: admission::Report,
    /// The backend that answered.
    backend: Option<Arc<Backend>>,
    /// The route and pool, when pools or routes are configured (`None`
    /// inside: the request reached none).
    place: Option<Box<Place>>,
}

/// Shared state of the request path.
#[derive(Debug)]
pub struct Proxy {
    /// The buckets a request is charged to.
    admission: Admission,
    /// Shared by every thread's copy, so one reload reaches them all.
    live: Arc<ArcSwap<Live>>,
    upstreams: Upstreams,
    /// How `https://` backends are verified; each thread's pool gets it.
    backend_tls: Arc<rustls::ClientConfig>,
    /// Where answered requests are logged (`log.access`).
    access_log: Option<AccessLog>,
    /// 429s by client, for the status page's "refused most" list.
    refusals: Arc<Refusals>,
    /// Where answers, refusals and timeouts are counted.
    metrics: Metrics,
    /// `idle_timeouts{direction="client_body"}`, at hand for every body.
    client_body_idle: metrics::Counter,
    /// This thread's request counters by route and pool.
    labelled: LabelledCounters,
    /// Trace context for backends, spans when exported.
    tracing: Tracing,
}

impl crate::routing::InForce for Proxy {
    fn current(&self) -> Arc<Routing> {
        self.routing()
    }
}

impl Proxy {
    /// A proxy sending requests where `routing` says, limiting with
    /// `limiter` (`None`: no limits, and a reload cannot turn them on),
    /// verifying `https://` backends with `backend_tls`
    /// (`tls::client::backend_client_config`).
    pub fn new(
        limiter: Option<Arc<Registry>>,
        routing: Arc<Routing>,
        identifier: Identifier,
        settings: ProxySettings,
        backend_tls: Arc<rustls::ClientConfig>,
        metrics: Metrics,
    ) -> Self {
        let live = Arc::new(ArcSwap::from_pointee(Live::new(
            identifier,
            settings,
            limiter.is_some(),
            routing,
        )));
        Self {
            upstreams: Upstreams::new(backend_tls.clone(), metrics.clone()),
            labelled: LabelledCounters::default(),
            backend_tls,
            admission: Admission::new(limiter, metrics.clone()),
            client_body_idle: metrics.idle_timeouts(Direction::ClientBody.label()),
            metrics,
            live,
            access_log: None,
            refusals: Arc::new(Refusals::new()),
            tracing: Tracing::context_only(),
        }
    }

    /// Switches every thread's copy to `live` (config reload): requests
    /// that start from now on use it, running ones finish on theirs.
    pub fn reconfigure(&self, live: Live) -> Arc<Live> {
        self.live.swap(Arc::new(live))
    }

    /// The same proxy with its own backend connection pool, for another
    /// proxy thread (the pool's connections live on the thread that made
    /// them).
    pub fn for_another_thread(&self) -> Self {
        Self {
            upstreams: Upstreams::new(self.backend_tls.clone(), self.metrics.clone()),
            labelled: LabelledCounters::default(),
            metrics: self.metrics.clone(),
            client_body_idle: self.client_body_idle.clone(),
            backend_tls: self.backend_tls.clone(),
            admission: self.admission.clone(),
            live: self.live.clone(),
            access_log: self.access_log.clone(),
            refusals: self.refusals.clone(),
            tracing: self.tracing.clone(),
        }
    }

    /// The same proxy, recording spans as `tracing` says.
    pub fn with_tracing(mut self, tracing: Tracing) -> Self {
        self.tracing = tracing;
        self
    }

    /// How requests are traced.
    pub fn tracing(&self) -> &Tracing {
        &self.tracing
    }

    /// Where answered requests are logged, if anywhere (`log.access`).
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The same proxy, logging every answered request to `log`.
    pub fn with_access_log(mut self, log: AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// The same proxy, checking every request against limits shared with
    /// other replicas as well.
    pub fn with_shared_limits(mut self, shared: SharedLimits) -> Self {
        self.admission.set_shared(shared);
        self
    }

    /// The limits shared with other replicas, if any.
    pub fn shared_limits(&self) -> Option<&SharedLimits> {
        self.admission.shared()
    }

    /// The same proxy, charging requests to `rules` as well.
    pub fn with_rules(mut self, rules: Arc<RuleSet>) -> Self {
        self.admission.set_rules(rules);
        self
    }

    /// The rules in force, if the proxy has a rule set.
    pub fn rules(&self) -> Option<&Arc<RuleSet>> {
        self.admission.rules()
    }

    /// Puts new rules in force (config reload); rules that keep their
    /// name keep their buckets.
    pub fn replace_rules(&self, specs: &[crate::limiter::rules::RuleSpec]) {
        if let Some(rules) = self.admission.rules() {
            rules.replace(specs);
        }
    }

    /// The default pool (the top-level backends).
    pub fn pool(&self) -> Arc<Pool> {
        self.pool_named(crate::routing::DEFAULT_POOL)
            .unwrap_or_else(|| PoolUse::detached(crate::routing::DEFAULT_POOL).pool)
    }

    /// The pool named `name` in the routing in force.
    pub fn pool_named(&self, name: &str) -> Option<Arc<Pool>> {
        self.live
            .load()
            .routing
            .pools()
            .get(name)
            .map(|p| p.pool.clone())
    }

    /// The routes and pools in force.
    pub fn routing(&self) -> Arc<Routing> {
        self.live.load().routing.clone()
    }

    /// Where refusals are counted by client (every thread's copy counts
    /// into the same one).
    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// Answers one client request. Every answer carries the request's
    /// `X-Request-Id` and, with the access log on, leads to one line.
    pub async fn handle(&self, mut req: Request<ClientBody>, conn: Conn) -> Response<Body> {
        let started = std::time::Instant::now();
        let request_id = request_id::settle(req.headers_mut());
        let trusted = self.live.load().identifier.is_trusted(conn.peer.ip());
        let method = req.method().clone();
        let trace = self.tracing.start(req.headers_mut(), trusted, &method);
        // What the log line needs of the request, taken before `answer`
        // consumes it.
        let seen = self.access_log.as_ref().map(|_| {
            (
                std::time::SystemTime::now(),
                req.method().clone(),
                req.uri().path_and_query().cloned(),
                self.live
                    .load()
                    .identifier
                    .client_ip_of(req.headers(), conn),
            )
        });
        // A gRPC client reads refusals from `grpc-status`, not from JSON.
        let grpc = crate::grpc::is_grpc(req.headers());
        let mut outcome = Outcome::default();
        let mut response = self
            .answer(req, conn, started, &request_id, &mut outcome, &trace)
            .await;
        // The status the answer stands for (a gRPC refusal's 429 or 503).
        trace.finish(crate::trace::span::Finished {
            status: response.status(),
            client: outcome.admission.client.as_ref(),
            decision: outcome.decision,
        });
        let (Some(log), Some((ts, method, uri, ip))) = (&self.access_log, seen) else {
            if grpc {
                response = crate::error::grpc_refusal(response);
            }
            response
                .headers_mut()
                .insert(request_id::X_REQUEST_ID.clone(), request_id);
            return response;
        };
        response
            .headers_mut()
            .insert(request_id::X_REQUEST_ID.clone(), request_id.clone());
        // Logged (and counted) by the status the refusal stands for: a
        // refused gRPC call shows as the 429 or 503 it is, not as 200.
        let status = response.status().as_u16();
        if grpc {
            response = crate::error::grpc_refusal(response);
        }
        let record = Record {
            ts,
            client: outcome.admission.client.map_or(Client::Ip(ip), Client::Key),
            method: Some(method),
            uri,
            status,
            backend: outcome.backend,
            duration: Duration::ZERO,
            bytes_sent: 0,
            limited: outcome.admission.limited,
            request_id,
            place: outcome.place,
        };
        log.wrap(response, record, started)
    }

    /// The answer to one request, and in `outcome` what the access log
    /// wants to know of it: the strict checks, the one path, the route,
    /// admission, forwarding, each answer counted.
    async fn answer(
        &self,
        mut req: Request<ClientBody>,
        conn: Conn,
        started: std::time::Instant,
        request_id: &HeaderValue,
        outcome: &mut Outcome,
        trace: &RequestTrace<'_>,
    ) -> Response<Body> {
        outcome.decision = "rejected";
        let live = self.live.load_full();
        if live.routing.labelled() {
            outcome.place = Some(Box::default());
        }
        let refuse = |e: ProxyError, target: Option<Target<'_>>| {
            let response = e.into_response();
            self.count(&live.routing, target, None, (response.status(), started));
            response
        };
        let host = match strict::check(&mut req, &live.strict) {
            Ok(host) => host,
            Err(e) => return refuse(e, None),
        };
        // One path from here on: what rules match is what the backend gets.
        if let Err(e) = path::settle(req.uri_mut(), live.settings.escaped_slashes) {
            return refuse(ProxyError::BadRequest(e.to_string().into()), None);
        }
        let target = match route(&live.routing, &req) {
            Ok(target) => target,
            Err(e) => return refuse(e, None),
        };
        note_target(&live.routing, target, outcome, trace);
        let report = &mut outcome.admission;
        let decision = match self
            .admission
            .admit(&req, conn, (&live, target), report)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                if matches!(e, ProxyError::RateLimited(_)) {
                    outcome.decision = "limited";
                }
                let mut response = self.refused(e, target, report);
                self.count(
                    &live.routing,
                    Some(target),
                    None,
                    (response.status(), started),
                );
                edit_response(target, &mut response);
                return response;
            }
        };
        outcome.decision = "allowed";
        // Boxed: forwarding is most of this future's size, and each
        // enclosing future (this one, `handle`, the connection's service)
        // would otherwise copy it when it is moved into place.
        let forwarding =
            Box::pin(self.forward(req, conn, host, (&live, target), (request_id, trace)));
        let (mut response, backend) = match forwarding.await {
            Ok((r, backend)) => (r, Some(backend)),
            Err(e) => (e.into_response(), None),
        };
        match (&outcome.admission.policies, &decision) {
            (Some(p), _) => headers::rate_limit_policies(response.headers_mut(), p),
            (None, Some(d)) => headers::rate_limit(response.headers_mut(), d),
            (None, None) => {}
        }
        edit_response(target, &mut response);
        self.count(
            &live.routing,
            Some(target),
            backend.as_ref(),
            (response.status(), started),
        );
        outcome.backend = backend;
        response
    }

    /// The answer to a request admission refused: a 429 says which bucket
    /// refused and when to come back, and is counted for the status page.
    fn refused(
        &self,
        e: ProxyError,
        target: Target<'_>,
        report: &admission::Report,
    ) -> Response<Body> {
        let verdict = match &e {
            ProxyError::RateLimited(v) => Some(*v),
            _ => None,
        };
        let mut response = e.into_response();
        if let Some(v) = &verdict {
            headers::rate_limited(response.headers_mut(), v);
        }
        // Enforced 429s only: the status page's "refused most".
        if let (Some(_), Some(client)) = (&report.limited, &report.client) {
            self.refusals.count(client);
            if let Some(r) = target.route {
                r.stats.limited();
            }
        }
        if let Some(p) = &report.policies {
            headers::rate_limit_policies(response.headers_mut(), p);
        }
        response
    }

    /// Counts one answer: by backend and status, and by route and pool
    /// when pools or routes are configured.
    fn count(
        &self,
        routing: &Arc<Routing>,
        target: Option<Target<'_>>,
        backend: Option<&Arc<Backend>>,
        (status, started): (http::StatusCode, std::time::Instant),
    ) {
        let (status, took) = (status.as_u16(), started.elapsed());
        if routing.labelled() {
            let counters = self.labelled.get(&self.metrics, routing, target, backend);
            return self.metrics.request(status, Some(&counters), took);
        }
        match backend {
            Some(b) => b.with_request_counters(&self.metrics, |c| {
                self.metrics.request(status, Some(c), took)
            }),
            None => self.metrics.request(status, None, took),
        }
    }
}

/// Where `req` goes: the route it takes and its pool.
fn route<'a>(routing: &'a Routing, req: &Request<ClientBody>) -> Result<Target<'a>, ProxyError> {
    let host = req.headers().get(header::HOST).map(HeaderValue::as_bytes);
    routing
        .target(host, req.method(), req.uri().path(), req.headers())
        .map_err(|miss| match miss {
            Miss::NoRoute => ProxyError::NoRoute,
            Miss::DoubledHeader => {
                ProxyError::BadRequest("More than one value of a header routes match on".into())
            }
        })
}

/// Notes where the request goes: in `outcome` for the access log (with
/// pools or routes), in the route's count, on the request's span.
fn note_target(
    routing: &Routing,
    target: Target<'_>,
    outcome: &mut Outcome,
    trace: &RequestTrace<'_>,
) {
    if routing.labelled() {
        outcome.place = Some(Box::new(Place {
            route: target.route.map(|r| r.name.clone()),
            pool: Some(target.pool.name.clone()),
        }));
    }
    if let Some(r) = target.route {
        r.stats.request();
    }
    trace.place(target.route.map(|r| &*r.name), &target.pool.name);
}

/// The route's response header edits, on every answer to its requests.
fn edit_response(target: Target<'_>, response: &mut Response<Body>) {
    if let Some(r) = target.route {
        r.response_headers.apply(response.headers_mut());
    }
}
