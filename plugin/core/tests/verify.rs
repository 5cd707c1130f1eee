//! JWT and JWKS verification against keys made in the test.

mod common;

// On wasm32-unknown-unknown every test runs under wasm-bindgen-test (`make wasm-test`).
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use common::*;
use serde_json::json;
use tollgate_edge_core::jwks::KeySet;
use tollgate_edge_core::jwt::{self, KeySource, VerifyError};
use tollgate_edge_core::TokenError;

struct Keys(Option<KeySet>);

impl KeySource for Keys {
    fn key_set(&mut self, _issuer: usize) -> Option<&KeySet> {
        self.0.as_ref()
    }
}

fn keys(list: &[(&TestKey, &str)]) -> Keys {
    Keys(Some(KeySet::parse(&jwks(list)).unwrap()))
}

fn verify(t: &str, k: &mut Keys) -> Result<tollgate_edge_core::identity::Identity, VerifyError> {
    jwt::verify(t, &config(json!({})), k, NOW)
}

fn refused(t: &str, k: &mut Keys) -> TokenError {
    match verify(t, k) {
        Err(VerifyError::Token(e)) => e,
        other => panic!("expected a token error, got {other:?}"),
    }
}

#[test]
fn es256_eddsa_rs256_verify() {
    for key in [TestKey::es256(3), TestKey::ed(4), TestKey::rsa()] {
        let mut k = keys(&[(&key, "k1")]);
        let id = verify(
            &token(&key, "k1", &claims("client-a", "api:read api:write")),
            &mut k,
        )
        .unwrap_or_else(|e| panic!("{}: {e:?}", key.alg()));
        assert_eq!(id.sub, "client-a");
        assert_eq!(id.client_id.as_deref(), Some("client-a"));
        assert!(id.has_scope("api:write"));
        assert!(!id.has_scope("api"));
        assert_eq!(id.jti.as_deref(), Some("jti-client-a"));
        assert_eq!(id.claims, vec![Some("jti-client-a".to_string())]);
    }
}

#[test]
fn time_claims_with_skew() {
    let key = TestKey::es256(3);
    let mut k = keys(&[(&key, "k1")]);
    let mut c = claims("c", "");
    c["exp"] = json!(NOW - 31);
    assert_eq!(refused(&token(&key, "k1", &c), &mut k), TokenError::Expired);
    c["exp"] = json!(NOW - 29); // inside the 30 s skew
    assert!(verify(&token(&key, "k1", &c), &mut k).is_ok());
    let mut c = claims("c", "");
    c["nbf"] = json!(NOW + 300);
    assert_eq!(
        refused(&token(&key, "k1", &c), &mut k),
        TokenError::NotYetValid
    );
    let mut c = claims("c", "");
    c["iat"] = json!(NOW + 300);
    assert_eq!(
        refused(&token(&key, "k1", &c), &mut k),
        TokenError::IssuedInFuture
    );
    let mut c = claims("c", "");
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        refused(&token(&key, "k1", &c), &mut k),
        TokenError::MissingClaim("exp")
    );
    let mut c = claims("c", "");
    c["exp"] = json!("tomorrow");
    assert_eq!(
        refused(&token(&key, "k1", &c), &mut k),
        TokenError::MissingClaim("exp")
    );
}

#[test]
fn issuer_and_audience() {
    let key = TestKey::es256(3);
    let mut k = keys(&[(&key, "k1")]);
    let mut c = claims("c", "");
    c["iss"] = json!("https://evil.test");
    assert_eq!(
        refused(&token(&key, "k1", &c), &mut k),
        TokenError::UnknownIssuer
    );
    let mut c = claims("c", "");
    c["aud"] = json!("other");
    assert_eq!(
        refused(&token(&key, "k1", &c), &mut k),
        TokenError::WrongAudience
    );
    c["aud"] = json!(["other", AUD]);
    assert!(verify(&token(&key, "k1", &c), &mut k).is_ok());
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(
        refused(&token(&key, "k1", &c), &mut k),
        TokenError::MissingClaim("aud")
    );
    let mut c = claims("c", "");
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        refused(&token(&key, "k1", &c), &mut k),
        TokenError::MissingClaim("sub")
    );
}

#[test]
fn signature_and_key_selection() {
    let key = TestKey::es256(3);
    let other = TestKey::es256(9);
    let rsa = TestKey::rsa();
    let mut k = keys(&[(&key, "k1"), (&rsa, "r1")]);
    // Signed by a key that is not in the set, under a kid that is.
    let t = token(&other, "k1", &claims("c", ""));
    assert_eq!(refused(&t, &mut k), TokenError::BadSignature);
    // Tampered payload.
    let good = token(&key, "k1", &claims("c", "api:read"));
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims("c", "api:write admin").to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(refused(&forged, &mut k), TokenError::BadSignature);
    // Unknown kid: the caller may refresh.
    let t = token(&key, "k-new", &claims("c", ""));
    assert_eq!(
        verify(&t, &mut k),
        Err(VerifyError::UnknownKid { issuer: 0 })
    );
    // An RSA kid named by an ES256 token.
    let t = token(&key, "r1", &claims("c", ""));
    assert_eq!(refused(&t, &mut k), TokenError::AlgorithmNotAllowed);
    // No kid and two keys: refused; no kid and one key of the alg: fine.
    let t = token_with(
        &key,
        &json!({"alg":"ES256","typ":"at+jwt"}),
        &claims("c", ""),
    );
    assert!(verify(&t, &mut k).is_ok());
    let mut k2 = keys(&[(&key, "k1"), (&other, "k2")]);
    assert_eq!(refused(&t, &mut k2), TokenError::UnknownKey);
    // Never loaded.
    let mut none = Keys(None);
    assert_eq!(
        verify(&token(&key, "k1", &claims("c", "")), &mut none),
        Err(VerifyError::NoJwks { issuer: 0 })
    );
}

#[test]
fn hostile_headers() {
    let key = TestKey::es256(3);
    let mut k = keys(&[(&key, "k1")]);
    let c = claims("c", "");
    // alg none, unsigned.
    let t = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"at+jwt"}"#),
        b64(c.to_string().as_bytes())
    );
    assert_eq!(refused(&t, &mut k), TokenError::Malformed);
    let t = format!(
        "{}.{}.AAAA",
        b64(br#"{"alg":"none","typ":"at+jwt","kid":"k1"}"#),
        b64(c.to_string().as_bytes())
    );
    assert_eq!(refused(&t, &mut k), TokenError::AlgorithmNotAllowed);
    // HS256 "signed" with the public key as the HMAC secret.
    let pub_jwk = key.jwk("k1").to_string();
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"HS256","typ":"at+jwt","kid":"k1"}"#),
        b64(c.to_string().as_bytes())
    );
    let mac = {
        use sha2::Digest;
        // Any bytes do: the algorithm is refused before any key is used.
        sha2::Sha256::digest([pub_jwk.as_bytes(), input.as_bytes()].concat())
    };
    let t = format!("{input}.{}", b64(&mac));
    assert_eq!(refused(&t, &mut k), TokenError::AlgorithmNotAllowed);
    // Token-supplied key material.
    for extra in ["jwk", "jku", "x5u", "x5c", "crit"] {
        let mut h = json!({"alg":"ES256","typ":"at+jwt","kid":"k1"});
        h[extra] = json!("https://attacker.test/keys");
        let t = token_with(&key, &h, &c);
        assert_eq!(refused(&t, &mut k), TokenError::ForbiddenHeader, "{extra}");
    }
    // typ required when configured.
    let t = token_with(&key, &json!({"alg":"ES256","kid":"k1","typ":"JWT"}), &c);
    assert_eq!(refused(&t, &mut k), TokenError::WrongType);
    let t = token_with(
        &key,
        &json!({"alg":"ES256","kid":"k1","typ":"application/AT+JWT"}),
        &c,
    );
    assert!(verify(&t, &mut k).is_ok());
    // Allowed algorithms per issuer.
    let ps = token_with(&key, &json!({"alg":"PS256","kid":"k1","typ":"at+jwt"}), &c);
    assert_eq!(refused(&ps, &mut k), TokenError::AlgorithmNotAllowed);
}

#[test]
fn malformed_tokens() {
    let key = TestKey::es256(3);
    let mut k = keys(&[(&key, "k1")]);
    for t in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.###.$$$",
        "eyJhbGciOiJFUzI1NiJ9.%%%.abc",
        "e30.e30.e30",        // {} header: no alg
        "bm90IGpzb24.e30.YQ", // "not json"
    ] {
        assert_eq!(refused(t, &mut k), TokenError::Malformed, "{t:?}");
    }
    let huge = format!("{}.{}.{}", "a".repeat(40_000), "b".repeat(30_000), "c");
    assert_eq!(refused(&huge, &mut k), TokenError::TooLarge);
}

#[test]
fn jwks_parsing() {
    let es = TestKey::es256(3);
    let mut doc = serde_json::from_slice::<serde_json::Value>(&jwks(&[(&es, "k1")])).unwrap();
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.push(json!({"kty":"oct","k":"c2VjcmV0","kid":"h1"}));
    keys.push(json!({"kty":"EC","crv":"P-256","kid":"enc","use":"enc","x":"AA","y":"AA"}));
    keys.push(json!({"kty":"RSA","kid":"small","n": b64(&[0xff; 128]), "e":"AQAB"}));
    keys.push(json!({"kty":"EC","crv":"P-521","kid":"p521","x":"AA","y":"AA"}));
    let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
    assert_eq!(set.keys.len(), 1);
    assert_eq!(set.skipped, 4);
    assert!(KeySet::parse(br#"{"keys":[{"kty":"oct","k":"AA"}]}"#).is_err());
    assert!(KeySet::parse(b"not json").is_err());
    assert!(KeySet::parse(br#"{"nokeys":[]}"#).is_err());
}

#[test]
fn es256_key_tables_survive_an_unchanged_jwks_refresh() {
    let (a, b) = (TestKey::es256(3), TestKey::es256(5));
    let mut first = keys(&[(&a, "k1")]);
    let t = token(&a, "k1", &claims("client-a", "api:read"));
    assert!(verify(&t, &mut first).is_ok());
    // The refreshed document holds the same key and a new one: the same key keeps its
    // (already built) table, the new one gets its own.
    let mut second = KeySet::parse(&jwks(&[(&a, "k1"), (&b, "k2")])).unwrap();
    let old = first.0.as_ref().unwrap();
    second.keep_tables_of(old);
    let same = |s: &KeySet, kid: &str| s.by_kid(kid).and_then(|k| k.p256.clone()).unwrap();
    assert!(std::sync::Arc::ptr_eq(
        &same(old, "k1"),
        &same(&second, "k1")
    ));
    assert!(!std::sync::Arc::ptr_eq(
        &same(old, "k1"),
        &same(&second, "k2")
    ));
    let mut second = Keys(Some(second));
    assert!(verify(&t, &mut second).is_ok());
    let t2 = token(&b, "k2", &claims("client-b", "api:read"));
    assert!(verify(&t2, &mut second).is_ok());
    // k2's signature does not verify under k1.
    let forged = token(&b, "k1", &claims("client-b", "api:read"));
    assert_eq!(refused(&forged, &mut second), TokenError::BadSignature);
}

/// ES384 tokens take the `es384` path (the key's table is built by the first one) and the
/// key's table is handed on across a refresh of an unchanged key, as for ES256.
#[test]
fn es384_verifies_on_its_fast_path_and_key_tables_survive_an_unchanged_jwks_refresh() {
    let cfg = config(json!({"issuers": [{
        "issuer": ISS,
        "audiences": [AUD],
        "algorithms": ["ES256", "ES384"],
        "typ": "at+jwt",
        "jwks": {"cluster": "auth"}
    }]}));
    let check = |t: &str, k: &mut Keys| jwt::verify(t, &cfg, k, NOW);
    let (a, b) = (TestKey::es384(3), TestKey::es384(5));
    let mut first = keys(&[(&a, "k1")]);
    let table_of = |s: &KeySet, kid: &str| s.by_kid(kid).and_then(|k| k.p384.clone()).unwrap();
    let old_key = table_of(first.0.as_ref().unwrap(), "k1");
    assert!(!old_key.table_built());
    let t = token(&a, "k1", &claims("client-a", "api:read"));
    let id = check(&t, &mut first).unwrap();
    assert_eq!(id.sub, "client-a");
    assert!(old_key.table_built());
    // A changed signature byte, and a token signed over other claims, are refused.
    let (input, sig) = t.rsplit_once('.').unwrap();
    let mut bad =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
    bad[40] ^= 1;
    let tampered = format!("{input}.{}", b64(&bad));
    assert!(matches!(
        check(&tampered, &mut first),
        Err(VerifyError::Token(TokenError::BadSignature))
    ));
    let mut second = KeySet::parse(&jwks(&[(&a, "k1"), (&b, "k2")])).unwrap();
    second.keep_tables_of(first.0.as_ref().unwrap());
    assert!(std::sync::Arc::ptr_eq(&old_key, &table_of(&second, "k1")));
    assert!(!table_of(&second, "k2").table_built());
    let mut second = Keys(Some(second));
    assert!(check(&t, &mut second).is_ok());
    let t2 = token(&b, "k2", &claims("client-b", "api:read"));
    assert!(check(&t2, &mut second).is_ok());
    // k2's signature does not verify under k1.
    let forged = token(&b, "k1", &claims("client-b", "api:read"));
    assert!(matches!(
        check(&forged, &mut second),
        Err(VerifyError::Token(TokenError::BadSignature))
    ));
}

#[test]
fn eddsa_key_tables_survive_an_unchanged_jwks_refresh() {
    let (a, b) = (TestKey::ed(4), TestKey::ed(6));
    let mut first = keys(&[(&a, "k1")]);
    let t = token(&a, "k1", &claims("client-a", "api:read"));
    assert!(verify(&t, &mut first).is_ok());
    let mut second = KeySet::parse(&jwks(&[(&a, "k1"), (&b, "k2")])).unwrap();
    let old = first.0.as_ref().unwrap();
    let table_of = |s: &KeySet, kid: &str| s.by_kid(kid).and_then(|k| k.ed25519.clone()).unwrap();
    assert!(table_of(old, "k1").table_built());
    second.keep_tables_of(old);
    assert!(std::sync::Arc::ptr_eq(
        &table_of(old, "k1"),
        &table_of(&second, "k1")
    ));
    assert!(!table_of(&second, "k2").table_built());
    let mut second = Keys(Some(second));
    assert!(verify(&t, &mut second).is_ok());
    let t2 = token(&b, "k2", &claims("client-b", "api:read"));
    assert!(verify(&t2, &mut second).is_ok());
    // k2's signature does not verify under k1, nor a token whose payload was changed.
    let forged = token(&b, "k1", &claims("client-b", "api:read"));
    assert_eq!(refused(&forged, &mut second), TokenError::BadSignature);
    let mut parts: Vec<&str> = t.split('.').collect();
    let other = token(&a, "k1", &claims("client-z", "api:admin"));
    parts[1] = other.split('.').nth(1).unwrap();
    assert_eq!(
        refused(&parts.join("."), &mut second),
        TokenError::BadSignature
    );
}

#[test]
fn es256_key_off_the_curve_verifies_nothing() {
    let a = TestKey::es256(3);
    let mut jwk = a.jwk("k1");
    // Change y: the coordinates no longer name a point of the curve.
    let mut y = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        jwk["y"].as_str().unwrap(),
    )
    .unwrap();
    y[31] ^= 1;
    jwk["y"] = json!(b64(&y));
    // Taken (the JWKS code checks lengths, not the curve equation) but never verifies.
    let set = KeySet::parse(json!({ "keys": [jwk] }).to_string().as_bytes()).unwrap();
    let mut k = Keys(Some(set));
    let t = token(&a, "k1", &claims("client-a", "api:read"));
    assert_eq!(refused(&t, &mut k), TokenError::BadSignature);
}

/// The signing input's SHA-256 handed in by the request path is the one the RS256 and
/// ES256 checks use: the right digest verifies, any other is a bad signature (the token
/// is unchanged), and without one the verifier hashes the input itself.
#[test]
fn a_given_signing_input_digest_is_the_one_checked() {
    use sha2::{Digest, Sha256};
    use tollgate_edge_core::cache::hash_token_and_input;
    for key in [TestKey::rsa(), TestKey::es256(3)] {
        let mut k = keys(&[(&key, "k1")]);
        let cfg = config(json!({}));
        let t = token(&key, "k1", &claims("client-a", "api:read"));
        let (hash, input) = hash_token_and_input(&t);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(t.as_bytes())));
        let input = input.unwrap();
        let signing_input = &t[..t.rfind('.').unwrap()];
        assert_eq!(input, <[u8; 32]>::from(Sha256::digest(signing_input)));
        assert!(jwt::verify_with_digest(&t, &cfg, &mut k, NOW, Some(&input)).is_ok());
        assert!(jwt::verify_with_digest(&t, &cfg, &mut k, NOW, None).is_ok());
        let mut other = input;
        other[7] ^= 1;
        assert!(
            matches!(
                jwt::verify_with_digest(&t, &cfg, &mut k, NOW, Some(&other)),
                Err(VerifyError::Token(TokenError::BadSignature))
            ),
            "{}",
            key.alg()
        );
    }
}

/// One pass gives both hashes, whatever the dots.
#[test]
fn hash_token_and_input_gives_both_hashes_of_any_string() {
    use sha2::{Digest, Sha256};
    use tollgate_edge_core::cache::{hash_token, hash_token_and_input};
    for s in [
        "a.b.c", "abc", "", ".", "a..", "..c", "a.b", "x.y.z.w", "é.ü",
    ] {
        let (hash, input) = hash_token_and_input(s);
        assert_eq!(hash, hash_token(s), "{s:?}");
        let want = s
            .rfind('.')
            .map(|d| <[u8; 32]>::from(Sha256::digest(&s.as_bytes()[..d])));
        assert_eq!(input, want, "{s:?}");
    }
}

/// `looks_like_jwt` (one table load per byte) against its definition: exactly three
/// non-empty segments of base64url characters between dots, on every string of up to
/// five characters over an alphabet with each kind of character.
#[test]
fn looks_like_jwt_agrees_with_its_definition() {
    fn definition(t: &str) -> bool {
        let segments: Vec<&str> = t.split('.').collect();
        segments.len() == 3
            && segments.iter().all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    }
    let alphabet = ['a', 'Z', '9', '-', '_', '.', '=', '+', '/', ' ', 'é'];
    let mut strings = vec![String::new()];
    let mut checked = 0;
    for _ in 0..5 {
        let mut next = Vec::new();
        for s in &strings {
            for c in alphabet {
                let t = format!("{s}{c}");
                assert_eq!(jwt::looks_like_jwt(&t), definition(&t), "{t:?}");
                checked += 1;
                next.push(t);
            }
        }
        strings = next;
    }
    assert!(checked > 170_000);
    let real = token(&TestKey::rsa(), "k1", &claims("c", "s"));
    assert!(jwt::looks_like_jwt(&real));
}

/// What `verify` parses: `parse_keeping` keeps only the claims it reads (and the configured
/// claim headers'), skipping the rest without building values, and refuses exactly what
/// `parse` refuses: a skipped member is still parsed in full (strings decoded, numbers
/// read, nesting limited).
#[test]
fn parse_keeping_refuses_what_parse_refuses_and_keeps_what_it_reads() {
    use serde_json::{Map, Value};
    use tollgate_edge_core::jwt::{Keep, READ_CLAIMS};
    let extra = vec![("email".to_string(), "x-email".to_string())];
    let deep = format!(
        r#"{{"iss":"a","o":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let payloads: Vec<Vec<u8>> = [
        r#"{"iss":"a","sub":"s","realm_access":{"roles":["x","y"]},"n":1.5,"b":true,"z":null}"#,
        r#"{"\u0069ss":"an escaped name","email":"e@x","other":"\u00e9","s\u0075b":"t"}"#,
        r#"{"iss":"a","other":"\ud800"}"#,
        r#"{"iss":"a","other":{"k":"\udc00x"}}"#,
        r#"{"iss":"a","other":"\ud83d\ude00"}"#,
        "{\"iss\":\"a\",\"other\":\"tab\there\"}",
        r#"{"iss":"a","other":"\q"}"#,
        r#"{"iss":"a","o":1e400}"#,
        r#"{"iss":"a","o":-0,"p":1E5,"q":123456789012345678901234567890,"r":-1.5e-300}"#,
        r#"{"iss":"a","o":01}"#,
        r#"{"iss":"a","o":[1,2,]}"#,
        r#"{"iss":"a",}"#,
        r#"{"iss":"a"} x"#,
        "{\"iss\":\"a\"}  \n",
        r#"["iss"]"#,
        r#""iss""#,
        "1",
        "{}",
        r#"{"iss":"a","iss":"b"}"#,
        r#"{"o":1,"o":{"x":[true,false,null]},"aud":["a","b"]}"#,
        r#"{"o":{"\u0041":[1,{"k":"v"}]},"cnf":{"jkt":"x"},"exp":1,"nbf":2,"iat":3}"#,
        r#"{"o":{"a":1,"a":2},"jti":"j","client_id":"c","scope":"s t"}"#,
        r#"{"iss":"a","o":tru}"#,
        r#"{"iss":"a","o":nul}"#,
        r#"{"iss" "a"}"#,
        r#"{"iss":"a","o":{"k"}}"#,
        r#"{"iss":"a","o":{1:2}}"#,
        deep.as_str(),
    ]
    .iter()
    .map(|p| p.as_bytes().to_vec())
    .chain([
        b"{\"iss\":\"a\",\"other\":\"\xff\"}".to_vec(),
        b"{\"iss\":\"a\",\"o\":{\"\xc3\x28\":1}}".to_vec(),
        b"{\"iss\":\"\xe2\x82\xac\",\"o\":\"\xe2\x82\xac\"}".to_vec(),
    ])
    .collect();
    let (mut accepted, mut refused) = (0, 0);
    for p in &payloads {
        let t = format!(
            "{}.{}.{}",
            b64(br#"{"alg":"ES256"}"#),
            b64(p),
            b64(&[1u8; 64])
        );
        let full = jwt::parse(&t, 1 << 16);
        let kept = jwt::parse_keeping(&t, 1 << 16, Keep::Read(&extra));
        let shown = String::from_utf8_lossy(p);
        assert_eq!(full.is_ok(), kept.is_ok(), "{shown}");
        match (full, kept) {
            (Ok(full), Ok(kept)) => {
                let want: Map<String, Value> = full
                    .claims
                    .into_iter()
                    .filter(|(n, _)| READ_CLAIMS.contains(&n.as_str()) || n == "email")
                    .collect();
                assert_eq!(kept.claims, want, "{shown}");
                accepted += 1;
            }
            (Err(a), Err(b)) => {
                assert_eq!(a, b, "{shown}");
                refused += 1;
            }
            _ => unreachable!(),
        }
    }
    // Both kinds are exercised (the counts pin the list: a payload moving sides shows).
    assert_eq!((accepted, refused), (11, 20));
}

/// RS256/384/512 and PS256/384/512 tokens verify on the filter's own RSA path (the key is
/// prepared for it), as the generic `jsonwebtoken` path verifies them; a signature made
/// for one of them is a bad signature under any other.
#[test]
fn every_rsa_algorithm_verifies_on_the_fast_path() {
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    use sha2::{Sha256, Sha384, Sha512};
    let TestKey::Rsa(sk) = TestKey::rsa() else {
        unreachable!()
    };
    let algs = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];
    let sign = |alg: &str, input: &[u8]| -> Vec<u8> {
        let mut rng = rsa::rand_core::OsRng;
        let k = sk.clone();
        match alg {
            "RS256" => rsa::pkcs1v15::SigningKey::<Sha256>::new(k)
                .sign(input)
                .to_vec(),
            "RS384" => rsa::pkcs1v15::SigningKey::<Sha384>::new(k)
                .sign(input)
                .to_vec(),
            "RS512" => rsa::pkcs1v15::SigningKey::<Sha512>::new(k)
                .sign(input)
                .to_vec(),
            "PS256" => rsa::pss::SigningKey::<Sha256>::new(k)
                .sign_with_rng(&mut rng, input)
                .to_vec(),
            "PS384" => rsa::pss::SigningKey::<Sha384>::new(k)
                .sign_with_rng(&mut rng, input)
                .to_vec(),
            _ => rsa::pss::SigningKey::<Sha512>::new(k)
                .sign_with_rng(&mut rng, input)
                .to_vec(),
        }
    };
    let cfg = config(json!({"issuers": [{
        "issuer": ISS, "audiences": [AUD], "algorithms": algs,
        "jwks": {"cluster": "auth"}}]}));
    let key = TestKey::Rsa(sk.clone());
    let mut k = keys(&[(&key, "k1")]);
    let set = k.key_set(0).unwrap();
    let jwk = set.by_kid("k1").unwrap();
    assert!(
        jwk.rsa.is_some(),
        "the key is not prepared for the fast path"
    );
    let decoding = jwk.decoding.clone();
    for alg in algs {
        let header = json!({"alg": alg, "kid": "k1"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims("client-a", "api:read").to_string().as_bytes())
        );
        let sig = sign(alg, input.as_bytes());
        let t = format!("{input}.{}", b64(&sig));
        let id = jwt::verify(&t, &cfg, &mut k, NOW).unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        assert_eq!(id.sub, "client-a");
        let generic = jsonwebtoken::crypto::verify(
            &b64(&sig),
            input.as_bytes(),
            &decoding,
            alg.parse::<jsonwebtoken::Algorithm>().unwrap(),
        );
        assert!(
            matches!(generic, Ok(true)),
            "{alg}: the generic path disagrees"
        );
        // The same signature under another RSA algorithm's name.
        for other in algs.iter().filter(|&&o| o != alg) {
            let header = json!({"alg": other, "kid": "k1"});
            let input2 = format!(
                "{}.{}",
                b64(header.to_string().as_bytes()),
                &input[input.find('.').unwrap() + 1..]
            );
            let sig2 = sign(alg, input2.as_bytes());
            let t2 = format!("{input2}.{}", b64(&sig2));
            assert!(
                matches!(
                    jwt::verify(&t2, &cfg, &mut k, NOW),
                    Err(VerifyError::Token(TokenError::BadSignature))
                ),
                "an {alg} signature accepted as {other}"
            );
        }
    }
}
