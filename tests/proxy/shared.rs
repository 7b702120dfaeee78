//! Limits shared by replicas through Redis: one bucket per client however
//! many replicas it talks to, and a defined answer while Redis is away.
//! Tests that need Redis read `TOLLGATE_TEST_REDIS_URL` and skip, saying
//! so, without it (CI sets it).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use tollgate::limiter::shared::{OnFailure, SharedMode};
use tollgate::limiter::Limits;

use crate::support::{self, backend, balancer, client, closed_port, config, get_status, url};

pub(super) fn redis_url() -> Option<String> {
    let url = std::env::var("TOLLGATE_TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: TOLLGATE_TEST_REDIS_URL is not set (e.g. redis://127.0.0.1:6379)");
    }
    url
}

/// A key prefix no other test (or earlier run) uses.
pub(super) fn prefix() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "tollgate-test:{}:{nanos}:{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes the keys a test left (a zero-rate counter never expires).
pub(super) async fn forget(redis: &str, prefix: &str) {
    let r = redis::Client::open(redis).expect("redis url");
    let mut conn = r
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}

fn shared_config(
    backend: std::net::SocketAddr,
    redis: &str,
    prefix: &str,
    limits: Limits,
) -> tollgate::config::Config {
    let mut cfg = config(&[backend]);
    cfg.rate_limit.default = limits;
    cfg.rate_limit.shared.redis_url = Some(redis.to_owned());
    cfg.rate_limit.shared.key_prefix = prefix.to_owned();
    cfg.rate_limit.shared.timeout = Duration::from_millis(500);
    cfg
}

/// What the tests against the shared Redis start from.
struct Setup {
    redis: String,
    prefix: String,
    cfg: tollgate::config::Config,
    _backend: support::TestBackend,
}

/// A backend and a config whose default `limits` are shared through the
/// Redis of `TOLLGATE_TEST_REDIS_URL`, under a key prefix of its own;
/// `None` (skip) without that variable.
async fn setup(limits: Limits) -> Option<Setup> {
    let redis = redis_url()?;
    let backend = backend("solo").await;
    let prefix = prefix();
    let cfg = shared_config(backend.addr, &redis, &prefix, limits);
    Some(Setup {
        redis,
        prefix,
        cfg,
        _backend: backend,
    })
}

/// Both ways of spending a shared limit; what does not depend on the mode
/// is tested in both.
const MODES: [SharedMode; 2] = [SharedMode::Lease, SharedMode::Exact];

/// `n` requests from one client, alternating between replicas `a` and `z`.
async fn alternate(
    c: &reqwest::Client,
    a: &tollgate::app::Running,
    z: &tollgate::app::Running,
    n: usize,
) -> Vec<reqwest::Response> {
    let mut responses = Vec::with_capacity(n);
    for i in 0..n {
        let replica = if i % 2 == 0 { a } else { z };
        responses.push(
            c.get(url(replica.proxy_addr(), "/"))
                .send()
                .await
                .expect("request"),
        );
    }
    responses
}

#[tokio::test]
async fn two_replicas_admit_one_clients_burst_once_between_them() {
    for mode in MODES {
        two_replicas_share_a_burst(mode).await;
    }
}

async fn two_replicas_share_a_burst(mode: SharedMode) {
    // 6 tokens, refilling one per 1000 s: nothing comes back during the test.
    let Some(mut s) = setup(Limits::new(6, 0.001).expect("valid")).await else {
        return;
    };
    s.cfg.rate_limit.shared.mode = mode;
    let a = balancer(&s.cfg).await;
    let z = balancer(&s.cfg).await;
    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    for r in alternate(&client(), &a, &z, 10).await {
        statuses.push(r.status().as_u16());
        remaining.push(
            r.headers()["x-ratelimit-remaining"]
                .to_str()
                .expect("ascii")
                .to_owned(),
        );
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            // Next token in ~1000 s: Retry-After says so, never less.
            let retry: u64 = r.headers()["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("seconds");
            assert!((990..=1001).contains(&retry), "Retry-After {retry}");
        }
    }
    // Each replica alone would have admitted 5 of its 5.
    // A lease is at most a quarter of the capacity: one token here, so the
    // replicas take turns exactly as with one call per request.
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 200, 429, 429, 429, 429],
        "{mode:?}"
    );
    assert_eq!(remaining[..6], ["5", "4", "3", "2", "1", "0"], "{mode:?}");
    a.shutdown().await;
    z.shutdown().await;
    forget(&s.redis, &s.prefix).await;
}

#[tokio::test]
async fn three_replicas_leasing_admit_a_burst_exactly_once() {
    // 20 tokens, one back per 1000 s; leases of up to 5.
    let Some(s) = setup(Limits::new(20, 0.001).expect("valid")).await else {
        return;
    };
    assert_eq!(
        s.cfg.rate_limit.shared.mode,
        SharedMode::Lease,
        "the default"
    );
    let replicas = [
        balancer(&s.cfg).await,
        balancer(&s.cfg).await,
        balancer(&s.cfg).await,
    ];
    let c = client();
    let mut admitted = 0;
    for i in 0..60 {
        let r = c
            .get(url(replicas[i % 3].proxy_addr(), "/"))
            .send()
            .await
            .expect("request");
        if r.status() == StatusCode::OK {
            admitted += 1;
            continue;
        }
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((990..=1001).contains(&retry), "Retry-After {retry}");
        assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(
            body,
            serde_json::json!({"code": 429, "message": "Rate limit exceeded"})
        );
    }
    // Every token is taken from Redis before it is spent, and each replica
    // kept getting requests until what it had leased was spent.
    assert_eq!(admitted, 20);
    for lb in replicas {
        lb.shutdown().await;
    }
    forget(&s.redis, &s.prefix).await;
}

#[tokio::test]
async fn rule_buckets_are_shared_like_client_buckets() {
    for mode in MODES {
        let Some(mut s) = setup(Limits::new(1000, 0.001).expect("valid")).await else {
            return;
        };
        s.cfg.rate_limit.shared.mode = mode;
        s.cfg.rate_limit.rules = tollgate::config::Config::parse(
            "rate_limit:
  rules:
    - name: api
      match: {path_prefix: /api}
      limits: {capacity: 6, rate_per_sec: 0.001}
      cost: 2
",
        )
        .expect("valid")
        .rate_limit
        .rules;
        let a = balancer(&s.cfg).await;
        let z = balancer(&s.cfg).await;
        let c = client();
        let mut statuses = Vec::new();
        for i in 0..6 {
            let lb = if i % 2 == 0 { &a } else { &z };
            statuses.push(get_status(&c, lb.proxy_addr(), "/api/x").await);
        }
        // 6 tokens at 2 a request, across both replicas.
        assert_eq!(statuses, [200, 200, 200, 429, 429, 429], "{mode:?}");
        // The client's own bucket gave back what the refusals took.
        let r = redis::Client::open(s.redis.as_str()).expect("redis url");
        let mut conn = r
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}rule:*", s.prefix))
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        assert_eq!(
            keys,
            [format!("{}rule:api:ip:127.0.0.1", s.prefix)],
            "{mode:?}"
        );
        a.shutdown().await;
        z.shutdown().await;
        forget(&s.redis, &s.prefix).await;
    }
}

#[tokio::test]
async fn a_zero_rate_allowance_is_shared_and_never_comes_back() {
    for mode in MODES {
        a_zero_rate_allowance_is_shared(mode).await;
    }
}

async fn a_zero_rate_allowance_is_shared(mode: SharedMode) {
    let Some(mut s) = setup(Limits::new(3, 0.0).expect("valid")).await else {
        return;
    };
    s.cfg.rate_limit.shared.mode = mode;
    let a = balancer(&s.cfg).await;
    let z = balancer(&s.cfg).await;
    let mut statuses = Vec::new();
    for r in alternate(&client(), &a, &z, 6).await {
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                r.headers().get("retry-after").is_none(),
                "no token will come"
            );
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429], "{mode:?}");
    a.shutdown().await;
    z.shutdown().await;
    forget(&s.redis, &s.prefix).await;
}

#[tokio::test]
async fn shared_buckets_expire_when_they_would_be_full_again() {
    // 4 tokens at 2/s: a bucket with one token taken is full after 0.5 s.
    let Some(s) = setup(Limits::new(4, 2.0).expect("valid")).await else {
        return;
    };
    let lb = balancer(&s.cfg).await;
    assert_eq!(get_status(&client(), lb.proxy_addr(), "/").await, 200);
    let r = redis::Client::open(s.redis.as_str()).expect("redis url");
    let mut conn = r
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}ip:127.0.0.1", s.prefix))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!((1..=501).contains(&ttl), "TTL {ttl} ms, expected about 500");
    lb.shutdown().await;
}

#[tokio::test]
async fn without_redis_the_failure_policy_decides() {
    for mode in MODES {
        without_redis(mode).await;
    }
}

async fn without_redis(mode: SharedMode) {
    let b = backend("solo").await;
    let dead = format!("redis://{}", closed_port());
    let limits = Limits::new(3, 0.001).expect("valid");
    let c = client();

    // local: this replica's own buckets decide.
    let mut cfg = shared_config(b.addr, &dead, "x:", limits);
    cfg.rate_limit.shared.mode = mode;
    cfg.rate_limit.shared.on_failure = OnFailure::Local;
    let lb = balancer(&cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get_status(&c, lb.proxy_addr(), "/").await);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{mode:?}");
    lb.shutdown().await;

    // reject: 503 JSON, promptly (the pause after a failure skips Redis).
    cfg.rate_limit.shared.on_failure = OnFailure::Reject;
    let lb = balancer(&cfg).await;
    for _ in 0..3 {
        // An answer, not a hang: each check waits at most the timeout.
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            c.get(url(lb.proxy_addr(), "/")).send(),
        )
        .await
        .expect("answered while Redis is down")
        .expect("req");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{mode:?}");
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["code"], 503);
        assert_eq!(body["message"], "Rate limiter unavailable");
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn the_admin_api_reports_the_shared_level() {
    let Some(s) = setup(Limits::new(100, 1.0).expect("valid")).await else {
        return;
    };
    // Two replicas, each with its own client table holding the same client.
    let a = balancer(&s.cfg).await;
    let mut cfg_z = s.cfg.clone();
    cfg_z.store.url = support::temp_db();
    let z = balancer(&cfg_z).await;
    let c = client();
    for lb in [&a, &z] {
        let r = c
            .post(url(lb.admin_addr(), "/clients"))
            .json(&serde_json::json!({"client_id": "team-9", "capacity": 5, "rate_per_sec": 0.001}))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    for lb in [&a, &a, &z] {
        let r = c
            .get(url(lb.proxy_addr(), "/"))
            .header("x-api-key", "team-9")
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK);
    }
    // z took one token itself; its own bucket would say 4.
    let v: serde_json::Value = c
        .get(url(z.admin_addr(), "/clients/team-9"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let tokens = v["tokens"].as_f64().expect("tokens");
    assert!(
        (2.0..2.1).contains(&tokens),
        "tokens {tokens}, expected 5 - 3"
    );
    let list: serde_json::Value = c
        .get(url(a.admin_addr(), "/clients"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    let tokens = list[0]["tokens"].as_f64().expect("tokens");
    assert!((2.0..2.1).contains(&tokens), "tokens {tokens} in the list");
    a.shutdown().await;
    z.shutdown().await;
    forget(&s.redis, &s.prefix).await;
}

/// A private `redis-server`, stopped when dropped (a failing test leaves
/// no server behind).
pub(super) struct PrivateRedis(std::process::Child);

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private `redis-server` on `port`, for tests that stop and restart
/// Redis (the shared one must stay up); `None` if the binary is missing.
pub(super) fn private_redis(port: u16) -> Option<PrivateRedis> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    std::process::Command::new(crate::support::redis_cluster::server_bin())
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()
        .map(PrivateRedis)
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

pub(super) async fn until_redis_answers(url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !redis_answers(url).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shared_limits_come_back_when_redis_does() {
    let port = closed_port().port();
    let url_redis = format!("redis://127.0.0.1:{port}");
    let Some(first) = private_redis(port) else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    until_redis_answers(&url_redis).await;
    let b = backend("solo").await;
    // Zero rate: each request leaves a visible count in Redis.
    let cfg = shared_config(
        b.addr,
        &url_redis,
        "p:",
        Limits::new(1000, 0.0).expect("valid"),
    );
    let lb = balancer(&cfg).await;
    let c = client();
    let used = |url: String| async move {
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        redis::cmd("GET")
            .arg("p:ip:127.0.0.1")
            .query_async::<Option<i64>>(&mut conn)
            .await
            .expect("GET")
            .unwrap_or(0)
    };
    assert_eq!(get_status(&c, lb.proxy_addr(), "/").await, 200);
    assert_eq!(used(url_redis.clone()).await, 1);

    // Redis gone: the local policy answers, promptly.
    drop(first);
    for _ in 0..3 {
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            get_status(&c, lb.proxy_addr(), "/"),
        )
        .await
        .expect("answered while Redis is down");
        assert_eq!(status, 200);
    }

    // A new Redis on the same address: checks reach it again once the
    // pause after the failure is over.
    let Some(_second) = private_redis(port) else {
        panic!("redis-server ran a moment ago");
    };
    until_redis_answers(&url_redis).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        assert_eq!(get_status(&c, lb.proxy_addr(), "/").await, 200);
        if used(url_redis.clone()).await > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checks never reached the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn without_redis_each_replica_admits_only_its_share() {
    for mode in MODES {
        if !share_of_three(mode).await {
            return;
        }
    }
}

/// Three replicas that have seen each other through their Redis lose it:
/// one of them admits a third of a client's bucket, not all of it.
/// `false` when `redis-server` is missing.
async fn share_of_three(mode: SharedMode) -> bool {
    let port = closed_port().port();
    let url_redis = format!("redis://127.0.0.1:{port}");
    let Some(redis) = private_redis(port) else {
        eprintln!("skipped: redis-server is not installed");
        return false;
    };
    until_redis_answers(&url_redis).await;
    let b = backend("solo").await;
    // Practically no refill: what is admitted is the burst.
    let mut cfg = shared_config(
        b.addr,
        &url_redis,
        "share:",
        Limits::new(30, 0.001).expect("valid"),
    );
    cfg.rate_limit.shared.mode = mode;
    let replicas = [
        balancer(&cfg).await,
        balancer(&cfg).await,
        balancer(&cfg).await,
    ];
    let limiters: Vec<_> = replicas
        .iter()
        .map(|r| r.shared_limiter().expect("shared limits").clone())
        .collect();
    // Heartbeats every second: each sees all three within two.
    support::eventually("three replicas counted", || {
        limiters.iter().all(|l| l.replicas() == 3)
    })
    .await;
    drop(redis);
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..15 {
        statuses.push(get_status(&c, replicas[0].proxy_addr(), "/").await);
    }
    // Its own bucket (30, full) would admit all 15: a third of it is 10.
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted, 10, "{mode:?}: {statuses:?}");
    assert!(
        statuses[10..].iter().all(|s| *s == 429),
        "{mode:?}: {statuses:?}"
    );
    for r in replicas {
        r.shutdown().await;
    }
    true
}
