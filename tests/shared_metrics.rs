//! The shared limiter's metrics while Redis is away: failures count the
//! checks Redis failed, fallbacks count the requests the failure policy
//! decided. Alone in its test binary because the metrics recorder is
//! process-wide.

// The one test of this binary (alone: see above) uses only some of the
// helpers in net.rs.
#[allow(dead_code)]
#[path = "support"]
mod support {
    pub mod metrics;
    pub mod net;
    pub use net::*;
}

use std::collections::HashMap;
use std::time::Duration;

use support::metrics::{parse, scrape};
use support::{backend, balancer, client, closed_port, config, get_status};
use tollgate::limiter::shared::OnFailure;
use tollgate::limiter::Limits;

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
