//! The request path: check → identify → limit → balance → forward.
//!
//! [`Proxy::handle`] turns one client request into one response. A request
//! that breaks the strict HTTP rules ([`strict`]) is refused before it is
//! charged. Bodies stream both ways (nothing is buffered whole), hop-by-hop
//! headers are dropped in both directions, `X-Forwarded-*` are set, and
//! every answer past the limiter, forwarded or refused, carries the
//! client's rate-limit headers. An HTTP/1.1 request asking to upgrade
//! (WebSocket) keeps its `Connection: upgrade` and `Upgrade`, and a 101 for
//! it opens a tunnel ([`tunnel`]).

mod admission;
mod h2_stall;
pub mod headers;
pub mod identity;
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
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::access_log::{AccessLog, Client, Record};
use crate::balancer::{Backend, Pool};
use crate::error::ProxyError;
use crate::limiter::rules::RuleSet;
use crate::limiter::shared::{OnFailure, SharedLimiter};
use crate::limiter::Registry;
use crate::status::refusals::Refusals;
use crate::telemetry::Metrics;
use admission::Admission;
use identity::Identifier;
use timeout::{idle_body, Direction, IdleTimeout};
use upstream::{Answer, SendError, Upstreams};

pub use crate::body::{Body, BoxError};

/// What the request path knows of the connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// The client's address (the TCP peer).
    pub peer: SocketAddr,
    /// Whether the connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
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
}

impl Live {
    /// Settings for requests from now on; `limiting`: whether requests
    /// are rate limited (`rate_limit.enabled`).
    pub fn new(identifier: Identifier, settings: ProxySettings, limiting: bool) -> Self {
        Self {
            strict: strict::Rules {
                api_key_header: identifier.api_key_header().clone(),
                allow_underscores: settings.allow_underscores_in_headers,
            },
            identifier,
            settings,
            limiting,
            dry_run: false,
        }
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

/// What the access log wants to know of an answer besides its status.
#[derive(Debug, Default)]
struct Outcome {
    /// What admission learned: the client, what refused, the policies.
    admission: admission::Report,
    /// The backend that answered.
    backend: Option<Arc<Backend>>,
}

/// Shared state of the request path.
#[derive(Debug)]
pub struct Proxy {
    /// The buckets a request is charged to.
    admission: Admission,
    pool: Arc<Pool>,
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
}

impl Proxy {
    /// A proxy over `pool`, limiting with `limiter` (`None`: no limits,
    /// and a reload cannot turn them on), verifying `https://` backends
    /// with `backend_tls` (`tls::client::backend_client_config`).
    pub fn new(
        limiter: Option<Arc<Registry>>,
        pool: Arc<Pool>,
        identifier: Identifier,
        settings: ProxySettings,
        backend_tls: Arc<rustls::ClientConfig>,
        metrics: Metrics,
    ) -> Self {
        let live = Arc::new(ArcSwap::from_pointee(Live::new(
            identifier,
            settings,
            limiter.is_some(),
        )));
        Self {
            upstreams: Upstreams::new(live.clone(), backend_tls.clone(), metrics.clone()),
            backend_tls,
            admission: Admission::new(limiter, metrics.clone()),
            client_body_idle: metrics.idle_timeouts(Direction::ClientBody.label()),
            metrics,
            pool,
            live,
            access_log: None,
            refusals: Arc::new(Refusals::new()),
        }
    }

    /// Switches every thread's copy to `live` (config reload): requests
    /// that start from now on use it, running ones finish on theirs.
    pub fn reconfigure(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// The same proxy with its own backend connection pool, for another
    /// proxy thread (the pool's connections live on the thread that made
    /// them).
    pub fn for_another_thread(&self) -> Self {
        Self {
            upstreams: Upstreams::new(
                self.live.clone(),
                self.backend_tls.clone(),
                self.metrics.clone(),
            ),
            metrics: self.metrics.clone(),
            client_body_idle: self.client_body_idle.clone(),
            backend_tls: self.backend_tls.clone(),
            admission: self.admission.clone(),
            pool: self.pool.clone(),
            live: self.live.clone(),
            access_log: self.access_log.clone(),
            refusals: self.refusals.clone(),
        }
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

    /// The backend pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Where refusals are counted by client (every thread's copy counts
    /// into the same one).
    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    /// Answers one client request. Every answer carries the request's
    /// `X-Request-Id` and, with the access log on, leads to one line.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: Conn) -> Response<Body> {
        let started = std::time::Instant::now();
        let request_id = request_id::settle(req.headers_mut());
        // What the log line needs of the request, taken before `answer`
        // consumes it.
        let seen = self.access_log.as_ref().map(|_| {
            (
                std::time::SystemTime::now(),
                req.method().clone(),
                req.uri().clone(),
                self.live
                    .load()
                    .identifier
                    .client_ip(req.headers(), conn.peer.ip()),
            )
        });
        let mut outcome = Outcome::default();
        let mut response = self
            .answer(req, conn, started, &request_id, &mut outcome)
            .await;
        let (Some(log), Some((ts, method, uri, ip))) = (&self.access_log, seen) else {
            response
                .headers_mut()
                .insert(request_id::X_REQUEST_ID.clone(), request_id);
            return response;
        };
        response
            .headers_mut()
            .insert(request_id::X_REQUEST_ID.clone(), request_id.clone());
        let record = Record {
            ts,
            client: outcome.admission.client.map_or(Client::Ip(ip), Client::Key),
            method: Some(method),
            uri: Some(uri),
            status: response.status().as_u16(),
            backend: outcome.backend,
            duration: Duration::ZERO,
            bytes_sent: 0,
            limited: outcome.admission.limited,
            request_id,
        };
        log.wrap(response, record, started)
    }

    /// The answer to one request, and in `outcome` what the access log
    /// wants to know of it.
    async fn answer(
        &self,
        mut req: Request<Incoming>,
        conn: Conn,
        started: std::time::Instant,
        request_id: &HeaderValue,
        outcome: &mut Outcome,
    ) -> Response<Body> {
        let refuse = |e: ProxyError| {
            let verdict = match &e {
                ProxyError::RateLimited(v) => Some(*v),
                _ => None,
            };
            let mut response = e.into_response();
            // A 429 says which bucket refused and when to come back.
            if let Some(v) = &verdict {
                headers::rate_limited(response.headers_mut(), v);
            }
            self.metrics
                .request(response.status().as_u16(), None, started.elapsed());
            response
        };
        let live = self.live.load_full();
        let host = match strict::check(&mut req, &live.strict) {
            Ok(host) => host,
            Err(e) => return refuse(e),
        };
        // One path from here on: what rules match is what the backend gets.
        if let Err(e) = path::settle(req.uri_mut(), live.settings.escaped_slashes) {
            return refuse(ProxyError::BadRequest(e.to_string().into()));
        }
        let report = &mut outcome.admission;
        let decision = match self.admission.admit(&req, conn.peer, &live, report).await {
            Ok(d) => d,
            Err(e) => {
                // Enforced 429s only: the status page's "refused most".
                if let (Some(_), Some(client)) = (&report.limited, &report.client) {
                    self.refusals.count(client);
                }
                let mut response = refuse(e);
                if let Some(p) = &report.policies {
                    headers::rate_limit_policies(response.headers_mut(), p);
                }
                return response;
            }
        };
        // Boxed: forwarding is most of this future's size, and each
        // enclosing future (this one, `handle`, the connection's service)
        // would otherwise copy it when it is moved into place.
        let forwarding = Box::pin(self.forward(req, conn, host, &live, request_id));
        let (mut response, backend) = match forwarding.await {
            Ok((r, backend)) => (r, Some(backend)),
            Err(e) => (e.into_response(), None),
        };
        match (&outcome.admission.policies, &decision) {
            (Some(p), _) => headers::rate_limit_policies(response.headers_mut(), p),
            (None, Some(d)) => headers::rate_limit(response.headers_mut(), d),
            (None, None) => {}
        }
        let (status, took) = (response.status().as_u16(), started.elapsed());
        match backend.as_deref() {
            Some(b) => b.with_request_counters(&self.metrics, |c| {
                self.metrics.request(status, Some(c), took)
            }),
            None => self.metrics.request(status, None, took),
        }
        outcome.backend = backend;
        response
    }

    /// Sends the request on, with one retry where that is safe; returns
    /// the response and the backend that gave it. `host` is what
    /// [`strict::check`] settled (and left in the `Host` header).
    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: Conn,
        host: Option<HeaderValue>,
        live: &Live,
        request_id: &HeaderValue,
    ) -> Result<(Response<Body>, Arc<Backend>), ProxyError> {
        let (mut parts, body) = req.into_parts();
        parts.uri = origin_form(&parts.uri);
        let upgrade = tunnel::requested(parts.version, &parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(protocols) = &upgrade {
            tunnel::restore(&mut parts.headers, protocols.clone());
        }
        // A client's `Connection: x-request-id` just removed it.
        if !parts.headers.contains_key(&request_id::X_REQUEST_ID) {
            parts
                .headers
                .insert(request_id::X_REQUEST_ID.clone(), request_id.clone());
        }
        let trusted = live.identifier.is_trusted(conn.peer.ip());
        headers::set_forwarded(
            &mut parts.headers,
            conn.peer.ip(),
            trusted,
            conn.tls,
            host.clone(),
        );
        // Only a request that can be sent again unchanged is retried: an
        // idempotent method and no body.
        let retryable = is_idempotent(&parts.method) && http_body::Body::is_end_stream(&body);

        let first = self.pool.pick().ok_or(ProxyError::NoHealthyBackend)?;
        // The marker tells a failed read of the client's body from a
        // backend's failure; the idle timer bounds its pauses.
        let body = idle_body(
            body.map_err(|e| BoxError::from(ClientBodyError(e))),
            live.settings.client_body_timeout,
            Direction::ClientBody,
            self.client_body_idle.clone(),
        )
        .boxed_unsync();
        // Keep the headers for a retry only when one may happen; otherwise
        // the first attempt takes them (no copy on the common path).
        let (first_headers, again) = if retryable {
            (
                parts.headers.clone(),
                Some(std::mem::take(&mut parts.headers)),
            )
        } else {
            (std::mem::take(&mut parts.headers), None)
        };
        let outgoing = Outgoing {
            parts: &parts,
            host: host.as_ref(),
            upgrade: upgrade.as_ref(),
            live,
        };
        match self.attempt(&first, &outgoing, first_headers, body).await {
            // No connection, or the connection broke (a keep-alive
            // connection closed by a dying backend): an idempotent request
            // without a body can safely be sent again. A timeout is not
            // retried: it would double the wait.
            Err(failure @ (Failure::Connect | Failure::Other(_))) => {
                let (Some(headers), Some(second)) = (again, self.pool.pick_other(&first)) else {
                    return Err(failure.into());
                };
                tracing::debug!(from = %first.url(), to = %second.url(), "retrying on another backend");
                let empty = http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync();
                let response = self.attempt(&second, &outgoing, headers, empty).await?;
                Ok((response, second))
            }
            Ok(response) => Ok((response, first)),
            Err(failure) => Err(failure.into()),
        }
    }

    /// One try against one backend. Connect failures and timeouts count
    /// against the backend's health (passive checks).
    async fn attempt(
        &self,
        backend: &Arc<Backend>,
        outgoing: &Outgoing<'_>,
        mut headers: http::HeaderMap,
        body: Body,
    ) -> Result<Response<Body>, Failure> {
        let Outgoing {
            parts,
            host,
            upgrade,
            live,
        } = *outgoing;
        let in_flight = backend.start_request();
        // HTTP/1.1 needs a Host. `strict::check` left the client's in the
        // headers; an HTTP/1.0 client may have sent none: name the backend.
        if !headers.contains_key(header::HOST) {
            let host = match host {
                Some(h) => h.clone(),
                None => HeaderValue::from_str(backend.url().authority.as_str())
                    .map_err(|e| Failure::Other(e.to_string()))?,
            };
            headers.insert(header::HOST, host);
        }
        let mut upstream = Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = parts.uri.clone();
        *upstream.headers_mut() = headers;
        // HTTP/1.1 to the backend, whatever the client spoke.
        *upstream.version_mut() = http::Version::HTTP_11;

        let outcome = tokio::time::timeout(
            live.settings.request_timeout,
            self.upstreams
                .send(backend, upstream, in_flight, upgrade.is_some()),
        )
        .await;
        let mut response = match outcome {
            Ok(Ok(Answer::Response(r))) => r,
            Ok(Ok(Answer::Switched(switched))) => {
                return self.switched(backend, switched, upgrade);
            }
            Ok(Err(e)) => return Err(self.send_failure(backend, e)),
            Err(_) => {
                self.passive_failure(backend, "timed out");
                return Err(Failure::Timeout);
            }
        };
        // The backend's own answer: what passive ejection judges it by.
        self.pool.record_answer(backend, response.status());
        headers::strip_hop_by_hop(response.headers_mut());
        Ok(response)
    }

    /// The 101 that goes back to the client for a backend's 101, carrying
    /// the [`tunnel::Tunnel`] the server opens once it has been sent. The
    /// backend must have switched to a protocol the client asked for.
    fn switched(
        &self,
        backend: &Backend,
        switched: upstream::Switched,
        asked: Option<&HeaderValue>,
    ) -> Result<Response<Body>, Failure> {
        let upstream::Switched {
            mut head,
            upgrade,
            in_flight,
        } = switched;
        let answered = head.headers.get(header::UPGRADE).cloned();
        let Some(protocols) =
            answered.filter(|a| asked.is_some_and(|q| tunnel::accepted(q, Some(a))))
        else {
            tracing::warn!(backend = %backend.url(), "backend switched to a protocol the client did not ask for");
            return Err(Failure::Answer(
                "backend switched to a protocol the client did not ask for",
            ));
        };
        headers::strip_hop_by_hop(&mut head.headers);
        tunnel::restore(&mut head.headers, protocols);
        let mut response = Response::new(crate::body::full(bytes::Bytes::new()));
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        response.extensions_mut().insert(tunnel::Tunnel::new(
            upgrade,
            in_flight,
            self.live.load().settings.upgrade_idle_timeout,
            self.metrics.clone(),
        ));
        Ok(response)
    }

    /// What a failed send means: whose fault, whether it can be retried,
    /// and whether it counts against the backend's health.
    fn send_failure(&self, backend: &Backend, e: SendError) -> Failure {
        match e {
            SendError::Connect(e) => {
                self.passive_failure(backend, "connect failed");
                tracing::warn!(backend = %backend.url(), error = %e, "backend connection failed");
                Failure::Connect
            }
            SendError::Local(e) => {
                // Our own shortage: the backend is not to blame.
                tracing::debug!(backend = %backend.url(), error = %e, "no socket for a backend connection");
                Failure::Local
            }
            SendError::Exchange(e)
                if IdleTimeout::find(&e).is_some_and(|t| t.direction == Direction::ClientBody) =>
            {
                Failure::ClientBodyIdle
            }
            SendError::Exchange(e) => {
                // hyper reports a request body that failed to read as a
                // failed send; the marker tells the client's fault apart.
                if let Some(reason) = ClientBodyError::find(&e) {
                    tracing::info!(backend = %backend.url(), error = %reason, "client's request body failed; answered 400");
                    return Failure::ClientBody(reason);
                }
                tracing::warn!(backend = %backend.url(), error = %e, "backend broke the exchange");
                Failure::Other("backend closed the connection".into())
            }
            SendError::Switched => {
                tracing::warn!(backend = %backend.url(), "backend answered 101 to a request without Upgrade");
                Failure::Answer("backend switched protocols without an upgrade request")
            }
        }
    }

    fn passive_failure(&self, backend: &Backend, what: &str) {
        if let Some(t) = self.pool.record(backend, false) {
            t.log(backend, what);
        }
    }
}

/// What every attempt of one request sends the same way.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    parts: &'a http::request::Parts,
    /// The client's Host, for a backend that needs one named.
    host: Option<&'a HeaderValue>,
    /// The protocols the client asked to switch to.
    upgrade: Option<&'a HeaderValue>,
    live: &'a Live,
}

/// How one attempt failed.
#[derive(Debug)]
enum Failure {
    /// No connection could be made: nothing was sent, so it can be retried.
    Connect,
    /// No response headers within `request_timeout`.
    Timeout,
    /// This process had no socket to spare: not the backend's fault.
    Local,
    /// The client paused its request body longer than
    /// `client_body_timeout`.
    ClientBodyIdle,
    /// The exchange broke after the request may have been sent.
    Other(String),
    /// The backend answered with something that cannot be relayed; not
    /// retried, since the backend did take the request.
    Answer(&'static str),
    /// The client's request body failed to read (the client's fault).
    ClientBody(String),
}

impl From<Failure> for ProxyError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Connect => ProxyError::BadGateway("backend connection failed".into()),
            Failure::Timeout => ProxyError::GatewayTimeout,
            Failure::Local => ProxyError::OutOfSockets,
            Failure::ClientBodyIdle => ProxyError::ClientBodyTimeout,
            Failure::Other(what) => ProxyError::BadGateway(what),
            Failure::Answer(what) => ProxyError::BadGateway(what.into()),
            Failure::ClientBody(reason) => ProxyError::BadRequestBody(reason),
        }
    }
}

/// A read error of the client's request body. Wrapped around it on its way
/// into hyper's client, so that a failed send it caused can be told from a
/// backend's failure (hyper reports both as the exchange failing).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ClientBodyError(hyper::Error);

impl ClientBodyError {
    /// The reason, if `e` was caused by the client's body: the innermost
    /// error's text ("Invalid chunk size line: ...").
    fn find(e: &hyper::Error) -> Option<String> {
        let ClientBodyError(inner) = crate::error::find_in_chain::<ClientBodyError>(e)?;
        crate::error::chain(inner).last().map(|e| e.to_string())
    }
}

fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(m)
}

/// The request target as sent to a backend: origin-form (`/path?query`).
/// HTTP/2 and absolute-form requests carry scheme and authority in the URI;
/// the authority travels in `Host` instead.
fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    uri.path_and_query()
        .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()))
}
