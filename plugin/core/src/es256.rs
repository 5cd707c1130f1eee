//! ES256 (ECDSA over P-256 with SHA-256) signature verification, fast on wasm32.
//!
//! The generic path (`jsonwebtoken` → `p256` 0.13) computes `u1·G + u2·Q` as two separate
//! constant-time scalar multiplications (256 doublings each, and table lookups that scan
//! all 16 entries of a window) over a field implementation that, on 32-bit targets, widens
//! to 64-bit limbs and emulates 64×64→128-bit products. In V8 that is ≈ 0.5–0.8 ms per
//! signature. Verification handles public data only (key, message, signature), so it may
//! run in variable time; this module does:
//!
//! - field arithmetic on 32-bit words: a schoolbook product into 64-bit column sums (each
//!   32×32→64-bit product is a single Wasm `i64.mul`) and the NIST fast reduction for p,
//!   which needs additions only; tested against fiat-crypto's formally verified Montgomery
//!   arithmetic. In V8 (node 20) a multiplication costs 58 ns against fiat's 101 ns;
//! - fixed-base combs: for a point P, a table of `j·2^(w·i)·P` (j = 1..2^(w−1), for every
//!   window position i) in affine coordinates. With the scalar in signed radix-2^w digits,
//!   `k·P` is one table point (or its negation) per non-zero digit and no doubling: with
//!   w = 8, `u1·G + u2·Q` is at most 66 mixed additions. The generator's table is built once
//!   per VM; an issuer key's table once per [`PublicKey`], when it first verifies a
//!   signature (the JWKS code hands the same `PublicKey` on across refreshes of an
//!   unchanged key);
//! - complete addition formulas (Renes–Costello–Batina 2015, algorithm 5: mixed addition
//!   for a = −3), so no input, however chosen, reaches an exceptional case;
//! - the final check `x(R) ≡ r (mod n)` in projective coordinates (`X = r·Z`, or
//!   `X = (r+n)·Z` when `r + n < p`): no field inversion;
//! - scalars: `s⁻¹ mod n` by the binary extended Euclidean algorithm on 64-bit words
//!   (additions and shifts: 8 µs in V8, against 20 µs for p256's `invert_vartime`), `u1` and
//!   `u2` with fiat-crypto's Montgomery multiplication modulo n.
//!
//! Only the field's reduction and inversion, the constants and the scalar arithmetic modulo
//! n are proper to P-256: the point formulas, the combs and the final check are written
//! once for this module and the ES384 verifier ([`crate::es384`]) in `ecdsa_curve`, generic
//! over the field element; the word-level field arithmetic, the scalar inversion and the
//! combs' signed-digit recoding in `ecdsa_shared`.
//!
//! The validation of public keys uses the `p256` crate. The tests compare results with
//! `p256`'s own ECDSA verification on valid, tampered and out-of-range signatures, with
//! its scalar multiplication and inversion, and with the Wycheproof vectors
//! (`tests/wycheproof.rs`).

// Word-by-word arithmetic over several arrays at once reads best indexed.
#![allow(clippy::needless_range_loop)]

use std::sync::OnceLock;

use fiat_crypto::p256_scalar_32::{
    fiat_p256_scalar_montgomery_domain_field_element as ScalarMont, fiat_p256_scalar_mul,
    fiat_p256_scalar_non_montgomery_domain_field_element as ScalarPlain,
    fiat_p256_scalar_to_montgomery,
};
use p256::{AffinePoint, NistP256};
use sha2::{Digest, Sha256};

use crate::ecdsa_curve::{self, Field};
use crate::ecdsa_shared;

/// Window width of the tables: 33 positions × 128 points of 64 bytes, ≈ 270 KB per table
/// (the generator's, and one per issuer key in use). Measured in V8 (node 20, per
/// verification, with fiat's Montgomery multiplication, before this module's own field
/// arithmetic roughly halved every figure): w = 6 → 46 µs per scalar multiplication,
/// w = 7 → 41 µs, w = 8 → 35 µs; a table took 5–9 ms to build.
const WINDOW: usize = 8;

/// The field prime p = 2^256 − 2^224 + 2^192 + 2^96 − 1, little-endian 32-bit words.
const P: [u32; 8] = [!0, !0, !0, 0, 0, 0, 1, !0];
/// The group order n, little-endian 64-bit words.
const N64: [u64; 4] = [
    0xf3b9_cac2_fc63_2551,
    0xbce6_faad_a717_9e84,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_0000_0000,
];
/// p − n (the group order n is just below p), big-endian: `r + n < p` iff `r < p − n`.
const P_MINUS_N_BE: [u8; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x43, 0x19, 0x05, 0x53, 0x58, 0xe8, 0x61, 0x7b,
    0x0c, 0x46, 0x35, 0x3d, 0x03, 0x9c, 0xda, 0xae,
];
/// The group order n, big-endian.
const N_BE: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];
/// The curve coefficient b, big-endian.
const B_BE: [u8; 32] = [
    0x5a, 0xc6, 0x35, 0xd8, 0xaa, 0x3a, 0x93, 0xe7, 0xb3, 0xeb, 0xbd, 0x55, 0x76, 0x98, 0x86, 0xbc,
    0x65, 0x1d, 0x06, 0xb0, 0xcc, 0x53, 0xb0, 0xf6, 0x3b, 0xce, 0x3c, 0x3e, 0x27, 0xd2, 0x60, 0x4b,
];

/// A field element: little-endian 32-bit words, always fully reduced (< p).
///
/// Multiplication is a schoolbook product into 64-bit column sums (each 32×32→64-bit
/// product is one Wasm `i64.mul`, split into halves so that the columns never carry) and
/// the NIST fast reduction for p (FIPS 186-4, D.2.3) applied to those column sums: p's
/// words are 0, 1 and 2^32 − 1, so reducing takes additions only. Measured in V8 (node 20),
/// a multiplication costs about half of fiat-crypto's word-by-word Montgomery
/// multiplication, which this module used before.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fe([u32; 8]);

/// Whether the words `a` (little-endian) are at least p.
fn ge_p(a: &[u32; 8]) -> bool {
    ecdsa_shared::ge(a, &P)
}

/// The 8 signed word sums of the NIST reduction of `c = Σ c[k]·2^(32k)` (k < 16, any
/// non-negative column values below 2^40), carried into fully reduced words. The
/// reduction is a set of linear congruences (2^(32k) mod p for k ≥ 8), so it holds for
/// column sums that are not yet carried.
fn reduce(c: &[u64; 16]) -> Fe {
    let c: [i64; 16] = std::array::from_fn(|k| c[k] as i64);
    // s1 + 2·s2 + 2·s3 + s4 + s5 − d1 − d2 − d3 − d4, word by word.
    let w = [
        c[0] + c[8] + c[9] - c[11] - c[12] - c[13] - c[14],
        c[1] + c[9] + c[10] - c[12] - c[13] - c[14] - c[15],
        c[2] + c[10] + c[11] - c[13] - c[14] - c[15],
        c[3] + 2 * (c[11] + c[12]) + c[13] - c[15] - c[8] - c[9],
        c[4] + 2 * (c[12] + c[13]) + c[14] - c[9] - c[10],
        c[5] + 2 * (c[13] + c[14]) + c[15] - c[10] - c[11],
        c[6] + 3 * c[14] + 2 * c[15] + c[13] - c[8] - c[9],
        c[7] + 3 * c[15] + c[8] - c[10] - c[11] - c[12] - c[13],
    ];
    let (mut out, mut top) = ecdsa_shared::carry(&w);
    // value = out + top·2^256 and 2^256 ≡ 2^224 − 2^192 − 2^96 + 1: fold the top back in.
    // |top| < 2^11 at first; each fold leaves |top| ≤ 1, and the second fold leaves 0.
    while top != 0 {
        let mut w: [i64; 8] = std::array::from_fn(|i| i64::from(out[i]));
        w[0] += top;
        w[3] -= top;
        w[6] -= top;
        w[7] += top;
        (out, top) = ecdsa_shared::carry(&w);
    }
    // Now out < 2^256 < 2p.
    if ge_p(&out) {
        out = ecdsa_shared::minus(&out, &P);
    }
    Fe(out)
}

impl Fe {
    /// From big-endian bytes; `None` unless the value is below p.
    fn from_be(b: &[u8; 32]) -> Option<Fe> {
        let words = words_le(b);
        if ge_p(&words) {
            return None;
        }
        Some(Fe(words))
    }
}

impl Field for Fe {
    const BITS: usize = 256;

    #[inline]
    fn from_be_slice(b: &[u8]) -> Option<Fe> {
        Fe::from_be(b.try_into().ok()?)
    }

    #[inline]
    fn one() -> Fe {
        Fe([1, 0, 0, 0, 0, 0, 0, 0])
    }

    #[inline]
    fn zero() -> Fe {
        Fe([0; 8])
    }

    #[inline]
    fn mul(&self, o: &Fe) -> Fe {
        reduce(&ecdsa_shared::mul_columns(&self.0, &o.0))
    }

    #[inline]
    fn square(&self) -> Fe {
        reduce(&ecdsa_shared::square_columns(&self.0))
    }

    #[inline]
    fn add(&self, o: &Fe) -> Fe {
        Fe(ecdsa_shared::add_mod_p(&self.0, &o.0, &P))
    }

    #[inline]
    fn sub(&self, o: &Fe) -> Fe {
        Fe(ecdsa_shared::sub_mod_p(&self.0, &o.0, &P))
    }

    /// `self^(p−2)` = 1/self (Fermat), 0 for 0. Only for building tables.
    fn invert(&self) -> Fe {
        let mut r = Fe::one();
        for i in (0..8).rev() {
            // p − 2 differs from p only in its lowest word.
            let word = if i == 0 { P[0] - 2 } else { P[i] };
            for bit in (0..32).rev() {
                r = r.square();
                if (word >> bit) & 1 == 1 {
                    r = r.mul(self);
                }
            }
        }
        r
    }

    /// Equality of the represented values (both are fully reduced).
    #[inline]
    fn same(&self, o: &Fe) -> bool {
        self.0 == o.0
    }

    #[inline]
    fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }
}

/// Big-endian bytes as little-endian 32-bit words.
fn words_le(b: &[u8; 32]) -> [u32; 8] {
    ecdsa_shared::words_le(b)
}

type Affine = ecdsa_curve::Affine<Fe>;
type Proj = ecdsa_curve::Proj<Fe>;
type Table = ecdsa_curve::Table<Fe>;
type Generator = ecdsa_curve::Generator<Fe>;

/// The generator's table and the curve's b, built on first use (once per VM).
fn generator() -> Option<&'static Generator> {
    static G: OnceLock<Option<Generator>> = OnceLock::new();
    G.get_or_init(|| Generator::build(&B_BE, affine_of(&AffinePoint::GENERATOR), WINDOW))
        .as_ref()
}

/// Build the generator's table now if it is not built yet (it is otherwise built by the
/// first verification).
pub fn prepare() {
    let _ = generator();
}

/// A `p256` affine point in this module's representation.
fn affine_of(p: &AffinePoint) -> Option<Affine> {
    ecdsa_curve::affine_of::<Fe, NistP256>(p)
}

/// A P-256 public key given by its coordinates (as in a JWK), with its comb table, built
/// on the first verification. A key whose coordinates are not a point of the curve
/// verifies nothing.
pub struct PublicKey {
    xy: [u8; 64],
    table: OnceLock<Option<Table>>,
}

impl PublicKey {
    /// From `x ‖ y` (big-endian, 32 bytes each). Nothing is checked or computed yet.
    pub fn new(xy: [u8; 64]) -> PublicKey {
        PublicKey {
            xy,
            table: OnceLock::new(),
        }
    }

    /// The coordinates `x ‖ y`.
    pub fn coordinates(&self) -> &[u8; 64] {
        &self.xy
    }

    fn table(&self, b: &Fe) -> Option<&Table> {
        self.table
            .get_or_init(|| {
                Table::build(ecdsa_curve::point_of::<Fe, NistP256>(&self.xy)?, WINDOW, b)
            })
            .as_ref()
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("table_built", &self.table.get().is_some())
            .finish_non_exhaustive()
    }
}

/// A scalar from 32 big-endian bytes, if in [1, n), as little-endian words.
fn scalar(b: &[u8]) -> Option<[u32; 8]> {
    ecdsa_shared::scalar(b, &N_BE)
}

/// `1/a mod n` for `a` in [1, n), by the binary extended Euclidean algorithm on 64-bit
/// words ([`ecdsa_shared::invert_mod`], shared with ES384: additions and shifts, 8 µs in V8
/// against 20 µs for p256's `invert_vartime`). Variable time: it only ever inverts `s` of a
/// signature, which is public.
fn invert_mod_n(a: &[u32; 8]) -> Option<[u32; 8]> {
    ecdsa_shared::invert_mod(&ecdsa_shared::to64(a), &N64).map(|x| ecdsa_shared::to32(&x))
}

/// `(a·b mod n)` for `a, b < n` with fiat-crypto's Montgomery multiplication modulo n:
/// `b` is first taken to the Montgomery domain (`b·R`), so `mont(a, b·R) = a·b`.
fn mul_mod_n(a: &[u32; 8], b_mont: &ScalarMont) -> [u32; 8] {
    let mut out = ScalarMont([0; 8]);
    fiat_p256_scalar_mul(&mut out, &ScalarMont(*a), b_mont);
    out.0
}

/// Verify an ES256 signature of `msg`: `sig` is `r ‖ s` (64 bytes, as in a JWS). Like
/// `p256`'s verification, both `s` and `n − s` are accepted.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    verify_digest(key, &Sha256::digest(msg).into(), sig)
}

/// [`verify`] for a message whose SHA-256 is `digest`.
pub fn verify_digest(key: &PublicKey, digest: &[u8; 32], sig: &[u8]) -> bool {
    let Some((u1, u2)) = scalars(digest, sig) else {
        return false;
    };
    let Some(g) = generator() else {
        return false;
    };
    let Some(q) = key.table(&g.b) else {
        return false;
    };
    sig.get(..32)
        .is_some_and(|r| g.verifies(q, &u1, &u2, r, &N_BE, &P_MINUS_N_BE))
}

/// Verify an ES256 signature by a key used once (a DPoP proof's `jwk`, `x ‖ y`): no comb
/// table is built for the key (that costs a few ms and ≈ 270 KB, worth it only for an
/// issuer key that verifies many tokens). `u1·G` uses the generator's table, `u2·Q` a
/// 4-bit fixed window over this module's field arithmetic (252 doublings), which
/// dominates. A point not on the curve verifies nothing.
pub fn verify_one_shot(xy: &[u8; 64], msg: &[u8], sig: &[u8]) -> bool {
    let Some((u1, u2)) = scalars(&Sha256::digest(msg).into(), sig) else {
        return false;
    };
    let Some(g) = generator() else {
        return false;
    };
    // p256 checks that the point is on the curve.
    let Some(q) = ecdsa_curve::point_of::<Fe, NistP256>(xy) else {
        return false;
    };
    let Some(acc) = g.table.mul_add(Proj::identity(), &u1, &g.b) else {
        return false;
    };
    matches_r(&acc.add(&Proj::mul_once(&q, &u2, &g.b), &g.b), sig)
}

/// `(u1, u2)` of a signature `r ‖ s` of a message whose SHA-256 is `digest`:
/// `u1 = e·s⁻¹`, `u2 = r·s⁻¹ (mod n)`, as little-endian words.
fn scalars(digest: &[u8; 32], sig: &[u8]) -> Option<([u32; 8], [u32; 8])> {
    if sig.len() != 64 {
        return None;
    }
    let r = scalar(&sig[..32])?;
    let s = scalar(&sig[32..])?;
    // e = the digest mod n: the digest is below 2^256 < 2n.
    let mut e = ecdsa_shared::to64(&words_le(digest));
    let (reduced, borrow) = ecdsa_shared::sub(&e, &N64);
    if !borrow {
        e = reduced;
    }
    let w = invert_mod_n(&s)?;
    let mut w_mont = ScalarMont([0; 8]);
    fiat_p256_scalar_to_montgomery(&mut w_mont, &ScalarPlain(w));
    Some((
        mul_mod_n(&ecdsa_shared::to32(&e), &w_mont),
        mul_mod_n(&r, &w_mont),
    ))
}

/// Whether `x(acc) mod n = r`: [`ecdsa_curve::matches_r`].
fn matches_r(acc: &Proj, sig: &[u8]) -> bool {
    sig.get(..32)
        .is_some_and(|r| ecdsa_curve::matches_r(acc, r, &N_BE, &P_MINUS_N_BE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::{Signer, Verifier};
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p256::elliptic_curve::point::AffineCoordinates;
    use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
    use p256::EncodedPoint;
    use p256::{ProjectivePoint, Scalar};

    fn xy_of(p: &AffinePoint) -> [u8; 64] {
        let enc = p.to_encoded_point(false);
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(enc.x().unwrap());
        out[32..].copy_from_slice(enc.y().unwrap());
        out
    }

    fn key(seed: u8) -> (SigningKey, PublicKey) {
        let mut bytes = [seed; 32];
        bytes[0] = 1;
        let sk = SigningKey::from_bytes((&bytes).into()).unwrap();
        let pk = PublicKey::new(xy_of(sk.verifying_key().as_affine()));
        (sk, pk)
    }

    fn reference(vk: &VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
        Signature::from_slice(sig).is_ok_and(|s| vk.verify(msg, &s).is_ok())
    }

    #[test]
    fn agrees_with_p256_on_valid_and_tampered_signatures() {
        for seed in 2..6u8 {
            let (sk, pk) = key(seed);
            let (_, other_key) = key(seed + 100);
            let vk = *sk.verifying_key();
            for i in 0..16u32 {
                let msg = format!("header.payload-{seed}-{i}");
                let sig: Signature = sk.sign(msg.as_bytes());
                let bytes = sig.to_bytes();
                assert!(verify(&pk, msg.as_bytes(), &bytes), "valid {seed}/{i}");
                assert!(reference(&vk, msg.as_bytes(), &bytes));
                // (r, n − s) is the other valid signature; p256 accepts it too.
                let mut flipped = bytes.to_vec();
                flipped[32..].copy_from_slice(&(-*sig.s()).to_bytes());
                assert!(reference(&vk, msg.as_bytes(), &flipped));
                assert!(verify(&pk, msg.as_bytes(), &flipped));
                // A flipped bit anywhere in r or s, or in the message, fails in both.
                let bit = (i as usize * 13 + seed as usize) % 512;
                let mut bad = bytes.to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(!reference(&vk, msg.as_bytes(), &bad));
                assert!(!verify(&pk, msg.as_bytes(), &bad));
                let mut changed = msg.clone().into_bytes();
                let at = i as usize % changed.len();
                changed[at] ^= 0x20;
                assert!(!verify(&pk, &changed, &bytes));
                // Another key's signature fails.
                assert!(!verify(&other_key, msg.as_bytes(), &bytes));
                // The one-shot path (DPoP proof keys) agrees on every case.
                let xy = pk.coordinates();
                assert!(verify_one_shot(xy, msg.as_bytes(), &bytes));
                assert!(verify_one_shot(xy, msg.as_bytes(), &flipped));
                assert!(!verify_one_shot(xy, msg.as_bytes(), &bad));
                assert!(!verify_one_shot(xy, &changed, &bytes));
                assert!(!verify_one_shot(
                    other_key.coordinates(),
                    msg.as_bytes(),
                    &bytes
                ));
            }
        }
    }

    #[test]
    fn out_of_range_scalars_wrong_lengths_and_bad_keys_are_refused() {
        let (sk, pk) = key(9);
        let vk = *sk.verifying_key();
        let msg = b"m";
        let sig: Signature = sk.sign(msg);
        let good = sig.to_bytes();
        let with = |at: std::ops::Range<usize>, v: &[u8]| {
            let mut b = good.to_vec();
            b[at].copy_from_slice(v);
            b
        };
        let r_plus_n = {
            // r + n does not fit in 32 bytes for a real r; n itself is out of range.
            with(0..32, &N_BE)
        };
        let tiny_r = with(0..32, &{
            let mut t = [0u8; 32];
            t[31] = 5;
            t
        });
        for bad in [
            with(0..32, &[0; 32]),
            with(32..64, &[0; 32]),
            r_plus_n,
            with(32..64, &N_BE),
            with(32..64, &[0xff; 32]),
            tiny_r,
            good[..63].to_vec(),
            [&good[..], &[0]].concat(),
            Vec::new(),
        ] {
            assert!(!verify(&pk, msg, &bad));
            assert!(!verify_one_shot(pk.coordinates(), msg, &bad));
            assert!(!reference(&vk, msg, &bad));
        }
        // Coordinates that are not a point of the curve, and the all-zero "point".
        let mut off = *pk.coordinates();
        off[63] ^= 1;
        assert!(!verify(&PublicKey::new(off), msg, &good));
        assert!(!verify(&PublicKey::new([0; 64]), msg, &good));
        assert!(!verify_one_shot(&off, msg, &good));
        assert!(!verify_one_shot(&[0; 64], msg, &good));
        assert!(verify(&pk, msg, &good));
        assert!(verify_one_shot(pk.coordinates(), msg, &good));
    }

    /// Fiat-crypto's Montgomery arithmetic (formally verified) as the reference for every
    /// field operation, on edge values and on pseudo-random ones.
    #[test]
    fn field_arithmetic_agrees_with_fiat_crypto() {
        use fiat_crypto::p256_32::{
            fiat_p256_add, fiat_p256_from_montgomery,
            fiat_p256_montgomery_domain_field_element as M, fiat_p256_mul,
            fiat_p256_non_montgomery_domain_field_element as N, fiat_p256_opp, fiat_p256_square,
            fiat_p256_sub, fiat_p256_to_montgomery,
        };
        let to_m = |a: &Fe| {
            let mut m = M([0; 8]);
            fiat_p256_to_montgomery(&mut m, &N(a.0));
            m
        };
        let from_m = |m: &M| {
            let mut n = N([0; 8]);
            fiat_p256_from_montgomery(&mut n, m);
            Fe(n.0)
        };
        let p_minus = |k: u32| Fe::zero().sub(&Fe([k, 0, 0, 0, 0, 0, 0, 0]));
        let mut values = vec![
            Fe::zero(),
            Fe::one(),
            Fe([2, 0, 0, 0, 0, 0, 0, 0]),
            p_minus(1),
            p_minus(2),
            Fe([!0, !0, !0, !0, !0, !0, 0, !0]),
            Fe([0, 0, 0, 0, 0, 0, 0, 0x8000_0000]),
            Fe([!0, 0, !0, 0, !0, 0, !0, 0]),
            Fe([0, !0, 0, !0, 0, !0, 0, 0xffff_fffe]),
            Fe([!0, !0, !0, 0, 0, 0, 0, !0]),
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            let words = std::array::from_fn(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u32
            });
            if !ge_p(&words) {
                values.push(Fe(words));
            }
        }
        for a in &values {
            assert!(!ge_p(&a.0));
            let mut m = M([0; 8]);
            fiat_p256_square(&mut m, &to_m(a));
            assert!(a.square().same(&from_m(&m)));
            fiat_p256_opp(&mut m, &to_m(a));
            assert!(a.neg().same(&from_m(&m)));
            for b in values.iter().step_by(7).chain(&values[..10]) {
                fiat_p256_mul(&mut m, &to_m(a), &to_m(b));
                assert!(a.mul(b).same(&from_m(&m)), "{:x?} · {:x?}", a.0, b.0);
                fiat_p256_add(&mut m, &to_m(a), &to_m(b));
                assert!(a.add(b).same(&from_m(&m)));
                fiat_p256_sub(&mut m, &to_m(a), &to_m(b));
                assert!(a.sub(b).same(&from_m(&m)));
            }
        }
        // Inversion: a · 1/a = 1.
        for a in &values[1..] {
            assert!(a.mul(&a.invert()).same(&Fe::one()));
        }
    }

    /// The scalar inversion against p256's, and `s·s⁻¹ = 1`.
    #[test]
    fn scalar_inversion_agrees_with_p256() {
        use p256::elliptic_curve::ops::Invert;
        let mut k = Scalar::from(0x1234_5678u64);
        for i in 0..300u64 {
            k = k * Scalar::from(0x9e37_79b9_7f4a_7c15u64) + Scalar::from(i);
            for kk in [k, -k, Scalar::ONE, -Scalar::ONE, Scalar::from(2u64)] {
                let words = words_le(&kk.to_bytes().into());
                let ours = invert_mod_n(&words).unwrap();
                let theirs = words_le(&kk.invert_vartime().unwrap().to_bytes().into());
                assert_eq!(ours, theirs);
            }
        }
        assert_eq!(invert_mod_n(&[0; 8]), None);
    }

    #[test]
    fn combs_match_p256_scalar_multiplication() {
        let g = generator().unwrap();
        let (_, pk) = key(21);
        let q_table = pk.table(&g.b).unwrap();
        let q = ProjectivePoint::from(
            Option::<AffinePoint>::from(AffinePoint::from_encoded_point(
                &EncodedPoint::from_bytes([&[4u8][..], pk.coordinates()].concat()).unwrap(),
            ))
            .unwrap(),
        );
        let check = |table: &Table, base: ProjectivePoint, k: Scalar| {
            let words = words_le(&k.to_bytes().into());
            let got = table.mul_add(Proj::identity(), &words, &g.b).unwrap();
            let expect = (base * k).to_affine();
            let x = Fe::from_be(&expect.x().into()).unwrap();
            assert!(got.x.same(&x.mul(&got.z)), "k = {k:?}");
            // The one-shot multiplication (fixed window, doublings, full additions) too.
            let base_affine = affine_of(&base.to_affine()).unwrap();
            let once = Proj::mul_once(&base_affine, &words, &g.b);
            assert!(once.x.same(&x.mul(&once.z)), "k = {k:?} (one shot)");
            let enc = expect.to_encoded_point(false);
            let y = Fe::from_be(&enc.y().unwrap()[..].try_into().unwrap()).unwrap();
            assert!(once.y.same(&y.mul(&once.z)), "k = {k:?} (one shot)");
        };
        let mut k = Scalar::from(0x1234_5678_9abc_def1u64);
        for i in 1..16u64 {
            k = k * Scalar::from(0x9e37_79b9_7f4a_7c15u64) + Scalar::from(i);
            for kk in [k, -k] {
                check(&g.table, ProjectivePoint::GENERATOR, kk);
                check(q_table, q, kk);
            }
        }
        // Digits at the extremes: 1, n − 1 (carries all the way up), 2^255-ish patterns.
        for kk in [
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::from(0x80u64),
            -Scalar::from(0x80u64),
        ] {
            check(&g.table, ProjectivePoint::GENERATOR, kk);
            check(q_table, q, kk);
        }
    }
}
