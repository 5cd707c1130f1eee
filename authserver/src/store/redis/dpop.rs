//! Proof of possession (DPoP): used proof `jti`s (`auth:dpop_jti:{sha256}`, one key, so
//! any Cluster slot).

use super::families::CLAIM_LUA;
use super::*;

pub(super) async fn claim_dpop_jti(
    db: &RedisStore,
    jkt: &str,
    jti: &str,
    exp: u64,
) -> StoreResult<bool> {
    let key = k_dpop_jti(jkt, jti);
    // The claimer's nonce makes a retry of this very call see its own claim (CLAIM_LUA), so
    // a retried request is not taken for a replay; a second request is.
    let mut cmd = eval(CLAIM_LUA, &[&key]);
    cmd.arg(crate::crypto::random_b64(16)).arg(exp);
    let claimed: i64 = db.write_one(&cmd).await?;
    Ok(claimed == 1)
}
