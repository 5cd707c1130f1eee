//! The embedded in-memory store: the default for local runs and the demo. Same semantics
//! as the Redis store (the conformance suite runs against both), TTLs included; state is
//! lost when the process stops. No other process can reach it, so no `authserver cleanup`
//! CronJob can either: the store drops expired access tokens itself every second (in expiry
//! order: the work is what expired, not what is live) and runs the rest of the cleanup pass
//! once per [`SWEEP_INTERVAL`], so that expired entries do not pile up in a long-running
//! server. `cleanup()` reports what these passes removed since the last report.
//!
//! Layout: this file holds the state, the sweeps and the dispatch of the [`Store`] and
//! [`ServiceCache`] methods to one file per section of the trait, with the same names as
//! the Redis store's files (`redis/`), so that the two read side by side.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::*;

// One file per section of the store trait, as in `redis/`.
mod cache;
mod cleanup;
mod clients;
mod codes;
mod counters;
mod dpop;
mod families;
mod info;
mod ownership;
mod rate;
mod revocations;
mod signing_keys;
mod tokens;
mod users;

#[cfg(test)]
mod tests;

#[derive(Default)]
struct CacheEntry {
    value: String,
    /// Expiry in milliseconds since the epoch.
    expires_ms: Option<u64>,
    /// Recency stamp (a logical clock): larger is more recent.
    touched: u64,
}

#[derive(Default)]
struct Inner {
    clients: BTreeMap<String, ClientRecord>,
    access_tokens: HashMap<String, AccessTokenRecord>,
    blacklist: HashMap<String, u64>,
    /// (exp, jti) of every access token record, in expiry order.
    cleanup_index: BTreeSet<(u64, String)>,
    rate: HashMap<String, (u64, u64)>, // key -> (count, window end ms)
    leases: HashMap<String, (u64, u64)>, // lease key -> (used, window end ms)
    keys: BTreeMap<String, StoredKey>,
    stats: BTreeMap<String, i64>,
    config: BTreeMap<String, String>,
    feed: BTreeMap<u64, RevokedEntry>,
    revoked_index: HashMap<String, u64>,
    feed_seq: u64,
    feed_floor: u64,
    cache: HashMap<(String, String), CacheEntry>,
    cache_clock: u64,
    cache_config: Option<CacheConfig>,
    cache_stats: BTreeMap<String, String>,
    users: BTreeMap<String, UserRecord>,
    sessions: HashMap<String, SessionRecord>,
    codes: HashMap<String, (AuthCodeRecord, u64)>,
    refresh: HashMap<String, (RefreshTokenRecord, u64)>,
    families: HashMap<String, Family>,
    once: HashMap<String, u64>,
    /// Used DPoP proofs: key (as in Redis) -> exp.
    dpop_jtis: HashMap<String, u64>,
    /// Ownership indexes: (kind, owner) -> member -> exp.
    owned: HashMap<(Owned, String), BTreeMap<String, u64>>,
    /// When the last full cleanup pass and the last token pass ran (ms since the epoch).
    last_sweep_ms: u64,
    last_token_sweep_ms: u64,
    /// What the store's own passes removed since `cleanup()` last reported.
    swept: CleanupReport,
}

#[derive(Default)]
struct Family {
    access: BTreeMap<String, u64>,
    refresh: std::collections::BTreeSet<String>,
    /// Expiry of the revocation mark, when revoked.
    revoked_until: Option<u64>,
    exp: u64,
}

impl Family {
    fn revoked(&self) -> bool {
        self.revoked_until.is_some_and(alive)
    }
}

/// Consume a single-use entry of `map` (code or refresh token) as the Redis script does.
fn consume<T: Clone>(
    map: &mut HashMap<String, (T, u64)>,
    key: &str,
    client_of: impl Fn(&T) -> &str,
    exp_of: impl Fn(&T) -> u64,
    client_id: &str,
) -> Consumed<T> {
    match map.get_mut(key) {
        Some((rec, used)) if alive(exp_of(rec)) => {
            if client_of(rec) != client_id {
                return Consumed::WrongClient;
            }
            *used += 1;
            if *used == 1 {
                Consumed::Fresh(rec.clone())
            } else {
                Consumed::Replayed(rec.clone())
            }
        }
        _ => Consumed::Missing,
    }
}

/// Undo a consumption when it was the only use (see `Store::release_refresh_token`).
fn release<T>(map: &mut HashMap<String, (T, u64)>, key: &str) {
    if let Some((_, used)) = map.get_mut(key) {
        if *used == 1 {
            *used = 0;
        }
    }
}

/// In-memory implementation of [`Store`] and [`ServiceCache`].
pub struct MemoryStore {
    inner: Mutex<Inner>,
    feed_max: usize,
    sweep_every_ms: u64,
    /// Changes after every revocation appended to the feed (long-poll readers wait on it).
    feed_signal: tokio::sync::watch::Sender<u64>,
}

/// How often the store runs the whole cleanup pass by itself (what Redis drops by TTL, and
/// what `authserver cleanup` removes from a Redis store).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);
/// How often it drops expired access tokens (the entries that come and go by the thousand).
const TOKEN_SWEEP_INTERVAL_MS: u64 = 1000;

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(100_000)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds-precision expiry, as Redis `EXPIREAT`: gone once now >= exp.
fn alive(exp_secs: u64) -> bool {
    now_ms() < exp_secs.saturating_mul(1000)
}

/// Whether the revocation of a token expiring at `exp` is still kept (see
/// [`revocation_kept_until`]).
fn revocation_alive(exp: u64) -> bool {
    alive(revocation_kept_until(exp))
}

impl MemoryStore {
    pub fn new(feed_max: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner {
                last_sweep_ms: now_ms(),
                last_token_sweep_ms: now_ms(),
                ..Inner::default()
            }),
            feed_max: feed_max.max(1),
            sweep_every_ms: SWEEP_INTERVAL.as_millis() as u64,
            feed_signal: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The same store with another interval between its own full cleanup passes (tests).
    pub fn with_sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_every_ms = (every.as_millis() as u64).max(1);
        self
    }

    fn lock(&self) -> StoreResult<std::sync::MutexGuard<'_, Inner>> {
        // A poisoned lock means a panic happened while holding it; the data is still
        // consistent at the granularity of our operations, so keep serving.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        if now.saturating_sub(g.last_sweep_ms) >= self.sweep_every_ms {
            g.last_sweep_ms = now;
            g.last_token_sweep_ms = now;
            let r = sweep(&mut g, now / 1000);
            g.swept.expired_tokens += r.expired_tokens;
            g.swept.feed_entries_trimmed += r.feed_entries_trimmed;
        } else if now.saturating_sub(g.last_token_sweep_ms) >= TOKEN_SWEEP_INTERVAL_MS {
            g.last_token_sweep_ms = now;
            let n = sweep_tokens(&mut g, now / 1000);
            g.swept.expired_tokens += n;
        }
        Ok(g)
    }
}

/// Expired access tokens, from the head of the expiry-ordered index.
fn sweep_tokens(g: &mut Inner, now: u64) -> u64 {
    let mut n = 0u64;
    while g.cleanup_index.first().is_some_and(|(exp, _)| *exp <= now) {
        if let Some((_, jti)) = g.cleanup_index.pop_first() {
            g.access_tokens.remove(&jti);
            n += 1;
        }
    }
    if n > 0 {
        *g.stats.entry("tokens_cleaned".into()).or_insert(0) += n as i64;
    }
    n
}

/// One cleanup pass: what Redis drops by TTL, plus what `authserver cleanup` removes from
/// a Redis store (expired tokens of the cleanup index, the expired head of the feed).
fn sweep(g: &mut Inner, now: u64) -> CleanupReport {
    g.sessions.retain(|_, s| s.exp > now);
    g.codes.retain(|_, (r, _)| r.exp > now);
    g.refresh.retain(|_, (r, _)| r.exp > now);
    g.families
        .retain(|_, f| f.exp > now || f.revoked_until.is_some_and(|r| r > now));
    g.once.retain(|_, e| *e > now);
    g.dpop_jtis.retain(|_, e| *e > now);
    for set in g.owned.values_mut() {
        set.retain(|_, e| *e > now);
    }
    g.owned.retain(|_, set| !set.is_empty());
    let now_ms = now.saturating_mul(1000);
    g.rate.retain(|_, (_, end)| *end > now_ms);
    g.leases.retain(|_, (_, end)| *end > now_ms);
    g.cache
        .retain(|_, e| e.expires_ms.is_none_or(|x| x > now_ms));
    let expired_tokens = sweep_tokens(g, now);
    g.blacklist
        .retain(|_, exp| revocation_kept_until(*exp) > now);
    g.revoked_index
        .retain(|_, exp| revocation_kept_until(*exp) > now);
    // Expired entries leave from the head of the feed (as in Redis); readers skip any
    // expired entry further in.
    let mut trimmed = 0u64;
    while let Some(entry) = g.feed.first_entry() {
        if revocation_kept_until(entry.get().exp) > now {
            break;
        }
        entry.remove();
        trimmed += 1;
    }
    CleanupReport {
        expired_tokens,
        feed_entries_trimmed: trimmed,
        keys_removed: 0,
    }
}

/// Index `member` under `owners` (as `OWNED_ADD_LUA` does in Redis: the later expiry wins).
fn add_owned(g: &mut Inner, owners: &[String], kind: Owned, member: &str, exp: u64) {
    for o in owners {
        let e = g
            .owned
            .entry((kind, o.clone()))
            .or_default()
            .entry(member.to_string())
            .or_insert(exp);
        *e = (*e).max(exp);
    }
}

#[async_trait]
impl Store for MemoryStore {
    // Health: info.rs
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
        self.feed_signal.subscribe()
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
impl ServiceCache for MemoryStore {
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
