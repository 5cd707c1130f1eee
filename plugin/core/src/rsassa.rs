//! RSA signature verification for keys with e = 65537: RSASSA-PKCS1-v1_5 (RS256, RS384,
//! RS512) and RSASSA-PSS (PS256, PS384, PS512: MGF1 over the same hash, a salt as long as
//! the hash, RFC 7518 §3.5).
//!
//! The generic path (`jsonwebtoken` → `rsa` 0.9) exponentiates with `num-bigint-dig` and
//! 64-bit digits, which Wasm has to build from 32-bit halves (no 64×64→128 multiply):
//! ≈ 0.8 ms per 2048-bit signature in V8. Here numbers are held in unsaturated limbs of
//! `r` = 28 bits (27 above 3072-bit keys, `limb_layout`) and multiplied in Montgomery form
//! by product scanning: column i of a product gathers every `a[j]·b[i−j]` and every
//! quotient digit's `m[j]·n[i−j]` in one u64, with no carry from product to product, so a
//! column is a dot product of independent `u32 × u32 → u64` products, four per Wasm SIMD
//! step (`i64x2.extmul_{low,high}_i32x4_u`; natively LLVM vectorises the same loop). Per
//! key, once: the limbs of n (and n reversed, so that both factors of a column run
//! upwards), n' = −n⁻¹ mod 2^r and R² mod n (R = 2^(r·limbs) > 4n, so intermediate results
//! stay below 2n unreduced). Per signature: s·R via one multiplication by R², 16 squarings
//! (each cross product once, doubled), and one multiplication by s (which also leaves
//! Montgomery form), one final subtraction; then the encoding is checked: PKCS#1 v1.5 by
//! building the expected `00 01 FF…FF 00 ‖ DigestInfo ‖ H` in full and comparing it in full
//! (RFC 8017 §9.2), PSS by EMSA-PSS-VERIFY (§9.1.2). Only the Montgomery functions are
//! compiled with Wasm SIMD (`target_feature`); see docs/filter.md (Performance) for the
//! timings and what was tried.
//!
//! Only moduli of 2048 to 4096 bits (256 to 512 bytes without leading zeros), odd, and
//! e = 65537 take this path ([`PublicKey::new`] returns `None` otherwise and the generic
//! path stays in charge). What it accepts is what the generic path accepts, but for one
//! case the `rsa` crate lets through: with modBits ≡ 1 mod 8 the public operation has one
//! byte more than a PSS encoding, which must then be zero (RFC 8017 §8.1.2, I2OSP).

use sha2::{Digest, Sha256, Sha384, Sha512};

/// DER of the DigestInfo prefixes for SHA-256, SHA-384 and SHA-512 (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
const SHA384_DIGEST_INFO: [u8; 19] = [
    0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, 0x04, 0x30,
];
const SHA512_DIGEST_INFO: [u8; 19] = [
    0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05,
    0x00, 0x04, 0x40,
];

/// Smallest and largest modulus of the fast path, in bytes.
const MIN_BYTES: usize = 256;
const MAX_BYTES: usize = 512;

/// An RSA public key with e = 65537, prepared for Montgomery arithmetic.
#[derive(Clone)]
pub struct PublicKey {
    /// n, little-endian limbs of `r` bits.
    n: Vec<u32>,
    /// n's limbs in reverse order, so that each column's products read both operands upwards.
    nr: Vec<u32>,
    /// −n⁻¹ mod 2^r.
    n0inv: u32,
    /// R² mod n (R = 2^(r·limbs)), little-endian limbs.
    rr: Vec<u32>,
    /// Bits per limb.
    r: u32,
    /// Length of n in bytes (= the signature length).
    k: usize,
    /// Length of n in bits.
    bits: usize,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rsassa::PublicKey")
            .field("bits", &self.bits)
            .finish()
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// The widest limb (≤ 28 bits) for a modulus of `k` bytes such that R = 2^(r·limbs) > 4n
/// and one column of a Montgomery product (2·limbs products below 2^(2r), plus the carry
/// from the column before, below 2^(64−r)) fits in a u64. Returns (r, limbs).
fn limb_layout(k: usize) -> (u32, usize) {
    let mut r = 28u32;
    loop {
        let limbs = (8 * k + 2).div_ceil(r as usize);
        let column = 2 * limbs as u128 * ((1u128 << r) - 1).pow(2) + (1u128 << (64 - r));
        if column < 1u128 << 64 || r == 24 {
            return (r, limbs);
        }
        r -= 1;
    }
}

/// Big-endian bytes to `limbs` little-endian limbs of `r` bits (`b` must fit).
fn to_limbs(b: &[u8], r: u32, limbs: usize) -> Vec<u32> {
    let mask = (1u64 << r) - 1;
    let mut out = vec![0u32; limbs];
    let (mut acc, mut bits, mut i) = (0u64, 0u32, 0usize);
    for &byte in b.iter().rev() {
        acc |= u64::from(byte) << bits;
        bits += 8;
        while bits >= r {
            if let Some(o) = out.get_mut(i) {
                *o = (acc & mask) as u32;
            }
            i += 1;
            acc >>= r;
            bits -= r;
        }
    }
    if let Some(o) = out.get_mut(i) {
        *o = acc as u32;
    }
    out
}

/// Limbs of `r` bits to `k` big-endian bytes (the value must fit).
fn to_bytes(a: &[u32], r: u32, k: usize) -> Vec<u8> {
    let mut out = vec![0u8; k];
    let mut slots = out.iter_mut().rev();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &limb in a {
        acc |= u64::from(limb) << bits;
        bits += r;
        while bits >= 8 {
            if let Some(o) = slots.next() {
                *o = acc as u8;
            }
            acc >>= 8;
            bits -= 8;
        }
    }
    if let Some(o) = slots.next() {
        *o = acc as u8;
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

/// a −= b in limbs of `r` bits, for a ≥ b.
fn sub_in_place(a: &mut [u32], b: &[u32], r: u32) {
    let mask = (1u32 << r) - 1;
    let mut borrow = 0u32;
    for (x, &y) in a.iter_mut().zip(b) {
        // Both below 2^r ≤ 2^28: the difference is negative exactly when bit 31 is set.
        let d = x.wrapping_sub(y).wrapping_sub(borrow);
        borrow = d >> 31;
        *x = d & mask;
    }
}

/// Σ a[i]·b[i] for slices of one length whose products sum below 2^64: `u32 × u32 → u64`
/// products two lanes at a time (`i64x2.extmul_{low,high}_i32x4_u`), four per step.
#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
#[inline]
#[allow(unsafe_code)]
fn dot(a: &[u32], b: &[u32]) -> u64 {
    use core::arch::wasm32::{
        i64x2_add, u64x2_extmul_high_u32x4, u64x2_extmul_low_u32x4, u64x2_extract_lane,
        u64x2_splat, v128, v128_load,
    };
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut lo = u64x2_splat(0);
    let mut hi = u64x2_splat(0);
    for (x, y) in ca.zip(cb) {
        // SAFETY: each chunk is four u32, 16 readable bytes; Wasm loads need no alignment.
        // (Built with `u32x4(x[0], …)`, LLVM loads lane by lane: half the speed.)
        let (vx, vy) = unsafe {
            (
                v128_load(x.as_ptr().cast::<v128>()),
                v128_load(y.as_ptr().cast::<v128>()),
            )
        };
        lo = i64x2_add(lo, u64x2_extmul_low_u32x4(vx, vy));
        hi = i64x2_add(hi, u64x2_extmul_high_u32x4(vx, vy));
    }
    let v = i64x2_add(lo, hi);
    ra.iter().zip(rb).fold(
        u64x2_extract_lane::<0>(v).wrapping_add(u64x2_extract_lane::<1>(v)),
        |s, (&x, &y)| s.wrapping_add(u64::from(x) * u64::from(y)),
    )
}

/// Σ a[i]·b[i] for slices of one length whose products sum below 2^64 (natively, the
/// compiler vectorises this loop itself).
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
fn dot(a: &[u32], b: &[u32]) -> u64 {
    a.iter().zip(b).fold(0u64, |s, (&x, &y)| {
        s.wrapping_add(u64::from(x) * u64::from(y))
    })
}

/// Scratch space for one exponentiation, `limbs` long each.
struct Scratch {
    /// The Montgomery quotient digits of the product being reduced.
    m: Vec<u32>,
    /// The second operand in reverse limb order.
    rev: Vec<u32>,
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
        let (r, limbs) = limb_layout(k);
        let mask = (1u32 << r) - 1;
        let nl = to_limbs(n, r, limbs);
        // n0⁻¹ mod 2³² by Newton's iteration (x = n0 is right mod 2³ for odd n0).
        let n0 = nl[0];
        let mut x = n0;
        for _ in 0..4 {
            x = x.wrapping_mul(2u32.wrapping_sub(n0.wrapping_mul(x)));
        }
        let n0inv = x.wrapping_neg() & mask;
        // R² mod n: start below n at 2^(bits−1), double modulo n up to 2^(2·r·limbs). The
        // doubled value is below 2n < 2^(r·limbs), so it never leaves the limbs.
        let bits = k * 8 - n[0].leading_zeros() as usize;
        let mut rr = vec![0u32; limbs];
        rr[(bits - 1) / r as usize] = 1 << ((bits - 1) % r as usize);
        for _ in (bits - 1)..(2 * r as usize * limbs) {
            let mut carry = 0u32;
            for w in rr.iter_mut() {
                let nc = *w >> (r - 1);
                *w = ((*w << 1) | carry) & mask;
                carry = nc;
            }
            if geq(&rr, &nl) {
                sub_in_place(&mut rr, &nl, r);
            }
        }
        Some(PublicKey {
            nr: nl.iter().rev().copied().collect(),
            n: nl,
            n0inv,
            rr,
            r,
            k,
            bits,
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

    /// a·b·R⁻¹ mod n (b = a when `square`), below 2n for a, b < 2n (R > 4n), in limbs of `r`
    /// bits. Product scanning: column i of the result gathers every a[j]·b[i−j] and every
    /// m[j]·n[i−j] (m the quotient digits) into one u64, with no carry from limb to limb
    /// ([`limb_layout`] keeps it below 2^64), so the products never wait on each other and
    /// are taken four at a time by [`dot`]. The second operand and n are read reversed, so
    /// that both factors of a column's products run upwards. A square takes each cross
    /// product once and doubles it.
    #[cfg_attr(target_arch = "wasm32", target_feature(enable = "simd128"))]
    fn mont(&self, a: &[u32], b: &[u32], square: bool, out: &mut [u32], s: &mut Scratch) {
        let l = self.n.len();
        let (a, nr, out) = (&a[..l], &self.nr[..l], &mut out[..l]);
        let (m, br) = (&mut s.m[..l], &mut s.rev[..l]);
        for (x, &y) in br.iter_mut().zip(b[..l].iter().rev()) {
            *x = y;
        }
        let br = &*br;
        let (r, mask) = (self.r, (1u64 << self.r) - 1);
        let n0 = u64::from(self.n[0]);
        let mut acc = 0u64;
        for i in 0..2 * l - 1 {
            // j runs over lo..=hi, and b[i−j] = br[l−1−i+j].
            let lo = (i + 1).saturating_sub(l);
            let hi = i.min(l - 1);
            // Wraps for i ≥ l, where it is only used as base + j with j ≥ lo = i + 1 − l.
            let base = (l - 1).wrapping_sub(i);
            let product = if square {
                // 2·Σ a[j]·a[i−j] over j < i−j, plus a[i/2]² for even i.
                let end = i.div_ceil(2); // j < end ⇔ j < i − j
                let cross = if lo < end {
                    dot(
                        &a[lo..end],
                        &br[base.wrapping_add(lo)..base.wrapping_add(end)],
                    )
                } else {
                    0
                };
                let diag = if i % 2 == 0 {
                    u64::from(a[i / 2]) * u64::from(a[i / 2])
                } else {
                    0
                };
                (cross << 1).wrapping_add(diag)
            } else {
                dot(
                    &a[lo..=hi],
                    &br[base.wrapping_add(lo)..=base.wrapping_add(hi)],
                )
            };
            acc = acc.wrapping_add(product);
            if i < l {
                // m[j]·n[i−j] for j < i; then m[i] makes the column ≡ 0 mod 2^r.
                acc = acc.wrapping_add(dot(&m[..i], &nr[base..l - 1]));
                let mi = (acc as u32).wrapping_mul(self.n0inv) & mask as u32;
                m[i] = mi;
                acc = acc.wrapping_add(u64::from(mi) * n0) >> r;
            } else {
                // m[j]·n[i−j] for j from i−l+1 to l−1; the column is limb i−l of the result.
                acc = acc.wrapping_add(dot(&m[lo..], &nr[..2 * l - 1 - i]));
                out[i - l] = (acc & mask) as u32;
                acc >>= r;
            }
        }
        out[l - 1] = acc as u32;
    }

    /// s^65537 mod n as `k` big-endian bytes; `None` if `sig` is not `k` bytes or s ≥ n.
    fn public_op(&self, sig: &[u8]) -> Option<Vec<u8>> {
        if sig.len() != self.k {
            return None;
        }
        let l = self.n.len();
        let s = to_limbs(sig, self.r, l);
        if geq(&s, &self.n) {
            return None;
        }
        let mut scratch = Scratch {
            m: vec![0u32; l],
            rev: vec![0u32; l],
        };
        let mut a = vec![0u32; l];
        let mut b = vec![0u32; l];
        self.mont(&s, &self.rr, false, &mut a, &mut scratch); // s·R
        for _ in 0..8 {
            self.mont(&a, &a, true, &mut b, &mut scratch);
            self.mont(&b, &b, true, &mut a, &mut scratch);
        } // s^(2^16)·R
        self.mont(&a, &s, false, &mut b, &mut scratch); // s^65537, below 2n
        if geq(&b, &self.n) {
            sub_in_place(&mut b, &self.n, self.r);
        }
        Some(to_bytes(&b, self.r, self.k))
    }
}

/// The hash of a signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// Output length in bytes.
    pub fn size(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The hash of `parts`, one after the other.
    pub fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            h.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Sha256>(parts),
            Hash::Sha384 => run::<Sha384>(parts),
            Hash::Sha512 => run::<Sha512>(parts),
        }
    }

    /// DER of the DigestInfo prefix (RFC 8017 §9.2, note 1).
    fn digest_info(self) -> &'static [u8; 19] {
        match self {
            Hash::Sha256 => &SHA256_DIGEST_INFO,
            Hash::Sha384 => &SHA384_DIGEST_INFO,
            Hash::Sha512 => &SHA512_DIGEST_INFO,
        }
    }
}

/// A JWS RSA signature scheme (RFC 7518 §3.3, §3.5): RSASSA-PKCS1-v1_5 (RS256/384/512) or
/// RSASSA-PSS with MGF1 over the same hash and a salt as long as the hash (PS256/384/512).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Pkcs1(Hash),
    Pss(Hash),
}

impl Scheme {
    /// The hash the scheme signs.
    pub fn hash(self) -> Hash {
        match self {
            Scheme::Pkcs1(h) | Scheme::Pss(h) => h,
        }
    }
}

/// Verify a signature (`sig`, raw bytes) over `msg`.
pub fn verify(key: &PublicKey, scheme: Scheme, msg: &[u8], sig: &[u8]) -> bool {
    verify_digest(key, scheme, &scheme.hash().digest(&[msg]), sig)
}

/// Verify a signature (`sig`, raw bytes) of a message whose hash (the scheme's) is `digest`.
pub fn verify_digest(key: &PublicKey, scheme: Scheme, digest: &[u8], sig: &[u8]) -> bool {
    if digest.len() != scheme.hash().size() {
        return false;
    }
    let Some(em) = key.public_op(sig) else {
        return false;
    };
    match scheme {
        Scheme::Pkcs1(h) => pkcs1_matches(&em, h, digest),
        Scheme::Pss(h) => pss_matches(&em, key.bits, h, digest),
    }
}

/// EMSA-PKCS1-v1_5 (RFC 8017 §9.2): the expected encoding `00 01 FF…FF 00 ‖ DigestInfo ‖
/// digest`, built in full and compared in full with the public operation's `k` bytes.
fn pkcs1_matches(em: &[u8], h: Hash, digest: &[u8]) -> bool {
    let (k, info) = (em.len(), h.digest_info());
    // k ≥ 256: room for 00 01, eight or more FF, 00, DigestInfo (19) and the digest (≤ 64).
    let t = k - h.size() - info.len();
    let mut want = vec![0xffu8; k];
    want[0] = 0;
    want[1] = 1;
    want[t - 1] = 0;
    want[t..t + info.len()].copy_from_slice(info);
    want[k - h.size()..].copy_from_slice(digest);
    crate::ct_eq(em, &want)
}

/// EMSA-PSS-VERIFY (RFC 8017 §9.1.2) with emBits = modBits − 1, MGF1 over `h` and a salt
/// of `h.size()` bytes, on the public operation's `k` bytes (`em_k`).
fn pss_matches(em_k: &[u8], mod_bits: usize, h: Hash, m_hash: &[u8]) -> bool {
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let (h_len, s_len) = (h.size(), h.size());
    // I2OSP(m, emLen) (§8.1.2 step 2c): with modBits ≡ 1 mod 8 the k bytes have one more,
    // which must be zero.
    let Some((lead, em)) = em_k.split_at_checked(em_k.len().saturating_sub(em_len)) else {
        return false;
    };
    if lead.iter().any(|&b| b != 0) || em_len < h_len + s_len + 2 || em[em_len - 1] != 0xbc {
        return false;
    }
    let (masked_db, rest) = em.split_at(em_len - h_len - 1);
    let hh = &rest[..h_len];
    // The bits of the first byte above emBits must be zero.
    let top = 0xffu8 >> (8 * em_len - em_bits);
    if masked_db[0] & !top != 0 {
        return false;
    }
    let mut db = masked_db.to_vec();
    for (counter, chunk) in db.chunks_mut(h_len).enumerate() {
        let mask = h.digest(&[hh, &(counter as u32).to_be_bytes()]);
        for (d, m) in chunk.iter_mut().zip(&mask) {
            *d ^= m;
        }
    }
    db[0] &= top;
    let ps = em_len - h_len - s_len - 2;
    if db[..ps].iter().any(|&b| b != 0) || db[ps] != 0x01 {
        return false;
    }
    let salt = &db[ps + 1..];
    crate::ct_eq(hh, &h.digest(&[&[0u8; 8], m_hash, salt]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RS256: Scheme = Scheme::Pkcs1(Hash::Sha256);
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
            assert!(verify(&key, RS256, &msg, &sig), "valid signature refused");
            // Tampered signature: one bit anywhere.
            let mut bad = sig.clone();
            let bit = rng.next_u32() as usize % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(!verify(&key, RS256, &msg, &bad));
            assert!(pk
                .verify(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&msg), &bad)
                .is_err());
            // Tampered message.
            let mut m2 = msg.clone();
            m2.push(round as u8);
            assert!(!verify(&key, RS256, &m2, &sig));
            // Wrong lengths.
            assert!(!verify(&key, RS256, &msg, &sig[1..]));
            let mut longer = vec![0u8];
            longer.extend_from_slice(&sig);
            assert!(!verify(&key, RS256, &msg, &longer));
            assert!(!verify(&key, RS256, &msg, &[]));
        }
        // s ≥ n: n itself, n + 1 (as k bytes) and all-FF.
        let n = pk.n().to_bytes_be();
        let msg = b"m";
        assert!(!verify(&key, RS256, msg, &n));
        let n1 = (pk.n() + BigUint::from(1u8)).to_bytes_be();
        if n1.len() == n.len() {
            assert!(!verify(&key, RS256, msg, &n1));
        }
        assert!(!verify(&key, RS256, msg, &vec![0xff; n.len()]));
        // s = 0 and s = 1 are never valid PKCS#1 signatures.
        let mut z = vec![0u8; n.len()];
        assert!(!verify(&key, RS256, msg, &z));
        z[n.len() - 1] = 1;
        assert!(!verify(&key, RS256, msg, &z));
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
        assert!(
            verify(&key, RS256, msg, &raw(&good)),
            "hand-built EM refused"
        );
        for pos in [1usize, 2, k / 2, t - 1, t, t + 10, k - 1] {
            let mut em = good.clone();
            em[pos] ^= 0x01;
            assert!(
                !verify(&key, RS256, msg, &raw(&em)),
                "bad padding at {pos} accepted"
            );
        }
        // SHA-1 DigestInfo / shorter padding with the same hash: refused.
        let mut em = good.clone();
        em[t + 14] = 0x02; // SHA-384 OID arc
        assert!(!verify(&key, RS256, msg, &raw(&em)));
    }

    #[test]
    fn random_keys_agree_with_the_rsa_crate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for bits in [2048usize, 2048, 3072, 4096] {
            let sk = RsaPrivateKey::new(&mut rng, bits).expect("keygen");
            check_key(&sk, &mut rng);
        }
    }

    const SCHEMES: [Scheme; 6] = [
        Scheme::Pkcs1(Hash::Sha256),
        Scheme::Pkcs1(Hash::Sha384),
        Scheme::Pkcs1(Hash::Sha512),
        Scheme::Pss(Hash::Sha256),
        Scheme::Pss(Hash::Sha384),
        Scheme::Pss(Hash::Sha512),
    ];

    /// A signature by the `rsa` crate: PKCS#1 v1.5, or PSS with a salt as long as the hash.
    fn sign_with(sk: &RsaPrivateKey, scheme: Scheme, msg: &[u8], rng: &mut Rng) -> Vec<u8> {
        use rsa::Pss;
        use sha2::{Sha384, Sha512};
        let digest = scheme.hash().digest(&[msg]);
        match scheme {
            Scheme::Pkcs1(Hash::Sha256) => sk.sign(Pkcs1v15Sign::new::<Sha256>(), &digest),
            Scheme::Pkcs1(Hash::Sha384) => sk.sign(Pkcs1v15Sign::new::<Sha384>(), &digest),
            Scheme::Pkcs1(Hash::Sha512) => sk.sign(Pkcs1v15Sign::new::<Sha512>(), &digest),
            Scheme::Pss(Hash::Sha256) => sk.sign_with_rng(rng, Pss::new::<Sha256>(), &digest),
            Scheme::Pss(Hash::Sha384) => sk.sign_with_rng(rng, Pss::new::<Sha384>(), &digest),
            Scheme::Pss(Hash::Sha512) => sk.sign_with_rng(rng, Pss::new::<Sha512>(), &digest),
        }
        .expect("sign")
    }

    /// Each scheme verifies its own signatures and no other scheme's, a tampered signature
    /// or message is refused, and so is a digest of the wrong length; 2049-bit keys give a
    /// PSS encoding one byte shorter than the modulus.
    #[test]
    fn every_scheme_agrees_with_the_rsa_crate() {
        let mut rng = Rng(0x5851_f42d_4c95_7f2d);
        for bits in [2048usize, 2049, 3072] {
            let sk = RsaPrivateKey::new(&mut rng, bits).expect("keygen");
            let key = prepared(&sk);
            assert_eq!(key.bits, bits);
            for scheme in SCHEMES {
                let mut msg = vec![0u8; (rng.next_u32() % 300) as usize];
                rng.fill_bytes(&mut msg);
                let sig = sign_with(&sk, scheme, &msg, &mut rng);
                for other in SCHEMES {
                    assert_eq!(
                        verify(&key, other, &msg, &sig),
                        other == scheme,
                        "{bits} bits: a {scheme:?} signature checked as {other:?}"
                    );
                }
                let mut bad = sig.clone();
                let bit = rng.next_u32() as usize % (bad.len() * 8);
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(!verify(&key, scheme, &msg, &bad), "{scheme:?}: tampered");
                let mut m2 = msg.clone();
                m2.push(1);
                assert!(
                    !verify(&key, scheme, &m2, &sig),
                    "{scheme:?}: other message"
                );
                let digest = scheme.hash().digest(&[&msg]);
                assert!(verify_digest(&key, scheme, &digest, &sig));
                assert!(!verify_digest(&key, scheme, &digest[1..], &sig));
            }
        }
    }

    /// With modBits ≡ 1 mod 8, a PSS encoding whose extra leading byte is not zero (the
    /// integer is ≥ 256^emLen) is refused (RFC 8017 §8.1.2, I2OSP); the `rsa` crate, which
    /// only looks at the last emLen bytes, takes it.
    #[test]
    fn pss_refuses_an_encoding_wider_than_em_len() {
        use rsa::traits::PublicKeyParts;
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let msg = b"m";
        for _ in 0..20 {
            let sk = RsaPrivateKey::new(&mut rng, 2049).expect("keygen");
            let pk = sk.to_public_key();
            let key = prepared(&sk);
            let sig = sign_with(&sk, Scheme::Pss(Hash::Sha256), msg, &mut rng);
            // m + 2^2048 is the same 256-byte encoding under a leading 01 byte.
            let m = BigUint::from_bytes_be(&sig).modpow(pk.e(), pk.n());
            let wider = m + (BigUint::from(1u8) << 2048usize);
            if &wider >= pk.n() {
                continue; // needs n > m + 2^2048: about half of the keys
            }
            let forged = wider.modpow(sk.d(), pk.n()).to_bytes_be();
            let mut s = vec![0u8; 257 - forged.len()];
            s.extend_from_slice(&forged);
            assert!(verify(&key, Scheme::Pss(Hash::Sha256), msg, &sig));
            assert!(!verify(&key, Scheme::Pss(Hash::Sha256), msg, &s));
            let digest = Sha256::digest(msg);
            assert!(pk.verify(rsa::Pss::new::<Sha256>(), &digest, &s).is_ok());
            return;
        }
        panic!("no 2049-bit key with n > m + 2^2048 in 20 tries");
    }

    /// Below 2n, in limbs of `r` bits: what `mont` takes.
    fn random_below_2n(key: &PublicKey, rng: &mut Rng) -> Vec<u32> {
        let l = key.n.len();
        let mask = (1u32 << key.r) - 1;
        let mut v: Vec<u32> = (0..l).map(|_| rng.next_u32() & mask).collect();
        v[l - 1] %= 2 * key.n[l - 1] + 1; // top limb of 2n, at most
        if v[l - 1] == 2 * key.n[l - 1] {
            v[l - 2] = 0; // and below it
        }
        v
    }

    fn value(limbs: &[u32], r: u32) -> BigUint {
        limbs.iter().rev().fold(BigUint::from(0u8), |acc, &x| {
            (acc << r as usize) + BigUint::from(x)
        })
    }

    #[test]
    fn montgomery_products_agree_with_big_integers() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for bits in [2048usize, 3072, 4096] {
            let sk = RsaPrivateKey::new(&mut rng, bits).expect("keygen");
            let key = prepared(&sk);
            let (l, r) = (key.n.len(), key.r);
            let n = value(&key.n, r);
            let big_r = BigUint::from(1u8) << (r as usize * l);
            let r_mod_n = &big_r % &n;
            assert_eq!(value(&key.rr, r), (&r_mod_n * &r_mod_n) % &n, "R² mod n");
            // Edge values: 0, 1, n − 1, n, 2n − 1 (as limbs), R² mod n; then random ones.
            let limbs_of = |v: &BigUint| {
                let b = v.to_bytes_be();
                to_limbs(&b, r, l)
            };
            let mut values = vec![
                limbs_of(&BigUint::from(0u8)),
                limbs_of(&BigUint::from(1u8)),
                limbs_of(&(&n - 1u8)),
                limbs_of(&n),
                limbs_of(&(&n * 2u8 - 1u8)),
                key.rr.clone(),
            ];
            for _ in 0..30 {
                values.push(random_below_2n(&key, &mut rng));
            }
            let mut s = Scratch {
                m: vec![0; l],
                rev: vec![0; l],
            };
            let (mut got, mut sq) = (vec![0; l], vec![0; l]);
            for (i, a) in values.iter().enumerate() {
                let b = &values[(i * 7 + 3) % values.len()];
                key.mont(a, b, false, &mut got, &mut s);
                let (va, vb, vg) = (value(a, r), value(b, r), value(&got, r));
                assert!(vg < &n * 2u8, "product not below 2n");
                assert!(got.iter().all(|&x| x >> r == 0), "limbs not normalised");
                // got·R ≡ a·b (mod n)
                assert_eq!((&vg * &big_r) % &n, (&va * &vb) % &n);
                // The square path gives the very same limbs as the product path.
                key.mont(a, a, false, &mut got, &mut s);
                key.mont(a, a, true, &mut sq, &mut s);
                assert_eq!(sq, got);
            }
        }
    }

    #[test]
    fn limb_layouts_hold_their_bounds_for_every_modulus_length() {
        for k in MIN_BYTES..=MAX_BYTES {
            let (r, limbs) = limb_layout(k);
            assert!((26..=28).contains(&r), "{k} bytes: {r}-bit limbs");
            // R = 2^(r·limbs) ≥ 4n for any n of k bytes.
            assert!(r as usize * limbs >= 8 * k + 2);
            // A column: 2·limbs products below 2^(2r), the carry in below 2^(64−r).
            let column = 2 * limbs as u128 * ((1u128 << r) - 1).pow(2) + (1u128 << (64 - r));
            assert!(column < 1u128 << 64, "{k} bytes overflow a column");
        }
        let mut rng = Rng(99);
        for k in [256usize, 300, 384, 385, 512] {
            let (r, limbs) = limb_layout(k);
            let mut bytes = vec![0u8; k];
            rng.fill_bytes(&mut bytes);
            let limbs_v = to_limbs(&bytes, r, limbs);
            assert!(limbs_v.iter().all(|&x| x >> r == 0));
            assert_eq!(to_bytes(&limbs_v, r, k), bytes);
            assert_eq!(value(&limbs_v, r), BigUint::from_bytes_be(&bytes));
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
