//! ES384 (ECDSA over P-384 with SHA-384) signature verification, fast on wasm32: a port of
//! [`crate::es256`] to the 384-bit curve.
//!
//! The generic path (`jsonwebtoken` → `p384` 0.13) computes `u1·G + u2·Q` as two separate
//! constant-time scalar multiplications (384 doublings each, table lookups that scan every
//! entry of a window) over a field implementation that, on 32-bit targets, works on 64-bit
//! limbs and emulates 64×64→128-bit products. Verification handles public data only (key,
//! message, signature), so it may run in variable time; this module does, as `es256` and
//! with the same code (generic over the field element, in `ecdsa_curve` and `ecdsa_shared`):
//!
//! - field arithmetic on 32-bit words (12 of them): a schoolbook product into 64-bit column
//!   sums (each 32×32→64-bit product is a single Wasm `i64.mul`) and the NIST fast
//!   reduction for p = 2^384 − 2^128 − 2^96 + 2^32 − 1 (FIPS 186-4, D.2.4), which needs
//!   additions only; tested against fiat-crypto's formally verified Montgomery arithmetic;
//! - fixed-base combs: for a point P, a table of `j·2^(w·i)·P` (j = 1..2^(w−1), for every
//!   window position i) in affine coordinates; with the scalar in signed radix-2^w digits,
//!   `k·P` is one table point (or its negation) per non-zero digit and no doubling. See
//!   `WINDOW` for the width chosen, the table size and the times. The generator's table
//!   is built once per VM; an issuer key's table once per [`PublicKey`], when it first
//!   verifies a signature (the JWKS code hands the same `PublicKey` on across refreshes of
//!   an unchanged key);
//! - complete addition formulas (Renes–Costello–Batina 2015, algorithm 5: mixed addition
//!   for a = −3), so no input, however chosen, reaches an exceptional case;
//! - the final check `x(R) ≡ r (mod n)` in projective coordinates (`X = r·Z`, or
//!   `X = (r+n)·Z` when `r + n < p`): no field inversion;
//! - scalars: `s⁻¹ mod n` by the binary extended Euclidean algorithm on 64-bit words
//!   (shared with `es256`), `u1` and `u2` with fiat-crypto's Montgomery multiplication
//!   modulo n.
//!
//! In V8 (node 20) a verification takes ≈ 190 µs, against 5.0–5.6 ms on the generic path;
//! natively 155 µs against 850 µs (`examples/rsbench.rs`).
//!
//! There is no one-shot path (as `es256::verify_one_shot` for DPoP proof keys): DPoP
//! proofs are ES256 only. The validation of public keys uses the `p384` crate. The tests
//! compare results with `p384`'s own ECDSA verification on valid, tampered and out-of-range
//! signatures, with its scalar multiplication and inversion, and with the Wycheproof
//! vectors (`tests/wycheproof.rs`).

// Word-by-word arithmetic over several arrays at once reads best indexed.
#![allow(clippy::needless_range_loop)]

use std::sync::OnceLock;

use fiat_crypto::p384_scalar_32::{
    fiat_p384_scalar_montgomery_domain_field_element as ScalarMont, fiat_p384_scalar_mul,
    fiat_p384_scalar_non_montgomery_domain_field_element as ScalarPlain,
    fiat_p384_scalar_to_montgomery,
};
use p384::{AffinePoint, NistP384};
use sha2::{Digest, Sha384};

use crate::ecdsa_curve::{self, Field};
use crate::ecdsa_shared;

/// Window width of the tables: 65 positions × 32 points of 96 bytes, ≈ 200 KB per table
/// (the generator's, and one per issuer key in use). Measured in V8 (node 20,
/// `examples/rsbench.rs`, both widths run in turn): w = 6 → 190 µs per verification, a
/// table built in 9–12 ms; w = 7 (56 positions × 64 points, ≈ 344 KB per table) → 167 µs,
/// 11–13.5 ms per table. w = 6 keeps a table well under 300 KB for some 14 % more time
/// per verification; the generic path (`jsonwebtoken` → `p384`) takes 5.0–5.6 ms.
/// Natively (x86-64): 155 µs, against 850 µs for the generic path.
const WINDOW: usize = 6;

/// The field prime p = 2^384 − 2^128 − 2^96 + 2^32 − 1, little-endian 32-bit words.
const P: [u32; 12] = [!0, 0, 0, !0, 0xffff_fffe, !0, !0, !0, !0, !0, !0, !0];
/// The group order n, little-endian 64-bit words.
const N64: [u64; 6] = [
    0xecec_196a_ccc5_2973,
    0x581a_0db2_48b0_a77a,
    0xc763_4d81_f437_2ddf,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_ffff_ffff,
];
/// p − n (the group order n is just below p), big-endian: `r + n < p` iff `r < p − n`.
const P_MINUS_N_BE: [u8; 48] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x38, 0x9c, 0xb2, 0x7e,
    0x0b, 0xc8, 0xd2, 0x1f, 0xa7, 0xe5, 0xf2, 0x4c, 0xb7, 0x4f, 0x58, 0x85, 0x13, 0x13, 0xe6, 0x96,
    0x33, 0x3a, 0xd6, 0x8c,
];
/// The group order n, big-endian.
const N_BE: [u8; 48] = [
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xc7, 0x63, 0x4d, 0x81, 0xf4, 0x37, 0x2d, 0xdf,
    0x58, 0x1a, 0x0d, 0xb2, 0x48, 0xb0, 0xa7, 0x7a, 0xec, 0xec, 0x19, 0x6a, 0xcc, 0xc5, 0x29, 0x73,
];
/// The curve coefficient b, big-endian.
const B_BE: [u8; 48] = [
    0xb3, 0x31, 0x2f, 0xa7, 0xe2, 0x3e, 0xe7, 0xe4, 0x98, 0x8e, 0x05, 0x6b, 0xe3, 0xf8, 0x2d, 0x19,
    0x18, 0x1d, 0x9c, 0x6e, 0xfe, 0x81, 0x41, 0x12, 0x03, 0x14, 0x08, 0x8f, 0x50, 0x13, 0x87, 0x5a,
    0xc6, 0x56, 0x39, 0x8d, 0x8a, 0x2e, 0xd1, 0x9d, 0x2a, 0x85, 0xc8, 0xed, 0xd3, 0xec, 0x2a, 0xef,
];

/// A field element: little-endian 32-bit words, always fully reduced (< p).
///
/// Multiplication is a schoolbook product into 64-bit column sums (each 32×32→64-bit
/// product is one Wasm `i64.mul`, split into halves so that the columns never carry: a
/// column collects at most 24 halves, < 2^37) and the NIST fast reduction for p (FIPS
/// 186-4, D.2.4) applied to those column sums: p's words are 0, 1, 2^32 − 2 and 2^32 − 1,
/// so reducing takes additions only.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fe([u32; 12]);

/// Whether the words `a` (little-endian) are at least p.
fn ge_p(a: &[u32; 12]) -> bool {
    ecdsa_shared::ge(a, &P)
}

/// The 12 signed word sums of the NIST reduction of `c = Σ c[k]·2^(32k)` (k < 24, any
/// non-negative column values below 2^40), carried into fully reduced words. The
/// reduction is a set of linear congruences (2^(32k) mod p for k ≥ 12), so it holds for
/// column sums that are not yet carried.
fn reduce(c: &[u64; 24]) -> Fe {
    let c: [i64; 24] = std::array::from_fn(|k| c[k] as i64);
    // s1 + 2·s2 + s3 + s4 + s5 + s6 + s7 − d1 − d2 − d3 (FIPS 186-4, D.2.4), collected
    // word by word. The largest, word 4, is below 9·2^40 in absolute value.
    let w = [
        c[0] + c[12] + c[20] + c[21] - c[23],
        c[1] + c[13] + c[22] + c[23] - c[12] - c[20],
        c[2] + c[14] + c[23] - c[13] - c[21],
        c[3] + c[12] + c[15] + c[20] + c[21] - c[14] - c[22] - c[23],
        c[4] + c[12] + c[13] + c[16] + c[20] + 2 * c[21] + c[22] - c[15] - 2 * c[23],
        c[5] + c[13] + c[14] + c[17] + c[21] + 2 * c[22] + c[23] - c[16],
        c[6] + c[14] + c[15] + c[18] + c[22] + 2 * c[23] - c[17],
        c[7] + c[15] + c[16] + c[19] + c[23] - c[18],
        c[8] + c[16] + c[17] + c[20] - c[19],
        c[9] + c[17] + c[18] + c[21] - c[20],
        c[10] + c[18] + c[19] + c[22] - c[21],
        c[11] + c[19] + c[20] + c[23] - c[22],
    ];
    let (mut out, mut top) = ecdsa_shared::carry(&w);
    // value = out + top·2^384 and 2^384 ≡ 2^128 + 2^96 − 2^32 + 1: fold the top back in.
    // |top| < 2^12 at first; the first fold leaves |top| ≤ 1, the second leaves 0.
    while top != 0 {
        let mut w: [i64; 12] = std::array::from_fn(|i| i64::from(out[i]));
        w[0] += top;
        w[1] -= top;
        w[3] += top;
        w[4] += top;
        (out, top) = ecdsa_shared::carry(&w);
    }
    // Now out < 2^384 < 2p.
    if ge_p(&out) {
        out = ecdsa_shared::minus(&out, &P);
    }
    Fe(out)
}

impl Fe {
    /// From big-endian bytes; `None` unless the value is below p.
    fn from_be(b: &[u8; 48]) -> Option<Fe> {
        let words = words_le(b);
        if ge_p(&words) {
            return None;
        }
        Some(Fe(words))
    }

    /// `self^(2^k)`.
    fn square_times(&self, k: usize) -> Fe {
        let mut r = *self;
        for _ in 0..k {
            r = r.square();
        }
        r
    }
}

impl Field for Fe {
    const BITS: usize = 384;

    #[inline]
    fn from_be_slice(b: &[u8]) -> Option<Fe> {
        Fe::from_be(b.try_into().ok()?)
    }

    #[inline]
    fn one() -> Fe {
        let mut w = [0; 12];
        w[0] = 1;
        Fe(w)
    }

    #[inline]
    fn zero() -> Fe {
        Fe([0; 12])
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

    /// `self^(p−2)` = 1/self (Fermat), 0 for 0. Only for building tables (one inversion per
    /// window position). p − 2 is, from the top bit down, 255 ones, a zero, 32 ones, 64
    /// zeros, 30 ones, a zero and a one: an addition chain of runs of ones `x_k =
    /// self^(2^k − 1)` takes 383 squarings and 14 multiplications, where square-and-multiply
    /// would take some 380 multiplications more.
    fn invert(&self) -> Fe {
        let x1 = *self;
        let x2 = x1.square().mul(&x1);
        let x3 = x2.square().mul(&x1);
        let x6 = x3.square_times(3).mul(&x3);
        let x12 = x6.square_times(6).mul(&x6);
        let x15 = x12.square_times(3).mul(&x3);
        let x30 = x15.square_times(15).mul(&x15);
        let x32 = x30.square_times(2).mul(&x2);
        let x60 = x30.square_times(30).mul(&x30);
        let x120 = x60.square_times(60).mul(&x60);
        let x240 = x120.square_times(120).mul(&x120);
        let x255 = x240.square_times(15).mul(&x15);
        let t = x255.square_times(1 + 32).mul(&x32);
        let t = t.square_times(64 + 30).mul(&x30);
        t.square_times(2).mul(&x1)
    }

    /// Equality of the represented values (both are fully reduced).
    #[inline]
    fn same(&self, o: &Fe) -> bool {
        self.0 == o.0
    }

    #[inline]
    fn is_zero(&self) -> bool {
        self.0 == [0; 12]
    }
}

/// Big-endian bytes as little-endian 32-bit words.
fn words_le(b: &[u8; 48]) -> [u32; 12] {
    ecdsa_shared::words_le(b)
}

type Affine = ecdsa_curve::Affine<Fe>;
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

/// A `p384` affine point in this module's representation.
fn affine_of(p: &AffinePoint) -> Option<Affine> {
    ecdsa_curve::affine_of::<Fe, NistP384>(p)
}

/// A P-384 public key given by its coordinates (as in a JWK), with its comb table, built
/// on the first verification. A key whose coordinates are not a point of the curve
/// verifies nothing.
pub struct PublicKey {
    xy: [u8; 96],
    table: OnceLock<Option<Table>>,
}

impl PublicKey {
    /// From `x ‖ y` (big-endian, 48 bytes each). Nothing is checked or computed yet.
    pub fn new(xy: [u8; 96]) -> PublicKey {
        PublicKey {
            xy,
            table: OnceLock::new(),
        }
    }

    /// The coordinates `x ‖ y`.
    pub fn coordinates(&self) -> &[u8; 96] {
        &self.xy
    }

    /// Whether the key's table is built (by its first verification).
    pub fn table_built(&self) -> bool {
        self.table.get().is_some()
    }

    fn table(&self, b: &Fe) -> Option<&Table> {
        self.table
            .get_or_init(|| {
                Table::build(ecdsa_curve::point_of::<Fe, NistP384>(&self.xy)?, WINDOW, b)
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

/// A scalar from 48 big-endian bytes, if in [1, n), as little-endian words.
fn scalar(b: &[u8]) -> Option<[u32; 12]> {
    ecdsa_shared::scalar(b, &N_BE)
}

/// `1/a mod n` for `a` in [1, n), by the binary extended Euclidean algorithm on 64-bit
/// words ([`ecdsa_shared::invert_mod`], shared with ES256). Variable time: it only ever
/// inverts `s` of a signature, which is public.
fn invert_mod_n(a: &[u32; 12]) -> Option<[u32; 12]> {
    ecdsa_shared::invert_mod(&ecdsa_shared::to64(a), &N64).map(|x| ecdsa_shared::to32(&x))
}

/// `(a·b mod n)` for `a, b < n` with fiat-crypto's Montgomery multiplication modulo n:
/// `b` is first taken to the Montgomery domain (`b·R`), so `mont(a, b·R) = a·b`.
fn mul_mod_n(a: &[u32; 12], b_mont: &ScalarMont) -> [u32; 12] {
    let mut out = ScalarMont([0; 12]);
    fiat_p384_scalar_mul(&mut out, &ScalarMont(*a), b_mont);
    out.0
}

/// Verify an ES384 signature of `msg`: `sig` is `r ‖ s` (96 bytes, as in a JWS). Like
/// `p384`'s verification, both `s` and `n − s` are accepted.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let Some((u1, u2)) = scalars(msg, sig) else {
        return false;
    };
    let Some(g) = generator() else {
        return false;
    };
    let Some(q) = key.table(&g.b) else {
        return false;
    };
    sig.get(..48)
        .is_some_and(|r| g.verifies(q, &u1, &u2, r, &N_BE, &P_MINUS_N_BE))
}

/// `(u1, u2)` of a signature `r ‖ s` over `msg`: `u1 = e·s⁻¹`, `u2 = r·s⁻¹ (mod n)`, as
/// little-endian words.
fn scalars(msg: &[u8], sig: &[u8]) -> Option<([u32; 12], [u32; 12])> {
    if sig.len() != 96 {
        return None;
    }
    let r = scalar(sig.get(..48)?)?;
    let s = scalar(sig.get(48..)?)?;
    let e = digest_mod_n(&Sha384::digest(msg).into());
    let w = invert_mod_n(&s)?;
    let mut w_mont = ScalarMont([0; 12]);
    fiat_p384_scalar_to_montgomery(&mut w_mont, &ScalarPlain(w));
    Some((mul_mod_n(&e, &w_mont), mul_mod_n(&r, &w_mont)))
}

/// e = the digest mod n, as little-endian words: the digest (384 bits, as long as n) is
/// below 2^384 < 2n, so one subtraction at most.
fn digest_mod_n(digest: &[u8; 48]) -> [u32; 12] {
    let e = ecdsa_shared::to64(&words_le(digest));
    match ecdsa_shared::sub(&e, &N64) {
        (reduced, false) => ecdsa_shared::to32(&reduced),
        (_, true) => ecdsa_shared::to32(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p384::ecdsa::signature::{Signer, Verifier};
    use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p384::elliptic_curve::point::AffineCoordinates;
    use p384::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
    use p384::EncodedPoint;
    use p384::{ProjectivePoint, Scalar};

    type Proj = ecdsa_curve::Proj<Fe>;

    /// The final check as `verify` makes it: [`ecdsa_curve::matches_r`] on the `r` of a
    /// 96-byte signature.
    fn matches_r(acc: &Proj, sig: &[u8]) -> bool {
        sig.get(..48)
            .is_some_and(|r| ecdsa_curve::matches_r(acc, r, &N_BE, &P_MINUS_N_BE))
    }

    fn xy_of(p: &AffinePoint) -> [u8; 96] {
        let enc = p.to_encoded_point(false);
        let mut out = [0u8; 96];
        out[..48].copy_from_slice(enc.x().unwrap());
        out[48..].copy_from_slice(enc.y().unwrap());
        out
    }

    fn arr(b: &[u8]) -> [u8; 48] {
        b.try_into().unwrap()
    }

    fn key(seed: u8) -> (SigningKey, PublicKey) {
        let mut bytes = [seed; 48];
        bytes[0] = 1;
        let sk = SigningKey::from_slice(&bytes).unwrap();
        let pk = PublicKey::new(xy_of(sk.verifying_key().as_affine()));
        (sk, pk)
    }

    fn reference(vk: &VerifyingKey, msg: &[u8], sig: &[u8]) -> bool {
        Signature::from_slice(sig).is_ok_and(|s| vk.verify(msg, &s).is_ok())
    }

    #[test]
    fn agrees_with_p384_on_valid_and_tampered_signatures() {
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
                // (r, n − s) is the other valid signature; p384 accepts it too.
                let mut flipped = bytes.to_vec();
                flipped[48..].copy_from_slice(&(-*sig.s()).to_bytes());
                assert!(reference(&vk, msg.as_bytes(), &flipped));
                assert!(verify(&pk, msg.as_bytes(), &flipped));
                // A flipped bit anywhere in r or s, or in the message, fails in both.
                let bit = (i as usize * 13 + seed as usize * 97) % 768;
                let mut bad = bytes.to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(!reference(&vk, msg.as_bytes(), &bad));
                assert!(!verify(&pk, msg.as_bytes(), &bad));
                let mut changed = msg.clone().into_bytes();
                let at = i as usize % changed.len();
                changed[at] ^= 0x20;
                assert!(!reference(&vk, &changed, &bytes));
                assert!(!verify(&pk, &changed, &bytes));
                // r and s swapped, and another key's signature, fail.
                let swapped = [&bytes[48..], &bytes[..48]].concat();
                assert!(!reference(&vk, msg.as_bytes(), &swapped));
                assert!(!verify(&pk, msg.as_bytes(), &swapped));
                assert!(!verify(&other_key, msg.as_bytes(), &bytes));
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
        let n_plus_one = {
            let mut t = N_BE;
            t[47] += 1;
            t
        };
        let tiny = {
            let mut t = [0u8; 48];
            t[47] = 5;
            t
        };
        for bad in [
            with(0..48, &[0; 48]),
            with(48..96, &[0; 48]),
            // r + n does not fit in 48 bytes for a real r; n itself is out of range.
            with(0..48, &N_BE),
            with(48..96, &N_BE),
            with(0..48, &n_plus_one),
            with(48..96, &n_plus_one),
            with(0..48, &[0xff; 48]),
            with(48..96, &[0xff; 48]),
            [[0u8; 48], [0u8; 48]].concat(),
            [[0xffu8; 48], [0xffu8; 48]].concat(),
            with(0..48, &tiny),
            with(48..96, &tiny),
            good[..95].to_vec(),
            good[..64].to_vec(),
            [&good[..], &[0]].concat(),
            [&good[..], &good[..]].concat(),
            Vec::new(),
        ] {
            assert!(!verify(&pk, msg, &bad));
            assert!(!reference(&vk, msg, &bad));
        }
        // Coordinates that are not a point of the curve, the all-zero "point", and
        // coordinates at or above p.
        let mut off = *pk.coordinates();
        off[95] ^= 1;
        assert!(!verify(&PublicKey::new(off), msg, &good));
        assert!(!verify(&PublicKey::new([0; 96]), msg, &good));
        assert!(!verify(&PublicKey::new([0xff; 96]), msg, &good));
        assert!(verify(&pk, msg, &good));
        // The range check itself: [1, n).
        let mut n_minus_one = N_BE;
        n_minus_one[47] -= 1;
        assert!(scalar(&N_BE).is_none() && scalar(&n_plus_one).is_none());
        assert!(scalar(&[0; 48]).is_none() && scalar(&[0xff; 48]).is_none());
        assert_eq!(scalar(&n_minus_one), Some(words_le(&n_minus_one)));
        assert_eq!(scalar(&tiny), Some(words_le(&tiny)));
    }

    /// A digest at or above n is reduced (no message is known to hash there: the digests
    /// are given directly).
    #[test]
    fn digests_are_reduced_mod_n() {
        let mut n_minus_one = N_BE;
        n_minus_one[47] -= 1;
        assert_eq!(digest_mod_n(&n_minus_one), words_le(&n_minus_one));
        assert_eq!(digest_mod_n(&N_BE), [0; 12]);
        let mut n_plus_five = N_BE;
        n_plus_five[47] += 5;
        let mut five = [0; 12];
        five[0] = 5;
        assert_eq!(digest_mod_n(&n_plus_five), five);
        // (2^384 − 1) − n, byte by byte without borrows.
        let all_ones = digest_mod_n(&[0xff; 48]);
        let mut minus = [0xffu8; 48];
        for (m, n) in minus.iter_mut().zip(N_BE) {
            *m = 0xff - n;
        }
        assert_eq!(all_ones, words_le(&minus));
    }

    /// The final check accepts `x(R) = r + n` (for `r < p − n`) as well as `x(R) = r`, on
    /// a hand-made projective X (no point is needed: the check only compares X with r·Z).
    #[test]
    fn final_check_accepts_r_plus_n_only_below_p() {
        let z = Fe::from_be(&B_BE).unwrap();
        let sig_with_r = |r: [u8; 48]| [r, [1u8; 48]].concat();
        let n = Fe::from_be(&N_BE).unwrap();
        let mut small_r = [0u8; 48];
        small_r[40..].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let r = Fe::from_be(&small_r).unwrap();
        let at = |x: Fe| Proj {
            x: x.mul(&z),
            y: Fe::one(),
            z,
        };
        assert!(matches_r(&at(r), &sig_with_r(small_r)));
        assert!(matches_r(&at(r.add(&n)), &sig_with_r(small_r)));
        assert!(!matches_r(&at(r.add(&Fe::one())), &sig_with_r(small_r)));
        // r = p − n: r + n = p ≡ 0 is no x-coordinate below p.
        let r = Fe::from_be(&P_MINUS_N_BE).unwrap();
        assert!(!matches_r(&at(r.add(&n)), &sig_with_r(P_MINUS_N_BE)));
        assert!(matches_r(&at(r), &sig_with_r(P_MINUS_N_BE)));
        // The identity (Z = 0) never matches.
        assert!(!matches_r(&Proj::identity(), &sig_with_r([0; 48])));
    }

    /// Fiat-crypto's Montgomery arithmetic (formally verified) as the reference for every
    /// field operation, on edge values and on pseudo-random ones.
    #[test]
    fn field_arithmetic_agrees_with_fiat_crypto() {
        use fiat_crypto::p384_32::{
            fiat_p384_add, fiat_p384_from_montgomery,
            fiat_p384_montgomery_domain_field_element as M, fiat_p384_mul,
            fiat_p384_non_montgomery_domain_field_element as N, fiat_p384_opp, fiat_p384_square,
            fiat_p384_sub, fiat_p384_to_montgomery,
        };
        let to_m = |a: &Fe| {
            let mut m = M([0; 12]);
            fiat_p384_to_montgomery(&mut m, &N(a.0));
            m
        };
        let from_m = |m: &M| {
            let mut n = N([0; 12]);
            fiat_p384_from_montgomery(&mut n, m);
            Fe(n.0)
        };
        let small = |k: u32| {
            let mut w = [0; 12];
            w[0] = k;
            Fe(w)
        };
        let p_minus = |k: u32| Fe::zero().sub(&small(k));
        let mut top_bit = [0; 12];
        top_bit[11] = 0x8000_0000;
        let mut values = vec![
            Fe::zero(),
            Fe::one(),
            small(2),
            p_minus(1),
            p_minus(2),
            // 2^384 − 2^128 − 1 and friends: words of p's pattern, one below or above.
            Fe([
                !0,
                !0,
                !0,
                0xffff_fffe,
                0xffff_fffe,
                !0,
                !0,
                !0,
                !0,
                !0,
                !0,
                !0,
            ]),
            Fe([0, 0, 0, 0, 0xffff_ffff, 0, 0, 0, 0, 0, 0, 0]),
            Fe(top_bit),
            Fe([!0, 0, !0, 0, !0, 0, !0, 0, !0, 0, !0, 0]),
            Fe([0, !0, 0, !0, 0, !0, 0, !0, 0, !0, 0, 0xffff_fffe]),
            Fe([
                !0,
                0,
                0,
                !0,
                0xffff_fffe,
                !0,
                !0,
                !0,
                !0,
                !0,
                !0,
                0x7fff_ffff,
            ]),
            Fe([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
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
            let mut m = M([0; 12]);
            fiat_p384_square(&mut m, &to_m(a));
            assert!(a.square().same(&from_m(&m)), "{:x?}²", a.0);
            fiat_p384_opp(&mut m, &to_m(a));
            assert!(a.neg().same(&from_m(&m)));
            for b in values.iter().step_by(7).chain(&values[..12]) {
                fiat_p384_mul(&mut m, &to_m(a), &to_m(b));
                assert!(a.mul(b).same(&from_m(&m)), "{:x?} · {:x?}", a.0, b.0);
                fiat_p384_add(&mut m, &to_m(a), &to_m(b));
                assert!(a.add(b).same(&from_m(&m)));
                fiat_p384_sub(&mut m, &to_m(a), &to_m(b));
                assert!(a.sub(b).same(&from_m(&m)));
            }
        }
        // Inversion: a · 1/a = 1, and 1/0 = 0.
        for a in &values[1..] {
            assert!(a.mul(&a.invert()).same(&Fe::one()));
        }
        assert!(Fe::zero().invert().is_zero());
        // from_be takes exactly the values below p.
        let mut p_be = [0u8; 48];
        for (i, w) in P.iter().enumerate() {
            p_be[44 - 4 * i..48 - 4 * i].copy_from_slice(&w.to_be_bytes());
        }
        assert!(Fe::from_be(&p_be).is_none());
        p_be[47] -= 1;
        assert!(Fe::from_be(&p_be).is_some_and(|f| f.same(&p_minus(1))));
    }

    /// The scalar inversion against p384's, and `s·s⁻¹ = 1`.
    #[test]
    fn scalar_inversion_agrees_with_p384() {
        use p384::elliptic_curve::ops::Invert;
        let mut k = Scalar::from(0x1234_5678u64);
        for i in 0..300u64 {
            k = k * Scalar::from(0x9e37_79b9_7f4a_7c15u64) + Scalar::from(i);
            for kk in [k, -k, Scalar::ONE, -Scalar::ONE, Scalar::from(2u64)] {
                let words = words_le(&arr(&kk.to_bytes()));
                let ours = invert_mod_n(&words).unwrap();
                let theirs = words_le(&arr(&kk.invert_vartime().unwrap().to_bytes()));
                assert_eq!(ours, theirs);
            }
        }
        assert_eq!(invert_mod_n(&[0; 12]), None);
    }

    #[test]
    fn combs_match_p384_scalar_multiplication() {
        let g = generator().unwrap();
        let (_, pk) = key(21);
        assert!(!pk.table_built());
        let q_table = pk.table(&g.b).unwrap();
        assert!(pk.table_built());
        let q = ProjectivePoint::from(
            Option::<AffinePoint>::from(AffinePoint::from_encoded_point(
                &EncodedPoint::from_bytes([&[4u8][..], pk.coordinates()].concat()).unwrap(),
            ))
            .unwrap(),
        );
        let check = |table: &Table, base: ProjectivePoint, k: Scalar| {
            let words = words_le(&arr(&k.to_bytes()));
            let got = table.mul_add(Proj::identity(), &words, &g.b).unwrap();
            let expect = (base * k).to_affine();
            let x = Fe::from_be(&arr(&expect.x())).unwrap();
            assert!(got.x.same(&x.mul(&got.z)), "k = {k:?}");
            let enc = expect.to_encoded_point(false);
            let y = Fe::from_be(&arr(enc.y().unwrap())).unwrap();
            assert!(got.y.same(&y.mul(&got.z)), "k = {k:?}");
        };
        let mut k = Scalar::from(0x1234_5678_9abc_def1u64);
        for i in 1..16u64 {
            k = k * Scalar::from(0x9e37_79b9_7f4a_7c15u64) + Scalar::from(i);
            for kk in [k, -k] {
                check(&g.table, ProjectivePoint::GENERATOR, kk);
                check(q_table, q, kk);
            }
        }
        // Digits at the extremes: 1, n − 1 (carries all the way up), ±2^(w−1), ±2^383.
        let half = Scalar::from(1u64 << (WINDOW - 1));
        let top = (0..383).fold(Scalar::ONE, |acc, _| acc + acc);
        for kk in [Scalar::ONE, -Scalar::ONE, half, -half, top, -top] {
            check(&g.table, ProjectivePoint::GENERATOR, kk);
            check(q_table, q, kk);
        }
        // k = 0 has no digit: the identity.
        let zero = g.table.mul_add(Proj::identity(), &[0; 12], &g.b).unwrap();
        assert!(zero.z.is_zero());
        // Chained as in `verify`: a·G + b·Q.
        let (a, b) = (k, -k * k);
        let acc = g
            .table
            .mul_add(Proj::identity(), &words_le(&arr(&a.to_bytes())), &g.b)
            .and_then(|acc| q_table.mul_add(acc, &words_le(&arr(&b.to_bytes())), &g.b))
            .unwrap();
        let expect = (ProjectivePoint::GENERATOR * a + q * b).to_affine();
        let x = Fe::from_be(&arr(&expect.x())).unwrap();
        assert!(acc.x.same(&x.mul(&acc.z)));
    }

    /// The table is as large as documented at [`WINDOW`].
    #[test]
    fn table_size() {
        let g = generator().unwrap();
        assert_eq!(g.table.positions, 384usize.div_ceil(WINDOW) + 1);
        assert_eq!(g.table.points.len(), g.table.positions << (WINDOW - 1));
        assert_eq!(std::mem::size_of::<Affine>(), 96);
    }
}
