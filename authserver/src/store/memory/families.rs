//! Token families and one-time claims (a client assertion's `jti`).

use super::*;

pub(super) async fn family_add(
    db: &MemoryStore,
    grant_id: &str,
    access: &[(String, u64)],
    refresh: &[String],
    exp: u64,
) -> StoreResult<bool> {
    let mut g = db.lock()?;
    let f = g.families.entry(grant_id.to_string()).or_default();
    if f.revoked() {
        return Ok(false);
    }
    if !alive(f.exp) {
        // An expired family starts over, as its Redis keys would have vanished.
        *f = Family::default();
    }
    for (jti, e) in access {
        f.access.insert(jti.clone(), *e);
    }
    f.refresh.extend(refresh.iter().cloned());
    f.exp = exp;
    Ok(true)
}

pub(super) async fn revoke_family(
    db: &MemoryStore,
    grant_id: &str,
    exp: u64,
) -> StoreResult<FamilyTokens> {
    let mut g = db.lock()?;
    let f = g.families.entry(grant_id.to_string()).or_default();
    if !alive(f.exp) {
        f.access.clear();
        f.refresh.clear();
    }
    f.revoked_until = Some(exp);
    f.exp = f.exp.max(exp);
    Ok(FamilyTokens {
        access: f.access.iter().map(|(j, e)| (j.clone(), *e)).collect(),
        refresh: f.refresh.iter().cloned().collect(),
    })
}

pub(super) async fn family_revoked(db: &MemoryStore, grant_id: &str) -> StoreResult<bool> {
    Ok(db
        .lock()?
        .families
        .get(grant_id)
        .is_some_and(Family::revoked))
}

pub(super) async fn claim_assertion_jti(
    db: &MemoryStore,
    key: &str,
    exp: u64,
) -> StoreResult<bool> {
    let mut g = db.lock()?;
    if g.once.get(key).is_some_and(|e| alive(*e)) {
        return Ok(false);
    }
    g.once.insert(key.to_string(), exp);
    if g.once.len() > 100_000 {
        g.once.retain(|_, e| alive(*e));
    }
    Ok(true)
}
