//! `https://` backends: verified against `proxy.ca_file` (and the system
//! roots), SNI = the URL's host, health checks over the same TLS, pooled
//! and reused like plain backends, and a certificate the balancer must not
//! trust handled as a connect failure.
//!
//! The backend is `support::tls_backend`: it records the SNI it was sent
//! and counts its connections, so the tests see the wire, not only the
//! answers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tollgate::balancer::BackendUrl;
use tollgate::config::{BackendConfig, Config};

use crate::support::tls::TestCa;
use crate::support::tls_backend::TlsBackend;
use crate::support::{self, balancer, client, config, url};

/// Active checks every hour: only the first round (at start) runs, so the
/// tests see the proxy's own connections.
const NO_MORE_CHECKS: Duration = Duration::from_secs(3600);

/// A balancer config with one backend at `backend_url`, trusting
/// `ca_file`.
fn https_config(backend_url: &str, ca_file: Option<PathBuf>) -> Config {
    let mut cfg = config(&[]);
    cfg.backends = vec![BackendConfig::new(
        BackendUrl::parse(backend_url).expect("backend url"),
    )];
    cfg.proxy.ca_file = ca_file;
    cfg.health_check.interval = NO_MORE_CHECKS;
    cfg
}

#[tokio::test]
async fn an_https_backend_with_a_private_ca() {
    let ca = TestCa::new("private CA");
    let backend = TlsBackend::start(&ca.issue("localhost", &["localhost"])).await;
    let backend_url = format!("https://localhost:{}", backend.addr.port());
    let lb = balancer(&https_config(&backend_url, Some(ca.ca_file()))).await;
    assert!(lb.pool().backends()[0].is_healthy(), "first check over TLS");
    let c = client();
    let r = c
        .get(url(lb.proxy_addr(), "/hello"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), "tls:/hello:0");
    // Every connection, health check and proxied alike, named the host.
    let sni = backend.sni();
    assert_eq!(sni.len(), 2, "{sni:?}");
    assert!(
        sni.iter().all(|s| s.as_deref() == Some("localhost")),
        "{sni:?}"
    );

    // What shows a backend's URL shows https://.
    let v: serde_json::Value = c
        .get(url(lb.admin_addr(), "/backends"))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(v[0]["url"], backend_url.as_str());
    let metrics = c
        .get(url(lb.admin_addr(), "/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    // Labelled with the backend's name: host:port by default.
    let name = backend_url.trim_start_matches("https://");
    let label = format!("backend=\"{name}\"");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_requests_total") && l.contains(&label)),
        "no request counter labelled {label}:\n{metrics}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn an_ip_address_backend_is_verified_against_its_ip_san() {
    let ca = TestCa::new("private CA");
    let backend = TlsBackend::start(&ca.issue("ip", &["127.0.0.1"])).await;
    let lb = balancer(&https_config(
        &format!("https://{}", backend.addr),
        Some(ca.ca_file()),
    ))
    .await;
    let r = client()
        .post(url(lb.proxy_addr(), "/up"))
        .body("12345")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), "tls:/up:5");
    // RFC 6066: no SNI for an IP address; the IP SAN is what is verified.
    let sni = backend.sni();
    assert!(
        !sni.is_empty() && sni.iter().all(Option::is_none),
        "{sni:?}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_certificate_the_balancer_must_not_trust_keeps_the_backend_out() {
    let ca = TestCa::new("trusted CA");
    let other = TestCa::new("another CA");
    for (what, cert) in [
        ("another CA", other.issue("localhost", &["localhost"])),
        (
            "another name",
            ca.issue("elsewhere", &["elsewhere.example"]),
        ),
    ] {
        let backend = TlsBackend::start(&cert).await;
        let lb = balancer(&https_config(
            &format!("https://localhost:{}", backend.addr.port()),
            Some(ca.ca_file()),
        ))
        .await;
        assert!(
            !lb.pool().backends()[0].is_healthy(),
            "{what}: the first health check must fail"
        );
        let r = client()
            .get(url(lb.proxy_addr(), "/"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert!(
            backend
                .seen
                .accepted
                .load(std::sync::atomic::Ordering::SeqCst)
                >= 1
        );
        assert_eq!(backend.health_checks(), 0, "{what}: no request got through");
        assert_eq!(backend.proxied_connections(), 0, "{what}");
        lb.shutdown().await;
    }
}

#[tokio::test]
async fn a_backend_certificate_from_another_ca_is_a_connect_failure() {
    let ca = TestCa::new("trusted CA");
    let other = TestCa::new("another CA");
    let backend = TlsBackend::start(&ca.issue("localhost", &["localhost"])).await;
    let lb = balancer(&https_config(
        &format!("https://localhost:{}", backend.addr.port()),
        Some(ca.ca_file()),
    ))
    .await;
    let b = lb.pool().backends()[0].clone();
    assert!(b.is_healthy());
    // A certificate rotation gone wrong.
    backend.present(&other.issue("localhost", &["localhost"]));
    let c = client();
    for failures in 1..=2 {
        let r = c
            .get(url(lb.proxy_addr(), "/"))
            .send()
            .await
            .expect("answered, not dropped");
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let v: serde_json::Value = r.json().await.expect("JSON error");
        assert_eq!(v["code"], 502);
        assert_eq!(v["message"], "Bad gateway: backend connection failed");
        // Passive health: counted like a refused connection.
        assert_eq!(b.consecutive_failures(), failures);
    }
    assert!(
        !b.is_healthy(),
        "evicted after unhealthy_threshold failures"
    );
    assert_eq!(backend.proxied_connections(), 0);
    // The balancer lives on.
    let r = c
        .get(url(lb.proxy_addr(), "/"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    lb.shutdown().await;
}

#[tokio::test]
async fn connect_timeout_bounds_the_tls_handshake_too() {
    let ca = TestCa::new("private CA");
    let backend = TlsBackend::start(&ca.issue("localhost", &["localhost"])).await;
    let mut cfg = https_config(
        &format!("https://localhost:{}", backend.addr.port()),
        Some(ca.ca_file()),
    );
    cfg.proxy.connect_timeout = Duration::from_millis(300);
    cfg.proxy.request_timeout = Duration::from_secs(20);
    let lb = balancer(&cfg).await;
    // TCP connects, the TLS handshake never completes.
    backend.stall();
    let started = Instant::now();
    let r = client()
        .get(url(lb.proxy_addr(), "/"))
        .send()
        .await
        .expect("request");
    // A connect failure (502), not the request timeout (504 after 20 s).
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(lb.pool().backends()[0].consecutive_failures(), 1);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_use_tls_with_the_same_roots() {
    let ca = TestCa::new("trusted CA");
    let other = TestCa::new("another CA");
    let good = ca.issue("localhost", &["localhost"]);
    let backend = TlsBackend::start(&good).await;
    let mut cfg = https_config(
        &format!("https://localhost:{}", backend.addr.port()),
        Some(ca.ca_file()),
    );
    cfg.health_check.interval = Duration::from_millis(50);
    cfg.health_check.timeout = Duration::from_secs(1);
    let lb = balancer(&cfg).await;
    let b = lb.pool().backends()[0].clone();
    support::eventually("three checks", || backend.health_checks() >= 3).await;
    let sni = backend.sni();
    assert!(
        sni.iter().all(|s| s.as_deref() == Some("localhost")),
        "{sni:?}"
    );
    // No proxied request at all: only the active checks can evict it.
    backend.present(&other.issue("localhost", &["localhost"]));
    support::eventually("eviction by active checks", || !b.is_healthy()).await;
    backend.present(&good);
    support::eventually("restore by active checks", || b.is_healthy()).await;
    assert_eq!(backend.proxied_connections(), 0);
    lb.shutdown().await;
}

#[tokio::test]
async fn keep_alive_tls_connections_to_a_backend_are_reused() {
    let ca = TestCa::new("private CA");
    let backend = TlsBackend::start(&ca.issue("localhost", &["localhost"])).await;
    let lb = balancer(&https_config(
        &format!("https://localhost:{}", backend.addr.port()),
        Some(ca.ca_file()),
    ))
    .await;
    let c = client();
    for i in 0..50 {
        let r = c
            .post(url(lb.proxy_addr(), "/"))
            .body(vec![b'x'; i])
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.text().await.expect("body"), format!("tls:/:{i}"));
    }
    // One client connection, one proxy thread, one TLS session reused.
    assert_eq!(backend.proxied_connections(), 1);
    // The first health check and that one connection: no handshake per
    // request.
    assert_eq!(backend.sni().len(), 2, "{:?}", backend.sni());
    lb.shutdown().await;
}
