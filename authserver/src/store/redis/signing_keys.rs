//! Signing keys: one hash `auth:keys`, compare-and-set for rotation.

use super::*;

/// Compare-and-set of one signing key (KEYS: `auth:keys`; ARGV: kid, expected record, new
/// record): 1 when replaced or already the new record (a retry), 0 when it changed or is
/// gone.
pub(super) const KEY_CAS_LUA: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == ARGV[3] then return 1 end
if cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
";

pub(super) async fn list_keys(db: &RedisStore) -> StoreResult<Vec<StoredKey>> {
    let m: HashMap<String, String> = db
        .idem(|mut c| async move {
            ::redis::cmd("HGETALL")
                .arg(K_KEYS)
                .query_async(&mut c)
                .await
        })
        .await?;
    let mut keys = Vec::with_capacity(m.len());
    for (kid, json) in m {
        keys.push(serde_json::from_str(&json).map_err(|e| corrupt(&format!("{K_KEYS}/{kid}"), e))?);
    }
    Ok(keys)
}

pub(super) async fn put_key(db: &RedisStore, key: &StoredKey) -> StoreResult<()> {
    let json = serde_json::to_string(key).map_err(|e| corrupt(K_KEYS, e))?;
    let mut cmd = ::redis::cmd("HSET");
    cmd.arg(K_KEYS).arg(&key.kid).arg(&json);
    db.write_one::<Value>(&cmd).await.map(drop)
}

pub(super) async fn replace_key(
    db: &RedisStore,
    expected: &StoredKey,
    new: &StoredKey,
) -> StoreResult<bool> {
    if new.kid != expected.kid {
        return Ok(false);
    }
    let old = serde_json::to_string(expected).map_err(|e| corrupt(K_KEYS, e))?;
    let json = serde_json::to_string(new).map_err(|e| corrupt(K_KEYS, e))?;
    let mut cmd = eval(KEY_CAS_LUA, &[K_KEYS]);
    cmd.arg(&new.kid).arg(&old).arg(&json);
    let done: i64 = db.write_one(&cmd).await?;
    Ok(done == 1)
}

pub(super) async fn delete_key(db: &RedisStore, kid: &str) -> StoreResult<()> {
    let mut cmd = ::redis::cmd("HDEL");
    cmd.arg(K_KEYS).arg(kid);
    db.write_one::<Value>(&cmd).await.map(drop)
}
