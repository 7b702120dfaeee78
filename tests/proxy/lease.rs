//! Leased shared limits (`rate_limit.shared.mode: lease`) against a real
//! Redis: three replicas' limiters flooded by one client stay within 2 %
//! of the exact allowance, ask Redis rarely while refusing, and a client
//! that moves between replicas loses at most a lease. Each test has its
//! own key prefix; without `TOLLGATE_TEST_REDIS_URL` they skip, saying so.
//!
//! Redis trouble in a flood (a restart, a 200 ms stall) runs on a private
//! `redis-server` (skipped without one): three replicas falling back to
//! their shares admit at most 10 % over the exact allowance, and a check
//! whose connection was dropped is retried on a new one.
//!
//! The replicas here are the limiting part of a tollgate (its local
//! registry and shared limiter, as `Proxy::admit` drives them), so the
//! flood's pace is set by the test rather than by HTTP; the tests in
//! `shared` run whole balancers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::limiter::shared::{SharedLimiter, SharedMode, SharedOptions, SharedStats};
use tollgate::limiter::{ClientKey, Limits, Registry, RegistryConfig};

use super::shared::{forget, prefix, private_redis, redis_url, until_redis_answers};

/// The limiting part of one replica.
pub(super) struct Replica {
    pub(super) local: Arc<Registry>,
    pub(super) shared: Arc<SharedLimiter>,
    /// Redis failures fall to `on_failure: local`, as `Proxy::admit`
    /// does; else a failure fails the test.
    fallback: bool,
    /// The shared limiter's timeout: no check may take much longer.
    timeout: Duration,
    /// Requests the fallback decided, and how many of them it admitted.
    pub(super) fell_back: std::sync::atomic::AtomicU64,
    pub(super) fell_back_admitted: std::sync::atomic::AtomicU64,
    /// When the first and the last check fell back.
    pub(super) outage: std::sync::Mutex<Option<(Instant, Instant)>>,
    /// Tokens Redis had leased this replica at its last fallback.
    pub(super) leased_at_fallback: std::sync::atomic::AtomicU64,
    /// The longest a check took.
    pub(super) slowest: std::sync::Mutex<Duration>,
}

impl Replica {
    pub(super) fn new(redis: &str, prefix: &str, limits: Limits) -> Self {
        let timeout = Duration::from_millis(500);
        Self::build(redis, prefix, limits, timeout, SharedMode::Lease)
    }

    /// A replica whose Redis calls wait at most `timeout`, falling back to
    /// its own limits (`on_failure: local`) when Redis fails.
    pub(super) fn falling_back(
        redis: &str,
        prefix: &str,
        limits: Limits,
        timeout: Duration,
    ) -> Self {
        Self {
            fallback: true,
            ..Self::build(redis, prefix, limits, timeout, SharedMode::Lease)
        }
    }

    pub(super) fn build(
        redis: &str,
        prefix: &str,
        limits: Limits,
        timeout: Duration,
        mode: SharedMode,
    ) -> Self {
        let local = Registry::new(RegistryConfig {
            default_limits: limits,
            max_clients: std::num::NonZeroUsize::new(1000).expect("non-zero"),
            idle_timeout: Duration::from_secs(600),
            refill_interval: Duration::from_millis(100),
        });
        let shared = SharedLimiter::new(SharedOptions {
            url: redis.to_owned(),
            prefix: prefix.to_owned(),
            timeout,
            mode,
            period: Duration::from_millis(100),
            max_leases: 1000,
        })
        .expect("redis url");
        Self {
            local: Arc::new(local),
            shared: Arc::new(shared),
            fallback: false,
            timeout,
            fell_back: Default::default(),
            fell_back_admitted: Default::default(),
            outage: Default::default(),
            leased_at_fallback: Default::default(),
            slowest: Default::default(),
        }
    }

    /// One request of `client`: `true` if admitted. A check may wait for
    /// a lease request in flight, then make its own, each bounded by the
    /// timeout; one that takes seconds more is stuck, and fails the test.
    pub(super) async fn check(&self, client: &ClientKey) -> bool {
        let local = self.local.check(client).expect("room for the client");
        let bucket = tollgate::limiter::shared::Bucket {
            rule: None,
            key: client,
        };
        let started = Instant::now();
        let bound = self.timeout * 2 + Duration::from_secs(2);
        let answer = tokio::time::timeout(bound, self.shared.check(bucket, &local, 1))
            .await
            .unwrap_or_else(|_| panic!("a check was stuck for over {bound:?}"));
        let took = started.elapsed();
        {
            let mut slowest = self.slowest.lock().expect("not poisoned");
            *slowest = (*slowest).max(took);
        }
        match answer {
            Ok(decision) => decision.allowed(),
            Err(e) if !self.fallback => panic!("redis did not answer: {e}"),
            Err(_) => {
                use std::sync::atomic::Ordering::Relaxed;
                // As `Proxy::admit` does: this replica's share decides, and
                // a refused request gives its local token back.
                let allowed = self.shared.fallback(bucket, &local, 1).allowed();
                if local.allowed() && !allowed {
                    self.local.give_back(client, 1);
                }
                self.fell_back.fetch_add(1, Relaxed);
                let now = Instant::now();
                self.leased_at_fallback
                    .store(self.shared.stats().leased, Relaxed);
                let mut outage = self.outage.lock().expect("not poisoned");
                *outage = Some(outage.map_or((now, now), |(first, _)| (first, now)));
                self.fell_back_admitted
                    .fetch_add(u64::from(allowed), Relaxed);
                allowed
            }
        }
    }
}

/// Sends `per_sec` requests a second of `client` to `replica` until
/// `until`; (attempts, admitted, first, last attempt).
pub(super) async fn flood(
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

pub(super) fn sum(stats: &[SharedStats]) -> SharedStats {
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
    three_replicas_flooded(&redis, &prefix).await;
    forget(&redis, &prefix).await;
}

/// Three replicas' limiters on the Redis at `redis`, one client flooding
/// them for 10 s at 20 times its rate (capacity 20, 50/s): admitted
/// within 2 % of `20 + 50 × t`, at most 0.05 Redis calls per refusal.
pub(super) async fn three_replicas_flooded(redis: &str, prefix: &str) {
    let limits = Limits::new(20, 50.0).expect("valid");
    let replicas: Vec<_> = (0..3)
        .map(|_| Arc::new(Replica::new(redis, prefix, limits)))
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
        "lease flood on {redis}: {attempts} attempts over {elapsed:?}, admitted {admitted} \
         (exact {exact:.1}, error {:+.2} %), {} Redis calls, {refused} refused, \
         {calls_per_refusal:.4} calls per refusal, {} refused locally, {} leased, {} returned",
        (admitted as f64 - exact) / exact * 100.0,
        stats.calls,
        stats.local_refusals,
        stats.leased,
        stats.returned,
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

/// What disturbs Redis in the middle of a flood.
#[derive(Debug, Clone, Copy)]
enum Trouble {
    /// Killed and started again on the same port (empty: no persistence).
    Restart,
    /// Every client paused for 200 ms (`CLIENT PAUSE 200`), as a Redis
    /// busy with a slow command or a CPU-starved host would be.
    Stall,
}

/// Three replicas falling back to `on_failure: local` flood one client at
/// 20 times its rate for 6 s on a Redis of their own, which is disturbed
/// 2 s in; `(admitted, exact allowance)`.
async fn flood_through(trouble: Trouble) -> Option<(u64, f64)> {
    let port = crate::support::closed_port().port();
    let url = format!("redis://127.0.0.1:{port}");
    let Some(first) = private_redis(port) else {
        eprintln!("skipped: redis-server is not installed");
        return None;
    };
    until_redis_answers(&url).await;
    let limits = Limits::new(20, 50.0).expect("valid");
    // The default timeout: a stall of 200 ms is four times longer.
    let timeout = Duration::from_millis(50);
    let replicas: Vec<_> = (0..3)
        .map(|_| Arc::new(Replica::falling_back(&url, "t:", limits, timeout)))
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(());
    // The shared limiter's upkeep and the local buckets' refill tick, as
    // a running tollgate has them.
    let mut upkeep = Vec::new();
    for r in &replicas {
        let (mut a, mut b) = (stopped.clone(), stopped.clone());
        upkeep.push(tokio::spawn(r.shared.clone().upkeep(async move {
            let _ = a.changed().await;
        })));
        upkeep.push(tokio::spawn(tollgate::limiter::refill::run(
            r.local.clone(),
            Duration::from_millis(100),
            async move {
                let _ = b.changed().await;
            },
        )));
    }
    // Heartbeats every second: each counts all three within two.
    crate::support::eventually("three replicas counted", || {
        replicas.iter().all(|r| r.shared.replicas() == 3)
    })
    .await;
    let client = ClientKey::api("flooder").expect("key");
    let start = tokio::time::Instant::now();
    let until = start + Duration::from_secs(6);
    let floods: Vec<_> = replicas
        .iter()
        .map(|r| tokio::spawn(flood(r.clone(), client.clone(), 333, until)))
        .collect();
    tokio::time::sleep_until(start + Duration::from_secs(2)).await;
    let _running = match trouble {
        Trouble::Restart => {
            drop(first);
            private_redis(port).expect("redis-server ran a moment ago")
        }
        Trouble::Stall => {
            let c = redis::Client::open(url.as_str()).expect("url");
            let mut conn = c
                .get_multiplexed_async_connection()
                .await
                .expect("connection");
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(200)
                .query_async(&mut conn)
                .await
                .expect("CLIENT PAUSE");
            first
        }
    };
    let (mut admitted, mut first_at, mut last_at) = (0, None::<Instant>, None::<Instant>);
    for f in floods {
        let (_, ok, from, to) = f.await.expect("flood");
        admitted += ok;
        first_at = Some(first_at.map_or(from, |f| f.min(from)));
        last_at = Some(last_at.map_or(to, |l| l.max(to)));
    }
    let _ = stop.send(());
    for u in upkeep {
        u.await.expect("upkeep");
    }
    let elapsed = last_at.expect("ran") - first_at.expect("ran");
    for r in &replicas {
        use std::sync::atomic::Ordering::Relaxed;
        println!(
            "{trouble:?}: replica fell back {} times, admitted {} of them; {} replicas; {:?}",
            r.fell_back.load(Relaxed),
            r.fell_back_admitted.load(Relaxed),
            r.shared.replicas(),
            r.shared.stats()
        );
    }
    Some((admitted, 20.0 + 50.0 * elapsed.as_secs_f64()))
}

async fn trouble_costs_at_most_ten_percent(trouble: Trouble) {
    let Some((admitted, exact)) = flood_through(trouble).await else {
        return;
    };
    let over = (admitted as f64 - exact) / exact;
    println!(
        "{trouble:?} during a flood: admitted {admitted}, exact {exact:.1} ({:+.1} %)",
        over * 100.0
    );
    assert!(
        over <= 0.10,
        "{trouble:?}: admitted {admitted} against {exact:.1} ({:+.1} %)",
        over * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_during_a_flood_costs_at_most_ten_percent() {
    trouble_costs_at_most_ten_percent(Trouble::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_stall_during_a_flood_costs_at_most_ten_percent() {
    trouble_costs_at_most_ten_percent(Trouble::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_check_after_a_redis_restart_is_retried_on_a_new_connection() {
    let port = crate::support::closed_port().port();
    let url = format!("redis://127.0.0.1:{port}");
    let Some(first) = private_redis(port) else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    until_redis_answers(&url).await;
    for mode in [SharedMode::Exact, SharedMode::Lease] {
        let limits = Limits::new(1000, 0.0).expect("valid");
        let timeout = Duration::from_millis(500);
        let replica = Replica::build(&url, &format!("{mode:?}:"), limits, timeout, mode);
        let client = ClientKey::api(&format!("restart-{mode:?}")).expect("key");
        assert!(replica.check(&client).await, "{mode:?}: Redis answers");
        // Every client connection dropped, as a restart does, with Redis
        // up again by the next check.
        let c = redis::Client::open(url.as_str()).expect("url");
        let mut conn = c
            .get_multiplexed_async_connection()
            .await
            .expect("connection");
        let killed: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
            .query_async(&mut conn)
            .await
            .expect("CLIENT KILL");
        assert!(killed >= 1, "the replica's connection was there to kill");
        // A fresh client, so that the lease has nothing to spend.
        let other = ClientKey::api(&format!("after-{mode:?}")).expect("key");
        assert!(
            replica.check(&other).await,
            "{mode:?}: the broken connection's check was retried on a new one"
        );
    }
    drop(first);
}
