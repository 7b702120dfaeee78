//! WebSocket through tollgate: the demo backend's `/ws` echo behind a
//! balancer, reached with a WebSocket client. Tunnels are charged like
//! requests, count as in flight for their backend, close when idle, and
//! are cut when the drain at shutdown times out.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;
use tollgate::limiter::Limits;
use tollgate::proxy::server::Drained;

use crate::support::raw::RawClient;
use crate::support::{backend, balancer, config, eventually};

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket handshake with `/ws` through `addr`.
async fn open(addr: SocketAddr) -> Result<Ws, tungstenite::Error> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp).await?;
    assert_eq!(response.status(), 101);
    Ok(ws)
}

/// Sends `message` and expects it back.
async fn echo(ws: &mut Ws, message: Message) {
    ws.send(message.clone()).await.expect("send");
    let back = ws.next().await.expect("an answer").expect("a message");
    assert_eq!(back, message);
}

/// Waits for the tunnel to close; `Instant` when it did.
async fn closed(ws: &mut Ws) -> Instant {
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(Message::Close(_))) => {}
                Some(Ok(other)) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the tunnel stayed open");
    Instant::now()
}

#[tokio::test]
async fn websocket_echo_of_1000_text_and_1000_binary_messages() {
    let b = backend("b0").await;
    let lb = balancer(&config(&[b.addr])).await;
    let mut ws = open(lb.proxy_addr()).await.expect("upgraded");
    for i in 0..1000 {
        echo(&mut ws, Message::text(format!("message {i}"))).await;
    }
    for i in 0..1000u32 {
        let bytes: Vec<u8> = (0..=(i % 300)).map(|k| (k ^ i) as u8).collect();
        echo(&mut ws, Message::binary(bytes)).await;
    }
    ws.close(None).await.expect("close");
    closed(&mut ws).await;
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn an_upgrade_takes_a_token_and_is_refused_without_one() {
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    cfg.rate_limit.default = Limits::new(1, 0.01).expect("valid");
    let lb = balancer(&cfg).await;
    let mut first = open(lb.proxy_addr()).await.expect("the first upgrade");
    echo(&mut first, Message::text("hello")).await;
    let refused = open(lb.proxy_addr()).await.expect_err("no token left");
    let tungstenite::Error::Http(response) = refused else {
        panic!("not refused with an HTTP answer: {refused:?}");
    };
    assert_eq!(response.status(), 429);
    let h = response.headers();
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert_eq!(h["x-ratelimit-remaining"], "0", "{h:?}");
    // The open tunnel is not charged for its messages.
    echo(&mut first, Message::text("still here")).await;
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn a_tunnel_counts_in_flight_for_its_backend_until_it_closes() {
    let b = backend("b0").await;
    let lb = balancer(&config(&[b.addr])).await;
    let backend = lb.pool().backends()[0].clone();
    let mut ws = open(lb.proxy_addr()).await.expect("upgraded");
    echo(&mut ws, Message::text("hello")).await;
    assert_eq!(backend.in_flight(), 1);
    ws.close(None).await.expect("close");
    closed(&mut ws).await;
    eventually("the tunnel no longer in flight", || {
        backend.in_flight() == 0
    })
    .await;
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_upgrade_idle_timeout() {
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    let idle = Duration::from_millis(800);
    cfg.proxy.upgrade_idle_timeout = idle;
    let lb = balancer(&cfg).await;
    let mut ws = open(lb.proxy_addr()).await.expect("upgraded");
    // Traffic keeps it open past the idle timeout...
    let start = Instant::now();
    echo(&mut ws, Message::text("ping")).await;
    while start.elapsed() < idle * 2 {
        tokio::time::sleep(idle / 4).await;
        echo(&mut ws, Message::text("ping")).await;
    }
    // ...silence closes it, not before the timeout.
    let quiet = Instant::now();
    let at = closed(&mut ws).await;
    assert!(at - quiet >= idle, "closed after {:?}", at - quiet);
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn a_tunnel_open_at_shutdown_is_cut_at_the_drain_timeout() {
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    let drain = Duration::from_millis(1500);
    cfg.server.drain_timeout = drain;
    let lb = balancer(&cfg).await;
    let addr = lb.proxy_addr();
    let mut ws = open(addr).await.expect("upgraded");
    echo(&mut ws, Message::text("before")).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(lb.shutdown());
    // The drain has begun (the listener refuses connections) and the
    // tunnel still carries messages.
    eventually("the listener closed", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    echo(&mut ws, Message::text("during the drain")).await;
    let at = closed(&mut ws).await;
    assert!(at - started >= drain, "cut after {:?}", at - started);
    assert_eq!(shutdown.await.expect("shutdown"), Drained::TimedOut);
    b.stop().await;
}

#[tokio::test]
async fn bytes_sent_right_behind_the_handshake_reach_the_backend() {
    // A client may send its first frames before the 101 arrives; they are
    // read with the request head and must not be lost when the socket
    // leaves hyper.
    let b = backend("b0").await;
    let lb = balancer(&config(&[b.addr])).await;
    let mut c = RawClient::connect(lb.proxy_addr()).await;
    let mut bytes = b"GET /ws HTTP/1.1\r\nHost: app.example\r\nConnection: Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        .to_vec();
    // A masked text frame "hi", then a masked close frame.
    bytes.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    bytes.extend_from_slice(&[0x88, 0x80, 0, 0, 0, 0]);
    c.send(&bytes).await;
    let head = c.head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // The echo, then the backend's close frame; then the backend closes
    // and the tunnel ends with it.
    let rest = c.rest().await;
    assert!(rest.starts_with(&[0x81, 0x02, b'h', b'i']), "{rest:?}");
    assert_eq!(rest.get(4), Some(&0x88), "{rest:?}");
    lb.shutdown().await;
    b.stop().await;
}
