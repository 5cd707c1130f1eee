//! Small cryptographic helpers: random identifiers, keyed hashes of secrets, constant-time
//! comparison, and the sealing of secrets at rest under a key-encryption key (KEK).
//! Secrets and opaque tokens are stored only as these hashes; private signing keys only
//! sealed (AES-256-GCM) under a KEK that lives outside the store.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// `n` random bytes from the OS CSPRNG, base64url without padding.
pub fn random_b64(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A token identifier (`jti`): 128 bits.
pub fn new_jti() -> String {
    random_b64(16)
}

/// A client secret: 256 bits, shown once at registration.
pub fn new_client_secret() -> String {
    random_b64(32)
}

/// Hex SHA-256 of an opaque token. Used as the storage key of refresh and opaque access
/// tokens: the token has 256 bits of entropy, so a plain hash cannot be reversed.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Keyed hash (HMAC-SHA256 under the server's pepper) of a client secret. A leaked store
/// alone does not allow an offline check of guessed secrets.
pub fn secret_hash(pepper: &[u8], secret: &str) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here; fall back to a
    // plain hash rather than panic if that ever changed.
    match HmacSha256::new_from_slice(pepper) {
        Ok(mut mac) => {
            mac.update(secret.as_bytes());
            format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => format!("sha256:{}", token_hash(secret)),
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Check a presented secret against its stored keyed hash in constant time.
pub fn verify_secret(pepper: &[u8], presented: &str, stored_hash: &str) -> bool {
    ct_eq(
        secret_hash(pepper, presented).as_bytes(),
        stored_hash.as_bytes(),
    )
}

/// The record kind of a private signing key, part of the associated data of its seal.
pub const KIND_SIGNING_KEY: &str = "signing-key";

/// The only sealing algorithm (JWA name).
pub const SEAL_ALG: &str = "A256GCM";

/// Why a key-encryption key could not be used. The messages name variables and KEK ids,
/// never key material.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("{name}: {detail}")]
    Invalid { name: &'static str, detail: String },
    #[error(
        "no key-encryption key is configured (TOLLGATE_KEY_ENCRYPTION_KEY or \
         TOLLGATE_KEY_ENCRYPTION_KEY_FILE)"
    )]
    NotConfigured,
    #[error(
        "it is sealed under key-encryption key {0}, which is not configured \
         (TOLLGATE_KEY_ENCRYPTION_KEY, TOLLGATE_KEY_ENCRYPTION_KEYS_PREVIOUS)"
    )]
    UnknownKek(String),
    #[error(
        "it does not decrypt under key-encryption key {0}: the record was altered, or moved \
         from another record"
    )]
    Open(String),
    #[error("unsupported sealing algorithm {0:?} (A256GCM)")]
    Alg(String),
    #[error("the sealed record is malformed: {0}")]
    Malformed(&'static str),
    #[error("sealing failed")]
    Seal,
}

/// A secret sealed under a KEK: AES-256-GCM with a random 96-bit nonce, the record kind and
/// id as associated data (a ciphertext moved to another record does not open).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub alg: String,
    /// Which KEK sealed it ([`Kek::id`]), so that several KEKs can coexist in a rotation.
    pub kek_id: String,
    /// base64url, 12 bytes.
    pub nonce: String,
    /// base64url, ciphertext with its 16-byte tag.
    pub ciphertext: String,
}

/// One key-encryption key.
pub struct Kek {
    id: String,
    key: LessSafeKey,
}

impl Kek {
    pub fn new(bytes: &[u8; 32]) -> Result<Kek, KekError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KekError::Seal)?;
        // A public id derived from the key: an operator can tell which KEK sealed a record
        // (`authserver keys list`) without naming KEKs; it reveals nothing of the key.
        let mut h = Sha256::new();
        h.update(b"tollgate key-encryption key id\0");
        h.update(bytes);
        let id = hex::encode(&h.finalize()[..8]);
        Ok(Kek {
            id,
            key: LessSafeKey::new(key),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek").field("id", &self.id).finish()
    }
}

/// The configured KEKs: the current one seals, the current and the previous ones open.
#[derive(Debug, Default)]
pub struct KeyEncryption {
    current: Option<Kek>,
    previous: Vec<Kek>,
}

fn aad(kind: &str, id: &str) -> String {
    format!("tollgate:{kind}:{id}")
}

/// A KEK given as base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
pub fn parse_kek(name: &'static str, text: &str) -> Result<Zeroizing<[u8; 32]>, KekError> {
    let t = text.trim();
    let invalid = || KekError::Invalid {
        name,
        detail: "must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`)".into(),
    };
    let bytes = Zeroizing::new(
        [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|e| e.decode(t).ok())
            .ok_or_else(invalid)?,
    );
    let mut out = Zeroizing::new([0u8; 32]);
    if bytes.len() != out.len() {
        return Err(invalid());
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

impl KeyEncryption {
    /// No KEK: secrets stay in clear (refused in production mode).
    pub fn none() -> KeyEncryption {
        KeyEncryption::default()
    }

    /// The current KEK and the previous ones (which only open). Duplicates are dropped.
    pub fn new(current: &[u8; 32], previous: &[Zeroizing<[u8; 32]>]) -> Result<Self, KekError> {
        let current = Kek::new(current)?;
        let mut prev: Vec<Kek> = Vec::new();
        for p in previous {
            let k = Kek::new(p)?;
            if k.id != current.id && prev.iter().all(|q| q.id != k.id) {
                prev.push(k);
            }
        }
        Ok(KeyEncryption {
            current: Some(current),
            previous: prev,
        })
    }

    /// The id of the KEK that seals, if any.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|k| k.id.as_str())
    }

    pub fn previous_ids(&self) -> Vec<&str> {
        self.previous.iter().map(|k| k.id.as_str()).collect()
    }

    pub fn is_configured(&self) -> bool {
        self.current.is_some()
    }

    /// Seal `plaintext` for the record `kind`/`id` under the current KEK.
    pub fn seal(&self, kind: &str, id: &str, plaintext: &[u8]) -> Result<Sealed, KekError> {
        let kek = self.current.as_ref().ok_or(KekError::NotConfigured)?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut buf = plaintext.to_vec();
        let r = kek.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(kind, id).as_bytes()),
            &mut buf,
        );
        if r.is_err() {
            zeroize::Zeroize::zeroize(&mut buf);
            return Err(KekError::Seal);
        }
        Ok(Sealed {
            alg: SEAL_ALG.into(),
            kek_id: kek.id.clone(),
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            ciphertext: URL_SAFE_NO_PAD.encode(&buf),
        })
    }

    /// Open a seal of the record `kind`/`id` with the KEK it names (current or previous).
    pub fn open(
        &self,
        kind: &str,
        id: &str,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, KekError> {
        if sealed.alg != SEAL_ALG {
            return Err(KekError::Alg(sealed.alg.clone()));
        }
        let kek = self
            .current
            .iter()
            .chain(self.previous.iter())
            .find(|k| k.id == sealed.kek_id)
            .ok_or_else(|| match self.current {
                None => KekError::NotConfigured,
                Some(_) => KekError::UnknownKek(sealed.kek_id.clone()),
            })?;
        let nonce: [u8; NONCE_LEN] = URL_SAFE_NO_PAD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(KekError::Malformed("nonce"))?;
        let mut buf = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(&sealed.ciphertext)
                .map_err(|_| KekError::Malformed("ciphertext"))?,
        );
        let n = kek
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(kind, id).as_bytes()),
                &mut buf,
            )
            .map_err(|_| KekError::Open(kek.id.clone()))?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// Shown by `authserver status`: the ids of the KEKs, never the keys.
impl Serialize for KeyEncryption {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("KeyEncryption", 2)?;
        st.serialize_field("current", &self.current_id())?;
        st.serialize_field("previous", &self.previous_ids())?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(b: u8) -> Zeroizing<[u8; 32]> {
        Zeroizing::new([b; 32])
    }

    #[test]
    fn sealed_secrets_open_only_with_their_kek_kind_and_id() {
        let a = KeyEncryption::new(&kek(1), &[]).unwrap();
        let s = a.seal(KIND_SIGNING_KEY, "k1", b"private").unwrap();
        assert_eq!(s.kek_id, a.current_id().unwrap());
        assert!(!s.ciphertext.contains("private"));
        assert_eq!(&a.open(KIND_SIGNING_KEY, "k1", &s).unwrap()[..], b"private");
        // Random nonces: the same plaintext seals differently.
        assert_ne!(a.seal(KIND_SIGNING_KEY, "k1", b"private").unwrap(), s);
        // Moved to another record, or another kind: refused.
        assert!(matches!(
            a.open(KIND_SIGNING_KEY, "k2", &s),
            Err(KekError::Open(_))
        ));
        assert!(matches!(a.open("other", "k1", &s), Err(KekError::Open(_))));
        let mut t = s.clone();
        t.ciphertext.replace_range(
            0..1,
            if t.ciphertext.starts_with('A') {
                "B"
            } else {
                "A"
            },
        );
        assert!(matches!(
            a.open(KIND_SIGNING_KEY, "k1", &t),
            Err(KekError::Open(_))
        ));
        // Another KEK: its id does not match.
        let b = KeyEncryption::new(&kek(2), &[]).unwrap();
        let e = b.open(KIND_SIGNING_KEY, "k1", &s).unwrap_err();
        assert!(matches!(e, KekError::UnknownKek(_)), "{e}");
        assert!(e.to_string().contains(a.current_id().unwrap()));
        // ... unless it is listed as a previous one.
        let rotated = KeyEncryption::new(&kek(2), &[kek(1), kek(2)]).unwrap();
        assert_eq!(rotated.previous_ids(), vec![a.current_id().unwrap()]);
        assert_eq!(
            &rotated.open(KIND_SIGNING_KEY, "k1", &s).unwrap()[..],
            b"private"
        );
        // No KEK at all.
        let e = KeyEncryption::none()
            .open(KIND_SIGNING_KEY, "k1", &s)
            .unwrap_err();
        assert!(matches!(e, KekError::NotConfigured));
        assert!(KeyEncryption::none()
            .seal(KIND_SIGNING_KEY, "k1", b"x")
            .is_err());
        // Ids only, in status.
        let shown = serde_json::to_string(&rotated).unwrap();
        assert!(shown.contains(a.current_id().unwrap()) && !shown.contains("AQEB"));
    }

    #[test]
    fn kek_parsing_wants_32_bytes_of_base64_and_never_echoes_it() {
        let k = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
        assert!(parse_kek("X", k).is_ok());
        assert!(parse_kek("X", &format!("  {}\n", k.trim_end_matches('='))).is_ok());
        for bad in [
            "",
            "short",
            "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQ",
            "not base64 at all!!",
        ] {
            let e = parse_kek("TOLLGATE_KEY_ENCRYPTION_KEY", bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("TOLLGATE_KEY_ENCRYPTION_KEY"), "{e}");
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let a = new_client_secret();
        let b = new_client_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43); // 32 bytes base64url
    }

    #[test]
    fn secret_hash_verifies_only_the_right_secret() {
        let pepper = b"pepper";
        let h = secret_hash(pepper, "s3cret");
        assert!(verify_secret(pepper, "s3cret", &h));
        assert!(!verify_secret(pepper, "s3creT", &h));
        assert!(!verify_secret(b"other", "s3cret", &h));
        assert!(!h.contains("s3cret"));
    }

    #[test]
    fn ct_eq_checks_length_and_content() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }
}
