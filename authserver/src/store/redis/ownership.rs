//! Ownership indexes: what a deleted user or client ends (see [`Owned`]).

use super::*;

/// Add a member to an ownership index (KEYS: the index; ARGV: member, exp, now): the later
/// expiry wins, members expired by `now` leave, and the index expires with its longest-lived
/// member.
pub(super) const OWNED_ADD_LUA: &str = r"
local exp = tonumber(ARGV[2])
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not old) or tonumber(old) < exp then
  redis.call('ZADD', KEYS[1], exp, ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local ttl = redis.call('TTL', KEYS[1])
if ttl < exp - tonumber(ARGV[3]) then
  redis.call('EXPIREAT', KEYS[1], exp)
end
return 1
";

pub(super) fn owned_add(kind: Owned, owner: &str, member: &str, exp: u64) -> (String, Cmd) {
    let key = k_owned(kind, owner);
    let mut cmd = eval(OWNED_ADD_LUA, &[&key]);
    cmd.arg(member).arg(exp).arg(now_secs());
    (key, cmd)
}

pub(super) async fn index_owned(
    db: &RedisStore,
    owners: &[String],
    kind: Owned,
    member: &str,
    exp: u64,
) -> StoreResult<()> {
    let mut b = Batch::default();
    for o in owners {
        let (k, cmd) = owned_add(kind, o, member, exp);
        b.add(&k, cmd);
    }
    let cluster = db.cluster;
    db.idem(|c| {
        let b = b.clone();
        async move { b.run(cluster, c).await.map(drop) }
    })
    .await
}

pub(super) async fn list_owned(
    db: &RedisStore,
    owner: &str,
    kind: Owned,
    now: u64,
) -> StoreResult<Vec<(String, u64)>> {
    let key = k_owned(kind, owner);
    let got: Vec<(String, f64)> = db
        .idem(|mut c| {
            let key = key.clone();
            async move {
                ::redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(format!("({now}"))
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .query_async(&mut c)
                    .await
            }
        })
        .await?;
    Ok(got.into_iter().map(|(m, e)| (m, e as u64)).collect())
}

pub(super) async fn clear_owned(db: &RedisStore, owner: &str, kind: Owned) -> StoreResult<()> {
    db.del(&k_owned(kind, owner)).await.map(drop)
}
