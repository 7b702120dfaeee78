//! Health checks, retries and recovery, in process.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::{self, backend, backends, balancer, client, config, url};

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(100);

fn health_config(addrs: &[std::net::SocketAddr]) -> tollgate::config::Config {
    let mut cfg = config(addrs);
    cfg.health_check.interval = INTERVAL;
    cfg.health_check.timeout = TIMEOUT;
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_evicted_and_restored_without_failing_clients() {
    let mut bs = backends(3).await;
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let lb = balancer(&health_config(&addrs)).await;
    let pool = lb.pool().clone();

    // A steady stream of GETs from 4 clients until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
            let u = url(lb.proxy_addr(), "/");
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    match c.get(&u).send().await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            eprintln!("client saw {}", r.status());
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("client error {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    support::eventually("traffic flowing", || served.load(Ordering::Relaxed) > 50).await;

    let victim = bs.remove(1);
    let victim_addr = victim.addr;
    let killed = Instant::now();
    victim.stop().await;
    let dead = pool.backends()[1].clone();
    support::eventually("eviction", || !dead.is_healthy()).await;
    let evicted_after = killed.elapsed();

    // Back on the same port: restored after healthy_threshold good rounds.
    let revived = support::backend_on(victim_addr, "b1").await;
    let restarted = Instant::now();
    support::eventually("restore", || dead.is_healthy()).await;
    let restored_after = restarted.elapsed();
    let before = served.load(Ordering::Relaxed);
    support::eventually("traffic after restore", || {
        served.load(Ordering::Relaxed) > before + 50
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for s in streams {
        s.await.expect("stream task");
    }
    println!(
        "evicted after {evicted_after:?}, restored after {restored_after:?}, {} requests served",
        served.load(Ordering::Relaxed)
    );
    // Eviction within interval x unhealthy_threshold + timeout, restore
    // within interval x healthy_threshold (+ timeout). The slack is wide on
    // purpose: this checks that the flips happen in bounded time on a
    // shared 2-core machine, not how fast they are (the printed times are
    // the measurement).
    let slack = Duration::from_secs(2);
    assert!(
        evicted_after <= INTERVAL * 2 + TIMEOUT + slack,
        "evicted after {evicted_after:?}"
    );
    assert!(
        restored_after <= INTERVAL * 2 + TIMEOUT + slack,
        "restored after {restored_after:?}"
    );
    // Connect failures were retried on the others: no client saw an error.
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    revived.stop().await;
    lb.shutdown().await;
}

#[tokio::test]
async fn all_backends_down_is_503_and_recovery_is_automatic() {
    let b = backend("only").await;
    let addr = b.addr;
    let lb = balancer(&health_config(&[addr])).await;
    let c = client();
    assert_eq!(support::get_status(&c, lb.proxy_addr(), "/").await, 200);
    b.stop().await;
    let pool = lb.pool().clone();
    support::eventually("eviction", || pool.healthy_count() == 0).await;
    let r = c.get(url(lb.proxy_addr(), "/")).send().await.expect("req");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        body,
        serde_json::json!({"code": 503, "message": "No healthy backends"})
    );

    let revived = support::backend_on(addr, "only").await;
    support::eventually("restore", || pool.healthy_count() == 1).await;
    assert_eq!(support::get_status(&c, lb.proxy_addr(), "/").await, 200);
    revived.stop().await;
    lb.shutdown().await;
}

#[tokio::test]
async fn only_idempotent_bodiless_requests_are_retried() {
    // b0 passes the first check, then dies; b1 stays. Health rounds are
    // far apart so only passive checks and retries act.
    let doomed = backend("doomed").await;
    let alive = backend("alive").await;
    let mut cfg = config(&[doomed.addr, alive.addr]);
    cfg.health_check.interval = Duration::from_secs(3600);
    cfg.health_check.unhealthy_threshold = std::num::NonZeroU32::new(100).expect("nonzero");
    let lb = balancer(&cfg).await;
    doomed.stop().await;
    let c = client();
    let mut post_failures = 0;
    for _ in 0..6 {
        // Round robin alternates: half of these go to the dead backend first.
        let r = c.get(url(lb.proxy_addr(), "/")).send().await.expect("req");
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "GETs are retried on the live backend"
        );
        assert_eq!(r.headers()["x-backend"], "alive");
        let r = c
            .post(url(lb.proxy_addr(), "/echo"))
            .body("payload")
            .send()
            .await
            .expect("req");
        if r.status() == StatusCode::BAD_GATEWAY {
            post_failures += 1;
        } else {
            assert_eq!(r.status(), StatusCode::OK);
        }
    }
    assert!(post_failures > 0, "a POST with a body is never retried");
    let dead = lb.pool().backends()[0].clone();
    assert!(
        dead.consecutive_failures() >= 3,
        "passive failures were counted"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_backend_dead_at_start_gets_no_traffic() {
    let live = backend("live").await;
    let lb = balancer(&health_config(&[support::closed_port(), live.addr])).await;
    assert!(!lb.pool().backends()[0].is_healthy());
    assert!(lb.pool().backends()[1].is_healthy());
    let c = client();
    for _ in 0..4 {
        let r = c.get(url(lb.proxy_addr(), "/")).send().await.expect("req");
        assert_eq!(r.headers()["x-backend"], "live");
    }
    let v: serde_json::Value = c
        .get(url(lb.admin_addr(), "/backends"))
        .send()
        .await
        .expect("req")
        .json()
        .await
        .expect("json");
    assert_eq!(v[0]["healthy"], false);
    assert!(v[0]["consecutive_failures"].as_u64() >= Some(1));
    assert_eq!(v[1]["healthy"], true);
    lb.shutdown().await;
}
