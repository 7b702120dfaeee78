//! HTTP/2 streams the client gives no flow-control window: reset after
//! `send_timeout`, and the connection closed once several were.
//!
//! On HTTP/1.1 a client that stops reading blocks the socket write and
//! [`super::server`]'s `send_timeout` cuts it. HTTP/2 flow control stalls
//! one stream instead: a client that sets its window to 0 (and answers
//! PINGs) leaves the socket writable, so that timer never runs. hyper
//! takes a data frame from the response body, then waits for window to
//! send it; until then it does not poll the body again, so the body's own
//! idle timers (`backend_body_timeout`), which run while a poll waits,
//! never run either. Each such stream kept its backend connection for as
//! long as the client liked: 9 connections × 128 streams took every
//! descriptor at `ulimit -n 1024`.
//!
//! hyper does not expose a stream's send window (h2's
//! `SendStream::poll_capacity` is behind it), but it shows when it is
//! waiting for one: it polls the body again only after the frame it took
//! went out. So the response body reports each data frame taken and each
//! poll ([`StreamWatch`]), and [`StreamExec`], the executor hyper spawns
//! every stream's task on, wraps the task in a [`StallGuard`] that runs a
//! timer while hyper holds a frame. When a frame has waited for
//! `send_timeout`, the guard drops the stream's task: h2 resets the
//! stream (RST_STREAM CANCEL), and the response body goes with it, which
//! closes or returns the backend connection. The body finds its watch
//! through a task-local the guard sets while it polls the task (hyper
//! builds the body inside that task, out of reach otherwise).
//!
//! Each reset is counted in `tollgate_idle_timeouts_total{direction=
//! "h2_send"}` and on its connection; a connection that has had
//! [`MAX_STALLED_STREAMS`] is sent a GOAWAY and closed (see
//! `server::drive_h2`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::Notify;

use super::timeout::IdleTimer;
use crate::telemetry::Metrics;

/// Streams of one connection reset for want of window before the
/// connection is closed. One can be a paused download; several are a
/// client holding backend connections on purpose.
pub(crate) const MAX_STALLED_STREAMS: u32 = 4;

/// The `direction` label of `tollgate_idle_timeouts_total` for a stream
/// reset here.
pub(crate) const LABEL: &str = "h2_send";

tokio::task_local! {
    /// The watch of the stream whose task a [`StallGuard`] is polling.
    static STREAM: Arc<StreamWatch>;
}

/// What a stream's response body tells its [`StallGuard`]: data frames
/// hyper took, and whether it still holds the last one.
#[derive(Debug, Default)]
pub(crate) struct StreamWatch {
    /// Non-empty data frames taken from the body.
    taken: AtomicU64,
    /// hyper took a non-empty data frame and has not polled the body
    /// since: it is waiting for window to send it.
    holding: AtomicBool,
}

impl StreamWatch {
    /// The watch of the stream task being polled now, if it runs under a
    /// [`StallGuard`].
    pub(crate) fn current() -> Option<Arc<Self>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// hyper took `frame` from the body. Only a non-empty data frame
    /// needs window; hyper sends anything else at once.
    pub(crate) fn took(&self, frame: &Frame<Bytes>) {
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            self.taken.fetch_add(1, Ordering::Relaxed);
            self.holding.store(true, Ordering::Relaxed);
        } else {
            self.holding.store(false, Ordering::Relaxed);
        }
    }

    /// hyper polled the body and got no frame (nothing yet, the end, an
    /// error): it holds none.
    pub(crate) fn polled(&self) {
        self.holding.store(false, Ordering::Relaxed);
    }
}

/// What the streams of one connection share: how many were reset for
/// want of window, and a signal to the connection's driver once that is
/// [`MAX_STALLED_STREAMS`].
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    count: AtomicU32,
    too_many: Notify,
}

impl Stalls {
    /// Completes once the connection has had [`MAX_STALLED_STREAMS`].
    pub(crate) async fn too_many(&self) {
        self.too_many.notified().await;
    }

    fn one_more(&self) {
        if self.count.fetch_add(1, Ordering::Relaxed) + 1 == MAX_STALLED_STREAMS {
            // A stored permit if the driver is not waiting right now.
            self.too_many.notify_one();
        }
    }
}

/// The executor of one HTTP/2 connection: hyper spawns each stream's task
/// on it, and it puts every task under a [`StallGuard`].
#[derive(Debug, Clone)]
pub(crate) struct StreamExec {
    send_timeout: Duration,
    stalls: Arc<Stalls>,
    /// `idle_timeouts{direction="h2_send"}`.
    cut: metrics::Counter,
}

impl StreamExec {
    pub(crate) fn new(send_timeout: Duration, stalls: Arc<Stalls>, metrics: &Metrics) -> Self {
        Self {
            send_timeout,
            stalls,
            cut: metrics.idle_timeouts(LABEL),
        }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        tokio::spawn(StallGuard {
            // Boxed so that it can be dropped before the guard ends.
            task: Some(Box::pin(task)),
            watch: Arc::default(),
            timer: IdleTimer::new(self.send_timeout),
            seen: 0,
            exec: self.clone(),
        });
    }
}

/// A stream's task, dropped (the stream reset) once hyper has held a
/// data frame for `send_timeout` without window to send it.
struct StallGuard<F> {
    task: Option<Pin<Box<F>>>,
    watch: Arc<StreamWatch>,
    /// Runs while hyper holds a frame.
    timer: IdleTimer,
    /// `watch.taken` when last looked at: a change is progress.
    seen: u64,
    exec: StreamExec,
}

impl<F: Future<Output = ()>> Future for StallGuard<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(task) = &mut this.task else {
            return Poll::Ready(());
        };
        let watch = this.watch.clone();
        if STREAM
            .sync_scope(watch, || task.as_mut().poll(cx))
            .is_ready()
        {
            return Poll::Ready(());
        }
        let taken = this.watch.taken.load(Ordering::Relaxed);
        if taken != this.seen {
            this.seen = taken;
            this.timer.progress();
        }
        if !this.watch.holding.load(Ordering::Relaxed) {
            this.timer.progress();
            return Poll::Pending;
        }
        ready!(this.timer.poll_expired(cx));
        // h2 resets a stream whose last handle is dropped; the response
        // body, and with it the backend connection, goes too.
        this.task = None;
        this.exec.cut.increment(1);
        this.exec.stalls.one_more();
        Poll::Ready(())
    }
}

// The task is boxed; nothing else is pinned.
impl<F> Unpin for StallGuard<F> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream task that takes one data frame from its "body" each time
    /// `send` says so, and holds it until the next.
    fn stream_task(
        mut send: tokio::sync::mpsc::Receiver<()>,
        dropped: Arc<AtomicBool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        struct OnDrop(Arc<AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        async move {
            let _guard = OnDrop(dropped);
            let watch = StreamWatch::current().expect("run under a guard");
            while send.recv().await.is_some() {
                watch.polled();
                watch.took(&Frame::data(Bytes::from_static(b"x")));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_held_for_send_timeout_drops_the_stream() {
        let stalls = Arc::new(Stalls::default());
        let exec = StreamExec::new(Duration::from_secs(10), stalls.clone(), &Metrics::default());
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let dropped = Arc::new(AtomicBool::new(false));
        let started = tokio::time::Instant::now();
        hyper::rt::Executor::execute(&exec, stream_task(rx, dropped.clone()));
        // A frame taken every 9 s is progress each time.
        for _ in 0..5 {
            tx.send(()).await.expect("the stream runs");
            tokio::time::sleep(Duration::from_secs(9)).await;
            assert!(!dropped.load(Ordering::Relaxed));
        }
        // Then one held: dropped 10 s after it was taken.
        tokio::time::sleep(Duration::from_millis(999)).await;
        assert!(!dropped.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(dropped.load(Ordering::Relaxed));
        assert_eq!(started.elapsed(), Duration::from_millis(46_001));
        assert_eq!(stalls.count.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_for_its_body_is_not_a_stall() {
        let exec = StreamExec::new(
            Duration::from_secs(10),
            Arc::new(Stalls::default()),
            &Metrics::default(),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let dropped = Arc::new(AtomicBool::new(false));
        hyper::rt::Executor::execute(&exec, async move {
            let watch = StreamWatch::current().expect("run under a guard");
            // The body had nothing: that is the backend's pause, timed by
            // backend_body_timeout, not this guard.
            watch.polled();
            stream_task(rx, dropped).await;
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(tx.send(()).await.is_ok(), "the stream still runs");
    }

    #[tokio::test]
    async fn the_connection_hears_of_its_nth_stalled_stream() {
        let stalls = Stalls::default();
        for _ in 1..MAX_STALLED_STREAMS {
            stalls.one_more();
        }
        let early = tokio::time::timeout(Duration::ZERO, stalls.too_many()).await;
        assert!(early.is_err(), "not before the limit");
        stalls.one_more();
        tokio::time::timeout(Duration::from_secs(5), stalls.too_many())
            .await
            .expect("told at the limit");
    }
}
