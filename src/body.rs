//! The body type of every request and response tollgate produces.
//!
//! One boxed type for streamed backend bodies, tollgate's own JSON errors
//! and the demo backend alike, so that handlers of different origins can
//! answer through the same connection code. It lives apart from `proxy`
//! and `error` because both build responses with it. [`Watched`] is the
//! one wrapper around a body: the access log, the idle timeouts, the
//! backend connection's return and HTTP/2's open-request count each add
//! their hooks to it rather than forwarding `http_body::Body` again.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Full};

/// Boxed error carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response tollgate produces.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What a body wrapper does as frames pass: every hook has a default that
/// does nothing, so a wrapper names only what it cares about. The state
/// a wrapper keeps (and its `Drop`) lives in the type implementing this.
pub(crate) trait Hooks {
    /// A frame was taken; `end`: the body has nothing after it.
    fn frame(&mut self, _frame: &Frame<Bytes>, _end: bool) {}
    /// The body failed.
    fn error(&mut self) {}
    /// The body ended (no frame came with the end).
    fn end(&mut self) {}
    /// The body had nothing ready: `Ready(e)` ends it with the error `e`
    /// instead of waiting (an idle timeout), `Pending` waits.
    fn pending(&mut self, _cx: &mut Context<'_>) -> Poll<BoxError> {
        Poll::Pending
    }
}

/// `B`, forwarded frame by frame, with `H` told of each: the one body
/// wrapper, so forwarding `http_body::Body` is written once.
#[derive(Debug)]
pub(crate) struct Watched<B, H> {
    inner: B,
    hooks: H,
}

impl<B, H> Watched<B, H> {
    /// `inner`, with `hooks` told of its frames.
    pub(crate) fn new(inner: B, hooks: H) -> Self {
        Self { inner, hooks }
    }
}

impl<B, H> http_body::Body for Watched<B, H>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    H: Hooks + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.hooks.frame(&frame, this.inner.is_end_stream());
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.hooks.error();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.hooks.end();
                Poll::Ready(None)
            }
            Poll::Pending => this.hooks.pending(cx).map(|e| Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
