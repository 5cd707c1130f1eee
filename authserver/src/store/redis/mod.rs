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
//!
//! Layout: this file holds the options, the store and the dispatch of the [`Store`] and
//! [`ServiceCache`] methods to one file per record family (`clients`, `tokens`,
//! `revocations`, `rate`, `signing_keys`, `counters`, `users`, `codes`, `families`,
//! `ownership`, `cleanup`, `cache`: the sections of the trait, as in `memory/`), each with
//! the Lua scripts it uses. The plumbing is in `connection` (standalone, Sentinel,
//! Cluster), `retry` (what is transient, retry loops), `durability` (pipelines, `WAIT`,
//! slot-grouped batches), `commands` (shared building blocks), `info` (health, topology)
//! and `layout` (the key names).

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

// Plumbing: how a command reaches Redis and is retried, acknowledged and routed.
mod commands;
mod connection;
mod durability;
mod info;
mod layout;
mod retry;
// One file per section of the store trait (and the same names as in `memory/`).
mod cache;
mod cleanup;
mod client_cache;
mod clients;
mod codes;
mod counters;
mod dpop;
mod families;
mod ownership;
mod rate;
mod revocations;
mod signal;
mod signing_keys;
mod tokens;
mod users;

#[cfg(test)]
mod client_cache_tests;
#[cfg(test)]
mod durability_tests;

use self::{
    commands::*,
    connection::*,
    durability::*,
    layout::*,
    ownership::*,
    rate::*,
    retry::*,
    revocations::*,
    signal::{PubSubSource, Signal},
};

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
    /// How long a cached client record is served at most ([`Store::get_client_cached`]);
    /// zero = no client cache.
    pub client_cache_ttl: Duration,
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
            client_cache_ttl: Duration::from_secs(10),
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
    signal: signal::Signal,
}

#[async_trait]
impl Store for RedisStore {
    // Health and topology: info.rs
    async fn ping(&self) -> StoreResult<()> {
        info::ping(self).await
    }

    async fn backend_info(&self) -> StoreResult<BackendInfo> {
        info::backend_info(self).await
    }

    // Clients: clients.rs
    async fn create_client(&self, client: &ClientRecord) -> StoreResult<()> {
        clients::create_client(self, client).await
    }

    async fn put_client(&self, client: &ClientRecord) -> StoreResult<()> {
        clients::put_client(self, client).await
    }

    async fn get_client(&self, client_id: &str) -> StoreResult<Option<ClientRecord>> {
        clients::get_client(self, client_id).await
    }

    async fn get_client_cached(
        &self,
        client_id: &str,
    ) -> StoreResult<(Option<ClientRecord>, bool)> {
        clients::get_client_cached(self, client_id).await
    }

    async fn delete_client(&self, client_id: &str) -> StoreResult<bool> {
        clients::delete_client(self, client_id).await
    }

    async fn list_client_ids(&self) -> StoreResult<Vec<String>> {
        clients::list_client_ids(self).await
    }

    // Access tokens: tokens.rs
    async fn save_access_token(&self, rec: &AccessTokenRecord) -> StoreResult<()> {
        tokens::save_access_token(self, rec).await
    }

    async fn get_access_token(&self, jti: &str) -> StoreResult<(Option<AccessTokenRecord>, bool)> {
        tokens::get_access_token(self, jti).await
    }

    async fn count_live_tokens(&self, now: u64) -> StoreResult<u64> {
        tokens::count_live_tokens(self, now).await
    }

    // Revocations and the feed: revocations.rs
    async fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<bool> {
        revocations::revoke_access_token(self, jti, exp).await
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        revocations::is_revoked(self, jti).await
    }

    async fn revocation_feed(&self, since: Option<u64>, limit: usize) -> StoreResult<FeedPage> {
        revocations::revocation_feed(self, since, limit).await
    }

    fn revocation_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signal.subscribe()
    }

    // Rate limits and quota leases: rate.rs
    async fn rate_limit(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
    ) -> StoreResult<RateDecision> {
        rate::rate_limit(self, key, limit, window_secs).await
    }

    async fn rate_lease(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
        want: u64,
    ) -> StoreResult<Lease> {
        rate::rate_lease(self, key, limit, window_secs, want).await
    }

    async fn peek_rate(&self, key: &str) -> StoreResult<u64> {
        rate::peek_rate(self, key).await
    }

    // Signing keys: signing_keys.rs
    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        signing_keys::list_keys(self).await
    }

    async fn put_key(&self, key: &StoredKey) -> StoreResult<()> {
        signing_keys::put_key(self, key).await
    }

    async fn replace_key(&self, expected: &StoredKey, new: &StoredKey) -> StoreResult<bool> {
        signing_keys::replace_key(self, expected, new).await
    }

    async fn delete_key(&self, kid: &str) -> StoreResult<()> {
        signing_keys::delete_key(self, kid).await
    }

    // Counters and configuration: counters.rs
    async fn incr_stats(&self, counters: &[(&str, i64)]) -> StoreResult<()> {
        counters::incr_stats(self, counters).await
    }

    async fn get_stats(&self) -> StoreResult<BTreeMap<String, i64>> {
        counters::get_stats(self).await
    }

    async fn get_config(&self) -> StoreResult<BTreeMap<String, String>> {
        counters::get_config(self).await
    }

    async fn set_config(&self, values: &BTreeMap<String, String>) -> StoreResult<()> {
        counters::set_config(self, values).await
    }

    // Users and login sessions: users.rs
    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        users::create_user(self, user).await
    }

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        users::get_user(self, username).await
    }

    async fn delete_user(&self, username: &str) -> StoreResult<bool> {
        users::delete_user(self, username).await
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        users::list_users(self).await
    }

    async fn save_session(&self, id_hash: &str, rec: &SessionRecord) -> StoreResult<()> {
        users::save_session(self, id_hash, rec).await
    }

    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        users::get_session(self, id_hash).await
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        users::delete_session(self, id_hash).await
    }

    // Authorization codes and refresh tokens (single use): codes.rs
    async fn save_auth_code(&self, code_hash: &str, rec: &AuthCodeRecord) -> StoreResult<()> {
        codes::save_auth_code(self, code_hash, rec).await
    }

    async fn consume_auth_code(
        &self,
        code_hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<AuthCodeRecord>> {
        codes::consume_auth_code(self, code_hash, client_id).await
    }

    async fn save_refresh_token(&self, hash: &str, rec: &RefreshTokenRecord) -> StoreResult<()> {
        codes::save_refresh_token(self, hash, rec).await
    }

    async fn consume_refresh_token(
        &self,
        hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<RefreshTokenRecord>> {
        codes::consume_refresh_token(self, hash, client_id).await
    }

    async fn release_refresh_token(&self, hash: &str) -> StoreResult<()> {
        codes::release_refresh_token(self, hash).await
    }

    async fn release_auth_code(&self, code_hash: &str) -> StoreResult<()> {
        codes::release_auth_code(self, code_hash).await
    }

    async fn get_refresh_token(
        &self,
        hash: &str,
    ) -> StoreResult<Option<(RefreshTokenRecord, bool)>> {
        codes::get_refresh_token(self, hash).await
    }

    async fn delete_refresh_tokens(&self, hashes: &[String]) -> StoreResult<()> {
        codes::delete_refresh_tokens(self, hashes).await
    }

    // Token families and one-time claims: families.rs
    async fn family_add(
        &self,
        grant_id: &str,
        access: &[(String, u64)],
        refresh: &[String],
        exp: u64,
    ) -> StoreResult<bool> {
        families::family_add(self, grant_id, access, refresh, exp).await
    }

    async fn revoke_family(&self, grant_id: &str, exp: u64) -> StoreResult<FamilyTokens> {
        families::revoke_family(self, grant_id, exp).await
    }

    async fn family_revoked(&self, grant_id: &str) -> StoreResult<bool> {
        families::family_revoked(self, grant_id).await
    }

    async fn claim_assertion_jti(&self, key: &str, exp: u64) -> StoreResult<bool> {
        families::claim_assertion_jti(self, key, exp).await
    }

    // DPoP: dpop.rs
    async fn claim_dpop_jti(&self, jkt: &str, jti: &str, exp: u64) -> StoreResult<bool> {
        dpop::claim_dpop_jti(self, jkt, jti, exp).await
    }

    // Ownership indexes: ownership.rs
    async fn index_owned(
        &self,
        owners: &[String],
        kind: Owned,
        member: &str,
        exp: u64,
    ) -> StoreResult<()> {
        ownership::index_owned(self, owners, kind, member, exp).await
    }

    async fn list_owned(
        &self,
        owner: &str,
        kind: Owned,
        now: u64,
    ) -> StoreResult<Vec<(String, u64)>> {
        ownership::list_owned(self, owner, kind, now).await
    }

    async fn clear_owned(&self, owner: &str, kind: Owned) -> StoreResult<()> {
        ownership::clear_owned(self, owner, kind).await
    }

    // Cleanup: cleanup.rs
    async fn cleanup(&self, now: u64, _feed_retention_secs: u64) -> StoreResult<CleanupReport> {
        cleanup::cleanup(self, now, _feed_retention_secs).await
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
        cache::cache_put(self, service, key, value, ttl).await
    }

    async fn cache_get(&self, service: &str, key: &str) -> StoreResult<Option<String>> {
        cache::cache_get(self, service, key).await
    }

    async fn cache_config(&self) -> StoreResult<CacheConfig> {
        cache::cache_config(self).await
    }

    async fn set_cache_config(&self, cfg: &CacheConfig) -> StoreResult<()> {
        cache::set_cache_config(self, cfg).await
    }

    async fn cache_cleanup(&self, now: u64) -> StoreResult<CacheCleanupReport> {
        cache::cache_cleanup(self, now).await
    }

    async fn cache_stats(&self) -> StoreResult<BTreeMap<String, String>> {
        cache::cache_stats(self).await
    }
}
