//! HTTP/3 at the front door (`server.http3`), with a real h3 client (h3 +
//! h3-quinn over quinn, trusting the test CA): requests and bodies both
//! ways through the same pipeline as the TCP listeners, rate-limit
//! refusals, `Alt-Svc` on the TLS listener's answers, and the drain on
//! shutdown (GOAWAY, in-flight requests finish).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::support::tls::{CertFiles, TestCa};
use crate::support::{backend, backend_h2c, balancer, client, config, url};
use tollgate::config::{CertificateConfig, Config, Http3Config, TlsConfig};
use tollgate::limiter::Limits;

/// Longest any awaited event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// `cfg` with a TLS listener and an HTTP/3 listener (both port 0) on
/// `cert`.
pub(crate) fn with_http3(cfg: &mut Config, cert: &CertFiles) {
    cfg.server.tls = Some(TlsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        certificates: vec![CertificateConfig {
            cert: cert.cert.clone(),
            key: cert.key.clone(),
        }],
        ..TlsConfig::default()
    });
    cfg.server.http3 = Some(Http3Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        alt_svc_max_age: Duration::from_secs(3600),
    });
}

/// One h3 client connection: the request side, and the task driving the
/// connection, which ends with the reason it closed.
pub(crate) struct H3Client {
    send: SendRequest,
    driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
    port: u16,
    _endpoint: quinn::Endpoint,
}

impl H3Client {
    /// Connects to `addr` as `app.test`, trusting only `ca`.
    pub(crate) async fn connect(ca: &TestCa, addr: SocketAddr) -> Self {
        Self::try_connect(ca, addr).await.expect("an h3 connection")
    }

    /// [`H3Client::connect`], failing with the reason.
    async fn try_connect(ca: &TestCa, addr: SocketAddr) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = CertificateDer::from_pem_slice(ca.ca_pem().as_bytes()).expect("CA pem");
        roots.add(ca_der).expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let connecting = endpoint.connect(addr, "app.test").expect("connect");
        let conn = tokio::time::timeout(PATIENCE, connecting)
            .await
            .expect("QUIC handshake in time")
            .map_err(|e| e.to_string())?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(conn))
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(async move { driver.wait_idle().await });
        Ok(Self {
            send,
            driver,
            port: addr.port(),
            _endpoint: endpoint,
        })
    }

    /// A request head for `path` on this connection.
    fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("https://app.test:{}{path}", self.port))
    }

    /// Sends `req` with `body` (in 16 KiB pieces) and reads the whole
    /// answer: head, body, trailers.
    async fn exchange(&mut self, req: Request<()>, body: &[u8]) -> Answer {
        let exchange = async {
            let mut stream = self.send.send_request(req).await.expect("send request");
            for piece in body.chunks(16 * 1024) {
                stream
                    .send_data(Bytes::copy_from_slice(piece))
                    .await
                    .expect("send body");
            }
            stream.finish().await.expect("finish request");
            let head = stream.recv_response().await.expect("response head");
            let mut body = BytesMut::new();
            while let Some(mut chunk) = stream.recv_data().await.expect("response body") {
                body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
            let trailers = stream.recv_trailers().await.expect("trailers");
            Answer {
                head,
                body: body.freeze(),
                trailers,
            }
        };
        tokio::time::timeout(PATIENCE, exchange)
            .await
            .expect("answer in time")
    }

    pub(crate) async fn get(&mut self, path: &str) -> Answer {
        let req = self.request("GET", path).body(()).expect("request");
        self.exchange(req, b"").await
    }
}

/// What came back for one request.
pub(crate) struct Answer {
    pub(crate) head: Response<()>,
    pub(crate) body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.head
            .headers()
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .expect("text")
    }
}

#[tokio::test]
async fn get_and_post_with_bodies_go_through_to_the_backend() {
    let ca = TestCa::new("h3 CA");
    let cert = ca.issue("app", &["app.test"]);
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    with_http3(&mut cfg, &cert);
    let lb = balancer(&cfg).await;
    let mut h3 = H3Client::connect(&ca, lb.http3_addr().expect("an HTTP/3 listener")).await;

    let got = h3.get("/some/path?q=1").await;
    assert_eq!(got.head.status(), StatusCode::OK);
    assert_eq!(got.head.version(), http::Version::HTTP_3);
    assert_eq!(got.header("x-backend"), "b0");
    assert_eq!(got.json()["path"], "/some/path");
    assert!(got.head.headers().contains_key("x-request-id"));
    assert!(got.head.headers().contains_key("x-ratelimit-remaining"));

    // What the backend was told of the client: its QUIC source address,
    // over https, with the authority as Host.
    let headers = h3.get("/headers").await.json();
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert_eq!(headers["host"], format!("app.test:{}", h3.port));

    // A body larger than any flow-control window, both ways, streamed.
    let sent: Vec<u8> = (0..600 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = h3.request("POST", "/echo").body(()).expect("request");
    let echoed = h3.exchange(req, &sent).await;
    assert_eq!(echoed.head.status(), StatusCode::OK);
    assert_eq!(echoed.body.len(), sent.len());
    assert!(echoed.body == sent[..], "the echo is the body sent");
    lb.shutdown().await;
}

#[tokio::test]
async fn response_trailers_reach_the_h3_client() {
    let ca = TestCa::new("h3 CA");
    let cert = ca.issue("app", &["app.test"]);
    let b = backend_h2c("b0").await;
    let mut cfg = config(&[b.addr]);
    cfg.proxy.protocol = tollgate::balancer::Protocol::Http2;
    with_http3(&mut cfg, &cert);
    let lb = balancer(&cfg).await;
    let mut h3 = H3Client::connect(&ca, lb.http3_addr().expect("an HTTP/3 listener")).await;
    let got = h3.get("/trailers").await;
    assert_eq!(got.head.status(), StatusCode::OK);
    let trailers = got.trailers.expect("trailers");
    assert_eq!(trailers["x-trailer"], "yes");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_rate_limit_refuses_with_429_json_over_h3() {
    let ca = TestCa::new("h3 CA");
    let cert = ca.issue("app", &["app.test"]);
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    // One token per 100 s: none comes back during the test, and the
    // refusal can say when one will.
    cfg.rate_limit.default = Limits::new(2, 0.01).expect("valid");
    with_http3(&mut cfg, &cert);
    let lb = balancer(&cfg).await;
    let mut h3 = H3Client::connect(&ca, lb.http3_addr().expect("an HTTP/3 listener")).await;
    for _ in 0..2 {
        assert_eq!(h3.get("/").await.head.status(), StatusCode::OK);
    }
    let refused = h3.get("/").await;
    assert_eq!(refused.head.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.header("content-type"), "application/json");
    assert_eq!(refused.header("x-ratelimit-remaining"), "0");
    let retry_after: u64 = refused.header("retry-after").parse().expect("seconds");
    assert!(
        (1..=100).contains(&retry_after),
        "retry-after {retry_after}"
    );
    assert_eq!(
        &refused.body[..],
        br#"{"code":429,"message":"Rate limit exceeded"}"#
    );
    // The same client over TLS shares the bucket: one identity, the IP.
    let over_tls = crate::support::tls::TestCa::client_builder(&ca)
        .no_proxy()
        .resolve("app.test", lb.tls_addr().expect("TLS"))
        .build()
        .expect("client")
        .get(format!(
            "https://app.test:{}/",
            lb.tls_addr().expect("TLS").port()
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(over_tls.status(), StatusCode::TOO_MANY_REQUESTS);
    lb.shutdown().await;
}

#[tokio::test]
async fn tls_answers_advertise_h3_and_plain_ones_do_not() {
    let ca = TestCa::new("h3 CA");
    let cert = ca.issue("app", &["app.test"]);
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    with_http3(&mut cfg, &cert);
    let lb = balancer(&cfg).await;
    let tls = lb.tls_addr().expect("TLS");
    let expected = format!(
        "h3=\":{}\"; ma=3600",
        lb.http3_addr().expect("HTTP/3").port()
    );
    for http2 in [false, true] {
        let builder = ca.client_builder().no_proxy().resolve("app.test", tls);
        let c = if http2 {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        }
        .build()
        .expect("client");
        let r = c
            .get(format!("https://app.test:{}/", tls.port()))
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.version(),
            if http2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            }
        );
        assert_eq!(r.headers()["alt-svc"], expected.as_str());
    }
    // A refusal over TLS advertises it too.
    let r = ca
        .client_builder()
        .no_proxy()
        .resolve("app.test", tls)
        .build()
        .expect("client")
        .get(format!("https://app.test:{}/", tls.port()))
        .header("host", "bad host")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["alt-svc"], expected.as_str());
    let plain = client()
        .get(url(lb.plain_addr().expect("plain"), "/"))
        .send()
        .await
        .expect("request");
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(
        !plain.headers().contains_key("alt-svc"),
        "not over plain HTTP"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn without_http3_no_alt_svc_is_sent() {
    let ca = TestCa::new("h3 CA");
    let cert = ca.issue("app", &["app.test"]);
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    with_http3(&mut cfg, &cert);
    cfg.server.http3 = None;
    let lb = balancer(&cfg).await;
    assert!(lb.http3_addr().is_none());
    let tls = lb.tls_addr().expect("TLS");
    let r = ca
        .client_builder()
        .no_proxy()
        .resolve("app.test", tls)
        .build()
        .expect("client")
        .get(format!("https://app.test:{}/", tls.port()))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!r.headers().contains_key("alt-svc"));
    lb.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_goaway_and_the_request_in_flight_still_completes() {
    let ca = TestCa::new("h3 CA");
    let cert = ca.issue("app", &["app.test"]);
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    with_http3(&mut cfg, &cert);
    let lb = balancer(&cfg).await;
    let mut h3 = H3Client::connect(&ca, lb.http3_addr().expect("an HTTP/3 listener")).await;

    // A request that is with the backend when shutdown starts.
    let mut stream = h3
        .send
        .send_request(h3.request("GET", "/delay/1500").body(()).expect("request"))
        .await
        .expect("send");
    stream.finish().await.expect("finish");
    let pool = lb.pool();
    crate::support::eventually("the request to reach the backend", || {
        pool.backends().iter().any(|b| b.in_flight() == 1)
    })
    .await;
    let in_flight = tokio::spawn(async move {
        let head = stream.recv_response().await.expect("response head");
        let mut body = BytesMut::new();
        while let Some(mut chunk) = stream.recv_data().await.expect("body") {
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        (head.status(), body.freeze())
    });
    let shutdown = tokio::spawn(lb.shutdown());

    // The GOAWAY: the client's connection refuses new requests, while
    // the one in flight is still running.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let req = h3.request("GET", "/").body(()).expect("request");
        match h3.send.send_request(req).await {
            Err(e) => {
                assert!(
                    matches!(e, h3::error::StreamError::RemoteClosing { .. }),
                    "refused for the GOAWAY, not {e:?}"
                );
                break;
            }
            Ok(_) => {
                assert!(tokio::time::Instant::now() < deadline, "no GOAWAY");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    assert!(!in_flight.is_finished(), "GOAWAY came before the answer");

    let (status, body) = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .expect("in time")
        .expect("the in-flight request");
    assert_eq!(status, StatusCode::OK);
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(body["path"], "/delay/1500");
    let drained = tokio::time::timeout(PATIENCE, shutdown)
        .await
        .expect("shutdown in time")
        .expect("shutdown");
    assert_eq!(drained, tollgate::proxy::server::Drained::Clean);
    let closed = tokio::time::timeout(PATIENCE, h3.driver)
        .await
        .expect("closed in time")
        .expect("driver");
    assert!(closed.is_h3_no_error(), "a graceful close, not {closed:?}");
}

#[tokio::test]
async fn a_certificate_reload_reaches_new_h3_connections() {
    let old_ca = TestCa::new("old CA");
    let cert = old_ca.issue("app", &["app.test"]);
    let new_ca = TestCa::new("new CA");
    let renewed = new_ca.issue("app", &["app.test"]);
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    with_http3(&mut cfg, &cert);
    let lb = balancer(&cfg).await;
    let addr = lb.http3_addr().expect("an HTTP/3 listener");
    let mut before = H3Client::connect(&old_ca, addr).await;
    assert_eq!(before.get("/").await.head.status(), StatusCode::OK);

    std::fs::copy(&renewed.cert, &cert.cert).expect("renew cert");
    std::fs::copy(&renewed.key, &cert.key).expect("renew key");
    lb.reload_certificates().await.expect("reload");

    let mut after = H3Client::connect(&new_ca, addr).await;
    assert_eq!(after.get("/").await.head.status(), StatusCode::OK);
    let refused = H3Client::try_connect(&old_ca, addr).await;
    assert!(refused.is_err(), "the old certificate is no longer served");
    // The connection made before the reload keeps its keys.
    assert_eq!(before.get("/").await.head.status(), StatusCode::OK);
    lb.shutdown().await;
}
