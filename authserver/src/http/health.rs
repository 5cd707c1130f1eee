//! Liveness, readiness and Prometheus metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::now_secs;

use super::{metrics_handle, SharedState};

/// The process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tags = ["public", "admin"],
    responses(
        (status = 200, description = "the process serves HTTP", body = super::openapi::Health),
    )
)]
pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Ready when the store answers and a signing key is active.
#[utoipa::path(
    get,
    path = "/readyz",
    tags = ["public"],
    responses(
        (status = 200, description = "ready", body = super::openapi::Readiness),
        (status = 503, description = "not ready: store unreachable or no active signing key", body = super::openapi::Readiness),
    )
)]
pub async fn readyz(State(state): State<SharedState>) -> Response {
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    );
    let key_ok = state.keys().active(now_secs()).is_some();
    let status = if store_ok && key_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    metrics::gauge!("tollgate_store_up").set(if store_ok { 1.0 } else { 0.0 });
    (
        status,
        Json(json!({
            "status": if status == StatusCode::OK { "ready" } else { "not ready" },
            "store": if store_ok { "ok" } else { "unreachable" },
            "signing_key": if key_ok { "ok" } else { "none active" },
        })),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tags = ["admin"],
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
    )
)]
pub async fn metrics(State(state): State<SharedState>) -> Response {
    let now = now_secs();
    let keys = state.keys();
    metrics::gauge!("tollgate_signing_keys_published").set(
        keys.jwks(now, state.max_token_ttl())["keys"]
            .as_array()
            .map_or(0, |a| a.len()) as f64,
    );
    metrics::gauge!("tollgate_signing_key_active").set(if keys.active(now).is_some() {
        1.0
    } else {
        0.0
    });
    let mut r = metrics_handle().render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
