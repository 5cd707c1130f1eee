//! Native timing of the core's request path (cache hit and miss) over the in-memory host:
//! `cargo run --release -p tollgate-edge-core --example hotpath`. Prints numbers, asserts
//! nothing about time.

use std::time::Instant;

use p256::ecdsa::signature::Signer;
use serde_json::json;
use tollgate_edge_core::engine::{Outcome, Request, Worker};
use tollgate_edge_core::testing::MemoryHost;
use tollgate_edge_core::Config;

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn main() {
    let now = 1_800_000_000u64;
    let sk = p256::ecdsa::SigningKey::from_bytes((&[7u8; 32]).into()).expect("key");
    let p = sk.verifying_key().to_encoded_point(false);
    let jwks = json!({"keys": [{"kty":"EC","crv":"P-256","kid":"k1","x": b64(p.x().expect("x")), "y": b64(p.y().expect("y"))}]});
    let cfg = Config::from_json(
        json!({"issuers": [{"issuer": "https://i", "audiences": ["a"], "jwks": {"cluster": "c"}}]})
            .to_string()
            .as_bytes(),
    )
    .expect("config");
    let host = MemoryHost::new(now * 1000);
    let mut w = Worker::new(cfg);
    w.tick(&host);
    w.on_fetch(&host, 0, Ok((200, jwks.to_string().into_bytes())));
    let mint = |i: u64| {
        let claims = json!({"iss":"https://i","sub":format!("client-{i}"),"aud":"a","exp":now+600,
                            "iat":now,"jti":format!("{i:022}"),"client_id":format!("client-{i}"),
                            "scope":"api:read api:write"});
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"ES256","typ":"at+jwt","kid":"k1"}"#),
            b64(claims.to_string().as_bytes())
        );
        let sig: p256::ecdsa::Signature = sk.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    };
    let req = |t: &str| {
        Request::from_headers(vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/x".into()),
            (":authority".into(), "h".into()),
            ("authorization".into(), format!("Bearer {t}")),
            ("user-agent".into(), "bench".into()),
        ])
    };
    let n = 2000u64;
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
    println!("ES256 verify (cache miss): {miss:?}/request; cache hit: {hit:?}/request");
    println!(
        "cache hits {} misses {}",
        host.metric_value(tollgate_edge_core::metrics::Metric::CacheHit),
        host.metric_value(tollgate_edge_core::metrics::Metric::CacheMiss)
    );
}
