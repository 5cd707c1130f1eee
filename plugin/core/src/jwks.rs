//! JWK Sets: parsing into verification keys, and the refresh bookkeeping kept in shared data.
//!
//! Shared-data layout per issuer and JWKS source (`<id>` = first 8 bytes of SHA-256 over the
//! issuer URL, the cluster, the authority and the path, hex: two configurations naming one
//! issuer with different sources never share a document):
//! - `tollgate/jwks/<id>/doc`: 8 bytes big-endian fetch time (Unix ms) + the JWKS JSON as
//!   served. Written only after the JSON parsed into at least one usable key, so a broken
//!   answer never replaces a working set (a stale JWKS keeps serving).
//! - `tollgate/jwks/<id>/meta`: [`JwksMeta`] as JSON: when the last fetch started, succeeded,
//!   how many failed in a row, whether a fetch is in flight, and whether a request asked for a
//!   refresh because of an unknown `kid`. Updated with compare-and-swap so that one worker
//!   fetches for all of them.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Config, Issuer};
use crate::eddsa;
use crate::es256;
use crate::es384;
use crate::jwt::Alg;
use crate::rsassa;

/// The key families the filter verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    P384,
    Rsa,
    Ed25519,
}

/// One usable verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub alg: Option<Alg>,
    pub kind: KeyKind,
    pub decoding: DecodingKey,
    /// A P-256 key for [`crate::es256`] (with its precomputed table once used).
    pub p256: Option<Arc<es256::PublicKey>>,
    /// A P-384 key for [`crate::es384`] (with its precomputed table once used).
    pub p384: Option<Arc<es384::PublicKey>>,
    /// An RSA key with e = 65537 and 2048 to 4096 bits, prepared for [`crate::rsassa`].
    pub rsa: Option<Arc<rsassa::PublicKey>>,
    /// An Ed25519 key for [`crate::eddsa`] (with its table once used).
    pub ed25519: Option<Arc<eddsa::PublicKey>>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish()
    }
}

/// `x ‖ y` of an EC JWK, each coordinate decoded to exactly `len` bytes.
fn ec_xy(x: &str, y: &str, len: usize) -> Option<Vec<u8>> {
    let mut xy = URL_SAFE_NO_PAD.decode(x).ok()?;
    let yb = URL_SAFE_NO_PAD.decode(y).ok()?;
    if xy.len() != len || yb.len() != len {
        return None;
    }
    xy.extend_from_slice(&yb);
    Some(xy)
}

/// Replace a key's prepared verifier (`slot`) by `old`'s one for the same key
/// (`same`), which keeps the table that one built: see [`KeySet::keep_tables_of`].
fn keep_table<T>(
    slot: &mut Option<Arc<T>>,
    old: &KeySet,
    field: impl Fn(&Key) -> &Option<Arc<T>>,
    same: impl Fn(&T, &T) -> bool,
) {
    let Some(pk) = slot.as_ref() else {
        return;
    };
    let found = old
        .keys
        .iter()
        .find_map(|o| field(o).as_ref().filter(|op| same(op, pk)).map(Arc::clone));
    if found.is_some() {
        *slot = found;
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Keys present in the document but not usable (private, symmetric, unknown type...).
    pub skipped: usize,
}

/// Why a JWKS document was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS is not a JSON object with a \"keys\" array")]
    NotAJwks,
    #[error("JWKS holds no usable signature key ({0} skipped)")]
    NoUsableKey(usize),
}

/// Smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

fn str_field<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

fn b64_len(s: &str) -> Option<usize> {
    URL_SAFE_NO_PAD.decode(s).ok().map(|v| v.len())
}

fn parse_key(o: &serde_json::Map<String, Value>) -> Option<Key> {
    if let Some(u) = o.get("use") {
        if u.as_str() != Some("sig") {
            return None;
        }
    }
    if let Some(ops) = o.get("key_ops") {
        let ok = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_str() == Some("verify")));
        if !ok {
            return None;
        }
    }
    let alg = match o.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(Alg::parse(a)?),
        Some(_) => return None,
    };
    let kid = match o.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return None,
    };
    let mut p256 = None;
    let mut p384 = None;
    let mut rsa_fast = None;
    let mut ed25519 = None;
    let (kind, decoding) = match str_field(o, "kty")? {
        "EC" => {
            let (kind, len) = match str_field(o, "crv")? {
                "P-256" => (KeyKind::P256, 32),
                "P-384" => (KeyKind::P384, 48),
                _ => return None,
            };
            let x = str_field(o, "x")?;
            let y = str_field(o, "y")?;
            if b64_len(x)? != len || b64_len(y)? != len {
                return None;
            }
            let xy = ec_xy(x, y, len)?;
            if kind == KeyKind::P256 {
                p256 = Some(Arc::new(es256::PublicKey::new(xy.try_into().ok()?)));
            } else {
                p384 = Some(Arc::new(es384::PublicKey::new(xy.try_into().ok()?)));
            }
            (kind, DecodingKey::from_ec_components(x, y).ok()?)
        }
        "RSA" => {
            let n = str_field(o, "n")?;
            let e = str_field(o, "e")?;
            if b64_len(n)? < MIN_RSA_MODULUS_BYTES || b64_len(e)? == 0 {
                return None;
            }
            let decoding = DecodingKey::from_rsa_components(n, e).ok()?;
            if let (Ok(nb), Ok(eb)) = (URL_SAFE_NO_PAD.decode(n), URL_SAFE_NO_PAD.decode(e)) {
                rsa_fast = rsassa::PublicKey::new(&nb, &eb).map(Arc::new);
            }
            (KeyKind::Rsa, decoding)
        }
        "OKP" => {
            if str_field(o, "crv")? != "Ed25519" {
                return None;
            }
            let x = str_field(o, "x")?;
            if b64_len(x)? != 32 {
                return None;
            }
            let xb: [u8; 32] = URL_SAFE_NO_PAD.decode(x).ok()?.try_into().ok()?;
            ed25519 = Some(Arc::new(eddsa::PublicKey::new(xb)));
            (KeyKind::Ed25519, DecodingKey::from_ed_components(x).ok()?)
        }
        _ => return None,
    };
    if let Some(a) = alg {
        if a.key_kind() != kind {
            return None;
        }
    }
    Some(Key {
        kid,
        alg,
        kind,
        decoding,
        p256,
        p384,
        rsa: rsa_fast,
        ed25519,
    })
}

impl KeySet {
    /// Parse a JWKS document. Unusable keys are skipped; a document with no usable key is
    /// an error (so that it never replaces a working set).
    pub fn parse(doc: &[u8]) -> Result<KeySet, JwksError> {
        let v: Value = serde_json::from_slice(doc).map_err(|_| JwksError::NotAJwks)?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NotAJwks)?;
        let mut set = KeySet::default();
        for k in keys {
            match k.as_object().and_then(parse_key) {
                Some(key) => set.keys.push(key),
                None => set.skipped += 1,
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKey(set.skipped));
        }
        Ok(set)
    }

    /// Take over the ES256, ES384 and EdDSA tables of `old`'s P-256, P-384 and Ed25519 keys
    /// that this set still holds (the same coordinates): a JWKS refresh that changes nothing
    /// costs no table rebuild.
    pub fn keep_tables_of(&mut self, old: &KeySet) {
        for k in &mut self.keys {
            keep_table(
                &mut k.p256,
                old,
                |o| &o.p256,
                |a, b| a.coordinates() == b.coordinates(),
            );
            keep_table(
                &mut k.p384,
                old,
                |o| &o.p384,
                |a, b| a.coordinates() == b.coordinates(),
            );
            keep_table(
                &mut k.ed25519,
                old,
                |o| &o.ed25519,
                |a, b| a.bytes() == b.bytes(),
            );
        }
    }

    pub fn by_kid(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// For a token without `kid`: the key for this algorithm when there is exactly one.
    pub fn only_key_for(&self, alg: Alg) -> Option<&Key> {
        let mut it = self
            .keys
            .iter()
            .filter(|k| k.kind == alg.key_kind() && k.alg.is_none_or(|a| a == alg));
        let first = it.next()?;
        if it.next().is_some() {
            return None;
        }
        Some(first)
    }
}

/// Refresh bookkeeping of one issuer's JWKS, shared by all workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwksMeta {
    /// Start of the last fetch attempt (Unix ms), 0 = never.
    pub last_attempt_ms: u64,
    /// End of the last successful fetch (Unix ms), 0 = never loaded.
    pub last_ok_ms: u64,
    /// Failed fetches in a row since the last success.
    pub failures: u32,
    /// A fetch started by some worker is in flight until this time (Unix ms).
    pub in_flight_until_ms: u64,
    /// A request saw an unknown `kid` at this time (Unix ms) and wants a refresh.
    pub refresh_wanted_ms: u64,
}

impl JwksMeta {
    pub fn decode(bytes: &[u8]) -> JwksMeta {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether a fetch should start now.
    pub fn fetch_due(&self, src: &crate::config::JwksSource, now_ms: u64) -> bool {
        if now_ms < self.in_flight_until_ms {
            return false;
        }
        let since_attempt = now_ms.saturating_sub(self.last_attempt_ms);
        if self.last_attempt_ms == 0 {
            return true;
        }
        if self.last_ok_ms == 0 {
            // Never loaded: retry quickly (requests may be waiting).
            return since_attempt >= src.retry_interval_ms.min(1000);
        }
        if self.refresh_wanted_ms > self.last_attempt_ms
            && since_attempt >= src.min_refresh_interval_ms
        {
            return true;
        }
        if self.failures > 0 {
            return since_attempt >= src.retry_interval_ms;
        }
        now_ms.saturating_sub(self.last_ok_ms) >= src.refresh_interval_ms
    }

    /// Whether a request that saw an unknown `kid` may ask for a refresh now.
    pub fn may_request_refresh(&self, src: &crate::config::JwksSource, now_ms: u64) -> bool {
        self.refresh_wanted_ms <= self.last_attempt_ms
            && now_ms.saturating_sub(self.last_attempt_ms) >= src.min_refresh_interval_ms
    }
}

/// Shared-data key of an issuer's JWKS document.
pub fn doc_key(issuer: &Issuer) -> String {
    format!("tollgate/jwks/{}/doc", issuer.key_id)
}

/// Shared-data key of an issuer's refresh bookkeeping.
pub fn meta_key(issuer: &Issuer) -> String {
    format!("tollgate/jwks/{}/meta", issuer.key_id)
}

/// Encode a JWKS document with its fetch time for shared data.
pub fn encode_doc(fetched_ms: u64, doc: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + doc.len());
    v.extend_from_slice(&fetched_ms.to_be_bytes());
    v.extend_from_slice(doc);
    v
}

/// Split a shared-data JWKS value into fetch time and document.
pub fn decode_doc(v: &[u8]) -> Option<(u64, &[u8])> {
    if v.len() < 8 {
        return None;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&v[..8]);
    Some((u64::from_be_bytes(t), &v[8..]))
}

/// A worker's parsed copies of the shared JWKS documents, re-parsed only when the shared
/// value changed (compare-and-swap counter differs).
#[derive(Debug, Default)]
pub struct WorkerKeys {
    sets: Vec<Option<(u32, KeySet)>>,
}

impl WorkerKeys {
    pub fn new(cfg: &Config) -> WorkerKeys {
        WorkerKeys {
            sets: vec![None; cfg.issuers.len()],
        }
    }

    /// Bring issuer `idx`'s parsed set up to date with shared data.
    pub fn refresh(&mut self, host: &dyn crate::host::Host, cfg: &Config, idx: usize) {
        let Some(issuer) = cfg.issuers.get(idx) else {
            return;
        };
        if self.sets.len() < cfg.issuers.len() {
            self.sets.resize(cfg.issuers.len(), None);
        }
        let (val, cas) = host.shared_get(&doc_key(issuer));
        let (Some(val), Some(cas)) = (val, cas) else {
            return;
        };
        if matches!(&self.sets[idx], Some((c, _)) if *c == cas) {
            return;
        }
        if let Some((_, doc)) = decode_doc(&val) {
            if let Ok(mut set) = KeySet::parse(doc) {
                if let Some((_, old)) = &self.sets[idx] {
                    set.keep_tables_of(old);
                }
                self.sets[idx] = Some((cas, set));
            }
        }
    }

    pub fn get(&self, idx: usize) -> Option<&KeySet> {
        self.sets.get(idx).and_then(|s| s.as_ref()).map(|(_, s)| s)
    }
}
