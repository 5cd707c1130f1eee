//! Timing of the core's request path (cache hit and miss) over the in-memory host, for an
//! ES256 token of Tollgate's shape and an RS256 token of Keycloak's shape (2048-bit key,
//! its claims, 1.2 KB): natively, `cargo run --release -p tollgate-edge-core --example
//! hotpath`; in node's V8, `cargo build --release --target wasm32-wasip1 -p
//! tollgate-edge-core --example hotpath` then `node plugin/tools/wasi-run.mjs
//! target/wasm32-wasip1/release/examples/hotpath.wasm`. Prints numbers, asserts nothing
//! about time.

use std::time::Instant;

use p256::ecdsa::signature::Signer;
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate_edge_core::engine::{Outcome, Request, Worker};
use tollgate_edge_core::metrics::Metric;
use tollgate_edge_core::testing::MemoryHost;
use tollgate_edge_core::Config;

const NOW: u64 = 1_800_000_000;

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn req(t: &str) -> Request {
    Request::from_headers(vec![
        (":method".into(), "GET".into()),
        (":path".into(), "/x".into()),
        (":authority".into(), "h".into()),
        ("authorization".into(), format!("Bearer {t}")),
        ("user-agent".into(), "bench".into()),
    ])
}

/// Time `n` new tokens (each a cache miss), then one token over and over (cache hits).
fn run(label: &str, issuer: Value, jwks: Value, n: u64, mint: impl Fn(u64) -> String) {
    let cfg =
        Config::from_json(json!({ "issuers": [issuer] }).to_string().as_bytes()).expect("config");
    let host = MemoryHost::new(NOW * 1000);
    let mut w = Worker::new(cfg);
    w.tick(&host);
    w.on_fetch(&host, 0, Ok((200, jwks.to_string().into_bytes())));
    let tokens: Vec<String> = (0..n).map(mint).collect();
    let t0 = Instant::now();
    for t in &tokens {
        assert!(matches!(
            w.on_request(&host, &req(t)),
            Outcome::Allow { .. }
        ));
    }
    let miss = t0.elapsed() / n as u32;
    let one = req(&tokens[0]);
    let reps = 100_000u32;
    let t0 = Instant::now();
    for _ in 0..reps {
        assert!(matches!(w.on_request(&host, &one), Outcome::Allow { .. }));
    }
    let hit = t0.elapsed() / reps;
    println!(
        "{label} ({} bytes): cache miss {miss:?}/request; cache hit: {hit:?}/request \
         (hits {}, misses {})",
        tokens[0].len(),
        host.metric_value(Metric::CacheHit),
        host.metric_value(Metric::CacheMiss)
    );
}

fn main() {
    let sk = p256::ecdsa::SigningKey::from_bytes((&[7u8; 32]).into()).expect("key");
    let p = sk.verifying_key().to_encoded_point(false);
    let jwks = json!({"keys": [{"kty":"EC","crv":"P-256","kid":"k1","x": b64(p.x().expect("x")), "y": b64(p.y().expect("y"))}]});
    let issuer = json!({"issuer": "https://i", "audiences": ["a"], "jwks": {"cluster": "c"}});
    run("ES256", issuer, jwks, 2000, |i| {
        let claims = json!({"iss":"https://i","sub":format!("client-{i}"),"aud":"a","exp":NOW+600,
                            "iat":NOW,"jti":format!("{i:022}"),"client_id":format!("client-{i}"),
                            "scope":"api:read api:write"});
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256","typ":"at+jwt","kid":"k1"}"#),
            b64(claims.to_string().as_bytes())
        );
        let sig: p256::ecdsa::Signature = sk.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    });

    // Keycloak 26's client_credentials access token, as the gateway bench gets them.
    let mut rng = rsa::rand_core::OsRng;
    let rk = RsaPrivateKey::new(&mut rng, 2048).expect("rsa key");
    let kid = "Qp1vC4bT0u9yJb1y7m2sVfz3M6R5oXg8c2H4kZl9d0E";
    let jwks = json!({"keys": [{"kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
                                "n": b64(&rk.n().to_bytes_be()), "e": "AQAB"}]});
    let iss = "http://127.0.0.1:38080/realms/bench";
    let issuer = json!({"issuer": iss, "audiences": ["tollgate-bench"],
                        "algorithms": ["RS256"], "jwks": {"cluster": "c"}});
    run("RS256, Keycloak-shaped", issuer, jwks, 3000, |i| {
        let claims = json!({
            "exp": NOW + 300, "iat": NOW, "jti": format!("onrtcc:{i:08x}-5b1e-4c3a-9d2f-7a6b8c9d0e1f"),
            "iss": iss, "aud": ["tollgate-bench", "account"],
            "sub": "2f0c8a3e-6d1b-4f7a-9e2c-5b8d1a4c7e90", "typ": "Bearer", "azp": "bench-rs256",
            "acr": "1", "allowed-origins": ["/*"],
            "realm_access": {"roles": ["offline_access", "default-roles-bench", "uma_authorization"]},
            "resource_access": {"account": {"roles": ["manage-account", "manage-account-links", "view-profile"]}},
            "scope": "profile email", "email_verified": false, "clientHost": "127.0.0.1",
            "preferred_username": "service-account-bench-rs256", "clientAddress": "127.0.0.1",
            "client_id": "bench-rs256"});
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": kid});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = rk
            .sign(
                Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(input.as_bytes()),
            )
            .expect("sign");
        format!("{input}.{}", b64(&sig))
    });
}
