//! The Lua scripts Redis runs for shared limits, each atomic.
//!
//! A shared bucket is one key. With a rate it holds GCRA's "theoretical
//! arrival time" in microseconds of Redis's own clock (so replicas with
//! skewed clocks still agree): the bucket is full when that time is in the
//! past, and holds `(tau - (tat - now)) / emission` tokens otherwise, where
//! `tau = capacity * emission`. The key expires when the bucket would be
//! full again, which is when forgetting it changes nothing. A bucket that
//! never refills (zero rate) keeps a plain count of tokens used, which
//! never expires, since its allowance never comes back.

/// `exact` mode: takes `cost` tokens, all or none. ARGV: capacity,
/// emission (µs), cost. Returns `{allowed, remaining, wait_us}`
/// (`wait_us` -1: never).
pub(super) const CHECK: &str = r"
local capacity = tonumber(ARGV[1])
local emission = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if emission <= 0 then
  local used = tonumber(redis.call('GET', KEYS[1]) or '0')
  if used + cost > capacity then return {0, capacity - used, -1} end
  redis.call('SET', KEYS[1], used + cost)
  return {1, capacity - used - cost, -1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tau = emission * capacity
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * emission
if new_tat - now > tau then
  local remaining = math.floor((tau - (tat - now)) / emission + 1e-9)
  return {0, remaining, math.ceil(new_tat - tau - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((tau - (new_tat - now)) / emission + 1e-9)
local wait = 0
if remaining < capacity then
  wait = math.ceil(new_tat - tau + (remaining + 1) * emission - now)
end
return {1, remaining, wait}
";

/// `lease` mode: takes up to `want` tokens at once, or none if fewer than
/// `min` are there. ARGV: capacity, emission (µs), want, wait_for, min.
/// Returns `{granted, remaining, wait_us}`: when nothing was granted or
/// nothing is left, `wait_us` is the time until `wait_for` tokens are
/// back (-1: never), so the replica knows how long to refuse without
/// asking.
pub(super) const LEASE: &str = r"
local capacity = tonumber(ARGV[1])
local emission = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local wait_for = tonumber(ARGV[4])
local min = tonumber(ARGV[5])
if emission <= 0 then
  local used = tonumber(redis.call('GET', KEYS[1]) or '0')
  local n = math.min(want, capacity - used)
  if n < min then return {0, math.max(capacity - used, 0), -1} end
  redis.call('SET', KEYS[1], used + n)
  return {n, capacity - used - n, -1}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tau = emission * capacity
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local available = math.floor((tau - (tat - now)) / emission + 1e-9)
local n = math.min(want, available)
if n < min then n = 0 end
if n > 0 then
  tat = tat + n * emission
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
end
local remaining = available - n
if remaining < 0 then remaining = 0 end
local wait = 0
if n == 0 or remaining < 1 then
  wait = math.ceil(tat - tau + wait_for * emission - now)
  if wait < 0 then wait = 0 end
end
return {n, remaining, wait}
";

/// Gives leased tokens back, for several buckets at once. ARGV holds
/// capacity, emission (µs) and tokens for each key in turn. A bucket that
/// refilled meanwhile simply stays full: nothing goes above capacity.
pub(super) const GIVE_BACK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i, key in ipairs(KEYS) do
  local emission = tonumber(ARGV[3 * i - 1])
  local n = tonumber(ARGV[3 * i])
  local v = redis.call('GET', key)
  if v then
    if emission <= 0 then
      local used = tonumber(v) - n
      if used < 0 then used = 0 end
      redis.call('SET', key, used)
    else
      local tat = tonumber(v) - n * emission
      if tat <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
      end
    end
  end
end
return #KEYS
";

/// Current levels of several shared buckets, without taking anything.
/// ARGV holds capacity and emission (µs) for each key in turn. Levels go
/// back as strings: Redis truncates Lua numbers to integers.
pub(super) const LEVELS: &str = r"
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

/// A replica says it is alive and learns how many are. KEYS[1]: the
/// sorted set of replicas (member: id, score: Redis's time in ms of its
/// last heartbeat). ARGV: id, time to live (ms). Drops members not heard
/// from within the time to live and returns how many are left (this one
/// included). The set expires with its last member's heartbeat.
pub(super) const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - ttl))
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
";
