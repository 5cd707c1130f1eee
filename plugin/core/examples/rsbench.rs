//! Timing of the RSA verifier alone (2048-bit key: RS256, then PS256 and RS512 beside the
//! generic path's PS256) and, after it, of the ES384 verifier
//! (`es384`, with its table builds) against the generic ES384 path (`jsonwebtoken` →
//! `p384`), natively or on the filter's target:
//! `cargo run --release -p tollgate-edge-core --example rsbench`, or in node's V8:
//! `cargo build --release --target wasm32-wasip1 -p tollgate-edge-core --example rsbench`
//! then `node plugin/tools/wasi-run.mjs target/wasm32-wasip1/release/examples/rsbench.wasm`.
//! Prints numbers, asserts nothing about time.
use std::time::Instant;

use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::{Digest, Sha256};
use tollgate_edge_core::rsassa::{self, Hash, Scheme};

fn main() {
    let sk = RsaPrivateKey::new(&mut OsRng, 2048).expect("keygen");
    let pk = sk.to_public_key();
    let key = rsassa::PublicKey::new(&pk.n().to_bytes_be(), &pk.e().to_bytes_be()).expect("key");
    let msgs = messages();
    let sigs: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| {
            sk.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(m))
                .expect("sign")
        })
        .collect();
    for round in 0..5 {
        let us = us_per_call(2000, |i| {
            assert!(rsassa::verify(
                &key,
                Scheme::Pkcs1(Hash::Sha256),
                &msgs[i % 64],
                &sigs[i % 64]
            ));
        });
        println!("round {round}: {us:.1} us per RS256 verification");
    }
    other_rsa_schemes(&sk, &key, &msgs);
    es384_section();
}

/// RS512 and PS256 on the same path (the hash and the encoding check differ), and PS256 on
/// the generic path (`jsonwebtoken` → `rsa`), which the filter used for them before.
fn other_rsa_schemes(sk: &RsaPrivateKey, key: &rsassa::PublicKey, msgs: &[Vec<u8>]) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    let pss = rsa::pss::SigningKey::<Sha256>::new(sk.clone());
    let pkcs512 = rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(sk.clone());
    let ps: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| pss.sign_with_rng(&mut OsRng, m).to_vec())
        .collect();
    let rs512: Vec<Vec<u8>> = msgs.iter().map(|m| pkcs512.sign(m).to_vec()).collect();
    let pk = sk.to_public_key();
    let generic_key = jsonwebtoken::DecodingKey::from_rsa_components(
        &URL_SAFE_NO_PAD.encode(pk.n().to_bytes_be()),
        &URL_SAFE_NO_PAD.encode(pk.e().to_bytes_be()),
    )
    .expect("jwk");
    let ps_b64: Vec<String> = ps.iter().map(|s| URL_SAFE_NO_PAD.encode(s)).collect();
    for round in 0..3 {
        let ours_ps = us_per_call(1000, |i| {
            assert!(rsassa::verify(
                key,
                Scheme::Pss(Hash::Sha256),
                &msgs[i % 64],
                &ps[i % 64]
            ));
        });
        let ours_512 = us_per_call(1000, |i| {
            let (m, s) = (&msgs[i % 64], &rs512[i % 64]);
            assert!(rsassa::verify(key, Scheme::Pkcs1(Hash::Sha512), m, s));
        });
        let generic = us_per_call(50, |i| {
            assert!(jsonwebtoken::crypto::verify(
                &ps_b64[i % 64],
                &msgs[i % 64],
                &generic_key,
                jsonwebtoken::Algorithm::PS256,
            )
            .expect("verify"));
        });
        println!(
            "round {round}: PS256 {ours_ps:.1} us, RS512 {ours_512:.1} us (rsassa); \
             PS256 {generic:.1} us (jsonwebtoken/rsa)"
        );
    }
}

/// 64 messages of the size of a small JWS signing input.
fn messages() -> Vec<Vec<u8>> {
    (0..64u32)
        .map(|i| format!("header.payload-{i}").into_bytes())
        .collect()
}

/// Microseconds per call of `f(i)`, i = 0..n.
fn us_per_call(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let t0 = Instant::now();
    for i in 0..n {
        f(i);
    }
    t0.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// ES384: the generator's table (once per VM), a key's table (its first verification),
/// then per verification, `es384::verify` and `jsonwebtoken`'s generic path.
fn es384_section() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use p384::ecdsa::signature::Signer;
    use p384::ecdsa::{Signature, SigningKey};
    use tollgate_edge_core::es384;

    let sk = SigningKey::from_slice(&[7u8; 48]).expect("key");
    let point = sk.verifying_key().to_encoded_point(false);
    let (x, y) = (point.x().expect("x"), point.y().expect("y"));
    let mut xy = [0u8; 96];
    xy[..48].copy_from_slice(x);
    xy[48..].copy_from_slice(y);
    let msgs = messages();
    let sigs: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| {
            let s: Signature = sk.sign(m);
            s.to_bytes().to_vec()
        })
        .collect();
    let t0 = Instant::now();
    es384::prepare();
    let generator_ms = t0.elapsed().as_secs_f64() * 1e3;
    let key = es384::PublicKey::new(xy);
    let t0 = Instant::now();
    assert!(es384::verify(&key, &msgs[0], &sigs[0]));
    let first_ms = t0.elapsed().as_secs_f64() * 1e3;
    println!(
        "ES384: generator table {generator_ms:.1} ms, first verification (key table) {first_ms:.1} ms"
    );
    let generic_key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(x),
        &URL_SAFE_NO_PAD.encode(y),
    )
    .expect("jwk");
    let sigs_b64: Vec<String> = sigs.iter().map(|s| URL_SAFE_NO_PAD.encode(s)).collect();
    for round in 0..3 {
        let ours = us_per_call(1000, |i| {
            assert!(es384::verify(&key, &msgs[i % 64], &sigs[i % 64]));
        });
        let generic = us_per_call(100, |i| {
            assert!(jsonwebtoken::crypto::verify(
                &sigs_b64[i % 64],
                &msgs[i % 64],
                &generic_key,
                jsonwebtoken::Algorithm::ES384,
            )
            .expect("verify"));
        });
        println!(
            "round {round}: {ours:.1} us per ES384 verification (es384), {generic:.1} us (jsonwebtoken/p384)"
        );
    }
}
