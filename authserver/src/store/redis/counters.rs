//! Counters (`auth_stats`) and configuration (`auth_config`).

use super::*;

pub(super) async fn incr_stats(db: &RedisStore, counters: &[(&str, i64)]) -> StoreResult<()> {
    if counters.is_empty() {
        return Ok(());
    }
    let mut p = ::redis::pipe();
    for (k, v) in counters {
        p.hincr(K_STATS, *k, *v).ignore();
    }
    let p = &p;
    db.once(|mut c| async move { p.query_async::<()>(&mut c).await })
        .await
}

pub(super) async fn get_stats(db: &RedisStore) -> StoreResult<BTreeMap<String, i64>> {
    db.idem(|mut c| async move {
        ::redis::cmd("HGETALL")
            .arg(K_STATS)
            .query_async(&mut c)
            .await
    })
    .await
}

pub(super) async fn get_config(db: &RedisStore) -> StoreResult<BTreeMap<String, String>> {
    db.idem(|mut c| async move {
        ::redis::cmd("HGETALL")
            .arg(K_CONFIG)
            .query_async(&mut c)
            .await
    })
    .await
}

pub(super) async fn set_config(
    db: &RedisStore,
    values: &BTreeMap<String, String>,
) -> StoreResult<()> {
    if values.is_empty() {
        return Ok(());
    }
    let fields: Vec<(String, String)> =
        values.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // Durable: it may hold the secret pepper, without which no client secret verifies.
    let mut cmd = ::redis::cmd("HSET");
    cmd.arg(K_CONFIG).arg(fields);
    db.write_one::<Value>(&cmd).await.map(drop)
}
