//! Errors a client can see, and the one place they become HTTP responses.
//!
//! Every error tollgate answers with is JSON `{"code":N,"message":"..."}`
//! with the matching status, built by [`json_error`].

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::limiter::Decision;
use crate::proxy::{headers, Body};

/// Why the proxy did not forward a request, or could not complete it.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's bucket is empty.
    #[error("Rate limit exceeded")]
    RateLimited(Decision),
    /// `max_clients` reached and no bucket could be evicted.
    #[error("Too many clients: rate-limit table is full")]
    ClientTableFull,
    /// Every backend is out of the pool.
    #[error("No healthy backends")]
    NoHealthyBackend,
    /// The API key header is present but not a valid key.
    #[error("Invalid API key header: {0}")]
    BadApiKey(String),
    /// The backend could not be reached or broke the exchange.
    #[error("Bad gateway: {0}")]
    BadGateway(String),
    /// The backend did not answer within `proxy.request_timeout`.
    #[error("Backend timed out")]
    GatewayTimeout,
}

impl ProxyError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::ClientTableFull | Self::NoHealthyBackend => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadApiKey(_) => StatusCode::BAD_REQUEST,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The JSON response for this error.
    pub fn into_response(self) -> Response<Body> {
        let mut response = json_error(self.status(), &self.to_string());
        if let Self::RateLimited(decision) = &self {
            let h = response.headers_mut();
            headers::rate_limit(h, decision);
            if let Some(secs) = headers::retry_after_secs(decision) {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
        }
        response
    }
}

/// `{"code":N,"message":"..."}` with status `N`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A complete in-memory body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}
