//! A real gRPC server and client (tonic's core, over hyper's HTTP/2), with
//! messages written with prost's derive: no protoc, no generated code.
//! Used by tests/proxy/grpc.rs and by `examples/grpc_bench.rs`.
//!
//! The server (`test.Echo`) answers `Unary` after the delay the request
//! asks for, streams `count` answers from `Stream`, fails a `Unary` whose
//! text is `fail` with NOT_FOUND, and serves `grpc.health.v1.Health/Check`
//! with a status the test sets. It records which of its connections
//! carried each call and the `grpc-timeout` each call came with.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::server::{ServerStreamingService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

/// `test.Ping`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    /// Echoed back.
    #[prost(string, tag = "1")]
    pub text: String,
    /// Waited before each answer.
    #[prost(uint32, tag = "2")]
    pub delay_ms: u32,
    /// Answers of a `Stream` call.
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

/// `test.Pong`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pong {
    /// The ping's text.
    #[prost(string, tag = "1")]
    pub text: String,
    /// The server's name.
    #[prost(string, tag = "2")]
    pub backend: String,
    /// Position in a stream, from 0.
    #[prost(uint32, tag = "3")]
    pub index: u32,
}

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    /// The service asked about; empty: the server.
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// 1 SERVING, 2 NOT_SERVING.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// SERVING.
pub const SERVING: i32 = 1;
/// NOT_SERVING.
pub const NOT_SERVING: i32 = 2;

/// What a test server saw, shared with its handlers.
#[derive(Debug, Default)]
pub struct Seen {
    /// Connections accepted (health checks included).
    pub connections: AtomicUsize,
    /// The connection number of every `Unary` and `Stream` call.
    pub call_connections: Mutex<Vec<usize>>,
    /// The `grpc-timeout` of every `Unary` call.
    pub timeouts: Mutex<Vec<Option<String>>>,
    /// The `te` header of every `Unary` and `Stream` call.
    pub te: Mutex<Vec<Option<String>>>,
    /// What health checks answer.
    pub health: AtomicI32,
    /// Health checks answered.
    pub health_checks: AtomicUsize,
}

impl Seen {
    /// Distinct connections that carried calls.
    pub fn call_connection_count(&self) -> usize {
        let calls = self.call_connections.lock().expect("lock");
        calls.iter().collect::<HashSet<_>>().len()
    }
}

/// A gRPC server on 127.0.0.1:0 (h2c).
pub struct GrpcServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a gRPC server named `name`, SERVING, on h2c.
pub async fn server(name: &str) -> GrpcServer {
    start(name, None).await
}

/// Starts a gRPC server named `name` on TLS with the PEM certificate
/// chain `cert` and its `key`, offering only `h2` by ALPN, as gRPC
/// servers do.
#[allow(dead_code)]
pub async fn server_tls(name: &str, cert: &std::path::Path, key: &std::path::Path) -> GrpcServer {
    use rustls_pki_types::pem::PemObject;
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert)
        .expect("open cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert pem");
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).expect("key pem");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("certificate");
    config.alpn_protocols = vec![b"h2".to_vec()];
    start(
        name,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    )
    .await
}

async fn start(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> GrpcServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    seen.health.store(SERVING, Ordering::Relaxed);
    let (name, state) = (Arc::<str>::from(name), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let conn = state.connections.fetch_add(1, Ordering::Relaxed);
            let (name, state) = (name.clone(), state.clone());
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let (name, state) = (name.clone(), state.clone());
                async move { Ok::<_, Infallible>(route(req, conn, &name, &state).await) }
            });
            let tls = tls.clone();
            tokio::spawn(async move {
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    None => h2.serve_connection(TokioIo::new(tcp), service).await,
                    Some(tls) => match tls.accept(tcp).await {
                        Ok(stream) => h2.serve_connection(TokioIo::new(stream), service).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    GrpcServer { addr, seen, task }
}

async fn route(
    req: http::Request<Incoming>,
    conn: usize,
    name: &Arc<str>,
    seen: &Arc<Seen>,
) -> http::Response<tonic::body::Body> {
    let te = req
        .headers()
        .get("te")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    match req.uri().path() {
        "/test.Echo/Unary" => {
            seen.te.lock().expect("lock").push(te);
            seen.call_connections.lock().expect("lock").push(conn);
            let handler = Unary {
                name: name.clone(),
                seen: seen.clone(),
            };
            tonic::server::Grpc::new(ProstCodec::<Pong, Ping>::default())
                .unary(handler, req)
                .await
        }
        "/test.Echo/Stream" => {
            seen.te.lock().expect("lock").push(te);
            seen.call_connections.lock().expect("lock").push(conn);
            let handler = Streamed { name: name.clone() };
            tonic::server::Grpc::new(ProstCodec::<Pong, Ping>::default())
                .server_streaming(handler, req)
                .await
        }
        "/grpc.health.v1.Health/Check" => {
            seen.health_checks.fetch_add(1, Ordering::Relaxed);
            let handler = Health { seen: seen.clone() };
            tonic::server::Grpc::new(
                ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default(),
            )
            .unary(handler, req)
            .await
        }
        _ => Status::unimplemented("no such method").into_http(),
    }
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<Response<T>, Status>> + Send>>;

struct Unary {
    name: Arc<str>,
    seen: Arc<Seen>,
}

impl UnaryService<Ping> for Unary {
    type Response = Pong;
    type Future = Answer<Pong>;

    fn call(&mut self, request: Request<Ping>) -> Self::Future {
        let timeout = request
            .metadata()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap_or("?").to_owned());
        self.seen.timeouts.lock().expect("lock").push(timeout);
        let name = self.name.to_string();
        Box::pin(async move {
            let ping = request.into_inner();
            tokio::time::sleep(Duration::from_millis(ping.delay_ms.into())).await;
            if ping.text == "fail" {
                return Err(Status::not_found("no pong for fail"));
            }
            Ok(Response::new(Pong {
                text: ping.text,
                backend: name,
                index: 0,
            }))
        })
    }
}

struct Streamed {
    name: Arc<str>,
}

type PongStream = Pin<Box<dyn futures_util::Stream<Item = Result<Pong, Status>> + Send>>;

impl ServerStreamingService<Ping> for Streamed {
    type Response = Pong;
    type ResponseStream = PongStream;
    type Future = Answer<PongStream>;

    fn call(&mut self, request: Request<Ping>) -> Self::Future {
        let name = self.name.to_string();
        let ping = request.into_inner();
        let stream = futures_util::stream::unfold(0u32, move |i| {
            let (ping, name) = (ping.clone(), name.clone());
            async move {
                if i == ping.count {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(ping.delay_ms.into())).await;
                let pong = Pong {
                    text: ping.text,
                    backend: name,
                    index: i,
                };
                Some((Ok(pong), i + 1))
            }
        });
        Box::pin(async move { Ok(Response::new(Box::pin(stream) as PongStream)) })
    }
}

struct Health {
    seen: Arc<Seen>,
}

impl UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = Answer<HealthCheckResponse>;

    fn call(&mut self, request: Request<HealthCheckRequest>) -> Self::Future {
        let status = self.seen.health.load(Ordering::Relaxed);
        let service = request.into_inner().service;
        Box::pin(async move {
            if !service.is_empty() && service != "test.Echo" {
                return Err(Status::not_found("unknown service"));
            }
            Ok(Response::new(HealthCheckResponse { status }))
        })
    }
}

/// hyper's HTTP/2 client as the service tonic's client sends through.
#[derive(Clone)]
pub struct H2(SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.0.clone();
        Box::pin(async move { sender.send_request(req).await })
    }
}

/// A gRPC client on one h2c connection.
#[derive(Clone)]
pub struct Client {
    grpc: tonic::client::Grpc<H2>,
}

/// Connects a client to `addr` (h2c, prior knowledge).
pub async fn client(addr: SocketAddr) -> Client {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let origin = format!("http://{addr}").parse().expect("origin");
    Client {
        grpc: tonic::client::Grpc::with_origin(H2(sender), origin),
    }
}

impl Client {
    /// `test.Echo/Unary` with `text`, answered after `delay`; `deadline`
    /// sets `grpc-timeout`, `metadata` adds headers.
    pub async fn unary(
        &mut self,
        text: &str,
        delay: Duration,
        deadline: Option<Duration>,
        metadata: &[(&'static str, &str)],
    ) -> Result<Response<Pong>, Status> {
        let mut request = Request::new(Ping {
            text: text.into(),
            delay_ms: u32::try_from(delay.as_millis()).expect("delay"),
            count: 1,
        });
        if let Some(d) = deadline {
            request.set_timeout(d);
        }
        for (k, v) in metadata {
            request
                .metadata_mut()
                .insert(*k, v.parse().expect("metadata value"));
        }
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        self.grpc
            .unary(
                request,
                PathAndQuery::from_static("/test.Echo/Unary"),
                ProstCodec::<Ping, Pong>::default(),
            )
            .await
    }

    /// `test.Echo/Stream`: `count` answers, `delay` apart, collected.
    pub async fn stream(
        &mut self,
        text: &str,
        count: u32,
        delay: Duration,
    ) -> Result<Vec<Pong>, Status> {
        let request = Request::new(Ping {
            text: text.into(),
            delay_ms: u32::try_from(delay.as_millis()).expect("delay"),
            count,
        });
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(e.to_string()))?;
        let mut stream = self
            .grpc
            .server_streaming(
                request,
                PathAndQuery::from_static("/test.Echo/Stream"),
                ProstCodec::<Ping, Pong>::default(),
            )
            .await?
            .into_inner();
        let mut pongs = Vec::new();
        while let Some(pong) = stream.message().await? {
            pongs.push(pong);
        }
        Ok(pongs)
    }
}

/// Whether `status` has `code`, with the status shown when not.
pub fn assert_code(result: Result<impl std::fmt::Debug, Status>, code: Code) -> Status {
    match result {
        Err(status) if status.code() == code => status,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}
