//! DNS discovery end to end: a small DNS server on 127.0.0.1:0 whose
//! answers change, a pool that follows them (A records on one port, SRV
//! records with their ports and weights), a dead address that never gets
//! a request (added backends are checked first), and a failed or empty
//! answer that keeps the last known backends and is counted.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tollgate::config::Config;

use crate::support::dns::{DnsServer, Rec};
use crate::support::metrics::{parse, scrape};
use crate::support::{backend, backend_on, client, config, url};

fn routed(yaml: &str) -> Config {
    let parsed = Config::parse(yaml).unwrap_or_else(|p| panic!("{p:#?}\n{yaml}"));
    let mut cfg = config(&[]);
    cfg.pools = parsed.pools;
    cfg.routes = parsed.routes;
    cfg
}

/// Polls `cond` every 20 ms until it holds, failing after 10 s.
async fn until<F: Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Who answers `GET /` through the proxy (empty on an error status).
async fn served_by(c: &reqwest::Client, proxy: SocketAddr) -> String {
    let r = c.get(url(proxy, "/")).send().await.expect("request");
    if !r.status().is_success() {
        return String::new();
    }
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    v["backend"].as_str().unwrap_or("").to_owned()
}

fn updates(text: &str, result: &str) -> f64 {
    parse(text)
        .get(&format!(
            "tollgate_discovery_updates_total{{pool=\"api\",result=\"{result}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_pool_follows_its_a_records_and_keeps_them_through_failures() {
    let dns = DnsServer::start().await;
    let b0 = backend("b0").await;
    let port = b0.addr.port();
    let b1 = backend_on(SocketAddr::from(([127, 0, 0, 2], port)), "b1").await;
    dns.set("api.test", vec![Rec::A([127, 0, 0, 1].into())]);
    let yaml = format!(
        "pools:\n  api:\n    discovery: {{dns: \"api.test:{port}\", interval: 100ms, resolvers: [\"{}\"]}}\nroutes:\n  - name: all\n    pool: api\n",
        dns.addr
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let (c, proxy) = (client(), lb.proxy_addr());
    until("b0 found", || async { served_by(&c, proxy).await == "b0" }).await;

    // b1 added, and an address where nothing listens: checked first, so it
    // never gets a request.
    dns.set(
        "api.test",
        vec![Rec::A([127, 0, 0, 2].into()), Rec::A([127, 0, 0, 3].into())],
    );
    until("b0 removed", || async {
        lb.pool_named("api").is_some_and(|p| {
            p.backends()
                .iter()
                .all(|b| b.url().authority.host() != "127.0.0.1")
        })
    })
    .await;
    let pool = lb.pool_named("api").expect("pool");
    until("the dead address listed", || async {
        pool.backends().len() == 2
    })
    .await;
    let dead = pool
        .backends()
        .iter()
        .find(|b| b.url().authority.host() == "127.0.0.3")
        .cloned()
        .expect("listed");
    assert!(
        !dead.is_healthy(),
        "its first check failed before any request"
    );
    for _ in 0..20 {
        assert_eq!(served_by(&c, proxy).await, "b1", "only the live new one");
    }

    // A failing server and an empty answer keep the last known set.
    dns.fail(true);
    until("a failed lookup counted", || async {
        updates(&scrape(&c, lb.admin_addr()).await, "failed") >= 1.0
    })
    .await;
    assert_eq!(served_by(&c, proxy).await, "b1");
    dns.fail(false);
    dns.set("api.test", vec![]);
    until("an empty answer counted", || async {
        updates(&scrape(&c, lb.admin_addr()).await, "empty") >= 1.0
    })
    .await;
    assert_eq!(served_by(&c, proxy).await, "b1");
    let text = scrape(&c, lb.admin_addr()).await;
    assert!(updates(&text, "changed") >= 2.0, "{text}");
    lb.shutdown().await;
    b1.stop().await;
}

#[tokio::test]
async fn srv_records_give_ports_and_weights() {
    let dns = DnsServer::start().await;
    let (b0, b1) = (backend("b0").await, backend("b1").await);
    let srv = |weight: u16, b: &crate::support::TestBackend, target: &str| {
        Rec::Srv(0, weight, b.addr.port(), target.to_owned())
    };
    dns.set("b0.test", vec![Rec::A([127, 0, 0, 1].into())]);
    dns.set("b1.test", vec![Rec::A([127, 0, 0, 1].into())]);
    dns.set(
        "_http._tcp.api.test",
        vec![srv(1, &b0, "b0.test"), srv(3, &b1, "b1.test")],
    );
    let yaml = format!(
        "pools:\n  api:\n    discovery: {{dns_srv: _http._tcp.api.test, interval: 100ms, resolvers: [\"{}\"]}}\nroutes:\n  - name: all\n    pool: api\n",
        dns.addr
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let (c, proxy) = (client(), lb.proxy_addr());
    until("both found", || async {
        lb.pool_named("api").is_some_and(|p| p.healthy_count() == 2)
    })
    .await;
    let pool = lb.pool_named("api").expect("pool");
    let weight_of = |port: u16| {
        pool.backends()
            .iter()
            .find(|b| b.url().authority.port_u16() == Some(port))
            .map(|b| b.weight())
    };
    assert_eq!(weight_of(b0.addr.port()), Some(1));
    assert_eq!(weight_of(b1.addr.port()), Some(3));
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for _ in 0..40 {
        *seen.entry(served_by(&c, proxy).await).or_default() += 1;
    }
    assert_eq!((seen["b0"], seen["b1"]), (10, 30), "weights from SRV");

    dns.set("_http._tcp.api.test", vec![srv(1, &b1, "b1.test")]);
    until("b0 removed", || async { pool.backends().len() == 1 }).await;
    assert_eq!(served_by(&c, proxy).await, "b1");
    assert!(dns.queries() > 0);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_reload_keeps_the_discovered_backends() {
    let dns = DnsServer::start().await;
    let b0 = backend("b0").await;
    let port = b0.addr.port();
    dns.set("api.test", vec![Rec::A([127, 0, 0, 1].into())]);
    let file = |strategy: &str| {
        format!(
            "server:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nstore:\n  url: {}\nbackends: []\npools:\n  api:\n    strategy: {strategy}\n    discovery: {{dns: \"api.test:{port}\", interval: 1h, resolvers: [\"{}\"]}}\nroutes:\n  - name: all\n    pool: api\n",
            crate::support::temp_db(),
            dns.addr
        )
    };
    let path = tempfile::tempdir()
        .expect("tempdir")
        .keep()
        .join("config.yaml");
    std::fs::write(&path, file("round_robin")).expect("write");
    let cfg = Config::load(&path).expect("valid");
    let lb = tollgate::app::start_with_file(&cfg, Some(path.clone()))
        .await
        .expect("starts");
    let (c, proxy) = (client(), lb.proxy_addr());
    until("b0 found", || async { served_by(&c, proxy).await == "b0" }).await;
    // The next lookup is an hour away: what the pool has after the reload
    // is what the reload left.
    std::fs::write(&path, file("p2c")).expect("write");
    lb.reload().await.expect("reloaded");
    assert_eq!(lb.pool_named("api").map(|p| p.backends().len()), Some(1));
    assert_eq!(served_by(&c, proxy).await, "b0");
    lb.shutdown().await;
}
