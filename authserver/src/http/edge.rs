//! Endpoints for the edge filters: the revocation feed and the built Wasm module (quota
//! leases are in `lease.rs`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::OAuthError;
use crate::form::Params;

use super::introspect::has_scope;
use super::{client_auth, json_no_store, SharedState};

const DEFAULT_PAGE: usize = 1000;
const MAX_PAGE: usize = 10_000;

/// The callers of the edge endpoints: the admin token (`Authorization: Bearer`), or a client
/// authenticated with `client_secret_basic` whose registered scope holds `tollgate:edge`.
/// 401 `invalid_client` for missing or bad credentials, 403 `insufficient_scope` for a
/// client without the scope.
pub(super) async fn authorize_edge(
    state: &SharedState,
    headers: &HeaderMap,
    peer: SocketAddr,
    what: &str,
) -> Result<(), OAuthError> {
    if client_auth::is_admin(state, headers) {
        return Ok(());
    }
    let client = client_auth::authenticate(state, headers, Some(peer), None).await?;
    if !has_scope(&client, "tollgate:edge") {
        return Err(OAuthError::InsufficientScope(format!(
            "{what} needs a client with scope tollgate:edge"
        )));
    }
    Ok(())
}

/// `GET /edge/revocations?since=<cursor>[&limit=N]`: revoked `jti`s with their expiry.
/// Callers: the admin token, or a client registered with scope `tollgate:edge`.
#[utoipa::path(
    get,
    path = "/edge/revocations",
    tags = ["public"],
    params(("since" = Option<String>, Query, description = "cursor of the previous page"), ("limit" = Option<u32>, Query, description = "entries per page, 1..=10000")),
    security(("client_basic" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "a page of the revocation feed", body = super::openapi::RevocationPage),
        (status = 401, description = "invalid_client / invalid_token", body = super::openapi::ErrorBody),
        (status = 403, description = "insufficient_scope: the client lacks tollgate:edge", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn revocations(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let r = async {
        authorize_edge(&state, &headers, peer, "the revocation feed").await?;
        // Strict: UTF-8, valid percent-encoding, no repeated parameter (one meaning only).
        let q = Params::parse(query.as_deref().unwrap_or("").as_bytes())?;
        let since = match q.get("since") {
            None => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                OAuthError::InvalidRequest("since must be a cursor returned by this feed".into())
            })?),
        };
        let limit = match q.get("limit") {
            None => DEFAULT_PAGE,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=MAX_PAGE).contains(l))
                .ok_or_else(|| {
                    OAuthError::InvalidRequest(format!("limit must be 1..={MAX_PAGE}"))
                })?,
        };
        let page = state.store.revocation_feed(since, limit).await?;
        let more = !page.resync && page.entries.len() >= limit;
        Ok(json_no_store(
            StatusCode::OK,
            &json!({
                "cursor": page.cursor.to_string(),
                "resync": page.resync,
                "more": more,
                "revocations": page.entries,
            }),
        ))
    }
    .await;
    r.unwrap_or_else(|e: OAuthError| e.into_response())
}

/// `GET /edge/module.wasm`: the filter module, for clusters without an OCI registry.
#[utoipa::path(
    get,
    path = "/edge/module.wasm",
    tags = ["public"],
    responses(
        (status = 200, description = "the Wasm filter module", content_type = "application/wasm", body = Vec<u8>),
        (status = 404, description = "not_found: no module configured (TOLLGATE_EDGE_MODULE)", body = super::openapi::ErrorBody),
        super::openapi::RateLimited,
    )
)]
pub async fn module(State(state): State<SharedState>) -> Response {
    match &state.edge_module {
        Some(m) => {
            let mut r = (StatusCode::OK, m.bytes.clone()).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/wasm"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", m.sha256)) {
                h.insert(header::ETAG, v);
            }
            r
        }
        None => OAuthError::NotFound("no edge module is configured (TOLLGATE_EDGE_MODULE)".into())
            .into_response(),
    }
}

/// `GET /edge/module.wasm.sha256`: hex SHA-256 of the module (pin it in the WasmPlugin).
#[utoipa::path(
    get,
    path = "/edge/module.wasm.sha256",
    tags = ["public"],
    responses(
        (status = 200, description = "hex SHA-256 of the module and a newline", content_type = "text/plain", body = String),
        (status = 404, description = "not_found: no module configured", body = super::openapi::ErrorBody),
        super::openapi::RateLimited,
    )
)]
pub async fn module_sha256(State(state): State<SharedState>) -> Response {
    match &state.edge_module {
        Some(m) => (StatusCode::OK, format!("{}\n", m.sha256)).into_response(),
        None => OAuthError::NotFound("no edge module is configured (TOLLGATE_EDGE_MODULE)".into())
            .into_response(),
    }
}
