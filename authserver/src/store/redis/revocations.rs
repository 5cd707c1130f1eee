//! Revocations: the blacklist, and the revocation feed the edge filter follows (its keys
//! share the `{revocations}` hash tag, so its scripts touch one Cluster slot).

use super::*;

/// Append a revocation to the feed once (KEYS: index, feed, seq, floor;
/// ARGV: jti, exp, now, feed_max, channel). Returns 1 when it was new, and then publishes
/// the new sequence number on the channel (the long polls of every replica wake up).
pub(super) const FEED_APPEND_LUA: &str = r"
if tonumber(ARGV[2]) <= tonumber(ARGV[3]) then return 0 end
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, seq .. ' ' .. ARGV[1] .. ' ' .. ARGV[2])
local n = redis.call('ZCARD', KEYS[2])
local max = tonumber(ARGV[4])
if n > max then
  local popped = redis.call('ZPOPMIN', KEYS[2], n - max)
  local top = tonumber(popped[#popped])
  local floor = tonumber(redis.call('GET', KEYS[4]) or '0')
  if top > floor then redis.call('SET', KEYS[4], top) end
end
if ARGV[5] then redis.call('PUBLISH', ARGV[5], seq) end
return 1
";

/// Read the feed after a cursor (KEYS: feed, seq, floor, index; ARGV: since or -1, limit,
/// now). Returns {seq, resync, items}.
pub(super) const FEED_READ_LUA: &str = r"
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local floor = tonumber(redis.call('GET', KEYS[3]) or '0')
local since = tonumber(ARGV[1])
if since < 0 or since < floor or since > seq then
  return {seq, 1, redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. ARGV[3], '+inf', 'WITHSCORES')}
end
return {seq, 0, redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))}
";

/// Trim the feed: expired entries from its head, and the index of revocations that expired
/// (KEYS: feed, index; ARGV: now). Returns the number of feed entries removed.
pub(super) const FEED_TRIM_LUA: &str = r"
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local removed = 0
while true do
  local head = redis.call('ZRANGE', KEYS[1], 0, 99)
  if #head == 0 then break end
  local stop = false
  for _, m in ipairs(head) do
    local exp = tonumber(string.match(m, ' (%d+)$'))
    if exp ~= nil and exp <= now then
      redis.call('ZREM', KEYS[1], m)
      removed = removed + 1
    else
      stop = true
      break
    end
  end
  if stop then break end
end
return removed
";

pub(super) async fn revoke_access_token(db: &RedisStore, jti: &str, exp: u64) -> StoreResult<bool> {
    let now = now_secs();
    let kept_until = revocation_kept_until(exp);
    if kept_until <= now {
        return Ok(false);
    }
    let bl = k_blacklist(jti);
    let mut set = ::redis::cmd("SET");
    set.arg(&bl).arg(1).arg("EXAT").arg(kept_until);
    let mut append = eval(
        FEED_APPEND_LUA,
        &[K_REVOKED, K_FEED, K_FEED_SEQ, K_FEED_FLOOR],
    );
    // The script drops entries with `exp <= ARGV[3]`: the horizon is now minus the
    // retention, so that an entry lives until `exp + REVOCATION_RETENTION_SECS`.
    append
        .arg(jti)
        .arg(exp)
        .arg(now.saturating_sub(REVOCATION_RETENTION_SECS))
        .arg(db.opts.feed_max)
        .arg(REVOCATION_CHANNEL);
    let mut b = Batch::default();
    b.add(&bl, set).add(K_REVOKED, append);
    let b = &b;
    // The blacklist entry (what introspection reads) and the feed entry, which the script
    // adds only once per jti: a retry after a failure completes both. One pipeline and
    // one WAIT; on Cluster one per slot.
    let new: i64 = db
        .idem(|c| async move { reply(&db.write_batch(b, c).await?, 1) })
        .await?;
    if new == 1 {
        // Counters are best effort: a failure here must not fail the revocation.
        let _ = db.incr_stats(&[("tokens_revoked", 1)]).await;
    }
    Ok(new == 1)
}

pub(super) async fn is_revoked(db: &RedisStore, jti: &str) -> StoreResult<bool> {
    let bl = k_blacklist(jti);
    db.idem(|mut c| {
        let bl = bl.clone();
        async move { ::redis::cmd("EXISTS").arg(&bl).query_async(&mut c).await }
    })
    .await
}

pub(super) async fn revocation_feed(
    db: &RedisStore,
    since: Option<u64>,
    limit: usize,
) -> StoreResult<FeedPage> {
    // Entries are served until `exp + REVOCATION_RETENTION_SECS`.
    let now = now_secs().saturating_sub(REVOCATION_RETENTION_SECS);
    let since_arg: i64 = since.map(|s| s.min(i64::MAX as u64) as i64).unwrap_or(-1);
    let script = db.feed_read.clone();
    let (seq, resync, items): (u64, i64, Vec<String>) = db
        .idem(|mut c| {
            let script = script.clone();
            async move {
                script
                    .key(K_FEED)
                    .key(K_FEED_SEQ)
                    .key(K_FEED_FLOOR)
                    .key(K_REVOKED)
                    .arg(since_arg)
                    .arg(limit.max(1))
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            }
        })
        .await?;
    let mut entries = Vec::new();
    if resync == 1 {
        for pair in items.chunks(2) {
            if let [jti, exp] = pair {
                let exp: u64 = exp.parse().map_err(|_| corrupt(K_REVOKED, "bad score"))?;
                entries.push(RevokedEntry {
                    jti: jti.clone(),
                    exp,
                });
            }
        }
        entries.sort_by(|a, b| (a.exp, &a.jti).cmp(&(b.exp, &b.jti)));
        return Ok(FeedPage {
            cursor: seq,
            resync: true,
            entries,
        });
    }
    let mut cursor = since.unwrap_or(0);
    let mut last_seen = None;
    for m in &items {
        let mut parts = m.split(' ');
        let (Some(s), Some(jti), Some(exp)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(corrupt(K_FEED, "bad member"));
        };
        let s: u64 = s.parse().map_err(|_| corrupt(K_FEED, "bad seq"))?;
        let exp: u64 = exp.parse().map_err(|_| corrupt(K_FEED, "bad exp"))?;
        last_seen = Some(s);
        if exp > now {
            entries.push(RevokedEntry {
                jti: jti.to_string(),
                exp,
            });
        }
    }
    match last_seen {
        Some(s) => cursor = s,
        None => cursor = cursor.max(seq),
    }
    Ok(FeedPage {
        cursor,
        resync: false,
        entries,
    })
}
