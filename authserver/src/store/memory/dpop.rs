//! Proof of possession (DPoP): used proof `jti`s.

use super::*;

pub(super) async fn claim_dpop_jti(
    db: &MemoryStore,
    jkt: &str,
    jti: &str,
    exp: u64,
) -> StoreResult<bool> {
    let key = dpop_jti_hash(jkt, jti);
    let mut g = db.lock()?;
    if g.dpop_jtis.get(&key).is_some_and(|e| alive(*e)) {
        return Ok(false);
    }
    g.dpop_jtis.insert(key, exp);
    Ok(true)
}
