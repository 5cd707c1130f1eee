//! The resource cache of the edge services ([`ServiceCache`]).

use super::*;

pub(super) async fn cache_put(
    db: &MemoryStore,
    service: &str,
    key: &str,
    value: &str,
    ttl: Option<u64>,
) -> StoreResult<()> {
    let mut g = db.lock()?;
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

pub(super) async fn cache_get(
    db: &MemoryStore,
    service: &str,
    key: &str,
) -> StoreResult<Option<String>> {
    let mut g = db.lock()?;
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

pub(super) async fn cache_config(db: &MemoryStore) -> StoreResult<CacheConfig> {
    Ok(db
        .lock()?
        .cache_config
        .clone()
        .unwrap_or(CacheConfig::DEFAULT))
}

pub(super) async fn set_cache_config(db: &MemoryStore, cfg: &CacheConfig) -> StoreResult<()> {
    db.lock()?.cache_config = Some(cfg.clone());
    Ok(())
}

pub(super) async fn cache_cleanup(db: &MemoryStore, now: u64) -> StoreResult<CacheCleanupReport> {
    let mut g = db.lock()?;
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

pub(super) async fn cache_stats(db: &MemoryStore) -> StoreResult<BTreeMap<String, String>> {
    Ok(db.lock()?.cache_stats.clone())
}
