//! `authserver cache-cleanup`: maintenance of the service cache (DB 1), every 10 minutes
//! by CronJob: default TTL on entries without one, each service trimmed to
//! `max_entries_per_service` least recently used first, `cache_stats` and
//! `cache_cleanup_metrics` recorded.

use crate::store::{now_secs, CacheCleanupReport, ServiceCache, StoreResult};

pub async fn run(cache: &dyn ServiceCache) -> StoreResult<CacheCleanupReport> {
    cache.cache_cleanup(now_secs()).await
}
