//! Helpers of the stages' unit tests: a worker with one ES256 issuer whose JWKS is loaded,
//! tokens it signs, requests.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer;
use serde_json::{json, Value};

use crate::engine::{Request, Worker};
use crate::testing::MemoryHost;
use crate::Config;

pub const NOW: u64 = 1_800_000_000;
pub const ISS: &str = "https://i";

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn key() -> p256::ecdsa::SigningKey {
    let mut bytes = [9u8; 32];
    bytes[0] = 1;
    p256::ecdsa::SigningKey::from_bytes((&bytes).into()).expect("key")
}

/// The configuration: one issuer (audience `a`) and `extra`'s top-level keys.
pub fn config(extra: Value) -> Config {
    let mut cfg = json!({"issuers": [{"issuer": ISS, "audiences": ["a"],
                                      "jwks": {"cluster": "auth"}}]});
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    Config::from_json(cfg.to_string().as_bytes()).expect("config")
}

/// A worker with `config(extra)`, its shared data initialised and its JWKS loaded.
pub fn worker(extra: Value) -> (MemoryHost, Worker) {
    let host = MemoryHost::new(NOW * 1000);
    let mut w = Worker::new(config(extra));
    w.init_shared(&host);
    let p = key().verifying_key().to_encoded_point(false);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
        "x": b64(p.x().expect("x")), "y": b64(p.y().expect("y"))}]});
    w.tick(&host);
    w.on_fetch(&host, 0, Ok((200, jwks.to_string().into_bytes())));
    (host, w)
}

/// A token of `alice` for audience `a`, valid for a minute, with `claims` added (a JSON
/// string value each; `"-"` removes the claim).
pub fn token(claims: &[(&str, &str)]) -> String {
    let mut c = json!({"iss": ISS, "sub": "alice", "aud": "a", "exp": NOW + 60});
    if let Some(o) = c.as_object_mut() {
        for (k, v) in claims {
            if *v == "-" {
                o.remove(*k);
            } else {
                o.insert(k.to_string(), Value::String(v.to_string()));
            }
        }
    }
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","kid":"k"}"#),
        b64(c.to_string().as_bytes())
    );
    let sig: p256::ecdsa::Signature = key().sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// A token of `alice` like [`token`], with the JSON claims of `extra` added.
pub fn token_json(extra: Value) -> String {
    let mut c = json!({"iss": ISS, "sub": "alice", "aud": "a", "exp": NOW + 60});
    if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","kid":"k"}"#),
        b64(c.to_string().as_bytes())
    );
    let sig: p256::ecdsa::Signature = key().sign(input.as_bytes());
    format!("{input}.{}", b64(&sig.to_bytes()))
}

/// A GET of `path` with `Authorization: Bearer <token>` when given.
pub fn request(path: &str, token: Option<&str>) -> Request {
    let mut h = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "h".to_string()),
    ];
    if let Some(t) = token {
        h.push(("authorization".to_string(), format!("Bearer {t}")));
    }
    Request::from_headers(h)
}
