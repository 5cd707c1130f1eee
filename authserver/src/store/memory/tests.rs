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
