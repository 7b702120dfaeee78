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
//! connection is handed back when hyper has waited for a head for
//! [`PARK_AFTER`], its last read found nothing, everything it wrote went
//! out (its last call was a successful flush), no response is held back,
//! and this hyper connection has served a request; see
//! [`Flags::may_park`]. The grace costs nothing: hyper's header timer
//! first fires at its end, then runs on to its deadline. Handing back and
//! taking over cost about 10k instructions (callgrind, `wrk -c10`: 45.6k
//! -> 55.3k per request when connections were handed back between every
//! two requests), so a client whose next request comes soon keeps its
//! hyper connection. The last condition keeps
//! a client that sends a head piecemeal with the same hyper connection:
//! such a connection is never handed back before its request is whole.
//!
//! `header_read_timeout` still bounds how long a connection stays idle:
//! the wait outside hyper ends at what is left of it. The next request
//! head then gets hyper's full `header_read_timeout` again.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use hyper_util::rt::TokioTimer;

use super::transport::Transport;
use crate::shutdown::Signal;

/// How long hyper keeps an idle connection before handing it back.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

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
    /// hyper has waited for this head for the grace period.
    due: AtomicBool,
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
            due: AtomicBool::new(false),
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
            && self.due.load(Ordering::Relaxed)
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
/// header timer exists (hyper waits for a request head), and when it has
/// existed for `grace`.
#[derive(Debug, Clone)]
pub(super) struct HeadTimer<S> {
    owner: Arc<S>,
    grace: Duration,
}

impl<S> HeadTimer<S> {
    /// `grace`: how long a head wait lasts before the connection may be
    /// handed back ([`PARK_AFTER`]).
    pub(super) fn new(owner: Arc<S>, grace: Duration) -> Self {
        Self { owner, grace }
    }
}

impl<S: AsRef<Flags> + Send + Sync + 'static> Timer for HeadTimer<S> {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        (*self.owner)
            .as_ref()
            .head_wait
            .store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::from(deadline);
        let due = tokio::time::Instant::now() + self.grace;
        let early = due < deadline;
        Box::pin(HeadSleep {
            sleep: tokio::time::sleep_until(if early { due } else { deadline }),
            deadline,
            early,
            wait: HeadWait(self.owner.clone()),
        })
    }

    fn now(&self) -> Instant {
        TokioTimer::new().now()
    }
}

pin_project_lite::pin_project! {
    /// hyper's header timer; while it exists, hyper waits for a head.
    /// It first runs to the end of the grace period (`early`), marks the
    /// wait due, and runs on to hyper's deadline.
    struct HeadSleep<S: AsRef<Flags>> {
        #[pin]
        sleep: tokio::time::Sleep,
        deadline: tokio::time::Instant,
        early: bool,
        wait: HeadWait<S>,
    }
}

/// Clears [`Flags::head_wait`] when the header timer is dropped (a head
/// was parsed, or the connection ended).
struct HeadWait<S: AsRef<Flags>>(Arc<S>);

impl<S: AsRef<Flags>> Drop for HeadWait<S> {
    fn drop(&mut self) {
        let flags = (*self.0).as_ref();
        flags.head_wait.store(false, Ordering::Relaxed);
        flags.due.store(false, Ordering::Relaxed);
    }
}

impl<S: AsRef<Flags>> std::future::Future for HeadSleep<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        std::task::ready!(this.sleep.as_mut().poll(cx));
        if std::mem::take(this.early) {
            // The grace period is over: hyper's poll that got here ends
            // Pending, and its driver hands the connection back.
            (*this.wait.0).as_ref().due.store(true, Ordering::Relaxed);
            this.sleep.as_mut().reset(*this.deadline);
            return this.sleep.poll(cx);
        }
        Poll::Ready(())
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
pub(super) async fn wait(
    stream: &Transport,
    deadline: tokio::time::Instant,
    closing: &Signal,
) -> Woken {
    #[cfg(test)]
    let _counted = waiting::Waiting::start();
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
pub(super) mod waiting {
    //! How many connections of this thread's runtime wait outside hyper
    //! (the tests in `proxy::idle_tests` read it).

    use std::cell::Cell;

    thread_local! {
        static WAITING: Cell<usize> = const { Cell::new(0) };
    }

    /// Counts a connection in [`WAITING`] while it lives.
    pub(in crate::proxy) struct Waiting;

    impl Waiting {
        pub(in crate::proxy) fn start() -> Self {
            WAITING.with(|w| w.set(w.get() + 1));
            Self
        }
    }

    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING.with(|w| w.set(w.get() - 1));
        }
    }

    /// Connections of this thread waiting outside hyper now.
    pub(in crate::proxy) fn count() -> usize {
        WAITING.with(Cell::get)
    }
}
