//! Signing keys: generation (ES256, RS256, EdDSA), the JWK Set, and the key ring that picks
//! the signing key. Keys live in the store so that all replicas agree; a new key is
//! published in the JWKS before it signs, and an old key stays published until every token
//! it signed has expired. The private keys are stored sealed under a key-encryption key
//! (`crypto::KeyEncryption`); a replica opens each key once, when it first loads it, and
//! keeps it in memory.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{KekError, KeyEncryption, KIND_SIGNING_KEY};
use crate::store::StoredKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported signing algorithm {0:?} (ES256, RS256, EdDSA)")]
    UnsupportedAlg(String),
    #[error("key generation failed: {0}")]
    Generate(String),
    #[error("stored key {kid} is unusable: {detail}")]
    BadKey { kid: String, detail: String },
    #[error("no signing key is active")]
    NoActiveKey,
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("signing key {kid} cannot be decrypted: {source}")]
    Sealed {
        kid: String,
        #[source]
        source: KekError,
    },
}

/// The algorithms the server signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    ES256,
    RS256,
    EdDSA,
}

impl SigningAlg {
    pub fn parse(s: &str) -> Result<SigningAlg, KeyError> {
        match s {
            "ES256" | "es256" => Ok(SigningAlg::ES256),
            "RS256" | "rs256" => Ok(SigningAlg::RS256),
            "EdDSA" | "eddsa" | "Ed25519" => Ok(SigningAlg::EdDSA),
            other => Err(KeyError::UnsupportedAlg(other.to_string())),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            SigningAlg::ES256 => "ES256",
            SigningAlg::RS256 => "RS256",
            SigningAlg::EdDSA => "EdDSA",
        }
    }

    fn jwt_alg(&self) -> Algorithm {
        match self {
            SigningAlg::ES256 => Algorithm::ES256,
            SigningAlg::RS256 => Algorithm::RS256,
            SigningAlg::EdDSA => Algorithm::EdDSA,
        }
    }
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// RFC 7638 thumbprint of the required members, in lexicographic order.
fn thumbprint(required: &[(&str, &str)]) -> String {
    let mut canon = String::from("{");
    for (i, (k, v)) in required.iter().enumerate() {
        if i > 0 {
            canon.push(',');
        }
        canon.push_str(&format!("\"{k}\":\"{v}\""));
    }
    canon.push('}');
    b64(&Sha256::digest(canon.as_bytes()))
}

/// Public JWK (with `kid`, `alg`, `use`) and RFC 7638 kid of a PKCS#8 private key.
pub fn public_jwk(alg: SigningAlg, private_pem: &str) -> Result<(String, Value), KeyError> {
    use p256::pkcs8::DecodePrivateKey;
    let bad = |d: String| KeyError::BadKey {
        kid: String::new(),
        detail: d,
    };
    let (kid, mut jwk) = match alg {
        SigningAlg::ES256 => {
            let sk =
                p256::SecretKey::from_pkcs8_pem(private_pem).map_err(|e| bad(e.to_string()))?;
            let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                &sk.public_key(),
                false,
            );
            let (x, y) = match (point.x(), point.y()) {
                (Some(x), Some(y)) => (b64(x), b64(y)),
                _ => return Err(bad("bad EC point".into())),
            };
            let kid = thumbprint(&[("crv", "P-256"), ("kty", "EC"), ("x", &x), ("y", &y)]);
            (kid, json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}))
        }
        SigningAlg::RS256 => {
            use rsa::traits::PublicKeyParts;
            let sk =
                rsa::RsaPrivateKey::from_pkcs8_pem(private_pem).map_err(|e| bad(e.to_string()))?;
            let n = b64(&sk.n().to_bytes_be());
            let e = b64(&sk.e().to_bytes_be());
            let kid = thumbprint(&[("e", &e), ("kty", "RSA"), ("n", &n)]);
            (kid, json!({"kty": "RSA", "n": n, "e": e}))
        }
        SigningAlg::EdDSA => {
            let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(private_pem)
                .map_err(|e| bad(e.to_string()))?;
            let x = b64(sk.verifying_key().as_bytes());
            let kid = thumbprint(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", &x)]);
            (kid, json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
        }
    };
    if let Value::Object(m) = &mut jwk {
        m.insert("kid".into(), Value::String(kid.clone()));
        m.insert("use".into(), Value::String("sig".into()));
        m.insert("alg".into(), Value::String(alg.as_str().into()));
    }
    Ok((kid, jwk))
}

/// Generate a new private key; returns its PKCS#8 PEM.
pub fn generate_pem(alg: SigningAlg) -> Result<String, KeyError> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let mut rng = rand::rngs::OsRng;
    let pem = match alg {
        SigningAlg::ES256 => p256::SecretKey::random(&mut rng)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.to_string()))?
            .to_string(),
        SigningAlg::RS256 => rsa::RsaPrivateKey::new(&mut rng, 2048)
            .map_err(|e| KeyError::Generate(e.to_string()))?
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.to_string()))?
            .to_string(),
        SigningAlg::EdDSA => ed25519_dalek::SigningKey::generate(&mut rng)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Generate(e.to_string()))?
            .to_string(),
    };
    Ok(pem)
}

/// A new key record with the private key in clear (tests; the server uses
/// [`new_sealed_key`]), published now and signing from `active_from`.
pub fn new_stored_key(alg: SigningAlg, now: u64, active_from: u64) -> Result<StoredKey, KeyError> {
    let pem = generate_pem(alg)?;
    let (kid, _) = public_jwk(alg, &pem)?;
    Ok(StoredKey {
        kid,
        alg: alg.as_str().into(),
        private_pem: pem,
        sealed_private_key: None,
        created_at: now,
        active_from,
        retire_at: None,
    })
}

/// A new key record, sealed under the current KEK (in clear only without one, which
/// production mode refuses).
pub fn new_sealed_key(
    alg: SigningAlg,
    now: u64,
    active_from: u64,
    kek: &KeyEncryption,
) -> Result<StoredKey, KeyError> {
    let mut k = new_stored_key(alg, now, active_from)?;
    if !kek.is_configured() {
        return Ok(k);
    }
    let sealed = seal(&k, kek);
    zeroize::Zeroize::zeroize(&mut k.private_pem);
    sealed
}

/// The record with its private key sealed under the current KEK (whatever it was sealed
/// under before, or in clear); its other fields unchanged.
pub fn seal(k: &StoredKey, kek: &KeyEncryption) -> Result<StoredKey, KeyError> {
    let pem = private_pem(k, kek)?;
    let sealed = kek
        .seal(KIND_SIGNING_KEY, &k.kid, pem.as_bytes())
        .map_err(|source| KeyError::Sealed {
            kid: k.kid.clone(),
            source,
        })?;
    Ok(StoredKey {
        kid: k.kid.clone(),
        alg: k.alg.clone(),
        private_pem: String::new(),
        sealed_private_key: Some(sealed),
        created_at: k.created_at,
        active_from: k.active_from,
        retire_at: k.retire_at,
    })
}

/// Whether the record is sealed under the current KEK (nothing for `keys rewrap` to do).
pub fn sealed_under_current(k: &StoredKey, kek: &KeyEncryption) -> bool {
    k.private_pem.is_empty()
        && k.sealed_private_key
            .as_ref()
            .is_some_and(|s| Some(s.kek_id.as_str()) == kek.current_id())
}

/// The PKCS#8 PEM of a stored key: opened with the KEK that sealed it, or the clear text of
/// an unsealed record.
pub fn private_pem(k: &StoredKey, kek: &KeyEncryption) -> Result<Zeroizing<String>, KeyError> {
    let sealed_err = |source| KeyError::Sealed {
        kid: k.kid.clone(),
        source,
    };
    match &k.sealed_private_key {
        Some(s) => {
            let bytes = kek.open(KIND_SIGNING_KEY, &k.kid, s).map_err(sealed_err)?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| sealed_err(KekError::Malformed("not a PEM")))?;
            Ok(Zeroizing::new(text.to_string()))
        }
        None if !k.private_pem.is_empty() => Ok(Zeroizing::new(k.private_pem.clone())),
        None => Err(KeyError::BadKey {
            kid: k.kid.clone(),
            detail: "the record holds no private key".into(),
        }),
    }
}

/// The parsed private key, kept ready: ES256 and EdDSA sign with a precomputed key
/// (parsing PKCS#8 and deriving the public point on every signature would cost more than
/// the signature itself).
enum Signer {
    /// `ring`'s assembly P-256: several times faster than the portable implementation,
    /// and signing is the largest cost of issuing a token.
    Es256(Box<ring::signature::EcdsaKeyPair>),
    EdDsa(Box<ed25519_dalek::SigningKey>),
    /// AWS-LC's RSA (PKCS #1 v1.5, SHA-256), with its CRT parameters and blinding. An
    /// RSA-2048 signature, measured on the bench machine (AMD EPYC, AVX-512 IFMA): 2.5 ms
    /// with the portable `rsa` crate (`jsonwebtoken`), 590 µs with `ring`, 250 µs with
    /// AWS-LC, whose AVX-512 IFMA code computes both CRT halves at once (without IFMA,
    /// masked through `OPENSSL_ia32cap`, 590 µs, as `ring`).
    Rs256(Box<aws_lc_rs::signature::RsaKeyPair>),
}

/// A key ready to sign. `stored` is the record as last read (sealed); the opened key lives
/// only in `signer`.
pub struct LoadedKey {
    pub stored: StoredKey,
    pub alg: SigningAlg,
    pub jwk: Value,
    signer: Arc<Signer>,
}

impl LoadedKey {
    /// Open (with `kek`) and parse a stored key.
    pub fn load(stored: &StoredKey, kek: &KeyEncryption) -> Result<LoadedKey, KeyError> {
        let bad = |d: String| KeyError::BadKey {
            kid: stored.kid.clone(),
            detail: d,
        };
        let alg = SigningAlg::parse(&stored.alg)?;
        let pem = private_pem(stored, kek)?;
        let (kid, jwk) = public_jwk(alg, &pem).map_err(|e| bad(e.to_string()))?;
        if kid != stored.kid {
            return Err(bad("kid does not match the key's thumbprint".into()));
        }
        use p256::pkcs8::DecodePrivateKey;
        let pem = pem.as_str();
        let signer = match alg {
            SigningAlg::ES256 => {
                use p256::pkcs8::EncodePrivateKey;
                let der = p256::SecretKey::from_pkcs8_pem(pem)
                    .and_then(|k| k.to_pkcs8_der())
                    .map_err(|e| bad(e.to_string()))?;
                let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der.as_bytes(),
                    &ring::rand::SystemRandom::new(),
                )
                .map_err(|e| bad(e.to_string()))?;
                Signer::Es256(Box::new(pair))
            }
            SigningAlg::EdDSA => Signer::EdDsa(Box::new(
                ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(|e| bad(e.to_string()))?,
            )),
            SigningAlg::RS256 => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                use rsa::pkcs8::EncodePrivateKey;
                let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                    .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
                    .map_err(|e| bad(e.to_string()))?;
                let der = key.to_pkcs8_der().map_err(|e| bad(e.to_string()))?;
                let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(der.as_bytes())
                    .map_err(|e| bad(e.to_string()))?;
                Signer::Rs256(Box::new(pair))
            }
        };
        Ok(LoadedKey {
            stored: stored.clone(),
            alg,
            jwk,
            signer: Arc::new(signer),
        })
    }

    /// Sign claims as an RFC 9068 access token (`typ: at+jwt`).
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let sign_err = |e: &dyn std::fmt::Display| KeyError::Sign(e.to_string());
        let header = json!({"typ": "at+jwt", "alg": self.alg.as_str(), "kid": self.stored.kid});
        let h = serde_json::to_vec(&header).map_err(|e| sign_err(&e))?;
        let c = serde_json::to_vec(claims).map_err(|e| sign_err(&e))?;
        let mut out = String::with_capacity((h.len() + c.len()) * 4 / 3 + 100);
        URL_SAFE_NO_PAD.encode_string(&h, &mut out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&c, &mut out);
        let sig: Vec<u8> = match self.signer.as_ref() {
            Signer::Es256(k) => k
                .sign(&ring::rand::SystemRandom::new(), out.as_bytes())
                .map_err(|e| sign_err(&e))?
                .as_ref()
                .to_vec(),
            Signer::EdDsa(k) => {
                use ed25519_dalek::Signer as _;
                k.sign(out.as_bytes()).to_bytes().to_vec()
            }
            Signer::Rs256(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    out.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| sign_err(&e))?;
                sig
            }
        };
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(&sig, &mut out);
        Ok(out)
    }
}

/// What [`KeyRing::verify`] returns of a verified access token.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct OwnClaims {
    pub jti: String,
    pub exp: u64,
    pub client_id: String,
}

/// All keys known to this replica, as loaded from the store.
#[derive(Default)]
pub struct KeyRing {
    keys: Vec<LoadedKey>,
}

impl KeyRing {
    /// Load every usable stored key; unusable ones are reported and skipped.
    pub fn load(stored: &[StoredKey], kek: &KeyEncryption) -> (KeyRing, Vec<KeyError>) {
        KeyRing::default().reload(stored, kek)
    }

    /// The ring for the records `stored`, reusing the keys this ring has opened already
    /// (the kid is the key's thumbprint, so a kid names one key for good): each private key
    /// is decrypted once, when it first appears, and a record re-encrypted under another
    /// KEK meanwhile needs no KEK change here. The schedule (`active_from`, `retire_at`)
    /// comes from the records.
    pub fn reload(&self, stored: &[StoredKey], kek: &KeyEncryption) -> (KeyRing, Vec<KeyError>) {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for s in stored {
            let known = self
                .keys
                .iter()
                .find(|k| k.stored.kid == s.kid && k.alg.as_str() == s.alg);
            match known {
                Some(k) => keys.push(LoadedKey {
                    stored: s.clone(),
                    alg: k.alg,
                    jwk: k.jwk.clone(),
                    signer: k.signer.clone(),
                }),
                None => match LoadedKey::load(s, kek) {
                    Ok(k) => keys.push(k),
                    Err(e) => errors.push(e),
                },
            }
        }
        // Deterministic order so that every replica picks the same active key.
        keys.sort_by(|a, b| {
            (a.stored.active_from, &a.stored.kid).cmp(&(b.stored.active_from, &b.stored.kid))
        });
        (KeyRing { keys }, errors)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[LoadedKey] {
        &self.keys
    }

    /// The key that signs at `now`: the most recently activated key that is active and not
    /// retired.
    pub fn active(&self, now: u64) -> Option<&LoadedKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.stored.active_from <= now && k.stored.retire_at.is_none_or(|r| r > now))
    }

    /// The next time at which the active key changes (a pending key activates or the active
    /// one retires), so a replica can switch exactly then.
    pub fn next_change(&self, now: u64) -> Option<u64> {
        self.keys
            .iter()
            .flat_map(|k| [Some(k.stored.active_from), k.stored.retire_at])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    /// Keys to publish: every key that is not yet past retirement plus the longest token
    /// lifetime (tokens it signed may still be presented).
    pub fn jwks(&self, now: u64, max_token_ttl: u64) -> Value {
        let keys: Vec<&Value> = self
            .keys
            .iter()
            .filter(|k| {
                k.stored
                    .retire_at
                    .is_none_or(|r| r.saturating_add(max_token_ttl) > now)
            })
            .map(|k| &k.jwk)
            .collect();
        json!({ "keys": keys })
    }

    /// The claims of one of our own unexpired JWTs, once its signature checks out with the
    /// key its `kid` names (and that key's algorithm only) and its `iss` is `issuer`; `None`
    /// for anything else. Used where the token's record may be gone (revocation after a
    /// Redis failover lost it, docs/reliability.md).
    pub fn verify(&self, token: &str, issuer: &str) -> Option<OwnClaims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid?;
        let key = self.keys.iter().find(|k| k.stored.kid == kid)?;
        let alg = key.alg.jwt_alg();
        if header.alg != alg {
            return None;
        }
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).ok()?;
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()?;
        let mut v = jsonwebtoken::Validation::new(alg);
        v.set_issuer(&[issuer]);
        v.set_required_spec_claims(&["exp", "iss"]);
        v.validate_aud = false;
        v.leeway = 0;
        jsonwebtoken::decode::<OwnClaims>(token, &decoding, &v)
            .ok()
            .map(|d| d.claims)
    }

    /// Stored keys whose publication period is over and can be deleted.
    pub fn expired(&self, now: u64, max_token_ttl: u64) -> Vec<String> {
        let stored: Vec<StoredKey> = self.keys.iter().map(|k| k.stored.clone()).collect();
        expired_kids(&stored, now, max_token_ttl)
    }
}

/// The records whose publication period is over (read from the records alone: `cleanup`
/// needs no KEK).
pub fn expired_kids(stored: &[StoredKey], now: u64, max_token_ttl: u64) -> Vec<String> {
    stored
        .iter()
        .filter(|k| {
            k.retire_at
                .is_some_and(|r| r.saturating_add(max_token_ttl) <= now)
        })
        .map(|k| k.kid.clone())
        .collect()
}

/// The kid of the record that signs at `now` by the ring's rule (from the records alone:
/// `keys list` needs no KEK).
pub fn active_kid(stored: &[StoredKey], now: u64) -> Option<String> {
    stored
        .iter()
        .filter(|k| k.active_from <= now && k.retire_at.is_none_or(|r| r > now))
        .max_by(|a, b| (a.active_from, &a.kid).cmp(&(b.active_from, &b.kid)))
        .map(|k| k.kid.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
    use jsonwebtoken::{EncodingKey, Header};

    fn roundtrip(alg: SigningAlg) {
        let stored = new_stored_key(alg, 100, 100).unwrap();
        let k = LoadedKey::load(&stored, &KeyEncryption::none()).unwrap();
        let token = k
            .sign(&json!({"sub": "x", "exp": 4_000_000_000u64, "aud": "a"}))
            .unwrap();
        let h = decode_header(&token).unwrap();
        assert_eq!(h.typ.as_deref(), Some("at+jwt"));
        assert_eq!(h.kid.as_deref(), Some(stored.kid.as_str()));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.jwk.clone()).unwrap();
        let dk = DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = Validation::new(alg.jwt_alg());
        v.set_audience(&["a"]);
        let data = decode::<Value>(&token, &dk, &v).unwrap();
        assert_eq!(data.claims["sub"], "x");
    }

    #[test]
    fn es256_signs_and_verifies_with_published_jwk() {
        roundtrip(SigningAlg::ES256);
    }

    #[test]
    fn eddsa_signs_and_verifies_with_published_jwk() {
        roundtrip(SigningAlg::EdDSA);
    }

    #[test]
    fn rs256_signs_and_verifies_with_published_jwk() {
        roundtrip(SigningAlg::RS256);
    }

    #[test]
    fn verify_accepts_only_our_unexpired_tokens() {
        let now = crate::store::now_secs();
        for alg in [SigningAlg::ES256, SigningAlg::EdDSA, SigningAlg::RS256] {
            let stored = new_stored_key(alg, 0, 0).unwrap();
            let (ring, _) = KeyRing::load(std::slice::from_ref(&stored), &KeyEncryption::none());
            let k = &ring.keys()[0];
            let claims = |iss: &str, exp: u64| {
                json!({"iss": iss, "sub": "c", "aud": "a", "exp": exp, "jti": "j1",
                       "client_id": "c1"})
            };
            let good = k.sign(&claims("https://as", now + 60)).unwrap();
            assert_eq!(
                ring.verify(&good, "https://as"),
                Some(OwnClaims {
                    jti: "j1".into(),
                    exp: now + 60,
                    client_id: "c1".into()
                })
            );
            assert_eq!(ring.verify(&good, "https://other"), None, "issuer");
            let expired = k.sign(&claims("https://as", now - 10)).unwrap();
            assert_eq!(ring.verify(&expired, "https://as"), None, "expired");
            let mut tampered = good.clone();
            tampered.insert(good.len() / 2, 'A');
            assert_eq!(ring.verify(&tampered, "https://as"), None, "tampered");
            let other = new_stored_key(alg, 0, 0).unwrap();
            let (other_ring, _) = KeyRing::load(&[other], &KeyEncryption::none());
            assert_eq!(other_ring.verify(&good, "https://as"), None, "unknown kid");
        }
        // HS256 signed with the public key as secret (algorithm confusion): refused.
        let stored = new_stored_key(SigningAlg::ES256, 0, 0).unwrap();
        let (ring, _) = KeyRing::load(std::slice::from_ref(&stored), &KeyEncryption::none());
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(stored.kid.clone());
        let forged = jsonwebtoken::encode(
            &h,
            &json!({"iss": "https://as", "exp": now + 60, "jti": "j", "client_id": "c"}),
            &EncodingKey::from_secret(ring.keys()[0].jwk.to_string().as_bytes()),
        )
        .unwrap();
        assert_eq!(ring.verify(&forged, "https://as"), None);
    }

    fn kek(b: u8) -> KeyEncryption {
        KeyEncryption::new(&[b; 32], &[]).unwrap()
    }

    #[test]
    fn sealed_keys_hold_no_private_key_and_sign_once_opened() {
        let a = kek(1);
        for alg in [SigningAlg::ES256, SigningAlg::EdDSA, SigningAlg::RS256] {
            let k = new_sealed_key(alg, 0, 0, &a).unwrap();
            assert!(k.private_pem.is_empty());
            assert!(sealed_under_current(&k, &a));
            let json = serde_json::to_string(&k).unwrap();
            assert!(
                !json.contains("PRIVATE KEY") && !json.contains("private_pem"),
                "{json}"
            );
            let loaded = LoadedKey::load(&k, &a).unwrap();
            assert_eq!(loaded.stored.kid, k.kid);
            assert!(loaded.sign(&json!({"sub": "x"})).is_ok());
        }
    }

    #[test]
    fn wrong_kek_is_a_clear_error_naming_the_kid_and_kek() {
        let a = kek(1);
        let k = new_sealed_key(SigningAlg::ES256, 0, 0, &a).unwrap();
        for (other, needle) in [
            (kek(2), a.current_id().unwrap().to_string()),
            (
                KeyEncryption::none(),
                "TOLLGATE_KEY_ENCRYPTION_KEY".to_string(),
            ),
        ] {
            let (ring, errors) = KeyRing::load(std::slice::from_ref(&k), &other);
            assert!(ring.is_empty());
            let e = errors[0].to_string();
            assert!(matches!(errors[0], KeyError::Sealed { .. }), "{e}");
            assert!(e.contains(&k.kid) && e.contains(&needle), "{e}");
            assert!(!e.contains("PRIVATE"), "{e}");
        }
        // Another record's ciphertext under this kid: refused, not loaded as this key.
        let other = new_sealed_key(SigningAlg::ES256, 0, 0, &a).unwrap();
        let moved = StoredKey {
            sealed_private_key: other.sealed_private_key.clone(),
            ..k.clone()
        };
        let e = LoadedKey::load(&moved, &a).err().unwrap();
        assert!(
            matches!(
                e,
                KeyError::Sealed {
                    source: KekError::Open(_),
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn reload_opens_each_key_once() {
        let a = kek(1);
        let k = new_sealed_key(SigningAlg::ES256, 0, 0, &a).unwrap();
        let (ring, errors) = KeyRing::load(std::slice::from_ref(&k), &a);
        assert!(errors.is_empty());
        // The record re-encrypted under a KEK this replica lacks, and retired: the key it
        // holds already is kept, with the record's new schedule.
        let two = KeyEncryption::new(&[2; 32], &[Zeroizing::new([1; 32])]).unwrap();
        let mut rewrapped = seal(&k, &two).unwrap();
        rewrapped.retire_at = Some(50);
        let (again, errors) = ring.reload(std::slice::from_ref(&rewrapped), &KeyEncryption::none());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(again.keys()[0].stored.retire_at, Some(50));
        assert!(again.active(10).is_some() && again.active(50).is_none());
        // A key it does not hold yet needs the KEK.
        let (fresh, errors) = KeyRing::default().reload(&[rewrapped], &a);
        assert!(fresh.is_empty() && errors.len() == 1);
    }

    #[test]
    fn schedule_from_records_matches_the_ring() {
        let mut old = new_stored_key(SigningAlg::ES256, 0, 0).unwrap();
        old.retire_at = Some(160);
        let new = new_stored_key(SigningAlg::ES256, 100, 160).unwrap();
        let both = [old.clone(), new.clone()];
        let (ring, _) = KeyRing::load(&both, &KeyEncryption::none());
        for t in [0, 120, 159, 160, 1000, 1060] {
            assert_eq!(
                active_kid(&both, t),
                ring.active(t).map(|k| k.stored.kid.clone()),
                "{t}"
            );
            assert_eq!(expired_kids(&both, t, 900), ring.expired(t, 900), "{t}");
        }
    }

    #[test]
    fn kid_must_match_thumbprint() {
        let mut stored = new_stored_key(SigningAlg::ES256, 0, 0).unwrap();
        stored.kid = "forged".into();
        assert!(LoadedKey::load(&stored, &KeyEncryption::none()).is_err());
    }

    #[test]
    fn rotation_publishes_before_signing_and_retires_after_expiry() {
        let mut old = new_stored_key(SigningAlg::ES256, 0, 0).unwrap();
        let new = new_stored_key(SigningAlg::ES256, 100, 160).unwrap();
        old.retire_at = Some(160);
        let (ring, errs) = KeyRing::load(&[old.clone(), new.clone()], &KeyEncryption::none());
        assert!(errs.is_empty());
        // Before activation: the old key signs, both are published.
        assert_eq!(ring.active(120).unwrap().stored.kid, old.kid);
        assert_eq!(ring.jwks(120, 900)["keys"].as_array().unwrap().len(), 2);
        assert_eq!(ring.next_change(120), Some(160));
        // After activation: the new key signs; the old one is still published.
        assert_eq!(ring.active(160).unwrap().stored.kid, new.kid);
        assert_eq!(ring.jwks(1000, 900)["keys"].as_array().unwrap().len(), 2);
        // After the last token of the old key expired it is dropped.
        assert_eq!(ring.jwks(1060, 900)["keys"].as_array().unwrap().len(), 1);
        assert_eq!(ring.expired(1060, 900), vec![old.kid.clone()]);
    }
}
