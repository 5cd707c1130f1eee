//! The curve arithmetic the ES256 and ES384 verifiers ([`crate::es256`], [`crate::es384`])
//! share, written once over their field elements ([`Field`]): points in affine and
//! homogeneous projective coordinates, the complete addition formulas for a = −3, the batch
//! normalisation, the fixed-base combs and the final check `x(R) ≡ r (mod n)`. Both curves
//! have a = −3 and a group order n just below p; only the field arithmetic (word count,
//! NIST reduction), the constants and the scalar code modulo n differ, and stay in the
//! curve's module. Everything here is variable time: it only ever sees public data.
//!
//! Every function on the hot path (the mixed addition of the combs, and the field
//! operations it calls, which each curve marks `#[inline]`) is generic and monomorphised
//! per curve, so each curve's code is what the two specialised copies were.

// Word-by-word arithmetic over several arrays at once reads best indexed.
#![allow(clippy::needless_range_loop)]

use p256::elliptic_curve::sec1::{EncodedPoint, FromEncodedPoint, ModulusSize, ToEncodedPoint};
use p256::elliptic_curve::{AffinePoint, CurveArithmetic, FieldBytesSize};

use crate::ecdsa_shared;

/// An element of a curve's base field, always fully reduced (< p), with the operations
/// the point formulas use.
pub(crate) trait Field: Copy {
    /// The bit length of p (and of the group order n, just below p).
    const BITS: usize;

    fn zero() -> Self;

    fn one() -> Self;

    /// From big-endian bytes (exactly the field's length); `None` unless the value is
    /// below p.
    fn from_be_slice(b: &[u8]) -> Option<Self>;

    fn add(&self, o: &Self) -> Self;

    fn sub(&self, o: &Self) -> Self;

    fn mul(&self, o: &Self) -> Self;

    fn square(&self) -> Self;

    /// `self^(p−2)` = 1/self (Fermat), 0 for 0. Only for building tables.
    fn invert(&self) -> Self;

    /// Equality of the represented values (both are fully reduced).
    fn same(&self, o: &Self) -> bool;

    fn is_zero(&self) -> bool;

    #[inline]
    fn neg(&self) -> Self {
        Self::zero().sub(self)
    }

    #[inline]
    fn double(&self) -> Self {
        self.add(self)
    }
}

/// An affine point (never the identity here).
#[derive(Clone, Copy)]
pub(crate) struct Affine<F> {
    pub(crate) x: F,
    pub(crate) y: F,
}

impl<F: Field> Affine<F> {
    /// From big-endian coordinates (each exactly the field's length, below p). Whether the
    /// point is on the curve is the caller's check (the `p256`/`p384` crates').
    pub(crate) fn from_be(x: &[u8], y: &[u8]) -> Option<Affine<F>> {
        Some(Affine {
            x: F::from_be_slice(x)?,
            y: F::from_be_slice(y)?,
        })
    }
}

/// A point of the curve `C` (its `p256`/`p384` affine point) in the representation here.
pub(crate) fn affine_of<F: Field, C>(p: &AffinePoint<C>) -> Option<Affine<F>>
where
    C: CurveArithmetic,
    FieldBytesSize<C>: ModulusSize,
    AffinePoint<C>: ToEncodedPoint<C>,
{
    let enc = p.to_encoded_point(false);
    Affine::from_be(enc.x()?, enc.y()?)
}

/// The point of coordinates `xy` = `x ‖ y` (big-endian, as in a JWK) if it is a point of
/// the curve `C`: the curve's crate (`p256`, `p384`) checks that it is on the curve.
pub(crate) fn point_of<F: Field, C>(xy: &[u8]) -> Option<Affine<F>>
where
    C: CurveArithmetic,
    FieldBytesSize<C>: ModulusSize,
    AffinePoint<C>: FromEncodedPoint<C> + ToEncodedPoint<C>,
{
    // The uncompressed SEC1 encoding 04 ‖ x ‖ y, for coordinates of up to 66 bytes.
    let mut sec1 = [0u8; 1 + 2 * 66];
    let len = 1 + xy.len();
    sec1[0] = 0x04;
    sec1.get_mut(1..len)?.copy_from_slice(xy);
    let e = EncodedPoint::<C>::from_bytes(sec1.get(..len)?).ok()?;
    let q = Option::<AffinePoint<C>>::from(AffinePoint::<C>::from_encoded_point(&e))?;
    affine_of::<F, C>(&q)
}

/// A point in homogeneous projective coordinates: (X : Y : Z) = (X/Z, Y/Z); the identity
/// is (0 : 1 : 0).
#[derive(Clone, Copy)]
pub(crate) struct Proj<F> {
    pub(crate) x: F,
    pub(crate) y: F,
    pub(crate) z: F,
}

impl<F: Field> Proj<F> {
    #[inline]
    pub(crate) fn from_affine(a: &Affine<F>) -> Proj<F> {
        Proj {
            x: a.x,
            y: a.y,
            z: F::one(),
        }
    }

    pub(crate) fn identity() -> Proj<F> {
        Proj {
            x: F::zero(),
            y: F::one(),
            z: F::zero(),
        }
    }

    /// `self + q` for any two points, the identity included (Renes–Costello–Batina 2015,
    /// algorithm 4, a = −3).
    pub(crate) fn add(&self, q: &Proj<F>, b: &F) -> Proj<F> {
        let xx = self.x.mul(&q.x);
        let yy = self.y.mul(&q.y);
        let zz = self.z.mul(&q.z);
        let xy_pairs = self.x.add(&self.y).mul(&q.x.add(&q.y)).sub(&xx.add(&yy));
        let yz_pairs = self.y.add(&self.z).mul(&q.y.add(&q.z)).sub(&yy.add(&zz));
        let xz_pairs = self.x.add(&self.z).mul(&q.x.add(&q.z)).sub(&xx.add(&zz));
        let bzz_part = xz_pairs.sub(&b.mul(&zz));
        let bzz3_part = bzz_part.double().add(&bzz_part);
        let yy_m_bzz3 = yy.sub(&bzz3_part);
        let yy_p_bzz3 = yy.add(&bzz3_part);
        let zz3 = zz.double().add(&zz);
        let bxz_part = b.mul(&xz_pairs).sub(&zz3.add(&xx));
        let bxz3_part = bxz_part.double().add(&bxz_part);
        let xx3_m_zz3 = xx.double().add(&xx).sub(&zz3);
        Proj {
            x: yy_p_bzz3.mul(&xy_pairs).sub(&yz_pairs.mul(&bxz3_part)),
            y: yy_p_bzz3.mul(&yy_m_bzz3).add(&xx3_m_zz3.mul(&bxz3_part)),
            z: yy_m_bzz3.mul(&yz_pairs).add(&xy_pairs.mul(&xx3_m_zz3)),
        }
    }

    /// `2·self`, for every point (Renes–Costello–Batina 2015, algorithm 6, a = −3).
    pub(crate) fn double(&self, b: &F) -> Proj<F> {
        let xx = self.x.square();
        let yy = self.y.square();
        let zz = self.z.square();
        let xy2 = self.x.mul(&self.y).double();
        let xz2 = self.x.mul(&self.z).double();
        let bzz_part = b.mul(&zz).sub(&xz2);
        let bzz3_part = bzz_part.double().add(&bzz_part);
        let yy_m_bzz3 = yy.sub(&bzz3_part);
        let yy_p_bzz3 = yy.add(&bzz3_part);
        let zz3 = zz.double().add(&zz);
        let bxz2_part = b.mul(&xz2).sub(&zz3.add(&xx));
        let bxz6_part = bxz2_part.double().add(&bxz2_part);
        let xx3_m_zz3 = xx.double().add(&xx).sub(&zz3);
        let yz2 = self.y.mul(&self.z).double();
        Proj {
            x: yy_m_bzz3.mul(&xy2).sub(&bxz6_part.mul(&yz2)),
            y: yy_p_bzz3.mul(&yy_m_bzz3).add(&xx3_m_zz3.mul(&bxz6_part)),
            z: yz2.mul(&yy).double().double(),
        }
    }

    /// `k·q` for a point used once (no comb table: ES256's DPoP proof keys): a 4-bit fixed
    /// window over the 15 multiples `q, 2q, …, 15q`, `BITS − 4` doublings and at most
    /// `BITS / 4` additions (`k` in little-endian 32-bit words).
    pub(crate) fn mul_once(q: &Affine<F>, k: &[u32], b: &F) -> Proj<F> {
        let mut multiples = [Proj::from_affine(q); 15];
        multiples[1] = multiples[0].double(b);
        for j in 2..15 {
            multiples[j] = multiples[j - 1].add_affine(q, b);
        }
        let mut acc = Proj::identity();
        let mut started = false;
        for word in k.iter().rev() {
            for shift in (0..8).rev() {
                if started {
                    for _ in 0..4 {
                        acc = acc.double(b);
                    }
                }
                let digit = (word >> (4 * shift)) & 0xf;
                if digit != 0 {
                    acc = acc.add(&multiples[digit as usize - 1], b);
                    started = true;
                }
            }
        }
        acc
    }

    /// `self + q`, complete for every `self` (identity included) and every affine `q`
    /// (Renes–Costello–Batina 2015, algorithm 5, a = −3; the same steps as `primeorder`).
    #[inline]
    pub(crate) fn add_affine(&self, q: &Affine<F>, b: &F) -> Proj<F> {
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
fn normalize_into<F: Field>(proj: &[Proj<F>], out: &mut Vec<Affine<F>>) -> Option<()> {
    // before[i] = Z0·…·Z(i−1) (1 for i = 0); acc ends as the product of all.
    let mut before = Vec::with_capacity(proj.len());
    let mut acc = F::one();
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
pub(crate) struct Table<F> {
    window: usize,
    half: usize,
    pub(crate) positions: usize,
    pub(crate) points: Vec<Affine<F>>,
}

impl<F: Field> Table<F> {
    /// The comb of the affine point `base` (a point of the curve other than the identity):
    /// per window position, `half − 1` mixed additions, one batch normalization (one
    /// inversion) and one doubling for the next position's base. `None` if a point came out
    /// as the identity, which no point of prime order n does.
    pub(crate) fn build(base: Affine<F>, window: usize, b: &F) -> Option<Table<F>> {
        let half = 1usize << (window - 1);
        // One position more than the BITS bits need: the last digit takes the final carry.
        let positions = F::BITS.div_ceil(window) + 1;
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

    /// `acc + k·P` for a scalar `k < n` in little-endian words (`None` cannot happen:
    /// every digit has its table entry).
    pub(crate) fn mul_add(&self, acc: Proj<F>, k: &[u32], b: &F) -> Option<Proj<F>> {
        let mut acc = acc;
        for (i, digit, neg) in ecdsa_shared::signed_digits(k, self.window, self.positions) {
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

/// A curve's generator table and its b, built once per VM (in a `static` of the curve's
/// module).
pub(crate) struct Generator<F> {
    pub(crate) table: Table<F>,
    pub(crate) b: F,
}

impl<F: Field> Generator<F> {
    /// From the curve's b and generator (big-endian), with a comb of width `window`.
    pub(crate) fn build(b_be: &[u8], g: Option<Affine<F>>, window: usize) -> Option<Self> {
        let b = F::from_be_slice(b_be)?;
        Some(Generator {
            table: Table::build(g?, window, &b)?,
            b,
        })
    }

    /// Whether `u1·G + u2·Q` (Q's comb `q`) has an x-coordinate ≡ r (mod n) ([`matches_r`]).
    pub(crate) fn verifies(
        &self,
        q: &Table<F>,
        u1: &[u32],
        u2: &[u32],
        r_be: &[u8],
        n_be: &[u8],
        p_minus_n_be: &[u8],
    ) -> bool {
        let Some(acc) = self
            .table
            .mul_add(Proj::identity(), u1, &self.b)
            .and_then(|acc| q.mul_add(acc, u2, &self.b))
        else {
            return false;
        };
        matches_r(&acc, r_be, n_be, p_minus_n_be)
    }
}

/// Whether `x(acc) mod n = r`, for `r` big-endian (the field's length), `n` and `p − n`
/// big-endian (the group order n is just below p: `r + n < p` iff `r < p − n`). In
/// projective coordinates (`X = r·Z`, or `X = (r+n)·Z`): no field inversion.
pub(crate) fn matches_r<F: Field>(
    acc: &Proj<F>,
    r_be: &[u8],
    n_be: &[u8],
    p_minus_n_be: &[u8],
) -> bool {
    if acc.z.is_zero() {
        return false;
    }
    // x(R) = X/Z; accept iff x(R) mod n = r, i.e. x(R) = r or x(R) = r + n (< p).
    let Some(r_fe) = F::from_be_slice(r_be) else {
        return false;
    };
    if acc.x.same(&r_fe.mul(&acc.z)) {
        return true;
    }
    // Equal lengths: the slices compare as the numbers they spell.
    if r_be.len() == p_minus_n_be.len() && r_be < p_minus_n_be {
        if let Some(n_fe) = F::from_be_slice(n_be) {
            return acc.x.same(&r_fe.add(&n_fe).mul(&acc.z));
        }
    }
    false
}
