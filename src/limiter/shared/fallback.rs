//! What a replica admits while Redis cannot answer and
//! `rate_limit.shared.on_failure: local` applies: its share of each shared
//! bucket, never the whole of it.
//!
//! When Redis goes away, every replica falls back at once. Had each one
//! decided with its own full bucket, `N` replicas would admit `N` times
//! the limit for as long as the outage lasts. So each admits what it would
//! get if the limit were split evenly: capacity and rate divided by the
//! number of live replicas it last saw ([`Census`], fed by heartbeats in
//! Redis). A share bucket starts from the share of this replica's own
//! bucket's level, which every request charges even while Redis answers:
//! a client that was flooding starts from nothing, a quiet one from its
//! share of a full bucket. The table lives for one outage: it is emptied
//! when Redis answers again.
//!
//! A share is one GCRA "theoretical arrival time" in an atomic, so the
//! fallback path, like the lease path, spends with a compare-and-swap
//! under a read-locked shard.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::lease::{LeaseLimits, OwnedBucket};
use super::Bucket;

/// How often a replica says in Redis that it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A replica not heard from for this long is no longer counted; also how
/// long a count stays the one used (the largest seen over this window),
/// so that a Redis that restarted empty and has heard from only some
/// replicas yet does not shrink the count.
pub const REPLICA_TTL: Duration = Duration::from_secs(5);

const SHARDS: usize = 32;

/// The counts of live replicas this one saw at its last heartbeats.
#[derive(Debug, Default)]
pub(crate) struct Census {
    seen: VecDeque<(Instant, u32)>,
}

impl Census {
    /// Takes in a heartbeat's count (at least this replica) and returns
    /// the count to divide limits by: the largest seen in the last
    /// [`REPLICA_TTL`]. Counting a replica that died a little too long
    /// only makes the share smaller.
    pub(crate) fn saw(&mut self, now: Instant, count: u32) -> u32 {
        while let Some(&(at, _)) = self.seen.front() {
            if now.saturating_duration_since(at) <= REPLICA_TTL {
                break;
            }
            self.seen.pop_front();
        }
        self.seen.push_back((now, count.max(1)));
        self.seen.iter().map(|&(_, n)| n).max().unwrap_or(1)
    }
}

/// One share: a GCRA bucket with the shared bucket's limits divided by
/// `replicas`.
#[derive(Debug)]
struct Share {
    /// Theoretical arrival time, microseconds since the table's start (an
    /// `f64`'s bits); for a bucket that never refills, tokens used.
    tat: AtomicU64,
    limits: LeaseLimits,
    /// Microseconds per token of the share (`replicas` times the
    /// bucket's); 1 for a bucket that never refills.
    emission: f64,
    /// `emission × capacity of the share`.
    tau: f64,
}

/// What a share said about one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ShareAnswer {
    /// Admitted (its cost is taken).
    pub(crate) allowed: bool,
    /// Whole tokens of the share left.
    pub(crate) remaining: u32,
    /// When admitting the request would succeed; `None` for a bucket that
    /// never refills.
    pub(crate) reset: Option<Duration>,
}

impl Share {
    /// A share of `limits` for `replicas`, holding `level` tokens of the
    /// share (at most its capacity) at `now`.
    fn new(limits: LeaseLimits, replicas: u32, level: f64, now: f64, cost: u32) -> Self {
        let n = f64::from(replicas.max(1));
        let emission = if limits.emission_us > 0.0 {
            limits.emission_us * n
        } else {
            1.0
        };
        // At least one request's cost, so that a capacity below the
        // replica count still lets a request through now and then.
        let capacity = (f64::from(limits.capacity) / n).max(f64::from(cost));
        let tau = capacity * emission;
        let level = level.clamp(0.0, capacity);
        let start = if limits.emission_us > 0.0 { now } else { 0.0 };
        Self {
            tat: AtomicU64::new((start + tau - level * emission).to_bits()),
            limits,
            emission,
            tau,
        }
    }

    /// Takes `cost` tokens, all or none.
    fn take(&self, now: f64, cost: u32) -> ShareAnswer {
        let refills = self.limits.emission_us > 0.0;
        let now = if refills { now } else { 0.0 };
        let need = f64::from(cost) * self.emission;
        let mut current = self.tat.load(Ordering::Acquire);
        loop {
            let base = f64::from_bits(current).max(now);
            let next = base + need;
            // A hair of slack: float rounding must not refuse an exact fit.
            if next - now > self.tau + 1e-6 {
                return ShareAnswer {
                    allowed: false,
                    remaining: self.whole(self.tau - (base - now)),
                    reset: refills
                        .then(|| Duration::from_secs_f64((next - self.tau - now).max(0.0) / 1e6)),
                };
            }
            match self.tat.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return ShareAnswer {
                        allowed: true,
                        remaining: self.whole(self.tau - (next - now)),
                        reset: refills.then(|| Duration::from_secs_f64(self.emission / 1e6)),
                    }
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Puts back `cost` tokens taken for a request refused elsewhere.
    fn refund(&self, cost: u32) {
        let back = f64::from(cost) * self.emission;
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some((f64::from_bits(t) - back).to_bits())
            });
    }

    fn whole(&self, room: f64) -> u32 {
        // Float to int casts saturate; room is at most tau.
        (room / self.emission + 1e-9).floor().max(0.0) as u32
    }
}

type Shard = hashbrown::HashMap<OwnedBucket, Arc<Share>, foldhash::fast::RandomState>;

/// This replica's share of every bucket it decided alone during the
/// current outage.
#[derive(Debug)]
pub(crate) struct Shares {
    shards: Box<[RwLock<Shard>]>,
    hasher: foldhash::fast::RandomState,
    entries: AtomicUsize,
    max_entries: usize,
    started: Instant,
}

impl Shares {
    /// A table of at most `max_entries` buckets (`rate_limit.max_clients`).
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(Shard::with_hasher(foldhash::fast::RandomState::default())))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            entries: AtomicUsize::new(0),
            max_entries,
            started: Instant::now(),
        }
    }

    fn now_us(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1e6
    }

    fn shard(&self, bucket: Bucket<'_>) -> &RwLock<Shard> {
        let i = (self.hasher.hash_one(bucket) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// Takes `cost` tokens from this replica's share of `bucket`, made
    /// (for `replicas` replicas, from `own_level` tokens of this replica's
    /// own bucket) if this outage has not seen it yet.
    pub(crate) fn take(
        &self,
        bucket: Bucket<'_>,
        limits: LeaseLimits,
        replicas: u32,
        own_level: u32,
        cost: u32,
    ) -> ShareAnswer {
        let now = self.now_us();
        let make = || {
            let level = f64::from(own_level) / f64::from(replicas.max(1));
            Arc::new(Share::new(limits, replicas, level, now, cost))
        };
        self.get(bucket, limits, make).take(now, cost)
    }

    /// Puts back `cost` tokens a share of `bucket` gave to a request that
    /// another bucket refused.
    pub(crate) fn refund(&self, bucket: Bucket<'_>, cost: u32) {
        let shard = self
            .shard(bucket)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(share) = shard.get(&bucket) {
            share.refund(cost);
        }
    }

    /// `bucket`'s share, made by `make` if missing or its limits changed.
    /// With the table full, a new bucket gets a share that is not kept.
    fn get(
        &self,
        bucket: Bucket<'_>,
        limits: LeaseLimits,
        make: impl FnOnce() -> Arc<Share>,
    ) -> Arc<Share> {
        let shard = self.shard(bucket);
        if let Some(share) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&bucket)
            .filter(|s| s.limits == limits)
        {
            return share.clone();
        }
        let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(share) = shard.get(&bucket).filter(|s| s.limits == limits) {
            return share.clone();
        }
        let share = make();
        if let Some(old) = shard.get_mut(&bucket) {
            // Limits changed (a client table edit): a new share for them.
            *old = share.clone();
        } else if self.entries.load(Ordering::Relaxed) < self.max_entries {
            self.entries.fetch_add(1, Ordering::Relaxed);
            shard.insert(OwnedBucket::of(bucket), share.clone());
        }
        share
    }

    /// Forgets every share: Redis answers again, and the next outage
    /// starts from the levels of then.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let n = shard.len();
            shard.clear();
            self.entries.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Buckets with a share (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::ClientKey;

    fn limits(capacity: u32, rate: f64) -> LeaseLimits {
        LeaseLimits {
            capacity,
            emission_us: if rate > 0.0 { 1e6 / rate } else { 0.0 },
        }
    }

    fn admitted(share: &Share, now: f64, n: u32) -> u32 {
        (0..n).map(|_| u32::from(share.take(now, 1).allowed)).sum()
    }

    #[test]
    fn a_share_holds_a_third_of_a_full_bucket_and_a_third_of_the_rate() {
        // 30 tokens at 30/s, 3 replicas: 10 at once, then 10 a second.
        let l = limits(30, 30.0);
        let share = Share::new(l, 3, 10.0, 0.0, 1);
        assert_eq!(admitted(&share, 0.0, 15), 10);
        assert_eq!(admitted(&share, 1e6, 15), 10);
        let refused = share.take(1e6, 1);
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        // The next share token is 100 ms away (10/s).
        let wait = refused.reset.expect("refills").as_secs_f64();
        assert!((wait - 0.1).abs() < 1e-6, "{wait}");
    }

    #[test]
    fn a_share_starts_from_the_level_it_is_given() {
        let l = limits(30, 30.0);
        assert_eq!(admitted(&Share::new(l, 3, 0.0, 0.0, 1), 0.0, 5), 0);
        assert_eq!(admitted(&Share::new(l, 3, 4.0, 0.0, 1), 0.0, 5), 4);
        // Never above the share's capacity.
        assert_eq!(admitted(&Share::new(l, 3, 30.0, 0.0, 1), 0.0, 30), 10);
    }

    #[test]
    fn a_zero_rate_share_never_refills() {
        let share = Share::new(limits(9, 0.0), 3, 3.0, 0.0, 1);
        assert_eq!(admitted(&share, 0.0, 5), 3);
        assert_eq!(admitted(&share, 1e12, 5), 0);
        assert_eq!(share.take(0.0, 1).reset, None);
        share.refund(1);
        assert_eq!(admitted(&share, 0.0, 5), 1);
    }

    #[test]
    fn a_capacity_below_the_replica_count_still_admits_one_request() {
        // Capacity 2 on 5 replicas: a share of one token, at a fifth of
        // the rate.
        let share = Share::new(limits(2, 10.0), 5, 1.0, 0.0, 1);
        assert_eq!(admitted(&share, 0.0, 3), 1);
        assert_eq!(admitted(&share, 0.5e6, 3), 1);
    }

    #[test]
    fn shares_are_per_bucket_kept_for_the_outage_and_cleared_after() {
        let shares = Shares::new(100);
        let l = limits(30, 0.0);
        let a = ClientKey::api("a").expect("key");
        let b = ClientKey::api("b").expect("key");
        let of = |key| Bucket { rule: None, key };
        let take = |key| shares.take(of(key), l, 3, 30, 1).allowed;
        assert_eq!((0..15).filter(|_| take(&a)).count(), 10);
        assert_eq!((0..15).filter(|_| take(&b)).count(), 10);
        assert_eq!(shares.len(), 2);
        shares.refund(of(&a), 1);
        assert!(take(&a));
        assert!(!take(&a));
        // Redis is back: the next outage starts afresh.
        shares.clear();
        assert_eq!(shares.len(), 0);
        assert!(take(&a));
    }

    #[test]
    fn a_full_table_decides_without_keeping_the_share() {
        let shares = Shares::new(1);
        let l = limits(30, 0.0);
        let a = ClientKey::api("a").expect("key");
        let b = ClientKey::api("b").expect("key");
        assert!(
            shares
                .take(
                    Bucket {
                        rule: None,
                        key: &a
                    },
                    l,
                    3,
                    30,
                    1
                )
                .allowed
        );
        // Own level 0 gives a share of nothing, kept or not.
        assert!(
            !shares
                .take(
                    Bucket {
                        rule: None,
                        key: &b
                    },
                    l,
                    3,
                    0,
                    1
                )
                .allowed
        );
        assert_eq!(shares.len(), 1);
    }

    #[test]
    fn the_census_keeps_the_largest_recent_count() {
        let mut census = Census::default();
        let t = Instant::now();
        assert_eq!(census.saw(t, 3), 3);
        // A Redis that restarted empty has heard from this replica alone.
        assert_eq!(census.saw(t + HEARTBEAT, 1), 3);
        assert_eq!(census.saw(t + REPLICA_TTL, 2), 3);
        // Older than the time to live: the others are gone.
        assert_eq!(census.saw(t + REPLICA_TTL + HEARTBEAT * 2, 2), 2);
        assert_eq!(census.saw(t + REPLICA_TTL * 3, 0), 1);
    }

    #[test]
    fn concurrent_takes_never_exceed_the_share() {
        let share = Share::new(limits(3000, 0.0), 3, 1000.0, 0.0, 1);
        let taken = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        if share.take(0.0, 1).allowed {
                            taken.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(taken.load(Ordering::Relaxed), 1000);
    }
}
