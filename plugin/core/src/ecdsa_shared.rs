//! What the ES256 and ES384 verifiers ([`crate::es256`], [`crate::es384`]) share, generic
//! over the size of the curve: the inversion of `s` modulo the group order (binary extended
//! Euclid on 64-bit words), the signed-digit recoding of a scalar for the fixed-base combs,
//! and the word-level arithmetic of their field elements (little-endian 32-bit words,
//! reduced modulo p: the schoolbook products into 64-bit column sums, addition and
//! subtraction modulo p, conversions). What is proper to a curve, the NIST reduction of the
//! column sums and the inversion's addition chain, stays in the curve's module; the point
//! arithmetic over either field is in `ecdsa_curve`. All of it runs in variable time: it
//! only ever sees public data (a signature's `s`, the `u1`, `u2` derived from a public
//! signature and message, public keys).

// Word-by-word arithmetic over several arrays at once reads best indexed.
#![allow(clippy::needless_range_loop)]

/// `a − b` and whether it borrowed.
pub(crate) fn sub<const L: usize>(a: &[u64; L], b: &[u64; L]) -> ([u64; L], bool) {
    let mut out = [0u64; L];
    let mut borrow = false;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let (d, b1) = x.overflowing_sub(y);
        let (d, b2) = d.overflowing_sub(u64::from(borrow));
        *o = d;
        borrow = b1 || b2;
    }
    (out, borrow)
}

/// `a + b` and the carry out.
fn add<const L: usize>(a: &[u64; L], b: &[u64; L]) -> ([u64; L], bool) {
    let mut out = [0u64; L];
    let mut carry = false;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let (d, c1) = x.overflowing_add(y);
        let (d, c2) = d.overflowing_add(u64::from(carry));
        *o = d;
        carry = c1 || c2;
    }
    (out, carry)
}

/// `a / 2` with `top` as the bit shifted in at the top.
fn half<const L: usize>(a: &[u64; L], top: bool) -> [u64; L] {
    std::array::from_fn(|i| {
        let next = match a.get(i + 1) {
            Some(w) => w & 1,
            None => u64::from(top),
        };
        a[i] >> 1 | next << 63
    })
}

/// `x / 2 mod n` for `x < n` (n odd).
fn half_mod<const L: usize>(x: &[u64; L], n: &[u64; L]) -> [u64; L] {
    if x[0] & 1 == 0 {
        half(x, false)
    } else {
        let (sum, carry) = add(x, n);
        half(&sum, carry)
    }
}

/// `x − y mod n` for `x, y < n`.
fn sub_mod<const L: usize>(x: &[u64; L], y: &[u64; L], n: &[u64; L]) -> [u64; L] {
    let (d, borrow) = sub(x, y);
    if borrow {
        add(&d, n).0
    } else {
        d
    }
}

/// `1/a mod n` for `a` in [1, n) and an odd prime `n` (little-endian 64-bit words), by the
/// binary extended Euclidean algorithm: additions, subtractions and shifts of 64-bit words
/// only, which are single Wasm instructions (the `p256`/`p384` crates' `invert_vartime`
/// run their 64-bit-limb arithmetic on emulated 128-bit products: ≈ 20 µs in V8 for
/// P-256). Variable time: it only ever inverts `s` of a signature, which is public.
/// Invariants: `x1·a ≡ u` and `x2·a ≡ v (mod n)`, `gcd(u, v) = 1`. `None` for 0 (and for
/// an `a` sharing a factor with `n`, which a prime `n` has not).
pub(crate) fn invert_mod<const L: usize>(a: &[u64; L], n: &[u64; L]) -> Option<[u64; L]> {
    let one: [u64; L] = std::array::from_fn(|i| u64::from(i == 0));
    let (mut u, mut v) = (*a, *n);
    if u == [0; L] {
        return None;
    }
    let (mut x1, mut x2) = (one, [0u64; L]);
    // Every round halves u or v at least once: at most 2·64·L rounds (bounded anyway).
    for _ in 0..4 * 64 * L {
        if u == one {
            return Some(x1);
        }
        if v == one {
            return Some(x2);
        }
        while u[0] & 1 == 0 {
            u = half(&u, false);
            x1 = half_mod(&x1, n);
        }
        while v[0] & 1 == 0 {
            v = half(&v, false);
            x2 = half_mod(&x2, n);
        }
        let (d, borrow) = sub(&u, &v);
        if !borrow {
            if d == [0; L] {
                // u = v = gcd > 1: cannot happen for a prime n.
                return None;
            }
            u = d;
            x1 = sub_mod(&x1, &x2, n);
        } else {
            v = sub(&v, &u).0;
            x2 = sub_mod(&x2, &x1, n);
        }
    }
    None
}

/// The signed radix-2^w digits of a scalar `k` (little-endian 32-bit words), lowest first:
/// `(i, |d_i|, d_i < 0)` for `i` in `0..positions`, with `d_i` in [−2^(w−1), 2^(w−1)) and
/// `k = Σ d_i·2^(w·i)` as long as `positions·w` exceeds the bit length of `k` by at least
/// one bit (the last digit takes the final carry). A comb looks `|d_i|` up among
/// `j·2^(w·i)·P` (j = 1..2^(w−1)) and negates the point for a negative digit. `window` is
/// a constant of the caller, in 2..=16.
pub(crate) fn signed_digits(
    k: &[u32],
    window: usize,
    positions: usize,
) -> impl Iterator<Item = (usize, u32, bool)> + '_ {
    let mask = (1u32 << window) - 1;
    let half = 1u32 << (window - 1);
    let mut carry = 0u32;
    (0..positions).map(move |i| {
        let bit = i * window;
        // The two words the digit's bits lie in (past the top: zero).
        let word = |n: usize| u64::from(k.get(n).copied().unwrap_or(0));
        let pair = word(bit / 32) | word(bit / 32 + 1) << 32;
        let v = ((pair >> (bit % 32)) as u32 & mask) + carry;
        if v >= half {
            // v − 2^w, negative (or zero for v = 2^w), and a carry into the next digit.
            carry = 1;
            (i, (1u32 << window) - v, true)
        } else {
            carry = 0;
            (i, v, false)
        }
    })
}

const LOW32: u64 = 0xffff_ffff;

/// Whether the words `a` (little-endian) are at least `p`.
#[inline]
pub(crate) fn ge<const W: usize>(a: &[u32; W], p: &[u32; W]) -> bool {
    for i in (0..W).rev() {
        if a[i] != p[i] {
            return a[i] > p[i];
        }
    }
    true
}

/// `a − p` (wrapping), for `p ≤ a < 2^(32·W)`.
#[inline]
pub(crate) fn minus<const W: usize>(a: &[u32; W], p: &[u32; W]) -> [u32; W] {
    let mut out = [0u32; W];
    let mut borrow = 0i64;
    for i in 0..W {
        let d = i64::from(a[i]) - i64::from(p[i]) + borrow;
        out[i] = d as u32;
        borrow = d >> 32;
    }
    out
}

/// Signed word sums carried into 32-bit words, and the signed carry out of the top.
#[inline]
pub(crate) fn carry<const W: usize>(w: &[i64; W]) -> ([u32; W], i64) {
    let mut out = [0u32; W];
    let mut t = 0i64;
    for i in 0..W {
        t += w[i];
        out[i] = t as u32;
        t >>= 32;
    }
    (out, t)
}

/// The schoolbook product `a·b` as `C = 2·W` column sums: each 32×32→64-bit product is
/// one Wasm `i64.mul`, split into halves so that the columns never carry (a column
/// collects at most `2·W` halves, < 2^37 for W ≤ 12). The curve's NIST reduction takes
/// the columns as they are.
#[inline]
pub(crate) fn mul_columns<const W: usize, const C: usize>(a: &[u32; W], b: &[u32; W]) -> [u64; C] {
    let mut col = [0u64; C];
    for i in 0..W {
        for j in 0..W {
            let p = u64::from(a[i]) * u64::from(b[j]);
            col[i + j] += p & LOW32;
            col[i + j + 1] += p >> 32;
        }
    }
    col
}

/// `a²` as `C = 2·W` column sums, as [`mul_columns`]: the cross products once, doubled,
/// then the squares.
#[inline]
pub(crate) fn square_columns<const W: usize, const C: usize>(a: &[u32; W]) -> [u64; C] {
    let mut col = [0u64; C];
    for i in 0..W {
        for j in i + 1..W {
            let p = u64::from(a[i]) * u64::from(a[j]);
            col[i + j] += p & LOW32;
            col[i + j + 1] += p >> 32;
        }
    }
    for c in col.iter_mut() {
        *c <<= 1;
    }
    for i in 0..W {
        let p = u64::from(a[i]) * u64::from(a[i]);
        col[2 * i] += p & LOW32;
        col[2 * i + 1] += p >> 32;
    }
    col
}

/// `a + b mod p` for `a, b < p`.
#[inline]
pub(crate) fn add_mod_p<const W: usize>(a: &[u32; W], b: &[u32; W], p: &[u32; W]) -> [u32; W] {
    let mut out = [0u32; W];
    let mut t = 0u64;
    for i in 0..W {
        t += u64::from(a[i]) + u64::from(b[i]);
        out[i] = t as u32;
        t >>= 32;
    }
    // The sum is below 2p: subtract p once if it reached p.
    if t != 0 || ge(&out, p) {
        out = minus(&out, p);
    }
    out
}

/// `a − b mod p` for `a, b < p`.
#[inline]
pub(crate) fn sub_mod_p<const W: usize>(a: &[u32; W], b: &[u32; W], p: &[u32; W]) -> [u32; W] {
    let mut out = [0u32; W];
    let mut t = 0i64;
    for i in 0..W {
        t += i64::from(a[i]) - i64::from(b[i]);
        out[i] = t as u32;
        t >>= 32;
    }
    if t < 0 {
        // Below zero: add p back (wrapping past 2^(32·W)).
        let mut c = 0u64;
        for i in 0..W {
            c += u64::from(out[i]) + u64::from(p[i]);
            out[i] = c as u32;
            c >>= 32;
        }
    }
    out
}

/// Big-endian bytes (`B = 4·W` of them) as little-endian 32-bit words.
pub(crate) fn words_le<const B: usize, const W: usize>(b: &[u8; B]) -> [u32; W] {
    std::array::from_fn(|i| {
        let at = B - 4 - 4 * i;
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    })
}

/// 32-bit words as 64-bit words (both little-endian; `W = 2·L`).
pub(crate) fn to64<const W: usize, const L: usize>(a: &[u32; W]) -> [u64; L] {
    std::array::from_fn(|i| u64::from(a[2 * i]) | u64::from(a[2 * i + 1]) << 32)
}

/// 64-bit words as 32-bit words (both little-endian; `W = 2·L`).
pub(crate) fn to32<const L: usize, const W: usize>(a: &[u64; L]) -> [u32; W] {
    std::array::from_fn(|i| (a[i / 2] >> (32 * (i % 2))) as u32)
}

/// A scalar from `B` big-endian bytes, if in [1, n) (`n_be`, big-endian), as `W`
/// little-endian words.
pub(crate) fn scalar<const B: usize, const W: usize>(b: &[u8], n_be: &[u8; B]) -> Option<[u32; W]> {
    let bytes: [u8; B] = b.try_into().ok()?;
    if bytes >= *n_be || bytes == [0; B] {
        return None;
    }
    Some(words_le(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digits of pseudo-random and edge scalars add back up to the scalar (checked on
    /// 120-bit values, for every window width the verifiers may use).
    #[test]
    fn signed_digits_add_up_to_the_scalar() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let top = (1u128 << 120) - 1;
        let mut values = vec![0u128, 1, 2, top, top - 1, 1 << 119, top / 3, top / 5];
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let hi = x;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push((u128::from(hi) << 64 | u128::from(x)) >> 8);
        }
        for w in 2..=9usize {
            let positions = 120usize.div_ceil(w) + 1;
            for &v in &values {
                let words: [u32; 4] = std::array::from_fn(|i| (v >> (32 * i)) as u32);
                let mut sum = 0i128;
                let mut count = 0;
                for (i, d, neg) in signed_digits(&words, w, positions) {
                    assert_eq!(i, count);
                    // In [−2^(w−1), 2^(w−1)): a table entry j = 1..2^(w−1) for every one.
                    assert!(
                        d < 1 << (w - 1) || (neg && d == 1 << (w - 1)),
                        "w = {w}: {d}"
                    );
                    let term = i128::from(d) << (w * i);
                    sum += if neg { -term } else { term };
                    count += 1;
                }
                assert_eq!(count, positions);
                assert_eq!(sum, v as i128, "w = {w}");
            }
        }
    }

    #[test]
    fn inversion_modulo_a_small_prime() {
        // n = 2^61 − 1 (prime), in two words: every a·a⁻¹ ≡ 1.
        let n = [(1u64 << 61) - 1, 0];
        for a in [1u64, 2, 3, 12345, (1 << 61) - 2, 0x1234_5678_9abc] {
            let inv = invert_mod(&[a, 0], &n).unwrap();
            assert_eq!(inv[1], 0);
            let prod = u128::from(a) * u128::from(inv[0]) % u128::from(n[0]);
            assert_eq!(prod, 1, "a = {a}");
        }
        assert_eq!(invert_mod(&[0, 0], &n), None);
    }
}
