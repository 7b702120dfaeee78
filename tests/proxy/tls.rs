//! The TLS listener: HTTP/1.1 and HTTP/2 by ALPN with the same limits and
//! headers as plain HTTP, WebSocket tunnels, certificates by SNI and their
//! reload, protocol versions, the connection budget, and clients that never
//! finish a handshake.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, Version};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ProtocolVersion, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::raw::{parser_refusals, split_response, REFUSALS_MAX_HEADER_BYTES};
use crate::support::tls::{exchange, CertFiles, TestCa};
use crate::support::{backend, balancer, client, config, metrics, url};
use tollgate::config::{CertificateConfig, Config, TlsConfig};
use tollgate::limiter::Limits;
use tollgate::tls::server::MinVersion;

/// Longest any awaited event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// `cfg` with a TLS listener on port 0 serving `certs` (the first is the
/// default).
fn with_tls(cfg: &mut Config, certs: &[&CertFiles]) {
    cfg.server.tls = Some(TlsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        certificates: certs
            .iter()
            .map(|c| CertificateConfig {
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
            .collect(),
        ..TlsConfig::default()
    });
}

/// A reqwest client trusting `ca` that finds `app.test` at `tls`.
fn https_client(ca: &TestCa, tls: SocketAddr) -> reqwest::ClientBuilder {
    ca.client_builder()
        .no_proxy()
        .timeout(PATIENCE)
        .resolve("app.test", tls)
}

fn https(tls: SocketAddr, path: &str) -> String {
    format!("https://app.test:{}{path}", tls.port())
}

fn tls_addr(lb: &tollgate::app::Running) -> SocketAddr {
    lb.tls_addr().expect("a TLS listener")
}

/// Takes any certificate: these tests look at which one the server
/// presented, including ones not valid for the name asked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

static TLS12_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS12];
static ANY_VERSION: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS connection to `addr` with `sni` as server name (`None`: no SNI
/// sent), offering `versions` and ALPN `http/1.1`.
async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
    versions: &[&'static SupportedProtocolVersion],
) -> std::io::Result<TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from(sni.unwrap_or("no-sni.invalid").to_owned()).expect("name");
    let tcp = TcpStream::connect(addr).await?;
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    tokio::time::timeout(PATIENCE, handshake)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A TLS connection over `tcp` (which may already carry a PROXY header),
/// verifying the server against `ca` for `app.test`.
async fn tls_over(tcp: TcpStream, ca: &TestCa) -> TlsStream<TcpStream> {
    ca.tls_over(tcp).await
}

/// The leaf certificate the server presented on `stream`.
fn leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .to_vec()
}

/// The leaf certificate presented to a new connection asking for `sni`.
async fn presented(addr: SocketAddr, sni: Option<&str>) -> Vec<u8> {
    let stream = connect(addr, sni, &ANY_VERSION).await.expect("handshake");
    leaf(&stream)
}

/// An HTTP/1.1 client connection over an established TLS stream.
async fn h1_over(
    stream: TlsStream<TcpStream>,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>> {
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("http1 handshake");
    tokio::spawn(conn);
    sender
}

async fn get_status(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
) -> StatusCode {
    let req = http::Request::get("/")
        .header("host", "app.test")
        .body(http_body_util::Empty::new())
        .expect("request");
    tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("a response in time")
        .expect("response")
        .status()
}

#[tokio::test]
async fn http1_over_tls_tells_the_backend_it_was_https() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[b.addr]);
    with_tls(&mut cfg, &[&site]);
    let lb = balancer(&cfg).await;
    let c = https_client(&ca, tls_addr(&lb))
        .http1_only()
        .build()
        .expect("client");
    let r = c
        .get(https(tls_addr(&lb), "/headers"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_11);
    let seen: serde_json::Value = r.json().await.expect("json");
    assert_eq!(seen["x-forwarded-proto"], "https");
    // The plain listener runs beside it and still says http.
    let plain = lb.plain_addr().expect("plain listener");
    let seen: serde_json::Value = client()
        .get(url(plain, "/headers"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["x-forwarded-proto"], "http");
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn alpn_h2_serves_http2_with_the_same_limits_and_headers() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[b.addr]);
    // One request per client, ever: the second is refused on any listener.
    cfg.rate_limit.default = Limits::new(1, 0.0).expect("valid");
    with_tls(&mut cfg, &[&site]);
    let lb = balancer(&cfg).await;
    let h2 = https_client(&ca, tls_addr(&lb)).build().expect("client");

    let ok = h2
        .get(https(tls_addr(&lb), "/"))
        .send()
        .await
        .expect("request");
    assert_eq!(ok.version(), Version::HTTP_2, "ALPN chose h2");
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["x-ratelimit-remaining"], "0");

    let refused_h2 = h2
        .get(https(tls_addr(&lb), "/"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused_h2.version(), Version::HTTP_2);
    let refused_h1 = client()
        .get(url(lb.plain_addr().expect("plain"), "/"))
        .send()
        .await
        .expect("request");
    assert_eq!(refused_h2.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused_h1.status(), StatusCode::TOO_MANY_REQUESTS);
    // Same answer, header for header (but the date, the request's own id
    // and HTTP/1.1's own connection headers), same JSON body.
    let headers = |r: &reqwest::Response| {
        let mut h: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(n, _)| {
                !matches!(
                    n.as_str(),
                    "date" | "x-request-id" | "connection" | "keep-alive"
                )
            })
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(headers(&refused_h2), headers(&refused_h1));
    assert!(
        headers(&refused_h2)
            .iter()
            .any(|(n, _)| n == "ratelimit-policy"),
        "{:?}",
        headers(&refused_h2)
    );
    let body_h2: serde_json::Value = refused_h2.json().await.expect("json");
    let body_h1: serde_json::Value = refused_h1.json().await.expect("json");
    assert_eq!(body_h2, body_h1);
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn sni_picks_the_certificate_and_anything_else_gets_the_first() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let default = ca.issue("default", &["default.test"]);
    let api = ca.issue("api", &["api.test", "*.wild.test"]);
    let mut cfg = config(&[b.addr]);
    with_tls(&mut cfg, &[&default, &api]);
    let lb = balancer(&cfg).await;
    let addr = tls_addr(&lb);
    assert_eq!(presented(addr, Some("api.test")).await, api.der);
    assert_eq!(presented(addr, Some("x.wild.test")).await, api.der);
    assert_eq!(presented(addr, Some("default.test")).await, default.der);
    assert_eq!(presented(addr, Some("unknown.test")).await, default.der);
    assert_eq!(presented(addr, None).await, default.der, "no SNI");
    // A client that verifies gets through with the name it asked for.
    let c = ca
        .client_builder()
        .no_proxy()
        .timeout(PATIENCE)
        .resolve("api.test", addr)
        .build()
        .expect("client");
    let r = c
        .get(format!("https://api.test:{}/", addr.port()))
        .send()
        .await
        .expect("verified request");
    assert_eq!(r.status(), StatusCode::OK);
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn a_reload_serves_new_certificates_to_new_connections_only() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let first = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[b.addr]);
    with_tls(&mut cfg, &[&first]);
    let lb = balancer(&cfg).await;
    let addr = tls_addr(&lb);

    let old = connect(addr, Some("app.test"), &ANY_VERSION)
        .await
        .expect("handshake");
    assert_eq!(leaf(&old), first.der);
    let mut old = h1_over(old).await;
    assert_eq!(get_status(&mut old).await, StatusCode::OK);

    // Same file names, new certificate and key.
    let second = ca.issue("site", &["app.test"]);
    assert_ne!(first.der, second.der);
    let reloaded = lb.reload_certificates().await.expect("reload");
    assert_eq!(reloaded.certificates, 1);
    assert_eq!(presented(addr, Some("app.test")).await, second.der);
    // The connection opened before the reload keeps working.
    assert_eq!(get_status(&mut old).await, StatusCode::OK);

    // A broken key: the reload fails, saying which file, and changes
    // nothing.
    std::fs::write(&second.key, "not a key").expect("write");
    let e = lb.reload_certificates().await.expect_err("broken key");
    assert!(
        e.to_string().contains(&second.key.display().to_string()),
        "{e}"
    );
    assert_eq!(presented(addr, Some("app.test")).await, second.der);
    // A key of another certificate: the same.
    let other = ca.issue("other", &["other.test"]);
    std::fs::copy(&other.key, &second.key).expect("copy");
    let e = lb.reload_certificates().await.expect_err("mismatch");
    assert!(e.to_string().contains("is not the key of"), "{e}");
    assert_eq!(presented(addr, Some("app.test")).await, second.der);
    assert_eq!(get_status(&mut old).await, StatusCode::OK);
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn tls12_is_accepted_by_default_and_refused_with_min_version_13() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);

    let mut cfg = config(&[b.addr]);
    with_tls(&mut cfg, &[&site]);
    let lb = balancer(&cfg).await;
    let tls12 = connect(tls_addr(&lb), Some("app.test"), &TLS12_ONLY)
        .await
        .expect("TLS 1.2 by default");
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    let mut h1 = h1_over(tls12).await;
    assert_eq!(get_status(&mut h1).await, StatusCode::OK);
    lb.shutdown().await;

    let mut cfg = config(&[b.addr]);
    with_tls(&mut cfg, &[&site]);
    if let Some(tls) = cfg.server.tls.as_mut() {
        tls.min_version = MinVersion::Tls13;
    }
    let lb = balancer(&cfg).await;
    let refused = connect(tls_addr(&lb), Some("app.test"), &TLS12_ONLY).await;
    assert!(refused.is_err(), "TLS 1.2 with min_version 1.3");
    let tls13 = connect(tls_addr(&lb), Some("app.test"), &ANY_VERSION)
        .await
        .expect("TLS 1.3");
    assert_eq!(
        tls13.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    lb.shutdown().await;
    b.stop().await;
}

/// Reads until the server closes; `false` if it has not within
/// [`PATIENCE`].
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 1024];
    tokio::time::timeout(PATIENCE, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn failed_handshakes_end_the_connection_and_are_counted() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[b.addr]);
    cfg.server.header_read_timeout = Duration::from_millis(300);
    with_tls(&mut cfg, &[&site]);
    let lb = balancer(&cfg).await;
    let m = client();
    let count = |text: &str, reason: &str| {
        metrics::parse(text)
            .get(&format!(
                "tollgate_tls_handshake_failures_total{{reason=\"{reason}\"}}"
            ))
            .copied()
            .unwrap_or(0.0)
    };
    let before = metrics::scrape(&m, lb.admin_addr()).await;

    // Silent after connecting: closed at header_read_timeout.
    let mut silent = TcpStream::connect(tls_addr(&lb)).await.expect("connect");
    assert!(
        closed_by_server(&mut silent).await,
        "a client that sends nothing is closed"
    );
    // Plain HTTP on the TLS port.
    let mut plain = TcpStream::connect(tls_addr(&lb)).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .await
        .expect("write");
    assert!(closed_by_server(&mut plain).await, "not TLS: closed");

    let after = metrics::scrape(&m, lb.admin_addr()).await;
    for reason in ["timeout", "not_tls"] {
        assert!(
            count(&after, reason) >= count(&before, reason) + 1.0,
            "{reason} not counted:\n{after}"
        );
    }
    lb.shutdown().await;
    b.stop().await;
}

/// Served by `serve_all` on this test's runtime: one accept loop, so the
/// budget's single permit is that loop's (the balancer's per-core loops
/// each hold a permit while they wait to accept, so with a budget of one
/// a connection can land on a loop without one).
#[tokio::test]
async fn handshakes_wait_for_the_connection_budget() {
    use tollgate::proxy::server::{serve_all, ConnectionBudget, Listener, ServeOptions};
    use tollgate::tls::server::{CertificatePaths, TlsSettings, TlsTerminator};
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let terminator = TlsTerminator::new(&TlsSettings {
        certificates: vec![CertificatePaths {
            cert: site.cert.clone(),
            key: site.key.clone(),
        }],
        min_version: MinVersion::Tls12,
        alpn: Vec::new(),
    })
    .expect("certificates");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    socket.set_nonblocking(true).expect("nonblocking");
    let addr = socket.local_addr().expect("addr");
    let options = ServeOptions {
        budget: Some(ConnectionBudget::new(NonZeroUsize::MIN)),
        ..ServeOptions::default()
    };
    let (stop, stopped) = tollgate::shutdown::channel();
    let server = tokio::spawn(serve_all(
        vec![Listener {
            socket,
            tls: Some(terminator),
        }],
        |_req, _conn| async { http::Response::new(tollgate::body::full("ok")) },
        options,
        stopped.wait(),
    ));

    let first = connect(addr, Some("app.test"), &ANY_VERSION)
        .await
        .expect("first handshake");
    let mut first = h1_over(first).await;
    assert_eq!(get_status(&mut first).await, StatusCode::OK);
    // The only permit is the first connection's: the second waits in the
    // listen queue, its handshake unanswered.
    let mut second = tokio::spawn(connect(addr, Some("app.test"), &ANY_VERSION));
    let early = tokio::time::timeout(Duration::from_millis(500), &mut second).await;
    assert!(early.is_err(), "a handshake went past the budget");
    drop(first);
    let second = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the second handshake once the first closed")
        .expect("task")
        .expect("handshake");
    let mut second = h1_over(second).await;
    assert_eq!(get_status(&mut second).await, StatusCode::OK);
    drop(second);
    stop.fire();
    let _ = server.await;
}

#[tokio::test]
async fn tls_alone_when_the_plain_listener_is_off() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[b.addr]);
    cfg.server.listen = None;
    with_tls(&mut cfg, &[&site]);
    let lb = balancer(&cfg).await;
    assert_eq!(lb.plain_addr(), None);
    assert_eq!(lb.proxy_addr(), tls_addr(&lb));
    let c = https_client(&ca, tls_addr(&lb)).build().expect("client");
    let r = c
        .get(https(tls_addr(&lb), "/"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn a_proxy_header_comes_before_the_handshake_and_names_the_client() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[b.addr]);
    with_tls(&mut cfg, &[&site]);
    cfg.server.proxy_protocol = true;
    cfg.rate_limit.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    let lb = balancer(&cfg).await;
    let mut tcp = TcpStream::connect(tls_addr(&lb)).await.expect("connect");
    tcp.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 443\r\n")
        .await
        .expect("PROXY header");
    let mut sender = h1_over(tls_over(tcp, &ca).await).await;
    let req = http::Request::get("/headers")
        .header("host", "app.test")
        .body(http_body_util::Empty::new())
        .expect("request");
    let response = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("a response in time")
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7");
    assert_eq!(seen["x-forwarded-proto"], "https");
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn websocket_over_the_tls_listener() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[b.addr]);
    with_tls(&mut cfg, &[&site]);
    let lb = balancer(&cfg).await;
    let tcp = TcpStream::connect(tls_addr(&lb)).await.expect("connect");
    let tls = tls_over(tcp, &ca).await;
    let (mut ws, response) = tokio_tungstenite::client_async("ws://app.test/ws", tls)
        .await
        .expect("upgraded");
    assert_eq!(response.status(), 101);
    for i in 0..100 {
        let m = Message::text(format!("over TLS {i}"));
        ws.send(m.clone()).await.expect("send");
        assert_eq!(ws.next().await.expect("echo").expect("message"), m);
    }
    // The backend closes after the close handshake; the tunnel ends with it.
    ws.close(None).await.expect("close");
    let ended = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the tunnel stayed open");
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reload_takes_a_new_list_of_certificate_files() {
    let b = backend("b").await;
    let ca = TestCa::new("reload CA");
    let site = ca.issue("site", &["app.test"]);
    let other = ca.issue("other", &["other.test"]);
    let pair = |c: &CertFiles| format!("      - {{cert: {:?}, key: {:?}}}\n", c.cert, c.key);
    let yaml = |certs: &[&CertFiles]| {
        format!(
            "server:\n  listen: 127.0.0.1:0\n  tls:\n    listen: 127.0.0.1:0\n    certificates:\n{}\
             admin:\n  listen: 127.0.0.1:0\nbackends:\n  - url: http://{}\nstore:\n  url: {}\n",
            certs.iter().map(|c| pair(c)).collect::<String>(),
            b.addr,
            crate::support::temp_db()
        )
    };
    let path = tempfile::tempdir()
        .expect("tempdir")
        .keep()
        .join("config.yaml");
    std::fs::write(&path, yaml(&[&site])).expect("write");
    let cfg = Config::load(&path).expect("valid");
    let lb = tollgate::app::start_with_file(&cfg, Some(path.clone()))
        .await
        .expect("start");
    let addr = tls_addr(&lb);
    assert_eq!(presented(addr, Some("other.test")).await, site.der);

    // The store URL differs too (a new temp file): reported, not applied.
    std::fs::write(&path, yaml(&[&site, &other])).expect("write");
    let reloaded = lb.reload().await.expect("reload");
    assert_eq!(reloaded.applied, vec!["server.tls.certificates"]);
    assert_eq!(reloaded.restart_required, vec!["store.url"]);
    assert_eq!(reloaded.certificates, 2);
    assert_eq!(presented(addr, Some("other.test")).await, other.der);
    assert_eq!(presented(addr, Some("app.test")).await, site.der);
    lb.shutdown().await;
    b.stop().await;
}

/// Certificate reload answers (issue 23, item 19): new contents under
/// the same file names are listed in `applied`; a broken certificate and
/// a CA certificate (basicConstraints CA:true) listed as the server's are
/// a 400 naming the file, and the certificate in use stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swap_is_applied_and_a_ca_certificate_is_refused() {
    let b = backend("b").await;
    let ca = TestCa::new("swap CA");
    let site = ca.issue("site", &["app.test"]);
    let renewed = ca.issue("renewed", &["app.test"]);
    let intermediate = ca.issue_ca("intermediate", &["app.test"]);
    let path = tempfile::tempdir()
        .expect("tempdir")
        .keep()
        .join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "server:\n  listen: 127.0.0.1:0\n  tls:\n    listen: 127.0.0.1:0\n    certificates:\n\
             \x20     - {{cert: {:?}, key: {:?}}}\n\
             admin:\n  listen: 127.0.0.1:0\nbackends:\n  - url: http://{}\nstore:\n  url: {}\n",
            site.cert,
            site.key,
            b.addr,
            crate::support::temp_db()
        ),
    )
    .expect("write");
    let cfg = Config::load(&path).expect("valid");
    let lb = tollgate::app::start_with_file(&cfg, Some(path.clone()))
        .await
        .expect("start");
    let addr = tls_addr(&lb);
    let post_reload = || async {
        let r = client()
            .post(url(lb.admin_addr(), "/reload"))
            .send()
            .await
            .expect("POST /reload");
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.expect("JSON"))
    };

    // Same files, same contents: nothing to list.
    assert_eq!(
        post_reload().await,
        (
            200,
            serde_json::json!({"applied": [], "restart_required": []})
        )
    );
    // Renewed contents under the same names: applied.
    let original_der = site.der.clone();
    std::fs::copy(&renewed.cert, &site.cert).expect("copy cert");
    std::fs::copy(&renewed.key, &site.key).expect("copy key");
    assert_eq!(
        post_reload().await,
        (
            200,
            serde_json::json!({"applied": ["server.tls.certificates"], "restart_required": []})
        )
    );
    assert_eq!(presented(addr, Some("app.test")).await, renewed.der);
    assert_ne!(renewed.der, original_der);

    // A CA certificate with its key: 400 naming the file, the renewed
    // certificate stays.
    std::fs::copy(&intermediate.cert, &site.cert).expect("copy CA cert");
    std::fs::copy(&intermediate.key, &site.key).expect("copy CA key");
    let (status, body) = post_reload().await;
    assert_eq!(status, 400, "{body}");
    let problems = body["problems"].to_string();
    assert!(problems.contains("CA certificate"), "{body}");
    assert!(
        problems.contains("server.tls.certificates[0].cert"),
        "{body}"
    );
    assert_eq!(presented(addr, Some("app.test")).await, renewed.der);

    // A broken certificate: 400 as well (the docs say so).
    std::fs::write(&site.cert, "not a certificate").expect("spoil");
    let (status, body) = post_reload().await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(presented(addr, Some("app.test")).await, renewed.der);

    // A process started without a file re-reads the files alone: the
    // same answers.
    let mut fileless_cfg = config(&[b.addr]);
    let direct = ca.issue("direct", &["app.test"]);
    with_tls(&mut fileless_cfg, &[&direct]);
    let fileless = balancer(&fileless_cfg).await;
    std::fs::copy(&intermediate.cert, &direct.cert).expect("copy CA cert");
    std::fs::copy(&intermediate.key, &direct.key).expect("copy CA key");
    let e = fileless.reload().await.expect_err("a CA certificate");
    assert!(e.to_string().contains("CA certificate"), "{e}");
    fileless.shutdown().await;
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn parser_refusals_over_tls_get_the_json_answer_plain_tcp_gets() {
    let b = backend("b").await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[b.addr]);
    with_tls(&mut cfg, &[&site]);
    cfg.server.max_header_bytes = REFUSALS_MAX_HEADER_BYTES;
    let lb = balancer(&cfg).await;
    let plain = lb.plain_addr().expect("plain listener");
    for refusal in parser_refusals() {
        let tcp = TcpStream::connect(tls_addr(&lb)).await.expect("connect");
        let over_tls = exchange(ca.tls_over(tcp).await, &refusal.request).await;
        let (status, head, body) = split_response(&over_tls);
        assert_eq!(status, refusal.status, "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(json["code"], refusal.status);
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        let tcp = TcpStream::connect(plain).await.expect("connect");
        let (_, _, plain_body) = split_response(&exchange(tcp, &refusal.request).await);
        assert_eq!(body, plain_body, "the same answer on both listeners");
    }
    lb.shutdown().await;
    b.stop().await;
}
