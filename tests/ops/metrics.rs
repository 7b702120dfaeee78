//! `/metrics` after traffic: every family present with values that match
//! the requests sent, and the shared limiter's metrics while Redis is
//! away. Each balancer counts in its own registry, so these run beside
//! the other tests of the binary.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::metrics::{parse, scrape};
use crate::support::{backend, backends, balancer, client, closed_port, config, get_status};
use tollgate::limiter::shared::OnFailure;
use tollgate::limiter::Limits;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened() {
    let bs = backends(2).await;
    let mut cfg = config(&[bs[0].addr, bs[1].addr]);
    cfg.rate_limit.default = Limits::new(10, 0.0).expect("valid");
    cfg.store.snapshot_interval = std::time::Duration::from_millis(100);
    let lb = balancer(&cfg).await;
    let c = client();
    for _ in 0..10 {
        // Bodies read to the end, so the client keeps its one connection.
        let r = c
            .get(crate::support::url(lb.proxy_addr(), "/"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
    }
    for _ in 0..3 {
        assert_eq!(
            crate::support::get_status(&c, lb.proxy_addr(), "/").await,
            429
        );
    }
    let text = scrape(&c, lb.admin_addr()).await;
    let m = parse(&text);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from:\n{text}"))
    };
    // Labelled with the backends' names: host:port by default.
    let b0 = bs[0].addr.to_string();
    let b1 = bs[1].addr.to_string();
    assert_eq!(
        get(&format!(
            "tollgate_requests_total{{status=\"2xx\",backend=\"{b0}\"}}"
        )),
        5.0
    );
    assert_eq!(
        get(&format!(
            "tollgate_requests_total{{status=\"2xx\",backend=\"{b1}\"}}"
        )),
        5.0
    );
    assert_eq!(
        get("tollgate_requests_total{status=\"4xx\",backend=\"none\"}"),
        3.0
    );
    assert_eq!(
        get("tollgate_rate_limited_total{policy=\"client\",dry_run=\"false\"}"),
        3.0
    );
    assert_eq!(get("tollgate_request_duration_seconds_count"), 13.0);
    assert!(get("tollgate_request_duration_seconds_sum") > 0.0);
    assert_eq!(
        get(&format!("tollgate_backend_healthy{{backend=\"{b0}\"}}")),
        1.0
    );
    assert_eq!(
        get(&format!("tollgate_backend_in_flight{{backend=\"{b1}\"}}")),
        0.0
    );
    // Each backend served 5 requests. The client may open a second
    // connection (its pool returns connections from another task), which
    // can land on the other proxy thread; each thread's pool then opens at
    // most one connection per backend and reuses it.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    for b in [&b0, &b1] {
        let opened = get(&format!(
            "tollgate_backend_connections_opened_total{{backend=\"{b}\"}}"
        ));
        assert!(
            (1.0..=threads.min(5.0)).contains(&opened),
            "{b}: {opened} connections"
        );
    }
    // Without pools and routes, no series names a pool: the exporter's
    // text is what it was before pools existed.
    assert!(!text.contains("pool="), "{text}");
    assert_eq!(get("tollgate_clients_tracked"), 1.0);
    assert_eq!(get("tollgate_clients_pinned"), 0.0);
    assert_eq!(get("tollgate_upgraded_connections"), 0.0);
    // Refill ticks and snapshots run on their own schedule (100 ms here):
    // scrape until each has been recorded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = scrape(&c, lb.admin_addr()).await;
        let m = parse(&text);
        let count = |k: &str| m.get(k).copied().unwrap_or(0.0);
        if count("tollgate_refill_sweep_seconds_count") >= 1.0
            && count("tollgate_snapshot_seconds_count") >= 1.0
        {
            assert!(text.contains("# TYPE tollgate_request_duration_seconds histogram"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refill/snapshot timings in:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    lb.shutdown().await;
    open_tunnels_are_a_gauge(&bs[0]).await;
    dry_runs_count_what_they_would_have_refused(&bs[0]).await;
}

/// A rule in dry-run and a refusing rule: the refusals a dry run did not
/// enforce are counted apart from the enforced ones, each by its rule.
async fn dry_runs_count_what_they_would_have_refused(b: &crate::support::TestBackend) {
    let mut cfg = config(&[b.addr]);
    cfg.rate_limit.rules = tollgate::config::Config::parse(
        "rate_limit:
  rules:
    - name: trial
      match: {path_prefix: /trial}
      limits: {capacity: 1, rate_per_sec: 0.001}
      dry_run: true
    - name: strict
      match: {path_prefix: /strict}
      limits: {capacity: 1, rate_per_sec: 0.001}
",
    )
    .expect("valid rules")
    .rate_limit
    .rules;
    let lb = balancer(&cfg).await;
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            crate::support::get_status(&c, lb.proxy_addr(), "/trial").await,
            200
        );
    }
    for status in [200, 429, 429] {
        assert_eq!(
            crate::support::get_status(&c, lb.proxy_addr(), "/strict").await,
            status
        );
    }
    let text = scrape(&c, lb.admin_addr()).await;
    let m = parse(&text);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from:\n{text}"))
    };
    assert_eq!(
        get("tollgate_rate_limited_total{policy=\"trial\",dry_run=\"true\"}"),
        2.0
    );
    assert_eq!(
        get("tollgate_rate_limited_total{policy=\"strict\",dry_run=\"false\"}"),
        2.0
    );
    assert!(
        !text.contains("policy=\"trial\",dry_run=\"false\""),
        "{text}"
    );
    lb.shutdown().await;
}

/// `tollgate_upgraded_connections` while a WebSocket tunnel is open and
/// after it closed (a balancer of its own: the first spent its tokens).
async fn open_tunnels_are_a_gauge(b: &crate::support::TestBackend) {
    use futures_util::{SinkExt, StreamExt};
    let lb = balancer(&config(&[b.addr])).await;
    let c = client();
    let gauge = |text: &str| parse(text).get("tollgate_upgraded_connections").copied();
    let tcp = tokio::net::TcpStream::connect(lb.proxy_addr())
        .await
        .expect("connect");
    let url = format!("ws://{}/ws", lb.proxy_addr());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .expect("upgraded");
    // Echoed: the tunnel is running, not only promised.
    let hello = tokio_tungstenite::tungstenite::Message::text("hello");
    ws.send(hello.clone()).await.expect("send");
    assert_eq!(ws.next().await.expect("echo").expect("message"), hello);
    let text = scrape(&c, lb.admin_addr()).await;
    assert_eq!(gauge(&text), Some(1.0), "{text}");
    ws.close(None).await.expect("close");
    while let Some(Ok(_)) = ws.next().await {}
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = scrape(&c, lb.admin_addr()).await;
        if gauge(&text) == Some(0.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still open:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    lb.shutdown().await;
}

async fn metrics(c: &reqwest::Client, admin: std::net::SocketAddr) -> HashMap<String, f64> {
    parse(&scrape(c, admin).await)
}

#[tokio::test]
async fn fallbacks_count_requests_the_failure_policy_decided() {
    let b = backend("solo").await;
    let c = client();
    let mut cfg = config(&[b.addr]);
    cfg.rate_limit.default = Limits::new(3, 0.001).expect("valid");
    cfg.rate_limit.shared.redis_url = Some(format!("redis://{}", closed_port()));
    cfg.rate_limit.shared.timeout = Duration::from_millis(500);

    cfg.rate_limit.shared.on_failure = OnFailure::Local;
    let lb = balancer(&cfg).await;
    for _ in 0..5 {
        get_status(&c, lb.proxy_addr(), "/").await;
    }
    let m = metrics(&c, lb.admin_addr()).await;
    lb.shutdown().await;
    let local = m
        .get("tollgate_shared_limiter_fallbacks_total{policy=\"local\"}")
        .copied();
    assert_eq!(local, Some(5.0), "{m:?}");
    // Redis was asked once; the pause after a failure skipped it for the
    // other four, which the failure counter does not count.
    let failures = m
        .get("tollgate_shared_limiter_failures_total")
        .copied()
        .unwrap_or(0.0);
    assert!((1.0..=5.0).contains(&failures), "{failures}");

    cfg.rate_limit.shared.on_failure = OnFailure::Reject;
    let lb = balancer(&cfg).await;
    for _ in 0..3 {
        assert_eq!(get_status(&c, lb.proxy_addr(), "/").await, 503);
    }
    let m = metrics(&c, lb.admin_addr()).await;
    lb.shutdown().await;
    assert_eq!(
        m.get("tollgate_shared_limiter_fallbacks_total{policy=\"reject\"}")
            .copied(),
        Some(3.0),
        "{m:?}"
    );
    b.stop().await;
}

/// With pools and routes, every backend metric names its pool: two
/// pools each have a backend named `shared`, and their series are apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_metrics_carry_their_pool_with_pools_and_routes() {
    // One 5xx ejects a backend (of two: max_ejected_percent 50 allows one).
    let ejecting = "health_check:\n  passive: {consecutive_5xx: 1, ejection_time: 1h}\n";
    let two = crate::routes::TwoPools::start_with(("", ejecting)).await;
    let c = client();
    let proxy = two.lb.proxy_addr();
    for path in ["/", "/", "/api/x", "/api/x"] {
        assert_eq!(get_status(&c, proxy, path).await, 200, "{path}");
    }
    assert_eq!(get_status(&c, proxy, "/api/status/500").await, 500);
    let text = scrape(&c, two.admin()).await;
    let m = parse(&text);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing from:\n{text}"))
    };
    for pool in ["default", "api"] {
        let labels = format!("{{backend=\"shared\",pool=\"{pool}\"}}");
        assert_eq!(get(&format!("tollgate_backend_in_flight{labels}")), 0.0);
        assert!(
            m.contains_key(&format!("tollgate_backend_healthy{labels}")),
            "{text}"
        );
    }
    assert_eq!(
        get("tollgate_backend_healthy{backend=\"web-2\",pool=\"default\"}"),
        1.0
    );
    let sum = |prefix: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    assert!(
        sum("tollgate_backend_connections_opened_total{backend=\"") >= 3.0,
        "{text}"
    );
    for pool in ["default", "api"] {
        let opened: f64 = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with("tollgate_backend_connections_opened_total{")
                    && k.ends_with(&format!(",pool=\"{pool}\"}}"))
            })
            .map(|(_, v)| v)
            .sum();
        assert!(opened >= 1.0, "{pool}: {text}");
    }
    let ejected: Vec<&String> = m
        .keys()
        .filter(|k| k.starts_with("tollgate_backend_ejections_total{"))
        .collect();
    assert_eq!(ejected.len(), 1, "{text}");
    assert!(ejected[0].ends_with(",pool=\"api\"}"), "{text}");
    // No backend series without its pool.
    for line in text.lines().filter(|l| l.starts_with("tollgate_backend_")) {
        assert!(line.contains(",pool=\""), "{line}");
    }
    two.stop().await;
}
