//! Leased shared limits (`rate_limit.shared.mode: lease`) against a real
//! Redis: three replicas' limiters flooded by one client stay within 2 %
//! of the exact allowance, ask Redis rarely while refusing, and a client
//! that moves between replicas loses at most a lease. Each test has its
//! own key prefix; without `TOLLGATE_TEST_REDIS_URL` they skip, saying so.
//!
//! The replicas here are the limiting part of a tollgate (its local
//! registry and shared limiter, as `Proxy::admit` drives them), so the
//! flood's pace is set by the test rather than by HTTP; the tests in
//! `shared` run whole balancers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::limiter::shared::{SharedLimiter, SharedMode, SharedOptions, SharedStats};
use tollgate::limiter::{ClientKey, Limits, Registry, RegistryConfig};

use super::shared::{forget, prefix, redis_url};

/// The limiting part of one replica.
struct Replica {
    local: Registry,
    shared: Arc<SharedLimiter>,
}

impl Replica {
    fn new(redis: &str, prefix: &str, limits: Limits) -> Self {
        let local = Registry::new(RegistryConfig {
            default_limits: limits,
            max_clients: std::num::NonZeroUsize::new(1000).expect("non-zero"),
            idle_timeout: Duration::from_secs(600),
            refill_interval: Duration::from_millis(100),
        });
        let shared = SharedLimiter::new(SharedOptions {
            url: redis.to_owned(),
            prefix: prefix.to_owned(),
            timeout: Duration::from_millis(500),
            mode: SharedMode::Lease,
            period: Duration::from_millis(100),
            max_leases: 1000,
        })
        .expect("redis url");
        Self {
            local,
            shared: Arc::new(shared),
        }
    }

    /// One request of `client`: `true` if admitted.
    async fn check(&self, client: &ClientKey) -> bool {
        let local = self.local.check(client).expect("room for the client");
        self.shared
            .check(
                tollgate::limiter::shared::Bucket {
                    rule: None,
                    key: client,
                },
                &local,
                1,
            )
            .await
            .expect("redis answers")
            .allowed()
    }
}

/// Sends `per_sec` requests a second of `client` to `replica` until
/// `until`; (attempts, admitted, first, last attempt).
async fn flood(
    replica: Arc<Replica>,
    client: ClientKey,
    per_sec: u32,
    until: tokio::time::Instant,
) -> (u64, u64, Instant, Instant) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_sec);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut attempts, mut admitted) = (0, 0);
    let first = Instant::now();
    let mut last = first;
    while tokio::time::Instant::now() < until {
        ticks.tick().await;
        last = Instant::now();
        attempts += 1;
        if replica.check(&client).await {
            admitted += 1;
        }
    }
    (attempts, admitted, first, last)
}

fn sum(stats: &[SharedStats]) -> SharedStats {
    stats
        .iter()
        .fold(SharedStats::default(), |a, s| SharedStats {
            calls: a.calls + s.calls,
            leased: a.leased + s.leased,
            local_refusals: a.local_refusals + s.local_refusals,
            returned: a.returned + s.returned,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_flooded_admit_the_shared_rate_within_two_percent() {
    let Some(redis) = redis_url() else { return };
    let prefix = prefix();
    let limits = Limits::new(20, 50.0).expect("valid");
    let replicas: Vec<_> = (0..3)
        .map(|_| Arc::new(Replica::new(&redis, &prefix, limits)))
        .collect();
    let client = ClientKey::api("flooder").expect("key");
    // 20 times the rate between them: 1000 requests a second for 10 s.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let floods: Vec<_> = replicas
        .iter()
        .map(|r| tokio::spawn(flood(r.clone(), client.clone(), 333, until)))
        .collect();
    let (mut attempts, mut admitted) = (0, 0);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for f in floods {
        let (n, ok, start, end) = f.await.expect("flood");
        attempts += n;
        admitted += ok;
        first = Some(first.map_or(start, |f| f.min(start)));
        last = Some(last.map_or(end, |l| l.max(end)));
    }
    let elapsed = last.expect("ran") - first.expect("ran");
    let exact = 20.0 + 50.0 * elapsed.as_secs_f64();
    let stats = sum(&replicas
        .iter()
        .map(|r| r.shared.stats())
        .collect::<Vec<_>>());
    let refused = attempts - admitted;
    let calls_per_refusal = stats.calls as f64 / refused as f64;
    println!(
        "lease flood: {attempts} attempts over {elapsed:?}, admitted {admitted} \
         (exact {exact:.1}, error {:+.2} %), {} Redis calls, {refused} refused, \
         {calls_per_refusal:.4} calls per refusal, {} refused locally",
        (admitted as f64 - exact) / exact * 100.0,
        stats.calls,
        stats.local_refusals,
    );
    let error = (admitted as f64 - exact).abs() / exact;
    assert!(
        error <= 0.02,
        "admitted {admitted}, exact {exact:.1}: off by {:.2} %",
        error * 100.0
    );
    assert!(
        attempts >= 9000,
        "the flood reached {attempts} attempts, not 20 times the rate"
    );
    assert!(
        calls_per_refusal <= 0.05,
        "{} Redis calls for {refused} refusals",
        stats.calls
    );
    forget(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_moving_to_another_replica_loses_at_most_a_lease() {
    let Some(redis) = redis_url() else { return };
    let prefix = prefix();
    let limits = Limits::new(20, 50.0).expect("valid");
    let a = Arc::new(Replica::new(&redis, &prefix, limits));
    let z = Arc::new(Replica::new(&redis, &prefix, limits));
    let (stop, stopped) = tokio::sync::watch::channel(());
    let upkeep = tokio::spawn(a.shared.clone().upkeep(async move {
        let mut stopped = stopped;
        let _ = stopped.changed().await;
    }));
    let client = ClientKey::api("mover").expect("key");
    let start = tokio::time::Instant::now();
    // Under its limit on A for 1.5 s (A leases ahead of its demand), then
    // everything to Z, three times the limit, for 2.5 s.
    let (_, on_a, _, _) = flood(
        a.clone(),
        client.clone(),
        40,
        start + Duration::from_millis(1500),
    )
    .await;
    // Then a few more on A until it holds part of a lease when the client
    // moves (a lease of 5 is taken when the last one runs out).
    let mut on_a = on_a;
    for _ in 0..10 {
        if a.shared.stats().leased - on_a >= 2 {
            break;
        }
        on_a += u64::from(a.check(&client).await);
    }
    let held_by_a = a.shared.stats().leased - on_a;
    assert!(
        held_by_a >= 2,
        "A holds {held_by_a} tokens when the client moves"
    );
    let (_, on_z, first, last) = flood(
        z.clone(),
        client.clone(),
        150,
        start + Duration::from_millis(4000),
    )
    .await;
    // A's demand was under the rate, so the shared bucket was full but
    // for what A held when the client moved: Z could have had all of it.
    let exact = 20.0 + 50.0 * (last - first).as_secs_f64();
    let lost = exact - on_z as f64;
    let returned = a.shared.stats().returned;
    println!(
        "moved: {on_a} admitted on A, then {on_z} on Z (exact {exact:.1}, lost {lost:.1}); \
         A leased {} and gave back {returned}",
        a.shared.stats().leased,
    );
    assert!(
        on_a >= 55,
        "A admitted only {on_a} of about 60 under the limit"
    );
    // A lease is at most a quarter of the capacity (5); Redis also keeps
    // up to one refill period of tokens (5) between Z's calls.
    assert!(lost <= 10.0, "lost {lost:.1} tokens moving from A to Z");
    assert_eq!(
        returned, held_by_a,
        "A gave back what it held unspent once idle"
    );
    let _ = stop.send(());
    upkeep.await.expect("upkeep");
    forget(&redis, &prefix).await;
}
