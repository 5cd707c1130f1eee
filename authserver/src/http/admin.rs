//! The admin API (Bearer `TOLLGATE_ADMIN_TOKEN`): what operators look at.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::OAuthError;
use crate::store::now_secs;

use super::{client_auth, json_no_store, SharedState};

/// `GET /admin/clients`: the registered client ids.
#[utoipa::path(
    get,
    path = "/admin/clients",
    tags = ["admin"],
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the registered client ids", body = super::openapi::ClientList),
        (status = 401, description = "invalid_token", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn list_clients(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        client_auth::require_admin(&state, &headers, Some(peer)).await?;
        let ids = state.store.list_client_ids().await?;
        Ok::<_, OAuthError>(json_no_store(StatusCode::OK, &json!({"clients": ids})))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /admin/stats`: `auth_stats` and live token count.
#[utoipa::path(
    get,
    path = "/admin/stats",
    tags = ["admin"],
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "auth_stats and the live token count", body = super::openapi::Stats),
        (status = 401, description = "invalid_token", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn stats(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        client_auth::require_admin(&state, &headers, Some(peer)).await?;
        state.flush_stats().await;
        let stats = state.store.get_stats().await?;
        let live = state.store.count_live_tokens(now_secs()).await?;
        Ok::<_, OAuthError>(json_no_store(
            StatusCode::OK,
            &json!({"auth_stats": stats, "live_tokens": live}),
        ))
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}
