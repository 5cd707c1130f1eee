//! Token families (`auth:family:{grant_id}:*`, one hash tag) and one-time claims (a client
//! assertion's `jti`).

use super::*;

/// Claim a one-time identifier (KEYS: the claim; ARGV: the claimer's nonce, expiry). 1 when
/// claimed now or by an earlier attempt of the same call, 0 when someone else claimed it.
pub(super) const CLAIM_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[2])
  return 1
end
if v == ARGV[1] then return 1 end
return 0
";

/// Add members to a token family unless it is revoked (KEYS: at, rt, revoked;
/// ARGV: exp, number of access tokens, jti/exp pairs, then refresh hashes).
pub(super) const FAMILY_ADD_LUA: &str = r"
if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if n > 0 then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
local m = 0
while i <= #ARGV do
  redis.call('SADD', KEYS[2], ARGV[i])
  i = i + 1
  m = m + 1
end
if m > 0 then redis.call('EXPIREAT', KEYS[2], ARGV[1]) end
return 1
";

/// Mark a family revoked and return its members (KEYS: at, rt, revoked; ARGV: exp).
pub(super) const FAMILY_REVOKE_LUA: &str = r"
redis.call('SET', KEYS[3], '1', 'EXAT', ARGV[1])
return {redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
";

pub(super) async fn family_add(
    db: &RedisStore,
    grant_id: &str,
    access: &[(String, u64)],
    refresh: &[String],
    exp: u64,
) -> StoreResult<bool> {
    let keys = k_family(grant_id);
    let mut cmd = eval(FAMILY_ADD_LUA, &[&keys[0], &keys[1], &keys[2]]);
    cmd.arg(exp).arg(access.len());
    for (jti, e) in access {
        cmd.arg(jti).arg(*e);
    }
    for h in refresh {
        cmd.arg(h);
    }
    let ok: i64 = db.write_one(&cmd).await?;
    Ok(ok == 1)
}

pub(super) async fn revoke_family(
    db: &RedisStore,
    grant_id: &str,
    exp: u64,
) -> StoreResult<FamilyTokens> {
    let keys = k_family(grant_id);
    let mut cmd = eval(FAMILY_REVOKE_LUA, &[&keys[0], &keys[1], &keys[2]]);
    cmd.arg(exp);
    let (at, rt): (Vec<String>, Vec<String>) = db.write_one(&cmd).await?;
    let mut access = Vec::with_capacity(at.len() / 2);
    for pair in at.chunks(2) {
        if let [jti, e] = pair {
            let e = e.parse().map_err(|_| corrupt(&keys[0], "bad expiry"))?;
            access.push((jti.clone(), e));
        }
    }
    Ok(FamilyTokens {
        access,
        refresh: rt,
    })
}

pub(super) async fn family_revoked(db: &RedisStore, grant_id: &str) -> StoreResult<bool> {
    let key = k_family(grant_id)[2].clone();
    db.idem(|mut c| {
        let key = key.clone();
        async move { ::redis::cmd("EXISTS").arg(&key).query_async(&mut c).await }
    })
    .await
}

pub(super) async fn claim_assertion_jti(db: &RedisStore, key: &str, exp: u64) -> StoreResult<bool> {
    let key = k_assertion(key);
    // A nonce makes a retry of this call see its own claim (CLAIM_LUA).
    let mut cmd = eval(CLAIM_LUA, &[&key]);
    cmd.arg(crate::crypto::random_b64(16)).arg(exp);
    let claimed: i64 = db.write_one(&cmd).await?;
    Ok(claimed == 1)
}
