//! loom models of concurrent operations on one bucket, through the real
//! registry: every interleaving of the threads below is explored.
//!
//! Run with `scripts/loom.sh` (it gives `--cfg tollgate_loom` to this crate only).

use std::num::NonZeroUsize;
use std::time::Duration;

use loom::sync::Arc;

use super::{ClientKey, FakeClock, Limits, Registry, RegistryConfig};

const TICK: Duration = Duration::from_millis(100);

fn registry(capacity: u64, rate: f64) -> (Arc<Registry>, std::sync::Arc<FakeClock>) {
    let clock = std::sync::Arc::new(FakeClock::new());
    let config = RegistryConfig {
        default_limits: Limits::new(capacity, rate).expect("valid"),
        max_clients: NonZeroUsize::new(16).expect("nonzero"),
        idle_timeout: Duration::from_secs(600),
        refill_interval: TICK,
    };
    (Arc::new(Registry::with_clock(config, clock.clone())), clock)
}

fn key() -> ClientKey {
    ClientKey::api("k").expect("valid key")
}

fn take(reg: &Arc<Registry>) -> loom::thread::JoinHandle<usize> {
    let reg = reg.clone();
    loom::thread::spawn(move || usize::from(reg.check(&key()).expect("room").allowed()))
}

/// Two takes racing a refill: nothing lost, nothing created.
#[test]
fn take_take_refill_conserves_tokens() {
    loom::model(|| {
        // Capacity 2 at 10/s: one 100 ms tick adds exactly one token.
        let (reg, clock) = registry(2, 10.0);
        assert!(reg.check(&key()).expect("room").allowed()); // 1 left
        let a = take(&reg);
        let b = take(&reg);
        let r = {
            let reg = reg.clone();
            loom::thread::spawn(move || {
                clock.advance(TICK);
                reg.refill();
            })
        };
        r.join().expect("refill thread");
        let admitted = a.join().expect("taker") + b.join().expect("taker");
        let left = reg.tokens(&key()).expect("tracked");
        assert!(admitted >= 1, "a token was there from the start");
        assert_eq!(
            admitted as f64 + left,
            2.0,
            "admitted {admitted}, left {left}"
        );
    });
}

/// Two takes racing a lowering of the capacity: the single token is
/// handed out at most once and the level ends within the new capacity.
#[test]
fn take_take_set_limits_never_over_admits() {
    loom::model(|| {
        let (reg, _clock) = registry(2, 0.0);
        assert!(reg.check(&key()).expect("room").allowed()); // 1 left
        let a = take(&reg);
        let b = take(&reg);
        let s = {
            let reg = reg.clone();
            loom::thread::spawn(move || {
                reg.set_limits(&key(), Limits::new(1, 0.0).expect("valid"))
                    .expect("room");
            })
        };
        s.join().expect("set_limits thread");
        let admitted = a.join().expect("taker") + b.join().expect("taker");
        let left = reg.tokens(&key()).expect("tracked");
        assert_eq!(
            admitted as f64 + left,
            1.0,
            "admitted {admitted}, left {left}"
        );
        assert!(left <= 1.0);
    });
}

/// A take, a refill and a change of limits all at once.
#[test]
fn take_refill_set_limits_conserve_tokens() {
    loom::model(|| {
        let (reg, clock) = registry(2, 10.0);
        assert!(reg.check(&key()).expect("room").allowed()); // 1 left
        let a = take(&reg);
        let r = {
            let reg = reg.clone();
            loom::thread::spawn(move || {
                clock.advance(TICK);
                reg.refill();
            })
        };
        let s = {
            let reg = reg.clone();
            loom::thread::spawn(move || {
                // Same rate, larger capacity: the level must carry over.
                reg.set_limits(&key(), Limits::new(3, 10.0).expect("valid"))
                    .expect("room");
            })
        };
        r.join().expect("refill thread");
        s.join().expect("set_limits thread");
        let admitted = a.join().expect("taker");
        let left = reg.tokens(&key()).expect("tracked");
        assert_eq!(admitted, 1, "a token was there from the start");
        assert_eq!(
            admitted as f64 + left,
            2.0,
            "admitted {admitted}, left {left}"
        );
    });
}

/// Two first requests of a new client create one bucket, not two.
#[test]
fn racing_inserts_create_one_bucket() {
    loom::model(|| {
        let (reg, _clock) = registry(1, 0.0);
        let a = take(&reg);
        let b = take(&reg);
        let admitted = a.join().expect("taker") + b.join().expect("taker");
        assert_eq!(admitted, 1);
        assert_eq!(reg.len(), 1);
    });
}

/// A take racing the eviction of its idle, full bucket: whichever wins, the
/// client ends with exactly one token spent.
#[test]
fn take_racing_eviction() {
    loom::model(|| {
        let clock = std::sync::Arc::new(FakeClock::new());
        let config = RegistryConfig {
            default_limits: Limits::new(2, 10.0).expect("valid"),
            max_clients: NonZeroUsize::new(16).expect("nonzero"),
            idle_timeout: Duration::from_secs(1),
            refill_interval: TICK,
        };
        let reg = Arc::new(Registry::with_clock(config, clock.clone()));
        reg.set_tokens(&key(), 2.0).expect("room"); // full
        clock.advance(Duration::from_secs(2));
        reg.refill();
        clock.advance(TICK);
        reg.refill(); // full for 2 s, no carry owed: evictable
        let a = take(&reg);
        let e = {
            let reg = reg.clone();
            loom::thread::spawn(move || reg.evict_idle().evicted)
        };
        let evicted = e.join().expect("evict thread");
        assert_eq!(a.join().expect("taker"), 1);
        assert!(evicted <= 1);
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.tokens(&key()), Some(1.0));
    });
}
