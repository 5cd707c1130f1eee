//! The storage conformance suite: every case runs against the in-memory store and against a
//! real `redis-server` started for the test, and both must behave the same, TTLs included.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::memory::MemoryStore;
use super::redis::{RedisOptions, RedisStore};
use super::*;
use crate::testutil::{RedisCluster, RedisServer};

type Both = (Arc<dyn Store>, Arc<dyn ServiceCache>);

fn client(id: &str) -> ClientRecord {
    ClientRecord {
        client_id: id.into(),
        secret_hash: Some("hmac-sha256:abc".into()),
        registration_token_hash: None,
        metadata: ClientMetadata {
            client_name: Some("svc".into()),
            grant_types: vec!["client_credentials".into()],
            token_endpoint_auth_method: "client_secret_basic".into(),
            scope: "a b".into(),
            access_token_format: "jwt".into(),
            ..Default::default()
        },
        created_at: 1,
        updated_at: 2,
    }
}

/// An access-token record for store tests (also used by the stores' own tests).
pub(super) fn token(jti: &str, exp: u64) -> AccessTokenRecord {
    AccessTokenRecord {
        jti: jti.into(),
        client_id: "c1".into(),
        sub: "c1".into(),
        scope: "a".into(),
        aud: "api".into(),
        iat: now_secs(),
        exp,
        token_hash: "h".into(),
        format: "jwt".into(),
        act: None,
        user_id: None,
        cnf_jkt: None,
        cnf_x5t: None,
    }
}

async fn clients(s: Both) {
    let (s, _) = s;
    let c = client("c1");
    assert_eq!(s.get_client("c1").await.unwrap(), None);
    s.create_client(&c).await.unwrap();
    assert_eq!(s.get_client("c1").await.unwrap(), Some(c.clone()));
    assert!(matches!(
        s.create_client(&c).await,
        Err(StoreError::Conflict(_))
    ));
    let mut c2 = c.clone();
    c2.metadata.scope = "a".into();
    s.put_client(&c2).await.unwrap();
    assert_eq!(
        s.get_client("c1").await.unwrap().unwrap().metadata.scope,
        "a"
    );
    s.create_client(&client("c0")).await.unwrap();
    assert_eq!(s.list_client_ids().await.unwrap(), vec!["c0", "c1"]);
    assert!(s.delete_client("c1").await.unwrap());
    assert!(!s.delete_client("c1").await.unwrap());
    assert_eq!(s.get_client("c1").await.unwrap(), None);
}

async fn access_tokens_expire(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    let t = token("j1", now + 2);
    s.save_access_token(&t).await.unwrap();
    s.save_access_token(&token("j2", now + 100)).await.unwrap();
    let (rec, revoked) = s.get_access_token("j1").await.unwrap();
    assert_eq!(rec, Some(t));
    assert!(!revoked);
    assert_eq!(s.count_live_tokens(now).await.unwrap(), 2);
    assert_eq!(s.get_stats().await.unwrap().get("tokens_issued"), Some(&2));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (rec, _) = s.get_access_token("j1").await.unwrap();
    assert_eq!(rec, None, "expired token records are gone");
    let r = s.cleanup(now_secs(), 0).await.unwrap();
    assert_eq!(r.expired_tokens, 1);
    assert_eq!(s.count_live_tokens(now_secs()).await.unwrap(), 1);
    assert_eq!(s.get_access_token("nope").await.unwrap(), (None, false));
}

async fn revocation_and_feed(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    // A full listing on an empty feed.
    let p = s.revocation_feed(None, 100).await.unwrap();
    assert!(p.resync);
    assert!(p.entries.is_empty());
    let c0 = p.cursor;
    assert!(s.revoke_access_token("j1", now + 100).await.unwrap());
    assert!(
        !s.revoke_access_token("j1", now + 100).await.unwrap(),
        "idempotent"
    );
    assert!(
        !s.revoke_access_token("old", now - REVOCATION_RETENTION_SECS - 1)
            .await
            .unwrap(),
        "expired beyond the largest clock skew: nothing to do"
    );
    assert!(s.is_revoked("j1").await.unwrap());
    assert!(!s.is_revoked("old").await.unwrap());
    assert!(s.get_access_token("j1").await.unwrap().1);
    assert!(s.revoke_access_token("j2", now + 2).await.unwrap());
    assert!(s.revoke_access_token("j3", now + 200).await.unwrap());

    let p = s.revocation_feed(Some(c0), 2).await.unwrap();
    assert!(!p.resync);
    assert_eq!(
        p.entries.iter().map(|e| e.jti.as_str()).collect::<Vec<_>>(),
        vec!["j1", "j2"]
    );
    let p2 = s.revocation_feed(Some(p.cursor), 2).await.unwrap();
    assert_eq!(p2.entries.len(), 1);
    assert_eq!(
        p2.entries[0],
        RevokedEntry {
            jti: "j3".into(),
            exp: now + 200
        }
    );
    let p3 = s.revocation_feed(Some(p2.cursor), 2).await.unwrap();
    assert!(p3.entries.is_empty());
    assert_eq!(p3.cursor, p2.cursor);

    // A cursor from the future (e.g. the store was reset) gets a full resync.
    let p = s.revocation_feed(Some(p2.cursor + 1000), 10).await.unwrap();
    assert!(p.resync);
    assert_eq!(p.entries.len(), 3);

    // A cleanup once j2's revocation is over (exp + REVOCATION_RETENTION_SECS, see
    // `revocation_outlives_exp_by_the_largest_clock_skew`) drops it from the full list.
    let r = s.cleanup(revocation_kept_until(now + 2), 0).await.unwrap();
    assert_eq!(
        r.feed_entries_trimmed, 0,
        "j1 at the head is live: head trim stops there"
    );
    let p = s.revocation_feed(None, 10).await.unwrap();
    assert_eq!(
        p.entries.iter().map(|e| e.jti.as_str()).collect::<Vec<_>>(),
        vec!["j1", "j3"]
    );
}

/// Issue 12 item 5: the edge accepts a token until `exp + clock_skew_s` (at most 600 s), so
/// a revocation is kept (blacklist, feed, full list) until `exp + 600`, and only then
/// cleaned up.
/// The revocation signal (long polls of the feed wait on it): its value follows the feed's
/// sequence number as revocations are appended. On Redis it comes back through pub/sub,
/// whose subscription starts on first use: a revocation before it is up is not announced
/// (the long poll rereads the feed on subscription instead), so the check retries with a
/// new revocation. Nothing but an announcement moves the value.
async fn revocation_signal_follows_the_feed(s: Both) {
    let (s, _) = s;
    let mut rx = s.revocation_signal();
    let mut announced = false;
    for i in 0..60 {
        assert!(s
            .revoke_access_token(&format!("sig-{i}"), now_secs() + 100)
            .await
            .unwrap());
        let cursor = s.revocation_feed(None, 10).await.unwrap().cursor;
        if tokio::time::timeout(Duration::from_millis(500), rx.wait_for(|v| *v >= cursor))
            .await
            .is_ok()
        {
            announced = true;
            break;
        }
    }
    assert!(announced, "revocations are announced on the signal");
    // An idempotent repeat appends nothing and announces nothing.
    let seen = *rx.borrow_and_update();
    assert!(!s
        .revoke_access_token("sig-0", now_secs() + 100)
        .await
        .unwrap());
    assert_eq!(*rx.borrow_and_update(), seen);
}

async fn revocation_outlives_exp_by_the_largest_clock_skew(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    let c0 = s.revocation_feed(None, 10).await.unwrap().cursor;
    // Expired 5 s ago: a gateway allowing clock skew still accepts it, so it is revoked.
    let exp = now - 5;
    assert!(s.revoke_access_token("skewed", exp).await.unwrap());
    assert!(s.is_revoked("skewed").await.unwrap());
    assert!(s.get_access_token("skewed").await.unwrap().1);
    let listed = |p: &FeedPage| p.entries.iter().any(|e| e.jti == "skewed" && e.exp == exp);
    assert!(listed(&s.revocation_feed(Some(c0), 10).await.unwrap()));
    let full = s.revocation_feed(None, 10).await.unwrap();
    assert!(full.resync && listed(&full));
    // The cleanup keeps it until exp + 600, then trims it.
    let r = s
        .cleanup(exp + REVOCATION_RETENTION_SECS - 1, 0)
        .await
        .unwrap();
    assert_eq!(r.feed_entries_trimmed, 0);
    assert!(listed(&s.revocation_feed(Some(c0), 10).await.unwrap()));
    let r = s.cleanup(exp + REVOCATION_RETENTION_SECS, 0).await.unwrap();
    assert_eq!(r.feed_entries_trimmed, 1);
    assert!(!listed(&s.revocation_feed(Some(c0), 10).await.unwrap()));
    // Beyond the retention there is nothing left to revoke.
    assert!(!s
        .revoke_access_token("gone", now - REVOCATION_RETENTION_SECS)
        .await
        .unwrap());
    assert!(!s.is_revoked("gone").await.unwrap());
}

async fn feed_overflow_forces_resync(s: Both) {
    // Built with a feed of at most 3 entries.
    let (s, _) = s;
    let now = now_secs();
    let start = s.revocation_feed(None, 10).await.unwrap().cursor;
    for i in 0..5 {
        s.revoke_access_token(&format!("j{i}"), now + 100)
            .await
            .unwrap();
    }
    let p = s.revocation_feed(Some(start), 10).await.unwrap();
    assert!(p.resync, "a reader behind the retained feed must resync");
    assert_eq!(p.entries.len(), 5, "the resync lists every live revocation");
    let p = s.revocation_feed(Some(p.cursor - 2), 10).await.unwrap();
    assert!(!p.resync);
    assert_eq!(p.entries.len(), 2);
}

async fn rate_limits(s: Both) {
    let (s, _) = s;
    for i in 1..=3 {
        let d = s.rate_limit("k", 3, 1).await.unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 3 - i);
        assert_eq!(d.reset_after, 1);
    }
    assert_eq!(s.peek_rate("k").await.unwrap(), 3);
    let d = s.rate_limit("k", 3, 1).await.unwrap();
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert!(s.rate_limit("other", 3, 1).await.unwrap().allowed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.peek_rate("k").await.unwrap(), 0);
    assert!(
        s.rate_limit("k", 3, 1).await.unwrap().allowed,
        "window reset"
    );
}

async fn rate_leases_grant_up_to_the_limit(s: Both) {
    let (s, _) = s;
    let l = s.rate_lease("p:a", 10, 60, 4).await.unwrap();
    assert_eq!((l.granted, l.used, l.limit), (4, 4, 10));
    assert!(l.reset_ms > 0 && l.reset_ms <= 60_000, "{l:?}");
    let first_reset = l.reset_ms;
    let l = s.rate_lease("p:a", 10, 60, 4).await.unwrap();
    assert_eq!((l.granted, l.used), (4, 8));
    assert!(
        l.reset_ms <= first_reset,
        "a lease never extends the window"
    );
    // Only what is left of the limit.
    let l = s.rate_lease("p:a", 10, 60, 4).await.unwrap();
    assert_eq!((l.granted, l.used), (2, 10));
    // Exhausted: 0, and nothing is counted.
    for _ in 0..3 {
        let l = s.rate_lease("p:a", 10, 60, 1).await.unwrap();
        assert_eq!((l.granted, l.used, l.limit), (0, 10, 10));
        assert!(l.reset_ms > 0 && l.reset_ms <= 60_000);
    }
    // Keys are independent, and lease windows are not the plain rate-limit windows.
    assert_eq!(s.rate_lease("p:b", 10, 60, 10).await.unwrap().granted, 10);
    assert_eq!(s.peek_rate("p:a").await.unwrap(), 0);
    assert!(s.rate_limit("p:a", 1, 60).await.unwrap().allowed);
    assert_eq!(s.rate_lease("p:a", 10, 60, 1).await.unwrap().used, 10);
    // A caller with a higher limit on the same key sees the same count; one with a lower
    // limit than what is used gets 0, never a negative grant.
    let l = s.rate_lease("p:a", 12, 60, 5).await.unwrap();
    assert_eq!((l.granted, l.used, l.limit), (2, 12, 12));
    let l = s.rate_lease("p:a", 5, 60, 5).await.unwrap();
    assert_eq!((l.granted, l.used, l.limit), (0, 12, 5));
}

async fn rate_lease_window_resets(s: Both) {
    let (s, _) = s;
    let l = s.rate_lease("w", 3, 1, 3).await.unwrap();
    assert_eq!((l.granted, l.used), (3, 3));
    assert!(l.reset_ms <= 1000);
    // Later leases do not extend the window.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let l = s.rate_lease("w", 3, 1, 1).await.unwrap();
    assert_eq!(l.granted, 0);
    assert!(l.reset_ms <= 400, "{l:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = s.rate_lease("w", 3, 1, 2).await.unwrap();
    assert_eq!(
        (l.granted, l.used),
        (2, 2),
        "a new window after the old one ended"
    );
    assert!(l.reset_ms > 0 && l.reset_ms <= 1000, "{l:?}");
}

async fn concurrent_leases_never_over_grant(s: Both) {
    let (s, _) = s;
    const LIMIT: u64 = 1000;
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            // Bounded: each successful call takes at least 1, so at most LIMIT + 1 calls.
            for _ in 0..=LIMIT {
                let l = s.rate_lease("hot", LIMIT, 60, 3 + t % 5).await.unwrap();
                assert!(l.used <= LIMIT, "{l:?}");
                if l.granted == 0 {
                    break;
                }
                got += l.granted;
            }
            got
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, LIMIT, "the sum of grants is exactly the limit");
    let l = s.rate_lease("hot", LIMIT, 60, 1).await.unwrap();
    assert_eq!((l.granted, l.used), (0, LIMIT));
}

async fn keys_stats_config(s: Both) {
    let (s, _) = s;
    assert!(s.list_keys().await.unwrap().is_empty());
    let k = StoredKey {
        kid: "k1".into(),
        alg: "ES256".into(),
        private_pem: "pem".into(),
        sealed_private_key: None,
        created_at: 1,
        active_from: 1,
        retire_at: None,
    };
    s.put_key(&k).await.unwrap();
    let mut k2 = k.clone();
    k2.retire_at = Some(5);
    s.put_key(&k2).await.unwrap();
    assert_eq!(s.list_keys().await.unwrap(), vec![k2]);
    s.delete_key("k1").await.unwrap();
    assert!(s.list_keys().await.unwrap().is_empty());

    s.incr_stats(&[("a", 2), ("b", 1)]).await.unwrap();
    s.incr_stats(&[("a", 3)]).await.unwrap();
    let st = s.get_stats().await.unwrap();
    assert_eq!((st["a"], st["b"]), (5, 1));

    let mut m = BTreeMap::new();
    m.insert("access_token_ttl".to_string(), "60".to_string());
    s.set_config(&m).await.unwrap();
    m.insert("x".to_string(), "y".to_string());
    s.set_config(&m).await.unwrap();
    assert_eq!(s.get_config().await.unwrap(), m);
    s.ping().await.unwrap();
    assert!(!s.backend_info().await.unwrap().kind.is_empty());
}

/// A test KEK (never a real one).
fn test_kek(b: u8) -> crate::crypto::KeyEncryption {
    crate::crypto::KeyEncryption::new(&[b; 32], &[]).unwrap()
}

/// What the store holds of a signing key is its sealed form only, and the compare-and-set
/// that re-encryption and retirement use loses no concurrent write.
async fn signing_keys_are_stored_sealed(s: Both) {
    use crate::keys::{new_sealed_key, private_pem, seal, SigningAlg};
    let (s, _) = s;
    let kek = test_kek(1);
    let k = new_sealed_key(SigningAlg::ES256, 1, 1, &kek).unwrap();
    let pem = private_pem(&k, &kek).unwrap();
    s.put_key(&k).await.unwrap();
    let back = s.list_keys().await.unwrap();
    assert_eq!(back, vec![k.clone()]);
    let stored = serde_json::to_string(&back).unwrap();
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!stored.contains(line), "private key material in the store");
    }
    assert!(!stored.contains("PRIVATE KEY"));
    assert_eq!(&*private_pem(&back[0], &kek).unwrap(), &*pem);

    // Compare-and-set: replaced only from the expected record; a retry of a replacement
    // that went through is a success; a stale or missing record is not replaced.
    let rotated =
        crate::crypto::KeyEncryption::new(&[2; 32], &[zeroize::Zeroizing::new([1; 32])]).unwrap();
    let rewrapped = seal(&k, &rotated).unwrap();
    assert!(s.replace_key(&k, &rewrapped).await.unwrap());
    assert!(s.replace_key(&k, &rewrapped).await.unwrap(), "a retry");
    let mut retired = k.clone();
    retired.retire_at = Some(9);
    assert!(!s.replace_key(&k, &retired).await.unwrap(), "stale");
    assert_eq!(s.list_keys().await.unwrap(), vec![rewrapped.clone()]);
    let mut other = rewrapped.clone();
    other.kid = "k2".into();
    assert!(
        !s.replace_key(&rewrapped, &other).await.unwrap(),
        "another kid"
    );
    s.delete_key(&k.kid).await.unwrap();
    assert!(!s.replace_key(&rewrapped, &retired).await.unwrap(), "gone");
    assert!(s.list_keys().await.unwrap().is_empty());
}

async fn service_cache(s: Both) {
    let (_, c) = s;
    assert_eq!(c.cache_config().await.unwrap(), CacheConfig::DEFAULT);
    c.set_cache_config(&CacheConfig {
        default_ttl: 100,
        max_entries_per_service: 2,
    })
    .await
    .unwrap();
    c.cache_put("users", "a", "1", None).await.unwrap();
    c.cache_put("users", "b", "2", None).await.unwrap();
    c.cache_put("users", "c", "3", Some(1000)).await.unwrap();
    c.cache_put("orders", "x", "9", None).await.unwrap();
    c.cache_put("orders", "gone", "9", Some(1)).await.unwrap();
    // Redis' LRU clock has one-second resolution: let time pass before touching "a".
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        c.cache_get("users", "a").await.unwrap().as_deref(),
        Some("1")
    );
    assert_eq!(c.cache_get("orders", "gone").await.unwrap(), None);
    let r = c.cache_cleanup(now_secs()).await.unwrap();
    assert_eq!(r.services, 2);
    assert_eq!(r.trimmed, 1, "users trimmed to 2");
    assert_eq!(r.ttl_set, 3, "a, b and x had no TTL");
    assert_eq!(r.entries, 3);
    assert_eq!(
        c.cache_get("users", "a").await.unwrap().as_deref(),
        Some("1"),
        "the recently used entry survives"
    );
    let left = [
        c.cache_get("users", "b").await.unwrap(),
        c.cache_get("users", "c").await.unwrap(),
    ];
    assert_eq!(left.iter().filter(|v| v.is_some()).count(), 1);
    let st = c.cache_stats().await.unwrap();
    assert_eq!(st.get("entries:users").map(String::as_str), Some("2"));
    assert_eq!(st.get("entries:orders").map(String::as_str), Some("1"));
}

async fn users(s: Both) {
    let (s, _) = s;
    assert_eq!(s.get_user("alice").await.unwrap(), None);
    let u = UserRecord {
        username: "alice".into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$x$y".into(),
        created_at: 7,
        user_id: "u-alice".into(),
    };
    s.create_user(&u).await.unwrap();
    assert!(matches!(
        s.create_user(&u).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.get_user("alice").await.unwrap(), Some(u.clone()));
    let mut b = u.clone();
    b.username = "bob".into();
    s.create_user(&b).await.unwrap();
    let names: Vec<String> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, vec!["alice", "bob"]);
    assert!(s.delete_user("alice").await.unwrap());
    assert!(!s.delete_user("alice").await.unwrap());
    assert_eq!(s.get_user("alice").await.unwrap(), None);
}

async fn sessions_expire(s: Both) {
    let (s, _) = s;
    let rec = SessionRecord {
        username: "alice".into(),
        user_id: "u-alice".into(),
        auth_time: now_secs(),
        exp: now_secs() + 2,
    };
    s.save_session("h1", &rec).await.unwrap();
    assert_eq!(s.get_session("h1").await.unwrap(), Some(rec.clone()));
    assert_eq!(s.get_session("h2").await.unwrap(), None);
    s.save_session("h3", &rec).await.unwrap();
    s.delete_session("h3").await.unwrap();
    assert_eq!(s.get_session("h3").await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(s.get_session("h1").await.unwrap(), None, "expired");
}

fn code(client: &str, exp: u64) -> AuthCodeRecord {
    AuthCodeRecord {
        client_id: client.into(),
        redirect_uri: "https://app/cb".into(),
        redirect_uri_given: true,
        scope: "a".into(),
        aud: "api".into(),
        sub: "alice".into(),
        user_id: "u-alice".into(),
        code_challenge: Some("c".repeat(43)),
        code_challenge_method: Some("S256".into()),
        grant_id: "g1".into(),
        auth_time: 1,
        exp,
        dpop_jkt: Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into()),
    }
}

async fn codes_are_single_use(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    let c = code("c1", now + 2);
    s.save_auth_code("h", &c).await.unwrap();
    assert_eq!(
        s.consume_auth_code("h", "other").await.unwrap(),
        Consumed::WrongClient
    );
    assert_eq!(
        s.consume_auth_code("h", "c1").await.unwrap(),
        Consumed::Fresh(c.clone()),
        "another client's attempt left the code usable"
    );
    assert_eq!(
        s.consume_auth_code("h", "c1").await.unwrap(),
        Consumed::Replayed(c.clone())
    );
    s.release_auth_code("h").await.unwrap();
    assert_eq!(
        s.consume_auth_code("h", "c1").await.unwrap(),
        Consumed::Replayed(c.clone()),
        "a replayed code is never released"
    );
    s.save_auth_code("h2", &c).await.unwrap();
    assert!(matches!(
        s.consume_auth_code("h2", "c1").await.unwrap(),
        Consumed::Fresh(_)
    ));
    s.release_auth_code("h2").await.unwrap();
    assert_eq!(
        s.consume_auth_code("h2", "c1").await.unwrap(),
        Consumed::Fresh(c.clone()),
        "a released code is a first use again"
    );
    assert_eq!(
        s.consume_auth_code("nope", "c1").await.unwrap(),
        Consumed::Missing
    );
    // Concurrent consumption: exactly one wins.
    s.save_auth_code("race", &c).await.unwrap();
    let attempts =
        futures::future::join_all((0..8).map(|_| s.consume_auth_code("race", "c1"))).await;
    let fresh = attempts
        .iter()
        .filter(|r| matches!(r, Ok(Consumed::Fresh(_))))
        .count();
    assert_eq!(fresh, 1);
    s.save_auth_code("late", &c).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        s.consume_auth_code("late", "c1").await.unwrap(),
        Consumed::Missing,
        "expired"
    );
}

async fn refresh_tokens_rotate(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    let r = RefreshTokenRecord {
        client_id: "c1".into(),
        sub: "alice".into(),
        user_id: "u-alice".into(),
        scope: "a".into(),
        aud: "api".into(),
        grant_id: "g1".into(),
        iat: now,
        exp: now + 100,
        jkt: Some("jkt-of-the-client-key".into()),
    };
    s.save_refresh_token("r1", &r).await.unwrap();
    assert_eq!(
        s.get_refresh_token("r1").await.unwrap(),
        Some((r.clone(), false))
    );
    assert_eq!(
        s.consume_refresh_token("r1", "c2").await.unwrap(),
        Consumed::WrongClient
    );
    assert_eq!(
        s.consume_refresh_token("r1", "c1").await.unwrap(),
        Consumed::Fresh(r.clone())
    );
    assert_eq!(
        s.get_refresh_token("r1").await.unwrap(),
        Some((r.clone(), true))
    );
    assert_eq!(
        s.consume_refresh_token("r1", "c1").await.unwrap(),
        Consumed::Replayed(r.clone())
    );
    // A release gives back a first use, never a replay.
    s.release_refresh_token("r1").await.unwrap();
    assert_eq!(
        s.consume_refresh_token("r1", "c1").await.unwrap(),
        Consumed::Replayed(r.clone())
    );
    s.save_refresh_token("r2", &r).await.unwrap();
    assert!(matches!(
        s.consume_refresh_token("r2", "c1").await.unwrap(),
        Consumed::Fresh(_)
    ));
    s.release_refresh_token("r2").await.unwrap();
    s.release_refresh_token("missing").await.unwrap();
    assert_eq!(
        s.get_refresh_token("r2").await.unwrap(),
        Some((r.clone(), false))
    );
    assert_eq!(
        s.consume_refresh_token("r2", "c1").await.unwrap(),
        Consumed::Fresh(r.clone())
    );
    s.delete_refresh_tokens(&["r1".to_string(), "zz".to_string()])
        .await
        .unwrap();
    assert_eq!(s.get_refresh_token("r1").await.unwrap(), None);
    assert_eq!(
        s.consume_refresh_token("r1", "c1").await.unwrap(),
        Consumed::Missing
    );
}

async fn token_families(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    assert!(!s.family_revoked("g1").await.unwrap());
    assert!(s
        .family_add("g1", &[("j1".into(), now + 50)], &["r1".into()], now + 100)
        .await
        .unwrap());
    assert!(s
        .family_add("g1", &[("j2".into(), now + 60)], &["r2".into()], now + 100)
        .await
        .unwrap());
    assert!(s
        .family_add("g2", &[("x".into(), now + 60)], &[], now + 100)
        .await
        .unwrap());
    let mut f = s.revoke_family("g1", now + 100).await.unwrap();
    f.access.sort();
    f.refresh.sort();
    assert_eq!(
        f,
        FamilyTokens {
            access: vec![("j1".into(), now + 50), ("j2".into(), now + 60)],
            refresh: vec!["r1".into(), "r2".into()],
        }
    );
    assert!(s.family_revoked("g1").await.unwrap());
    assert!(
        !s.family_revoked("g2").await.unwrap(),
        "other families untouched"
    );
    assert!(
        !s.family_add("g1", &[("j3".into(), now + 60)], &[], now + 100)
            .await
            .unwrap(),
        "a revoked family takes no new members"
    );
    assert_eq!(
        s.revoke_family("g1", now + 100).await.unwrap().access.len(),
        2,
        "idempotent"
    );
    // A revocation of an unknown family still blocks it.
    assert!(s
        .revoke_family("g3", now + 2)
        .await
        .unwrap()
        .access
        .is_empty());
    assert!(!s
        .family_add("g3", &[], &["r".into()], now + 100)
        .await
        .unwrap());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!s.family_revoked("g3").await.unwrap(), "the mark expires");
}

async fn assertion_jtis(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    assert!(s.claim_assertion_jti("c1:a", now + 2).await.unwrap());
    assert!(!s.claim_assertion_jti("c1:a", now + 2).await.unwrap());
    assert!(s.claim_assertion_jti("c2:a", now + 2).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(s.claim_assertion_jti("c1:a", now + 100).await.unwrap());
}

/// A DPoP proof's `jti` is used once per key until its expiry: the same `jti` from another
/// key is another proof; after the expiry the name is free again.
async fn dpop_jtis_are_single_use(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    assert!(s.claim_dpop_jti("jkt-a", "j1", now + 2).await.unwrap());
    assert!(
        !s.claim_dpop_jti("jkt-a", "j1", now + 2).await.unwrap(),
        "replay"
    );
    assert!(
        !s.claim_dpop_jti("jkt-a", "j1", now + 100).await.unwrap(),
        "a later exp does not reopen it"
    );
    assert!(
        s.claim_dpop_jti("jkt-b", "j1", now + 2).await.unwrap(),
        "another key"
    );
    assert!(
        s.claim_dpop_jti("jkt-a", "j2", now + 2).await.unwrap(),
        "another jti"
    );
    // Not mistaken for a client assertion's jti of the same name.
    assert!(s.claim_assertion_jti("jkt-a j1", now + 2).await.unwrap());
    // Long, odd identifiers are stored under their hash.
    let long = "\u{1F600}{x}".repeat(100);
    assert!(s.claim_dpop_jti(&long, &long, now + 2).await.unwrap());
    assert!(!s.claim_dpop_jti(&long, &long, now + 2).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        s.claim_dpop_jti("jkt-a", "j1", now + 100).await.unwrap(),
        "expired"
    );
}

async fn access_token_act_round_trips(s: Both) {
    let (s, _) = s;
    let mut t = token("ja", now_secs() + 100);
    t.act = Some(r#"{"sub":"svc"}"#.into());
    t.user_id = Some("u-alice".into());
    t.cnf_jkt = Some("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I".into());
    s.save_access_token(&t).await.unwrap();
    assert_eq!(s.get_access_token("ja").await.unwrap().0, Some(t.clone()));
    // RFC 8705: a certificate-bound token keeps its x5t#S256.
    t.jti = "jx".into();
    t.cnf_jkt = None;
    t.cnf_x5t = Some("bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2".into());
    s.save_access_token(&t).await.unwrap();
    assert_eq!(s.get_access_token("jx").await.unwrap().0, Some(t));
}

/// What a user or a client owns is indexed under it, so that deleting it can end it: access
/// tokens under their client and user, sessions under their user, families as indexed; the
/// later expiry wins, expired members are not listed, clearing drops one index only.
async fn ownership_indexes(s: Both) {
    let (s, _) = s;
    let now = now_secs();
    let (u1, c1, c2) = (user_owner("u1"), client_owner("c1"), client_owner("c2"));
    let mut a = token("ja", now + 100);
    a.user_id = Some("u1".into());
    s.save_access_token(&a).await.unwrap();
    s.save_access_token(&token("jb", now + 2)).await.unwrap();
    let mut c = token("jc", now + 100);
    c.client_id = "c2".into();
    s.save_access_token(&c).await.unwrap();
    let sorted = |mut v: Vec<(String, u64)>| {
        v.sort();
        v
    };
    let list = |o: String, k: Owned| {
        let s = s.clone();
        async move { sorted(s.list_owned(&o, k, now_secs()).await.unwrap()) }
    };
    assert_eq!(
        list(c1.clone(), Owned::AccessTokens).await,
        vec![("ja".to_string(), now + 100), ("jb".to_string(), now + 2)]
    );
    assert_eq!(
        list(u1.clone(), Owned::AccessTokens).await,
        vec![("ja".to_string(), now + 100)]
    );
    assert_eq!(
        list(c2.clone(), Owned::AccessTokens).await,
        vec![("jc".to_string(), now + 100)]
    );
    // Sessions: under their user; one without a user id is not indexed.
    let sess = |uid: &str| SessionRecord {
        username: "alice".into(),
        user_id: uid.into(),
        auth_time: now,
        exp: now + 50,
    };
    s.save_session("s1", &sess("u1")).await.unwrap();
    s.save_session("s2", &sess("")).await.unwrap();
    assert_eq!(
        list(u1.clone(), Owned::Sessions).await,
        vec![("s1".to_string(), now + 50)]
    );
    assert_eq!(list(user_owner(""), Owned::Sessions).await, vec![]);
    // Families: under every owner named; the later expiry wins.
    let both = [u1.clone(), c1.clone()];
    s.index_owned(&both, Owned::Grants, "g1", now + 60)
        .await
        .unwrap();
    s.index_owned(&both, Owned::Grants, "g1", now + 90)
        .await
        .unwrap();
    s.index_owned(&both, Owned::Grants, "g1", now + 30)
        .await
        .unwrap();
    s.index_owned(&both[..1], Owned::Grants, "g2", now + 2)
        .await
        .unwrap();
    assert_eq!(
        list(c1.clone(), Owned::Grants).await,
        vec![("g1".to_string(), now + 90)]
    );
    assert_eq!(
        list(u1.clone(), Owned::Grants).await,
        vec![("g1".to_string(), now + 90), ("g2".to_string(), now + 2)]
    );
    // `now` decides what is still listed.
    assert_eq!(
        s.list_owned(&u1, Owned::Grants, now + 2).await.unwrap(),
        vec![("g1".to_string(), now + 90)]
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        list(c1.clone(), Owned::AccessTokens).await,
        vec![("ja".to_string(), now + 100)],
        "an expired member is not listed"
    );
    // Clearing drops one index of one owner.
    s.clear_owned(&u1, Owned::Grants).await.unwrap();
    assert_eq!(list(u1.clone(), Owned::Grants).await, vec![]);
    assert_eq!(
        list(c1.clone(), Owned::Grants).await,
        vec![("g1".to_string(), now + 90)]
    );
    assert_eq!(
        list(u1.clone(), Owned::AccessTokens).await,
        vec![("ja".to_string(), now + 100)]
    );
    // A member added later goes into a fresh index.
    s.index_owned(std::slice::from_ref(&u1), Owned::Grants, "g3", now + 10)
        .await
        .unwrap();
    assert_eq!(
        list(u1, Owned::Grants).await,
        vec![("g3".to_string(), now + 10)]
    );
}

fn memory(feed_max: usize) -> Both {
    let m = Arc::new(MemoryStore::new(feed_max));
    (m.clone(), m)
}

async fn redis(server: &RedisServer, feed_max: usize) -> Both {
    let opts = RedisOptions {
        feed_max,
        ..Default::default()
    };
    let s = RedisStore::connect(&StoreUrl::parse(&server.url(0)).unwrap(), opts.clone())
        .await
        .unwrap();
    let c = RedisStore::connect(&StoreUrl::parse(&server.url(1)).unwrap(), opts)
        .await
        .unwrap();
    (Arc::new(s), Arc::new(c))
}

/// The Redis store with `WAIT 1` against a master with one replica: every durable write
/// must be acknowledged by the replica, and the results must not change.
async fn redis_wait(server: &RedisServer, feed_max: usize) -> Both {
    let opts = RedisOptions {
        feed_max,
        wait_replicas: 1,
        wait_timeout: Duration::from_millis(1000),
        ..Default::default()
    };
    let s = RedisStore::connect(&StoreUrl::parse(&server.url(0)).unwrap(), opts.clone())
        .await
        .unwrap();
    let c = RedisStore::connect(&StoreUrl::parse(&server.url(1)).unwrap(), opts)
        .await
        .unwrap();
    (Arc::new(s), Arc::new(c))
}

/// The store and the service cache on one three-primary Redis Cluster, as the auth server
/// opens them for a `redis+cluster://` URL (Cluster has only DB 0: the cache is told apart
/// by its key prefix, `cache:` / `cache_`).
async fn on_cluster(cluster: &RedisCluster, feed_max: usize) -> Both {
    let opts = RedisOptions {
        feed_max,
        ..Default::default()
    };
    let url = StoreUrl::parse(&cluster.url()).unwrap();
    let s = Arc::new(RedisStore::connect(&url, opts).await.unwrap());
    (s.clone(), s)
}

macro_rules! conformance {
    ($($name:ident => $feed_max:expr),* $(,)?) => {
        mod on_memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(memory($feed_max)).await;
                }
            )*
        }
        mod on_redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(server) = RedisServer::start() else { return };
                    super::$name(redis(&server, $feed_max).await).await;
                }
            )*
        }
        mod on_redis_with_wait {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(server) = RedisServer::start() else { return };
                    let _replica = server.replica();
                    super::$name(redis_wait(&server, $feed_max).await).await;
                }
            )*
        }
        mod on_cluster {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(cluster) = RedisCluster::start(3, 0) else { return };
                    super::$name(on_cluster(&cluster, $feed_max).await).await;
                }
            )*
        }
    };
}

conformance! {
    clients => 100,
    access_tokens_expire => 100,
    revocation_and_feed => 100,
    revocation_signal_follows_the_feed => 100,
    revocation_outlives_exp_by_the_largest_clock_skew => 100,
    feed_overflow_forces_resync => 3,
    rate_limits => 100,
    rate_leases_grant_up_to_the_limit => 100,
    rate_lease_window_resets => 100,
    concurrent_leases_never_over_grant => 100,
    keys_stats_config => 100,
    signing_keys_are_stored_sealed => 100,
    service_cache => 100,
    users => 100,
    sessions_expire => 100,
    codes_are_single_use => 100,
    refresh_tokens_rotate => 100,
    token_families => 100,
    assertion_jtis => 100,
    dpop_jtis_are_single_use => 100,
    access_token_act_round_trips => 100,
    ownership_indexes => 100,
}

/// The raw Redis value of every signing key, as a backup (RDB/AOF) holds it, after a server
/// started on a store with a key in clear (written by an earlier version) and created its
/// own: both sealed, no private key material, and the server signs with them.
#[tokio::test]
async fn redis_holds_signing_keys_only_sealed() {
    use crate::keys::{new_stored_key, SigningAlg};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (s, _) = redis(&server, 100).await;
    let clear = new_stored_key(SigningAlg::ES256, now_secs() - 10, now_secs() - 10).unwrap();
    s.put_key(&clear).await.unwrap();
    let raw: BTreeMap<String, String> = server.cmd(::redis::cmd("HGETALL").arg("auth:keys"));
    assert!(
        raw[&clear.kid].contains("PRIVATE KEY"),
        "the old clear form"
    );

    let cfg = crate::config::Config::for_tests();
    let state = crate::state::AppState::new(cfg.clone(), s.clone())
        .await
        .unwrap();
    crate::key_rotation::rotate(s.as_ref(), SigningAlg::EdDSA, 0, &cfg.key_encryption)
        .await
        .unwrap();
    state.reload_keys().await.unwrap();
    let raw: BTreeMap<String, String> = server.cmd(::redis::cmd("HGETALL").arg("auth:keys"));
    assert_eq!(raw.len(), 2);
    let body = |pem: &str| -> Vec<String> {
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_string)
            .collect()
    };
    for (kid, value) in &raw {
        assert!(!value.contains("PRIVATE KEY"), "{kid} in clear");
        for line in body(&clear.private_pem) {
            assert!(!value.contains(&line), "{kid} holds key material");
        }
        let rec: StoredKey = serde_json::from_str(value).unwrap();
        let sealed = rec.sealed_private_key.expect("sealed");
        assert_eq!(
            Some(sealed.kek_id.as_str()),
            cfg.key_encryption.current_id()
        );
    }
    let ring = state.keys();
    assert_eq!(ring.keys().len(), 2, "both keys opened");
    let signer = ring.active(now_secs()).unwrap();
    assert!(signer.sign(&serde_json::json!({"sub": "x"})).is_ok());
}

#[tokio::test]
async fn redis_unreachable_is_unavailable_not_a_hang() {
    let port = crate::testutil::free_port();
    let url = StoreUrl::parse(&format!("redis://127.0.0.1:{port}/0")).unwrap();
    let opts = RedisOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    // A liveness bound, not a performance threshold: the call must return at all.
    let r = tokio::time::timeout(Duration::from_secs(60), RedisStore::connect(&url, opts))
        .await
        .expect("connect must not hang");
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "{:?}",
        r.err()
    );
}

/// Redis Cluster beyond the shared suite: the keys spread over every primary, listings
/// (`SCAN`) and multi-key batches reach every primary, the service cache shares DB 0 with
/// the auth data without either job touching the other's keys, and `backend_info` reports
/// every node's role and replication.
#[tokio::test]
async fn cluster_spreads_keys_and_reaches_every_primary() {
    let Some(cluster) = RedisCluster::start(3, 1) else {
        return;
    };
    let (s, c) = on_cluster(&cluster, 100).await;
    let keys_on = |n: &RedisServer, pattern: &str| -> Vec<String> {
        n.cmd(::redis::cmd("KEYS").arg(pattern))
    };

    let ids: Vec<String> = (0..60).map(|i| format!("c{i:02}")).collect();
    for id in &ids {
        s.create_client(&client(id)).await.unwrap();
    }
    for n in cluster.primaries() {
        assert!(
            !keys_on(n, "auth:client:*").is_empty(),
            "no client on :{}",
            n.port
        );
    }
    assert_eq!(
        s.list_client_ids().await.unwrap(),
        ids,
        "SCAN saw every primary"
    );

    // Batches over many slots: tokens (record + cleanup index + counter), refresh tokens.
    let now = now_secs();
    for i in 0..40 {
        // Already expired: the record goes at once, the cleanup entry stays for cleanup.
        s.save_access_token(&token(&format!("old{i}"), now - 1))
            .await
            .unwrap();
        s.save_access_token(&token(&format!("live{i}"), now + 100))
            .await
            .unwrap();
    }
    assert_eq!(s.get_stats().await.unwrap().get("tokens_issued"), Some(&80));
    assert_eq!(s.count_live_tokens(now).await.unwrap(), 40);
    let r = s.cleanup(now, 0).await.unwrap();
    assert_eq!(r.expired_tokens, 40);
    for i in 0..40 {
        assert!(s
            .get_access_token(&format!("live{i}"))
            .await
            .unwrap()
            .0
            .is_some());
    }
    let rt = RefreshTokenRecord {
        client_id: "c00".into(),
        sub: "alice".into(),
        user_id: "u-alice".into(),
        scope: "a".into(),
        aud: "api".into(),
        grant_id: "g".into(),
        iat: now,
        exp: now + 100,
        jkt: None,
    };
    let hashes: Vec<String> = (0..30).map(|i| format!("h{i}")).collect();
    for h in &hashes {
        s.save_refresh_token(h, &rt).await.unwrap();
    }
    s.delete_refresh_tokens(&hashes).await.unwrap();
    for h in &hashes {
        assert_eq!(s.get_refresh_token(h).await.unwrap(), None);
    }

    // The service cache beside the auth data (Cluster has only DB 0).
    for i in 0..30 {
        c.cache_put("svc", &format!("k{i}"), "v", None)
            .await
            .unwrap();
    }
    let r = c.cache_cleanup(now_secs()).await.unwrap();
    assert_eq!((r.services, r.entries, r.ttl_set), (1, 30, 30));
    assert_eq!(
        s.list_client_ids().await.unwrap(),
        ids,
        "cache-cleanup left them"
    );
    for n in cluster.primaries() {
        for k in keys_on(n, "auth:client:*") {
            let ttl: i64 = n.cmd(::redis::cmd("TTL").arg(&k));
            assert_eq!(ttl, -1, "{k} got a cache TTL");
        }
    }
    s.cleanup(now_secs(), 0).await.unwrap();
    assert_eq!(
        c.cache_get("svc", "k7").await.unwrap().as_deref(),
        Some("v")
    );

    // Every node in the status.
    let info = s.backend_info().await.unwrap();
    assert_eq!(
        (info.kind.as_str(), info.role.as_str()),
        ("redis+cluster", "cluster")
    );
    let d = &info.details;
    assert_eq!(d["cluster_state"], "ok");
    assert_eq!(
        (d["primaries"].as_str(), d["replicas"].as_str()),
        ("3", "3")
    );
    for n in cluster.primaries() {
        assert_eq!(d[&format!("node.127.0.0.1:{}.role", n.port)], "master");
        assert_eq!(
            d[&format!("node.127.0.0.1:{}.connected_slaves", n.port)],
            "1"
        );
    }
}

#[tokio::test]
async fn cluster_revocation_signal_reaches_another_process() {
    // Two stores (two auth-server processes) on one Cluster: a revocation through one wakes
    // the other's receivers (a classic PUBLISH reaches every node).
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    let (a, _) = on_cluster(&cluster, 100).await;
    let (b, _) = on_cluster(&cluster, 100).await;
    let mut rx = b.revocation_signal();
    let mut announced = false;
    for i in 0..60 {
        assert!(a
            .revoke_access_token(&format!("x-{i}"), now_secs() + 100)
            .await
            .unwrap());
        let cursor = a.revocation_feed(None, 10).await.unwrap().cursor;
        if tokio::time::timeout(Duration::from_millis(500), rx.wait_for(|v| *v >= cursor))
            .await
            .is_ok()
        {
            announced = true;
            break;
        }
    }
    assert!(announced, "the other process's signal follows the feed");
}

#[tokio::test]
async fn cluster_unreachable_is_unavailable_not_a_hang() {
    let (p1, p2) = (crate::testutil::free_port(), crate::testutil::free_port());
    let url = StoreUrl::parse(&format!("redis+cluster://127.0.0.1:{p1},127.0.0.1:{p2}")).unwrap();
    let opts = RedisOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    // A liveness bound, not a performance threshold: the call must return at all.
    let r = tokio::time::timeout(Duration::from_secs(60), RedisStore::connect(&url, opts))
        .await
        .expect("connect must not hang");
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "{:?}",
        r.err()
    );
}
