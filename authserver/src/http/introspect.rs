//! `POST /oauth2/introspect` (RFC 7662). The caller authenticates as a client. A client may
//! introspect its own tokens; clients registered with scope `tollgate:introspect` or
//! `tollgate:edge` (gateways) may introspect any token. Anything else is `active: false`.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::json;

use crate::crypto;
use crate::error::OAuthError;
use crate::form::Params;
use crate::grants::family::REFRESH_PREFIX;
use crate::store::{now_secs, ClientRecord};
use crate::tokens;

use super::tls::PeerCertificate;
use super::{client_auth, json_no_store, SharedState};

pub fn has_scope(client: &ClientRecord, scope: &str) -> bool {
    client.metadata.scope.split(' ').any(|s| s == scope)
}

#[utoipa::path(
    post,
    path = "/oauth2/introspect",
    tags = ["public"],
    request_body(content = super::openapi::TokenParam, content_type = "application/x-www-form-urlencoded"),
    security(("client_basic" = []), ()),
    responses(
        (status = 200, description = "RFC 7662 §2.2", body = super::openapi::Introspection),
        (status = 401, description = "invalid_client", body = super::openapi::ErrorBody),
        (status = 415, description = "unsupported content type", body = super::openapi::ErrorBody),
        super::openapi::CommonErrors,
    )
)]
pub async fn introspect(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    tls: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let tls = tls.map(|Extension(c)| c);
    match handle(&state, &headers, Some(peer), tls.as_ref(), &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: &SharedState,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    tls: Option<&PeerCertificate>,
    body: &[u8],
) -> Result<Response, OAuthError> {
    let params = Params::from_request(headers, body)?;
    let caller = client_auth::authenticate(state, headers, peer, tls, Some(&params)).await?;
    let token = params.require("token")?;
    state.stat("introspections");
    let inactive = || {
        metrics::counter!("tollgate_introspections_total", "active" => "false").increment(1);
        Ok(json_no_store(StatusCode::OK, &json!({"active": false})))
    };
    if token.starts_with(REFRESH_PREFIX) {
        // Refresh tokens: only for the client they were issued to; a rotated token or one
        // of a revoked family is inactive.
        let Some((rec, used)) = state
            .store
            .get_refresh_token(&crypto::token_hash(token))
            .await?
        else {
            return inactive();
        };
        if used || rec.client_id != caller.client_id || rec.exp <= now_secs() {
            return inactive();
        }
        if state.store.family_revoked(&rec.grant_id).await? {
            return inactive();
        }
        let mut body = json!({
            "active": true,
            "iss": state.cfg.issuer,
            "sub": rec.sub,
            "client_id": rec.client_id,
            "aud": rec.aud,
            "exp": rec.exp,
            "iat": rec.iat,
            "token_type": "refresh_token",
        });
        // RFC 9449 §6.2: a public client's refresh token bound to its DPoP key.
        if let Some(cnf) = crate::tokens::cnf(rec.jkt.as_deref(), None) {
            body["cnf"] = cnf;
        }
        if !rec.scope.is_empty() {
            body["scope"] = json!(rec.scope);
        }
        return Ok(json_no_store(StatusCode::OK, &body));
    }
    let Some((rec, revoked)) = tokens::lookup(state, token).await? else {
        return inactive();
    };
    let now = now_secs();
    if revoked || rec.exp <= now {
        return inactive();
    }
    let privileged =
        has_scope(&caller, "tollgate:introspect") || has_scope(&caller, "tollgate:edge");
    if rec.client_id != caller.client_id {
        if !privileged {
            return inactive();
        }
        // A deleted client's tokens are no longer active (a deletion evicts the client from every replica's cache).
        if state
            .store
            .get_client_cached(&rec.client_id)
            .await?
            .0
            .is_none()
        {
            return inactive();
        }
    }
    metrics::counter!("tollgate_introspections_total", "active" => "true").increment(1);
    let mut body = json!({
        "active": true,
        "iss": state.cfg.issuer,
        "sub": rec.sub,
        "client_id": rec.client_id,
        "aud": rec.aud,
        "exp": rec.exp,
        "iat": rec.iat,
        "nbf": rec.iat,
        "jti": rec.jti,
        "token_type": crate::tokens::token_type(rec.cnf_jkt.as_deref()),
    });
    // RFC 9449 §6.2 (`jkt`), RFC 8705 §3.2 (`x5t#S256`).
    if let Some(cnf) = crate::tokens::cnf(rec.cnf_jkt.as_deref(), rec.cnf_x5t.as_deref()) {
        body["cnf"] = cnf;
    }
    if !rec.scope.is_empty() {
        body["scope"] = json!(rec.scope);
    }
    if let Some(act) = rec.act.as_deref() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(act) {
            body["act"] = v;
        }
    }
    Ok(json_no_store(StatusCode::OK, &body))
}
