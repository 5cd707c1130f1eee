use serde_json::{json, Value};

use super::testing::TestKey;
use super::*;

const URI: &str = "https://as.example.com/oauth2/token";
const NOW: u64 = 1_800_000_000;

fn expect() -> Expect<'static> {
    Expect {
        method: "POST",
        uri: URI,
        now: NOW,
        max_age: 300,
        max_skew: 60,
        access_token: None,
        nonces: None,
    }
}

fn invalid(r: Result<Proof, DpopError>, what: &str) {
    match r {
        Err(DpopError::Invalid(msg)) => assert!(msg.contains(what), "{msg:?} lacks {what:?}"),
        other => panic!("expected invalid ({what}), got {other:?}"),
    }
}

// RFC 9449 §4.1 Figure 2 (token request) and §7.1 Figure 13 (resource request).
const RFC_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
const RFC_TOKEN_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg";
const RFC_RESOURCE_PROOF: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5leGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0RaNTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9.2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA";
const RFC_ACCESS_TOKEN: &str = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";

#[test]
fn rfc7638_example_thumbprint() {
    // RFC 7638 §3.1.
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    let Value::Object(m) = jwk else {
        unreachable!()
    };
    assert_eq!(
        thumbprint(&m).unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn rfc9449_token_request_proof_verifies() {
    let e = Expect {
        uri: "https://server.example.com/token",
        now: 1_562_262_616,
        ..expect()
    };
    let p = verify(RFC_TOKEN_PROOF, &e).unwrap();
    assert_eq!(p.jkt, RFC_JKT, "RFC 9449 §6.1's cnf.jkt");
    assert_eq!(p.jti, "-BwC3ESc6acc2lTc");
    assert_eq!(p.iat, 1_562_262_616);
    // The same proof at another endpoint, with another method, or much later: refused.
    invalid(verify(RFC_TOKEN_PROOF, &Expect { uri: URI, ..e }), "htu");
    let e = Expect {
        uri: "https://server.example.com/token",
        now: 1_562_262_616,
        ..expect()
    };
    invalid(
        verify(RFC_TOKEN_PROOF, &Expect { method: "GET", ..e }),
        "htm",
    );
    let e = Expect {
        uri: "https://server.example.com/token",
        now: 1_562_262_616 + 301,
        ..expect()
    };
    invalid(verify(RFC_TOKEN_PROOF, &e), "too old");
}

#[test]
fn rfc9449_resource_proof_ath() {
    let e = Expect {
        method: "GET",
        uri: "https://resource.example.org/protectedresource",
        now: 1_562_262_618,
        access_token: Some(RFC_ACCESS_TOKEN),
        ..expect()
    };
    assert_eq!(verify(RFC_RESOURCE_PROOF, &e).unwrap().jkt, RFC_JKT);
    let other = Expect {
        access_token: Some("another-token"),
        ..e
    };
    invalid(verify(RFC_RESOURCE_PROOF, &other), "ath");
    // A token proof has no ath: refused where an access token is presented.
    let e = Expect {
        uri: "https://server.example.com/token",
        now: 1_562_262_616,
        access_token: Some(RFC_ACCESS_TOKEN),
        ..expect()
    };
    invalid(verify(RFC_TOKEN_PROOF, &e), "ath");
}

#[test]
fn every_supported_alg_round_trips() {
    for key in [
        TestKey::es256(),
        TestKey::eddsa(),
        TestKey::rsa(false),
        TestKey::rsa(true),
    ] {
        let proof = key.proof("POST", URI, NOW);
        let p = verify(&proof, &expect()).unwrap_or_else(|e| panic!("{}: {e:?}", key.alg()));
        assert_eq!(p.jkt, key.jkt(), "{}", key.alg());
        assert_eq!(p.jkt.len(), 43);
        assert!(is_thumbprint(&p.jkt));
    }
}

#[test]
fn rs256_and_ps256_are_not_interchangeable() {
    let rs = TestKey::rsa(false);
    let proof = rs.proof("POST", URI, NOW);
    let (h, rest) = proof.split_once('.').unwrap();
    let mut header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
    header["alg"] = json!("PS256");
    let relabelled = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(header.to_string().as_bytes())
    );
    invalid(verify(&relabelled, &expect()), "signature");
}

#[test]
fn bad_signature_is_refused() {
    let key = TestKey::es256();
    let other = TestKey::es256();
    let claims = json!({"jti": "j", "htm": "POST", "htu": URI, "iat": NOW});
    // Signed by another key than the one in the header.
    let forged = other.jws(&key.header(), &claims);
    invalid(verify(&forged, &expect()), "signature");
    // A flipped payload.
    let good = key.jws(&key.header(), &claims);
    let parts: Vec<&str> = good.split('.').collect();
    let changed = URL_SAFE_NO_PAD.encode(
        json!({"jti": "j", "htm": "POST", "htu": URI, "iat": NOW + 1})
            .to_string()
            .as_bytes(),
    );
    invalid(
        verify(&format!("{}.{changed}.{}", parts[0], parts[2]), &expect()),
        "signature",
    );
    // No signature at all.
    invalid(
        verify(&format!("{}.{}.", parts[0], parts[1]), &expect()),
        "signature",
    );
}

#[test]
fn header_rules() {
    let key = TestKey::es256();
    let claims = json!({"jti": "j", "htm": "POST", "htu": URI, "iat": NOW});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut h = key.header();
        f(&mut h);
        verify(&key.jws(&h, &claims), &expect())
    };
    invalid(with(&|h| h["typ"] = json!("JWT")), "typ");
    invalid(
        with(&|h| drop(h.as_object_mut().unwrap().remove("typ"))),
        "typ",
    );
    invalid(with(&|h| h["alg"] = json!("none")), "alg");
    invalid(with(&|h| h["alg"] = json!("HS256")), "alg");
    invalid(with(&|h| h["alg"] = json!("ES384")), "alg");
    invalid(
        with(&|h| drop(h.as_object_mut().unwrap().remove("jwk"))),
        "jwk",
    );
    invalid(with(&|h| h["jwk"] = json!("a string")), "jwk");
    invalid(with(&|h| h["crit"] = json!(["exp"])), "crit");
    invalid(with(&|h| h["jwk"]["d"] = json!("AAAA")), "private member d");
    invalid(with(&|h| h["jwk"]["crv"] = json!("P-384")), "P-256");
    invalid(with(&|h| h["jwk"]["kty"] = json!("oct")), "kty");
    invalid(with(&|h| h["jwk"]["x"] = json!("AAAA")), "32 bytes");
    // typ is a media type: case does not matter.
    assert!(with(&|h| h["typ"] = json!("DPoP+JWT")).is_ok());
    // alg none with an empty signature: refused before any key is looked at.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD
            .encode(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk()}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    invalid(verify(&none, &expect()), "alg");
    // An HS256 proof whose MAC key is the public key's x: refused.
    let hs = format!(
        "{}.{}.AAAA",
        URL_SAFE_NO_PAD.encode(
            json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}})
                .to_string()
        ),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    invalid(verify(&hs, &expect()), "alg");
}

#[test]
fn private_rsa_and_okp_members_are_refused() {
    for (key, member) in [(TestKey::rsa(false), "p"), (TestKey::eddsa(), "d")] {
        let mut h = key.header();
        h["jwk"][member] = json!("AAAA");
        let proof = key.jws(
            &h,
            &json!({"jti": "j", "htm": "POST", "htu": URI, "iat": NOW}),
        );
        invalid(verify(&proof, &expect()), "private member");
    }
}

#[test]
fn claim_rules() {
    let key = TestKey::es256();
    let v = |claims: Value| verify(&key.jws(&key.header(), &claims), &expect());
    invalid(
        v(json!({"jti": "j", "htm": "GET", "htu": URI, "iat": NOW})),
        "htm",
    );
    invalid(
        v(json!({"jti": "j", "htm": "post", "htu": URI, "iat": NOW})),
        "htm",
    );
    invalid(v(json!({"jti": "j", "htu": URI, "iat": NOW})), "htm");
    invalid(
        v(
            json!({"jti": "j", "htm": "POST", "htu": "https://as.example.com/oauth2/revoke", "iat": NOW}),
        ),
        "htu",
    );
    invalid(
        v(
            json!({"jti": "j", "htm": "POST", "htu": "https://evil.example.com/oauth2/token", "iat": NOW}),
        ),
        "htu",
    );
    invalid(v(json!({"jti": "j", "htm": "POST", "iat": NOW})), "htu");
    invalid(v(json!({"jti": "j", "htm": "POST", "htu": URI})), "iat");
    invalid(
        v(json!({"jti": "j", "htm": "POST", "htu": URI, "iat": "now"})),
        "iat",
    );
    invalid(
        v(json!({"jti": "j", "htm": "POST", "htu": URI, "iat": NOW - 301})),
        "too old",
    );
    invalid(
        v(json!({"jti": "j", "htm": "POST", "htu": URI, "iat": NOW + 61})),
        "future",
    );
    assert!(v(json!({"jti": "j", "htm": "POST", "htu": URI, "iat": NOW - 300})).is_ok());
    assert!(v(json!({"jti": "j", "htm": "POST", "htu": URI, "iat": NOW + 60})).is_ok());
    invalid(
        v(json!({"htm": "POST", "htu": URI, "iat": NOW})),
        "jti is required",
    );
    invalid(
        v(json!({"jti": "", "htm": "POST", "htu": URI, "iat": NOW})),
        "jti",
    );
    invalid(
        v(json!({"jti": "x".repeat(MAX_JTI_LEN + 1), "htm": "POST", "htu": URI, "iat": NOW})),
        "jti",
    );
    assert!(
        v(json!({"jti": "x".repeat(MAX_JTI_LEN), "htm": "POST", "htu": URI, "iat": NOW})).is_ok()
    );
}

#[test]
fn htu_is_compared_without_query_and_fragment_after_normalisation() {
    for same in [
        URI,
        "https://as.example.com/oauth2/token?x=1",
        "https://as.example.com/oauth2/token#frag",
        "HTTPS://AS.Example.COM/oauth2/token",
        "https://as.example.com:443/oauth2/token",
        "https://as.example.com/oauth2/./token",
        "https://as.example.com/oauth2/x/../token",
    ] {
        assert!(same_uri(same, URI), "{same}");
    }
    for other in [
        "http://as.example.com/oauth2/token",
        "https://as.example.com:8443/oauth2/token",
        "https://as.example.com/OAUTH2/token",
        "https://as.example.com/oauth2/token/",
        "https://as.example.com.evil/oauth2/token",
        "/oauth2/token",
        "not a uri",
        "ftp://as.example.com/oauth2/token",
    ] {
        assert!(!same_uri(other, URI), "{other}");
    }
    assert!(same_uri("https://h/a%2fb", "https://h/a%2Fb"));
    assert!(same_uri("http://h:80/", "http://h"));
}

#[test]
fn malformed_and_oversized_proofs() {
    let e = expect();
    for junk in [
        "",
        "a",
        "a.b",
        "a.b.c.d",
        "!!.!!.!!",
        "e30.e30.",
        "W10.e30.AA",
    ] {
        assert!(
            matches!(verify(junk, &e), Err(DpopError::Invalid(_))),
            "{junk}"
        );
    }
    let key = TestKey::es256();
    let big = key.proof_with(
        "POST",
        URI,
        NOW,
        json!({"pad": "x".repeat(MAX_PROOF_BYTES)}),
    );
    invalid(verify(&big, &e), "too large");
}

#[test]
fn nonces() {
    let n = Nonces::new(b"pepper");
    let key = TestKey::es256();
    let e = Expect {
        nonces: Some(&n),
        ..expect()
    };
    // None, a wrong one, one from another server key, an expired one: use_dpop_nonce.
    assert_eq!(
        verify(&key.proof("POST", URI, NOW), &e),
        Err(DpopError::UseNonce)
    );
    let with = |nonce: &str| key.proof_with("POST", URI, NOW, json!({"nonce": nonce}));
    assert_eq!(verify(&with("abc"), &e), Err(DpopError::UseNonce));
    let foreign = Nonces::new(b"other").current(NOW);
    assert_eq!(verify(&with(&foreign), &e), Err(DpopError::UseNonce));
    let old = n.current(NOW - 2 * NONCE_SLOT_SECS);
    assert_eq!(verify(&with(&old), &e), Err(DpopError::UseNonce));
    // The current and the previous slot's.
    assert!(verify(&with(&n.current(NOW)), &e).is_ok());
    assert!(verify(&with(&n.current(NOW - NONCE_SLOT_SECS)), &e).is_ok());
    // A bad proof with a good nonce is still a bad proof.
    let bad = key.proof_with("GET", URI, NOW, json!({"nonce": n.current(NOW)}));
    invalid(verify(&bad, &e), "htm");
}

#[test]
fn jti_is_kept_while_the_proof_could_pass() {
    let key = TestKey::es256();
    let e = expect();
    let p = verify(&key.proof("POST", URI, NOW - 10), &e).unwrap();
    assert!(p.jti_kept_until(&e) > NOW - 10 + e.max_age);
    let p = verify(&key.proof("POST", URI, NOW + 60), &e).unwrap();
    assert!(p.jti_kept_until(&e) > NOW + 60 + e.max_age - 1);
}
