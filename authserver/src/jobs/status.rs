//! `authserver status`: what an operator checks first.

use serde_json::{json, Value};

use crate::config::Config;
use crate::store::{now_secs, Store, StoreResult};

pub async fn run(store: &dyn Store, cfg: &Config) -> StoreResult<Value> {
    let now = now_secs();
    let (info, stats, clients, live, keys, overrides) = tokio::try_join!(
        store.backend_info(),
        store.get_stats(),
        store.list_client_ids(),
        store.count_live_tokens(now),
        store.list_keys(),
        store.get_config(),
    )?;
    let mut effective = cfg.clone();
    effective.apply_store_overrides(&overrides);
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| json!({"kid": k.kid, "alg": k.alg, "active_from": k.active_from, "retire_at": k.retire_at}))
        .collect();
    Ok(json!({
        "store": info,
        "auth_stats": stats,
        "clients": clients.len(),
        "live_access_tokens": live,
        "signing_keys": keys,
        "effective_config": effective,
    }))
}
