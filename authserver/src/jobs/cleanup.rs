//! `authserver cleanup`: one pass of the token cleanup (a CronJob runs it every 5 minutes).
//! Removes expired entries from `auth_token_cleanup` (and any token record left without a
//! TTL), trims the revocation feed, and deletes signing keys whose publication is over.

use crate::keys::expired_kids;
use crate::store::{now_secs, CleanupReport, Store, StoreResult};

pub async fn run(store: &dyn Store, max_token_ttl: u64) -> StoreResult<CleanupReport> {
    let now = now_secs();
    let mut report = store.cleanup(now, 0).await?;
    // From the records alone: the private keys stay sealed (this job needs no KEK).
    let stored = store.list_keys().await?;
    for kid in expired_kids(&stored, now, max_token_ttl) {
        // Never delete the last key.
        if stored.len() as u64 - report.keys_removed <= 1 {
            break;
        }
        store.delete_key(&kid).await?;
        report.keys_removed += 1;
    }
    store.incr_stats(&[("cleanup_runs", 1)]).await?;
    Ok(report)
}
