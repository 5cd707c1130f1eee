//! RS256 (RSASSA-PKCS1-v1_5 with SHA-256) verification for keys with e = 65537.
//!
//! The generic path (`jsonwebtoken` → `rsa` 0.9) exponentiates with `num-bigint-dig` and
//! 64-bit digits, which Wasm has to build from 32-bit halves (no 64×64→128 multiply).
//! Here the modulus is held as 32-bit limbs and multiplied in Montgomery form (CIOS) with
//! `u32 × u32 → u64` products only. Per key, once: the limbs of n, n' = −n⁻¹ mod 2³² and
//! R² mod n (R = 2^(32·limbs)). Per signature: s·R via one multiplication by R², 16
//! squarings (each cross product once, then a separate reduction: a quarter fewer limb
//! products than a multiplication), and one multiplication by s (which also leaves
//! Montgomery form), then the
//! result is compared with the expected encoded message EM = 00 01 FF…FF 00 ‖ DigestInfo ‖
//! SHA-256(message) (RFC 8017 §8.2.2, §9.2), built in full and compared in full.
//!
//! Only moduli of 2048 to 4096 bits (256 to 512 bytes without leading zeros), odd, and
//! e = 65537 take this path ([`PublicKey::new`] returns `None` otherwise and the generic
//! path stays in charge, so what the filter accepts does not change).

use sha2::{Digest, Sha256};

/// DER of the DigestInfo prefix for SHA-256 (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Smallest and largest modulus of the fast path, in bytes.
const MIN_BYTES: usize = 256;
const MAX_BYTES: usize = 512;

/// An RSA public key with e = 65537, prepared for Montgomery arithmetic.
#[derive(Clone)]
pub struct PublicKey {
    /// n, little-endian 32-bit limbs.
    n: Vec<u32>,
    /// −n⁻¹ mod 2³².
    n0inv: u32,
    /// R² mod n, little-endian limbs.
    rr: Vec<u32>,
    /// Length of n in bytes (= the signature length).
    k: usize,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rs256::PublicKey")
            .field("bits", &(self.k * 8))
            .finish()
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// Big-endian bytes to little-endian limbs (`limbs` of them; `b` must fit).
fn to_limbs(b: &[u8], limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    for (i, &byte) in b.iter().rev().enumerate() {
        out[i / 4] |= u32::from(byte) << (8 * (i % 4));
    }
    out
}

/// a ≥ b, both of one length.
fn geq(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

/// a −= b, returning the borrow.
fn sub_in_place(a: &mut [u32], b: &[u32]) -> bool {
    let mut borrow = 0u64;
    for (x, &y) in a.iter_mut().zip(b) {
        let d = u64::from(*x)
            .wrapping_sub(u64::from(y))
            .wrapping_sub(borrow);
        *x = d as u32;
        borrow = (d >> 63) & 1;
    }
    borrow != 0
}

impl PublicKey {
    /// Prepare a key from the big-endian bytes of n and e; `None` unless e = 65537 and n is
    /// odd with 2048 to 4096 bits (after leading zero bytes).
    pub fn new(n: &[u8], e: &[u8]) -> Option<PublicKey> {
        if strip_zeros(e) != [1, 0, 1] {
            return None;
        }
        let n = strip_zeros(n);
        if !(MIN_BYTES..=MAX_BYTES).contains(&n.len()) || n.last()? & 1 == 0 {
            return None;
        }
        let k = n.len();
        let limbs = k.div_ceil(4);
        let nl = to_limbs(n, limbs);
        // n0⁻¹ mod 2³² by Newton's iteration (x = n0 is right mod 2³ for odd n0).
        let n0 = nl[0];
        let mut x = n0;
        for _ in 0..4 {
            x = x.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(x)));
        }
        let n0inv = x.wrapping_neg();
        // R² mod n: start below n at 2^(bits−1), double modulo n up to 2^(2·32·limbs).
        let bits = k * 8 - n[0].leading_zeros() as usize;
        let mut r = vec![0u32; limbs];
        r[(bits - 1) / 32] = 1 << ((bits - 1) % 32);
        for _ in (bits - 1)..(2 * 32 * limbs) {
            let mut carry = 0u32;
            for w in r.iter_mut() {
                let nc = *w >> 31;
                *w = (*w << 1) | carry;
                carry = nc;
            }
            if carry != 0 || geq(&r, &nl) {
                sub_in_place(&mut r, &nl);
            }
        }
        Some(PublicKey {
            n: nl,
            n0inv,
            rr: r,
            k,
        })
    }

    /// Modulus length in bytes.
    pub fn len(&self) -> usize {
        self.k
    }

    /// Always false (a prepared key has at least 2048 bits); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.k == 0
    }

    /// a·b·R⁻¹ mod n (CIOS), for a, b < n; the result is < n. `t` has `l + 2` limbs.
    fn mont_mul(&self, a: &[u32], b: &[u32], out: &mut [u32], t: &mut [u32]) {
        let l = self.n.len();
        let (a, n, t) = (&a[..l], &self.n[..l], &mut t[..l + 2]);
        t.fill(0);
        for &bi in &b[..l] {
            let bi = u64::from(bi);
            let mut c = 0u64;
            for (tj, &aj) in t.iter_mut().zip(a) {
                let s = u64::from(*tj) + u64::from(aj) * bi + c;
                *tj = s as u32;
                c = s >> 32;
            }
            let s = u64::from(t[l]) + c;
            t[l] = s as u32;
            t[l + 1] = (s >> 32) as u32;
            let m = u64::from(t[0].wrapping_mul(self.n0inv));
            let mut c = (u64::from(t[0]) + m * u64::from(n[0])) >> 32;
            for j in 1..l {
                // n and t resliced to l and l + 2 limbs above: no bounds checks here.
                let s = u64::from(t[j]) + m * u64::from(n[j]) + c;
                t[j - 1] = s as u32;
                c = s >> 32;
            }
            let s = u64::from(t[l]) + c;
            t[l - 1] = s as u32;
            t[l] = t[l + 1] + (s >> 32) as u32;
            t[l + 1] = 0;
        }
        out[..l].copy_from_slice(&t[..l]);
        if t[l] != 0 || geq(&out[..l], n) {
            sub_in_place(&mut out[..l], n);
        }
    }

    /// a²·R⁻¹ mod n for a < n, the result < n: the square with each cross product once
    /// (doubled), then a separate Montgomery reduction (SOS), 25 % fewer limb products
    /// than [`Self::mont_mul`]. `t` has `2l + 1` limbs.
    fn mont_sqr(&self, a: &[u32], out: &mut [u32], t: &mut [u32]) {
        let l = self.n.len();
        let (a, n, t) = (&a[..l], &self.n[..l], &mut t[..2 * l + 1]);
        t.fill(0);
        // Cross products a[i]·a[j], i < j.
        for i in 0..l {
            let ai = u64::from(a[i]);
            let mut c = 0u64;
            for (tk, &aj) in t[2 * i + 1..i + l].iter_mut().zip(&a[i + 1..]) {
                let s = u64::from(*tk) + ai * u64::from(aj) + c;
                *tk = s as u32;
                c = s >> 32;
            }
            t[i + l] = c as u32;
        }
        // Doubled, plus the squares a[i]² on the diagonal.
        let mut top = 0u32;
        for w in t[..2 * l].iter_mut() {
            let nt = *w >> 31;
            *w = (*w << 1) | top;
            top = nt;
        }
        let mut c = 0u64;
        for (pair, &ai) in t[..2 * l].chunks_exact_mut(2).zip(a) {
            let sq = u64::from(ai) * u64::from(ai);
            let s = u64::from(pair[0]) + (sq & 0xffff_ffff) + c;
            pair[0] = s as u32;
            let s = u64::from(pair[1]) + (sq >> 32) + (s >> 32);
            pair[1] = s as u32;
            c = s >> 32;
        }
        // a² < n² < n·R, so no carry leaves the 2l limbs. Reduce: add m·n·2^(32i) so that
        // limb i becomes zero, i = 0..l; the result is t[l..2l] plus the overflow bit.
        let mut hi = 0u64;
        for i in 0..l {
            let m = u64::from(t[i].wrapping_mul(self.n0inv));
            let mut c = 0u64;
            for (tj, &nj) in t[i..i + l].iter_mut().zip(n) {
                let s = u64::from(*tj) + m * u64::from(nj) + c;
                *tj = s as u32;
                c = s >> 32;
            }
            let s = u64::from(t[i + l]) + c + hi;
            t[i + l] = s as u32;
            hi = s >> 32;
        }
        out[..l].copy_from_slice(&t[l..2 * l]);
        if hi != 0 || geq(&out[..l], n) {
            sub_in_place(&mut out[..l], n);
        }
    }

    /// s^65537 mod n as `k` big-endian bytes; `None` if `sig` is not `k` bytes or s ≥ n.
    fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.k {
            return None;
        }
        let l = self.n.len();
        let s = to_limbs(sig, l);
        if geq(&s, &self.n) {
            return None;
        }
        let mut t = vec![0u32; 2 * l + 1];
        let mut a = vec![0u32; l];
        let mut b = vec![0u32; l];
        self.mont_mul(&s, &self.rr, &mut a, &mut t); // s·R
        for _ in 0..8 {
            self.mont_sqr(&a, &mut b, &mut t);
            self.mont_sqr(&b, &mut a, &mut t);
        } // s^(2^16)·R
        self.mont_mul(&a, &s, &mut b, &mut t); // s^65537
        let mut out = vec![0u8; self.k];
        for (i, o) in out.iter_mut().rev().enumerate() {
            *o = (b[i / 4] >> (8 * (i % 4))) as u8;
        }
        Some(out)
    }
}

/// Verify an RS256 signature (`sig`, raw bytes) over `msg`.
pub fn verify(key: &PublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let Some(em) = key.public_op(sig) else {
        return false;
    };
    let k = key.k;
    let mut want = vec![0xffu8; k];
    want[0] = 0;
    want[1] = 1;
    let t = k - 32 - SHA256_DIGEST_INFO.len();
    want[t - 1] = 0;
    want[t..t + SHA256_DIGEST_INFO.len()].copy_from_slice(&SHA256_DIGEST_INFO);
    want[k - 32..].copy_from_slice(&Sha256::digest(msg));
    crate::ct_eq(&em, &want)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::rand_core::{CryptoRng, RngCore};
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{BigUint, Pkcs1v15Sign, RsaPrivateKey};

    struct Rng(u64);
    impl RngCore for Rng {
        fn next_u32(&mut self) -> u32 {
            (self.next_u64() >> 32) as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = (self.next_u64() >> 24) as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for Rng {}

    fn prepared(sk: &RsaPrivateKey) -> PublicKey {
        let pk = sk.to_public_key();
        PublicKey::new(&pk.n().to_bytes_be(), &pk.e().to_bytes_be()).expect("prepared")
    }

    fn sign(sk: &RsaPrivateKey, msg: &[u8]) -> Vec<u8> {
        sk.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(msg))
            .expect("sign")
    }

    fn check_key(sk: &RsaPrivateKey, rng: &mut Rng) {
        let key = prepared(sk);
        let pk = sk.to_public_key();
        assert_eq!(key.len(), pk.size());
        for round in 0..4 {
            let mut msg = vec![0u8; (rng.next_u32() % 200) as usize];
            rng.fill_bytes(&mut msg);
            let sig = sign(sk, &msg);
            assert!(verify(&key, &msg, &sig), "valid signature refused");
            // Tampered signature: one bit anywhere.
            let mut bad = sig.clone();
            let bit = rng.next_u32() as usize % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!verify(&key, &msg, &bad));
            assert!(pk
                .verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&msg), &bad)
                .is_err());
            // Tampered message.
            let mut m2 = msg.clone();
            m2.push(round as u8);
            assert!(!verify(&key, &m2, &sig));
            // Wrong lengths.
            assert!(!verify(&key, &msg, &sig[1..]));
            let mut longer = vec![0u8];
            longer.extend_from_slice(&sig);
            assert!(!verify(&key, &msg, &longer));
            assert!(!verify(&key, &msg, &[]));
        }
        // s ≥ n: n itself, n + 1 (as k bytes) and all-FF.
        let n = pk.n().to_bytes_be();
        let msg = b"m";
        assert!(!verify(&key, msg, &n));
        let n1 = (pk.n() + BigUint::from(1u8)).to_bytes_be();
        if n1.len() == n.len() {
            assert!(!verify(&key, msg, &n1));
        }
        assert!(!verify(&key, msg, &vec![0xff; n.len()]));
        // s = 0 and s = 1 are never valid PKCS#1 signatures.
        let mut z = vec![0u8; n.len()];
        assert!(!verify(&key, msg, &z));
        z[n.len() - 1] = 1;
        assert!(!verify(&key, msg, &z));
        // Bad padding: raw RSA of an EM with one byte changed (decrypt = sign with d).
        let digest = Sha256::digest(msg);
        let k = n.len();
        let t = k - 51;
        let mut good = vec![0xffu8; k];
        good[0] = 0;
        good[1] = 1;
        good[t - 1] = 0;
        good[t..t + 19].copy_from_slice(&SHA256_DIGEST_INFO);
        good[k - 32..].copy_from_slice(&digest);
        let raw = |em: &[u8]| -> Vec<u8> {
            let m = BigUint::from_bytes_be(em);
            let s = m.modpow(sk.d(), pk.n()).to_bytes_be();
            let mut out = vec![0u8; k - s.len()];
            out.extend_from_slice(&s);
            out
        };
        assert!(verify(&key, msg, &raw(&good)), "hand-built EM refused");
        for pos in [1usize, 2, k / 2, t - 1, t, t + 10, k - 1] {
            let mut em = good.clone();
            em[pos] ^= 0x01;
            assert!(
                !verify(&key, msg, &raw(&em)),
                "bad padding at {pos} accepted"
            );
        }
        // SHA-1 DigestInfo / shorter padding with the same hash: refused.
        let mut em = good.clone();
        em[t + 14] = 0x02; // SHA-384 OID arc
        assert!(!verify(&key, msg, &raw(&em)));
    }

    #[test]
    fn random_keys_agree_with_the_rsa_crate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for bits in [2048usize, 2048, 3072, 4096] {
            let sk = RsaPrivateKey::new(&mut rng, bits).expect("keygen");
            check_key(&sk, &mut rng);
        }
    }

    #[test]
    fn squaring_agrees_with_multiplication() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for bits in [2048usize, 3072] {
            let sk = RsaPrivateKey::new(&mut rng, bits).expect("keygen");
            let key = prepared(&sk);
            let l = key.n.len();
            let mut n_minus_1 = key.n.clone();
            n_minus_1[0] -= 1; // n is odd
            let mut values = vec![vec![0u32; l], n_minus_1, key.rr.clone()];
            values[0][0] = 1;
            for _ in 0..50 {
                let mut v: Vec<u32> = (0..l).map(|_| rng.next_u32()).collect();
                v[l - 1] %= key.n[l - 1].max(1); // below n
                values.push(v);
            }
            let (mut t, mut want, mut got) = (vec![0; 2 * l + 1], vec![0; l], vec![0; l]);
            for a in &values {
                key.mont_mul(a, a, &mut want, &mut t);
                key.mont_sqr(a, &mut got, &mut t);
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn keys_outside_the_fast_path_are_not_prepared() {
        let mut rng = Rng(7);
        let sk = RsaPrivateKey::new(&mut rng, 2048).expect("keygen");
        let n = sk.to_public_key().n().to_bytes_be();
        assert!(PublicKey::new(&n, &[1, 0, 1]).is_some());
        assert!(PublicKey::new(&n, &[0, 1, 0, 1]).is_some());
        assert!(PublicKey::new(&n, &[3]).is_none());
        assert!(PublicKey::new(&n[1..], &[1, 0, 1]).is_none()); // 2040 bits
        let mut even = n.clone();
        *even.last_mut().expect("n") &= 0xfe;
        assert!(PublicKey::new(&even, &[1, 0, 1]).is_none());
        assert!(PublicKey::new(&vec![0xff; 513], &[1, 0, 1]).is_none());
    }
}
