//! Multi-threaded stress: many threads hammering one bucket (and many
//! buckets) admit exactly what the bucket holds plus what was refilled.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate::limiter::ClientKey;

use crate::support::{self, registry};

const THREADS: usize = 8;

#[test]
fn one_hot_bucket_admits_exactly_capacity_plus_refill() {
    // 1000 tokens, 100/s; the refill thread advances 50 ticks of 100 ms,
    // each into a drained bucket: exactly 500 more tokens. Takers keep going
    // until the refills are done and the bucket is empty.
    let (reg, clock) = registry(1000, 100.0);
    let reg = Arc::new(reg);
    let key = ClientKey::api("hot").expect("key");
    let admitted = Arc::new(AtomicUsize::new(0));
    let refills_done = Arc::new(AtomicBool::new(false));

    let takers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (reg, key, admitted, done) = (
                reg.clone(),
                key.clone(),
                admitted.clone(),
                refills_done.clone(),
            );
            std::thread::spawn(move || loop {
                // Read the flag before checking: a denial seen after the last
                // refill means the bucket is truly empty for good.
                let finished = done.load(Ordering::SeqCst);
                if reg.check(&key).expect("room").allowed() {
                    admitted.fetch_add(1, Ordering::Relaxed);
                } else if finished {
                    break;
                }
            })
        })
        .collect();
    for _ in 0..50 {
        // Refill only a drained bucket, so no refill is lost to a full one
        // and the expected count is exact.
        while reg.tokens(&key).is_none_or(|t| t >= 1.0) {
            std::thread::yield_now();
        }
        clock.advance(Duration::from_millis(100));
        reg.refill();
    }
    refills_done.store(true, Ordering::SeqCst);
    for t in takers {
        t.join().expect("taker thread");
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 1500);
    assert!(reg.tokens(&key).expect("tracked") < 1.0);
}

#[test]
fn many_clients_from_many_threads_each_get_their_capacity() {
    // 8 threads, each hitting the same 2000 clients in a different order:
    // every client admits exactly its capacity (5) in total, and inserts
    // racing on a new key create one bucket, not two.
    let (reg, _clock) = registry(5, 0.0);
    let reg = Arc::new(reg);
    let clients: Vec<ClientKey> = (0..2000u32)
        .map(|i| ClientKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))))
        .collect();
    let clients = Arc::new(clients);
    let admitted = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (reg, clients, admitted) = (reg.clone(), clients.clone(), admitted.clone());
            std::thread::spawn(move || {
                for round in 0..4 {
                    for i in 0..clients.len() {
                        let k = &clients[(i * 7 + t * 131 + round * 17) % clients.len()];
                        if reg.check(k).expect("room").allowed() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker thread");
    }
    assert_eq!(reg.len(), 2000);
    assert_eq!(admitted.load(Ordering::Relaxed), 2000 * 5);
}

#[test]
fn eviction_racing_checks_never_mixes_clients() {
    // Eviction runs continuously while threads check clients whose buckets
    // are full at every tick. Each client's admissions must still respect its
    // own bucket: never more than capacity + refilled over the run.
    let (reg, clock) = support::registry_with(2, 10.0, 1_000_000, Duration::ZERO);
    let reg = Arc::new(reg);
    let stop = Arc::new(AtomicBool::new(false));
    let per_client: Arc<Vec<AtomicUsize>> =
        Arc::new((0..64).map(|_| AtomicUsize::new(0)).collect());
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (reg, stop, per_client) = (reg.clone(), stop.clone(), per_client.clone());
            std::thread::spawn(move || {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    let n = i % 64;
                    let k = ClientKey::Ip(IpAddr::V4(Ipv4Addr::new(10, 1, 0, n as u8)));
                    if reg.check(&k).expect("room").allowed() {
                        per_client[n].fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    let ticks = 200;
    for _ in 0..ticks {
        clock.advance(Duration::from_millis(100));
        reg.refill();
        reg.evict_idle();
        std::thread::yield_now();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker thread");
    }
    // Eviction of a full bucket changes nothing, so each client is bounded
    // by capacity + rate * time = 2 + 10 * 20 s.
    for (n, c) in per_client.iter().enumerate() {
        let c = c.load(Ordering::Relaxed);
        assert!(c <= 2 + 10 * 20, "client {n} admitted {c}");
    }
}
