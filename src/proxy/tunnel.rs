//! Upgraded connections (WebSocket and any other `Upgrade`): which
//! requests ask for one, how the request path hands a switched backend
//! connection to the client connection, and the tunnel that copies bytes
//! both ways afterwards.
//!
//! An HTTP/1.1 request with `Upgrade` and the `upgrade` option in
//! `Connection` goes to the backend with those two headers (they are
//! hop-by-hop and would otherwise be dropped). When the backend answers
//! 101 for a protocol the client asked for, the request path returns the
//! 101 with a [`Tunnel`] in its extensions: the backend's side of the
//! switch and the request's in-flight guard. The server takes it off the
//! response before hyper writes it, lets hyper end the HTTP exchange, takes
//! the client's socket back and runs [`run`] in the connection's own task.
//!
//! The demo backend answers its own WebSocket upgrades through the same
//! server: its 101 carries a [`Tunnel::local`], a function given the
//! client's socket.
//!
//! Why in the connection's task rather than `hyper::upgrade::on` and a task
//! of its own: the connection task holds the graceful drain's watcher and
//! the connection budget's permit, so an open tunnel is waited for at
//! shutdown (until `drain_timeout`) and counts as an open connection, with
//! no second bookkeeping of tunnels.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::balancer::InFlight;
use crate::shutdown::Signal;
use crate::telemetry::Metrics;

/// The protocols an HTTP/1.1 request asks to switch to (its `Upgrade`
/// lines, joined), if it asks: `Upgrade` alone is not enough, the
/// `Connection` header must name it too (RFC 9110 §7.8), or the sender
/// did not mean it for this hop.
pub(crate) fn requested(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let mut lines = headers.get_all(header::UPGRADE).iter();
    let first = lines.next()?;
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|option| option.trim().eq_ignore_ascii_case("upgrade"));
    if !named {
        return None;
    }
    let mut joined = first.as_bytes().to_vec();
    for line in lines {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

/// Puts the upgrade back on a request or response whose hop-by-hop
/// headers were stripped: `Connection: upgrade` and `Upgrade: protocols`.
pub(crate) fn restore(headers: &mut HeaderMap, protocols: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocols);
}

/// Whether a 101's `Upgrade` (`answered`) names only protocols the client
/// asked for (RFC 9110 §7.8: the server switches to one it was offered).
/// Protocol names compare without regard to case ("WebSocket").
pub(crate) fn accepted(asked: &HeaderValue, answered: Option<&HeaderValue>) -> bool {
    let list = |v: &HeaderValue| -> Option<Vec<String>> {
        let text = v.to_str().ok()?;
        Some(
            text.split(',')
                .map(|p| p.trim().to_ascii_lowercase())
                .filter(|p| !p.is_empty())
                .collect(),
        )
    };
    let (Some(asked), Some(answered)) = (list(asked), answered.and_then(list)) else {
        return false;
    };
    !answered.is_empty() && answered.iter().all(|p| asked.contains(p))
}

/// What a 101 switches the client connection to, on its way from the
/// handler to the client connection (in the 101's extensions, which need
/// `Clone`: hence the shared slot, taken once).
#[derive(Clone)]
pub struct Tunnel(Arc<Mutex<Option<Side>>>);

enum Side {
    /// Bytes copied to and from a backend that switched.
    Backend(BackendSide),
    /// This process speaks the new protocol itself (the demo backend).
    Local(LocalHandler),
}

/// A function serving an upgraded client connection in this process.
type LocalHandler = Box<dyn FnOnce(ClientIo) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// An upgraded client connection, as a [`Tunnel::local`] function gets it
/// (bytes the client sent right after its request come first).
pub struct ClientIo(Box<dyn Io>);

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl std::fmt::Debug for ClientIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIo").finish_non_exhaustive()
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

struct BackendSide {
    upgrade: OnUpgrade,
    /// Held for the tunnel's life: `least_connections` and `p2c` see an
    /// open tunnel as load on its backend.
    in_flight: InFlight,
    idle_timeout: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").finish_non_exhaustive()
    }
}

impl Tunnel {
    /// The backend's side of a switch (`upgrade`, from its 101), with the
    /// request's in-flight guard; closed after `idle_timeout` without a
    /// byte either way.
    pub(crate) fn new(
        upgrade: OnUpgrade,
        in_flight: InFlight,
        idle_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        Self(Arc::new(Mutex::new(Some(Side::Backend(BackendSide {
            upgrade,
            in_flight,
            idle_timeout,
            metrics,
        })))))
    }

    /// A switch served in this process: `serve` gets the client's
    /// connection once the 101 has been sent, and runs until it returns or
    /// the drain at shutdown times out.
    pub fn local<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(ClientIo) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler: LocalHandler = Box::new(move |io| Box::pin(serve(io)));
        Self(Arc::new(Mutex::new(Some(Side::Local(handler)))))
    }

    fn take(&self) -> Option<Side> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Copies bytes between `client` and the backend of `tunnel` until either
/// side closes or fails, no byte has passed either way for the idle
/// timeout, or `cut` completes (the drain timeout at shutdown).
///
/// A side's close is passed on (the other side's write is shut down once
/// everything read before it is written), then the tunnel ends. Waiting
/// for the other direction as well would keep a tunnel whose client never
/// closes its end (a WebSocket client leaves that to the server) open
/// until the idle timeout, counted in flight all along.
pub(crate) async fn run<C>(client: C, tunnel: Tunnel, cut: Signal)
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let side = match tunnel.take() {
        None => return,
        Some(Side::Backend(side)) => side,
        Some(Side::Local(serve)) => {
            tokio::select! {
                () = serve(ClientIo(Box::new(client))) => {}
                () = cut.wait() => {}
            }
            return;
        }
    };
    let _in_flight = side.in_flight;
    let _open = side.metrics.open_tunnel();
    let cut = cut.wait();
    tokio::pin!(cut);
    // The backend's connection task hands its socket over as soon as it
    // has read the 101; a client leaving meanwhile is not waited on.
    let backend = tokio::select! {
        upgraded = side.upgrade => match upgraded {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "backend connection lost before the tunnel opened");
                return;
            }
        },
        () = &mut cut => return,
    };
    let cut_idle = side.metrics.idle_timeouts("upgrade");
    relay(client, backend, (side.idle_timeout, cut_idle), cut).await;
}

/// Copies both ways until a side closes, the tunnel is idle for
/// `idle_timeout`, or `cut` completes.
async fn relay<C, B>(
    client: C,
    backend: B,
    (idle_timeout, cut_idle): (Duration, metrics::Counter),
    mut cut: std::pin::Pin<&mut impl Future<Output = ()>>,
) where
    C: AsyncRead + AsyncWrite + Send + Unpin,
    B: AsyncRead + AsyncWrite + Send + Unpin,
{
    let activity = Activity::new();
    let (mut client_reads, mut client_writes) = tokio::io::split(Watched {
        io: client,
        activity: &activity,
    });
    let (mut backend_reads, mut backend_writes) = tokio::io::split(Watched {
        io: backend,
        activity: &activity,
    });
    let up = async {
        let copied = tokio::io::copy(&mut client_reads, &mut backend_writes).await;
        let _ = backend_writes.shutdown().await;
        ("client", copied)
    };
    let down = async {
        let copied = tokio::io::copy(&mut backend_reads, &mut client_writes).await;
        let _ = client_writes.shutdown().await;
        ("backend", copied)
    };
    let copy = async {
        tokio::select! {
            ended = up => ended,
            ended = down => ended,
        }
    };
    tokio::pin!(copy);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            (side, copied) = &mut copy => {
                match copied {
                    Ok(bytes) => tracing::debug!(side, bytes, "tunnel closed"),
                    Err(e) => tracing::debug!(side, error = %e, "tunnel ended with an error"),
                }
                return;
            }
            () = &mut idle => {
                let due = activity.last() + idle_timeout;
                if due <= Instant::now() {
                    cut_idle.increment(1);
                    tracing::debug!("tunnel closed after proxy.upgrade_idle_timeout without a byte");
                    return;
                }
                idle.as_mut().reset(due);
            }
            () = cut.as_mut() => {
                tracing::debug!("tunnel cut at the end of the drain");
                return;
            }
        }
    }
}

/// When a byte last passed through a tunnel, either way: one clock for
/// both directions, read only when the idle timer fires.
struct Activity {
    started: Instant,
    /// Milliseconds from `started`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One side of a tunnel, noting every read that brought bytes (every byte
/// written was read from the other side first).
struct Watched<'a, T> {
    io: T,
    activity: &'a Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn an_upgrade_needs_both_headers_and_http_1_1() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            requested(Version::HTTP_11, &ws),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(requested(Version::HTTP_10, &ws), None);
        assert_eq!(requested(Version::HTTP_2, &ws), None);
        let unnamed = headers(&[("connection", "keep-alive"), ("upgrade", "websocket")]);
        assert_eq!(requested(Version::HTTP_11, &unnamed), None);
        let no_protocol = headers(&[("connection", "upgrade")]);
        assert_eq!(requested(Version::HTTP_11, &no_protocol), None);
        let two = headers(&[
            ("connection", "upgrade"),
            ("upgrade", "a/1"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            requested(Version::HTTP_11, &two),
            Some(HeaderValue::from_static("a/1, websocket"))
        );
    }

    #[test]
    fn a_switch_must_be_to_a_protocol_asked_for() {
        let asked = HeaderValue::from_static("foo/2, WebSocket");
        let answer = |v: &'static str| accepted(&asked, Some(&HeaderValue::from_static(v)));
        assert!(answer("websocket"));
        assert!(answer("FOO/2"));
        assert!(!answer("h2c"));
        assert!(!answer("websocket, h2c"));
        assert!(!answer(""));
        assert!(!accepted(&asked, None));
    }
}
