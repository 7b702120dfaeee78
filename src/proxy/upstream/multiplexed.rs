//! HTTP/2 to backends (`protocol: http2`): many requests as streams over a
//! few connections per backend and proxy thread.
//!
//! An HTTP/1.1 connection carries one request at a time, so the other path
//! keeps a stack of them per backend. An HTTP/2 connection carries many at
//! once, and gRPC backends expect exactly that: a handful of long-lived
//! connections, not one per call. So each proxy thread keeps, per backend,
//! at most [`MAX_CONNECTIONS`] connections and counts the streams open on
//! each; a request takes the least busy one, and a new connection is
//! opened only when every open one already carries [`SOFT_STREAMS`]
//! streams (or none is open). Opening is serialised per backend, so a
//! burst of requests on a cold thread waits for one handshake instead of
//! opening a connection each.
//!
//! Dead connections are found by HTTP/2 PINGs ([`PING_INTERVAL`], also
//! while idle): a backend that vanished without closing its sockets (a
//! host that lost power, a NAT that forgot the flow) fails its ping and the
//! connection closes, instead of requests waiting on it until their
//! timeout. A closed connection is dropped at the next pick, and a
//! request that a connection gave back unsent (it was closing) goes out on
//! another one.
//!
//! Trailers need nothing here: hyper carries them as the last frame of a
//! body, and every wrapper on the way forwards frames as they are.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery};
use http::{header, Request, Response, Uri};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant as Deadline;

use super::{count_connection, tcp, tls, Answer, ConnectError, SendError, Upstreams};
use crate::balancer::{Backend, InFlight};
use crate::body::{Body, Watched};
use crate::proxy::headers;
use crate::proxy::timeout::{idle_body, Direction};
use crate::routing::pools::PoolUse;
use crate::telemetry::Metrics;

/// Connections per backend and proxy thread, at most.
const MAX_CONNECTIONS: usize = 2;

/// Streams on a connection past which another connection is opened (while
/// fewer than [`MAX_CONNECTIONS`] are). 100 is the least a server should
/// allow at once (RFC 9113 §6.5.2); past the server's own limit, h2 queues
/// streams on the connection rather than failing them.
const SOFT_STREAMS: usize = 100;

/// How often an HTTP/2 connection to a backend is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(20);

/// How long a ping may go unanswered before the connection is closed.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// A thread's HTTP/2 connections, by backend.
#[derive(Debug, Default)]
pub(super) struct Connections {
    /// Keyed by the backend's address in memory, as the HTTP/1.1 pool.
    by_backend: Mutex<HashMap<usize, Entry, foldhash::fast::RandomState>>,
    /// [`crate::balancer::removals`] when `by_backend` was last swept.
    removals_seen: AtomicU64,
}

/// One backend's connections.
#[derive(Debug)]
struct Entry {
    /// Held so its address stays the key, and to tell it was removed.
    backend: Arc<Backend>,
    open: Vec<Shared>,
    /// Held while a connection to it is opened.
    dial: Arc<tokio::sync::Mutex<()>>,
}

/// One connection, shared by the requests on it.
#[derive(Debug, Clone)]
struct Shared {
    sender: SendRequest<Body>,
    /// Streams open on it (requests whose response body is not done).
    streams: Arc<AtomicUsize>,
}

/// What a request should do for a connection.
enum Pick {
    /// Use this one.
    Use(Shared),
    /// Open one, holding this lock meanwhile.
    Dial(Arc<tokio::sync::Mutex<()>>),
}

impl Connections {
    /// The least busy open connection to `backend`, unless a new one
    /// should be opened (none is open, or all are busy and there is room).
    fn pick(&self, backend: &Arc<Backend>) -> Pick {
        if backend.is_removed() {
            // Its last requests get a connection each, kept nowhere.
            return Pick::Dial(Arc::default());
        }
        let mut map = self.lock();
        if super::removed_since(&self.removals_seen) {
            map.retain(|_, e| !e.backend.is_removed());
        }
        let entry = map.entry(key(backend)).or_insert_with(|| Entry {
            backend: backend.clone(),
            open: Vec::new(),
            dial: Arc::default(),
        });
        entry.open.retain(|c| !c.sender.is_closed());
        let full = entry.open.len() >= MAX_CONNECTIONS;
        match entry
            .open
            .iter()
            .min_by_key(|c| c.streams.load(Ordering::Relaxed))
        {
            Some(c) if full || c.streams.load(Ordering::Relaxed) < SOFT_STREAMS => {
                Pick::Use(c.clone())
            }
            _ => Pick::Dial(entry.dial.clone()),
        }
    }

    /// The least busy open connection to `backend`, however busy.
    fn least_busy(&self, backend: &Arc<Backend>) -> Option<Shared> {
        let map = self.lock();
        map.get(&key(backend))?
            .open
            .iter()
            .filter(|c| !c.sender.is_closed())
            .min_by_key(|c| c.streams.load(Ordering::Relaxed))
            .cloned()
    }

    fn add(&self, backend: &Arc<Backend>, conn: Shared) {
        // A backend removed while its connection was being opened keeps
        // no entry: the connection serves this one request and closes.
        if backend.is_removed() {
            return;
        }
        if let Some(e) = self.lock().get_mut(&key(backend)) {
            e.open.push(conn);
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<usize, Entry, foldhash::fast::RandomState>> {
        self.by_backend
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn key(backend: &Arc<Backend>) -> usize {
    Arc::as_ptr(backend) as usize
}

impl Upstreams {
    /// Sends `req` to `backend` as a stream on one of its HTTP/2
    /// connections; the response body keeps the stream counted, and
    /// `in_flight` alive, until it is done.
    pub(super) async fn send_h2(
        &self,
        backend: &Arc<Backend>,
        mut req: Request<Body>,
        in_flight: InFlight,
        pool: &PoolUse,
    ) -> Result<Answer, SendError> {
        let timeouts = &pool.timeouts;
        let label = pool.pool.metric_label();
        to_h2_form(&mut req, backend);
        loop {
            let (conn, fresh) = self.h2_connection(backend, timeouts.connect, label).await?;
            let stream = Stream::open(&conn.streams);
            let mut sender = conn.sender;
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    // As an HTTP/1.1 backend's answer would be: the client
                    // side writes its own version, and hyper's HTTP/1.1
                    // writer takes a slower path for any other.
                    parts.version = http::Version::HTTP_11;
                    let body = idle_body(
                        body,
                        timeouts.backend_body,
                        Direction::BackendBody,
                        self.inner.backend_body_idle.clone(),
                    );
                    let hooks = Open {
                        _stream: stream,
                        _in_flight: in_flight,
                    };
                    return Ok(Answer::Response(Response::from_parts(
                        parts,
                        Body::new(Watched::new(body, hooks)),
                    )));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the connection was closing. A fresh one
                    // doing that is the backend refusing; report it.
                    Some(unsent) if !fresh => req = unsent,
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// A connection for one more stream to `backend`, and whether it was
    /// opened for this request.
    async fn h2_connection(
        &self,
        backend: &Arc<Backend>,
        connect_timeout: Duration,
        pool_label: Option<&str>,
    ) -> Result<(Shared, bool), SendError> {
        let h2 = &self.inner.h2;
        let dial = match h2.pick(backend) {
            Pick::Use(c) => return Ok((c, false)),
            Pick::Dial(dial) => dial,
        };
        // The connect timeout covers the wait for another request's
        // handshake too: it is this request's wait for a connection.
        let deadline = Deadline::now() + connect_timeout;
        let _dialing = tokio::time::timeout_at(deadline, dial.lock())
            .await
            .map_err(|_| SendError::Connect(ConnectError::TimedOut(connect_timeout)))?;
        // Opened by the request that held the lock before this one?
        if let Pick::Use(c) = h2.pick(backend) {
            return Ok((c, false));
        }
        match self
            .connect_h2(backend, (deadline, connect_timeout), pool_label)
            .await
        {
            Ok(sender) => {
                let conn = Shared {
                    sender,
                    streams: Arc::default(),
                };
                h2.add(backend, conn.clone());
                Ok((conn, true))
            }
            // No room for another connection: a busy one will do.
            Err(e) => h2.least_busy(backend).map(|c| (c, false)).ok_or(e),
        }
    }

    /// A new HTTP/2 connection to `backend`: prior knowledge on TCP, or
    /// TLS with ALPN `h2` (which the backend must choose).
    async fn connect_h2(
        &self,
        backend: &Backend,
        deadline: (Deadline, Duration),
        pool_label: Option<&str>,
    ) -> Result<SendRequest<Body>, SendError> {
        let stream = tcp(backend, deadline).await?;
        let metrics = (&self.inner.metrics, pool_label);
        match backend.url().server_name() {
            None => handshake(backend, stream, metrics).await,
            Some(name) => {
                let stream = tls(&self.inner.tls_h2, name, stream, deadline).await?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err(SendError::Connect(ConnectError::NotHttp2));
                }
                handshake(backend, stream, metrics).await
            }
        }
    }
}

/// The HTTP/2 handshake on a new connection to `backend`, its connection
/// task spawned (with keep-alive pings); counted as a connection opened.
async fn handshake<S>(
    backend: &Backend,
    stream: S,
    (metrics, pool_label): (&Metrics, Option<&str>),
) -> Result<SendRequest<Body>, SendError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| SendError::Connect(ConnectError::Handshake(e)))?;
    let label = backend.label().to_string();
    count_connection(metrics, &label, pool_label);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(backend = %label, error = %e, "backend HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

/// `req` as HTTP/2 sends it: `:scheme` the backend's, `:authority` the
/// `Host` the client asked for (RFC 9113 §8.3.1: a proxy turns `Host`
/// into `:authority`), and no connection-specific header (`TE: trailers`
/// stays: gRPC needs it).
fn to_h2_form(req: &mut Request<Body>, backend: &Backend) {
    let url = backend.url();
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| url.authority.clone());
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // Scheme, authority and path each parsed already: this builds.
    if let Ok(uri) = Uri::builder()
        .scheme(url.scheme.as_str())
        .authority(authority)
        .path_and_query(path)
        .build()
    {
        *req.uri_mut() = uri;
    }
    // An upgrade's `Connection`/`Upgrade` (WebSocket): HTTP/2 has no such
    // thing; the backend gets the plain request.
    headers::strip_request_hop_by_hop(req.headers_mut());
}

/// A stream counted open on its connection until dropped.
#[derive(Debug)]
struct Stream(Arc<AtomicUsize>);

impl Stream {
    fn open(streams: &Arc<AtomicUsize>) -> Self {
        streams.fetch_add(1, Ordering::Relaxed);
        Self(streams.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a response body holds until it is done: its stream's place on
/// the connection, and the request counted in flight (so
/// `least_connections` sees a long gRPC stream as load).
struct Open {
    _stream: Stream,
    _in_flight: InFlight,
}

impl crate::body::Hooks for Open {}
