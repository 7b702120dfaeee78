//! Traffic control per pool, end to end with demo backends:
//! `max_connections` with its FIFO queue (the backends' own count of
//! requests at once never passes the limit; a full queue or a long wait
//! is a 503 with Retry-After, grpc-status 14 for gRPC; a client that goes
//! away while queued frees its place at once), and the retry budget (a
//! pool whose backends all fail gets its clients' load plus the budget's
//! share, not a retry per request).

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tollgate::config::Config;

use crate::support::{backend, client, config, eventually, url, TestBackend};

/// `config` over no default pool with `yaml`'s pools and routes.
fn routed(yaml: &str) -> Config {
    let parsed = Config::parse(yaml).unwrap_or_else(|p| panic!("{p:#?}\n{yaml}"));
    let mut cfg = config(&[]);
    cfg.pools = parsed.pools;
    cfg.routes = parsed.routes;
    cfg
}

/// One pool `api` over `backends`, every request routed to it, with
/// `extra` pool keys (indented for the pool).
fn pool_yaml(backends: &[&TestBackend], extra: &str) -> String {
    let list: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("      - url: http://{}\n        name: b{i}\n", b.addr))
        .collect();
    format!(
        "pools:\n  api:\n    strategy: least_connections\n    backends:\n{list}{extra}routes:\n  - name: all\n    pool: api\n"
    )
}

async fn concurrency(c: &reqwest::Client, b: SocketAddr) -> Value {
    c.get(url(b, "/concurrency"))
        .send()
        .await
        .expect("backend")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn a_backend_never_has_more_requests_than_max_connections() {
    let b = [backend("b0").await, backend("b1").await];
    let yaml = pool_yaml(
        &[&b[0], &b[1]],
        "    max_connections: 2\n    queue: {size: 100, timeout: 10s}\n",
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let c = client();
    let proxy = lb.proxy_addr();
    let requests = (0..40).map(|_| {
        let c = c.clone();
        async move {
            c.get(url(proxy, "/delay/50"))
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let mut served = 0;
    for backend in &b {
        let load = concurrency(&c, backend.addr).await;
        assert!(
            load["max_in_flight"].as_u64() == Some(2),
            "the limit is reached and never passed: {load}"
        );
        served += load["requests"].as_u64().unwrap_or(0);
    }
    assert_eq!(served, 40);
    let stats = lb.pool_named("api").expect("pool").queue_stats();
    assert!(stats.served > 0, "requests waited: {stats:?}");
    assert_eq!(stats.depth, 0);
    let metrics = crate::support::metrics::scrape(&c, lb.admin_addr()).await;
    assert!(
        metrics.contains("tollgate_queue_wait_seconds_count{pool=\"api\"}"),
        "{metrics}"
    );
    lb.shutdown().await;
}

/// Sends `GET path` in the background; its status and headers.
fn spawn_get(
    c: &reqwest::Client,
    proxy: SocketAddr,
    path: &str,
) -> tokio::task::JoinHandle<(u16, reqwest::header::HeaderMap, String)> {
    let (c, u) = (c.clone(), url(proxy, path));
    tokio::spawn(async move {
        let r = c.get(u).send().await.expect("request");
        let (s, h) = (r.status().as_u16(), r.headers().clone());
        (s, h, r.text().await.unwrap_or_default())
    })
}

#[tokio::test]
async fn a_full_queue_and_a_long_wait_answer_503_with_retry_after() {
    let b = backend("b0").await;
    let yaml = pool_yaml(
        &[&b],
        "    max_connections: 1\n    queue: {size: 1, timeout: 1s}\n",
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let pool = lb.pool_named("api").expect("pool");
    let (c, proxy) = (client(), lb.proxy_addr());
    let busy = spawn_get(&c, proxy, "/delay/3000");
    eventually("the slot taken", || pool.backends()[0].in_flight() == 1).await;
    let waiting = spawn_get(&c, proxy, "/delay/0");
    eventually("one request queued", || pool.queue_stats().depth == 1).await;

    // The queue is full: refused at once.
    let r = c.get(url(proxy, "/")).send().await.expect("request");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["code"], 503);
    assert!(body["message"]
        .as_str()
        .unwrap_or("")
        .contains("queue is full"));

    // A gRPC client reads grpc-status 14 (UNAVAILABLE) instead.
    let r = c
        .post(url(proxy, "/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["grpc-status"], "14");

    // The queued one waited its second and gave up.
    let (status, headers, body) = waiting.await.expect("task");
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert!(body.contains("queue timeout"), "{body}");
    assert_eq!(busy.await.expect("task").0, 200);
    let stats = pool.queue_stats();
    assert_eq!((stats.depth, stats.refused), (0, 3), "{stats:?}");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_while_queued_frees_its_place_at_once() {
    use tokio::io::AsyncWriteExt;
    let b = backend("b0").await;
    let yaml = pool_yaml(
        &[&b],
        "    max_connections: 1\n    queue: {size: 1, timeout: 30s}\n",
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let pool = lb.pool_named("api").expect("pool");
    let (c, proxy) = (client(), lb.proxy_addr());
    let busy = spawn_get(&c, proxy, "/delay/3000");
    eventually("the slot taken", || pool.backends()[0].in_flight() == 1).await;

    let mut gone = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect");
    gone.write_all(b"GET /delay/0 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    eventually("the raw client queued", || pool.queue_stats().depth == 1).await;
    drop(gone);
    eventually("its place freed", || pool.queue_stats().depth == 0).await;
    assert_eq!(
        pool.backends()[0].in_flight(),
        1,
        "freed while the first request still runs"
    );
    // The place is free: the next request queues instead of a 503.
    let next = spawn_get(&c, proxy, "/delay/0");
    eventually("the next one queued", || pool.queue_stats().depth == 1).await;
    assert_eq!(busy.await.expect("task").0, 200);
    assert_eq!(next.await.expect("task").0, 200);
    lb.shutdown().await;
}

/// Sends `n` GETs one after another; the 503s among them.
async fn failures(c: &reqwest::Client, proxy: SocketAddr, n: usize) -> usize {
    let mut failed = 0;
    for _ in 0..n {
        let s = c
            .get(url(proxy, "/status/503"))
            .send()
            .await
            .expect("request")
            .status();
        failed += usize::from(s.as_u16() == 503);
    }
    failed
}

/// Backend hits for `n` client requests to a pool of three backends that
/// all answer 503, retried up to twice on 503, with `budget` (pool keys).
async fn hits_on_a_failing_pool(n: usize, budget: &str) -> u64 {
    let b = [
        backend("b0").await,
        backend("b1").await,
        backend("b2").await,
    ];
    let yaml = pool_yaml(
        &[&b[0], &b[1], &b[2]],
        &format!("    retries: {{attempts: 2, on: [\"503\"]{budget}}}\n"),
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let c = client();
    assert_eq!(failures(&c, lb.proxy_addr(), n).await, n);
    let mut hits = 0;
    for backend in &b {
        hits += concurrency(&c, backend.addr).await["requests"]
            .as_u64()
            .unwrap_or(0);
    }
    let metrics =
        crate::support::metrics::parse(&crate::support::metrics::scrape(&c, lb.admin_addr()).await);
    let retries = metrics
        .get("tollgate_retries_total{pool=\"api\",reason=\"503\"}")
        .copied()
        .unwrap_or(0.0);
    assert_eq!(hits as f64, n as f64 + retries, "every retry counted");
    lb.shutdown().await;
    hits
}

#[tokio::test]
async fn the_retry_budget_caps_what_a_failing_pool_receives() {
    let n = 200;
    let unbudgeted = hits_on_a_failing_pool(n, "").await;
    assert_eq!(unbudgeted, 3 * n as u64, "every request tried 3 times");
    let budgeted = hits_on_a_failing_pool(n, ", budget_percent: 20").await;
    eprintln!("{n} requests to a failing pool: {unbudgeted} backend hits without a budget, {budgeted} with budget_percent 20");
    assert!(
        budgeted <= (n + n / 5) as u64 && budgeted >= (n + n / 5 - 2) as u64,
        "{n} requests + at most 20 % retries, got {budgeted} hits"
    );
}

#[tokio::test]
async fn a_post_is_retried_only_when_nothing_was_sent() {
    let live = backend("live").await;
    let dead = crate::support::closed_port();
    let yaml = format!(
        "pools:\n  api:\n    strategy: round_robin\n    health_check: {{interval: 1h}}\n    backends:\n      - url: http://{dead}\n        name: dead\n      - url: http://{}\n        name: live\n    retries: {{attempts: 1, on: [connect_failure, \"503\"]}}\nroutes:\n  - name: all\n    pool: api\n",
        live.addr
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let pool = lb.pool_named("api").expect("pool");
    // The checker found `dead` down; bring it back so round robin tries it.
    let dead_backend = pool.find("dead").expect("dead");
    pool.record_initial(&dead_backend, true);
    let c = client();
    for _ in 0..4 {
        let r = c
            .post(url(lb.proxy_addr(), "/x"))
            .send()
            .await
            .expect("post");
        assert_eq!(
            r.status().as_u16(),
            200,
            "a bodiless POST that reached no backend is retried"
        );
        if !dead_backend.takes_requests() {
            pool.record_initial(&dead_backend, true);
        }
    }
    // A POST that got a 503 reached its backend: never sent twice.
    let before = concurrency(&c, live.addr).await["requests"].as_u64();
    let r = c
        .post(url(lb.proxy_addr(), "/status/503"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 503);
    let after = concurrency(&c, live.addr).await["requests"].as_u64();
    assert_eq!(after.zip(before).map(|(a, b)| a - b), Some(1));
    lb.shutdown().await;
}

#[tokio::test]
async fn max_connections_and_the_queue_change_on_reload() {
    let b = backend("b0").await;
    let file = |extra: &str| {
        format!(
            "server:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstore:\n  url: {}\nbackends: []\n{}",
            crate::support::temp_db(),
            pool_yaml(&[&b], extra)
        )
    };
    let path = tempfile::tempdir()
        .expect("tempdir")
        .keep()
        .join("config.yaml");
    std::fs::write(
        &path,
        file("    max_connections: 1\n    queue: {size: 0}\n"),
    )
    .expect("write");
    let cfg = Config::load(&path).expect("valid");
    let lb = tollgate::app::start_with_file(&cfg, Some(path.clone()))
        .await
        .expect("starts");
    let pool = lb.pool_named("api").expect("pool");
    let (c, proxy) = (client(), lb.proxy_addr());
    let busy = spawn_get(&c, proxy, "/delay/1000");
    eventually("the slot taken", || pool.backends()[0].in_flight() == 1).await;
    assert_eq!(
        get_status(&c, proxy).await,
        503,
        "queue size 0: refused at once"
    );

    std::fs::write(&path, file("    max_connections: 2\n")).expect("write");
    lb.reload().await.expect("reloaded");
    assert!(
        Arc::ptr_eq(&pool, &lb.pool_named("api").expect("pool")),
        "the same pool"
    );
    assert_eq!(pool.max_connections(), 2);
    assert_eq!(get_status(&c, proxy).await, 200, "a second slot now");
    assert_eq!(busy.await.expect("task").0, 200);
    lb.shutdown().await;
}

async fn get_status(c: &reqwest::Client, proxy: SocketAddr) -> u16 {
    crate::support::get_status(c, proxy, "/").await
}
