//! EdDSA (Ed25519) signature verification, fast on wasm32.
//!
//! The generic path (`jsonwebtoken` → `ed25519-dalek`) computes `[s]B − [k]A` with
//! `vartime_double_scalar_mul_basepoint`: about 253 point doublings and 80 additions per
//! signature, ≈ 119 µs in node's V8 (wasm32-wasip1, release). An issuer key verifies many
//! tokens, so the filter builds a fixed-base table of `−A` once per key (curve25519-dalek's
//! radix-16 basepoint table, 30 KB, ≈ 2.5 ms), and `[k](−A)` then takes 64 additions and
//! 4 doublings, like `[s]B` from dalek's built-in table of the base point: ≈ 72 µs per
//! signature in the same run (radix 32 and 64 tables were no faster: their constant-time
//! lookups scan more entries).
//!
//! The accepted signatures are exactly `ed25519-dalek`'s `verify` (what the generic path
//! calls): `s` canonical (below the group order ℓ), `k = SHA-512(R ‖ A ‖ M) mod ℓ` over
//! the key's bytes as published, and the encoding of `[s]B − [k]A` equal to `R` byte for
//! byte. The tests compare both on valid, tampered and malformed signatures, and with
//! Wycheproof's vectors (`tests/wycheproof.rs`).

use std::sync::OnceLock;

use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsBasepointTable};
use curve25519_dalek::traits::BasepointTable;
use curve25519_dalek::Scalar;
use sha2::{Digest, Sha512};

/// An Ed25519 public key (its 32 bytes, as in a JWK's `x`) with the table of its negation,
/// built on the first verification. Bytes that do not decode to a point verify nothing.
pub struct PublicKey {
    bytes: [u8; 32],
    table: OnceLock<Option<EdwardsBasepointTable>>,
}

impl PublicKey {
    /// From the key's 32 bytes. Nothing is checked or computed yet.
    pub fn new(bytes: [u8; 32]) -> PublicKey {
        PublicKey {
            bytes,
            table: OnceLock::new(),
        }
    }

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Whether the table has been built (by a first verification).
    pub fn table_built(&self) -> bool {
        self.table.get().is_some()
    }

    fn table(&self) -> Option<&EdwardsBasepointTable> {
        self.table
            .get_or_init(|| {
                let a = CompressedEdwardsY(self.bytes).decompress()?;
                Some(EdwardsBasepointTable::create(&-a))
            })
            .as_ref()
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("table_built", &self.table_built())
            .finish_non_exhaustive()
    }
}

/// Verify an Ed25519 signature `R ‖ s` (64 bytes, as in a JWS) of `msg`.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = <&[u8; 64]>::try_from(sig) else {
        return false;
    };
    let mut r = [0u8; 32];
    r.copy_from_slice(&sig[..32]);
    let mut s = [0u8; 32];
    s.copy_from_slice(&sig[32..]);
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s)) else {
        return false;
    };
    let Some(neg_a) = key.table() else {
        return false;
    };
    let k = Scalar::from_hash(
        Sha512::new()
            .chain_update(r)
            .chain_update(key.bytes)
            .chain_update(msg),
    );
    let computed = ED25519_BASEPOINT_TABLE.mul_base(&s) + neg_a.mul_base(&k);
    computed.compress().0 == r
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey, Verifier};

    fn reference(vk: &ed25519_dalek::VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
        ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| vk.verify(msg, &s).is_ok())
    }

    #[test]
    fn agrees_with_ed25519_dalek() {
        for seed in 1..5u8 {
            let sk = SigningKey::from_bytes(&[seed; 32]);
            let vk = sk.verifying_key();
            let pk = PublicKey::new(vk.to_bytes());
            let other = PublicKey::new(
                SigningKey::from_bytes(&[seed + 50; 32])
                    .verifying_key()
                    .to_bytes(),
            );
            for i in 0..24u32 {
                let msg = format!("header.payload-{seed}-{i}");
                let sig = sk.sign(msg.as_bytes()).to_bytes();
                assert!(verify(&pk, msg.as_bytes(), &sig));
                assert!(reference(&vk, msg.as_bytes(), &sig));
                assert!(!verify(&other, msg.as_bytes(), &sig));
                // A flipped bit anywhere in R or s, or in the message: both refuse.
                let bit = (i as usize * 29 + seed as usize) % 512;
                let mut bad = sig;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    verify(&pk, msg.as_bytes(), &bad),
                    reference(&vk, msg.as_bytes(), &bad)
                );
                assert!(!verify(&pk, msg.as_bytes(), &bad));
                let mut changed = msg.clone().into_bytes();
                let at = i as usize % changed.len();
                changed[at] ^= 1;
                assert!(!verify(&pk, &changed, &sig));
                // s + ℓ (the same value, not canonical): dalek refuses it, and so does this.
                let mut high = sig;
                let mut carry = 0u16;
                for (b, l) in high[32..].iter_mut().zip(ORDER_LE) {
                    let t = u16::from(*b) + u16::from(l) + carry;
                    *b = t as u8;
                    carry = t >> 8;
                }
                assert!(!reference(&vk, msg.as_bytes(), &high));
                assert!(!verify(&pk, msg.as_bytes(), &high));
            }
            // Wrong lengths.
            let sig = sk.sign(b"m").to_bytes();
            assert!(!verify(&pk, b"m", &sig[..63]));
            assert!(!verify(&pk, b"m", &[&sig[..], &[0]].concat()));
            assert!(verify(&pk, b"m", &sig));
        }
    }

    /// The group order ℓ = 2^252 + 27742317777372353535851937790883648493, little-endian.
    const ORDER_LE: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    #[test]
    fn bytes_that_are_not_a_point_verify_nothing() {
        let sk = SigningKey::from_bytes(&[7; 32]);
        let sig = sk.sign(b"m").to_bytes();
        // y = 2 is not the y of any curve point (x² = (y² − 1)/(d·y² + 1) has no root).
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(CompressedEdwardsY(not_a_point).decompress().is_none());
        assert!(!verify(&PublicKey::new(not_a_point), b"m", &sig));
    }
}
