//! Client authentication with the client cache, across two auth-server replicas on one
//! real `redis-server`: what an operator changes or deletes through one replica must stop
//! working at the other (who must NOT get a token: a deleted client, a client asking for a
//! scope taken from it), and a change the other's cache has not seen yet must not refuse
//! the client's new credentials.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};

use super::tests::{assert_error, App, ADMIN};
use crate::config::Config;
use crate::state::AppState;
use crate::store::redis::{RedisOptions, RedisStore};
use crate::store::StoreUrl;
use crate::testutil::RedisServer;

/// Two replicas (their own stores, caches and subscriptions) on one Redis.
async fn replicas() -> Option<(App, App, RedisServer)> {
    let server = RedisServer::start()?;
    let mut apps = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::connect(
            &StoreUrl::parse(&server.url(0)).unwrap(),
            RedisOptions {
                // Longer than the test: only a message may end an entry.
                client_cache_ttl: Duration::from_secs(120),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let state = AppState::new(Config::for_tests(), Arc::new(store))
            .await
            .unwrap();
        apps.push(App::from_state(state, None));
    }
    let b = apps.pop()?;
    let a = apps.pop()?;
    Some((a, b, server))
}

/// Until `app` serves the client from its cache (its subscription opens in the background).
async fn until_cached(app: &App, id: &str) {
    for _ in 0..250 {
        if app.state.store.get_client_cached(id).await.unwrap().1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the client was never served from the cache");
}

/// Until `app` answers a client_credentials request with `status`; then it must keep doing
/// so.
async fn until_status(app: &App, id: &str, secret: &str, extra: &str, status: StatusCode) {
    let mut seen = false;
    for _ in 0..250 {
        if app.token(id, secret, extra).await.status == status {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen, "the other replica never answered {status}");
    for _ in 0..5 {
        assert_eq!(app.token(id, secret, extra).await.status, status);
    }
}

async fn put(app: &App, id: &str, md: Value) {
    let r = app
        .json(
            "PUT",
            &format!("/oauth2/register/{id}"),
            md,
            Some(&format!("Bearer {ADMIN}")),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
}

fn metadata(id: &str, scope: &str, method: &str) -> Value {
    json!({
        "client_id": id,
        "client_name": "svc",
        "grant_types": ["client_credentials"],
        "scope": scope,
        "token_endpoint_auth_method": method,
    })
}

#[tokio::test]
async fn a_scope_taken_away_through_one_replica_is_refused_by_the_other() {
    let Some((a, b, _redis)) = replicas().await else {
        return;
    };
    let (id, secret) = a
        .register(json!({"client_name": "svc", "scope": "api:read api:write"}))
        .await;
    assert_eq!(
        b.token(&id, &secret, "&scope=api:write").await.status,
        StatusCode::OK
    );
    until_cached(&b, &id).await;

    put(&a, &id, metadata(&id, "api:read", "client_secret_basic")).await;
    until_status(
        &b,
        &id,
        &secret,
        "&scope=api:write",
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_error(
        &b.token(&id, &secret, "&scope=api:write").await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );
    assert_eq!(
        b.token(&id, &secret, "&scope=api:read").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_client_deleted_through_one_replica_gets_no_token_from_the_other() {
    let Some((a, b, _redis)) = replicas().await else {
        return;
    };
    let (id, secret) = a.register(json!({"client_name": "svc"})).await;
    assert_eq!(b.token(&id, &secret, "").await.status, StatusCode::OK);
    until_cached(&b, &id).await;

    let r = a
        .delete(
            &format!("/oauth2/register/{id}"),
            Some(&format!("Bearer {ADMIN}")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{:?}", r.body);
    until_status(&b, &id, &secret, "", StatusCode::UNAUTHORIZED).await;
    assert_error(
        &b.token(&id, &secret, "").await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
}

#[tokio::test]
async fn a_change_the_cache_has_not_seen_does_not_refuse_the_clients_new_credentials() {
    let Some((a, b, redis)) = replicas().await else {
        return;
    };
    let (id, secret) = a.register(json!({"client_name": "svc"})).await;
    assert_eq!(b.token(&id, &secret, "").await.status, StatusCode::OK);
    until_cached(&b, &id).await;

    // The client moves to client_secret_post behind every cache's back (no message), as
    // when B has not yet received the message of a change made through A.
    let mut md = a
        .state
        .store
        .get_client(&id)
        .await
        .unwrap()
        .unwrap()
        .metadata;
    md.token_endpoint_auth_method = "client_secret_post".into();
    redis.cmd::<i64>(
        ::redis::cmd("HSET")
            .arg(format!("auth:client:{id}"))
            .arg("metadata")
            .arg(serde_json::to_string(&md).unwrap()),
    );
    assert!(b.state.store.get_client_cached(&id).await.unwrap().1);

    // B's cached record says client_secret_basic; the request is checked again against
    // Redis before it is refused, and the new method works at once.
    let r = b
        .form(
            "/oauth2/token",
            &format!("grant_type=client_credentials&client_id={id}&client_secret={secret}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // That second look replaced what B's cache held: the old method is refused.
    assert_error(
        &b.token(&id, &secret, "").await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    // And a wrong secret is still refused after the second look.
    assert_error(
        &b.form(
            "/oauth2/token",
            &format!("grant_type=client_credentials&client_id={id}&client_secret=wrong"),
            None,
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
}
