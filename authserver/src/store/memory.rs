//! The embedded in-memory store: the default for local runs and the demo. Same semantics
//! as the Redis store (the conformance suite runs against both), TTLs included; state is
//! lost when the process stops.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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
    cleanup_index: HashMap<String, u64>,
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

/// In-memory implementation of [`Store`] and [`ServiceCache`].
pub struct MemoryStore {
    inner: Mutex<Inner>,
    feed_max: usize,
}

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

impl MemoryStore {
    pub fn new(feed_max: usize) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner::default()),
            feed_max: feed_max.max(1),
        }
    }

    fn lock(&self) -> StoreResult<std::sync::MutexGuard<'_, Inner>> {
        // A poisoned lock means a panic happened while holding it; the data is still
        // consistent at the granularity of our operations, so keep serving.
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()))
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
        g.access_tokens.insert(rec.jti.clone(), rec.clone());
        g.cleanup_index.insert(rec.jti.clone(), rec.exp);
        *g.stats.entry("tokens_issued".into()).or_insert(0) += 1;
        Ok(())
    }

    async fn get_access_token(&self, jti: &str) -> StoreResult<(Option<AccessTokenRecord>, bool)> {
        let g = self.lock()?;
        let rec = g.access_tokens.get(jti).filter(|r| alive(r.exp)).cloned();
        let revoked = g.blacklist.get(jti).is_some_and(|exp| alive(*exp));
        Ok((rec, revoked))
    }

    async fn revoke_access_token(&self, jti: &str, exp: u64) -> StoreResult<bool> {
        if !alive(exp) {
            return Ok(false);
        }
        let mut g = self.lock()?;
        if g.blacklist.get(jti).is_some_and(|e| alive(*e)) {
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
            .is_some_and(|exp| alive(*exp)))
    }

    async fn revocation_feed(&self, since: Option<u64>, limit: usize) -> StoreResult<FeedPage> {
        let g = self.lock()?;
        let full = |g: &Inner| {
            let mut entries: Vec<RevokedEntry> = g
                .revoked_index
                .iter()
                .filter(|(_, exp)| alive(**exp))
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
                    if alive(e.exp) {
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
            .values()
            .filter(|exp| **exp > now)
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
        self.lock()?
            .sessions
            .insert(id_hash.to_string(), rec.clone());
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
        // What Redis drops by TTL.
        g.sessions.retain(|_, s| s.exp > now);
        g.codes.retain(|_, (r, _)| r.exp > now);
        g.refresh.retain(|_, (r, _)| r.exp > now);
        g.families
            .retain(|_, f| f.exp > now || f.revoked_until.is_some_and(|r| r > now));
        g.once.retain(|_, e| *e > now);
        let expired: Vec<String> = g
            .cleanup_index
            .iter()
            .filter(|(_, exp)| **exp <= now)
            .map(|(j, _)| j.clone())
            .collect();
        for j in &expired {
            g.cleanup_index.remove(j);
            g.access_tokens.remove(j);
        }
        g.blacklist.retain(|_, exp| *exp > now);
        g.revoked_index.retain(|_, exp| *exp > now);
        // Expired entries leave from the head of the feed (as in Redis); readers skip any
        // expired entry further in.
        let mut trimmed = 0u64;
        while let Some(entry) = g.feed.first_entry() {
            if entry.get().exp > now {
                break;
            }
            entry.remove();
            trimmed += 1;
        }
        if !expired.is_empty() {
            *g.stats.entry("tokens_cleaned".into()).or_insert(0) += expired.len() as i64;
        }
        Ok(CleanupReport {
            expired_tokens: expired.len() as u64,
            feed_entries_trimmed: trimmed,
            keys_removed: 0,
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
