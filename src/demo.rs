//! The demo backend: a tiny HTTP service to balance across, used by
//! `tollgate demo`, `tollgate backend`, the compose file and the tests.
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | 200 `ok` |
//! | `GET /delay/{ms}` | waits `ms` milliseconds, then 200 JSON |
//! | `GET /status/{code}` | that status, JSON body |
//! | `POST /echo` | 200, the request body streamed back |
//! | `GET /bytes/{n}` | 200, `n` bytes streamed |
//! | `GET /headers` | 200, the request headers as a JSON object |
//! | `GET /ws` | WebSocket echo: text and binary messages sent back |
//! | `GET /trailers` | 200, a short body, then the trailer `x-trailer: yes` |
//! | `GET /concurrency` | 200 JSON `{"in_flight","max_in_flight","requests"}`: requests being handled now, the most at once, and all since start (this one and `/health` not counted) |
//! | `GET /path`, anything else | 200 JSON `{"backend","method","path"}` (the path it received) |
//!
//! Every answer carries `X-Backend: NAME`. It speaks HTTP/1.1, and with
//! `--h2c` HTTP/2 with prior knowledge as well (on the same port), to
//! stand behind a pool with `protocol: http2`. Trailers reach an
//! HTTP/1.1 client only if it sent `TE: trailers` (hyper's rule, and
//! HTTP/1.1's: chunked trailers are for clients that said they want
//! them, and only for fields the `Trailer` header announced).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::error::full;
use crate::proxy::server::{serve as serve_http, Drained, ServeOptions};
use crate::proxy::tunnel::{ClientIo, Tunnel};
use crate::proxy::{Body, BoxError, Conn};

/// Longest `/delay/{ms}` honoured, so a typo cannot park a request forever.
const MAX_DELAY: Duration = Duration::from_secs(600);
const CHUNK: usize = 64 * 1024;

/// Serves the demo backend (HTTP/1.1) on `listener` until `shutdown`
/// completes.
pub async fn serve(
    listener: TcpListener,
    name: String,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    serve_with(listener, name, false, shutdown).await
}

/// Serves the demo backend on `listener` until `shutdown` completes;
/// `h2c`: HTTP/2 with prior knowledge as well as HTTP/1.1.
pub async fn serve_with(
    listener: TcpListener,
    name: String,
    h2c: bool,
    shutdown: impl Future<Output = ()>,
) -> Drained {
    let name: Arc<str> = name.into();
    let load = Arc::new(Load::default());
    let options = ServeOptions {
        header_read_timeout: Duration::from_secs(10),
        drain_timeout: Duration::from_secs(5),
        h2c,
        ..ServeOptions::default()
    };
    serve_http(
        listener,
        move |req, _conn: Conn| handle(req, name.clone(), load.clone()),
        options,
        shutdown,
    )
    .await
}

/// How busy the backend is: what a test of tollgate's connection limits
/// reads (`GET /concurrency`), since only the backend sees its own load.
#[derive(Debug, Default)]
struct Load {
    now: AtomicUsize,
    max: AtomicUsize,
    requests: AtomicU64,
}

/// One request counted in [`Load`] while it is handled.
struct Handling<'a>(&'a Load);

impl<'a> Handling<'a> {
    fn start(load: &'a Load) -> Self {
        load.requests.fetch_add(1, Ordering::Relaxed);
        let now = load.now.fetch_add(1, Ordering::SeqCst) + 1;
        load.max.fetch_max(now, Ordering::SeqCst);
        Self(load)
    }
}

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(req: Request<Incoming>, name: Arc<str>, load: Arc<Load>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let _handling = match path.as_str() {
        "/concurrency" => {
            let body = serde_json::json!({
                "in_flight": load.now.load(Ordering::SeqCst),
                "max_in_flight": load.max.load(Ordering::SeqCst),
                "requests": load.requests.load(Ordering::Relaxed),
            });
            return Response::new(full(body.to_string()));
        }
        "/health" => None,
        _ => Some(Handling::start(&load)),
    };
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let first = segments.next().unwrap_or("");
    let arg = segments.next();
    let mut response = match (&method, first, arg) {
        (&Method::GET, "health", None) => Response::new(full("ok")),
        (_, "delay", Some(ms)) => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms).min(MAX_DELAY)).await;
                describe(&name, &method, &path)
            }
            Err(_) => crate::error::json_error(StatusCode::BAD_REQUEST, "delay wants milliseconds"),
        },
        (_, "status", Some(code)) => {
            match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
                Some(code) => {
                    let mut r = describe(&name, &method, &path);
                    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                    r
                }
                None => crate::error::json_error(StatusCode::BAD_REQUEST, "status wants 200-599"),
            }
        }
        (&Method::POST, "echo", None) => {
            let mut r = Response::new(req.into_body().map_err(BoxError::from).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            r
        }
        (&Method::GET, "headers", None) => {
            let mut seen = serde_json::Map::new();
            for (name, value) in req.headers() {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                seen.insert(name.as_str().to_owned(), value.into());
            }
            let mut r = Response::new(full(serde_json::Value::Object(seen).to_string()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::GET, "ws", None) => websocket(&req),
        (&Method::GET, "trailers", None) => with_trailer(),
        (&Method::GET, "bytes", Some(n)) => match n.parse::<u64>() {
            Ok(n) => Response::new(zeros(n)),
            Err(_) => crate::error::json_error(StatusCode::BAD_REQUEST, "bytes wants a count"),
        },
        _ => describe(&name, &method, &path),
    };
    if let Ok(v) = HeaderValue::from_str(&name) {
        response.headers_mut().insert("x-backend", v);
    }
    response
}

/// The 101 that opens a WebSocket echo (RFC 6455 §4.2.2), or 426 to a
/// request that is not a WebSocket handshake.
fn websocket(req: &Request<Incoming>) -> Response<Body> {
    let h = req.headers();
    let asks = h
        .get(header::UPGRADE)
        .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = h.get(header::SEC_WEBSOCKET_KEY);
    let (true, Some(key)) = (asks, key) else {
        return crate::error::json_error(
            StatusCode::UPGRADE_REQUIRED,
            "ws wants a WebSocket handshake",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    r.extensions_mut().insert(Tunnel::local(echo));
    r
}

/// Sends every text and binary message back until the client closes
/// (pings and the close handshake are answered by tungstenite).
async fn echo(io: ClientIo) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
    }
}

fn describe(name: &str, method: &Method, path: &str) -> Response<Body> {
    let body = serde_json::json!({ "backend": name, "method": method.as_str(), "path": path });
    let mut r = Response::new(full(body.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A short body followed by the trailer `x-trailer: yes`, announced in
/// `Trailer` (HTTP/1.1 sends only announced trailer fields).
fn with_trailer() -> Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-trailer", HeaderValue::from_static("yes"));
    let frames = [
        Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"trailers follow\n"))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r.headers_mut()
        .insert(header::TRAILER, HeaderValue::from_static("x-trailer"));
    r
}

/// `n` bytes produced 64 KiB at a time, never held whole.
fn zeros(n: u64) -> Body {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK as u64);
            let data = chunk.slice(..take as usize);
            Some((Ok::<_, BoxError>(Frame::data(data)), left - take))
        }
    });
    StreamBody::new(stream).boxed_unsync()
}
