//! HTTP tests of `POST /edge/ratelimit/lease` (quota leases for the filters' global
//! rate-limit mode): grants up to the limit, exhaustion, window reset, concurrent callers
//! through two auth-server replicas, caller authentication, parameter validation and the
//! metrics. Every test runs against the in-memory store and a real `redis-server`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::test_support::store_suite;
use super::tests::{assert_error, basic, App, Resp, ADMIN};
use crate::config::Config;
use crate::state::AppState;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::StoreUrl;

const PATH: &str = "/edge/ratelimit/lease";

async fn edge_client(app: &App) -> String {
    let (id, secret) = app.register(json!({"scope": "tollgate:edge"})).await;
    basic(&id, &secret)
}

async fn lease(app: &App, auth: &str, body: &str) -> Resp {
    app.form(PATH, body, Some(auth)).await
}

fn granted(r: &Resp) -> u64 {
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.raw)
    );
    r.body["granted"].as_u64().unwrap()
}

async fn grants_up_to_the_limit_then_zero(app: App) {
    let auth = edge_client(&app).await;
    let body = "key=api%3Aabc&limit=10&window_s=60&want=4";
    let r = lease(&app, &auth, body).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
    assert_eq!(
        r.headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    assert_eq!(r.body["granted"], 4);
    assert_eq!(r.body["used"], 4);
    assert_eq!(r.body["limit"], 10);
    let reset_s = r.body["reset_s"].as_u64().unwrap();
    let reset_ms = r.body["reset_ms"].as_u64().unwrap();
    assert!((1..=60).contains(&reset_s), "{}", r.body);
    assert!((1..=60_000).contains(&reset_ms), "{}", r.body);
    assert_eq!(reset_s, reset_ms.div_ceil(1000));
    assert_eq!(granted(&lease(&app, &auth, body).await), 4);
    let r = lease(&app, &auth, body).await;
    assert_eq!(
        (r.body["granted"].clone(), r.body["used"].clone()),
        (json!(2), json!(10))
    );
    // Exhausted: still 200, granted 0, and the time until the window ends.
    let r = lease(&app, &auth, body).await;
    assert_eq!(granted(&r), 0);
    assert_eq!(r.body["used"], 10);
    assert!(r.body["reset_s"].as_u64().unwrap() >= 1);
    // Another key has its own window; the admin token may lease too, from the same counters.
    let admin = format!("Bearer {ADMIN}");
    assert_eq!(
        granted(&lease(&app, &admin, "key=api%3Aother&limit=10&window_s=60&want=10").await),
        10
    );
    assert_eq!(granted(&lease(&app, &admin, body).await), 0);
}

async fn window_resets(app: App) {
    let auth = edge_client(&app).await;
    let body = "key=w&limit=3&window_s=1&want=3";
    assert_eq!(granted(&lease(&app, &auth, body).await), 3);
    assert_eq!(granted(&lease(&app, &auth, body).await), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = lease(&app, &auth, body).await;
    assert_eq!(granted(&r), 3, "a new window");
    assert_eq!(r.body["used"], 3);
}

/// A second auth-server replica over the same store (a new connection for Redis).
async fn second_replica(app: &App) -> Router {
    let state = match &app._redis {
        Some(server) => {
            let store = RedisStore::connect(
                &StoreUrl::parse(&server.url(0)).unwrap(),
                RedisOptions::default(),
            )
            .await
            .unwrap();
            let mut cfg = Config::for_tests();
            cfg.rate_limit_per_ip = 20;
            AppState::new(cfg, std::sync::Arc::new(store))
                .await
                .unwrap()
        }
        None => app.state.clone(),
    };
    super::router(state).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 2], 40001))))
}

async fn concurrent_callers_on_two_replicas_never_over_grant(app: App) {
    const LIMIT: u64 = 500;
    let auth = edge_client(&app).await;
    let routers = [app.router.clone(), second_replica(&app).await];
    let mut tasks = Vec::new();
    for t in 0..8usize {
        let router = routers[t % 2].clone();
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            // Bounded: every lease before exhaustion takes at least one request.
            for _ in 0..=LIMIT {
                let req = Request::post(PATH)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .header(header::AUTHORIZATION, &auth)
                    .body(Body::from(format!(
                        "key=hot&limit={LIMIT}&window_s=60&want={}",
                        2 + t % 4
                    )))
                    .unwrap();
                let resp = router.clone().oneshot(req).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let raw = resp.into_body().collect().await.unwrap().to_bytes();
                let v: Value = serde_json::from_slice(&raw).unwrap();
                assert!(v["used"].as_u64().unwrap() <= LIMIT, "{v}");
                let g = v["granted"].as_u64().unwrap();
                if g == 0 {
                    break;
                }
                got += g;
            }
            got
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(
        total, LIMIT,
        "the replicas together granted exactly the limit"
    );
}

async fn callers_must_be_edge_clients(app: App) {
    let body = "key=k&limit=5&window_s=60&want=1";
    assert_error(
        &app.form(PATH, body, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    assert_error(
        &lease(&app, &basic(&id, &secret), body).await,
        StatusCode::FORBIDDEN,
        "insufficient_scope",
    );
    let (eid, esecret) = app.register(json!({"scope": "tollgate:edge"})).await;
    assert_error(
        &lease(&app, &basic(&eid, "wrong"), body).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    assert_error(
        &lease(&app, "Bearer not-the-admin-token", body).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    // Credentials in the body are not accepted here (Basic or the admin token only).
    assert_error(
        &app.form(
            PATH,
            &format!("{body}&client_id={eid}&client_secret={esecret}"),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    // Nothing was counted by the refused calls.
    let r = lease(
        &app,
        &basic(&eid, &esecret),
        "key=k&limit=5&window_s=60&want=5",
    )
    .await;
    assert_eq!(granted(&r), 5);
    // An unauthenticated caller learns nothing about its parameters: 401 before 400.
    assert_error(
        &app.form(PATH, "key=k&limit=0", None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
}

async fn bad_parameters_are_invalid_request(app: App) {
    let auth = edge_client(&app).await;
    for body in [
        "",
        "limit=5&window_s=60&want=1",
        "key=a%20b&limit=5&window_s=60&want=1",
        "key=k&limit=0&window_s=60&want=1",
        "key=k&limit=1000000001&window_s=60&want=1",
        "key=k&limit=5&window_s=86401&want=1",
        "key=k&limit=5&window_s=60&want=6",
        "key=k&limit=5&window_s=60&want=0",
        "key=k&limit=x&window_s=60&want=1",
        "key=k&key=j&limit=5&window_s=60&want=1",
    ] {
        assert_error(
            &lease(&app, &auth, body).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    let long = "k".repeat(257);
    assert_error(
        &lease(
            &app,
            &auth,
            &format!("key={long}&limit=5&window_s=60&want=1"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    // A JSON body is refused (form only).
    let r = app
        .json(
            "POST",
            PATH,
            json!({"key": "k", "limit": 5, "window_s": 60, "want": 1}),
            Some(&auth),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["error"], "invalid_request");
    let r = app.get(PATH, Some(&auth)).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    // None of the refused calls took quota.
    assert_eq!(
        granted(&lease(&app, &auth, "key=k&limit=5&window_s=60&want=5").await),
        5
    );
}

async fn the_per_client_limit_applies(app: App) {
    let (id, secret) = app
        .register(json!({"scope": "tollgate:edge", "rate_limit_per_minute": 2}))
        .await;
    let auth = basic(&id, &secret);
    let body = "key=k&limit=100&window_s=60&want=1";
    assert_eq!(granted(&lease(&app, &auth, body).await), 1);
    assert_eq!(granted(&lease(&app, &auth, body).await), 1);
    let r = lease(&app, &auth, body).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "slow_down");
    assert!(r.headers.get(header::RETRY_AFTER).is_some());
}

async fn metrics_count_leases(app: App) {
    let auth = edge_client(&app).await;
    let body = "key=m&limit=2&window_s=60&want=2";
    assert_eq!(granted(&lease(&app, &auth, body).await), 2);
    assert_eq!(granted(&lease(&app, &auth, body).await), 0);
    let r = app.get("/metrics", None).await;
    let text = String::from_utf8(r.raw).unwrap();
    for needle in [
        "tollgate_ratelimit_leases_total{result=\"granted\"}",
        "tollgate_ratelimit_leases_total{result=\"exhausted\"}",
        "tollgate_ratelimit_leased_requests_total",
    ] {
        assert!(text.contains(needle), "{needle} missing in {text}");
    }
}

store_suite! {
    config: |c| c.rate_limit_per_ip = 20;
    grants_up_to_the_limit_then_zero,
    window_resets,
    concurrent_callers_on_two_replicas_never_over_grant,
    callers_must_be_edge_clients,
    bad_parameters_are_invalid_request,
    the_per_client_limit_applies,
    metrics_count_leases,
}
