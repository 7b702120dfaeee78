//! Idle timeouts for bodies in flight.
//!
//! `request_timeout` ends when response headers arrive and
//! `header_read_timeout` when request headers have; nothing else timed the
//! rest of an exchange, so a backend that stalls mid-body or a client that
//! uploads a byte now and then held a backend connection for as long as
//! it liked. [`IdleBody`] fails a body that stays silent for longer than
//! its timeout while someone is waiting for it, like nginx's
//! `client_body_timeout` and `proxy_read_timeout`: the clock runs only
//! while the body is polled and has nothing, so a reader that is slow to
//! ask (a client not reading, see `server::ClientStream`) is not blamed
//! on the body's sender.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use tokio::time::{Instant, Sleep};

use super::BoxError;
use crate::body::{Hooks, Watched};

/// Which side went quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The request body from the client (`server.client_body_timeout`).
    ClientBody,
    /// The response body from the backend (`proxy.backend_body_timeout`).
    BackendBody,
}

impl Direction {
    /// The `direction` label of `tollgate_idle_timeouts_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::ClientBody => "client_body",
            Self::BackendBody => "backend_body",
        }
    }
}

/// A body that sent nothing for longer than its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("{} idle for more than {after:?}", .direction.label())]
pub(crate) struct IdleTimeout {
    /// The side that went quiet.
    pub(crate) direction: Direction,
    after: Duration,
}

impl IdleTimeout {
    /// The idle timeout somewhere in `err`'s chain of sources, if any.
    pub(crate) fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a IdleTimeout> {
        crate::error::find_in_chain(err)
    }
}

/// The clock of one idle timeout: it runs while a poll waits, stops at
/// progress, and fires once a wait has lasted `timeout`. Shared by the
/// body timeouts here and the client's blocked writes (`send_timeout`).
#[derive(Debug)]
pub(crate) struct IdleTimer {
    timeout: Duration,
    /// Made on the first wait only: an exchange that never waits (most
    /// small ones) never touches the timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` runs for the current wait (progress ends it).
    waiting: bool,
}

impl IdleTimer {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            sleep: None,
            waiting: false,
        }
    }

    /// How long a wait may last.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The poll made progress: the next wait starts a new clock.
    pub(crate) fn progress(&mut self) {
        self.waiting = false;
    }

    /// The poll is waiting: `Ready` once this wait has lasted `timeout`
    /// (and the clock is stopped), else `Pending` with `cx` woken then.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = Instant::now() + self.timeout;
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if !self.waiting {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.waiting = true;
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.waiting = false;
        Poll::Ready(())
    }
}

/// A body failing with [`IdleTimeout`] when it has nothing for its
/// timeout while being polled.
pub(crate) type IdleBody<B> = Watched<B, Idle>;

/// `inner`, failing with [`IdleTimeout`] when it has nothing for
/// `timeout` while being polled.
/// `cut` counts it when it fires.
pub(crate) fn idle_body<B>(
    inner: B,
    timeout: Duration,
    direction: Direction,
    cut: metrics::Counter,
) -> IdleBody<B> {
    Watched::new(
        inner,
        Idle {
            direction,
            timer: IdleTimer::new(timeout),
            cut,
        },
    )
}

/// Hooks that restart the idle timer on every frame and end the body
/// with [`IdleTimeout`] when it expires.
#[derive(Debug)]
pub(crate) struct Idle {
    direction: Direction,
    timer: IdleTimer,
    /// `idle_timeouts` for this direction.
    cut: metrics::Counter,
}

impl Hooks for Idle {
    fn frame(&mut self, _frame: &Frame<Bytes>, _end: bool) {
        self.timer.progress();
    }

    fn error(&mut self) {
        self.timer.progress();
    }

    fn end(&mut self) {
        self.timer.progress();
    }

    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<BoxError> {
        ready!(self.timer.poll_expired(cx));
        self.cut.increment(1);
        Poll::Ready(Box::new(IdleTimeout {
            direction: self.direction,
            after: self.timer.timeout(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn silent_after_one() -> impl http_body::Body<Data = Bytes, Error = BoxError> + Unpin {
        let frames = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from("a")))])
            .chain(futures_util::stream::pending());
        StreamBody::new(Box::pin(frames))
    }

    use futures_util::StreamExt;

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_after_its_timeout() {
        let mut body = idle_body(
            silent_after_one(),
            Duration::from_secs(60),
            Direction::BackendBody,
            metrics::Counter::noop(),
        );
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from("a")));
        let started = Instant::now();
        let err = body.frame().await.expect("an error").expect_err("timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        let timeout = IdleTimeout::find(err.as_ref()).expect("an IdleTimeout");
        assert_eq!(timeout.direction, Direction::BackendBody);
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_restarts_the_clock() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let mut body = idle_body(
            StreamBody::new(Box::pin(stream)),
            Duration::from_secs(10),
            Direction::ClientBody,
            metrics::Counter::noop(),
        );
        let started = Instant::now();
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(9)).await;
                if tx.send(Ok(Frame::data(Bytes::from("x")))).await.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        });
        for _ in 0..5 {
            body.frame().await.expect("frame").expect("data, 9 s apart");
        }
        let err = body.frame().await.expect("an error").expect_err("timeout");
        assert!(IdleTimeout::find(err.as_ref()).is_some());
        assert_eq!(started.elapsed(), Duration::from_secs(45 + 10));
        feeder.abort();
    }
}
