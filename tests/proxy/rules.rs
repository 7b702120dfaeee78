//! Limit rules (`rate_limit.rules`) and dry-run through the proxy: rules
//! match by path prefix and method, take their cost, key by client, address
//! or header, refuse all or nothing, shape the headers, and a dry run
//! never refuses. Each test runs its own balancer.

use std::net::SocketAddr;

use reqwest::{Method, StatusCode};
use tollgate::config::{Config, RuleConfig};
use tollgate::limiter::Limits;

use crate::support::{backend, balancer, client, config, url};

/// Rules written as the config file writes them.
fn rules(yaml: &str) -> Vec<RuleConfig> {
    let text = format!("rate_limit:\n  rules:\n{yaml}");
    Config::parse(&text)
        .unwrap_or_else(|problems| panic!("{problems:?}"))
        .rate_limit
        .rules
}

/// A config over `backend` whose clients have `client_limits` and the
/// given rules.
fn with_rules(backend: SocketAddr, client_limits: Limits, yaml: &str) -> Config {
    let mut cfg = config(&[backend]);
    cfg.rate_limit.default = client_limits;
    cfg.rate_limit.rules = rules(yaml);
    cfg
}

const PLENTY: fn() -> Limits = || Limits::new(1000, 0.001).expect("valid");

async fn send(
    c: &reqwest::Client,
    proxy: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = c.request(method, url(proxy, path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request")
}

async fn statuses(
    c: &reqwest::Client,
    proxy: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            send(c, proxy, method.clone(), path, headers)
                .await
                .status()
                .as_u16(),
        );
    }
    out
}

const SEARCH: &str = "    - name: search
      match: {path_prefix: /api/search, methods: [GET]}
      limits: {capacity: 2, rate_per_sec: 0.001}
";

#[tokio::test]
async fn a_rule_applies_to_its_path_and_methods_only() {
    let b = backend("solo").await;
    let lb = balancer(&with_rules(b.addr, PLENTY(), SEARCH)).await;
    let c = client();
    let p = lb.proxy_addr();
    assert_eq!(
        statuses(&c, p, Method::GET, "/api/search?q=1", &[], 3).await,
        [200, 200, 429]
    );
    assert_eq!(
        statuses(&c, p, Method::GET, "/api/search/deep", &[], 1).await,
        [429]
    );
    assert_eq!(
        statuses(&c, p, Method::GET, "/api/other", &[], 3).await,
        [200; 3]
    );
    assert_eq!(
        statuses(&c, p, Method::POST, "/api/search", &[], 3).await,
        [200; 3]
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_cost_of_5_on_a_capacity_of_10_admits_two_then_refuses() {
    let b = backend("solo").await;
    let yaml = "    - name: export
      match: {path_prefix: /export}
      limits: {capacity: 10, rate_per_sec: 0.001}
      cost: 5
";
    let lb = balancer(&with_rules(b.addr, PLENTY(), yaml)).await;
    let c = client();
    let p = lb.proxy_addr();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = send(&c, p, Method::GET, "/export", &[]).await;
        remaining.push((
            r.status().as_u16(),
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .expect("ascii")
                .to_owned(),
        ));
    }
    assert_eq!(
        remaining,
        [
            (200, "5".to_owned()),
            (200, "0".to_owned()),
            (429, "0".to_owned())
        ]
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_refusal_takes_no_token_from_any_bucket() {
    let b = backend("solo").await;
    // The client has 3 tokens, the rule 1: the rule's refusals must leave
    // the client's 2 remaining tokens for other paths.
    let yaml = "    - name: one
      match: {path_prefix: /one}
      limits: {capacity: 1, rate_per_sec: 0.001}
";
    let lb = balancer(&with_rules(
        b.addr,
        Limits::new(3, 0.001).expect("valid"),
        yaml,
    ))
    .await;
    let c = client();
    let p = lb.proxy_addr();
    assert_eq!(
        statuses(&c, p, Method::GET, "/one", &[], 4).await,
        [200, 429, 429, 429]
    );
    assert_eq!(
        statuses(&c, p, Method::GET, "/other", &[], 3).await,
        [200, 200, 429],
        "the client's bucket lost nothing to the rule's refusals"
    );
    lb.shutdown().await;

    // The other way round: the client's bucket refuses, the rule keeps
    // its tokens (seen on a fresh balancer whose client bucket is empty
    // first).
    let yaml = "    - name: two
      match: {path_prefix: /two}
      key: ip
      limits: {capacity: 2, rate_per_sec: 0.001}
";
    let mut cfg = with_rules(b.addr, Limits::new(1, 0.001).expect("valid"), yaml);
    cfg.store.url = crate::support::temp_db();
    let lb = balancer(&cfg).await;
    let p = lb.proxy_addr();
    assert_eq!(statuses(&c, p, Method::GET, "/else", &[], 1).await, [200]);
    assert_eq!(statuses(&c, p, Method::GET, "/two", &[], 3).await, [429; 3]);
    let r = send(&c, p, Method::GET, "/two", &[]).await;
    assert_eq!(r.status(), 429);
    // The headers name both policies; the rule's bucket is still full.
    let policy = r.headers()["ratelimit-policy"].to_str().expect("ascii");
    assert_eq!(policy, "\"tollgate\";q=1;w=1000, \"two\";q=2;w=2000");
    assert_eq!(r.headers()["ratelimit"], "\"tollgate\";r=0;t=1000");
    lb.shutdown().await;
}

#[tokio::test]
async fn header_keys_give_each_tenant_a_bucket_and_skip_requests_without_it() {
    let b = backend("solo").await;
    let yaml = "    - name: tenant
      match: {path_prefix: /}
      key: header:X-Tenant
      limits: {capacity: 1, rate_per_sec: 0.001}
";
    let lb = balancer(&with_rules(b.addr, PLENTY(), yaml)).await;
    let c = client();
    let p = lb.proxy_addr();
    let acme = [("x-tenant", "acme")];
    let umbrella = [("x-tenant", "umbrella")];
    assert_eq!(
        statuses(&c, p, Method::GET, "/", &acme, 2).await,
        [200, 429]
    );
    assert_eq!(
        statuses(&c, p, Method::GET, "/", &umbrella, 2).await,
        [200, 429]
    );
    assert_eq!(statuses(&c, p, Method::GET, "/", &[], 3).await, [200; 3]);
    // Not matched without the header: the client's policy alone.
    let r = send(&c, p, Method::GET, "/", &[]).await;
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"tollgate\";q=1000;w=1000000"
    );
    let r = send(&c, p, Method::GET, "/", &[("x-tenant", "bad value!")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], 400);
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .starts_with("x-tenant:"),
        "{body}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn the_headers_describe_the_refusing_rule_else_the_emptiest_bucket() {
    let b = backend("solo").await;
    let lb = balancer(&with_rules(b.addr, PLENTY(), SEARCH)).await;
    let c = client();
    let p = lb.proxy_addr();
    let r = send(&c, p, Method::GET, "/api/search", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"tollgate\";q=1000;w=1000000, \"search\";q=2;w=2000"
    );
    // search has 1 left, the client 999: the headers show search.
    assert_eq!(r.headers()["ratelimit"], "\"search\";r=1;t=1000");
    assert_eq!(r.headers()["x-ratelimit-limit"], "2");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "1");
    let _ = send(&c, p, Method::GET, "/api/search", &[]).await;
    let r = send(&c, p, Method::GET, "/api/search", &[]).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["ratelimit"], "\"search\";r=0;t=1000");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((990..=1000).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({"code": 429, "message": "Rate limit exceeded"})
    );
    // Without a matching rule, today's single policy.
    let r = send(&c, p, Method::GET, "/", &[]).await;
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"tollgate\";q=1000;w=1000000"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn dry_run_never_refuses_but_sends_the_headers() {
    let b = backend("solo").await;
    // A rule in dry-run, and a global dry run over a tiny client bucket.
    let yaml = "    - name: trial
      match: {path_prefix: /}
      limits: {capacity: 1, rate_per_sec: 0.001}
      dry_run: true
";
    let lb = balancer(&with_rules(b.addr, PLENTY(), yaml)).await;
    let c = client();
    let p = lb.proxy_addr();
    assert_eq!(statuses(&c, p, Method::GET, "/", &[], 3).await, [200; 3]);
    let r = send(&c, p, Method::GET, "/", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit"], "\"trial\";r=0;t=1000");
    lb.shutdown().await;

    let mut cfg = config(&[b.addr]);
    cfg.rate_limit.default = Limits::new(1, 0.001).expect("valid");
    cfg.rate_limit.dry_run = true;
    let lb = balancer(&cfg).await;
    let p = lb.proxy_addr();
    let statuses = statuses(&c, p, Method::GET, "/", &[], 3).await;
    assert_eq!(statuses, [200; 3]);
    let r = send(&c, p, Method::GET, "/", &[]).await;
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    lb.shutdown().await;
}

#[tokio::test]
async fn rule_buckets_survive_a_restart() {
    let b = backend("solo").await;
    let yaml = "    - name: daily
      match: {path_prefix: /p}
      limits: {capacity: 2, rate: 2/day}
";
    let cfg = with_rules(b.addr, PLENTY(), yaml);
    let c = client();
    let lb = balancer(&cfg).await;
    assert_eq!(
        statuses(&c, lb.proxy_addr(), Method::GET, "/p", &[], 3).await,
        [200, 200, 429]
    );
    // Shutdown writes a last snapshot; the next start restores from it.
    lb.shutdown().await;
    let lb = balancer(&cfg).await;
    assert_eq!(
        statuses(&c, lb.proxy_addr(), Method::GET, "/p", &[], 1).await,
        [429],
        "the rule's bucket came back empty, not full"
    );
    assert_eq!(
        statuses(&c, lb.proxy_addr(), Method::GET, "/", &[], 1).await,
        [200]
    );
    lb.shutdown().await;
}
