//! The request and timer flow over the in-memory host double (same compare-and-swap
//! semantics as Envoy's shared data), including two workers sharing one store.

mod common;

// On wasm32-unknown-unknown every test runs under wasm-bindgen-test (`make wasm-test`).
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use common::*;
use serde_json::json;
use tollgate_edge_core::cache;
use tollgate_edge_core::engine::{headers_to_remove, Outcome, Request, Worker};
use tollgate_edge_core::metrics::Metric;
use tollgate_edge_core::testing::MemoryHost;
use tollgate_edge_core::token::{extract, Found};
use tollgate_edge_core::Host;

fn req(method: &str, path: &str, token: Option<&str>) -> Request {
    let mut headers = vec![
        (":method".to_string(), method.to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "api.example.com:8080".to_string()),
    ];
    if let Some(t) = token {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    Request::from_headers(headers)
}

/// A host whose clock is NOW and a worker whose JWKS has been loaded through tick + fetch.
fn loaded(key: &TestKey, extra: serde_json::Value) -> (MemoryHost, Worker) {
    let host = MemoryHost::new(NOW * 1000);
    let mut w = Worker::new(config(extra));
    let plans = w.tick(&host);
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0].cluster, "auth");
    assert_eq!(plans[0].path, "/oauth2/jwks");
    w.on_fetch(&host, 0, Ok((200, jwks(&[(key, "k1")]))));
    (host, w)
}

fn status(o: &Outcome) -> u16 {
    match o {
        Outcome::Allow { .. } => 200,
        Outcome::Reject(r) => r.status,
        Outcome::WaitForJwks { .. }
        | Outcome::Introspect { .. }
        | Outcome::WaitForIntrospection { .. }
        | Outcome::WaitForLease { .. } => 0,
    }
}

fn header<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
    match o {
        Outcome::Allow { set, .. } => set.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()),
        Outcome::Reject(r) => r
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str()),
        _ => None,
    }
}

#[test]
fn valid_token_then_cache_hit() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, json!({}));
    let t = token(&key, "k1", &claims("client-a", "api:read"));
    let o = w.on_request(&host, &req("GET", "/anything", Some(&t)));
    assert_eq!(status(&o), 200, "{o:?}");
    assert_eq!(header(&o, "x-tollgate-sub"), Some("client-a"));
    assert_eq!(header(&o, "x-tollgate-client-id"), Some("client-a"));
    assert_eq!(header(&o, "x-tollgate-scope"), Some("api:read"));
    assert_eq!(header(&o, "x-tollgate-iss"), Some(ISS));
    assert_eq!(header(&o, "x-tollgate-jti"), Some("jti-client-a"));
    assert_eq!(host.metric_value(Metric::CacheMiss), 1);
    // A second worker (own parsed keys, same shared data) hits the cache.
    let mut w2 = Worker::new(config(json!({})));
    let o2 = w2.on_request(&host, &req("GET", "/anything", Some(&t)));
    assert_eq!(o2, o);
    assert_eq!(host.metric_value(Metric::CacheHit), 1);
    assert_eq!(host.metric_value(Metric::Allowed), 2);
    // The shared store never holds the token.
    for k in host.shared_keys() {
        assert!(!k.contains(&t));
        let (v, _) = host.shared_get(&k);
        let v = v.unwrap();
        assert!(!v
            .windows(20)
            .any(|w| t.as_bytes().windows(20).next() == Some(w)));
    }
}

#[test]
fn cache_entry_expires_with_token_and_ttl() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, json!({"cache": {"max_ttl_s": 60}}));
    let mut c = claims("c", "");
    c["exp"] = json!(NOW + 20);
    let t = token(&key, "k1", &c);
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/", Some(&t)))),
        200
    );
    let h = cache::hash_token(&t);
    let l = cache::lookup(&host, &w.cfg, &h, NOW);
    assert!(l.hit.is_some());
    // Past exp + skew the token is refused, cache or not.
    host.advance_ms(51_000);
    let o = w.on_request(&host, &req("GET", "/", Some(&t)));
    assert_eq!(status(&o), 401);
    assert!(cache::lookup(&host, &w.cfg, &h, NOW + 21).hit.is_none());
    // A long-lived token's entry ends at max_ttl_s.
    let t2 = token(&key, "k1", &claims("d", ""));
    let now = NOW + 51;
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/", Some(&t2)))),
        200
    );
    let h2 = cache::hash_token(&t2);
    assert!(cache::lookup(&host, &w.cfg, &h2, now + 59).hit.is_some());
    assert!(cache::lookup(&host, &w.cfg, &h2, now + 60).hit.is_none());
}

#[test]
fn cache_is_bounded() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, json!({"cache": {"slots": 16}}));
    for i in 0..200 {
        let t = token(&key, "k1", &claims(&format!("c{i}"), ""));
        assert_eq!(
            status(&w.on_request(&host, &req("GET", "/", Some(&t)))),
            200
        );
    }
    let slots = host
        .shared_keys()
        .into_iter()
        .filter(|k| k.starts_with("tollgate/tc/"))
        .count();
    assert!(slots <= 16, "{slots} slots used");
    assert!(host.shared_bytes() < 16 * 512 + 4096);
}

#[test]
fn rejections_follow_rfc6750() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, json!({}));
    let o = w.on_request(&host, &req("GET", "/x", None));
    assert_eq!(status(&o), 401);
    assert_eq!(
        header(&o, "www-authenticate"),
        Some("Bearer realm=\"tollgate\"")
    );
    let mut c = claims("c", "");
    c["exp"] = json!(NOW - 100);
    let o = w.on_request(&host, &req("GET", "/x", Some(&token(&key, "k1", &c))));
    assert_eq!(status(&o), 401);
    assert_eq!(
        header(&o, "www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"token expired\"")
    );
    let Outcome::Reject(r) = &o else { panic!() };
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "invalid_token");
    // Wrong scheme.
    let mut r0 = req("GET", "/x", None);
    r0.headers
        .push(("authorization".into(), "Basic dXNlcjpwYXNz".into()));
    assert_eq!(status(&w.on_request(&host, &r0)), 401);
    // Scope.
    let t = token(&key, "k1", &claims("c", "api:read"));
    let o = w.on_request(&host, &req("POST", "/api/items", Some(&t)));
    assert_eq!(status(&o), 403);
    let www = header(&o, "www-authenticate").unwrap();
    assert!(www.contains("error=\"insufficient_scope\""), "{www}");
    assert!(www.contains("scope=\"api:write\""), "{www}");
    // GET /api is not the POST rule: default rule = token required, no scope.
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/api/items", Some(&t)))),
        200
    );
    // scope_mode any.
    let tb = token(&key, "k1", &claims("c", "b"));
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/either", Some(&tb)))),
        200
    );
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/either?x=1", Some(&t)))),
        403
    );
    // Anonymous route: no token is fine, a bad token is not.
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/public/a", None))),
        200
    );
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/public/a", Some("x.y.z")))),
        401
    );
}

#[test]
fn rule_matching() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(
        &key,
        json!({"rules": [
            {"path_regex": "/v[0-9]+/open", "allow_anonymous": true},
            {"hosts": ["*.example.com"], "path_prefix": "/h", "allow_anonymous": true},
            {"hosts": ["exact.test"], "allow_anonymous": true}
        ]}),
    );
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/v12/open", None))),
        200
    );
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/v12/open/x", None))),
        401
    );
    assert_eq!(status(&w.on_request(&host, &req("GET", "/h/1", None))), 200);
    let mut r = req("GET", "/other", None);
    r.authority = "EXACT.test:443".into();
    assert_eq!(status(&w.on_request(&host, &r)), 200);
    r.authority = "example.com".into();
    r.path = "/h".into();
    assert_eq!(status(&w.on_request(&host, &r)), 401);
}

#[test]
fn spoofed_headers_are_listed_for_removal() {
    let cfg = config(json!({"headers": {"claims": {"tenant": "x-tenant"}, "remove": ["x-user"]}}));
    let headers: Vec<(String, String)> = [
        ("x-tollgate-sub", "admin"),
        ("X-Tollgate-Anything", "1"),
        ("x-tenant", "t"),
        ("x-user", "u"),
        ("x-other", "keep"),
        (":path", "/"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let mut r = headers_to_remove(&cfg, &headers);
    r.sort();
    assert_eq!(
        r,
        vec![
            "x-tenant",
            "x-tollgate-anything",
            "x-tollgate-sub",
            "x-user"
        ]
    );
}

/// Issue 12 item 6: CGI/WSGI upstreams read `x_tollgate_sub` as `HTTP_X_TOLLGATE_SUB`, the
/// variable of `x-tollgate-sub`: every spelling that folds to an identity header goes too.
#[test]
fn underscore_variants_of_identity_headers_are_removed() {
    let cfg = config(json!({"headers": {"claims": {"tenant": "x-tenant"}, "remove": ["x_user"]}}));
    let headers: Vec<(String, String)> = [
        ("x_tollgate_sub", "admin"),
        ("X_Tollgate-Scope", "admin"),
        ("x-tollgate_client-id", "c"),
        ("x_tollgate_made_up", "1"),
        ("x_tenant", "t"),
        ("x-user", "u"),
        ("x_user", "u"),
        ("x_other", "keep"),
        ("x-tollgatesub", "keep"),
        (":path", "/"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let mut r = headers_to_remove(&cfg, &headers);
    r.sort();
    assert_eq!(
        r,
        vec![
            "x-tollgate_client-id",
            "x-user",
            "x_tenant",
            "x_tollgate-scope",
            "x_tollgate_made_up",
            "x_tollgate_sub",
            "x_user"
        ]
    );
}

#[test]
fn token_sources() {
    let cfg = config(json!({"token_sources": [
        {"header": {"name": "authorization", "prefix": "Bearer "}},
        {"cookie": {"name": "at"}},
        {"query": {"name": "access_token"}}
    ]}));
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        extract(&cfg, h(&[("authorization", "bearer  abc")]).as_slice(), "/"),
        Found::Token("abc".into())
    );
    assert_eq!(
        extract(&cfg, h(&[("authorization", "Bearerabc")]).as_slice(), "/"),
        Found::Unusable
    );
    assert_eq!(
        extract(
            &cfg,
            h(&[("cookie", "a=1; at=tok.en.x; b=2")]).as_slice(),
            "/"
        ),
        Found::Token("tok.en.x".into())
    );
    assert_eq!(
        extract(&cfg, h(&[]).as_slice(), "/p?x=1&access_token=a%2Eb.c"),
        Found::Token("a.b.c".into())
    );
    assert_eq!(extract(&cfg, h(&[]).as_slice(), "/p?x=1"), Found::None);
    assert_eq!(
        extract(
            &cfg,
            h(&[
                ("authorization", "Bearer a.b.c"),
                ("authorization", "Bearer d.e.f")
            ])
            .as_slice(),
            "/"
        ),
        Found::Repeated
    );
    // Two header lines combined into one value by a proxy (Envoy does so for
    // Authorization): still two credentials. A comma inside one token is a bad token.
    for combined in [
        "Bearer a.b.c,Bearer d.e.f",
        "Basic eDp5, Bearer a.b.c",
        "Bearer x,bearer  y",
    ] {
        assert_eq!(
            extract(&cfg, h(&[("authorization", combined)]).as_slice(), "/"),
            Found::Repeated,
            "{combined}"
        );
    }
    for one in ["Bearer a,b", "Bearer ,", "Bearer a, b"] {
        assert_ne!(
            extract(&cfg, h(&[("authorization", one)]).as_slice(), "/"),
            Found::Repeated,
            "{one}"
        );
    }
}

/// Issue 12 item 16: a repeated Authorization header is a malformed request (RFC 6750
/// §3.1): 400 `invalid_request`, not 401.
#[test]
fn repeated_authorization_header_is_400_invalid_request() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, json!({}));
    let t = token(&key, "k1", &claims("client-a", "api:read"));
    let mut r = req("GET", "/anything", Some(&t));
    r.headers
        .push(("authorization".into(), format!("Bearer {t}")));
    let o = w.on_request(&host, &r);
    assert_eq!(status(&o), 400, "{o:?}");
    let Outcome::Reject(rej) = &o else {
        panic!("{o:?}")
    };
    let body: serde_json::Value = serde_json::from_str(&rej.body).unwrap();
    assert_eq!(body["error"], "invalid_request");
    let www = header(&o, "www-authenticate").unwrap();
    assert!(
        www.starts_with("Bearer realm=\"tollgate\", error=\"invalid_request\""),
        "{www}"
    );
    assert_eq!(host.metric_value(Metric::Denied("repeated")), 1);
    // Also on an anonymous route: the request is malformed whatever the route.
    let mut r = req("GET", "/public/x", Some(&t));
    r.headers.push(("authorization".into(), "Bearer x".into()));
    assert_eq!(status(&w.on_request(&host, &r)), 400);
}

/// Issue 12 item 15: two configurations (two filters in one VM share shared data) naming
/// one issuer with different JWKS sources keep separate key sets.
#[test]
fn jwks_cache_is_keyed_by_issuer_and_source() {
    let good = TestKey::es256(3);
    let rogue = TestKey::es256(9);
    let cfg_a = config(json!({}));
    let mut other = serde_json::from_slice::<serde_json::Value>(&config_json(json!({}))).unwrap();
    other["issuers"][0]["jwks"]["cluster"] = json!("other-jwks");
    let cfg_b = tollgate_edge_core::Config::from_json(other.to_string().as_bytes()).unwrap();
    assert_ne!(cfg_a.issuers[0].key_id, cfg_b.issuers[0].key_id);
    let host = MemoryHost::new(NOW * 1000);
    let mut a = Worker::new(cfg_a);
    let mut b = Worker::new(cfg_b);
    // Each source is fetched: one fetch of A's does not stand in for B's.
    let pa = a.tick(&host);
    let pb = b.tick(&host);
    assert_eq!((pa.len(), pb.len()), (1, 1), "{pa:?} {pb:?}");
    assert_eq!(pb[0].cluster, "other-jwks");
    a.on_fetch(&host, 0, Ok((200, jwks(&[(&good, "k1")]))));
    b.on_fetch(&host, 0, Ok((200, jwks(&[(&rogue, "k1")]))));
    let t = token(&good, "k1", &claims("client-a", "api:read"));
    assert_eq!(
        status(&a.on_request(&host, &req("GET", "/x", Some(&t)))),
        200
    );
    // B's key set (another source) never verifies A's token, and A's is not overwritten.
    assert_eq!(
        status(&b.on_request(&host, &req("GET", "/y", Some(&t)))),
        401
    );
    let mut a2 = Worker::new(config(json!({})));
    let t2 = token(&good, "k1", &claims("client-b", "api:read"));
    assert_eq!(
        status(&a2.on_request(&host, &req("GET", "/z", Some(&t2)))),
        200
    );
}

#[test]
fn unknown_kid_requests_a_rate_limited_refresh() {
    let key = TestKey::es256(3);
    let new_key = TestKey::ed(5);
    let (host, mut w) = loaded(&key, json!({}));
    let t = token(&new_key, "k2", &claims("c", ""));
    // Right after a fetch: no refresh before min_refresh_interval_s (5 s).
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/", Some(&t)))),
        401
    );
    assert!(w.tick(&host).is_empty());
    host.advance_ms(6_000);
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/", Some(&t)))),
        401
    );
    assert_eq!(host.metric_value(Metric::JwksUnknownKidRefresh), 1);
    // Many unknown-kid requests, one refresh.
    for _ in 0..10 {
        w.on_request(&host, &req("GET", "/", Some(&t)));
    }
    assert_eq!(host.metric_value(Metric::JwksUnknownKidRefresh), 1);
    let plans = w.tick(&host);
    assert_eq!(plans.len(), 1);
    // A second worker's tick does not fetch again while the first is in flight.
    let mut w2 = Worker::new(config(json!({})));
    assert!(w2.tick(&host).is_empty());
    w.on_fetch(&host, 0, Ok((200, jwks(&[(&key, "k1"), (&new_key, "k2")]))));
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/", Some(&t)))),
        200
    );
    assert_eq!(
        status(&w2.on_request(&host, &req("GET", "/", Some(&t)))),
        200
    );
}

#[test]
fn stale_jwks_keeps_serving_when_refresh_fails() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, json!({}));
    host.advance_ms(301_000); // past refresh_interval_s
    let plans = w.tick(&host);
    assert_eq!(plans.len(), 1);
    w.on_fetch(&host, 0, Err("connection refused".into()));
    w.on_fetch(&host, 0, Ok((200, b"{\"keys\":[]}".to_vec())));
    w.on_fetch(&host, 0, Ok((500, b"oops".to_vec())));
    assert_eq!(host.metric_value(Metric::JwksRefreshFailed), 3);
    let t = token(&key, "k1", &claims("c", ""));
    let mut fresh_worker = Worker::new(config(json!({})));
    let now = host.now_ms() / 1000;
    let mut c = claims("c", "");
    c["exp"] = json!(now + 600);
    c["iat"] = json!(now);
    let t2 = token(&key, "k1", &c);
    assert_eq!(
        status(&fresh_worker.on_request(&host, &req("GET", "/", Some(&t2)))),
        200
    );
    let _ = t;
    // Retries follow retry_interval_s (5 s), not the refresh interval.
    assert!(w.tick(&host).is_empty());
    host.advance_ms(5_000);
    assert_eq!(w.tick(&host).len(), 1);
}

#[test]
fn requests_wait_only_while_no_jwks_was_ever_loaded() {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let mut w = Worker::new(config(json!({"jwks_wait": {"max_wait_ms": 2000}})));
    let t = token(&key, "k1", &claims("c", ""));
    let r = req("GET", "/", Some(&t));
    assert_eq!(w.on_request(&host, &r), Outcome::WaitForJwks { issuer: 0 });
    w.hold(&host, 7, 0, r.clone());
    w.hold(&host, 8, 0, r.clone());
    w.forget(&host, 8);
    assert!(w.resolve_waiters(&host).is_empty());
    let plans = w.tick(&host);
    w.on_fetch(
        &host,
        plans[0].issuer().unwrap(),
        Ok((200, jwks(&[(&key, "k1")]))),
    );
    let done = w.resolve_waiters(&host);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, 7);
    assert_eq!(status(&done[0].1), 200);
    assert!(w.waiters.is_empty());

    // Never loaded and the wait runs out: 503 with Retry-After.
    let host = MemoryHost::new(NOW * 1000);
    let mut w = Worker::new(config(json!({"jwks_wait": {"max_wait_ms": 2000}})));
    w.hold(&host, 9, 0, r);
    host.advance_ms(1_000);
    assert!(w.resolve_waiters(&host).is_empty());
    host.advance_ms(1_500);
    let done = w.resolve_waiters(&host);
    assert_eq!(status(&done[0].1), 503);
    assert_eq!(header(&done[0].1, "retry-after"), Some("1"));
}

#[test]
fn strip_authorization_and_unsafe_claims() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, json!({"headers": {"strip_authorization": true}}));
    let t = token(&key, "k1", &claims("c", ""));
    match w.on_request(&host, &req("GET", "/", Some(&t))) {
        Outcome::Allow { remove, .. } => assert_eq!(remove, vec!["authorization".to_string()]),
        o => panic!("{o:?}"),
    }
    let mut c = claims("evil\r\nx-tollgate-admin: 1", "");
    c["client_id"] = json!("c");
    let o = w.on_request(&host, &req("GET", "/", Some(&token(&key, "k1", &c))));
    assert_eq!(status(&o), 401);
}

#[test]
fn local_cache_is_bounded_and_expires() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(
        &key,
        json!({"cache": {"local_entries": 4, "max_ttl_s": 60}}),
    );
    let tokens: Vec<String> = (0..10)
        .map(|i| token(&key, "k1", &claims(&format!("c{i}"), "")))
        .collect();
    for t in &tokens {
        assert_eq!(status(&w.on_request(&host, &req("GET", "/", Some(t)))), 200);
    }
    // Every token again: served by the local or the shared cache, never re-verified.
    let misses = host.metric_value(Metric::CacheMiss);
    for t in &tokens {
        assert_eq!(status(&w.on_request(&host, &req("GET", "/", Some(t)))), 200);
    }
    assert_eq!(host.metric_value(Metric::CacheMiss), misses);
    // Past max_ttl_s both caches have expired: verified again.
    host.advance_ms(61_000);
    assert_eq!(
        status(&w.on_request(&host, &req("GET", "/", Some(&tokens[9])))),
        200
    );
    assert_eq!(host.metric_value(Metric::CacheMiss), misses + 1);
    // Disabled local cache still works through the shared one.
    let (host, mut w) = loaded(&key, json!({"cache": {"local_entries": 0}}));
    for _ in 0..3 {
        assert_eq!(
            status(&w.on_request(&host, &req("GET", "/", Some(&tokens[0])))),
            200
        );
    }
    assert_eq!(host.metric_value(Metric::CacheMiss), 1);
    assert_eq!(host.metric_value(Metric::CacheHit), 2);
}
