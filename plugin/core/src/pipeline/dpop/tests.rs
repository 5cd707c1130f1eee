use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::super::test_support::*;
use super::*;
use crate::reject::Rejection;
use crate::testing::MemoryHost;

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A client's DPoP key.
struct Client {
    key: p256::ecdsa::SigningKey,
}

impl Client {
    fn new(seed: u8) -> Client {
        let mut bytes = [seed; 32];
        bytes[0] = 3;
        Client {
            key: p256::ecdsa::SigningKey::from_bytes((&bytes).into()).expect("key"),
        }
    }

    fn jwk(&self) -> Value {
        let p = self.key.verifying_key().to_encoded_point(false);
        json!({"kty": "EC", "crv": "P-256",
               "x": b64(p.x().expect("x")), "y": b64(p.y().expect("y"))})
    }

    /// RFC 7638 thumbprint, computed independently of the code under test (serde_json
    /// with sorted keys).
    fn jkt(&self) -> String {
        let j = self.jwk();
        let canonical = json!({"crv": j["crv"], "kty": j["kty"], "x": j["x"], "y": j["y"]});
        b64(&Sha256::digest(canonical.to_string().as_bytes()))
    }

    /// A bound token.
    fn token(&self) -> String {
        token_json(json!({"cnf": {"jkt": self.jkt()}, "scope": "read"}))
    }

    /// A proof with `header`/`claims` (JSON objects) signed by this key.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig: p256::ecdsa::Signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()})
    }

    fn claims(&self, token: &str, jti: &str) -> Value {
        json!({"jti": jti, "htm": "GET", "htu": "https://h/r", "iat": NOW,
               "ath": b64(&Sha256::digest(token.as_bytes()))})
    }

    /// A valid proof for `GET https://h/r` with `token`.
    fn proof(&self, token: &str, jti: &str) -> String {
        self.sign(&self.header(), &self.claims(token, jti))
    }

    /// A proof whose claims are the valid ones changed by `f`.
    fn proof_with(&self, token: &str, f: impl FnOnce(&mut Value)) -> String {
        let mut c = self.claims(token, "j-x");
        f(&mut c);
        self.sign(&self.header(), &c)
    }
}

/// `GET https://h/r` with `Authorization: <scheme> <token>` and the `DPoP` headers.
fn req(scheme: &str, token: &str, proofs: &[&str]) -> Request {
    let mut r = request("/r", None);
    r.headers.push((":scheme".into(), "https".into()));
    r.headers
        .push(("authorization".into(), format!("{scheme} {token}")));
    for p in proofs {
        r.headers.push(("dpop".into(), p.to_string()));
    }
    r
}

fn decide(w: &mut Worker, host: &MemoryHost, r: &Request) -> Outcome {
    w.on_request(host, r)
}

fn rejection(o: Outcome) -> Rejection {
    match o {
        Outcome::Reject(r) => r,
        other => panic!("not a rejection: {other:?}"),
    }
}

fn www(r: &Rejection) -> &str {
    r.headers
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// The request is refused 401 with `error` in a DPoP challenge, counted under `reason`.
fn refused(w: &mut Worker, host: &MemoryHost, r: &Request, error: &str, reason: &'static str) {
    let before = host.metric_value(Metric::Denied(reason));
    let rej = rejection(decide(w, host, r));
    assert_eq!((rej.status, rej.reason), (401, reason), "{rej:?}");
    let h = www(&rej);
    assert!(h.starts_with("DPoP "), "{h}");
    assert!(h.contains(&format!("error=\"{error}\"")), "{h}");
    assert!(h.contains("algs=\"ES256\""), "{h}");
    assert_eq!(host.metric_value(Metric::Denied(reason)), before + 1);
}

fn allowed(o: &Outcome) -> bool {
    matches!(o, Outcome::Allow { .. })
}

#[test]
fn a_valid_proof_with_its_bound_token_is_accepted() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let t = c.token();
    assert!(allowed(&decide(
        &mut w,
        &host,
        &req("DPoP", &t, &[&c.proof(&t, "j1")])
    )));
    // The scheme is case-insensitive, the htu's scheme and host too, the default port and
    // a query are ignored.
    let p = c.proof_with(&t, |c| c["htu"] = json!("HTTPS://H:443/r"));
    let mut r = req("dpop", &t, &[&p]);
    r.path = "/r?x=1".into();
    assert!(allowed(&decide(&mut w, &host, &r)));
}

#[test]
fn a_replayed_proof_is_refused_across_workers() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let t = c.token();
    let p = c.proof(&t, "j1");
    assert!(allowed(&decide(&mut w, &host, &req("DPoP", &t, &[&p]))));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_replay",
    );
    // Another worker of the same Envoy (same shared data) refuses it too.
    let mut w2 = Worker::new(w.cfg.clone());
    w2.tick(&host);
    refused(
        &mut w2,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_replay",
    );
    // Another proof (new jti) of the same key is fine.
    assert!(allowed(&decide(
        &mut w,
        &host,
        &req("DPoP", &t, &[&c.proof(&t, "j2")])
    )));
}

#[test]
fn a_jti_is_remembered_for_the_window_only() {
    let (host, mut w) = worker(json!({"dpop": {"iat_window_s": 10}}));
    let c = Client::new(1);
    let t = token_json(json!({"cnf": {"jkt": c.jkt()}, "exp": NOW + 3600}));
    let p = c.proof(&t, "j1");
    assert!(allowed(&decide(&mut w, &host, &req("DPoP", &t, &[&p]))));
    // Within the window the jti is refused even in a new proof.
    host.advance_ms(9_000);
    let again = c.proof_with(&t, |x| {
        x["jti"] = json!("j1");
        x["iat"] = json!(NOW + 9);
    });
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&again]),
        "invalid_dpop_proof",
        "dpop_replay",
    );
    // After it, the first proof is refused for its iat, and the entry is gone: a fresh
    // proof reusing the jti is accepted (RFC 9449 §11.1: jtis are kept for the window).
    host.advance_ms(3_000);
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_iat",
    );
    let later = c.proof_with(&t, |x| {
        x["jti"] = json!("j1");
        x["iat"] = json!(NOW + 12);
    });
    assert!(allowed(&decide(&mut w, &host, &req("DPoP", &t, &[&later]))));
}

#[test]
fn the_replay_set_is_bounded_and_fails_closed_when_full() {
    let (host, mut w) = worker(json!({"dpop": {"iat_window_s": 10, "replay_shards": 2,
                                               "replay_entries_per_shard": 3}}));
    let c = Client::new(1);
    let t = token_json(json!({"cnf": {"jkt": c.jkt()}, "exp": NOW + 3600}));
    let mut accepted = 0;
    let mut full = 0;
    for i in 0..50 {
        let o = decide(
            &mut w,
            &host,
            &req("DPoP", &t, &[&c.proof(&t, &format!("f{i}"))]),
        );
        match o {
            Outcome::Allow { .. } => accepted += 1,
            Outcome::Reject(r) => {
                assert_eq!((r.status, r.reason), (503, "dpop_replay_full"));
                full += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // 2 shards × 3 entries: exactly 6 proofs fit; the rest are refused, not evicting a
    // live entry (that would let its proof be replayed within the window).
    assert_eq!((accepted, full), (6, 44));
    assert_eq!(host.metric_value(Metric::Denied("dpop_replay_full")), 44);
    let replay_bytes: usize = host
        .shared_keys()
        .iter()
        .filter(|k| k.starts_with("tollgate/dpop/"))
        .map(|k| host.shared_get(k).0.map_or(0, |v| v.len()))
        .sum();
    assert_eq!(replay_bytes, 2 * 3 * ENTRY);
    assert_eq!(
        host.shared_keys()
            .iter()
            .filter(|k| k.starts_with("tollgate/dpop/"))
            .count(),
        2
    );
    // Once the entries expire, proofs are accepted again.
    host.advance_ms(11_000);
    let p = c.proof_with(&t, |x| {
        x["jti"] = json!("after");
        x["iat"] = json!(NOW + 11);
    });
    assert!(allowed(&decide(&mut w, &host, &req("DPoP", &t, &[&p]))));
}

#[test]
fn a_proof_for_another_uri_or_method_is_refused() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let t = c.token();
    for htu in [
        "https://h/other",
        "https://evil/r",
        "http://h/r",
        "https://h:8443/r",
        "https://h/r/",
        "h/r",
    ] {
        let p = c.proof_with(&t, |x| x["htu"] = json!(htu));
        refused(
            &mut w,
            &host,
            &req("DPoP", &t, &[&p]),
            "invalid_dpop_proof",
            "dpop_htu",
        );
    }
    let p = c.proof_with(&t, |x| x["htm"] = json!("POST"));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_htm",
    );
    // The request addressed over http (`:scheme`) does not match an https htu.
    let mut r = req("DPoP", &t, &[&c.proof(&t, "j-http")]);
    r.headers.retain(|(k, _)| k != ":scheme");
    r.headers.push((":scheme".into(), "http".into()));
    refused(&mut w, &host, &r, "invalid_dpop_proof", "dpop_htu");
}

#[test]
fn the_scheme_comes_from_the_configured_header_behind_a_tls_terminator() {
    let (host, mut w) = worker(json!({"dpop": {"scheme_header": "x-forwarded-proto"}}));
    let c = Client::new(1);
    let t = c.token();
    let mut r = req("DPoP", &t, &[&c.proof(&t, "j1")]);
    r.headers.retain(|(k, _)| k != ":scheme");
    r.headers.push((":scheme".into(), "http".into()));
    r.headers.push(("x-forwarded-proto".into(), "https".into()));
    assert!(allowed(&decide(&mut w, &host, &r)));
    // Negative: without the header the scheme is unknown, the proof refused.
    let mut r = req("DPoP", &t, &[&c.proof(&t, "j2")]);
    r.headers.retain(|(k, _)| k != "x-forwarded-proto");
    refused(&mut w, &host, &r, "invalid_dpop_proof", "dpop_htu");
}

#[test]
fn a_stale_or_future_iat_is_refused() {
    let (host, mut w) = worker(json!({"dpop": {"iat_window_s": 30}}));
    let c = Client::new(1);
    let t = c.token();
    for iat in [json!(NOW - 31), json!(NOW + 31), json!("now"), Value::Null] {
        let p = c.proof_with(&t, |x| x["iat"] = iat.clone());
        refused(
            &mut w,
            &host,
            &req("DPoP", &t, &[&p]),
            "invalid_dpop_proof",
            "dpop_iat",
        );
    }
    let p = c.proof_with(&t, |x| x["iat"] = json!(NOW - 30));
    assert!(allowed(&decide(&mut w, &host, &req("DPoP", &t, &[&p]))));
}

#[test]
fn a_proof_by_another_key_or_with_a_bad_signature_is_refused() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let thief = Client::new(2);
    let t = c.token();
    // The thief's own valid proof: its key is not the one the token is bound to.
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&thief.proof(&t, "j1")]),
        "invalid_dpop_proof",
        "dpop_key",
    );
    // The victim's jwk in the header, signed by the thief.
    let forged = thief.sign(&c.header(), &c.claims(&t, "j2"));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&forged]),
        "invalid_dpop_proof",
        "dpop_signature",
    );
    // A valid proof with a changed claim (signature no longer matches).
    let p = c.proof(&t, "j3");
    let mut parts: Vec<String> = p.split('.').map(str::to_string).collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).expect("b64")).expect("json");
    claims["jti"] = json!("j4");
    parts[1] = b64(claims.to_string().as_bytes());
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&parts.join(".")]),
        "invalid_dpop_proof",
        "dpop_signature",
    );
}

#[test]
fn a_missing_or_wrong_ath_is_refused() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let t = c.token();
    let other = c.token_for_other_sub();
    for ath in [
        Value::Null,
        json!(""),
        json!(b64(&Sha256::digest(other.as_bytes()))),
    ] {
        let p = c.proof_with(&t, |x| {
            if ath.is_null() {
                x.as_object_mut().map(|o| o.remove("ath"));
            } else {
                x["ath"] = ath.clone();
            }
        });
        refused(
            &mut w,
            &host,
            &req("DPoP", &t, &[&p]),
            "invalid_dpop_proof",
            "dpop_ath",
        );
    }
}

impl Client {
    fn token_for_other_sub(&self) -> String {
        token_json(json!({"cnf": {"jkt": self.jkt()}, "sub": "bob"}))
    }
}

#[test]
fn a_bound_token_as_bearer_is_refused() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let t = c.token();
    // With or without a proof: the Bearer scheme is a downgrade.
    refused(
        &mut w,
        &host,
        &req("Bearer", &t, &[]),
        "invalid_token",
        "dpop_bearer",
    );
    refused(
        &mut w,
        &host,
        &req("Bearer", &t, &[&c.proof(&t, "j1")]),
        "invalid_token",
        "dpop_bearer",
    );
    // Also after the token was accepted once (the local cache keeps the binding).
    assert!(allowed(&decide(
        &mut w,
        &host,
        &req("DPoP", &t, &[&c.proof(&t, "j2")])
    )));
    refused(
        &mut w,
        &host,
        &req("Bearer", &t, &[]),
        "invalid_token",
        "dpop_bearer",
    );
    // And from the shared cache, in a worker that has not seen the token.
    let mut w2 = Worker::new(w.cfg.clone());
    w2.tick(&host);
    refused(
        &mut w2,
        &host,
        &req("Bearer", &t, &[]),
        "invalid_token",
        "dpop_bearer",
    );
}

#[test]
fn no_proof_or_two_proofs_are_refused() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let t = c.token();
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[]),
        "invalid_dpop_proof",
        "dpop_missing",
    );
    let (a, b) = (c.proof(&t, "j1"), c.proof(&t, "j2"));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&a, &b]),
        "invalid_dpop_proof",
        "dpop_repeated",
    );
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&format!("{a},{b}")]),
        "invalid_dpop_proof",
        "dpop_repeated",
    );
}

#[test]
fn alg_none_hs256_and_a_wrong_typ_are_refused() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let t = c.token();
    for alg in ["none", "HS256", "RS256", "ES384"] {
        let mut h = c.header();
        h["alg"] = json!(alg);
        let p = c.sign(&h, &c.claims(&t, "j1"));
        refused(
            &mut w,
            &host,
            &req("DPoP", &t, &[&p]),
            "invalid_dpop_proof",
            "dpop_alg",
        );
    }
    // An unsigned proof (alg none, empty signature part).
    let mut h = c.header();
    h["alg"] = json!("none");
    let unsigned = format!(
        "{}.{}.",
        b64(h.to_string().as_bytes()),
        b64(c.claims(&t, "j2").to_string().as_bytes())
    );
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&unsigned]),
        "invalid_dpop_proof",
        "dpop_malformed",
    );
    for typ in [json!("JWT"), json!("at+jwt"), Value::Null] {
        let mut h = c.header();
        h["typ"] = typ;
        let p = c.sign(&h, &c.claims(&t, "j3"));
        refused(
            &mut w,
            &host,
            &req("DPoP", &t, &[&p]),
            "invalid_dpop_proof",
            "dpop_typ",
        );
    }
}

#[test]
fn a_private_or_foreign_jwk_is_refused() {
    let (host, mut w) = worker(json!({}));
    let c = Client::new(1);
    let t = c.token();
    let mut h = c.header();
    h["jwk"]["d"] = json!(b64(&c.key.to_bytes()));
    let p = c.sign(&h, &c.claims(&t, "j1"));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_jwk",
    );
    let mut h = c.header();
    h["jwk"]["crv"] = json!("P-384");
    let p = c.sign(&h, &c.claims(&t, "j2"));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_jwk",
    );
    let mut h = c.header();
    h["jwk"] = json!({"kty": "oct", "k": "c2VjcmV0"});
    let p = c.sign(&h, &c.claims(&t, "j3"));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_jwk",
    );
}

#[test]
fn an_oversized_proof_or_jti_is_refused() {
    let (host, mut w) = worker(json!({"dpop": {"max_proof_bytes": 1024}}));
    let c = Client::new(1);
    let t = c.token();
    let p = c.proof_with(&t, |x| x["pad"] = json!("x".repeat(1024)));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_too_large",
    );
    let p = c.proof_with(&t, |x| x["jti"] = json!("j".repeat(129)));
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "invalid_dpop_proof",
        "dpop_malformed",
    );
}

#[test]
fn an_unbound_token_is_refused_as_dpop_and_where_the_route_requires_binding() {
    let (host, mut w) = worker(json!({"rules": [{"path_prefix": "/r",
                                                 "require": "sender_constrained"}]}));
    let c = Client::new(1);
    let plain = token(&[("scope", "read")]);
    refused(
        &mut w,
        &host,
        &req("DPoP", &plain, &[&c.proof(&plain, "j1")]),
        "invalid_token",
        "dpop_unbound",
    );
    refused(
        &mut w,
        &host,
        &req("Bearer", &plain, &[]),
        "invalid_token",
        "dpop_required",
    );
    // The bound token with its proof passes the same route.
    let t = c.token();
    assert!(allowed(&decide(
        &mut w,
        &host,
        &req("DPoP", &t, &[&c.proof(&t, "j2")])
    )));
    // Negative of the requirement: another route takes the plain Bearer token.
    let mut r = req("Bearer", &plain, &[]);
    r.path = "/other".into();
    assert!(allowed(&decide(&mut w, &host, &r)));
}

#[test]
fn tokens_without_binding_cost_one_claim_check() {
    let (host, mut w) = worker(json!({}));
    let plain = token(&[("scope", "read")]);
    let r = request("/r", Some(&plain));
    let mut cx = Ctx::new(&w.cfg, &r);
    assert_eq!(
        super::super::extract::run(&mut cx, &mut w, &host),
        ControlFlow::Continue(())
    );
    assert_eq!(
        super::super::authenticate::run(&mut cx, &mut w, &host),
        ControlFlow::Continue(())
    );
    let writes = host.shared_keys();
    assert_eq!(run(&mut cx, &mut w, &host), ControlFlow::Continue(()));
    // Nothing written, nothing counted by the stage.
    assert_eq!(host.shared_keys(), writes);
    assert!(host.metrics.borrow().keys().all(|k| !k.contains("dpop")));
}

#[test]
fn a_malformed_cnf_makes_the_token_malformed() {
    let (host, mut w) = worker(json!({}));
    for cnf in [json!("abc"), json!({"jkt": 5}), json!({"jkt": "short"})] {
        let t = token_json(json!({"cnf": cnf}));
        let rej = rejection(decide(&mut w, &host, &req("Bearer", &t, &[])));
        assert_eq!(rej.status, 401, "{cnf}");
    }
    // A cnf of the other confirmation method (certificate, RFC 8705) is no DPoP binding,
    // but it is never ignored either: malformed, or without the client certificate, 401
    // (the `mtls` stage).
    for x5t in ["abc", "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"] {
        let t = token_json(json!({"cnf": {"x5t#S256": x5t}}));
        let rej = rejection(decide(&mut w, &host, &req("Bearer", &t, &[])));
        assert_eq!(rej.status, 401, "{x5t}");
        assert!(!rej.reason.starts_with("dpop"), "{}", rej.reason);
    }
}

#[test]
fn the_dpop_configuration_is_checked() {
    let base = |extra: Value| {
        let mut c = json!({"issuers": [{"issuer": ISS, "audiences": ["a"],
                                        "jwks": {"cluster": "auth"}}]});
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
        }
        crate::Config::from_json(c.to_string().as_bytes())
    };
    let ok = base(json!({})).expect("defaults");
    assert_eq!(
        (
            ok.dpop.iat_window_s,
            ok.dpop.max_proof_bytes,
            ok.dpop.replay_shards,
            ok.dpop.replay_entries_per_shard,
            ok.dpop.scheme_header.clone()
        ),
        (60, 4096, 1024, 64, None)
    );
    assert!(!ok.default_policy.sender_constrained);
    let req = base(json!({"default_rule": {"require": "sender_constrained"}})).expect("require");
    assert!(req.default_policy.sender_constrained);
    for bad in [
        json!({"dpop": {"iat_window_s": 0}}),
        json!({"dpop": {"iat_window_s": 601}}),
        json!({"dpop": {"max_proof_bytes": 100}}),
        json!({"dpop": {"replay_shards": 0}}),
        json!({"dpop": {"replay_entries_per_shard": 5000}}),
        json!({"dpop": {"scheme_header": ":scheme"}}),
        json!({"dpop": {"nonce": true}}),
        json!({"rules": [{"path_prefix": "/", "require": "mtls"}]}),
        json!({"rules": [{"path_prefix": "/", "allow_anonymous": true,
                          "require": "sender_constrained"}]}),
    ] {
        assert!(base(bad.clone()).is_err(), "{bad}");
    }
}

/// A worker like `worker(extra)` whose VM environment holds `env` (for `dpop.nonce`).
fn worker_with_env(extra: Value, env: &[(&str, &str)]) -> (MemoryHost, Worker) {
    let (host, mut w) = worker(json!({}));
    let mut cfg = json!({"issuers": [{"issuer": ISS, "audiences": ["a"],
                                      "jwks": {"cluster": "auth"}}]});
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let parsed = crate::Config::from_json_with_env(cfg.to_string().as_bytes(), &lookup);
    // Same issuer and keys: the loaded JWKS of `w` stays valid for the new configuration.
    w.cfg = parsed.expect("config");
    (host, w)
}

const NONCE_SECRET: &str = "a shared secret of the gateway replicas, 32+ bytes";

#[test]
fn filter_nonces_are_demanded_then_accepted() {
    let cfg = json!({"dpop": {"nonce": {"secret_env": "DPOP_NONCE_KEY", "lifetime_s": 10}}});
    let (host, mut w) = worker_with_env(cfg, &[("DPOP_NONCE_KEY", NONCE_SECRET)]);
    let c = Client::new(7);
    let t = c.token();
    // No nonce: 401 use_dpop_nonce, and the nonce to use in the DPoP-Nonce header.
    let r = req("DPoP", &t, &[&c.proof(&t, "n-1")]);
    refused(&mut w, &host, &r, "use_dpop_nonce", "dpop_nonce");
    let rej = rejection(decide(
        &mut w,
        &host,
        &req("DPoP", &t, &[&c.proof(&t, "n-2")]),
    ));
    let nonce = rej
        .headers
        .iter()
        .find(|(k, _)| k == "dpop-nonce")
        .map(|(_, v)| v.clone())
        .expect("a DPoP-Nonce header");
    // With it: accepted; the same nonce serves other proofs (each with its own jti).
    for jti in ["n-3", "n-4"] {
        let p = c.proof_with(&t, |cl| {
            cl["jti"] = json!(jti);
            cl["nonce"] = json!(nonce);
        });
        assert!(
            allowed(&decide(&mut w, &host, &req("DPoP", &t, &[&p]))),
            "{jti}"
        );
    }
    // A nonce of another secret (another deployment), or a forged one: use_dpop_nonce again.
    let (other_host, mut other) = worker_with_env(
        json!({"dpop": {"nonce": {"secret_env": "K"}}}),
        &[("K", "a different secret, also 32 bytes or more")],
    );
    let foreign = {
        let rej = rejection(decide(
            &mut other,
            &other_host,
            &req("DPoP", &t, &[&c.proof(&t, "n-5")]),
        ));
        rej.headers
            .iter()
            .find(|(k, _)| k == "dpop-nonce")
            .map(|(_, v)| v.clone())
            .expect("nonce")
    };
    for bad in [foreign.as_str(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", ""] {
        let p = c.proof_with(&t, |cl| {
            cl["jti"] = json!(format!("n-bad-{}", bad.len()));
            cl["nonce"] = json!(bad);
        });
        refused(
            &mut w,
            &host,
            &req("DPoP", &t, &[&p]),
            "use_dpop_nonce",
            "dpop_nonce",
        );
    }
    // Two slots later (lifetime 10 s) the nonce has expired.
    host.advance_ms(25_000);
    let p = c.proof_with(&t, |cl| {
        cl["jti"] = json!("n-late");
        cl["iat"] = json!(NOW + 25);
        cl["nonce"] = json!(nonce);
    });
    refused(
        &mut w,
        &host,
        &req("DPoP", &t, &[&p]),
        "use_dpop_nonce",
        "dpop_nonce",
    );
}

#[test]
fn a_nonce_is_checked_only_after_the_signature() {
    let cfg = json!({"dpop": {"nonce": {"secret_env": "DPOP_NONCE_KEY"}}});
    let (host, mut w) = worker_with_env(cfg, &[("DPOP_NONCE_KEY", NONCE_SECRET)]);
    let (c, stranger) = (Client::new(7), Client::new(8));
    let t = c.token();
    // A proof by another key learns nothing about nonces: refused for its key first.
    let p = stranger.proof(&t, "s-1");
    let rej = rejection(decide(&mut w, &host, &req("DPoP", &t, &[&p])));
    assert_ne!(rej.reason, "dpop_nonce");
    assert!(rej.headers.iter().all(|(k, _)| k != "dpop-nonce"));
}

#[test]
fn the_nonce_configuration_is_checked() {
    let parse = |nonce: Value, env: &[(&str, &str)]| {
        let cfg = json!({"issuers": [{"issuer": ISS, "audiences": ["a"],
                                      "jwks": {"cluster": "auth"}}], "dpop": {"nonce": nonce}});
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        crate::Config::from_json_with_env(cfg.to_string().as_bytes(), &lookup)
    };
    let ok = parse(
        json!({"secret_env": "K", "lifetime_s": 30}),
        &[("K", NONCE_SECRET)],
    );
    let c = ok.expect("valid");
    assert!(
        !format!("{:?}", c.dpop).contains("shared secret"),
        "the secret in Debug"
    );
    for (nonce, env) in [
        (json!({"secret_env": "K"}), vec![]),
        (json!({"secret_env": "K"}), vec![("K", "short")]),
        (json!({"secret_env": "1K"}), vec![("1K", NONCE_SECRET)]),
        (
            json!({"secret_env": "K", "lifetime_s": 5}),
            vec![("K", NONCE_SECRET)],
        ),
        (
            json!({"secret_env": "K", "secret": "inline"}),
            vec![("K", NONCE_SECRET)],
        ),
    ] {
        assert!(parse(nonce.clone(), &env).is_err(), "{nonce} {env:?}");
    }
}
