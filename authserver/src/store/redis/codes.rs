//! Single-use records: authorization codes and refresh tokens (consumption is atomic and
//! retry-safe; a used one is kept, marked, until it expires so that a replay is recognised).

use super::*;

/// Consume a single-use record (KEYS: the record hash; ARGV: client_id, the consumer's
/// nonce). Returns {0, ''} when missing, {-1, ''} for another client's record (left
/// untouched), else {uses including this one, data}. The first consumer's nonce is kept
/// (`used_by`): a retry of the same call (after a lost answer, a `WAIT` shortfall or a
/// failover) is recognised and answered as the first use again, never as a replay.
pub(super) const CONSUME_LUA: &str = r"
local r = redis.call('HMGET', KEYS[1], 'data', 'client_id', 'used_by')
if not r[1] then return {0, ''} end
if r[2] ~= ARGV[1] then return {-1, ''} end
if r[3] == ARGV[2] then return {1, r[1]} end
local used = redis.call('HINCRBY', KEYS[1], 'used', 1)
if used == 1 then redis.call('HSET', KEYS[1], 'used_by', ARGV[2]) end
return {used, r[1]}
";

/// Undo this call's own consumption (KEYS: the record; ARGV: its nonce) when it was the only
/// use: the call failed, so nothing was issued for it. 1 when undone.
pub(super) const UNCONSUME_LUA: &str = r"
local r = redis.call('HMGET', KEYS[1], 'used_by', 'used')
if r[1] == ARGV[1] and r[2] == '1' then
  redis.call('HSET', KEYS[1], 'used', 0)
  redis.call('HDEL', KEYS[1], 'used_by')
  return 1
end
return 0
";

/// Give back a consumption that was the only use (KEYS: the record). 1 when released.
pub(super) const RELEASE_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'used') == '1' then
  redis.call('HSET', KEYS[1], 'used', 0)
  redis.call('HDEL', KEYS[1], 'used_by')
  return 1
end
return 0
";

impl RedisStore {
    /// Write a single-use record (code or refresh token): hash {data, client_id, used=0}
    /// expiring at `exp`, in one MULTI; `durable`: acknowledged after `WAIT`.
    pub(super) async fn save_single_use(
        &self,
        key: String,
        json: String,
        client_id: String,
        exp: u64,
        durable: bool,
    ) -> StoreResult<()> {
        let mut hset = ::redis::cmd("HSET");
        hset.arg(&key)
            .arg("data")
            .arg(&json)
            .arg("client_id")
            .arg(&client_id)
            .arg("used")
            .arg(0);
        let mut expire = ::redis::cmd("EXPIREAT");
        expire.arg(&key).arg(exp);
        let cmds = [hset, expire];
        let cmds = &cmds;
        self.idem(|c| async move { self.write(c, cmds, true, durable).await.map(drop) })
            .await
    }

    pub(super) async fn release_single_use(&self, key: String) -> StoreResult<()> {
        let cmd = eval(RELEASE_LUA, &[&key]);
        let cmd = &cmd;
        self.idem(|c| async move {
            self.write(c, std::slice::from_ref(cmd), false, false)
                .await
                .map(drop)
        })
        .await
    }

    pub(super) async fn consume_single_use<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
        client_id: &str,
    ) -> StoreResult<Consumed<T>> {
        // The nonce makes the consumption idempotent for this call (see CONSUME_LUA), so it is
        // retried like any idempotent write; another call still sees a replay.
        let nonce = crate::crypto::random_b64(16);
        let mut cmd = eval(CONSUME_LUA, &[&key]);
        cmd.arg(client_id).arg(&nonce);
        let (n, data): (i64, String) = match self.write_one(&cmd).await {
            Ok(v) => v,
            Err(e @ StoreError::Unavailable(_)) => {
                // Not acknowledged (a WAIT shortfall, a lost answer) and nothing was handed
                // out for it: give the record back, so that the client's retry is a first
                // use rather than a replay that revokes its grant. One attempt, best effort.
                let mut undo = eval(UNCONSUME_LUA, &[&key]);
                undo.arg(&nonce);
                if let Ok(c) = self.conn().await {
                    if let Err(u) = self.write(c, &[undo], false, false).await {
                        tracing::warn!(error = %u, "could not release an unacknowledged consumption");
                    }
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let parse = |d: &str| -> StoreResult<T> {
            serde_json::from_str(d).map_err(|e| corrupt("single-use record", e))
        };
        Ok(match n {
            0 => Consumed::Missing,
            -1 => Consumed::WrongClient,
            1 => Consumed::Fresh(parse(&data)?),
            _ => Consumed::Replayed(parse(&data)?),
        })
    }
}

pub(super) async fn save_auth_code(
    db: &RedisStore,
    code_hash: &str,
    rec: &AuthCodeRecord,
) -> StoreResult<()> {
    let key = k_code(code_hash);
    let json = serde_json::to_string(rec).map_err(|e| corrupt(&key, e))?;
    // Not durable: a lost code only sends the user through the login again.
    db.save_single_use(key, json, rec.client_id.clone(), rec.exp, false)
        .await
}

pub(super) async fn consume_auth_code(
    db: &RedisStore,
    code_hash: &str,
    client_id: &str,
) -> StoreResult<Consumed<AuthCodeRecord>> {
    db.consume_single_use(k_code(code_hash), client_id).await
}

pub(super) async fn save_refresh_token(
    db: &RedisStore,
    hash: &str,
    rec: &RefreshTokenRecord,
) -> StoreResult<()> {
    let key = k_refresh(hash);
    let json = serde_json::to_string(rec).map_err(|e| corrupt(&key, e))?;
    db.save_single_use(key, json, rec.client_id.clone(), rec.exp, true)
        .await
}

pub(super) async fn consume_refresh_token(
    db: &RedisStore,
    hash: &str,
    client_id: &str,
) -> StoreResult<Consumed<RefreshTokenRecord>> {
    db.consume_single_use(k_refresh(hash), client_id).await
}

pub(super) async fn release_refresh_token(db: &RedisStore, hash: &str) -> StoreResult<()> {
    db.release_single_use(k_refresh(hash)).await
}

pub(super) async fn release_auth_code(db: &RedisStore, code_hash: &str) -> StoreResult<()> {
    db.release_single_use(k_code(code_hash)).await
}

pub(super) async fn get_refresh_token(
    db: &RedisStore,
    hash: &str,
) -> StoreResult<Option<(RefreshTokenRecord, bool)>> {
    let key = k_refresh(hash);
    let (data, used): (Option<String>, Option<u64>) = db
        .idem(|mut c| {
            let key = key.clone();
            async move {
                ::redis::cmd("HMGET")
                    .arg(&key)
                    .arg("data")
                    .arg("used")
                    .query_async(&mut c)
                    .await
            }
        })
        .await?;
    let Some(data) = data else { return Ok(None) };
    let rec: RefreshTokenRecord = serde_json::from_str(&data).map_err(|e| corrupt(&key, e))?;
    Ok(Some((rec, used.unwrap_or(0) > 0)))
}

pub(super) async fn delete_refresh_tokens(db: &RedisStore, hashes: &[String]) -> StoreResult<()> {
    if hashes.is_empty() {
        return Ok(());
    }
    // One key per command: the keys live in different Cluster slots.
    let mut b = Batch::default();
    for h in hashes {
        let k = k_refresh(h);
        b.add(&k, ::redis::cmd("DEL").arg(&k).clone());
    }
    let b = &b;
    db.idem(|c| async move { db.write_batch(b, c).await.map(drop) })
        .await
}
