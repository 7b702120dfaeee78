//! Requests per second through tollgate over HTTP/3 against HTTP/2 over
//! TLS, on the same box: `cargo run --release --example h3_bench -- 5 2 32 3`
//! (seconds per run, client connections, requests in flight per
//! connection, rounds).
//!
//! Everything runs in this process on 127.0.0.1: a demo backend on a
//! thread of its own, tollgate with a TLS listener (ALPN h2) and an
//! HTTP/3 listener on one certificate made at start, rate limiting on
//! (limits too high to refuse), and the clients: h3 + h3-quinn over
//! quinn, and hyper's HTTP/2 client over tokio-rustls, both with ring.
//! Each request is `GET /` (a small JSON answer from the backend, which
//! tollgate reaches over HTTP/1.1 either way). HTTP/2 and HTTP/3 runs
//! alternate, so a change in the machine's load shows as a spread between
//! rounds rather than as a difference between the two. The clients share
//! the cores with tollgate: the figures compare the two front doors on
//! one box, they are not a capacity.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use rustls::pki_types::CertificateDer;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // The clients' tasks are local: a connection's requests and its
    // driver share the client thread.
    tokio::task::LocalSet::new().run_until(run()).await;
}

async fn run() {
    let mut args = std::env::args().skip(1);
    let mut arg = |default: u64| args.next().and_then(|s| s.parse().ok()).unwrap_or(default);
    let secs = arg(5);
    let connections = arg(2) as usize;
    let in_flight = arg(32) as usize;
    let rounds = arg(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_pem, key_pem, der) = certificate();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, cert_pem).expect("write cert");
    std::fs::write(&key, key_pem).expect("write key");
    let backend = backend_thread();
    let lb = tollgate::app::start(&config(backend, cert, key))
        .await
        .expect("tollgate starts");
    let tls_addr = lb.tls_addr().expect("TLS listener");
    let h3_addr = lb.http3_addr().expect("HTTP/3 listener");
    let length = Duration::from_secs(secs);
    println!(
        "{connections} connections x {in_flight} requests in flight, {secs} s per run, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let (mut h2, mut h3) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let a =
            requests_per_second(length, connections, in_flight, || h2_sender(tls_addr, &der)).await;
        let b =
            requests_per_second(length, connections, in_flight, || h3_sender(h3_addr, &der)).await;
        println!("round {round}: h2 over TLS {a:.0} req/s, h3 {b:.0} req/s");
        h2.push(a);
        h3.push(b);
    }
    let (a, b) = (median(&mut h2), median(&mut h3));
    println!(
        "median: h2 over TLS {a:.0} req/s, h3 {b:.0} req/s ({:.0}% of h2)",
        100.0 * b / a
    );
    lb.shutdown().await;
}

/// A self-signed certificate for `app.test`: PEM chain, PEM key, DER.
fn certificate() -> (String, String, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec!["app.test".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// The demo backend on a thread (and runtime) of its own.
fn backend_thread() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("backend runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            tollgate::demo::serve(listener, "b0".into(), std::future::pending()).await;
        });
    });
    addr
}

fn config(
    backend: SocketAddr,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
) -> tollgate::config::Config {
    let yaml = format!(
        "server:\n  listen: null\n  tls:\n    listen: 127.0.0.1:0\n    certificates: [{{cert: {cert:?}, key: {key:?}}}]\n\
         \x20 http3: {{listen: 127.0.0.1:0}}\n\
         admin:\n  listen: 127.0.0.1:0\n\
         backends:\n  - url: http://{backend}\n\
         rate_limit:\n  default: {{capacity: 1000000000, rate_per_sec: 1000000000}}\n"
    );
    tollgate::config::Config::parse(&yaml).expect("bench config")
}

/// A client's TLS settings: TLS 1.3, trusting `der` alone, ALPN `alpn`.
fn client_tls(der: &CertificateDer<'static>, alpn: &[u8]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls
}

/// One request on a connection, to completion.
trait Sender: Clone + 'static {
    async fn get(&mut self) -> bool;
}

/// An HTTP/2 connection over TLS (hyper's client).
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>, u16);

impl Sender for H2 {
    async fn get(&mut self) -> bool {
        let req = http::Request::get(format!("https://app.test:{}/", self.1))
            .body(Empty::new())
            .expect("request");
        let Ok(response) = self.0.send_request(req).await else {
            return false;
        };
        let ok = response.status() == http::StatusCode::OK;
        ok && response.into_body().collect().await.is_ok()
    }
}

async fn h2_sender(addr: SocketAddr, der: &CertificateDer<'static>) -> H2 {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls(der, b"h2")));
    let name = rustls::pki_types::ServerName::try_from("app.test").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    H2(send, addr.port())
}

/// An HTTP/3 connection (h3 over quinn).
#[derive(Clone)]
struct H3(h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>, u16);

impl Sender for H3 {
    async fn get(&mut self) -> bool {
        let req = http::Request::get(format!("https://app.test:{}/", self.1))
            .body(())
            .expect("request");
        let Ok(mut stream) = self.0.send_request(req).await else {
            return false;
        };
        if stream.finish().await.is_err() {
            return false;
        }
        let Ok(response) = stream.recv_response().await else {
            return false;
        };
        while let Ok(Some(mut chunk)) = stream.recv_data().await {
            chunk.advance(chunk.remaining());
        }
        response.status() == http::StatusCode::OK
    }
}

async fn h3_sender(addr: SocketAddr, der: &CertificateDer<'static>) -> H3 {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls(der, b"h3"))
        .expect("QUIC TLS");
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(addr, "app.test")
        .expect("connect")
        .await
        .expect("QUIC handshake");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
        .await
        .expect("h3 connection");
    tokio::spawn(async move {
        let _endpoint = endpoint;
        driver.wait_idle().await
    });
    H3(send, addr.port())
}

/// Requests answered 200 per second over `connections` connections made
/// by `connect`, with `in_flight` requests at once on each, for `length`.
async fn requests_per_second<S: Sender, F: std::future::Future<Output = S>>(
    length: Duration,
    connections: usize,
    in_flight: usize,
    connect: impl Fn() -> F,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let sender = connect().await;
        for _ in 0..in_flight {
            let (mut sender, done, stop) = (sender.clone(), done.clone(), stop.clone());
            tasks.push(tokio::task::spawn_local(async move {
                while !stop.load(Ordering::Relaxed) {
                    if sender.get().await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let started = Instant::now();
    tokio::time::sleep(length).await;
    stop.store(true, Ordering::Relaxed);
    let answered = done.load(Ordering::Relaxed);
    let took = started.elapsed();
    for task in tasks {
        let _ = task.await;
    }
    answered as f64 / took.as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
