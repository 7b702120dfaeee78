//! Leased tokens: how a replica spends a shared limit without asking Redis
//! on every request (`rate_limit.shared.mode: lease`).
//!
//! A replica takes a small batch of a client's tokens from the shared
//! bucket in one atomic script call and spends them locally. Because every
//! token is taken from Redis before it is spent, replicas together never
//! admit more than the shared bucket allows; what leasing can cost is the
//! other way round, tokens taken but not (yet) spent. So a lease is kept
//! small:
//!
//! - its size follows the client's demand on this replica over the last
//!   [`HORIZON`];
//! - what a replica holds of one bucket (unspent tokens plus the grant it
//!   is asking for) never exceeds [`max_lease`]: a quarter of the
//!   capacity, and no more than a crash may cost, the larger of one token,
//!   1 % of the capacity and [`CRASH_REFILL`] of refill. A replica killed
//!   with -9 gives nothing back, and a quota like `1000/day` takes hours to
//!   earn back what it stranded, so the bound is set by time as well as
//!   by tokens;
//! - a lease left unused for [`IDLE_RETURN`] is given back to Redis, so a
//!   client whose traffic moves to another replica gets it back there.
//!
//! When Redis says a bucket is empty, it also says when enough tokens for
//! the next lease will be back; until then this replica refuses the client
//! locally. A flooding client therefore costs Redis about one call per
//! refill interval per replica, not one per request. Only one lease
//! request per client is in flight on a replica: checks that arrive
//! meanwhile wait for its answer.
//!
//! The state machine here ([`LeaseState`]) is pure (time is passed in) so
//! its rules are unit-tested without Redis; `SharedLimiter` drives it. It
//! is public so that the replica simulation (`examples/replica_sim.rs`)
//! runs these very rules, with a simulated clock, rather than a copy.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::Bucket;
use crate::limiter::ClientKey;

/// The window over which a client's demand on this replica is measured,
/// and so the time a lease is sized to last.
pub const HORIZON: Duration = Duration::from_secs(1);

/// A lease not touched for this long goes back to Redis.
pub const IDLE_RETURN: Duration = Duration::from_secs(1);

/// An entry without tokens, idle this long, is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(10);

/// How long a replica waits before asking again about a bucket that never
/// refills (zero rate): only a change of the client's limits can help it.
const NEVER_RECHECK: Duration = Duration::from_secs(1);

const SHARDS: usize = 32;

/// The refill a crashed replica may strand at most (with one token and
/// 1 % of the capacity, whichever is largest): for a fast bucket this is
/// more than a quarter of its capacity and so no limit at all, while a
/// slow quota (`1000/day`) is held to 1 % of it.
pub const CRASH_REFILL: Duration = Duration::from_secs(5);

/// The most a replica holds of one bucket at once (tokens leased and
/// unspent plus the grant it asks for): a quarter of the capacity, and no
/// more than `max(1, ⌊capacity / 100⌋, ⌊CRASH_REFILL of refill⌋)`, so
/// that a replica that dies strands no more than that.
pub fn max_lease(limits: LeaseLimits) -> u32 {
    let by_tokens = (limits.capacity / 4).max(1);
    let refill = if limits.emission_us > 0.0 {
        // Float to int casts saturate: an absurd rate gives u32::MAX.
        (CRASH_REFILL.as_secs_f64() * 1e6 / limits.emission_us).floor() as u32
    } else {
        0
    };
    let by_time = (limits.capacity / 100).max(refill).max(1);
    by_tokens.min(by_time)
}

/// The limits a lease was taken under. A change (client table edit) drops
/// what was learnt about the bucket being empty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseLimits {
    /// Tokens the bucket holds when full.
    pub capacity: u32,
    /// Microseconds per token; 0 for a bucket that never refills.
    pub emission_us: f64,
}

impl LeaseLimits {
    /// Tokens that come back in `period`, at least one: how many tokens a
    /// refused replica waits for before it asks again, so that it asks
    /// about once per `period`. Never more than `want`: a replica waits
    /// for no more than it means to take.
    fn wait_for(&self, want: u32, period: Duration) -> u32 {
        if self.emission_us <= 0.0 {
            return 1;
        }
        let per_period = (period.as_secs_f64() * 1e6 / self.emission_us).ceil();
        // Float to int casts saturate; the clamp keeps it in 1..=want.
        (per_period as u32).clamp(1, want.max(1))
    }
}

/// What a check can do without Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// A leased token was spent; `remaining` is the level the headers show
    /// (tokens still leased here plus what Redis had left at the last
    /// lease).
    Spent {
        /// Whole tokens the client has left, as far as this replica knows.
        remaining: u32,
    },
    /// Redis said the bucket is empty until `until`.
    Empty {
        /// When asking again can succeed.
        until: Instant,
    },
    /// Redis must be asked: for `want` tokens (no fewer than `min`), and,
    /// if there are not that many, for the time until `wait_for` are back.
    Fetch {
        /// Tokens to lease (this request's included).
        want: u32,
        /// The fewest worth taking: this request's cost, less what the
        /// lease still holds.
        min: u32,
        /// Tokens to wait for when the bucket is empty.
        wait_for: u32,
    },
}

/// What Redis answered to a lease request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens leased (0: none were there).
    pub granted: u32,
    /// Whole tokens left in the shared bucket after the grant.
    pub remaining: u32,
    /// With no tokens left: time until the awaited ones are back; `None`
    /// for a bucket that never refills.
    pub wait: Option<Duration>,
}

/// One client's lease on this replica.
#[derive(Debug)]
pub struct LeaseState {
    /// Leased tokens not spent yet.
    tokens: u32,
    /// Redis's level after the last grant.
    shared_remaining: u32,
    /// Redis said the bucket is empty until then.
    empty_until: Option<Instant>,
    limits: LeaseLimits,
    last_used: Instant,
    /// Requests seen since `window_start`.
    window_count: u32,
    window_start: Instant,
    /// Requests per second in the previous window.
    previous_rate: f64,
    /// Tokens of the last grant that gave any.
    last_grant: u32,
    /// A lease request made ahead of need is in flight.
    prefetching: bool,
}

impl LeaseState {
    /// A lease holding nothing, for a bucket with `limits`, at `now`.
    pub fn new(now: Instant, limits: LeaseLimits) -> Self {
        Self {
            tokens: 0,
            shared_remaining: 0,
            empty_until: None,
            limits,
            last_used: now,
            window_count: 0,
            window_start: now,
            previous_rate: 0.0,
            last_grant: 0,
            prefetching: false,
        }
    }

    /// Counts one request of demand (refused ones too: demand is what the
    /// client sends, not what it gets).
    pub fn note_demand(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= HORIZON {
            self.previous_rate = f64::from(self.window_count) / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count = self.window_count.saturating_add(1);
        self.last_used = now;
    }

    /// Counts `n` requests spent from the lock-free side of the lease
    /// since the state was last locked.
    fn absorb_demand(&mut self, now: Instant, n: u32) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= HORIZON {
            self.previous_rate = f64::from(self.window_count) / elapsed.as_secs_f64();
            self.window_start = now;
            self.window_count = 0;
        }
        self.window_count = self.window_count.saturating_add(n);
        self.last_used = now;
    }

    /// Below how many lock-free tokens a spend should take the lock to
    /// renew the lease ahead of need (0: never), as [`Self::prefetch`]
    /// decides.
    fn renew_below(&self) -> u32 {
        if self.prefetching || self.last_grant < 4 || self.empty_until.is_some() {
            0
        } else {
            self.last_grant / 4 + 1
        }
    }

    /// Spends `cost` leased tokens, refuses from what Redis said, or says
    /// what to ask Redis for.
    pub fn take(
        &mut self,
        now: Instant,
        limits: LeaseLimits,
        period: Duration,
        cost: u32,
    ) -> Local {
        if self.limits != limits {
            self.limits = limits;
            self.empty_until = None;
        }
        if self.tokens >= cost {
            self.tokens -= cost;
            return Local::Spent {
                remaining: self.level(),
            };
        }
        match self.empty_until {
            Some(until) if now < until => return Local::Empty { until },
            _ => self.empty_until = None,
        }
        let min = cost - self.tokens;
        // What it holds after the grant stays within `max_lease`, unless
        // this one request costs more (then it spends the grant at once).
        let room = max_lease(limits).saturating_sub(self.tokens);
        let want = self.want().min(room).max(min);
        Local::Fetch {
            want,
            min,
            wait_for: limits.wait_for(want, period).max(min),
        }
    }

    /// Tokens to lease: the demand seen over the last [`HORIZON`] (the
    /// previous window's rate, or this window's count if that is more),
    /// between 1 and [`max_lease`].
    fn want(&self) -> u32 {
        let previous = self.previous_rate * HORIZON.as_secs_f64();
        let demand = previous.max(f64::from(self.window_count)).ceil();
        (demand as u32).clamp(1, max_lease(self.limits))
    }

    /// Takes in Redis's answer to a lease request made for one request of
    /// `cost`; `true` if that request is admitted (it takes its cost from
    /// the lease).
    pub fn granted(&mut self, now: Instant, grant: Grant, cost: u32) -> bool {
        self.shared_remaining = grant.remaining;
        self.empty_until = (grant.granted == 0 || grant.remaining == 0)
            .then(|| now + grant.wait.unwrap_or(NEVER_RECHECK));
        self.tokens = self.tokens.saturating_add(grant.granted);
        if grant.granted > 0 {
            self.last_grant = grant.granted;
        }
        if self.tokens < cost {
            return false;
        }
        self.tokens -= cost;
        true
    }

    /// After a spend: whether to ask Redis for the next lease now, before
    /// this one runs out, so that checks do not wait for Redis: for leases
    /// of 4 tokens or more, once a quarter of the last grant is left, one
    /// request at a time. `(want, wait_for)` as for a fetch.
    pub fn prefetch(&mut self, period: Duration) -> Option<(u32, u32)> {
        if self.prefetching
            || self.last_grant < 4
            || self.tokens > self.last_grant / 4
            || self.empty_until.is_some()
        {
            return None;
        }
        // The tokens still held count against `max_lease` too: a crash
        // while this request is in flight strands both.
        let want = self
            .want()
            .min(max_lease(self.limits).saturating_sub(self.tokens));
        if want == 0 {
            return None;
        }
        self.prefetching = true;
        Some((want, self.limits.wait_for(want, period)))
    }

    /// Takes in the answer to a lease request made ahead of need (`None`:
    /// it failed): the tokens join the lease, none is spent.
    pub fn prefetched(&mut self, now: Instant, grant: Option<Grant>) {
        self.prefetching = false;
        let Some(grant) = grant else { return };
        self.shared_remaining = grant.remaining;
        if grant.granted == 0 || grant.remaining == 0 {
            self.empty_until = Some(now + grant.wait.unwrap_or(NEVER_RECHECK));
        }
        self.tokens = self.tokens.saturating_add(grant.granted);
        if grant.granted > 0 {
            self.last_grant = grant.granted;
        }
    }

    /// Puts back `n` tokens a check took from this lease for a request
    /// another bucket refused.
    pub fn refund(&mut self, n: u32) {
        self.tokens = self.tokens.saturating_add(n);
    }

    /// The level the headers show: leased tokens plus Redis's level at the
    /// last lease, at most the capacity.
    pub fn level(&self) -> u32 {
        self.tokens
            .saturating_add(self.shared_remaining)
            .min(self.limits.capacity)
    }

    /// Leased tokens not spent yet: what a crash of this replica would
    /// strand.
    pub fn held(&self) -> u32 {
        self.tokens
    }

    /// Takes the tokens of a lease idle since `idle_since` or earlier, to
    /// give them back to Redis.
    pub fn reclaim(&mut self, idle_since: Instant) -> Option<(u32, LeaseLimits)> {
        if self.tokens == 0 || self.last_used > idle_since {
            return None;
        }
        let n = std::mem::take(&mut self.tokens);
        Some((n, self.limits))
    }
}

/// One client's lease and the lock that keeps its lease requests one at a
/// time.
///
/// Its unspent tokens live on the lock-free side (`spare`) whenever the
/// state is not locked: a check of a busy client then spends with one
/// compare-and-swap instead of taking a mutex that every proxy thread
/// wants. Locking the state ([`Lease::state`]) moves them into
/// `LeaseState::tokens` and the guard moves them back, so the state's
/// rules see every token.
#[derive(Debug)]
pub(crate) struct Lease {
    state: Mutex<LeaseState>,
    /// Leased tokens spendable without the lock.
    spare: AtomicU32,
    /// Requests spent from `spare` since the state was last locked.
    demand: AtomicU32,
    /// Redis's level at the last lease, for the headers.
    shared_remaining: AtomicU32,
    /// A spend leaving fewer than this takes the lock to renew ahead.
    renew_below: AtomicU32,
    /// Held by the one lease request in flight; checks that find the lease
    /// empty wait on it, then look again.
    pub(crate) fetching: Arc<tokio::sync::Mutex<()>>,
}

impl Lease {
    fn new(now: Instant, limits: LeaseLimits) -> Self {
        Self {
            state: Mutex::new(LeaseState::new(now, limits)),
            spare: AtomicU32::new(0),
            demand: AtomicU32::new(0),
            shared_remaining: AtomicU32::new(0),
            renew_below: AtomicU32::new(0),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The state, with every token and every request counted so far on
    /// the lock-free side moved in.
    pub(crate) fn state(&self) -> LeaseGuard<'_> {
        // The state is a few numbers updated in place: a panic elsewhere
        // cannot leave it half-written in a way worth refusing service for.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.tokens = state
            .tokens
            .saturating_add(self.spare.swap(0, Ordering::AcqRel));
        let n = self.demand.swap(0, Ordering::Relaxed);
        if n > 0 {
            state.absorb_demand(Instant::now(), n);
        }
        LeaseGuard { state, lease: self }
    }

    /// Spends `cost` tokens without the lock, if the lock-free side has
    /// them: `(tokens left there, Redis's level at the last lease)`.
    pub(crate) fn spend(&self, cost: u32) -> Option<(u32, u32)> {
        let before = self
            .spare
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(cost))
            .ok()?;
        self.demand.fetch_add(1, Ordering::Relaxed);
        Some((before - cost, self.shared_remaining.load(Ordering::Relaxed)))
    }

    /// Whether a spend that left `left` tokens should renew the lease now
    /// (it then takes the lock; only the first spend under the mark does).
    pub(crate) fn due_for_renewal(&self, left: u32) -> bool {
        let mark = self.renew_below.load(Ordering::Relaxed);
        left < mark
            && self
                .renew_below
                .compare_exchange(mark, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }
}

/// The locked state of a lease; on drop its tokens go back to the
/// lock-free side.
pub(crate) struct LeaseGuard<'a> {
    state: MutexGuard<'a, LeaseState>,
    lease: &'a Lease,
}

impl std::ops::Deref for LeaseGuard<'_> {
    type Target = LeaseState;
    fn deref(&self) -> &LeaseState {
        &self.state
    }
}

impl std::ops::DerefMut for LeaseGuard<'_> {
    fn deref_mut(&mut self) -> &mut LeaseState {
        &mut self.state
    }
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        let lease = self.lease;
        lease
            .shared_remaining
            .store(self.state.shared_remaining, Ordering::Relaxed);
        lease
            .renew_below
            .store(self.state.renew_below(), Ordering::Relaxed);
        let tokens = std::mem::take(&mut self.state.tokens);
        lease.spare.fetch_add(tokens, Ordering::AcqRel);
    }
}

/// A bucket's name as the lease table keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedBucket {
    rule: Option<Box<str>>,
    key: ClientKey,
}

impl OwnedBucket {
    pub(crate) fn of(b: Bucket<'_>) -> Self {
        Self {
            rule: b.rule.map(Box::from),
            key: b.key.clone(),
        }
    }

    /// The client's (or the rule's) key.
    pub(crate) fn key(&self) -> &ClientKey {
        &self.key
    }

    /// The borrowed form, which names the bucket in Redis.
    pub(crate) fn as_bucket(&self) -> Bucket<'_> {
        Bucket {
            rule: self.rule.as_deref(),
            key: &self.key,
        }
    }
}

// Hashed as its borrowed form, so a lookup needs no owned key.
impl Hash for OwnedBucket {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.rule.as_deref().hash(h);
        self.key.hash(h);
    }
}

impl Hash for Bucket<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.rule.hash(h);
        self.key.hash(h);
    }
}

impl hashbrown::Equivalent<OwnedBucket> for Bucket<'_> {
    fn equivalent(&self, owned: &OwnedBucket) -> bool {
        self.rule == owned.rule.as_deref() && *self.key == owned.key
    }
}

/// Tokens taken back from idle leases, to be returned to Redis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Returned {
    /// The shared bucket.
    pub(crate) bucket: OwnedBucket,
    /// Tokens to give back.
    pub(crate) tokens: u32,
    /// The bucket's limits.
    pub(crate) limits: LeaseLimits,
}

/// One shard of the lease table: bucket → lease.
type Shard = hashbrown::HashMap<OwnedBucket, Arc<Lease>, foldhash::fast::RandomState>;

/// Every client's lease on this replica.
#[derive(Debug)]
pub(crate) struct Leases {
    /// Read-locked to find a lease, write-locked only to add or forget
    /// one: checks of one busy client from every proxy thread look it up
    /// at once without waiting on each other.
    shards: Box<[RwLock<Shard>]>,
    hasher: foldhash::fast::RandomState,
    /// Entries held, at most `max_entries`.
    entries: std::sync::atomic::AtomicUsize,
    max_entries: usize,
}

impl Leases {
    /// A table of at most `max_entries` clients (`rate_limit.max_clients`):
    /// a flood of fresh addresses cannot grow it without bound.
    pub(crate) fn new(max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(Shard::with_hasher(foldhash::fast::RandomState::default())))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            entries: std::sync::atomic::AtomicUsize::new(0),
            max_entries,
        }
    }

    fn shard(&self, bucket: Bucket<'_>) -> &RwLock<Shard> {
        let i = (self.hasher.hash_one(bucket) as usize) % self.shards.len();
        &self.shards[i]
    }

    /// `key`'s lease, made empty if it has none. With the table full, a
    /// new client gets a lease of its own that is not kept: it asks Redis
    /// for one token per request, as `exact` mode does, until entries are
    /// forgotten.
    pub(crate) fn get(&self, bucket: Bucket<'_>, limits: LeaseLimits) -> Arc<Lease> {
        let shard = self.shard(bucket);
        if let Some(lease) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&bucket)
        {
            return lease.clone();
        }
        let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(lease) = shard.get(&bucket) {
            return lease.clone();
        }
        let lease = Arc::new(Lease::new(Instant::now(), limits));
        if self.entries.load(Ordering::Relaxed) < self.max_entries {
            self.entries.fetch_add(1, Ordering::Relaxed);
            shard.insert(OwnedBucket::of(bucket), lease.clone());
        }
        lease
    }

    /// Takes back every lease idle since `idle_since` (all of them with
    /// `None`, at shutdown) and forgets entries with nothing leased that
    /// nobody has used since `forget_since` and nobody holds.
    pub(crate) fn sweep(
        &self,
        idle_since: Option<Instant>,
        forget_since: Instant,
    ) -> Vec<Returned> {
        let mut returned = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|key, lease| {
                let mut state = lease.state();
                let since = idle_since.unwrap_or(state.last_used);
                if let Some((tokens, limits)) = state.reclaim(since) {
                    returned.push(Returned {
                        bucket: key.clone(),
                        tokens,
                        limits,
                    });
                }
                // Only the table holds it (checked under the shard lock, so
                // nobody can take a new reference meanwhile): a lease
                // request in flight or a check about to spend keeps it.
                let idle = state.tokens == 0 && state.last_used <= forget_since;
                drop(state);
                let forget = idle && Arc::strong_count(lease) == 1;
                if forget {
                    self.entries.fetch_sub(1, Ordering::Relaxed);
                }
                !forget
            });
        }
        returned
    }

    /// The locks of the lease requests in flight now, for shutdown to
    /// wait for: a grant that lands after the last sweep would be kept by
    /// nobody.
    pub(crate) fn in_flight(&self) -> Vec<Arc<tokio::sync::Mutex<()>>> {
        let mut busy = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            busy.extend(
                shard
                    .values()
                    .filter(|l| l.fetching.try_lock().is_err())
                    .map(|l| l.fetching.clone()),
            );
        }
        busy
    }

    /// Clients with a lease entry (for tests and the admin view).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(100);

    fn client(id: &str) -> ClientKey {
        ClientKey::api(id).expect("key")
    }

    fn of(key: &ClientKey) -> Bucket<'_> {
        Bucket { rule: None, key }
    }

    fn limits(capacity: u32, rate: f64) -> LeaseLimits {
        LeaseLimits {
            capacity,
            emission_us: if rate > 0.0 { 1e6 / rate } else { 0.0 },
        }
    }

    fn arrive(state: &mut LeaseState, now: Instant, l: LeaseLimits) -> Local {
        state.note_demand(now);
        state.take(now, l, PERIOD, 1)
    }

    #[test]
    fn a_new_client_asks_for_one_token() {
        let now = Instant::now();
        let l = limits(20, 50.0);
        let mut state = LeaseState::new(now, l);
        assert_eq!(
            arrive(&mut state, now, l),
            Local::Fetch {
                want: 1,
                min: 1,
                wait_for: 1
            }
        );
    }

    #[test]
    fn demand_grows_the_lease_up_to_a_quarter_of_the_capacity() {
        let now = Instant::now();
        let l = limits(20, 50.0);
        let mut state = LeaseState::new(now, l);
        let mut wants = Vec::new();
        for i in 0..8 {
            let t = now + Duration::from_millis(i);
            match arrive(&mut state, t, l) {
                Local::Fetch { want, .. } => wants.push(want),
                other => panic!("no lease yet, got {other:?}"),
            }
        }
        assert_eq!(wants, [1, 2, 3, 4, 5, 5, 5, 5]);
    }

    #[test]
    fn a_lease_is_bounded_by_what_a_crash_may_strand() {
        let per_day = |n: f64| limits(1000, n / 86_400.0);
        // 1000/day: 5 s of refill is 0.06 tokens; 1 % of the capacity wins.
        assert_eq!(max_lease(per_day(1000.0)), 10);
        // Fast buckets keep the quarter of their capacity.
        assert_eq!(max_lease(limits(20, 50.0)), 5);
        assert_eq!(max_lease(limits(100, 1000.0)), 25);
        // Large and slow: 5 s of refill (50) is less than 1 % (100).
        assert_eq!(max_lease(limits(10_000, 10.0)), 100);
        // Large and quicker: 5 s of refill (500) beats 1 % (100).
        assert_eq!(max_lease(limits(10_000, 100.0)), 500);
        // Never below one token, whatever the limits.
        assert_eq!(max_lease(limits(3, 0.0)), 1);
        assert_eq!(max_lease(limits(1, 0.001)), 1);
    }

    #[test]
    fn a_busy_slow_quota_never_holds_more_than_the_crash_bound() {
        // 1000/day, flooded: demand says hundreds, but what the replica
        // holds plus what it asks for stays at most 10, renewals included.
        let now = Instant::now();
        let l = limits(1000, 1000.0 / 86_400.0);
        let mut state = LeaseState::new(now, l);
        let grant = |granted| Grant {
            granted,
            remaining: 500,
            wait: Some(Duration::ZERO),
        };
        let mut most = 0;
        for i in 0..400 {
            let t = now + Duration::from_millis(i);
            state.note_demand(t);
            match state.take(t, l, PERIOD, 1) {
                Local::Fetch { want, .. } => {
                    most = most.max(state.tokens + want);
                    assert!(state.granted(t, grant(want), 1));
                }
                Local::Spent { .. } => {}
                Local::Empty { .. } => panic!("Redis never said empty"),
            }
            if let Some((want, _)) = state.prefetch(PERIOD) {
                most = most.max(state.tokens + want);
                state.prefetched(t, Some(grant(want)));
            }
        }
        assert_eq!(
            most, 10,
            "held and asked for at most the bound, and reached it"
        );
    }

    #[test]
    fn leased_tokens_are_spent_locally_and_then_redis_is_asked_again() {
        let now = Instant::now();
        let l = limits(100, 10.0);
        let mut state = LeaseState::new(now, l);
        assert!(matches!(arrive(&mut state, now, l), Local::Fetch { .. }));
        let grant = Grant {
            granted: 3,
            remaining: 50,
            wait: Some(Duration::ZERO),
        };
        assert!(state.granted(now, grant, 1), "the asking request takes one");
        assert_eq!(arrive(&mut state, now, l), Local::Spent { remaining: 51 });
        assert_eq!(arrive(&mut state, now, l), Local::Spent { remaining: 50 });
        assert!(matches!(arrive(&mut state, now, l), Local::Fetch { .. }));
    }

    #[test]
    fn an_empty_bucket_is_refused_locally_until_redis_said() {
        let now = Instant::now();
        let l = limits(20, 50.0);
        let mut state = LeaseState::new(now, l);
        let _ = arrive(&mut state, now, l);
        let wait = Duration::from_millis(100);
        let grant = Grant {
            granted: 0,
            remaining: 0,
            wait: Some(wait),
        };
        assert!(!state.granted(now, grant, 1));
        let until = now + wait;
        for ms in [0, 50, 99] {
            let t = now + Duration::from_millis(ms);
            assert_eq!(arrive(&mut state, t, l), Local::Empty { until });
        }
        assert!(matches!(arrive(&mut state, until, l), Local::Fetch { .. }));
    }

    #[test]
    fn a_grant_that_empties_the_bucket_refuses_after_the_lease_is_spent() {
        let now = Instant::now();
        let l = limits(20, 50.0);
        let mut state = LeaseState::new(now, l);
        let _ = arrive(&mut state, now, l);
        let wait = Duration::from_millis(80);
        let grant = Grant {
            granted: 2,
            remaining: 0,
            wait: Some(wait),
        };
        assert!(state.granted(now, grant, 1));
        assert_eq!(arrive(&mut state, now, l), Local::Spent { remaining: 0 });
        assert_eq!(
            arrive(&mut state, now, l),
            Local::Empty { until: now + wait }
        );
    }

    #[test]
    fn a_large_lease_is_renewed_before_it_runs_out() {
        let now = Instant::now();
        let l = limits(1000, 100.0);
        let mut state = LeaseState::new(now, l);
        let _ = arrive(&mut state, now, l);
        let grant = Grant {
            granted: 8,
            remaining: 500,
            wait: Some(Duration::ZERO),
        };
        assert!(state.granted(now, grant, 1));
        let mut asked = Vec::new();
        for _ in 0..7 {
            assert!(matches!(arrive(&mut state, now, l), Local::Spent { .. }));
            asked.push(state.prefetch(PERIOD).is_some());
        }
        // 7 left after the grant; asked once 2 (a quarter of 8) were left,
        // and not again while that request is in flight.
        assert_eq!(asked, [false, false, false, false, true, false, false]);
        state.prefetched(now, Some(grant));
        assert!(matches!(
            arrive(&mut state, now, l),
            Local::Spent { remaining: 507 }
        ));
        // Small leases are not renewed ahead: one token is one call.
        let mut small = LeaseState::new(now, l);
        let _ = arrive(&mut small, now, l);
        small.granted(
            now,
            Grant {
                granted: 2,
                ..grant
            },
            1,
        );
        let _ = arrive(&mut small, now, l);
        assert_eq!(small.prefetch(PERIOD), None);
    }

    #[test]
    fn a_refused_replica_waits_for_about_one_period_of_tokens() {
        // 50/s and a 100 ms period: 5 tokens; never more than it wants.
        let l = limits(20, 50.0);
        assert_eq!(l.wait_for(5, PERIOD), 5);
        assert_eq!(l.wait_for(2, PERIOD), 2);
        // 1/s: one token is more than a period's worth; one is the least.
        assert_eq!(limits(100, 1.0).wait_for(25, PERIOD), 1);
        assert_eq!(limits(100, 0.0).wait_for(25, PERIOD), 1);
    }

    #[test]
    fn changed_limits_forget_the_empty_bucket() {
        let now = Instant::now();
        let l = limits(20, 50.0);
        let mut state = LeaseState::new(now, l);
        let _ = arrive(&mut state, now, l);
        state.granted(
            now,
            Grant {
                granted: 0,
                remaining: 0,
                wait: None,
            },
            1,
        );
        assert!(matches!(arrive(&mut state, now, l), Local::Empty { .. }));
        let raised = limits(40, 50.0);
        assert!(matches!(
            arrive(&mut state, now, raised),
            Local::Fetch { .. }
        ));
    }

    #[test]
    fn idle_leases_are_returned_and_idle_entries_forgotten() {
        let leases = Leases::new(100);
        let now = Instant::now();
        let l = limits(20, 50.0);
        let lease = leases.get(of(&client("a")), l);
        lease.state().note_demand(now);
        lease.state().granted(
            now,
            Grant {
                granted: 4,
                remaining: 10,
                wait: Some(Duration::ZERO),
            },
            1,
        );
        drop(lease);
        assert_eq!(
            leases.sweep(Some(now - IDLE_RETURN), now - FORGET_AFTER),
            []
        );
        let later = now + IDLE_RETURN;
        let returned = leases.sweep(Some(later - IDLE_RETURN), later - FORGET_AFTER);
        assert_eq!(
            returned,
            [Returned {
                bucket: OwnedBucket::of(of(&client("a"))),
                tokens: 3,
                limits: l
            }]
        );
        assert_eq!(leases.len(), 1, "kept until idle for FORGET_AFTER");
        let much_later = now + FORGET_AFTER;
        assert_eq!(leases.sweep(Some(much_later), much_later), []);
        assert_eq!(leases.len(), 0);
    }

    #[test]
    fn a_held_entry_is_not_forgotten() {
        let leases = Leases::new(100);
        let now = Instant::now();
        let held = leases.get(of(&client("a")), limits(20, 50.0));
        let later = now + FORGET_AFTER;
        leases.sweep(Some(later), later);
        assert_eq!(leases.len(), 1);
        drop(held);
        leases.sweep(Some(later), later);
        assert_eq!(leases.len(), 0);
    }

    #[test]
    fn a_full_table_hands_out_leases_it_does_not_keep() {
        let leases = Leases::new(1);
        let now = Instant::now();
        let l = limits(20, 50.0);
        let kept = leases.get(of(&client("a")), l);
        let extra = leases.get(of(&client("b")), l);
        assert_eq!(leases.len(), 1);
        assert!(!Arc::ptr_eq(&extra, &leases.get(of(&client("b")), l)));
        assert!(Arc::ptr_eq(&kept, &leases.get(of(&client("a")), l)));
        drop(kept);
        let later = now + FORGET_AFTER;
        leases.sweep(Some(later), later);
        let _ = leases.get(of(&client("b")), l);
        assert_eq!(leases.len(), 1, "room again once a was forgotten");
    }

    #[test]
    fn lock_free_spends_and_locked_state_never_lose_or_mint_a_token() {
        let leases = Leases::new(10);
        let l = limits(1_000_000, 1000.0);
        let lease = leases.get(of(&client("a")), l);
        let grant = Grant {
            granted: 100_000,
            remaining: 0,
            wait: Some(Duration::from_secs(60)),
        };
        assert!(lease.state().granted(Instant::now(), grant, 1));
        let spent = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while lease.spend(1).is_some() {
                        spent.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // Meanwhile the slow path locks the state again and again,
            // taking the tokens in and handing them back.
            s.spawn(|| {
                for _ in 0..20_000 {
                    let mut state = lease.state();
                    if let Local::Spent { .. } = state.take(Instant::now(), l, PERIOD, 1) {
                        spent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        });
        // Whatever the spenders left (the slow one may stop first).
        let left = lease.state().tokens;
        assert_eq!(spent.load(Ordering::Relaxed) + left, 99_999);
    }

    #[test]
    fn shutdown_returns_every_lease() {
        let leases = Leases::new(100);
        let now = Instant::now();
        let l = limits(20, 50.0);
        let lease = leases.get(of(&client("a")), l);
        lease.state().granted(
            now,
            Grant {
                granted: 2,
                remaining: 10,
                wait: Some(Duration::ZERO),
            },
            1,
        );
        drop(lease);
        let returned = leases.sweep(None, now);
        assert_eq!(returned.len(), 1);
        assert_eq!(returned[0].tokens, 1);
    }
}
