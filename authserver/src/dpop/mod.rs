//! DPoP proofs (RFC 9449): parsing and verification of a `DPoP` proof JWT, the RFC 7638
//! thumbprint of its key, and stateless server nonces. Pure: no I/O, no clock (the caller
//! passes `now`); the single use of a proof's `jti` is the caller's (a store operation).
//!
//! A proof is accepted when:
//! - it is a compact JWS of at most [`MAX_PROOF_BYTES`], strict base64url, no `crit`;
//! - `typ` is `dpop+jwt`, `alg` one of [`ALGS`] (never `none`, never a MAC);
//! - `jwk` is a public key of the type the `alg` needs (EC P-256, RSA of 2048..8192 bits,
//!   OKP Ed25519) with no private member, and the signature verifies with it;
//! - `htm` is the request method, `htu` the request URI without query and fragment,
//!   compared after RFC 3986 §6 normalisation (scheme and host case, default port, dot
//!   segments, percent-encoding case);
//! - `iat` is at most `max_age` seconds old and at most `max_skew` seconds ahead;
//! - `jti` is a non-empty string of at most [`MAX_JTI_LEN`] bytes;
//! - `ath` is the hash of the access token, when one is presented with the proof;
//! - `nonce` is a current server nonce, when nonces are required (else [`DpopError::UseNonce`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;

/// The `alg` values a proof may use (`dpop_signing_alg_values_supported`).
pub const ALGS: &[&str] = &["ES256", "RS256", "PS256", "EdDSA"];
/// Longest accepted proof (an RSA-8192 key and signature fit with room to spare).
pub const MAX_PROOF_BYTES: usize = 8192;
/// Longest accepted `jti`.
pub const MAX_JTI_LEN: usize = 256;
/// JWK members that only a private (or symmetric) key has: a proof carrying one is refused.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Length of a nonce time slot, seconds; a nonce is valid in its slot and the next one.
pub const NONCE_SLOT_SECS: u64 = 300;

/// Why a proof is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DpopError {
    /// `invalid_dpop_proof`, with what is wrong.
    Invalid(String),
    /// `use_dpop_nonce`: the proof is good but lacks a current server nonce.
    UseNonce,
}

fn bad(msg: impl Into<String>) -> DpopError {
    DpopError::Invalid(msg.into())
}

/// What the proof must match.
pub struct Expect<'a> {
    /// The request method (`htm`).
    pub method: &'a str,
    /// The URI of the endpoint (`htu`), as the server knows itself.
    pub uri: &'a str,
    pub now: u64,
    /// Oldest accepted `iat`: `now - max_age`.
    pub max_age: u64,
    /// Newest accepted `iat`: `now + max_skew`.
    pub max_skew: u64,
    /// The access token presented with the proof (resource requests): `ath` must be its hash.
    pub access_token: Option<&'a str>,
    /// When set, `nonce` must be one these nonces accept.
    pub nonces: Option<&'a Nonces>,
}

/// A verified proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// RFC 7638 thumbprint (SHA-256, base64url) of the proof's key.
    pub jkt: String,
    pub jti: String,
    pub iat: u64,
}

impl Proof {
    /// Until when the proof's `jti` must be remembered: as long as the proof could pass the
    /// `iat` check.
    pub fn jti_kept_until(&self, expect: &Expect<'_>) -> u64 {
        self.iat.saturating_add(expect.max_age).max(expect.now) + 1
    }
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, DpopError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| bad(format!("{what} is not base64url")))
}

fn json_object(raw: &[u8], what: &str) -> Result<Map<String, Value>, DpopError> {
    match serde_json::from_slice::<Value>(raw) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(bad(format!("{what} is not a JSON object"))),
    }
}

fn str_member<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

/// Verify a proof (the value of the one `DPoP` header).
pub fn verify(proof: &str, expect: &Expect<'_>) -> Result<Proof, DpopError> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(bad("the proof is too large"));
    }
    let mut parts = proof.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the proof is not a compact JWS"));
    };
    let header = json_object(&b64(h, "the header")?, "the header")?;
    let claims = json_object(&b64(p, "the payload")?, "the payload")?;
    let sig = b64(s, "the signature")?;

    match str_member(&header, "typ") {
        Some(t) if t.eq_ignore_ascii_case("dpop+jwt") => {}
        _ => return Err(bad("typ must be dpop+jwt")),
    }
    if header.contains_key("crit") {
        return Err(bad("crit is not supported"));
    }
    let alg = str_member(&header, "alg").ok_or_else(|| bad("alg is required"))?;
    if !ALGS.contains(&alg) {
        return Err(bad(format!(
            "alg must be one of {} (asymmetric)",
            ALGS.join(", ")
        )));
    }
    let jwk = match header.get("jwk") {
        Some(Value::Object(m)) => m,
        _ => return Err(bad("jwk (the public key) is required in the header")),
    };
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(bad(format!(
            "jwk must be a public key (it has the private member {m})"
        )));
    }
    let key = PublicKey::from_jwk(jwk, alg)?;
    let signed = &proof.as_bytes()[..h.len() + 1 + p.len()];
    if !key.verifies(signed, &sig) {
        return Err(bad("the signature does not verify with jwk"));
    }

    match str_member(&claims, "htm") {
        Some(m) if m == expect.method => {}
        _ => return Err(bad("htm does not match the request method")),
    }
    let htu = str_member(&claims, "htu").ok_or_else(|| bad("htu is required"))?;
    if !same_uri(htu, expect.uri) {
        return Err(bad("htu does not match the request URI"));
    }
    let iat = match claims.get("iat") {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
    .ok_or_else(|| bad("iat is required (a number)"))?;
    if iat.saturating_add(expect.max_age) < expect.now {
        return Err(bad("the proof is too old (iat)"));
    }
    if iat > expect.now.saturating_add(expect.max_skew) {
        return Err(bad("the proof is issued in the future (iat)"));
    }
    let jti = match str_member(&claims, "jti") {
        Some(j) if !j.is_empty() && j.len() <= MAX_JTI_LEN => j.to_string(),
        Some(_) => return Err(bad("jti must be 1 to 256 bytes")),
        None => return Err(bad("jti is required")),
    };
    if let Some(token) = expect.access_token {
        let want = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
        match str_member(&claims, "ath") {
            Some(a) if crate::crypto::ct_eq(a.as_bytes(), want.as_bytes()) => {}
            _ => return Err(bad("ath does not match the access token")),
        }
    }
    if let Some(nonces) = expect.nonces {
        match str_member(&claims, "nonce") {
            Some(n) if nonces.accepts(n, expect.now) => {}
            _ => return Err(DpopError::UseNonce),
        }
    }
    Ok(Proof {
        jkt: key.thumbprint(),
        jti,
        iat,
    })
}

/// A public key of a supported type, with the members its thumbprint is made of.
enum PublicKey {
    /// x, y (32 bytes each).
    P256 {
        x: Vec<u8>,
        y: Vec<u8>,
        jx: String,
        jy: String,
    },
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        jn: String,
        je: String,
        pss: bool,
    },
    Ed25519 {
        x: Vec<u8>,
        jx: String,
    },
}

impl PublicKey {
    fn from_jwk(jwk: &Map<String, Value>, alg: &str) -> Result<PublicKey, DpopError> {
        let member = |k: &str| -> Result<(String, Vec<u8>), DpopError> {
            let s = str_member(jwk, k).ok_or_else(|| bad(format!("jwk has no {k}")))?;
            Ok((s.to_string(), b64(s, &format!("jwk {k}"))?))
        };
        let kty = str_member(jwk, "kty").unwrap_or("");
        let crv = str_member(jwk, "crv");
        match (alg, kty) {
            ("ES256", "EC") => {
                if crv != Some("P-256") {
                    return Err(bad("ES256 needs a P-256 key"));
                }
                let ((jx, x), (jy, y)) = (member("x")?, member("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(bad("jwk x and y must be 32 bytes"));
                }
                Ok(PublicKey::P256 { x, y, jx, jy })
            }
            ("RS256" | "PS256", "RSA") => {
                let ((jn, n), (je, e)) = (member("n")?, member("e")?);
                if n.first() == Some(&0) || e.first() == Some(&0) {
                    return Err(bad("jwk n and e must have no leading zero"));
                }
                if !(256..=1024).contains(&n.len()) {
                    return Err(bad("RSA keys must have 2048 to 8192 bits"));
                }
                Ok(PublicKey::Rsa {
                    n,
                    e,
                    jn,
                    je,
                    pss: alg == "PS256",
                })
            }
            ("EdDSA", "OKP") => {
                if crv != Some("Ed25519") {
                    return Err(bad("EdDSA needs an Ed25519 key"));
                }
                let (jx, x) = member("x")?;
                if x.len() != 32 {
                    return Err(bad("jwk x must be 32 bytes"));
                }
                Ok(PublicKey::Ed25519 { x, jx })
            }
            _ => Err(bad(format!("jwk kty does not fit alg {alg}"))),
        }
    }

    fn verifies(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::P256 { x, y, .. } => {
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            PublicKey::Rsa { n, e, pss, .. } => {
                let params = if *pss {
                    &signature::RSA_PSS_2048_8192_SHA256
                } else {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            PublicKey::Ed25519 { x, .. } => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(msg, sig)
                .is_ok(),
        }
    }

    /// RFC 7638: SHA-256 of the required members in lexicographic order, no whitespace.
    fn thumbprint(&self) -> String {
        let canonical = match self {
            PublicKey::P256 { jx, jy, .. } => serde_json::json!({
                "crv": "P-256", "kty": "EC", "x": jx, "y": jy
            }),
            PublicKey::Rsa { jn, je, .. } => serde_json::json!({"e": je, "kty": "RSA", "n": jn}),
            PublicKey::Ed25519 { jx, .. } => {
                serde_json::json!({"crv": "Ed25519", "kty": "OKP", "x": jx})
            }
        };
        // serde_json's map is ordered by key (no `preserve_order`) and compact.
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// The RFC 7638 thumbprint of a public JWK (EC P-256, RSA, OKP Ed25519).
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, DpopError> {
    let alg = match str_member(jwk, "kty") {
        Some("EC") => "ES256",
        Some("RSA") => "RS256",
        Some("OKP") => "EdDSA",
        _ => return Err(bad("unsupported kty")),
    };
    Ok(PublicKey::from_jwk(jwk, alg)?.thumbprint())
}

/// Whether `s` has the form of a thumbprint (`dpop_jkt`): base64url of 32 bytes.
pub fn is_thumbprint(s: &str) -> bool {
    s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|b| b.len() == 32)
}

/// `htu` against the endpoint URI: RFC 9449 §4.3 (no query, no fragment) after RFC 3986
/// §6.2.2 / §6.2.3 normalisation (what the WHATWG parser does for http and https: case of
/// scheme and host, default port, dot segments, empty path, percent-encoding case).
pub fn same_uri(htu: &str, expected: &str) -> bool {
    let norm = |s: &str| -> Option<String> {
        let mut u = url::Url::parse(s).ok()?;
        if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
            return None;
        }
        u.set_query(None);
        u.set_fragment(None);
        let path = upper_percent_escapes(u.path());
        u.set_path(&path);
        Some(u.to_string())
    };
    match (norm(htu), norm(expected)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn upper_percent_escapes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).unwrap_or(&rest[i..]);
        out.push_str(&esc.to_ascii_uppercase());
        rest = &rest[i + esc.len()..];
    }
    out.push_str(rest);
    out
}

/// Stateless server nonces: the HMAC of a time slot under a key every replica derives from
/// the same secret. A nonce is accepted in its slot and the next ([`NONCE_SLOT_SECS`]).
pub struct Nonces {
    key: [u8; 32],
}

impl Nonces {
    /// Nonces keyed by `secret` (the server's pepper), under a label of their own.
    pub fn new(secret: &[u8]) -> Nonces {
        let mut key = [0u8; 32];
        key.copy_from_slice(&hmac_sha256(secret, b"tollgate dpop nonce v1"));
        Nonces { key }
    }

    fn for_slot(&self, slot: u64) -> String {
        URL_SAFE_NO_PAD.encode(&hmac_sha256(&self.key, &slot.to_be_bytes())[..24])
    }

    /// The nonce to hand out now.
    pub fn current(&self, now: u64) -> String {
        self.for_slot(now / NONCE_SLOT_SECS)
    }

    pub fn accepts(&self, nonce: &str, now: u64) -> bool {
        let slot = now / NONCE_SLOT_SECS;
        [slot, slot.saturating_sub(1)]
            .iter()
            .any(|s| crate::crypto::ct_eq(nonce.as_bytes(), self.for_slot(*s).as_bytes()))
    }
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}
