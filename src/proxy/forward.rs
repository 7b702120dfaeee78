//! Forwarding: the request as the backend gets it (origin-form target,
//! hop-by-hop headers out, `X-Forwarded-*` in, the route's rewrite and
//! header edits), one attempt per backend, each with its own
//! `traceparent`, and retries as the pool's policy allows.

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;

use super::affinity::Affinity;
use super::timeout::{idle_body, Direction, IdleTimeout};
use super::upstream::{self, Answer, SendError};
use super::{headers, request_id, tunnel, Body, BoxError, ClientBody, Conn, Live, Proxy};
use crate::balancer::{Backend, Pool, StrategyName};
use crate::error::ProxyError;
use crate::routing::pools::{PoolUse, RetryOn, Timeouts};
use crate::routing::Target;
use crate::trace::context::{TRACEPARENT, TRACESTATE};
use crate::trace::RequestTrace;

impl Proxy {
    /// Sends the request to its pool, retrying as the pool's policy
    /// allows; returns the response and the backend that gave it. `host`
    /// is what [`strict::check`](super::strict::check) settled (and left in
    /// the `Host` header).
    pub(super) async fn forward(
        &self,
        req: Request<ClientBody>,
        conn: Conn,
        host: Option<HeaderValue>,
        (live, target): (&Live, Target<'_>),
        (request_id, trace): (&HeaderValue, &RequestTrace<'_>),
    ) -> Result<(Response<Body>, Arc<Backend>), ProxyError> {
        let (mut parts, body) = req.into_parts();
        let pool = target.pool;
        // Before `prepare`: a route's header edits must not change it.
        let affinity = Affinity::read(&parts, conn, live, pool);
        let upgrade = prepare(&mut parts, conn, host.as_ref(), (live, target), request_id);
        // Only a request that can be sent again unchanged is retried (no
        // body), and one that reached a backend only if its method is
        // idempotent: a POST is retried when no connection was made.
        let retryable = pool.retries.attempts > 0 && http_body::Body::is_end_stream(&body);
        let idempotent = is_idempotent(&parts.method);
        pool.pool.count_request();
        // A slot on a backend: the sticky one, the key's, or the
        // strategy's (waiting in the pool's queue when every backend is at
        // `max_connections`).
        let first = affinity.admit(pool).await?;
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
            pool,
            idempotent,
            trace,
        };
        let backend = first.backend().clone();
        let result = self.attempt(first, &outgoing, first_headers, body).await;
        let answered = match again {
            None => result.map(|r| (r, backend)).map_err(ProxyError::from),
            Some(headers) => {
                self.retry(result, backend, (&outgoing, &affinity), headers)
                    .await
            }
        };
        answered.map(|(mut r, backend)| {
            affinity.stamp(pool, &mut r, &backend);
            (r, backend)
        })
    }

    /// Tries other backends of the pool while the last attempt failed in a
    /// way its policy retries and attempts are left, each on a backend not
    /// tried yet.
    async fn retry(
        &self,
        mut result: Result<Response<Body>, Failure>,
        first: Arc<Backend>,
        (outgoing, affinity): (&Outgoing<'_>, &Affinity),
        headers: http::HeaderMap,
    ) -> Result<(Response<Body>, Arc<Backend>), ProxyError> {
        let pool = outgoing.pool;
        let mut tried = vec![first];
        for _ in 0..pool.retries.attempts {
            let Some(reason) = retry_reason(&result, pool.retries.on, outgoing.idempotent) else {
                break;
            };
            if !pool.pool.take_retry() {
                tracing::debug!(pool = %pool.name, reason, "retry budget spent: not retried");
                break;
            }
            let Some(slot) = affinity.admit_again(pool, &tried) else {
                break;
            };
            let next = slot.backend().clone();
            tracing::debug!(pool = %pool.name, reason, to = %next.url(), "retrying on another backend");
            self.metrics
                .counter(
                    crate::telemetry::RETRIES,
                    &[("pool", &pool.name), ("reason", reason)],
                )
                .increment(1);
            let empty = http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync();
            result = self.attempt(slot, outgoing, headers.clone(), empty).await;
            tried.push(next);
        }
        let last = tried.pop().ok_or(ProxyError::NoHealthyBackend)?;
        result.map(|r| (r, last)).map_err(ProxyError::from)
    }

    /// One try against one backend, a span of the request's trace: the
    /// backend gets a `traceparent` naming it (and the trusted caller's
    /// `tracestate`).
    async fn attempt(
        &self,
        in_flight: crate::balancer::InFlight,
        outgoing: &Outgoing<'_>,
        mut headers: http::HeaderMap,
        body: Body,
    ) -> Result<Response<Body>, Failure> {
        let span = outgoing
            .trace
            .attempt(&outgoing.parts.method, in_flight.backend());
        headers.insert(TRACEPARENT.clone(), span.traceparent().clone());
        if let Some(state) = outgoing.trace.state() {
            headers.insert(TRACESTATE.clone(), state.clone());
        }
        let result = self.send_once(in_flight, outgoing, headers, body).await;
        match &result {
            Ok(r) => span.answered(r.status()),
            Err(f) => span.failed(f.kind()),
        }
        result
    }

    /// Sends one attempt. Connect failures and timeouts count against the
    /// backend's health (passive checks).
    async fn send_once(
        &self,
        in_flight: crate::balancer::InFlight,
        outgoing: &Outgoing<'_>,
        mut headers: http::HeaderMap,
        body: Body,
    ) -> Result<Response<Body>, Failure> {
        let backend = &in_flight.backend().clone();
        let Outgoing {
            parts,
            host,
            upgrade,
            pool,
            ..
        } = *outgoing;
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
        // A gRPC call's own deadline, when shorter, bounds the wait too:
        // past it the client has given up (504 → DEADLINE_EXCEEDED).
        let wait = crate::grpc::timeout(&headers)
            .map_or(pool.timeouts.request, |t| t.min(pool.timeouts.request));
        let mut upstream = Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = parts.uri.clone();
        *upstream.headers_mut() = headers;
        // The pool's protocol to the backend, whatever the client spoke
        // (`Upstreams::send` picks the connection pool by it).
        *upstream.version_mut() = pool.protocol.version();

        // Timed only where a strategy learns from it.
        let sent = (pool.strategy == StrategyName::LeastTime).then(std::time::Instant::now);
        let outcome = tokio::time::timeout(
            wait,
            self.upstreams
                .send(backend, upstream, in_flight, (upgrade.is_some(), pool)),
        )
        .await;
        if let (Some(sent), Ok(Ok(_))) = (sent, &outcome) {
            backend.observe_response_time(sent.elapsed());
        }
        let mut response = match outcome {
            Ok(Ok(Answer::Response(r))) => r,
            Ok(Ok(Answer::Switched(switched))) => {
                return self.switched(backend, switched, upgrade, &pool.timeouts);
            }
            Ok(Err(e)) => return Err(Self::send_failure(&pool.pool, backend, e)),
            Err(_) => {
                passive_failure(&pool.pool, backend, "timed out");
                return Err(Failure::Timeout);
            }
        };
        // The backend's own answer: what passive ejection judges it by.
        pool.pool.record_answer(backend, response.status());
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
        timeouts: &Timeouts,
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
            timeouts.upgrade_idle,
            self.metrics.clone(),
        ));
        Ok(response)
    }

    /// What a failed send means: whose fault, whether it can be retried,
    /// and whether it counts against the backend's health.
    fn send_failure(pool: &Pool, backend: &Backend, e: SendError) -> Failure {
        match e {
            SendError::Connect(e) => {
                passive_failure(pool, backend, "connect failed");
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
}

/// A failed attempt counted against the backend's health (passive checks).
fn passive_failure(pool: &Pool, backend: &Backend, what: &str) {
    if let Some(t) = pool.record(backend, false) {
        t.log(backend, what);
    }
}

/// Turns the client's request head into the backend's: origin-form
/// target (rewritten if the route says so), hop-by-hop headers out (the
/// upgrade's restored), `X-Request-Id` and `X-Forwarded-*` in, then the
/// route's own edits. Returns the protocols the client asked to switch to.
fn prepare(
    parts: &mut http::request::Parts,
    conn: Conn,
    host: Option<&HeaderValue>,
    (live, target): (&Live, Target<'_>),
    request_id: &HeaderValue,
) -> Option<HeaderValue> {
    parts.uri = origin_form(&parts.uri);
    if let Some(path) = target.route.and_then(|r| r.rewritten(parts.uri.path())) {
        parts.uri = with_path(&parts.uri, &path);
    }
    let upgrade = tunnel::requested(parts.version, &parts.headers);
    // Only a `Connection` header names further headers to remove (such as
    // `x-request-id`). Asking for a standard name hashes one tag; a custom
    // name is hashed byte by byte, so it is looked for only then.
    let connection_named = parts.headers.contains_key(header::CONNECTION);
    headers::strip_request_hop_by_hop(&mut parts.headers);
    if let Some(protocols) = &upgrade {
        tunnel::restore(&mut parts.headers, protocols.clone());
    }
    // A client's `Connection: x-request-id` just removed it.
    if connection_named && !parts.headers.contains_key(&request_id::X_REQUEST_ID) {
        parts
            .headers
            .insert(request_id::X_REQUEST_ID.clone(), request_id.clone());
    }
    let trusted = live.identifier.trusts_forwarded_for(conn);
    headers::set_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        trusted,
        conn.tls,
        host.cloned(),
    );
    if let Some(route) = target.route {
        route.request_headers.apply(&mut parts.headers);
    }
    upgrade
}

/// `uri` (origin-form) with its path replaced, the query kept.
fn with_path(uri: &Uri, path: &str) -> Uri {
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    // The new path is made of a normalized path's bytes and a route's
    // checked prefix: it parses; if it did not, the old target stays.
    Uri::try_from(target).unwrap_or_else(|_| uri.clone())
}

/// Why the last attempt's outcome is worth another under `on`, if it is
/// (the reason label of `tollgate_retries_total`).
/// Only a connect failure sent nothing, so only that is retried for a
/// method that is not `idempotent`.
fn retry_reason(
    result: &Result<Response<Body>, Failure>,
    on: RetryOn,
    idempotent: bool,
) -> Option<&'static str> {
    match result {
        Err(Failure::Connect) if on.connect_failure => Some("connect_failure"),
        _ if !idempotent => None,
        Err(Failure::Other(_)) if on.reset => Some("reset"),
        Err(Failure::Timeout) if on.timeout => Some("504"),
        Ok(r) if r.status() == http::StatusCode::BAD_GATEWAY && on.bad_gateway => Some("502"),
        Ok(r) if r.status() == http::StatusCode::SERVICE_UNAVAILABLE && on.unavailable => {
            Some("503")
        }
        _ => None,
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
    /// The pool the request goes to: its timeouts and retry policy.
    pool: &'a PoolUse,
    /// Whether the method may be sent twice.
    idempotent: bool,
    /// The request's trace, each attempt a span of it.
    trace: &'a RequestTrace<'a>,
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

impl Failure {
    /// The attempt span's `error.type`.
    fn kind(&self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Local => "out_of_sockets",
            Failure::ClientBodyIdle => "client_body_timeout",
            Failure::Other(_) => "reset",
            Failure::Answer(_) => "bad_answer",
            Failure::ClientBody(_) => "client_body",
        }
    }
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
struct ClientBodyError(BoxError);

impl ClientBodyError {
    /// The reason, if `e` was caused by the client's body: the innermost
    /// error's text ("Invalid chunk size line: ...").
    fn find(e: &hyper::Error) -> Option<String> {
        let ClientBodyError(inner) = crate::error::find_in_chain::<ClientBodyError>(e)?;
        crate::error::chain(inner.as_ref())
            .last()
            .map(|e| e.to_string())
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
