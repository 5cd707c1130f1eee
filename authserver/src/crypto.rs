//! Small cryptographic helpers: random identifiers, keyed hashes of secrets, constant-time
//! comparison. Secrets and opaque tokens are stored only as these hashes.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

#[cfg(test)]
mod tests {
    use super::*;

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
