//! The front door under hostile clients: connections that never finish a
//! request head, oversized heads, bodies that pause, clients that stop
//! reading, and the parser's own refusals. Raw sockets and hand-written
//! HTTP/2 frames, so the tests see exactly what goes over the wire.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{backend, balancer, client, config, url};

/// Bound on how long a test waits for something that must happen; far
/// above the configured timeouts, never a speed assertion.
const PATIENCE: Duration = Duration::from_secs(10);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HPACK block for `GET path` (static-table pseudo-headers, literal
/// `:authority` and path, no Huffman coding).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
    b.push(0x04); // :path, literal without indexing
    b.push(path.len() as u8);
    b.extend_from_slice(path.as_bytes());
    b.push(0x01); // :authority, literal without indexing
    b.push(9);
    b.extend_from_slice(b"localhost");
    b
}

/// Reads frames until the peer closes; returns the (type, stream, payload)
/// of each. Fails the test if the peer keeps the connection open past
/// PATIENCE.
async fn frames_until_close(s: &mut TcpStream) -> Vec<(u8, u32, Vec<u8>)> {
    tokio::time::timeout(PATIENCE, async {
        let mut out = Vec::new();
        loop {
            let mut head = [0u8; 9];
            if s.read_exact(&mut head).await.is_err() {
                return out;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return out;
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            out.push((head[3], stream, payload));
        }
    })
    .await
    .expect("the server closed the connection")
}

async fn short_timeouts_balancer(b: SocketAddr) -> tollgate::app::Running {
    let mut c = config(&[b]);
    c.server.header_read_timeout = Duration::from_millis(200);
    balancer(&c).await
}

#[tokio::test]
async fn an_h2_header_block_that_never_ends_is_closed_at_the_header_timeout() {
    let b = backend("b").await;
    let lb = short_timeouts_balancer(b.addr).await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // HEADERS without END_HEADERS: a CONTINUATION should follow, never does.
    out.extend(frame(HEADERS, END_STREAM, 1, &get_block("/")));
    s.write_all(&out).await.expect("write");
    let frames = frames_until_close(&mut s).await;
    assert!(
        frames.iter().any(|f| f.0 == GOAWAY),
        "a GOAWAY before the close: {frames:?}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn an_h2_connection_with_only_preface_and_settings_is_closed() {
    let b = backend("b").await;
    let lb = short_timeouts_balancer(b.addr).await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&out).await.expect("write");
    frames_until_close(&mut s).await;
    lb.shutdown().await;
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_after_its_last_request() {
    let b = backend("b").await;
    let lb = short_timeouts_balancer(b.addr).await;
    let tcp = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(connection);
    // Requests keep it open past the idle timeout as long as they run.
    let req = http::Request::get(format!("http://{}/delay/500", lb.proxy_addr()))
        .body(())
        .expect("request");
    let (response, _) = h2.send_request(req, true).expect("send");
    let response = response.await.expect("a response after 500 ms");
    assert_eq!(response.status(), 200);
    drop(response);
    // Then, idle, it is closed by the server. The client keeps its handle
    // (h2 closes a connection whose last handle is dropped).
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the server closed the idle connection")
        .expect("connection task")
        .ok();
    drop(h2);
    lb.shutdown().await;
}

#[tokio::test]
async fn h2_streams_beyond_the_limit_are_refused() {
    let b = backend("b").await;
    let mut c = config(&[b.addr]);
    c.server.http2_max_concurrent_streams = std::num::NonZeroU32::new(4).expect("4");
    let lb = balancer(&c).await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    // Five slow requests at once on stream ids 1, 3, 5, 7, 9.
    for i in 0..5u32 {
        out.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            2 * i + 1,
            &get_block("/delay/1000"),
        ));
    }
    s.write_all(&out).await.expect("write");
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.expect("a frame");
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.expect("payload");
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if head[3] == RST_STREAM {
                return (
                    stream,
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]),
                );
            }
        }
    })
    .await
    .expect("a stream was reset");
    // REFUSED_STREAM (7) for the fifth stream.
    assert_eq!(refused, (9, 7));
    lb.shutdown().await;
}

#[tokio::test]
async fn an_h2_header_list_over_the_limit_is_refused() {
    let b = backend("b").await;
    let mut c = config(&[b.addr]);
    // Below h2's own default of 16 KiB, so the test sees this setting.
    c.server.max_header_bytes = 8192;
    let lb = balancer(&c).await;
    let tcp = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    let (mut h2, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(connection);
    let req = http::Request::get(format!("http://{}/", lb.proxy_addr()))
        .header("x-big", "a".repeat(12 * 1024))
        .body(())
        .expect("request");
    let (response, _) = h2.send_request(req, true).expect("send");
    match response.await {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}"),
    }
    lb.shutdown().await;
}

/// Sends `request` on a fresh connection; returns the status, the headers
/// (lower-cased) and the body, read until the server closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("the server answered and closed")
        .ok();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn assert_json_error(status: u16, head: &str, body: &str) {
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["code"], status);
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_is_answered_431_json() {
    let b = backend("b").await;
    let lb = balancer(&config(&[b.addr])).await;
    let big = "a".repeat(40 * 1024);
    let request = format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
    let (status, head, body) = raw_exchange(lb.proxy_addr(), request.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert_json_error(431, &head, &body);
    lb.shutdown().await;
}

#[tokio::test]
async fn parser_refusals_carry_the_json_body() {
    let b = backend("b").await;
    let mut c = config(&[b.addr]);
    c.server.max_header_bytes = 1024 * 1024;
    let lb = balancer(&c).await;
    let (status, head, body) =
        raw_exchange(lb.proxy_addr(), b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    assert_json_error(400, &head, &body);
    // hyper refuses URIs of 64 KiB and more with 414.
    let long = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "u".repeat(70 * 1024));
    let (status, head, body) = raw_exchange(lb.proxy_addr(), long.as_bytes()).await;
    assert_eq!(status, 414, "{head}");
    assert_json_error(414, &head, &body);
    lb.shutdown().await;
}

/// A raw backend that answers every request with `response` and keeps the
/// connection open.
async fn fixed_backend(response: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    let mut first = None;
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        first.get_or_insert_with(|| line.clone());
                    }
                    let health = first.is_some_and(|l| l.starts_with("GET /health "));
                    let answer = if health {
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    } else {
                        response
                    };
                    if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_backends_own_empty_400_passes_through_unchanged_on_a_kept_alive_connection() {
    // Shaped exactly like hyper's own parser refusal once hyper adds its
    // date header; forwarded, it must stay as the backend sent it.
    let b = fixed_backend("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
    let mut c = config(&[b]);
    c.rate_limit.enabled = false;
    let lb = balancer(&c).await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("write");
        let mut head = Vec::new();
        tokio::time::timeout(PATIENCE, async {
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                s.read_exact(&mut byte).await.expect("response byte");
                head.push(byte[0]);
            }
        })
        .await
        .expect("the response came on the kept-alive connection");
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 400 bad request\r\n"), "{head}");
        assert!(head.contains("content-length: 0\r\n"), "{head}");
        assert!(!head.contains("application/json"), "{head}");
    }
    lb.shutdown().await;
}

// ---------------------------------------------------------------------
// The rest of an exchange: bodies that pause, clients that stop reading.

type Act = fn(TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A raw backend: health checks (`GET /health`) get 200 and a close;
/// any other request's connection is handed to `act` once its head is
/// read.
async fn scripted_backend(act: Act) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                if head.starts_with("GET /health ") {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                }
                act(stream).await;
            });
        }
    });
    addr
}

/// Reads one request head from `s` (`None` at EOF).
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => seen.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&seen).into_owned())
}

/// Waits until the peer closes `s`, discarding what it sends.
async fn until_closed(s: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
}

fn timeouts_config(b: SocketAddr) -> tollgate::config::Config {
    let mut c = config(&[b]);
    c.rate_limit.enabled = false;
    c.health_check.interval = Duration::from_secs(3600);
    c.server.client_body_timeout = Duration::from_millis(200);
    c.server.send_timeout = Duration::from_millis(200);
    c.proxy.backend_body_timeout = Duration::from_millis(200);
    c
}

#[tokio::test]
async fn a_backend_that_stalls_its_body_is_cut() {
    static CLOSED: tokio::sync::Notify = tokio::sync::Notify::const_new();
    let b = scripted_backend(|mut s| {
        Box::pin(async move {
            // 10 of 100 promised bytes, then nothing.
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                .await;
            until_closed(&mut s).await;
            CLOSED.notify_one();
        })
    })
    .await;
    let lb = balancer(&timeouts_config(b)).await;
    let response = client()
        .get(url(lb.proxy_addr(), "/"))
        .send()
        .await
        .expect("response headers");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(PATIENCE, response.bytes())
        .await
        .expect("the body ended");
    assert!(body.is_err(), "a truncated body is an error: {body:?}");
    tokio::time::timeout(PATIENCE, CLOSED.notified())
        .await
        .expect("the backend connection was closed");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_client_that_pauses_its_upload_gets_408_and_frees_the_backend() {
    static UPLOAD_CLOSED: tokio::sync::Notify = tokio::sync::Notify::const_new();
    let b = scripted_backend(|mut s| {
        Box::pin(async move {
            // Wait for the whole body before answering, as most backends do.
            until_closed(&mut s).await;
            UPLOAD_CLOSED.notify_one();
        })
    })
    .await;
    let lb = balancer(&timeouts_config(b)).await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut got))
        .await
        .expect("answered and closed")
        .ok();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("\"code\":408"), "{text}");
    tokio::time::timeout(PATIENCE, UPLOAD_CLOSED.notified())
        .await
        .expect("the backend connection was closed");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_frees_the_backend() {
    static DOWNLOAD_CLOSED: tokio::sync::Notify = tokio::sync::Notify::const_new();
    let b = scripted_backend(|mut s| {
        Box::pin(async move {
            // An endless chunked download, as fast as it is taken.
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = {
                let mut c = b"10000\r\n".to_vec();
                c.extend(vec![b'x'; 0x10000]);
                c.extend(b"\r\n");
                c
            };
            while s.write_all(&chunk).await.is_ok() {}
            DOWNLOAD_CLOSED.notify_one();
        })
    })
    .await;
    let lb = balancer(&timeouts_config(b)).await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    s.write_all(b"GET /forever HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    // Never read: the proxy's writes block, then fail at send_timeout.
    tokio::time::timeout(PATIENCE, DOWNLOAD_CLOSED.notified())
        .await
        .expect("the backend connection was closed");
    drop(s);
    lb.shutdown().await;
}

/// Descriptors this process has open (the balancer runs in it): printed by
/// the zero-window test for the record, not asserted, since the other
/// tests of this binary open and close theirs at the same time.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[tokio::test]
async fn h2_streams_the_client_gives_no_window_are_reset_and_free_their_backends() {
    const CONNECTIONS: usize = 3;
    const STREAMS: usize = 50;
    let b = backend("b").await;
    let mut c = timeouts_config(b.addr);
    // Longer than opening the 150 streams takes, so that none is reset
    // before the last has its response head: 0.3 s on a quiet box, 2.6 s
    // seen with six builds sharing its two cores.
    c.server.send_timeout = Duration::from_secs(5);
    let send_timeout = c.server.send_timeout;
    let opened = tokio::time::Instant::now();
    let lb = balancer(&c).await;
    let backend = lb.pool().backends()[0].clone();
    let fds_before = open_fds();
    let mut connections = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..CONNECTIONS {
        let tcp = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
        // No stream may receive a byte: SETTINGS_INITIAL_WINDOW_SIZE=0,
        // and no WINDOW_UPDATE ever. The connection task answers PINGs.
        let (mut h2, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .expect("h2 handshake");
        connections.push(tokio::spawn(connection));
        for _ in 0..STREAMS {
            h2 = h2.ready().await.expect("room for a stream");
            let req = http::Request::get(format!("http://{}/bytes/10000000", lb.proxy_addr()))
                .body(())
                .expect("request");
            let (response, _) = h2.send_request(req, true).expect("send");
            bodies.push(response);
        }
    }
    let mut held = Vec::new();
    for response in bodies {
        let response = tokio::time::timeout(PATIENCE, response)
            .await
            .expect("response headers in time")
            .expect("response headers");
        assert_eq!(response.status(), 200);
        held.push(response.into_body());
    }
    // Every response has its backend connection, none can send a byte.
    let stalled_at = tokio::time::Instant::now();
    assert_eq!(
        backend.in_flight(),
        CONNECTIONS * STREAMS,
        "opening the streams took {:?}",
        stalled_at - opened
    );
    let fds_stalled = open_fds();
    let deadline = stalled_at + send_timeout + Duration::from_secs(1);
    while backend.in_flight() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} backend requests still open {:?} after the streams stalled \
             (open fds: {fds_before} before, {fds_stalled} stalled, {} now)",
            backend.in_flight(),
            stalled_at.elapsed(),
            open_fds()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let freed_after = stalled_at.elapsed();
    let fds_after = open_fds();
    eprintln!(
        "open fds: {fds_before} before, {fds_stalled} with {} streams stalled, \
         {fds_after} {freed_after:?} later (every backend request ended)",
        CONNECTIONS * STREAMS
    );
    // Each stream was reset (or its connection closed), none ended as if
    // the response were complete.
    for mut body in held {
        let end = tokio::time::timeout(PATIENCE, body.data())
            .await
            .expect("the stream ended");
        assert!(matches!(end, Some(Err(_))), "a reset, not {end:?}");
    }
    // Connections that keep stalling streams are closed.
    for connection in connections {
        tokio::time::timeout(PATIENCE, connection)
            .await
            .expect("the server closed the connection")
            .expect("connection task")
            .ok();
    }
    eprintln!(
        "open fds: {} {:?} after the stall, the client connections closed",
        open_fds(),
        stalled_at.elapsed()
    );
    let metrics = crate::support::metrics::parse(
        &crate::support::metrics::scrape(&client(), lb.admin_addr()).await,
    );
    let cut = metrics
        .get("tollgate_idle_timeouts_total{direction=\"h2_send\"}")
        .copied()
        .unwrap_or(0.0);
    eprintln!("tollgate_idle_timeouts_total{{direction=\"h2_send\"}} {cut}");
    assert!(cut >= CONNECTIONS as f64, "streams reset, counted: {cut}");
    lb.shutdown().await;
}
