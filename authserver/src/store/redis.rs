//! The Redis store: standalone (`redis://`, `rediss://`), Sentinel (`redis+sentinel://`) or
//! Cluster (`redis+cluster://`). Multi-key writes are one round trip: a `MULTI` pipeline or a
//! Lua script whose keys share a hash tag (`{revocations}`), so the layout is Cluster-ready.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster_async::ClusterConnection;
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use async_trait::async_trait;
use tokio::sync::{Mutex, RwLock};

use super::*;

const K_TOKEN_CLEANUP: &str = "auth_token_cleanup";
const K_STATS: &str = "auth_stats";
const K_CONFIG: &str = "auth_config";
const K_KEYS: &str = "auth:keys";
// The revocation feed's keys share one hash tag so its scripts touch one Cluster slot.
const K_FEED: &str = "auth:{revocations}:feed";
const K_REVOKED: &str = "auth:{revocations}:index";
const K_FEED_SEQ: &str = "auth:{revocations}:seq";
const K_FEED_FLOOR: &str = "auth:{revocations}:floor";
const K_CACHE_CONFIG: &str = "cache_config";
const K_CACHE_STATS: &str = "cache_stats";
const K_CACHE_METRICS: &str = "cache_cleanup_metrics";

fn k_client(id: &str) -> String {
    format!("auth:client:{id}")
}
fn k_access(jti: &str) -> String {
    format!("auth:access_token:{jti}")
}
fn k_blacklist(jti: &str) -> String {
    format!("auth:blacklist:{jti}")
}
fn k_rate(key: &str) -> String {
    format!("auth:rate_limit:{key}")
}
fn k_lease(key: &str) -> String {
    format!("auth:rate_limit:lease:{key}")
}
fn k_user(username: &str) -> String {
    format!("auth:user:{username}")
}
fn k_session(id_hash: &str) -> String {
    format!("auth:session:{id_hash}")
}
fn k_code(hash: &str) -> String {
    format!("auth:code:{hash}")
}
fn k_refresh(hash: &str) -> String {
    format!("auth:refresh_token:{hash}")
}
/// The keys of one token family share the hash tag `{grant_id}` (one Cluster slot).
fn k_family(grant_id: &str) -> [String; 3] {
    [
        format!("auth:family:{{{grant_id}}}:at"),
        format!("auth:family:{{{grant_id}}}:rt"),
        format!("auth:family:{{{grant_id}}}:revoked"),
    ]
}
fn k_assertion(key: &str) -> String {
    format!("auth:assertion_jti:{key}")
}
fn k_cache(service: &str, key: &str) -> String {
    format!("cache:resource:{service}:{key}")
}

/// Fixed window counter: INCR, and start the window on the first hit.
const RATE_LUA: &str = r"
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
const LEASE_LUA: &str = r"
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

/// Append a revocation to the feed once (KEYS: index, feed, seq, floor;
/// ARGV: jti, exp, now, feed_max). Returns 1 when it was new.
const FEED_APPEND_LUA: &str = r"
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
return 1
";

/// Read the feed after a cursor (KEYS: feed, seq, floor, index; ARGV: since or -1, limit,
/// now). Returns {seq, resync, items}.
const FEED_READ_LUA: &str = r"
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
const FEED_TRIM_LUA: &str = r"
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

/// Consume a single-use record (KEYS: the record hash; ARGV: client_id). Returns
/// {0, ''} when missing, {-1, ''} for another client's record (left untouched), else
/// {uses including this one, data}.
const CONSUME_LUA: &str = r"
local r = redis.call('HMGET', KEYS[1], 'data', 'client_id')
if not r[1] then return {0, ''} end
if r[2] ~= ARGV[1] then return {-1, ''} end
local used = redis.call('HINCRBY', KEYS[1], 'used', 1)
return {used, r[1]}
";

/// Add members to a token family unless it is revoked (KEYS: at, rt, revoked;
/// ARGV: exp, number of access tokens, jti/exp pairs, then refresh hashes).
const FAMILY_ADD_LUA: &str = r"
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
const FAMILY_REVOKE_LUA: &str = r"
redis.call('SET', KEYS[3], '1', 'EXAT', ARGV[1])
return {redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', KEYS[2])}
";

/// A connection of any kind, cheap to clone (all are multiplexed).
#[derive(Clone)]
enum Conn {
    Managed(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Managed(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Managed(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

struct SentinelBackend {
    client: Mutex<SentinelClient>,
    conn: RwLock<Option<MultiplexedConnection>>,
    config: AsyncConnectionConfig,
}

enum Backend {
    Single(ConnectionManager),
    Sentinel(Box<SentinelBackend>),
    Cluster(ClusterConnection),
}

/// Options of the Redis store.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Upper bound on one command's round trip; a request never hangs on Redis.
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    /// Revocation feed length before the oldest entries are dropped (readers behind that
    /// get a full resync).
    pub feed_max: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            feed_max: 100_000,
        }
    }
}

/// Redis implementation of [`Store`] and [`ServiceCache`].
pub struct RedisStore {
    backend: Backend,
    opts: RedisOptions,
    cluster: bool,
    rate: Arc<Script>,
    lease: Arc<Script>,
    feed_append: Arc<Script>,
    feed_read: Arc<Script>,
    feed_trim: Arc<Script>,
    consume: Arc<Script>,
    family_add: Arc<Script>,
    family_revoke: Arc<Script>,
}

fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_cluster_error()
        || matches!(
            e.code(),
            Some("READONLY" | "LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "NOREPLICAS")
        )
}

fn map_err(e: RedisError) -> StoreError {
    if is_transient(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn corrupt(key: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.to_string(),
    }
}

impl RedisStore {
    /// Connect according to a parsed store URL.
    pub async fn connect(url: &StoreUrl, opts: RedisOptions) -> StoreResult<RedisStore> {
        let (backend, cluster) = match url {
            StoreUrl::Memory => {
                return Err(StoreError::Config("memory is not a Redis URL".into()));
            }
            StoreUrl::Redis { url } => {
                let client = ::redis::Client::open(url.as_str())
                    .map_err(|e| StoreError::Config(format!("bad Redis URL: {e}")))?;
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(opts.connect_timeout))
                    .set_response_timeout(Some(opts.response_timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let cm = ConnectionManager::new_with_config(client, cfg)
                    .await
                    .map_err(map_err)?;
                (Backend::Single(cm), false)
            }
            StoreUrl::Sentinel {
                sentinels,
                master,
                db,
                username,
                password,
                tls,
            } => {
                let addrs: Vec<String> = sentinels
                    .iter()
                    .map(|(h, p)| {
                        let scheme = if *tls { "rediss" } else { "redis" };
                        match (username, password) {
                            // Sentinels use the same credentials as the data nodes.
                            (u, Some(pw)) => format!(
                                "{scheme}://{}:{}@{h}:{p}",
                                enc(u.as_deref().unwrap_or("")),
                                enc(pw)
                            ),
                            _ => format!("{scheme}://{h}:{p}"),
                        }
                    })
                    .collect();
                let mut info = ::redis::RedisConnectionInfo::default().set_db(*db);
                if let Some(u) = username {
                    info = info.set_username(u);
                }
                if let Some(p) = password {
                    info = info.set_password(p);
                }
                let mut node =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                if *tls {
                    node = node.set_tls_mode(::redis::TlsMode::Secure);
                }
                let client = SentinelClient::build(
                    addrs.iter().map(|s| s.as_str()).collect(),
                    master.as_str(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(|e| StoreError::Config(format!("bad Sentinel configuration: {e}")))?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(opts.connect_timeout))
                    .set_response_timeout(Some(opts.response_timeout));
                let b = SentinelBackend {
                    client: Mutex::new(client),
                    conn: RwLock::new(None),
                    config,
                };
                (Backend::Sentinel(Box::new(b)), false)
            }
            StoreUrl::Cluster {
                nodes,
                username,
                password,
                tls,
            } => {
                let scheme = if *tls { "rediss" } else { "redis" };
                let urls: Vec<String> = nodes
                    .iter()
                    .map(|(h, p)| format!("{scheme}://{h}:{p}"))
                    .collect();
                let mut b = ::redis::cluster::ClusterClientBuilder::new(urls)
                    .connection_timeout(opts.connect_timeout)
                    .response_timeout(opts.response_timeout);
                if let Some(u) = username {
                    b = b.username(u);
                }
                if let Some(p) = password {
                    b = b.password(p);
                }
                let client = b
                    .build()
                    .map_err(|e| StoreError::Config(format!("bad cluster configuration: {e}")))?;
                let conn = client.get_async_connection().await.map_err(map_err)?;
                (Backend::Cluster(conn), true)
            }
        };
        let store = RedisStore {
            backend,
            opts,
            cluster,
            rate: Arc::new(Script::new(RATE_LUA)),
            lease: Arc::new(Script::new(LEASE_LUA)),
            feed_append: Arc::new(Script::new(FEED_APPEND_LUA)),
            feed_read: Arc::new(Script::new(FEED_READ_LUA)),
            feed_trim: Arc::new(Script::new(FEED_TRIM_LUA)),
            consume: Arc::new(Script::new(CONSUME_LUA)),
            family_add: Arc::new(Script::new(FAMILY_ADD_LUA)),
            family_revoke: Arc::new(Script::new(FAMILY_REVOKE_LUA)),
        };
        // Fail fast on a wrong address or password.
        store.ping().await?;
        Ok(store)
    }

    async fn conn(&self) -> StoreResult<Conn> {
        match &self.backend {
            Backend::Single(c) => Ok(Conn::Managed(c.clone())),
            Backend::Cluster(c) => Ok(Conn::Cluster(c.clone())),
            Backend::Sentinel(s) => {
                if let Some(c) = s.conn.read().await.as_ref() {
                    return Ok(Conn::Multiplexed(c.clone()));
                }
                let mut slot = s.conn.write().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(Conn::Multiplexed(c.clone()));
                }
                let mut client = s.client.lock().await;
                let fresh = tokio::time::timeout(
                    self.opts.connect_timeout * 2,
                    client.get_async_connection_with_config(&s.config),
                )
                .await
                .map_err(|_| StoreError::Unavailable("sentinel lookup timed out".into()))?
                .map_err(map_err)?;
                *slot = Some(fresh.clone());
                Ok(Conn::Multiplexed(fresh))
            }
        }
    }

    /// After a connectivity error on a Sentinel-managed connection, forget it so that the
    /// next call asks the Sentinels for the (possibly new) master.
    async fn on_error(&self, e: &RedisError) {
        if let Backend::Sentinel(s) = &self.backend {
            if is_transient(e) {
                *s.conn.write().await = None;
            }
        }
    }

    /// Run an operation; on a connectivity error retry once (after re-resolving the master
    /// when behind Sentinel). Only for idempotent operations.
    async fn idem<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let mut last = None;
        for attempt in 0..3 {
            let conn = match self.conn().await {
                Ok(c) => c,
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                    continue;
                }
            };
            match f(conn).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    self.on_error(&e).await;
                    if !is_transient(&e) {
                        return Err(map_err(e));
                    }
                    last = Some(map_err(e));
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Unavailable("retries exhausted".into())))
    }

    /// Run a non-idempotent operation once.
    async fn once<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let conn = self.conn().await?;
        match f(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.on_error(&e).await;
                Err(map_err(e))
            }
        }
    }

    /// A pipeline that is atomic (`MULTI`) where the deployment allows it (not on Cluster,
    /// where keys of one pipeline may live on several nodes).
    fn pipe(&self) -> Pipeline {
        let mut p = ::redis::pipe();
        if !self.cluster {
            p.atomic();
        }
        p
    }

    /// `HGETALL` of one key (idempotent, retried).
    async fn hgetall(&self, key: &str) -> StoreResult<HashMap<String, String>> {
        let key = key.to_string();
        self.idem(|mut c| {
            let key = key.clone();
            async move { ::redis::cmd("HGETALL").arg(&key).query_async(&mut c).await }
        })
        .await
    }

    /// `DEL` of one key; whether it existed.
    async fn del(&self, key: &str) -> StoreResult<bool> {
        let key = key.to_string();
        let n: i64 = self
            .idem(|mut c| {
                let key = key.clone();
                async move { ::redis::cmd("DEL").arg(&key).query_async(&mut c).await }
            })
            .await?;
        Ok(n > 0)
    }

    /// The sorted ids of the keys `<prefix><id>`.
    async fn ids_under(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let mut ids: Vec<String> = self
            .scan(&format!("{prefix}*"))
            .await?
            .into_iter()
            .filter_map(|k| k.strip_prefix(prefix).map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn scan(&self, pattern: &str) -> StoreResult<Vec<String>> {
        let pattern = pattern.to_string();
        self.idem(|mut c| {
            let pattern = pattern.clone();
            async move {
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

impl RedisStore {
    /// Write a single-use record (code or refresh token): hash {data, client_id, used=0}
    /// expiring at `exp`, in one MULTI.
    async fn save_single_use(
        &self,
        key: String,
        json: String,
        client_id: String,
        exp: u64,
    ) -> StoreResult<()> {
        self.idem(|mut c| {
            let (key, json, client_id) = (key.clone(), json.clone(), client_id.clone());
            async move {
                let mut p = ::redis::pipe();
                p.atomic()
                    .hset_multiple(
                        &key,
                        &[
                            ("data", json.as_str()),
                            ("client_id", client_id.as_str()),
                            ("used", "0"),
                        ],
                    )
                    .ignore()
                    .cmd("EXPIREAT")
                    .arg(&key)
                    .arg(exp)
                    .ignore();
                p.query_async::<()>(&mut c).await
            }
        })
        .await
    }

    async fn consume_single_use<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
        client_id: &str,
    ) -> StoreResult<Consumed<T>> {
        let script = self.consume.clone();
        let client_id = client_id.to_string();
        // Not retried: a second attempt after a lost answer would look like a replay.
        let (n, data): (i64, String) = self
            .once(
                |mut c| async move { script.key(&key).arg(&client_id).invoke_async(&mut c).await },
            )
            .await?;
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

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn client_to_fields(c: &ClientRecord) -> StoreResult<Vec<(&'static str, String)>> {
    let md = serde_json::to_string(&c.metadata).map_err(|e| corrupt(&c.client_id, e))?;
    let mut f = vec![
        ("client_id", c.client_id.clone()),
        ("metadata", md),
        ("created_at", c.created_at.to_string()),
        ("updated_at", c.updated_at.to_string()),
    ];
    if let Some(h) = &c.secret_hash {
        f.push(("secret_hash", h.clone()));
    }
    if let Some(h) = &c.registration_token_hash {
        f.push(("registration_token_hash", h.clone()));
    }
    Ok(f)
}

fn client_from_fields(key: &str, m: HashMap<String, String>) -> StoreResult<Option<ClientRecord>> {
    if m.is_empty() {
        return Ok(None);
    }
    let get = |f: &str| m.get(f).cloned();
    let metadata: ClientMetadata = serde_json::from_str(
        m.get("metadata")
            .ok_or_else(|| corrupt(key, "no metadata"))?,
    )
    .map_err(|e| corrupt(key, e))?;
    Ok(Some(ClientRecord {
        client_id: get("client_id").ok_or_else(|| corrupt(key, "no client_id"))?,
        secret_hash: get("secret_hash"),
        registration_token_hash: get("registration_token_hash"),
        metadata,
        created_at: get("created_at").and_then(|v| v.parse().ok()).unwrap_or(0),
        updated_at: get("updated_at").and_then(|v| v.parse().ok()).unwrap_or(0),
    }))
}

fn token_from_fields(
    jti: &str,
    m: HashMap<String, String>,
) -> StoreResult<Option<AccessTokenRecord>> {
    if m.is_empty() {
        return Ok(None);
    }
    let key = k_access(jti);
    let s = |f: &str| {
        m.get(f)
            .cloned()
            .ok_or_else(|| corrupt(&key, format!("no {f}")))
    };
    let n = |f: &str| -> StoreResult<u64> {
        s(f)?.parse().map_err(|_| corrupt(&key, format!("bad {f}")))
    };
    Ok(Some(AccessTokenRecord {
        jti: jti.to_string(),
        client_id: s("client_id")?,
        sub: s("sub")?,
        scope: s("scope")?,
        aud: s("aud")?,
        iat: n("iat")?,
        exp: n("exp")?,
        token_hash: s("token_hash")?,
        format: s("format")?,
        act: m.get("act").cloned(),
    }))
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> StoreResult<()> {
        self.idem(|mut c| async move {
            let _: String = ::redis::cmd("PING").query_async(&mut c).await?;
            Ok(())
        })
        .await
    }

    async fn backend_info(&self) -> StoreResult<BackendInfo> {
        let (repl, server, persistence): (String, String, String) = self
            .idem(|mut c| async move {
                let repl: String = ::redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await?;
                let server: String = ::redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut c)
                    .await?;
                let pers: String = ::redis::cmd("INFO")
                    .arg("persistence")
                    .query_async(&mut c)
                    .await?;
                Ok((repl, server, pers))
            })
            .await?;
        let mut details = BTreeMap::new();
        let wanted = [
            "role",
            "connected_slaves",
            "master_host",
            "master_port",
            "master_link_status",
            "master_repl_offset",
            "redis_version",
            "redis_mode",
            "aof_enabled",
            "rdb_last_bgsave_status",
            "aof_last_write_status",
        ];
        for line in repl
            .lines()
            .chain(server.lines())
            .chain(persistence.lines())
        {
            if let Some((k, v)) = line.trim().split_once(':') {
                if wanted.contains(&k) || k.starts_with("slave") {
                    details.insert(k.to_string(), v.to_string());
                }
            }
        }
        let kind = match &self.backend {
            Backend::Single(_) => "redis",
            Backend::Sentinel(_) => "redis+sentinel",
            Backend::Cluster(_) => "redis+cluster",
        };
        Ok(BackendInfo {
            kind: kind.into(),
            role: details
                .get("role")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            details,
        })
    }

    async fn create_client(&self, client: &ClientRecord) -> StoreResult<()> {
        let key = k_client(&client.client_id);
        let fields = client_to_fields(client)?;
        // HSETNX on client_id claims the id; the rest follows in the same transaction only
        // when the claim succeeded (a Lua script keeps it to one key, one slot).
        let script = Script::new(
            r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i+1]) end
return 1
",
        );
        let created: i64 = self
            .once(|mut c| async move {
                let mut inv = script.key(&key);
                for (f, v) in &fields {
                    inv.arg(*f).arg(v);
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(client.client_id.clone()))
        }
    }

    async fn put_client(&self, client: &ClientRecord) -> StoreResult<()> {
        let key = k_client(&client.client_id);
        let fields = client_to_fields(client)?;
        self.idem(|mut c| {
            let (key, fields) = (key.clone(), fields.clone());
            async move {
                let mut p = ::redis::pipe();
                p.atomic()
                    .del(&key)
                    .ignore()
                    .hset_multiple(&key, &fields)
                    .ignore();
                p.query_async::<()>(&mut c).await
            }
        })
        .await
    }

    async fn get_client(&self, client_id: &str) -> StoreResult<Option<ClientRecord>> {
        let key = k_client(client_id);
        let m = self.hgetall(&key).await?;
        client_from_fields(&key, m)
    }

    async fn delete_client(&self, client_id: &str) -> StoreResult<bool> {
        self.del(&k_client(client_id)).await
    }

    async fn list_client_ids(&self) -> StoreResult<Vec<String>> {
        self.ids_under("auth:client:").await
    }

    async fn save_access_token(&self, rec: &AccessTokenRecord) -> StoreResult<()> {
        let key = k_access(&rec.jti);
        let fields: Vec<(&str, String)> = vec![
            ("client_id", rec.client_id.clone()),
            ("sub", rec.sub.clone()),
            ("scope", rec.scope.clone()),
            ("aud", rec.aud.clone()),
            ("iat", rec.iat.to_string()),
            ("exp", rec.exp.to_string()),
            ("token_hash", rec.token_hash.clone()),
            ("format", rec.format.clone()),
        ];
        let mut fields = fields;
        if let Some(act) = &rec.act {
            fields.push(("act", act.clone()));
        }
        let mut p = self.pipe();
        p.hset_multiple(&key, &fields)
            .ignore()
            .cmd("EXPIREAT")
            .arg(&key)
            .arg(rec.exp)
            .ignore()
            .zadd(K_TOKEN_CLEANUP, &rec.jti, rec.exp)
            .ignore()
            .hincr(K_STATS, "tokens_issued", 1)
            .ignore();
        // Idempotent: the same record written twice is the same state (the counter aside).
        self.once(|mut c| async move { p.query_async::<()>(&mut c).await })
            .await
    }

    async fn get_access_token(&self, jti: &str) -> StoreResult<(Option<AccessTokenRecord>, bool)> {
        let (key, bl) = (k_access(jti), k_blacklist(jti));
        let (m, revoked): (HashMap<String, String>, bool) = self
            .idem(|mut c| {
                let (key, bl) = (key.clone(), bl.clone());
                async move {
                    ::redis::pipe()
                        .hgetall(&key)
                        .exists(&bl)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok((token_from_fields(jti, m)?, revoked))
    }

    async fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<bool> {
        let now = now_secs();
        if exp <= now {
            return Ok(false);
        }
        let bl = k_blacklist(jti);
        let jti_s = jti.to_string();
        let feed_max = self.opts.feed_max;
        let script = self.feed_append.clone();
        // The blacklist entry first (what introspection reads), then the feed entry, which
        // the script adds only once per jti: a retry after a failure completes both.
        let new: i64 = self
            .idem(|mut c| {
                let (bl, jti_s, script) = (bl.clone(), jti_s.clone(), script.clone());
                async move {
                    ::redis::cmd("SET")
                        .arg(&bl)
                        .arg(1)
                        .arg("EXAT")
                        .arg(exp)
                        .query_async::<()>(&mut c)
                        .await?;
                    script
                        .key(K_REVOKED)
                        .key(K_FEED)
                        .key(K_FEED_SEQ)
                        .key(K_FEED_FLOOR)
                        .arg(&jti_s)
                        .arg(exp)
                        .arg(now)
                        .arg(feed_max)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        if new == 1 {
            // Counters are best effort: a failure here must not fail the revocation.
            let _ = self.incr_stats(&[("tokens_revoked", 1)]).await;
        }
        Ok(new == 1)
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        let bl = k_blacklist(jti);
        self.idem(|mut c| {
            let bl = bl.clone();
            async move { ::redis::cmd("EXISTS").arg(&bl).query_async(&mut c).await }
        })
        .await
    }

    async fn revocation_feed(&self, since: Option<u64>, limit: usize) -> StoreResult<FeedPage> {
        let now = now_secs();
        let since_arg: i64 = since.map(|s| s.min(i64::MAX as u64) as i64).unwrap_or(-1);
        let script = self.feed_read.clone();
        let (seq, resync, items): (u64, i64, Vec<String>) = self
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

    async fn count_live_tokens(&self, now: u64) -> StoreResult<u64> {
        self.idem(|mut c| async move {
            ::redis::cmd("ZCOUNT")
                .arg(K_TOKEN_CLEANUP)
                .arg(format!("({now}"))
                .arg("+inf")
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn rate_limit(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
    ) -> StoreResult<RateDecision> {
        let key = k_rate(key);
        let window_ms = window_secs.max(1) * 1000;
        let script = self.rate.clone();
        let (count, ttl_ms): (u64, i64) = self
            .once(|mut c| async move { script.key(&key).arg(window_ms).invoke_async(&mut c).await })
            .await?;
        Ok(RateDecision {
            allowed: count <= limit,
            limit,
            remaining: limit.saturating_sub(count),
            reset_after: (ttl_ms.max(0) as u64).div_ceil(1000).max(1),
        })
    }

    async fn rate_lease(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
        want: u64,
    ) -> StoreResult<Lease> {
        let key = k_lease(key);
        let window_ms = window_secs.max(1).saturating_mul(1000);
        let script = self.lease.clone();
        // Not retried: a lease that reached Redis but whose answer was lost must not be
        // granted twice.
        let (granted, used, ttl_ms): (u64, u64, i64) = self
            .once(|mut c| async move {
                script
                    .key(&key)
                    .arg(limit)
                    .arg(window_ms)
                    .arg(want)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(Lease {
            granted,
            used,
            limit,
            reset_ms: (ttl_ms.max(1)) as u64,
        })
    }

    async fn peek_rate(&self, key: &str) -> StoreResult<u64> {
        let key = k_rate(key);
        let v: Option<u64> = self
            .idem(|mut c| {
                let key = key.clone();
                async move { ::redis::cmd("GET").arg(&key).query_async(&mut c).await }
            })
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let m: HashMap<String, String> = self
            .idem(|mut c| async move {
                ::redis::cmd("HGETALL")
                    .arg(K_KEYS)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut keys = Vec::with_capacity(m.len());
        for (kid, json) in m {
            keys.push(
                serde_json::from_str(&json).map_err(|e| corrupt(&format!("{K_KEYS}/{kid}"), e))?,
            );
        }
        Ok(keys)
    }

    async fn put_key(&self, key: &StoredKey) -> StoreResult<()> {
        let json = serde_json::to_string(key).map_err(|e| corrupt(K_KEYS, e))?;
        let kid = key.kid.clone();
        self.idem(|mut c| {
            let (kid, json) = (kid.clone(), json.clone());
            async move {
                ::redis::cmd("HSET")
                    .arg(K_KEYS)
                    .arg(&kid)
                    .arg(&json)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    async fn delete_key(&self, kid: &str) -> StoreResult<()> {
        let kid = kid.to_string();
        self.idem(|mut c| {
            let kid = kid.clone();
            async move {
                ::redis::cmd("HDEL")
                    .arg(K_KEYS)
                    .arg(&kid)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    async fn incr_stats(&self, counters: &[(&str, i64)]) -> StoreResult<()> {
        if counters.is_empty() {
            return Ok(());
        }
        let mut p = ::redis::pipe();
        for (k, v) in counters {
            p.hincr(K_STATS, *k, *v).ignore();
        }
        self.once(|mut c| async move { p.query_async::<()>(&mut c).await })
            .await
    }

    async fn get_stats(&self) -> StoreResult<BTreeMap<String, i64>> {
        self.idem(|mut c| async move {
            ::redis::cmd("HGETALL")
                .arg(K_STATS)
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn get_config(&self) -> StoreResult<BTreeMap<String, String>> {
        self.idem(|mut c| async move {
            ::redis::cmd("HGETALL")
                .arg(K_CONFIG)
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn set_config(&self, values: &BTreeMap<String, String>) -> StoreResult<()> {
        if values.is_empty() {
            return Ok(());
        }
        let fields: Vec<(String, String)> =
            values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        self.idem(|mut c| {
            let fields = fields.clone();
            async move {
                ::redis::cmd("HSET")
                    .arg(K_CONFIG)
                    .arg(fields)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        let key = k_user(&user.username);
        let script = Script::new(
            r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'username', ARGV[1], 'password_hash', ARGV[2], 'created_at', ARGV[3])
return 1
",
        );
        let (name, hash, at) = (
            user.username.clone(),
            user.password_hash.clone(),
            user.created_at,
        );
        let created: i64 = self
            .once(|mut c| async move {
                script
                    .key(&key)
                    .arg(&name)
                    .arg(&hash)
                    .arg(at)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(user.username.clone()))
        }
    }

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let key = k_user(username);
        let m = self.hgetall(&key).await?;
        if m.is_empty() {
            return Ok(None);
        }
        Ok(Some(UserRecord {
            username: m
                .get("username")
                .cloned()
                .ok_or_else(|| corrupt(&key, "no username"))?,
            password_hash: m
                .get("password_hash")
                .cloned()
                .ok_or_else(|| corrupt(&key, "no password_hash"))?,
            created_at: m
                .get("created_at")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        }))
    }

    async fn delete_user(&self, username: &str) -> StoreResult<bool> {
        self.del(&k_user(username)).await
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        let names = self.ids_under("auth:user:").await?;
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(u) = self.get_user(&n).await? {
                out.push(u);
            }
        }
        Ok(out)
    }

    async fn save_session(&self, id_hash: &str, rec: &SessionRecord) -> StoreResult<()> {
        let key = k_session(id_hash);
        let json = serde_json::to_string(rec).map_err(|e| corrupt(&key, e))?;
        let exp = rec.exp;
        self.idem(|mut c| {
            let (key, json) = (key.clone(), json.clone());
            async move {
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .arg("EXAT")
                    .arg(exp)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        let key = k_session(id_hash);
        let v: Option<String> = self
            .idem(|mut c| {
                let key = key.clone();
                async move { ::redis::cmd("GET").arg(&key).query_async(&mut c).await }
            })
            .await?;
        v.map(|j| serde_json::from_str(&j).map_err(|e| corrupt(&key, e)))
            .transpose()
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        let key = k_session(id_hash);
        self.idem(|mut c| {
            let key = key.clone();
            async move {
                ::redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    async fn save_auth_code(&self, code_hash: &str, rec: &AuthCodeRecord) -> StoreResult<()> {
        let key = k_code(code_hash);
        let json = serde_json::to_string(rec).map_err(|e| corrupt(&key, e))?;
        self.save_single_use(key, json, rec.client_id.clone(), rec.exp)
            .await
    }

    async fn consume_auth_code(
        &self,
        code_hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<AuthCodeRecord>> {
        self.consume_single_use(k_code(code_hash), client_id).await
    }

    async fn save_refresh_token(&self, hash: &str, rec: &RefreshTokenRecord) -> StoreResult<()> {
        let key = k_refresh(hash);
        let json = serde_json::to_string(rec).map_err(|e| corrupt(&key, e))?;
        self.save_single_use(key, json, rec.client_id.clone(), rec.exp)
            .await
    }

    async fn consume_refresh_token(
        &self,
        hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<RefreshTokenRecord>> {
        self.consume_single_use(k_refresh(hash), client_id).await
    }

    async fn get_refresh_token(
        &self,
        hash: &str,
    ) -> StoreResult<Option<(RefreshTokenRecord, bool)>> {
        let key = k_refresh(hash);
        let (data, used): (Option<String>, Option<u64>) = self
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

    async fn delete_refresh_tokens(&self, hashes: &[String]) -> StoreResult<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = hashes.iter().map(|h| k_refresh(h)).collect();
        // One key per command: the keys live in different Cluster slots.
        self.idem(|mut c| {
            let keys = keys.clone();
            async move {
                let mut p = ::redis::pipe();
                for k in &keys {
                    p.del(k).ignore();
                }
                p.query_async::<()>(&mut c).await
            }
        })
        .await
    }

    async fn family_add(
        &self,
        grant_id: &str,
        access: &[(String, u64)],
        refresh: &[String],
        exp: u64,
    ) -> StoreResult<bool> {
        let keys = k_family(grant_id);
        let script = self.family_add.clone();
        let (access, refresh) = (access.to_vec(), refresh.to_vec());
        let ok: i64 = self
            .idem(|mut c| {
                let (keys, script, access, refresh) = (
                    keys.clone(),
                    script.clone(),
                    access.clone(),
                    refresh.clone(),
                );
                async move {
                    let mut inv = script.prepare_invoke();
                    for k in &keys {
                        inv.key(k);
                    }
                    inv.arg(exp).arg(access.len());
                    for (jti, e) in &access {
                        inv.arg(jti).arg(*e);
                    }
                    for h in &refresh {
                        inv.arg(h);
                    }
                    inv.invoke_async(&mut c).await
                }
            })
            .await?;
        Ok(ok == 1)
    }

    async fn revoke_family(&self, grant_id: &str, exp: u64) -> StoreResult<FamilyTokens> {
        let keys = k_family(grant_id);
        let script = self.family_revoke.clone();
        let (at, rt): (Vec<String>, Vec<String>) = self
            .idem(|mut c| {
                let (keys, script) = (keys.clone(), script.clone());
                async move {
                    script
                        .key(&keys[0])
                        .key(&keys[1])
                        .key(&keys[2])
                        .arg(exp)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
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

    async fn family_revoked(&self, grant_id: &str) -> StoreResult<bool> {
        let key = k_family(grant_id)[2].clone();
        self.idem(|mut c| {
            let key = key.clone();
            async move { ::redis::cmd("EXISTS").arg(&key).query_async(&mut c).await }
        })
        .await
    }

    async fn claim_assertion_jti(&self, key: &str, exp: u64) -> StoreResult<bool> {
        let key = k_assertion(key);
        let r: Option<String> = self
            .once(|mut c| async move {
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("EXAT")
                    .arg(exp)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(r.is_some())
    }

    async fn cleanup(&self, now: u64, _feed_retention_secs: u64) -> StoreResult<CleanupReport> {
        let mut report = CleanupReport::default();
        loop {
            let expired: Vec<String> = self
                .idem(|mut c| async move {
                    ::redis::cmd("ZRANGEBYSCORE")
                        .arg(K_TOKEN_CLEANUP)
                        .arg("-inf")
                        .arg(now)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(1000)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if expired.is_empty() {
                break;
            }
            let n = expired.len();
            let mut p = ::redis::pipe();
            for jti in &expired {
                // The records expire by TTL; this removes anything left without one.
                p.del(k_access(jti)).ignore();
            }
            p.zrem(K_TOKEN_CLEANUP, &expired).ignore();
            self.idem(|mut c| {
                let p = p.clone();
                async move { p.query_async::<()>(&mut c).await }
            })
            .await?;
            report.expired_tokens += n as u64;
            if n < 1000 {
                break;
            }
        }
        let script = self.feed_trim.clone();
        let trimmed: u64 = self
            .idem(|mut c| {
                let script = script.clone();
                async move {
                    script
                        .key(K_FEED)
                        .key(K_REVOKED)
                        .arg(now)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        report.feed_entries_trimmed = trimmed;
        if report.expired_tokens > 0 {
            self.incr_stats(&[("tokens_cleaned", report.expired_tokens as i64)])
                .await?;
        }
        Ok(report)
    }
}

#[async_trait]
impl ServiceCache for RedisStore {
    async fn cache_put(
        &self,
        service: &str,
        key: &str,
        value: &str,
        ttl: Option<u64>,
    ) -> StoreResult<()> {
        let k = k_cache(service, key);
        let value = value.to_string();
        self.idem(|mut c| {
            let (k, value) = (k.clone(), value.clone());
            async move {
                let mut cmd = ::redis::cmd("SET");
                cmd.arg(&k).arg(&value);
                if let Some(t) = ttl {
                    cmd.arg("EX").arg(t.max(1));
                }
                cmd.query_async::<()>(&mut c).await
            }
        })
        .await
    }

    async fn cache_get(&self, service: &str, key: &str) -> StoreResult<Option<String>> {
        let k = k_cache(service, key);
        self.idem(|mut c| {
            let k = k.clone();
            async move { ::redis::cmd("GET").arg(&k).query_async(&mut c).await }
        })
        .await
    }

    async fn cache_config(&self) -> StoreResult<CacheConfig> {
        let m: HashMap<String, String> = self
            .idem(|mut c| async move {
                ::redis::cmd("HGETALL")
                    .arg(K_CACHE_CONFIG)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let d = CacheConfig::DEFAULT;
        Ok(CacheConfig {
            default_ttl: m
                .get("default_ttl")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.default_ttl),
            max_entries_per_service: m
                .get("max_entries_per_service")
                .and_then(|v| v.parse().ok())
                .unwrap_or(d.max_entries_per_service),
        })
    }

    async fn set_cache_config(&self, cfg: &CacheConfig) -> StoreResult<()> {
        let cfg = cfg.clone();
        self.idem(|mut c| {
            let cfg = cfg.clone();
            async move {
                ::redis::cmd("HSET")
                    .arg(K_CACHE_CONFIG)
                    .arg("default_ttl")
                    .arg(cfg.default_ttl)
                    .arg("max_entries_per_service")
                    .arg(cfg.max_entries_per_service)
                    .query_async::<()>(&mut c)
                    .await
            }
        })
        .await
    }

    async fn cache_cleanup(&self, now: u64) -> StoreResult<CacheCleanupReport> {
        let started = std::time::Instant::now();
        let cfg = self.cache_config().await?;
        // Make sure the configuration is visible to operators with its defaults.
        self.set_cache_config(&cfg).await?;
        let keys = self.scan("cache:resource:*").await?;
        let mut by_service: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for k in keys {
            let svc = k.split(':').nth(2).unwrap_or("").to_string();
            by_service.entry(svc).or_default().push(k);
        }
        let mut report = CacheCleanupReport::default();
        let mut stats: Vec<(String, String)> = Vec::new();
        for (svc, keys) in by_service {
            report.services += 1;
            let mut idle: Vec<(i64, String)> = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(500) {
                let chunk: Vec<String> = chunk.to_vec();
                let vals: Vec<(i64, Option<i64>)> = self
                    .idem(|mut c| {
                        let chunk = chunk.clone();
                        async move {
                            let mut p = ::redis::pipe();
                            for k in &chunk {
                                p.ttl(k);
                                // Under an LFU eviction policy OBJECT IDLETIME errors; treat
                                // such keys as recently used rather than fail the pass.
                                p.cmd("OBJECT").arg("IDLETIME").arg(k);
                            }
                            let raw: Vec<Value> = p.query_async(&mut c).await?;
                            let mut out = Vec::with_capacity(chunk.len());
                            for pair in raw.chunks(2) {
                                let ttl = match pair.first() {
                                    Some(Value::Int(t)) => *t,
                                    _ => -2,
                                };
                                let idle = match pair.get(1) {
                                    Some(Value::Int(i)) => Some(*i),
                                    _ => None,
                                };
                                out.push((ttl, idle));
                            }
                            Ok(out)
                        }
                    })
                    .await?;
                let mut set_ttl = ::redis::pipe();
                let mut n_set = 0;
                for (k, (ttl, id)) in chunk.iter().zip(vals) {
                    if ttl == -2 {
                        continue; // gone meanwhile
                    }
                    if ttl == -1 {
                        set_ttl.expire(k, cfg.default_ttl as i64).ignore();
                        n_set += 1;
                    }
                    idle.push((id.unwrap_or(0), k.clone()));
                }
                if n_set > 0 {
                    self.idem(|mut c| {
                        let p = set_ttl.clone();
                        async move { p.query_async::<()>(&mut c).await }
                    })
                    .await?;
                    report.ttl_set += n_set;
                }
            }
            let max = cfg.max_entries_per_service as usize;
            if idle.len() > max {
                // Most idle first.
                idle.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                let excess = idle.len() - max;
                let victims: Vec<String> = idle.drain(..excess).map(|(_, k)| k).collect();
                for chunk in victims.chunks(500) {
                    let chunk = chunk.to_vec();
                    self.idem(|mut c| {
                        let chunk = chunk.clone();
                        async move {
                            let mut p = ::redis::pipe();
                            for k in &chunk {
                                p.cmd("UNLINK").arg(k).ignore();
                            }
                            p.query_async::<()>(&mut c).await
                        }
                    })
                    .await?;
                }
                report.trimmed += excess as u64;
            }
            report.entries += idle.len() as u64;
            stats.push((format!("entries:{svc}"), idle.len().to_string()));
        }
        stats.push(("services".into(), report.services.to_string()));
        stats.push(("entries".into(), report.entries.to_string()));
        stats.push(("last_cleanup".into(), now.to_string()));
        stats.push(("last_trimmed".into(), report.trimmed.to_string()));
        stats.push(("last_ttl_set".into(), report.ttl_set.to_string()));
        let metrics: Vec<(String, String)> = vec![
            ("last_run".into(), now.to_string()),
            (
                "last_duration_ms".into(),
                started.elapsed().as_millis().to_string(),
            ),
            ("last_services".into(), report.services.to_string()),
            ("last_entries".into(), report.entries.to_string()),
            ("last_trimmed".into(), report.trimmed.to_string()),
            ("last_ttl_set".into(), report.ttl_set.to_string()),
        ];
        let (trimmed, ttl_set) = (report.trimmed, report.ttl_set);
        self.idem(|mut c| {
            let (stats, metrics) = (stats.clone(), metrics.clone());
            async move {
                let mut p = ::redis::pipe();
                p.del(K_CACHE_STATS)
                    .ignore()
                    .hset_multiple(K_CACHE_STATS, &stats)
                    .ignore()
                    .hset_multiple(K_CACHE_METRICS, &metrics)
                    .ignore()
                    .hincr(K_CACHE_METRICS, "runs_total", 1)
                    .ignore()
                    .hincr(K_CACHE_METRICS, "trimmed_total", trimmed)
                    .ignore()
                    .hincr(K_CACHE_METRICS, "ttl_set_total", ttl_set)
                    .ignore();
                p.query_async::<()>(&mut c).await
            }
        })
        .await?;
        Ok(report)
    }

    async fn cache_stats(&self) -> StoreResult<BTreeMap<String, String>> {
        self.idem(|mut c| async move {
            ::redis::cmd("HGETALL")
                .arg(K_CACHE_STATS)
                .query_async(&mut c)
                .await
        })
        .await
    }
}
