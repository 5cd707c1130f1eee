//! The key layout: every Redis key the store writes, by record family.

use super::*;

pub(super) const K_TOKEN_CLEANUP: &str = "auth_token_cleanup";
pub(super) const K_STATS: &str = "auth_stats";
pub(super) const K_CONFIG: &str = "auth_config";
pub(super) const K_KEYS: &str = "auth:keys";
// The revocation feed's keys share one hash tag so its scripts touch one Cluster slot.
pub(super) const K_FEED: &str = "auth:{revocations}:feed";
pub(super) const K_REVOKED: &str = "auth:{revocations}:index";
pub(super) const K_FEED_SEQ: &str = "auth:{revocations}:seq";
pub(super) const K_FEED_FLOOR: &str = "auth:{revocations}:floor";
pub(super) const K_CACHE_CONFIG: &str = "cache_config";
pub(super) const K_CACHE_STATS: &str = "cache_stats";
pub(super) const K_CACHE_METRICS: &str = "cache_cleanup_metrics";

pub(super) fn k_client(id: &str) -> String {
    format!("auth:client:{id}")
}
pub(super) fn k_access(jti: &str) -> String {
    format!("auth:access_token:{jti}")
}
pub(super) fn k_blacklist(jti: &str) -> String {
    format!("auth:blacklist:{jti}")
}
pub(super) fn k_rate(key: &str) -> String {
    format!("auth:rate_limit:{key}")
}
pub(super) fn k_lease(key: &str) -> String {
    format!("auth:rate_limit:lease:{key}")
}
pub(super) fn k_user(username: &str) -> String {
    format!("auth:user:{username}")
}
pub(super) fn k_session(id_hash: &str) -> String {
    format!("auth:session:{id_hash}")
}
pub(super) fn k_code(hash: &str) -> String {
    format!("auth:code:{hash}")
}
pub(super) fn k_refresh(hash: &str) -> String {
    format!("auth:refresh_token:{hash}")
}
/// The keys of one token family share the hash tag `{grant_id}` (one Cluster slot).
pub(super) fn k_family(grant_id: &str) -> [String; 3] {
    [
        format!("auth:family:{{{grant_id}}}:at"),
        format!("auth:family:{{{grant_id}}}:rt"),
        format!("auth:family:{{{grant_id}}}:revoked"),
    ]
}
/// A used DPoP proof: `{sha256}` of the key's thumbprint and the proof's `jti` (one key).
pub(super) fn k_dpop_jti(jkt: &str, jti: &str) -> String {
    format!("auth:dpop_jti:{}", dpop_jti_hash(jkt, jti))
}
pub(super) fn k_assertion(key: &str) -> String {
    format!("auth:assertion_jti:{key}")
}
/// An ownership index ([`Owned`]): a sorted set of members scored by expiry.
pub(super) fn k_owned(kind: Owned, owner: &str) -> String {
    format!("auth:owned:{}:{owner}", kind.as_str())
}
pub(super) fn k_cache(service: &str, key: &str) -> String {
    format!("cache:resource:{service}:{key}")
}
