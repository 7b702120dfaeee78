//! One token bucket: its memory layout and the arithmetic on it.
//!
//! # Representation
//!
//! A bucket is stored as its *theoretical arrival time* (`tat`, as in
//! GCRA) on the **refill clock**: a 64-bit count of 1/16 ns that the
//! periodic refill task advances by the real time elapsed at every tick.
//! With `e` = refill-clock units per token and `τ = capacity · e`, a bucket
//! read at refill time `T` holds
//!
//! ```text
//! tokens = (τ − max(0, tat − T)) / e
//! ```
//!
//! tokens, fractions included: this is the fixed-point token count, scaled
//! by `e`. Taking a token is `tat := max(tat, T) + e`, allowed when the
//! result stays within `T + τ`; it is one compare-and-swap on one word, so
//! check and take are a single atomic step.
//!
//! # Why the tick refills every bucket in O(1)
//!
//! Advancing `T` raises the level of every bucket at once, by exactly
//! `rate × elapsed` (capped at capacity). A sweep that instead did a
//! read-modify-write on each bucket costs about 10 ns per bucket here
//! (`lock cmpxchg`), 10 ms per tick for a million clients: more than the
//! whole budget. Buckets still only gain tokens at ticks, exactly as a
//! per-bucket sweep would give them, and a late tick loses nothing because
//! `T` moves by the real time elapsed.
//!
//! A take that read `T` just before a tick linearises before that tick, so
//! take and refill are atomic with respect to each other.
//!
//! # Carry
//!
//! Tokens only become visible at ticks. A client that is waiting for its
//! next token would lose the part of a tick's refill that arrives after
//! the bucket is full again (with capacity 1 and 3 tokens/s on a 100 ms
//! tick, 17 % of its rate). So when a bucket filled up *between* the
//! previous tick and the last one, a take is charged from the moment the
//! bucket filled (`tat`), not from the tick: the client gets exactly the
//! tokens a continuous bucket would have given it. The carry is less than
//! one tick's refill, which is the slack the admission bound allows
//! (`capacity + rate·t` plus one tick); a bucket that was already full at
//! the previous tick gets no carry, so an idle client's burst is exactly
//! `capacity`. The level shown by `tokens` never exceeds capacity.
//!
//! # Zero rate
//!
//! A bucket with `rate_per_sec: 0` never refills: its clock is frozen at 0,
//! `e` is one unit, and `tat` counts the tokens taken.
//!
//! # Changing limits
//!
//! Limits live beside `tat` in the same slot. They change only while the
//! registry holds the slot's shard write lock, which excludes every take
//! (takes run under the read lock), so a take never mixes old limits with a
//! new `tat`.

use super::limits::Limits;
pub(crate) use super::units::{duration, fill_time, units};
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What a slot holds (bits 0-1 of `flags`).
pub(crate) const KIND_FREE: u32 = 0;
pub(crate) const KIND_IP: u32 = 1;
pub(crate) const KIND_API: u32 = 2;
pub(crate) const KIND_MASK: u32 = 0b11;
/// The client is in the client table: never evicted.
pub(crate) const PINNED: u32 = 1 << 2;
/// For IP slots, bits 8-15: the prefix length of the key's network
/// (`ClientKey::Net`), or 128 for a single address.
pub(crate) const PREFIX_SHIFT: u32 = 8;
pub(crate) const PREFIX_MASK: u32 = 0xff << PREFIX_SHIFT;

/// One bucket and the identity of its client: 40 bytes.
///
/// Slots live in a slab (see `registry`), so the refill sweep reads them in
/// memory order; the key is stored here rather than in the hash index to
/// keep the index at 4 bytes per entry.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Theoretical arrival time on the refill clock.
    pub(crate) tat: AtomicU64,
    /// Refill-clock units per token; 0 means the rate is zero.
    pub(crate) emission: AtomicU64,
    /// For IP clients the address (IPv4-mapped for v4) or the network's
    /// first address (its prefix length is in `flags`); for API-key clients
    /// `key[0]` holds the key's hash, the key itself lives in the index.
    pub(crate) key: [AtomicU64; 2],
    pub(crate) capacity: AtomicU32,
    pub(crate) flags: AtomicU32,
}

/// The limits of one slot, as the arithmetic needs them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    capacity: u32,
    emission: u64,
    /// Units per token used in the arithmetic (1 for zero rate).
    e: u64,
    tau: u64,
}

impl Params {
    pub(crate) fn new(capacity: u32, emission: u64) -> Self {
        let e = emission.max(1);
        Self {
            capacity,
            emission,
            e,
            tau: u64::from(capacity).saturating_mul(e),
        }
    }

    pub(crate) fn of(limits: &Limits) -> Self {
        Self::new(limits.capacity(), limits.emission())
    }

    fn load(slot: &Slot) -> Self {
        // Relaxed is enough: limits only change under the shard write
        // lock, and every reader holds the read lock.
        Self::new(
            slot.capacity.load(Ordering::Relaxed),
            slot.emission.load(Ordering::Relaxed),
        )
    }

    /// The bucket's own view of the refill clock: frozen for zero rate.
    fn now(&self, refill_now: u64) -> u64 {
        if self.emission == 0 {
            0
        } else {
            refill_now
        }
    }
}

/// The result of one take, before it is turned into a public decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Take {
    pub(crate) allowed: bool,
    /// `tat − now` after the take (0 = full), in units.
    pub(crate) deficit: u64,
    pub(crate) params: Params,
}

impl Take {
    pub(crate) fn capacity(&self) -> u32 {
        self.params.capacity
    }

    pub(crate) fn emission(&self) -> u64 {
        self.params.emission
    }

    /// Whole tokens left.
    pub(crate) fn remaining(&self) -> u32 {
        let left = (self.params.tau - self.deficit) / self.params.e;
        u32::try_from(left).unwrap_or(u32::MAX)
    }

    /// Refill-clock units until the next whole token; `None` if it never
    /// comes (zero rate), `Some(0)` if the bucket is full.
    pub(crate) fn units_to_next_token(&self) -> Option<u64> {
        if self.deficit == 0 {
            return Some(0);
        }
        if self.params.emission == 0 {
            return None;
        }
        // The next whole token arrives when the deficit has shrunk to a
        // multiple of e.
        let partial = self.deficit % self.params.e;
        Some(if partial == 0 { self.params.e } else { partial })
    }
}

/// The refill clock as a take sees it: the time of the last tick and of
/// the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefillTime {
    pub(crate) now: u64,
    pub(crate) prev: u64,
}

/// Takes `n` tokens if there are that many, none otherwise. Lock-free;
/// the caller holds the shard's read lock so the slot cannot change owner
/// underneath.
pub(crate) fn try_take_n(slot: &Slot, at: RefillTime, n: u32) -> Take {
    let params = Params::load(slot);
    let cost = params.e.saturating_mul(u64::from(n.max(1)));
    let (now, prev) = if params.emission == 0 {
        (0, 0)
    } else {
        (at.now, at.prev)
    };
    let mut tat = slot.tat.load(Ordering::Acquire);
    loop {
        // A bucket that filled up after the previous tick (prev < tat <=
        // now) was waiting for that token: charge from when it arrived,
        // not from when the tick revealed it (see "Carry" above).
        let base = if tat > prev { tat } else { tat.max(now) };
        let next = base.saturating_add(cost);
        if next > now + params.tau {
            return Take {
                allowed: false,
                deficit: tat.saturating_sub(now),
                params,
            };
        }
        match slot
            .tat
            .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                return Take {
                    allowed: true,
                    deficit: next.saturating_sub(now),
                    params,
                }
            }
            Err(actual) => tat = actual,
        }
    }
}

/// Gives back `n` tokens a take admitted (a request refused by another
/// bucket takes nothing from this one). Lock-free like a take. A bucket
/// that refilled meanwhile only fills up: nothing goes above capacity.
pub(crate) fn give_back(slot: &Slot, n: u32) {
    let params = Params::load(slot);
    let cost = params.e.saturating_mul(u64::from(n));
    let mut tat = slot.tat.load(Ordering::Acquire);
    loop {
        let next = tat.saturating_sub(cost);
        match slot
            .tat
            .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return,
            Err(actual) => tat = actual,
        }
    }
}

/// Current level in tokens, fractions included.
pub(crate) fn tokens(slot: &Slot, refill_now: u64) -> f64 {
    let params = Params::load(slot);
    let deficit = slot
        .tat
        .load(Ordering::Acquire)
        .saturating_sub(params.now(refill_now))
        .min(params.tau);
    (params.tau - deficit) as f64 / params.e as f64
}

/// Fills a free slot for a new client, full. Caller holds the write lock.
pub(crate) fn init(slot: &Slot, limits: &Limits, refill_now: u64, flags: u32, key: [u64; 2]) {
    let params = Params::of(limits);
    slot.capacity.store(params.capacity, Ordering::Relaxed);
    slot.emission.store(params.emission, Ordering::Relaxed);
    slot.key[0].store(key[0], Ordering::Relaxed);
    slot.key[1].store(key[1], Ordering::Relaxed);
    slot.tat.store(params.now(refill_now), Ordering::Release);
    slot.flags.store(flags, Ordering::Release);
}

/// Replaces a live bucket's limits, keeping its tokens (clamped to the new
/// capacity). Caller holds the shard write lock, so no take runs meanwhile.
pub(crate) fn set_limits(slot: &Slot, limits: &Limits, refill_now: u64) {
    let level = tokens_scaled(slot, refill_now, limits);
    store_level(slot, limits, refill_now, level);
}

/// Sets a live bucket's level to `tokens` (clamped to `[0, capacity]`).
/// Caller holds the shard write lock.
pub(crate) fn set_tokens(slot: &Slot, refill_now: u64, tokens: f64) {
    let params = Params::load(slot);
    let scaled = if tokens.is_nan() || tokens <= 0.0 {
        0
    } else {
        let s = tokens * params.e as f64;
        if s >= params.tau as f64 {
            params.tau
        } else {
            s as u64
        }
    };
    slot.tat.store(
        params.now(refill_now) + (params.tau - scaled),
        Ordering::Release,
    );
}

/// The slot's current level expressed in units of the *new* limits' `e`,
/// clamped to the new `τ`.
fn tokens_scaled(slot: &Slot, refill_now: u64, new: &Limits) -> u64 {
    let old = Params::load(slot);
    let new = Params::of(new);
    let deficit = slot
        .tat
        .load(Ordering::Acquire)
        .saturating_sub(old.now(refill_now))
        .min(old.tau);
    let level_old = u128::from(old.tau - deficit);
    // Round down: a change of limits never creates a fraction of a token.
    let level_new = level_old * u128::from(new.e) / u128::from(old.e);
    u64::try_from(level_new.min(u128::from(new.tau))).unwrap_or(new.tau)
}

fn store_level(slot: &Slot, limits: &Limits, refill_now: u64, level: u64) {
    let params = Params::of(limits);
    slot.capacity.store(params.capacity, Ordering::Relaxed);
    slot.emission.store(params.emission, Ordering::Relaxed);
    slot.tat.store(
        params.now(refill_now) + (params.tau - level.min(params.tau)),
        Ordering::Release,
    );
}

/// Whether the bucket is full, owes no carry, and has been full for `idle`
/// units: then it is indistinguishable from a fresh one and may be evicted.
pub(crate) fn idle_full(slot: &Slot, at: RefillTime, idle: u64) -> bool {
    let params = Params::load(slot);
    let tat = slot.tat.load(Ordering::Acquire);
    if params.emission == 0 {
        // A frozen bucket is full only if nothing was ever taken.
        return tat == 0;
    }
    // A full bucket has been full since `tat`: any take would have moved
    // `tat` past the clock.
    tat <= at.prev && tat.saturating_add(idle) <= at.now
}
