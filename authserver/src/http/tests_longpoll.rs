//! HTTP tests of long polls of the revocation feed (`GET /edge/revocations?wait=`): held
//! until a revocation is published (on this replica or, with Redis, another one), answered
//! empty with the same cursor when the wait ends, at once when the reader is behind, 404
//! when long polls are off, 503 past the waiter bound, answered on shutdown, and refused
//! to callers who may not read the feed. Every test runs against the in-memory store and a
//! real `redis-server`.
//!
//! No timing thresholds: the waits asked for are far longer than the tests' hang guards
//! (`GUARD`), so an answer inside the guard can only come from a wake-up.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use axum::http::StatusCode;
use serde_json::json;

use super::test_support::store_suite;
use super::tests::{assert_error, basic, claims, App, Resp};
use crate::config::Config;
use crate::state::AppState;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::StoreUrl;

/// A hang guard far below the waits the tests ask for (300 s).
const GUARD: Duration = Duration::from_secs(60);

struct Edge {
    auth: String,
    cursor: String,
}

async fn edge(app: &App) -> Edge {
    let (id, secret) = app.register(json!({"scope": "tollgate:edge"})).await;
    let auth = basic(&id, &secret);
    let r = app.get("/edge/revocations", Some(&auth)).await;
    assert_eq!(r.status, StatusCode::OK);
    Edge {
        cursor: r.body["cursor"].as_str().unwrap().to_string(),
        auth,
    }
}

/// Issue an access token and revoke it; its `jti`.
async fn revoke_one(app: &App) -> String {
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    let at = app.token(&id, &secret, "").await.body["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .form(
            "/oauth2/revoke",
            &format!("token={at}"),
            Some(&basic(&id, &secret)),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    claims(&at).1["jti"].as_str().unwrap().to_string()
}

async fn until_held(app: &App, n: usize) {
    tokio::time::timeout(GUARD, async {
        while app.state.feed_waiters.held() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the long poll is held");
}

fn jtis(r: &Resp) -> Vec<String> {
    r.body["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["jti"].as_str().unwrap().to_string())
        .collect()
}

fn long_polls(c: &mut Config) {
    c.edge_long_poll_max_wait_s = 300;
}

async fn a_revocation_wakes_a_held_poll(app: App) {
    let e = edge(&app).await;
    let path = format!("/edge/revocations?since={}&wait=300", e.cursor);
    let poll = app.get(&path, Some(&e.auth));
    let revoke = async {
        until_held(&app, 1).await;
        revoke_one(&app).await
    };
    let (r, jti) = tokio::time::timeout(GUARD, async { tokio::join!(poll, revoke) })
        .await
        .expect("the held poll is answered when a revocation is published");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(jtis(&r), vec![jti]);
    assert_eq!(r.body["wait_s"], 300);
    assert_eq!(r.body["resync"], false);
    assert_ne!(r.body["cursor"].as_str().unwrap(), e.cursor);
    assert_eq!(app.state.feed_waiters.held(), 0);
}

/// A second auth-server replica over the same store (a new connection for Redis).
async fn second_replica(app: &App) -> App {
    let state = match &app._redis {
        Some(server) => {
            let store = RedisStore::connect(
                &StoreUrl::parse(&server.url(0)).unwrap(),
                RedisOptions::default(),
            )
            .await
            .unwrap();
            let mut cfg = Config::for_tests();
            long_polls(&mut cfg);
            AppState::new(cfg, Arc::new(store)).await.unwrap()
        }
        None => app.state.clone(),
    };
    let mut b = App::from_state(state, None);
    b.router = super::router(b.state.clone())
        .layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 2], 40001))));
    b
}

async fn a_revocation_on_another_replica_wakes_a_held_poll(app: App) {
    let other = second_replica(&app).await;
    let e = edge(&app).await;
    let path = format!("/edge/revocations?since={}&wait=300", e.cursor);
    // Held on the second replica, revoked through the first.
    let poll = other.get(&path, Some(&e.auth));
    let revoke = async {
        until_held(&other, 1).await;
        revoke_one(&app).await
    };
    let (r, jti) = tokio::time::timeout(GUARD, async { tokio::join!(poll, revoke) })
        .await
        .expect("the poll held on the other replica is answered");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(jtis(&r), vec![jti]);
}

async fn the_wait_ends_with_an_empty_page_and_the_same_cursor(app: App) {
    let e = edge(&app).await;
    let r = app
        .get(
            &format!("/edge/revocations?since={}&wait=1", e.cursor),
            Some(&e.auth),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["cursor"].as_str().unwrap(), e.cursor);
    assert!(jtis(&r).is_empty());
    assert_eq!(r.body["wait_s"], 1);
    assert_eq!(r.body["more"], false);
}

async fn a_reader_behind_is_answered_at_once(app: App) {
    let e = edge(&app).await;
    let jti = revoke_one(&app).await;
    let r = tokio::time::timeout(
        GUARD,
        app.get(
            &format!("/edge/revocations?since={}&wait=300", e.cursor),
            Some(&e.auth),
        ),
    )
    .await
    .expect("not held");
    assert_eq!(jtis(&r), vec![jti]);
    // Without a cursor: the full list (resync), at once too.
    let r = tokio::time::timeout(GUARD, app.get("/edge/revocations?wait=300", Some(&e.auth)))
        .await
        .expect("not held");
    assert_eq!(r.body["resync"], true);
}

async fn a_wait_above_the_cap_is_cut(app: App) {
    let e = edge(&app).await;
    let r = app
        .get(
            &format!("/edge/revocations?since={}&wait=3600", e.cursor),
            Some(&e.auth),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["wait_s"], 1, "TOLLGATE_EDGE_LONG_POLL_MAX_WAIT_S=1");
}

async fn bad_waits_are_invalid_requests(app: App) {
    let e = edge(&app).await;
    for w in ["-1", "abc", "3601", "1.5", "%20"] {
        assert_error(
            &app.get(&format!("/edge/revocations?wait={w}"), Some(&e.auth))
                .await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    assert_error(
        &app.get("/edge/revocations?wait=1&wait=2", Some(&e.auth))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

async fn long_polls_off_answer_404_for_wait(app: App) {
    let e = edge(&app).await;
    assert_error(
        &app.get(
            &format!("/edge/revocations?since={}&wait=25", e.cursor),
            Some(&e.auth),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Plain polls still work.
    let r = app
        .get(
            &format!("/edge/revocations?since={}", e.cursor),
            Some(&e.auth),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.get("wait_s").is_none());
}

async fn past_the_waiter_bound_a_poll_gets_503(app: App) {
    let e = edge(&app).await;
    let path = format!("/edge/revocations?since={}&wait=300", e.cursor);
    let held = app.get(&path, Some(&e.auth));
    let second = async {
        until_held(&app, 1).await;
        let r = app.get(&path, Some(&e.auth)).await;
        // Let the held one go.
        app.state.feed_waiters.shutdown();
        r
    };
    let (first, r) = tokio::time::timeout(GUARD, async { tokio::join!(held, second) })
        .await
        .expect("answered");
    assert_error(
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    );
    assert_eq!(first.status, StatusCode::OK);
}

async fn shutdown_answers_held_polls(app: App) {
    let e = edge(&app).await;
    let path = format!("/edge/revocations?since={}&wait=300", e.cursor);
    let polls =
        async { tokio::join!(app.get(&path, Some(&e.auth)), app.get(&path, Some(&e.auth))) };
    let stop = async {
        until_held(&app, 2).await;
        app.state.feed_waiters.shutdown();
    };
    let ((a, b), ()) = tokio::time::timeout(GUARD, async { tokio::join!(polls, stop) })
        .await
        .expect("held polls are answered on shutdown");
    for r in [a, b] {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["cursor"].as_str().unwrap(), e.cursor);
        assert!(jtis(&r).is_empty());
    }
    // Stopping: a new poll is not held.
    let r = tokio::time::timeout(GUARD, app.get(&path, Some(&e.auth)))
        .await
        .expect("not held while stopping");
    assert_eq!(r.status, StatusCode::OK);
}

async fn only_edge_callers_may_long_poll(app: App) {
    let e = edge(&app).await;
    let path = format!("/edge/revocations?since={}&wait=300", e.cursor);
    let (id, secret) = app.register(json!({"scope": "a"})).await;
    for (auth, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "invalid_client"),
        (
            Some(basic(&id, &secret)),
            StatusCode::FORBIDDEN,
            "insufficient_scope",
        ),
        (
            Some(basic(&id, "wrong")),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
    ] {
        let r = tokio::time::timeout(GUARD, app.get(&path, auth.as_deref()))
            .await
            .expect("refused at once, never held");
        assert_error(&r, status, code);
    }
    assert_eq!(app.state.feed_waiters.held(), 0);
}

store_suite! {
    a_revocation_wakes_a_held_poll => super::long_polls,
    a_revocation_on_another_replica_wakes_a_held_poll => super::long_polls,
    the_wait_ends_with_an_empty_page_and_the_same_cursor => super::long_polls,
    a_reader_behind_is_answered_at_once => super::long_polls,
    a_wait_above_the_cap_is_cut => |c: &mut crate::config::Config| c.edge_long_poll_max_wait_s = 1,
    bad_waits_are_invalid_requests => super::long_polls,
    long_polls_off_answer_404_for_wait => |c: &mut crate::config::Config| c.edge_long_poll_max_wait_s = 0,
    past_the_waiter_bound_a_poll_gets_503 => |c: &mut crate::config::Config| {
        c.edge_long_poll_max_wait_s = 300;
        c.edge_long_poll_max_waiters = 1;
    },
    shutdown_answers_held_polls => super::long_polls,
    only_edge_callers_may_long_poll => super::long_polls,
}
