//! Timing of the RS256 verifier alone (2048-bit key), natively or on the filter's target:
//! `cargo run --release -p tollgate-edge-core --example rsbench`, or in node's V8:
//! `cargo build --release --target wasm32-wasip1 -p tollgate-edge-core --example rsbench`
//! then `node plugin/tools/wasi-run.mjs target/wasm32-wasip1/release/examples/rsbench.wasm`.
//! Prints numbers, asserts nothing about time.
use std::time::Instant;

use rsa::rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use sha2::{Digest, Sha256};
use tollgate_edge_core::rs256;

fn main() {
    let sk = RsaPrivateKey::new(&mut OsRng, 2048).expect("keygen");
    let pk = sk.to_public_key();
    let key = rs256::PublicKey::new(&pk.n().to_bytes_be(), &pk.e().to_bytes_be()).expect("key");
    let msgs: Vec<Vec<u8>> = (0..64u32)
        .map(|i| format!("header.payload-{i}").into_bytes())
        .collect();
    let sigs: Vec<Vec<u8>> = msgs
        .iter()
        .map(|m| {
            sk.sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(m))
                .expect("sign")
        })
        .collect();
    for round in 0..5 {
        let n = 2000;
        let t0 = Instant::now();
        for i in 0..n {
            assert!(rs256::verify(&key, &msgs[i % 64], &sigs[i % 64]));
        }
        let dt = t0.elapsed();
        println!(
            "round {round}: {:.1} us per RS256 verification",
            dt.as_secs_f64() * 1e6 / n as f64
        );
    }
}
