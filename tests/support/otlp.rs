//! A collector stand-in: an OTLP/HTTP receiver on 127.0.0.1:0 that
//! accepts `POST /v1/traces`, decodes the protobuf
//! `ExportTraceServiceRequest` with the OpenTelemetry protocol crate, and
//! keeps every span it was sent.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// One received span with the `service.name` of its resource.
#[derive(Debug, Clone)]
pub struct Received {
    /// The span as sent.
    pub span: Span,
    /// Its resource's `service.name`.
    pub service: Option<String>,
}

impl Received {
    /// A string or integer attribute, as text.
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(i) => i.to_string(),
                other => format!("{other:?}"),
            })
    }
}

/// The receiver; stops with the test's runtime.
pub struct Collector {
    /// Where it listens (the `telemetry.otlp.endpoint` is `http://{addr}`).
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<Received>>>,
    posts: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    /// Starts one on 127.0.0.1:0.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("addr");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (spans.clone(), posts.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (s, p) = (s.clone(), p.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (s, p) = (s.clone(), p.clone());
                        async move { Ok::<_, Infallible>(receive(req, &s, &p).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, spans, posts }
    }

    /// `http://addr`, the collector's base URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }

    /// `METHOD path content-type` of every request received.
    pub fn posts(&self) -> Vec<String> {
        self.posts.lock().expect("posts").clone()
    }
}

async fn receive(
    req: hyper::Request<Incoming>,
    spans: &Mutex<Vec<Received>>,
    posts: &Mutex<Vec<String>>,
) -> hyper::Response<Full<Bytes>> {
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    posts.lock().expect("posts").push(format!(
        "{} {} {content_type}",
        req.method(),
        req.uri().path()
    ));
    let answer = |status: u16, body: Vec<u8>| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        r
    };
    if req.method() != http::Method::POST || req.uri().path() != "/v1/traces" {
        return answer(404, Vec::new());
    }
    let Ok(body) = req.into_body().collect().await else {
        return answer(400, Vec::new());
    };
    let Ok(export) = ExportTraceServiceRequest::decode(body.to_bytes()) else {
        return answer(400, Vec::new());
    };
    let mut got = Vec::new();
    for rs in export.resource_spans {
        let service = rs.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
        });
        for ss in rs.scope_spans {
            for span in ss.spans {
                got.push(Received {
                    span,
                    service: service.clone(),
                });
            }
        }
    }
    spans.lock().expect("spans").extend(got);
    answer(200, ExportTraceServiceResponse::default().encode_to_vec())
}
