//! The embedded in-memory store: the default for local runs and the demo. Same semantics
//! as the Redis store (the conformance suite runs against both), TTLs included; state is
//! lost when the process stops. No other process can reach it, so no `authserver cleanup`
//! CronJob can either: the store drops expired access tokens itself every second (in expiry
//! order: the work is what expired, not what is live) and runs the rest of the cleanup pass
//! once per [`SWEEP_INTERVAL`], so that expired entries do not pile up in a long-running
//! server. `cleanup()` reports what these passes removed since the last report.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::*;

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
    async fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn backend_info(&self) -> StoreResult<BackendInfo> {
        let g = self.lock()?;
        let mut details = BTreeMap::new();
        details.insert("clients".into(), g.clients.len().to_string());
        details.insert("persistence".into(), "none (process memory)".into());
        Ok(BackendInfo {
            kind: "memory".into(),
            role: "standalone".into(),
            details,
        })
    }

    async fn create_client(&self, client: &ClientRecord) -> StoreResult<()> {
        let mut g = self.lock()?;
        if g.clients.contains_key(&client.client_id) {
            return Err(StoreError::Conflict(client.client_id.clone()));
        }
        g.clients.insert(client.client_id.clone(), client.clone());
        Ok(())
    }

    async fn put_client(&self, client: &ClientRecord) -> StoreResult<()> {
        self.lock()?
            .clients
            .insert(client.client_id.clone(), client.clone());
        Ok(())
    }

    async fn get_client(&self, client_id: &str) -> StoreResult<Option<ClientRecord>> {
        Ok(self.lock()?.clients.get(client_id).cloned())
    }

    async fn delete_client(&self, client_id: &str) -> StoreResult<bool> {
        Ok(self.lock()?.clients.remove(client_id).is_some())
    }

    async fn list_client_ids(&self) -> StoreResult<Vec<String>> {
        Ok(self.lock()?.clients.keys().cloned().collect())
    }

    async fn save_access_token(&self, rec: &AccessTokenRecord) -> StoreResult<()> {
        let mut g = self.lock()?;
        if let Some(old) = g.access_tokens.insert(rec.jti.clone(), rec.clone()) {
            g.cleanup_index.remove(&(old.exp, old.jti));
        }
        g.cleanup_index.insert((rec.exp, rec.jti.clone()));
        *g.stats.entry("tokens_issued".into()).or_insert(0) += 1;
        let mut owners = vec![client_owner(&rec.client_id)];
        owners.extend(rec.user_id.as_deref().map(user_owner));
        add_owned(&mut g, &owners, Owned::AccessTokens, &rec.jti, rec.exp);
        Ok(())
    }

    async fn get_access_token(&self, jti: &str) -> StoreResult<(Option<AccessTokenRecord>, bool)> {
        let g = self.lock()?;
        let rec = g.access_tokens.get(jti).filter(|r| alive(r.exp)).cloned();
        let revoked = g
            .blacklist
            .get(jti)
            .is_some_and(|exp| revocation_alive(*exp));
        Ok((rec, revoked))
    }

    async fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<bool> {
        if !revocation_alive(exp) {
            return Ok(false);
        }
        let mut g = self.lock()?;
        if g.blacklist.get(jti).is_some_and(|e| revocation_alive(*e)) {
            return Ok(false);
        }
        g.blacklist.insert(jti.to_string(), exp);
        g.revoked_index.insert(jti.to_string(), exp);
        g.feed_seq += 1;
        let seq = g.feed_seq;
        g.feed.insert(
            seq,
            RevokedEntry {
                jti: jti.to_string(),
                exp,
            },
        );
        while g.feed.len() > self.feed_max {
            if let Some((s, _)) = g.feed.pop_first() {
                g.feed_floor = g.feed_floor.max(s);
            }
        }
        *g.stats.entry("tokens_revoked".into()).or_insert(0) += 1;
        Ok(true)
    }

    async fn is_revoked(&self, jti: &str) -> StoreResult<bool> {
        Ok(self
            .lock()?
            .blacklist
            .get(jti)
            .is_some_and(|exp| revocation_alive(*exp)))
    }

    async fn revocation_feed(&self, since: Option<u64>, limit: usize) -> StoreResult<FeedPage> {
        let g = self.lock()?;
        let full = |g: &Inner| {
            let mut entries: Vec<RevokedEntry> = g
                .revoked_index
                .iter()
                .filter(|(_, exp)| revocation_alive(**exp))
                .map(|(jti, exp)| RevokedEntry {
                    jti: jti.clone(),
                    exp: *exp,
                })
                .collect();
            entries.sort_by(|a, b| (a.exp, &a.jti).cmp(&(b.exp, &b.jti)));
            entries
        };
        match since {
            Some(s) if s >= g.feed_floor && s <= g.feed_seq => {
                let mut entries = Vec::new();
                let mut cursor = s;
                for (seq, e) in g.feed.range(s + 1..).take(limit.max(1)) {
                    cursor = *seq;
                    if revocation_alive(e.exp) {
                        entries.push(e.clone());
                    }
                }
                if entries.is_empty() && cursor == s {
                    cursor = g.feed_seq.max(s);
                }
                Ok(FeedPage {
                    cursor,
                    resync: false,
                    entries,
                })
            }
            Some(_) => Ok(FeedPage {
                cursor: g.feed_seq,
                resync: true,
                entries: full(&g),
            }),
            None => Ok(FeedPage {
                cursor: g.feed_seq,
                resync: true,
                entries: full(&g),
            }),
        }
    }

    async fn count_live_tokens(&self, now: u64) -> StoreResult<u64> {
        Ok(self
            .lock()?
            .cleanup_index
            .range((now.saturating_add(1), String::new())..)
            .count() as u64)
    }

    async fn rate_limit(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
    ) -> StoreResult<RateDecision> {
        let now = now_ms();
        let window_ms = window_secs.max(1) * 1000;
        let mut g = self.lock()?;
        let entry = g
            .rate
            .entry(key.to_string())
            .or_insert((0, now + window_ms));
        if entry.1 <= now {
            *entry = (0, now + window_ms);
        }
        entry.0 += 1;
        let count = entry.0;
        let reset_after = (entry.1.saturating_sub(now)).div_ceil(1000).max(1);
        // Bound memory: drop windows that have ended.
        if g.rate.len() > 100_000 {
            g.rate.retain(|_, (_, end)| *end > now);
        }
        Ok(RateDecision {
            allowed: count <= limit,
            limit,
            remaining: limit.saturating_sub(count),
            reset_after,
        })
    }

    async fn rate_lease(
        &self,
        key: &str,
        limit: u64,
        window_secs: u64,
        want: u64,
    ) -> StoreResult<Lease> {
        let now = now_ms();
        let window_ms = window_secs.max(1).saturating_mul(1000);
        let mut g = self.lock()?;
        let entry = g
            .leases
            .entry(key.to_string())
            .or_insert((0, now + window_ms));
        if entry.1 <= now {
            *entry = (0, now + window_ms);
        }
        let granted = want.min(limit.saturating_sub(entry.0));
        entry.0 += granted;
        let lease = Lease {
            granted,
            used: entry.0,
            limit,
            reset_ms: entry.1.saturating_sub(now).max(1),
        };
        // Bound memory: drop windows that have ended.
        if g.leases.len() > 100_000 {
            g.leases.retain(|_, (_, end)| *end > now);
        }
        Ok(lease)
    }

    async fn peek_rate(&self, key: &str) -> StoreResult<u64> {
        let now = now_ms();
        Ok(self
            .lock()?
            .rate
            .get(key)
            .filter(|(_, end)| *end > now)
            .map(|(c, _)| *c)
            .unwrap_or(0))
    }

    async fn list_keys(&self) -> StoreResult<Vec<StoredKey>> {
        Ok(self.lock()?.keys.values().cloned().collect())
    }

    async fn put_key(&self, key: &StoredKey) -> StoreResult<()> {
        self.lock()?.keys.insert(key.kid.clone(), key.clone());
        Ok(())
    }

    async fn replace_key(&self, expected: &StoredKey, new: &StoredKey) -> StoreResult<bool> {
        let mut g = self.lock()?;
        match g.keys.get_mut(&expected.kid) {
            Some(cur) if cur == new => Ok(true),
            Some(cur) if cur == expected && new.kid == expected.kid => {
                *cur = new.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_key(&self, kid: &str) -> StoreResult<()> {
        self.lock()?.keys.remove(kid);
        Ok(())
    }

    async fn incr_stats(&self, counters: &[(&str, i64)]) -> StoreResult<()> {
        let mut g = self.lock()?;
        for (k, v) in counters {
            *g.stats.entry((*k).to_string()).or_insert(0) += v;
        }
        Ok(())
    }

    async fn get_stats(&self) -> StoreResult<BTreeMap<String, i64>> {
        Ok(self.lock()?.stats.clone())
    }

    async fn get_config(&self) -> StoreResult<BTreeMap<String, String>> {
        Ok(self.lock()?.config.clone())
    }

    async fn set_config(&self, values: &BTreeMap<String, String>) -> StoreResult<()> {
        let mut g = self.lock()?;
        for (k, v) in values {
            g.config.insert(k.clone(), v.clone());
        }
        Ok(())
    }

    async fn create_user(&self, user: &UserRecord) -> StoreResult<()> {
        let mut g = self.lock()?;
        if g.users.contains_key(&user.username) {
            return Err(StoreError::Conflict(user.username.clone()));
        }
        g.users.insert(user.username.clone(), user.clone());
        Ok(())
    }

    async fn get_user(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        Ok(self.lock()?.users.get(username).cloned())
    }

    async fn delete_user(&self, username: &str) -> StoreResult<bool> {
        Ok(self.lock()?.users.remove(username).is_some())
    }

    async fn list_users(&self) -> StoreResult<Vec<UserRecord>> {
        Ok(self.lock()?.users.values().cloned().collect())
    }

    async fn save_session(&self, id_hash: &str, rec: &SessionRecord) -> StoreResult<()> {
        let mut g = self.lock()?;
        g.sessions.insert(id_hash.to_string(), rec.clone());
        if !rec.user_id.is_empty() {
            let owners = [user_owner(&rec.user_id)];
            add_owned(&mut g, &owners, Owned::Sessions, id_hash, rec.exp);
        }
        Ok(())
    }

    async fn get_session(&self, id_hash: &str) -> StoreResult<Option<SessionRecord>> {
        Ok(self
            .lock()?
            .sessions
            .get(id_hash)
            .filter(|s| alive(s.exp))
            .cloned())
    }

    async fn delete_session(&self, id_hash: &str) -> StoreResult<()> {
        self.lock()?.sessions.remove(id_hash);
        Ok(())
    }

    async fn save_auth_code(&self, code_hash: &str, rec: &AuthCodeRecord) -> StoreResult<()> {
        self.lock()?
            .codes
            .insert(code_hash.to_string(), (rec.clone(), 0));
        Ok(())
    }

    async fn consume_auth_code(
        &self,
        code_hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<AuthCodeRecord>> {
        let mut g = self.lock()?;
        Ok(consume(
            &mut g.codes,
            code_hash,
            |r| r.client_id.as_str(),
            |r| r.exp,
            client_id,
        ))
    }

    async fn save_refresh_token(&self, hash: &str, rec: &RefreshTokenRecord) -> StoreResult<()> {
        self.lock()?
            .refresh
            .insert(hash.to_string(), (rec.clone(), 0));
        Ok(())
    }

    async fn consume_refresh_token(
        &self,
        hash: &str,
        client_id: &str,
    ) -> StoreResult<Consumed<RefreshTokenRecord>> {
        let mut g = self.lock()?;
        Ok(consume(
            &mut g.refresh,
            hash,
            |r| r.client_id.as_str(),
            |r| r.exp,
            client_id,
        ))
    }

    async fn release_refresh_token(&self, hash: &str) -> StoreResult<()> {
        release(&mut self.lock()?.refresh, hash);
        Ok(())
    }

    async fn release_auth_code(&self, code_hash: &str) -> StoreResult<()> {
        release(&mut self.lock()?.codes, code_hash);
        Ok(())
    }

    async fn get_refresh_token(
        &self,
        hash: &str,
    ) -> StoreResult<Option<(RefreshTokenRecord, bool)>> {
        Ok(self
            .lock()?
            .refresh
            .get(hash)
            .filter(|(r, _)| alive(r.exp))
            .map(|(r, used)| (r.clone(), *used > 0)))
    }

    async fn delete_refresh_tokens(&self, hashes: &[String]) -> StoreResult<()> {
        let mut g = self.lock()?;
        for h in hashes {
            g.refresh.remove(h);
        }
        Ok(())
    }

    async fn family_add(
        &self,
        grant_id: &str,
        access: &[(String, u64)],
        refresh: &[String],
        exp: u64,
    ) -> StoreResult<bool> {
        let mut g = self.lock()?;
        let f = g.families.entry(grant_id.to_string()).or_default();
        if f.revoked() {
            return Ok(false);
        }
        if !alive(f.exp) {
            // An expired family starts over, as its Redis keys would have vanished.
            *f = Family::default();
        }
        for (jti, e) in access {
            f.access.insert(jti.clone(), *e);
        }
        f.refresh.extend(refresh.iter().cloned());
        f.exp = exp;
        Ok(true)
    }

    async fn revoke_family(&self, grant_id: &str, exp: u64) -> StoreResult<FamilyTokens> {
        let mut g = self.lock()?;
        let f = g.families.entry(grant_id.to_string()).or_default();
        if !alive(f.exp) {
            f.access.clear();
            f.refresh.clear();
        }
        f.revoked_until = Some(exp);
        f.exp = f.exp.max(exp);
        Ok(FamilyTokens {
            access: f.access.iter().map(|(j, e)| (j.clone(), *e)).collect(),
            refresh: f.refresh.iter().cloned().collect(),
        })
    }

    async fn family_revoked(&self, grant_id: &str) -> StoreResult<bool> {
        Ok(self
            .lock()?
            .families
            .get(grant_id)
            .is_some_and(Family::revoked))
    }

    async fn index_owned(
        &self,
        owners: &[String],
        kind: Owned,
        member: &str,
        exp: u64,
    ) -> StoreResult<()> {
        let mut g = self.lock()?;
        add_owned(&mut g, owners, kind, member, exp);
        Ok(())
    }

    async fn list_owned(
        &self,
        owner: &str,
        kind: Owned,
        now: u64,
    ) -> StoreResult<Vec<(String, u64)>> {
        Ok(self
            .lock()?
            .owned
            .get(&(kind, owner.to_string()))
            .map(|set| {
                set.iter()
                    .filter(|(_, e)| **e > now)
                    .map(|(m, e)| (m.clone(), *e))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn clear_owned(&self, owner: &str, kind: Owned) -> StoreResult<()> {
        self.lock()?.owned.remove(&(kind, owner.to_string()));
        Ok(())
    }

    async fn claim_assertion_jti(&self, key: &str, exp: u64) -> StoreResult<bool> {
        let mut g = self.lock()?;
        if g.once.get(key).is_some_and(|e| alive(*e)) {
            return Ok(false);
        }
        g.once.insert(key.to_string(), exp);
        if g.once.len() > 100_000 {
            g.once.retain(|_, e| alive(*e));
        }
        Ok(true)
    }

    async fn cleanup(&self, now: u64, _feed_retention_secs: u64) -> StoreResult<CleanupReport> {
        let mut g = self.lock()?;
        let r = sweep(&mut g, now);
        let before = std::mem::take(&mut g.swept);
        Ok(CleanupReport {
            expired_tokens: r.expired_tokens + before.expired_tokens,
            feed_entries_trimmed: r.feed_entries_trimmed + before.feed_entries_trimmed,
            keys_removed: r.keys_removed,
        })
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
        let mut g = self.lock()?;
        g.cache_clock += 1;
        let touched = g.cache_clock;
        g.cache.insert(
            (service.to_string(), key.to_string()),
            CacheEntry {
                value: value.to_string(),
                expires_ms: ttl.map(|t| now_ms() + t * 1000),
                touched,
            },
        );
        Ok(())
    }

    async fn cache_get(&self, service: &str, key: &str) -> StoreResult<Option<String>> {
        let mut g = self.lock()?;
        g.cache_clock += 1;
        let clock = g.cache_clock;
        let now = now_ms();
        match g.cache.get_mut(&(service.to_string(), key.to_string())) {
            Some(e) if e.expires_ms.is_none_or(|x| x > now) => {
                e.touched = clock;
                Ok(Some(e.value.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn cache_config(&self) -> StoreResult<CacheConfig> {
        Ok(self
            .lock()?
            .cache_config
            .clone()
            .unwrap_or(CacheConfig::DEFAULT))
    }

    async fn set_cache_config(&self, cfg: &CacheConfig) -> StoreResult<()> {
        self.lock()?.cache_config = Some(cfg.clone());
        Ok(())
    }

    async fn cache_cleanup(&self, now: u64) -> StoreResult<CacheCleanupReport> {
        let mut g = self.lock()?;
        let cfg = g.cache_config.clone().unwrap_or(CacheConfig::DEFAULT);
        let now_ms = now * 1000;
        g.cache
            .retain(|_, e| e.expires_ms.is_none_or(|x| x > now_ms));
        let mut report = CacheCleanupReport::default();
        let mut by_service: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
        for ((svc, key), e) in g.cache.iter_mut() {
            if e.expires_ms.is_none() {
                e.expires_ms = Some(now_ms + cfg.default_ttl * 1000);
                report.ttl_set += 1;
            }
            by_service
                .entry(svc.clone())
                .or_default()
                .push((e.touched, key.clone()));
        }
        let mut stats = BTreeMap::new();
        for (svc, mut entries) in by_service {
            report.services += 1;
            let max = cfg.max_entries_per_service as usize;
            if entries.len() > max {
                entries.sort();
                let excess = entries.len() - max;
                for (_, key) in entries.drain(..excess) {
                    g.cache.remove(&(svc.clone(), key));
                    report.trimmed += 1;
                }
            }
            report.entries += entries.len() as u64;
            stats.insert(format!("entries:{svc}"), entries.len().to_string());
        }
        stats.insert("services".into(), report.services.to_string());
        stats.insert("entries".into(), report.entries.to_string());
        stats.insert("last_cleanup".into(), now.to_string());
        stats.insert("last_trimmed".into(), report.trimmed.to_string());
        stats.insert("last_ttl_set".into(), report.ttl_set.to_string());
        g.cache_stats = stats;
        Ok(report)
    }

    async fn cache_stats(&self) -> StoreResult<BTreeMap<String, String>> {
        Ok(self.lock()?.cache_stats.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::conformance::token as record;

    /// A long-running server on the memory store has no cleanup job (no other process can
    /// reach its memory): expired entries must leave by themselves, or the store grows for
    /// as long as tokens are issued (found by `make soak` with SOAK_STORE=memory).
    #[tokio::test]
    async fn expired_entries_leave_without_a_cleanup_job() {
        let s = MemoryStore::new(1000).with_sweep_interval(Duration::from_millis(200));
        let now = now_secs();
        for i in 0..100 {
            s.save_access_token(&record(&format!("short{i}"), now + 1))
                .await
                .unwrap();
        }
        assert!(s.revoke_access_token("short0", now + 1).await.unwrap());
        s.save_access_token(&record("long", now + 600))
            .await
            .unwrap();
        assert!(s.revoke_access_token("long", now + 600).await.unwrap());
        s.rate_limit("client:c1", 10, 1).await.unwrap();
        {
            let g = s.lock().unwrap();
            assert_eq!(g.access_tokens.len(), 101);
            assert_eq!(g.cleanup_index.len(), 101);
            assert_eq!(g.feed.len(), 2);
            assert_eq!(g.rate.len(), 1);
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
        // Any use of the store runs the pass once it is due; nobody calls cleanup().
        let (rec, revoked) = s.get_access_token("long").await.unwrap();
        assert_eq!(rec.map(|r| r.jti), Some("long".to_string()));
        assert!(revoked);
        let g = s.lock().unwrap();
        assert_eq!(
            g.access_tokens.len(),
            1,
            "expired token records are dropped"
        );
        assert_eq!(g.cleanup_index.len(), 1, "and their cleanup-index entries");
        // A revocation outlives its token by REVOCATION_RETENTION_SECS (the edge's largest
        // clock skew): short0's stays.
        assert_eq!(g.blacklist.len(), 2);
        assert_eq!(g.revoked_index.len(), 2);
        assert_eq!(g.feed.len(), 2, "a revocation is kept past its token's exp");
        assert!(g.rate.is_empty(), "closed rate-limit windows are dropped");
        assert_eq!(g.stats.get("tokens_cleaned"), Some(&100));
    }

    #[tokio::test]
    async fn tokens_leave_every_second_and_the_report_counts_them() {
        // The full pass is not due for an hour: only the per-second token pass runs.
        let s = MemoryStore::new(1000).with_sweep_interval(Duration::from_secs(3600));
        let now = now_secs();
        s.save_access_token(&record("j1", now + 1)).await.unwrap();
        s.save_access_token(&record("j2", now + 600)).await.unwrap();
        // Saved again with another expiry: one index entry, the new one.
        s.save_access_token(&record("j2", now + 1)).await.unwrap();
        assert!(s.revoke_access_token("j1", now + 1).await.unwrap());
        assert_eq!(s.count_live_tokens(now).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            s.get_access_token("j1").await.unwrap(),
            (None, true),
            "the record expired; its revocation is kept"
        );
        {
            let g = s.lock().unwrap();
            assert!(
                g.access_tokens.is_empty(),
                "token records leave every second"
            );
            assert!(g.cleanup_index.is_empty());
            assert_eq!(g.feed.len(), 1, "the rest waits for the full pass");
        }
        assert_eq!(s.count_live_tokens(now_secs()).await.unwrap(), 0);
        // `authserver cleanup` reports what the store removed on its own since last time.
        let r = s.cleanup(now_secs(), 0).await.unwrap();
        assert_eq!((r.expired_tokens, r.feed_entries_trimmed), (2, 0));
        let r = s.cleanup(now_secs(), 0).await.unwrap();
        assert_eq!((r.expired_tokens, r.feed_entries_trimmed), (0, 0));
        assert_eq!(s.get_stats().await.unwrap().get("tokens_cleaned"), Some(&2));
    }
}
