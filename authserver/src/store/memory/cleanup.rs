//! The cleanup report: what the store's own sweeps removed since the last report.

use super::*;

pub(super) async fn cleanup(
    db: &MemoryStore,
    now: u64,
    _feed_retention_secs: u64,
) -> StoreResult<CleanupReport> {
    let mut g = db.lock()?;
    let r = sweep(&mut g, now);
    let before = std::mem::take(&mut g.swept);
    Ok(CleanupReport {
        expired_tokens: r.expired_tokens + before.expired_tokens,
        feed_entries_trimmed: r.feed_entries_trimmed + before.feed_entries_trimmed,
        keys_removed: r.keys_removed,
    })
}
