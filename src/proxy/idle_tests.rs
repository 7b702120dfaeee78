//! Idle HTTP/1.1 connections waiting outside hyper ([`super::park`]),
//! tested through the server that hands them back.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::proxy::server::{serve, ServeOptions};

fn waiting() -> usize {
    super::park::waiting::count()
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A server answering `ok` (with the request body's length) to
/// every request, on this thread's runtime.
async fn server(options: ServeOptions) -> (std::net::SocketAddr, crate::shutdown::Trigger) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, signal) = crate::shutdown::channel();
    let handler = |req: http::Request<hyper::body::Incoming>, _conn| async move {
        use http_body_util::BodyExt;
        let body = req.into_body().collect().await.map(|b| b.to_bytes().len());
        let text = format!("ok {}", body.unwrap_or(usize::MAX));
        http::Response::new(crate::body::full(text))
    };
    tokio::spawn(serve(listener, handler, options, signal.wait()));
    (addr, stop)
}

/// Reads one response with a body of `content-length` bytes; returns
/// the body.
async fn response(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                buf.drain(..end + 4 + len);
                return body;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response; got {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn an_idle_keep_alive_connection_waits_outside_hyper_and_is_served_again() {
    let options = ServeOptions {
        park_after: Duration::from_millis(20),
        ..ServeOptions::default()
    };
    let (addr, _stop) = server(options).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(GET).await.expect("write");
    assert_eq!(response(&mut s, &mut buf).await, "ok 0");
    until("the idle connection to leave hyper", || waiting() == 1).await;

    // The next request wakes it, and it goes back once answered.
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .expect("write");
    assert_eq!(response(&mut s, &mut buf).await, "ok 5");
    until("the connection to leave hyper again", || waiting() == 1).await;

    // Two requests in one write: both answered, in order.
    let two = [
        GET,
        b"POST / HTTP/1.1\r\nHost: t\r\ncontent-length: 2\r\n\r\nhi",
    ]
    .concat();
    s.write_all(&two).await.expect("write");
    assert_eq!(response(&mut s, &mut buf).await, "ok 0");
    assert_eq!(response(&mut s, &mut buf).await, "ok 2");
    until("the connection to leave hyper after the pair", || {
        waiting() == 1
    })
    .await;

    // A head in two pieces: the first wakes the connection, which
    // stays with hyper until the head is whole.
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.expect("write");
    until("the first piece to wake the connection", || waiting() == 0).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        waiting(),
        0,
        "a connection with half a head stays with hyper"
    );
    s.write_all(b"st: t\r\n\r\n").await.expect("write");
    assert_eq!(response(&mut s, &mut buf).await, "ok 0");
    until("the connection to leave hyper at the end", || {
        waiting() == 1
    })
    .await;

    drop(s);
    until("the closed connection to end", || waiting() == 0).await;
}

#[tokio::test]
async fn a_connection_idle_for_header_read_timeout_outside_hyper_is_closed() {
    let options = ServeOptions {
        header_read_timeout: Duration::from_millis(300),
        park_after: Duration::from_millis(20),
        ..ServeOptions::default()
    };
    let (addr, _stop) = server(options).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut buf = Vec::new();
    s.write_all(GET).await.expect("write");
    assert_eq!(response(&mut s, &mut buf).await, "ok 0");
    until("the idle connection to leave hyper", || waiting() == 1).await;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed within header_read_timeout")
        .expect("read");
    assert_eq!(n, 0, "closed without a byte");
    assert_eq!(waiting(), 0);
}
