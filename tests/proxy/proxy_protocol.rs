//! `server.proxy_protocol`: a balancer in front names the client in a
//! PROXY v1 or v2 header. The named client is limited and forwarded;
//! untrusted peers and bad headers are closed without an answer and
//! counted. Raw sockets with hand-built headers, so the tests control
//! exactly what goes over the wire and see exactly what comes back.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tollgate::app::Running;
use tollgate::limiter::Limits;

use crate::support::metrics::{parse, scrape};
use crate::support::raw::RawClient;
use crate::support::{backend, balancer, client, config};

/// Bound on how long a test waits for something that must happen; never
/// a speed assertion.
const PATIENCE: Duration = Duration::from_secs(10);

/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 header: `command` 0 LOCAL / 1 PROXY, `family` the
/// family-and-protocol byte, then the address block as given.
fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut b = V2_SIGNATURE.to_vec();
    b.push(0x20 | command);
    b.push(family);
    b.extend_from_slice(&u16::try_from(addresses.len()).expect("len").to_be_bytes());
    b.extend_from_slice(addresses);
    b
}

/// A v2 PROXY header for a TCP connection from `src` to `dst`.
fn v2_tcp(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut a = Vec::new();
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            a.extend_from_slice(&s.ip().octets());
            a.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            a.extend_from_slice(&s.ip().octets());
            a.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family for both ends"),
    };
    a.extend_from_slice(&src.port().to_be_bytes());
    a.extend_from_slice(&dst.port().to_be_bytes());
    v2(1, family, &a)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

const GET_HEADERS: &[u8] =
    b"GET /headers HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n";

/// A balancer with PROXY protocol on, believing loopback peers, each
/// client allowed one request (no refill): a second request from the same
/// client IP gets 429.
async fn proxy_protocol_balancer(trusted: &str, backend: SocketAddr) -> Running {
    let mut c = config(&[backend]);
    c.server.proxy_protocol = true;
    c.server.header_read_timeout = Duration::from_millis(300);
    c.rate_limit.trusted_proxies = vec![trusted.parse().expect("cidr")];
    c.rate_limit.default = Limits::new(1, 0.0).expect("valid");
    balancer(&c).await
}

/// `header` and a `GET /headers` in one write; the status, and the
/// headers the backend received (for a 200).
async fn get_headers_after(lb: SocketAddr, header: &[u8]) -> (u16, Option<serde_json::Value>) {
    let mut c = RawClient::connect(lb).await;
    c.send(&[header, GET_HEADERS].concat()).await;
    let r = c.response().await;
    let seen = (r.status == 200).then(|| r.json());
    (r.status, seen)
}

/// Reads until the balancer closes the connection; what it sent first.
/// A reset counts as a close (closing with unread bytes sends one).
async fn answer_before_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the balancer closed the connection");
    got
}

/// `tollgate_proxy_protocol_refused_total{reason}` on `lb`'s admin
/// listener (0 before the first). The recorder is process-wide and other
/// tests of this binary refuse connections too: compare with `>=`.
async fn refused(lb: &Running, reason: &str) -> f64 {
    let text = scrape(&client(), lb.admin_addr()).await;
    parse(&text)
        .get(&format!(
            "tollgate_proxy_protocol_refused_total{{reason=\"{reason}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

/// Sends `bytes` from a loopback peer and expects the connection closed
/// without a byte answered, and the refusal counted under `reason`.
async fn closed_unanswered(lb: &Running, bytes: &[u8], reason: &str) {
    let before = refused(lb, reason).await;
    let mut s = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let answer = answer_before_close(&mut s).await;
    assert!(
        answer.is_empty(),
        "{bytes:?} was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    let after = refused(lb, reason).await;
    assert!(after > before, "{reason}: {before} -> {after}");
}

#[tokio::test]
async fn a_v1_source_is_the_client_for_limits_and_forwarding() {
    let b = backend("b").await;
    let lb = proxy_protocol_balancer("127.0.0.0/8", b.addr).await;
    let first = b"PROXY TCP4 198.51.100.1 10.0.0.1 40000 80\r\n";
    let (status, seen) = get_headers_after(lb.proxy_addr(), first).await;
    assert_eq!(status, 200);
    let seen = seen.expect("headers");
    assert_eq!(seen["x-forwarded-for"], "198.51.100.1", "{seen}");
    // The same client again, from another port: its one token is spent.
    let again = b"PROXY TCP4 198.51.100.1 10.0.0.1 40001 80\r\n";
    assert_eq!(get_headers_after(lb.proxy_addr(), again).await.0, 429);
    // Another client through the same balancer has a bucket of its own.
    let other = b"PROXY TCP4 198.51.100.2 10.0.0.1 40000 80\r\n";
    let (status, seen) = get_headers_after(lb.proxy_addr(), other).await;
    assert_eq!(status, 200);
    assert_eq!(seen.expect("headers")["x-forwarded-for"], "198.51.100.2");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_v2_source_is_the_client_for_limits_and_forwarding_ipv4_and_ipv6() {
    let b = backend("b").await;
    let lb = proxy_protocol_balancer("127.0.0.0/8", b.addr).await;
    for (src, dst, forwarded) in [
        ("192.0.2.10:5000", "10.0.0.1:80", "192.0.2.10"),
        ("[2001:db8::7]:5000", "[2001:db8::1]:443", "2001:db8::7"),
    ] {
        let header = v2_tcp(addr(src), addr(dst));
        let (status, seen) = get_headers_after(lb.proxy_addr(), &header).await;
        assert_eq!(status, 200, "{src}");
        assert_eq!(seen.expect("headers")["x-forwarded-for"], forwarded);
        assert_eq!(
            get_headers_after(lb.proxy_addr(), &header).await.0,
            429,
            "{src} has its own bucket"
        );
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn v2_local_and_v1_unknown_keep_the_peer_address() {
    let b = backend("b").await;
    let lb = proxy_protocol_balancer("127.0.0.0/8", b.addr).await;
    let (status, seen) = get_headers_after(lb.proxy_addr(), &v2(0, 0x00, &[])).await;
    assert_eq!(status, 200);
    assert_eq!(seen.expect("headers")["x-forwarded-for"], "127.0.0.1");
    // 127.0.0.1 was charged: UNKNOWN is the same client.
    let unknown = b"PROXY UNKNOWN\r\n";
    assert_eq!(get_headers_after(lb.proxy_addr(), unknown).await.0, 429);
    lb.shutdown().await;
}

/// `header`, then a `GET /headers` carrying `X-Forwarded-For: xff`.
async fn get_with_xff_after(
    lb: SocketAddr,
    header: &[u8],
    xff: &str,
) -> (u16, Option<serde_json::Value>) {
    let request = format!(
        "GET /headers HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: {xff}\r\n\
         Connection: close\r\n\r\n"
    );
    let mut c = RawClient::connect(lb).await;
    c.send(&[header, request.as_bytes()].concat()).await;
    let r = c.response().await;
    let seen = (r.status == 200).then(|| r.json());
    (r.status, seen)
}

/// A LOCAL / UNKNOWN header makes the balancer in front the client, and
/// it does not vouch for what its request says: `X-Forwarded-For` is not
/// read for limits nor passed on as a trusted chain, even though the peer
/// is a trusted proxy (issue 23, item 19). A spoofed address per request
/// would otherwise get a fresh bucket each time.
#[tokio::test]
async fn v2_local_and_v1_unknown_do_not_read_x_forwarded_for() {
    let b = backend("b").await;
    let lb = proxy_protocol_balancer("127.0.0.0/8", b.addr).await;
    let local = v2(0, 0x00, &[]);
    let (status, seen) = get_with_xff_after(lb.proxy_addr(), &local, "203.0.113.7").await;
    assert_eq!(status, 200);
    // The chain starts at the peer: the claim is not forwarded as trusted.
    assert_eq!(seen.expect("headers")["x-forwarded-for"], "127.0.0.1");
    // The peer's one token is spent: another spoofed address changes
    // nothing, on LOCAL or UNKNOWN.
    let (status, _) = get_with_xff_after(lb.proxy_addr(), &local, "203.0.113.8").await;
    assert_eq!(status, 429);
    let unknown = b"PROXY UNKNOWN\r\n";
    let (status, _) = get_with_xff_after(lb.proxy_addr(), unknown, "203.0.113.9").await;
    assert_eq!(status, 429);
    // A header that names a client still is that client.
    let named = b"PROXY TCP4 198.51.100.40 192.0.2.1 4000 80\r\n";
    assert_eq!(get_headers_after(lb.proxy_addr(), named).await.0, 200);
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn a_header_in_pieces_is_read_whole() {
    let b = backend("b").await;
    let lb = proxy_protocol_balancer("127.0.0.0/8", b.addr).await;
    for header in [
        b"PROXY TCP6 2001:db8::9 2001:db8::1 5000 80\r\n".to_vec(),
        v2_tcp(addr("192.0.2.20:1"), addr("10.0.0.1:2")),
    ] {
        let mut s = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
        s.set_nodelay(true).expect("nodelay");
        for piece in header.chunks(7) {
            s.write_all(piece).await.expect("write");
            // Pacing, not waiting: gives each piece its own segment, so
            // the balancer meets the header incomplete. The unit tests
            // of proxy_protocol.rs show the pieces being read one by one.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        s.write_all(GET_HEADERS).await.expect("write");
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, s.read_to_end(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let client = if header.starts_with(b"PROXY") {
            "2001:db8::9"
        } else {
            "192.0.2.20"
        };
        assert!(
            text.contains(&format!("\"x-forwarded-for\":\"{client}\"")),
            "{text}"
        );
    }
    lb.shutdown().await;
}

/// A stream whose first write carries `header` in front of what the
/// writer writes: header and h2c preface leave in one segment.
struct HeaderFirst {
    stream: TcpStream,
    header: Vec<u8>,
}

impl AsyncRead for HeaderFirst {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeaderFirst {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        while !this.header.is_empty() {
            let joined = [this.header.as_slice(), buf].concat();
            let n = ready!(Pin::new(&mut this.stream).poll_write(cx, &joined))?;
            let of_header = n.min(this.header.len());
            this.header.drain(..of_header);
            if n > of_header {
                return Poll::Ready(Ok(n - of_header));
            }
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn an_h2c_preface_in_the_headers_segment_is_not_lost() {
    use http_body_util::{BodyExt, Empty};
    let b = backend("b").await;
    let lb = proxy_protocol_balancer("127.0.0.0/8", b.addr).await;
    let stream = TcpStream::connect(lb.proxy_addr()).await.expect("connect");
    let io = HeaderFirst {
        stream,
        header: v2_tcp(addr("192.0.2.30:1"), addr("10.0.0.1:2")),
    };
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let req = http::Request::get("http://app.example/headers")
        .body(Empty::<bytes::Bytes>::new())
        .expect("request");
    let r = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("answered")
        .expect("h2 response");
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
    let body = r.into_body().collect().await.expect("body").to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["x-forwarded-for"], "192.0.2.30");
    lb.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_peer_is_closed_unanswered() {
    let b = backend("b").await;
    // 127.0.0.1, where the test connects from, is not trusted.
    let lb = proxy_protocol_balancer("10.0.0.0/8", b.addr).await;
    let header = b"PROXY TCP4 198.51.100.1 10.0.0.1 40000 80\r\n";
    closed_unanswered(&lb, &[&header[..], GET_HEADERS].concat(), "untrusted").await;
    lb.shutdown().await;
}

#[tokio::test]
async fn missing_and_malformed_headers_are_closed_unanswered() {
    let b = backend("b").await;
    let lb = proxy_protocol_balancer("127.0.0.0/8", b.addr).await;
    closed_unanswered(&lb, GET_HEADERS, "missing").await;
    for bad in [
        b"PROXY TCP4 198.51.100.1 nonsense\r\n".to_vec(),
        b"PROXY TCP4 198.51.100.1 10.0.0.1 40000 80 extra words\r\n".to_vec(),
        b"PROXY TCP4 2001:db8::1 10.0.0.1 40000 80\r\n".to_vec(),
        format!("PROXY UNKNOWN {}", "x".repeat(200)).into_bytes(),
        // v2, IPv4 family with a 4-byte address block.
        v2(1, 0x11, &[192, 0, 2, 1]),
        // v2, version 3.
        [V2_SIGNATURE, &[0x31, 0x11, 0, 0]].concat(),
    ] {
        closed_unanswered(&lb, &[bad.as_slice(), GET_HEADERS].concat(), "malformed").await;
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn a_header_that_never_completes_is_closed_at_the_header_timeout() {
    let b = backend("b").await;
    let lb = proxy_protocol_balancer("127.0.0.0/8", b.addr).await;
    // header_read_timeout is 300 ms; PATIENCE bounds the wait for the close.
    closed_unanswered(&lb, b"PROXY TCP4 198.51.", "timeout").await;
    closed_unanswered(&lb, &V2_SIGNATURE[..5], "timeout").await;
    lb.shutdown().await;
}
