//! Filter-issued DPoP nonces (RFC 9449 §9), stateless: a nonce is the time slot it was
//! made in (`now / lifetime_s`, 8 bytes) and the first 16 bytes of HMAC-SHA256 of that slot
//! under the configured secret, base64url. Every gateway replica given the same secret
//! (`dpop.nonce.secret_env`) makes and accepts the same nonces, so a client may move between
//! them; a nonce is accepted in its slot and the next one (it lives `lifetime_s` to
//! `2 × lifetime_s`), which bounds how long a proof made in advance stays usable.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::config::DpopNonce;

const DOMAIN: &[u8] = b"tollgate dpop nonce v1";

/// The nonce of the current slot.
pub(crate) fn current(n: &DpopNonce, now: u64) -> String {
    let slot = now / n.lifetime_s.max(1);
    encode(n, slot)
}

/// Whether `nonce` was made by a gateway with this secret, in this slot or the previous one.
pub(crate) fn valid(n: &DpopNonce, nonce: &str, now: u64) -> bool {
    let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
        return false;
    };
    if raw.len() != 24 {
        return false;
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&raw[..8]);
    let slot = u64::from_be_bytes(s);
    let now_slot = now / n.lifetime_s.max(1);
    if slot != now_slot && slot.saturating_add(1) != now_slot {
        return false;
    }
    let want = mac(&n.key, slot);
    crate::ct_eq(&raw[8..], &want)
}

fn encode(n: &DpopNonce, slot: u64) -> String {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&slot.to_be_bytes());
    out.extend_from_slice(&mac(&n.key, slot));
    URL_SAFE_NO_PAD.encode(out)
}

/// HMAC-SHA256 of the slot (under a domain label), first 16 bytes.
fn mac(key: &[u8], slot: u64) -> [u8; 16] {
    let full = hmac_sha256(key, &[DOMAIN, &slot.to_be_bytes()]);
    let mut out = [0u8; 16];
    out.copy_from_slice(&full[..16]);
    out
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(secret: &[u8]) -> DpopNonce {
        DpopNonce {
            key: secret.to_vec(),
            lifetime_s: 60,
        }
    }

    #[test]
    fn a_nonce_lives_its_slot_and_the_next() {
        let k = n(b"0123456789abcdef0123456789abcdef");
        let made = current(&k, 1_000_000);
        assert!(valid(&k, &made, 1_000_000));
        assert!(valid(&k, &made, 1_000_000 + 60));
        assert!(!valid(&k, &made, 1_000_000 + 120), "two slots later");
        assert!(!valid(&k, &made, 1_000_000 - 60), "from the future");
    }

    #[test]
    fn another_secret_or_a_changed_byte_is_refused() {
        let (a, b) = (
            n(b"a-secret-of-at-least-32-bytes-aaaa"),
            n(b"another-secret-of-32-bytes-bbbbbb"),
        );
        let made = current(&a, 5_000);
        assert!(!valid(&b, &made, 5_000));
        let mut raw = URL_SAFE_NO_PAD.decode(&made).unwrap();
        raw[12] ^= 1;
        assert!(!valid(&a, &URL_SAFE_NO_PAD.encode(&raw), 5_000));
        for junk in ["", "not base64 !", "AAAA", &made[..made.len() - 2]] {
            assert!(!valid(&a, junk, 5_000), "{junk}");
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // Test case 2: a short key.
        assert_eq!(
            hex(&hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block (hashed first).
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
