//! One HTTP/3 request: its head becomes the `http::Request` every front
//! door hands the handler, its body streams in as a [`ClientBody`], and
//! the handler's response streams back: head, data, trailers, end.
//!
//! Bounds: the request head must arrive within `header_read_timeout`; a
//! response write that stays blocked for `send_timeout` (a client that
//! stopped reading, so QUIC flow control stopped us) resets the stream,
//! as the TCP listeners fail such a write.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;

use super::super::server::ServeOptions;
use super::super::{headers, Body, BoxError, ClientBody, Conn};
use crate::telemetry::Metrics;

/// The request's stream, both halves.
type Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
/// The half the response goes out on.
type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
/// The half the request body comes in on.
type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// H3_REQUEST_CANCELLED (RFC 9114 §8.1): the response will not be
/// finished.
const REQUEST_CANCELLED: h3::error::Code = h3::error::Code::H3_REQUEST_CANCELLED;
/// H3_INTERNAL_ERROR: the response broke on our side (a backend's body).
const INTERNAL_ERROR: h3::error::Code = h3::error::Code::H3_INTERNAL_ERROR;

/// What one exchange is bounded by.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    header_read_timeout: Duration,
    send_timeout: Duration,
    metrics: Metrics,
}

impl From<&ServeOptions> for Limits {
    fn from(o: &ServeOptions) -> Self {
        Self {
            header_read_timeout: o.header_read_timeout,
            send_timeout: o.send_timeout,
            metrics: o.metrics.clone(),
        }
    }
}

/// Reads the request `resolver` stands for, has `handler` answer it, and
/// writes the answer back.
pub(super) async fn serve<H, F>(
    resolver: h3::server::RequestResolver<h3_quinn::Connection, Bytes>,
    handler: Arc<H>,
    conn: Conn,
    limits: Limits,
) where
    H: Fn(Request<ClientBody>, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let resolved = tokio::time::timeout(limits.header_read_timeout, resolver.resolve_request());
    let (head, stream): (Request<()>, Stream) = match resolved.await {
        Ok(Ok(resolved)) => resolved,
        // h3 has answered a malformed head itself (a stream error).
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "HTTP/3 request refused");
            return;
        }
        Err(_) => {
            limits.metrics.idle_timeout("h3_idle");
            return;
        }
    };
    let (mut send, recv) = stream.split();
    let body = ClientBody::Stream(RequestBody::new(recv).boxed());
    let response = handler(head.map(|()| body), conn).await;
    if let Err(e) = respond(&mut send, response, &limits).await {
        tracing::debug!(peer = %conn.peer, error = %e, "HTTP/3 response not finished");
    }
}

/// Why a response did not go out whole.
#[derive(Debug, thiserror::Error)]
enum RespondError {
    /// The stream failed (the client reset it, the connection closed).
    #[error("{0}")]
    Stream(#[from] h3::error::StreamError),
    /// The response body failed (a backend broke off).
    #[error("response body: {0}")]
    Body(BoxError),
    /// The client took nothing for `send_timeout`.
    #[error("the client took no response bytes for send_timeout")]
    SendTimeout,
}

/// Writes `response` on `send`: the head, every data frame as it comes,
/// the trailers if any, then the end of the stream. A write blocked for
/// `send_timeout` resets the stream.
async fn respond(
    send: &mut SendHalf,
    response: Response<Body>,
    limits: &Limits,
) -> Result<(), RespondError> {
    let written = write(send, response, limits).await;
    match &written {
        Err(RespondError::SendTimeout) => {
            limits.metrics.idle_timeout("send");
            send.stop_stream(REQUEST_CANCELLED);
        }
        Err(RespondError::Body(_)) => send.stop_stream(INTERNAL_ERROR),
        _ => {}
    }
    written
}

async fn write(
    send: &mut SendHalf,
    response: Response<Body>,
    limits: &Limits,
) -> Result<(), RespondError> {
    let (mut parts, mut body) = response.into_parts();
    // Connection-specific fields are malformed in HTTP/3 (RFC 9114
    // §4.2); a backend's were dropped already, tollgate's own answers
    // may carry `Connection: close` for HTTP/1.1.
    headers::strip_hop_by_hop(&mut parts.headers);
    let wait = limits.send_timeout;
    bounded(wait, send.send_response(Response::from_parts(parts, ()))).await?;
    while let Some(frame) = body.frame().await {
        match frame.map_err(RespondError::Body)?.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => bounded(wait, send.send_data(data)).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    bounded(wait, send.send_trailers(trailers)).await?;
                }
            }
        }
    }
    bounded(wait, send.finish()).await
}

/// A write to the client, given up when it stays blocked for `wait`.
async fn bounded(
    wait: Duration,
    write: impl Future<Output = Result<(), h3::error::StreamError>>,
) -> Result<(), RespondError> {
    match tokio::time::timeout(wait, write).await {
        Ok(written) => Ok(written?),
        Err(_) => Err(RespondError::SendTimeout),
    }
}

/// The request body as it arrives on the stream: data frames, then the
/// trailers if the client sent any.
struct RequestBody {
    recv: RecvHalf,
    /// A frame read ahead by [`RequestBody::new`].
    ahead: Option<Result<Frame<Bytes>, BoxError>>,
    /// The data frames have ended; trailers are next.
    data_done: bool,
    done: bool,
}

impl RequestBody {
    /// The body of `recv`, with what has arrived already looked at: a
    /// request whose stream ended with its head (a GET, usually in the
    /// same packet) is known to have no body before the proxy forwards
    /// it, which decides whether it may be retried, as for hyper's
    /// bodies.
    fn new(recv: RecvHalf) -> Self {
        let mut body = Self {
            recv,
            ahead: None,
            data_done: false,
            done: false,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(Some(frame)) = body.next_frame(&mut cx) {
            body.ahead = Some(frame);
        }
        body
    }

    fn next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.data_done {
            match std::task::ready!(self.recv.poll_recv_data(cx)) {
                Ok(Some(mut data)) => {
                    let bytes = data.copy_to_bytes(data.remaining());
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Ok(None) => self.data_done = true,
                Err(e) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
        let trailers = std::task::ready!(self.recv.poll_recv_trailers(cx));
        self.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(frame) = this.ahead.take() {
            return Poll::Ready(Some(frame));
        }
        this.next_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.ahead.is_none()
    }
}
