//! The body type of every request and response tollgate produces.
//!
//! One boxed type for streamed backend bodies, tollgate's own JSON errors
//! and the demo backend alike, so that handlers of different origins can
//! answer through the same connection code. It lives apart from `proxy`
//! and `error` because both build responses with it.

use bytes::Bytes;
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
