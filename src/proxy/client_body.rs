//! The body of a client's request, whichever front door it came in by:
//! hyper's own for HTTP/1.1 and HTTP/2, a boxed stream for HTTP/3.
//!
//! An enum rather than a type parameter on the request path, like
//! [`Transport`](super::transport): one copy of the pipeline (strict
//! checks, admission, routing, forwarding) serves every protocol, and the
//! HTTP/1.1 and HTTP/2 path pays one branch per frame and no allocation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use super::BoxError;

/// A boxed request body. `Sync` as well as `Send` (unlike [`super::Body`]):
/// the request is borrowed across the admission's awaits, so the whole
/// request must be shareable, as hyper's `Incoming` is.
pub type SyncBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A client's request body.
#[derive(Debug)]
pub enum ClientBody {
    /// From hyper's HTTP/1.1 or HTTP/2 server.
    Hyper(Incoming),
    /// From another front door (HTTP/3), already boxed.
    Stream(SyncBody),
}

impl From<Incoming> for ClientBody {
    fn from(body: Incoming) -> Self {
        ClientBody::Hyper(body)
    }
}

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(BoxError::from))),
            ClientBody::Stream(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(b) => b.is_end_stream(),
            ClientBody::Stream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(b) => b.size_hint(),
            ClientBody::Stream(b) => b.size_hint(),
        }
    }
}
