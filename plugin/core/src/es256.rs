//! ES256 (ECDSA over P-256 with SHA-256) signature verification, fast on wasm32.
//!
//! The generic path (`jsonwebtoken` → `p256` 0.13) computes `u1·G + u2·Q` as two separate
//! constant-time scalar multiplications (256 doublings each, and table lookups that scan
//! all 16 entries of a window) over a field implementation that, on 32-bit targets, widens
//! to 64-bit limbs and emulates 64×64→128-bit products. In V8 that is ≈ 0.5–0.8 ms per
//! signature. Verification handles public data only (key, message, signature), so it may
//! run in variable time; this module does:
//!
//! - field arithmetic with fiat-crypto's formally verified P-256 Montgomery code with
//!   32-bit limbs (`fiat_crypto::p256_32`): its 32×32→64-bit products are single Wasm
//!   `i64.mul`s;
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
//!   `X = (r+n)·Z` when `r + n < p`): no field inversion.
//!
//! Scalars (`s⁻¹`, `u1`, `u2`) and the validation of public keys use the `p256` crate.
//! The tests compare results with `p256`'s own ECDSA verification on valid, tampered and
//! out-of-range signatures and with its scalar multiplication.

use std::sync::OnceLock;

use fiat_crypto::p256_32::{
    fiat_p256_add, fiat_p256_from_bytes, fiat_p256_from_montgomery,
    fiat_p256_montgomery_domain_field_element as Mont, fiat_p256_mul,
    fiat_p256_non_montgomery_domain_field_element as Plain, fiat_p256_opp, fiat_p256_set_one,
    fiat_p256_square, fiat_p256_sub, fiat_p256_to_montgomery,
};
use p256::elliptic_curve::ops::{Invert, Reduce};
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use p256::elliptic_curve::PrimeField;
use p256::{AffinePoint, EncodedPoint, FieldBytes, ProjectivePoint, Scalar, U256};
use sha2::{Digest, Sha256};

/// Window width of the tables: 33 positions × 128 points of 64 bytes, ≈ 270 KB per table
/// (the generator's, and one per issuer key in use). Measured in V8 (node 20, per
/// verification): w = 6 → 46 µs per scalar multiplication, w = 7 → 41 µs, w = 8 → 35 µs;
/// a table takes 5–9 ms to build.
const WINDOW: usize = 8;

/// The field prime p, big-endian.
const P_BE: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
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

/// A field element in the Montgomery domain, always fully reduced (< p): fiat's outputs are.
#[derive(Clone, Copy)]
struct Fe(Mont);

impl Fe {
    /// From big-endian bytes; `None` unless the value is below p.
    fn from_be(b: &[u8; 32]) -> Option<Fe> {
        if *b >= P_BE {
            return None;
        }
        let mut le = *b;
        le.reverse();
        let mut plain = Plain([0; 8]);
        fiat_p256_from_bytes(&mut plain.0, &le);
        let mut m = Mont([0; 8]);
        fiat_p256_to_montgomery(&mut m, &plain);
        Some(Fe(m))
    }

    fn one() -> Fe {
        let mut m = Mont([0; 8]);
        fiat_p256_set_one(&mut m);
        Fe(m)
    }

    fn zero() -> Fe {
        Fe(Mont([0; 8]))
    }

    fn mul(&self, o: &Fe) -> Fe {
        let mut m = Mont([0; 8]);
        fiat_p256_mul(&mut m, &self.0, &o.0);
        Fe(m)
    }

    fn add(&self, o: &Fe) -> Fe {
        let mut m = Mont([0; 8]);
        fiat_p256_add(&mut m, &self.0, &o.0);
        Fe(m)
    }

    fn sub(&self, o: &Fe) -> Fe {
        let mut m = Mont([0; 8]);
        fiat_p256_sub(&mut m, &self.0, &o.0);
        Fe(m)
    }

    fn neg(&self) -> Fe {
        let mut m = Mont([0; 8]);
        fiat_p256_opp(&mut m, &self.0);
        Fe(m)
    }

    fn square(&self) -> Fe {
        let mut m = Mont([0; 8]);
        fiat_p256_square(&mut m, &self.0);
        Fe(m)
    }

    /// `self^(p−2)` = 1/self (Fermat), 0 for 0. Only for building tables.
    fn invert(&self) -> Fe {
        let mut exp = P_BE;
        exp[31] -= 2; // p − 2 (p ends in 0xff)
        let mut r = Fe::one();
        for byte in exp {
            for bit in (0..8).rev() {
                r = r.square();
                if (byte >> bit) & 1 == 1 {
                    r = r.mul(self);
                }
            }
        }
        r
    }

    fn double(&self) -> Fe {
        self.add(self)
    }

    /// Equality of the represented values (both operands are fully reduced, and the
    /// Montgomery map is a bijection on [0, p)).
    fn same(&self, o: &Fe) -> bool {
        self.0 .0 == o.0 .0
    }

    fn is_zero(&self) -> bool {
        let mut plain = Plain([0; 8]);
        fiat_p256_from_montgomery(&mut plain, &self.0);
        plain.0 == [0; 8]
    }
}

/// An affine point (never the identity here).
#[derive(Clone, Copy)]
struct Affine {
    x: Fe,
    y: Fe,
}

/// A point in homogeneous projective coordinates: (X : Y : Z) = (X/Z, Y/Z); the identity
/// is (0 : 1 : 0).
#[derive(Clone, Copy)]
struct Proj {
    x: Fe,
    y: Fe,
    z: Fe,
}

impl Proj {
    fn from_affine(a: &Affine) -> Proj {
        Proj {
            x: a.x,
            y: a.y,
            z: Fe::one(),
        }
    }

    fn identity() -> Proj {
        Proj {
            x: Fe::zero(),
            y: Fe::one(),
            z: Fe::zero(),
        }
    }

    /// `self + q`, complete for every `self` (identity included) and every affine `q`
    /// (Renes–Costello–Batina 2015, algorithm 5, a = −3; the same steps as `primeorder`).
    fn add_affine(&self, q: &Affine, b: &Fe) -> Proj {
        let xx = self.x.mul(&q.x);
        let yy = self.y.mul(&q.y);
        let xy_pairs = self.x.add(&self.y).mul(&q.x.add(&q.y)).sub(&xx.add(&yy));
        let yz_pairs = q.y.mul(&self.z).add(&self.y);
        let xz_pairs = q.x.mul(&self.z).add(&self.x);
        let bz_part = xz_pairs.sub(&b.mul(&self.z));
        let bz3_part = bz_part.double().add(&bz_part);
        let yy_m_bzz3 = yy.sub(&bz3_part);
        let yy_p_bzz3 = yy.add(&bz3_part);
        let z3 = self.z.double().add(&self.z);
        let bxz_part = b.mul(&xz_pairs).sub(&z3.add(&xx));
        let bxz3_part = bxz_part.double().add(&bxz_part);
        let xx3_m_zz3 = xx.double().add(&xx).sub(&z3);
        Proj {
            x: yy_p_bzz3.mul(&xy_pairs).sub(&yz_pairs.mul(&bxz3_part)),
            y: yy_p_bzz3.mul(&yy_m_bzz3).add(&xx3_m_zz3.mul(&bxz3_part)),
            z: yy_m_bzz3.mul(&yz_pairs).add(&xy_pairs.mul(&xx3_m_zz3)),
        }
    }
}

/// Append the affine forms of `proj` to `out`, with one field inversion (Montgomery's
/// trick); `None` if one of them is the identity (Z = 0).
fn normalize_into(proj: &[Proj], out: &mut Vec<Affine>) -> Option<()> {
    // before[i] = Z0·…·Z(i−1) (1 for i = 0); acc ends as the product of all.
    let mut before = Vec::with_capacity(proj.len());
    let mut acc = Fe::one();
    for p in proj {
        if p.z.is_zero() {
            return None;
        }
        before.push(acc);
        acc = acc.mul(&p.z);
    }
    let mut inv = acc.invert();
    let mut rev = Vec::with_capacity(proj.len());
    for (p, b) in proj.iter().zip(&before).rev() {
        // inv = 1/(Z0·…·Zi), so 1/Zi = inv·(Z0·…·Z(i−1)).
        let zinv = inv.mul(b);
        inv = inv.mul(&p.z);
        rev.push(Affine {
            x: p.x.mul(&zinv),
            y: p.y.mul(&zinv),
        });
    }
    out.extend(rev.into_iter().rev());
    Some(())
}

/// Fixed-base comb of a point P: `points[i·half + j − 1] = j·2^(w·i)·P`.
struct Table {
    window: usize,
    half: usize,
    positions: usize,
    points: Vec<Affine>,
}

impl Table {
    /// The comb of the affine point `base` (a point of the curve other than the identity):
    /// per window position, `half − 1` mixed additions, one batch normalization (one
    /// inversion) and one doubling for the next position's base. `None` if a point came out
    /// as the identity, which no point of prime order n does.
    fn build(base: Affine, window: usize, b: &Fe) -> Option<Table> {
        let half = 1usize << (window - 1);
        let positions = 256usize.div_ceil(window) + 1;
        let mut points = Vec::with_capacity(positions * half);
        let mut base = base;
        let mut proj = Vec::with_capacity(half);
        for _ in 0..positions {
            proj.clear();
            let mut e = Proj::from_affine(&base);
            proj.push(e);
            for _ in 1..half {
                e = e.add_affine(&base, b);
                proj.push(e);
            }
            let start = points.len();
            normalize_into(&proj, &mut points)?;
            // The last point is half·base = 2^(w−1)·base: doubled, the next position's base
            // (the complete formula adds a point to itself correctly).
            let top = *points.get(start + half - 1)?;
            let mut next = Vec::with_capacity(1);
            normalize_into(&[Proj::from_affine(&top).add_affine(&top, b)], &mut next)?;
            base = *next.first()?;
        }
        Some(Table {
            window,
            half,
            positions,
            points,
        })
    }

    /// `acc + k·P` (`None` cannot happen: every digit has its table entry).
    fn mul_add(&self, acc: Proj, k: &Scalar, b: &Fe) -> Option<Proj> {
        let be = k.to_bytes();
        // Little-endian, with room for the reads past the top byte.
        let mut le = [0u8; 36];
        for (dst, src) in le.iter_mut().zip(be.iter().rev()) {
            *dst = *src;
        }
        let mask = (1u32 << self.window) - 1;
        let half = self.half as u32;
        let mut carry = 0u32;
        let mut acc = acc;
        for i in 0..self.positions {
            let bit = i * self.window;
            let at = bit / 8;
            let byte = |n: usize| u32::from(le.get(n).copied().unwrap_or(0));
            let word = byte(at) | byte(at + 1) << 8 | byte(at + 2) << 16;
            let v = ((word >> (bit % 8)) & mask) + carry;
            // Signed digit in [−2^(w−1), 2^(w−1)).
            let (digit, neg) = if v >= half {
                carry = 1;
                ((1u32 << self.window) - v, true)
            } else {
                carry = 0;
                (v, false)
            };
            if digit != 0 {
                let p = self.points.get(i * self.half + digit as usize - 1)?;
                acc = if neg {
                    acc.add_affine(
                        &Affine {
                            x: p.x,
                            y: p.y.neg(),
                        },
                        b,
                    )
                } else {
                    acc.add_affine(p, b)
                };
            }
        }
        Some(acc)
    }
}

struct Generator {
    table: Table,
    b: Fe,
}

/// The generator's table and the curve's b, built on first use (once per VM).
fn generator() -> Option<&'static Generator> {
    static G: OnceLock<Option<Generator>> = OnceLock::new();
    G.get_or_init(|| {
        let b = Fe::from_be(&B_BE)?;
        let g = affine_of(&AffinePoint::GENERATOR)?;
        Some(Generator {
            table: Table::build(g, WINDOW, &b)?,
            b,
        })
    })
    .as_ref()
}

/// Build the generator's table now if it is not built yet (it is otherwise built by the
/// first verification).
pub fn prepare() {
    let _ = generator();
}

/// A `p256` affine point in this module's representation.
fn affine_of(p: &AffinePoint) -> Option<Affine> {
    let enc = p.to_encoded_point(false);
    let x: [u8; 32] = enc.x()?[..].try_into().ok()?;
    let y: [u8; 32] = enc.y()?[..].try_into().ok()?;
    Some(Affine {
        x: Fe::from_be(&x)?,
        y: Fe::from_be(&y)?,
    })
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
                let mut sec1 = [0u8; 65];
                sec1[0] = 0x04;
                sec1[1..].copy_from_slice(&self.xy);
                // p256 checks that the point is on the curve.
                let e = EncodedPoint::from_bytes(sec1).ok()?;
                let q = Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&e))?;
                Table::build(affine_of(&q)?, WINDOW, b)
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

/// A scalar from 32 big-endian bytes, if in [1, n).
fn scalar(b: &[u8]) -> Option<Scalar> {
    let bytes: [u8; 32] = b.try_into().ok()?;
    if bytes >= N_BE || bytes == [0; 32] {
        return None;
    }
    Option::from(Scalar::from_repr(FieldBytes::from(bytes)))
}

/// Verify an ES256 signature of `msg`: `sig` is `r ‖ s` (64 bytes, as in a JWS). Like
/// `p256`'s verification, both `s` and `n − s` are accepted.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let Some((_, u1, u2)) = scalars(msg, sig) else {
        return false;
    };
    let Some(g) = generator() else {
        return false;
    };
    let Some(q) = key.table(&g.b) else {
        return false;
    };
    let Some(acc) = g
        .table
        .mul_add(Proj::identity(), &u1, &g.b)
        .and_then(|acc| q.mul_add(acc, &u2, &g.b))
    else {
        return false;
    };
    matches_r(&acc, sig)
}

/// Verify an ES256 signature by a key used once (a DPoP proof's `jwk`, `x ‖ y`): no comb
/// table is built for the key (that costs 5–9 ms and ≈ 270 KB, worth it only for an
/// issuer key that verifies many tokens). `u1·G` uses the generator's table, `u2·Q`
/// `p256`'s constant-time scalar multiplication, which dominates: measured in node 20 on
/// wasm32-wasip1 (release), 1.1 ms per verification against 1.6 ms for the generic path
/// (`jsonwebtoken`), 14.5 ms for a fresh table and 0.15 ms with a built one. A point not
/// on the curve verifies nothing.
pub fn verify_one_shot(xy: &[u8; 64], msg: &[u8], sig: &[u8]) -> bool {
    let Some((_, u1, u2)) = scalars(msg, sig) else {
        return false;
    };
    let Some(g) = generator() else {
        return false;
    };
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1[1..].copy_from_slice(xy);
    let Ok(e) = EncodedPoint::from_bytes(sec1) else {
        return false;
    };
    let Some(q) = Option::<AffinePoint>::from(AffinePoint::from_encoded_point(&e)) else {
        return false;
    };
    // u2 ≠ 0 and Q has prime order: u2·Q is never the identity (`affine_of` refuses it).
    let u2q = (ProjectivePoint::from(q) * u2).to_affine();
    let Some(u2q) = affine_of(&u2q) else {
        return false;
    };
    let Some(acc) = g.table.mul_add(Proj::identity(), &u1, &g.b) else {
        return false;
    };
    matches_r(&acc.add_affine(&u2q, &g.b), sig)
}

/// `(r, u1, u2)` of a signature `r ‖ s` over `msg`: `u1 = e·s⁻¹`, `u2 = r·s⁻¹`.
fn scalars(msg: &[u8], sig: &[u8]) -> Option<(Scalar, Scalar, Scalar)> {
    if sig.len() != 64 {
        return None;
    }
    let r = scalar(&sig[..32])?;
    let s = scalar(&sig[32..])?;
    let e = <Scalar as Reduce<U256>>::reduce_bytes(&Sha256::digest(msg));
    let w = Option::<Scalar>::from(s.invert_vartime())?;
    Some((r, e * w, r * w))
}

/// Whether `x(acc) mod n = r`.
fn matches_r(acc: &Proj, sig: &[u8]) -> bool {
    if acc.z.is_zero() {
        return false;
    }
    // x(R) = X/Z; accept iff x(R) mod n = r, i.e. x(R) = r or x(R) = r + n (< p).
    let mut r_be = [0u8; 32];
    r_be.copy_from_slice(&sig[..32]);
    let Some(r_fe) = Fe::from_be(&r_be) else {
        return false;
    };
    if acc.x.same(&r_fe.mul(&acc.z)) {
        return true;
    }
    if r_be < P_MINUS_N_BE {
        if let Some(n_fe) = Fe::from_be(&N_BE) {
            return acc.x.same(&r_fe.add(&n_fe).mul(&acc.z));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::{Signer, Verifier};
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p256::elliptic_curve::point::AffineCoordinates;

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
            let got = table.mul_add(Proj::identity(), &k, &g.b).unwrap();
            let expect = (base * k).to_affine();
            let x = Fe::from_be(&expect.x().into()).unwrap();
            assert!(got.x.same(&x.mul(&got.z)), "k = {k:?}");
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
