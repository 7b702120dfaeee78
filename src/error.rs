//! Errors a client can see, and the one place they become HTTP responses.
//!
//! Every error tollgate answers with is JSON `{"code":N,"message":"..."}`
//! with the matching status, built by [`json_error`]. [`chain`] walks an
//! error's sources, which is how the request path tells a client's fault
//! from a backend's and how logs show the cause under a library's wrapper.
//!
//! A gRPC client cannot read that JSON: it reads `grpc-status`. So a
//! refusal of a gRPC call ([`crate::grpc::is_grpc`]) is the same response
//! turned by [`grpc_refusal`] into what Envoy sends: HTTP 200, no body,
//! `grpc-status` and `grpc-message` in the headers (a trailers-only
//! response), every other header (`RateLimit`, `Retry-After`) kept. The
//! code comes from the HTTP status by [`grpc_status`], so a refusal added
//! later gets a code without being listed twice.

use std::borrow::Cow;

use http::{header, HeaderValue, Response, StatusCode};

pub use crate::body::full;
use crate::body::Body;
use crate::limiter::Decision;

/// `err` and every error below it (its `source()`s), outermost first.
pub fn chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

/// The first error of type `T` in `err`'s chain, if any.
pub fn find_in_chain<'a, T: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    chain(err).find_map(|e| e.downcast_ref::<T>())
}

/// An error and its sources, `: `-separated, for a log line or a message.
#[derive(Debug, Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in chain(self.0).enumerate() {
            if i > 0 {
                f.write_str(": ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Why the proxy did not forward a request, or could not complete it.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's bucket is empty.
    #[error("Rate limit exceeded")]
    RateLimited(Decision),
    /// `max_clients` reached and no bucket could be evicted; a slot may
    /// free up at the next refill tick, `retry_after` from now.
    #[error("Too many clients: rate-limit table is full")]
    ClientTableFull {
        /// Until the next refill tick.
        retry_after: std::time::Duration,
    },
    /// Shared limits are configured to reject while Redis cannot answer.
    #[error("Rate limiter unavailable")]
    LimiterUnavailable,
    /// Every backend is out of the pool.
    #[error("No healthy backends")]
    NoHealthyBackend,
    /// Every backend of the pool is at `max_connections` and its queue is
    /// full.
    #[error("Every backend is busy and the queue is full")]
    QueueFull,
    /// The request waited `queue.timeout` for a free backend slot.
    #[error("Every backend stayed busy for the whole queue timeout")]
    QueueTimeout,
    /// Routes are configured, none matches, and there is no default pool.
    #[error("no route")]
    NoRoute,
    /// The API key header is present but not a valid key.
    #[error("Invalid API key header: {0}")]
    BadApiKey(String),
    /// The request breaks a rule of HTTP (RFC 9110/9112) that a backend
    /// could resolve differently from tollgate (see `proxy::strict`).
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    /// `CONNECT`: tollgate forwards requests; it opens no tunnels.
    #[error("Method CONNECT is not allowed")]
    MethodNotAllowed,
    /// A transfer coding other than `chunked` (RFC 9112 §6.1).
    #[error("Transfer-Encoding other than chunked is not implemented")]
    TransferCodingNotImplemented,
    /// Reading the client's request body failed while it was being
    /// forwarded: malformed chunked framing, or the client went away.
    #[error("Malformed request body: {0}")]
    BadRequestBody(String),
    /// The backend could not be reached or broke the exchange.
    #[error("Bad gateway: {0}")]
    BadGateway(String),
    /// The backend did not answer within `proxy.request_timeout`.
    #[error("Backend timed out")]
    GatewayTimeout,
    /// No socket left in this process for a backend connection.
    #[error("Proxy out of sockets: try again later")]
    OutOfSockets,
    /// The request body paused longer than `server.client_body_timeout`.
    #[error("Request body timed out")]
    ClientBodyTimeout,
}

impl ProxyError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::ClientTableFull { .. }
            | Self::NoHealthyBackend
            | Self::QueueFull
            | Self::QueueTimeout
            | Self::LimiterUnavailable
            | Self::OutOfSockets => StatusCode::SERVICE_UNAVAILABLE,
            Self::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::BadApiKey(_) | Self::BadRequest(_) | Self::BadRequestBody(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::TransferCodingNotImplemented => StatusCode::NOT_IMPLEMENTED,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The JSON response for this error, marked as a refusal
    /// ([`grpc_refusal`] turns it into a gRPC one for a gRPC call).
    pub fn into_response(self) -> Response<Body> {
        let message = self.to_string();
        let mut response = json_error(self.status(), &message);
        response.extensions_mut().insert(Refusal(message));
        match &self {
            Self::ClientTableFull { retry_after } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(whole_seconds(*retry_after)),
                );
            }
            // A busy pool frees slots as its requests end: a second is a
            // fair first wait, as the client cannot see the queue.
            Self::QueueFull | Self::QueueTimeout => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
            }
            // RFC 9110 §15.5.6: a 405 names what is allowed. Which methods
            // a path supports is the backend's business; these are the
            // common ones tollgate passes on (any method but CONNECT is).
            Self::MethodNotAllowed => {
                response.headers_mut().insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<crate::balancer::Refused> for ProxyError {
    fn from(r: crate::balancer::Refused) -> Self {
        use crate::balancer::Refused;
        match r {
            Refused::NoBackend => Self::NoHealthyBackend,
            Refused::QueueFull => Self::QueueFull,
            Refused::QueueTimeout => Self::QueueTimeout,
        }
    }
}

/// Marks a response as one of tollgate's refusals, with its message.
#[derive(Debug, Clone)]
struct Refusal(String);

/// The gRPC status code that a refusal answered with HTTP `status`
/// stands for. Envoy's mapping (the gRPC project's table for HTTP
/// statuses, `source/common/grpc/status.cc`) where it has one, except:
/// 429 is RESOURCE_EXHAUSTED (8), as Envoy's rate limit filters send it
/// (`rate_limited_as_resource_exhausted`), since the caller may retry
/// later but not at once; 504 and 408 are DEADLINE_EXCEEDED (4), what a
/// gRPC client reports for a deadline that passed.
pub fn grpc_status(status: StatusCode) -> u8 {
    match status.as_u16() {
        429 => 8,
        408 | 504 => 4,
        502 | 503 => 14,
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        _ => 2,
    }
}

/// `response` as a gRPC client reads it, if it is one of tollgate's
/// refusals (backends' answers pass untouched): status 200, no body,
/// `grpc-status` ([`grpc_status`] of the HTTP status) and `grpc-message`
/// in the headers, the others kept but for the body's type and length.
pub fn grpc_refusal(mut response: Response<Body>) -> Response<Body> {
    let Some(Refusal(message)) = response.extensions_mut().remove::<Refusal>() else {
        return response;
    };
    let code = grpc_status(response.status());
    let (mut parts, _json) = response.into_parts();
    parts.status = StatusCode::OK;
    let h = &mut parts.headers;
    h.remove(header::CONTENT_LENGTH);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(crate::grpc::GRPC_STATUS, HeaderValue::from(u16::from(code)));
    // Percent-encoded, so always a valid value.
    if let Ok(text) = HeaderValue::from_str(&crate::grpc::percent_encode(&message)) {
        h.insert(crate::grpc::GRPC_MESSAGE, text);
    }
    Response::from_parts(parts, full(bytes::Bytes::new()))
}

/// Why an admin API request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Malformed input: the message says what is wrong.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Too many wrong bearer tokens from this address; it may try again
    /// after `retry_after`.
    #[error(
        "too many wrong bearer tokens from this address: requests with a token are refused \
         for now (see Retry-After)"
    )]
    TooManyBadTokens {
        /// Until the address may present a token again.
        retry_after: std::time::Duration,
    },
    /// A state-changing request a browser sent for another site.
    #[error("{0}")]
    CrossSite(String),
    /// A `Host` this admin API does not serve (`admin.allowed_hosts`).
    #[error("{0}")]
    MisdirectedHost(String),
    /// Unknown client or route.
    #[error("{0}")]
    NotFound(String),
    /// Known route, wrong method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The client exists already, or the table is at its maximum.
    #[error("{0}")]
    Conflict(String),
    /// Body over the size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Body that is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The request body did not arrive within `admin.body_read_timeout`.
    #[error("{0}")]
    RequestTimeout(String),
    /// The database did not answer within `store.timeout`.
    #[error("{0}")]
    Unavailable(String),
    /// The database failed.
    #[error("{0}")]
    Internal(String),
    /// `POST /reload` found the config file invalid: each problem as
    /// `field.path: reason`.
    #[error("invalid configuration")]
    InvalidConfig(Vec<String>),
}

impl AdminError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::InvalidConfig(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooManyBadTokens { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::CrossSite(_) => StatusCode::FORBIDDEN,
            Self::MisdirectedHost(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON response for this error.
    pub fn to_response(&self) -> Response<Body> {
        let mut response = match self {
            // The one error with more than a message: what to fix.
            Self::InvalidConfig(problems) => json_response(
                self.status(),
                to_json(&InvalidConfigBody {
                    code: self.status().as_u16(),
                    message: &self.to_string(),
                    problems,
                }),
            ),
            _ => json_error(self.status(), &self.to_string()),
        };
        match self {
            Self::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyBadTokens { retry_after } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(whole_seconds(*retry_after)),
                );
            }
            _ => {}
        }
        response
    }
}

/// A `Retry-After` value: whole seconds, rounded up, never 0 (RFC 9110
/// §10.2.3).
fn whole_seconds(d: std::time::Duration) -> u64 {
    let secs = d.as_nanos().div_ceil(1_000_000_000).max(1);
    u64::try_from(secs).unwrap_or(u64::MAX)
}

/// `{"code":N,"message":"..."}` with status `N`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, json_text(status, message))
}

/// `body` (JSON) with status `status`.
fn json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The body of every JSON error tollgate answers with.
// The admin API's OpenAPI document describes it from this type.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// The HTTP status, repeated.
    pub code: u16,
    /// What is wrong.
    pub message: &'a str,
}

/// The body of `POST /reload`'s 400: an error with every problem of the
/// config file.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = InvalidConfig)]
pub struct InvalidConfigBody<'a> {
    /// 400.
    pub code: u16,
    /// `invalid configuration`.
    pub message: &'a str,
    /// Each problem as `field.path: reason`.
    pub problems: &'a [String],
}

/// `body` as JSON text.
fn to_json(body: &impl serde::Serialize) -> String {
    // Numbers and strings only: serialising them cannot fail.
    serde_json::to_string(body).unwrap_or_default()
}

/// The body of [`json_error`].
fn json_text(status: StatusCode, message: &str) -> String {
    to_json(&ErrorBody {
        code: status.as_u16(),
        message,
    })
}

/// The JSON body for a request that hyper's HTTP/1.1 parser refused with
/// `status` before any handler saw it (400, 414 or 431); `proxy::server`
/// puts it in place of hyper's empty answer.
pub fn parser_error_body(status: StatusCode) -> String {
    let message = match status {
        StatusCode::URI_TOO_LONG => "URI too long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "Request header fields too large",
        _ => "Malformed HTTP request",
    };
    json_text(status, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_become_trailers_only_grpc_answers() {
        let mut r = ProxyError::NoHealthyBackend.into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        let r = grpc_refusal(r);
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "No healthy backends");
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h[header::RETRY_AFTER], "1");
        assert!(http_body::Body::is_end_stream(r.body()));
    }

    #[test]
    fn backend_answers_are_not_refusals() {
        let mut backend = Response::new(full("from the backend"));
        *backend.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let r = grpc_refusal(backend);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().get("grpc-status").is_none());
    }

    #[test]
    fn the_grpc_status_table() {
        for (http, grpc) in [
            (429, 8),
            (503, 14),
            (502, 14),
            (504, 4),
            (408, 4),
            (400, 13),
            (404, 12),
            (405, 2),
            (501, 2),
        ] {
            let status = StatusCode::from_u16(http).expect("status");
            assert_eq!(grpc_status(status), grpc, "{http}");
        }
    }
}
