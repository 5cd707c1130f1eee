//! The periodic cleanup: expired tokens, the revocation feed's head, ownership indexes.

use super::*;

pub(super) async fn cleanup(
    db: &RedisStore,
    now: u64,
    _feed_retention_secs: u64,
) -> StoreResult<CleanupReport> {
    let mut report = CleanupReport::default();
    loop {
        let expired: Vec<String> = db
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
        let cluster = db.cluster;
        db.idem(|c| {
            let b = b.clone();
            async move { b.run(cluster, c).await.map(|_| ()) }
        })
        .await?;
        report.expired_tokens += n as u64;
        if n < 1000 {
            break;
        }
    }
    let script = db.feed_trim.clone();
    let horizon = now.saturating_sub(REVOCATION_RETENTION_SECS);
    let trimmed: u64 = db
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
        db.incr_stats(&[("tokens_cleaned", report.expired_tokens as i64)])
            .await?;
    }
    Ok(report)
}
