//! Accepting connections, holding each to its limits, and draining them
//! on shutdown.
//!
//! Follows hyper-util's `server_graceful` pattern: every connection is
//! watched; when the shutdown future completes the listener is closed (new
//! connections are refused), idle keep-alive connections are closed, and
//! requests already accepted may finish until `drain_timeout`.
//!
//! What this module bounds, per connection:
//!
//! - **Time without a request.** HTTP/1.1: hyper's `header_read_timeout`,
//!   which also runs while a keep-alive connection waits for its next
//!   request. HTTP/2: hyper has no such timer, and a HEADERS block that
//!   never ends (no END_HEADERS) is not a request yet, so a connection
//!   that has had no request open for `header_read_timeout` is sent a
//!   GOAWAY here and closed [`H2_GOAWAY_GRACE`] later.
//! - **Time a client leaves response bytes unread** (`send_timeout`):
//!   [`ClientStream`] fails a write that stays blocked that long; on
//!   HTTP/2, where flow control stalls a stream and not the socket, the
//!   executor the streams run on resets a stream that waits that long for
//!   window, and the connection is closed after several ([`h2_stall`]).
//! - **Request head size** (`max_header_bytes`): hyper's HTTP/1.1
//!   `max_header_size`, HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`.
//! - **HTTP/2 streams**: concurrent streams, and hyper's rapid-reset
//!   limits set explicitly rather than inherited.
//!
//! And per listener set, the number of open client connections
//! ([`ConnectionBudget`], `server.max_connections`).
//!
//! A connection goes through these steps: TCP accept (counted against the
//! budget), the TLS handshake on a TLS listener (bounded by
//! `header_read_timeout`, like the first bytes of a plain connection),
//! the choice of HTTP/1.1 or HTTP/2 (ALPN after TLS, the h2c preface on
//! plain TCP), then hyper. Everything after the handshake is the same for
//! both listeners.
//!
//! An upgraded HTTP/1.1 connection (a 101 carrying a [`Tunnel`]) leaves
//! hyper but not its task: hyper's connection future ends, the socket is
//! taken back from it and the tunnel runs in the same task, so the drain
//! waits for it like for a request, and cuts it at `drain_timeout`.
//!
//! hyper answers requests its HTTP/1.1 parser refuses (400, 414, 431) by
//! itself, with an empty body; [`ClientStream`] puts the JSON error every
//! other refusal carries in its place (see [`Held`]), on both listeners
//! (the TLS shutdown hyper asks for waits until the answer is out), and
//! the refusal gets its access log line ([`parser_refusal`]): the handler,
//! which logs every other request, never saw it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::h2_stall::{self, Stalls, StreamExec, StreamWatch};
pub use super::park::PARK_AFTER;
use super::park::{self, HeadTimer, Woken};
use super::parser_refusal::{self, Refused};
use super::proxy_protocol::ProxyProtocol;
use super::timeout::IdleTimer;
use super::transport::Transport;
use super::tunnel::{self, Tunnel};
use super::{Body, BoxError, Conn};
use crate::access_log::AccessLog;
use crate::shutdown::Signal;
use crate::telemetry::{Metrics, Throttle};
use crate::tls::server::TlsTerminator;

/// How connections are served.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time a client has to send its request headers, and the longest a
    /// connection stays open with no request on it.
    pub header_read_timeout: Duration,
    /// Time accepted requests get to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Largest request head (HTTP/1.1 request line and headers, HTTP/2
    /// header list).
    pub max_header_bytes: usize,
    /// Longest a write to a client may stay blocked.
    pub send_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// Client connections open at once; `None`: unbounded.
    pub budget: Option<ConnectionBudget>,
    /// Every connection starts with a PROXY header (`server.proxy_protocol`);
    /// `None`: none does.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Where refusals, idle timeouts and handshake failures are counted.
    pub metrics: Metrics,
    /// Where requests the HTTP/1.1 parser refuses are logged
    /// (`log.access`); every other request is logged by the handler.
    pub access_log: Option<AccessLog>,
    /// Plain connections may speak HTTP/2 with prior knowledge (h2c);
    /// `false`: HTTP/1.1 only (the demo backend without `--h2c`).
    pub h2c: bool,
    /// How long an idle HTTP/1.1 connection stays with hyper before it
    /// waits outside it (`proxy::park`).
    pub park_after: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_header_bytes: 32 * 1024,
            send_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 128,
            budget: None,
            proxy_protocol: None,
            metrics: Metrics::default(),
            access_log: None,
            h2c: true,
            park_after: PARK_AFTER,
        }
    }
}

/// Streams an HTTP/2 client may reset before we have accepted them; past
/// this the connection is closed (the HTTP/2 rapid-reset attack,
/// CVE-2023-44487). h2's default, set here so a dependency update cannot
/// change it silently.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Streams we may reset for a client's protocol errors before the
/// connection is closed (RUSTSEC-2024-0003); hyper's default, made explicit.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// HTTP/2 PING interval and the time an answer may take: a peer that
/// stops answering while a long response is open is found dead.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Time between the GOAWAY sent to an idle HTTP/2 connection and closing
/// it: enough for a well-behaved client to see it and go, short enough
/// that a client who ignores it does not keep the descriptor.
pub const H2_GOAWAY_GRACE: Duration = Duration::from_millis(500);

/// Descriptors kept out of the connection budget's share: listeners,
/// the admin API, health checks, the database and Redis, log files.
const FD_RESERVE: u64 = 128;

/// How many client connections may be open at once, across every proxy
/// thread.
///
/// Every proxied HTTP/1.1 request holds two descriptors, the client's and
/// a backend connection, and the health checks need descriptors of their
/// own. When accept took every descriptor, connects and health checks
/// failed with EMFILE, the healthy backends were evicted and every client
/// got 503. Like nginx's `worker_connections`, tollgate stops accepting at
/// the budget instead; clients beyond it wait in the listen queue.
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ConnectionBudget {
    /// A budget of `limit` connections.
    pub fn new(limit: NonZeroUsize) -> Self {
        let limit = limit.get().min(Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// The default budget: half of the open-file soft limit left after
    /// [`FD_RESERVE`], so that each client connection can have its
    /// backend connection and the reserve stays free.
    pub fn from_open_file_limit() -> Self {
        let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        Self::new(budget_for_open_files(soft))
    }

    /// Connections allowed at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A place for one more connection, if there is one now.
    pub(super) fn try_take(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Connections open now.
    pub fn in_use(&self) -> usize {
        self.limit.saturating_sub(self.permits.available_permits())
    }
}

/// The default budget for an open-file limit of `soft`.
fn budget_for_open_files(soft: u64) -> NonZeroUsize {
    let share = soft.saturating_sub(FD_RESERVE) / 2;
    NonZeroUsize::new(usize::try_from(share).unwrap_or(usize::MAX)).unwrap_or(NonZeroUsize::MIN)
}

/// Whether every accepted connection finished within the drain timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// All connections closed in time.
    Clean,
    /// Some were still open at `drain_timeout` and were cut.
    TimedOut,
}

/// Times the connection budget was found spent, logged once per burst.
static BUDGET_SPENT: Throttle = Throttle::new();
/// Failed accepts (EMFILE and the like), logged once per burst.
static ACCEPT_FAILED: Throttle = Throttle::new();

/// A listening socket and, for a TLS listener, how it terminates TLS.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: std::net::TcpListener,
    /// `Some`: connections start with a TLS handshake.
    pub tls: Option<TlsTerminator>,
}

/// One listener of [`serve_all`], registered with the runtime.
struct Endpoint {
    listener: TcpListener,
    tls: Option<TlsTerminator>,
}

/// Serves HTTP/1.1 and h2c on `listener` with `handler` until `shutdown`
/// completes, then drains.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drained
where
    H: Fn(Request<Incoming>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let endpoint = Endpoint {
        listener,
        tls: None,
    };
    serve_endpoints(vec![endpoint], handler, options, shutdown).await
}

/// Serves every listener of `listeners` (plain or TLS) with `handler`
/// until `shutdown` completes, then drains. They share one connection
/// budget, one drain and, through `handler`, one backend pool.
pub async fn serve_all<H, F>(
    listeners: Vec<Listener>,
    handler: H,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Drained>
where
    H: Fn(Request<Incoming>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let endpoints = listeners
        .into_iter()
        .map(|l| {
            Ok(Endpoint {
                listener: TcpListener::from_std(l.socket)?,
                tls: l.tls,
            })
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(serve_endpoints(endpoints, handler, options, shutdown).await)
}

/// Accepts on whichever endpoint has a connection waiting, starting the
/// search one further each time so that a busy listener cannot starve
/// the others.
async fn accept_any(
    endpoints: &[Endpoint],
    next: &mut usize,
) -> (usize, std::io::Result<(TcpStream, SocketAddr)>) {
    std::future::poll_fn(|cx| {
        let n = endpoints.len();
        for k in 0..n {
            let i = (*next + k) % n;
            if let Poll::Ready(accepted) = endpoints[i].listener.poll_accept(cx) {
                *next = (i + 1) % n;
                return Poll::Ready((i, accepted));
            }
        }
        Poll::Pending
    })
    .await
}

/// hyper's HTTP/1.1 server, set up once per listener thread.
fn http1_builder(options: &ServeOptions) -> http1::Builder {
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_header_size(options.max_header_bytes)
        .keep_alive(true);
    http1
}

/// What hyper's HTTP/2 server is set up with.
#[derive(Debug, Clone, Copy)]
struct Http2Settings {
    max_header_list_size: u32,
    max_concurrent_streams: u32,
}

impl From<&ServeOptions> for Http2Settings {
    fn from(options: &ServeOptions) -> Self {
        Self {
            max_header_list_size: u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX),
            max_concurrent_streams: options.http2_max_concurrent_streams,
        }
    }
}

/// hyper's HTTP/2 server for one connection: made per connection, since
/// the executor its streams run on is that connection's (it counts the
/// connection's stalled streams, see [`h2_stall`]).
fn http2_builder(settings: Http2Settings, exec: StreamExec) -> http2::Builder<StreamExec> {
    let mut http2 = http2::Builder::new(exec);
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    http2
}

/// A place in the connection budget, waiting (new connections stay in
/// the listen queue) while it is spent; `None` if shutdown came first.
async fn wait_for_room(
    budget: &ConnectionBudget,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = budget.permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    BUDGET_SPENT.note(|times| {
        tracing::warn!(
            limit = budget.limit,
            times,
            "server.max_connections reached: new connections wait in the \
             listen queue until others close"
        );
    });
    tokio::select! {
        permit = budget.permits.clone().acquire_owned() => permit.ok(),
        () = shutdown => None,
    }
}

/// The accepted connection; on a failed accept (out of file descriptors,
/// a connection reset before accept) a brief back-off instead of a spin.
async fn accepted_or_back_off(
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
) -> Option<(TcpStream, SocketAddr)> {
    match accepted {
        Ok(a) => Some(a),
        Err(e) => {
            ACCEPT_FAILED.note(|times| {
                tracing::warn!(error = %e, times, "accept failed");
            });
            tokio::time::sleep(Duration::from_millis(10)).await;
            None
        }
    }
}

async fn serve_endpoints<H, F>(
    endpoints: Vec<Endpoint>,
    handler: H,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Drained
where
    H: Fn(Request<Incoming>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one
    // system call here instead of one per connection.
    for endpoint in &endpoints {
        if let Err(e) = socket2::SockRef::from(&endpoint.listener).set_tcp_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on the listener");
        }
    }
    // Tells open tunnels the drain is over (fired, or dropped, on return).
    let (cut, cut_signal) = crate::shutdown::channel();
    let shared = Arc::new(Shared {
        cut: cut_signal,
        handler,
        http1: http1_builder(&options),
        http2: Http2Settings::from(&options),
        header_read_timeout: options.header_read_timeout,
        send_timeout: options.send_timeout,
        proxy_protocol: options.proxy_protocol.clone(),
        metrics: options.metrics.clone(),
        access_log: options.access_log.clone(),
        h2c: options.h2c,
        park_after: options.park_after,
    });
    let graceful = GracefulShutdown::new();
    // Tells connections to give up (still waiting for their first bytes)
    // or to finish their current request and close.
    let (closing, closing_signal) = crate::shutdown::channel();
    tokio::pin!(shutdown);
    let mut next = 0;
    loop {
        let permit = match &options.budget {
            None => None,
            Some(budget) => match wait_for_room(budget, &mut shutdown).await {
                Some(permit) => Some(permit),
                None => break,
            },
        };
        tokio::select! {
            (endpoint, accepted) = accept_any(&endpoints, &mut next) => {
                let Some((stream, peer)) = accepted_or_back_off(accepted).await else {
                    continue;
                };
                // Boxed: the connection future holds hyper's connection
                // state (several KB), and tokio moves a task's future a few
                // times while spawning and finishing it. Behind a pointer
                // each move copies 16 bytes; inline the copies cost ~2,200
                // instructions per connection (callgrind, ab -c 50).
                tokio::spawn(Box::pin(serve_connection(
                    shared.clone(),
                    stream,
                    peer,
                    endpoints[endpoint].tls.clone(),
                    graceful.watcher(),
                    closing_signal.clone(),
                    permit,
                )));
            }
            () = &mut shutdown => break,
        }
    }
    drop(endpoints);
    closing.fire();
    let drained = tokio::select! {
        () = graceful.shutdown() => Drained::Clean,
        () = tokio::time::sleep(options.drain_timeout) => Drained::TimedOut,
    };
    // Requests still open are dropped with the runtime; tunnels are cut
    // here, since the runtime that drives them may be a caller's.
    cut.fire();
    drained
}

/// What every connection of one listener needs.
struct Shared<H> {
    handler: H,
    http1: http1::Builder,
    http2: Http2Settings,
    header_read_timeout: Duration,
    send_timeout: Duration,
    proxy_protocol: Option<ProxyProtocol>,
    metrics: Metrics,
    access_log: Option<AccessLog>,
    /// Whether plain connections may speak h2c.
    h2c: bool,
    /// How long an idle HTTP/1.1 connection stays with hyper.
    park_after: Duration,
    /// Completes when the drain is over: open tunnels are cut.
    cut: Signal,
}

/// The HTTP/2 connection preface: a client speaking h2c with prior
/// knowledge starts with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one client connection: on a TLS listener the handshake comes
/// first; then HTTP/1.1 or HTTP/2 by ALPN, or on plain TCP by the first
/// bytes; then hyper.
async fn serve_connection<H, F>(
    shared: Arc<Shared<H>>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsTerminator>,
    // Held until the connection ends: the drain waits for every watcher.
    _watcher: Watcher,
    closing: Signal,
    // Returned to the connection budget when the connection ends.
    _permit: Option<OwnedSemaphorePermit>,
) where
    H: Fn(Request<Incoming>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let Some(((peer, forwarded_for), transport, first, h2)) =
        open_connection(&shared, stream, peer, tls, &closing).await
    else {
        return;
    };
    let conn = Conn {
        peer,
        tls: transport.is_tls(),
        forwarded_for,
    };
    let state = Arc::new(ConnState::new(shared.metrics.clone()));
    let io = TokioIo::new(ClientStream {
        stream: transport,
        ahead: first,
        send_timer: IdleTimer::new(shared.send_timeout),
        replace_parser_errors: !h2,
        held: None,
        state: state.clone(),
        upgraded: false,
    });
    let service = request_service(shared.clone(), conn, h2, &state);
    let result = if h2 {
        // Boxed: hyper's HTTP/2 connection is large, and inline it would
        // be part of every connection's state, idle HTTP/1.1 ones too.
        Box::pin(async {
            let stalls = Arc::new(Stalls::default());
            let exec = StreamExec::new(shared.send_timeout, stalls.clone(), &shared.metrics);
            let conn = http2_builder(shared.http2, exec).serve_connection(io, service);
            drive_h2(conn, &state, &stalls, shared.header_read_timeout, closing).await
        })
        .await
    } else {
        serve_h1(&shared, io.into_inner(), service, &state, peer, closing).await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Serves an HTTP/1.1 connection to its end. Between two requests it
/// waits outside hyper, holding no buffer ([`park`]); the next bytes go
/// to a new hyper connection.
async fn serve_h1<H, S>(
    shared: &Shared<H>,
    mut io: ClientStream,
    mut service: S,
    state: &Arc<ConnState>,
    peer: SocketAddr,
    closing: Signal,
) -> Result<(), hyper::Error>
where
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Unpin,
    S::Error: Into<BoxError>,
{
    let mut http1 = shared.http1.clone();
    http1.timer(HeadTimer::new(state.clone(), shared.park_after));
    loop {
        // Boxed, and dropped while the connection waits: hyper's state and
        // buffers are what an idle connection no longer holds.
        let conn = Box::new(http1.serve_connection(TokioIo::new(io), service));
        let parts = match drive_h1(conn, state, closing.clone(), shared.cut.clone()).await {
            H1End::Parked(parts) => parts,
            H1End::Closed(result, refused) => {
                if let (Some(log), Some(refused)) = (&shared.access_log, refused) {
                    parser_refusal::log(log, peer.ip(), &refused);
                }
                return result;
            }
        };
        state.park.set_parking(false);
        service = parts.service;
        io = parts.io.into_inner();
        if parts.read_buf.is_empty() {
            // Empty, but still a view of hyper's whole read buffer: it
            // goes before the wait, or the wait holds those 8 KiB.
            drop(parts.read_buf);
            // hyper's header timer ran for the grace period already.
            let left = shared.header_read_timeout.saturating_sub(shared.park_after);
            let deadline = Instant::now() + left;
            if park::wait(&io.stream, deadline, &closing).await == Woken::Close {
                return Ok(());
            }
        } else {
            // A pipelined head begun: hyper's next connection reads it
            // first (and, having served nothing yet, is not handed back
            // before it is whole).
            io.ahead = parts.read_buf;
        }
    }
}

/// Everything before the first request: the PROXY header, then the TLS
/// handshake or the first bytes of a plain connection (and only they are
/// read), within one deadline, so a client that connects and stays
/// silent holds a connection for `header_read_timeout` at most. Returns
/// the client (the one the balancer in front names, with PROXY), the
/// transport, the bytes read ahead and whether it speaks HTTP/2; `None`
/// if the connection ended, went silent, or the drain began first.
async fn open_connection<H>(
    shared: &Shared<H>,
    mut stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsTerminator>,
    closing: &Signal,
) -> Option<((SocketAddr, bool), Transport, Bytes, bool)> {
    let deadline = Instant::now() + shared.header_read_timeout;
    let peer = match &shared.proxy_protocol {
        None => (peer, true),
        Some(pp) => tokio::select! {
            biased;
            () = closing.clone().wait() => return None,
            client = pp.accept(&mut stream, peer, deadline, &shared.metrics) => client?,
        },
    };
    // The TLS handshake is boxed (rustls' state is large); a plain
    // connection allocates nothing for this step.
    let opened = match tls {
        None => futures_util::future::Either::Left(sniff_plain(stream, deadline, shared.h2c)),
        Some(tls) => futures_util::future::Either::Right(Box::pin(handshake(
            tls,
            stream,
            deadline,
            shared.metrics.clone(),
        ))),
    };
    let (transport, first, h2) = tokio::select! {
        biased;
        () = closing.clone().wait() => return None,
        opened = opened => opened?,
    };
    Some((peer, transport, first, h2))
}

/// The per-request service of one connection: the handler, the 101 that
/// hands a tunnel to the driver, and (HTTP/2) the open-request count the
/// connection's idle timer reads.
fn request_service<H, F>(
    shared: Arc<Shared<H>>,
    conn: Conn,
    h2: bool,
    state: &Arc<ConnState>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
where
    H: Fn(Request<Incoming>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = shared;
    let counted = h2.then(|| state.clone());
    let upgrades = state.clone();
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        // HTTP/2 only: the connection's idle timer needs to know when no
        // request is open (HTTP/1.1 has hyper's own).
        let open = counted.as_ref().map(|s| OpenRequest::new(s.clone()));
        // HTTP/1.1 with `Upgrade` (hyper marks it, and will switch the
        // connection on a 101 to it): the 101 may carry a tunnel. Any
        // other request pays only this look into empty extensions.
        // (HTTP/2 marks extended CONNECT the same way; not an upgrade.)
        if !h2 {
            upgrades.park.served();
        }
        let switching = (!h2
            && req
                .extensions()
                .get::<hyper::upgrade::OnUpgrade>()
                .is_some())
        .then(|| upgrades.clone());
        async move {
            // Boxed: the handler's future is a few KB, and inline in this
            // one it would be copied each time hyper moves this future.
            let mut response = Box::pin((handler.handler)(req, conn)).await;
            // The tunnel is run by the driver once hyper has sent the 101.
            if let Some(state) = switching {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(tunnel) = response.extensions_mut().remove::<Tunnel>() {
                        state.hand_over(tunnel);
                    }
                }
            }
            Ok::<_, Infallible>(match open {
                Some(mut open) => {
                    // Built inside the stream's task, where its guard is.
                    open.watch = StreamWatch::current();
                    response.map(|body| Body::new(crate::body::Watched::new(body, open)))
                }
                None => response,
            })
        }
    })
}

/// A connection's bytes, what was read of them ahead, and whether they
/// are HTTP/2; `None` if the connection ended or went silent first.
type Opened = Option<(Transport, Bytes, bool)>;

/// Plain TCP: reads the first bytes to tell HTTP/1.1 from h2c (when `h2c`
/// is allowed; otherwise a preface goes to the HTTP/1.1 parser, which
/// refuses it as an HTTP/1.1-only server does).
///
/// hyper-util's auto-detecting server read at most 24 bytes for that, so
/// every connection took two reads before a request could be parsed; one
/// read of up to 4 KiB usually holds the whole request head.
async fn sniff_plain(mut stream: TcpStream, deadline: Instant, h2c: bool) -> Opened {
    let mut first = BytesMut::with_capacity(4096);
    loop {
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed, or silent until the header timeout.
            _ => return None,
        }
        if first.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&first) {
            break;
        }
    }
    let h2 = h2c && first.starts_with(H2_PREFACE);
    Some((Transport::Plain(stream), first.freeze(), h2))
}

/// TLS: the handshake, then HTTP/2 if ALPN chose `h2`, else HTTP/1.1.
async fn handshake(
    tls: TlsTerminator,
    stream: TcpStream,
    deadline: Instant,
    metrics: Metrics,
) -> Opened {
    let stream = tls.handshake(stream, deadline, &metrics).await.ok()?;
    let h2 = crate::tls::server::negotiated_h2(&stream);
    Some((Transport::Tls(Box::new(stream)), Bytes::new(), h2))
}

/// How one hyper connection over a client connection ended.
enum H1End<S> {
    /// The client connection ended too (closed, failed, or became a
    /// tunnel that has now closed), with the parser's refusal if any.
    Closed(Result<(), hyper::Error>, Option<Refused>),
    /// Idle between requests, handed back by hyper ([`park`]).
    Parked(http1::Parts<TokioIo<ClientStream>, S>),
}

/// Runs an HTTP/1.1 connection until it is idle between requests and
/// handed back ([`park`]), or to its end; then sends whatever
/// [`ClientStream`] held back, or the JSON error in place of hyper's own
/// (and returns that refusal, for the access log); or, if it ended in an
/// upgrade, runs the tunnel until it closes or `cut` completes.
async fn drive_h1<S>(
    mut conn: Box<http1::Connection<TokioIo<ClientStream>, S>>,
    state: &ConnState,
    closing: Signal,
    cut: Signal,
) -> H1End<S>
where
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Unpin,
    S::Error: Into<BoxError>,
{
    let closing = closing.wait();
    tokio::pin!(closing);
    let mut draining = false;
    let result = std::future::poll_fn(|cx| {
        if !draining && closing.as_mut().poll(cx).is_ready() {
            draining = true;
            Pin::new(&mut *conn).graceful_shutdown();
        }
        state.round.fetch_add(1, Ordering::Relaxed);
        let polled = Pin::new(&mut *conn).poll(cx);
        if polled.is_pending() {
            // A response held back in this round that did not turn out to
            // be hyper's last word must go out: poll again so that hyper's
            // next flush sends it.
            if state.holding.load(Ordering::Relaxed) {
                cx.waker().wake_by_ref();
            } else if !draining && state.park.may_park() {
                // Idle: closing an idle connection writes nothing, and
                // its shutdown is not passed on to the stream.
                state.park.set_parking(true);
                draining = true;
                Pin::new(&mut *conn).graceful_shutdown();
                return Pin::new(&mut *conn).poll(cx);
            }
        }
        polled
    })
    .await;
    // hyper's connection ends without closing the socket after a 101
    // (Connection::poll leaves an upgrade to whoever takes the socket).
    let parts = (*conn).into_parts();
    if state.park.parking() && result.is_ok() {
        return H1End::Parked(parts);
    }
    let mut stream = parts.io.into_inner();
    if result.is_ok() {
        if let Some(tunnel) = state.take_tunnel() {
            stream.upgraded(parts.read_buf);
            // Boxed, like the rare path below: inline, their state would
            // be part of every connection's, idle ones included.
            Box::pin(tunnel::run(stream, tunnel, cut)).await;
            return H1End::Closed(Ok(()), None);
        }
    }
    let parse_error = result.as_ref().err().is_some_and(hyper::Error::is_parse);
    // On a parse error hyper's read buffer still holds the refused head.
    let refused = Box::pin(stream.finish(parse_error))
        .await
        .map(|(status, body_len)| Refused {
            status,
            body_len,
            head: parts.read_buf,
        });
    H1End::Closed(result, refused)
}

/// Runs an HTTP/2 connection to its end, closing it once it has had no
/// request open for `idle_timeout`, or once `stalls` says too many of its
/// streams were reset for want of window.
async fn drive_h2<S>(
    conn: http2::Connection<TokioIo<ClientStream>, S, StreamExec>,
    state: &ConnState,
    stalls: &Stalls,
    idle_timeout: Duration,
    closing: Signal,
) -> Result<(), hyper::Error>
where
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    tokio::pin!(conn);
    let closing = closing.wait();
    tokio::pin!(closing);
    let idle = tokio::time::sleep_until(state.started + idle_timeout);
    tokio::pin!(idle);
    let stalled = stalls.too_many();
    tokio::pin!(stalled);
    let mut draining = false;
    let mut cut = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            () = &mut closing, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut stalled, if !cut => {
                // A client that keeps stalling streams: GOAWAY, then
                // closed like an idle connection.
                tracing::debug!(
                    streams = h2_stall::MAX_STALLED_STREAMS,
                    "HTTP/2 connection closed: streams reset for want of window"
                );
                cut = true;
                if !draining {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                idle.as_mut().reset(Instant::now() + H2_GOAWAY_GRACE);
            }
            () = &mut idle => {
                if cut {
                    // The GOAWAY grace is over.
                    return Ok(());
                }
                let now = Instant::now();
                match state.idle_since() {
                    Some(since) if since + idle_timeout <= now => {
                        state.metrics.idle_timeout("h2_idle");
                        cut = true;
                        if !draining {
                            draining = true;
                            conn.as_mut().graceful_shutdown();
                        }
                        idle.as_mut().reset(now + H2_GOAWAY_GRACE);
                    }
                    Some(since) => idle.as_mut().reset(since + idle_timeout),
                    None => idle.as_mut().reset(now + idle_timeout),
                }
            }
        }
    }
}

/// What a connection's driver, its [`ClientStream`] and its requests share.
#[derive(Debug)]
struct ConnState {
    started: Instant,
    /// HTTP/2: requests handed to the handler whose responses have not
    /// ended.
    open: AtomicUsize,
    /// HTTP/2: milliseconds from `started` to the moment `open` last fell
    /// to zero.
    idle_since_ms: AtomicU64,
    /// HTTP/1.1: how many times the driver has polled hyper's connection.
    round: AtomicU32,
    /// HTTP/1.1: whether [`ClientStream`] holds back a response.
    holding: AtomicBool,
    /// HTTP/1.1: the tunnel of a 101 being sent, until the driver runs it.
    tunnel: Mutex<Option<Tunnel>>,
    /// Where its idle timeouts are counted.
    metrics: Metrics,
    /// HTTP/1.1: whether the connection can leave hyper while idle.
    park: park::Flags,
}

impl AsRef<park::Flags> for ConnState {
    fn as_ref(&self) -> &park::Flags {
        &self.park
    }
}

impl ConnState {
    fn new(metrics: Metrics) -> Self {
        Self {
            metrics,
            started: Instant::now(),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            round: AtomicU32::new(0),
            holding: AtomicBool::new(false),
            tunnel: Mutex::new(None),
            park: park::Flags::default(),
        }
    }

    fn hand_over(&self, tunnel: Tunnel) {
        *self.tunnel.lock().unwrap_or_else(PoisonError::into_inner) = Some(tunnel);
    }

    fn take_tunnel(&self) -> Option<Tunnel> {
        self.tunnel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Since when no request has been open, or `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        if self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.started + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)))
    }
}

/// One HTTP/2 request from the handler call to the end of its response
/// (or to the stream's reset, which drops it).
struct OpenRequest {
    state: Arc<ConnState>,
    /// Told of each frame hyper takes from the response body and each
    /// poll of it, so that a stream without window is found
    /// ([`h2_stall`]).
    watch: Option<Arc<StreamWatch>>,
}

impl OpenRequest {
    fn new(state: Arc<ConnState>) -> Self {
        state.open.fetch_add(1, Ordering::AcqRel);
        Self { state, watch: None }
    }

    fn polled(&self) {
        if let Some(watch) = &self.watch {
            watch.polled();
        }
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let state = &self.state;
        let ms = u64::try_from(state.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stored before the count falls, so a reader that sees zero sees
        // this moment or a later one.
        if state.open.load(Ordering::Acquire) == 1 {
            state.idle_since_ms.store(ms, Ordering::Release);
        }
        state.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps an HTTP/2 request counted as open until its response body ends
/// (or is dropped), and tells the stream's guard what hyper takes.
impl crate::body::Hooks for OpenRequest {
    fn frame(&mut self, frame: &http_body::Frame<Bytes>, _end: bool) {
        if let Some(watch) = &self.watch {
            watch.took(frame);
        }
    }

    fn error(&mut self) {
        self.polled();
    }

    fn end(&mut self) {
        self.polled();
    }

    fn pending(&mut self, _cx: &mut Context<'_>) -> Poll<BoxError> {
        self.polled();
        Poll::Pending
    }
}

/// A client connection as hyper sees it: the bytes read ahead come first;
/// a write that stays blocked for `send_timeout` fails; on HTTP/1.1,
/// what looks like hyper's own empty error answer is held back until the
/// connection shows whether it was (see [`Held`]); and shutting down the
/// write side of plain TCP is left to `close`, which sends the same FIN
/// when the connection is dropped right after (one system call fewer per
/// connection); over TLS the shutdown goes through, so that the client
/// gets its close_notify.
struct ClientStream {
    stream: Transport,
    ahead: Bytes,
    /// Runs while a write is blocked (`send_timeout`).
    send_timer: IdleTimer,
    replace_parser_errors: bool,
    held: Option<Held>,
    state: Arc<ConnState>,
    /// A tunnel now: a shutdown is passed on even on plain TCP (it is the
    /// half-close of the other side).
    upgraded: bool,
}

/// A response shaped like the one hyper writes by itself when its HTTP/1.1
/// parser refuses a request: status 400, 414 or 431, no body, no headers
/// but `content-length: 0`, `connection` and `date`.
///
/// hyper writes that answer only when no response of the handler is
/// being written (its parser reads the next request only after the last
/// response was sent whole), and right after it, in the same poll, the
/// connection ends with a parse error. So a held response is replaced
/// only when the connection ended with a parse error in the round it was
/// written in and nothing was written after it; in any other case (a
/// backend's own empty 400 looks the same) it goes out unchanged, at the
/// latest on hyper's flush in the next round.
struct Held {
    bytes: Vec<u8>,
    sent: usize,
    round: u32,
}

/// Longest response [`looks_like_parser_error`] considers.
const MAX_PARSER_ERROR_LEN: usize = 256;

/// Whether `bytes` is exactly one response shaped like hyper's own parser
/// error answer (see [`Held`]).
fn looks_like_parser_error(bytes: &[u8]) -> bool {
    if bytes.len() > MAX_PARSER_ERROR_LEN {
        return false;
    }
    let Some(head) = bytes.strip_suffix(b"\r\n\r\n") else {
        return false;
    };
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let Some(status) = lines.next().and_then(|l| l.strip_prefix(b"HTTP/1.1 ")) else {
        return false;
    };
    if ![&b"400 "[..], b"414 ", b"431 "]
        .iter()
        .any(|code| status.starts_with(code))
    {
        return false;
    }
    lines.all(|line| {
        let lower = line.to_ascii_lowercase();
        lower == b"content-length: 0"
            || lower.starts_with(b"connection: ")
            || lower.starts_with(b"date: ")
    })
}

/// The JSON answer in place of hyper's empty `held` one: same status line
/// and date, a body saying what was wrong, and the connection closing.
/// Returns the status, the answer and the length of its body.
fn json_parser_error(held: &[u8]) -> Option<(u16, Vec<u8>, usize)> {
    let head = std::str::from_utf8(held).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code: u16 = status_line.get(9..12)?.parse().ok()?;
    let status = StatusCode::from_u16(code).ok()?;
    let date = lines.find(|l| l.to_ascii_lowercase().starts_with("date: "));
    let body = crate::error::parser_error_body(status);
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if let Some(date) = date {
        out.push_str(date);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some((code, out.into_bytes(), body.len()))
}

/// Longest a refused client gets to read its error answer before the
/// connection is closed.
const LINGER: Duration = Duration::from_secs(1);

impl ClientStream {
    /// Turns the connection into one side of a tunnel: `read_buf`, what
    /// hyper read past the upgrade request, comes first; writes go out as
    /// they are.
    fn upgraded(&mut self, read_buf: Bytes) {
        self.replace_parser_errors = false;
        self.upgraded = true;
        if self.ahead.is_empty() {
            self.ahead = read_buf;
        } else if !read_buf.is_empty() {
            let mut joined = BytesMut::with_capacity(read_buf.len() + self.ahead.len());
            joined.extend_from_slice(&read_buf);
            joined.extend_from_slice(&self.ahead);
            self.ahead = joined.freeze();
        }
    }

    /// A write to the socket, failing once blocked for `send_timeout`.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut Transport>, &mut Context<'_>) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(r) = write(Pin::new(&mut self.stream), cx) {
            self.send_timer.progress();
            return Poll::Ready(r);
        }
        ready!(self.send_timer.poll_expired(cx));
        self.state.metrics.idle_timeout("send");
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client took no response bytes for send_timeout",
        )))
    }

    /// Sends the held response as it is.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some(mut held) = self.held.take() {
            let polled = self.poll_send(cx, |s, cx| s.poll_write(cx, &held.bytes[held.sent..]));
            let n = match polled {
                Poll::Ready(Ok(0)) => Err(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(r) => r,
                Poll::Pending => {
                    self.held = Some(held);
                    return Poll::Pending;
                }
            };
            match n {
                Ok(n) => held.sent += n,
                Err(e) => {
                    self.held = Some(held);
                    return Poll::Ready(Err(e));
                }
            }
            if held.sent < held.bytes.len() {
                self.held = Some(held);
            } else {
                self.state.holding.store(false, Ordering::Relaxed);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Holds `bufs` back if, together, they look like hyper's parser error
    /// answer; `false` if they do not. Cheap for every other write: the
    /// first bytes decide.
    fn hold(&mut self, bufs: &[std::io::IoSlice<'_>]) -> bool {
        if !self.replace_parser_errors || self.held.is_some() {
            return false;
        }
        if !bufs.first().is_some_and(|b| b.starts_with(b"HTTP/1.1 4")) {
            return false;
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if len > MAX_PARSER_ERROR_LEN {
            return false;
        }
        let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
        if !looks_like_parser_error(&joined) {
            return false;
        }
        self.held = Some(Held {
            bytes: joined,
            sent: 0,
            round: self.state.round.load(Ordering::Relaxed),
        });
        self.state.holding.store(true, Ordering::Relaxed);
        true
    }

    /// After the connection ended: the JSON answer in place of a held
    /// parser error (`parse_error`: the connection ended with one), or the
    /// held response as it was; then the shutdown hyper's was held back
    /// for, and a short linger so that the client reads the answer before
    /// the close. Returns the status and body bytes sent of a JSON answer.
    async fn finish(&mut self, parse_error: bool) -> Option<(u16, u64)> {
        let held = self.held.take()?;
        let current = held.round == self.state.round.load(Ordering::Relaxed);
        let json = (parse_error && current && held.sent == 0)
            .then(|| json_parser_error(&held.bytes))
            .flatten();
        let (answer, refused) = match json {
            Some((status, answer, body_len)) => (answer, Some((status, body_len as u64))),
            None => (
                held.bytes
                    .get(held.sent..)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
                None,
            ),
        };
        let sent =
            tokio::time::timeout(self.send_timer.timeout(), self.stream.write_all(&answer)).await;
        if !matches!(sent, Ok(Ok(()))) {
            // Refused all the same; the client did not take the answer.
            return refused.map(|(status, _)| (status, 0));
        }
        // Closing with unread request bytes (the rest of an oversized
        // head) would reset the connection and could destroy the answer
        // before the client reads it: send FIN, then read and discard
        // until the client closes, for at most LINGER.
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        refused
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ahead.is_empty() {
            let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
            self.state.park.read(polled.is_pending());
            return polled;
        }
        let n = self.ahead.len().min(buf.remaining());
        buf.put_slice(&self.ahead.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.state.park.flushed(false);
        ready!(this.poll_release(cx))?;
        if this.hold(&[std::io::IoSlice::new(buf)]) {
            return Poll::Ready(Ok(buf.len()));
        }
        this.poll_send(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.state.park.flushed(false);
        ready!(this.poll_release(cx))?;
        if this.hold(bufs) {
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        this.poll_send(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let round = this.state.round.load(Ordering::Relaxed);
        if this.held.as_ref().is_some_and(|h| h.round != round) {
            ready!(this.poll_release(cx))?;
        }
        let flushed = Pin::new(&mut this.stream).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.state.park.flushed(true);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.state.park.parking() {
            // hyper lets go of an idle connection: it stays open.
            return Poll::Ready(Ok(()));
        }
        if self.held.is_some() {
            // hyper shuts the connection right after writing its parser
            // error answer, which is held back: a TLS close_notify now
            // would end the stream before [`ClientStream::finish`] writes
            // the answer, so that shutdown is left to `finish`.
            return Poll::Ready(Ok(()));
        }
        let upgraded = self.upgraded;
        match &mut self.stream {
            plain @ Transport::Plain(_) if upgraded => Pin::new(plain).poll_shutdown(cx),
            Transport::Plain(_) => Poll::Ready(Ok(())),
            // close_notify tells the client the response ended here and was
            // not cut (a body delimited by the close depends on it).
            tls @ Transport::Tls(_) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}

/// Opens `n` listening sockets on `addr` with `SO_REUSEPORT`, so the
/// kernel spreads new connections across them. With port 0 the first
/// socket picks the port and the others join it.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves each set of listeners on its own thread with a single-threaded
/// runtime (thread per core, like nginx's workers); a thread's set is its
/// `SO_REUSEPORT` share of every address (plain and TLS).
///
/// A proxy request hops between the client connection's task and the
/// backend connection's task several times; on a work-stealing runtime
/// those hops wake other threads, and with two cores the futex wake-ups
/// and context switches were the largest cost measured. Here a connection
/// and the backend connections it uses live on one thread.
///
/// `make_handler` runs once on each thread, so per-thread state (such as a
/// connection pool) stays on that thread. Returns one handle per thread,
/// which reports how its drain ended.
pub fn serve_per_core<M, H, F>(
    threads: Vec<Vec<Listener>>,
    make_handler: M,
    options: ServeOptions,
    shutdown: Signal,
) -> std::io::Result<Vec<std::thread::JoinHandle<Drained>>>
where
    M: Fn() -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let make_handler = Arc::new(make_handler);
    threads
        .into_iter()
        .enumerate()
        .map(|(i, listeners)| {
            let make_handler = make_handler.clone();
            let shutdown = shutdown.clone();
            let options = options.clone();
            std::thread::Builder::new()
                .name(format!("tollgate-proxy-{i}"))
                .spawn(move || {
                    on_proxy_runtime(async move {
                        serve_all(listeners, make_handler(), options, shutdown.wait())
                            .await
                            .unwrap_or_else(|e| {
                                tracing::error!(error = %e, "cannot register the listeners");
                                Drained::TimedOut
                            })
                    })
                })
        })
        .collect()
}

/// Runs `serve` to its end on a current-thread runtime of the calling
/// thread: what every thread that serves clients (HTTP/1.1 and HTTP/2
/// per core, HTTP/3) runs on. The thread's periodic allocator collect
/// ([`crate::memory`]) runs beside it and ends with the runtime.
pub(crate) fn on_proxy_runtime(serve: impl Future<Output = Drained>) -> Drained {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a proxy thread's runtime");
            return Drained::TimedOut;
        }
    };
    rt.spawn(crate::memory::collect_periodically());
    rt.block_on(serve)
}
