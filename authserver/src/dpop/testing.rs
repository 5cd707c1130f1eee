//! Test keys that make DPoP proofs (unit tests and the HTTP tests).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Map, Value};

/// A 2048-bit RSA key made for these tests only (generating one unoptimised is slow).
const TEST_RSA_PEM: &str = include_str!("test_rsa.pem");

pub enum TestKey {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_dalek::SigningKey),
    /// RS256 (`pss` false) or PS256.
    Rsa {
        pair: ring::signature::RsaKeyPair,
        n: Vec<u8>,
        e: Vec<u8>,
        pss: bool,
    },
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

impl TestKey {
    pub fn es256() -> TestKey {
        TestKey::Es256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    pub fn eddsa() -> TestKey {
        TestKey::EdDsa(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn rsa(pss: bool) -> TestKey {
        use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        use rsa::traits::PublicKeyParts;
        let k = rsa::RsaPrivateKey::from_pkcs8_pem(TEST_RSA_PEM).unwrap();
        let der = k.to_pkcs8_der().unwrap();
        let pair = ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes()).unwrap();
        TestKey::Rsa {
            pair,
            n: k.n().to_bytes_be(),
            e: k.e().to_bytes_be(),
            pss,
        }
    }

    pub fn alg(&self) -> &'static str {
        match self {
            TestKey::Es256(_) => "ES256",
            TestKey::EdDsa(_) => "EdDSA",
            TestKey::Rsa { pss: false, .. } => "RS256",
            TestKey::Rsa { pss: true, .. } => "PS256",
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Map<String, Value> {
        let v = match self {
            TestKey::Es256(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256",
                       "x": b64(p.x().unwrap()), "y": b64(p.y().unwrap())})
            }
            TestKey::EdDsa(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.verifying_key().as_bytes())})
            }
            TestKey::Rsa { n, e, .. } => json!({"kty": "RSA", "n": b64(n), "e": b64(e)}),
        };
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    pub fn jkt(&self) -> String {
        super::thumbprint(&self.jwk()).unwrap()
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match self {
            TestKey::Es256(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_bytes().to_vec()
            }
            TestKey::EdDsa(k) => {
                use ed25519_dalek::Signer;
                k.sign(msg).to_bytes().to_vec()
            }
            TestKey::Rsa { pair, pss, .. } => {
                let mut sig = vec![0u8; pair.public().modulus_len()];
                let enc: &'static dyn ring::signature::RsaEncoding = if *pss {
                    &ring::signature::RSA_PSS_SHA256
                } else {
                    &ring::signature::RSA_PKCS1_SHA256
                };
                pair.sign(enc, &ring::rand::SystemRandom::new(), msg, &mut sig)
                    .unwrap();
                sig
            }
        }
    }

    /// A compact JWS of `header` and `claims`, signed by this key.
    pub fn jws(&self, header: &Value, claims: &Value) -> String {
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&sig))
    }

    /// The header of a good proof by this key.
    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }

    /// A good proof for `method uri` at `iat`, with a fresh `jti`.
    pub fn proof(&self, method: &str, uri: &str, iat: u64) -> String {
        self.proof_with(method, uri, iat, json!({}))
    }

    /// A proof with further (or replaced) claims.
    pub fn proof_with(&self, method: &str, uri: &str, iat: u64, more: Value) -> String {
        let mut claims = json!({
            "jti": crate::crypto::random_b64(12),
            "htm": method,
            "htu": uri,
            "iat": iat,
        });
        if let (Value::Object(c), Value::Object(m)) = (&mut claims, more) {
            c.extend(m);
        }
        self.jws(&self.header(), &claims)
    }
}
