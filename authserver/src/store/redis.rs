//! The Redis store: standalone (`redis://`, `rediss://`), Sentinel (`redis+sentinel://`) or
//! Cluster (`redis+cluster://`). Multi-key writes are one round trip: a `MULTI` pipeline or a
//! Lua script whose keys share a hash tag (`{revocations}`), so the layout is Cluster-ready.
//!
//! Durability (docs/reliability.md): writes whose loss would matter go through
//! [`RedisStore::write`], which appends `WAIT <replicas> <timeout>` to the same pipeline when
//! `TOLLGATE_REDIS_WAIT_REPLICAS` > 0, so they are acknowledged only once that many replicas
//! have them. Failover: a connection error, `READONLY` (a demoted master) or `LOADING`
//! drops the Sentinel connection so the next attempt asks the Sentinels again; idempotent
//! operations are retried with backoff for `TOLLGATE_STORE_RETRY_MS`, the others only when
//! the error proves the command did not run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo, Slot};
use ::redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use ::redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, Script, Value,
};
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
/// An ownership index ([`Owned`]): a sorted set of members scored by expiry.
fn k_owned(kind: Owned, owner: &str) -> String {
    format!("auth:owned:{}:{owner}", kind.as_str())
}
fn k_cache(service: &str, key: &str) -> String {
    format!("cache:resource:{service}:{key}")
}

/// Add a member to an ownership index (KEYS: the index; ARGV: member, exp, now): the later
/// expiry wins, members expired by `now` leave, and the index expires with its longest-lived
/// member.
const OWNED_ADD_LUA: &str = r"
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

fn owned_add(kind: Owned, owner: &str, member: &str, exp: u64) -> (String, Cmd) {
    let key = k_owned(kind, owner);
    let mut cmd = eval(OWNED_ADD_LUA, &[&key]);
    cmd.arg(member).arg(exp).arg(now_secs());
    (key, cmd)
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

/// Compare-and-set of one signing key (KEYS: `auth:keys`; ARGV: kid, expected record, new
/// record): 1 when replaced or already the new record (a retry), 0 when it changed or is
/// gone.
const KEY_CAS_LUA: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur == ARGV[3] then return 1 end
if cur ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
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

/// Consume a single-use record (KEYS: the record hash; ARGV: client_id, the consumer's
/// nonce). Returns {0, ''} when missing, {-1, ''} for another client's record (left
/// untouched), else {uses including this one, data}. The first consumer's nonce is kept
/// (`used_by`): a retry of the same call (after a lost answer, a `WAIT` shortfall or a
/// failover) is recognised and answered as the first use again, never as a replay.
const CONSUME_LUA: &str = r"
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
const UNCONSUME_LUA: &str = r"
local r = redis.call('HMGET', KEYS[1], 'used_by', 'used')
if r[1] == ARGV[1] and r[2] == '1' then
  redis.call('HSET', KEYS[1], 'used', 0)
  redis.call('HDEL', KEYS[1], 'used_by')
  return 1
end
return 0
";

/// Give back a consumption that was the only use (KEYS: the record). 1 when released.
const RELEASE_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'used') == '1' then
  redis.call('HSET', KEYS[1], 'used', 0)
  redis.call('HDEL', KEYS[1], 'used_by')
  return 1
end
return 0
";

/// Create a hash unless the key exists (KEYS: the hash; ARGV: the creator's nonce, then
/// field/value pairs). The nonce is kept in the field `created_by`, so a retry of the same
/// call (after a lost answer or a `WAIT` shortfall) is answered 1 like the first attempt;
/// 0 when someone else holds the key.
const CREATE_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'created_by') == ARGV[1] then return 1 end
  return 0
end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'created_by', ARGV[1])
return 1
";

/// Claim a one-time identifier (KEYS: the claim; ARGV: the claimer's nonce, expiry). 1 when
/// claimed now or by an earlier attempt of the same call, 0 when someone else claimed it.
const CLAIM_LUA: &str = r"
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
            Conn::Cluster(c) => Box::pin(async move {
                let r = c.req_packed_commands(pipeline, offset, count).await;
                let Some((host, port)) = moved_to(&r) else {
                    return r;
                };
                // The slot moved (a failover, a resharding). The client library follows
                // MOVED for single commands, not inside a pipeline or MULTI, where the node
                // refused every command (they all name the slot): nothing ran. A plain
                // command on the slot makes the library learn the new owner for later
                // calls; this pipeline goes straight there.
                if let Some(key) = first_key(pipeline) {
                    let _ = ::redis::cmd("EXISTS")
                        .arg(key)
                        .query_async::<Value>(&mut *c)
                        .await;
                }
                tracing::debug!(%host, port, "a Cluster slot moved: the pipeline follows it");
                let to = SingleNodeRoutingInfo::ByAddress { host, port };
                c.route_pipeline(pipeline.clone(), offset, count, to).await
            }),
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

/// The master connection of a Sentinel deployment: a generation number (so that a check
/// clears only the connection it checked), the master's address, the connection.
type MasterSlot = Arc<RwLock<Option<(u64, String, MultiplexedConnection)>>>;

struct SentinelBackend {
    client: Arc<Mutex<SentinelClient>>,
    conn: MasterSlot,
    config: AsyncConnectionConfig,
    generation: std::sync::atomic::AtomicU64,
    /// When the cached connection was last checked against the Sentinels.
    role_checked: std::sync::Mutex<Instant>,
}

/// How often a Sentinel connection in use checks that its server is still the master the
/// Sentinels name. A demoted master keeps answering reads (writes get `READONLY` and
/// reconnect at once); after a switchover the old master stays master until the Sentinels
/// reconfigure it, which can take their 10 s `INFO` period, and writes there would be lost.
const ROLE_CHECK_EVERY: Duration = Duration::from_secs(1);

impl SentinelBackend {
    /// True at most once per [`ROLE_CHECK_EVERY`].
    fn role_check_due(&self) -> bool {
        let mut last = self.role_checked.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() >= ROLE_CHECK_EVERY {
            *last = Instant::now();
            true
        } else {
            false
        }
    }
}

/// In the background: forget the master connection `gen` (to `addr`) unless its server
/// still says it is the master and the Sentinels still name it. A failed lookup changes
/// nothing (the Sentinels may be mid-failover); only a successful answer naming another
/// master does.
fn spawn_role_check(
    slot: MasterSlot,
    client: Arc<Mutex<SentinelClient>>,
    gen: u64,
    addr: String,
    mut conn: MultiplexedConnection,
    timeout: Duration,
) {
    tokio::spawn(async move {
        let role: Result<Value, RedisError> = ::redis::cmd("ROLE").query_async(&mut conn).await;
        let master = matches!(&role, Ok(Value::Array(v))
            if matches!(v.first(), Some(Value::BulkString(b)) if b.as_slice() == b"master"));
        let why = if !master {
            Some("is no longer master".to_string())
        } else {
            let named = tokio::time::timeout(timeout, async {
                client.lock().await.async_get_client().await
            })
            .await;
            match named {
                Ok(Ok(c)) if c.get_connection_info().addr().to_string() != addr => Some(format!(
                    "is not the master the Sentinels name ({})",
                    c.get_connection_info().addr()
                )),
                _ => None,
            }
        };
        if let Some(why) = why {
            let mut g = slot.write().await;
            if matches!(g.as_ref(), Some((g0, _, _)) if *g0 == gen) {
                tracing::warn!(master = %addr, "the Redis master {why}: reconnecting");
                *g = None;
            }
        }
    });
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
    /// How long idempotent operations are retried across connection loss and failover.
    pub retry_budget: Duration,
    /// Replicas that must confirm a durable write (`WAIT`); 0 = off.
    pub wait_replicas: u32,
    /// `WAIT` timeout (must be > 0 when `wait_replicas` > 0: `WAIT n 0` blocks forever).
    pub wait_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            feed_max: 100_000,
            retry_budget: Duration::from_secs(3),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(500),
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
    feed_read: Arc<Script>,
    feed_trim: Arc<Script>,
}

/// The code of a `WAIT` shortfall: the write ran on the master, but fewer replicas than
/// required confirmed it in time.
const UNREPLICATED: &str = "UNREPLICATED";

/// Every server error code an error carries, those of an aborted transaction's queued
/// commands included: a `MULTI` sent to a demoted master fails with `EXECABORT` because its
/// commands were refused with `READONLY`.
fn error_codes(e: &RedisError) -> Vec<String> {
    let mut codes: Vec<String> = e.code().map(|c| vec![c.to_string()]).unwrap_or_default();
    if let Some(items) = e.clone().into_server_errors() {
        codes.extend(items.iter().map(|(_, se)| se.code().to_string()));
    }
    codes
}

/// Errors that prove the command did not run (refused before execution): any operation may
/// be sent again.
fn not_executed(e: &RedisError) -> bool {
    e.is_connection_refusal()
        // The Sentinels name no usable master: mid-failover, the old one is gone and the new
        // one is not promoted yet.
        || matches!(
            e.kind(),
            ::redis::ErrorKind::MasterNameNotFoundBySentinel
                | ::redis::ErrorKind::NoValidReplicasFoundBySentinel
        )
        || error_codes(e).iter().any(|c| {
            matches!(
                c.as_str(),
                "READONLY"
                    | "LOADING"
                    | "MASTERDOWN"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "NOREPLICAS"
                    // A Cluster redirect: the node did not run the command.
                    | "MOVED"
                    | "ASK"
            )
        })
}

/// Connectivity, failover and replication errors: worth another attempt (for idempotent
/// operations), answered 503 when the attempts are spent.
fn is_transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_cluster_error()
        || not_executed(e)
        || error_codes(e).iter().any(|c| c == UNREPLICATED)
}

fn first_error(values: &[Value]) -> Result<(), RedisError> {
    match values.iter().find_map(|v| match v {
        Value::ServerError(e) => Some(e.clone()),
        _ => None,
    }) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn unexpected(what: &'static str, got: Option<Value>) -> RedisError {
    RedisError::from((
        ::redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        format!("{what}: {got:?}"),
    ))
}

/// The `i`th reply of a [`RedisStore::write`], decoded.
fn reply<T: FromRedisValue>(replies: &[Value], i: usize) -> Result<T, RedisError> {
    let v = replies
        .get(i)
        .cloned()
        .ok_or_else(|| unexpected("missing reply", None))?;
    Ok(::redis::from_redis_value(v)?)
}

/// `EVAL` of a script (the source each time: after a failover the new master's script
/// cache is empty, and a pipeline cannot recover from `NOSCRIPT` by itself).
fn eval(src: &str, keys: &[&str]) -> Cmd {
    let mut c = ::redis::cmd("EVAL");
    c.arg(src).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c
}

impl Batch {
    /// The indices of the commands, grouped by Cluster slot in the order of first
    /// appearance; one group when not on Cluster.
    fn slot_groups(&self, cluster: bool) -> Vec<Vec<usize>> {
        if !cluster {
            return vec![(0..self.cmds.len()).collect()];
        }
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut slot_group: HashMap<Slot, usize> = HashMap::new();
        for (i, (key, _)) in self.cmds.iter().enumerate() {
            let g = *slot_group.entry(Slot::for_key(key)).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(i);
        }
        groups
    }
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
        if opts.wait_replicas > 0 && opts.wait_timeout.is_zero() {
            return Err(StoreError::Config(
                "WAIT needs a timeout above 0 (WAIT n 0 blocks forever)".into(),
            ));
        }
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
                    client: Arc::new(Mutex::new(client)),
                    conn: Arc::new(RwLock::new(None)),
                    config,
                    generation: std::sync::atomic::AtomicU64::new(0),
                    role_checked: std::sync::Mutex::new(Instant::now()),
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
            feed_read: Arc::new(Script::new(FEED_READ_LUA)),
            feed_trim: Arc::new(Script::new(FEED_TRIM_LUA)),
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
                if let Some((gen, addr, c)) = s.conn.read().await.as_ref() {
                    if s.role_check_due() {
                        spawn_role_check(
                            s.conn.clone(),
                            s.client.clone(),
                            *gen,
                            addr.clone(),
                            c.clone(),
                            self.opts.connect_timeout * 2,
                        );
                    }
                    return Ok(Conn::Multiplexed(c.clone()));
                }
                let mut slot = s.conn.write().await;
                if let Some((_, _, c)) = slot.as_ref() {
                    return Ok(Conn::Multiplexed(c.clone()));
                }
                // Ask the Sentinels for the master (the client checks its ROLE), connect.
                let timeout = self.opts.connect_timeout * 2;
                let fresh = tokio::time::timeout(timeout, async {
                    let master = s.client.lock().await.async_get_client().await?;
                    let addr = master.get_connection_info().addr().to_string();
                    let conn = master
                        .get_multiplexed_async_connection_with_config(&s.config)
                        .await?;
                    Ok::<_, RedisError>((addr, conn))
                })
                .await
                .map_err(|_| StoreError::Unavailable("sentinel lookup timed out".into()))?
                .map_err(map_err)?;
                let gen = s
                    .generation
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (addr, conn) = fresh;
                tracing::info!(master = %addr, "connected to the Redis master named by Sentinel");
                *slot = Some((gen, addr, conn.clone()));
                Ok(Conn::Multiplexed(conn))
            }
        }
    }

    /// After a connectivity, failover or replication error on a Sentinel-managed
    /// connection, forget it so that the next call asks the Sentinels for the (possibly
    /// new) master. A `WAIT` shortfall counts too: a master cut off from its replicas may
    /// have been replaced.
    async fn on_error(&self, e: &RedisError) {
        if let Backend::Sentinel(s) = &self.backend {
            if is_transient(e) {
                *s.conn.write().await = None;
            }
        }
    }

    /// Run an idempotent operation: on a transient error (connection lost, failover,
    /// `READONLY`, `WAIT` shortfall) retry with backoff, after re-resolving the master when
    /// behind Sentinel, for at most `retry_budget`.
    async fn idem<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.retrying(f, is_transient).await
    }

    /// Run a non-idempotent operation: sent again only when the error proves it did not run
    /// (connection refused, `READONLY`, `LOADING`, ...), never after a lost answer.
    async fn once<T, F, Fut>(&self, f: F) -> StoreResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.retrying(f, not_executed).await
    }

    async fn retrying<T, F, Fut>(&self, f: F, retry: fn(&RedisError) -> bool) -> StoreResult<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let deadline = Instant::now() + self.opts.retry_budget;
        let mut pause = Duration::from_millis(25);
        loop {
            let err = match self.conn().await {
                // No connection: nothing was sent.
                Err(e) => e,
                Ok(c) => match f(c).await {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        self.on_error(&e).await;
                        if !retry(&e) {
                            return Err(map_err(e));
                        }
                        map_err(e)
                    }
                },
            };
            if !matches!(err, StoreError::Unavailable(_)) || Instant::now() + pause > deadline {
                return Err(err);
            }
            metrics::counter!("tollgate_store_retries_total").increment(1);
            tracing::debug!(error = %err, "store operation failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(400));
        }
    }

    /// Send a write in one pipeline (so on one connection): `cmds`, inside `MULTI`/`EXEC`
    /// when `atomic`, then, when `durable` and `wait_replicas` > 0, `WAIT <replicas>
    /// <timeout>`, which answers how many replicas have everything this connection wrote so
    /// far. Fewer than required is an `UNREPLICATED` error: the write ran on the master and
    /// may survive there, but it is not acknowledged. `WAIT` is outside the transaction
    /// (inside one it would not block). On Cluster the pipeline goes to the node of its
    /// keyed commands, `WAIT` with it. Returns the replies of `cmds`.
    async fn write(
        &self,
        mut c: Conn,
        cmds: &[Cmd],
        atomic: bool,
        durable: bool,
    ) -> Result<Vec<Value>, RedisError> {
        let wait = if durable { self.opts.wait_replicas } else { 0 };
        let mut p = ::redis::pipe();
        if atomic {
            p.cmd("MULTI");
        }
        for cmd in cmds {
            p.add_command(cmd.clone());
        }
        if atomic {
            p.cmd("EXEC");
        }
        if wait > 0 {
            p.cmd("WAIT")
                .arg(wait)
                .arg(self.opts.wait_timeout.as_millis() as u64);
        }
        let mut raw = c.req_packed_commands(&p, 0, p.len()).await?;
        let waited = if wait > 0 { raw.pop() } else { None };
        // A refused queued command (READONLY) explains the EXECABORT that follows it.
        first_error(&raw)?;
        let replies = if atomic {
            match raw.pop() {
                Some(Value::Array(items)) => items,
                other => return Err(unexpected("EXEC", other)),
            }
        } else {
            raw
        };
        first_error(&replies)?;
        match waited {
            None => {}
            Some(Value::Int(n)) if n >= i64::from(wait) => {}
            Some(Value::Int(n)) => {
                metrics::counter!("tollgate_store_wait_shortfalls_total").increment(1);
                return Err(::redis::make_extension_error(
                    UNREPLICATED.into(),
                    Some(format!(
                        "WAIT: {n} of {wait} replicas confirmed the write within {} ms \
                         (it may still be on the master)",
                        self.opts.wait_timeout.as_millis()
                    )),
                ));
            }
            Some(other) => return Err(unexpected("WAIT", Some(other))),
        }
        Ok(replies)
    }

    /// A durable [`Batch`]: one [`Self::write`] (one `WAIT`) per Cluster slot, sent at once;
    /// elsewhere everything in one pipeline. Replies in the order the commands were added.
    async fn write_batch(&self, b: &Batch, c: Conn) -> Result<Vec<Value>, RedisError> {
        let groups = b.slot_groups(self.cluster);
        let runs = groups.iter().map(|idx| {
            let cmds: Vec<Cmd> = idx.iter().map(|&i| b.cmds[i].1.clone()).collect();
            let c = c.clone();
            async move { self.write(c, &cmds, b.atomic, true).await }
        });
        let results = futures::future::try_join_all(runs).await?;
        let mut out = vec![Value::Nil; b.cmds.len()];
        for (idx, vals) in groups.iter().zip(results) {
            for (&i, v) in idx.iter().zip(vals) {
                out[i] = v;
            }
        }
        Ok(out)
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

    /// `DEL` of one key, durable; whether it existed.
    async fn del(&self, key: &str) -> StoreResult<bool> {
        let mut cmd = ::redis::cmd("DEL");
        cmd.arg(key);
        let n: i64 = self.write_one(&cmd).await?;
        Ok(n > 0)
    }

    /// One durable single-key command (or script) through [`Self::write`], retried as an
    /// idempotent operation; its reply.
    async fn write_one<T: FromRedisValue>(&self, cmd: &Cmd) -> StoreResult<T> {
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

/// The `INFO` fields `authserver status` shows (per node on a Cluster).
const INFO_FIELDS: [&str; 11] = [
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

impl RedisStore {
    /// A Cluster's state (`CLUSTER INFO`), its nodes as `CLUSTER NODES` lists them (every
    /// node, replicas and failed nodes included) and, from each node that is not marked
    /// failed, its role, replication and persistence (`INFO`), as `node.<host:port>.<field>`.
    /// The role is `cluster`; `primaries` counts the primaries that serve slots, `replicas`
    /// the replicas not marked failed.
    async fn cluster_backend_info(&self) -> StoreResult<BackendInfo> {
        let (cluster, topology, infos) = self
            .idem(|c| async move {
                let Conn::Cluster(mut cc) = c else {
                    return Err(RedisError::from((
                        ::redis::ErrorKind::InvalidClientConfig,
                        "not a cluster connection",
                    )));
                };
                let cluster: String = ::redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut cc)
                    .await?;
                let topology: String = ::redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut cc)
                    .await?;
                let mut infos: BTreeMap<String, Result<String, String>> = BTreeMap::new();
                for node in parse_cluster_nodes(&topology) {
                    if node.failed {
                        continue;
                    }
                    let Some((host, port)) = node
                        .addr
                        .rsplit_once(':')
                        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                    else {
                        continue;
                    };
                    let route =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let info = cc
                        .route_command(::redis::cmd("INFO"), route)
                        .await
                        .and_then(|v| Ok(::redis::from_redis_value::<String>(v)?))
                        .map_err(|e| e.to_string());
                    infos.insert(node.addr, info);
                }
                Ok((cluster, topology, infos))
            })
            .await?;
        let mut details = BTreeMap::new();
        for line in cluster.lines() {
            if let Some((k, v)) = line.trim().split_once(':') {
                if matches!(
                    k,
                    "cluster_state" | "cluster_slots_ok" | "cluster_known_nodes" | "cluster_size"
                ) {
                    details.insert(k.to_string(), v.to_string());
                }
            }
        }
        let (mut primaries, mut replicas) = (0, 0);
        for node in parse_cluster_nodes(&topology) {
            let addr = &node.addr;
            details.insert(format!("node.{addr}.flags"), node.flags.clone());
            details.insert(format!("node.{addr}.link_state"), node.link_state.clone());
            if !node.slots.is_empty() {
                details.insert(format!("node.{addr}.slots"), node.slots.join(" "));
            }
            if !node.failed {
                if node.primary && !node.slots.is_empty() {
                    primaries += 1;
                } else if !node.primary {
                    replicas += 1;
                }
            }
        }
        for (addr, info) in infos {
            match info {
                Ok(text) => {
                    for line in text.lines() {
                        if let Some((k, v)) = line.trim().split_once(':') {
                            if INFO_FIELDS.contains(&k) || k.starts_with("slave") {
                                details.insert(format!("node.{addr}.{k}"), v.to_string());
                            }
                        }
                    }
                }
                Err(e) => {
                    details.insert(format!("node.{addr}.error"), e);
                }
            }
        }
        details.insert("primaries".into(), primaries.to_string());
        details.insert("replicas".into(), replicas.to_string());
        Ok(BackendInfo {
            kind: "redis+cluster".into(),
            role: "cluster".into(),
            details,
        })
    }

    /// Write a single-use record (code or refresh token): hash {data, client_id, used=0}
    /// expiring at `exp`, in one MULTI; `durable`: acknowledged after `WAIT`.
    async fn save_single_use(
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

    async fn release_single_use(&self, key: String) -> StoreResult<()> {
        let cmd = eval(RELEASE_LUA, &[&key]);
        let cmd = &cmd;
        self.idem(|c| async move {
            self.write(c, std::slice::from_ref(cmd), false, false)
                .await
                .map(drop)
        })
        .await
    }

    async fn consume_single_use<T: serde::de::DeserializeOwned>(
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

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Commands that may touch keys in several Cluster slots, each with the key it touches; one
/// round trip. Standalone and Sentinel: one pipeline (one `MULTI` when atomic). Cluster,
/// where a pipeline or a `MULTI` must stay in one slot: one pipeline (one `MULTI` when
/// atomic) per slot, all sent at once, so atomicity holds per slot, and the commands on one
/// key keep their order. Results come back in the order the commands were added.
#[derive(Clone, Default)]
struct Batch {
    cmds: Vec<(String, Cmd)>,
    atomic: bool,
    /// A command's error is its result (a `Value::ServerError`) instead of failing the batch.
    errors_as_values: bool,
}

impl Batch {
    fn atomic() -> Batch {
        Batch {
            atomic: true,
            ..Batch::default()
        }
    }

    fn add(&mut self, key: &str, cmd: Cmd) -> &mut Batch {
        self.cmds.push((key.to_string(), cmd));
        self
    }

    fn pipeline<'a>(&self, cmds: impl Iterator<Item = &'a Cmd>) -> Pipeline {
        let mut p = ::redis::pipe();
        if self.atomic {
            p.atomic();
        }
        if self.errors_as_values {
            p.ignore_errors();
        }
        for c in cmds {
            p.add_command(c.clone());
        }
        p
    }

    async fn run(&self, cluster: bool, mut conn: Conn) -> Result<Vec<Value>, RedisError> {
        if self.cmds.is_empty() {
            return Ok(Vec::new());
        }
        if !cluster {
            return self
                .pipeline(self.cmds.iter().map(|(_, c)| c))
                .query_async(&mut conn)
                .await;
        }
        let groups = self.slot_groups(true);
        let runs = groups.iter().map(|idx| {
            let p = self.pipeline(idx.iter().map(|&i| &self.cmds[i].1));
            let mut c = conn.clone();
            async move { p.query_async::<Vec<Value>>(&mut c).await }
        });
        let results = futures::future::try_join_all(runs).await?;
        let mut out = vec![Value::Nil; self.cmds.len()];
        for (idx, vals) in groups.iter().zip(results) {
            if vals.len() != idx.len() {
                return Err(RedisError::from((
                    ::redis::ErrorKind::UnexpectedReturnType,
                    "a pipeline answered with a different number of results",
                )));
            }
            for (&i, v) in idx.iter().zip(vals) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Where a `MOVED` among a pipeline's or a transaction's replies points: (host, port).
fn moved_to(r: &Result<Vec<Value>, RedisError>) -> Option<(String, u16)> {
    let detail = match r {
        Ok(values) => values.iter().find_map(|v| match v {
            Value::ServerError(e) if e.code() == "MOVED" => e.details().map(str::to_string),
            _ => None,
        }),
        Err(e) => e
            .clone()
            .into_server_errors()?
            .iter()
            .find(|(_, se)| se.code() == "MOVED")
            .and_then(|(_, se)| se.details().map(str::to_string)),
    }?;
    // "<slot> <host>:<port>"
    let (h, p) = detail.split_whitespace().nth(1)?.rsplit_once(':')?;
    Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
}

/// The first key a pipeline's commands name (the argument after the command's name; for a
/// script, its first key), to send a probe to that key's slot.
fn first_key(p: &Pipeline) -> Option<Vec<u8>> {
    for cmd in p.cmd_iter() {
        let args: Vec<&[u8]> = cmd
            .args_iter()
            .filter_map(|a| match a {
                ::redis::Arg::Simple(d) => Some(d),
                _ => None,
            })
            .collect();
        let Some(name) = args.first() else { continue };
        match name.to_ascii_uppercase().as_slice() {
            b"MULTI" | b"EXEC" | b"DISCARD" | b"WAIT" | b"PING" => continue,
            b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
                let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
                if numkeys > 0 {
                    return args.get(3).map(|k| k.to_vec());
                }
            }
            _ => return args.get(1).map(|k| k.to_vec()),
        }
    }
    None
}

/// One line of `CLUSTER NODES`.
struct ClusterNode {
    /// `host:port` (the bus port and hostname left out).
    addr: String,
    flags: String,
    primary: bool,
    /// Marked failing (`fail`, `fail?`), or not usable yet (`handshake`, `noaddr`).
    failed: bool,
    link_state: String,
    slots: Vec<String>,
}

fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let addr = f[1].split(['@', ',']).next()?.to_string();
            let flags: Vec<&str> = f[2].split(',').collect();
            Some(ClusterNode {
                addr,
                flags: f[2].to_string(),
                primary: flags.contains(&"master"),
                failed: flags
                    .iter()
                    .any(|x| matches!(*x, "fail" | "fail?" | "handshake" | "noaddr")),
                link_state: f[7].to_string(),
                slots: f[8..].iter().map(|s| s.to_string()).collect(),
            })
        })
        .collect()
}

/// `host:port` of a Cluster node as the client names it.
fn node_addr(addr: &Value) -> Result<(String, u16), RedisError> {
    let s: String = ::redis::from_redis_value_ref(addr)?;
    s.rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
        .ok_or_else(|| {
            RedisError::from((
                ::redis::ErrorKind::UnexpectedReturnType,
                "a cluster node address without a port",
                s,
            ))
        })
}

/// Send `cmd` to every primary (or every node) of a Cluster; the answers by node address.
async fn on_each_node(
    c: &mut ClusterConnection,
    cmd: &Cmd,
    which: MultipleNodeRoutingInfo,
) -> Result<Vec<((String, u16), Value)>, RedisError> {
    let v = c
        .route_command(cmd.clone(), RoutingInfo::MultiNode((which, None)))
        .await?;
    let Value::Map(pairs) = v else {
        return Err(RedisError::from((
            ::redis::ErrorKind::UnexpectedReturnType,
            "a multi-node command did not answer by node",
        )));
    };
    let mut out = Vec::with_capacity(pairs.len());
    for (addr, v) in pairs {
        if let Value::ServerError(e) = v {
            return Err(e.into());
        }
        out.push((node_addr(&addr)?, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `SCAN` every primary of a Cluster to the end (a plain `SCAN` sees one node only).
async fn scan_cluster(c: &mut ClusterConnection, pattern: &str) -> Result<Vec<String>, RedisError> {
    let scan = |cursor: u64| {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        cmd
    };
    let mut out = Vec::new();
    for ((host, port), first) in
        on_each_node(c, &scan(0), MultipleNodeRoutingInfo::AllMasters).await?
    {
        let (mut cursor, keys): (u64, Vec<String>) = ::redis::from_redis_value(first)?;
        out.extend(keys);
        while cursor != 0 {
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port,
            });
            let v = c.route_command(scan(cursor), route).await?;
            let (next, keys): (u64, Vec<String>) = ::redis::from_redis_value(v)?;
            out.extend(keys);
            cursor = next;
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
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
        user_id: m.get("user_id").cloned(),
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
        if self.cluster {
            return self.cluster_backend_info().await;
        }
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
        for line in repl
            .lines()
            .chain(server.lines())
            .chain(persistence.lines())
        {
            if let Some((k, v)) = line.trim().split_once(':') {
                if INFO_FIELDS.contains(&k) || k.starts_with("slave") {
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
        // The script claims the id and writes the record only when it is free (one key, one
        // slot); a retry of this call recognises its own record (CREATE_LUA).
        let mut cmd = eval(CREATE_LUA, &[&key]);
        cmd.arg(crate::crypto::random_b64(16));
        for (f, v) in &fields {
            cmd.arg(*f).arg(v);
        }
        let created: i64 = self.write_one(&cmd).await?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict(client.client_id.clone()))
        }
    }

    async fn put_client(&self, client: &ClientRecord) -> StoreResult<()> {
        let key = k_client(&client.client_id);
        let fields = client_to_fields(client)?;
        let mut del = ::redis::cmd("DEL");
        del.arg(&key);
        let mut hset = ::redis::cmd("HSET");
        hset.arg(&key);
        for (f, v) in &fields {
            hset.arg(*f).arg(v);
        }
        let cmds = [del, hset];
        let cmds = &cmds;
        self.idem(|c| async move { self.write(c, cmds, true, true).await.map(drop) })
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
        if let Some(uid) = &rec.user_id {
            fields.push(("user_id", uid.clone()));
        }
        // One MULTI; on Cluster one per slot: the record with its expiry, the cleanup index
        // and the counter each stay whole.
        let mut b = Batch::atomic();
        let mut hset = ::redis::cmd("HSET");
        hset.arg(&key).arg(&fields);
        let mut expire = ::redis::cmd("EXPIREAT");
        expire.arg(&key).arg(rec.exp);
        let mut zadd = ::redis::cmd("ZADD");
        zadd.arg(K_TOKEN_CLEANUP).arg(rec.exp).arg(&rec.jti);
        let mut hincr = ::redis::cmd("HINCRBY");
        hincr.arg(K_STATS).arg("tokens_issued").arg(1);
        b.add(&key, hset)
            .add(&key, expire)
            .add(K_TOKEN_CLEANUP, zadd)
            .add(K_STATS, hincr);
        let mut owners = vec![client_owner(&rec.client_id)];
        owners.extend(rec.user_id.as_deref().map(user_owner));
        for o in &owners {
            let (k, cmd) = owned_add(Owned::AccessTokens, o, &rec.jti, rec.exp);
            b.add(&k, cmd);
        }
        let cluster = self.cluster;
        // Not durable (docs/reliability.md): a lost access-token record makes an opaque token
        // inactive and a JWT unknown to introspection, never the reverse. Sent again only when
        // it certainly did not run (the counter would count twice).
        self.once(|c| {
            let b = b.clone();
            async move { b.run(cluster, c).await.map(|_| ()) }
        })
        .await
    }

    async fn get_access_token(&self, jti: &str) -> StoreResult<(Option<AccessTokenRecord>, bool)> {
        let (key, bl) = (k_access(jti), k_blacklist(jti));
        let mut b = Batch::default();
        b.add(&key, ::redis::cmd("HGETALL").arg(&key).clone())
            .add(&bl, ::redis::cmd("EXISTS").arg(&bl).clone());
        let cluster = self.cluster;
        let (m, revoked): (HashMap<String, String>, bool) = self
            .idem(|c| {
                let b = b.clone();
                async move {
                    Ok(::redis::from_redis_value(Value::Array(
                        b.run(cluster, c).await?,
                    ))?)
                }
            })
            .await?;
        Ok((token_from_fields(jti, m)?, revoked))
    }

    async fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<bool> {
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
            .arg(self.opts.feed_max);
        let mut b = Batch::default();
        b.add(&bl, set).add(K_REVOKED, append);
        let b = &b;
        // The blacklist entry (what introspection reads) and the feed entry, which the script
        // adds only once per jti: a retry after a failure completes both. One pipeline and
        // one WAIT; on Cluster one per slot.
        let new: i64 = self
            .idem(|c| async move { reply(&self.write_batch(b, c).await?, 1) })
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
        // Entries are served until `exp + REVOCATION_RETENTION_SECS`.
        let now = now_secs().saturating_sub(REVOCATION_RETENTION_SECS);
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
        let mut cmd = ::redis::cmd("HSET");
        cmd.arg(K_KEYS).arg(&key.kid).arg(&json);
        self.write_one::<Value>(&cmd).await.map(drop)
    }

    async fn replace_key(&self, expected: &StoredKey, new: &StoredKey) -> StoreResult<bool> {
        if new.kid != expected.kid {
            return Ok(false);
        }
        let old = serde_json::to_string(expected).map_err(|e| corrupt(K_KEYS, e))?;
        let json = serde_json::to_string(new).map_err(|e| corrupt(K_KEYS, e))?;
        let mut cmd = eval(KEY_CAS_LUA, &[K_KEYS]);
        cmd.arg(&new.kid).arg(&old).arg(&json);
        let done: i64 = self.write_one(&cmd).await?;
        Ok(done == 1)
    }

    async fn delete_key(&self, kid: &str) -> StoreResult<()> {
        let mut cmd = ::redis::cmd("HDEL");
        cmd.arg(K_KEYS).arg(kid);
        self.write_one::<Value>(&cmd).await.map(drop)
    }

    async fn incr_stats(&self, counters: &[(&str, i64)]) -> StoreResult<()> {
        if counters.is_empty() {
            return Ok(());
        }
        let mut p = ::redis::pipe();
        for (k, v) in counters {
            p.hincr(K_STATS, *k, *v).ignore();
        }
        let p = &p;
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
        // Durable: it may hold the secret pepper, without which no client secret verifies.
        let mut cmd = ::redis::cmd("HSET");
        cmd.arg(K_CONFIG).arg(fields);
        self.write_one::<Value>(&cmd).await.map(drop)
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        let key = k_user(&user.username);
        // A retry of this call recognises its own record (CREATE_LUA).
        let mut cmd = eval(CREATE_LUA, &[&key]);
        cmd.arg(crate::crypto::random_b64(16))
            .arg("username")
            .arg(&user.username)
            .arg("password_hash")
            .arg(&user.password_hash)
            .arg("created_at")
            .arg(user.created_at)
            .arg("user_id")
            .arg(&user.user_id);
        let created: i64 = self.write_one(&cmd).await?;
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
            user_id: m.get("user_id").cloned().unwrap_or_default(),
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
        let mut b = Batch::atomic();
        let mut set = ::redis::cmd("SET");
        set.arg(&key).arg(&json).arg("EXAT").arg(rec.exp);
        b.add(&key, set);
        if !rec.user_id.is_empty() {
            let (k, cmd) = owned_add(Owned::Sessions, &user_owner(&rec.user_id), id_hash, rec.exp);
            b.add(&k, cmd);
        }
        let cluster = self.cluster;
        self.idem(|c| {
            let b = b.clone();
            async move { b.run(cluster, c).await.map(drop) }
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
        // Not durable: a lost code only sends the user through the login again.
        self.save_single_use(key, json, rec.client_id.clone(), rec.exp, false)
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
        self.save_single_use(key, json, rec.client_id.clone(), rec.exp, true)
            .await
    }

    async fn consume_refresh_token(
        &self,
        hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<RefreshTokenRecord>> {
        self.consume_single_use(k_refresh(hash), client_id).await
    }

    async fn release_refresh_token(&self, hash: &str) -> StoreResult<()> {
        self.release_single_use(k_refresh(hash)).await
    }

    async fn release_auth_code(&self, code_hash: &str) -> StoreResult<()> {
        self.release_single_use(k_code(code_hash)).await
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
        // One key per command: the keys live in different Cluster slots.
        let mut b = Batch::default();
        for h in hashes {
            let k = k_refresh(h);
            b.add(&k, ::redis::cmd("DEL").arg(&k).clone());
        }
        let b = &b;
        self.idem(|c| async move { self.write_batch(b, c).await.map(drop) })
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
        let mut cmd = eval(FAMILY_ADD_LUA, &[&keys[0], &keys[1], &keys[2]]);
        cmd.arg(exp).arg(access.len());
        for (jti, e) in access {
            cmd.arg(jti).arg(*e);
        }
        for h in refresh {
            cmd.arg(h);
        }
        let ok: i64 = self.write_one(&cmd).await?;
        Ok(ok == 1)
    }

    async fn revoke_family(&self, grant_id: &str, exp: u64) -> StoreResult<FamilyTokens> {
        let keys = k_family(grant_id);
        let mut cmd = eval(FAMILY_REVOKE_LUA, &[&keys[0], &keys[1], &keys[2]]);
        cmd.arg(exp);
        let (at, rt): (Vec<String>, Vec<String>) = self.write_one(&cmd).await?;
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

    async fn index_owned(
        &self,
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
        let cluster = self.cluster;
        self.idem(|c| {
            let b = b.clone();
            async move { b.run(cluster, c).await.map(drop) }
        })
        .await
    }

    async fn list_owned(
        &self,
        owner: &str,
        kind: Owned,
        now: u64,
    ) -> StoreResult<Vec<(String, u64)>> {
        let key = k_owned(kind, owner);
        let got: Vec<(String, f64)> = self
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

    async fn clear_owned(&self, owner: &str, kind: Owned) -> StoreResult<()> {
        self.del(&k_owned(kind, owner)).await.map(drop)
    }

    async fn claim_assertion_jti(&self, key: &str, exp: u64) -> StoreResult<bool> {
        let key = k_assertion(key);
        // A nonce makes a retry of this call see its own claim (CLAIM_LUA).
        let mut cmd = eval(CLAIM_LUA, &[&key]);
        cmd.arg(crate::crypto::random_b64(16)).arg(exp);
        let claimed: i64 = self.write_one(&cmd).await?;
        Ok(claimed == 1)
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
            let mut b = Batch::default();
            for jti in &expired {
                // The records expire by TTL; this removes anything left without one.
                let k = k_access(jti);
                b.add(&k, ::redis::cmd("DEL").arg(&k).clone());
            }
            b.add(
                K_TOKEN_CLEANUP,
                ::redis::cmd("ZREM")
                    .arg(K_TOKEN_CLEANUP)
                    .arg(&expired)
                    .clone(),
            );
            let cluster = self.cluster;
            self.idem(|c| {
                let b = b.clone();
                async move { b.run(cluster, c).await.map(|_| ()) }
            })
            .await?;
            report.expired_tokens += n as u64;
            if n < 1000 {
                break;
            }
        }
        let script = self.feed_trim.clone();
        let horizon = now.saturating_sub(REVOCATION_RETENTION_SECS);
        let trimmed: u64 = self
            .idem(|mut c| {
                let script = script.clone();
                async move {
                    script
                        .key(K_FEED)
                        .key(K_REVOKED)
                        .arg(horizon)
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
        let cluster = self.cluster;
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
                let mut b = Batch {
                    // Under an LFU eviction policy OBJECT IDLETIME errors; treat such keys
                    // as recently used rather than fail the pass.
                    errors_as_values: true,
                    ..Batch::default()
                };
                for k in &chunk {
                    b.add(k, ::redis::cmd("TTL").arg(k).clone())
                        .add(k, ::redis::cmd("OBJECT").arg("IDLETIME").arg(k).clone());
                }
                let vals: Vec<(i64, Option<i64>)> = self
                    .idem(|c| {
                        let (chunk, b) = (chunk.clone(), b.clone());
                        async move {
                            let raw: Vec<Value> = b.run(cluster, c).await?;
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
                let mut set_ttl = Batch::default();
                let mut n_set = 0;
                for (k, (ttl, id)) in chunk.iter().zip(vals) {
                    if ttl == -2 {
                        continue; // gone meanwhile
                    }
                    if ttl == -1 {
                        set_ttl.add(
                            k,
                            ::redis::cmd("EXPIRE")
                                .arg(k)
                                .arg(cfg.default_ttl as i64)
                                .clone(),
                        );
                        n_set += 1;
                    }
                    idle.push((id.unwrap_or(0), k.clone()));
                }
                if n_set > 0 {
                    self.idem(|c| {
                        let b = set_ttl.clone();
                        async move { b.run(cluster, c).await.map(|_| ()) }
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
                    let mut b = Batch::default();
                    for k in chunk {
                        b.add(k, ::redis::cmd("UNLINK").arg(k).clone());
                    }
                    self.idem(|c| {
                        let b = b.clone();
                        async move { b.run(cluster, c).await.map(|_| ()) }
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
        // The stats hash is replaced in one MULTI (on Cluster: one per key), so a reader
        // never sees it empty.
        let mut b = Batch::atomic();
        let hincr = |field: &str, by: u64| {
            ::redis::cmd("HINCRBY")
                .arg(K_CACHE_METRICS)
                .arg(field)
                .arg(by)
                .clone()
        };
        b.add(
            K_CACHE_STATS,
            ::redis::cmd("DEL").arg(K_CACHE_STATS).clone(),
        )
        .add(
            K_CACHE_STATS,
            ::redis::cmd("HSET").arg(K_CACHE_STATS).arg(&stats).clone(),
        )
        .add(
            K_CACHE_METRICS,
            ::redis::cmd("HSET")
                .arg(K_CACHE_METRICS)
                .arg(&metrics)
                .clone(),
        )
        .add(K_CACHE_METRICS, hincr("runs_total", 1))
        .add(K_CACHE_METRICS, hincr("trimmed_total", trimmed))
        .add(K_CACHE_METRICS, hincr("ttl_set_total", ttl_set));
        self.idem(|c| {
            let b = b.clone();
            async move { b.run(cluster, c).await.map(|_| ()) }
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

#[cfg(test)]
mod durability_tests {
    //! `WAIT`, failover errors and retry-safe single-use operations against real
    //! redis-server processes (a master and, where needed, a replica).

    use super::*;
    use crate::testutil::RedisServer;

    fn opts(wait_replicas: u32) -> RedisOptions {
        RedisOptions {
            wait_replicas,
            wait_timeout: Duration::from_millis(200),
            retry_budget: Duration::from_millis(300),
            ..Default::default()
        }
    }

    async fn store(server: &RedisServer, o: RedisOptions) -> RedisStore {
        RedisStore::connect(&StoreUrl::parse(&server.url(0)).unwrap(), o)
            .await
            .unwrap()
    }

    fn direct(server: &RedisServer) -> ::redis::Connection {
        ::redis::Client::open(server.url(0))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn client(id: &str) -> ClientRecord {
        ClientRecord {
            client_id: id.into(),
            secret_hash: Some(format!("hmac-sha256:{id}")),
            registration_token_hash: None,
            metadata: ClientMetadata {
                grant_types: vec!["client_credentials".into()],
                token_endpoint_auth_method: "client_secret_basic".into(),
                scope: "a".into(),
                access_token_format: "jwt".into(),
                ..Default::default()
            },
            created_at: 1,
            updated_at: 1,
        }
    }

    fn refresh(exp: u64) -> RefreshTokenRecord {
        RefreshTokenRecord {
            client_id: "c1".into(),
            sub: "alice".into(),
            user_id: "u-alice".into(),
            scope: "a".into(),
            aud: "api".into(),
            grant_id: "g1".into(),
            iat: now_secs(),
            exp,
        }
    }

    #[tokio::test]
    async fn acknowledged_durable_writes_are_on_the_replica() {
        let Some(master) = RedisServer::start() else {
            return;
        };
        let replica = master.replica();
        let s = store(&master, opts(1)).await;
        let exp = now_secs() + 600;
        s.create_client(&client("c1")).await.unwrap();
        s.revoke_access_token("j1", exp).await.unwrap();
        s.save_refresh_token("h1", &refresh(exp)).await.unwrap();
        assert!(matches!(
            s.consume_refresh_token("h1", "c1").await.unwrap(),
            Consumed::Fresh(_)
        ));
        assert!(s
            .family_add("g1", &[("j2".into(), exp)], &["h2".into()], exp)
            .await
            .unwrap());
        s.create_user(&UserRecord {
            username: "alice".into(),
            password_hash: "$argon2id$x".into(),
            created_at: 1,
            user_id: "u-alice".into(),
        })
        .await
        .unwrap();
        assert!(s.claim_assertion_jti("a1", exp).await.unwrap());
        // No waiting here: WAIT answered only once the replica had processed all of it.
        let mut r = direct(&replica);
        let got: (bool, bool, String, bool, bool, bool, u64) = ::redis::pipe()
            .exists("auth:client:c1")
            .exists("auth:blacklist:j1")
            .hget("auth:refresh_token:h1", "used")
            .exists("auth:family:{g1}:rt")
            .exists("auth:user:alice")
            .exists("auth:assertion_jti:a1")
            .zcard(K_FEED)
            .query(&mut r)
            .unwrap();
        assert_eq!(got, (true, true, "1".into(), true, true, true, 1));
    }

    #[tokio::test]
    async fn without_the_replica_durable_writes_fail_and_the_others_do_not() {
        let Some(master) = RedisServer::start() else {
            return;
        };
        let s = store(&master, opts(1)).await;
        let e = s.create_client(&client("c1")).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Unavailable(m) if m.contains("WAIT: 0 of 1")),
            "{e:?}"
        );
        // Not acknowledged, yet it ran on the master (docs/reliability.md).
        assert!(s.get_client("c1").await.unwrap().is_some());
        let exp = now_secs() + 600;
        for r in [
            s.revoke_access_token("j1", exp).await.map(drop),
            s.save_refresh_token("h1", &refresh(exp)).await,
            s.delete_refresh_tokens(&["h1".into()]).await,
            s.put_client(&client("c2")).await,
        ] {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        }
        // A consumption that could not be acknowledged is given back: once the replica is
        // there, the same refresh token is a first use, not a replay.
        let direct_master = &mut direct(&master);
        let _: () = ::redis::pipe()
            .hset_multiple(
                "auth:refresh_token:h2",
                &[
                    ("data", serde_json::to_string(&refresh(exp)).unwrap()),
                    ("client_id", "c1".into()),
                    ("used", "0".into()),
                ],
            )
            .query(direct_master)
            .unwrap();
        let r = s.consume_refresh_token("h2", "c1").await;
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        let used: String = ::redis::cmd("HGET")
            .arg("auth:refresh_token:h2")
            .arg("used")
            .query(direct_master)
            .unwrap();
        assert_eq!(used, "0");
        let _replica = master.replica();
        // Generous timeouts here: the point is the released token, not the timing.
        let patient = store(
            &master,
            RedisOptions {
                wait_timeout: Duration::from_millis(1500),
                retry_budget: Duration::from_secs(10),
                ..opts(1)
            },
        )
        .await;
        assert!(matches!(
            patient.consume_refresh_token("h2", "c1").await.unwrap(),
            Consumed::Fresh(_)
        ));
        // Writes whose loss is harmless do not wait.
        s.save_access_token(&crate::store::conformance::token("j9", exp))
            .await
            .unwrap();
        s.rate_limit("k", 10, 60).await.unwrap();
        s.save_auth_code(
            "code",
            &AuthCodeRecord {
                client_id: "c1".into(),
                redirect_uri: "https://app/cb".into(),
                redirect_uri_given: true,
                scope: "a".into(),
                aud: "api".into(),
                sub: "alice".into(),
                user_id: "u-alice".into(),
                code_challenge: None,
                code_challenge_method: None,
                grant_id: "g".into(),
                auth_time: 1,
                exp,
            },
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_demoted_master_answers_unavailable_for_every_kind_of_write() {
        // A store whose connection points at a replica is what a stale connection to a
        // demoted master looks like: reads work, writes get READONLY, inside a MULTI too
        // (EXECABORT) and inside scripts.
        let Some(master) = RedisServer::start() else {
            return;
        };
        let replica = master.replica();
        let s = store(&replica, opts(0)).await;
        let exp = now_secs() + 600;
        for r in [
            s.put_client(&client("c1")).await,
            s.create_client(&client("c2")).await,
            s.revoke_access_token("j1", exp).await.map(drop),
            s.rate_limit("k", 10, 60).await.map(drop),
            s.incr_stats(&[("x", 1)]).await,
            s.save_refresh_token("h1", &refresh(exp)).await,
        ] {
            assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
        }
        assert_eq!(s.get_client("c1").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_retried_call_recognises_its_own_write() {
        let Some(server) = RedisServer::start() else {
            return;
        };
        let s = store(&server, opts(0)).await;
        let exp = now_secs() + 600;
        s.save_refresh_token("h1", &refresh(exp)).await.unwrap();
        let run = |src: &'static str, key: String, args: Vec<String>| {
            let s = &s;
            async move {
                let mut cmd = eval(src, &[&key]);
                for a in &args {
                    cmd.arg(a);
                }
                let c = s.conn().await.unwrap();
                let v = s.write(c, &[cmd], false, false).await.unwrap();
                v.into_iter().next().unwrap()
            }
        };
        let uses = |v: Value| -> i64 {
            let (n, _): (i64, String) = ::redis::from_redis_value(v).unwrap();
            n
        };
        let consume = |nonce: &str| {
            run(
                CONSUME_LUA,
                k_refresh("h1"),
                vec!["c1".into(), nonce.into()],
            )
        };
        // The same call again (same nonce) is the first use again; another call is a replay.
        assert_eq!(uses(consume("n1").await), 1);
        assert_eq!(uses(consume("n1").await), 1);
        // A failed call gives back its own consumption, nobody else's.
        let undo = |nonce: &str| run(UNCONSUME_LUA, k_refresh("h1"), vec![nonce.into()]);
        assert_eq!(undo("n2").await, Value::Int(0));
        assert_eq!(undo("n1").await, Value::Int(1));
        assert_eq!(uses(consume("n3").await), 1, "unused again");
        assert_eq!(uses(consume("n2").await), 2);
        assert_eq!(undo("n3").await, Value::Int(0), "replayed since: kept");
        assert_eq!(uses(consume("n3").await), 1);

        let create = |nonce: &str| {
            run(
                CREATE_LUA,
                k_client("x"),
                vec![nonce.into(), "client_id".into(), "x".into()],
            )
        };
        assert_eq!(create("n1").await, Value::Int(1));
        assert_eq!(create("n1").await, Value::Int(1), "the same call again");
        assert_eq!(create("n2").await, Value::Int(0), "another call: taken");

        let claim = |nonce: &str| {
            run(
                CLAIM_LUA,
                k_assertion("a"),
                vec![nonce.into(), exp.to_string()],
            )
        };
        assert_eq!(claim("n1").await, Value::Int(1));
        assert_eq!(claim("n1").await, Value::Int(1));
        assert_eq!(claim("n2").await, Value::Int(0));
    }

    #[tokio::test]
    async fn wait_without_a_timeout_is_refused() {
        let url = StoreUrl::parse("redis://127.0.0.1:1/0").unwrap();
        let r = RedisStore::connect(
            &url,
            RedisOptions {
                wait_replicas: 1,
                wait_timeout: Duration::ZERO,
                ..Default::default()
            },
        )
        .await;
        assert!(matches!(r, Err(StoreError::Config(_))), "{:?}", r.err());
    }
}
