//! The engine while the auth server is down (found by `tests/e2e/test_filter_faults.py`):
//! every request with a new opaque token, and every lease call, fails; the answers follow the
//! fail modes and the metrics count every failure, but the log gets one warning per
//! `WARN_EVERY_MS` and kind, not one per request.

mod common;

// On wasm32-unknown-unknown every test runs under wasm-bindgen-test (`make wasm-test`).
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use common::*;
use serde_json::{json, Value};
use tollgate_edge_core::cache::hash_token;
use tollgate_edge_core::engine::{FetchKind, Outcome, Request, Worker, WARN_EVERY_MS};
use tollgate_edge_core::metrics::Metric;
use tollgate_edge_core::testing::MemoryHost;
use tollgate_edge_core::Level;

fn req(path: &str, token: &str) -> Request {
    Request::from_headers(vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "api.example.com".to_string()),
        ("authorization".to_string(), format!("Bearer {token}")),
    ])
}

fn status(o: &Outcome) -> u16 {
    match o {
        Outcome::Allow { .. } => 200,
        Outcome::Reject(r) => r.status,
        _ => 0,
    }
}

/// A worker with its JWKS and a first feed page loaded, the auth server configured.
fn worker(host: &MemoryHost, key: &TestKey, extra: Value) -> Worker {
    let mut cfg = json!({
        "auth_server": {"cluster": "tollgate-authserver", "client_id": "gw",
                        "client_secret": "s3cret", "timeout_ms": 1000},
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let mut w = Worker::new(config(cfg));
    w.init_shared(host);
    for p in w.tick(host) {
        if let FetchKind::Jwks { issuer } = p.kind {
            w.on_fetch(host, issuer, Ok((200, jwks(&[(key, "k1")]))));
        }
    }
    w
}

fn warnings(host: &MemoryHost, about: &str) -> Vec<String> {
    host.logs
        .borrow()
        .iter()
        .filter(|(l, m)| *l == Level::Warn && m.contains(about))
        .map(|(_, m)| m.clone())
        .collect()
}

#[test]
fn introspection_outage_counts_every_failure_and_warns_once_per_interval() {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let mut w = worker(
        &host,
        &key,
        json!({"introspection": {"issuer": ISS, "fail_mode": "closed"}}),
    );
    let fail = |w: &mut Worker, host: &MemoryHost, i: u32| {
        let t = format!("tg_at_{:A<43}", format!("never_seen_{i}"));
        let h = hash_token(&t);
        assert!(matches!(
            w.on_request(host, &req("/r", &t)),
            Outcome::Introspect { .. }
        ));
        w.hold_introspection(host, i, h, req("/r", &t));
        let done = if i.is_multiple_of(2) {
            w.on_introspection(
                host,
                h,
                Err("no answer (timeout or connection failure)".into()),
            )
        } else {
            vec![(
                i,
                w.introspection_dispatch_failed(host, h, i, "dispatch refused"),
            )]
        };
        assert_eq!(done.len(), 1);
        assert_eq!(status(&done[0].1), 503, "fail_mode closed");
    };
    for i in 0..50 {
        fail(&mut w, &host, i);
        host.advance_ms(100);
    }
    assert_eq!(host.metric_value(Metric::IntrospectionFailed), 50);
    let warned = warnings(&host, "introspection");
    assert_eq!(warned.len(), 1, "{warned:?}");
    // After the interval, the next failure is logged with the count of those left out.
    host.advance_ms(WARN_EVERY_MS);
    fail(&mut w, &host, 50);
    let warned = warnings(&host, "introspection");
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(
        warned[1].contains("(49 more like it in the last 10 s)"),
        "{warned:?}"
    );
    assert_eq!(host.metric_value(Metric::IntrospectionFailed), 51);
}

#[test]
fn lease_outage_counts_every_failure_and_warns_once_per_interval() {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let rules = json!([{"name": "g", "path_prefix": "/g/",
        "rate_limit": {"requests": 100, "period_s": 60, "key": "client_id",
                       "mode": "global", "fail_mode": "closed"}}]);
    let mut w = worker(&host, &key, json!({"rules": rules}));
    // 30 clients (30 keys): each one's first request waits for a lease that fails.
    let mut codes = Vec::new();
    for i in 0..30u32 {
        let t = token(&key, "k1", &claims(&format!("client-{i}"), ""));
        let r = req("/g/x", &t);
        let Outcome::WaitForLease { rule, hash } = w.on_request(&host, &r) else {
            panic!("a new key waits for its lease");
        };
        w.hold_lease(&host, i + 1, rule, hash, r);
        let plans: Vec<_> = w
            .tick(&host)
            .into_iter()
            .filter(|p| matches!(p.kind, FetchKind::Lease { .. }))
            .collect();
        assert_eq!(plans.len(), 1);
        let done = w.on_lease(&host, plans[0].kind, Err("HTTP status 503".into()));
        codes.extend(done.iter().map(|(_, o)| status(o)));
        host.advance_ms(50);
    }
    assert_eq!(codes, vec![503; 30], "fail_mode closed");
    assert_eq!(host.metric_value(Metric::RateLimitLeaseFailed), 30);
    let warned = warnings(&host, "rate-limit lease");
    assert_eq!(warned.len(), 1, "{warned:?}");
}

/// The broken JWKS answers of `tests/e2e/harness/issuer.py` (`GARBAGE_MODES`, plus "down"):
/// none replaces the cached key set, each counts as a failed refresh, never-seen tokens of a
/// cached key keep verifying, a token of a new key is refused until a good answer arrives.
#[test]
fn every_broken_jwks_answer_keeps_the_cached_keys() {
    let k1 = TestKey::es256(3);
    let k2 = TestKey::es256(4);
    let host = MemoryHost::new(NOW * 1000);
    let mut w = worker(&host, &k1, json!({}));
    let html = b"<!DOCTYPE html><html><body><h1>Bad Gateway</h1></body></html>".to_vec();
    let wrong_types = json!({"keys": [
        {"kty": 7, "kid": ["k1"], "crv": null, "x": 1, "y": true},
        {"kty": "EC", "crv": "P-256", "kid": "k2", "x": 12345, "y": {"a": 1}},
        {"kty": "EC", "crv": "P-256", "kid": 42, "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "kid": "k2", "n": "AQAB", "e": "AQAB"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "k2", "x": "bm90IDMyIGJ5dGVz"},
        "k2", 3.5, null]});
    let binary: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    let broken: Vec<(u16, Vec<u8>)> = vec![
        (503, br#"{"error":"down"}"#.to_vec()),
        (500, br#"{"error":"server_error"}"#.to_vec()),
        (404, html.clone()),
        (200, html),
        (200, b"<html>not a jwks</html>".to_vec()),
        (
            200,
            br#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "#.to_vec(),
        ),
        (200, br#"["keys", 1, null]"#.to_vec()),
        (
            200,
            br#"{"issuer": "https://elsewhere.example", "jwks": []}"#.to_vec(),
        ),
        (200, br#"{"keys": []}"#.to_vec()),
        (200, br#"{"keys": {"kty": "EC", "kid": "k2"}}"#.to_vec()),
        (200, serde_json::to_vec(&wrong_types).unwrap()),
        (
            200,
            br#"{"keys": [{"kty": "oct", "kid": "k2", "k": "c2VjcmV0"}]}"#.to_vec(),
        ),
        (200, binary),
        (200, Vec::new()),
    ];
    let new_kid = token(&k2, "k2", &claims("rotated", ""));
    let refused = |o: &Outcome| match o {
        Outcome::Reject(r) => r.status == 401 && r.body.contains("signing key not found"),
        _ => false,
    };
    for (i, (status_code, body)) in broken.iter().enumerate() {
        assert!(
            refused(&w.on_request(&host, &req("/r", &new_kid))),
            "answer {i}"
        );
        w.on_fetch(&host, 0, Ok((*status_code, body.clone())));
        let fresh = token(&k1, "k1", &claims(&format!("fresh-{i}"), ""));
        assert_eq!(
            status(&w.on_request(&host, &req("/r", &fresh))),
            200,
            "answer {i}"
        );
        assert!(
            refused(&w.on_request(&host, &req("/r", &new_kid))),
            "answer {i}"
        );
        // A second worker parses the shared document afresh: still the cached set.
        let mut other = Worker::new(w.cfg.clone());
        assert_eq!(status(&other.on_request(&host, &req("/r", &fresh))), 200);
    }
    // No answer at all (a timeout, a connection cut short).
    w.on_fetch(
        &host,
        0,
        Err("no answer (timeout or connection failure)".into()),
    );
    assert_eq!(
        host.metric_value(Metric::JwksRefreshFailed),
        broken.len() as u64 + 1
    );
    // The endpoint is fixed: the new key is accepted.
    w.on_fetch(&host, 0, Ok((200, jwks(&[(&k1, "k1"), (&k2, "k2")]))));
    assert_eq!(status(&w.on_request(&host, &req("/r", &new_kid))), 200);
}
