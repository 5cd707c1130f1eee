//! Rate limits (fixed window) and quota leases.

use super::*;

/// Fixed window counter: INCR, and start the window on the first hit.
pub(super) const RATE_LUA: &str = r"
local c = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {c, ttl}
";

/// Take a quota lease from a fixed window (KEYS: the lease counter; ARGV: limit, window ms,
/// want). One key, so it is atomic and Cluster-safe. The window opens at the first lease
/// (`SET .. PX`) and later leases add with `INCRBY`, which keeps the TTL. A key without a
/// TTL (never written so by us) is treated as no window. Returns {granted, used, ttl ms}.
pub(super) const LEASE_LUA: &str = r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local ttl = redis.call('PTTL', KEYS[1])
local used = 0
if ttl > 0 then
  used = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
end
local g = limit - used
if g > want then g = want end
if g < 0 then g = 0 end
if ttl > 0 then
  if g > 0 then redis.call('INCRBY', KEYS[1], g) end
else
  ttl = window
  redis.call('SET', KEYS[1], g, 'PX', window)
end
return {g, used + g, ttl}
";

pub(super) async fn rate_limit(
    db: &RedisStore,
    key: &str,
    limit: u64,
    window_secs: u64,
) -> StoreResult<RateDecision> {
    let key = k_rate(key);
    let window_ms = window_secs.max(1) * 1000;
    let script = db.rate.clone();
    let (count, ttl_ms): (u64, i64) = db
        .once(|mut c| {
            let (script, key) = (&script, &key);
            async move { script.key(key).arg(window_ms).invoke_async(&mut c).await }
        })
        .await?;
    Ok(RateDecision {
        allowed: count <= limit,
        limit,
        remaining: limit.saturating_sub(count),
        reset_after: (ttl_ms.max(0) as u64).div_ceil(1000).max(1),
    })
}

pub(super) async fn rate_lease(
    db: &RedisStore,
    key: &str,
    limit: u64,
    window_secs: u64,
    want: u64,
) -> StoreResult<Lease> {
    let key = k_lease(key);
    let window_ms = window_secs.max(1).saturating_mul(1000);
    let script = db.lease.clone();
    // Not retried: a lease that reached Redis but whose answer was lost must not be
    // granted twice.
    let (granted, used, ttl_ms): (u64, u64, i64) = db
        .once(|mut c| {
            let (script, key) = (&script, &key);
            async move {
                script
                    .key(key)
                    .arg(limit)
                    .arg(window_ms)
                    .arg(want)
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await?;
    Ok(Lease {
        granted,
        used,
        limit,
        reset_ms: (ttl_ms.max(1)) as u64,
    })
}

pub(super) async fn peek_rate(db: &RedisStore, key: &str) -> StoreResult<u64> {
    let key = k_rate(key);
    let v: Option<u64> = db
        .idem(|mut c| {
            let key = key.clone();
            async move { ::redis::cmd("GET").arg(&key).query_async(&mut c).await }
        })
        .await?;
    Ok(v.unwrap_or(0))
}
