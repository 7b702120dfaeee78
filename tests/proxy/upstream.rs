//! Backend connection reuse: kept when it is safe, never when it is not.
//!
//! These backends are raw TCP servers that count their connections, so the
//! tests see what the balancer does on the wire, not only what it answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::support::{backend, balancer, client, config, url};

/// How the raw backend ends each response.
#[derive(Clone, Copy, PartialEq)]
enum After {
    /// Keep the connection open for the next request.
    KeepAlive,
    /// Say `Connection: close` and close.
    Close,
    /// Answer a request with a body before reading the body, then never
    /// read from that connection again (bodiless requests as KeepAlive).
    AnswerEarly,
}

/// A raw HTTP/1.1 backend answering `200 ok:<n>` (n = body bytes it read)
/// to every request. Counts connections that carried a request other than
/// a health probe.
struct RawBackend {
    addr: SocketAddr,
    proxied_connections: Arc<AtomicUsize>,
}

async fn raw_backend(after: After) -> RawBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let proxied_connections = Arc::new(AtomicUsize::new(0));
    let counter = proxied_connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut counted = false;
                loop {
                    let mut request_line = String::new();
                    if stream.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    let mut chunked = false;
                    loop {
                        let mut line = String::new();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        chunked |=
                            lower.starts_with("transfer-encoding:") && lower.contains("chunked");
                    }
                    if after == After::AnswerEarly && (chunked || length > 0) {
                        let early = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
                        let _ = stream.get_mut().write_all(early.as_bytes()).await;
                        std::future::pending::<()>().await;
                    }
                    let mut body = vec![0u8; length];
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if !counted && !request_line.contains("/health") {
                        counted = true;
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let text = format!("ok:{length}");
                    let connection = if after == After::Close {
                        "connection: close\r\n"
                    } else {
                        ""
                    };
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{connection}\r\n{text}",
                        text.len()
                    );
                    if stream
                        .get_mut()
                        .write_all(response.as_bytes())
                        .await
                        .is_err()
                        || after == After::Close
                    {
                        return;
                    }
                }
            });
        }
    });
    RawBackend {
        addr,
        proxied_connections,
    }
}

#[tokio::test]
async fn keep_alive_connections_to_a_backend_are_reused() {
    let b = raw_backend(After::KeepAlive).await;
    let lb = balancer(&config(&[b.addr])).await;
    let c = client();
    for i in 0..50 {
        let r = c
            .post(url(lb.proxy_addr(), "/"))
            .body(vec![b'x'; i])
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.expect("body"), format!("ok:{i}"));
    }
    // One client connection lands on one proxy thread, whose pool hands
    // the same backend connection to each request in turn.
    assert_eq!(b.proxied_connections.load(Ordering::SeqCst), 1);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_connection_the_backend_closes_is_never_reused() {
    let b = raw_backend(After::Close).await;
    let lb = balancer(&config(&[b.addr])).await;
    let c = client();
    for i in 0..20 {
        // POST: not retried, so a reused dead connection would show as 502.
        let r = c
            .post(url(lb.proxy_addr(), "/"))
            .body(vec![b'y'; i + 1])
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK, "request {i}");
        assert_eq!(r.text().await.expect("body"), format!("ok:{}", i + 1));
    }
    assert_eq!(b.proxied_connections.load(Ordering::SeqCst), 20);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_half_read_response_does_not_leak_into_the_next_request() {
    let b = backend("solo").await;
    let lb = balancer(&config(&[b.addr])).await;
    let c = client();
    for _ in 0..5 {
        // Start a 64 MiB download, read one chunk, and hang up.
        let mut r = c
            .get(url(lb.proxy_addr(), "/bytes/67108864"))
            .send()
            .await
            .expect("download starts");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.chunk().await.expect("first chunk").is_some());
        drop(r);
        // The next request must get its own, complete answer: had the
        // backend connection gone back to the pool mid-body, this would
        // read the rest of the download instead.
        let r = c
            .get(url(lb.proxy_addr(), "/"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK);
        let v: serde_json::Value = r.json().await.expect("json answer");
        assert_eq!(v["backend"], "solo");
        assert_eq!(v["path"], "/");
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn a_connection_still_sending_an_upload_is_not_handed_to_the_next_request() {
    let b = raw_backend(After::AnswerEarly).await;
    let mut cfg = config(&[b.addr]);
    cfg.proxy.request_timeout = std::time::Duration::from_secs(30);
    let lb = balancer(&cfg).await;
    // An upload that never finishes, answered early by the backend.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    tx.send(Ok(vec![b'u'; 1024])).await.expect("first chunk");
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let uploading = client()
        .post(url(lb.proxy_addr(), "/upload"))
        .body(body)
        .send()
        .await
        .expect("early answer");
    assert_eq!(uploading.status(), StatusCode::OK);
    assert_eq!(uploading.text().await.expect("body"), "early");
    // Fresh client connections spread over both proxy threads; on the
    // uploader's thread, the pooled connection is still sending the body.
    for i in 0..16 {
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            client().get(url(lb.proxy_addr(), "/")).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} queued behind the upload"))
        .expect("request");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.expect("body"), "ok:0");
    }
    drop(tx);
    lb.shutdown().await;
}

/// The receiving end of a channel as a stream of body chunks.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A backend that holds every `GET /burst` until `expected` of them are
/// in, then answers them all (keep-alive); `GET /health` is answered at
/// once. Counts its open connections.
async fn gathering_backend(expected: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let counter = open.clone();
    let gate = Arc::new(tokio::sync::Barrier::new(expected));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let open = counter.clone();
            let gate = gate.clone();
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(request_line)) = lines.next_line().await {
                    // The rest of the head (requests here have no body).
                    while let Ok(Some(line)) = lines.next_line().await {
                        if line.is_empty() {
                            break;
                        }
                    }
                    if request_line.starts_with("GET /burst ") {
                        gate.wait().await;
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_burst_no_more_than_backend_idle_connections_stay_open() {
    const BURST: usize = 24;
    const BOUND: usize = 2;
    let (addr, open) = gathering_backend(BURST).await;
    let mut c = config(&[addr]);
    c.health_check.interval = std::time::Duration::from_secs(3600);
    c.proxy.backend_idle_connections = BOUND;
    let lb = balancer(&c).await;
    crate::support::eventually("the health check's connection closed", || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    // One client connection per request, so they all run at once.
    let answers = (0..BURST).map(|_| {
        let c = client();
        let u = url(lb.proxy_addr(), "/burst");
        tokio::spawn(async move { c.get(u).send().await.expect("answer").status() })
    });
    for answer in futures_util::future::join_all(answers).await {
        assert_eq!(answer.expect("task"), StatusCode::OK);
    }
    // The bound holds per backend and proxy thread.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    crate::support::eventually("the surplus backend connections closed", || {
        open.load(Ordering::SeqCst) <= BOUND * threads
    })
    .await;
    assert!(
        open.load(Ordering::SeqCst) >= 1,
        "some stay for the next request"
    );
    lb.shutdown().await;
}
