//! Test helpers: keys, JWKS documents and signed tokens made here (no fixtures but one RSA key).
#![allow(dead_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

pub const ISS: &str = "https://auth.test";
pub const AUD: &str = "tollgate";
pub const NOW: u64 = 1_800_000_000;

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

pub enum TestKey {
    Es256(p256::ecdsa::SigningKey),
    Es384(p384::ecdsa::SigningKey),
    Ed(ed25519_dalek::SigningKey),
    Rsa(rsa::RsaPrivateKey),
}

impl TestKey {
    pub fn es256(seed: u8) -> TestKey {
        let mut bytes = [seed; 32];
        bytes[0] = 1;
        TestKey::Es256(p256::ecdsa::SigningKey::from_bytes((&bytes).into()).unwrap())
    }
    pub fn es384(seed: u8) -> TestKey {
        let mut bytes = [seed; 48];
        bytes[0] = 1;
        TestKey::Es384(p384::ecdsa::SigningKey::from_slice(&bytes).unwrap())
    }
    pub fn ed(seed: u8) -> TestKey {
        TestKey::Ed(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }
    pub fn rsa() -> TestKey {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let pem = include_str!("../fixtures/rsa2048.pem");
        TestKey::Rsa(rsa::RsaPrivateKey::from_pkcs1_pem(pem).unwrap())
    }

    pub fn alg(&self) -> &'static str {
        match self {
            TestKey::Es256(_) => "ES256",
            TestKey::Es384(_) => "ES384",
            TestKey::Ed(_) => "EdDSA",
            TestKey::Rsa(_) => "RS256",
        }
    }

    pub fn jwk(&self, kid: &str) -> Value {
        match self {
            TestKey::Es256(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty":"EC","crv":"P-256","kid":kid,"use":"sig","alg":"ES256",
                       "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())})
            }
            TestKey::Es384(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty":"EC","crv":"P-384","kid":kid,"use":"sig","alg":"ES384",
                       "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())})
            }
            TestKey::Ed(k) => {
                json!({"kty":"OKP","crv":"Ed25519","kid":kid,"use":"sig",
                       "x": b64(k.verifying_key().as_bytes())})
            }
            TestKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts;
                json!({"kty":"RSA","kid":kid,"use":"sig",
                       "n": b64(&k.n().to_bytes_be()), "e": b64(&k.e().to_bytes_be())})
            }
        }
    }

    pub fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            TestKey::Es256(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(input);
                s.to_bytes().to_vec()
            }
            TestKey::Es384(k) => {
                use p384::ecdsa::signature::Signer;
                let s: p384::ecdsa::Signature = k.sign(input);
                s.to_bytes().to_vec()
            }
            TestKey::Ed(k) => {
                use ed25519_dalek::Signer;
                k.sign(input).to_bytes().to_vec()
            }
            TestKey::Rsa(k) => {
                use rsa::signature::{SignatureEncoding, Signer};
                let sk = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k.clone());
                sk.sign(input).to_vec()
            }
        }
    }
}

pub fn jwks(keys: &[(&TestKey, &str)]) -> Vec<u8> {
    let ks: Vec<Value> = keys.iter().map(|(k, kid)| k.jwk(kid)).collect();
    serde_json::to_vec(&json!({ "keys": ks })).unwrap()
}

/// Sign arbitrary header and claims.
pub fn token_with(key: &TestKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

pub fn claims(sub: &str, scope: &str) -> Value {
    json!({"iss": ISS, "sub": sub, "aud": AUD, "exp": NOW + 600, "iat": NOW - 10,
           "nbf": NOW - 10, "jti": format!("jti-{sub}"), "client_id": sub, "scope": scope})
}

pub fn token(key: &TestKey, kid: &str, claims: &Value) -> String {
    token_with(
        key,
        &json!({"alg": key.alg(), "typ": "at+jwt", "kid": kid}),
        claims,
    )
}

pub fn config_json(extra: Value) -> Vec<u8> {
    let mut base = json!({
        "issuers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "algorithms": ["ES256", "EdDSA", "RS256"],
            "typ": "at+jwt",
            "jwks": {"cluster": "auth", "min_refresh_interval_s": 5}
        }],
        "rules": [
            {"name": "public", "path_prefix": "/public", "allow_anonymous": true},
            {"name": "write", "path_prefix": "/api", "methods": ["POST"], "scopes": ["api:write"]},
            {"name": "any", "path_exact": "/either", "scopes": ["a", "b"], "scope_mode": "any"}
        ],
        "headers": {"claims": {"jti": "x-tollgate-jti"}}
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&base).unwrap()
}

pub fn config(extra: Value) -> tollgate_edge_core::Config {
    tollgate_edge_core::Config::from_json(&config_json(extra)).unwrap()
}
