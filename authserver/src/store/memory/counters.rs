//! Counters (`auth_stats`) and configuration (`auth_config`).

use super::*;

pub(super) async fn incr_stats(db: &MemoryStore, counters: &[(&str, i64)]) -> StoreResult<()> {
    let mut g = db.lock()?;
    for (k, v) in counters {
        *g.stats.entry((*k).to_string()).or_insert(0) += v;
    }
    Ok(())
}

pub(super) async fn get_stats(db: &MemoryStore) -> StoreResult<BTreeMap<String, i64>> {
    Ok(db.lock()?.stats.clone())
}

pub(super) async fn get_config(db: &MemoryStore) -> StoreResult<BTreeMap<String, String>> {
    Ok(db.lock()?.config.clone())
}

pub(super) async fn set_config(
    db: &MemoryStore,
    values: &BTreeMap<String, String>,
) -> StoreResult<()> {
    let mut g = db.lock()?;
    for (k, v) in values {
        g.config.insert(k.clone(), v.clone());
    }
    Ok(())
}
