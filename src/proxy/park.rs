//! Idle HTTP/1.1 client connections wait outside hyper.
//!
//! hyper's HTTP/1.1 server keeps, for every connection it serves, an 8 KiB
//! read buffer, an 8 KiB buffer for response heads, the header map of the
//! last response kept for reuse, its header timer and its own state: about
//! 26 KiB per kept-alive connection doing nothing (see
//! `scripts/idle_memory.py` and docs/benchmarks.md), where nginx holds
//! under 1 KiB. None of that can be shrunk from outside, so a connection
//! that falls idle between two requests leaves hyper instead: hyper is
//! told to close it (a graceful shutdown of an idle connection writes
//! nothing), the socket is taken back before it is shut, and the
//! connection's task waits for the next bytes with no buffer at all. When
//! they come, a new hyper connection takes over the socket.
//!
//! "Idle" is hyper's own notion, read off its header timer: hyper starts
//! that timer when it begins to wait for a request head, which it does
//! only once the previous exchange is over (request body read, response
//! written), and drops it once a head is parsed ([`HeadTimer`]). A
//! connection is handed back when hyper waits for a head, its last read
//! found nothing, everything it wrote went out (its last call was a
//! successful flush), no response is held back, and this hyper connection
//! has served a request; see [`Flags::may_park`]. The last condition keeps
//! a client that sends a head piecemeal with the same hyper connection:
//! such a connection is never handed back before its request is whole.
//!
//! Time stays as it was: `header_read_timeout` still runs from the moment
//! the connection fell idle to the end of the next request head, the wait
//! outside hyper counting against it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

use super::transport::Transport;
use crate::shutdown::Signal;

/// What tells whether a connection can leave hyper. Shared by the
/// connection's driver, its stream and its header timer, all on one task.
#[derive(Debug)]
pub(super) struct Flags {
    /// hyper waits for a request head (its header timer exists).
    head_wait: AtomicBool,
    /// hyper's last read found no bytes.
    read_blocked: AtomicBool,
    /// hyper's last call on the stream was a flush that completed: its
    /// write buffer is empty.
    flushed: AtomicBool,
    /// This hyper connection has served a request.
    served: AtomicBool,
    /// hyper is being told to let go: its shutdown of the stream is not
    /// passed on.
    parking: AtomicBool,
}

impl Default for Flags {
    fn default() -> Self {
        Self {
            head_wait: AtomicBool::new(false),
            read_blocked: AtomicBool::new(false),
            flushed: AtomicBool::new(true),
            served: AtomicBool::new(false),
            parking: AtomicBool::new(false),
        }
    }
}

impl Flags {
    /// A read found no bytes (`true`) or some.
    pub(super) fn read(&self, blocked: bool) {
        self.read_blocked.store(blocked, Ordering::Relaxed);
    }

    /// hyper wrote (`false`) or completed a flush (`true`).
    pub(super) fn flushed(&self, flushed: bool) {
        self.flushed.store(flushed, Ordering::Relaxed);
    }

    /// A request head was parsed and handed to the service.
    pub(super) fn served(&self) {
        self.served.store(true, Ordering::Relaxed);
    }

    /// Whether hyper, just polled to `Pending`, sits idle between two
    /// requests with nothing buffered either way that the stream does
    /// not know of (see the module docs).
    pub(super) fn may_park(&self) -> bool {
        self.head_wait.load(Ordering::Relaxed)
            && self.read_blocked.load(Ordering::Relaxed)
            && self.flushed.load(Ordering::Relaxed)
            && self.served.load(Ordering::Relaxed)
    }

    /// Whether hyper is being told to let go of the connection.
    pub(super) fn parking(&self) -> bool {
        self.parking.load(Ordering::Relaxed)
    }

    /// Marks the start (`true`) or the end of a hand-back; the end also
    /// starts the count of the next hyper connection afresh.
    pub(super) fn set_parking(&self, parking: bool) {
        self.parking.store(parking, Ordering::Relaxed);
        if !parking {
            self.served.store(false, Ordering::Relaxed);
            self.read_blocked.store(false, Ordering::Relaxed);
        }
    }
}

/// hyper's timer for one connection: tokio's, noting in [`Flags`] while a
/// header timer exists (hyper waits for a request head).
#[derive(Debug, Clone)]
pub(super) struct HeadTimer<S> {
    owner: Arc<S>,
}

impl<S> HeadTimer<S> {
    pub(super) fn new(owner: Arc<S>) -> Self {
        Self { owner }
    }
}

impl<S: AsRef<Flags> + Send + Sync + 'static> Timer for HeadTimer<S> {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        (*self.owner).as_ref().head_wait.store(true, Ordering::Relaxed);
        Box::pin(HeadSleep {
            sleep: tokio::time::sleep_until(deadline.into()),
            _wait: HeadWait(self.owner.clone()),
        })
    }

    fn now(&self) -> Instant {
        TokioTimer::new().now()
    }
}

pin_project_lite::pin_project! {
    /// hyper's header timer; while it exists, hyper waits for a head.
    struct HeadSleep<S: AsRef<Flags>> {
        #[pin]
        sleep: tokio::time::Sleep,
        _wait: HeadWait<S>,
    }
}

/// Clears [`Flags::head_wait`] when the header timer is dropped (a head
/// was parsed, or the connection ended).
struct HeadWait<S: AsRef<Flags>>(Arc<S>);

impl<S: AsRef<Flags>> Drop for HeadWait<S> {
    fn drop(&mut self) {
        (*self.0).as_ref().head_wait.store(false, Ordering::Relaxed);
    }
}

impl<S: AsRef<Flags>> std::future::Future for HeadSleep<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.project().sleep.poll(cx)
    }
}

impl<S: AsRef<Flags> + Send + Sync + 'static> Sleep for HeadSleep<S> {}

/// How a wait outside hyper ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Woken {
    /// Bytes (or the client's close) arrived: hand the connection to a
    /// new hyper connection.
    Readable,
    /// `header_read_timeout` passed, or the drain began: close it.
    Close,
}

/// Waits, holding no buffer, until `stream` can be read, `deadline`
/// passes or `closing` completes.
pub(super) async fn wait(stream: &Transport, deadline: tokio::time::Instant, closing: &Signal) -> Woken {
    #[cfg(test)]
    let _counted = tests::Waiting::start();
    let tcp = match stream {
        Transport::Plain(tcp) => tcp,
        // A TLS stream that found no bytes holds no plaintext either
        // (tokio-rustls reads the socket only when rustls has none), so
        // the socket's readiness is the stream's.
        Transport::Tls(tls) => tls.get_ref().0,
    };
    tokio::select! {
        biased;
        () = closing.clone().wait() => Woken::Close,
        ready = tcp.readable() => match ready {
            Ok(()) => Woken::Readable,
            Err(_) => Woken::Close,
        },
        () = tokio::time::sleep_until(deadline) => Woken::Close,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use crate::proxy::server::{serve, ServeOptions};

    thread_local! {
        /// Connections of this thread's runtime waiting outside hyper.
        static WAITING: Cell<usize> = const { Cell::new(0) };
    }

    /// Counts a connection in [`WAITING`] while it lives.
    pub(super) struct Waiting;

    impl Waiting {
        pub(super) fn start() -> Self {
            WAITING.with(|w| w.set(w.get() + 1));
            Self
        }
    }

    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING.with(|w| w.set(w.get() - 1));
        }
    }

    fn waiting() -> usize {
        WAITING.with(Cell::get)
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A server answering `ok` (with the request body's length) to
    /// every request, on this thread's runtime.
    async fn server(options: ServeOptions) -> (std::net::SocketAddr, crate::shutdown::Trigger) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, signal) = crate::shutdown::channel();
        let handler = |req: http::Request<hyper::body::Incoming>, _conn| async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
            let text = format!("ok {}", body.unwrap_or(usize::MAX));
            http::Response::new(crate::body::full(text))
        };
        tokio::spawn(serve(listener, handler, options, signal.wait()));
        (addr, stop)
    }

    /// Reads one response with a body of `content-length` bytes; returns
    /// the body.
    async fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                    buf.drain(..end + 4 + len);
                    return body;
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("a response in time")
                .expect("read");
            assert!(n > 0, "closed before a whole response; got {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

    #[tokio::test]
    async fn an_idle_keep_alive_connection_waits_outside_hyper_and_is_served_again() {
        let (addr, _stop) = server(ServeOptions::default()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        s.write_all(GET).await.expect("write");
        assert_eq!(response(&mut s, &mut buf).await, "ok 0");
        until("the idle connection to leave hyper", || waiting() == 1).await;

        // The next request wakes it, and it goes back once answered.
        s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .expect("write");
        assert_eq!(response(&mut s, &mut buf).await, "ok 5");
        until("the connection to leave hyper again", || waiting() == 1).await;

        // Two requests in one write: both answered, in order.
        let two = [GET, b"POST / HTTP/1.1\r\nHost: t\r\ncontent-length: 2\r\n\r\nhi"].concat();
        s.write_all(&two).await.expect("write");
        assert_eq!(response(&mut s, &mut buf).await, "ok 0");
        assert_eq!(response(&mut s, &mut buf).await, "ok 2");
        until("the connection to leave hyper after the pair", || waiting() == 1).await;

        // A head in two pieces: the first wakes the connection, which
        // stays with hyper until the head is whole.
        s.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
        until("the first piece to wake the connection", || waiting() == 0).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(waiting(), 0, "a connection with half a head stays with hyper");
        s.write_all(b"st: t\r\n\r\n").await.expect("write");
        assert_eq!(response(&mut s, &mut buf).await, "ok 0");
        until("the connection to leave hyper at the end", || waiting() == 1).await;

        drop(s);
        until("the closed connection to end", || waiting() == 0).await;
    }

    #[tokio::test]
    async fn a_connection_idle_for_header_read_timeout_outside_hyper_is_closed() {
        let options = ServeOptions {
            header_read_timeout: Duration::from_millis(300),
            ..ServeOptions::default()
        };
        let (addr, _stop) = server(options).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        s.write_all(GET).await.expect("write");
        assert_eq!(response(&mut s, &mut buf).await, "ok 0");
        until("the idle connection to leave hyper", || waiting() == 1).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closed within header_read_timeout")
            .expect("read");
        assert_eq!(n, 0, "closed without a byte");
        assert_eq!(waiting(), 0);
    }
}
