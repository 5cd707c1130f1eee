//! What the ES256 and ES384 verifiers ([`crate::es256`], [`crate::es384`]) share, generic
//! over the size of the curve: the inversion of `s` modulo the group order (binary extended
//! Euclid on 64-bit words) and the signed-digit recoding of a scalar for the fixed-base
//! combs. Both run in variable time: they only ever see public data (a signature's `s`, the
//! `u1`, `u2` derived from a public signature and message).

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
