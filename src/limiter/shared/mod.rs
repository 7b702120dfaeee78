//! One limit per client across replicas, kept in Redis.
//!
//! Every shared bucket lives in Redis and is changed only by atomic Lua
//! scripts (`scripts`). Two modes (`rate_limit.shared.mode`):
//!
//! - `lease` (default): a replica takes a small batch of a client's tokens
//!   in one call and spends them locally, and refuses locally while Redis
//!   has said the bucket is empty (`lease`). Replicas never admit more
//!   than the shared bucket allows, since every token is taken from Redis
//!   before it is spent; the cost is tokens held unspent, bounded there.
//! - `exact`: one script call per request, the bucket's level always
//!   current in Redis.
//!
//! Redis is a dependency on the request path, so a failure must not stall
//! traffic: each call waits at most `rate_limit.shared.timeout`. A call
//! that finds its connection broken (a Redis restart) is tried once more on
//! a fresh one within that time, since the next connection usually works.
//! After a failure Redis is left alone for [`RETRY_AFTER_FAILURE`] while
//! the configured policy decides: 503, or this replica's share of each
//! bucket (`fallback`), never the whole bucket, since every replica falls
//! back at once. Replicas learn how many they are from heartbeats in Redis
//! (`upkeep`). Tokens already leased are still spent while Redis is away:
//! they were taken from the shared bucket.
//!
//! Redis may be one server, a Redis Cluster or a master found through
//! Sentinel (`connection`). On a cluster every bucket's key carries its
//! client's key as a hash tag (`prefix{ip:…}`, `prefix rule:<name>:{ip:…}`),
//! so all of a client's buckets share one slot, and a script that touches
//! several keys is sent for one client's keys at a time.

mod connection;
mod fallback;
pub mod lease;
mod scripts;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use self::connection::Connection;
use self::fallback::{Census, Shares};
use self::lease::{Grant, Lease, LeaseLimits, Leases, Local, OwnedBucket, Returned};
use super::{ClientKey, Decision};
use crate::shutdown::Ticks;
use crate::telemetry;

pub use self::connection::{RedisTarget, RedisUrlError, MASTER_RECHECK};
pub use self::fallback::{HEARTBEAT, REPLICA_TTL};
pub use self::lease::{CRASH_REFILL, FORGET_AFTER, HORIZON, IDLE_RETURN};

/// How long Redis is not asked again after a failed check.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Rows per levels query: bounds one script's run time inside Redis.
const LEVELS_BATCH: usize = 1000;

/// Script calls in flight at once for a batch split by client (a
/// cluster's levels and give-backs).
const CLUSTER_CALLS_AT_ONCE: usize = 32;

/// Why the shared limiter gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Redis failed or answered nonsense. (Scrubbed: the client's errors
    /// may quote the URL, password and all.)
    #[error("redis: {}", crate::redact::Scrubbed(.0))]
    Redis(#[from] redis::RedisError),
    /// No answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A recent failure; not asked until the pause is over.
    #[error("redis failed recently; not asked until the pause is over")]
    Paused,
    /// The task asking Redis for a lease ended without an answer (the
    /// runtime is shutting down).
    #[error("the lease request was cancelled")]
    Lost,
}

/// What a request gets while Redis cannot answer
/// (`rate_limit.shared.on_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Decide with this replica's own buckets.
    Local,
    /// Answer 503.
    Reject,
}

impl OnFailure {
    /// The policy's name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Reject => "reject",
        }
    }
}

/// Which shared bucket a check is for: a client's own, or a rule's for a
/// key. Borrowed, so that a check answered from a lease builds no name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket<'a> {
    /// `None`: the client's own bucket; else the rule's name.
    pub rule: Option<&'a str>,
    /// The client's key, or the rule's key for the request.
    pub key: &'a ClientKey,
}

impl Bucket<'_> {
    /// The bucket's Redis key without the prefix: `ip:…` / `key:…` /
    /// `net:…` for clients, `rule:<name>:<key>` for rules.
    pub fn name(&self) -> String {
        match self.rule {
            None => self.key.encode(),
            Some(rule) => format!("rule:{rule}:{}", self.key.encode()),
        }
    }

    /// The name on a Redis Cluster: the key in braces, a hash tag, so
    /// that every bucket of one key hashes to one slot (`{ip:…}`,
    /// `rule:<name>:{ip:…}`). An encoded key is never empty and starts
    /// the same in every bucket of the key, so whatever it holds (a `}`
    /// in an API key), the tag Redis reads is the same for all of them.
    pub fn tagged_name(&self) -> String {
        match self.rule {
            None => format!("{{{}}}", self.key.encode()),
            Some(rule) => format!("rule:{rule}:{{{}}}", self.key.encode()),
        }
    }
}

/// How replicas spend a shared limit (`rate_limit.shared.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedMode {
    /// Lease small batches of tokens and spend them locally; refuse
    /// locally while Redis has said the bucket is empty.
    #[default]
    Lease,
    /// One Redis round trip per request.
    Exact,
}

impl SharedMode {
    /// The mode's name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lease => "lease",
            Self::Exact => "exact",
        }
    }
}

/// What one replica's shared limiter has done since it started: for
/// tests, benchmarks and the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Script calls sent to Redis for checks and leases (not levels or
    /// give-backs).
    pub calls: u64,
    /// Tokens Redis leased to this replica.
    pub leased: u64,
    /// Requests refused without asking Redis, because it had said the
    /// bucket was empty.
    pub local_refusals: u64,
    /// Leased tokens given back to Redis unspent.
    pub returned: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    leased: AtomicU64,
    local_refusals: AtomicU64,
    returned: AtomicU64,
}

/// The Redis side of shared limits.
pub struct SharedLimiter {
    connection: Connection,
    /// A Redis Cluster: keys carry hash tags, multi-key scripts go one
    /// client at a time.
    cluster: bool,
    check_script: redis::Script,
    lease_script: redis::Script,
    give_back_script: redis::Script,
    levels_script: redis::Script,
    heartbeat_script: redis::Script,
    prefix: String,
    /// This replica's name in the set of live replicas.
    id: String,
    /// Live replicas seen at the last heartbeats (0: none answered yet).
    replicas: AtomicU32,
    /// This replica's share of each bucket during an outage.
    shares: Shares,
    timeout: Duration,
    mode: SharedMode,
    /// Refused replicas wait for about this much refill before asking
    /// again (`rate_limit.refill_interval`).
    period: Duration,
    leases: Leases,
    counters: Counters,
    started: Instant,
    /// Milliseconds since `started` until which Redis is not asked.
    paused_until_ms: AtomicU64,
    /// The key of the last check that failed: on a cluster, the pause ends
    /// when its slot answers, not when the heartbeat's (another master's)
    /// does.
    failed_key: std::sync::Mutex<Option<String>>,
    /// Where calls, leases and failures are counted.
    metrics: telemetry::Metrics,
    /// Log lines about outages and recoveries.
    outages: telemetry::Throttle,
    recoveries: telemetry::Throttle,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Where a shared limiter finds Redis and how it uses it.
#[derive(Debug, Clone)]
pub struct SharedOptions {
    /// `redis://host:port[/db]`, `redis+cluster://h1:p1,h2:p2,...` or
    /// `redis+sentinel://s1:p1,s2:p2,.../master[/db]` ([`RedisTarget`]).
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// Time Redis has to answer one call.
    pub timeout: Duration,
    /// Lease or exact.
    pub mode: SharedMode,
    /// `rate_limit.refill_interval`: how often a refused replica asks.
    pub period: Duration,
    /// `rate_limit.max_clients`: most clients with a lease on this replica.
    pub max_leases: usize,
}

impl SharedLimiter {
    /// A limiter on the Redis at `options.url`. Connects lazily (in the
    /// background runtime that calls this), so a Redis that is down at
    /// start-up only means the failure policy applies until it is up.
    pub fn new(options: SharedOptions) -> Result<Self, RedisUrlError> {
        let timeout = options.timeout;
        let target = RedisTarget::parse(&options.url)?;
        let connection = Connection::open(&target, timeout)?;
        Ok(Self {
            connection,
            cluster: target.is_cluster(),
            check_script: redis::Script::new(scripts::CHECK),
            lease_script: redis::Script::new(scripts::LEASE),
            give_back_script: redis::Script::new(scripts::GIVE_BACK),
            levels_script: redis::Script::new(scripts::LEVELS),
            heartbeat_script: redis::Script::new(scripts::HEARTBEAT),
            prefix: options.prefix,
            id: format!("{:016x}", rand::random::<u64>()),
            replicas: AtomicU32::new(0),
            shares: Shares::new(options.max_leases),
            timeout,
            mode: options.mode,
            period: options.period.max(Duration::from_millis(1)),
            leases: Leases::new(options.max_leases),
            counters: Counters::default(),
            started: Instant::now(),
            paused_until_ms: AtomicU64::new(0),
            failed_key: std::sync::Mutex::new(None),
            metrics: telemetry::Metrics::default(),
            outages: telemetry::Throttle::new(),
            recoveries: telemetry::Throttle::new(),
        })
    }

    /// The same limiter, counting its calls, leases and failures in
    /// `metrics` (the running tollgate's).
    pub fn with_metrics(mut self, metrics: telemetry::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The mode this limiter runs in.
    pub fn mode(&self) -> SharedMode {
        self.mode
    }

    /// What this replica has asked of Redis so far.
    pub fn stats(&self) -> SharedStats {
        let c = &self.counters;
        SharedStats {
            calls: c.calls.load(Ordering::Relaxed),
            leased: c.leased.load(Ordering::Relaxed),
            local_refusals: c.local_refusals.load(Ordering::Relaxed),
            returned: c.returned.load(Ordering::Relaxed),
        }
    }

    /// Clients this replica holds lease state for.
    pub fn lease_entries(&self) -> usize {
        self.leases.len()
    }

    /// Live replicas this one counts while Redis is away (the largest
    /// count its heartbeats saw over [`REPLICA_TTL`]); 0 before any
    /// heartbeat was answered.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// The decision of `on_failure: local` for a check Redis could not
    /// answer: `local` (this replica's own bucket, charged already) must
    /// admit, and so must this replica's share of the shared bucket, its
    /// capacity and rate divided by the live replicas last seen. A
    /// replica that never heard from Redis knows of no other and uses the
    /// whole bucket.
    pub fn fallback(&self, bucket: Bucket<'_>, local: &Decision, cost: u32) -> Decision {
        if !local.allowed() {
            return *local;
        }
        let replicas = self.replicas().max(1);
        // The level before this request took its cost.
        let own_level = local.remaining().saturating_add(cost);
        let answer = self
            .shares
            .take(bucket, lease_limits(local), replicas, own_level, cost);
        local.shared(answer.allowed, answer.remaining, answer.reset)
    }

    /// Gives back `cost` tokens [`SharedLimiter::fallback`] took for a
    /// request that another bucket refused.
    pub fn refund_fallback(&self, bucket: Bucket<'_>, cost: u32) {
        self.shares.refund(bucket, cost);
    }

    /// Takes `cost` tokens (all or none) from `key`'s shared bucket,
    /// whose limits are those of `local` (the same bucket's local check,
    /// which knows its limits).
    pub async fn check(
        self: &Arc<Self>,
        bucket: Bucket<'_>,
        local: &Decision,
        cost: u32,
    ) -> Result<Decision, SharedError> {
        match self.try_local(bucket, local, cost) {
            Some(decided) => Ok(decided),
            None => self.check_remote(bucket, local, cost).await,
        }
    }

    /// The part of [`SharedLimiter::check`] that needs no Redis: in
    /// `lease` mode, a leased token spent or a local refusal; `None` when
    /// Redis must be asked ([`SharedLimiter::check_remote`], which must
    /// then follow). Synchronous, so the request path only builds the
    /// Redis exchange's future when there is one.
    pub fn try_local(
        self: &Arc<Self>,
        bucket: Bucket<'_>,
        local: &Decision,
        cost: u32,
    ) -> Option<Decision> {
        if self.mode != SharedMode::Lease {
            return None;
        }
        let limits = lease_limits(local);
        let lease = self.leases.get(bucket, limits);
        // The common case: a token on the lock-free side of the lease.
        if let Some((left, shared_remaining)) = lease.spend(cost) {
            if lease.due_for_renewal(left) {
                let renew = {
                    let mut state = lease.state();
                    state.prefetch(self.period)
                };
                if let Some((want, wait_for)) = renew {
                    self.renew(bucket, lease, limits, want, wait_for);
                }
            }
            let remaining = left.saturating_add(shared_remaining).min(limits.capacity);
            return Some(local.shared(true, remaining, spent_reset(local, remaining)));
        }
        let now = Instant::now();
        let (step, renew) = {
            let mut state = lease.state();
            state.note_demand(now);
            let step = state.take(now, limits, self.period, cost);
            let renew = match step {
                Local::Spent { .. } => state.prefetch(self.period),
                _ => None,
            };
            (step, renew)
        };
        if let Some((want, wait_for)) = renew {
            self.renew(bucket, lease, limits, want, wait_for);
        }
        self.local_answer(step, local, now)
    }

    /// Asks Redis for the next lease in a task of its own while checks
    /// spend what is left of this one; skipped if a lease request is
    /// already in flight.
    fn renew(
        self: &Arc<Self>,
        bucket: Bucket<'_>,
        lease: Arc<Lease>,
        limits: LeaseLimits,
        want: u32,
        wait_for: u32,
    ) {
        let Ok(one_at_a_time) = lease.fetching.clone().try_lock_owned() else {
            lease.state().prefetched(Instant::now(), None);
            return;
        };
        let limiter = self.clone();
        let name = self.key(bucket);
        tokio::spawn(async move {
            let _one_at_a_time = one_at_a_time;
            let grant = limiter
                .request_lease(name, limits, want, wait_for, 1)
                .await
                .ok();
            lease.state().prefetched(Instant::now(), grant);
        });
    }

    /// Asks Redis: one check in `exact` mode, a lease request in `lease`
    /// mode (after [`SharedLimiter::try_local`] said so).
    pub async fn check_remote(
        self: &Arc<Self>,
        bucket: Bucket<'_>,
        local: &Decision,
        cost: u32,
    ) -> Result<Decision, SharedError> {
        // In the pause, without queueing behind the client's lease request
        // or spawning one: the failure policy answers at once.
        if self.paused() {
            return Err(SharedError::Paused);
        }
        match self.mode {
            SharedMode::Exact => self.check_exact(bucket, local, cost).await,
            SharedMode::Lease => self.lease(bucket, local, cost).await,
        }
    }

    /// Gives back `cost` tokens a check of `key` took, for a request that
    /// another bucket refused: into the lease in `lease` mode, to Redis
    /// (in a task of its own, so the refusal is not delayed) in `exact`.
    pub fn refund(self: &Arc<Self>, bucket: Bucket<'_>, local: &Decision, cost: u32) {
        let limits = lease_limits(local);
        match self.mode {
            SharedMode::Lease => {
                let lease = self.leases.get(bucket, limits);
                lease.state().refund(cost);
            }
            SharedMode::Exact => {
                let limiter = self.clone();
                let returned = vec![Returned {
                    bucket: OwnedBucket::of(bucket),
                    tokens: cost,
                    limits,
                }];
                tokio::spawn(async move { limiter.give_back(returned).await });
            }
        }
    }

    async fn check_exact(
        &self,
        bucket: Bucket<'_>,
        local: &Decision,
        cost: u32,
    ) -> Result<Decision, SharedError> {
        let key = self.key(bucket);
        let mut invocation = self.check_script.key(&key);
        invocation
            .arg(local.limit())
            .arg(emission_us(local))
            .arg(cost);
        let answer = self.call::<(i64, i64, i64)>(&invocation, &key).await?;
        let (allowed, remaining, wait_us) = answer;
        Ok(local.shared(
            allowed == 1,
            u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
            u64::try_from(wait_us).ok().map(Duration::from_micros),
        ))
    }

    /// Leases tokens for a check its lease could not answer.
    async fn lease(
        self: &Arc<Self>,
        bucket: Bucket<'_>,
        local: &Decision,
        cost: u32,
    ) -> Result<Decision, SharedError> {
        let limits = lease_limits(local);
        let lease = self.leases.get(bucket, limits);
        // One lease request at a time: whoever holds the lock is asking
        // Redis; the others wait here and then find its tokens.
        let guard = lease.fetching.clone().lock_owned().await;
        let now = Instant::now();
        let again = lease.state().take(now, limits, self.period, cost);
        let Local::Fetch {
            want,
            min,
            wait_for,
        } = again
        else {
            return Ok(self
                .local_answer(again, local, now)
                .unwrap_or_else(|| local.shared(false, 0, None)));
        };
        // The exchange runs in a task of its own, so a client that goes
        // away mid-request does not drop a grant on the floor.
        let limiter = self.clone();
        let name = self.key(bucket);
        let fetch = tokio::spawn(async move {
            let _one_at_a_time = guard;
            let grant = limiter
                .request_lease(name, limits, want, wait_for, min)
                .await?;
            let mut state = lease.state();
            let allowed = state.granted(Instant::now(), grant, cost);
            Ok::<_, SharedError>((allowed, state.level(), grant.wait))
        });
        let (allowed, level, wait) = fetch.await.map_err(|_| SharedError::Lost)??;
        if allowed {
            Ok(local.shared(true, level, spent_reset(local, level)))
        } else {
            let reset = wait.filter(|_| limits.emission_us > 0.0);
            Ok(local.shared(false, 0, reset))
        }
    }

    /// One lease script call for the bucket named `name` (prefix
    /// included), counted.
    async fn request_lease(
        &self,
        name: String,
        limits: LeaseLimits,
        want: u32,
        wait_for: u32,
        min: u32,
    ) -> Result<Grant, SharedError> {
        let mut invocation = self.lease_script.key(&name);
        invocation
            .arg(limits.capacity)
            .arg(limits.emission_us)
            .arg(want)
            .arg(wait_for)
            .arg(min);
        let grant = to_grant(self.call::<(i64, i64, i64)>(&invocation, &name).await?);
        let leased = u64::from(grant.granted);
        self.counters.leased.fetch_add(leased, Ordering::Relaxed);
        self.metrics
            .counter(telemetry::SHARED_LIMITER_LEASED, &[])
            .increment(leased);
        Ok(grant)
    }

    /// The decision for a check the lease answers by itself; `None` when
    /// Redis must be asked.
    fn local_answer(&self, step: Local, local: &Decision, now: Instant) -> Option<Decision> {
        match step {
            Local::Spent { remaining } => {
                Some(local.shared(true, remaining, spent_reset(local, remaining)))
            }
            Local::Empty { until } => {
                self.counters.local_refusals.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .counter(telemetry::SHARED_LIMITER_LOCAL_REFUSALS, &[])
                    .increment(1);
                let reset = local
                    .token_interval()
                    .map(|_| until.saturating_duration_since(now));
                Some(local.shared(false, 0, reset))
            }
            Local::Fetch { .. } => None,
        }
    }

    /// Says in Redis that this replica is alive every [`HEARTBEAT`] and
    /// counts the live ones, for [`SharedLimiter::fallback`]; in `lease`
    /// mode also gives back leases idle for [`IDLE_RETURN`] and forgets
    /// idle entries, every `period`. At `shutdown` it gives back every
    /// lease, so a replica stopped in order keeps nothing, and leaves the
    /// set of live replicas.
    pub async fn upkeep(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let lease = self.mode == SharedMode::Lease;
        let every = self.period.max(Duration::from_millis(100));
        let mut ticks = Ticks::every(every, tokio::time::MissedTickBehavior::Skip, shutdown);
        let mut census = Census::default();
        let mut next_heartbeat = Instant::now();
        let mut counted = false;
        loop {
            let now = Instant::now();
            // In the pause after a failure the heartbeat is also the
            // probe: every tick, within the checks' timeout, and its
            // answer ends the pause (on a cluster, with the failed key's
            // slot answering too). A Redis back after a restart or a
            // stall then gets the checks again a tick later, not a whole
            // pause later, so the fallback lasts as long as the trouble.
            let probe = self.paused();
            if probe || now >= next_heartbeat {
                next_heartbeat = now + HEARTBEAT;
                let mut beat = false;
                let _ = ticks
                    .unless_stopped(async { beat = self.heartbeat(&mut census, probe).await })
                    .await;
                counted = beat;
                if probe && self.answers_again(beat).await {
                    self.recovered();
                }
            }
            if lease {
                let idle = self.leases.sweep(
                    now.checked_sub(IDLE_RETURN),
                    now.checked_sub(FORGET_AFTER).unwrap_or(now),
                );
                let _ = ticks.unless_stopped(self.give_back(idle)).await;
            }
            if !ticks.next().await {
                break;
            }
        }
        // A lease request still in flight would land after the sweep.
        let busy = self.leases.in_flight();
        let wait = self.timeout.max(Duration::from_secs(1));
        let _ = tokio::time::timeout(wait, async {
            for lock in busy {
                let _ = lock.lock().await;
            }
        })
        .await;
        let all = self.leases.sweep(None, Instant::now());
        let count: u64 = all.iter().map(|r| u64::from(r.tokens)).sum();
        self.give_back(all).await;
        if count > 0 {
            tracing::debug!(tokens = count, "leased tokens given back at shutdown");
        }
        // Not when Redis failed lately: the entry expires by itself, and
        // the connection may be waiting to reconnect on a runtime that is
        // gone by now.
        if counted && !self.paused() {
            self.leave().await;
        }
    }

    /// One heartbeat: this replica is alive, and this many are; `true`
    /// if Redis answered. As a `probe` (in the pause) it has the checks'
    /// timeout: an answer must mean that checks would get one.
    async fn heartbeat(&self, census: &mut Census, probe: bool) -> bool {
        let mut invocation = self.heartbeat_script.key(self.replicas_key());
        invocation
            .arg(&self.id)
            .arg(u64::try_from(REPLICA_TTL.as_millis()).unwrap_or(u64::MAX));
        let wait = if probe {
            self.timeout
        } else {
            self.timeout.max(Duration::from_secs(1))
        };
        match self.send::<u32>(&invocation, wait).await {
            Ok(count) => {
                let counted = census.saw(Instant::now(), count);
                let before = self.replicas.swap(counted, Ordering::Relaxed);
                if before != counted {
                    tracing::debug!(replicas = counted, "live replicas sharing limits");
                }
                self.metrics
                    .gauge(telemetry::SHARED_LIMITER_REPLICAS, &[])
                    .set(f64::from(counted));
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat not recorded");
                false
            }
        }
    }

    /// Leaves the set of live replicas, so that the others stop counting
    /// this one.
    async fn leave(&self) {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("ZREM");
        command.arg(self.replicas_key()).arg(&self.id);
        let leave = command.query_async::<i64>(&mut connection);
        let wait = self.timeout.max(Duration::from_secs(1));
        if let Ok(Err(e)) = tokio::time::timeout(wait, leave).await {
            tracing::debug!(error = %e, "not removed from the live replicas");
        }
    }

    /// The sorted set of live replicas (no bucket name starts this way).
    fn replicas_key(&self) -> String {
        format!("{}replicas", self.prefix)
    }

    /// The full Redis key of `bucket`: the prefix, then its name, tagged
    /// on a cluster.
    fn key(&self, bucket: Bucket<'_>) -> String {
        if self.cluster {
            format!("{}{}", self.prefix, bucket.tagged_name())
        } else {
            format!("{}{}", self.prefix, bucket.name())
        }
    }

    /// The positions in `keys` that one multi-key script call may take
    /// together: up to [`LEVELS_BATCH`] of them on one server; on a
    /// cluster those of one client (their keys share a slot).
    fn batches(&self, keys: &[&ClientKey]) -> Vec<Vec<usize>> {
        if !self.cluster {
            let all: Vec<usize> = (0..keys.len()).collect();
            return all.chunks(LEVELS_BATCH).map(<[usize]>::to_vec).collect();
        }
        let mut of_client: hashbrown::HashMap<&ClientKey, usize> = hashbrown::HashMap::new();
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let at = *of_client.entry(key).or_insert_with(|| {
                batches.push(Vec::new());
                batches.len() - 1
            });
            batches[at].push(i);
        }
        batches
    }

    /// Returns leased tokens to Redis; on failure they are lost (never
    /// more than the leases held).
    async fn give_back(&self, returned: Vec<Returned>) {
        let keys: Vec<&ClientKey> = returned.iter().map(|r| r.bucket.key()).collect();
        let batches = self.batches(&keys);
        for some in batches.chunks(CLUSTER_CALLS_AT_ONCE) {
            let calls = some.iter().map(|batch| {
                let chunk: Vec<&Returned> = batch.iter().map(|&i| &returned[i]).collect();
                self.give_back_batch(chunk)
            });
            futures_util::future::join_all(calls).await;
        }
    }

    /// One give-back script call for `chunk`, whose keys share a slot on a
    /// cluster.
    async fn give_back_batch(&self, chunk: Vec<&Returned>) {
        let mut invocation = self.give_back_script.prepare_invoke();
        for r in &chunk {
            invocation
                .key(self.key(r.bucket.as_bucket()))
                .arg(r.limits.capacity)
                .arg(r.limits.emission_us)
                .arg(r.tokens);
        }
        let wait = self.timeout.max(Duration::from_secs(1));
        match self.invoke::<i64>(&invocation, wait).await {
            Ok(_) => {
                let n: u64 = chunk.iter().map(|r| u64::from(r.tokens)).sum();
                self.counters.returned.fetch_add(n, Ordering::Relaxed);
                self.metrics
                    .counter(telemetry::SHARED_LIMITER_RETURNED, &[])
                    .increment(n);
            }
            Err(e) => {
                tracing::debug!(error = %e, leases = chunk.len(), "leased tokens not given back");
            }
        }
    }

    /// The shared levels (tokens, fractions included) of `buckets`, each
    /// given its capacity and rate (per second); takes nothing. For the
    /// admin API, so it reports the level every replica decides by
    /// (tokens leased to replicas and not yet spent are not in it).
    pub async fn levels(
        &self,
        buckets: &[(Bucket<'_>, u32, f64)],
    ) -> Result<Vec<f64>, SharedError> {
        // An admin listing may carry many keys: more time than one check.
        let wait = self.timeout.max(Duration::from_secs(1));
        let keys: Vec<&ClientKey> = buckets.iter().map(|(b, _, _)| b.key).collect();
        let batches = self.batches(&keys);
        let mut answers = Vec::with_capacity(batches.len());
        for some in batches.chunks(CLUSTER_CALLS_AT_ONCE) {
            let calls = some.iter().map(|batch| {
                let mut invocation = self.levels_script.prepare_invoke();
                for &i in batch {
                    let (bucket, capacity, rate) = &buckets[i];
                    let emission_us = if *rate > 0.0 { 1e6 / rate } else { 0.0 };
                    invocation
                        .key(self.key(*bucket))
                        .arg(*capacity)
                        .arg(emission_us);
                }
                async move { self.invoke::<Vec<String>>(&invocation, wait).await }
            });
            answers.extend(futures_util::future::join_all(calls).await);
        }
        let mut levels = vec![0.0; buckets.len()];
        for (batch, texts) in batches.iter().zip(answers) {
            for (&i, t) in batch.iter().zip(texts?) {
                levels[i] = t.parse().unwrap_or(0.0);
            }
        }
        Ok(levels)
    }

    /// One check's or lease's script call on `key`: counted, bounded by
    /// the timeout, and recorded as a failure or a recovery.
    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        key: &str,
    ) -> Result<T, SharedError> {
        let started = Instant::now();
        let mut answer = self.invoke::<T>(invocation, self.timeout).await;
        let left = self.timeout.saturating_sub(started.elapsed());
        if let (Err(SharedError::Redis(e)), false) = (&answer, left.is_zero()) {
            if e.is_connection_dropped() || e.is_unrecoverable_error() {
                // The connection manager has started a new connection; a
                // restarted Redis is usually there already. If the lost
                // call did run, the retry takes its tokens a second time:
                // fewer admitted, never more.
                tracing::debug!(error = %e, "redis connection lost; retrying once on a new one");
                self.metrics
                    .counter(telemetry::SHARED_LIMITER_RETRIES, &[])
                    .increment(1);
                answer = self.invoke::<T>(invocation, left).await;
            }
        }
        if !matches!(answer, Err(SharedError::Paused)) {
            self.counters.calls.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .counter(
                    telemetry::SHARED_LIMITER_CALLS,
                    &[("mode", self.mode.as_str())],
                )
                .increment(1);
        }
        match &answer {
            Ok(_) => self.recovered(),
            Err(SharedError::Paused) => {}
            Err(failure) => {
                if self.cluster {
                    *self
                        .failed_key
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key.to_owned());
                }
                self.failed(failure);
            }
        }
        answer
    }

    /// In the pause, after a heartbeat (`beat`: answered): whether the
    /// checks would be answered again. On one server (or its Sentinel
    /// master) the heartbeat's answer says so; on a cluster the failed
    /// check's slot may be on another master than the heartbeat's, so that
    /// key is read (levels script, which takes nothing) as well.
    async fn answers_again(&self, beat: bool) -> bool {
        let key = self
            .failed_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(key) = key.filter(|_| self.cluster) else {
            return beat;
        };
        let mut invocation = self.levels_script.key(&key);
        invocation.arg(1).arg(0);
        self.send::<Vec<String>>(&invocation, self.timeout)
            .await
            .is_ok()
    }

    /// Runs a script within `wait`, unless Redis failed recently.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        wait: Duration,
    ) -> Result<T, SharedError> {
        if self.paused() {
            return Err(SharedError::Paused);
        }
        self.send(invocation, wait).await
    }

    /// Runs a script within `wait`, paused or not.
    async fn send<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        wait: Duration,
    ) -> Result<T, SharedError> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(wait, invocation.invoke_async::<T>(&mut connection)).await {
            Ok(answer) => answer.map_err(SharedError::Redis),
            Err(_) => {
                self.connection.stalled();
                Err(SharedError::Timeout(wait))
            }
        }
    }

    /// Within the pause after a failure: Redis is not asked.
    fn paused(&self) -> bool {
        self.now_ms() < self.paused_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, error: &SharedError) {
        let until = self.now_ms() + RETRY_AFTER_FAILURE.as_millis() as u64;
        let before = self.paused_until_ms.swap(until, Ordering::Relaxed);
        if before == 0 {
            // Outages that come and go (a loaded Redis) log once per quiet
            // period, with a count.
            self.outages.note(|more| {
                tracing::warn!(%error, pause_ms = RETRY_AFTER_FAILURE.as_millis() as u64, outages_not_logged = more, "shared rate limiter unavailable; applying rate_limit.shared.on_failure");
            });
        }
        self.metrics
            .counter(telemetry::SHARED_LIMITER_FAILURES, &[])
            .increment(1);
    }

    fn recovered(&self) {
        if self.paused_until_ms.swap(0, Ordering::Relaxed) != 0 {
            // The next outage starts its shares from the levels of then.
            self.shares.clear();
            self.recoveries.note(|more| {
                tracing::info!(
                    recoveries_not_logged = more,
                    "shared rate limiter answering again"
                );
            });
        }
    }
}

/// A lease script's `{granted, remaining, wait_us}`.
fn to_grant((granted, remaining, wait_us): (i64, i64, i64)) -> Grant {
    Grant {
        granted: u32::try_from(granted.max(0)).unwrap_or(0),
        remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
        wait: u64::try_from(wait_us).ok().map(Duration::from_micros),
    }
}

fn lease_limits(local: &Decision) -> LeaseLimits {
    LeaseLimits {
        capacity: local.limit(),
        emission_us: emission_us(local),
    }
}

/// Microseconds per token of `local`'s limits; 0 when it never refills.
fn emission_us(local: &Decision) -> f64 {
    local
        .token_interval()
        .map_or(0.0, |t| t.as_secs_f64() * 1e6)
}

/// `t` of the headers after a leased token was spent: none when full, at
/// most one token's time otherwise (the replica does not know how far the
/// shared bucket is into the next token).
fn spent_reset(local: &Decision, remaining: u32) -> Option<Duration> {
    if remaining >= local.limit() {
        return Some(Duration::ZERO);
    }
    local.token_interval()
}
