//! One limit per client across replicas, kept in Redis.
//!
//! Each check is one Lua script run atomically by Redis (GCRA: the key
//! holds the bucket's "theoretical arrival time" in microseconds of Redis's
//! own clock, so replicas with skewed clocks still agree). The key expires
//! when the bucket would be full again, which is when forgetting it changes
//! nothing; a client on a zero rate keeps a plain counter that never
//! expires, since its allowance never comes back.
//!
//! Redis is a dependency on the request path, so a failure must not stall
//! traffic: each check waits at most `rate_limit.shared.timeout`, and after
//! a failure Redis is left alone for [`RETRY_AFTER_FAILURE`] while the
//! configured policy decides (this replica's own buckets, or 503). The
//! local buckets are charged on every request either way, so a fallback
//! starts from this replica's recent traffic, not from full buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::Decision;

/// How long Redis is not asked again after a failed check.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

const SCRIPT: &str = r"
local capacity = tonumber(ARGV[1])
local emission = tonumber(ARGV[2])
if emission <= 0 then
  local used = tonumber(redis.call('GET', KEYS[1]) or '0')
  if used >= capacity then return {0, 0, -1} end
  redis.call('SET', KEYS[1], used + 1)
  return {1, capacity - used - 1, -1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tau = emission * capacity
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + emission
if new_tat - now > tau then
  return {0, 0, math.ceil(new_tat - tau - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((tau - (new_tat - now)) / emission + 1e-9)
local wait = 0
if remaining < capacity then
  wait = math.ceil(new_tat - tau + (remaining + 1) * emission - now)
end
return {1, remaining, wait}
";

/// Current levels of several shared buckets, without taking anything.
/// ARGV holds capacity and emission (µs) for each key in turn. Levels go
/// back as strings: Redis truncates Lua numbers to integers.
const LEVELS: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[2 * i - 1])
  local emission = tonumber(ARGV[2 * i])
  local level = capacity
  local v = redis.call('GET', key)
  if v then
    if emission <= 0 then
      level = capacity - tonumber(v)
    else
      local ahead = tonumber(v) - now
      if ahead > 0 then level = (emission * capacity - ahead) / emission end
    end
  end
  if level < 0 then level = 0 end
  out[i] = string.format('%.6f', level)
end
return out
";

/// Rows per levels query: bounds one script's run time inside Redis.
const LEVELS_BATCH: usize = 1000;

/// Why the shared limiter gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Redis failed or answered nonsense.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A recent failure; not asked until the pause is over.
    #[error("redis failed recently; not asked until the pause is over")]
    Paused,
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

/// The Redis side of shared limits.
pub struct SharedLimiter {
    connection: redis::aio::ConnectionManager,
    script: redis::Script,
    levels_script: redis::Script,
    prefix: String,
    timeout: Duration,
    started: Instant,
    /// Milliseconds since `started` until which Redis is not asked.
    paused_until_ms: AtomicU64,
}

impl std::fmt::Debug for SharedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SharedLimiter {
    /// A limiter on the Redis at `url`. Connects lazily (in the background
    /// runtime that calls this), so a Redis that is down at start-up only
    /// means the failure policy applies until it is up.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = redis::aio::ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            script: redis::Script::new(SCRIPT),
            levels_script: redis::Script::new(LEVELS),
            prefix: prefix.to_owned(),
            timeout,
            started: Instant::now(),
            paused_until_ms: AtomicU64::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Takes one token from `key`'s shared bucket, whose limits are those
    /// of `local` (the same client's local check, which knows its limits).
    pub async fn check(&self, key: &str, local: &Decision) -> Result<Decision, SharedError> {
        let emission_us = local
            .token_interval()
            .map_or(0.0, |t| t.as_secs_f64() * 1e6);
        let mut invocation = self.script.key(format!("{}{key}", self.prefix));
        invocation.arg(local.limit()).arg(emission_us);
        match self
            .invoke::<(i64, i64, i64)>(&invocation, self.timeout)
            .await
        {
            Ok((allowed, remaining, wait_us)) => {
                self.recovered();
                Ok(local.shared(
                    allowed == 1,
                    u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                    u64::try_from(wait_us).ok().map(Duration::from_micros),
                ))
            }
            Err(failure) => {
                if !matches!(failure, SharedError::Paused) {
                    self.failed(&failure);
                }
                Err(failure)
            }
        }
    }

    /// The shared levels (tokens, fractions included) of `buckets`, each
    /// named by its key and given its capacity and rate; takes nothing.
    /// For the admin API, so it reports the level every replica decides by.
    pub async fn levels(&self, buckets: &[(String, u32, f64)]) -> Result<Vec<f64>, SharedError> {
        // An admin listing may carry many keys: more time than one check.
        let wait = self.timeout.max(Duration::from_secs(1));
        let mut levels = Vec::with_capacity(buckets.len());
        for chunk in buckets.chunks(LEVELS_BATCH) {
            let mut invocation = self.levels_script.prepare_invoke();
            for (key, capacity, rate) in chunk {
                let emission_us = if *rate > 0.0 { 1e6 / rate } else { 0.0 };
                invocation
                    .key(format!("{}{key}", self.prefix))
                    .arg(*capacity)
                    .arg(emission_us);
            }
            let texts = self.invoke::<Vec<String>>(&invocation, wait).await?;
            levels.extend(texts.iter().map(|t| t.parse().unwrap_or(0.0)));
        }
        Ok(levels)
    }

    /// Runs a script within `wait`, unless Redis failed recently.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
        wait: Duration,
    ) -> Result<T, SharedError> {
        if self.now_ms() < self.paused_until_ms.load(Ordering::Relaxed) {
            return Err(SharedError::Paused);
        }
        let mut connection = self.connection.clone();
        match tokio::time::timeout(wait, invocation.invoke_async::<T>(&mut connection)).await {
            Ok(answer) => answer.map_err(SharedError::Redis),
            Err(_) => Err(SharedError::Timeout(wait)),
        }
    }

    fn failed(&self, error: &SharedError) {
        let until = self.now_ms() + RETRY_AFTER_FAILURE.as_millis() as u64;
        let before = self.paused_until_ms.swap(until, Ordering::Relaxed);
        if before == 0 {
            tracing::warn!(%error, pause_ms = RETRY_AFTER_FAILURE.as_millis() as u64, "shared rate limiter unavailable; applying rate_limit.shared.on_failure");
        }
        metrics::counter!(crate::telemetry::SHARED_LIMITER_FAILURES).increment(1);
    }

    fn recovered(&self) {
        if self.paused_until_ms.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!("shared rate limiter answering again");
        }
    }
}
