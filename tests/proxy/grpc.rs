//! HTTP/2 and gRPC to backends (`protocol: http2`), with a real gRPC
//! client and server (tonic) on both sides of tollgate: unary and
//! server-streaming calls, deadlines, many calls over one backend
//! connection, trailers both ways, gRPC refusals (rate limit, no backend,
//! deadline) and gRPC health checks.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use tollgate::config::Config;
use tonic::Code;

use crate::support::grpc::{self, assert_code, NOT_SERVING};
use crate::support::{self, balancer, config, eventually};

/// A balancer config whose default pool is `backends`, spoken to over
/// HTTP/2, with `extra` YAML applied to the pools and health checks.
fn h2_config(backends: &[SocketAddr]) -> Config {
    let mut cfg = config(backends);
    cfg.proxy.protocol = tollgate::balancer::Protocol::Http2;
    cfg.health_check.interval = Duration::from_millis(100);
    cfg.health_check.timeout = Duration::from_millis(500);
    cfg
}

#[tokio::test]
async fn unary_and_streaming_calls_pass_through_with_their_trailers() {
    let server = grpc::server("g0").await;
    let lb = balancer(&h2_config(&[server.addr])).await;
    let mut client = grpc::client(lb.proxy_addr()).await;

    let pong = client
        .unary("hello", Duration::ZERO, None, &[])
        .await
        .expect("unary call")
        .into_inner();
    assert_eq!((pong.text.as_str(), pong.backend.as_str()), ("hello", "g0"));

    let pongs = client
        .stream("tick", 5, Duration::from_millis(5))
        .await
        .expect("streaming call");
    let indexes: Vec<u32> = pongs.iter().map(|p| p.index).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);

    // The backend's own status comes through (in its trailers-only answer).
    let status = assert_code(
        client.unary("fail", Duration::ZERO, None, &[]).await,
        Code::NotFound,
    );
    assert_eq!(status.message(), "no pong for fail");

    // gRPC servers need `te: trailers`; tollgate strips other hop-by-hop
    // headers but keeps that one.
    let te = server.seen.te.lock().expect("lock").clone();
    assert!(!te.is_empty());
    assert!(
        te.iter().all(|t| t.as_deref() == Some("trailers")),
        "{te:?}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn many_calls_share_one_backend_connection_until_it_is_busy() {
    let server = grpc::server("g0").await;
    let lb = balancer(&h2_config(&[server.addr])).await;
    let client = grpc::client(lb.proxy_addr()).await;

    let calls = |n: usize| {
        let client = client.clone();
        async move {
            let calls = (0..n).map(|i| {
                let mut c = client.clone();
                async move {
                    c.unary(&i.to_string(), Duration::from_millis(300), None, &[])
                        .await
                        .expect("call")
                }
            });
            futures_util::future::join_all(calls).await
        }
    };
    // 50 calls at once: all streams of one connection.
    assert_eq!(calls(50).await.len(), 50);
    assert_eq!(server.seen.call_connection_count(), 1);

    // 120 at once: past 100 streams on it, a second connection opens, and
    // no more than that.
    server.seen.call_connections.lock().expect("lock").clear();
    assert_eq!(calls(120).await.len(), 120);
    assert_eq!(server.seen.call_connection_count(), 2);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_deadline_shorter_than_the_backend_ends_in_deadline_exceeded() {
    let server = grpc::server("g0").await;
    let lb = balancer(&h2_config(&[server.addr])).await;
    let mut client = grpc::client(lb.proxy_addr()).await;

    // In time: the deadline travels to the backend.
    client
        .unary("quick", Duration::ZERO, Some(Duration::from_secs(5)), &[])
        .await
        .expect("call within its deadline");
    let seen = server.seen.timeouts.lock().expect("lock").clone();
    assert_eq!(seen, [Some("5000000u".to_owned())]);

    // Too slow: tollgate gives up at the call's deadline, well before its
    // own request_timeout (5 s in these tests), as a gRPC status.
    let status = assert_code(
        client
            .unary(
                "slow",
                Duration::from_secs(3),
                Some(Duration::from_millis(200)),
                &[],
            )
            .await,
        Code::DeadlineExceeded,
    );
    assert_eq!(status.message(), "Backend timed out");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_rate_limited_call_is_resource_exhausted_with_the_ratelimit_headers() {
    let server = grpc::server("g0").await;
    let mut cfg = h2_config(&[server.addr]);
    cfg.rate_limit.default = tollgate::limiter::Limits::new(1, 0.001).expect("limits");
    let lb = balancer(&cfg).await;
    let mut client = grpc::client(lb.proxy_addr()).await;

    client
        .unary("first", Duration::ZERO, None, &[])
        .await
        .expect("the first call has a token");
    let status = assert_code(
        client.unary("second", Duration::ZERO, None, &[]).await,
        Code::ResourceExhausted,
    );
    assert_eq!(status.message(), "Rate limit exceeded");
    let md = status.metadata();
    assert!(md.get("ratelimit").is_some(), "{md:?}");
    assert!(md.get("retry-after").is_some(), "{md:?}");
    assert_eq!(
        md.get("x-ratelimit-remaining").map(|v| v.to_str().ok()),
        Some(Some("0"))
    );
    // Only the first call reached the backend.
    assert_eq!(server.seen.timeouts.lock().expect("lock").len(), 1);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_refused_call_is_answered_as_grpc_and_others_keep_json() {
    // No healthy backend: the one configured is not listening.
    let cfg = h2_config(&[support::closed_port()]);
    let lb = balancer(&cfg).await;
    let mut client = grpc::client(lb.proxy_addr()).await;
    let status = assert_code(
        client.unary("x", Duration::ZERO, None, &[]).await,
        Code::Unavailable,
    );
    assert_eq!(status.message(), "No healthy backends");

    // On the wire: HTTP 200, trailers-only, the status in the headers.
    let mut h2 = support::h2c::connect(lb.proxy_addr()).await;
    let req = http::Request::post("http://app.example/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = h2.send_request(req).await.expect("response");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "14");
    assert_eq!(r.headers()["content-type"], "application/grpc");
    assert!(r.headers().contains_key("x-request-id"));
    assert!(r
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .is_empty());

    // Anyone else still gets the JSON error.
    let r = support::client()
        .get(support::url(lb.proxy_addr(), "/"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("grpc-status").is_none());
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], 503);
    lb.shutdown().await;
}

#[tokio::test]
async fn grpc_health_checks_follow_the_serving_status() {
    let server = grpc::server("g0").await;
    let mut cfg = h2_config(&[server.addr]);
    cfg.health_check.grpc = true;
    cfg.health_check.grpc_service = "test.Echo".into();
    cfg.health_check.unhealthy_threshold = std::num::NonZeroU32::MIN;
    cfg.health_check.healthy_threshold = std::num::NonZeroU32::MIN;
    let lb = balancer(&cfg).await;
    let pool = lb.pool();
    assert_eq!(pool.healthy_count(), 1, "SERVING at start");
    let mut client = grpc::client(lb.proxy_addr()).await;
    client
        .unary("up", Duration::ZERO, None, &[])
        .await
        .expect("call while serving");

    server.seen.health.store(NOT_SERVING, Ordering::Relaxed);
    eventually("NOT_SERVING takes the backend out", || {
        pool.healthy_count() == 0
    })
    .await;
    assert_code(
        client.unary("down", Duration::ZERO, None, &[]).await,
        Code::Unavailable,
    );
    server.seen.health.store(grpc::SERVING, Ordering::Relaxed);
    eventually("SERVING brings it back", || pool.healthy_count() == 1).await;
    assert!(server.seen.health_checks.load(Ordering::Relaxed) >= 3);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_grpc_check_of_an_unknown_service_fails() {
    let server = grpc::server("g0").await;
    let mut cfg = h2_config(&[server.addr]);
    cfg.health_check.grpc = true;
    cfg.health_check.grpc_service = "not.Here".into();
    let lb = balancer(&cfg).await;
    assert_eq!(lb.pool().healthy_count(), 0);
    assert!(server.seen.health_checks.load(Ordering::Relaxed) >= 1);
    lb.shutdown().await;
}

#[tokio::test]
async fn an_http2_pool_checks_health_over_http2() {
    // An HTTP/1.1-only backend cannot serve an http2 pool: its first
    // check fails. The same backend with --h2c passes.
    let h1_only = support::backend("h1").await;
    let both = support::backend_h2c("both").await;
    let lb = balancer(&h2_config(&[h1_only.addr, both.addr])).await;
    let pool = lb.pool();
    let healthy: Vec<String> = pool
        .backends()
        .iter()
        .filter(|b| b.is_healthy())
        .map(|b| b.name().to_string())
        .collect();
    assert_eq!(healthy, [both.addr.to_string()]);
    lb.shutdown().await;
}

#[tokio::test]
async fn trailers_travel_both_ways_over_an_http2_pool() {
    let backend = support::backend_h2c("b0").await;
    let lb = balancer(&h2_config(&[backend.addr])).await;
    let mut h2 = support::h2c::connect_for(lb.proxy_addr()).await;

    // Request trailers reach the backend (its /echo streams the body back,
    // trailers and all), and its response trailers reach the client.
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-request-trailer", "sent".parse().expect("value"));
    let frames = [
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"body"))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
    let req = http::Request::post("http://app.example/echo")
        .header("te", "trailers")
        .body(body)
        .expect("request");
    let r = h2.send_request(req).await.expect("response");
    assert_eq!(r.status(), 200);
    let collected = r.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-request-trailer"], "sent");
    assert_eq!(collected.to_bytes(), "body");
    lb.shutdown().await;
}

#[tokio::test]
async fn te_trailers_reaches_an_http1_backend_so_its_trailers_come_back() {
    // HTTP/1.1 backend: it sends chunked trailers only to a request that
    // says `TE: trailers`, which tollgate used to strip as hop-by-hop.
    let backend = support::backend("b0").await;
    let lb = balancer(&config(&[backend.addr])).await;
    let mut h2 = support::h2c::connect(lb.proxy_addr()).await;
    let req = http::Request::get("http://app.example/trailers")
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = h2.send_request(req).await.expect("response");
    assert_eq!(r.status(), 200);
    let collected = r.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-trailer"], "yes");
    lb.shutdown().await;
}

#[tokio::test]
async fn an_http1_client_that_asks_for_trailers_gets_them_too() {
    // HTTP/1.1 end to end: the backend announces its trailer (`Trailer`),
    // tollgate passes the announcement on, so its own HTTP/1.1 side can
    // send the trailer to a client that said `TE: trailers`.
    let backend = support::backend("b0").await;
    let lb = balancer(&config(&[backend.addr])).await;
    let tcp = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get("/trailers")
        .header("host", "app.example")
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = sender.send_request(req).await.expect("response");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["trailer"], "x-trailer");
    let collected = r.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-trailer"], "yes");
    lb.shutdown().await;
}

#[tokio::test]
async fn the_demo_backend_speaks_h2c_only_when_asked() {
    let plain = support::backend("plain").await;
    let h2c = support::backend_h2c("h2c").await;

    // With --h2c: HTTP/2 with prior knowledge, /trailers with its trailer.
    let mut sender = support::h2c::connect(h2c.addr).await;
    let req = http::Request::get(format!("http://{}/trailers", h2c.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let r = sender.send_request(req).await.expect("h2 response");
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, http::Version::HTTP_2)
    );
    assert_eq!(r.headers()["x-backend"], "h2c");
    let collected = r.into_body().collect().await.expect("body");
    assert_eq!(collected.trailers().expect("trailers")["x-trailer"], "yes");

    // Without: HTTP/1.1 only; the preface is not HTTP/1.1 and the
    // connection fails.
    let mut sender = support::h2c::connect(plain.addr).await;
    let req = http::Request::get(format!("http://{}/", plain.addr))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    assert!(sender.send_request(req).await.is_err());
    // ... and HTTP/1.1 still works there.
    let r = support::client()
        .get(support::url(plain.addr, "/health"))
        .send()
        .await
        .expect("http/1.1");
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn grpc_over_tls_to_the_backend_negotiates_h2() {
    let ca = support::tls::TestCa::new("grpc CA");
    let cert = ca.issue("localhost", &["localhost"]);
    let server = grpc::server_tls("g-tls", &cert.cert, &cert.key).await;
    let mut cfg = h2_config(&[]);
    cfg.backends = vec![tollgate::config::BackendConfig::new(
        tollgate::balancer::BackendUrl::parse(&format!("https://localhost:{}", server.addr.port()))
            .expect("url"),
    )];
    cfg.proxy.ca_file = Some(ca.ca_file());
    cfg.health_check.grpc = true;
    let lb = balancer(&cfg).await;
    assert_eq!(
        lb.pool().healthy_count(),
        1,
        "gRPC check over TLS with ALPN h2"
    );
    let mut client = grpc::client(lb.proxy_addr()).await;
    let pong = client
        .unary("secure", Duration::ZERO, None, &[])
        .await
        .expect("call over TLS")
        .into_inner();
    assert_eq!(pong.backend, "g-tls");
    lb.shutdown().await;
}

#[tokio::test]
async fn an_https_backend_without_h2_fails_an_http2_pool() {
    // The HTTP/1.1-only TLS test backend does not choose `h2` by ALPN:
    // the pool's checks fail, and so would every request.
    let ca = support::tls::TestCa::new("h1 CA");
    let backend =
        support::tls_backend::TlsBackend::start(&ca.issue("localhost", &["localhost"])).await;
    let mut cfg = h2_config(&[]);
    cfg.backends = vec![tollgate::config::BackendConfig::new(
        tollgate::balancer::BackendUrl::parse(&format!(
            "https://localhost:{}",
            backend.addr.port()
        ))
        .expect("url"),
    )];
    cfg.proxy.ca_file = Some(ca.ca_file());
    let lb = balancer(&cfg).await;
    assert_eq!(lb.pool().healthy_count(), 0);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_reload_switches_a_pool_to_http2_and_grpc_checks() {
    let server = grpc::server("g0").await;
    let db = support::temp_db();
    let yaml = |protocol: &str, grpc: bool| {
        format!(
            "server: {{listen: 127.0.0.1:0}}\nadmin: {{listen: 127.0.0.1:0}}\n\
             backends: [{{url: 'http://{}'}}]\nstore: {{url: '{}'}}\n\
             proxy: {{protocol: {protocol}}}\n\
             health_check: {{interval: 100ms, unhealthy_threshold: 1, healthy_threshold: 1, grpc: {grpc}}}\n",
            server.addr, db
        )
    };
    let path = tempfile::tempdir()
        .expect("tempdir")
        .keep()
        .join("config.yaml");
    std::fs::write(&path, yaml("http1", false)).expect("write");
    let config = Config::load(&path).expect("valid");
    let lb = tollgate::app::start_with_file(&config, Some(path.clone()))
        .await
        .expect("starts");
    // Over HTTP/1.1 the gRPC server answers nothing: out of the pool.
    assert_eq!(lb.pool().healthy_count(), 0);
    let mut client = grpc::client(lb.proxy_addr()).await;
    assert_code(
        client.unary("before", Duration::ZERO, None, &[]).await,
        Code::Unavailable,
    );

    std::fs::write(&path, yaml("http2", true)).expect("rewrite");
    let reloaded = lb.reload().await.expect("reload");
    assert_eq!(
        reloaded.applied,
        ["proxy.protocol", "health_check.grpc"],
        "{reloaded:?}"
    );
    assert!(reloaded.restart_required.is_empty(), "{reloaded:?}");
    let pool = lb.pool();
    eventually("the gRPC check brings it in", || pool.healthy_count() == 1).await;
    assert!(server.seen.health_checks.load(Ordering::Relaxed) >= 1);
    client
        .unary("after", Duration::ZERO, None, &[])
        .await
        .expect("call after the reload");
    lb.shutdown().await;
}
