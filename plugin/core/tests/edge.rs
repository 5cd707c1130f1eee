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
            FetchKind::Introspection { .. } | FetchKind::Lease { .. } => unreachable!(),
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
    let extra = json!({"revocation": {"mode": "poll", "poll_interval_ms": 1000}});
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
    let o = ask(
        &mut w,
        "tg_at_xAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        br#"{"active":false}"#,
    );
    assert_eq!(status(&o), 401);
    assert_eq!(body(&o)["error_description"], "token inactive");
    // The negative answer is cached for negative_ttl_s.
    assert_eq!(
        status(&w.on_request(
            &host,
            &req(
                "/r",
                Some("tg_at_xAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                &[]
            )
        )),
        401
    );
    host.advance_ms(5000);
    assert!(matches!(
        w.on_request(
            &host,
            &req(
                "/r",
                Some("tg_at_xAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                &[]
            )
        ),
        Outcome::Introspect { .. }
    ));
    // Active, but for another audience or issuer: not accepted here.
    let other_aud = json!({"active": true, "iss": ISS, "sub": "s", "aud": "elsewhere",
                           "exp": NOW + 600})
    .to_string();
    assert_eq!(
        status(&ask(
            &mut w,
            "tg_at_yAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            other_aud.as_bytes()
        )),
        401
    );
    // Without a negative cache an inactive answer is still given once, not asked again.
    let (host0, mut w0) = loaded(
        &key,
        json!({"introspection": {"issuer": ISS, "negative_ttl_s": 0}}),
    );
    let t0 = "tg_at_zAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
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
            let t = format!("tg_at_{:A<43}", format!("{mode}{}", &path[1..]));
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
    let t = "tg_at_goneAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
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

/// The auth server's lease endpoint, as `docs/contracts.md` specifies it (one fixed window
/// per key, `granted = min(want, limit - used)`), for driving workers without the network.
/// The real endpoint is exercised by `tests/e2e/test_edge_global_ratelimit.py`.
struct LeaseServer {
    used: u64,
    window_end_ms: u64,
    calls: u32,
}

impl LeaseServer {
    fn answer(&mut self, now_ms: u64, plan: &FetchPlan) -> Vec<u8> {
        self.calls += 1;
        let body = String::from_utf8(plan.body.clone().unwrap()).unwrap();
        let field = |k: &str| -> u64 {
            body.split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .unwrap()
                .parse()
                .unwrap()
        };
        let (limit, window_s, want) = (field("limit"), field("window_s"), field("want"));
        if now_ms >= self.window_end_ms {
            self.used = 0;
            self.window_end_ms = now_ms + window_s * 1000;
        }
        let granted = want.min(limit - self.used);
        self.used += granted;
        let reset_ms = self.window_end_ms - now_ms;
        serde_json::to_vec(
            &json!({"granted": granted, "used": self.used, "limit": limit,
                                   "reset_s": reset_ms.div_ceil(1000), "reset_ms": reset_ms}),
        )
        .unwrap()
    }
}

/// One request through a worker as the glue does it: held while its key has no lease, the
/// worker's ticks dispatch the lease calls (answered by `server`, or failing), and the
/// answer decides it.
fn drive(
    host: &MemoryHost,
    w: &mut Worker,
    ctx: u32,
    r: &Request,
    server: &mut Option<&mut LeaseServer>,
) -> Outcome {
    match w.on_request(host, r) {
        Outcome::WaitForLease { rule, hash } => {
            w.hold_lease(host, ctx, rule, hash, r.clone());
            for _ in 0..40 {
                let mut decided = Vec::new();
                for p in w.tick(host) {
                    if matches!(p.kind, FetchKind::Lease { .. }) {
                        let res = match server.as_deref_mut() {
                            Some(s) => Ok((200, s.answer(host.now_ms.get(), &p))),
                            None => Err("no answer (timeout or connection failure)".into()),
                        };
                        decided.extend(w.on_lease(host, p.kind, res));
                    }
                }
                decided.extend(w.resolve_waiters(host));
                if let Some((_, o)) = decided.into_iter().find(|(c, _)| *c == ctx) {
                    return o;
                }
                host.advance_ms(100);
            }
            panic!("request {ctx} never decided");
        }
        o => {
            // Prefetch: the tick asks for the next lease in the background.
            for p in w.tick(host) {
                if matches!(p.kind, FetchKind::Lease { .. }) {
                    if let Some(s) = server.as_deref_mut() {
                        let body = s.answer(host.now_ms.get(), &p);
                        assert!(w.on_lease(host, p.kind, Ok((200, body))).is_empty());
                    }
                }
            }
            o
        }
    }
}

fn global_rules(extra: Value) -> Value {
    let mut rl = json!({"requests": 20, "period_s": 60, "key": "client_id", "mode": "global"});
    for (k, v) in extra.as_object().unwrap() {
        rl[k] = v.clone();
    }
    json!({"rules": [{"name": "limited", "path_prefix": "/l", "rate_limit": rl}]})
}

#[test]
fn global_rate_limit_two_gateways_keep_one_limit() {
    let key = TestKey::es256(3);
    // Two gateways (shared data each) with two workers each, one auth server.
    let (ga, gb) = (MemoryHost::new(NOW * 1000), MemoryHost::new(NOW * 1000));
    let extra = global_rules(json!({}));
    let mut workers = [
        (&ga, worker(&ga, &key, extra.clone())),
        (&gb, worker(&gb, &key, extra.clone())),
        (&ga, worker(&ga, &key, extra.clone())),
        (&gb, worker(&gb, &key, extra)),
    ];
    let t = token(&key, "k1", &claims("a", ""));
    let mut server = LeaseServer {
        used: 0,
        window_end_ms: 0,
        calls: 0,
    };
    let mut codes = Vec::new();
    let mut last = None;
    for i in 0..40u32 {
        let (h, w) = &mut workers[i as usize % 4];
        let o = drive(
            h,
            w,
            i + 1,
            &req("/l/x", Some(&t), &[]),
            &mut Some(&mut server),
        );
        if i == 0 {
            assert_eq!(
                reject_header(&o, "ratelimit-policy"),
                Some("\"limited\";q=20;w=60")
            );
            assert!(reject_header(&o, "ratelimit")
                .unwrap()
                .starts_with("\"limited\";r=19;t="));
        }
        codes.push(status(&o));
        last = Some(o);
    }
    let ok = codes.iter().filter(|c| **c == 200).count() as u64;
    // Default lease: clamp(20 / 10, 1, 20) = 2 per gateway.
    assert!((20 - 2 * 2..=20).contains(&ok), "{ok} allowed: {codes:?}");
    assert!(
        codes[codes.len() - 4..].iter().all(|c| *c == 429),
        "{codes:?}"
    );
    let denied = last.unwrap();
    let retry: u64 = reject_header(&denied, "retry-after")
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(
        reject_header(&denied, "ratelimit"),
        Some(format!("\"limited\";r=0;t={retry}").as_str())
    );
    assert_eq!(body(&denied)["error"], "rate_limited");
    // Exhausted keys cost the auth server nothing more.
    let calls = server.calls;
    for i in 0..8u32 {
        let (h, w) = &mut workers[i as usize % 4];
        let o = drive(
            h,
            w,
            100 + i,
            &req("/l/x", Some(&t), &[]),
            &mut Some(&mut server),
        );
        assert_eq!(status(&o), 429);
    }
    assert_eq!(server.calls, calls);
    // The next window: new leases.
    ga.advance_ms(61_000);
    gb.advance_ms(61_000);
    let (h, w) = &mut workers[0];
    let o = drive(
        h,
        w,
        200,
        &req("/l/x", Some(&t), &[]),
        &mut Some(&mut server),
    );
    assert_eq!(status(&o), 200);
}

#[test]
fn global_rate_limit_lease_call_is_a_form_post_with_the_gateway_credentials() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, global_rules(json!({"lease": 5})));
    let t = token(&key, "k1", &claims("a", ""));
    let Outcome::WaitForLease { rule, hash } = w.on_request(&host, &req("/l/x", Some(&t), &[]))
    else {
        panic!("no lease yet: the request waits");
    };
    w.hold_lease(&host, 9, rule, hash, req("/l/x", Some(&t), &[]));
    assert!(w.is_held(9));
    let plans: Vec<FetchPlan> = w
        .tick(&host)
        .into_iter()
        .filter(|p| matches!(p.kind, FetchKind::Lease { .. }))
        .collect();
    assert_eq!(plans.len(), 1);
    let p = &plans[0];
    assert_eq!(
        (p.method, p.path.as_str()),
        ("POST", "/edge/ratelimit/lease")
    );
    assert!(p
        .headers
        .iter()
        .any(|(k, v)| k == "authorization" && v.starts_with("Basic ")));
    let body = String::from_utf8(p.body.clone().unwrap()).unwrap();
    let client_key = hex(&tollgate_edge_core::lease::key_hash("a"));
    assert_eq!(
        body,
        format!("key=limited%3A{client_key}&limit=20&window_s=60&want=5")
    );
    // One call in flight per key and gateway.
    let mut w2 = worker(&host, &key, global_rules(json!({"lease": 5})));
    assert!(matches!(
        w2.on_request(&host, &req("/l/x", Some(&t), &[])),
        Outcome::WaitForLease { .. }
    ));
    assert!(!w2
        .tick(&host)
        .iter()
        .any(|p| matches!(p.kind, FetchKind::Lease { .. })));
    // The stream went away: forgotten.
    w.forget(&host, 9);
    assert!(!w.is_held(9));
}

#[test]
fn global_rate_limit_fail_modes() {
    let key = TestKey::es256(3);
    let t = token(&key, "k1", &claims("a", ""));
    for (mode, want) in [
        ("local", vec![200, 200, 429]),
        ("open", vec![200, 200, 200]),
        ("closed", vec![503, 503, 503]),
    ] {
        let (host, mut w) = loaded(
            &key,
            global_rules(json!({"requests": 2, "lease": 1, "fail_mode": mode})),
        );
        let codes: Vec<u16> = (0..3)
            .map(|i| {
                status(&drive(
                    &host,
                    &mut w,
                    i + 1,
                    &req("/l/x", Some(&t), &[]),
                    &mut None,
                ))
            })
            .collect();
        assert_eq!(codes, want, "fail_mode {mode}");
        assert!(host.metric_value(Metric::RateLimitLeaseFailed) >= 1);
        assert!(host.metric_value(Metric::RateLimitFallback) >= 3);
    }
    // No answer at all within the wait (call lost): the waiter follows the fail mode too.
    let (host, mut w) = loaded(&key, global_rules(json!({"fail_mode": "closed"})));
    let Outcome::WaitForLease { rule, hash } = w.on_request(&host, &req("/l/x", Some(&t), &[]))
    else {
        panic!("waits");
    };
    w.hold_lease(&host, 4, rule, hash, req("/l/x", Some(&t), &[]));
    assert_eq!(
        w.tick(&host)
            .iter()
            .filter(|p| matches!(p.kind, FetchKind::Lease { .. }))
            .count(),
        1
    );
    host.advance_ms(1000 + 2 * 200 + 500);
    let decided = w.resolve_waiters(&host);
    assert_eq!(decided.len(), 1);
    assert_eq!(status(&decided[0].1), 503);
}

#[test]
fn global_rate_limit_config() {
    let c = config(edge_extra(global_rules(json!({"requests": 1000}))));
    let g = c.rules[0]
        .rate_limit
        .as_ref()
        .unwrap()
        .global
        .clone()
        .unwrap();
    assert_eq!((g.lease, g.window_s, g.requests), (100, 60, 1000));
    let err = |v: Value| match Config::from_json(&config_json(v)) {
        Err(ConfigError::Invalid { field, .. }) => field,
        o => panic!("{o:?}"),
    };
    assert_eq!(err(global_rules(json!({}))), "rules[0].rate_limit.mode");
    assert_eq!(
        err(edge_extra(global_rules(json!({"lease": 21})))),
        "rules[0].rate_limit.lease"
    );
    assert_eq!(
        err(edge_extra(global_rules(json!({"period_s": 86401})))),
        "rules[0].rate_limit.period_s"
    );
    assert_eq!(
        err(edge_extra(global_rules(
            json!({"mode": "local", "lease": 2})
        ))),
        "rules[0].rate_limit.mode"
    );
    let bad_mode = edge_extra(global_rules(json!({"fail_mode": "maybe"})));
    assert!(Config::from_json(&config_json(bad_mode)).is_err());
}

/// Issue 12 item 5: a token is accepted until `exp + clock_skew_s`, so a revocation must be
/// remembered that long too (up to the largest skew, 600 s): a revoked token whose `exp` is
/// past but within the skew stays refused, from the feed and from the local cache.
#[test]
fn revoked_token_within_clock_skew_after_exp_stays_refused() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(
        &key,
        json!({"clock_skew_s": 600, "revocation": {"poll_interval_ms": 1000}}),
    );
    let mut c = claims("alice", "api:read");
    c["exp"] = json!(NOW + 10);
    let t = token(&key, "k1", &c);
    assert_eq!(status(&w.on_request(&host, &req("/r", Some(&t), &[]))), 200);
    // The token expires; within the skew the verifier still accepts it.
    host.advance_ms(100_000);
    assert_eq!(status(&w.on_request(&host, &req("/r", Some(&t), &[]))), 200);
    // Now it is revoked: the feed lists it with its `exp`, already past.
    assert!(revocation_plan(&w.tick(&host)).is_some());
    w.on_revocations(
        &host,
        Ok((200, feed("2", false, &[("jti-alice", NOW + 10)]))),
    );
    let o = w.on_request(&host, &req("/r", Some(&t), &[]));
    assert_eq!(status(&o), 401, "{o:?}");
    assert_eq!(body(&o)["error_description"], "token revoked");
    // A resync and a prune keep it as well, until exp + 600.
    host.advance_ms(400_000);
    assert!(revocation_plan(&w.tick(&host)).is_some());
    w.on_revocations(
        &host,
        Ok((200, feed("3", true, &[("jti-alice", NOW + 10)]))),
    );
    assert_eq!(status(&w.on_request(&host, &req("/r", Some(&t), &[]))), 401);
    // Past exp + skew the verifier refuses it anyway.
    host.advance_ms(200_000);
    let o = w.on_request(&host, &req("/r", Some(&t), &[]));
    assert_eq!(status(&o), 401);
}

fn opaque_token(tag: &str) -> String {
    format!("tg_at_{tag:A<43}")
}

/// Issue 12 item 14: a string that cannot be an opaque token of the issuer (the Tollgate
/// format by default: `tg_at_` + 43 base64url characters) is refused with 401 without an
/// introspection call; the shape is configurable.
#[test]
fn opaque_garbage_is_refused_by_shape_without_a_call() {
    let key = TestKey::es256(3);
    let (host, mut w) = loaded(&key, json!({"introspection": {"issuer": ISS}}));
    for garbage in [
        "x",
        "garbage-token",
        "tg_at_short",
        &format!("{}A", opaque_token("long")),
        &opaque_token("bad!char"),
        &opaque_token("x").replace("tg_at_", "tg_rt_"),
        "a.b",
        "a.b.c.d",
    ] {
        let o = w.on_request(&host, &req("/r", Some(garbage), &[]));
        assert_eq!(status(&o), 401, "{garbage}: {o:?}");
        assert_eq!(body(&o)["error"], "invalid_token");
    }
    assert_eq!(host.metric_value(Metric::IntrospectionCall), 0);
    assert_eq!(host.metric_value(Metric::Denied("opaque_shape")), 8);
    // A token of the right shape is introspected.
    assert!(matches!(
        w.on_request(&host, &req("/r", Some(&opaque_token("ok")), &[])),
        Outcome::Introspect { .. }
    ));
    // Another issuer's format, configured.
    let (host, mut w) = loaded(
        &key,
        json!({"introspection": {"issuer": ISS, "token_shape": {
            "prefix": "", "min_length": 20, "max_length": 64, "charset": "b64token"}}}),
    );
    assert!(matches!(
        w.on_request(&host, &req("/r", Some("2YotnFZFEjr1zCsicMWpAA=="), &[])),
        Outcome::Introspect { .. }
    ));
    assert_eq!(
        status(&w.on_request(&host, &req("/r", Some("short"), &[]))),
        401
    );
    // Shapes that cannot work are refused at configuration.
    for (shape, field) in [
        (
            json!({"min_length": 0}),
            "introspection.token_shape.min_length",
        ),
        (
            json!({"min_length": 50, "max_length": 49}),
            "introspection.token_shape.max_length",
        ),
        (
            json!({"prefix": "tg at ", "min_length": 10, "max_length": 10}),
            "introspection.token_shape.prefix",
        ),
    ] {
        match Config::from_json(&config_json(edge_extra(
            json!({"introspection": {"issuer": ISS, "token_shape": shape}}),
        ))) {
            Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{other:?}"),
        }
    }
}

/// Issue 12 item 14: new opaque tokens (introspection misses) are limited per client
/// address, across workers; over the limit: 429 without a call, counted. Cached answers
/// and other addresses are not affected.
#[test]
fn introspection_misses_are_rate_limited_per_client_ip() {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let extra = json!({"introspection": {"issuer": ISS, "negative_ttl_s": 60,
                                         "miss_limit": {"requests": 3, "period_s": 60}}});
    let mut w1 = worker(&host, &key, extra.clone());
    let mut w2 = worker(&host, &key, extra);
    assert!(w1.cfg.uses_peer_address());
    let from = |ip: &str, t: &str| {
        let mut r = req("/r", Some(t), &[]);
        r.source = format!("{ip}:4000");
        r
    };
    let answer = |w: &mut Worker, t: &str| {
        let h = hash_token(t);
        w.hold_introspection(&host, 1, h, from("198.51.100.1", t));
        w.on_introspection(&host, h, Ok((200, br#"{"active":false}"#.to_vec())));
    };
    for i in 0..3 {
        let t = opaque_token(&format!("m{i}"));
        let w = if i % 2 == 0 { &mut w1 } else { &mut w2 };
        assert!(matches!(
            w.on_request(&host, &from("198.51.100.1", &t)),
            Outcome::Introspect { .. }
        ));
        answer(w, &t);
    }
    for w in [&mut w1, &mut w2] {
        let o = w.on_request(&host, &from("198.51.100.1", &opaque_token("over")));
        assert_eq!(status(&o), 429, "{o:?}");
        assert!(reject_header(&o, "retry-after").is_some());
    }
    assert_eq!(host.metric_value(Metric::IntrospectionCall), 3);
    assert_eq!(host.metric_value(Metric::IntrospectionLimited), 2);
    // A cached answer costs no call and is not limited; another address is not limited.
    assert_eq!(
        status(&w1.on_request(&host, &from("198.51.100.1", &opaque_token("m0")))),
        401
    );
    assert!(matches!(
        w2.on_request(&host, &from("198.51.100.2", &opaque_token("other"))),
        Outcome::Introspect { .. }
    ));
    // The bucket refills.
    host.advance_ms(20_000);
    assert!(matches!(
        w1.on_request(&host, &from("198.51.100.1", &opaque_token("later"))),
        Outcome::Introspect { .. }
    ));
    // `requests: 0` turns the limit off.
    let c = config(edge_extra(
        json!({"introspection": {"issuer": ISS, "miss_limit": {"requests": 0}}}),
    ));
    assert!(c.introspection.as_ref().unwrap().miss_limit.is_none());
    assert!(!c.uses_peer_address());
}

/// A worker over `cfg` with its JWKS loaded and the first feed page answered.
fn worker_of(host: &MemoryHost, key: &TestKey, cfg: Config) -> Worker {
    let mut w = Worker::new(cfg);
    w.init_shared(host);
    for p in w.tick(host) {
        match p.kind {
            FetchKind::Jwks { issuer } => w.on_fetch(host, issuer, Ok((200, jwks(&[(key, "k1")])))),
            FetchKind::Revocations => w.on_revocations(host, Ok((200, feed("1", true, &[])))),
            FetchKind::Introspection { .. } | FetchKind::Lease { .. } => unreachable!(),
        }
    }
    w
}

/// The `authorization` header of the feed poll and of a lease call of a worker over `cfg`.
fn edge_call_credentials(cfg: Config) -> [Option<String>; 2] {
    let key = TestKey::es256(3);
    let host = MemoryHost::new(NOW * 1000);
    let mut w = worker_of(&host, &key, cfg);
    let t = token(&key, "k1", &claims("a", ""));
    let Outcome::WaitForLease { rule, hash } = w.on_request(&host, &req("/l/x", Some(&t), &[]))
    else {
        panic!("no lease yet: the request waits");
    };
    w.hold_lease(&host, 9, rule, hash, req("/l/x", Some(&t), &[]));
    host.advance_ms(1500);
    let plans = w.tick(&host);
    let auth = |p: &FetchPlan| {
        p.headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
    };
    let feed = plans
        .iter()
        .find(|p| p.kind == FetchKind::Revocations)
        .expect("a feed poll");
    let lease = plans
        .iter()
        .find(|p| matches!(p.kind, FetchKind::Lease { .. }))
        .expect("a lease call");
    assert!(feed
        .headers
        .iter()
        .any(|(k, v)| k == "accept" && v == "application/json"));
    [auth(feed), auth(lease)]
}

fn edge_cfg(
    auth_server: Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let mut extra = global_rules(json!({"lease": 5}));
    extra["auth_server"] = auth_server;
    extra["revocation"] = json!({});
    Config::from_json_with_env(&config_json(extra), env)
}

#[test]
fn auth_server_credentials_mesh_identity_env_and_inline() {
    use base64::Engine as _;
    let b64 = |s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    let no_env = |_: &str| None;
    // Mesh identity: no credentials, no authorization header on the feed or the leases.
    let cfg = edge_cfg(json!({"cluster": "auth"}), &no_env).unwrap();
    assert!(!cfg.auth_server.as_ref().unwrap().has_credentials());
    assert_eq!(edge_call_credentials(cfg), [None, None]);
    // Inline (kept for compatibility).
    let cfg = edge_cfg(
        json!({"cluster": "auth", "client_id": "gw", "client_secret": "s3cret"}),
        &no_env,
    )
    .unwrap();
    let want = Some(b64("gw:s3cret"));
    assert_eq!(edge_call_credentials(cfg), [want.clone(), want]);
    // From the VM's environment: only the named variable is read.
    let env = |k: &str| (k == "TOLLGATE_EDGE_SECRET").then(|| "from-env:%".to_string());
    let cfg = edge_cfg(
        json!({"cluster": "auth", "client_id": "gw", "client_secret_env": "TOLLGATE_EDGE_SECRET"}),
        &env,
    )
    .unwrap();
    assert!(!format!("{cfg:?}").contains("from-env"));
    // Form-encoded before base64, as the inline secret (RFC 6749 §2.3.1).
    let want = Some(b64("gw:from-env%3A%25"));
    assert_eq!(edge_call_credentials(cfg), [want.clone(), want]);

    // Clear errors.
    let err = |a: Value, env: &dyn Fn(&str) -> Option<String>| match edge_cfg(a, env) {
        Err(ConfigError::Invalid { field, message }) => format!("{field}: {message}"),
        other => panic!("{other:?}"),
    };
    let e = err(
        json!({"cluster": "auth", "client_id": "gw", "client_secret_env": "MISSING"}),
        &env,
    );
    assert!(
        e.starts_with("auth_server.client_secret_env") && e.contains("MISSING is not set"),
        "{e}"
    );
    let empty = |_: &str| Some(String::new());
    let e = err(
        json!({"cluster": "auth", "client_id": "gw", "client_secret_env": "S"}),
        &empty,
    );
    assert!(e.contains("S is empty"), "{e}");
    for name in ["", "1X", "A-B", "A B", "É"] {
        let e = err(
            json!({"cluster": "auth", "client_id": "gw", "client_secret_env": name}),
            &env,
        );
        assert!(
            e.starts_with("auth_server.client_secret_env: must name"),
            "{name:?}: {e}"
        );
    }
    let e = err(
        json!({"cluster": "auth", "client_id": "gw", "client_secret": "x",
               "client_secret_env": "TOLLGATE_EDGE_SECRET"}),
        &env,
    );
    assert!(e.contains("alternatives"), "{e}");
    assert!(
        err(json!({"cluster": "auth", "client_id": "gw"}), &env).contains("needs client_secret")
    );
    assert!(err(json!({"cluster": "auth", "client_secret": "x"}), &env).contains("needs client_id"));
    assert!(err(
        json!({"cluster": "auth", "client_id": "", "client_secret": "x"}),
        &env
    )
    .contains("must not be empty"));
    // from_json has no environment.
    let mut extra = global_rules(json!({}));
    extra["auth_server"] =
        json!({"cluster": "auth", "client_id": "gw", "client_secret_env": "TOLLGATE_EDGE_SECRET"});
    assert!(matches!(
        Config::from_json(&config_json(extra)),
        Err(ConfigError::Invalid { .. })
    ));
    // Introspection authenticates a client: not available by mesh identity.
    let x = json!({"auth_server": {"cluster": "auth"}, "introspection": {"issuer": ISS}});
    match Config::from_json(&config_json(x)) {
        Err(ConfigError::Invalid {
            field,
            message: reason,
        }) => {
            assert_eq!(field, "introspection");
            assert!(reason.contains("client credentials"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
