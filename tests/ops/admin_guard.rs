//! What the admin API refuses before any handler runs: request heads its
//! parser cannot take, a `Host` it does not serve (DNS rebinding),
//! cross-site state changes from a browser, and token guessing.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{balancer, closed_port, config};

/// Sends `request` on a fresh connection to `addr`; the status, the head
/// (lower-cased) and the body, read until the server closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
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

fn assert_json_error(status: u16, head: &str, body: &str) -> Value {
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert_eq!(v["code"], status, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

#[tokio::test]
async fn a_two_megabyte_header_gets_a_json_431() {
    let lb = balancer(&config(&[closed_port()])).await;
    let big = "a".repeat(2 * 1024 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: {big}\r\n\r\n");
    let (status, head, body) = raw_exchange(lb.admin_addr(), request.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert_json_error(431, &head, &body);
    // A malformed head too: JSON, as on the proxy listeners.
    let (status, head, body) =
        raw_exchange(lb.admin_addr(), b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    assert_json_error(400, &head, &body);
    lb.shutdown().await;
}
