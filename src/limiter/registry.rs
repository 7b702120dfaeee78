//! The registry: from client key to token bucket, for millions of clients.
//!
//! # Layout
//!
//! Buckets live in a **slab**: fixed-size chunks of 40-byte slots, indexed
//! by a `u32`. The key → slot map is split into shards, each a small
//! `hashbrown` table of slot numbers (4 bytes an entry) behind its own
//! `RwLock`. IP keys are compared against the address stored in the slot
//! (an IPv6 network key: its first address, and its prefix length in the
//! slot's flags), so an IP client costs one slot plus one index entry,
//! about 51 bytes at a million clients. API keys keep their text in the shard's own table.
//!
//! # Locking
//!
//! A check hashes the key, read-locks one shard (never a global lock),
//! finds the slot and takes a token with one compare-and-swap while still
//! holding the read lock. Everything that changes which client a slot
//! belongs to, or a slot's limits (insert, evict, `set_limits`, restore),
//! holds that shard's write lock, so a check can never charge a token to
//! a slot that has just been handed to another client.
//!
//! # Refill and eviction
//!
//! [`Registry::refill`] is one tick: it advances the refill clock (which
//! refills every bucket, see `bucket`) and walks a stretch of the slab in
//! memory order looking for buckets that have been full for
//! `idle_timeout`. Such a bucket is identical to a fresh one, so evicting
//! it changes no decision. Buckets of clients in the client table
//! (pinned) are never evicted.
//!
//! At `max_clients`, a new client first takes the slot of a full bucket in
//! its shard, then in the others; if there is none it is refused with
//! [`RegistryError::Full`]. That search walks the whole table, so a failed
//! one is remembered until the next refill tick: between ticks no bucket
//! can become full (levels only rise when the refill clock advances), so
//! every further refusal in the same tick costs O(1) instead of a walk over
//! every client (measured 447 µs per refusal at 50k clients before).

use std::hash::BuildHasher;
use std::net::Ipv6Addr;
use std::num::NonZeroUsize;
use std::sync::OnceLock;
use std::time::Duration;

use foldhash::quality::RandomState;
use hashbrown::HashTable;
use ipnet::Ipv6Net;

use super::bucket::{
    self, RefillTime, Slot, Take, KIND_API, KIND_FREE, KIND_IP, KIND_MASK, PINNED, PREFIX_MASK,
    PREFIX_SHIFT,
};
use super::clock::{Clock, MonotonicClock};
use super::key::{ip_bits, ip_from_bits, ClientKey};
use super::limits::Limits;
use crate::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crate::sync::{read, write, Mutex, RwLock};

// loom tracks every atomic it sees: keep its models small.
#[cfg(not(tollgate_loom))]
const CHUNK_BITS: u32 = 12;
#[cfg(tollgate_loom)]
const CHUNK_BITS: u32 = 2;
const CHUNK: usize = 1 << CHUNK_BITS;

/// Most clients the client table may pin at once (they do not count
/// against `max_clients`).
pub const MAX_PINNED: usize = if cfg!(tollgate_loom) { 16 } else { 1 << 24 };

/// Largest accepted `max_clients`.
pub const MAX_CLIENTS: usize = 1 << 31;

/// Slots examined for eviction per refill tick: a full pass over a million
/// clients takes 16 ticks (1.6 s at the default 100 ms interval).
pub const SCAN_PER_TICK: usize = 65_536;

/// Settings of a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Limits of clients that are not in the client table.
    pub default_limits: Limits,
    /// Most clients tracked at once, pinned clients not counted.
    pub max_clients: NonZeroUsize,
    /// How long a bucket must have been full before it is evicted.
    pub idle_timeout: Duration,
    /// Period of the refill tick; used to round `reset_after` up to the
    /// tick at which a token really appears.
    pub refill_interval: Duration,
}

/// Why the registry could not serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// `max_clients` reached and no bucket could be evicted.
    #[error("client table full: {0} clients tracked and none idle")]
    Full(usize),
}

/// The outcome of one rate-limit check, with what the response headers
/// need: from the client's local bucket, computed lazily from its state at
/// the check, or — with shared limits — Redis's answer for the same
/// client's shared bucket, which takes the limits from the local one.
#[derive(Debug, Clone, Copy)]
pub struct Decision {
    take: Take,
    tick_units: u64,
    shared: Option<SharedAnswer>,
}

/// What Redis said about a shared bucket.
#[derive(Debug, Clone, Copy)]
struct SharedAnswer {
    allowed: bool,
    remaining: u32,
    reset_after: Option<Duration>,
}

impl Decision {
    /// Whether the request may pass.
    pub fn allowed(&self) -> bool {
        self.shared.map_or(self.take.allowed, |s| s.allowed)
    }

    /// The bucket's capacity.
    pub fn limit(&self) -> u32 {
        self.take.capacity()
    }

    /// Whole tokens left after this check.
    pub fn remaining(&self) -> u32 {
        self.shared
            .map_or_else(|| self.take.remaining(), |s| s.remaining)
    }

    /// Time until the next whole token is in the bucket, rounded up to the
    /// refill tick that will put it there: `Some(ZERO)` when full, `None`
    /// when the bucket never refills. For a denied request this is the
    /// earliest moment a retry can succeed.
    pub fn reset_after(&self) -> Option<Duration> {
        if let Some(s) = self.shared {
            return s.reset_after;
        }
        let units = self.take.units_to_next_token()?;
        let ticks = units.div_ceil(self.tick_units);
        Some(bucket::duration(ticks.saturating_mul(self.tick_units)))
    }

    /// Time to refill from empty (`capacity / rate`); `None` at zero rate.
    pub fn fill_time(&self) -> Option<Duration> {
        bucket::fill_time(self.take.capacity(), self.take.emission())
    }

    /// Time one token takes to come back (`1 / rate`); `None` at zero rate.
    pub fn token_interval(&self) -> Option<Duration> {
        match self.take.emission() {
            0 => None,
            e => Some(bucket::duration(e)),
        }
    }

    /// The same client's decision by its shared bucket: Redis's verdict
    /// and level, this bucket's limits.
    pub(crate) fn shared(
        self,
        allowed: bool,
        remaining: u32,
        reset_after: Option<Duration>,
    ) -> Self {
        Self {
            shared: Some(SharedAnswer {
                allowed,
                remaining,
                reset_after,
            }),
            ..self
        }
    }
}

/// What one refill tick did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefillReport {
    /// Slots examined for eviction.
    pub scanned: usize,
    /// Buckets evicted.
    pub evicted: usize,
}

/// A bucket as seen by [`Registry::for_each`].
#[derive(Debug, Clone, PartialEq)]
pub struct BucketView {
    /// Whose bucket.
    pub key: ClientKey,
    /// Current level, fractions included.
    pub tokens: f64,
    /// Its capacity.
    pub capacity: u32,
    /// Whether the client is in the client table.
    pub pinned: bool,
}

struct Slab {
    chunks: Box<[OnceLock<Box<[Slot]>>]>,
    high_water: AtomicU32,
}

impl Slab {
    fn new(slots: usize) -> Self {
        let chunks = slots.div_ceil(CHUNK);
        Self {
            chunks: (0..chunks).map(|_| OnceLock::new()).collect(),
            high_water: AtomicU32::new(0),
        }
    }

    fn get(&self, idx: u32) -> Option<&Slot> {
        let chunk = self.chunks.get((idx >> CHUNK_BITS) as usize)?.get()?;
        chunk.get(idx as usize & (CHUNK - 1))
    }

    /// A never-used slot, or `None` when the slab is exhausted.
    fn bump(&self) -> Option<u32> {
        let limit = u32::try_from(self.chunks.len() * CHUNK).unwrap_or(u32::MAX);
        let idx = self
            .high_water
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |hw| {
                (hw < limit).then_some(hw + 1)
            })
            .ok()?;
        self.chunks
            .get((idx >> CHUNK_BITS) as usize)?
            .get_or_init(|| (0..CHUNK).map(|_| Slot::default()).collect());
        Some(idx)
    }

    fn high_water(&self) -> u32 {
        self.high_water.load(Ordering::Acquire)
    }
}

/// Cache-line aligned so that two shards' lock words never share a line.
#[repr(align(128))]
struct Shard {
    index: RwLock<Index>,
}

#[derive(Default)]
struct Index {
    ips: HashTable<u32>,
    keys: HashTable<(Box<str>, u32)>,
    /// Slots freed by evictions from this shard, reused by its inserts.
    free: Vec<u32>,
}

#[derive(Clone, Copy)]
enum Probe<'a> {
    /// An address, or a network's first address, and the prefix length
    /// (128 for an address).
    Ip(u128, u8),
    Api(&'a str),
}

#[derive(Clone, Copy)]
struct Lookup<'a> {
    probe: Probe<'a>,
    hash: u64,
}

fn slot_ip(slot: &Slot) -> u128 {
    (u128::from(slot.key[0].load(Ordering::Relaxed)) << 64)
        | u128::from(slot.key[1].load(Ordering::Relaxed))
}

/// The prefix length of an IP slot's key (128: a single address).
fn slot_prefix(slot: &Slot) -> u8 {
    ((slot.flags.load(Ordering::Relaxed) & PREFIX_MASK) >> PREFIX_SHIFT) as u8
}

/// The key of an IP slot.
fn slot_ip_key(slot: &Slot) -> ClientKey {
    let bits = slot_ip(slot);
    match slot_prefix(slot) {
        128 => ClientKey::Ip(ip_from_bits(bits)),
        prefix => match Ipv6Net::new(Ipv6Addr::from_bits(bits), prefix) {
            Ok(net) => ClientKey::Net(net),
            Err(_) => ClientKey::Ip(ip_from_bits(bits)),
        },
    }
}

/// Client key → token bucket, concurrent. See the module docs.
pub struct Registry {
    shards: Box<[Shard]>,
    shard_mask: usize,
    slab: Slab,
    hasher: RandomState,
    clock: Box<dyn Clock>,
    /// The refill clock, in bucket units: the time of the last tick...
    refill_now: AtomicU64,
    /// ...and of the tick before it (for the carry, see `bucket`).
    refill_prev: AtomicU64,
    /// Serialises clock advances so the two words above move in order.
    tick_lock: Mutex<()>,
    tick_units: u64,
    idle_units: u64,
    /// Swapped by a config reload ([`Registry::set_default_limits`]);
    /// read only when a bucket is created or unpinned.
    default_limits: arc_swap::ArcSwap<Limits>,
    max_clients: usize,
    dynamic: AtomicUsize,
    pinned: AtomicUsize,
    cursor: AtomicU32,
    /// The refill time at which a search for a full bucket to reclaim last
    /// found none (`u64::MAX`: no such search since the last change that
    /// could make one full outside a tick).
    nothing_to_reclaim_at: AtomicU64,
    /// Searches for a full bucket that walked the table (tests count them).
    reclaim_searches: AtomicU64,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("shards", &self.shards.len())
            .field("clients", &self.len())
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry on the process's monotonic clock.
    pub fn new(config: RegistryConfig) -> Self {
        Self::with_clock(config, MonotonicClock::new())
    }

    /// A registry on the given clock (tests use a fake one).
    pub fn with_clock(config: RegistryConfig, clock: impl Clock) -> Self {
        let max_clients = config.max_clients.get().min(MAX_CLIENTS);
        let shards = if cfg!(tollgate_loom) {
            2
        } else {
            std::thread::available_parallelism()
                .map_or(2, NonZeroUsize::get)
                .saturating_mul(16)
                .next_power_of_two()
                .clamp(16, 1024)
        };
        let clock: Box<dyn Clock> = Box::new(clock);
        let now = bucket::units(clock.elapsed());
        Self {
            shards: (0..shards)
                .map(|_| Shard {
                    index: RwLock::new(Index::default()),
                })
                .collect(),
            shard_mask: shards - 1,
            slab: Slab::new(max_clients + MAX_PINNED),
            hasher: RandomState::default(),
            clock,
            refill_now: AtomicU64::new(now),
            refill_prev: AtomicU64::new(now),
            tick_lock: Mutex::new(()),
            tick_units: bucket::units(config.refill_interval).max(1),
            idle_units: bucket::units(config.idle_timeout),
            default_limits: arc_swap::ArcSwap::from_pointee(config.default_limits),
            max_clients,
            dynamic: AtomicUsize::new(0),
            pinned: AtomicUsize::new(0),
            cursor: AtomicU32::new(0),
            nothing_to_reclaim_at: AtomicU64::new(u64::MAX),
            reclaim_searches: AtomicU64::new(0),
        }
    }

    /// Limits given to clients that are not in the client table.
    pub fn default_limits(&self) -> Limits {
        **self.default_limits.load()
    }

    /// Gives clients not in the client table `limits` from now on: new
    /// clients start on them, and every tracked client on the default
    /// limits moves to them with its tokens kept, clamped to the new
    /// capacity. Pinned clients keep their own. Returns how many buckets
    /// moved.
    pub fn set_default_limits(&self, limits: Limits) -> usize {
        // Stored first: a bucket created in a shard after the walk below
        // passed it was created (under that shard's lock) on the new ones.
        self.default_limits.store(std::sync::Arc::new(limits));
        let now = self.refill_now.load(Ordering::Acquire);
        let mut moved = 0;
        for shard in self.shards.iter() {
            let index = write(&shard.index);
            let slots = index
                .ips
                .iter()
                .copied()
                .chain(index.keys.iter().map(|(_, idx)| *idx));
            for idx in slots {
                let Some(slot) = self.slab.get(idx) else {
                    continue;
                };
                if slot.flags.load(Ordering::Relaxed) & PINNED == 0 {
                    bucket::set_limits(slot, &limits, now);
                    moved += 1;
                }
            }
        }
        // A clamp to a smaller capacity can leave buckets full.
        self.nothing_to_reclaim_at
            .store(u64::MAX, Ordering::Release);
        moved
    }

    /// Period of the refill tick: how long a refused newcomer at
    /// `max_clients` waits before a bucket can have become reclaimable.
    pub fn tick_interval(&self) -> Duration {
        bucket::duration(self.tick_units)
    }

    /// Clients tracked, pinned ones included.
    pub fn len(&self) -> usize {
        self.dynamic.load(Ordering::Relaxed) + self.pinned.load(Ordering::Relaxed)
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Clients pinned by the client table.
    pub fn pinned_len(&self) -> usize {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Takes one token from `key`'s bucket, creating the bucket (full, on
    /// the default limits) for a client seen for the first time.
    pub fn check(&self, key: &ClientKey) -> Result<Decision, RegistryError> {
        self.check_cost(key, 1)
    }

    /// Takes `cost` tokens (all or none) from `key`'s bucket, creating the
    /// bucket (full, on the default limits) for a key seen for the first
    /// time.
    pub fn check_cost(&self, key: &ClientKey, cost: u32) -> Result<Decision, RegistryError> {
        let at = self.refill_time();
        let lookup = self.lookup(key);
        let shard = self.shard(lookup.hash);
        {
            let index = read(&shard.index);
            if let Some(slot) = self.find(&index, lookup).and_then(|i| self.slab.get(i)) {
                return Ok(self.decide(bucket::try_take_n(slot, at, cost)));
            }
        }
        let mut index = write(&shard.index);
        let idx = match self.find(&index, lookup) {
            Some(idx) => idx,
            None => self.insert(&mut index, lookup, false, &self.default_limits())?,
        };
        let slot = self.slab.get(idx).ok_or(RegistryError::Full(self.len()))?;
        Ok(self.decide(bucket::try_take_n(slot, at, cost)))
    }

    /// Takes a token from `key`'s bucket only if `key` is pinned (in the
    /// client table); `None` otherwise, without creating a bucket. The proxy
    /// uses this for API keys, so invented keys cannot mint buckets.
    pub fn check_pinned(&self, key: &ClientKey) -> Option<Decision> {
        let at = self.refill_time();
        let lookup = self.lookup(key);
        let index = read(&self.shard(lookup.hash).index);
        let slot = self.find(&index, lookup).and_then(|i| self.slab.get(i))?;
        if slot.flags.load(Ordering::Relaxed) & PINNED == 0 {
            return None;
        }
        Some(self.decide(bucket::try_take_n(slot, at, 1)))
    }

    /// Gives back `n` tokens an admitted take of `key` took, when another
    /// bucket refused the same request; nothing if `key` has no bucket.
    pub fn give_back(&self, key: &ClientKey, n: u32) {
        let lookup = self.lookup(key);
        let index = read(&self.shard(lookup.hash).index);
        if let Some(slot) = self.find(&index, lookup).and_then(|i| self.slab.get(i)) {
            bucket::give_back(slot, n);
        }
    }

    /// Gives `key` its own limits and pins it (the client table's clients
    /// are never evicted). Its current tokens are kept, clamped to the new
    /// capacity; a client not seen yet starts full.
    pub fn set_limits(&self, key: &ClientKey, limits: Limits) -> Result<(), RegistryError> {
        let now = self.refill_now.load(Ordering::Acquire);
        let lookup = self.lookup(key);
        let mut index = write(&self.shard(lookup.hash).index);
        match self.find(&index, lookup).and_then(|i| self.slab.get(i)) {
            Some(slot) => {
                let flags = slot.flags.load(Ordering::Relaxed);
                if flags & PINNED == 0 {
                    slot.flags.store(flags | PINNED, Ordering::Release);
                    self.dynamic.fetch_sub(1, Ordering::Relaxed);
                    self.pinned.fetch_add(1, Ordering::Relaxed);
                }
                bucket::set_limits(slot, &limits, now);
            }
            None => {
                self.insert(&mut index, lookup, true, &limits)?;
            }
        }
        Ok(())
    }

    /// Puts a pinned client back on the default limits and lets it be
    /// evicted again. Returns whether `key` was pinned.
    pub fn unpin(&self, key: &ClientKey) -> bool {
        let now = self.refill_now.load(Ordering::Acquire);
        let lookup = self.lookup(key);
        let index = write(&self.shard(lookup.hash).index);
        let Some(slot) = self.find(&index, lookup).and_then(|i| self.slab.get(i)) else {
            return false;
        };
        let flags = slot.flags.load(Ordering::Relaxed);
        if flags & PINNED == 0 {
            return false;
        }
        bucket::set_limits(slot, &self.default_limits(), now);
        slot.flags.store(flags & !PINNED, Ordering::Release);
        // An unpinned full bucket can be reclaimed again.
        self.nothing_to_reclaim_at
            .store(u64::MAX, Ordering::Release);
        self.pinned.fetch_sub(1, Ordering::Relaxed);
        self.dynamic.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether `key` is a client-table client (pinned) running exactly
    /// `limits`: what a reload of the table compares a row with, so that
    /// whatever put other limits there (a local write, a missed change)
    /// cannot keep them.
    pub fn runs(&self, key: &ClientKey, limits: &Limits) -> bool {
        let lookup = self.lookup(key);
        let index = read(&self.shard(lookup.hash).index);
        self.find(&index, lookup)
            .and_then(|i| self.slab.get(i))
            .is_some_and(|slot| {
                slot.flags.load(Ordering::Relaxed) & PINNED != 0
                    && slot.capacity.load(Ordering::Relaxed) == limits.capacity()
                    && slot.emission.load(Ordering::Relaxed) == limits.emission()
            })
    }

    /// The keys of every client-table client (pinned bucket). Only API
    /// keys are looked at: the client table holds nothing else, and the IP
    /// clients, which may be millions, are not walked.
    pub fn pinned_keys(&self) -> Vec<ClientKey> {
        let mut keys = Vec::with_capacity(self.pinned_len());
        for shard in self.shards.iter() {
            let index = read(&shard.index);
            for (text, idx) in index.keys.iter() {
                let pinned = self
                    .slab
                    .get(*idx)
                    .is_some_and(|s| s.flags.load(Ordering::Relaxed) & PINNED != 0);
                if let (true, Ok(key)) = (pinned, ClientKey::api(text)) {
                    keys.push(key);
                }
            }
        }
        keys
    }

    /// Sets `key`'s level to `tokens` (clamped to its capacity), creating
    /// its bucket on the default limits if it has none. Used to restore
    /// snapshots.
    pub fn set_tokens(&self, key: &ClientKey, tokens: f64) -> Result<(), RegistryError> {
        let now = self.refill_now.load(Ordering::Acquire);
        let lookup = self.lookup(key);
        let mut index = write(&self.shard(lookup.hash).index);
        let idx = match self.find(&index, lookup) {
            Some(idx) => idx,
            None => self.insert(&mut index, lookup, false, &self.default_limits())?,
        };
        if let Some(slot) = self.slab.get(idx) {
            bucket::set_tokens(slot, now, tokens);
            // A restored level may be a full bucket.
            self.nothing_to_reclaim_at
                .store(u64::MAX, Ordering::Release);
        }
        Ok(())
    }

    /// `key`'s current level in tokens, or `None` if it has no bucket (it
    /// would start full).
    pub fn tokens(&self, key: &ClientKey) -> Option<f64> {
        let now = self.refill_now.load(Ordering::Acquire);
        let lookup = self.lookup(key);
        let index = read(&self.shard(lookup.hash).index);
        let slot = self.find(&index, lookup).and_then(|i| self.slab.get(i))?;
        Some(bucket::tokens(slot, now))
    }

    /// Calls `f` with every tracked bucket, one shard at a time (each shard
    /// is read-locked while it is visited).
    pub fn for_each(&self, mut f: impl FnMut(BucketView)) {
        let now = self.refill_now.load(Ordering::Acquire);
        for shard in self.shards.iter() {
            let index = read(&shard.index);
            let view = |key: ClientKey, idx: u32| {
                let slot = self.slab.get(idx)?;
                Some(BucketView {
                    key,
                    tokens: bucket::tokens(slot, now),
                    capacity: slot.capacity.load(Ordering::Relaxed),
                    pinned: slot.flags.load(Ordering::Relaxed) & PINNED != 0,
                })
            };
            for &idx in index.ips.iter() {
                if let Some(slot) = self.slab.get(idx) {
                    if let Some(v) = view(slot_ip_key(slot), idx) {
                        f(v);
                    }
                }
            }
            for (text, idx) in index.keys.iter() {
                if let Ok(key) = ClientKey::api(text) {
                    if let Some(v) = view(key, *idx) {
                        f(v);
                    }
                }
            }
        }
    }

    /// One refill tick: advances the refill clock by the real time elapsed
    /// since the last tick (refilling every bucket) and evicts idle full
    /// buckets from the next stretch of the slab.
    pub fn refill(&self) -> RefillReport {
        let at = self.advance_clock();
        let high_water = self.slab.high_water();
        if high_water == 0 {
            return RefillReport::default();
        }
        let budget = SCAN_PER_TICK.min(high_water as usize) as u32;
        let start = self.cursor.load(Ordering::Relaxed) % high_water;
        let end = start.saturating_add(budget).min(high_water);
        self.cursor.store(end % high_water, Ordering::Relaxed);
        self.scan(start, end, at)
    }

    /// Advances the refill clock to the clock's time; returns the new
    /// refill time.
    pub(crate) fn advance_clock(&self) -> RefillTime {
        let _serial = self
            .tick_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = bucket::units(self.clock.elapsed());
        let cur = self.refill_now.load(Ordering::Acquire);
        if now > cur {
            // prev first: a take that sees the new `now` sees this `prev`.
            self.refill_prev.store(cur, Ordering::Release);
            self.refill_now.store(now, Ordering::Release);
        }
        self.refill_time()
    }

    fn refill_time(&self) -> RefillTime {
        let now = self.refill_now.load(Ordering::Acquire);
        let prev = self.refill_prev.load(Ordering::Acquire).min(now);
        RefillTime { now, prev }
    }

    /// Examines every slot for eviction at once, without advancing the
    /// clock (a full pass; the refill tick spreads the same work over
    /// several ticks).
    pub fn evict_idle(&self) -> RefillReport {
        self.scan(0, self.slab.high_water(), self.refill_time())
    }

    fn scan(&self, start: u32, end: u32, at: RefillTime) -> RefillReport {
        let mut report = RefillReport::default();
        for idx in start..end {
            let Some(slot) = self.slab.get(idx) else {
                continue;
            };
            report.scanned += 1;
            let flags = slot.flags.load(Ordering::Acquire);
            if flags & KIND_MASK == KIND_FREE || flags & PINNED != 0 {
                continue;
            }
            if bucket::idle_full(slot, at, self.idle_units) && self.evict(idx, at) {
                report.evicted += 1;
            }
        }
        report
    }

    /// Evicts slot `idx` if, under its shard's write lock, it still belongs
    /// to an unpinned client whose bucket is idle and full.
    fn evict(&self, idx: u32, at: RefillTime) -> bool {
        let Some(slot) = self.slab.get(idx) else {
            return false;
        };
        let kind = slot.flags.load(Ordering::Acquire) & KIND_MASK;
        let hash = match kind {
            KIND_IP => self.hasher.hash_one(slot_ip(slot)),
            KIND_API => slot.key[0].load(Ordering::Relaxed),
            _ => return false,
        };
        let mut index = write(&self.shard(hash).index);
        let flags = slot.flags.load(Ordering::Acquire);
        if flags & KIND_MASK != kind
            || flags & PINNED != 0
            || !bucket::idle_full(slot, at, self.idle_units)
        {
            return false;
        }
        if !self.unlink(&mut index, idx, kind, hash) {
            return false;
        }
        slot.flags.store(KIND_FREE, Ordering::Release);
        index.free.push(idx);
        self.dynamic.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Removes slot `idx` from `index`; false if it is not there.
    fn unlink(&self, index: &mut Index, idx: u32, kind: u32, hash: u64) -> bool {
        if kind == KIND_IP {
            match index.ips.find_entry(hash, |&i| i == idx) {
                Ok(entry) => {
                    entry.remove();
                    true
                }
                Err(_) => false,
            }
        } else {
            match index.keys.find_entry(hash, |(_, i)| *i == idx) {
                Ok(entry) => {
                    entry.remove();
                    true
                }
                Err(_) => false,
            }
        }
    }

    fn lookup<'k>(&self, key: &'k ClientKey) -> Lookup<'k> {
        match key {
            ClientKey::Ip(ip) => {
                let bits = ip_bits(*ip);
                Lookup {
                    probe: Probe::Ip(bits, 128),
                    hash: self.hasher.hash_one(bits),
                }
            }
            ClientKey::Net(net) => {
                let net = net.trunc();
                let bits = net.network().to_bits();
                Lookup {
                    probe: Probe::Ip(bits, net.prefix_len()),
                    hash: self.hasher.hash_one(bits),
                }
            }
            ClientKey::Api(k) => Lookup {
                probe: Probe::Api(k.as_str()),
                hash: self.hasher.hash_one(k.as_str()),
            },
        }
    }

    fn shard(&self, hash: u64) -> &Shard {
        // hashbrown places entries by the low bits and tags them with the
        // top seven; the shard takes bits from neither.
        &self.shards[(hash >> 32) as usize & self.shard_mask]
    }

    fn find(&self, index: &Index, lookup: Lookup<'_>) -> Option<u32> {
        match lookup.probe {
            Probe::Ip(bits, prefix) => index
                .ips
                .find(lookup.hash, |&i| {
                    self.slab
                        .get(i)
                        .is_some_and(|s| slot_ip(s) == bits && slot_prefix(s) == prefix)
                })
                .copied(),
            Probe::Api(text) => index
                .keys
                .find(lookup.hash, |(k, _)| &**k == text)
                .map(|(_, i)| *i),
        }
    }

    /// Creates a bucket for a key that `index` does not hold. Caller holds
    /// the shard's write lock.
    fn insert(
        &self,
        index: &mut Index,
        lookup: Lookup<'_>,
        pinned: bool,
        limits: &Limits,
    ) -> Result<u32, RegistryError> {
        let now = self.refill_now.load(Ordering::Acquire);
        let idx = if pinned {
            if self.pinned.load(Ordering::Relaxed) >= MAX_PINNED {
                return Err(RegistryError::Full(self.len()));
            }
            let idx = self
                .take_slot(index)
                .ok_or(RegistryError::Full(self.len()))?;
            self.pinned.fetch_add(1, Ordering::Relaxed);
            idx
        } else {
            let reserved = self
                .dynamic
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_clients).then_some(n + 1)
                })
                .is_ok();
            if reserved {
                match self.take_slot(index) {
                    Some(idx) => idx,
                    None => {
                        self.dynamic.fetch_sub(1, Ordering::Relaxed);
                        return Err(RegistryError::Full(self.len()));
                    }
                }
            } else {
                // Full: a full bucket is as good as a fresh one, so hand
                // its slot over (the client count stays the same).
                self.reclaim_full(index, self.refill_time())
                    .ok_or(RegistryError::Full(self.len()))?
            }
        };
        let Some(slot) = self.slab.get(idx) else {
            return Err(RegistryError::Full(self.len()));
        };
        let pin = if pinned { PINNED } else { 0 };
        match lookup.probe {
            Probe::Ip(bits, prefix) => {
                let key = [(bits >> 64) as u64, bits as u64];
                let flags = KIND_IP | pin | (u32::from(prefix) << PREFIX_SHIFT);
                bucket::init(slot, limits, now, flags, key);
                index.ips.insert_unique(lookup.hash, idx, |&i| {
                    self.slab
                        .get(i)
                        .map_or(0, |s| self.hasher.hash_one(slot_ip(s)))
                });
            }
            Probe::Api(text) => {
                bucket::init(slot, limits, now, KIND_API | pin, [lookup.hash, 0]);
                index
                    .keys
                    .insert_unique(lookup.hash, (text.into(), idx), |(k, _)| {
                        self.hasher.hash_one(&**k)
                    });
            }
        }
        Ok(idx)
    }

    /// A free slot: this shard's free list, then a never-used slot, then
    /// other shards' free lists (without waiting for their locks).
    fn take_slot(&self, index: &mut Index) -> Option<u32> {
        if let Some(idx) = index.free.pop() {
            return Some(idx);
        }
        if let Some(idx) = self.slab.bump() {
            return Some(idx);
        }
        self.shards.iter().find_map(|other| {
            // try_write on our own shard fails (we hold it), which is fine.
            let mut other = other.index.try_write().ok()?;
            other.free.pop()
        })
    }

    /// Frees the slot of some unpinned full bucket, in this shard first,
    /// then in the others (without waiting for their locks), and returns it.
    /// Only runs when `max_clients` is reached. A search that finds nothing
    /// is not repeated before the refill clock moves (see the module docs).
    fn reclaim_full(&self, index: &mut Index, at: RefillTime) -> Option<u32> {
        if self.nothing_to_reclaim_at.load(Ordering::Acquire) == at.now {
            return None;
        }
        self.reclaim_searches.fetch_add(1, Ordering::Relaxed);
        let found = self.reclaim_in(index, at).or_else(|| {
            self.shards.iter().find_map(|other| {
                // try_write on our own shard fails (we hold it), which is
                // fine. A shard busy at this moment is passed over; if it
                // held the only full bucket, the client waits for the next
                // tick, as a refused one does anyway.
                let mut other = other.index.try_write().ok()?;
                self.reclaim_in(&mut other, at)
            })
        });
        if found.is_none() {
            self.nothing_to_reclaim_at.store(at.now, Ordering::Release);
        }
        found
    }

    /// How many times a new client at `max_clients` made the registry walk
    /// the table for a full bucket (refusals in the same tick do not).
    #[doc(hidden)]
    pub fn reclaim_searches(&self) -> u64 {
        self.reclaim_searches.load(Ordering::Relaxed)
    }

    fn reclaim_in(&self, index: &mut Index, at: RefillTime) -> Option<u32> {
        let evictable = |idx: u32| {
            self.slab.get(idx).is_some_and(|s| {
                s.flags.load(Ordering::Relaxed) & PINNED == 0 && bucket::idle_full(s, at, 0)
            })
        };
        let (idx, kind, hash) = if let Some(&idx) = index.ips.iter().find(|&&i| evictable(i)) {
            let hash = self
                .slab
                .get(idx)
                .map_or(0, |s| self.hasher.hash_one(slot_ip(s)));
            (idx, KIND_IP, hash)
        } else {
            let (text, idx) = index.keys.iter().find(|(_, i)| evictable(*i))?;
            (*idx, KIND_API, self.hasher.hash_one(&**text))
        };
        self.unlink(index, idx, kind, hash).then_some(idx)
    }

    fn decide(&self, take: Take) -> Decision {
        Decision {
            take,
            tick_units: self.tick_units,
            shared: None,
        }
    }
}
