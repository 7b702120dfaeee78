//! The HTTP client spans are posted with: our reqwest (rustls, the
//! system roots and `proxy.ca_file`, as for `https://` backends) behind
//! the exporter's `HttpClient` trait, so the exporter brings no client
//! or TLS stack of its own (its reqwest feature would build a second
//! reqwest, its hyper one speaks no TLS).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};

/// Largest collector answer read: an `ExportTraceServiceResponse` is a
/// few bytes, an error page a few kilobytes.
const MAX_ANSWER: usize = 64 * 1024;

/// Posts export requests to the collector.
#[derive(Debug, Clone)]
pub(super) struct Client(reqwest::Client);

impl Client {
    /// A client verifying `https://` collectors with `tls`, giving up on
    /// one request after `timeout`.
    pub(super) fn new(
        tls: &Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .use_preconfigured_tls(rustls::ClientConfig::clone(tls))
            .build()
            .map(Self)
    }
}

#[async_trait::async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let request = reqwest::Request::try_from(request)?;
        let mut answer = self.0.execute(request).await?;
        let mut head = Response::builder().status(answer.status());
        if let Some(headers) = head.headers_mut() {
            *headers = std::mem::take(answer.headers_mut());
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(format!("collector answer longer than {MAX_ANSWER} bytes").into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(head.body(Bytes::from(body))?)
    }
}
