//! Small building blocks the record families share: `EVAL`, `HGETALL`, durable `DEL`,
//! `SCAN`, create-unless-exists, and the corrupt-record error.

use super::*;

/// Create a hash unless the key exists (KEYS: the hash; ARGV: the creator's nonce, then
/// field/value pairs). The nonce is kept in the field `created_by`, so a retry of the same
/// call (after a lost answer or a `WAIT` shortfall) is answered 1 like the first attempt;
/// 0 when someone else holds the key.
pub(super) const CREATE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'created_by') == ARGV[1] then return 1 end
  return 0
end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'created_by', ARGV[1])
return 1
";

/// `EVAL` of a script (the source each time: after a failover the new master's script
/// cache is empty, and a pipeline cannot recover from `NOSCRIPT` by itself).
pub(super) fn eval(src: &str, keys: &[&str]) -> Cmd {
    let mut c = ::redis::cmd("EVAL");
    c.arg(src).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c
}

pub(super) fn corrupt(key: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.to_string(),
    }
}

impl RedisStore {
    /// `HGETALL` of one key (idempotent, retried).
    pub(super) async fn hgetall(&self, key: &str) -> StoreResult<HashMap<String, String>> {
        let key = key.to_string();
        self.idem(|mut c| {
            let key = key.clone();
            async move { ::redis::cmd("HGETALL").arg(&key).query_async(&mut c).await }
        })
        .await
    }

    /// `DEL` of one key, durable; whether it existed.
    pub(super) async fn del(&self, key: &str) -> StoreResult<bool> {
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(key);
        let n: i64 = self.write_one(&cmd).await?;
        Ok(n > 0)
    }

    /// One durable single-key command (or script) through [`Self::write`], retried as an
    /// idempotent operation; its reply.
    pub(super) async fn write_one<T: FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
        self.idem(|c| async move {
            reply(
                &self
                    .write(c, std::slice::from_ref(cmd), false, true)
                    .await?,
                0,
            )
        })
        .await
    }

    /// The sorted ids of the keys `<prefix><id>`.
    pub(super) async fn ids_under(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let mut ids: Vec<String> = self
            .scan(&format!("{prefix}*"))
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub(super) async fn scan(&self, pattern: &str) -> StoreResult<Vec<String>> {
        let pattern = pattern.to_string();
        self.idem(|mut c| {
            let pattern = pattern.clone();
            async move {
                if let Conn::Cluster(cc) = &mut c {
                    return scan_cluster(cc, &pattern).await;
                }
                let mut out = Vec::new();
                let mut cursor: u64 = 0;
                loop {
                    let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut c)
                        .await?;
                    out.extend(keys);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
                Ok(out)
            }
        })
        .await
    }
}
