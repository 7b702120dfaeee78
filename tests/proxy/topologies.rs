//! Shared limits on a Redis Cluster (`redis+cluster://`) and through
//! Sentinel (`redis+sentinel://`), each on private servers the test
//! starts (`support::redis_cluster`; skipped, saying so, without
//! `redis-server` outside CI):
//!
//! - on a 3-master, 3-replica cluster, three replicas flooded by one client
//!   stay within 2 % of `capacity + rate × t` (the same flood as on one
//!   server); both modes share one bucket, whose key carries the client as
//!   a hash tag; levels and give-backs of many clients (many slots) work;
//! - the master serving the flooded client's slot killed mid-flood: the
//!   replica's promotion costs at most the fallback share (10 % over the
//!   exact allowance), no check hangs, and checks reach the promoted
//!   master again;
//! - with 1 master, 1 replica and 3 sentinels, a `SENTINEL FAILOVER` and a
//!   killed master: the same bounds, and checks follow the master the
//!   sentinels name within 5 s of their naming it.
//!
//! Each prints what it measured: the time checks fell back, and admitted
//! against exact.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::limiter::shared::{Bucket, SharedMode};
use tollgate::limiter::{ClientKey, Limits};

use super::lease::{flood, three_replicas_flooded, Replica};
use crate::support::redis_cluster::{
    self, ask, evalsha_calls, master_named_by, Cluster, Sentinels,
};

/// The default `rate_limit.shared.timeout`.
const TIMEOUT: Duration = Duration::from_millis(50);

async fn cluster() -> Option<Cluster> {
    if !redis_cluster::redis_tools() {
        return None;
    }
    Some(Cluster::start().await)
}

async fn sentinels() -> Option<Sentinels> {
    if !redis_cluster::redis_tools() {
        return None;
    }
    Some(Sentinels::start().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_cluster_admit_the_shared_rate_within_two_percent() {
    let Some(cluster) = cluster().await else {
        return;
    };
    three_replicas_flooded(&cluster.url(), "t:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_share_one_bucket_on_a_cluster_under_a_hash_tag() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let url = cluster.url();
    for mode in [SharedMode::Exact, SharedMode::Lease] {
        // 10 tokens, one back every 100 s: none during the test.
        let limits = Limits::new(10, 0.01).expect("valid");
        let prefix = format!("{mode:?}:");
        let timeout = Duration::from_millis(500);
        let a = Replica::build(&url, &prefix, limits, timeout, mode);
        let z = Replica::build(&url, &prefix, limits, timeout, mode);
        let client = ClientKey::api("alice").expect("key");
        let mut admitted = 0;
        for i in 0..20 {
            let replica = if i % 2 == 0 { &a } else { &z };
            admitted += u32::from(replica.check(&client).await);
        }
        assert_eq!(admitted, 10, "{mode:?}: one bucket of 10 between them");
        // The bucket is one key, tagged with the client, on the master of
        // the tag's slot.
        let key = format!("{prefix}{{key:alice}}");
        let master = cluster.master_of(&key).await;
        let exists: i64 = ask(master, redis::cmd("EXISTS").arg(&key))
            .await
            .expect("EXISTS");
        assert_eq!(exists, 1, "{mode:?}: {key} on its slot's master");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_and_give_backs_of_many_clients_work_on_a_cluster() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let limits = Limits::new(100, 10.0).expect("valid");
    let replica = Replica::build(
        &cluster.url(),
        "g:",
        limits,
        Duration::from_millis(500),
        SharedMode::Lease,
    );
    // 40 clients, over many slots and so all three masters; each asks
    // enough for its lease to grow past what it spends.
    let clients: Vec<ClientKey> = (0..40)
        .map(|i| ClientKey::api(&format!("client-{i}")).expect("key"))
        .collect();
    let mut spent = 0u64;
    for c in &clients {
        for _ in 0..6 {
            spent += u64::from(replica.check(c).await);
        }
    }
    assert_eq!(spent, 240, "every client is under its limit");
    // Shutdown gives every lease back, one script call per client.
    let shared = replica.shared.clone();
    shared.clone().upkeep(async {}).await;
    let stats = shared.stats();
    println!("{stats:?}");
    assert!(stats.returned > 0, "there were leases to give back");
    assert_eq!(
        stats.leased - stats.returned,
        spent,
        "all unspent came back"
    );
    let buckets: Vec<(Bucket<'_>, u32, f64)> = clients
        .iter()
        .map(|key| (Bucket { rule: None, key }, 100, 10.0))
        .collect();
    let levels = shared.levels(&buckets).await.expect("levels");
    for (c, level) in clients.iter().zip(&levels) {
        // 6 spent, then refilling at 10/s, never above the capacity.
        assert!((94.0..=100.0).contains(level), "{c:?}: {level}");
    }
}

/// What a flood through trouble measured.
struct Measured {
    admitted: u64,
    exact: f64,
    /// When the trouble struck.
    struck: Instant,
    /// When the first and the last check fell back.
    fell_back: Option<(Instant, Instant)>,
    /// The longest a check took.
    slowest: Duration,
    /// Tokens Redis leased after the replicas' last fallbacks: checks were
    /// answered by Redis again.
    leased_after: u64,
}

impl Measured {
    fn over(&self) -> f64 {
        (self.admitted as f64 - self.exact) / self.exact
    }

    /// From the trouble to the first and the last fallback.
    fn outage(&self) -> Option<(Duration, Duration)> {
        self.fell_back.map(|(a, b)| {
            (
                a.saturating_duration_since(self.struck),
                b.saturating_duration_since(self.struck),
            )
        })
    }
}

/// Three replicas falling back to their shares flood one client at 20
/// times its rate (capacity 20, 50/s) for `seconds` on the Redis at `url`;
/// `trouble` runs 2 s in and returns when it struck.
async fn flood_through<F>(url: &str, seconds: u64, trouble: F) -> Measured
where
    F: std::future::Future<Output = Instant>,
{
    let limits = Limits::new(20, 50.0).expect("valid");
    let replicas: Vec<_> = (0..3)
        .map(|_| Arc::new(Replica::falling_back(url, "t:", limits, TIMEOUT)))
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(());
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
    crate::support::eventually("three replicas counted", || {
        replicas.iter().all(|r| r.shared.replicas() == 3)
    })
    .await;
    let client = ClientKey::api("flooder").expect("key");
    let start = tokio::time::Instant::now();
    let until = start + Duration::from_secs(seconds);
    let floods: Vec<_> = replicas
        .iter()
        .map(|r| tokio::spawn(flood(r.clone(), client.clone(), 333, until)))
        .collect();
    tokio::time::sleep_until(start + Duration::from_secs(2)).await;
    let struck = trouble.await;
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
    let mut fell_back: Option<(Instant, Instant)> = None;
    let (mut slowest, mut leased_after) = (Duration::ZERO, 0);
    for r in &replicas {
        println!(
            "replica fell back {} times, admitted {} of them; {} replicas; {:?}",
            r.fell_back.load(Relaxed),
            r.fell_back_admitted.load(Relaxed),
            r.shared.replicas(),
            r.shared.stats()
        );
        if let Some((a, b)) = *r.outage.lock().expect("not poisoned") {
            fell_back = Some(fell_back.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
            leased_after += r.shared.stats().leased - r.leased_at_fallback.load(Relaxed);
        } else {
            leased_after += r.shared.stats().leased;
        }
        slowest = slowest.max(*r.slowest.lock().expect("not poisoned"));
    }
    Measured {
        admitted,
        exact: 20.0 + 50.0 * elapsed.as_secs_f64(),
        struck,
        fell_back,
        slowest,
        leased_after,
    }
}

fn report(what: &str, m: &Measured) {
    let fell_back = m.outage().map_or("never".to_string(), |(a, b)| {
        format!("from {a:?} to {b:?} after it")
    });
    println!(
        "{what}: admitted {} against exact {:.1} ({:+.2} %); checks fell back {fell_back}; \
         slowest check {:?}; {} tokens leased after the last fallback",
        m.admitted,
        m.exact,
        m.over() * 100.0,
        m.slowest,
        m.leased_after
    );
}

/// The bounds every failover must keep: at most the fallback share over
/// the exact allowance, and checks answered by Redis again, falling back
/// no later than `recovered_by` after the trouble.
fn assert_bounded(what: &str, m: &Measured, recovered_by: Duration) {
    assert!(
        m.over() <= 0.10,
        "{what}: admitted {} against {:.1} ({:+.1} %)",
        m.admitted,
        m.exact,
        m.over() * 100.0
    );
    if let Some((_, last)) = m.outage() {
        assert!(
            last <= recovered_by,
            "{what}: checks still fell back {last:?} after the trouble"
        );
    }
    assert!(
        m.leased_after > 0,
        "{what}: Redis leased nothing after the last fallback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_master_killed_mid_flood_costs_at_most_the_fallback_share() {
    let Some(mut cluster) = cluster().await else {
        return;
    };
    let url = cluster.url();
    let victim = cluster.master_of("t:{key:flooder}").await;
    let killed = async {
        cluster.kill(victim);
        Instant::now()
    };
    let m = flood_through(&url, 10, killed).await;
    report(&format!("cluster master :{victim} killed"), &m);
    // Failure detection (1 s) and the replica's election take a few
    // seconds; the flood goes on 8 s after the kill.
    assert_bounded("cluster master killed", &m, Duration::from_secs(7));
    let promoted = cluster.master_of("t:{key:flooder}").await;
    assert_ne!(promoted, victim, "the replica serves the slot now");
    assert!(
        evalsha_calls(promoted).await > 0,
        "checks reached the promoted master :{promoted}"
    );
}

/// Watches the sentinels until they name a master other than `old`, then
/// that master until a limiter's script reaches it; when each happened.
fn watch_master(ports: Vec<u16>, old: u16) -> tokio::task::JoinHandle<(u16, Instant, Instant)> {
    tokio::spawn(async move {
        let (new, named) = loop {
            if let Some(port) = master_named_by(&ports).await {
                if port != old {
                    break (port, Instant::now());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        while evalsha_calls(new).await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (new, named, Instant::now())
    })
}

/// A sentinel failover during a flood: the bounds, and checks follow the
/// new master within 5 s of the sentinels naming it.
async fn sentinel_failover(kill: bool) {
    let Some(mut set) = sentinels().await else {
        return;
    };
    let url = set.url();
    let old = set.master().await.expect("a master");
    let ports = set.sentinel_ports();
    let watcher = watch_master(ports.clone(), old);
    let trouble = async {
        let now = Instant::now();
        if kill {
            set.server(old).kill();
        } else {
            let failover = redis::cmd("SENTINEL")
                .arg("FAILOVER")
                .arg(redis_cluster::MASTER_NAME)
                .clone();
            let _: String = ask(ports[0], &failover).await.expect("SENTINEL FAILOVER");
        }
        now
    };
    let what = if kill {
        "sentinel: master killed"
    } else {
        "sentinel: SENTINEL FAILOVER"
    };
    let m = flood_through(&url, 10, trouble).await;
    report(what, &m);
    let (new, named, reached) = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .unwrap_or_else(|_| panic!("{what}: no check reached a new master"))
        .expect("watcher");
    let followed = reached.saturating_duration_since(named);
    println!(
        "{what}: the sentinels named :{new} {:?} after the trouble; the first script \
         reached it {followed:?} later",
        named.saturating_duration_since(m.struck)
    );
    assert!(
        followed <= Duration::from_secs(5),
        "{what}: checks followed the new master {followed:?} after it was named"
    );
    assert_bounded(what, &m, Duration::from_secs(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_flood_is_followed() {
    sentinel_failover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_master_killed_mid_flood_is_followed() {
    sentinel_failover(true).await;
}
