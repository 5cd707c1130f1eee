//! Access tokens: records, live-token counting.

use super::*;

pub(super) async fn save_access_token(
    db: &MemoryStore,
    rec: &AccessTokenRecord,
) -> StoreResult<()> {
    let mut g = db.lock()?;
    if let Some(old) = g.access_tokens.insert(rec.jti.clone(), rec.clone()) {
        g.cleanup_index.remove(&(old.exp, old.jti));
    }
    g.cleanup_index.insert((rec.exp, rec.jti.clone()));
    *g.stats.entry("tokens_issued".into()).or_insert(0) += 1;
    let mut owners = vec![client_owner(&rec.client_id)];
    owners.extend(rec.user_id.as_deref().map(user_owner));
    add_owned(&mut g, &owners, Owned::AccessTokens, &rec.jti, rec.exp);
    Ok(())
}

pub(super) async fn get_access_token(
    db: &MemoryStore,
    jti: &str,
) -> StoreResult<(Option<AccessTokenRecord>, bool)> {
    let g = db.lock()?;
    let rec = g.access_tokens.get(jti).filter(|r| alive(r.exp)).cloned();
    let revoked = g
        .blacklist
        .get(jti)
        .is_some_and(|exp| revocation_alive(*exp));
    Ok((rec, revoked))
}

pub(super) async fn count_live_tokens(db: &MemoryStore, now: u64) -> StoreResult<u64> {
    Ok(db
        .lock()?
        .cleanup_index
        .range((now.saturating_add(1), String::new())..)
        .count() as u64)
}
