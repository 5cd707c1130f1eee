//! `POST/GET /admin/users`, `GET/DELETE /admin/users/{username}` (admin Bearer token):
//! the users who can log in at the authorization endpoint. Passwords are stored only as
//! Argon2id hashes and never returned. Deleting a user ends its sessions, token families
//! and access tokens; a user created again under the same name is another user (a new
//! `user_id`) and inherits none of them.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::error::OAuthError;
use crate::grants;
use crate::store::{now_secs, user_owner, StoreError, UserRecord};
use crate::users;

use super::{client_auth, json_no_store, SharedState};

fn view(u: &UserRecord) -> Value {
    json!({"username": u.username, "created_at": u.created_at})
}

#[utoipa::path(
    post,
    path = "/admin/users",
    tags = ["admin"],
    request_body(content = super::openapi::NewUser, content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 201, description = "created", body = super::openapi::User,
            links(
                ("read" = (operation_ref = "#/paths/~1admin~1users~1{username}/get",
                    parameters(("username" = "$response.body#/username")))),
                ("delete" = (operation_ref = "#/paths/~1admin~1users~1{username}/delete",
                    parameters(("username" = "$response.body#/username")))),
            )),
        (status = 401, description = "invalid_token", body = super::openapi::ErrorBody),
        (status = 409, description = "conflict: the user exists already", body = super::openapi::ErrorBody),
        (status = 415, description = "unsupported content type", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn create(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = async {
        client_auth::require_admin(&state, &headers, Some(peer)).await?;
        let v = crate::json::from_request(&headers, &body)?;
        let Value::Object(m) = v else {
            return Err(OAuthError::InvalidRequest("expected a JSON object".into()));
        };
        if let Some(k) = m.keys().find(|k| *k != "username" && *k != "password") {
            return Err(OAuthError::InvalidRequest(format!(
                "unknown member {}",
                crate::form::sanitize(k)
            )));
        }
        let username = m.get("username").and_then(Value::as_str).unwrap_or("");
        let password = m.get("password").and_then(Value::as_str).unwrap_or("");
        if !users::valid_username(username) {
            return Err(OAuthError::InvalidRequest(
                "username must be 1-64 characters of letters, digits and . _ @ -".into(),
            ));
        }
        if password.chars().count() < users::MIN_PASSWORD || password.len() > users::MAX_PASSWORD {
            return Err(OAuthError::InvalidRequest(format!(
                "password must have {} to {} characters",
                users::MIN_PASSWORD,
                users::MAX_PASSWORD
            )));
        }
        let pw = password.to_string();
        let hash = tokio::task::spawn_blocking(move || users::hash_password(&pw))
            .await
            .map_err(|e| OAuthError::ServerError(e.to_string()))?
            .map_err(|e| OAuthError::ServerError(e.to_string()))?;
        let user = UserRecord {
            username: username.to_string(),
            password_hash: hash,
            created_at: now_secs(),
            user_id: crate::crypto::random_b64(16),
        };
        state.store.create_user(&user).await.map_err(|e| match e {
            StoreError::Conflict(_) => OAuthError::Conflict("the user exists already".into()),
            other => other.into(),
        })?;
        tracing::info!(username = %user.username, "user created");
        Ok(json_no_store(StatusCode::CREATED, &view(&user)))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    get,
    path = "/admin/users",
    tags = ["admin"],
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the users", body = super::openapi::UserList),
        (status = 401, description = "invalid_token", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn list(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        client_auth::require_admin(&state, &headers, Some(peer)).await?;
        let users: Vec<Value> = state.store.list_users().await?.iter().map(view).collect();
        Ok::<_, OAuthError>(json_no_store(StatusCode::OK, &json!({"users": users})))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    get,
    path = "/admin/users/{username}",
    tags = ["admin"],
    params(("username" = String, Path, description = "the username")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the user", body = super::openapi::User),
        (status = 401, description = "invalid_token", body = super::openapi::ErrorBody),
        (status = 404, description = "not_found: no such user", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn read(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        client_auth::require_admin(&state, &headers, Some(peer)).await?;
        let u = state
            .store
            .get_user(&username)
            .await?
            .ok_or_else(|| OAuthError::NotFound("no such user".into()))?;
        Ok::<_, OAuthError>(json_no_store(StatusCode::OK, &view(&u)))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

#[utoipa::path(
    delete,
    path = "/admin/users/{username}",
    tags = ["admin"],
    params(("username" = String, Path, description = "the username")),
    security(("admin_token" = [])),
    responses(
        (status = 204, description = "deleted; the user's sessions end"),
        (status = 401, description = "invalid_token", body = super::openapi::ErrorBody),
        (status = 404, description = "not_found: no such user", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn delete(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(username): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        client_auth::require_admin(&state, &headers, Some(peer)).await?;
        let user = state
            .store
            .get_user(&username)
            .await?
            .ok_or_else(|| OAuthError::NotFound("no such user".into()))?;
        // Everything the user holds ends with it: token families (refresh tokens and their
        // access tokens), other access tokens of the user, login sessions.
        let ended = grants::owner::end_with(
            &state,
            &user_owner(&user.id()),
            "the user was deleted",
            || async { Ok(state.store.delete_user(&username).await?) },
        )
        .await?
        .ok_or_else(|| OAuthError::NotFound("no such user".into()))?;
        tracing::info!(
            username = %username,
            families = ended.families,
            access_tokens = ended.access_tokens,
            sessions = ended.sessions,
            "user deleted"
        );
        Ok::<_, OAuthError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}
