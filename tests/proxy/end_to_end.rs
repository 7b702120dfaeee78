//! The request path end to end: demo backends and a balancer in process.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use tollgate::balancer::StrategyName;
use tollgate::limiter::{ClientKey, Limits};

use crate::support::{
    self, backends, balancer, client, closed_port, config, eventually, get_status, url,
};

async fn backend_of(c: &reqwest::Client, u: &str) -> String {
    let r = c.get(u).send().await.expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    r.headers()["x-backend"]
        .to_str()
        .expect("ascii")
        .to_string()
}

#[tokio::test]
async fn round_robin_gives_exactly_equal_shares() {
    let bs = backends(3).await;
    let cfg = config(&bs.iter().map(|b| b.addr).collect::<Vec<_>>());
    let lb = balancer(&cfg).await;
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        *counts
            .entry(backend_of(&c, &url(lb.proxy_addr(), "/")).await)
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n == 10), "{counts:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn least_connections_steers_away_from_slow_backends() {
    let bs = backends(2).await;
    let mut cfg = config(&bs.iter().map(|b| b.addr).collect::<Vec<_>>());
    cfg.balancing.strategy = StrategyName::LeastConnections;
    let lb = balancer(&cfg).await;
    let c = client();
    // Two slow requests: one lands on each backend... then b0 gets a third.
    let slow_url = url(lb.proxy_addr(), "/delay/1500");
    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(c.get(&slow_url).send()))
        .collect();
    let pool = lb.pool().clone();
    eventually("3 slow requests in flight", || {
        pool.backends().iter().map(|b| b.in_flight()).sum::<usize>() == 3
    })
    .await;
    let loads: Vec<usize> = pool.backends().iter().map(|b| b.in_flight()).collect();
    assert!(loads == vec![2, 1] || loads == vec![1, 2], "{loads:?}");
    let idle = if loads[0] == 1 { "b0" } else { "b1" };
    // Every quick request goes to the backend with fewer slow ones.
    for _ in 0..5 {
        assert_eq!(backend_of(&c, &url(lb.proxy_addr(), "/")).await, idle);
    }
    for s in slow {
        assert_eq!(
            s.await.expect("task").expect("slow request").status(),
            StatusCode::OK
        );
    }
    eventually("in-flight counts back to zero", || {
        pool.backends().iter().all(|b| b.in_flight() == 0)
    })
    .await;
    lb.shutdown().await;
}

#[tokio::test]
async fn random_reaches_every_backend() {
    let bs = backends(3).await;
    let mut cfg = config(&bs.iter().map(|b| b.addr).collect::<Vec<_>>());
    cfg.balancing.strategy = StrategyName::Random;
    let lb = balancer(&cfg).await;
    let c = client();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..90 {
        *counts
            .entry(backend_of(&c, &url(lb.proxy_addr(), "/")).await)
            .or_default() += 1;
    }
    // P(a backend gets < 10 of 90) is about 1e-5.
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 10), "{counts:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn limited_requests_get_429_json_and_headers() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(2, 0.5).expect("valid");
    let lb = balancer(&cfg).await;
    let c = client();
    let u = url(lb.proxy_addr(), "/");
    let first = c.get(&u).send().await.expect("request");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], "\"tollgate\";q=2;w=4");
    assert_eq!(first.headers()["x-ratelimit-limit"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining"], "1");
    let second = c.get(&u).send().await.expect("request");
    assert_eq!(second.headers()["x-ratelimit-remaining"], "0");
    // 0.5/s: the next token is 2 s away.
    assert_eq!(second.headers()["ratelimit"], "\"tollgate\";r=0;t=2");

    let limited = c.get(&u).send().await.expect("request");
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = limited.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["retry-after"], "2");
    assert_eq!(h["ratelimit"], "\"tollgate\";r=0;t=2");
    assert_eq!(h["x-ratelimit-remaining"], "0");
    assert!(
        h.get("x-backend").is_none(),
        "a limited request never reaches a backend"
    );
    let body = limited.text().await.expect("body");
    assert_eq!(body, r#"{"code":429,"message":"Rate limit exceeded"}"#);
    lb.shutdown().await;
}

#[tokio::test]
async fn api_keys_of_table_clients_get_their_own_bucket_others_are_charged_by_ip() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(2, 0.0).expect("valid");
    let lb = balancer(&cfg).await;
    lb.registry()
        .set_limits(
            &ClientKey::api("user1").expect("key"),
            Limits::new(5, 0.0).expect("valid"),
        )
        .expect("room");
    let c = client();
    let u = url(lb.proxy_addr(), "/");
    let status = |key: Option<&'static str>| {
        let c = c.clone();
        let u = u.clone();
        async move {
            let mut r = c.get(&u);
            if let Some(k) = key {
                r = r.header("x-api-key", k);
            }
            r.send().await.expect("request").status()
        }
    };
    for _ in 0..5 {
        assert_eq!(status(Some("user1")).await, StatusCode::OK);
    }
    assert_eq!(status(Some("user1")).await, StatusCode::TOO_MANY_REQUESTS);
    // The IP's own bucket (capacity 2) is untouched by user1's requests...
    assert_eq!(status(None).await, StatusCode::OK);
    // ...and an unknown key cannot mint a fresh bucket: it is the IP.
    assert_eq!(status(Some("made-up-key")).await, StatusCode::OK);
    assert_eq!(
        status(Some("another-made-up-key")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(None).await, StatusCode::TOO_MANY_REQUESTS);
    // A malformed key is an error, not silently someone else.
    assert_eq!(status(Some("bad key")).await, StatusCode::BAD_REQUEST);
    lb.shutdown().await;
}

#[tokio::test]
async fn forged_forwarded_for_is_ignored_from_untrusted_peers() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(2, 0.0).expect("valid");
    let lb = balancer(&cfg).await;
    let c = client();
    let u = url(lb.proxy_addr(), "/headers");
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = c
            .get(&u)
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .expect("request");
        statuses.push(r.status());
        if r.status() == StatusCode::OK {
            let seen: serde_json::Value = r.json().await.expect("json");
            // The backend sees the real peer, not the forged chain.
            assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
        }
    }
    assert_eq!(
        statuses,
        vec![
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn forwarded_for_from_trusted_proxies_names_the_client() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(1, 0.0).expect("valid");
    cfg.rate_limit.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    let lb = balancer(&cfg).await;
    let c = client();
    let u = url(lb.proxy_addr(), "/headers");
    for i in 0..3 {
        let r = c
            .get(&u)
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .header("x-forwarded-proto", "https")
            .header("connection", "x-drop-me")
            .header("x-drop-me", "1")
            .send()
            .await
            .expect("request");
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "each forwarded client has its own bucket"
        );
        let seen: serde_json::Value = r.json().await.expect("json");
        assert_eq!(
            seen["x-forwarded-for"],
            format!("198.51.100.{i}, 127.0.0.1")
        );
        assert_eq!(seen["x-forwarded-proto"], "http");
        assert_eq!(seen["x-forwarded-host"], lb.proxy_addr().to_string());
        assert!(
            seen.get("x-drop-me").is_none(),
            "headers named in Connection are hop-by-hop"
        );
    }
    let again = c
        .get(&u)
        .header("x-forwarded-for", "198.51.100.0")
        .send()
        .await
        .expect("request");
    assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_full_client_table_answers_503_json_with_retry_after() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    // One tracked client at most, whose bucket never refills to full.
    cfg.rate_limit.default = Limits::new(5, 0.0).expect("valid");
    cfg.rate_limit.max_clients = std::num::NonZeroUsize::new(1).expect("nonzero");
    cfg.rate_limit.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    let lb = balancer(&cfg).await;
    let c = client();
    let u = url(lb.proxy_addr(), "/");
    let first = c
        .get(&u)
        .header("x-forwarded-for", "198.51.100.1")
        .send()
        .await
        .expect("request");
    assert_eq!(first.status(), StatusCode::OK);
    let r = c
        .get(&u)
        .header("x-forwarded-for", "198.51.100.2")
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.headers()["retry-after"],
        "1",
        "the next refill tick, rounded up"
    );
    let (status, body) = json_error(r).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        serde_json::json!({"code": 503, "message": "Too many clients: rate-limit table is full"})
    );
    lb.shutdown().await;
}

async fn json_error(r: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = r.status();
    assert_eq!(r.headers()["content-type"], "application/json");
    (status, r.json().await.expect("json body"))
}

#[tokio::test]
async fn backend_failures_are_json_502_503_504() {
    let bs = backends(1).await;
    let c = client();

    // 502: the backend passed its first health check, then went away.
    let doomed = support::backend("doomed").await;
    let mut cfg = config(&[doomed.addr]);
    cfg.health_check.interval = Duration::from_secs(3600);
    let lb = balancer(&cfg).await;
    doomed.stop().await;
    let (status, body) =
        json_error(c.get(url(lb.proxy_addr(), "/")).send().await.expect("req")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["code"], 502);
    lb.shutdown().await;

    // 503 from the start: the only backend is dead when tollgate starts.
    let lb = balancer(&config(&[closed_port()])).await;
    let (status, _) = json_error(c.get(url(lb.proxy_addr(), "/")).send().await.expect("req")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    lb.shutdown().await;

    // 504: the backend answers after the request timeout.
    let mut cfg = config(&[bs[0].addr]);
    cfg.proxy.request_timeout = Duration::from_millis(200);
    let lb = balancer(&cfg).await;
    let (status, body) = json_error(
        c.get(url(lb.proxy_addr(), "/delay/3000"))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        body,
        serde_json::json!({"code": 504, "message": "Backend timed out"})
    );

    // 503: no healthy backend.
    let only = lb.pool().backends()[0].clone();
    lb.pool().set_healthy(&only, false);
    let (status, body) =
        json_error(c.get(url(lb.proxy_addr(), "/")).send().await.expect("req")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        serde_json::json!({"code": 503, "message": "No healthy backends"})
    );
    lb.pool().set_healthy(&only, true);
    let r = c.get(url(lb.proxy_addr(), "/")).send().await.expect("req");
    assert_eq!(r.status(), StatusCode::OK);
    lb.shutdown().await;

    // 503: the client table is full and every tracked bucket holds state.
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(5, 0.0).expect("valid");
    cfg.rate_limit.max_clients = std::num::NonZeroUsize::MIN;
    cfg.rate_limit.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    let lb = balancer(&cfg).await;
    let from = |ip: &'static str| {
        c.get(url(lb.proxy_addr(), "/"))
            .header("x-forwarded-for", ip)
    };
    assert_eq!(
        from("192.0.2.1").send().await.expect("req").status(),
        StatusCode::OK
    );
    let (status, body) = json_error(from("192.0.2.2").send().await.expect("req")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], 503);
    lb.shutdown().await;
}

#[tokio::test]
async fn slow_clients_are_cut_by_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.server.header_read_timeout = Duration::from_millis(200);
    let lb = balancer(&cfg).await;
    let mut s = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Never finish the headers: the server must hang up (or answer 408).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "connection still open 5 s after a 200 ms header timeout"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    lb.shutdown().await;
}

#[tokio::test]
async fn disabled_rate_limiting_sends_no_headers_and_never_429s() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.enabled = false;
    cfg.rate_limit.default = Limits::new(1, 0.0).expect("valid");
    let lb = balancer(&cfg).await;
    let c = client();
    for _ in 0..3 {
        let r = c.get(url(lb.proxy_addr(), "/")).send().await.expect("req");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().get("ratelimit").is_none());
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn h2c_clients_are_served_and_forwarded_over_http1() {
    use http_body_util::{BodyExt, Empty};
    let bs = backends(1).await;
    let lb = balancer(&config(&[bs[0].addr])).await;
    let mut sender = support::h2c::connect(lb.proxy_addr()).await;
    for path in ["/", "/headers"] {
        let req = http::Request::get(format!("http://app.example{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .expect("request");
        let r = sender.send_request(req).await.expect("h2 response");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.version(), http::Version::HTTP_2);
        assert_eq!(r.headers()["x-backend"], "b0");
        assert!(r.headers().contains_key("ratelimit"));
        let body = r.into_body().collect().await.expect("body").to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        if path == "/headers" {
            // The backend got HTTP/1.1 with the h2 authority as Host.
            assert_eq!(v["host"], "app.example");
            assert_eq!(v["x-forwarded-host"], "app.example");
        } else {
            assert_eq!(v["path"], "/");
        }
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_does_not_hold_up_shutdown() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.server.drain_timeout = Duration::from_secs(30);
    cfg.server.header_read_timeout = Duration::from_secs(30);
    let lb = balancer(&cfg).await;
    let _silent = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .expect("connect");
    // Let the proxy accept it before shutting down.
    assert_eq!(get_status(&client(), lb.proxy_addr(), "/").await, 200);
    let drained = tokio::time::timeout(Duration::from_secs(10), lb.shutdown())
        .await
        .expect("shutdown waited for a connection that sent nothing");
    assert_eq!(drained, tollgate::proxy::server::Drained::Clean);
}
