//! Rate limits (fixed window) and quota leases.

use super::*;

pub(super) async fn rate_limit(
    db: &MemoryStore,
    key: &str,
    limit: u64,
    window_secs: u64,
) -> StoreResult<RateDecision> {
    let now = now_ms();
    let window_ms = window_secs.max(1) * 1000;
    let mut g = db.lock()?;
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

pub(super) async fn rate_lease(
    db: &MemoryStore,
    key: &str,
    limit: u64,
    window_secs: u64,
    want: u64,
) -> StoreResult<Lease> {
    let now = now_ms();
    let window_ms = window_secs.max(1).saturating_mul(1000);
    let mut g = db.lock()?;
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

pub(super) async fn peek_rate(db: &MemoryStore, key: &str) -> StoreResult<u64> {
    let now = now_ms();
    Ok(db
        .lock()?
        .rate
        .get(key)
        .filter(|(_, end)| *end > now)
        .map(|(c, _)| *c)
        .unwrap_or(0))
}
