//! Behaviour of the token-bucket engine on a fake clock.

use std::net::IpAddr;
use std::time::Duration;

use tollgate::limiter::{ClientKey, Limits, RegistryError};

use crate::support::{registry, registry_with, tick, TICK};

fn ip(s: &str) -> ClientKey {
    ClientKey::Ip(s.parse::<IpAddr>().expect("test ip"))
}

fn admitted(reg: &tollgate::limiter::Registry, key: &ClientKey, tries: usize) -> usize {
    (0..tries)
        .filter(|_| reg.check(key).expect("registry has room").allowed())
        .count()
}

#[test]
fn burst_up_to_capacity_then_refill_per_tick() {
    let (reg, clock) = registry(3, 10.0);
    let c = ip("10.0.0.1");
    assert_eq!(admitted(&reg, &c, 10), 3);
    let denied = reg.check(&c).expect("room");
    assert!(!denied.allowed());
    assert_eq!(denied.remaining(), 0);
    assert_eq!(denied.limit(), 3);
    // 10/s with a 100 ms tick: one token appears at the next tick.
    assert_eq!(denied.reset_after(), Some(TICK));
    // Time passing without a tick adds nothing: refill is periodic.
    clock.advance(Duration::from_millis(250));
    assert!(!reg.check(&c).expect("room").allowed());
    reg.refill();
    // 250 ms of real time owed at 10/s: two whole tokens, half a token kept.
    assert_eq!(admitted(&reg, &c, 10), 2);
    let t = reg.tokens(&c).expect("tracked");
    assert!((t - 0.5).abs() < 1e-6, "kept the fraction: {t}");
}

#[test]
fn late_tick_loses_nothing() {
    let (reg, clock) = registry(100, 2.0);
    let c = ip("10.0.0.2");
    assert_eq!(admitted(&reg, &c, 100), 100);
    // One tick 7 s late: 14 tokens owed, all of them delivered.
    tick(&reg, &clock, Duration::from_secs(7));
    assert_eq!(admitted(&reg, &c, 100), 14);
}

#[test]
fn fractional_rates() {
    let (reg, clock) = registry(1, 0.5);
    let c = ip("10.0.0.3");
    assert!(reg.check(&c).expect("room").allowed());
    let d = reg.check(&c).expect("room");
    assert!(!d.allowed());
    assert_eq!(d.reset_after(), Some(Duration::from_secs(2)));
    tick(&reg, &clock, Duration::from_millis(1900));
    assert!(!reg.check(&c).expect("room").allowed());
    tick(&reg, &clock, Duration::from_millis(100));
    assert!(reg.check(&c).expect("room").allowed());

    let (reg, clock) = registry(1, 0.001);
    assert!(reg.check(&c).expect("room").allowed());
    tick(&reg, &clock, Duration::from_secs(999));
    assert!(!reg.check(&c).expect("room").allowed());
    tick(&reg, &clock, Duration::from_secs(1));
    assert!(reg.check(&c).expect("room").allowed());
}

#[test]
fn reset_after_is_never_early_and_tight_to_the_tick() {
    // 3/s: a token every 333.3 ms, visible at the 4th 100 ms tick.
    let (reg, clock) = registry(1, 3.0);
    let c = ip("10.0.0.4");
    assert!(reg.check(&c).expect("room").allowed());
    let d = reg.check(&c).expect("room");
    assert_eq!(d.reset_after(), Some(Duration::from_millis(400)));
    for _ in 0..3 {
        tick(&reg, &clock, TICK);
        assert!(!reg.check(&c).expect("room").allowed());
    }
    tick(&reg, &clock, TICK);
    assert!(reg.check(&c).expect("room").allowed());
}

#[test]
fn zero_rate_is_a_fixed_allowance() {
    let (reg, clock) = registry(2, 0.0);
    let c = ip("10.0.0.5");
    assert_eq!(admitted(&reg, &c, 5), 2);
    let d = reg.check(&c).expect("room");
    assert_eq!(d.reset_after(), None);
    assert_eq!(d.fill_time(), None);
    tick(&reg, &clock, Duration::from_secs(3600));
    assert_eq!(admitted(&reg, &c, 5), 0);
    // Not full, so never evicted (eviction would hand out a fresh allowance).
    assert_eq!(reg.evict_idle().evicted, 0);
    assert_eq!(reg.len(), 1);
}

#[test]
fn set_limits_applies_on_next_check_and_clamps_tokens() {
    let (reg, clock) = registry(10, 1.0);
    let c = ClientKey::api("user1").expect("key");
    assert_eq!(admitted(&reg, &c, 2), 2); // 8 left
    reg.set_limits(&c, Limits::new(5, 1.0).expect("valid"))
        .expect("room");
    assert_eq!(reg.tokens(&c), Some(5.0));
    let d = reg.check(&c).expect("room");
    assert!(d.allowed());
    assert_eq!(d.limit(), 5);
    assert_eq!(d.remaining(), 4);
    // Raising the limits keeps the level; the new rate refills it.
    reg.set_limits(&c, Limits::new(100, 50.0).expect("valid"))
        .expect("room");
    assert_eq!(reg.tokens(&c), Some(4.0));
    tick(&reg, &clock, Duration::from_secs(1));
    assert_eq!(reg.tokens(&c), Some(54.0));
    // A client not seen yet starts full on its own limits.
    let fresh = ClientKey::api("user2").expect("key");
    reg.set_limits(&fresh, Limits::new(7, 1.0).expect("valid"))
        .expect("room");
    assert_eq!(reg.tokens(&fresh), Some(7.0));
    assert_eq!(reg.pinned_len(), 2);
}

#[test]
fn unpin_returns_to_default_limits() {
    let (reg, _clock) = registry(10, 1.0);
    let c = ClientKey::api("user1").expect("key");
    reg.set_limits(&c, Limits::new(3, 1.0).expect("valid"))
        .expect("room");
    assert!(reg.unpin(&c));
    assert!(!reg.unpin(&c), "second unpin is a no-op");
    assert_eq!(reg.pinned_len(), 0);
    let d = reg.check(&c).expect("room");
    assert_eq!(d.limit(), 10);
    // Level carried over (3), not reset to the new capacity.
    assert_eq!(d.remaining(), 2);
}

#[test]
fn idle_full_buckets_are_evicted_pinned_ones_never() {
    let (reg, clock) = registry_with(5, 1.0, 1000, Duration::from_secs(10));
    let dynamic = ip("10.0.0.6");
    let pinned = ClientKey::api("vip").expect("key");
    assert!(reg.check(&dynamic).expect("room").allowed());
    reg.set_limits(&pinned, Limits::new(5, 1.0).expect("valid"))
        .expect("room");
    assert_eq!(reg.len(), 2);
    // Full again after 1 s, then idle for 9 s: not yet.
    tick(&reg, &clock, Duration::from_secs(1));
    tick(&reg, &clock, Duration::from_secs(9));
    assert_eq!(reg.len(), 2);
    tick(&reg, &clock, Duration::from_secs(1));
    assert_eq!(reg.len(), 1, "idle full dynamic bucket evicted");
    tick(&reg, &clock, Duration::from_secs(3600));
    assert_eq!(reg.len(), 1, "pinned bucket stays");
    // The evicted client comes back as a fresh, full bucket.
    let d = reg.check(&dynamic).expect("room");
    assert_eq!(d.remaining(), 4);
}

#[test]
fn a_busy_bucket_is_not_evicted() {
    let (reg, clock) = registry_with(5, 1.0, 1000, Duration::from_secs(10));
    let c = ip("10.0.0.7");
    // One request a second at 1/s: full again at every tick, but never
    // full for 10 s, so the client keeps its bucket.
    for _ in 0..30 {
        assert!(reg.check(&c).expect("room").allowed());
        tick(&reg, &clock, Duration::from_secs(1));
        assert_eq!(reg.evict_idle().evicted, 0);
    }
    assert_eq!(reg.len(), 1);
}

#[test]
fn max_clients_reclaims_full_buckets_then_refuses() {
    let (reg, clock) = registry_with(5, 1.0, 2, Duration::from_secs(600));
    let a = ip("10.0.1.1");
    let b = ip("10.0.1.2");
    let c = ip("10.0.1.3");
    assert!(reg.check(&a).expect("room").allowed());
    assert!(reg.check(&b).expect("room").allowed());
    // Both buckets hold state (4 of 5): nothing may be dropped.
    assert!(matches!(reg.check(&c), Err(RegistryError::Full(2))));
    // Once a bucket is full (and owes no carry: two ticks) it is as good as
    // new and its slot is handed over, even before idle_timeout.
    tick(&reg, &clock, Duration::from_secs(1));
    tick(&reg, &clock, Duration::from_millis(100));
    assert!(reg
        .check(&c)
        .expect("a full bucket was reclaimed")
        .allowed());
    assert_eq!(reg.len(), 2);
    assert!(reg
        .check(&ip("10.0.1.4"))
        .expect("the other one too")
        .allowed());
    assert!(matches!(
        reg.check(&ip("10.0.1.5")),
        Err(RegistryError::Full(2))
    ));
    // Pinned clients never count against max_clients.
    reg.set_limits(
        &ClientKey::api("vip").expect("key"),
        Limits::new(1, 1.0).expect("valid"),
    )
    .expect("pinning ignores max_clients");
    assert_eq!(reg.pinned_len(), 1);
}

#[test]
fn refusals_at_max_clients_search_the_table_once_per_tick() {
    let (reg, clock) = registry_with(5, 1.0, 64, Duration::from_secs(600));
    for n in 0..64u32 {
        let key = ClientKey::Ip(std::net::IpAddr::from([10, 2, 0, n as u8]));
        assert!(reg.check(&key).expect("room").allowed());
    }
    // Every bucket holds state: the first newcomer walks the table and
    // finds nothing; the next 99 in the same tick must not walk it again.
    for n in 0..100u32 {
        let key = ClientKey::Ip(std::net::IpAddr::from([10, 3, 0, n as u8]));
        assert!(matches!(reg.check(&key), Err(RegistryError::Full(64))));
    }
    assert_eq!(reg.reclaim_searches(), 1);
    // A tick may have filled a bucket: the next newcomer searches again,
    // and here finds one (1 token/s, 4 of 5 left, two ticks owe no carry).
    tick(&reg, &clock, Duration::from_secs(1));
    tick(&reg, &clock, Duration::from_millis(100));
    assert!(reg.check(&ip("10.4.0.1")).expect("reclaimed").allowed());
    assert_eq!(reg.reclaim_searches(), 2);
}

#[test]
fn a_restored_or_unpinned_full_bucket_is_reclaimable_within_the_tick() {
    let (reg, _clock) = registry_with(5, 1.0, 1, Duration::from_secs(600));
    let a = ip("10.5.0.1");
    assert!(reg.check(&a).expect("room").allowed());
    assert!(reg.check(&ip("10.5.0.2")).is_err());
    // A snapshot restore fills the bucket without a tick: the remembered
    // "nothing to reclaim" must not hide it.
    reg.set_tokens(&a, 5.0).expect("known client");
    assert!(reg.check(&ip("10.5.0.2")).expect("reclaimed").allowed());
}

#[test]
fn identities_are_distinct_and_v4_mapped_is_v4() {
    let (reg, _clock) = registry(1, 1.0);
    assert!(reg.check(&ip("192.0.2.1")).expect("room").allowed());
    assert!(!reg.check(&ip("::ffff:192.0.2.1")).expect("room").allowed());
    assert!(reg.check(&ip("192.0.2.2")).expect("room").allowed());
    assert!(reg.check(&ip("2001:db8::1")).expect("room").allowed());
    // An API key that spells an address is not that address.
    assert!(reg
        .check(&ClientKey::api("192.0.2.1").expect("key"))
        .expect("room")
        .allowed());
    assert_eq!(reg.len(), 4);
}

#[test]
fn for_each_reports_every_bucket() {
    let (reg, _clock) = registry(4, 1.0);
    reg.check(&ip("10.9.0.1")).expect("room");
    reg.check(&ClientKey::api("k1").expect("key"))
        .expect("room");
    reg.set_limits(
        &ClientKey::api("k2").expect("key"),
        Limits::new(9, 1.0).expect("valid"),
    )
    .expect("room");
    let mut seen = Vec::new();
    reg.for_each(|b| seen.push((b.key.to_string(), b.tokens, b.capacity, b.pinned)));
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("10.9.0.1".to_string(), 3.0, 4, false),
            ("k1".to_string(), 3.0, 4, false),
            ("k2".to_string(), 9.0, 9, true),
        ]
    );
}

/// An IPv6 network key is its own bucket, apart from the address that
/// starts it and from other prefix lengths, and is reported as the
/// network (what snapshots and logs name it by).
#[test]
fn network_keys_are_buckets_of_their_own() {
    let (reg, _clock) = registry(4, 1.0);
    let net = |s: &str| ClientKey::Net(s.parse().expect("network"));
    reg.check(&net("2001:db8::/64")).expect("room");
    reg.check(&net("2001:db8::/64")).expect("room");
    reg.check(&net("2001:db8::/48")).expect("room");
    reg.check(&ip("2001:db8::")).expect("room");
    let mut seen = Vec::new();
    reg.for_each(|b| seen.push((b.key.clone(), b.tokens)));
    seen.sort_by_key(|(k, _)| k.to_string());
    assert_eq!(
        seen,
        vec![
            (ip("2001:db8::"), 3.0),
            (net("2001:db8::/48"), 3.0),
            (net("2001:db8::/64"), 2.0),
        ]
    );
    let key = &seen[2].0;
    assert_eq!(ClientKey::decode(&key.encode()).as_ref(), Some(key));
}

#[test]
fn set_tokens_restores_a_level() {
    let (reg, _clock) = registry(10, 1.0);
    let c = ClientKey::api("user1").expect("key");
    reg.set_tokens(&c, 3.25).expect("room");
    assert_eq!(reg.tokens(&c), Some(3.25));
    reg.set_tokens(&c, 99.0).expect("room");
    assert_eq!(reg.tokens(&c), Some(10.0));
    reg.set_tokens(&c, -1.0).expect("room");
    assert_eq!(reg.tokens(&c), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn refill_task_ticks_on_tokio_time() {
    use std::sync::Arc;
    use tollgate::limiter::{Registry, RegistryConfig};
    let reg = Arc::new(Registry::new(RegistryConfig {
        default_limits: Limits::new(1, 10.0).expect("valid"),
        max_clients: std::num::NonZeroUsize::new(10).expect("nonzero"),
        idle_timeout: Duration::from_secs(600),
        refill_interval: TICK,
    }));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tollgate::limiter::refill::run(reg.clone(), TICK, async {
        let _ = stop_rx.await;
    }));
    let c = ip("10.0.0.9");
    assert!(reg.check(&c).expect("room").allowed());
    assert!(!reg.check(&c).expect("room").allowed());
    tokio::time::sleep(TICK + Duration::from_millis(1)).await;
    assert!(reg.check(&c).expect("room").allowed());
    stop_tx.send(()).expect("task alive");
    task.await.expect("refill task ends cleanly");
}
