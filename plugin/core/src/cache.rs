//! The verified-token cache, kept in proxy-wasm shared data so that every Envoy worker
//! sees the tokens any of them verified.
//!
//! - Key: SHA-256 of the token; the token itself is never stored.
//! - Layout: a direct-mapped table of `Config.cache_slots` slots; slot = first 4 bytes of
//!   the hash modulo the slot count, shared-data key `tollgate/tc/<config fingerprint>/<slot>`.
//!   A new entry replaces whatever the slot held (eviction on collision), so memory is
//!   bounded by `slots × entry size` however many distinct tokens arrive.
//! - Entry: magic, full hash (a lookup compares it), `expires_at`, then the [`Identity`].
//!   `expires_at` = min(token `exp`, now + `cache.max_ttl_s`), so an entry never outlives
//!   its token.
//! - Writes use the compare-and-swap counter from the lookup: when two workers race on a
//!   slot, one write wins and the other is dropped (both entries were valid).

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::host::Host;
use crate::identity::{Identity, Reader};

const MAGIC: u8 = 0xA1;

/// SHA-256 of a token.
pub type TokenHash = [u8; 32];

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// [`hash_token`] of a JWT, and in the same pass SHA-256 of its signing input (all before
/// the last `.`, what RS256 and ES256 sign): the hash of the input is a prefix of the
/// token's, so the state after the input is finished once as it is and once after the rest.
/// `None` for the second when the token has no `.`.
pub fn hash_token_and_input(token: &str) -> (TokenHash, Option<[u8; 32]>) {
    let Some(dot) = token.rfind('.') else {
        return (hash_token(token), None);
    };
    let (input, rest) = token.as_bytes().split_at(dot);
    let mut h = Sha256::new();
    h.update(input);
    let input_hash = h.clone().finalize().into();
    h.update(rest);
    (h.finalize().into(), Some(input_hash))
}

/// Slot key of a hash.
pub fn slot_key(cfg: &Config, h: &TokenHash) -> String {
    let n = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) % cfg.cache_slots.max(1);
    format!("tollgate/tc/{}/{n}", cfg.fingerprint)
}

/// Encode a cache entry.
pub fn encode_entry(h: &TokenHash, expires_at: u64, id: &Identity) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(MAGIC);
    out.extend_from_slice(h);
    out.extend_from_slice(&expires_at.to_be_bytes());
    id.encode_into(&mut out);
    out
}

/// Decode a cache entry if it is for this hash; returns (expires_at, identity).
pub fn decode_entry(bytes: &[u8], h: &TokenHash) -> Option<(u64, Identity)> {
    let mut r = Reader::new(bytes);
    if r.u8()? != MAGIC {
        return None;
    }
    if r.take(32)? != h.as_slice() {
        return None;
    }
    let exp = r.u64()?;
    let id = Identity::decode(&mut r)?;
    if !r.is_empty() {
        return None;
    }
    Some((exp, id))
}

/// Result of a lookup: the identity on a hit, and the slot's compare-and-swap counter
/// for a following [`insert`].
pub struct Lookup {
    /// The identity and the entry's expiry (Unix seconds).
    pub hit: Option<(Identity, u64)>,
    pub cas: Option<u32>,
    pub key: String,
}

/// Look a token hash up. `now` is Unix seconds.
pub fn lookup(host: &dyn Host, cfg: &Config, h: &TokenHash, now: u64) -> Lookup {
    let key = slot_key(cfg, h);
    let (val, cas) = host.shared_get(&key);
    let hit = val
        .as_deref()
        .and_then(|v| decode_entry(v, h))
        .filter(|(expires_at, _)| now < *expires_at)
        .map(|(expires_at, id)| (id, expires_at));
    Lookup { hit, cas, key }
}

/// When a cache entry for this identity made at `now` expires: min(exp, now + max TTL).
pub fn expiry(cfg: &Config, id: &Identity, now: u64) -> u64 {
    id.exp.min(now.saturating_add(cfg.cache_max_ttl_s))
}

/// Store a verified identity in the slot read by `lookup` (if the slot did not change since;
/// a lost race drops this write). Returns the entry's expiry.
pub fn insert(
    host: &dyn Host,
    cfg: &Config,
    l: &Lookup,
    h: &TokenHash,
    id: &Identity,
    now: u64,
) -> u64 {
    let expires_at = expiry(cfg, id, now);
    if expires_at > now {
        let entry = encode_entry(h, expires_at, id);
        // A missing key has no counter yet: then the write is unconditional.
        let _ = host.shared_set(&l.key, &entry, l.cas);
    }
    expires_at
}
