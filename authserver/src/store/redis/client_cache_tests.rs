//! The client cache against real Redis servers: two stores stand for two auth-server
//! replicas; a change made through one must reach the other's cache, on a single server
//! and on a Cluster, and a lost subscription must stop the cache.

use super::*;
use crate::testutil::{RedisCluster, RedisServer};

fn client(secret: &str) -> ClientRecord {
    ClientRecord {
        client_id: "c1".into(),
        secret_hash: Some(secret.into()),
        registration_token_hash: None,
        metadata: ClientMetadata::default(),
        created_at: 1,
        updated_at: 2,
    }
}

fn opts() -> RedisOptions {
    RedisOptions {
        // Longer than any wait below: what ends an entry here is a message, not its age.
        client_cache_ttl: Duration::from_secs(120),
        ..Default::default()
    }
}

async fn store(url: &str) -> RedisStore {
    RedisStore::connect(&StoreUrl::parse(url).unwrap(), opts())
        .await
        .unwrap()
}

/// What `s` answers from its cache for c1 (`None`: it read Redis).
async fn cached_secret(s: &RedisStore) -> Option<Option<String>> {
    match s.get_client_cached("c1").await.unwrap() {
        (rec, true) => Some(rec.and_then(|r| r.secret_hash)),
        (_, false) => None,
    }
}

/// Until `s` answers c1 from its cache (its subscription opens in the background).
async fn until_cached(s: &RedisStore) -> Option<String> {
    for _ in 0..250 {
        if let Some(secret) = cached_secret(s).await {
            return secret;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the client was never served from the cache");
}

/// Until what `s` answers for c1 (cached or not) is `want`.
async fn until_answers(s: &RedisStore, want: Option<&str>) {
    for _ in 0..250 {
        let (rec, _) = s.get_client_cached("c1").await.unwrap();
        if rec.and_then(|r| r.secret_hash).as_deref() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the cache kept serving a stale record instead of {want:?}");
}

/// A change through `a` reaches `b`'s cache: a new secret, then a deletion.
async fn changes_reach_the_other_replica(a: &RedisStore, b: &RedisStore) {
    a.create_client(&client("s1")).await.unwrap();
    assert_eq!(until_cached(b).await.as_deref(), Some("s1"));

    a.put_client(&client("s2")).await.unwrap();
    until_answers(b, Some("s2")).await;
    assert_eq!(until_cached(b).await.as_deref(), Some("s2"));

    assert!(a.delete_client("c1").await.unwrap());
    until_answers(b, None).await;
    // An unknown client is never cached.
    assert_eq!(cached_secret(b).await, None);
}

#[tokio::test]
async fn a_change_through_one_replica_evicts_the_client_from_the_others() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (store(&server.url(0)).await, store(&server.url(0)).await);
    changes_reach_the_other_replica(&a, &b).await;

    // The writer's own cache is evicted with the write, before any message.
    a.create_client(&client("s1")).await.unwrap();
    assert_eq!(until_cached(&a).await.as_deref(), Some("s1"));
    a.put_client(&client("s3")).await.unwrap();
    assert_eq!(
        a.get_client_cached("c1")
            .await
            .unwrap()
            .0
            .unwrap()
            .secret_hash,
        Some("s3".into())
    );
}

#[tokio::test]
async fn the_cache_serves_only_while_its_subscription_is_up() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (a, b) = (store(&server.url(0)).await, store(&server.url(0)).await);
    a.create_client(&client("s1")).await.unwrap();
    assert_eq!(until_cached(&b).await.as_deref(), Some("s1"));

    // A change written into Redis by hand publishes nothing: the cache serves what it
    // holds (the entry's age bounds this), while a plain read sees the change.
    server.cmd::<i64>(
        ::redis::cmd("HSET")
            .arg("auth:client:c1")
            .arg("secret_hash")
            .arg("by-hand"),
    );
    assert_eq!(cached_secret(&b).await, Some(Some("s1".into())));
    assert_eq!(
        b.get_client("c1").await.unwrap().unwrap().secret_hash,
        Some("by-hand".into())
    );

    // The subscription is cut: what it might have missed is not served any more.
    server.cmd::<Value>(::redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub"));
    until_answers(&b, Some("by-hand")).await;
    // Once it is back, the cache is filled again.
    assert_eq!(until_cached(&b).await.as_deref(), Some("by-hand"));
}

#[tokio::test]
async fn off_reads_redis_every_time() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let off = RedisStore::connect(
        &StoreUrl::parse(&server.url(0)).unwrap(),
        RedisOptions {
            client_cache_ttl: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    off.create_client(&client("s1")).await.unwrap();
    for _ in 0..20 {
        let (rec, cached) = off.get_client_cached("c1").await.unwrap();
        assert!(!cached);
        assert_eq!(rec.unwrap().secret_hash, Some("s1".into()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn on_a_cluster_a_change_reaches_a_replica_subscribed_to_another_node() {
    let Some(cluster) = RedisCluster::start(3, 0) else {
        return;
    };
    // The stores subscribe on the first node of the URL; c1 lives on another one, so the
    // messages cross the cluster bus.
    let first = &cluster.primaries()[0];
    let slot: i64 = first.cmd(::redis::cmd("CLUSTER").arg("KEYSLOT").arg("auth:client:c1"));
    assert!(slot >= 16384 / 3, "c1 is on the first node (slot {slot})");
    let (a, b) = (store(&cluster.url()).await, store(&cluster.url()).await);
    changes_reach_the_other_replica(&a, &b).await;
}
