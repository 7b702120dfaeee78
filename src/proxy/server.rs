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

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

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
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one
    // system call here instead of one per connection.
    if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY on the listener");
    }
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let shared = Arc::new(Shared {
        handler,
        http1,
        http2,
        header_read_timeout: options.header_read_timeout,
    });
    let graceful = GracefulShutdown::new();
    // Connections still waiting for their first bytes are not yet watched
    // by `graceful`; this tells them to give up.
    let (closing, closing_signal) = crate::shutdown::channel();
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
                // Boxed: the connection future holds hyper's connection
                // state (several KB), and tokio moves a task's future a few
                // times while spawning and finishing it. Behind a pointer
                // each move copies 16 bytes; inline the copies cost ~2,200
                // instructions per connection (callgrind, ab -c 50).
                tokio::spawn(Box::pin(serve_connection(
                    shared.clone(),
                    stream,
                    peer,
                    graceful.watcher(),
                    closing_signal.clone(),
                )));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    closing.fire();
    tokio::select! {
        () = graceful.shutdown() => Drained::Clean,
        () = tokio::time::sleep(options.drain_timeout) => Drained::TimedOut,
    }
}

/// What every connection of one listener needs.
struct Shared<H> {
    handler: H,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
}

/// The HTTP/2 connection preface: a client speaking h2c with prior
/// knowledge starts with it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves one client connection: reads the first bytes to tell HTTP/1.1
/// from h2c, then hands the connection to hyper.
///
/// hyper-util's auto-detecting server read at most 24 bytes for that, so
/// every connection took two reads before a request could be parsed; one
/// read of up to 4 KiB usually holds the whole request head.
async fn serve_connection<H, F>(
    shared: Arc<Shared<H>>,
    mut stream: TcpStream,
    peer: SocketAddr,
    watcher: Watcher,
    closing: Signal,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let mut first = BytesMut::with_capacity(4096);
    let deadline = tokio::time::Instant::now() + shared.header_read_timeout;
    let read_first = async {
        loop {
            match tokio::time::timeout_at(deadline, stream.read_buf(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed, or silent until the header timeout.
                _ => return false,
            }
            if first.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&first) {
                return true;
            }
        }
    };
    tokio::select! {
        biased;
        () = closing.wait() => return,
        ok = read_first => if !ok { return },
    }
    let h2 = first.starts_with(H2_PREFACE);
    let io = TokioIo::new(ClientStream {
        stream,
        ahead: first.freeze(),
    });
    let handler = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>((handler.handler)(req, peer).await) }
    });
    let result = if h2 {
        watcher
            .watch(shared.http2.serve_connection(io, service))
            .await
    } else {
        watcher
            .watch(shared.http1.serve_connection(io, service))
            .await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A client connection as hyper sees it: the bytes read ahead come first,
/// and shutting down the write side is left to `close`, which sends the
/// same FIN when the connection is dropped right after (one system call
/// fewer per connection).
struct ClientStream {
    stream: TcpStream,
    ahead: Bytes,
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.ahead.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
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
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
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
