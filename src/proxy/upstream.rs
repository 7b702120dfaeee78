//! Keep-alive connections to backends: one small pool per proxy thread.
//!
//! Each proxy thread owns one [`Upstreams`]; a connection is made, used and
//! reused on the thread whose runtime drives it, so handing a request to a
//! backend connection never wakes another thread. Idle connections are a
//! LIFO stack per backend (the most recently used one is the one most
//! likely to still be open and warm), and a connection goes back on the
//! stack only once its response body was read to the end, so a
//! half-read response can never be answered to the next request.
//!
//! The stack holds at most the pool's `backend_idle_connections` (nginx's
//! `keepalive`): a burst of N concurrent requests opens N connections,
//! and each one past the bound is closed as it falls idle instead of
//! holding a socket, a task and hyper's buffers (about 20 KiB) until the
//! backend or [`IDLE_TIMEOUT`] ends it.
//!
//! Why not hyper-util's pooled `Client`: on this path it hashed a pool key
//! with SipHash, took a mutex, built a URI and, whenever a response body was
//! still streaming when the headers arrived, spawned a task per request
//! just to return the connection later. Here returning a connection is a
//! push onto a vector when the body ends (see `scripts/bench.sh` and
//! docs/benchmarks.md, "Proxy under load", for what that changed).
//!
//! An `https://` backend's connections are TLS (rustls, verified against
//! the roots of `tls::client`, SNI = the URL's host). hyper's sender does
//! not depend on the connection's IO type, so TLS and plain connections
//! share the pool as they are; only [`Upstreams::connect`] differs, and a
//! plain backend's connection is exactly what it was before TLS existed.
//!
//! A pooled connection can turn out to be closed by the backend just as a
//! request is handed to it; hyper then gives the request back unsent, and
//! it goes out on another connection. That is safe for any method, because
//! nothing of it reached the backend.
//!
//! A request marked HTTP/2 (its pool has `protocol: http2`) takes the
//! other path, [`multiplexed`]: a few shared connections per backend
//! instead of one connection per request at a time.

mod multiplexed;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant as Deadline;
use tokio_rustls::TlsConnector;

use super::timeout::{idle_body, Direction};
use super::Body;
use crate::balancer::{self, Backend, InFlight};
use crate::body::Watched;
use crate::routing::pools::PoolUse;
use crate::telemetry::Metrics;

/// An idle connection older than this is closed instead of reused (backends
/// commonly drop idle keep-alive connections after a minute or two).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request could not be sent or answered.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(ConnectError),
    /// This process is out of sockets (file descriptors, local ports):
    /// nothing was sent, and the backend is not to blame.
    Local(std::io::Error),
    /// The request may have reached the backend, but no response came.
    Exchange(hyper::Error),
    /// The backend answered `101 Switching Protocols` to a request that
    /// did not ask to upgrade; the connection now speaks something else
    /// and is closed.
    Switched,
}

/// What a backend answered.
#[derive(Debug)]
pub(crate) enum Answer {
    /// An ordinary response; its body hands the connection back.
    Response(Response<Body>),
    /// `101 Switching Protocols` to a request that asked for it: the
    /// connection is the backend's side of a tunnel now, never pooled.
    Switched(Switched),
}

/// A backend's 101, its connection on the way out of hyper's client, and
/// the request's in-flight guard (which the tunnel keeps).
#[derive(Debug)]
pub(crate) struct Switched {
    /// The 101's status line and headers.
    pub(crate) head: http::response::Parts,
    /// Resolves to the connection once hyper has let go of it.
    pub(crate) upgrade: hyper::upgrade::OnUpgrade,
    /// The request counted in flight.
    pub(crate) in_flight: InFlight,
}

/// Why no connection to a backend could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// No TCP connection, or for `https://` no TLS session, within
    /// `connect_timeout`.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The TCP connection failed.
    #[error("connect failed: {0}")]
    Io(#[source] std::io::Error),
    /// The TLS handshake with an `https://` backend failed: its
    /// certificate was not trusted or not valid for the host, no protocol
    /// version or cipher in common, or the connection broke during it.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP/1.1 or HTTP/2 handshake on a new connection failed.
    #[error("handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    /// A pool speaks HTTP/2, and its `https://` backend did not choose
    /// `h2` in the TLS handshake (ALPN): it does not speak HTTP/2 there.
    #[error("the backend did not agree to HTTP/2 in the TLS handshake (ALPN h2)")]
    NotHttp2,
}

/// Backend connections of one proxy thread.
#[derive(Debug, Clone)]
pub(crate) struct Upstreams {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// For `https://` backends (built once at start, see `tls::client`).
    tls: Arc<rustls::ClientConfig>,
    /// The same, offering `h2` alone (ALPN), for pools that speak HTTP/2.
    tls_h2: Arc<rustls::ClientConfig>,
    /// HTTP/2 connections, for pools that speak it.
    h2: multiplexed::Connections,
    /// Keyed by the backend's address in memory; the entry holds the
    /// backend, so the address cannot be reused by another while keyed.
    idle: Mutex<HashMap<usize, IdleStack, foldhash::fast::RandomState>>,
    /// [`balancer::removals`] when `idle` was last swept of removed
    /// backends.
    removals_seen: AtomicU64,
    /// Connections opened and backend bodies cut are counted here.
    metrics: Metrics,
    /// `idle_timeouts{direction="backend_body"}`, at hand for every body.
    backend_body_idle: metrics::Counter,
}

/// A backend's idle connections, oldest first.
#[derive(Debug)]
struct IdleStack {
    /// Held so the backend's address stays its key; also tells a
    /// removed backend's connections apart.
    backend: Arc<Backend>,
    connections: VecDeque<Idle>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < IDLE_TIMEOUT
    }
}

impl Upstreams {
    /// A pool opening connections within `live`'s `connect_timeout` (TLS
    /// handshake included), whose response bodies fail after its
    /// `backend_body_timeout` without a byte; `https://` backends are
    /// verified with `tls`.
    pub(crate) fn new(tls: Arc<rustls::ClientConfig>, metrics: Metrics) -> Self {
        // A clone shares the roots and verifier (Arcs): cheap per thread.
        let mut h2 = rustls::ClientConfig::clone(&tls);
        h2.alpn_protocols = vec![b"h2".to_vec()];
        Self {
            inner: Arc::new(Inner {
                tls,
                tls_h2: Arc::new(h2),
                h2: multiplexed::Connections::default(),
                idle: Mutex::new(HashMap::default()),
                removals_seen: AtomicU64::new(balancer::removals()),
                backend_body_idle: metrics.idle_timeouts(Direction::BackendBody.label()),
                metrics,
            }),
        }
    }

    /// Sends `req` to `backend` on an idle connection, or a new one when
    /// none is left, and returns the response with its body wrapped so the
    /// connection comes back to the pool when the body has been read.
    /// `in_flight` stays alive until then too. A 101 is an answer only to
    /// a request that `asks_upgrade`. `pool`: the backend's pool (its
    /// timeouts, and the label of the connections it opens). A request
    /// whose version is HTTP/2 goes out over HTTP/2.
    pub(crate) async fn send(
        &self,
        backend: &Arc<Backend>,
        mut req: Request<Body>,
        in_flight: InFlight,
        (asks_upgrade, pool): (bool, &PoolUse),
    ) -> Result<Answer, SendError> {
        let timeouts = &pool.timeouts;
        if req.version() == http::Version::HTTP_2 {
            // Boxed: the HTTP/1.1 path's future stays the size it was.
            return Box::pin(self.send_h2(backend, req, in_flight, pool)).await;
        }
        loop {
            let (mut sender, reused) = match self.checkout(backend) {
                Some(idle) => (idle.sender, true),
                None => {
                    let label = pool.pool.metric_label();
                    (self.connect(backend, timeouts.connect, label).await?, false)
                }
            };
            match sender.try_send_request(req).await {
                Ok(mut response) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                    if !asks_upgrade {
                        return Err(SendError::Switched);
                    }
                    // The sender is dropped here: hyper hands the socket to
                    // the upgrade, not back to this pool.
                    let upgrade = hyper::upgrade::on(&mut response);
                    let (head, _) = response.into_parts();
                    return Ok(Answer::Switched(Switched {
                        head,
                        upgrade,
                        in_flight,
                    }));
                }
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let returning = Returning {
                        // An empty body (HEAD, 204) is read to the end
                        // before it is polled.
                        finished: http_body::Body::is_end_stream(&body),
                        connection: Some((sender, self.inner.clone(), backend.clone())),
                        idle_limit: pool.idle_connections,
                        _in_flight: in_flight,
                    };
                    let body = idle_body(
                        body,
                        timeouts.backend_body,
                        Direction::BackendBody,
                        self.inner.backend_body_idle.clone(),
                    );
                    return Ok(Answer::Response(Response::from_parts(
                        parts,
                        Body::new(Watched::new(body, returning)),
                    )));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection was found closed on the way.
                    // A fresh connection failing like that is the backend
                    // hanging up at once; reporting beats looping.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    fn checkout(&self, backend: &Arc<Backend>) -> Option<Idle> {
        let now = Instant::now();
        let mut idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.inner.sweep_removed(&mut idle);
        let stack = &mut idle.get_mut(&key(backend))?.connections;
        // The most recent usable connection that can take a request now.
        // One that cannot yet stays: its last response is complete, but the
        // request body may still be going out (a backend that answered
        // early); waiting for it would queue this request behind an upload.
        let mut i = stack.len();
        while i > 0 {
            i -= 1;
            if !stack[i].usable(now) {
                stack.remove(i);
            } else if stack[i].sender.is_ready() {
                return stack.remove(i);
            }
        }
        None
    }

    /// A new connection to `backend`, counted with its pool's `pool_label`
    /// (`None`: no `pool` label, as without pools and routes).
    async fn connect(
        &self,
        backend: &Backend,
        connect_timeout: std::time::Duration,
        pool_label: Option<&str>,
    ) -> Result<SendRequest<Body>, SendError> {
        // One deadline for TCP and TLS together: `connect_timeout` bounds
        // how long a request waits before it can be sent.
        let deadline = Deadline::now() + connect_timeout;
        let stream = tcp(backend, (deadline, connect_timeout)).await?;
        // Two monomorphic paths rather than one boxed stream: the plain
        // one stays what it was, with no dynamic dispatch per read.
        match backend.url().server_name() {
            None => http1(backend, stream, (&self.inner.metrics, pool_label)).await,
            // Boxed: the TLS handshake is a large future, and inline it
            // would grow every request's future (moved several times per
            // request), https or not.
            Some(name) => {
                let bounds = (deadline, connect_timeout);
                Box::pin(self.tls_http1(backend, name, stream, bounds, pool_label)).await
            }
        }
    }

    /// The TLS handshake (SNI and verification by `name`) by `deadline`,
    /// then HTTP/1.1 on top.
    async fn tls_http1(
        &self,
        backend: &Backend,
        name: &ServerName<'static>,
        stream: TcpStream,
        (deadline, connect_timeout): (Deadline, Duration),
        pool_label: Option<&str>,
    ) -> Result<SendRequest<Body>, SendError> {
        let stream = tls(&self.inner.tls, name, stream, (deadline, connect_timeout)).await?;
        http1(backend, stream, (&self.inner.metrics, pool_label)).await
    }
}

/// A TCP connection to `backend` by `deadline` (`connect_timeout` from
/// when the attempt began), `TCP_NODELAY` set.
async fn tcp(
    backend: &Backend,
    (deadline, connect_timeout): (Deadline, Duration),
) -> Result<TcpStream, SendError> {
    let url = backend.url();
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect((url.host(), url.port())))
        .await
        .map_err(|_| SendError::Connect(ConnectError::TimedOut(connect_timeout)))?
        .map_err(|e| {
            if crate::health::is_local_exhaustion(&e) {
                SendError::Local(e)
            } else {
                SendError::Connect(ConnectError::Io(e))
            }
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The TLS handshake with `config` (SNI and verification by `name`) on
/// `stream`, by `deadline`.
async fn tls(
    config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
    stream: TcpStream,
    (deadline, connect_timeout): (Deadline, Duration),
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, SendError> {
    let tls = TlsConnector::from(config.clone());
    tokio::time::timeout_at(deadline, tls.connect(name.clone(), stream))
        .await
        .map_err(|_| SendError::Connect(ConnectError::TimedOut(connect_timeout)))?
        .map_err(|e| SendError::Connect(ConnectError::Tls(e)))
}

/// Counts a new connection to a backend
/// (`tollgate_backend_connections_opened_total`), labelled with its pool
/// when pools or routes are configured (`pool_label`).
fn count_connection(metrics: &Metrics, label: &str, pool_label: Option<&str>) {
    let labels: &[(&'static str, &str)] = match pool_label {
        Some(pool) => &[("backend", label), ("pool", pool)],
        None => &[("backend", label)],
    };
    metrics
        .counter(crate::telemetry::BACKEND_CONNECTIONS, labels)
        .increment(1);
}

/// The HTTP/1.1 handshake on a new connection to `backend`, its
/// connection task spawned; counted as a connection opened (labelled
/// with `pool_label` when there is one).
async fn http1<S>(
    backend: &Backend,
    stream: S,
    (metrics, pool_label): (&Metrics, Option<&str>),
) -> Result<SendRequest<Body>, SendError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(ConnectError::Handshake(e)))?;
    let label = backend.label().to_string();
    count_connection(metrics, &label, pool_label);
    // With upgrades: after a 101 the socket goes to the tunnel (only a
    // request that asked gets there; any other 101 drops it, closed).
    let connection = connection.with_upgrades();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(backend = %label, error = %e, "backend connection ended");
        }
    });
    Ok(sender)
}

impl Inner {
    /// Puts `sender` on `backend`'s idle stack, which holds at most
    /// `limit` (the oldest go first).
    fn give_back(&self, backend: Arc<Backend>, sender: SendRequest<Body>, limit: usize) {
        // A backend a reload removed gets no more requests: its
        // connection closes now rather than idling.
        if sender.is_closed() || backend.is_removed() || limit == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        self.sweep_removed(&mut idle);
        let stack = &mut idle
            .entry(key(&backend))
            .or_insert_with(|| IdleStack {
                backend,
                connections: VecDeque::new(),
            })
            .connections;
        // The oldest idle connections sit at the front; drop the stale ones
        // here so a quiet backend does not keep dead sockets around.
        while stack.front().is_some_and(|c| !c.usable(now)) {
            stack.pop_front();
        }
        // A bound lowered by a reload takes the surplus too.
        while stack.len() >= limit {
            stack.pop_front();
        }
        stack.push_back(Idle { sender, since: now });
    }
}

impl Inner {
    /// Drops the idle connections (closing them) and the entries of
    /// backends removed from the pool since the last sweep, so neither the
    /// sockets nor the backends are kept for good. One relaxed load when
    /// nothing was removed.
    fn sweep_removed(&self, idle: &mut HashMap<usize, IdleStack, foldhash::fast::RandomState>) {
        if removed_since(&self.removals_seen) {
            idle.retain(|_, stack| !stack.backend.is_removed());
        }
    }
}

/// Whether backends were removed since `seen` was last brought up to
/// date (which this does): one relaxed load when none was.
fn removed_since(seen: &AtomicU64) -> bool {
    let now = balancer::removals();
    seen.swap(now, Ordering::Relaxed) != now
}

fn key(backend: &Arc<Backend>) -> usize {
    Arc::as_ptr(backend) as usize
}

/// Hooks on a backend response body that hand its connection back to the
/// pool once the body has been read to the end, and keep the request
/// counted in flight until then (so `least_connections` sees streaming
/// downloads as load).
struct Returning {
    finished: bool,
    connection: Option<(SendRequest<Body>, Arc<Inner>, Arc<Backend>)>,
    /// The pool's `backend_idle_connections`.
    idle_limit: usize,
    _in_flight: InFlight,
}

impl crate::body::Hooks for Returning {
    fn frame(&mut self, _frame: &http_body::Frame<Bytes>, end: bool) {
        self.finished |= end;
    }

    fn error(&mut self) {
        self.connection = None;
    }

    fn end(&mut self) {
        self.finished = true;
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        // A body that was not read to the end leaves the connection
        // mid-response; it closes with the sender instead.
        if self.finished {
            if let Some((sender, pool, backend)) = self.connection.take() {
                pool.give_back(backend, sender, self.idle_limit);
            }
        }
    }
}
