//! Accepting connections and draining them on shutdown.
//!
//! Follows hyper-util's `server_graceful` pattern: every connection is
//! watched by a [`GracefulShutdown`]; when the shutdown future completes the
//! listener is closed (new connections are refused), idle keep-alive
//! connections are closed, and requests already accepted may finish until
//! `drain_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::Body;
use crate::shutdown::Signal;

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Time accepted requests get to finish after shutdown starts.
    pub drain_timeout: Duration,
}

/// Whether every accepted connection finished within the drain timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// All connections closed in time.
    Clean,
    /// Some were still open at `drain_timeout` and were cut.
    TimedOut,
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
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors or a connection reset before
                        // accept: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req, peer).await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => Drained::Clean,
        () = tokio::time::sleep(options.drain_timeout) => Drained::TimedOut,
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

/// Serves each listener on its own thread with a single-threaded runtime
/// (thread per core, like nginx's workers).
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
    listeners: Vec<std::net::TcpListener>,
    make_handler: M,
    options: ServeOptions,
    shutdown: Signal,
) -> std::io::Result<Vec<std::thread::JoinHandle<Drained>>>
where
    M: Fn() -> H + Send + Sync + 'static,
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let make_handler = Arc::new(make_handler);
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let make_handler = make_handler.clone();
            let shutdown = shutdown.clone();
            std::thread::Builder::new()
                .name(format!("tollgate-proxy-{i}"))
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start a proxy thread runtime");
                            return Drained::TimedOut;
                        }
                    };
                    rt.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot register the listener");
                                return Drained::TimedOut;
                            }
                        };
                        serve(listener, make_handler(), options, shutdown.wait()).await
                    })
                })
        })
        .collect()
}
