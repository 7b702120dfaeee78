//! An HTTP/2 client speaking h2c (prior knowledge) to a balancer.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;

/// Connects to `addr` with the HTTP/2 preface and returns the sender; the
/// connection is driven by a spawned task.
pub async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    connect_for(addr).await
}

/// [`connect`], for requests with a body of type `B`.
#[allow(dead_code)] // not every test binary sends bodies
pub async fn connect_for<B>(addr: SocketAddr) -> SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    sender
}
