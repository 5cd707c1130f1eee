//! Revocation at the edge, opaque-token introspection and shared rate limits, through the
//! engine over the in-memory host (two `Worker`s over one `MemoryHost` = two Envoy workers).

mod common;

// On wasm32-unknown-unknown every test runs under wasm-bindgen-test (`make wasm-test`).
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use common::*;
use serde_json::{json, Value};
use tollgate_edge_core::cache::hash_token;
use tollgate_edge_core::engine::{hex, FetchKind, Outcome, Request, Worker};
use tollgate_edge_core::metrics::Metric;
use tollgate_edge_core::testing::MemoryHost;
use tollgate_edge_core::{Config, ConfigError, FetchPlan};

fn req(path: &str, token: Option<&str>, extra: &[(&str, &str)]) -> Request {
    let mut headers = vec![
        (":method".to_string(), "GET".to_string()),
        (":path".to_string(), path.to_string()),
        (":authority".to_string(), "api.example.com".to_string()),
    ];
    if let Some(t) = token {
        headers.push(("authorization".into(), format!("Bearer {t}")));
    }
    for (k, v) in extra {
        headers.push((k.to_string(), v.to_string()));
    }
    let mut r = Request::from_headers(headers);
    r.source = "203.0.113.7:51000".into();
    r
}

fn status(o: &Outcome) -> u16 {
    match o {
        Outcome::Allow { .. } => 200,
        Outcome::Reject(r) => r.status,
        _ => 0,
    }
}

fn reject_header<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
    match o {
        Outcome::Reject(r) => r
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str()),
        Outcome::Allow {
            response_headers, ..
        } => response_headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str()),
        _ => None,
    }
}

fn body(o: &Outcome) -> Value {
    match o {
        Outcome::Reject(r) => serde_json::from_str(&r.body).unwrap(),
        _ => Value::Null,
    }
}

fn edge_extra(extra: Value) -> Value {
    let mut base = json!({
        "auth_server": {"cluster": "tollgate-authserver", "client_id": "gw",
                        "client_secret": "s3cret", "timeout_ms": 1000},
    });
    if let (Some(b), Some(e)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    base
}

/// Host at NOW, a worker with its JWKS loaded.
fn loaded(key: &TestKey, extra: Value) -> (MemoryHost, Worker) {
    let host = MemoryHost::new(NOW * 1000);
    let w = worker(&host, key, extra);
    (host, w)
}

fn worker(host: &MemoryHost, key: &TestKey, extra: Value) -> Worker {
    let mut w = Worker::new(config(edge_extra(extra)));
    w.init_shared(host);
    for p in w.tick(host) {
        match p.kind {
            FetchKind::Jwks { issuer } => w.on_fetch(host, issuer, Ok((200, jwks(&[(key, "k1")])))),
            FetchKind::Revocations => w.on_revocations(host, Ok((200, feed("1", true, &[])))),
            FetchKind::Introspection { .. } => unreachable!(),
        }
    }
    w
}

fn feed(cursor: &str, resync: bool, entries: &[(&str, u64)]) -> Vec<u8> {
    let rs: Vec<Value> = entries
        .iter()
        .map(|(j, e)| json!({"jti": j, "exp": e}))
        .collect();
    serde_json::to_vec(&json!({"cursor": cursor, "resync": resync, "more": false,
                               "revocations": rs}))
    .unwrap()
}

fn revocation_plan(plans: &[FetchPlan]) -> Option<&FetchPlan> {
    plans.iter().find(|p| p.kind == FetchKind::Revocations)
}

#[test]
fn config_of_the_edge_features() {
    let c = config(edge_extra(json!({
        "revocation": {},
        "introspection": {"issuer": ISS},
        "client_ip": {"header": "X-Real-IP"},
        "rules": [{"name": "r", "rate_limit": {"requests": 5, "period_s": 60,
                                                "key": {"header": "x-api-key"}}}]
    })));
    let rv = c.revocation.as_ref().unwrap();
    assert_eq!(rv.settings.poll_interval_ms, 1000);
    assert_eq!(rv.stale_after_ms, 30_000);
    assert_eq!(c.introspection.as_ref().unwrap().issuer, 0);
    assert_eq!(c.client_ip.header.as_deref(), Some("x-real-ip"));
    assert_eq!(
        c.rules[0].rate_limit.as_ref().unwrap().policy_header,
        "\"r\";q=5;w=60"
    );
    // The client secret appears nowhere in a debug print.
    assert!(!format!("{c:?}").contains("s3cret"));
    let bad = |v: Value| match Config::from_json(&config_json(v)) {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(bad(json!({"revocation": {}})), "revocation");
    assert_eq!(
        bad(json!({"introspection": {"issuer": ISS}})),
        "introspection"
    );
    assert_eq!(
        bad(edge_extra(
            json!({"introspection": {"issuer": "https://other"}})
        )),
        "introspection.issuer"
    );
    assert!(matches!(
        Config::from_json(&config_json(edge_extra(
            json!({"revocation": {"stale_mode": "ajar"}})
        ))),
        Err(ConfigError::Json(_))
    ));
    assert_eq!(
        bad(edge_extra(
            json!({"rules": [{"rate_limit": {"requests": 0, "period_s": 1,
                                                        "key": "sub"}}]})
        )),
        "rules[0].rate_limit.requests"
    );
    assert_eq!(
        bad(edge_extra(
            json!({"rules": [{"rate_limit": {"requests": 1, "period_s": 1,
                                                        "key": "tenant"}}]})
        )),
        "rules[0].rate_limit.key"
    );
}

#[test]
fn revoked_token_is_refused_even_from_the_local_cache() {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let extra = json!({"revocation": {"poll_interval_ms": 1000}});
    let mut w1 = worker(&host, &key, extra.clone());
    let mut w2 = worker(&host, &key, extra);
    let t = token(&key, "k1", &claims("alice", "api:read"));
    let other = token(&key, "k1", &claims("bob", "api:read"));
    assert_eq!(
        status(&w1.on_request(&host, &req("/r", Some(&t), &[]))),
        200
    );
    assert_eq!(
        status(&w2.on_request(&host, &req("/r", Some(&t), &[]))),
        200
    );
    // One worker polls (the lease holder); the answer lands in shared data for both.
    host.advance_ms(1000);
    let p1 = w1.tick(&host);
    let p2 = w2.tick(&host);
    let (poller, plan) = match (revocation_plan(&p1), revocation_plan(&p2)) {
        (Some(p), None) => (&mut w1, p.clone()),
        (None, Some(p)) => (&mut w2, p.clone()),
        other => panic!("exactly one poller expected: {other:?}"),
    };
    assert_eq!(plan.cluster, "tollgate-authserver");
    assert_eq!(plan.path, "/edge/revocations?since=1");
    assert!(plan
        .headers
        .contains(&("authorization".into(), "Basic Z3c6czNjcmV0".into())));
    assert!(!format!("{plan:?}").contains("Basic"));
    poller.on_revocations(
        &host,
        Ok((200, feed("2", false, &[("jti-alice", NOW + 600)]))),
    );
    assert_eq!(host.metric_value(Metric::RevocationPollOk), 2);
    for w in [&mut w1, &mut w2] {
        let o = w.on_request(&host, &req("/r", Some(&t), &[]));
        assert_eq!(status(&o), 401);
        assert_eq!(body(&o)["error_description"], "token revoked");
        assert_eq!(
            status(&w.on_request(&host, &req("/r", Some(&other), &[]))),
            200
        );
    }
    assert_eq!(host.metric_value(Metric::Denied("revoked")), 2);
}

#[test]
fn stale_feed_open_and_closed() {
    for (mode, want) in [("open", 200), ("closed", 503)] {
        let key = TestKey::es256(3);
        let (host, mut w) = loaded(
            &key,
            json!({"revocation": {"stale_after_s": 2, "stale_mode": mode}}),
        );
        let t = token(&key, "k1", &claims("alice", ""));
        assert_eq!(status(&w.on_request(&host, &req("/r", Some(&t), &[]))), 200);
        // The feed stops answering.
        for _ in 0..4 {
            host.advance_ms(1000);
            for p in w.tick(&host) {
                if p.kind == FetchKind::Revocations {
                    w.on_revocations(&host, Err("no answer".into()));
                }
            }
        }
        assert!(w.revocations_stale());
        let o = w.on_request(&host, &req("/r", Some(&t), &[]));
        assert_eq!(status(&o), want, "{mode}");
        if want == 503 {
            assert_eq!(reject_header(&o, "retry-after"), Some("1"));
            assert_eq!(body(&o)["error"], "temporarily_unavailable");
        }
        assert_eq!(host.metric_value(Metric::RevocationStale), 1);
        assert!(host.metric_value(Metric::RevocationPollFailed) >= 3);
        // Back: the next poll clears it.
        host.advance_ms(1000);
        let plans = w.tick(&host);
        assert!(
            revocation_plan(&plans).is_some(),
            "failed polls are retried every interval"
        );
        w.on_revocations(&host, Ok((200, feed("3", false, &[]))));
        assert_eq!(status(&w.on_request(&host, &req("/r", Some(&t), &[]))), 200);
    }
}

#[test]
fn rate_limit_is_exact_over_two_workers_then_recovers() {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let extra = json!({"rules": [{"name": "limited", "path_prefix": "/l",
                                  "rate_limit": {"requests": 5, "period_s": 60,
                                                 "key": "client_id"}}]});
    let mut w1 = worker(&host, &key, extra.clone());
    let mut w2 = worker(&host, &key, extra);
    let ta = token(&key, "k1", &claims("a", ""));
    let tb = token(&key, "k1", &claims("b", ""));
    let mut outcomes = Vec::new();
    for i in 0..12 {
        let w = if i % 2 == 0 { &mut w1 } else { &mut w2 };
        outcomes.push(w.on_request(&host, &req("/l/x", Some(&ta), &[])));
    }
    let codes: Vec<u16> = outcomes.iter().map(status).collect();
    assert_eq!(codes, [vec![200; 5], vec![429; 7]].concat());
    assert_eq!(
        reject_header(&outcomes[0], "ratelimit"),
        Some("\"limited\";r=4;t=12")
    );
    assert_eq!(
        reject_header(&outcomes[0], "ratelimit-policy"),
        Some("\"limited\";q=5;w=60")
    );
    let denied = &outcomes[5];
    assert_eq!(reject_header(denied, "retry-after"), Some("12"));
    assert!(reject_header(denied, "ratelimit")
        .unwrap()
        .starts_with("\"limited\";r=0;t="));
    assert_eq!(body(denied)["error"], "rate_limited");
    assert_eq!(host.metric_value(Metric::RateLimited), 7);
    // Another client has its own bucket; an unlimited route is not counted.
    assert_eq!(
        status(&w2.on_request(&host, &req("/l/x", Some(&tb), &[]))),
        200
    );
    assert_eq!(
        status(&w1.on_request(&host, &req("/other", Some(&ta), &[]))),
        200
    );
    // One token back every 12 s.
    host.advance_ms(12_000);
    assert_eq!(
        status(&w2.on_request(&host, &req("/l/x", Some(&ta), &[]))),
        200
    );
    assert_eq!(
        status(&w1.on_request(&host, &req("/l/x", Some(&ta), &[]))),
        429
    );
}

#[test]
fn rate_limit_keys_client_ip_and_header() {
    let key = TestKey::es256(3);
    let rules = json!([
        {"name": "ip", "path_prefix": "/ip", "allow_anonymous": true,
         "rate_limit": {"requests": 1, "period_s": 60, "key": "client_ip"}},
        {"name": "k", "path_prefix": "/k", "allow_anonymous": true,
         "rate_limit": {"requests": 1, "period_s": 60, "key": {"header": "x-api-key"}}}
    ]);
    // xff_hops = 1: the rightmost X-Forwarded-For address, not the spoofable first one.
    let (host, mut w) = loaded(&key, json!({"client_ip": {"xff_hops": 1}, "rules": rules}));
    let xff = |a: &str| req("/ip", None, &[("x-forwarded-for", a)]);
    assert_eq!(
        status(&w.on_request(&host, &xff("1.1.1.1, 192.0.2.1"))),
        200
    );
    assert_eq!(
        status(&w.on_request(&host, &xff("2.2.2.2, 192.0.2.1"))),
        429
    );
    assert_eq!(
        status(&w.on_request(&host, &xff("1.1.1.1, 192.0.2.2"))),
        200
    );
    // No X-Forwarded-For: the peer address.
    assert_eq!(status(&w.on_request(&host, &req("/ip", None, &[]))), 200);
    assert_eq!(status(&w.on_request(&host, &req("/ip", None, &[]))), 429);
    let k = |v: &str| req("/k", None, &[("x-api-key", v)]);
    assert_eq!(status(&w.on_request(&host, &k("k1"))), 200);
    assert_eq!(status(&w.on_request(&host, &k("k1"))), 429);
    assert_eq!(status(&w.on_request(&host, &k("k2"))), 200);
    // Requests without the header share one bucket (key "").
    assert_eq!(status(&w.on_request(&host, &req("/k", None, &[]))), 200);
    assert_eq!(status(&w.on_request(&host, &req("/k", None, &[]))), 429);
    // A trusted header wins over X-Forwarded-For.
    let (host, mut w) = loaded(
        &key,
        json!({"client_ip": {"header": "x-real-ip", "xff_hops": 1},
               "rules": [{"path_prefix": "/", "allow_anonymous": true,
                          "rate_limit": {"requests": 1, "period_s": 60, "key": "client_ip"}}]}),
    );
    let both = |ip: &str| {
        req(
            "/",
            None,
            &[("x-real-ip", ip), ("x-forwarded-for", "9.9.9.9")],
        )
    };
    assert_eq!(status(&w.on_request(&host, &both("198.51.100.1"))), 200);
    assert_eq!(status(&w.on_request(&host, &both("198.51.100.2"))), 200);
    assert_eq!(status(&w.on_request(&host, &both("198.51.100.1"))), 429);
}

fn active(sub: &str, jti: Option<&str>) -> Vec<u8> {
    let mut v = json!({"active": true, "iss": ISS, "sub": sub, "client_id": sub, "aud": AUD,
                       "scope": "api:read", "exp": NOW + 600, "iat": NOW});
    if let Some(j) = jti {
        v["jti"] = json!(j);
    }
    v.to_string().into_bytes()
}

#[test]
fn introspection_single_flight_over_two_workers() {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let extra = json!({"introspection": {"issuer": ISS}, "revocation": {}});
    let mut w1 = worker(&host, &key, extra.clone());
    let mut w2 = worker(&host, &key, extra);
    let t = "tg_at_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let h = hash_token(t);
    // The first request claims the call; every other one, on either worker, waits.
    let o = w1.on_request(&host, &req("/r", Some(t), &[]));
    let Outcome::Introspect { hash, token } = &o else {
        panic!("{o:?}")
    };
    assert_eq!(*hash, h);
    assert!(
        !format!("{o:?}").contains(t),
        "the token is never in a debug print"
    );
    let plan = w1.introspection_plan(hash, token).unwrap();
    assert_eq!(
        (plan.method, plan.path.as_str()),
        ("POST", "/oauth2/introspect")
    );
    assert_eq!(plan.body.as_deref(), Some(format!("token={t}").as_bytes()));
    w1.hold_introspection(&host, 1, h, req("/r", Some(t), &[]));
    w1.note_introspection_call(h, 1);
    for ctx in 2..5 {
        let (w, r) = if ctx % 2 == 0 {
            (&mut w2, req("/r", Some(t), &[]))
        } else {
            (&mut w1, req("/r", Some(t), &[]))
        };
        assert_eq!(
            w.on_request(&host, &r),
            Outcome::WaitForIntrospection { hash: h }
        );
        w.hold_introspection(&host, ctx, h, r);
    }
    // Ticks before the answer decide nothing.
    assert!(w2.resolve_waiters(&host).is_empty());
    assert!(w1.resolve_waiters(&host).is_empty());
    // The answer decides w1's requests at once, w2's at its next tick.
    let done = w1.on_introspection(&host, h, Ok((200, active("svc", None))));
    let mut ctxs: Vec<u32> = done.iter().map(|(c, _)| *c).collect();
    ctxs.sort();
    assert_eq!(ctxs, vec![1, 3]);
    assert!(done.iter().all(|(_, o)| status(o) == 200));
    let done2 = w2.resolve_waiters(&host);
    assert_eq!(done2.len(), 2);
    assert!(done2.iter().all(|(_, o)| status(o) == 200));
    assert_eq!(host.metric_value(Metric::IntrospectionCall), 1);
    // Cached: no more calls; identity headers as for a JWT.
    let o = w2.on_request(&host, &req("/r", Some(t), &[]));
    let Outcome::Allow { set, .. } = &o else {
        panic!("{o:?}")
    };
    assert!(set.contains(&("x-tollgate-sub".into(), "svc".into())));
    // Revoked on the feed (jti = SHA-256 hex of the opaque token): refused, cache or not.
    host.advance_ms(1500);
    let mut polled = false;
    for w in [&mut w1, &mut w2] {
        if revocation_plan(&w.tick(&host)).is_some() {
            w.on_revocations(&host, Ok((200, feed("2", false, &[(&hex(&h), NOW + 600)]))));
            polled = true;
        }
    }
    assert!(polled);
    assert_eq!(status(&w2.on_request(&host, &req("/r", Some(t), &[]))), 401);
    assert_eq!(status(&w1.on_request(&host, &req("/r", Some(t), &[]))), 401);
}

#[test]
fn introspection_answers_inactive_and_foreign() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(
        &key,
        json!({"introspection": {"issuer": ISS, "negative_ttl_s": 5}}),
    );
    let ask = |w: &mut Worker, t: &str, answer: &[u8]| {
        let o = w.on_request(&host, &req("/r", Some(t), &[]));
        assert!(matches!(o, Outcome::Introspect { .. }), "{o:?}");
        w.hold_introspection(&host, 1, hash_token(t), req("/r", Some(t), &[]));
        let done = w.on_introspection(&host, hash_token(t), Ok((200, answer.to_vec())));
        assert_eq!(done.len(), 1);
        done.into_iter().next().unwrap().1
    };
    let o = ask(&mut w, "tg_at_x", br#"{"active":false}"#);
    assert_eq!(status(&o), 401);
    assert_eq!(body(&o)["error_description"], "token inactive");
    // The negative answer is cached for negative_ttl_s.
    assert_eq!(
        status(&w.on_request(&host, &req("/r", Some("tg_at_x"), &[]))),
        401
    );
    host.advance_ms(5000);
    assert!(matches!(
        w.on_request(&host, &req("/r", Some("tg_at_x"), &[])),
        Outcome::Introspect { .. }
    ));
    // Active, but for another audience or issuer: not accepted here.
    let other_aud = json!({"active": true, "iss": ISS, "sub": "s", "aud": "elsewhere",
                           "exp": NOW + 600})
    .to_string();
    assert_eq!(status(&ask(&mut w, "tg_at_y", other_aud.as_bytes())), 401);
    // Without a negative cache an inactive answer is still given once, not asked again.
    let (host0, mut w0) = loaded(
        &key,
        json!({"introspection": {"issuer": ISS, "negative_ttl_s": 0}}),
    );
    let t0 = "tg_at_z";
    assert!(matches!(
        w0.on_request(&host0, &req("/r", Some(t0), &[])),
        Outcome::Introspect { .. }
    ));
    w0.hold_introspection(&host0, 1, hash_token(t0), req("/r", Some(t0), &[]));
    w0.hold_introspection(&host0, 2, hash_token(t0), req("/r", Some(t0), &[]));
    let done = w0.on_introspection(
        &host0,
        hash_token(t0),
        Ok((200, br#"{"active":false}"#.to_vec())),
    );
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|(_, o)| status(o) == 401));
    assert!(!w0.is_held(1) && !w0.is_held(2));
    // A JWT-shaped token still goes through JWT verification.
    let jwt = token(&key, "k1", &claims("c", ""));
    assert_eq!(
        status(&w.on_request(&host, &req("/r", Some(&jwt), &[]))),
        200
    );
}

#[test]
fn introspection_fail_modes() {
    let key = TestKey::es256(3);
    let rules = json!([{"name": "scoped", "path_prefix": "/s", "scopes": ["api:read"]}]);
    for (mode, open_route, scoped_route) in [("closed", 503, 503), ("open", 200, 503)] {
        let (host, mut w) = loaded(
            &key,
            json!({"introspection": {"issuer": ISS, "fail_mode": mode}, "rules": rules}),
        );
        for (path, want) in [("/r", open_route), ("/s", scoped_route)] {
            let t = format!("tg_at_{mode}{path}");
            let h = hash_token(&t);
            assert!(matches!(
                w.on_request(&host, &req(path, Some(&t), &[])),
                Outcome::Introspect { .. }
            ));
            w.hold_introspection(&host, 7, h, req(path, Some(&t), &[]));
            let done = w.on_introspection(&host, h, Ok((500, b"oops".to_vec())));
            let o = &done[0].1;
            assert_eq!(status(o), want, "{mode} {path}");
            if let Outcome::Allow { set, .. } = o {
                assert!(set.is_empty(), "no identity headers without an answer");
            } else {
                assert_eq!(reject_header(o, "retry-after"), Some("1"));
            }
            // Released: the next request may ask again.
            assert!(matches!(
                w.on_request(&host, &req(path, Some(&t), &[])),
                Outcome::Introspect { .. }
            ));
        }
        assert_eq!(host.metric_value(Metric::IntrospectionFailed), 2);
    }
}

#[test]
fn a_waiter_takes_over_when_the_caller_goes_away() {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let extra = json!({"introspection": {"issuer": ISS}});
    let mut w = worker(&host, &key, extra);
    let t = "tg_at_gone";
    let h = hash_token(t);
    assert!(matches!(
        w.on_request(&host, &req("/r", Some(t), &[])),
        Outcome::Introspect { .. }
    ));
    w.hold_introspection(&host, 1, h, req("/r", Some(t), &[]));
    w.note_introspection_call(h, 1);
    assert_eq!(
        w.on_request(&host, &req("/r", Some(t), &[])),
        Outcome::WaitForIntrospection { hash: h }
    );
    w.hold_introspection(&host, 2, h, req("/r", Some(t), &[]));
    // Stream 1 ends (its call is cancelled with it): stream 2 claims at the next tick.
    w.forget(&host, 1);
    let done = w.resolve_waiters(&host);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].0, 2);
    assert!(matches!(done[0].1, Outcome::Introspect { .. }));
    assert!(w.is_held(2));
    let done = w.on_introspection(&host, h, Ok((200, active("svc", Some("j")))));
    assert_eq!(done.len(), 1);
    assert_eq!(status(&done[0].1), 200);
}
